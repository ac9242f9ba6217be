"""The live-capture ring walker: one native call lists the frames of a TPACKET_V3 ring block.

A Python loop over a ring block's frames costs 1.4-2.5 µs a packet (issue 19), more than the kernel
spends delivering it. The walker, built with `llvmlite.ir` like `walkers`' file walkers, walks the
`tp_next_offset` chain of one block in one call and, for each frame:

- skips lo's outgoing copy (lo shows every packet twice; libpcap keeps the incoming one);
- in cooked mode, writes the 16-byte LINUX_SLL header in front of the data (in the room
  PACKET_RESERVE leaves), from the `sockaddr_ll` beside the frame;
- writes the frame's `metadata.META_DTYPE` record from its header (DIALECTS.md B.3, as
  `capture.ring_meta` reads it: protocol, pkttype, ifindex, hatype from `sockaddr_ll`; the VLAN
  fields from `tp_status`, `tp_vlan_tci`, `tp_vlan_tpid`; net_offset `tp_net - tp_mac`, + 16 cooked;
  random from a xorshift64 state; mark, queue, cpu and rxhash 0);
- runs the filter inline when it runs in user space, and puts back an 802.1Q tag the kernel moved
  into `tp_vlan_tci`, as `Capture` always has: a pcap-dialect program (or none) sees the frame with
  its tag back, in every frame whose caplen reaches the tag's place; a linux-dialect program sees the
  kernel's view (tag in the metadata) and the tag goes back into the frames it accepts, when the
  bytes it keeps reach the tag's place;
- lists an accepted frame in the `abi.RingChunk` arrays (where its packet starts in the ring, bytes
  kept, wire length, seconds, nanoseconds; the metadata record at the same index), and, for `dump`,
  as iovecs with a pcap (µs) or pcapng (EPB, ns) record header made beside it, ready for writev.

    abi.WALK_RING  u64 walk_ring(ring, pos, frames, end, RingChunk *chunk)   -> frames accepted

Packets are cut as the kernel cuts them: to min(BPF result, caplen, snaplen). The frames of a block
are the kernel's, but the walker still checks that each header and packet lies inside the block and
stops (`Status.BAD`) otherwise, so what it lists is always inside the ring.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from enum import IntEnum
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import abi
from .caches import CodeCache
from .linux import META_LAYOUT, META_SIZE

if TYPE_CHECKING:
    from llvmlite import ir

    from .native import MachineCode
    from .program import Program


class Status(IntEnum):
    """Why the ring walker stopped (`RingChunk.status`)."""

    DONE = 0  # `frames` frames walked
    LIMIT = 1  # `limit` frames accepted
    FULL = 2  # `capacity` slots used
    BAD = 3  # a frame's header or packet lies outside the block (never seen from a kernel)


FORMATS = ("", "pcap", "pcapng")  # "": no record headers or iovecs (batches, packets)
HEADER_SLOT = 48  # bytes of `headers` per frame: a 16-byte pcap or 28-byte EPB header, an EPB trailer at 32
IOV_PER_FRAME = {"": 0, "pcap": 2, "pcapng": 3}

# struct tpacket3_hdr, then struct sockaddr_ll at TPACKET_ALIGN(48) (DIALECTS.md B.3): (offset, bits)
HEADER = {"next": (0, 32), "sec": (4, 32), "nsec": (8, 32), "snaplen": (12, 32), "len": (16, 32),
          "status": (20, 32), "mac": (24, 16), "net": (26, 16), "vlan_tci": (32, 32), "vlan_tpid": (36, 16),
          "protocol": (50, 16), "ifindex": (52, 32), "hatype": (56, 16), "pkttype": (58, 8), "halen": (59, 8),
          "addr": (60, 64)}  # fmt: skip
FRAME_HEADER_LEN = 68  # TPACKET3_HDRLEN: tpacket3_hdr and sockaddr_ll
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 1 << 4, 1 << 6
PACKET_OUTGOING = 4
ETH_P_8021Q = 0x8100
SLL_HDR_LEN, VLAN_TAG_LEN = 16, 4
PREFIX = "bpfjit_ring_"


class View(NamedTuple):
    """What a walker does, besides walking: the program it runs (None: keeps every frame), in which
    view ("link": the frame with its tag back, pcap dialect; "kernel": the kernel filter's view,
    linux dialect, metadata read), cooked mode, where a VLAN tag goes back (0: never), the format."""

    program: Program | None
    view: str
    cooked: bool
    tag_at: int
    format: str


# -- IR generation ---------------------------------------------------------------------------------
def emit_walk_ring(module: ir.Module, name: str, spec: View) -> ir.Function:
    """`abi.WALK_RING` for `spec` in `module` (see the module doc)."""
    from llvmlite import ir

    from . import lower
    from .analysis import analyse
    from .dialects import LINUX, PCAP

    i1, i8, i16, i32, i64 = (ir.IntType(w) for w in (1, 8, 16, 32, 64))
    fn = abi.WALK_RING.declare(module, name)
    arg = abi.args(fn)
    entry = fn.append_basic_block("entry")
    b = ir.IRBuilder(entry)
    little = sys.byteorder == "little"

    def const(ty: ir.IntType, value: int) -> ir.Constant:
        return ir.Constant(ty, int(value))  # int(): before 3.11, str(Status.LIMIT) is "Status.LIMIT"

    def intrinsic(name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        existing = module.globals.get(name)
        return existing if existing is not None else ir.Function(module, ir.FunctionType(ret, args), name)

    def field(name: str) -> ir.Value:
        index = abi.RING_CHUNK_FIELDS[name]
        return b.gep(arg["chunk"], [const(i32, 0), const(i32, index)], inbounds=True)

    def var(ty: ir.Type, init: ir.Value, name: str) -> ir.AllocaInstr:
        slot = b.alloca(ty, name=name)  # promoted to SSA by sroa
        b.store(init, slot)
        return slot

    def at(pos: ir.Value, ty: ir.IntType) -> ir.Value:
        return b.bitcast(b.gep(arg["ring"], [pos], inbounds=True), ty.as_pointer())

    def be16(value: ir.Value) -> ir.Value:
        """A u16 in network order (as stored), from a host-order value, or back."""
        return b.call(intrinsic("llvm.bswap.i16", i16, [i16]), [value]) if little else value

    def umin(x: ir.Value, y: ir.Value) -> ir.Value:
        return b.select(b.icmp_unsigned("<", x, y), x, y)

    def cold(cond: ir.Value, status: Status, what: str) -> None:
        stop, cont = fn.append_basic_block(f"stop.{what}"), fn.append_basic_block(f"ok.{what}")
        b.cbranch(cond, stop, cont).set_weights([1, 2000])
        b.position_at_end(stop)
        b.store(const(i64, status), v_status)
        b.branch(done)
        b.position_at_end(cont)

    chunk = {name: b.load(field(name), name=name) for name in
             ("offsets", "caplens", "wirelens", "seconds", "nanoseconds", "meta", "iov", "headers", "capacity",
              "limit", "snaplen", "lo_index")}  # fmt: skip
    zero64 = const(i64, 0)
    v_pos, v_walked, v_n = var(i64, arg["pos"], "pos"), var(i64, zero64, "walked"), var(i64, zero64, "n")
    v_skipped, v_rejected = var(i64, zero64, "skipped"), var(i64, zero64, "rejected")
    v_iov, v_bytes, v_status = var(i64, zero64, "iov_count"), var(i64, zero64, "bytes"), var(i64, zero64, "status")
    v_random = var(i64, b.load(field("random")), "random")
    v_start, v_caplen, v_wirelen = var(i64, zero64, "start"), var(i32, const(i32, 0), "caplen"), var(
        i32, const(i32, 0), "wirelen"
    )
    head, frame, done = (fn.append_basic_block(x) for x in ("head", "frame", "done"))
    b.branch(head)

    # head: another frame? (walked < frames, accepted < limit, a free slot)
    b.position_at_end(head)
    walked, n = b.load(v_walked, name="walked"), b.load(v_n, name="n")
    more = fn.append_basic_block("more")
    b.cbranch(b.icmp_unsigned("<", walked, arg["frames"]), more, done)
    b.position_at_end(more)
    cold(b.icmp_unsigned(">=", n, chunk["limit"]), Status.LIMIT, "limit")
    cold(b.icmp_unsigned(">=", n, chunk["capacity"]), Status.FULL, "full")
    b.branch(frame)

    # frame: read the header, step to the next one
    b.position_at_end(frame)
    pos = b.load(v_pos, name="at")
    room = b.sub(arg["end"], pos, name="room")
    cold(b.or_(b.icmp_unsigned(">", pos, arg["end"]), b.icmp_unsigned("<", room, const(i64, FRAME_HEADER_LEN))),
         Status.BAD, "header")  # fmt: skip
    h: dict[str, ir.Value] = {}
    for name, (offset, bits) in HEADER.items():
        ty = ir.IntType(bits)
        h[name] = b.load(at(b.add(pos, const(i64, offset)), ty), name=name, align=1)
    b.store(b.add(pos, b.zext(h["next"], i64)), v_pos)
    b.store(b.add(walked, const(i64, 1)), v_walked)
    # lo shows every packet twice, going out and coming in: keep the incoming copy, as libpcap does
    outgoing_lo = b.and_(b.icmp_unsigned("==", h["pkttype"], const(i8, PACKET_OUTGOING)),
                         b.icmp_unsigned("==", b.zext(h["ifindex"], i64), chunk["lo_index"]))  # fmt: skip
    skip, keep_frame = fn.append_basic_block("skip"), fn.append_basic_block("keep_frame")
    b.cbranch(outgoing_lo, skip, keep_frame)
    b.position_at_end(skip)
    b.store(b.add(b.load(v_skipped), const(i64, 1)), v_skipped)
    b.branch(head)

    b.position_at_end(keep_frame)
    mac = b.zext(h["mac"], i64, name="mac")
    front = (SLL_HDR_LEN if spec.cooked else 0) + (VLAN_TAG_LEN if spec.tag_at else 0)
    bad = b.or_(b.icmp_unsigned("<", mac, const(i64, FRAME_HEADER_LEN + front)),
                b.icmp_unsigned(">", b.add(mac, b.zext(h["snaplen"], i64)), room))  # fmt: skip
    cold(bad, Status.BAD, "packet")
    start = b.add(pos, mac, name="start")
    added = 0
    if spec.cooked:  # LINUX_SLL: pkttype, hatype, halen, addr[8], protocol (network order)
        start = b.sub(start, const(i64, SLL_HDR_LEN), name="sll")
        for offset, value in ((0, b.zext(h["pkttype"], i16)), (2, h["hatype"]), (4, b.zext(h["halen"], i16))):
            b.store(be16(value), at(b.add(start, const(i64, offset)), i16), align=1)
        b.store(h["addr"], at(b.add(start, const(i64, 6)), i64), align=1)
        b.store(h["protocol"], at(b.add(start, const(i64, 14)), i16), align=1)  # as stored: network order
        added = SLL_HDR_LEN
    caplen = b.add(h["snaplen"], const(i32, added), name="caplen")
    wirelen = b.add(h["len"], const(i32, added), name="wirelen")

    # the metadata record, in slot n (a rejected frame's record is overwritten by the next one)
    record = b.gep(chunk["meta"], [b.mul(n, const(i64, META_SIZE))], inbounds=True, name="record")
    present = b.icmp_unsigned("!=", b.and_(h["status"], const(i32, TP_STATUS_VLAN_VALID)), const(i32, 0))
    tpid_valid = b.icmp_unsigned("!=", b.and_(h["status"], const(i32, TP_STATUS_VLAN_TPID_VALID)), const(i32, 0))
    tpid = b.select(tpid_valid, h["vlan_tpid"], b.select(present, const(i16, ETH_P_8021Q), const(i16, 0)))
    state = b.load(v_random)
    for shift, op in ((13, b.shl), (7, b.lshr), (17, b.shl)):  # xorshift64
        state = b.xor(state, op(state, const(i64, shift)))
    b.store(state, v_random)
    values = {"protocol": be16(h["protocol"]), "vlan_tci": b.trunc(h["vlan_tci"], i16), "vlan_tpid": tpid,
              "hatype": h["hatype"], "net_offset": b.trunc(b.add(b.sub(h["net"], h["mac"]), const(i16, added)), i16),
              "pkttype": h["pkttype"], "vlan_present": b.zext(present, i8), "ifindex": h["ifindex"],
              "random": b.trunc(state, i32)}  # fmt: skip
    for name, (offset, size) in META_LAYOUT.items():
        ty = ir.IntType(8 * size)
        value = values.get(name, const(ty, 0))
        b.store(value, b.bitcast(b.gep(record, [const(i64, offset)], inbounds=True), ty.as_pointer()), align=size)

    tagged = b.or_(present, b.icmp_unsigned("!=", h["vlan_tci"], const(i32, 0)), name="tagged")

    def put_tag_back(length: ir.Value) -> None:
        """When tagged and `length` reaches the tag's place: move the link header 4 bytes forward and
        write the tag after it (v_start, v_caplen, v_wirelen updated; v_caplen is `length` + 4)."""
        b.store(start, v_start)
        b.store(length, v_caplen)
        b.store(wirelen, v_wirelen)
        if not spec.tag_at:
            return
        reaches = b.icmp_unsigned(">=", length, const(i32, spec.tag_at))
        insert, after = fn.append_basic_block("tag"), fn.append_basic_block("tagged")
        b.cbranch(b.and_(tagged, reaches), insert, after)
        b.position_at_end(insert)
        moved = b.sub(start, const(i64, VLAN_TAG_LEN), name="moved")
        memmove = intrinsic("llvm.memmove.p0i8.p0i8.i64", ir.VoidType(), [i8.as_pointer(), i8.as_pointer(), i64, i1])
        b.call(memmove, [b.gep(arg["ring"], [moved], inbounds=True), b.gep(arg["ring"], [start], inbounds=True),
                         const(i64, spec.tag_at), const(i1, 0)])  # fmt: skip
        tag = b.add(moved, const(i64, spec.tag_at))
        tag_tpid = b.select(tpid_valid, h["vlan_tpid"], const(i16, ETH_P_8021Q))  # as libpcap writes it
        b.store(be16(tag_tpid), at(tag, i16), align=1)
        b.store(be16(b.trunc(h["vlan_tci"], i16)), at(b.add(tag, const(i64, 2)), i16), align=1)
        b.store(moved, v_start)
        b.store(b.add(length, const(i32, VLAN_TAG_LEN)), v_caplen)
        b.store(b.add(wirelen, const(i32, VLAN_TAG_LEN)), v_wirelen)
        b.branch(after)
        b.position_at_end(after)

    def run_filter(packet_start: ir.Value, length: ir.Value, wire: ir.Value, meta: ir.Value | None) -> ir.Value:
        """The program inlined: its result for the packet at `packet_start`."""
        assert spec.program is not None
        result_block = fn.append_basic_block("result")
        results: list[tuple[ir.Value, ir.Block]] = []

        def finish(builder: ir.IRBuilder, value: ir.Value) -> None:
            results.append((value, builder.block))
            builder.branch(result_block)

        packet = b.gep(arg["ring"], [packet_start], inbounds=True, name="packet")
        dialect = LINUX if spec.view == "kernel" else PCAP
        analysis = analyse(spec.program, dialect=dialect)
        lower.Lowering(spec.program, analysis, fn, b, (packet, length, wire), finish, dialect, meta).run()
        b.position_at_end(result_block)
        verdict = b.phi(i32, name="verdict")
        for value, block in results:
            verdict.add_incoming(value, block)
        return verdict

    snaplen = b.trunc(chunk["snaplen"], i32, name="snaplen")
    accept_block = fn.append_basic_block("accept")

    def count_rejected(verdict: ir.Value) -> None:
        rejected = b.zext(b.icmp_unsigned("==", verdict, const(i32, 0)), i64)
        b.store(b.add(b.load(v_rejected), rejected), v_rejected)

    if spec.view == "link":
        put_tag_back(caplen)
        start_, caplen_, wirelen_ = b.load(v_start), b.load(v_caplen), b.load(v_wirelen)
        keep = umin(caplen_, snaplen)
        if spec.program is None:
            b.branch(accept_block)
        else:
            verdict = run_filter(start_, caplen_, wirelen_, None)
            count_rejected(verdict)
            keep = umin(verdict, keep)
            b.cbranch(b.icmp_unsigned("!=", keep, const(i32, 0)), accept_block, head)
    else:
        verdict = run_filter(start, caplen, wirelen, record)
        count_rejected(verdict)
        length = umin(umin(verdict, caplen), snaplen)
        taken = fn.append_basic_block("taken")
        b.cbranch(b.icmp_unsigned("!=", length, const(i32, 0)), taken, head)
        b.position_at_end(taken)
        put_tag_back(length)
        start_, wirelen_ = b.load(v_start), b.load(v_wirelen)
        keep = umin(b.load(v_caplen), snaplen)
        b.branch(accept_block)

    # accept (its only predecessor computed start_, keep, wirelen_): slot n; record header and iovecs
    b.position_at_end(accept_block)
    for name, value in (("offsets", start_), ("caplens", keep), ("wirelens", wirelen_), ("seconds", h["sec"]),
                        ("nanoseconds", h["nsec"])):  # fmt: skip
        b.store(value, b.gep(chunk[name], [n], inbounds=True))
    if spec.format:
        iov_type = abi.ir_type("iovec")
        header = b.gep(chunk["headers"], [b.mul(n, const(i64, HEADER_SLOT))], inbounds=True, name="header")
        used = b.load(v_iov)

        def word(offset: int, value: ir.Value) -> None:
            b.store(value, b.bitcast(b.gep(header, [const(i64, offset)], inbounds=True), i32.as_pointer()), align=4)

        def iovec(k: int, base: ir.Value, length: ir.Value) -> None:
            slot = b.gep(chunk["iov"], [b.add(used, const(i64, k))], inbounds=True)
            assert str(slot.type.pointee) == str(iov_type)
            b.store(base, b.gep(slot, [const(i32, 0), const(i32, 0)], inbounds=True))
            b.store(length, b.gep(slot, [const(i32, 0), const(i32, 1)], inbounds=True))

        data = b.gep(arg["ring"], [start_], inbounds=True)
        keep64 = b.zext(keep, i64)
        if spec.format == "pcap":  # struct pcap_pkthdr as tcpdump -w writes it: µs, host order
            for offset, value in ((0, h["sec"]), (4, b.udiv(h["nsec"], const(i32, 1000))), (8, keep), (12, wirelen_)):
                word(offset, value)
            iovec(0, header, const(i64, 16))
            iovec(1, data, keep64)
            total = b.add(keep64, const(i64, 16))
        else:  # pcapng EPB, interface 0 with if_tsresol 9: nanoseconds since the epoch
            padded = b.and_(b.add(keep, const(i32, 3)), const(i32, ~3 & 0xFFFFFFFF))
            length32 = b.add(padded, const(i32, 32), name="block_length")
            stamp = b.add(b.mul(b.zext(h["sec"], i64), const(i64, 10**9)), b.zext(h["nsec"], i64))
            for offset, value in ((0, const(i32, 6)), (4, length32), (8, const(i32, 0)),
                                  (12, b.trunc(b.lshr(stamp, const(i64, 32)), i32)), (16, b.trunc(stamp, i32)),
                                  (20, keep), (24, wirelen_), (32, const(i32, 0))):  # fmt: skip
                word(offset, value)
            pad = b.zext(b.sub(padded, keep), i64)
            b.store(length32, b.bitcast(b.gep(header, [b.add(pad, const(i64, 32))], inbounds=True), i32.as_pointer()),
                    align=1)  # fmt: skip
            iovec(0, header, const(i64, 28))
            iovec(1, data, keep64)
            iovec(2, b.gep(header, [const(i64, 32)], inbounds=True), b.add(pad, const(i64, 4)))
            total = b.zext(length32, i64)
        b.store(b.add(used, const(i64, IOV_PER_FRAME[spec.format])), v_iov)
        b.store(b.add(b.load(v_bytes), total), v_bytes)
    b.store(b.add(n, const(i64, 1)), v_n)
    b.branch(head)

    b.position_at_end(done)
    outputs = (("position", v_pos), ("walked", v_walked), ("skipped", v_skipped), ("rejected", v_rejected),
               ("iov_count", v_iov), ("bytes", v_bytes), ("status", v_status), ("random", v_random))
    for name, slot in outputs:
        b.store(b.load(slot), field(name))
    b.ret(b.load(v_n))
    return fn


# -- compiling ----------------------------------------------------------------------------------------
_lock = threading.Lock()
_walkers: CodeCache[tuple[View, int], Any] = CodeCache(keep=16)


def ring_walker(spec: View, opt_level: int = 2) -> Any:
    """The compiled walker for `spec` (its program VALIDATED), a ctypes function of `abi.WALK_RING`
    that keeps its machine code alive; compiled once per process (and kept in the disk cache)."""
    with _lock:
        return _walkers.get((spec, opt_level), lambda: _compile(spec, opt_level))


def _compile(spec: View, opt_level: int) -> Any:
    from . import codecache, native

    program = b"" if spec.program is None else spec.program.to_bytes("little")
    cache_key = codecache.key("ring_walker", [program, spec.view, spec.cooked, spec.tag_at, spec.format, opt_level])
    symbol = f"{PREFIX}walk_{cache_key.symbol_suffix}"

    def module() -> ir.Module:
        from . import lower

        made = lower.new_module(symbol)
        emit_walk_ring(made, symbol, spec)
        return made

    code: MachineCode = native.build(module, opt_level, (symbol,), cache_key=cache_key)
    function = abi.WALK_RING.prototype()(code.addresses[symbol])
    function.code = code  # the machine code lives as long as anything can call it
    return function


# -- the arrays ---------------------------------------------------------------------------------------
class RingArrays:
    """The numpy arrays a walker fills (`capacity` slots) and the `abi.RingChunk` pointing at them."""

    def __init__(self, capacity: int, snaplen: int, lo_index: int):
        from .metadata import META_DTYPE

        self.offsets = np.zeros(capacity, dtype=np.uint64)
        self.caplens = np.zeros(capacity, dtype=np.uint32)
        self.wirelens = np.zeros(capacity, dtype=np.uint32)
        self.seconds = np.zeros(capacity, dtype=np.uint32)
        self.nanoseconds = np.zeros(capacity, dtype=np.uint32)
        self.meta = np.zeros(capacity, dtype=META_DTYPE)
        self.iov = np.zeros(capacity * 3 * 2, dtype=np.uint64)  # struct iovec: base, len
        self.headers = np.zeros(capacity * HEADER_SLOT, dtype=np.uint8)
        self.chunk = abi.RingChunk()
        for name in ("offsets", "caplens", "wirelens", "seconds", "nanoseconds", "meta", "iov", "headers"):
            setattr(self.chunk, name, getattr(self, name).ctypes.data)
        self.chunk.capacity = capacity
        self.chunk.snaplen = snaplen
        self.chunk.lo_index = lo_index & 0xFFFFFFFF
        self.chunk.random = int.from_bytes(os.urandom(8), "little") | 1  # xorshift: never 0
        self.address = ctypes.addressof(self.chunk)


# -- writing ------------------------------------------------------------------------------------------
_writev: Any = None
IOV_MAX = 1024  # Linux's


def writev_all(fd: int, iov: np.ndarray[Any, Any], count: int, total: int) -> None:
    """Write iovecs [0, count) of `iov` (a uint64 array of base, len pairs) to `fd`, `total` bytes,
    resuming after short writes and EINTR; OSError for anything else."""
    global _writev
    if _writev is None:
        writev = ctypes.CDLL(None, use_errno=True).writev
        writev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        writev.restype = ctypes.c_ssize_t
        _writev = writev
    first, written = 0, 0
    while first < count:
        group = min(count - first, IOV_MAX)
        done = _writev(fd, iov.ctypes.data + 16 * first, group)
        if done < 0:
            code = ctypes.get_errno()
            if code == 4:  # EINTR
                continue
            raise OSError(code, os.strerror(code))
        written += done
        while done and first < count:  # step over what was written, cutting into a partial iovec
            length = int(iov[2 * first + 1])
            if done >= length:
                done -= length
                first += 1
            else:
                iov[2 * first] += done
                iov[2 * first + 1] -= done
                done = 0
    assert written == total, (written, total)
