"""Byte-range parts of one classic pcap file, walked anywhere (other processes, other machines) and
assembled exactly: the engine-neutral core that `bpfjit.dask` (or a Ray or Spark job) calls.

    parts = capparts.plan("big.pcap", part_bytes=64 << 20)
    results = [capparts.filter_part(p, "out.pcap", "tcp port 80") for p in parts]   # anywhere, any order
    stats = capparts.assemble_filter(results, "out.pcap", "tcp port 80")   # the bytes filter_file writes

The protocol is `capparallel`'s, with results that pickle instead of shared memory: part i > 0 starts
from a guessed record start g_i (`guess_pcap`), walks until the next record would start at or after
its end b_i+1, and reports where that was (`PartResult.end`). Assembly checks the parts in file order
(`capparallel.Chain`): a part whose start is not where the previous verified part ended is walked
again from there, in the assembling process (one part; a wrong guess is rare in ordinary captures,
about half the parts of a pcap carried over TCP). Every record counted or written was thus reached by
one unbroken walk from the file header.

A filter part writes its accepted records (no header) to a part file beside the output
(`part_path`); assembly writes the file header and the verified parts' files in order, then removes
the part files. A part walked again, or a task run again after its worker died, truncates its part
file first, so nothing is written twice; an assembly run again walks the parts whose files the first
run removed again. A truncated or corrupt record raises `CaptureFileError` at
its offset once everything before it is written, as `filter_file` does.

pcapng files are one part (`plan`): a range of one would first need a scan of its section and
interface blocks. Nothing here runs per packet in Python.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from . import capparallel
from .capfile import DEFAULT_CHUNK, FileCounts, FileStats, slot_classifiers
from .capfilters import LinkTypeFilters
from .capformat import PCAP_HEADER_LEN, CaptureFile, ChunkArrays
from .capwriter import Writer
from .errors import CaptureFileError
from .walkers import Status

if TYPE_CHECKING:
    from .capfilters import FilterSpec
    from .capparallel import Walked

__all__ = ["DEFAULT_PART_BYTES", "Part", "PartResult", "assemble_count", "assemble_filter", "count_part",
           "filter_part", "part_path", "plan", "verify"]  # fmt: skip

DEFAULT_PART_BYTES = 64 << 20  # capparallel's largest range: a task of ~0.1-0.3 s, a part file in the page cache


class Part(NamedTuple):
    """Bytes [lo, hi) of capture file `path`, part `number` of its plan (part 0 starts at the
    first record)."""

    path: str
    number: int
    lo: int
    hi: int


class PartResult(NamedTuple):
    """One walk of a part: where it started (None: no plausible record start in the part) and where
    the next record starts (`end`, at or after `part.hi`; the bad spot if `status` is an error), the
    walker's `Status`, records read; per filter, records accepted and (count parts) their wire bytes,
    or (filter parts) the bytes written to the part file."""

    part: Part
    start: int | None
    end: int | None
    status: int
    read: int
    accepted: tuple[int, ...]
    bytes: tuple[int, ...]


def plan(path: str | os.PathLike[str], part_bytes: int = DEFAULT_PART_BYTES) -> list[Part]:
    """The parts of a capture file, of about `part_bytes` each: one for pcapng and for small files."""
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, not {part_bytes}")
    name = os.fspath(path)
    with CaptureFile(name) as capture:
        if capture.format != "pcap":
            return [Part(name, 0, 0, capture.size)]
        bounds = capparallel.boundaries(PCAP_HEADER_LEN, capture.size, 1, part_bytes)
    return [Part(name, i, lo, hi) for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]


def part_path(dst: str | os.PathLike[str], index: int) -> str:
    """Where part `index` of output `dst` keeps its records until assembly (hidden, beside `dst`)."""
    head, tail = os.path.split(os.fspath(dst))
    return os.path.join(head, f".{tail}.part{index:05d}")


def _start(capture: CaptureFile, part: Part, start: int | None) -> int | None:
    if capture.format != "pcap":
        raise ValueError(f"{capture.path}: only classic pcap files are walked in parts (pcapng: filter_file)")
    if start is not None:
        return start
    return PCAP_HEADER_LEN if part.number == 0 else capparallel.guess_pcap(capture, part.lo, part.hi)


def _result(part: Part, walked: Walked, counted: tuple[int, ...]) -> PartResult:
    status = int(walked.status)
    return PartResult(part, walked.start, walked.end, status, walked.read, tuple(walked.accepted), counted)


def filter_part(part: Part, dst: str | os.PathLike[str], filter: FilterSpec = None, *, start: int | None = None,
                linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK) -> PartResult:  # fmt: skip
    """Walk `part` from `start` (default: its guessed first record) to its end, writing the records
    `filter` accepts to `part_path(dst, part.number)` (created at the first one; an old one is removed)."""
    out = part_path(dst, part.number)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)  # a redo, or the retry of a task whose worker died: from scratch
    with CaptureFile(part.path) as capture:
        first = _start(capture, part, start)
        filters = LinkTypeFilters(filter, capture, linktype)
        writer = Writer(out, capture)

        def consume(arrays: ChunkArrays, n: int, walked: Walked, cut: bool) -> None:
            walked.accepted[0] += arrays.chunk.accepted
            writer.records(arrays)
            if cut and arrays.verdicts[n - 1]:
                writer.record(capture.cut_record(int(arrays.starts[n - 1])))

        try:
            walked = capparallel.RangeWalker(capture, filters.walker()[0], chunk, consume, 1)(first, part.hi)
        finally:
            writer.close()
        return _result(part, walked, (writer.written,))


def count_part(part: Part, filters: Sequence[FilterSpec], *, start: int | None = None,
               linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK) -> PartResult:  # fmt: skip
    """Walk `part` as `filter_part` does, counting the packets and wire bytes each filter accepts (one
    classifier, once per packet)."""
    import numpy as np

    from .batch import Batch

    with CaptureFile(part.path) as capture:
        first = _start(capture, part, start)
        classify = slot_classifiers(capture, filters, linktype)(0)  # pcap: one slot
        keep_all = LinkTypeFilters(None, capture, linktype)
        mapped = [np.frombuffer(capture.map, dtype=np.uint8)]  # dropped before the file closes
        nbytes = np.zeros(len(filters), dtype=np.uint64)

        def consume(arrays: ChunkArrays, n: int, walked: Walked, cut: bool) -> None:
            offsets = np.frombuffer(memoryview(arrays.offsets), dtype=np.uint64, count=n)
            caplens = np.frombuffer(memoryview(arrays.caplens), dtype=np.uint32, count=n)
            wirelens = np.maximum(np.frombuffer(memoryview(arrays.wirelens), dtype=np.uint32, count=n), caplens)
            verdicts = classify.run_batch(Batch(mapped[0], offsets, caplens, wirelens))
            walked.accepted[:] = (np.asarray(walked.accepted) + verdicts.sum(axis=0)).tolist()
            nbytes[:] += wirelens.astype(np.uint64) @ verdicts.astype(np.uint64)

        walker = capparallel.RangeWalker(capture, keep_all.walker()[0], chunk, consume, len(filters))
        walked = walker(first, part.hi)
        mapped.clear()
        return _result(part, walked, tuple(nbytes.tolist()))


def verify(results: Sequence[PartResult], redo: Callable[[Part, int], PartResult]) -> tuple[list[PartResult], int]:
    """The parts' walks in file order, each checked to start where the previous one ended (or walked
    again from there: `redo(part, offset)`), up to the part that reached the end of the file or a bad
    record; and how many parts were walked again."""
    ordered = sorted(results, key=lambda result: result.part.number)
    if [r.part.number for r in ordered] != list(range(len(ordered))) or not ordered:
        raise ValueError(f"the results are not one of each part: {[r.part.number for r in ordered]}")
    chain = capparallel.Chain(PCAP_HEADER_LEN)
    verified: list[PartResult] = []
    for result in ordered:
        part = result.part
        checked = chain.verify(result, part.hi, lambda at, part=part: redo(part, at))  # type: ignore[misc]
        verified.append(checked)
        if checked.status != Status.STOP:  # the end of the file, or a bad record: nothing after counts
            break
        assert checked.end is not None
        chain.position = checked.end
    return verified, chain.redone


def _error(path: str, last: PartResult) -> CaptureFileError | None:
    if last.status in (Status.END, Status.STOP):
        return None
    with CaptureFile(path) as capture:
        assert last.end is not None
        return capture._pcap_error(last.end, last.status)


def assemble_filter(results: Sequence[PartResult], dst: str | os.PathLike[str], filter: FilterSpec = None, *,
                    linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK) -> FileStats:  # fmt: skip
    """Write `dst` from the parts' files (checking and redoing them as `verify` does): the bytes
    `filter_file(path, dst, filter)` writes, and its `FileStats`. A bad record raises its
    `CaptureFileError` after the records before it are written (no file if none was accepted)."""

    def redo(part: Part, at: int) -> PartResult:
        return filter_part(part, dst, filter, start=at, linktype=linktype, chunk=chunk)

    try:
        verified, _ = verify(results, redo)
        path = verified[0].part.path
        error = _error(path, verified[-1])
        read, accepted = sum(r.read for r in verified), sum(r.accepted[0] for r in verified)
        written = 0
        if error is None or accepted:  # as filter_file: no output if it failed before a record
            with open(path, "rb") as src:
                header = src.read(PCAP_HEADER_LEN)
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
        for result in results:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part_path(dst, result.part.number))
    if error is not None:
        raise error
    return FileStats(read, accepted, written)


def _copy(src: Any, dst: Any) -> int:
    """Copy file `src` to the end of `dst` in the kernel where it can (copy_file_range, sendfile)."""
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

    def redo(part: Part, at: int) -> PartResult:
        return count_part(part, filters, start=at, linktype=linktype, chunk=chunk)

    verified, _ = verify(results, redo)
    error = _error(verified[0].part.path, verified[-1])
    if error is not None and errors == "raise":
        raise error
    packets = [sum(r.accepted[i] for r in verified) for i in range(len(filters))]
    nbytes = [sum(r.bytes[i] for r in verified) for i in range(len(filters))]
    return FileCounts(sum(r.read for r in verified), tuple(packets), tuple(nbytes), error)
