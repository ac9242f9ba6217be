"""Native kernels for capture files: record walkers (with the filter inside), write planning and writing.

Walking a capture file is sequential (each record's position depends on the previous record's
length), so numpy cannot vectorise it, and a Python loop costs about a microsecond a record — far more
than filtering it. These kernels, built with `llvmlite.ir`, walk the records, run the filter and plan
and write the accepted ones in native code, so that Python runs once per chunk of thousands of
records, never once per record.

    u64 walk_pcap(u8 *file, u64 size, u64 pos, u32 swapped, u32 hdrlen, u32 max_caplen, u64 max,
                  u64 *starts, u64 *offsets, u32 *caplens, u32 *wirelens, u32 *verdicts, u64 *state)
    u64 walk_pcapng(u8 *file, u64 size, u64 pos, u32 swapped, u64 max, u64 *starts, u64 *offsets,
                    u32 *caplens, u32 *wirelens, u32 *ifaces, u32 *verdicts, u32 *iface_snaplens,
                    u32 *iface_class, u32 n_ifaces, u64 *state)
    u64 plan(u8 *file, u64 *starts, u32 *verdicts, u64 n, u64 limit, iovec *iov, u64 *state)
    i64 write_iov(i32 fd, iovec *iov, u64 count, u64 iov_max)
    u64 gather(iovec *iov, u64 count, u8 *out)
    u64 accepted_indices(u32 *verdicts, u64 n, u32 *out)

A walker fills record i's start (`starts[i]`), packet data offset, caplen and wirelen (and, for pcapng,
interface) for up to `max` records from `pos`, writes `starts[n]` = where it stopped and `state[0..1]`
= (stop position, `Status`), and returns n. Records it returns are whole and lie inside the file;
whatever it cannot vouch for is a status for Python to explain. The records of one call are
contiguous: record i occupies `[starts[i], starts[i + 1])`.

`walker(format, programs)` builds a walker that also runs `programs[class]` on each record, inlined,
and stores its result in `verdicts[i]` (a record's class is its link type's index; pcap has one): the
filter reads the packet while the walk has just brought it into L1, instead of in a second pass over
the chunk, and no separate batch loop needs compiling. Each walker is compiled once per process
(cached by its programs), in ONE module with whichever other kernels are not compiled yet: an LLVM
module costs milliseconds of fixed overhead, which matters to a command that lives 0.2 s.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from llvmlite import ir

    from .native import NativeCode
    from .program import Program


class Status(IntEnum):
    """Why a walker stopped (`state[1]`)."""

    END = 0  # the file ends exactly after the last record
    FULL = 1  # `max` records walked
    TRUNCATED = 2  # the next record's header or data runs past the end of the file
    BAD_CAPLEN = 3  # pcap: a caplen above the sanity limit (a corrupt record header)
    BAD_BLOCK = 4  # pcapng: a packet block whose lengths are inconsistent
    BAD_INTERFACE = 5  # pcapng: a packet block naming an interface no IDB described
    OTHER_BLOCK = 6  # pcapng: a non-packet block (SHB, IDB, NRB, ISB, ...), for Python to handle
    NEW_CLASS = 7  # pcapng: a packet of a link type this walker has no filter for (compile one, resume)


# A walk is a dependency chain through memory (each record's position comes from the previous record's
# caplen), so on a file that is not in cache every record waits for DRAM. Records lie in file order and
# average a few hundred bytes, so prefetching the 512 bytes 4 KiB ahead of each record takes that
# latency off the chain: a cold walk of 1M records (386 MB) drops from ~60 to ~30 ms of CPU time here.
PREFETCH = (4096, 4096 + 128, 4096 + 256, 4096 + 384)

# pcapng block types the walker handles; every other block goes back to Python.
BT_PB, BT_SPB, BT_EPB = 2, 3, 6


VOIDP = ctypes.c_void_p
U32, U64 = ctypes.c_uint32, ctypes.c_uint64
WALK_PCAP = ctypes.CFUNCTYPE(U64, VOIDP, U64, U64, U32, U32, U32, U64, *(6 * [VOIDP]))
WALK_PCAPNG = ctypes.CFUNCTYPE(U64, VOIDP, U64, U64, U32, U64, *(9 * [VOIDP]), U32, VOIDP)
PLAN = ctypes.CFUNCTYPE(U64, VOIDP, VOIDP, VOIDP, U64, U64, VOIDP, VOIDP)
# use_errno: the kernel's writev sets errno, which ctypes saves for ctypes.get_errno().
WRITE_IOV = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int32, VOIDP, U64, U64, use_errno=True)
GATHER = ctypes.CFUNCTYPE(U64, VOIDP, U64, VOIDP)
ACCEPTED_INDICES = ctypes.CFUNCTYPE(U64, VOIDP, U64, VOIDP)

WALKERS = {"pcap": WALK_PCAP, "pcapng": WALK_PCAPNG}
KERNELS: dict[str, Any] = {
    "plan": PLAN, "write_iov": WRITE_IOV, "gather": GATHER, "accepted_indices": ACCEPTED_INDICES,
}  # fmt: skip
PREFIX = "bpfjit_file_"
WRITEV_SYMBOL = "bpfjit_writev"  # resolved to libc's writev (registered before the first build)


# -- IR generation ---------------------------------------------------------------------------------
class _Builder:
    """One kernel function being built: its builder, typed helpers and the shared `done` exit."""

    def __init__(self, module: ir.Module, name: str, ret: ir.Type, args: Sequence[tuple[str, ir.Type]]):
        from llvmlite import ir

        self.ir = ir
        self.i1, self.i8, self.i16 = ir.IntType(1), ir.IntType(8), ir.IntType(16)
        self.i32, self.i64 = ir.IntType(32), ir.IntType(64)
        fn_type = ir.FunctionType(ret, [ty for _, ty in args])
        self.fn = ir.Function(module, fn_type, PREFIX + name)
        self.fn.attributes.add("nounwind")
        self.args: dict[str, ir.Argument] = {}
        for arg, (label, ty) in zip(self.fn.args, args, strict=True):
            arg.name = label
            if isinstance(ty, ir.PointerType):
                arg.attributes.add("noalias")
            self.args[label] = arg
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.swapped: ir.Value | None = None

    def __getitem__(self, name: str) -> ir.Argument:
        return self.args[name]

    def const(self, ty: ir.IntType, value: int) -> ir.Constant:
        return self.ir.Constant(ty, value)

    def var(self, ty: ir.Type, init: ir.Value, name: str) -> ir.AllocaInstr:
        """A mutable local: an entry-block alloca that sroa promotes to SSA (no hand-written phis)."""
        slot = self.b.alloca(ty, name=name)
        self.b.store(init, slot)
        return slot

    def block(self, name: str) -> ir.Block:
        return self.fn.append_basic_block(name)

    def intrinsic(self, name: str, ty: ir.IntType) -> ir.Function:
        module = self.fn.module
        full = f"llvm.{name}.i{ty.width}"
        existing = module.globals.get(full)
        if existing is not None:
            return existing
        return self.ir.Function(module, self.ir.FunctionType(ty, [ty]), full)

    def load_int(self, base: ir.Value, pos: ir.Value, ty: ir.IntType, name: str) -> ir.Value:
        """file[pos : pos + width] as an integer in the file's byte order (bswap when `swapped`)."""
        b = self.b
        ptr = b.bitcast(b.gep(base, [pos], inbounds=True), ty.as_pointer())
        raw = b.load(ptr, name=name + ".raw", align=1)
        assert self.swapped is not None
        return b.select(self.swapped, b.call(self.intrinsic("bswap", ty), [raw]), raw, name=name)

    def load_u32(self, base: ir.Value, pos: ir.Value, name: str) -> ir.Value:
        return self.load_int(base, pos, self.i32, name)

    def at(self, array: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.gep(array, [index], inbounds=True)

    def prefetch_ahead(self, base: ir.Value, pos: ir.Value) -> None:
        """Prefetch 512 bytes, 4 KiB past `pos` (see PREFETCH)."""
        module = self.fn.module
        ir_ = self.ir
        name = "llvm.prefetch.p0"
        prefetch = module.globals.get(name) or ir_.Function(
            module, ir_.FunctionType(ir_.VoidType(), [self.i8.as_pointer(), self.i32, self.i32, self.i32]), name
        )
        read, keep, data = self.const(self.i32, 0), self.const(self.i32, 3), self.const(self.i32, 1)
        for offset in PREFETCH:
            address = self.b.gep(base, [self.add64(pos, offset)])  # not inbounds: may point past the end
            self.b.call(prefetch, [address, read, keep, data])

    def verdict(self, filters: Sequence[ir.Function | None], cls: ir.Value, packet: ir.Value, caplen: ir.Value,
                wirelen: ir.Value) -> ir.Value:  # fmt: skip
        """filters[cls](packet, caplen, wirelen), inlined; 1 (keep) where the filter is None."""
        one = self.const(self.i32, 1)

        def run(fn: ir.Function | None) -> ir.Value:
            return one if fn is None else self.b.call(fn, [packet, caplen, wirelen], name="verdict")

        if len(filters) == 1:
            return run(filters[0])
        result = self.b.alloca(self.i32, name="verdict.slot")  # promoted by sroa
        join = self.block("verdict.join")
        blocks = [self.block(f"verdict.class{k}") for k in range(len(filters))]
        switch = self.b.switch(cls, blocks[-1])  # Python guarantees cls < len(filters)
        for k, block in enumerate(blocks[:-1]):
            switch.add_case(self.const(self.i32, k), block)
        for fn, block in zip(filters, blocks, strict=True):
            self.b.position_at_end(block)
            self.b.store(run(fn), result)
            self.b.branch(join)
        self.b.position_at_end(join)
        return self.b.load(result)

    def add64(self, a: ir.Value, k: int) -> ir.Value:
        return self.b.add(a, self.const(self.i64, k))

    def stop_if(self, cond: ir.Value, status: Status, status_var: ir.Value, done: ir.Block, what: str) -> None:
        """Leave the walk with `status` when `cond` holds (a cold edge); otherwise go on."""
        stop = self.block(f"stop.{what}")
        cont = self.block(f"ok.{what}")
        self.b.cbranch(cond, stop, cont).set_weights([1, 2000])
        self.b.position_at_end(stop)
        self.b.store(self.const(self.i32, status), status_var)
        self.b.branch(done)
        self.b.position_at_end(cont)


def _iovec(module: ir.Module) -> ir.Type:
    from llvmlite import ir

    return ir.LiteralStructType([ir.IntType(8).as_pointer(), ir.IntType(64)])  # struct iovec


def _finish_walk(b: _Builder, done: ir.Block, i: ir.Value, pos: ir.Value, status: ir.Value) -> None:
    """done: starts[n] <- pos; state <- (pos, status); return n."""
    b.b.position_at_end(done)
    n = b.b.load(i, name="n")
    end = b.b.load(pos, name="end")
    b.b.store(end, b.at(b["starts"], n))
    state = b["state"]
    b.b.store(end, b.at(state, b.const(b.i64, 0)))
    b.b.store(b.b.zext(b.b.load(status), b.i64), b.at(state, b.const(b.i64, 1)))
    b.b.ret(n)


def _emit_walk_pcap(module: ir.Module, name: str, filters: Sequence[ir.Function | None] = ()) -> ir.Function:
    """Classic pcap: a 16-byte (or 24-byte, modified pcap) header before each packet's data."""
    from llvmlite import ir

    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    args = [("file", i8.as_pointer()), ("size", i64), ("pos", i64), ("swapped", i32), ("hdrlen", i32),
            ("max_caplen", i32), ("max", i64), ("starts", i64.as_pointer()), ("offsets", i64.as_pointer()),
            ("caplens", i32.as_pointer()), ("wirelens", i32.as_pointer()), ("verdicts", i32.as_pointer()),
            ("state", i64.as_pointer())]  # fmt: skip
    b = _Builder(module, name, i64, args)
    bb = b.b
    b.swapped = bb.icmp_unsigned("!=", b["swapped"], b.const(i32, 0), name="swapped")
    hdrlen = bb.zext(b["hdrlen"], i64, name="hdrlen64")
    i = b.var(i64, b.const(i64, 0), "i")
    pos = b.var(i64, b["pos"], "pos")
    status = b.var(i32, b.const(i32, Status.END), "status")
    head, done = b.block("head"), b.block("done")
    bb.branch(head)

    bb.position_at_end(head)
    n, at = bb.load(i, name="i"), bb.load(pos, name="at")
    b.stop_if(bb.icmp_unsigned(">=", n, b["max"]), Status.FULL, status, done, "full")
    left = bb.sub(b["size"], at, name="left")
    b.stop_if(bb.icmp_unsigned("==", left, b.const(i64, 0)), Status.END, status, done, "end")
    b.stop_if(bb.icmp_unsigned("<", left, hdrlen), Status.TRUNCATED, status, done, "short_header")
    b.prefetch_ahead(b["file"], at)
    caplen = b.load_u32(b["file"], b.add64(at, 8), "caplen")
    wirelen = b.load_u32(b["file"], b.add64(at, 12), "wirelen")
    b.stop_if(bb.icmp_unsigned(">", caplen, b["max_caplen"]), Status.BAD_CAPLEN, status, done, "caplen")
    caplen64 = bb.zext(caplen, i64)
    b.stop_if(bb.icmp_unsigned(">", caplen64, bb.sub(left, hdrlen)), Status.TRUNCATED, status, done, "short_data")
    data = bb.add(at, hdrlen, name="data")
    if filters:
        packet = bb.gep(b["file"], [data], inbounds=True, name="packet")
        verdict = b.verdict(filters, b.const(i32, 0), packet, caplen, wirelen)
        bb.store(verdict, b.at(b["verdicts"], n))
    bb.store(at, b.at(b["starts"], n))
    bb.store(data, b.at(b["offsets"], n))
    bb.store(caplen, b.at(b["caplens"], n))
    bb.store(wirelen, b.at(b["wirelens"], n))
    bb.store(bb.add(data, caplen64), pos)
    bb.store(b.add64(n, 1), i)
    bb.branch(head)
    _finish_walk(b, done, i, pos, status)
    return b.fn


def _emit_walk_pcapng(module: ir.Module, name: str, filters: Sequence[ir.Function | None] = ()) -> ir.Function:
    """pcapng: EPB, SPB and PB blocks in one section's byte order; any other block returns to Python."""
    from llvmlite import ir

    i8, i16, i32, i64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
    args = [("file", i8.as_pointer()), ("size", i64), ("pos", i64), ("swapped", i32), ("max", i64),
            ("starts", i64.as_pointer()), ("offsets", i64.as_pointer()), ("caplens", i32.as_pointer()),
            ("wirelens", i32.as_pointer()), ("ifaces", i32.as_pointer()), ("verdicts", i32.as_pointer()),
            ("iface_snaplens", i32.as_pointer()), ("iface_class", i32.as_pointer()), ("n_ifaces", i32),
            ("state", i64.as_pointer())]  # fmt: skip
    b = _Builder(module, name, i64, args)
    bb = b.b
    b.swapped = bb.icmp_unsigned("!=", b["swapped"], b.const(i32, 0), name="swapped")
    i = b.var(i64, b.const(i64, 0), "i")
    pos = b.var(i64, b["pos"], "pos")
    status = b.var(i32, b.const(i32, Status.END), "status")
    # what the per-type blocks found, for the common tail
    v_iface = b.var(i32, b.const(i32, 0), "iface")
    v_caplen = b.var(i32, b.const(i32, 0), "caplen")
    v_wirelen = b.var(i32, b.const(i32, 0), "wirelen")
    v_data = b.var(i64, b.const(i64, 0), "data")
    head, done = b.block("head"), b.block("done")
    bb.branch(head)

    bb.position_at_end(head)
    n, at = bb.load(i, name="i"), bb.load(pos, name="at")
    b.stop_if(bb.icmp_unsigned(">=", n, b["max"]), Status.FULL, status, done, "full")
    left = bb.sub(b["size"], at, name="left")
    b.stop_if(bb.icmp_unsigned("==", left, b.const(i64, 0)), Status.END, status, done, "end")
    b.stop_if(bb.icmp_unsigned("<", left, b.const(i64, 8)), Status.TRUNCATED, status, done, "short_header")
    b.prefetch_ahead(b["file"], at)
    btype = b.load_u32(b["file"], at, "type")
    length = bb.zext(b.load_u32(b["file"], b.add64(at, 4), "length32"), i64, name="length")
    epb, spb, pb, other = b.block("epb"), b.block("spb"), b.block("pb"), b.block("other")
    switch = bb.switch(btype, other)
    for value, target in ((BT_EPB, epb), (BT_SPB, spb), (BT_PB, pb)):
        switch.add_case(b.const(i32, value), target)
    bb.position_at_end(other)
    bb.store(b.const(i32, Status.OTHER_BLOCK), status)
    bb.branch(done)

    def check_length(minimum: int, what: str) -> None:
        """minimum <= length, length % 4 == 0, length <= left, trailing length == length."""
        bad = bb.or_(
            bb.icmp_unsigned("<", length, b.const(i64, minimum)),
            bb.icmp_unsigned("!=", bb.and_(length, b.const(i64, 3)), b.const(i64, 0)),
        )
        b.stop_if(bad, Status.BAD_BLOCK, status, done, what + ".length")
        b.stop_if(bb.icmp_unsigned(">", length, left), Status.TRUNCATED, status, done, what + ".short")
        trailer = bb.zext(b.load_u32(b["file"], bb.sub(bb.add(at, length), b.const(i64, 4)), "trailer"), i64)
        b.stop_if(bb.icmp_unsigned("!=", trailer, length), Status.BAD_BLOCK, status, done, what + ".trailer")

    common = b.block("common")
    # EPB: type, length, interface u32, ts high, ts low, caplen, wirelen, data..., options, length
    # PB (obsolete): the same with a u16 interface and a u16 drop count
    for block, what in ((epb, "epb"), (pb, "pb")):
        bb.position_at_end(block)
        check_length(32, what)
        if what == "epb":
            iface = b.load_u32(b["file"], b.add64(at, 8), "iface")
        else:
            iface = bb.zext(b.load_int(b["file"], b.add64(at, 8), i16, "iface16"), i32, name="iface")
        caplen = b.load_u32(b["file"], b.add64(at, 20), "caplen")
        room = bb.sub(length, b.const(i64, 32), name="room")  # bytes between header and trailer
        b.stop_if(bb.icmp_unsigned(">", bb.zext(caplen, i64), room), Status.BAD_BLOCK, status, done, what + ".caplen")
        bb.store(iface, v_iface)
        bb.store(caplen, v_caplen)
        bb.store(b.load_u32(b["file"], b.add64(at, 24), "wirelen"), v_wirelen)
        bb.store(b.add64(at, 28), v_data)
        bb.branch(common)

    # SPB: type, length, wirelen, data...; interface 0, caplen = min(wirelen, room, snaplen of interface 0)
    bb.position_at_end(spb)
    check_length(16, "spb")
    b.stop_if(bb.icmp_unsigned("==", b["n_ifaces"], b.const(i32, 0)), Status.BAD_INTERFACE, status, done, "spb.iface")
    wirelen = b.load_u32(b["file"], b.add64(at, 8), "spb.wirelen")
    room = bb.trunc(bb.sub(length, b.const(i64, 16)), i32, name="room")  # length <= 2^32-1
    caplen = bb.select(bb.icmp_unsigned("<", wirelen, room), wirelen, room)
    snaplen = bb.load(b.at(b["iface_snaplens"], b.const(i64, 0)), name="snaplen0")
    limited = bb.and_(bb.icmp_unsigned("!=", snaplen, b.const(i32, 0)), bb.icmp_unsigned("<", snaplen, caplen))
    bb.store(b.const(i32, 0), v_iface)
    bb.store(bb.select(limited, snaplen, caplen), v_caplen)
    bb.store(wirelen, v_wirelen)
    bb.store(b.add64(at, 12), v_data)
    bb.branch(common)

    bb.position_at_end(common)
    iface = bb.load(v_iface, name="iface")
    b.stop_if(bb.icmp_unsigned(">=", iface, b["n_ifaces"]), Status.BAD_INTERFACE, status, done, "iface")
    data, caplen, wirelen = bb.load(v_data), bb.load(v_caplen), bb.load(v_wirelen)
    if filters:
        cls = bb.load(b.at(b["iface_class"], bb.zext(iface, i64)), name="class")
        unknown = bb.icmp_unsigned(">=", cls, b.const(i32, len(filters)))
        b.stop_if(unknown, Status.NEW_CLASS, status, done, "class")
        packet = bb.gep(b["file"], [data], inbounds=True, name="packet")
        bb.store(b.verdict(filters, cls, packet, caplen, wirelen), b.at(b["verdicts"], n))
    bb.store(at, b.at(b["starts"], n))
    bb.store(data, b.at(b["offsets"], n))
    bb.store(caplen, b.at(b["caplens"], n))
    bb.store(wirelen, b.at(b["wirelens"], n))
    bb.store(iface, b.at(b["ifaces"], n))
    bb.store(bb.add(at, length), pos)
    bb.store(b.add64(n, 1), i)
    bb.branch(head)
    _finish_walk(b, done, i, pos, status)
    return b.fn


def _counted_loop(b: _Builder, count: ir.Value, name: str) -> tuple[ir.Value, ir.Block, ir.Block]:
    """for (i = 0; i < count; i++): returns (i, body block positioned, exit block); close with _next."""
    i64 = b.i64
    i = b.var(i64, b.const(i64, 0), name)
    head, body, exit_ = b.block(f"{name}.head"), b.block(f"{name}.body"), b.block(f"{name}.exit")
    b.b.branch(head)
    b.b.position_at_end(head)
    index = b.b.load(i, name=name)
    b.b.cbranch(b.b.icmp_unsigned("<", index, count), body, exit_)
    b.b.position_at_end(body)
    b._loop = (i, index, head)  # type: ignore[attr-defined]
    return index, body, exit_


def _next(b: _Builder) -> None:
    i, index, head = b._loop  # type: ignore[attr-defined]
    b.b.store(b.add64(index, 1), i)
    b.b.branch(head)


def _emit_plan(module: ir.Module) -> None:
    """iovecs for the accepted records, adjacent ones merged: what to write, without copying it."""
    from llvmlite import ir

    i8, i32, i64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
    iovec = _iovec(module)
    args = [("file", i8.as_pointer()), ("starts", i64.as_pointer()), ("verdicts", i32.as_pointer()), ("n", i64),
            ("limit", i64), ("iov", iovec.as_pointer()), ("state", i64.as_pointer())]  # fmt: skip
    b = _Builder(module, "plan", i64, args)
    bb = b.b
    zero32, zero64 = b.const(i32, 0), b.const(i64, 0)
    count = b.var(i64, zero64, "count")
    accepted = b.var(i64, zero64, "accepted")
    total = b.var(i64, zero64, "bytes")
    last_end = b.var(i64, b.const(i64, -1), "last_end")
    consumed = b.var(i64, b["n"], "consumed")
    index, _, exit_ = _counted_loop(b, b["n"], "i")
    take, extend, fresh, taken, skip, stop = (b.block(x) for x in ("take", "extend", "fresh", "taken", "skip", "stop"))
    verdict = bb.load(b.at(b["verdicts"], index), name="verdict")
    bb.cbranch(bb.icmp_unsigned("!=", verdict, zero32), take, skip)

    bb.position_at_end(take)
    got = bb.load(accepted)
    limited = bb.icmp_unsigned(">=", got, b["limit"])
    go_on = b.block("take.go")
    bb.cbranch(limited, stop, go_on)
    bb.position_at_end(go_on)
    start = bb.load(b.at(b["starts"], index), name="start")
    end = bb.load(b.at(b["starts"], b.add64(index, 1)), name="end")
    length = bb.sub(end, start, name="length")
    bb.store(b.add64(got, 1), accepted)
    bb.store(bb.add(bb.load(total), length), total)
    used = bb.load(count, name="count")
    contiguous = bb.and_(bb.icmp_unsigned("==", bb.load(last_end), start),
                         bb.icmp_unsigned("!=", used, zero64))  # fmt: skip
    bb.store(end, last_end)
    bb.cbranch(contiguous, extend, fresh)

    bb.position_at_end(extend)  # iov[count - 1].len += length
    slot = bb.gep(b["iov"], [bb.sub(used, b.const(i64, 1)), b.const(i32, 1)], inbounds=True)
    bb.store(bb.add(bb.load(slot), length), slot)
    bb.branch(taken)

    bb.position_at_end(fresh)  # iov[count++] = {file + start, length}
    bb.store(bb.gep(b["file"], [start], inbounds=True), bb.gep(b["iov"], [used, b.const(i32, 0)], inbounds=True))
    bb.store(length, bb.gep(b["iov"], [used, b.const(i32, 1)], inbounds=True))
    bb.store(b.add64(used, 1), count)
    bb.branch(taken)

    bb.position_at_end(taken)  # the limit reached: this record is the last one read
    full = b.block("taken.full")
    bb.cbranch(bb.icmp_unsigned(">=", bb.load(accepted), b["limit"]), full, skip)
    bb.position_at_end(full)
    bb.store(b.add64(index, 1), consumed)
    bb.branch(exit_)

    bb.position_at_end(skip)
    _next(b)

    bb.position_at_end(stop)  # limit 0
    bb.store(index, consumed)
    bb.branch(exit_)

    bb.position_at_end(exit_)
    state = b["state"]
    for slot_index, var in enumerate((accepted, consumed, total)):
        bb.store(bb.load(var), b.at(state, b.const(i64, slot_index)))
    bb.ret(bb.load(count))


def _emit_write_iov(module: ir.Module) -> None:
    """writev(fd, iov, count) in slices of iov_max until everything is written: 0, or -1 with errno set.

    Written entries are zeroed in place, so after an error (EINTR) calling again resumes where it stopped.
    """
    from llvmlite import ir

    i32, i64 = ir.IntType(32), ir.IntType(64)
    iovec = _iovec(module)
    writev = module.globals.get(WRITEV_SYMBOL) or ir.Function(
        module, ir.FunctionType(i64, [i32, iovec.as_pointer(), i32]), WRITEV_SYMBOL
    )
    args = [("fd", i32), ("iov", iovec.as_pointer()), ("count", i64), ("iov_max", i64)]
    b = _Builder(module, "write_iov", i64, args)
    bb = b.b
    zero64 = b.const(i64, 0)
    i = b.var(i64, zero64, "i")
    written = b.var(i64, zero64, "written")
    head, call, advance, advance_body, fail, done = (
        b.block(x) for x in ("head", "call", "advance", "advance.body", "fail", "done")
    )
    bb.branch(head)

    bb.position_at_end(head)
    at = bb.load(i, name="i")
    bb.cbranch(bb.icmp_unsigned("<", at, b["count"]), call, done)

    bb.position_at_end(call)
    left = bb.sub(b["count"], at)
    batch = bb.select(bb.icmp_unsigned("<", left, b["iov_max"]), left, b["iov_max"])
    result = bb.call(writev, [b["fd"], bb.gep(b["iov"], [at], inbounds=True), bb.trunc(batch, i32)], name="r")
    bb.cbranch(bb.icmp_signed("<=", result, zero64), fail, advance).set_weights([1, 2000])
    bb.position_at_end(fail)  # -1 with errno, or 0 (no progress: report it rather than spin)
    bb.ret(bb.select(bb.icmp_signed("<", result, zero64), result, b.const(i64, -2)))

    bb.position_at_end(advance)  # consume `written` bytes from iov[i...]
    bb.store(result, written)
    bb.store(at, i)
    check = b.block("advance.check")
    bb.branch(check)
    bb.position_at_end(check)
    left_bytes = bb.load(written)
    bb.cbranch(bb.icmp_unsigned("!=", left_bytes, zero64), advance_body, head)
    bb.position_at_end(advance_body)
    cur = bb.load(i)
    len_slot = bb.gep(b["iov"], [cur, b.const(i32, 1)], inbounds=True)
    base_slot = bb.gep(b["iov"], [cur, b.const(i32, 0)], inbounds=True)
    length = bb.load(len_slot)
    whole, part = b.block("advance.whole"), b.block("advance.part")
    bb.cbranch(bb.icmp_unsigned(">=", left_bytes, length), whole, part)
    bb.position_at_end(whole)
    bb.store(zero64, len_slot)
    bb.store(bb.sub(left_bytes, length), written)
    bb.store(b.add64(cur, 1), i)
    bb.branch(check)
    bb.position_at_end(part)
    bb.store(bb.gep(bb.load(base_slot), [left_bytes], inbounds=True), base_slot)
    bb.store(bb.sub(length, left_bytes), len_slot)
    bb.store(zero64, written)
    bb.branch(check)

    bb.position_at_end(done)
    bb.ret(zero64)


def _memcpy(module: ir.Module) -> ir.Function:
    from llvmlite import ir

    name = "llvm.memcpy.p0i8.p0i8.i64"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    i8p = ir.IntType(8).as_pointer()
    return ir.Function(module, ir.FunctionType(ir.VoidType(), [i8p, i8p, ir.IntType(64), ir.IntType(1)]), name)


def _emit_gather(module: ir.Module) -> None:
    """Copy the iovecs' bytes one after another into `out` (for destinations without a file descriptor)."""
    from llvmlite import ir

    i8, i64 = ir.IntType(8), ir.IntType(64)
    iovec = _iovec(module)
    b = _Builder(module, "gather", i64, [("iov", iovec.as_pointer()), ("count", i64), ("out", i8.as_pointer())])
    bb = b.b
    at = b.var(i64, b.const(i64, 0), "at")
    index, _, exit_ = _counted_loop(b, b["count"], "i")
    src = bb.load(bb.gep(b["iov"], [index, b.const(ir.IntType(32), 0)], inbounds=True), name="src")
    length = bb.load(bb.gep(b["iov"], [index, b.const(ir.IntType(32), 1)], inbounds=True), name="length")
    offset = bb.load(at)
    bb.call(_memcpy(module), [bb.gep(b["out"], [offset], inbounds=True), src, length, b.const(ir.IntType(1), 0)])
    bb.store(bb.add(offset, length), at)
    _next(b)
    bb.position_at_end(exit_)
    bb.ret(bb.load(at))


def _emit_accepted_indices(module: ir.Module) -> None:
    """out[j] <- i for each i with verdicts[i] != 0; returns how many (readers yield only those)."""
    from llvmlite import ir

    i32, i64 = ir.IntType(32), ir.IntType(64)
    args = [("verdicts", i32.as_pointer()), ("n", i64), ("out", i32.as_pointer())]
    b = _Builder(module, "accepted_indices", i64, args)
    bb = b.b
    count = b.var(i64, b.const(i64, 0), "count")
    index, _, exit_ = _counted_loop(b, b["n"], "i")
    used = bb.load(count)
    bb.store(bb.trunc(index, i32), b.at(b["out"], used))  # written always, kept when accepted: no branch
    keep = bb.zext(bb.icmp_unsigned("!=", bb.load(b.at(b["verdicts"], index)), b.const(i32, 0)), i64)
    bb.store(bb.add(used, keep), count)
    _next(b)
    bb.position_at_end(exit_)
    bb.ret(bb.load(count))


EMITTERS: dict[str, Callable[[ir.Module], None]] = {
    "plan": _emit_plan, "write_iov": _emit_write_iov, "gather": _emit_gather,
    "accepted_indices": _emit_accepted_indices,
}  # fmt: skip
WALKER_EMITTERS = {"pcap": _emit_walk_pcap, "pcapng": _emit_walk_pcapng}


# -- compiling ----------------------------------------------------------------------------------------
_lock = threading.Lock()
_kernels: dict[str, tuple[Any, NativeCode]] = {}  # name -> (ctypes function, the code it lives in)
WalkerKey = tuple[str, tuple[Union["Program", None], ...], int]
_walkers: OrderedDict[WalkerKey, tuple[Any, NativeCode]] = OrderedDict()
WALKER_CACHE_SIZE = 32
_serial = itertools.count()
_writev_ready = False


def _register_writev() -> None:
    global _writev_ready
    if not _writev_ready:
        from . import native

        libc = ctypes.CDLL(None)
        native.add_symbol(WRITEV_SYMBOL, ctypes.cast(libc.writev, ctypes.c_void_p).value or 0)
        _writev_ready = True


def walker(
    format: str, programs: Sequence[Program | None] = (), also: Iterable[str] = (), opt_level: int = 2
) -> Any:
    """The walker for `format` ("pcap" or "pcapng") that runs `programs[class]` (VALIDATED; None keeps
    the packet) on every record; no programs: a walker that leaves `verdicts` alone.

    Compiled on first use, in one module with the kernels `also` that are not compiled yet.
    """
    if all(program is None for program in programs):
        programs = ()
    key: WalkerKey = (format, tuple(programs), opt_level)
    with _lock:
        entry = _walkers.get(key)
        if entry is None:
            _compile(key, [name for name in dict.fromkeys(also) if name not in _kernels])
            entry = _walkers[key]
        else:
            _walkers.move_to_end(key)
            missing = [name for name in dict.fromkeys(also) if name not in _kernels]
            if missing:
                _compile(None, missing)
        while len(_walkers) > WALKER_CACHE_SIZE:
            _walkers.popitem(last=False)
        return entry[0]


def kernel(name: str) -> Any:
    """The compiled kernel `name` (a ctypes function), compiling it now if needed."""
    entry = _kernels.get(name)
    if entry is None:
        with _lock:
            if name not in _kernels:
                _compile(None, [name])
            entry = _kernels[name]
    return entry[0]


def _compile(key: WalkerKey | None, names: Sequence[str]) -> None:
    """Compile a walker (if `key`) and the kernels `names` in one module (call with `_lock` held)."""
    from . import lower, native

    serial = next(_serial)
    module = lower.new_module(f"bpfjit_file_{serial}")
    if "write_iov" in names:
        _register_writev()
    for name in names:
        EMITTERS[name](module)
    symbols = [PREFIX + name for name in names]
    if key is not None:
        format, programs, _ = key
        filters: list[ir.Function | None] = []
        for index, program in enumerate(programs):
            if program is None:
                filters.append(None)
                continue
            body = lower.lower_filter(module, program, f"bpfjit_file_{serial}_filter_{index}")
            body.linkage = "internal"  # machine-coded once, inlined into the walker
            filters.append(body)
        name = f"walk_{format}_{serial}"
        WALKER_EMITTERS[format](module, name, filters)
        symbols.append(PREFIX + name)
    code = native.build(module, key[2] if key is not None else 2, tuple(symbols))
    for name in names:
        _kernels[name] = (KERNELS[name](code.addresses[PREFIX + name]), code)
    if key is not None:
        _walkers[key] = (WALKERS[key[0]](code.addresses[symbols[-1]]), code)
