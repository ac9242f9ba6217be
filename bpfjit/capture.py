"""Live capture on Linux: an AF_PACKET socket with a memory-mapped TPACKET_V3 ring, as libpcap uses.

    with Capture("eth0", "udp port 53") as cap:
        for timestamp, packet, wirelen in cap.packets(count=10, timeout=5):
            ...

The kernel fills the ring block by block; a block is ours once its status says TP_STATUS_USER, and
goes back to the kernel when we write TP_STATUS_KERNEL. Two ways to filter:

- `in_kernel=True` (default): the program is attached with SO_ATTACH_FILTER, so rejected packets
  never reach the ring. bpfjit attaches it only when the kernel computes what bpfjit computes
  (`kernel_program`); otherwise it filters in user space, as libpcap does, and `in_kernel` says so.
- `in_kernel=False`: every packet lands in the ring and the JIT filters a whole block in one native
  call: a `Batch` whose offsets point into the mapped ring (no copy), through `Filter.run_batch`.

Either way the packets yielded are `bytes` copied out of the ring before its block is handed back,
so they stay valid. A packet is cut to `min(snaplen, BPF result)` bytes, as the kernel does.
Not thread-safe, except that `close()` from another thread stops a `packets()` loop.

Link layers, as libpcap makes them (packets come out byte-identical to tcpdump's): the link type
follows the device (Ethernet and lo: EN10MB; tun and IP tunnels: RAW); `any` and devices without a
known mapping use cooked mode, a SOCK_DGRAM socket with the LINUX_SLL header rebuilt in front of each
packet. lo shows every packet twice (going out, coming in): the outgoing copy is skipped. An 802.1Q
tag the kernel moved out of the frame is put back, as libpcap does.

Expressions are compiled as tcpdump compiles them for a live Linux capture (`libpcap.compile_for_interface`:
an activated handle on the interface), so `vlan`, `inbound`, `outbound` and `ifindex` read the
kernel's metadata (`ldb [vlanp]`, `[vlan_tci]`, `ldh [type]`, `ld [ifidx]`): on receive the kernel has
already moved the outer VLAN tag out of the frame. Such programs are in the linux dialect: in the
kernel they run as they are (cooked mode: rewritten for the kernel's view, as libpcap's fix_program
does); in user space the JIT runs them on the frame as the kernel's filter sees it (the tag not yet
put back; the LINUX_SLL header in cooked mode), with each frame's metadata taken from its ring header
(`ring_meta`). Either way the same frames come out. (An interface libpcap cannot activate, one that
is down say, gets the expression compiled for its link type on a dead handle, in the pcap dialect.)
Known limit (cooked mode, user space): a frame sent with its VLAN tag in the data by a packet socket
(no offload) is reported by the ring with the tag in `tp_vlan_tci` and its inner protocol (af_packet
since 2024), while the kernel's filter reads protocol 0x8100 and the tag in the data; the JIT
filters what the ring reports. A `Program` is in the pcap dialect unless
`dialect="linux"` is given; a `Filter` brings its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple

from .dialects import PCAP, Dialect, DialectLike, dialect_of
from .linux import ancillary
from .opcodes import OPCODES
from .program import DEFAULT_SNAPLEN, Insn, InsnLike, Program
from .sockfilter import attach_filter
from .validate import validate

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .batch import Batch
    from .filter import Filter
    from .ringwalk import RingArrays

__all__ = ["Capture", "CaptureStats", "DumpStats", "PacketRecord", "RingBatch", "interface_linktype", "kernel_program",
           "ring_meta"]

# -- <linux/if_packet.h>, <linux/if_ether.h>, <linux/filter.h>, <linux/if_arp.h> -------------------
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_RESERVE = 12
TPACKET_V3 = 2
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SIOCGIFHWADDR = 0x8927

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETH_P_8021Q = 0x8100

SKF_AD_OFF = 0xFFFFF000  # -0x1000: Linux's ancillary-data loads start here
SKF_AD_PROTOCOL = 0
SKF_AD_PKTTYPE = 4
SKF_NEGATIVE = 0x80000000  # k as an s32 < 0: the kernel treats these offsets specially

SLL_HDR_LEN = 16  # struct sll_header, DLT_LINUX_SLL: pkttype, hatype, halen, addr[8], protocol
VLAN_TAG_LEN = 4
TPACKET_ALIGNMENT = 16

# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, ...
BLOCK_DESC = struct.Struct("=8xIII")
BLOCK_STATUS = struct.Struct("=I")
BLOCK_STATUS_OFFSET = 8
# struct tpacket3_hdr (48 bytes: tp_next_offset, tp_sec, tp_nsec, tp_snaplen, tp_len, tp_status,
# tp_mac, tp_net, hv1 {tp_rxhash, tp_vlan_tci, tp_vlan_tpid}, padding), then at TPACKET_ALIGN(48) the
# struct sockaddr_ll the kernel writes beside every packet (family, protocol, ifindex, hatype,
# pkttype, halen, addr[8]).
PACKET_HEADER = struct.Struct("=IIIIII HH 4xIH 10x 2x2siHBB8s")
TPACKET3_HDRLEN = 48 + 20
TPACKET_REQ3 = struct.Struct("=7I")  # block_size, block_nr, frame_size, frame_nr, retire_blk_tov, priv, features
TPACKET_STATS_V3 = struct.Struct("=III")  # tp_packets (drops included), tp_drops, tp_freeze_q_cnt

# ARPHRD_* (device type) -> the DLT that packets from a SOCK_RAW socket carry (libpcap's
# map_arphrd_to_dlt, the part that needs no special handling). Other types run in cooked mode.
ARPHRD_LINKTYPES: dict[int, tuple[str, int]] = {
    1: ("EN10MB", 1),  # ARPHRD_ETHER
    772: ("EN10MB", 1),  # ARPHRD_LOOPBACK: Linux's lo carries (all-zero) Ethernet headers
    0xFFFE: ("RAW", 12),  # ARPHRD_NONE (tun): packets start at the IP header
    519: ("RAW", 12),  # ARPHRD_RAWIP
    768: ("RAW", 12),  # ARPHRD_TUNNEL (ipip)
    776: ("RAW", 12),  # ARPHRD_SIT
    801: ("IEEE802_11", 105),  # ARPHRD_IEEE80211
    803: ("IEEE802_11_RADIO", 127),  # ARPHRD_IEEE80211_RADIOTAP
}
COOKED = ("LINUX_SLL", 113)
ANY = "any"

# Ring geometry. libpcap asks for 2 MiB (tcpdump -B), blocks of a page or the frame size and retires a
# block after the handle's timeout (tcpdump: 1000 ms); Zeek's AF_PACKET plugin 128 MiB per worker, 32 KiB
# blocks, 10 ms; Suricata 32 KiB blocks and 10 ms too. bpfjit: 32 MiB, Zeek's 10 ms (a block reaches
# Python 10 ms after its first frame at most, where tcpdump's 1 s is what makes it look slow at low
# rates), and blocks of 128 KiB (`_block_size`): not Zeek's 32 KiB, because TPACKET_V3 cuts a frame at
# its block and lo (and GRO on veth) delivers frames of up to 64 KiB that the user-space filter must see
# whole, as the kernel's saw them. At ~1.2 Mpps of 64-byte frames (~144 ring bytes each) 2 MiB holds 12
# ms of traffic, 32 MiB ~190 ms: enough to ride out a scheduling hiccup or a GC pause in the Python loop,
# without pinning Zeek's 128 MiB of unswappable memory per capture.
BLOCK_TIMEOUT = 0.01
BUFFER_SIZE = 32 << 20
POLL_SLICE_MS = 200  # a poll wakes this often to notice close() from another thread


def _permission_message(interface: str) -> str:
    python = os.path.realpath(sys.executable)
    return (
        f"capturing on {interface!r} needs CAP_NET_RAW (an AF_PACKET socket): "
        f"run as root or grant CAP_NET_RAW: setcap cap_net_raw+ep {python}"
    )


class PacketRecord(NamedTuple):
    """One captured packet: `timestamp` (seconds since the epoch), `packet` (bytes), `wirelen`."""

    timestamp: float
    packet: bytes
    wirelen: int


class CaptureStats(NamedTuple):
    """Counters since the capture opened (libpcap's `ps_recv` and `ps_drop`, plus bpfjit's own).

    received:  packets the socket took in, after an in-kernel filter (dropped ones included:
               PACKET_STATISTICS tp_packets);
    dropped:   packets lost because the ring was full (tp_drops);
    rejected:  packets the user-space filter rejected (0 when the kernel filters);
    delivered: packets accepted out of the ring (yielded, pending in `packets()`, or dumped);
    skipped:   lo's outgoing copies (lo shows every packet twice; the incoming one is kept);
    frozen:    times the kernel found the ring full and froze it (tp_freeze_q_cnt).

    Once the ring has been read to its end, received = delivered + rejected + dropped + skipped.
    """

    received: int
    dropped: int
    rejected: int
    delivered: int = 0
    skipped: int = 0
    frozen: int = 0


class RingBatch(NamedTuple):
    """One ring block's accepted packets (`Capture.batches`): `batch` a `Batch` whose packets are
    views into the ring (valid until the next iteration), `timestamps_ns` (int64, nanoseconds since
    the epoch) and `meta` (`metadata.META_DTYPE` records: what the frame header says, as the kernel's
    filter saw the frame; see `ring_meta`), one per packet."""

    batch: Batch
    timestamps_ns: npt.NDArray[np.int64]
    meta: npt.NDArray[Any]


class DumpStats(NamedTuple):
    """What `Capture.dump` wrote (packets, bytes with the file header) and the capture's statistics."""

    packets: int
    bytes: int
    capture: CaptureStats


# -- link types ------------------------------------------------------------------------------------
def _interface_index(interface: str) -> int:
    if not isinstance(interface, str):
        raise TypeError(f"interface must be a str (a name such as 'eth0'), not {type(interface).__name__}")
    if interface == ANY:
        return 0
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        names = ", ".join(name for _, name in socket.if_nameindex())
        raise ValueError(f"no network interface named {interface!r} (this namespace has: {names}, any)") from None


def _hardware_type(interface: str) -> int:
    """The interface's ARPHRD_* type (SIOCGIFHWADDR; any socket will do, no privilege needed)."""
    request = interface.encode() + bytes(40 - len(interface.encode()))  # struct ifreq
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        reply = fcntl.ioctl(probe.fileno(), SIOCGIFHWADDR, request)
    return int(struct.unpack_from("=H", reply, 16)[0])


def interface_linktype(interface: str) -> tuple[str, int, bool]:
    """(DLT name, DLT value, cooked) for capturing on `interface`, as libpcap chooses them.

    `any` and device types without a known link-layer mapping use cooked mode (a SOCK_DGRAM socket;
    the 16-byte LINUX_SLL header is built from what the kernel reports).
    """
    _interface_index(interface)
    if interface == ANY:
        return (*COOKED, True)
    hatype = _hardware_type(interface)
    if hatype in ARPHRD_LINKTYPES:
        return (*ARPHRD_LINKTYPES[hatype], False)
    return (*COOKED, True)


# -- what the kernel may run -----------------------------------------------------------------------
def kernel_program(program: Program, cooked: bool = False, dialect: DialectLike = PCAP) -> Program | None:
    """The program to attach with SO_ATTACH_FILTER, or None when the kernel would compute differently.

    In the pcap dialect the kernel gives loads at offsets >= 2^31 a meaning (ancillary data, negative
    offsets) and masks shift counts by X, where bpfjit returns 0 (SEMANTICS.md): such programs are
    filtered in user space. In the linux dialect they mean what the kernel makes of them. In cooked mode
    the kernel's packet starts after the 16-byte LINUX_SLL header, so loads move back 16 bytes, the
    header's pkttype and protocol become ancillary loads, and `ret #k` keeps k - 16 bytes (libpcap's
    fix_program, made exact: `len`, `ret a`, negative offsets and other header loads fall back;
    ancillary loads are left alone, as libpcap leaves them).
    What remains different in the pcap dialect, and cannot be seen in the program: `[x + k]` where
    X + k reaches 2^31 (the kernel reads it as a negative offset, or wraps past 2^32; bpfjit reads out
    of bounds).
    """
    linux = dialect_of(dialect).offsets == "signed"
    insns: list[Insn] = []
    for insn in program:
        info = OPCODES[insn.code]
        kind, k = info.kind, insn.k
        if kind == "alu_x" and info.alu is not None and info.alu.hazard == "shift" and not linux:  # lsh x, rsh x
            return None
        if kind in ("ld_abs", "ld_ind", "ldx_msh"):
            if k >= SKF_NEGATIVE:
                if not linux or (cooked and not (kind == "ld_abs" and ancillary(k) is not None)):
                    return None
            elif cooked:
                if k >= SLL_HDR_LEN:
                    k -= SLL_HDR_LEN
                elif kind == "ld_abs" and info.width == 2 and k in (0, 14):
                    k = SKF_AD_OFF + (SKF_AD_PKTTYPE if k == 0 else SKF_AD_PROTOCOL)
                else:
                    return None
        elif cooked and kind in ("ld_len", "ldx_len", "ret_a"):
            return None
        elif cooked and kind == "ret_k" and k:
            if k <= SLL_HDR_LEN:  # keeps no more than the header: the kernel cannot say so
                return None
            k -= SLL_HDR_LEN
        insns.append(insn._replace(k=k))
    return Program(insns)


def _resolve(
    source: Filter | Program | Iterable[InsnLike] | str,
    interface: str,
    linktype: str,
    snaplen: int,
    dialect: DialectLike | None,
) -> tuple[Program, Dialect, Filter | None]:
    """The program to run, its dialect, and the Filter when one was given (an expression is compiled
    for the live interface, as tcpdump does: the linux dialect)."""
    from .dialects import LINUX

    if isinstance(source, str):
        from .libpcap import compile_for_interface

        if dialect is not None and dialect_of(dialect) is not LINUX:
            raise ValueError("an expression is compiled for the live interface, in the linux dialect")
        try:
            return validate(compile_for_interface(source, interface, linktype, snaplen), LINUX), LINUX, None
        except OSError:
            # libpcap cannot activate the interface (it is down, say: tcpdump refuses it): compiled
            # for its link type on a dead handle instead, in the pcap dialect, as before live compiles.
            return validate(Program.from_expr(source, linktype, snaplen=snaplen)), PCAP, None
    record = PCAP if dialect is None else dialect_of(dialect)
    if isinstance(source, Program):
        return validate(source, record), record, None
    from .filter import Filter  # only now: a capture that the kernel filters never loads LLVM

    if isinstance(source, Filter):
        if dialect is not None and record is not source.dialect:
            raise ValueError(f"the filter is in the {source.dialect.name!r} dialect, not {record.name!r}")
        if source.expression is not None and source.linktype is not None:
            from .libpcap import linktype_value

            if linktype_value(source.linktype) != linktype_value(linktype):
                raise ValueError(
                    f"the filter {source.expression!r} was compiled for link type {source.linktype!r}, "
                    f"but this interface captures {linktype}: pass the expression instead"
                )
        return source.program, source.dialect, source
    return validate(Program(source), record), record, None


# -- the capture -----------------------------------------------------------------------------------
class Capture:
    """Packets from a network interface, filtered in the kernel or by the JIT (see the module doc).

    `interface` is a name (`eth0`, `lo`) or `any`; `filter` a pcap-filter expression (compiled for
    the live interface as tcpdump does: linux dialect), a `Filter` or a `Program` (in `dialect`,
    "pcap" unless given). Iterating yields `PacketRecord`s,
    `(timestamp, packet, wirelen)` with `packet` a `bytes` copy. Needs root or CAP_NET_RAW
    (`PermissionError` otherwise). `block_timeout` (seconds) is how long the kernel waits before it
    hands over a partly filled block; `buffer_size` the ring's size in bytes, in blocks of
    `block_size` bytes (a multiple of the page size; default: the smallest power of two that holds a
    64 KiB frame, or a snaplen-long one). Defaults: see `BUFFER_SIZE` and `BLOCK_TIMEOUT`.

    Three ways to read: `packets()` (bytes copies), `batches()` (a `Batch` per ring block, zero
    copy) and `dump(path)` (straight to a pcap or pcapng file). Each ring block is walked by one
    native call (`ringwalk`), which runs the user-space filter inline.
    """

    interface: str
    linktype: str
    dlt: int
    cooked: bool
    ifindex: int
    snaplen: int
    program: Program | None
    dialect: Dialect
    in_kernel: bool

    def __init__(
        self,
        interface: str,
        filter: Filter | Program | Iterable[InsnLike] | str | None = None,
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        promisc: bool = False,
        in_kernel: bool = True,
        dialect: DialectLike | None = None,
        block_timeout: float = BLOCK_TIMEOUT,
        buffer_size: int = BUFFER_SIZE,
        block_size: int | None = None,
        _around_bind: Callable[[socket.socket], AbstractContextManager[object]] | None = None,
    ):
        # (_around_bind: for `fanout`, which joins the socket to a PACKET_FANOUT group right after bind.)
        self._around_bind = _around_bind or (lambda sock: contextlib.nullcontext())
        self._closed = True  # until the ring exists: close() and __del__ may run on a half-built object
        self._sock: socket.socket | None = None
        self._filter: Filter | None = None
        self._mmap: mmap.mmap | None = None
        self._ring: npt.NDArray[np.uint8] | None = None
        self.program = None
        self.dialect = PCAP
        self.in_kernel = in_kernel
        if not isinstance(snaplen, int) or isinstance(snaplen, bool) or not 0 < snaplen <= 0x7FFFFFFF:
            raise ValueError(f"snaplen must be an int between 1 and 2^31-1, not {snaplen!r}")
        self.interface = interface
        self.ifindex = _interface_index(interface)
        if promisc and interface == ANY:
            raise ValueError("promiscuous mode is not supported on the 'any' device; name an interface")
        self.linktype, self.dlt, self.cooked = interface_linktype(interface)
        self.snaplen = snaplen
        self._lo_index = _loopback_index()
        # Where a VLAN tag goes back into the link header: after the MACs, or the SLL header's protocol.
        self._tag_at = SLL_HDR_LEN - 2 if self.cooked else (12 if self.dlt == 1 else 0)
        self._pending: deque[PacketRecord] = deque()
        self._counts = [0, 0, 0, 0, 0, 0]  # CaptureStats' fields
        self._lock = threading.Lock()
        if block_size is not None and (not isinstance(block_size, int) or block_size <= 0
                                       or block_size % mmap.PAGESIZE):  # fmt: skip
            raise ValueError(f"block_size must be a positive multiple of the page size ({mmap.PAGESIZE}), "
                             f"not {block_size!r}")
        self._block_size = _block_size(snaplen) if block_size is None else block_size
        self._block_nr = max(2, buffer_size // self._block_size)
        self._cursor = 0
        self._holding, self._frames_left, self._frame_pos = False, 0, 0  # the block in hand, where its walk is
        self._walkers: dict[str, Any] = {}  # by output format (ringwalk.FORMATS)
        self._sock = _packet_socket(interface, self.cooked)  # first: without privileges, fail before any work
        try:
            if filter is not None:
                self.program, self.dialect, self._filter = _resolve(filter, interface, self.linktype, snaplen, dialect)
            attach = None
            if in_kernel and self.program is not None:
                attach = kernel_program(self.program, self.cooked, self.dialect)
            # With a program, in_kernel says where it actually runs (see kernel_program).
            self.in_kernel = in_kernel if self.program is None else attach is not None
            self._open(attach, promisc, block_timeout)
            from .ringwalk import RingArrays

            # A slot for every frame a block can hold (each takes more than 64 bytes: its headers alone 68).
            self._arrays: RingArrays = RingArrays(self._block_size // 64, snaplen, self._lo_index)
            self._walkers[""] = self._ring_walker("")  # compile now, not on the first block
        except BaseException:
            self._teardown()
            raise

    def _open(self, attach: Program | None, promisc: bool, block_timeout: float) -> None:
        """Set the socket up in the order the kernel needs: version, reserve, filter, ring, mmap, bind."""
        sock = self._sock
        assert sock is not None
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        # Room in front of each packet for a VLAN tag (and the SLL header in cooked mode) we write back.
        sock.setsockopt(SOL_PACKET, PACKET_RESERVE, VLAN_TAG_LEN + (SLL_HDR_LEN if self.cooked else 0))
        if attach is not None:
            self._attach(attach)
        frame_size = TPACKET_ALIGNMENT << 7  # V3 packs packets freely; frames only satisfy the checks
        request = TPACKET_REQ3.pack(
            self._block_size, self._block_nr, frame_size, self._block_size // frame_size * self._block_nr,
            max(1, round(block_timeout * 1000)), 0, 0,
        )  # fmt: skip
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, request)
        # (Python's mmap keeps a dup of the fd: the ring lives until both are closed.)
        self._mmap = mmap.mmap(
            sock.fileno(), self._block_size * self._block_nr, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._closed = False
        if promisc:
            mreq = struct.pack("=iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")  # struct packet_mreq
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        with self._around_bind(sock):
            _bind(sock, self.ifindex)
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    def _attach(self, program: Program) -> None:
        """Attach the program in the kernel (SO_ATTACH_FILTER), or fall back to user space."""
        assert self._sock is not None
        try:
            attach_filter(self._sock, program)
        except OSError as exc:
            # bpfjit validated the program, so these are kernel limits, not errors: ENOMEM when it is
            # bigger than net.core.optmem_max, EINVAL when its eBPF translation overflows a jump.
            if exc.errno not in (errno.ENOMEM, errno.EINVAL):
                raise
            self.in_kernel = False  # __init__ compiles the filter for user space

    @property
    def filter(self) -> Filter | None:
        """The compiled filter (compiled on first use; None without a program)."""
        if self._filter is None and self.program is not None:
            from .filter import compile as jit_compile

            self._filter = jit_compile(self.program, dialect=self.dialect)
        return self._filter

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """The socket's file descriptor (readable when a ring block is ready), for select loops."""
        if self._sock is None or self._closed:
            raise ValueError("the capture is closed")
        return self._sock.fileno()

    # -- reading -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PacketRecord]:
        return self.packets()

    def packets(self, count: int | None = None, timeout: float | None = None) -> Iterator[PacketRecord]:
        """Yield accepted packets: at most `count`, for at most `timeout` seconds (None: no limit).

        Each is a `PacketRecord` whose `packet` is a `bytes` copy: a block's packets are copied out
        together and the block goes straight back to the kernel. Stops early when the capture is
        closed (from another thread, say); a KeyboardInterrupt closes the capture and propagates.
        `OSError` when the socket reports an error (ENETDOWN: the interface went down).
        """
        if self._closed:
            raise ValueError("the capture is closed")
        return self._packets(count, None if timeout is None else time.monotonic() + timeout)

    def _packets(self, count: int | None, deadline: float | None) -> Iterator[PacketRecord]:
        pending = self._pending
        left = count
        try:
            while left is None or left > 0:
                if not pending:
                    if not self._wait(deadline):
                        return
                    with self._lock:
                        if self._closed:
                            return
                        self._copy_out(self._walk(""))
                        self._release_if_done()
                    continue
                if left is None:
                    while pending:
                        yield pending.popleft()
                else:
                    yield pending.popleft()
                    left -= 1
        except KeyboardInterrupt:
            self.close()
            raise

    def batches(self, timeout: float | None = None) -> Iterator[RingBatch]:
        """Yield one `RingBatch` per ring block (blocks where nothing was accepted are skipped), for
        at most `timeout` seconds (None: no limit); ends when the capture is closed.

        Zero copy: `batch` points into the ring, and its packets' bytes are valid only until the
        next iteration: asking for the next batch (or leaving the loop) hands the block back to the
        kernel, which writes new packets over it. Copy what you keep (`bytes(batch[i])`, or
        `Batch.from_packets`); the numpy columns (`batch.offsets` ..., `timestamps_ns`, `meta`) are
        the caller's. A KeyboardInterrupt closes the capture and propagates.
        """
        if self._closed:
            raise ValueError("the capture is closed")
        return self._batches(None if timeout is None else time.monotonic() + timeout)

    def _batches(self, deadline: float | None) -> Iterator[RingBatch]:
        try:
            while self._wait(deadline):  # (hands the previous block back first)
                with self._lock:
                    if self._closed:
                        return
                    n = self._walk("")
                    made = self._ring_batch(n) if n else None
                if made is not None:
                    yield made
        except KeyboardInterrupt:
            self.close()
            raise
        finally:
            with self._lock:
                self._release_if_done()

    def dump(
        self, path: str | os.PathLike[str], count: int | None = None, timeout: float | None = None,
        format: str = "pcap",
    ) -> DumpStats:  # fmt: skip
        """Capture straight to a file, as `tcpdump -w` does: accepted packets go from the ring to the
        file in one writev per block (record headers made by the walker), no Python per packet.

        `format` "pcap": what tcpdump -w writes (this host's byte order, version 2.4, the capture's
        snaplen and link type, microsecond timestamps, truncated); "pcapng": a section header, one
        interface (link type, snaplen, if_tsresol 9) and an enhanced packet block per packet, with
        nanosecond timestamps. At most `count` packets, for at most `timeout` seconds; stops when the
        capture is closed. A block's packets after the count stay in the ring for the next read.
        Returns `DumpStats` (packets and bytes written, the capture's statistics).
        """
        from .ringwalk import writev_all

        if self._closed:
            raise ValueError("the capture is closed")
        if format not in ("pcap", "pcapng"):
            raise ValueError(f"format must be 'pcap' or 'pcapng', not {format!r}")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ValueError(f"count must be a non-negative int or None, not {count!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        packets = 0
        try:
            header = self._file_header(format)
            with open(fd, "wb", buffering=0, closefd=False) as out:
                out.write(header)
            written = len(header)
            while count is None or packets < count:
                if not self._wait(deadline):
                    break
                with self._lock:
                    if self._closed:
                        break
                    n = self._walk(format, (1 << 64) - 1 if count is None else count - packets)
                    if n:
                        arrays = self._arrays
                        writev_all(fd, arrays.iov, arrays.chunk.iov_count, arrays.chunk.bytes)
                        packets += n
                        written += arrays.chunk.bytes
                    self._release_if_done()
        except KeyboardInterrupt:
            self.close()
            raise
        finally:
            os.close(fd)
        return DumpStats(packets, written, self.stats())

    def _file_header(self, format: str) -> bytes:
        if format == "pcap":  # struct pcap_file_header, as libpcap's pcap_dump_open writes it
            return struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, self.snaplen, self.dlt)
        section = struct.pack("=IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("=I", 28)
        options = struct.pack("=HHB3x", 9, 1, 9) + struct.pack("=HH", 0, 0)  # if_tsresol = 9, opt_endofopt
        length = 16 + len(options) + 4
        interface = struct.pack("=IIHHI", 1, length, self.dlt, 0, self.snaplen) + options + struct.pack("=I", length)
        return section + interface

    # -- the ring ------------------------------------------------------------------------------------
    def _wait(self, deadline: float | None) -> bool:
        """Hand back the block in hand once it is walked; then wait until a block with frames left to
        walk is ours. False at the deadline or on close."""
        while True:
            with self._lock:
                if self._closed:
                    return False
                if self._holding and self._frames_left:
                    return True
                self._release_if_done()
                assert self._mmap is not None
                base = self._cursor * self._block_size
                status, count, first = BLOCK_DESC.unpack_from(self._mmap, base)
                if status & TP_STATUS_USER:
                    self._holding, self._frames_left, self._frame_pos = True, count, base + first
                    continue
            wait = POLL_SLICE_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                wait = min(wait, max(1, int(left * 1000) + 1))
            for _, events in self._poll.poll(wait):
                if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                    self._check_error()

    def _release_if_done(self) -> None:
        """Give the block in hand back to the kernel (TP_STATUS_KERNEL) once every frame is walked.
        (With `_lock` held.)"""
        if self._holding and not self._frames_left and not self._closed:
            assert self._mmap is not None
            BLOCK_STATUS.pack_into(self._mmap, self._cursor * self._block_size + BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
            self._cursor = (self._cursor + 1) % self._block_nr
            self._holding = False

    def _walk(self, format: str, limit: int = (1 << 64) - 1) -> int:
        """Walk the block in hand with the native walker (`ringwalk`), up to `limit` accepted frames;
        their number (in `self._arrays`). With `_lock` held."""
        walker = self._walkers.get(format)
        if walker is None:
            walker = self._walkers[format] = self._ring_walker(format)
        arrays = self._arrays
        chunk = arrays.chunk
        chunk.limit = limit
        end = (self._cursor + 1) * self._block_size
        n: int = walker(self._ring_array().ctypes.data, self._frame_pos, self._frames_left, end, arrays.address)
        self._frame_pos = chunk.position
        self._frames_left = 0 if chunk.status == 3 else self._frames_left - chunk.walked  # 3: ringwalk.Status.BAD
        counts = self._counts
        counts[2] += chunk.rejected
        counts[3] += n
        counts[4] += chunk.skipped
        return n

    def _ring_walker(self, format: str) -> Any:
        from .ringwalk import View, ring_walker

        program = self.program if self.program is not None and not self.in_kernel else None
        kernel_view = program is not None and self.dialect.offsets == "signed"
        return ring_walker(View(program, "kernel" if kernel_view else "link", self.cooked, self._tag_at, format))

    def _copy_out(self, n: int) -> None:
        """The walked block's accepted packets as PacketRecords (bytes copied out of the ring), pending."""
        if not n:
            return
        arrays, ring = self._arrays, self._mmap
        assert ring is not None
        starts = arrays.offsets[:n]
        ends = (starts + arrays.caplens[:n]).tolist()
        # seconds + nanoseconds * 1e-9 in float64: the same operations, so the same floats, as Python's
        times = (arrays.seconds[:n] + arrays.nanoseconds[:n] * 1e-9).tolist()
        packets = map(ring.__getitem__, map(slice, starts.tolist(), ends))
        rows = zip(times, packets, arrays.wirelens[:n].tolist(), strict=True)
        self._pending.extend(map(tuple.__new__, repeat(PacketRecord), rows))  # PacketRecords, made in C

    def _ring_batch(self, n: int) -> RingBatch:
        import numpy as np

        from .batch import Batch

        arrays = self._arrays
        batch = Batch(self._ring_array(), arrays.offsets[:n].copy(), arrays.caplens[:n].copy(),
                      arrays.wirelens[:n].copy())  # fmt: skip
        stamps = arrays.seconds[:n].astype(np.int64) * 1_000_000_000 + arrays.nanoseconds[:n]
        return RingBatch(batch, stamps, arrays.meta[:n].copy())

    def _check_error(self) -> None:
        if self._closed or self._sock is None:
            return
        error = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, f"capture on {self.interface!r}: {os.strerror(error)}")

    def _ring_array(self) -> npt.NDArray[np.uint8]:
        if self._ring is None:
            import numpy as np

            assert self._mmap is not None
            self._ring = np.frombuffer(self._mmap, dtype=np.uint8)
        return self._ring

    # -- statistics and closing --------------------------------------------------------------------
    def stats(self) -> CaptureStats:
        """Counts since the capture opened: the kernel's (PACKET_STATISTICS, which resets on every read)
        summed, and the walker's."""
        if not self._closed and self._sock is not None:
            # The kernel resets its counters on every read: keep the sums.
            packets, drops, frozen = TPACKET_STATS_V3.unpack(
                self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, TPACKET_STATS_V3.size)
            )
            self._counts[0] += packets
            self._counts[1] += drops
            self._counts[5] += frozen
        return CaptureStats(*self._counts)

    def close(self) -> None:
        """Unmap the ring and close the socket (idempotent)."""
        if self._closed and self._sock is None:
            return
        if not self._closed:
            self.stats()  # the last counts, while the socket can still be asked
        with self._lock:
            self._teardown()

    def _teardown(self) -> None:
        self._closed = True
        self._pending.clear()
        self._ring = None  # the numpy view exports the mmap; drop it before closing the mmap
        if self._mmap is not None:
            # BufferError: someone still holds a view of the ring; it is unmapped when freed.
            with contextlib.suppress(BufferError):
                self._mmap.close()
            self._mmap = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_sock", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("kernel filter" if self.in_kernel else "JIT filter")
        source = "" if self.program is None else f", {len(self.program)} insns"
        return f"<bpfjit.Capture {self.interface!r} {self.linktype}{source}, {state}>"


# The fields of a ring frame's header (struct tpacket3_hdr, then struct sockaddr_ll at 48) that hold
# packet metadata (DIALECTS.md B.3), for ring_meta's numpy gather: (name, offset, dtype).
_RING_FIELDS = (("status", 20, "=u4"), ("mac", 24, "=u2"), ("net", 26, "=u2"), ("vlan_tci", 32, "=u4"),
                ("vlan_tpid", 36, "=u2"), ("protocol", 50, ">u2"), ("ifindex", 52, "=i4"), ("hatype", 56, "=u2"),
                ("pkttype", 58, "u1"))  # fmt: skip
_RING_HEADER_LEN = 59


def ring_meta(
    ring: npt.NDArray[np.uint8], positions: npt.NDArray[np.int64], *, cooked: bool = False, rng: Any = None
) -> npt.NDArray[Any]:
    """`metadata.META_DTYPE` records for the TPACKET_V3 frames whose headers start at `positions` in
    `ring` (the mapped ring as bytes), in one numpy gather (DIALECTS.md B.3):

    protocol, pkttype, ifindex, hatype from the `sockaddr_ll` beside each frame; vlan_present from
    `tp_status & TP_STATUS_VLAN_VALID`, vlan_tci (PCP, DEI and VID, as the kernel's filter reads it),
    vlan_tpid when `TP_STATUS_VLAN_TPID_VALID` (else 0x8100 for a tag, 0 without); net_offset
    `tp_net - tp_mac` (+ 16 in cooked mode, where the user-space view has the LINUX_SLL header in front).
    What a ring frame does not carry: mark, queue, cpu and rxhash are 0 (the kernel's filter saw
    `skb->hash` as stored, usually 0 on receive); random is drawn from `rng` (numpy's) when given.
    """
    import numpy as np

    from .metadata import META_DTYPE

    header = np.dtype({"names": [f[0] for f in _RING_FIELDS], "formats": [f[2] for f in _RING_FIELDS],
                       "offsets": [f[1] for f in _RING_FIELDS], "itemsize": _RING_HEADER_LEN})  # fmt: skip
    n = len(positions)
    raw = ring[positions[:, None] + np.arange(_RING_HEADER_LEN)]  # (n, 59) bytes, a copy
    fields = np.ascontiguousarray(raw).view(header).reshape(n)
    meta = np.zeros(n, dtype=META_DTYPE)
    status = fields["status"]
    present = (status & TP_STATUS_VLAN_VALID) != 0
    meta["protocol"] = fields["protocol"]
    meta["pkttype"] = fields["pkttype"]
    meta["ifindex"] = fields["ifindex"].astype(np.int64) & 0xFFFFFFFF
    meta["hatype"] = fields["hatype"]
    meta["vlan_present"] = present
    meta["vlan_tci"] = fields["vlan_tci"] & 0xFFFF
    tpid_valid = (status & TP_STATUS_VLAN_TPID_VALID) != 0
    meta["vlan_tpid"] = np.where(tpid_valid, fields["vlan_tpid"], np.where(present, ETH_P_8021Q, 0))
    meta["net_offset"] = fields["net"].astype(np.int64) - fields["mac"] + (SLL_HDR_LEN if cooked else 0)
    if rng is not None:
        meta["random"] = rng.integers(0, 1 << 32, size=n, dtype=np.uint64)
    return meta


def _packet_socket(interface: str, cooked: bool) -> socket.socket:
    try:
        # Protocol 0: the socket receives nothing until bind(), so the filter and the ring are in
        # place before the first packet (libpcap swaps a drop-all filter in for the same reason).
        return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM if cooked else socket.SOCK_RAW, 0)
    except PermissionError as exc:
        raise PermissionError(exc.errno, _permission_message(interface)) from None


def _block_size(snaplen: int) -> int:
    """A power-of-two multiple of the page size that holds a packet of max(snaplen, 64 KiB) and its headers.

    TPACKET_V3 cuts packets at the block size, so blocks are big enough that the user-space filter
    sees as much of a packet as the kernel's filter would (lo's MTU is 64 KiB).
    """
    need = max(snaplen, 65536) + TPACKET3_HDRLEN + 2 * TPACKET_ALIGNMENT + SLL_HDR_LEN + VLAN_TAG_LEN
    size = mmap.PAGESIZE
    while size < need:
        size <<= 1
    return size


def _loopback_index() -> int:
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return -1


_libc: ctypes.CDLL | None = None


def _bind(sock: socket.socket, ifindex: int) -> None:
    """bind() to an ifindex (0 for `any`), which Python's AF_PACKET address tuple cannot express."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    # struct sockaddr_ll: family, protocol (network order), ifindex, hatype, pkttype, halen, addr[8]
    address = struct.pack("=HHiHBB8s", socket.AF_PACKET, socket.htons(ETH_P_ALL), ifindex, 0, 0, 0, b"")
    if _libc.bind(sock.fileno(), address, len(address)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"bind to interface index {ifindex}: {os.strerror(code)}")


class _PythonWalk:
    """The per-frame Python walk of a ring block that the native walker (`ringwalk`) replaced, kept as
    the reference it is tested against (tests/test_capture_ring.py): the same frames, changes to the
    ring (SLL headers, tags put back) and results, ~1.5 µs a frame. `ring` is the capture's mapping or
    a copy of it (an anonymous mmap: `.move` and slices); `walk` returns the accepted frames as
    (header position, seconds, nanoseconds, packet bytes, wirelen) and counts rejections in `rejected`."""

    def __init__(self, cap: Capture, ring: mmap.mmap):
        self.cap, self.ring = cap, ring
        self.rejected = 0
        self.program = cap.program if cap.program is not None and not cap.in_kernel else None

    def walk(self, base: int) -> list[tuple[int, int, int, bytes, int]]:
        cap, ring = self.cap, self.ring
        _, count, first = BLOCK_DESC.unpack_from(ring, base)
        unpack, lo_index = PACKET_HEADER.unpack_from, cap._lo_index
        frames: list[tuple[int, tuple[Any, ...]]] = []
        position = base + first
        for _ in range(count):
            header = unpack(ring, position)
            # lo shows every packet twice, outgoing and incoming: keep the incoming copy, as libpcap does.
            if header[13] != PACKET_OUTGOING or header[11] != lo_index:
                frames.append((position, header))
            position += header[0]
        if self.program is not None and cap.dialect.offsets == "signed":
            return self._kernel_view(frames)
        found = []
        for at, header in frames:
            start, added = at + header[6], 0
            if cap.cooked or header[5] & TP_STATUS_VLAN_VALID or header[8]:
                start, added = self._link_header(at, header)
            found.append((at, header, start, header[3] + added, header[4] + added))
        if self.program is None:
            return [(at, h[1], h[2], ring[start : start + min(caplen, cap.snaplen)], wirelen)
                    for at, h, start, caplen, wirelen in found]  # fmt: skip
        keep = self._run_filter([f[2] for f in found], [f[3] for f in found], [f[4] for f in found])
        return [(at, h[1], h[2], ring[start : start + length], wirelen)
                for (at, h, start, _, wirelen), length in zip(found, keep, strict=True) if length]  # fmt: skip

    def _kernel_view(self, frames: list[tuple[int, tuple[Any, ...]]]) -> list[tuple[int, int, int, bytes, int]]:
        """A linux-dialect program on each frame as the kernel's filter sees it, with ring_meta's metadata;
        the tag is put back into the frames it accepts, cut as the kernel cuts: min(result, caplen)."""
        import numpy as np

        cap, ring = self.cap, self.ring
        if not frames:
            return []
        added = SLL_HDR_LEN if cap.cooked else 0
        starts = [self._sll_header(at, header) if cap.cooked else at + header[6] for at, header in frames]
        caplens = [header[3] + added for _, header in frames]
        wirelens = [header[4] + added for _, header in frames]
        positions = np.fromiter((at for at, _ in frames), dtype=np.int64, count=len(frames))
        meta = ring_meta(np.frombuffer(ring, dtype=np.uint8), positions, cooked=cap.cooked)
        keep = self._run_filter(starts, caplens, wirelens, meta)
        accepted = []
        for (at, header), start, wirelen, length in zip(frames, starts, wirelens, keep, strict=True):
            if length:
                start, tag = self._vlan_tag(start, header, length)
                cut = min(length + tag, cap.snaplen)
                accepted.append((at, header[1], header[2], ring[start : start + cut], wirelen + tag))
        return accepted

    def _link_header(self, position: int, header: tuple[Any, ...]) -> tuple[int, int]:
        """Rebuild what the kernel took out of the packet in front of it, in the reserved room: the
        LINUX_SLL header in cooked mode, and an 802.1Q tag; (where the packet starts, bytes added)."""
        start = position + header[6]
        added = 0
        if self.cap.cooked:
            start = self._sll_header(position, header)
            added = SLL_HDR_LEN
        start, tag = self._vlan_tag(start, header, header[3] + added)
        return start, added + tag

    def _sll_header(self, position: int, header: tuple[Any, ...]) -> int:
        mac, protocol, _, hatype, pkttype, halen, address = (header[6], *header[10:])
        start = position + mac - SLL_HDR_LEN
        self.ring[start : start + SLL_HDR_LEN] = struct.pack("!HHH8s", pkttype, hatype, halen, address) + protocol
        return start

    def _vlan_tag(self, start: int, header: tuple[Any, ...], caplen: int) -> tuple[int, int]:
        """Put back an 802.1Q tag the kernel moved into tp_vlan_tci in front of the `caplen` bytes at
        `start`, unless the frame is cut before the tag's place (libpcap's `tp_snaplen >= vlan_offset`)."""
        status, vlan_tci, vlan_tpid = header[5], header[8], header[9]
        tag_at = self.cap._tag_at
        if (status & TP_STATUS_VLAN_VALID or vlan_tci) and tag_at and caplen >= tag_at:
            tpid = vlan_tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
            self.ring.move(start - VLAN_TAG_LEN, start, tag_at)
            start -= VLAN_TAG_LEN
            tag = start + tag_at
            self.ring[tag : tag + VLAN_TAG_LEN] = struct.pack("!HH", tpid, vlan_tci)
            return start, VLAN_TAG_LEN
        return start, 0

    def _run_filter(self, starts: Sequence[int], caplens: Sequence[int], wirelens: Sequence[int],
                    meta: Any = None) -> list[int]:  # fmt: skip
        import numpy as np

        from .batch import Batch

        filter = self.cap.filter
        assert filter is not None
        verdicts = filter.run_batch(Batch(np.frombuffer(self.ring, dtype=np.uint8), starts, caplens, wirelens),
                                    meta=meta)  # fmt: skip
        keep = np.minimum(np.minimum(verdicts, np.asarray(caplens, dtype=np.uint32)), self.cap.snaplen)
        self.rejected += int(np.count_nonzero(verdicts == 0))
        return [int(k) for k in keep]
