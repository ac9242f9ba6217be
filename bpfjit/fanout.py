"""Fanout: one capture spread over N AF_PACKET sockets of a PACKET_FANOUT group, one ring each.

    with FanoutCapture("eth0", 4, mode="hash", filter="tcp or udp") as group:
        group.run(handler, timeout=60)            # handler(worker, record) on worker's own thread
        for worker, timestamp, packet, wirelen in group.packets(timeout=10):   # or all merged
            ...
        group.workers[2].packets()                # or one worker's stream, read where you like
        print(group.stats())                      # per worker and in total

The kernel hands each packet the interface receives to exactly one member socket of the group
(`packet_rcv_fanout`), chosen by `mode`:

- "hash": by the packet's symmetric flow hash (both directions of a flow go to one worker);
- "lb": round robin; "cpu": the CPU that received it (index = cpu % N); "random"; "queue": the NIC's
  receive queue; "rollover": the first socket until its ring is full, then the next;
- "cbpf": a classic BPF program chooses: its result % N (`fanout_demux_bpf`). `steer=` is either one
  `Program`, run as it is in the fanout hook (see below), or a list of per-worker filters (tcpdump
  expressions or link-layer programs, as `Capture` takes them): worker i gets the packets filter i
  accepts, the first accepting filter wins; the program is built by `steering_program`. With as many
  filters as workers, a packet none accepts is dropped; with one filter fewer, the last worker gets
  every packet no filter accepts.

A fanout program does not see the packet a socket filter sees: on receive the fanout hook runs with
the skb's data at the network header (the MAC header already pulled), on transmit at the MAC header,
and `len` counts from there (DIALECTS.md A.3). `rebase` turns a socket filter for the interface's
link layer into a program that computes the same result in the fanout hook, both ways: loads from the
link-layer header are made MAC-relative (`[k]` -> `[SKF_LL_OFF + k]`; network-relative on cooked
and RAW link types), `[x + k]` and `ldxb 4*([k]&0xf)` likewise, and `len` gets the header back on
receive. `tests/test_fanout.py` holds the kernel's choices to the interpreter's results.

Each member is a `bpfjit.capture.Capture` (its own ring, filter and statistics); it joins the group
right after bind (`Capture(..., _around_bind=...)`) with a drop-all filter in place until it is a
member, so no packet is seen twice while the group forms (packets of that moment may be dropped:
count from when the constructor returns). Group ids come from the kernel
(PACKET_FANOUT_FLAG_UNIQUEID), unless `group_id` names one: several processes, each opening a
`FanoutCapture` (or `join`) with the same id, mode and flags on the same interface, share one group
(the Suricata/Zeek "cluster id"). Linux only; root or CAP_NET_RAW.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import queue
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from .capture import SOL_PACKET, Capture, CaptureStats, PacketRecord, interface_linktype, kernel_program
from .dialects import LINUX, PCAP, Dialect, DialectLike, dialect_of
from .linux import SKF_AD_OFF, SKF_LL_OFF, SKF_NET_OFF
from .opcodes import (
    BPF_A,
    BPF_ABS,
    BPF_ALU,
    BPF_IMM,
    BPF_JA,
    BPF_JMP,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LEN,
    BPF_MEM,
    BPF_MEMWORDS,
    BPF_MISC,
    BPF_RET,
    BPF_ST,
    BPF_TAX,
    BPF_TXA,
    BPF_W,
    OPCODES,
    u32,
)
from .program import Insn, InsnLike, Program
from .sockfilter import attach_filter, attached_filter, detach_filter
from .validate import validate

if TYPE_CHECKING:
    from .filter import Filter

__all__ = ["MODES", "FanoutCapture", "FanoutStats", "WorkerPacket", "join", "rebase", "set_fanout_program",
           "steering_program"]  # fmt: skip

# -- <linux/if_packet.h> ---------------------------------------------------------------------------
PACKET_FANOUT = 18
PACKET_FANOUT_DATA = 22
MODES: dict[str, int] = {"hash": 0, "lb": 1, "cpu": 2, "rollover": 3, "random": 4, "queue": 5, "cbpf": 6}
FLAG_ROLLOVER = 0x1000
FLAG_UNIQUEID = 0x2000
FLAG_IGNORE_OUTGOING = 0x4000
FLAG_DEFRAG = 0x8000
FANOUT_MAX = 256  # PACKET_FANOUT_MAX: members a group may have (without fanout_args.max_num_members)
PACKET_OUTGOING = 4
SKF_AD_PKTTYPE = 4
BPF_ADD, BPF_JEQ, BPF_JGE = 0x00, 0x10, 0x30  # (opcodes.ALU_OPS and JMP_OPS rows "add", "jeq", "jge")

DROP_ALL = Program([Insn(BPF_RET | BPF_K, 0, 0, 0)])
# How far the fanout hook may be from the socket's view: a MAC-relative load reaches 1 MiB
# (SKF_NET_OFF - SKF_LL_OFF); further than that no packet is long enough, so the load fails (returns 0).
REACH = SKF_NET_OFF - SKF_LL_OFF
NEGATIVE = 0x80000000  # k or X + k as an s32 < 0: the kernel's ancillary and negative-offset windows
SLICE = 0.2  # seconds a worker thread waits before it looks at the stop flag again


# -- programs for the fanout hook ------------------------------------------------------------------
class _Label:
    """A place in a program being assembled (jumps name labels; `_assemble` turns them into offsets)."""

    __slots__ = ()


@dataclass(eq=False)
class _Op:
    """One instruction whose jump targets are labels: `jt`/`jf` for a conditional jump, `jt` for ja."""

    code: int
    k: int = 0
    jt: _Label | None = None
    jf: _Label | None = None


_Item = _Op | _Label


def _op(insn: Insn, labels: Sequence[_Label], index: int) -> _Op:
    """`insn` (at `index`) with its jump targets as labels."""
    kind = OPCODES[insn.code].kind
    if kind == "ja":
        return _Op(insn.code, 0, labels[index + 1 + insn.k])
    if kind in ("jmp_k", "jmp_x"):
        return _Op(insn.code, insn.k, labels[index + 1 + insn.jt], labels[index + 1 + insn.jf])
    return _Op(insn.code, insn.k)


def _assemble(items: Sequence[_Item]) -> Program:
    """Labels to offsets. A conditional target more than 255 instructions ahead goes through a `ja`
    placed right after its jump (added until every offset fits: they only grow)."""
    far: set[tuple[int, bool]] = set()  # (item index, jt?) of targets reached through a trampoline
    while True:
        where: dict[int, int] = {}  # id(label) or item index -> position
        at = 0
        for i, item in enumerate(items):
            where[id(item) if isinstance(item, _Label) else i] = at
            if isinstance(item, _Op):
                at += 1 + ((i, True) in far) + ((i, False) in far)
        insns: list[Insn] = []
        grew = False
        for i, item in enumerate(items):
            if isinstance(item, _Label):
                continue
            here = where[i]
            if item.jf is None and item.jt is not None:  # ja
                insns.append(Insn(item.code, 0, 0, where[id(item.jt)] - here - 1))
                continue
            if item.jt is None or item.jf is None:
                insns.append(Insn(item.code, 0, 0, item.k))
                continue
            offsets: list[int] = []
            trampolines: list[int] = []  # positions the trampolines jump to
            for is_jt, label in ((True, item.jt), (False, item.jf)):
                if (i, is_jt) in far:
                    offsets.append(len(trampolines))
                    trampolines.append(where[id(label)])
                else:
                    offset = where[id(label)] - here - 1
                    if offset > 255:
                        far.add((i, is_jt))
                        grew = True
                    offsets.append(min(offset, 255))
            insns.append(Insn(item.code, offsets[0], offsets[1], item.k))
            for n, target in enumerate(trampolines):
                insns.append(Insn(BPF_JMP | BPF_JA, 0, 0, target - (here + 1 + n) - 1))
        if not grew:
            return Program(insns)


def _hook_view(linktype: int | str, cooked: bool) -> tuple[int | None, int | None]:
    """(base, link-header length) for rebasing a socket filter of this link type into the fanout hook.

    base: what `[k]` of the socket's view becomes, `[base + k]`: SKF_LL_OFF where the socket sees the
    MAC header (SOCK_RAW), SKF_NET_OFF for cooked sockets (SOCK_DGRAM: the network header, both ways);
    None for RAW link types, whose packets start at the network header in both views. The length is
    what `len` lacks on receive (None: not known for this link type)."""
    from .libpcap import linktype_value

    if cooked:
        return u32(SKF_NET_OFF), None
    value = linktype_value(linktype)
    if value in (12, 101):  # DLT_RAW, LINKTYPE_RAW: no link header
        return None, 0
    return u32(SKF_LL_OFF), 14 if value == 1 else None


def _len_ops(hdrlen: int) -> list[_Item]:
    """A <- the socket's `len`: skb->len plus the link header the fanout hook lacks on receive
    (on transmit it sees the MAC header, as the socket does)."""
    incoming, outgoing, done = _Label(), _Label(), _Label()
    return [
        _Op(BPF_LD | BPF_W | BPF_ABS, SKF_AD_OFF + SKF_AD_PKTTYPE),  # A <- pkttype
        _Op(BPF_JMP | BPF_JEQ | BPF_K, PACKET_OUTGOING, outgoing, incoming),
        incoming,
        _Op(BPF_LD | BPF_W | BPF_LEN),  # A <- len + header
        _Op(BPF_ALU | BPF_ADD | BPF_K, hdrlen),
        _Op(BPF_JMP | BPF_JA, 0, done),
        outgoing,
        _Op(BPF_LD | BPF_W | BPF_LEN),  # A <- len
        done,
    ]


def _rebase_insn(insn: Insn, op: _Op, base: int | None, hdrlen: int | None, scratch: int | None,
                 fault: _Label) -> list[_Item]:  # fmt: skip
    """The instructions that do in the fanout hook what `insn` does in the socket's view."""
    kind = OPCODES[insn.code].kind
    k = insn.k
    if base is None:
        return [op]
    if kind in ("ld_abs", "ldx_msh"):  # A <- P[k:n], X <- 4*(P[k:1]&0xf)
        if k >= NEGATIVE:  # ancillary, network- or MAC-relative: the same in both views
            return [op]
        if k >= REACH:
            return [_Op(BPF_JMP | BPF_JA, 0, fault)]
        return [_Op(insn.code, u32(k + base))]
    if kind == "ld_ind":  # A <- P[X+k:n], with X + k wrapped to 32 bits and read as signed, as the kernel does
        negative, positive, near, done = _Label(), _Label(), _Label(), _Label()
        return [
            _Op(BPF_MISC | BPF_TXA),  # A <- X + k
            *([_Op(BPF_ALU | BPF_ADD | BPF_K, k)] if k else []),
            _Op(BPF_JMP | BPF_JGE | BPF_K, NEGATIVE, negative, positive),
            positive,
            _Op(BPF_JMP | BPF_JGE | BPF_K, REACH, fault, near),
            near,
            _Op(insn.code, u32(k + base)),
            _Op(BPF_JMP | BPF_JA, 0, done),
            negative,
            _Op(insn.code, k),
            done,
        ]
    if kind in ("ld_len", "ldx_len"):
        if hdrlen is None:
            raise ValueError(f"{insn.text()}: the fanout hook cannot tell this link type's header length")
        if kind == "ld_len":
            return _len_ops(hdrlen)
        assert scratch is not None
        return [_Op(BPF_ST, scratch), *_len_ops(hdrlen), _Op(BPF_MISC | BPF_TAX), _Op(BPF_LD | BPF_MEM, scratch)]
    return [op]


def _free_slot(program: Program) -> int | None:
    """A scratch word M[i] the program never touches, or None."""
    used = {insn.k for insn in program if OPCODES[insn.code].kind in ("ld_mem", "ldx_mem", "st", "stx")}
    return next((i for i in range(BPF_MEMWORDS) if i not in used), None)


def _rebased_items(program: Program, linktype: int | str, cooked: bool, dialect: DialectLike) -> list[_Item]:
    record = dialect_of(dialect)
    socket_view = kernel_program(validate(program, record), cooked, record)
    if socket_view is None:
        raise ValueError("the program cannot run in the kernel as it runs in bpfjit (see capture.kernel_program), "
                         "so it cannot steer a fanout group")  # fmt: skip
    base, hdrlen = _hook_view(linktype, cooked)
    scratch = _free_slot(socket_view)
    if scratch is None and any(OPCODES[i.code].kind == "ldx_len" for i in socket_view) and base is not None:
        raise ValueError("`ldx len` needs a free scratch word in the fanout hook, and the program uses all 16")
    labels = [_Label() for _ in socket_view]
    fault = _Label()
    items: list[_Item] = []
    for index, insn in enumerate(socket_view):
        items.append(labels[index])
        items.extend(_rebase_insn(insn, _op(insn, labels, index), base, hdrlen, scratch, fault))
    if any(isinstance(item, _Op) and fault in (item.jt, item.jf) for item in items):
        items += [fault, _Op(BPF_RET | BPF_K, 0)]
    return items


def rebase(program: Program | Iterable[InsnLike], *, linktype: int | str = "EN10MB", cooked: bool = False,
           dialect: DialectLike = PCAP) -> Program:  # fmt: skip
    """A program that computes in the fanout hook what `program` computes as a socket filter.

    `program` is a filter for packets as a capture on the interface sees them (link type `linktype`,
    or cooked mode: the LINUX_SLL header in front), in `dialect`. It first becomes what the kernel runs
    at the socket (`capture.kernel_program`), then every load moves to the fanout hook's view
    (see `_hook_view`): `[k]` -> `[base + k]`; `[x + k]` computes X + k as the kernel does (32-bit
    wrap, then signed) and moves it when it is an offset in [0, 1 MiB), keeps it when negative (those
    windows mean the same in both places) and fails (returns 0) past 1 MiB, as the socket's load
    would; `len` adds the link header back on receive (Ethernet: 14; other link types with a header:
    ValueError). The result is a linux-dialect program (ValueError when it cannot be made).
    """
    source = program if isinstance(program, Program) else Program(program)
    return validate(_assemble(_rebased_items(source, linktype, cooked, dialect)), LINUX)


def steering_program(programs: Sequence[Program | Iterable[InsnLike]], workers: int, *,
                     linktype: int | str = "EN10MB", cooked: bool = False,
                     dialects: Sequence[DialectLike] | DialectLike = PCAP) -> Program:  # fmt: skip
    """The fanout program for per-worker filters: the index of the first program that accepts the
    packet (`rebase`d, run one after the other, each from A = X = 0), else `min(len(programs),
    workers - 1)`. Programs in the socket's view, as for `rebase`; `dialects` one for all or one each.
    """
    if not 1 <= len(programs) <= workers:
        raise ValueError(f"{len(programs)} steering filters for {workers} workers: give 1 to {workers}")
    each: list[DialectLike] = [dialects] * len(programs) if isinstance(dialects, Dialect | str) else list(dialects)
    items: list[_Item] = []
    for index, (program, dialect) in enumerate(zip(programs, each, strict=True)):
        source = program if isinstance(program, Program) else Program(program)
        rejected, accepted = _Label(), _Label()
        if index:
            items += [_Op(BPF_LD | BPF_IMM, 0), _Op(BPF_LDX | BPF_IMM, 0)]
        for item in _rebased_items(source, linktype, cooked, dialect):
            if isinstance(item, _Op) and item.code == BPF_RET | BPF_K:
                item = _Op(BPF_RET | BPF_K, index) if item.k else _Op(BPF_JMP | BPF_JA, 0, rejected)
            elif isinstance(item, _Op) and item.code == BPF_RET | BPF_A:
                item = _Op(BPF_JMP | BPF_JEQ | BPF_K, 0, rejected, accepted)
            items.append(item)
        if any(isinstance(item, _Op) and item.jf is accepted for item in items):
            items += [accepted, _Op(BPF_RET | BPF_K, index)]
        items.append(rejected)
    items.append(_Op(BPF_RET | BPF_K, min(len(programs), workers - 1)))
    return validate(_assemble(items), LINUX)


# -- the kernel's side -----------------------------------------------------------------------------
class _SockFprog(ctypes.Structure):
    """struct sock_fprog { unsigned short len; struct sock_filter *filter; }."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc: ctypes.CDLL | None = None


def set_fanout_program(sock: socket.socket | int, program: Program) -> None:
    """Give the socket's fanout group its cBPF program (setsockopt PACKET_FANOUT_DATA); the group
    must be of mode "cbpf". The program runs in the fanout hook's view (see `rebase`), its result % N
    is the member. Replaces the group's program for every member (any member may set it)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
    fd = sock if isinstance(sock, int) else sock.fileno()
    code = ctypes.create_string_buffer(program.to_bytes(), max(1, len(program) * 8))
    fprog = _SockFprog(len(program), ctypes.addressof(code))
    if _libc.setsockopt(fd, SOL_PACKET, PACKET_FANOUT_DATA, ctypes.byref(fprog), ctypes.sizeof(fprog)):
        error = ctypes.get_errno()
        raise OSError(error, f"{os.strerror(error)}: PACKET_FANOUT_DATA ({len(program)} insns) on fd {fd}")


def _fanout_value(group_id: int, mode: int, flags: int) -> int:
    return group_id | ((mode | flags) << 16)


def _join(sock: socket.socket, group_id: int | None, mode: int, flags: int) -> int:
    """Join (or create) the group; its id (a new one from the kernel when `group_id` is None)."""
    value = _fanout_value(0, mode, flags | FLAG_UNIQUEID) if group_id is None else _fanout_value(group_id, mode, flags)
    try:
        sock.setsockopt(SOL_PACKET, PACKET_FANOUT, value)
    except OSError as exc:
        why = {errno.EINVAL: ": an existing group of that id has another mode, flags or interface",
               errno.ENOSPC: f": the group has its {FANOUT_MAX} members"}.get(exc.errno or 0, "")  # fmt: skip
        raise OSError(exc.errno, f"PACKET_FANOUT (group {group_id}, value 0x{value:x}): {exc.strerror}{why}") from None
    if group_id is not None:
        return group_id
    return int(struct.unpack("=I", sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0]) & 0xFFFF


@contextlib.contextmanager
def _member(sock: socket.socket, joined: Callable[[socket.socket], None]) -> Iterator[None]:
    """Around Capture's bind: a drop-all filter until the socket is in the group (bind makes it
    receive; only fanout membership stops it receiving on its own), then the socket's own filter."""
    try:
        saved: Program | None = attached_filter(sock)
    except FileNotFoundError:
        saved = None
    attach_filter(sock, DROP_ALL)
    try:
        yield
        joined(sock)
    finally:
        if saved is None:
            detach_filter(sock)
        else:
            attach_filter(sock, saved)


def join(interface: str, group_id: int, filter: Filter | Program | Iterable[InsnLike] | str | None = None, *,
         mode: str = "hash", rollover: bool = False, defrag: bool = False, ignore_outgoing: bool = False,
         **options: Any) -> Capture:  # fmt: skip
    """One `Capture` that is a member of fanout group `group_id` on `interface` (made by the first
    member): for worker processes that each open their own. Mode and flags must match the group's.
    In mode "cbpf" the group's program is set by whoever set it (`set_fanout_program`)."""
    kind = _mode(mode)
    flags = _flags(rollover, defrag, ignore_outgoing)
    _check_id(group_id)

    def joined(sock: socket.socket) -> None:
        _join(sock, group_id, kind, flags)

    return Capture(interface, filter, _around_bind=lambda sock: _member(sock, joined), **options)


def _mode(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {mode!r}")
    return MODES[mode]


def _flags(rollover: bool, defrag: bool, ignore_outgoing: bool) -> int:
    return (FLAG_ROLLOVER if rollover else 0) | (FLAG_DEFRAG if defrag else 0) | (
        FLAG_IGNORE_OUTGOING if ignore_outgoing else 0)  # fmt: skip


def _check_id(group_id: object) -> None:
    if not isinstance(group_id, int) or isinstance(group_id, bool) or not 0 <= group_id <= 0xFFFF:
        raise ValueError(f"group_id must be an int from 0 to 65535, not {group_id!r}")


# -- the group -------------------------------------------------------------------------------------
class WorkerPacket(NamedTuple):
    """A packet and the worker (member socket) the kernel gave it to."""

    worker: int
    timestamp: float
    packet: bytes
    wirelen: int


class FanoutStats(NamedTuple):
    """`CaptureStats` per worker and their sum (received: by that socket, after its filter; dropped:
    its ring was full; rejected: by a user-space filter — the kernel does not count what the fanout
    program steers away or an in-kernel filter rejects)."""

    total: CaptureStats
    workers: tuple[CaptureStats, ...]


@dataclass
class _Serving:
    """The worker threads of one `run` or `packets` call."""

    threads: list[threading.Thread] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)


class FanoutCapture:
    """N member sockets of one PACKET_FANOUT group on `interface`, each a `Capture` (see the module doc).

    `workers`: N (1-256). `mode`: a key of `MODES`. `filter`: what every member's socket filter keeps
    (as `Capture` takes it). `steer` (mode "cbpf" only): a `Program` for the fanout hook, run as given,
    or a sequence of per-worker filters (expressions, `Program`s, or a mode="first" `Classifier`'s
    programs), each also kept by its worker's socket filter (ANDed with `filter` when both are
    expressions). `rollover`, `defrag`, `ignore_outgoing`: PACKET_FANOUT_FLAG_ROLLOVER (a full ring's
    packets go to another member), _DEFRAG (IP fragments reassembled first, so they hash with their
    flow: the members then see reassembled datagrams), _IGNORE_OUTGOING. `group_id`: join or create
    that group (for several processes); None: a fresh id from the kernel (`group_id` attribute).
    Other keywords go to every `Capture` (snaplen, promisc, in_kernel, dialect, block_timeout,
    buffer_size: each member has a ring of that size).
    """

    def __init__(
        self,
        interface: str,
        workers: int,
        mode: str = "hash",
        filter: Filter | Program | Iterable[InsnLike] | str | None = None,
        *,
        steer: Any = None,
        rollover: bool = False,
        defrag: bool = False,
        ignore_outgoing: bool = False,
        group_id: int | None = None,
        **options: Any,
    ):
        self.workers: list[Capture] = []
        self._closed = False
        self._leftover: deque[WorkerPacket] = deque()
        if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= FANOUT_MAX:
            raise ValueError(f"workers must be an int from 1 to {FANOUT_MAX}, not {workers!r}")
        self.mode = mode
        kind = _mode(mode)
        if group_id is not None:
            _check_id(group_id)
        if (steer is not None) != (mode == "cbpf"):
            raise ValueError('steer= goes with mode="cbpf", and mode="cbpf" needs steer=')
        self.interface = interface
        self.group_id = group_id
        self._flags = _flags(rollover, defrag, ignore_outgoing)
        self._kind = kind
        per_worker = self._worker_filters(steer, filter, workers)
        self.steering: Program | None = None
        if steer is not None:
            self.steering = self._steering(steer, workers, options.get("dialect"))
        try:
            for index in range(workers):
                self.workers.append(Capture(interface, per_worker[index], _around_bind=self._around_bind, **options))
        except BaseException:
            self.close()
            raise

    # -- set-up ------------------------------------------------------------------------------------
    def _worker_filters(self, steer: Any, filter: Any, workers: int) -> list[Any]:
        filters = [filter] * workers
        if steer is None or isinstance(steer, Program):
            return filters
        for index, own in enumerate(_steer_list(steer)):
            if filter is None:
                filters[index] = own
            elif isinstance(filter, str) and isinstance(own, str):
                filters[index] = f"({filter}) and ({own})"
            else:
                raise ValueError("filter= and per-worker steer= filters are combined only as expressions")
        return filters

    def _steering(self, steer: Any, workers: int, dialect: DialectLike | None) -> Program:
        if isinstance(steer, Program):
            return validate(steer, LINUX)
        linktype, _, cooked = interface_linktype(self.interface)
        programs: list[Program] = []
        dialects: list[Dialect] = []
        for own in _steer_list(steer):
            program, record = _resolve(own, self.interface, linktype, dialect)
            programs.append(program)
            dialects.append(record)
        return steering_program(programs, workers, linktype=linktype, cooked=cooked, dialects=dialects)

    def _around_bind(self, sock: socket.socket) -> contextlib.AbstractContextManager[None]:
        return _member(sock, self._joined)

    def _joined(self, sock: socket.socket) -> None:
        first = not self.workers
        group_id = _join(sock, self.group_id, self._kind, self._flags)
        if first:
            self.group_id = group_id
            if self.steering is not None:
                set_fanout_program(sock, self.steering)

    def set_steering(self, steer: Program) -> None:
        """Replace the group's fanout program (mode "cbpf"; a `Program` in the fanout hook's view)."""
        if self.mode != "cbpf":
            raise ValueError('only a mode="cbpf" group has a program')
        self.steering = validate(steer, LINUX)
        set_fanout_program(self.workers[0].fileno(), self.steering)

    # -- reading -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[WorkerPacket]:
        return self.packets()

    def packets(self, count: int | None = None, timeout: float | None = None, *,
                backlog: int = 65536) -> Iterator[WorkerPacket]:  # fmt: skip
        """Every worker's packets, merged as they come: one thread per worker reads its ring into a
        queue of at most `backlog` packets (when it is full, rings fill and the kernel drops, counted
        in `stats()`). At most `count` packets, for at most `timeout` seconds; ends when the group is
        closed. The order is per worker, not across workers."""
        if self._closed:
            raise ValueError("the fanout capture is closed")
        return self._merged(count, None if timeout is None else time.monotonic() + timeout, backlog)

    def _merged(self, count: int | None, deadline: float | None, backlog: int) -> Iterator[WorkerPacket]:
        found: queue.Queue[WorkerPacket | None] = queue.Queue(backlog)
        serving = _Serving()
        held: list[WorkerPacket] = []  # a packet a thread could not queue before it was told to stop

        def deliver(worker: int, record: PacketRecord) -> None:
            item = WorkerPacket(worker, *record)
            while True:
                try:
                    found.put(item, timeout=SLICE)
                    return
                except queue.Full:
                    if serving.stop.is_set():
                        held.append(item)
                        return

        left = count
        while self._leftover and (left is None or left > 0):  # taken from the rings by an earlier call
            yield self._leftover.popleft()
            if left is not None:
                left -= 1
        if left == 0:
            return
        self._start(serving, deliver, deadline, done=lambda: found.put(None))
        running = len(serving.threads)
        try:
            while running and (left is None or left > 0):
                try:
                    item = found.get(timeout=SLICE)
                except queue.Empty:
                    continue
                if item is None:
                    running -= 1
                    continue
                yield item
                if left is not None:
                    left -= 1
        finally:
            serving.stop.set()
            # Threads blocked on a full queue hold their packet: drain while they finish, so none waits.
            rest: list[WorkerPacket | None] = []
            for thread in serving.threads:
                while thread.is_alive():
                    with contextlib.suppress(queue.Empty):
                        rest.append(found.get(timeout=0.01))
            while not found.empty():
                rest.append(found.get_nowait())
            # Packets taken from the rings but not yielded: the next call yields them first, in order.
            self._leftover.extend(item for item in rest if item is not None)
            self._leftover.extend(held)
        if serving.errors:
            raise serving.errors[0]

    def run(self, handler: Callable[[int, PacketRecord], object], timeout: float | None = None) -> None:
        """Call `handler(worker, record)` for every packet, on the worker's own thread (per-worker
        streams, as Suricata's and Zeek's workers have), until `timeout` seconds pass or the group is
        closed. An exception in a handler stops every worker and is raised here."""
        if self._closed:
            raise ValueError("the fanout capture is closed")
        serving = _Serving()
        self._start(serving, handler, None if timeout is None else time.monotonic() + timeout)
        try:
            for thread in serving.threads:
                while thread.is_alive():
                    thread.join(SLICE)
        finally:
            serving.stop.set()
            for thread in serving.threads:
                thread.join()
        if serving.errors:
            raise serving.errors[0]

    def _start(self, serving: _Serving, handler: Callable[[int, PacketRecord], object], deadline: float | None,
               done: Callable[[], None] | None = None) -> None:  # fmt: skip
        def serve(worker: int, capture: Capture) -> None:
            try:
                while not serving.stop.is_set() and not capture.closed:
                    wait = SLICE if deadline is None else min(SLICE, deadline - time.monotonic())
                    if wait <= 0:
                        return
                    try:
                        records = capture.packets(timeout=wait)
                    except ValueError:  # closed meanwhile
                        return
                    for record in records:
                        handler(worker, record)
                        if serving.stop.is_set():
                            return
            except BaseException as exc:
                serving.errors.append(exc)
                serving.stop.set()
            finally:
                if done is not None:
                    done()

        for worker, capture in enumerate(self.workers):
            thread = threading.Thread(target=serve, args=(worker, capture), name=f"bpfjit-fanout-{worker}",
                                      daemon=True)  # fmt: skip
            serving.threads.append(thread)
            thread.start()

    # -- statistics and closing --------------------------------------------------------------------
    def stats(self) -> FanoutStats:
        """Each worker's `CaptureStats` (the kernel's PACKET_STATISTICS for its socket) and the sum."""
        each = tuple(capture.stats() for capture in self.workers)
        total = CaptureStats(*(sum(column) for column in zip(*each, strict=True))) if each else CaptureStats(0, 0, 0)
        return FanoutStats(total, each)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close every member (idempotent; from any thread: reading workers stop within ~0.2 s)."""
        self._closed = True
        for capture in self.workers:
            capture.close()

    def __enter__(self) -> FanoutCapture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"group {self.group_id}"
        return f"<bpfjit.FanoutCapture {self.interface!r} {self.mode} x{len(self.workers)}, {state}>"


def _steer_list(steer: Any) -> list[Any]:
    """Per-worker steering filters from a list/tuple or a classifier (its programs)."""
    if isinstance(steer, list | tuple):
        return list(steer)
    programs = getattr(steer, "programs", None)
    if getattr(steer, "mode", None) == "first" and isinstance(programs, tuple):
        return list(programs)
    raise TypeError(f"steer= must be a Program, a list of filters or a mode='first' Classifier, "
                    f"not {type(steer).__name__}")  # fmt: skip


def _resolve(source: Any, interface: str, linktype: str, dialect: DialectLike | None) -> tuple[Program, Dialect]:
    """A steering filter as Capture resolves it: an expression compiled for the live interface (linux
    dialect; on a dead handle, pcap, where libpcap cannot activate it), a Filter with its dialect, a
    Program in `dialect`."""
    if isinstance(source, str):
        from .libpcap import compile_for_interface

        try:
            return compile_for_interface(source, interface, linktype), LINUX
        except OSError:
            return Program.from_expr(source, linktype), PCAP
    record = PCAP if dialect is None else dialect_of(dialect)
    if isinstance(source, Program):
        return source, record
    program = getattr(source, "program", None)
    if isinstance(program, Program):  # a Filter
        return program, source.dialect
    return Program(source), record
