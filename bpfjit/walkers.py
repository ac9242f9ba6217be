"""Native record walkers for capture files, with the filter and the write plan inside.

Walking a capture file is sequential (each record's position depends on the previous record's
length), so numpy cannot vectorise it, and a Python loop costs about a microsecond a record — far more
than filtering it. A walker, built with `llvmlite.ir`, walks up to `capacity` records from `pos` in one
call, and for each record: checks it lies whole inside the file, runs the filter (inlined), and, if
the filter accepts it, appends it to an iovec list over the mapped file (adjacent records share one
iovec), so that writing the accepted records is one writev call per 1024 runs. Python runs once per
chunk of thousands of records, never once per record.

    abi.WALK_PCAP    u64 walk_pcap(file, size, pos, swapped, hdrlen, max_caplen, snaplen, Chunk *chunk)
    abi.WALK_PCAPNG  u64 walk_pcapng(file, size, pos, swapped, iface_snaplens, iface_slots, n_ifaces, chunk)

`abi.Chunk` (shared with Python through ctypes) holds the per-record arrays the walker fills
(record start, packet data offset, caplen, wirelen, interface, verdict), the iovecs and, on return,
where the walk stopped and why (`Status`). It returns the number of records n; record i occupies
`[starts[i], starts[i + 1])` and `starts[n]` is where the walk stopped. Records it returns are whole
and inside the file; whatever it cannot vouch for is a status for Python to explain.

Records are filtered as libpcap hands them to tcpdump's filter. A pcap record longer than the file's
snapshot length (`snaplen`, as libpcap adjusts it) is cut to it: filtered on its first `snaplen`
bytes, stored with that caplen, and, as its bytes in the file are not what is written, not put in
the iovecs: the walk stops after it (`Status.CUT`, rare: fuzzed files and foreign writers) for
Python to write it. A caplen above the link type's maximum (`max_caplen`) is a corrupt header, as
is a pcapng caplen above its interface's (adjusted) snaplen: libpcap refuses both.

`walker(format, programs)` runs `programs[slot]` on each record, where a record's link-type slot is
the index of its interface's link type in the file (pcap has one; `iface_slots` maps pcapng
interfaces to slots). The filter reads the packet the walk has just brought into L1, and one LLVM
module holds the whole thing: an LLVM module costs milliseconds of fixed overhead and a command-line
run lives a fraction of a second. Each walker is compiled once per process, cached by its programs.

Two small helpers serve the other consumers: `gather` (`abi.GATHER`) copies iovecs into a buffer
(outputs without a file descriptor) and `accepted_indices` (`abi.ACCEPTED_INDICES`) lists the
accepted records of a chunk (`read_file`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Union

from . import abi
from .abi import Chunk as Chunk  # capfile fills one per walker call
from .caches import CodeCache

if TYPE_CHECKING:
    from llvmlite import ir

    from .native import MachineCode
    from .program import Program


class Status(IntEnum):
    """Why a walker stopped (`Chunk.status`)."""

    END = 0  # the file ends exactly after the last record
    FULL = 1  # `capacity` records walked
    TRUNCATED = 2  # the next record's header or data runs past the end of the file
    BAD_CAPLEN = 3  # a caplen above the link type's maximum (pcap) or the interface's snaplen (pcapng)
    BAD_BLOCK = 4  # pcapng: a packet block whose lengths are inconsistent
    BAD_INTERFACE = 5  # pcapng: a packet block naming an interface no IDB described
    OTHER_BLOCK = 6  # pcapng: a non-packet block (SHB, IDB, NRB, ISB, ...), for Python to handle
    NEW_LINKTYPE = 7  # pcapng: a packet of a link type this walker has no filter for (compile one, resume)
    LIMIT = 8  # `limit` packets accepted (tcpdump's -c)
    CUT = 9  # pcap: the last record was longer than the snapshot and was cut (not in the iovecs)
    STOP = 10  # the next record starts at or after `stop_at` (the end of a byte range: capparallel)


# pcapng block types a walker handles; every other block goes back to Python.
BT_PB, BT_SPB, BT_EPB = 2, 3, 6

# A walk is a dependency chain through memory (each record's position comes from the previous record's
# caplen), so on a file that is not in cache every record waits for DRAM. Records lie in file order and
# average a few hundred bytes, so prefetching the 512 bytes 4 KiB ahead of each record takes that
# latency off the chain: a cold walk of 1M records (386 MB) drops from ~55 to ~31 ms of CPU time here.
PREFETCH = (4096, 4096 + 128, 4096 + 256, 4096 + 384)
IOV_GROUP = 1024  # iovecs per writev call (Linux's IOV_MAX); `group_bytes[g]` sums group g


FIELDS = abi.CHUNK_FIELDS
PREFIX = "bpfjit_file_"


# -- IR generation ---------------------------------------------------------------------------------
class _Builder:
    """One function being built: its builder, typed helpers and loop-carried variables."""

    def __init__(self, module: ir.Module, name: str, signature: abi.Signature):
        from llvmlite import ir

        self.ir = ir
        self.i1, self.i8, self.i16 = ir.IntType(1), ir.IntType(8), ir.IntType(16)
        self.i32, self.i64 = ir.IntType(32), ir.IntType(64)
        self.fn = signature.declare(module, PREFIX + name)
        self.args = abi.args(self.fn)
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.swapped: ir.Value | None = None

    def __getitem__(self, name: str) -> ir.Argument:
        return self.args[name]

    def const(self, ty: ir.IntType, value: int) -> ir.Constant:
        return self.ir.Constant(ty, int(value))  # int(): before 3.11, str(Status.END) is "Status.END"

    def add64(self, a: ir.Value, k: int) -> ir.Value:
        return self.b.add(a, self.const(self.i64, k))

    def var(self, ty: ir.Type, init: ir.Value, name: str) -> ir.AllocaInstr:
        """A mutable local: an entry-block alloca that sroa promotes to SSA (no hand-written phis)."""
        slot = self.b.alloca(ty, name=name)
        self.b.store(init, slot)
        return slot

    def block(self, name: str) -> ir.Block:
        return self.fn.append_basic_block(name)

    def declare(self, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
        module = self.fn.module
        existing = module.globals.get(name)
        return existing if existing is not None else self.ir.Function(module, self.ir.FunctionType(ret, args), name)

    def at(self, array: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.gep(array, [index], inbounds=True)

    def load_int(self, pos: ir.Value, ty: ir.IntType, name: str) -> ir.Value:
        """file[pos : pos + width] as an integer in the file's byte order (bswap when `swapped`)."""
        b = self.b
        ptr = b.bitcast(b.gep(self["file"], [pos], inbounds=True), ty.as_pointer())
        raw = b.load(ptr, name=name + ".raw", align=1)
        assert self.swapped is not None
        bswap = self.declare(f"llvm.bswap.i{ty.width}", ty, [ty])
        return b.select(self.swapped, b.call(bswap, [raw]), raw, name=name)

    def load_u32(self, pos: ir.Value, name: str) -> ir.Value:
        return self.load_int(pos, self.i32, name)

    def prefetch_ahead(self, pos: ir.Value) -> None:
        """Prefetch PREFETCH bytes past `pos` (no fault if that is past the end: a prefetch is a hint)."""
        prefetch = self.declare("llvm.prefetch.p0", self.ir.VoidType(), [self.i8.as_pointer()] + 3 * [self.i32])
        read, keep, data = self.const(self.i32, 0), self.const(self.i32, 3), self.const(self.i32, 1)
        for offset in PREFETCH:
            self.b.call(prefetch, [self.b.gep(self["file"], [self.add64(pos, offset)]), read, keep, data])

    def stop_if(self, cond: ir.Value, status: Status, what: str) -> None:
        """Leave the walk with `status` when `cond` holds (a cold edge); otherwise go on."""
        stop, cont = self.block(f"stop.{what}"), self.block(f"ok.{what}")
        self.b.cbranch(cond, stop, cont).set_weights([1, 2000])
        self.b.position_at_end(stop)
        self.b.store(self.const(self.i64, status), self.status)
        self.b.branch(self.done)
        self.b.position_at_end(cont)

    # -- the walk: head, per-record tail, exit ------------------------------------------------------
    def begin_walk(self) -> tuple[ir.Value, ir.Value, ir.Value]:
        """Loop head: (record index n, position at, bytes left); stops when full or at the end."""
        i64 = self.i64
        self.fields = {name: self.b.load(self.field(name), name=name) for name in
                       ("starts", "offsets", "caplens", "wirelens", "ifaces", "verdicts", "iov", "group_bytes",
                        "capacity", "limit", "stop_at")}  # fmt: skip
        zero = self.const(i64, 0)
        self.i = self.var(i64, zero, "i")
        self.pos = self.var(i64, self["pos"], "pos")
        self.status = self.var(i64, self.const(i64, Status.END), "status")
        self.iov_count = self.var(i64, zero, "iov_count")
        self.accepted = self.var(i64, zero, "accepted")
        self.total = self.var(i64, zero, "bytes")
        self.last_end = self.var(i64, self.const(i64, -1), "last_end")
        head, self.done = self.block("head"), self.block("done")
        self.b.branch(head)
        self.b.position_at_end(head)
        n, at = self.b.load(self.i, name="n"), self.b.load(self.pos, name="at")
        self.stop_if(self.b.icmp_unsigned(">=", n, self.fields["capacity"]), Status.FULL, "full")
        left = self.b.sub(self["size"], at, name="left")
        self.stop_if(self.b.icmp_unsigned("==", left, self.const(i64, 0)), Status.END, "end")
        self.stop_if(self.b.icmp_unsigned(">=", at, self.fields["stop_at"]), Status.STOP, "stop_at")
        self.head = head
        return n, at, left

    def field(self, name: str) -> ir.Value:
        return self.b.gep(self["chunk"], [self.const(self.i32, 0), self.const(self.i32, FIELDS[name])], inbounds=True)

    def record(self, n: ir.Value, at: ir.Value, end: ir.Value, data: ir.Value, caplen: ir.Value, wirelen: ir.Value,
               iface: ir.Value | None, verdict: ir.Value, cut: ir.Value | None = None) -> None:  # fmt: skip
        """Store record n (occupying [at, end)); if accepted, append it to the iovecs; next record.
        A `cut` record is counted but not appended, and ends the walk (`Status.CUT`)."""
        b, f, i64, i32 = self.b, self.fields, self.i64, self.i32
        b.store(at, self.at(f["starts"], n))
        b.store(data, self.at(f["offsets"], n))
        b.store(caplen, self.at(f["caplens"], n))
        b.store(wirelen, self.at(f["wirelens"], n))
        if iface is not None:
            b.store(iface, self.at(f["ifaces"], n))
        b.store(verdict, self.at(f["verdicts"], n))
        b.store(end, self.pos)
        b.store(self.add64(n, 1), self.i)
        take, extend, fresh, counted = (self.block(x) for x in ("take", "extend", "fresh", "counted"))
        accept = b.icmp_unsigned("!=", verdict, self.const(i32, 0))
        if cut is not None:
            whole, cut_off = self.block("whole"), self.block("cut")
            b.cbranch(cut, cut_off, whole).set_weights([1, 2000])
            b.position_at_end(cut_off)  # counted (for -c), written by Python
            b.store(b.add(b.load(self.accepted), b.zext(accept, i64)), self.accepted)
            b.store(self.const(i64, Status.CUT), self.status)
            b.branch(self.done)
            b.position_at_end(whole)
        b.cbranch(accept, take, self.head)

        b.position_at_end(take)
        length = b.sub(end, at, name="length")
        used = b.load(self.iov_count, name="used")
        b.cbranch(b.icmp_unsigned("==", b.load(self.last_end), at), extend, fresh)  # adjacent: same iovec

        b.position_at_end(extend)  # iov[used - 1].len += length
        last = b.sub(used, self.const(i64, 1))
        slot = b.gep(f["iov"], [last, self.const(i32, 1)], inbounds=True)
        b.store(b.add(b.load(slot), length), slot)
        group = self.at(f["group_bytes"], b.lshr(last, self.const(i64, 10)))
        b.store(b.add(b.load(group), length), group)
        b.branch(counted)

        b.position_at_end(fresh)  # iov[used] = {file + at, length}; a new group starts at 0
        b.store(b.gep(self["file"], [at], inbounds=True), b.gep(f["iov"], [used, self.const(i32, 0)], inbounds=True))
        b.store(length, b.gep(f["iov"], [used, self.const(i32, 1)], inbounds=True))
        group = self.at(f["group_bytes"], b.lshr(used, self.const(i64, 10)))
        starts_group = b.icmp_unsigned("==", b.and_(used, self.const(i64, IOV_GROUP - 1)), self.const(i64, 0))
        b.store(b.add(b.select(starts_group, self.const(i64, 0), b.load(group)), length), group)
        b.store(self.add64(used, 1), self.iov_count)
        b.branch(counted)

        b.position_at_end(counted)
        b.store(end, self.last_end)
        b.store(b.add(b.load(self.total), length), self.total)
        accepted = self.add64(b.load(self.accepted), 1)
        b.store(accepted, self.accepted)
        self.stop_if(b.icmp_unsigned(">=", accepted, f["limit"]), Status.LIMIT, "limit")
        b.branch(self.head)

    def finish_walk(self) -> ir.Function:
        """done: starts[n] <- pos; the chunk's outputs; return n."""
        b = self.b
        b.position_at_end(self.done)
        n, end = b.load(self.i, name="n"), b.load(self.pos, name="end")
        b.store(end, self.at(self.fields["starts"], n))
        for name, var in (("end", self.pos), ("status", self.status), ("iov_count", self.iov_count),
                          ("accepted", self.accepted), ("bytes", self.total)):  # fmt: skip
            b.store(b.load(var), self.field(name))
        b.ret(n)
        return self.fn

    def verdict(self, filters: Sequence[ir.Function | None], slot: ir.Value, packet: ir.Value, caplen: ir.Value,
                wirelen: ir.Value) -> ir.Value:  # fmt: skip
        """filters[slot](packet, caplen, wirelen), inlined; 1 (keep) where there is no filter."""
        one = self.const(self.i32, 1)
        if not filters:
            return one

        def run(fn: ir.Function | None) -> ir.Value:
            return one if fn is None else self.b.call(fn, [packet, caplen, wirelen], name="verdict")

        distinct = list(dict.fromkeys(filters))  # slots sharing a program share its code
        if len(distinct) == 1:
            return run(distinct[0])
        result = self.b.alloca(self.i32, name="verdict.slot")  # promoted by sroa
        join = self.block("verdict.join")
        blocks = {fn: self.block(f"verdict.{k}") for k, fn in enumerate(distinct)}
        switch = self.b.switch(slot, blocks[filters[-1]])  # the caller checked slot < len(filters)
        for k, fn in enumerate(filters[:-1]):
            switch.add_case(self.const(self.i32, k), blocks[fn])
        for fn, block in blocks.items():
            self.b.position_at_end(block)
            self.b.store(run(fn), result)
            self.b.branch(join)
        self.b.position_at_end(join)
        return self.b.load(result)


def emit_walk_pcap(module: ir.Module, name: str, filters: Sequence[ir.Function | None] = ()) -> ir.Function:
    """Classic pcap: a 16-byte (24-byte in "modified" pcap) header before each packet's data."""
    from llvmlite import ir

    i32, i64 = ir.IntType(32), ir.IntType(64)
    b = _Builder(module, name, abi.WALK_PCAP)
    bb = b.b
    b.swapped = bb.icmp_unsigned("!=", b["swapped"], b.const(i32, 0), name="swapped")
    hdrlen = bb.zext(b["hdrlen"], i64, name="hdrlen64")
    n, at, left = b.begin_walk()
    b.stop_if(bb.icmp_unsigned("<", left, hdrlen), Status.TRUNCATED, "short_header")
    b.prefetch_ahead(at)
    caplen = b.load_u32(b.add64(at, 8), "caplen")
    wirelen = b.load_u32(b.add64(at, 12), "wirelen")
    # caplen > snaplen (the caller passes min(snapshot, maximum)): corrupt above the maximum, else cut
    long = bb.icmp_unsigned(">", caplen, b["snaplen"], name="long")
    cold, checked = b.block("long"), b.block("checked")
    bb.cbranch(long, cold, checked).set_weights([1, 2000])
    bb.position_at_end(cold)
    b.stop_if(bb.icmp_unsigned(">", caplen, b["max_caplen"]), Status.BAD_CAPLEN, "caplen")
    bb.branch(checked)
    bb.position_at_end(checked)
    caplen64 = bb.zext(caplen, i64)
    b.stop_if(bb.icmp_unsigned(">", caplen64, bb.sub(left, hdrlen)), Status.TRUNCATED, "short_data")
    data = bb.add(at, hdrlen, name="data")
    packet = bb.gep(b["file"], [data], inbounds=True, name="packet")
    seen = bb.select(long, b["snaplen"], caplen, name="seen")  # what libpcap hands the filter
    verdict = b.verdict(filters, b.const(i32, 0), packet, seen, wirelen)
    b.record(n, at, bb.add(data, caplen64, name="next"), data, seen, wirelen, None, verdict, long)
    return b.finish_walk()


def emit_walk_pcapng(module: ir.Module, name: str, filters: Sequence[ir.Function | None] = ()) -> ir.Function:
    """pcapng: EPB, SPB and PB blocks in one section's byte order; any other block returns to Python."""
    from llvmlite import ir

    i16, i32, i64 = ir.IntType(16), ir.IntType(32), ir.IntType(64)
    b = _Builder(module, name, abi.WALK_PCAPNG)
    bb = b.b
    b.swapped = bb.icmp_unsigned("!=", b["swapped"], b.const(i32, 0), name="swapped")
    # what the per-type blocks found, for the common tail
    v_iface, v_caplen, v_wirelen = (b.var(i32, b.const(i32, 0), x) for x in ("iface", "caplen", "wirelen"))
    v_data = b.var(i64, b.const(i64, 0), "data")
    n, at, left = b.begin_walk()
    b.stop_if(bb.icmp_unsigned("<", left, b.const(i64, 8)), Status.TRUNCATED, "short_header")
    b.prefetch_ahead(at)
    btype = b.load_u32(at, "type")
    length = bb.zext(b.load_u32(b.add64(at, 4), "length32"), i64, name="length")
    epb, spb, pb, other = b.block("epb"), b.block("spb"), b.block("pb"), b.block("other")
    switch = bb.switch(btype, other)
    for value, target in ((BT_EPB, epb), (BT_SPB, spb), (BT_PB, pb)):
        switch.add_case(b.const(i32, value), target)
    bb.position_at_end(other)
    bb.store(b.const(i64, Status.OTHER_BLOCK), b.status)
    bb.branch(b.done)

    def check_length(minimum: int, what: str) -> None:
        """minimum <= length, length % 4 == 0, length <= left, trailing length == length."""
        bad = bb.or_(bb.icmp_unsigned("<", length, b.const(i64, minimum)),
                     bb.icmp_unsigned("!=", bb.and_(length, b.const(i64, 3)), b.const(i64, 0)))  # fmt: skip
        b.stop_if(bad, Status.BAD_BLOCK, what + ".length")
        b.stop_if(bb.icmp_unsigned(">", length, left), Status.TRUNCATED, what + ".short")
        trailer = bb.zext(b.load_u32(bb.sub(bb.add(at, length), b.const(i64, 4)), "trailer"), i64)
        b.stop_if(bb.icmp_unsigned("!=", trailer, length), Status.BAD_BLOCK, what + ".trailer")

    common = b.block("common")
    # EPB: type, length, interface u32, ts high, ts low, caplen, wirelen, data..., options, length
    # PB (obsolete): the same with a u16 interface and a u16 drop count
    for block, what in ((epb, "epb"), (pb, "pb")):
        bb.position_at_end(block)
        check_length(32, what)
        if what == "epb":
            iface = b.load_u32(b.add64(at, 8), "iface")
        else:
            iface = bb.zext(b.load_int(b.add64(at, 8), i16, "iface16"), i32, name="iface")
        caplen = b.load_u32(b.add64(at, 20), "caplen")
        room = bb.sub(length, b.const(i64, 32), name="room")  # bytes between header and trailer
        b.stop_if(bb.icmp_unsigned(">", bb.zext(caplen, i64), room), Status.BAD_BLOCK, what + ".caplen")
        bb.store(iface, v_iface)
        bb.store(caplen, v_caplen)
        bb.store(b.load_u32(b.add64(at, 24), "wirelen"), v_wirelen)
        bb.store(b.add64(at, 28), v_data)
        bb.branch(common)

    # SPB: type, length, wirelen, data...; interface 0; caplen = min(wirelen, snaplen of interface 0)
    bb.position_at_end(spb)
    check_length(16, "spb")
    b.stop_if(bb.icmp_unsigned("==", b["n_ifaces"], b.const(i32, 0)), Status.BAD_INTERFACE, "spb.iface")
    wirelen = b.load_u32(b.add64(at, 8), "spb.wirelen")
    snaplen0 = bb.load(b.at(b["iface_snaplens"], b.const(i64, 0)), name="snaplen0")  # adjusted: never 0
    caplen = bb.select(bb.icmp_unsigned("<", snaplen0, wirelen), snaplen0, wirelen, name="caplen")
    room = bb.sub(length, b.const(i64, 16), name="room")
    b.stop_if(bb.icmp_unsigned(">", bb.zext(caplen, i64), room), Status.BAD_BLOCK, "spb.caplen")
    bb.store(b.const(i32, 0), v_iface)
    bb.store(caplen, v_caplen)
    bb.store(wirelen, v_wirelen)
    bb.store(b.add64(at, 12), v_data)
    bb.branch(common)

    bb.position_at_end(common)
    iface = bb.load(v_iface, name="iface")
    b.stop_if(bb.icmp_unsigned(">=", iface, b["n_ifaces"]), Status.BAD_INTERFACE, "iface")
    data, caplen, wirelen = bb.load(v_data), bb.load(v_caplen), bb.load(v_wirelen)
    snaplen = bb.load(b.at(b["iface_snaplens"], bb.zext(iface, i64)), name="snaplen")
    b.stop_if(bb.icmp_unsigned(">", caplen, snaplen), Status.BAD_CAPLEN, "caplen")  # libpcap refuses it
    slot = b.const(i32, 0)
    if filters:
        slot = bb.load(b.at(b["iface_slots"], bb.zext(iface, i64)), name="slot")
        b.stop_if(bb.icmp_unsigned(">=", slot, b.const(i32, len(filters))), Status.NEW_LINKTYPE, "slot")
    packet = bb.gep(b["file"], [data], inbounds=True, name="packet")
    verdict = b.verdict(filters, slot, packet, caplen, wirelen)
    b.record(n, at, bb.add(at, length, name="next"), data, caplen, wirelen, iface, verdict)
    return b.finish_walk()


def _counted_loop(b: _Builder, count: ir.Value, body: Callable[[ir.Value], None]) -> None:
    """for (i = 0; i < count; i++) body(i), leaving the builder after the loop."""
    i = b.var(b.i64, b.const(b.i64, 0), "i")
    head, block, exit_ = b.block("loop.head"), b.block("loop.body"), b.block("loop.exit")
    b.b.branch(head)
    b.b.position_at_end(head)
    index = b.b.load(i, name="i")
    b.b.cbranch(b.b.icmp_unsigned("<", index, count), block, exit_)
    b.b.position_at_end(block)
    body(index)
    b.b.store(b.add64(index, 1), i)
    b.b.branch(head)
    b.b.position_at_end(exit_)


def emit_gather(module: ir.Module) -> None:
    """u64 gather(iovec *iov, u64 count, u8 *out): the iovecs' bytes one after another into `out`."""
    from llvmlite import ir

    i1, i8, i32, i64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
    b = _Builder(module, "gather", abi.GATHER)
    memcpy = b.declare("llvm.memcpy.p0i8.p0i8.i64", ir.VoidType(), [i8.as_pointer(), i8.as_pointer(), i64, i1])
    at = b.var(i64, b.const(i64, 0), "at")

    def copy(index: ir.Value) -> None:
        bb = b.b
        src = bb.load(bb.gep(b["iov"], [index, b.const(i32, 0)], inbounds=True), name="src")
        length = bb.load(bb.gep(b["iov"], [index, b.const(i32, 1)], inbounds=True), name="length")
        offset = bb.load(at)
        bb.call(memcpy, [bb.gep(b["out"], [offset], inbounds=True), src, length, b.const(i1, 0)])
        bb.store(bb.add(offset, length), at)

    _counted_loop(b, b["count"], copy)
    b.b.ret(b.b.load(at))


def emit_accepted_indices(module: ir.Module) -> None:
    """u64 accepted_indices(u32 *verdicts, u64 n, u32 *out): out[j] <- i for each accepted i; how many."""
    from llvmlite import ir

    i32, i64 = ir.IntType(32), ir.IntType(64)
    b = _Builder(module, "accepted_indices", abi.ACCEPTED_INDICES)
    count = b.var(i64, b.const(i64, 0), "count")

    def keep(index: ir.Value) -> None:
        bb = b.b
        used = bb.load(count)
        bb.store(bb.trunc(index, i32), b.at(b["out"], used))  # always written, kept if accepted: no branch
        accepted = bb.zext(bb.icmp_unsigned("!=", bb.load(b.at(b["verdicts"], index)), b.const(i32, 0)), i64)
        bb.store(bb.add(used, accepted), count)

    _counted_loop(b, b["n"], keep)
    b.b.ret(b.b.load(count))


HELPER_EMITTERS: dict[str, Callable[[ir.Module], None]] = {"gather": emit_gather,
                                                           "accepted_indices": emit_accepted_indices}
WALKER_EMITTERS = {"pcap": emit_walk_pcap, "pcapng": emit_walk_pcapng}
SIGNATURES = {"pcap": abi.WALK_PCAP, "pcapng": abi.WALK_PCAPNG, "gather": abi.GATHER,
              "accepted_indices": abi.ACCEPTED_INDICES}  # fmt: skip


# -- compiling ----------------------------------------------------------------------------------------
_lock = threading.RLock()
_helpers: dict[str, Any] = {}  # compiled once per process
WalkerKey = tuple[str, tuple[Union["Program", None], ...], int]
_walkers: CodeCache[WalkerKey, Any] = CodeCache(keep=32)


def walker(
    format: str, programs: Sequence[Program | None] = (), helpers: Sequence[str] = (), opt_level: int = 2
) -> Any:
    """The walker for `format` ("pcap" or "pcapng") that runs `programs[slot]` (VALIDATED; None keeps
    the packet) on every record; no programs: every record is accepted. A ctypes function, which
    keeps its machine code alive.

    Compiled on first use, in one module with the `helpers` that are not compiled yet.
    """
    if all(program is None for program in programs):
        programs = ()
    key: WalkerKey = (format, tuple(programs), opt_level)
    with _lock:
        missing = [name for name in dict.fromkeys(helpers) if name not in _helpers]
        made = []

        def make() -> Any:
            made.append(_compile(key, missing))
            return made[0]

        function = _walkers.get(key, make)
        if missing and not made:
            _compile(None, missing)
        return function


def helper(name: str) -> Any:
    """The compiled helper `name` (a ctypes function), compiling it now if needed."""
    with _lock:
        if name not in _helpers:
            _compile(None, [name])
        return _helpers[name]


def _bind(signature: abi.Signature, code: MachineCode, symbol: str) -> Any:
    function = signature.prototype()(code.addresses[symbol])
    function.code = code  # the machine code lives as long as anything can call it
    return function


def _compile(key: WalkerKey | None, names: Sequence[str]) -> Any:
    """Compile a walker (if `key`: returned) and the helpers `names` in one module (with `_lock` held),
    or load that module's code from the disk cache (`codecache`), where the name of the walker
    function comes from its key."""
    from . import codecache, native

    parts: list[object] = [tuple(names)]
    if key is not None:
        format, programs, opt_level = key
        parts += [format, opt_level, *(b"" if p is None else p.to_bytes("little") for p in programs)]
    cache_key = codecache.key("walker", parts)
    suffix = cache_key.symbol_suffix
    symbols = [PREFIX + name for name in names]
    if key is not None:
        symbols.append(f"{PREFIX}walk_{key[0]}_{suffix}")

    def module() -> ir.Module:  # (only when the disk cache has no code for this key)
        from . import lower
        from .analysis import analyse

        made = lower.new_module(f"bpfjit_file_{suffix}")
        for name in names:
            HELPER_EMITTERS[name](made)
        if key is not None:
            format, programs, _ = key
            bodies: dict[Program, ir.Function] = {}
            for program in programs:
                if program is not None and program not in bodies:
                    body = lower.lower_filter(made, program, analyse(program), f"{PREFIX}{suffix}_filter_{len(bodies)}")
                    body.linkage = "internal"  # machine-coded once, inlined into the walker
                    bodies[program] = body
            filters = [None if program is None else bodies[program] for program in programs]
            WALKER_EMITTERS[format](made, f"walk_{format}_{suffix}", filters)
        return made

    code = native.build(module, key[2] if key is not None else 2, tuple(symbols), cache_key=cache_key, shared=True)
    for name in names:
        _helpers[name] = _bind(SIGNATURES[name], code, PREFIX + name)
    return None if key is None else _bind(SIGNATURES[key[0]], code, symbols[-1])
