"""Capture files: filter, split and read classic pcap and pcapng, with the per-packet loop in native code.

    stats = bpfjit.filter_file("in.pcap", "out.pcap", "tcp port 80")   # like tcpdump -r IN -w OUT EXPR
    for timestamp, packet, wirelen in bpfjit.read_file("in.pcapng", filter="udp"):
        ...

The operations, over the stages that are modules of their own: `capformat` (the file, its headers
and its records as events), `capfilters` (the program per interface description), `capwriter` (the output).

Why the per-packet loop is not Python: a Python loop costs about a microsecond a record, several
times what it takes to read, filter and write one. The file is mmap'd read-only (no copy into
Python); a native walker (`walkers`) walks its records a chunk of thousands at a time, runs the
filter on each (inlined) and lists the accepted ones as iovecs over the mapping; the writer writes
them with writev. Python runs once per chunk. The readers hand Python only the accepted packets.

A truncated last record or a corrupt header raises `CaptureFileError` naming the byte offset, after
every complete record before it has been written (or yielded). Records are read, filtered and
written as `tcpdump -r` reads them (`capformat`, `capfilters`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from . import capparallel, walkers
from .capfilters import LinkTypeFilters
from .capformat import U64_MAX, Block, CaptureFile, ChunkArrays, Records, Section, Stream
from .capwriter import Writer
from .errors import CaptureFileError
from .program import Program

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .batch import Batch
    from .capfilters import FilterSpec
    from .capformat import Output, Source
    from .classifier import Classifier

__all__ = ["CaptureFileError", "FileCounts", "FileStats", "PacketBatch", "Stream", "count_file", "filter_file",
           "read_batches", "read_file", "split_file"]

DEFAULT_CHUNK = 1 << 12  # records per walker call: the chunk (~1.5 MB of file) is still in cache when written


class FileStats(NamedTuple):
    """What `filter_file` did: packet records read, accepted (and written), bytes written."""

    read: int
    accepted: int
    written: int


class PacketBatch(NamedTuple):
    """One chunk from `read_batches`: packets of one link type, in file order."""

    batch: Batch
    timestamps: npt.NDArray[np.float64]  # seconds since the epoch (float64: ~0.2 µs resolution today)
    linktype: int  # LINKTYPE_* value from the file (1 = Ethernet)


# -- writing: filter_file, split_file ------------------------------------------------------------------
def _check_chunk(chunk: int) -> None:
    if chunk < 1:  # a walker that may walk no record would never get past the first one
        raise ValueError(f"chunk must be positive, not {chunk}")


def filter_file(
    src: Source,
    dst: Output | None,
    filter: FilterSpec = None,
    *,
    count: int | None = None,
    linktype: int | str | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int, int, int], None] | None = None,
    workers: int | None = None,
) -> FileStats:
    """Copy the packets of capture file `src` that `filter` accepts to `dst`, as `tcpdump -r -w` does.

    `filter` is an expression (compiled as `tcpdump -r` compiles it: for each interface description
    of the file, on a libpcap savefile handle; or for `linktype` if given), a `Program` (applied to
    every packet), a `Filter` (its expression compiled for the file the same way, or its program) or
    None (keep everything); libpcap's refusal is an `ExpressionError` before anything is written.
    `dst` is a path, a binary file object, or None to only count. The output keeps the input's
    format, byte order, header (link type, snaplen, timestamp precision) and accepted records byte for
    byte, except that a pcap record longer than the snapshot length is filtered and written cut to it,
    as libpcap hands it to tcpdump (README, "Capture files"). `dst` is opened at the first accepted
    record or the end of the input, so a run that fails before leaves it untouched. `count` stops
    after that many accepted packets (tcpdump's -c). `progress(bytes_done, read, accepted)` is called
    after each chunk. A truncated or corrupt file raises `CaptureFileError` once every complete record
    before the bad spot has been written. `workers` threads walk byte ranges of the file (default: every
    CPU for a file large enough to pay, `capparallel`); the output is the same byte for byte.
    """
    _check_chunk(chunk)
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    with CaptureFile(src) as capture:
        filters = LinkTypeFilters(filter, capture, linktype)
        threads = capparallel.workers_for(capture, workers, count)
        gathers = dst is not None and (threads > 1 or Writer.without_descriptor(dst))  # (see capwriter)
        filters.helpers = ("gather",) if gathers else ()
        filters.walker()  # compile before the output is opened: a bad expression must not clobber it
        writer = Writer(dst, capture) if dst is not None else None  # opened at the first record
        try:
            if threads > 1:
                run = capparallel.filter_ranges(capture, filters, writer, threads, count=count, chunk=chunk,
                                                progress=progress)  # fmt: skip
                stats = FileStats(run.read, run.accepted[0], 0)
            else:
                stats = _filter_into(capture, filters, writer, count, chunk, progress)
            if writer is not None:
                writer.finish()
                stats = stats._replace(written=writer.written)
            return stats
        finally:
            if writer is not None:
                writer.close()


def split_file(
    src: Source,
    dsts: Sequence[Output],
    filters: Sequence[str | Program],
    *,
    linktype: int | str | None = None,
    chunk: int = DEFAULT_CHUNK,
    workers: int | None = None,
) -> list[FileStats]:
    """Copy each packet of `src` to every `dsts[i]` whose `filters[i]` accepts it, in ONE pass.

    The filters (expressions compiled for each link type in the file, or programs) run together
    as one native classifier (`bpfjit.compile_many`) over each chunk of records the walker lists;
    every output keeps the input's header and non-packet blocks, and its accepted records byte for
    byte, as `filter_file` would write it for that filter alone. `workers`: as for `filter_file`.
    """
    _check_chunk(chunk)
    import numpy as np

    if len(dsts) != len(filters) or not filters:
        raise ValueError(f"split_file needs one output per filter ({len(filters)} filters, {len(dsts)} outputs)")
    with CaptureFile(src) as capture:
        keep_all = LinkTypeFilters(None, capture, linktype)
        keep_all.helpers = ("gather",)
        keep_all.walker()
        classifier = slot_classifiers(capture, filters, linktype)
        classifier(0)  # compile before the outputs are opened: a bad expression must not clobber them
        writers = [Writer(dst, capture) for dst in dsts]
        stats = [[0, 0] for _ in dsts]  # accepted, unused
        read = 0
        gather = walkers.helper("gather")
        data = np.frombuffer(capture.map, dtype=np.uint8)
        arrays = ChunkArrays(chunk)
        try:
            if (threads := capparallel.workers_for(capture, workers)) > 1:
                run = capparallel.split_ranges(capture, keep_all, classifier, writers, threads, chunk=chunk)
                for writer in writers:
                    writer.finish()
                return [FileStats(run.read, accepted, writer.written) for accepted, writer in
                        zip(run.accepted, writers, strict=True)]  # fmt: skip
            with memoryview(capture.map) as view:
                for event in capture.events(keep_all, lambda: arrays):
                    if isinstance(event, Block):
                        for writer in writers:
                            writer.block(event.replacement or view[event.start : event.end])
                        continue
                    n = event.n
                    read += n
                    data = _data(capture, data)
                    starts, _, verdicts = _classified(event, data, classifier, len(filters))
                    lengths = starts[1:] - starts[:-1]
                    for index, writer in enumerate(writers):
                        chosen = np.flatnonzero(verdicts[:, index])
                        if not len(chosen):
                            continue
                        stats[index][0] += len(chosen)
                        cut = event.cut and chosen[-1] == n - 1  # its bytes are not the file's
                        if cut:
                            chosen = chosen[:-1]
                        iov = np.empty((len(chosen), 2), dtype=np.uint64)  # struct iovec {base, len}
                        iov[:, 0] = starts[chosen] + np.uint64(capture.address)
                        iov[:, 1] = lengths[chosen]
                        out = bytearray(int(iov[:, 1].sum()))
                        if len(chosen):
                            gather(iov.ctypes.data, len(chosen), ctypes.addressof(ctypes.c_char.from_buffer(out)))
                            writer.record(out)
                        if cut:
                            writer.record(capture.cut_record(int(starts[n - 1])))
            for writer in writers:
                writer.finish()
        finally:
            for writer in writers:
                writer.close()
        return [FileStats(read, accepted, writer.written) for (accepted, _), writer in zip(stats, writers, strict=True)]


def _data(capture: CaptureFile, data: Any) -> Any:
    """`data` (numpy bytes over `capture.map`), or a new view if the map is not the same object (a
    streamed capture's window grew)."""
    import numpy as np

    return data if data.base is capture.map else np.frombuffer(capture.map, dtype=np.uint8)


def _classified(event: Records, data: Any, classifier: Callable[[int], Classifier],
                filters: int) -> tuple[Any, Any, Any]:  # fmt: skip
    """A chunk's record starts (n + 1), wire lengths and verdict matrix (records x filters): each
    record through the classifier of its slot, once, whatever the number of filters."""
    import numpy as np

    from .batch import Batch

    arr, n = event.arrays, event.n
    starts = np.frombuffer(memoryview(arr.starts), dtype=np.uint64, count=n + 1)
    offsets = np.frombuffer(memoryview(arr.offsets), dtype=np.uint64, count=n)
    caplens = np.frombuffer(memoryview(arr.caplens), dtype=np.uint32, count=n)
    wirelens = np.maximum(np.frombuffer(memoryview(arr.wirelens), dtype=np.uint32, count=n), caplens)
    slots = None
    if event.section is None:
        present = [0]
    else:
        ifaces = np.frombuffer(memoryview(arr.ifaces), dtype=np.uint32, count=n)
        slots = np.frombuffer(memoryview(event.section.slots), dtype=np.uint32)[ifaces]
        present = np.unique(slots).tolist()
    if len(present) == 1:  # one link type: classified in place, no copies of the chunk's arrays per slot
        return starts, wirelens, classifier(present[0]).run_batch(Batch(data, offsets, caplens, wirelens))
    verdicts = np.zeros((n, filters), dtype=bool)
    for slot in present:
        rows = slots == slot
        verdicts[rows] = classifier(slot).run_batch(Batch(data, offsets[rows], caplens[rows], wirelens[rows]))
    return starts, wirelens, verdicts


class Tally:
    """Per filter, the packets accepted and their wire bytes, summed chunk by chunk into arrays made
    once: a chunk's temporaries stay small. (Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_
    set, which keeps glibc from reusing freed large blocks: a 512 KiB temporary per chunk was mapped
    and faulted in every time, and counting ran 22% slower in a worker than in a plain process.)"""

    def __init__(self, filters: int, chunk: int):
        import numpy as np

        self.packets = np.zeros(filters, dtype=np.int64)
        self.bytes = np.zeros(filters, dtype=np.uint64)
        self._weights = np.zeros(chunk, dtype=np.uint64)
        self._matrix = np.zeros((chunk, filters), dtype=np.uint64)
        self._sums = np.zeros(filters, dtype=np.uint64)

    def add(self, wirelens: Any, verdicts: Any) -> None:
        """One chunk's wire lengths (n) and verdict matrix (n x filters)."""
        import numpy as np

        n = len(wirelens)
        self.packets += np.count_nonzero(verdicts, axis=0)
        weights, matrix = self._weights[:n], self._matrix[:n]
        np.copyto(weights, wirelens)
        np.copyto(matrix, verdicts)
        np.matmul(weights, matrix, out=self._sums)
        self.bytes += self._sums

    def totals(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return tuple(self.packets.tolist()), tuple(self.bytes.tolist())


class FileCounts(NamedTuple):
    """What `count_file` counted: packet records read; per filter, packets accepted and their bytes on
    the wire (wirelen); the error that ended the file early (`errors="report"`), or None."""

    read: int
    packets: tuple[int, ...]
    bytes: tuple[int, ...]
    error: CaptureFileError | None = None


def count_file(
    src: Source,
    filters: Sequence[FilterSpec],
    *,
    linktype: int | str | None = None,
    chunk: int = DEFAULT_CHUNK,
    errors: str = "raise",
) -> FileCounts:
    """Count the packets (and their wire bytes) each of `filters` accepts in capture file `src`, in ONE
    pass: the filters run together as one classifier, once per packet (filters as for `split_file`).

    A truncated or corrupt file raises `CaptureFileError` (`errors="raise"`), or with `errors="report"`
    returns the counts of the records before the bad spot with the error in `FileCounts.error`.
    """
    _check_chunk(chunk)
    if errors not in ("raise", "report"):
        raise ValueError(f"errors must be 'raise' or 'report', not {errors!r}")
    if not filters:
        raise ValueError("count_file needs at least one filter")
    import numpy as np

    with CaptureFile(src) as capture:
        keep_all = LinkTypeFilters(None, capture, linktype)
        keep_all.walker()
        classifier = slot_classifiers(capture, filters, linktype)
        classifier(0)  # a refused expression fails before the walk
        data = np.frombuffer(capture.map, dtype=np.uint8)
        arrays = ChunkArrays(chunk)
        read, tally, error = 0, Tally(len(filters), chunk), None
        try:
            for event in capture.events(keep_all, lambda: arrays):
                if isinstance(event, Block):
                    continue
                read += event.n
                data = _data(capture, data)
                tally.add(*_classified(event, data, classifier, len(filters))[1:])
        except CaptureFileError as failed:
            if errors == "raise":
                raise
            error = failed
        del data  # the mapping closes with the file
        return FileCounts(read, *tally.totals(), error)


def slot_classifiers(capture: CaptureFile, filters: Sequence[FilterSpec],
                     linktype: int | str | None = None) -> Callable[[int], Classifier]:  # fmt: skip
    """`classifier(slot)`: `filters` compiled for that slot of `capture` (as `filter_file` compiles each)
    into one classifier, made on first use; a filter given as None accepts everything."""
    from .classifier import compile_many

    accept_all = Program([(0x06, 0, 0, 0xFFFFFFFF)])
    per_filter = [LinkTypeFilters(spec, capture, linktype) for spec in filters]
    made: dict[int, Classifier] = {}

    def classifier(slot: int) -> Classifier:
        if slot not in made:
            made[slot] = compile_many([f.program_for(slot) or accept_all for f in per_filter])
        return made[slot]

    return classifier


def _filter_into(capture: CaptureFile, filters: LinkTypeFilters, writer: Writer | None, count: int | None,
                 chunk: int, progress: Callable[[int, int, int], None] | None) -> FileStats:  # fmt: skip
    arrays = ChunkArrays(chunk)
    read = accepted = 0
    limit = U64_MAX if count is None else count
    arrays.chunk.limit = limit
    with memoryview(capture.map) as view:
        for event in capture.events(filters, lambda: arrays):
            if isinstance(event, Block):
                if writer is not None:
                    writer.block(event.replacement or view[event.start : event.end])
                continue
            if limit == 0:  # -c 0: the file header only
                break
            if writer is not None:
                writer.records(arrays)
                if event.cut and arrays.verdicts[event.n - 1]:
                    writer.record(capture.cut_record(arrays.starts[event.n - 1]))
            read += event.n
            accepted += arrays.chunk.accepted
            if progress is not None:
                progress(arrays.chunk.end, read, accepted)
            if accepted >= limit:
                break
            arrays.chunk.limit = limit - accepted
    return FileStats(read, accepted, writer.written if writer is not None else 0)


# -- reading: read_file, packet_lines, read_batches ---------------------------------------------------
def read_file(
    path: Source, filter: FilterSpec = None, *, linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[float, bytes, int]]:
    """Yield `(timestamp, packet, wirelen)` for each packet of a capture file that `filter` accepts.

    `timestamp` is float seconds since the epoch, as dpkt and scapy give them: a float64 resolves about
    0.2 µs for today's dates, so nanosecond files lose their last digits. `packet` is a copy of the
    captured bytes. Filtering runs natively a chunk at a time; only accepted packets reach Python. A
    truncated or corrupt file raises `CaptureFileError` after the packets before the bad spot.
    """
    _check_chunk(chunk)
    with CaptureFile(path) as capture:
        for start, iface, section, offset, caplen, wirelen in _accepted(capture, filter, linktype, chunk, _Counts()):
            ticks, interface = capture.timestamp_ticks(start, iface, section)
            packet = bytes(capture.map[offset : offset + caplen])  # (a streamed window moves on)
            yield ticks / interface.ts_units + interface.ts_offset, packet, wirelen


def packet_lines(
    path: Source,
    filter: FilterSpec = None,
    *,
    linktype: int | str | None = None,
    count: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> Iterator[tuple[str, int]]:
    """`(timestamp, wirelen)` of each accepted packet, the timestamp as exact decimal text in the
    file's precision (`1700000000.000032`): what `bpfjit filter` prints without -w."""
    counts = _Counts(progress)
    with CaptureFile(path) as capture:
        for start, iface, section, _, _, wirelen in _accepted(capture, filter, linktype, DEFAULT_CHUNK, counts):
            ticks, interface = capture.timestamp_ticks(start, iface, section)
            yield interface.timestamp_text(ticks), wirelen
            if count is not None and counts.accepted >= count:
                counts.report(start)
                return


def file_program(path: Source, filter: FilterSpec, *, linktype: int | str | None = None) -> Program | None:
    """The program `filter_file` runs on the packets of the file's first link type (None: no filter)."""
    with CaptureFile(path) as capture:
        for lt, header in capture.first_slots if not capture.slots else ():
            capture.slot_of(lt, header)
        if not capture.slots:
            raise CaptureFileError(0, "no interface describes a link type before the first packet", capture.path)
        return LinkTypeFilters(filter, capture, linktype).program_for(0)


class _Counts:
    """Packets read and accepted so far (`read` counts up to the packet being yielded)."""

    def __init__(self, progress: Callable[[int, int, int], None] | None = None):
        self.progress = progress
        self.read = self.accepted = 0

    def report(self, position: int) -> None:
        if self.progress is not None:
            self.progress(position, self.read, self.accepted)


def _accepted(
    capture: CaptureFile, filter: FilterSpec, linktype: int | str | None, chunk: int, counts: _Counts
) -> Iterator[tuple[int, int, Section | None, int, int, int]]:
    """(record start, interface, section, data offset, caplen, wirelen) of each accepted packet."""
    filters = LinkTypeFilters(filter, capture, linktype)
    filters.helpers = ("accepted_indices",)
    arrays = ChunkArrays(chunk)
    indices = (ctypes.c_uint32 * chunk)()
    select = None
    for event in capture.events(filters, lambda: arrays):
        if isinstance(event, Block):
            continue
        n, read = event.n, counts.read
        if not event.filtered:
            chosen: Iterable[int] = range(n)
        else:
            select = select or walkers.helper("accepted_indices")
            chosen = indices[: select(ctypes.addressof(arrays.verdicts), n, ctypes.addressof(indices))]
        starts, offsets = arrays.starts[: n + 1], arrays.offsets[:n]
        caplens, wirelens, ifaces = arrays.caplens[:n], arrays.wirelens[:n], arrays.ifaces[:n]
        pcap = event.section is None
        for i in chosen:
            counts.read, counts.accepted = read + i + 1, counts.accepted + 1
            yield starts[i], 0 if pcap else ifaces[i], event.section, offsets[i], caplens[i], wirelens[i]
        counts.read = read + n
        counts.report(starts[n])


def read_batches(
    path: Source, filter: FilterSpec = None, *, linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK
) -> Iterator[PacketBatch]:
    """Yield the accepted packets of a capture file as `PacketBatch(batch, timestamps, linktype)`.

    Each `Batch` points into the mapped file (zero-copy) and holds packets of one link type, in file
    order (a chunk that mixes link types is split where the type changes). A packet whose recorded
    wirelen is below its caplen (a broken writer) gets wirelen = caplen.
    """
    _check_chunk(chunk)
    with CaptureFile(path) as capture:
        filters = LinkTypeFilters(filter, capture, linktype)
        arrays = ChunkArrays(chunk)  # reused: what a PacketBatch holds is copied out of it (fancy indexing)
        yield from packet_batches(capture, capture.events(filters, lambda: arrays))


def packet_batches(capture: CaptureFile, events: Iterable[Records | Block]) -> Iterator[PacketBatch]:
    """`read_batches`' batches from `capture.events(...)` (a whole file, or a part of one: `capparts`)."""
    import numpy as np

    from .batch import Batch

    data = np.frombuffer(capture.map, dtype=np.uint8)
    for event in events:
        if isinstance(event, Block):
            continue
        data = _data(capture, data)
        arr, n = event.arrays, event.n
        starts = np.frombuffer(memoryview(arr.starts), dtype=np.uint64, count=n)
        offsets = np.frombuffer(memoryview(arr.offsets), dtype=np.uint64, count=n)
        caplens = np.frombuffer(memoryview(arr.caplens), dtype=np.uint32, count=n)
        wirelens = np.maximum(np.frombuffer(memoryview(arr.wirelens), dtype=np.uint32, count=n), caplens)
        if event.section is None:
            slots = np.zeros(n, dtype=np.uint32)
            units = np.full(n, capture.interfaces[0].ts_units, dtype=np.float64)
            shift = np.zeros(n, dtype=np.float64)
        else:
            ifaces = np.frombuffer(memoryview(arr.ifaces), dtype=np.uint32, count=n)
            section = event.section
            slots = np.frombuffer(memoryview(section.slots), dtype=np.uint32)[ifaces]
            units = np.array([i.ts_units for i in section.interfaces], dtype=np.float64)[ifaces]
            shift = np.array([i.ts_offset for i in section.interfaces], dtype=np.float64)[ifaces]
        timestamps = _timestamps(data, starts, event.section, capture) / units + shift
        keep = np.ones(n, dtype=bool)
        if event.filtered:
            keep = np.frombuffer(memoryview(arr.verdicts), dtype=np.uint32, count=n) != 0
        cuts = np.flatnonzero(np.diff(slots)) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
            chosen = np.flatnonzero(keep[lo:hi]) + lo
            if len(chosen):
                batch = Batch(capture.map, offsets[chosen], caplens[chosen], wirelens[chosen])
                if capture.streamed:  # the window moves on: the packets' bytes, compacted
                    batch = Batch(*batch.__reduce__()[1])
                yield PacketBatch(batch, timestamps[chosen], capture.linktypes[int(slots[lo])])


def _timestamps(data: Any, starts: Any, section: Section | None, capture: CaptureFile) -> Any:
    """Timestamp ticks of the records at `starts`, vectorised (float64)."""
    import numpy as np

    if section is None:
        fields = data[starts[:, None].astype(np.int64) + np.arange(8)].view(capture.order + "u4")
        return fields[:, 0].astype(np.float64) * capture.interfaces[0].ts_units + fields[:, 1]
    index = np.minimum(starts[:, None].astype(np.int64) + np.arange(20), len(data) - 1)  # an SPB may be 16 bytes
    raw = data[index]
    btype = raw[:, 0:4].copy().view(section.order + "u4")[:, 0]
    words = raw[:, 12:20].copy().view(section.order + "u4")
    ticks = words[:, 0].astype(np.float64) * 2.0**32 + words[:, 1]
    return np.where(btype == walkers.BT_SPB, 0.0, ticks)
