"""All cores for one capture file: threads walk byte ranges of one mapping; output in the input's order.

    bpfjit.filter_file("big.pcap", "out.pcap", "tcp port 80", workers=2)   # byte-identical to workers=1

The file (after its header) is cut into byte ranges [b_i, b_i+1). A walker call releases the GIL, so
threads walking different ranges run in parallel (`workers` threads: the calling thread is one). A
thread that has walked a range settles, in file order, every walked range the chain reaches (below);
a settled range's accepted bytes are known, so its records' place in the output is the sum of the
bytes before it, and the thread writes them there (`Writer.records_at`: pwritev, or a gather into a
buffer of its own and one pwrite where records are short), with no lock held — normally the range it
has just walked, while the other threads walk on. An output that cannot be written at offsets (a
pipe, a terminal, a file object, a file in append mode) takes the settled ranges one at a time in
their order, from whichever thread settled them. At most `WINDOW_PER_WORKER * workers` ranges are
walked ahead of the last settled one, each held as compact iovecs over the mapping (16 bytes per run
of accepted records), never as packet bytes.

Where a range's first record starts is not known: classic pcap records are not self-delimiting, and a
plausible-looking record header may sit inside a packet (a pcap carried over TCP is full of them). So
range i > 0 starts from a *guess* g_i >= b_i (`guess_pcap`: the first offset where a few chained
record headers look right) and walks until the next record would start at or after b_i+1 (the walker's
`stop_at`, `Status.STOP`), reporting that offset e_i. Range 0 starts at the first record. The settling
thread checks, in order, that g_i equals e_i-1 (where the previous range's verified walk crossed b_i);
a range whose guess was wrong is walked again from e_i-1 (`Run.redone` counts these), and its new end
is what range i+1's guess is checked against. Every record written was therefore reached by one
unbroken walk from the file header, exactly the records `workers=1` writes.

Errors and -c are decided in order too: a truncated or corrupt record raises `CaptureFileError` (the
same as `workers=1`, at the same offset) once every range before it and its own records before the bad
spot are written; a walk from a wrong guess that fails says nothing, it is redone. With `count`, each
range stops after `count` accepted records; the range in which the total reaches `count` is walked
again from its verified start with the exact remainder as its limit, so the same first N are written.

pcapng (`filter_file`, `split_file` and -c alike, on the same ranges): its packet blocks are read in a
*context* — the section's byte order, its interfaces' link types and snap lengths — that only the
section header and interface description blocks before them set. The calling thread reads the blocks
before the first packet block (the context of almost every file, whose interfaces are all described up
front: `CaptureFile.read_lead`); ranges are walked in that context from guessed block starts
(`guess_pcapng`: 4-aligned, chained block framing) and verified in order as for pcap. A statistics,
name-resolution or custom block met in a range is read by the walking thread and written in its place,
a piece of the range's output like a run of records. A section header or interface description stops
the walk there; the settling thread, once the walk up to it is verified, reads those blocks (in file
order, so a new interface's slot and program come where one thread makes them), writes them in place,
walks the rest of the range in the new context and publishes that context for the ranges claimed from
then on. A range walked ahead in the older context is walked again, as after a wrong guess (`Run.redone`
counts it): so a new section or interface mid-file costs at most a window of ranges walked twice, and
the file stays on every thread after it. Every packet block is thus read in the context one thread
reads it in.

Default worker count: the CPUs this process may run on, for files of at least `PARALLEL_MIN_BYTES`.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar, cast

from . import walkers
from .capformat import (
    BLOCK_MIN,
    BT_IDB,
    BT_SHB,
    HOST_ORDER,
    PACKET_BLOCKS,
    PCAP_HEADER_LEN,
    U64_MAX,
    Block,
    ChunkArrays,
    Records,
    Section,
)
from .errors import CaptureFileError
from .walkers import Status

if TYPE_CHECKING:
    from .capformat import CaptureFile, WalkerSource
    from .capwriter import Writer

__all__ = ["Chain", "Context", "RangeWalker", "Run", "default_workers", "filter_ranges", "guess_pcap", "guess_pcapng",
           "split_ranges", "workers_for"]

# Below this a file is walked on one thread by default. bench/parallel_bench.py --threshold on a 2-CPU
# machine: a run's fixed cost is ~0.3 ms (a thread, a guess per range) and at 36 MB (5 ms in all, the
# write half of it) two threads gained nothing measurable; at 365 MB they do (see the README).
PARALLEL_MIN_BYTES = 64 << 20
RANGES_PER_WORKER = 4  # more ranges than threads: one slow range (a redo, a busy core) holds up less
WINDOW_PER_WORKER = 4  # ranges walked ahead of the last settled one, per thread
MIN_RANGE_BYTES, MAX_RANGE_BYTES = 1 << 20, 64 << 20
GUESS_CHAIN = 4  # record headers that must chain up (or reach the end of the file) for a guess
GUESS_SCAN = 1 << 16  # offsets a guess looks at before giving up (the range is then walked from e_i-1)
GUESS_MAX_SECONDS = 86400  # consecutive records' timestamps differ by less than this
GUESS_MAX_WIRELEN = 1 << 24


def default_workers(size: int) -> int:
    """Threads for a file of `size` bytes when the caller did not say: every usable CPU if it pays."""
    if size < PARALLEL_MIN_BYTES:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers_for(capture: CaptureFile, workers: int | None, count: int | None = None) -> int:
    """The threads a run over `capture` uses: 1 for -c 0 and for a streamed capture (no mapping to cut)."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be positive, not {workers}")
    if count == 0 or capture.streamed:
        return 1
    return default_workers(capture.size) if workers is None else workers


class Run(NamedTuple):
    """What a parallel run did: records read, accepted per output, ranges walked, ranges walked again."""

    read: int
    accepted: list[int]
    ranges: int
    redone: int


def boundaries(first: int, size: int, workers: int, range_bytes: int | None = None) -> list[int]:
    """b_0 = first record, ..., b_n = size: ranges of `range_bytes` (default: a few per worker)."""
    body = size - first
    if range_bytes is None:
        range_bytes = min(max(body // (workers * RANGES_PER_WORKER), MIN_RANGE_BYTES), MAX_RANGE_BYTES)
    ranges = max(1, round(body / max(range_bytes, 1)))  # evenly: no sliver of a last range
    return [first + body * i // ranges for i in range(ranges)] + [size]


# -- guessing where a range's first record starts -------------------------------------------------------
def guess_pcap(capture: CaptureFile, lo: int, hi: int) -> int | None:
    """The first offset in [lo, hi) (looking at `GUESS_SCAN` offsets at most) where `GUESS_CHAIN`
    record headers chain up plausibly: fraction below a second, caplen within the snaplen, wirelen >=
    caplen, each record inside the file, neighbours' timestamps within `GUESS_MAX_SECONDS`. A guess
    only saves work: `filter_ranges` checks it and walks the range again if it was wrong."""
    order, hdr, size, data = capture.order, capture.record_header, capture.size, capture.map
    units = capture.interfaces[0].ts_units
    bound = capture.snaplen if 0 < capture.snaplen <= capture.max_caplen else capture.max_caplen
    unpack = struct.Struct(order + "IIII").unpack_from
    last = min(hi, lo + GUESS_SCAN, size - hdr + 1)
    if last <= lo:
        return None

    def record(at: int) -> tuple[int, int] | None:
        sec, frac, caplen, wirelen = unpack(data, at)
        end = at + hdr + caplen
        if frac >= units or caplen > bound or not caplen <= wirelen <= GUESS_MAX_WIRELEN or end > size:
            return None
        return sec, end

    # C-speed prefilter (an offset that passes still gets every check): the high bytes of the fraction,
    # caplen and wirelen fields are small
    window = data[lo : last + 15]
    for match in _prefilter(order).finditer(window):
        at = lo + match.start()
        first = record(at)
        if first is None:
            continue
        sec, end = first
        for _ in range(GUESS_CHAIN - 1):
            if end == size:
                break
            if end + hdr > size or (next_ := record(end)) is None or abs(next_[0] - sec) > GUESS_MAX_SECONDS:
                break
            sec, end = next_
        else:
            return at
        if end == size:
            return at
    return None


_PREFILTERS: dict[str, re.Pattern[bytes]] = {}


def _prefilter(order: str) -> re.Pattern[bytes]:
    """Offsets whose fraction field is below 2^30 and whose caplen and wirelen are below 2^24."""
    if order not in _PREFILTERS:
        # little-endian: the most significant byte is the last of each field
        pattern = rb"(?=.{7}[\x00-\x3f].{3}\x00.{3}\x00)" if order == "<" else rb"(?=.{4}[\x00-\x3f].{3}\x00.{3}\x00)"
        _PREFILTERS[order] = re.compile(pattern, re.DOTALL)
    return _PREFILTERS[order]


def guess_pcapng(capture: CaptureFile, lo: int, hi: int, order: str, interfaces: int) -> int | None:
    """The first 4-aligned offset in [lo, hi) (looking at `GUESS_SCAN` bytes at most) holding a packet
    block whose framing chains up over `GUESS_CHAIN` blocks (or to the end of the file, or to a section
    header: the next section's byte order may differ, and `capparts` parts end there): each block's
    length a multiple of 4 and repeated at its end; an EPB naming a known interface and holding its
    caplen. Blocks start 4-aligned (the first at 0, every length a multiple of 4). Only saves work:
    `filter_ranges` checks it."""
    data, size = capture.map, capture.size
    word = struct.Struct(order + "I").unpack_from

    def block_end(at: int) -> int | None:
        if at + BLOCK_MIN > size:
            return None
        length = word(data, at + 4)[0]
        end = at + length
        if length < BLOCK_MIN or length % 4 or end > size or word(data, end - 4)[0] != length:
            return None
        return end

    at = lo + (-lo) % 4
    last = min(hi, lo + GUESS_SCAN, size - BLOCK_MIN + 1)
    while at < last:
        btype = word(data, at)[0]
        end = block_end(at) if btype in PACKET_BLOCKS else None
        if end is not None and btype == walkers.BT_EPB:
            iface, caplen = word(data, at + 8)[0], word(data, at + 20)[0]
            if end - at < 32 or iface >= interfaces or caplen > end - at - 32:
                end = None
        if end is not None and frames_up(capture, end, order, GUESS_CHAIN - 1):
            return at
        at += 4
    return None


def frames_up(capture: CaptureFile, at: int, order: str, blocks: int) -> bool:
    """Whether `blocks` pcapng blocks from `at` frame up (each length at least `BLOCK_MIN`, a multiple
    of 4, repeated at the block's end), or fewer up to the end of the file or a section header."""
    data, size = capture.map, capture.size
    word = struct.Struct(order + "I").unpack_from
    for _ in range(blocks):
        if at == size or (size - at >= 4 and word(data, at)[0] == BT_SHB):
            return True
        if size - at < BLOCK_MIN:
            return False
        length = word(data, at + 4)[0]
        if length < BLOCK_MIN or length % 4 or length > size - at or word(data, at + length - 4)[0] != length:
            return False
        at += length
    return True


# -- one range ------------------------------------------------------------------------------------------
class Kept:
    """A chunk's accepted records for one output, as `Writer.records` takes them: compact copies of the
    walker's iovecs (16 bytes per run of records) and per-writev byte counts."""

    def __init__(self, iov: Any, group_bytes: Any, count: int, nbytes: int):
        self.iov, self.group_bytes = iov, group_bytes
        self.chunk = walkers.Chunk(iov_count=count, bytes=nbytes)

    @classmethod
    def copy(cls, arrays: ChunkArrays) -> Kept | None:
        count = arrays.chunk.iov_count
        if not count:
            return None
        groups = (count + walkers.IOV_GROUP - 1) // walkers.IOV_GROUP
        iov, group_bytes = (ctypes.c_uint64 * (2 * count))(), (ctypes.c_uint64 * groups)()
        ctypes.memmove(iov, arrays.iov, ctypes.sizeof(iov))
        ctypes.memmove(group_bytes, arrays.group_bytes, ctypes.sizeof(group_bytes))
        return cls(iov, group_bytes, count, arrays.chunk.bytes)


# What a range writes to an output, in file order: accepted records (iovecs over the mapping), a pcap
# record cut to the snapshot (its bytes), a pcapng block that is no packet (statistics, names, custom;
# a section header or interface description met on the settling thread)
Piece = Kept | bytes | Block


class Walked:
    """One range's walk: where it started and stopped and why, what it read and kept for each output;
    pcapng: the context it started in and the one it ended in (different if it went through a section
    header or an interface description, on the settling thread)."""

    def __init__(self, start: int | None, limit: int, context: Any = None):
        self.start, self.limit = start, limit  # start None: no plausible record start found
        self.end, self.status = start, Status.STOP
        self.context = self.next_context = context
        self.error: CaptureFileError | None = None  # a bad block found in Python (pcapng), else from status
        self.read = 0
        self.accepted: list[int] = []
        self.kept: list[tuple[int, Piece]] = []  # (output, piece) in file order

    def extend(self, rest: Walked) -> None:
        """`rest`, the walk on from where this one stopped, becomes part of it."""
        self.read += rest.read
        self.accepted = [a + b for a, b in zip(self.accepted, rest.accepted, strict=True)]
        self.kept += rest.kept
        self.end, self.status, self.error, self.next_context = rest.end, rest.status, rest.error, rest.next_context


# Consumes one walker call's chunk (arrays, records walked, whether the last one was cut) into a Walked.
Consume = Callable[[ChunkArrays, int, Walked, bool], None]


class RangeWalker:
    """Walks ranges of a classic pcap file with one compiled walker (shared by the threads: the code
    is reentrant, each call brings its own Chunk). The interface `_Ranges` drives, for either format:
    `lead` (the blocks an output starts with) and `first` (the first record's offset), `guess`, a walk
    (`__call__`), `finish` (the settling thread's part of a verified walk) and `error`."""

    context: Any = None  # pcapng: the context at the settled position (`_PcapngWalker`)

    def __init__(self, capture: CaptureFile, walk: Any, chunk: int, consume: Consume, outputs: int):
        self.capture, self.walk, self.chunk, self.consume, self.outputs = capture, walk, chunk, consume, outputs
        self.swapped = int(capture.order != HOST_ORDER)
        self.snapshot = min(capture.snaplen, capture.max_caplen)  # records longer are cut (Status.CUT)
        self.local = threading.local()  # each thread's ChunkArrays, reused from range to range
        self.lead, self.first = [Block(0, PCAP_HEADER_LEN)], PCAP_HEADER_LEN

    def arrays(self) -> ChunkArrays:
        """This thread's arrays, reused from range to range."""
        arrays = getattr(self.local, "arrays", None)
        if arrays is None:
            arrays = self.local.arrays = ChunkArrays(self.chunk)
        return cast(ChunkArrays, arrays)

    def guess(self, lo: int, hi: int, context: Any) -> int | None:
        """Where the first record at or after `lo` probably starts (`guess_pcap`)."""
        return guess_pcap(self.capture, lo, hi)

    def __call__(self, start: int | None, stop: int, limit: int = U64_MAX, context: Any = None) -> Walked:
        walked = Walked(start, limit)
        walked.accepted = [0] * self.outputs
        if start is None:
            return walked
        arrays = self.arrays()
        chunk = arrays.chunk
        chunk.stop_at, chunk.limit = stop, limit
        pos = start
        while True:
            n = self.walk_from(pos, arrays)
            pos, status = chunk.end, chunk.status
            if n:
                walked.read += n
                self.consume(arrays, n, walked, status == Status.CUT)
            if status not in (Status.FULL, Status.CUT):
                walked.end, walked.status = pos, Status(status)
                return walked
            if limit != U64_MAX:
                chunk.limit = limit - walked.accepted[0]

    def walk_from(self, pos: int, arrays: ChunkArrays) -> int:
        """One walker call from `pos` into `arrays`: the records it walked."""
        capture = self.capture
        return int(self.walk(capture.address, capture.size, pos, self.swapped, capture.record_header,
                             capture.max_caplen, self.snapshot, arrays.address))  # fmt: skip

    def finish(self, walked: Walked, hi: int) -> Walked:
        """A verified walk of a range ending at `hi`, completed by the settling thread (pcap: nothing to do)."""
        return walked

    def error(self, walked: Walked) -> CaptureFileError:
        """The error a walk that stopped at a bad record stands for (what one thread raises there)."""
        return walked.error or self.capture._pcap_error(cast(int, walked.end), walked.status)


class Context(NamedTuple):
    """What the packet blocks of a stretch of a pcapng file are read in: its section (byte order, the
    interfaces' snap lengths and link-type slots: a copy no later block changes) and the walker compiled
    for every slot seen so far."""

    section: Section
    walk: Any


class _PcapngWalker(RangeWalker):
    """Walks ranges of a pcapng file. The calling thread reads the blocks before the first packet block
    (`lead`: the context of almost every file); a walk reads packet blocks in the context it is given,
    handles a statistics, name-resolution or custom block in place (a piece of the range's output, as
    one thread writes it) and stops at a section header or interface description (`Status.OTHER_BLOCK`):
    those change the context, so only the settling thread reads them (`finish`), once the walk up to
    them is verified; it walks the rest of the range in the new context and publishes it (`context`)
    for the ranges claimed after. A range walked in an older context is walked again (`_Ranges`)."""

    def __init__(self, capture: CaptureFile, filters: WalkerSource, chunk: int, consume: Consume, outputs: int,
                 written: int, prepare: Callable[[Section], None] | None = None):  # fmt: skip
        # (not RangeWalker.__init__: a pcapng file has no single snaplen or byte order; the contexts have them)
        self.capture, self.filters, self.chunk, self.consume, self.outputs = capture, filters, chunk, consume, outputs
        self.written = range(written)  # the outputs written (each gets every block); none when only counting
        self.prepare = prepare  # called with each new context's section before a walk reads in it
        self.local = threading.local()
        lead, section, self.first = capture.read_lead()
        self.lead = lead
        assert section is not None  # (the file starts with a section header: CaptureFile checked)
        self.context = self.make_context(section)
        # where a run of section/interface blocks starts: (those blocks, where they end, the context
        # after them, the error that cut them short); read once, however often a range is walked again
        self.changes: dict[int, tuple[list[Block], int, Context, CaptureFileError | None]] = {}

    def make_context(self, section: Section) -> Context:
        """A context for `section` as it is now (copied): its walker compiled for every slot."""
        if self.prepare is not None:
            self.prepare(section)
        return Context(section.copy(), self.filters.walker()[0])

    def guess(self, lo: int, hi: int, context: Any) -> int | None:
        """A guessed packet block start (`guess_pcapng`) in `context`'s byte order and interfaces."""
        section = cast(Context, context).section
        return guess_pcapng(self.capture, lo, hi, section.order, len(section.interfaces))

    def __call__(self, start: int | None, stop: int, limit: int = U64_MAX, context: Any = None) -> Walked:
        capture = self.capture
        context = cast(Context, context or self.context)
        walked = Walked(start, limit, context)
        walked.accepted = [0] * self.outputs
        if start is None:
            return walked
        arrays = self.arrays()
        chunk = arrays.chunk
        chunk.stop_at = stop
        section = context.section
        swapped, snaplens, slots = int(section.order != HOST_ORDER), ctypes.addressof(section.snaplens), \
            ctypes.addressof(section.slots)  # fmt: skip
        interfaces = len(section.interfaces)
        word = struct.Struct(section.order + "I").unpack_from
        pos = start
        while True:
            chunk.limit = limit if limit == U64_MAX else limit - walked.accepted[0]
            n = int(context.walk(capture.address, capture.size, pos, swapped, snaplens, slots, interfaces,
                                 arrays.address))  # fmt: skip
            pos, status = chunk.end, chunk.status
            if n:
                walked.read += n
                self.consume(arrays, n, walked, False)
            if status == Status.FULL:
                continue
            if status == Status.OTHER_BLOCK and word(capture.map, pos)[0] not in (BT_SHB, BT_IDB):
                try:  # (checked as one thread checks it; such a block changes no context)
                    block, _ = capture._pcapng_block(pos, section)
                except CaptureFileError as error:
                    walked.end, walked.status, walked.error = pos, Status.BAD_BLOCK, error
                    return walked
                walked.kept += [(output, block) for output in self.written]
                pos = block.end
                continue
            # (NEW_LINKTYPE cannot come: a context's walker has every slot its interfaces name)
            walked.end, walked.status = pos, Status(status)
            return walked

    def finish(self, walked: Walked, hi: int) -> Walked:
        """A verified walk that stopped at a section or interface block: read those blocks (here, on the
        settling thread, in file order: they change the context), write them in place, walk on to the
        range's end in the new context; again at the next such block."""
        while walked.status == Status.OTHER_BLOCK:
            blocks, pos, context, error = self.change(cast(int, walked.end), cast(Context, walked.next_context))
            walked.kept += [(output, block) for block in blocks for output in self.written]
            if error is not None:
                walked.end, walked.status, walked.error = pos, Status.BAD_BLOCK, error
                break
            limit = walked.limit if walked.limit == U64_MAX else walked.limit - walked.accepted[0]
            walked.extend(self(pos, hi, limit, context))
        return walked

    def change(self, at: int, context: Context) -> tuple[list[Block], int, Context, CaptureFileError | None]:
        """The section and interface blocks from `at` (read in `context`), up to the next block of
        another kind, and the context they leave (remembered: a range walked again meets them again)."""
        if at not in self.changes:
            capture, section = self.capture, context.section.copy()
            blocks: list[Block] = []
            pos, error = at, None
            try:
                while capture.size - pos >= 8:  # (less: the walk from here says "truncated", as one thread does)
                    if struct.unpack_from(section.order + "I", capture.map, pos)[0] not in (BT_SHB, BT_IDB):
                        break
                    block, section = capture._pcapng_block(pos, section)
                    blocks.append(block)
                    pos = block.end
            except CaptureFileError as failed:
                error = failed
            self.changes[at] = (blocks, pos, self.make_context(section), error)
        return self.changes[at]

    def error(self, walked: Walked) -> CaptureFileError:
        section = cast(Context, walked.next_context).section
        return walked.error or self.capture._pcapng_error(cast(int, walked.end), walked.status, section)


def filter_consume(capture: CaptureFile, writing: bool) -> Consume:
    """A filter's chunk into a Walked: its accepted count and, when writing, its accepted records
    (a record cut to the snapshot as bytes of its own)."""

    def consume(arrays: ChunkArrays, n: int, walked: Walked, cut: bool) -> None:
        walked.accepted[0] += arrays.chunk.accepted
        if writing and (kept := Kept.copy(arrays)) is not None:
            walked.kept.append((0, kept))
        if writing and cut and arrays.verdicts[n - 1]:
            walked.kept.append((0, capture.cut_record(int(arrays.starts[n - 1]))))

    return consume


def split_consume(capture: CaptureFile, classifier: Callable[[int], Any], outputs: int) -> Consume:
    """A chunk into a Walked for `split_file`: each record through the classifier of its slot
    (`capfile._classified`), each output's chosen records kept as iovecs."""
    import numpy as np

    from .capfile import _classified

    data = np.frombuffer(capture.map, dtype=np.uint8)
    group = walkers.IOV_GROUP

    def consume(arrays: ChunkArrays, n: int, walked: Walked, cut: bool) -> None:
        section = cast(Context, walked.context).section if walked.context is not None else None
        starts, _, verdicts = _classified(Records(arrays, n, section, False), data, classifier, outputs)
        lengths = starts[1:] - starts[:-1]
        for index in range(outputs):
            chosen = np.flatnonzero(verdicts[:, index])
            if not len(chosen):
                continue
            walked.accepted[index] += len(chosen)
            last_cut = cut and chosen[-1] == n - 1  # its bytes are not the file's: written apart
            if last_cut:
                chosen = chosen[:-1]
            if len(chosen):
                iov = np.empty((len(chosen), 2), dtype=np.uint64)  # struct iovec {base, len}
                iov[:, 0] = starts[chosen] + np.uint64(capture.address)
                iov[:, 1] = lengths[chosen]
                sums = np.add.reduceat(iov[:, 1], np.arange(0, len(chosen), group))
                iov_copy = (ctypes.c_uint64 * iov.size).from_buffer_copy(iov.data)
                sums_copy = (ctypes.c_uint64 * len(sums)).from_buffer_copy(sums.data)
                walked.kept.append((index, Kept(iov_copy, sums_copy, len(chosen), int(sums.sum()))))
            if last_cut:
                walked.kept.append((index, capture.cut_record(int(starts[n - 1]))))

    return consume


# -- the order check -----------------------------------------------------------------------------------
class _Started(Protocol):
    @property
    def start(self) -> int | None: ...


W = TypeVar("W", bound=_Started)


class Chain:
    """The check that makes ranges exact, applied in file order: range i's walk counts only if it
    started where the walk counted for range i-1 crossed b_i (`position`); otherwise it is walked
    again from there. Used by the threads here and by processes (`capparts`) alike."""

    def __init__(self, first: int):
        self.position = first  # where the verified walk is: the next record's start
        self.redone = 0

    def verify(self, walked: W, hi: int, redo: Callable[[int], W]) -> W:
        """`walked` if its start is `position`, else `redo(position)` (a walk of [position, hi))."""
        if walked.start != self.position:  # a wrong guess (or none)
            self.redone += self.position < hi  # a range with no record start of its own is no redo
            walked = redo(self.position)
        return walked


# -- the threads ---------------------------------------------------------------------------------------
class _Write(NamedTuple):
    """A settled range's records to write: each output's file offset (None: written in order, on the
    range's `ticket`, the turn among the ranges with records for such an output)."""

    walked: Walked
    at: list[int | None]
    ticket: int | None


class _Ranges:
    """One run's threads (`work`, the calling thread one of them). Each claims the next range in file
    order, at most `window` ranges ahead of the last settled one, walks it, then settles every walked
    range the chain has reached — in file order, by one thread at a time: the `Chain` check (a redo
    where a guess was wrong, or where a pcapng walk read in a context that has changed since), the
    walker's `finish`, `-c`, the end, an error — and writes what it settled.

    A settled range's bytes are known, so where its records go in a regular file is the prefix sum
    of the ranges before it (`Writer.position`): it is written there with pwritev, with no lock held
    and no other range waiting, normally by the thread that walked it, right after the walk. Walks and
    writes of different ranges overlap. An output that is no regular file (a pipe, a file object)
    takes its ranges in settling order (`_Write.ticket`), one at a time, from whichever thread."""

    def __init__(self, walker: RangeWalker, writers: Sequence[Writer], bounds: list[int],
                 window: int, count: int | None, progress: Callable[[int, int, int], None] | None):  # fmt: skip
        self.walker, self.writers, self.bounds, self.window = walker, writers, bounds, window
        self.count, self.progress = count, progress
        self.limit = U64_MAX if count is None else count
        self.ranges = len(bounds) - 1
        self.cond = threading.Condition()
        self.claimed = self.settled = 0  # ranges claimed; ranges settled (all before `settled`)
        self.walked: dict[int, Walked] = {}  # walked, not yet settled
        self.settling = False  # a thread is settling (the role is one thread's at a time)
        self.finished = False  # the chain reached the end, -c or an error: nothing more to settle
        self.chain = Chain(bounds[0])
        self.read, self.accepted = 0, [0] * walker.outputs
        self.failure: CaptureFileError | None = None  # a bad record, raised once everything before is written
        self.error: BaseException | None = None  # raised in a thread (a write failed, an interrupt)
        # per output, once opened: where its first record goes and where the next one goes (None: in order)
        self.opened = [False] * len(writers)
        self.first: list[int | None] = [None] * len(writers)
        self.position: list[int | None] = [None] * len(writers)
        self.tickets = self.turn = 0

    def task(self, index: int) -> Walked:
        """Walk range `index` from its first record (range 0) or a guessed one, in the latest context."""
        lo, hi, walker = self.bounds[index], self.bounds[index + 1], self.walker
        context = walker.context  # (pcapng: read once; the settling thread may publish a newer one)
        start = lo if index == 0 else walker.guess(lo, hi, context)
        return walker(start, hi, self.limit, context)

    def work(self) -> None:
        try:
            while True:
                with self.cond:
                    while not self.finished and self.settled + self.window <= self.claimed < self.ranges:
                        self.cond.wait()
                    if self.finished or self.error is not None or self.claimed >= self.ranges:
                        return
                    index = self.claimed
                    self.claimed += 1
                for write in self.settle(index, self.task(index)):
                    self.write(write)
        except BaseException as error:  # raised by the calling thread once every thread is done
            with self.cond:
                self.error = self.error or error
                self.finished = True
                self.cond.notify_all()

    def settle(self, index: int, walked: Walked) -> list[_Write]:
        """Hand in range `index`'s walk; settle what the chain reaches if no other thread is settling.
        Returns what this thread is to write."""
        writes: list[_Write] = []
        with self.cond:
            self.walked[index] = walked
            if self.settling:
                return writes  # the settling thread takes it
            self.settling = True
        try:
            while True:
                with self.cond:
                    if self.finished or self.settled not in self.walked:
                        self.settling = False  # (in the same hold as the check: no walk is left behind)
                        return writes
                    index = self.settled
                    walked = self.walked.pop(index)
                writes.append(self._settle(index, walked))
        except BaseException:
            with self.cond:
                self.settling = False
            raise

    def _settle(self, index: int, walked: Walked) -> _Write:
        hi, chain, walker = self.bounds[index + 1], self.chain, self.walker

        def walk(at: int, limit: int = self.limit) -> Walked:
            return walker(at, hi, limit, walker.context)

        if walked.context is walker.context:
            walked = chain.verify(walked, hi, walk)
        else:  # pcapng: walked before the settled walk met a section or interface block
            chain.redone += chain.position < hi
            walked = walk(chain.position)
        walked = walker.finish(walked, hi)
        counted = self.count is not None and self.accepted[0] + walked.accepted[0] >= self.count
        if counted and walked.limit != cast(int, self.count) - self.accepted[0]:  # stop at the count-th record
            walked = walker.finish(walk(chain.position, cast(int, self.count) - self.accepted[0]), hi)
        failure = None
        if not counted and walked.status not in (Status.STOP, Status.END, Status.LIMIT):
            failure = walker.error(walked)
        capture = walker.capture
        nbytes, records = [0] * len(self.writers), [False] * len(self.writers)
        for output, piece in walked.kept:
            nbytes[output] += _length(capture, piece)
            records[output] |= not isinstance(piece, Block)
        with self.cond:
            for output, writer in enumerate(self.writers):
                if nbytes[output] and not records[output] and not self.opened[output]:
                    # blocks before an output's first record: held until it opens, as one thread holds them
                    for block in (piece for o, piece in walked.kept if o == output):
                        writer.block(_bytes(capture, cast(Block, block)))
                    nbytes[output] = 0
            walked.kept = [(output, piece) for output, piece in walked.kept if nbytes[output]]
            at: list[int | None] = []
            ordered = False
            for output, writer in enumerate(self.writers):
                if nbytes[output] and not self.opened[output]:
                    writer.open()  # (its held header blocks go first)
                    self.opened[output] = True
                    self.first[output] = self.position[output] = writer.position()
                place = self.position[output]
                at.append(place)
                if place is not None:
                    self.position[output] = place + nbytes[output]
                else:
                    ordered |= nbytes[output] > 0
            ticket = None
            if ordered:
                ticket, self.tickets = self.tickets, self.tickets + 1
            self.read += walked.read
            self.accepted = [a + b for a, b in zip(self.accepted, walked.accepted, strict=True)]
            if counted or walked.status in (Status.END, Status.LIMIT):
                self.finished = True
            elif failure is not None:
                self.failure, self.finished = failure, True
            else:
                chain.position = cast(int, walked.end)
                walker.context = walked.next_context  # the context there: the next ranges are walked in it
            self.settled = index + 1
            self.cond.notify_all()
        if self.progress is not None and not counted:
            self.progress(cast(int, walked.end), self.read, self.accepted[0])  # (in order: one settler)
        return _Write(walked, at, ticket)

    def write(self, write: _Write) -> None:
        """A settled range's records: at their offsets; then, on its turn, to the ordered outputs."""
        at, ordered, capture = write.at, [], self.walker.capture
        for output, piece in write.walked.kept:
            place = at[output]
            if place is None:
                ordered.append((output, piece))
                continue
            writer = self.writers[output]
            if isinstance(piece, Kept):
                at[output] = place + writer.records_at(cast(ChunkArrays, piece), place)
            else:
                at[output] = place + writer.record_at(_bytes(capture, piece), place)
        if write.ticket is None:
            return
        with self.cond:
            while self.turn != write.ticket and self.error is None:
                self.cond.wait()
            if self.error is not None:
                return
        try:
            _write(capture, ordered, self.writers)
        finally:
            with self.cond:
                self.turn += 1
                self.cond.notify_all()


def _length(capture: CaptureFile, piece: Piece) -> int:
    if isinstance(piece, Kept):
        return int(piece.chunk.bytes)
    if isinstance(piece, Block):
        return len(piece.replacement) if piece.replacement is not None else piece.end - piece.start
    return len(piece)


def _bytes(capture: CaptureFile, piece: bytes | Block) -> bytes:
    """A cut record's bytes, or a block's as it is written (a section header: its length unknown)."""
    if isinstance(piece, Block):
        return piece.replacement or capture.map[piece.start : piece.end]
    return piece


def _write(capture: CaptureFile, pieces: Sequence[tuple[int, Piece]], writers: Sequence[Writer]) -> None:
    """Pieces to their outputs, in order, at each output's current position."""
    for output, piece in pieces:
        if isinstance(piece, Kept):
            writers[output].records(cast(ChunkArrays, piece))  # Kept has the fields records() reads
        elif isinstance(piece, Block):
            writers[output].block(_bytes(capture, piece))
        else:
            writers[output].record(piece)


def _run(walker: RangeWalker, writers: Sequence[Writer], workers: int, count: int | None,
         progress: Callable[[int, int, int], None] | None, range_bytes: int | None) -> Run:  # fmt: skip
    capture = walker.capture
    bounds = boundaries(walker.first, capture.size, workers, range_bytes)
    if workers > 1 and len(bounds) > 3:
        # Range 0 half as long, range 1 half again: the threads, started together, finish their walks
        # half a range apart, so that one writes while the other walks (writes to one file do not run
        # at once: capwriter). In step, both wrote at once, each taking twice as long (a 2-CPU trace).
        bounds[1] = (bounds[0] + bounds[1]) // 2
    for writer in writers:
        for block in walker.lead:  # (held until the output opens)
            writer.block(_bytes(capture, block))
    run = _Ranges(walker, writers, bounds, WINDOW_PER_WORKER * workers, count, progress)
    threads = [threading.Thread(target=run.work, name=f"bpfjit-range-{k}", daemon=True)
               for k in range(min(workers, run.ranges) - 1)]  # fmt: skip
    for thread in threads:
        thread.start()
    try:
        run.work()  # (what a thread raises is kept in run.error)
        for thread in threads:
            thread.join()
    except BaseException:  # an interrupt while joining: stop the others before the mapping goes
        with run.cond:
            run.finished = True
            run.cond.notify_all()
        for thread in threads:
            thread.join()
        raise
    if run.error is not None:
        raise run.error
    for writer, first, position in zip(writers, run.first, run.position, strict=True):
        if first is not None:
            writer.placed(first, cast(int, position))
    if run.failure is not None:
        raise run.failure
    return Run(run.read, run.accepted, run.ranges, run.chain.redone)


# -- the operations ----------------------------------------------------------------------------------------
def _walker(capture: CaptureFile, filters: WalkerSource, chunk: int, consume: Consume, outputs: int, written: int,
            prepare: Callable[[Section], None] | None = None) -> RangeWalker:  # fmt: skip
    """The range walker for `capture`'s format: `outputs` counts of accepted records, `written` outputs."""
    if capture.format == "pcap":
        return RangeWalker(capture, filters.walker()[0], chunk, consume, outputs)
    return _PcapngWalker(capture, filters, chunk, consume, outputs, written, prepare)


def filter_ranges(capture: CaptureFile, filters: WalkerSource, writer: Writer | None, workers: int, *,
                  count: int | None = None, chunk: int, progress: Callable[[int, int, int], None] | None = None,
                  range_bytes: int | None = None) -> Run:  # fmt: skip
    """`filter_file`'s loop on `workers` threads: the records `filters` (a `LinkTypeFilters`) accept,
    to `writer`, with the header and the non-packet blocks as one thread writes them."""
    walker = _walker(capture, filters, chunk, filter_consume(capture, writer is not None), 1, int(writer is not None))
    return _run(walker, [writer] if writer is not None else [], workers, count, progress, range_bytes)


def split_ranges(capture: CaptureFile, keep_all: WalkerSource, classifier: Callable[[int], Any],
                 writers: Sequence[Writer], workers: int, *, chunk: int,
                 range_bytes: int | None = None) -> Run:  # fmt: skip
    """`split_file`'s loop on `workers` threads: `keep_all` walks every record, `classifier(slot)` (a
    `Classifier` for the slot's link type) says which outputs each goes to; each output's records are
    kept as iovecs. pcapng: the classifiers of a context's slots are made before it is walked in (on
    one thread: made on first use, they must not be made by two at once)."""

    def prepare(section: Section) -> None:
        for slot in sorted(set(section.slots[: len(section.interfaces)])):
            classifier(slot)

    consume = split_consume(capture, classifier, len(writers))
    walker = _walker(capture, keep_all, chunk, consume, len(writers), len(writers), prepare)
    return _run(walker, writers, workers, None, None, range_bytes)
