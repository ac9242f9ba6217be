"""Byte-range parts of one capture file (classic pcap or pcapng), walked anywhere (other processes, other
machines) and assembled exactly: the engine-neutral core that `bpfjit.dask` (or a Ray or Spark job) calls.

    parts = capparts.plan("big.pcap", part_bytes=64 << 20)
    results = [capparts.filter_part(p, "out.pcap", "tcp port 80") for p in parts]   # anywhere, any order
    stats = capparts.assemble_filter(results, "out.pcap", "tcp port 80")   # the bytes filter_file writes

The protocol is `capparallel`'s, with results that pickle instead of shared memory: part i > 0 starts
from a guessed record start g_i (`guess_pcap`; pcapng: `guess_pcapng`, a 4-aligned packet block whose
framing chains up), walks until the next record would start at or after its end b_i+1, and reports
where that was (`PartResult.end`). Assembly checks the parts in file order (`capparallel.Chain`): a
part whose start is not where the previous verified part ended is walked again from there, in the
assembling process (one part; a wrong guess is rare in ordinary captures, about half the parts of a
pcap carried over TCP). Every record counted or written was thus reached by one unbroken walk from
the file's beginning.

pcapng: every part first reads the blocks before the first packet block (section header, interface
descriptions: a few hundred bytes) for the context its packets are read in — byte order, link types,
snap lengths — and walks in it; part 0 starts at the first packet block. Other blocks met in a part
(statistics, name resolution, custom) are written in place. A section or interface block after the
first packet would change the context, so a part stops there (`Status.OTHER_BLOCK`); the verified
walk ends at the first such block and assembly walks the rest of the file from it in one piece, as
`filter_file` does (the parts planned after it are dropped). pcapng blocks are self-delimiting, but a
guess can still land on bytes that frame like blocks (a pcapng carried over TCP), hence the same check.

A filter part writes its accepted records (no header) and those blocks to a part file beside the
output (`part_path`); assembly writes the file header (pcap) or the blocks before the first packet
(pcapng, as `filter_file` writes them) and the verified parts' files in order, then removes the part
files. A part walked again, or a task run again after its worker died, truncates its part file first,
so nothing is written twice; an assembly run again walks the parts whose files the first run removed
again. A truncated or corrupt record raises `CaptureFileError` at its offset once everything before it
is written, as `filter_file` does.

Readers of parts (`to_dataframe`'s partitions) cannot trust a row before its part is verified, so
they read verified `spans`: `walk_part` on every part (no filter, no output: the native walk alone),
`spans` checks them in order as assembly does, and `read_span` reads one span's packets as
`capfile.read_batches` reads the whole file. Nothing here runs per packet in Python.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from . import capparallel
from .capfile import DEFAULT_CHUNK, FileCounts, FileStats, PacketBatch, _classified, packet_batches, slot_classifiers
from .capfilters import LinkTypeFilters
from .capformat import PCAP_HEADER_LEN, Block, CaptureFile, ChunkArrays, Records, Section
from .capwriter import Writer
from .errors import CaptureFileError
from .walkers import Status

if TYPE_CHECKING:
    from .capfilters import FilterSpec

__all__ = ["DEFAULT_PART_BYTES", "Part", "PartResult", "Span", "assemble_count", "assemble_filter", "count_part",
           "filter_part", "part_path", "plan", "read_span", "spans", "verify", "walk_part"]  # fmt: skip

DEFAULT_PART_BYTES = 64 << 20  # capparallel's largest range: a task of ~0.1-0.3 s, a part file in the page cache


class Part(NamedTuple):
    """Bytes [lo, hi) of capture file `path`, part `number` of its plan (part 0 starts at the
    first record: after the pcap file header, or at the first pcapng packet block)."""

    path: str
    number: int
    lo: int
    hi: int


class PartResult(NamedTuple):
    """One walk of a part: where it started (None: no plausible record start in the part) and where
    it stopped (`end`: the next record's start, at or after `part.hi`; a pcapng section or interface
    block; the bad spot), the walker's `Status` there (STOP: the part's end; OTHER_BLOCK: such a
    block, where the rest of the file is walked in one piece; END: the file's end), records read;
    per filter, records accepted and (count parts) their wire bytes, or (filter parts) the bytes
    written to the part file; and the `CaptureFileError` that ended the walk, if one did."""

    part: Part
    start: int | None
    end: int | None
    status: int
    read: int
    accepted: tuple[int, ...]
    bytes: tuple[int, ...]
    error: CaptureFileError | None = None


class Span(NamedTuple):
    """A verified stretch of a file: `part` walked from `start`, a record start one unbroken walk from
    the file's beginning reaches; with `to_end`, on to the end of the file through whatever blocks
    come (the rest of a pcapng file from its first section or interface block after a packet)."""

    part: Part
    start: int
    to_end: bool = False


def plan(path: str | os.PathLike[str], part_bytes: int = DEFAULT_PART_BYTES) -> list[Part]:
    """The parts of a capture file, of about `part_bytes` each (one for a small file). pcapng: the
    blocks before the first packet (section header, interfaces) are read here and by every part."""
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, not {part_bytes}")
    name = os.fspath(path)
    with CaptureFile(name) as capture:
        first = PCAP_HEADER_LEN if capture.format == "pcap" else capture.read_lead()[2]
        bounds = capparallel.boundaries(first, capture.size, 1, part_bytes)
    return [Part(name, i, lo, hi) for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]


def part_path(dst: str | os.PathLike[str], index: int) -> str:
    """Where part `index` of output `dst` keeps its records until assembly (hidden, beside `dst`)."""
    head, tail = os.path.split(os.fspath(dst))
    return os.path.join(head, f".{tail}.part{index:05d}")


# -- walking one part --------------------------------------------------------------------------------------
class _Opened(NamedTuple):
    capture: CaptureFile
    section: Section | None  # pcapng: the context the lead blocks leave
    lead: list[Block]  # pcapng: those blocks (what an output starts with)


@contextlib.contextmanager
def _open(part: Part) -> Iterator[_Opened]:
    with CaptureFile(part.path) as capture:
        if capture.format == "pcap":
            yield _Opened(capture, None, [])
        else:
            lead, section, _ = capture.read_lead()
            yield _Opened(capture, section, lead)


def _start(opened: _Opened, part: Part, start: int | None) -> int | None:
    """Where a walk of `part` starts: `start` if given (a verified offset), part 0's first record, else
    a guess (`capparallel.guess_pcap` / `guess_pcapng`), None if the part has no plausible one."""
    capture, section = opened.capture, opened.section
    if start is not None:
        return start
    if part.number == 0:
        return part.lo
    if section is None:
        return capparallel.guess_pcap(capture, part.lo, part.hi)
    return capparallel.guess_pcapng(capture, part.lo, part.hi, section.order, len(section.interfaces))


def _walk(opened: _Opened, part: Part, start: int | None, filters: LinkTypeFilters, chunk: int, to_end: bool,
          records: Callable[[Records], None],
          block: Callable[[Block], None]) -> tuple[int | None, int, int, CaptureFileError | None]:  # fmt: skip
    """Walk `part` from `start` (to its end, or with `to_end` to the file's), handing each chunk and
    block on: (where it stopped, status, records read, the CaptureFileError that stopped it)."""
    if start is None:
        return None, Status.STOP, 0, None
    arrays = ChunkArrays(chunk)
    read = 0
    stop = opened.capture.size if to_end else part.hi
    events = opened.capture.events(filters, lambda: arrays, start, opened.section, stop, context_stop=not to_end)
    try:
        for event in events:
            if isinstance(event, Block):
                block(event)
            else:
                read += event.n
                records(event)
    except CaptureFileError as error:  # decided by `verify`: a walk from a wrong guess may fail anywhere
        status = arrays.chunk.status
        return error.offset, status if status in _ERRORS else Status.BAD_BLOCK, read, error
    return int(arrays.chunk.end), int(arrays.chunk.status), read, None


_ERRORS = (Status.TRUNCATED, Status.BAD_CAPLEN, Status.BAD_BLOCK, Status.BAD_INTERFACE)


def filter_part(part: Part, dst: str | os.PathLike[str], filter: FilterSpec = None, *, start: int | None = None,
                linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK,
                to_end: bool = False) -> PartResult:  # fmt: skip
    """Walk `part` from `start` (default: its guessed first record) to its end, writing the records
    `filter` accepts, and the pcapng blocks other than section and interface blocks met on the way,
    to `part_path(dst, part.number)` (an old one is removed first)."""
    out = part_path(dst, part.number)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)  # a redo, or the retry of a task whose worker died: from scratch
    with _open(part) as opened:
        capture = opened.capture
        first = _start(opened, part, start)
        filters = LinkTypeFilters(filter, capture, linktype)
        writer = Writer(out, capture)
        accepted = 0
        view = memoryview(capture.map)

        def records(event: Records) -> None:
            nonlocal accepted
            accepted += event.arrays.chunk.accepted
            writer.records(event.arrays)
            if event.cut and event.arrays.verdicts[event.n - 1]:
                writer.record(capture.cut_record(int(event.arrays.starts[event.n - 1])))

        def block(event: Block) -> None:
            writer.block(event.replacement or view[event.start : event.end])

        try:
            end, status, read, error = _walk(opened, part, first, filters, chunk, to_end, records, block)
            writer.finish()  # blocks with no record after them are the output's too
        finally:
            writer.close()
            view.release()
        return PartResult(part, first, end, status, read, (accepted,), (writer.written,), error)


def count_part(part: Part, filters: Sequence[FilterSpec], *, start: int | None = None,
               linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK,
               to_end: bool = False) -> PartResult:  # fmt: skip
    """Walk `part` as `filter_part` does, counting the packets and wire bytes each filter accepts (one
    classifier per link type, once per packet)."""
    import numpy as np

    with _open(part) as opened:
        capture = opened.capture
        first = _start(opened, part, start)
        classifier = slot_classifiers(capture, filters, linktype)
        keep_all = LinkTypeFilters(None, capture, linktype)
        data = [np.frombuffer(capture.map, dtype=np.uint8)]  # dropped before the file closes
        packets, nbytes = np.zeros(len(filters), dtype=np.int64), np.zeros(len(filters), dtype=np.uint64)

        def records(event: Records) -> None:
            _, wirelens, verdicts = _classified(event, data[0], classifier, len(filters))
            packets[:] += verdicts.sum(axis=0)
            nbytes[:] += wirelens.astype(np.uint64) @ verdicts.astype(np.uint64)

        end, status, read, error = _walk(opened, part, first, keep_all, chunk, to_end, records, lambda _: None)
        data.clear()
        return PartResult(part, first, end, status, read, tuple(packets.tolist()), tuple(nbytes.tolist()), error)


def walk_part(part: Part, *, start: int | None = None, chunk: int = DEFAULT_CHUNK, to_end: bool = False) -> PartResult:
    """Walk `part` as `filter_part` does, only to learn where it ends (`spans`, for readers of parts)."""
    with _open(part) as opened:
        first = _start(opened, part, start)
        keep_all = LinkTypeFilters(None, opened.capture)
        end, status, read, error = _walk(opened, part, first, keep_all, chunk, to_end, lambda _: None, lambda _: None)
        return PartResult(part, first, end, status, read, (), (), error)


# -- verifying the parts in file order ---------------------------------------------------------------------
def verify(results: Sequence[PartResult], redo: Callable[[Part, int], PartResult]) -> tuple[list[PartResult], int]:
    """The parts' walks in file order, each checked to start where the previous one ended (or walked
    again from there: `redo(part, offset)`), up to the part that reached the end of the file, a bad
    record or (pcapng) a section or interface block; and how many parts were walked again."""
    ordered = sorted(results, key=lambda result: result.part.number)
    if [r.part.number for r in ordered] != list(range(len(ordered))) or not ordered:
        raise ValueError(f"the results are not one of each part: {[r.part.number for r in ordered]}")
    chain = capparallel.Chain(ordered[0].part.lo)
    verified: list[PartResult] = []
    for result in ordered:
        part = result.part
        checked = chain.verify(result, part.hi, lambda at, part=part: redo(part, at))  # type: ignore[misc]
        verified.append(checked)
        if checked.status != Status.STOP:  # the end of the file, a bad record, a new context: nothing after counts
            break
        assert checked.end is not None
        chain.position = checked.end
    return verified, chain.redone


def _rest(verified: list[PartResult], parts: int) -> Part | None:
    """The rest of a pcapng file after the verified walks stopped at a section or interface block."""
    last = verified[-1]
    if last.status != Status.OTHER_BLOCK or last.error is not None:
        return None
    assert last.end is not None
    with CaptureFile(last.part.path) as capture:
        size = capture.size
    return Part(last.part.path, parts, last.end, size)


def spans(results: Sequence[PartResult], *, chunk: int = DEFAULT_CHUNK) -> list[Span]:
    """The verified stretches of a file from `walk_part` results (parts walked again as `verify`
    says; a pcapng file's rest after a new section or interface, one more span to its end)."""

    def redo(part: Part, at: int) -> PartResult:
        return walk_part(part, start=at, chunk=chunk)

    verified, _ = verify(results, redo)
    found = [Span(r.part, r.start) for r in verified if r.start is not None]
    rest = _rest(verified, len(results))
    return found + ([Span(rest, rest.lo, True)] if rest is not None else [])


def read_span(span: Span, filter: FilterSpec = None, *, linktype: int | str | None = None,
              chunk: int = DEFAULT_CHUNK) -> Iterator[PacketBatch]:  # fmt: skip
    """The accepted packets of a verified span as `capfile.read_batches` yields them (a `CaptureFileError`
    at a bad record, after the packets before it)."""
    with _open(span.part) as opened:
        capture = opened.capture
        filters = LinkTypeFilters(filter, capture, linktype)
        arrays = ChunkArrays(chunk)
        stop = capture.size if span.to_end else span.part.hi
        events = capture.events(filters, lambda: arrays, span.start, opened.section, stop, not span.to_end)
        yield from packet_batches(capture, events)


# -- assembling ---------------------------------------------------------------------------------------------
def _header(path: str) -> bytes:
    """What an output starts with: the pcap file header, or the pcapng blocks before the first packet
    (a section header saying its length is unknown), as `filter_file` writes them."""
    with _open(Part(path, 0, 0, 0)) as opened:
        view = opened.capture.map
        if opened.section is None:
            return bytes(view[:PCAP_HEADER_LEN])
        return b"".join(b.replacement or bytes(view[b.start : b.end]) for b in opened.lead)


def assemble_filter(results: Sequence[PartResult], dst: str | os.PathLike[str], filter: FilterSpec = None, *,
                    linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK) -> FileStats:  # fmt: skip
    """Write `dst` from the parts' files (checking and redoing them as `verify` does; a pcapng file's
    rest after a new section or interface walked here): the bytes `filter_file(path, dst, filter)`
    writes, and its `FileStats`. A bad record raises its `CaptureFileError` after the records before
    it are written (no file if none was accepted)."""
    rest_number = len(results)

    def redo(part: Part, at: int) -> PartResult:
        return filter_part(part, dst, filter, start=at, linktype=linktype, chunk=chunk,
                           to_end=part.number == rest_number)  # fmt: skip

    try:
        verified, _ = verify(results, redo)
        path = verified[0].part.path
        if (rest := _rest(verified, rest_number)) is not None:
            verified.append(redo(rest, rest.lo))
        error = verified[-1].error
        read, accepted = sum(r.read for r in verified), sum(r.accepted[0] for r in verified)
        written = 0
        if error is None or accepted:  # as filter_file: no output if it failed before a record
            header = _header(path)
            with open(dst, "wb") as out:
                out.write(header)
                written = len(header)
                for result in verified:
                    if result.bytes[0]:
                        piece_path = part_path(dst, result.part.number)
                        if not os.path.exists(piece_path):  # an assembly run again (retried, its worker died)
                            assert result.start is not None
                            redo(result.part, result.start)
                        with open(piece_path, "rb") as piece:
                            written += _copy(piece, out)
    finally:
        for number in range(rest_number + 1):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part_path(dst, number))
    if error is not None:
        raise error
    return FileStats(read, accepted, written)


def _copy(src: Any, dst: Any) -> int:
    """Copy file `src` to the end of `dst` in the kernel (sendfile)."""
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    done = 0
    while done < size:
        sent = os.sendfile(dst.fileno(), src.fileno(), done, size - done)
        if sent == 0:
            break
        done += sent
    return done


def assemble_count(results: Sequence[PartResult], filters: Sequence[FilterSpec], *,
                   linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK,
                   errors: str = "raise") -> FileCounts:  # fmt: skip
    """The parts' counts, checked and redone as `verify` does: what `count_file` counts."""
    rest_number = len(results)

    def redo(part: Part, at: int) -> PartResult:
        return count_part(part, filters, start=at, linktype=linktype, chunk=chunk, to_end=part.number == rest_number)

    verified, _ = verify(results, redo)
    if (rest := _rest(verified, rest_number)) is not None:
        verified.append(redo(rest, rest.lo))
    error = verified[-1].error
    if error is not None and errors == "raise":
        raise error
    packets = [sum(r.accepted[i] for r in verified) for i in range(len(filters))]
    nbytes = [sum(r.bytes[i] for r in verified) for i in range(len(filters))]
    return FileCounts(sum(r.read for r in verified), tuple(packets), tuple(nbytes), error)
