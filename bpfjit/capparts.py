"""Byte-range parts of one capture file (classic pcap or pcapng), walked anywhere (other processes, other
machines) and assembled exactly: the engine-neutral core that `bpfjit.dask` (or a Ray or Spark job) calls.

    parts = capparts.plan("big.pcap", part_bytes=64 << 20)
    results = [capparts.filter_part(p, "out.pcap", "tcp port 80") for p in parts]   # anywhere, any order
    stats = capparts.assemble_filter(results, "out.pcap", "tcp port 80")   # the bytes filter_file writes
    # or, as tasks: layout = settle(results, ...); place(layout, i) for each i, anywhere; finish(layout)

The protocol is `capparallel`'s, with results that pickle instead of shared memory: part i > 0 starts
from a guessed record start g_i (`guess_pcap`; pcapng: `guess_pcapng`, a 4-aligned packet block whose
framing chains up), walks until the next record would start at or after its end b_i+1, and reports
where that was (`PartResult.end`). Assembly checks the parts in file order (`capparallel.Chain`): a
part whose start is not where the previous verified part ended is walked again from there, in the
assembling process (one part; a wrong guess is rare in ordinary captures, about half the parts of a
pcap carried over TCP). Every record counted or written was thus reached by one unbroken walk from
the file's beginning.

pcapng: packets are read in a *context* — the section's byte order, its interfaces' link types, snap
lengths and timestamp units — that its section header and interface blocks set. `plan` finds the
section headers (a regular-expression search of the mapping at GB/s for the block type, a palindrome,
and the byte-order magic; a few checks on each hit: a block ends there, its leading blocks read, the
blocks after them frame up) and gives each part the last one before it (`Part.section`); a header at
least half a part past the previous boundary starts a part. A part reads that header's leading blocks
(`CaptureFile.read_lead`: a few hundred bytes) for the context it starts in, guesses in it, and walks
through whatever blocks come: section and interface blocks are read in place (changing the context)
and, like statistics, name-resolution and custom blocks, written in place (a section header saying its
length is unknown); part 0 starts at the first packet block. Each result records the context it
started in (`PartResult.context`; none for a part starting at a section header, which depends on
none) and the one it ended in (`next_context`), and assembly accepts a part only if it started where
the previous verified part ended and in the context that part ended in — or in a context whose
interfaces are a prefix of that one's, if it met no section or interface block and no packet naming an
interface past them (`PartResult.carried`; such a walk reads alike): otherwise it is walked again from
there in that context. A file of concatenated sections (`cat a.pcapng b.pcapng`, rotated captures) is
thus walked in parallel all through, and one whose interfaces are described at their first packets
(scapy's writer) costs only the parts holding such a block or a packet of such an interface walked
again. Hints are only hints: bytes inside packets that look like a section header (a pcapng carried
over TCP) cost parts walked again, never a wrong byte. pcapng blocks are self-delimiting, but a guess
can still land on bytes that frame like blocks, hence the same check.

A filter part writes its accepted records (no header) and those blocks to a part file beside the
output (`part_path`). `settle` checks the parts, writes the output's header (pcap) or the blocks before
the first packet (pcapng, as `filter_file` writes them) and sets the output's size: each verified
part's place is the header plus the bytes of the parts before it. `place` copies one part's file into
its place (any process, any order, at once), `finish` removes the part files (`assemble_filter`: the
three in turn). A part walked again, or a task run again after its worker died, truncates its part
file first, so nothing is written twice; placing again writes the same bytes to the same place, and
settling again the same header and size; a part placed after its file was removed is walked again.
A truncated or corrupt record raises `CaptureFileError` at its offset (`finish`) once everything
before it is written, as `filter_file` does.

Readers of parts (`to_dataframe`'s partitions) cannot trust a row before its part is verified, so
they read verified `spans`: `walk_part` on every part (no filter, no output: the native walk alone),
`spans` checks them in order as assembly does, and `read_span` reads one span's packets as
`capfile.read_batches` reads the whole file. Nothing here runs per packet in Python.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from . import capparallel
from .capfile import (
    DEFAULT_CHUNK,
    FileCounts,
    FileStats,
    PacketBatch,
    Tally,
    _classified,
    packet_batches,
    slot_classifiers,
)
from .capfilters import LinkTypeFilters
from .capformat import (
    BLOCK_MIN,
    BT_SHB,
    PCAP_HEADER_LEN,
    Block,
    CaptureFile,
    ChunkArrays,
    Interface,
    Records,
    Section,
    savefile_header,
)
from .capwriter import Writer
from .errors import CaptureFileError
from .walkers import Status

if TYPE_CHECKING:
    from .capfilters import FilterSpec

__all__ = ["DEFAULT_PART_BYTES", "ContextKey", "Layout", "Part", "PartResult", "Span", "assemble_count",
           "assemble_filter", "count_part", "filter_part", "finish", "part_path", "place", "plan", "read_span",
           "settle", "spans", "verify", "walk_part"]  # fmt: skip

DEFAULT_PART_BYTES = 64 << 20  # capparallel's largest range: a task of ~0.1-0.3 s, a part file in the page cache

# pcapng: the context packet blocks are read in, as it pickles: a section's byte order and interfaces
# (equal keys read every packet block alike, whatever the slots each process numbers them with)
ContextKey = tuple[str, tuple[Interface, ...]]

# A section header block: its type (a palindrome), any length, the byte-order magic in either order
_SCAN_WINDOW = 4 << 20  # bytes per read of the section-header search
_SHB_CHAIN = 64  # blocks after a section's lead that must frame up (or reach the file's end) for a hint


class Part(NamedTuple):
    """Bytes [lo, hi) of capture file `path`, part `number` of its plan (part 0 starts at the
    first record: after the pcap file header, or at the first pcapng packet block). pcapng: `section`,
    the offset of the section header whose leading blocks give the context the part is walked in
    (`plan`'s hint: the last one at or before `lo`; a part starting at one starts there)."""

    path: str
    number: int
    lo: int
    hi: int
    section: int = 0


class PartResult(NamedTuple):
    """One walk of a part: where it started (None: no plausible record start in the part) and where
    it stopped (`end`: the next record's start, at or after `part.hi`; the bad spot), the walker's
    `Status` there (STOP: the part's end; END: the file's end), records read; per filter, records
    accepted and (count parts) their wire bytes, or (filter parts) the bytes written to the part file;
    the `CaptureFileError` that ended the walk, if one did; and (pcapng) the context it started in
    (None: at a section header, which depends on none), the one it ended in, and whether it met no
    section or interface block (`carried`: then a walk in a context whose interfaces are a prefix of
    the true one's read the same, unless a packet named an interface past them)."""

    part: Part
    start: int | None
    end: int | None
    status: int
    read: int
    accepted: tuple[int, ...]
    bytes: tuple[int, ...]
    error: CaptureFileError | None = None
    context: ContextKey | None = None
    next_context: ContextKey | None = None
    carried: bool = True  # pcapng: no section or interface block met (it ended in the context it started in)


class Span(NamedTuple):
    """A verified stretch of a file: `part` walked from `start`, a record start one unbroken walk from
    the file's beginning reaches, in `context` (pcapng: the context there; None: the part's own)."""

    part: Part
    start: int
    context: ContextKey | None = None


def plan(path: str | os.PathLike[str], part_bytes: int = DEFAULT_PART_BYTES) -> list[Part]:
    """The parts of a capture file, of about `part_bytes` each (one for a small file). pcapng: the
    section headers after the first packet are found here (`_sections`: a byte search, no walk); a
    part reads the blocks leading the last one before it, and one at least half a part past the
    previous boundary starts a part of its own (so that no guess has to find it)."""
    if part_bytes < 1:
        raise ValueError(f"part_bytes must be positive, not {part_bytes}")
    name = os.fspath(path)
    with CaptureFile(name) as capture:
        if capture.format == "pcap":
            bounds = capparallel.boundaries(PCAP_HEADER_LEN, capture.size, 1, part_bytes)
            return [Part(name, i, lo, hi) for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]
        first = capture.read_lead()[2]
        sections = [at for at in _sections(capture) if at > first]
        bounds = _bounds(first, capture.size, part_bytes, sections)
    heads = [0, *sections]
    return [Part(name, i, lo, hi, heads[bisect.bisect_right(heads, lo) - 1])
            for i, (lo, hi) in enumerate(itertools.pairwise(bounds))]  # fmt: skip


def _bounds(first: int, size: int, part_bytes: int, sections: list[int]) -> list[int]:
    """Part boundaries about `part_bytes` apart, each section header at least half a part past the
    previous boundary one of them."""
    heads, last = [], first
    for at in sections:
        if at - last >= part_bytes // 2:
            heads.append(at)
            last = at
    bounds: list[int] = []
    for lo, hi in itertools.pairwise([first, *heads, size]):
        bounds += capparallel.boundaries(lo, hi, 1, part_bytes)[:-1]
    return [*bounds, size]


def _sections(capture: CaptureFile) -> list[int]:
    """Where the plausible pcapng section headers are: the file read a window at a time (read, not
    touched through the mapping: no page faults in the planning process) and searched by numpy for the
    block type at 4-aligned offsets (every block is), at memory speed (~4-5 GB/s here); each hit checked."""
    import numpy as np

    window = bytearray(_SCAN_WINDOW)
    words = np.frombuffer(window, dtype=np.uint32)
    hits: list[int] = []
    with open(capture.path, "rb", buffering=0) as file:
        at = 0
        while n := file.readinto(window):
            found = np.flatnonzero(words[: n // 4] == BT_SHB)  # (a palindrome: either byte order)
            hits += (found * 4 + at).tolist()
            at += n
    del words
    return [hit for hit in hits if hit and _plausible(capture, hit)]


def _plausible(capture: CaptureFile, at: int) -> bool:
    """Whether the section header at `at` is likely one, not bytes inside a packet: a block ends
    there, its leading blocks read (`read_lead`) and the blocks after them frame up. A hint only: a
    wrong one costs parts walked again (`verify`), never a wrong result."""
    if not _ends_block(capture, at):
        return False
    try:
        _, section, end = capture.read_lead(at)
    except (CaptureFileError, struct.error):  # (struct.error: a block header cut by the file's end)
        return False
    return section is not None and capparallel.frames_up(capture, end, section.order, _SHB_CHAIN)


def _ends_block(capture: CaptureFile, at: int) -> bool:
    """Whether a block ends at `at`: the length before it repeated at its start (in either byte order)."""
    for order in "<>":
        length = struct.unpack_from(order + "I", capture.map, at - 4)[0]
        if BLOCK_MIN <= length <= at and length % 4 == 0 and _word(capture, order, at - length + 4) == length:
            return True
    return False


def _word(capture: CaptureFile, order: str, at: int) -> int:
    return int(struct.unpack_from(order + "I", capture.map, at)[0])


def part_path(dst: str | os.PathLike[str], index: int) -> str:
    """Where part `index` of output `dst` keeps its records until assembly (hidden, beside `dst`)."""
    head, tail = os.path.split(os.fspath(dst))
    return os.path.join(head, f".{tail}.part{index:05d}")


# -- walking one part --------------------------------------------------------------------------------------
class _Opened(NamedTuple):
    capture: CaptureFile
    section: Section | None  # pcapng: the context the part's section header's lead blocks leave
    lead: list[Block]  # pcapng: those blocks (the file's: what an output starts with)


@contextlib.contextmanager
def _open(part: Part) -> Iterator[_Opened]:
    with CaptureFile(part.path) as capture:
        if capture.format == "pcap":
            yield _Opened(capture, None, [])
        else:
            lead, section, _ = capture.read_lead(part.section)
            yield _Opened(capture, section, lead)


def _key(section: Section | None) -> ContextKey | None:
    return None if section is None else (section.order, tuple(section.interfaces))


def _section(capture: CaptureFile, key: ContextKey) -> Section:
    """The section of context `key` in this process's `capture` (each interface's slot numbered here,
    as `_pcapng_block` numbers it: the filters compile for new slots when asked for a walker)."""
    order, interfaces = key
    section = Section(order)
    for interface in interfaces:
        linktype, snaplen = interface.linktype, interface.snaplen
        section.add(interface, capture.slot_of(linktype, savefile_header(linktype, snaplen, order)))
    return section


def _start(opened: _Opened, part: Part, start: int | None,
           context: ContextKey | None) -> tuple[int | None, Section | None, ContextKey | None]:  # fmt: skip
    """Where a walk of `part` starts, the section it walks in and that context's key: `start` if given
    (a verified offset) in `context` (default: the part's section's), part 0's first record, the
    section header the part starts at (key None: it depends on no context), else a guess
    (`capparallel.guess_pcap` / `guess_pcapng`), None if the part has no plausible one."""
    capture = opened.capture
    section = opened.section if context is None else _section(capture, context)
    if start is not None or part.number == 0:
        return part.lo if start is None else start, section, _key(section)
    if section is None:
        return capparallel.guess_pcap(capture, part.lo, part.hi), None, None
    if part.lo == part.section:
        return part.lo, section, None
    guess = capparallel.guess_pcapng(capture, part.lo, part.hi, section.order, len(section.interfaces))
    return guess, section, _key(section)


class _Walked(NamedTuple):
    end: int | None
    status: int
    read: int
    error: CaptureFileError | None
    context: ContextKey | None  # pcapng: the context where it stopped
    carried: bool  # no section or interface block met


def _walk(capture: CaptureFile, part: Part, start: int | None, section: Section | None, filters: LinkTypeFilters,
          chunk: int, records: Callable[[Records], None], block: Callable[[Block], None]) -> _Walked:  # fmt: skip
    """Walk `part` from `start` in `section` to its end, handing each chunk and block on."""
    if start is None:
        return _Walked(None, Status.STOP, 0, None, None, True)
    arrays = ChunkArrays(chunk)
    read = 0
    current: list[Section | None] = [section]
    met: list[int] = []
    events = _events(capture, filters, arrays, start, current, part.hi, met)
    try:
        for event in events:
            if isinstance(event, Block):
                block(event)
            else:
                read += event.n
                records(event)
    except CaptureFileError as error:  # decided by `verify`: a walk from a wrong guess may fail anywhere
        status = arrays.chunk.status
        return _Walked(error.offset, status if status in _ERRORS else Status.BAD_BLOCK, read, error, None, False)
    return _Walked(int(arrays.chunk.end), int(arrays.chunk.status), read, None, _key(current[0]), not met)


_ERRORS = (Status.TRUNCATED, Status.BAD_CAPLEN, Status.BAD_BLOCK, Status.BAD_INTERFACE)


def _events(capture: CaptureFile, filters: LinkTypeFilters, arrays: ChunkArrays, start: int,
            current: list[Section | None], stop: int, met: list[int]) -> Iterator[Records | Block]:  # fmt: skip
    """`capture.events` from `start` up to `stop`, reading the section and interface blocks on the way
    here (as `events` reads them), so that `current[0]` is the section the walk is in when it stops
    (and `met` lists where those blocks were)."""
    pos = start
    while True:
        yield from capture.events(filters, lambda: arrays, pos, current[0], stop, context_stop=True)
        if arrays.chunk.status != Status.OTHER_BLOCK:
            return
        block, current[0] = capture._pcapng_block(int(arrays.chunk.end), current[0])
        met.append(block.start)
        yield block
        pos = block.end


def filter_part(part: Part, dst: str | os.PathLike[str], filter: FilterSpec = None, *, start: int | None = None,
                context: ContextKey | None = None, linktype: int | str | None = None,
                chunk: int = DEFAULT_CHUNK) -> PartResult:  # fmt: skip
    """Walk `part` from `start` (default: its guessed first record) in `context` (default: its
    section's) to its end, writing the records `filter` accepts, and the pcapng blocks met on the
    way (a section header saying its length is unknown), to `part_path(dst, part.number)` (an old
    one is removed first)."""
    out = part_path(dst, part.number)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(out)  # a redo, or the retry of a task whose worker died: from scratch
    with _open(part) as opened:
        capture = opened.capture
        first, section, context = _start(opened, part, start, context)
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
            walked = _walk(capture, part, first, section, filters, chunk, records, block)
            writer.finish()  # blocks with no record after them are the output's too
        finally:
            writer.close()
            view.release()
        return PartResult(part, first, walked.end, walked.status, walked.read, (accepted,), (writer.written,),
                          walked.error, context, walked.context, walked.carried)  # fmt: skip


def count_part(part: Part, filters: Sequence[FilterSpec], *, start: int | None = None,
               context: ContextKey | None = None, linktype: int | str | None = None,
               chunk: int = DEFAULT_CHUNK) -> PartResult:  # fmt: skip
    """Walk `part` as `filter_part` does, counting the packets and wire bytes each filter accepts (one
    classifier per link type, once per packet)."""
    import numpy as np

    with _open(part) as opened:
        capture = opened.capture
        first, section, context = _start(opened, part, start, context)
        classifier = slot_classifiers(capture, filters, linktype)
        keep_all = LinkTypeFilters(None, capture, linktype)
        data = [np.frombuffer(capture.map, dtype=np.uint8)]  # dropped before the file closes
        tally = Tally(len(filters), chunk)

        def records(event: Records) -> None:
            tally.add(*_classified(event, data[0], classifier, len(filters))[1:])

        walked = _walk(capture, part, first, section, keep_all, chunk, records, lambda _: None)
        data.clear()
        return PartResult(part, first, walked.end, walked.status, walked.read, *tally.totals(), walked.error,
                          context, walked.context, walked.carried)  # fmt: skip


def walk_part(part: Part, *, start: int | None = None, context: ContextKey | None = None,
              chunk: int = DEFAULT_CHUNK) -> PartResult:  # fmt: skip
    """Walk `part` as `filter_part` does, only to learn where it ends (`spans`, for readers of parts)."""
    with _open(part) as opened:
        first, section, context = _start(opened, part, start, context)
        keep_all = LinkTypeFilters(None, opened.capture)
        walked = _walk(opened.capture, part, first, section, keep_all, chunk, lambda _: None, lambda _: None)
        return PartResult(part, first, walked.end, walked.status, walked.read, (), (), walked.error, context,
                          walked.context, walked.carried)  # fmt: skip


# -- verifying the parts in file order ---------------------------------------------------------------------
Redo = Callable[[Part, int, ContextKey | None], PartResult]


def verify(results: Sequence[PartResult], redo: Redo) -> tuple[list[PartResult], int]:
    """The parts' walks in file order, each checked to start where the previous one ended and (pcapng)
    in the context it ended in, or walked again from there in that context (`redo(part, offset,
    context)`), up to the part that reached the end of the file or a bad record; and how many parts
    were walked again."""
    ordered = sorted(results, key=lambda result: result.part.number)
    if [r.part.number for r in ordered] != list(range(len(ordered))) or not ordered:
        raise ValueError(f"the results are not one of each part: {[r.part.number for r in ordered]}")
    chain = capparallel.Chain(ordered[0].part.lo)
    context = _lead_context(ordered[0].part.path)  # (not part 0's: its hint is checked as the others are)
    verified: list[PartResult] = []
    for result in ordered:
        part = result.part
        if result.context is not None and result.context != context:
            if _reads_alike(result, context):
                result = result._replace(context=context, next_context=context)
            else:  # read in another context: walked again, as after a wrong guess
                result = result._replace(start=None)
        checked = chain.verify(result, part.hi, lambda at, part=part, context=context: redo(part, at, context))  # type: ignore[misc]
        verified.append(checked)
        if checked.status != Status.STOP:  # the end of the file, a bad record: nothing after counts
            break
        assert checked.end is not None
        chain.position, context = checked.end, checked.next_context
    return verified, chain.redone


def _reads_alike(result: PartResult, context: ContextKey | None) -> bool:
    """Whether `result`, walked in another context than `context`, read what a walk in `context` reads:
    its interfaces a prefix of `context`'s (a part's hint lacks the interfaces described after the
    section's lead: a writer such as scapy describes each at its first packet), no packet naming one
    past them, no section or interface block met (whose interface numbers would follow the hint's)."""
    if context is None or result.context is None or not result.carried or result.status == Status.BAD_INTERFACE:
        return False
    (order, interfaces), (hint_order, hint_interfaces) = context, result.context
    return order == hint_order and interfaces[: len(hint_interfaces)] == hint_interfaces


def _lead_context(path: str) -> ContextKey | None:
    """The context a file's first packet is read in (pcapng; None: pcap)."""
    with _open(Part(path, 0, 0, 0)) as opened:
        return _key(opened.section)


def spans(results: Sequence[PartResult], *, chunk: int = DEFAULT_CHUNK) -> list[Span]:
    """The verified stretches of a file from `walk_part` results (parts walked again as `verify` says)."""

    def redo(part: Part, at: int, context: ContextKey | None) -> PartResult:
        return walk_part(part, start=at, context=context, chunk=chunk)

    verified, _ = verify(results, redo)
    return [Span(r.part, r.start, r.context) for r in verified if r.start is not None]


def read_span(span: Span, filter: FilterSpec = None, *, linktype: int | str | None = None,
              chunk: int = DEFAULT_CHUNK) -> Iterator[PacketBatch]:  # fmt: skip
    """The accepted packets of a verified span as `capfile.read_batches` yields them (a `CaptureFileError`
    at a bad record, after the packets before it)."""
    with _open(span.part) as opened:
        capture = opened.capture
        _, section, _ = _start(opened, span.part, span.start, span.context)
        filters = LinkTypeFilters(filter, capture, linktype)
        arrays = ChunkArrays(chunk)
        events = capture.events(filters, lambda: arrays, span.start, section, span.part.hi)
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


class Layout(NamedTuple):
    """A filtered file settled (`settle`): its verified part walks in file order (walked again where
    needed), where each one's records go in `dst` (`offsets`, after the header `settle` wrote), the
    `FileStats` and error `filter_file` gives, and what `place` needs to walk a part again."""

    dst: str
    parts: tuple[PartResult, ...]
    offsets: tuple[int, ...]
    stats: FileStats
    error: CaptureFileError | None
    planned: int  # parts planned: the part files `finish` removes
    filter: FilterSpec
    linktype: int | str | None
    chunk: int


def settle(results: Sequence[PartResult], dst: str | os.PathLike[str], filter: FilterSpec = None, *,
           linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK) -> Layout:  # fmt: skip
    """Check the parts' walks as `verify` does (walking a part again here where needed) and lay `dst`
    out: its header written, its size set, each verified part's place in it known, so that `place`
    can copy the parts in (anywhere, in any order, at once) and `finish` end it. No file if the walk
    failed before a record was accepted, as `filter_file` does. Settling again writes the same
    header and size over a file that may hold placed parts already: it leaves them be."""
    name = os.fspath(dst)

    def redo(part: Part, at: int, context: ContextKey | None) -> PartResult:
        return filter_part(part, name, filter, start=at, context=context, linktype=linktype, chunk=chunk)

    verified, _ = verify(results, redo)
    error = verified[-1].error
    read, accepted = sum(r.read for r in verified), sum(r.accepted[0] for r in verified)
    offsets, written = [], 0
    if error is None or accepted:
        header = _header(verified[0].part.path)
        written = len(header)
        for result in verified:
            offsets.append(written)
            written += result.bytes[0]
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)  # (no O_TRUNC)
        try:
            os.pwrite(fd, header, 0)
            os.ftruncate(fd, written)
        finally:
            os.close(fd)
    return Layout(name, tuple(verified), tuple(offsets), FileStats(read, accepted, written), error, len(results),
                  filter, linktype, chunk)  # fmt: skip


def place(layout: Layout, index: int) -> int:
    """Copy verified part `index`'s records into its place in `layout.dst` (in the kernel); the bytes
    copied (0 for a part with none, or past the verified ones). Run again, it copies the same bytes to
    the same place; a part file already removed is walked again first."""
    if index >= len(layout.offsets) or not layout.parts[index].bytes[0]:
        return 0
    result = layout.parts[index]
    piece_path = part_path(layout.dst, result.part.number)
    if not os.path.exists(piece_path):  # (a task run again after `finish`, or its worker, went)
        assert result.start is not None
        filter_part(result.part, layout.dst, layout.filter, start=result.start, context=result.context,
                    linktype=layout.linktype, chunk=layout.chunk)  # fmt: skip
    with open(piece_path, "rb") as piece, open(layout.dst, "r+b") as out:
        out.seek(layout.offsets[index])
        return _copy(piece, out)


def finish(layout: Layout) -> FileStats:
    """Remove the part files; the `FileStats`, or the `CaptureFileError` at the bad record (raised once
    the records before it are in place)."""
    for number in range(layout.planned):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(part_path(layout.dst, number))
    if layout.error is not None:
        raise layout.error
    return layout.stats


def assemble_filter(results: Sequence[PartResult], dst: str | os.PathLike[str], filter: FilterSpec = None, *,
                    linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK) -> FileStats:  # fmt: skip
    """Write `dst` from the parts' files here, one after the other (`settle`, `place` each, `finish`):
    the bytes `filter_file(path, dst, filter)` writes, and its `FileStats`. A bad record raises its
    `CaptureFileError` after the records before it are written (no file if none was accepted)."""
    layout = None
    try:
        layout = settle(results, dst, filter, linktype=linktype, chunk=chunk)
        for index in range(len(layout.offsets)):
            place(layout, index)
    finally:
        if layout is None:  # (settling failed: the part files go all the same)
            for number in range(len(results)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part_path(dst, number))
    return finish(layout)


def _copy(src: Any, dst: Any) -> int:
    """Copy file `src` to the end of `dst` in the kernel: copy_file_range (which shares the blocks on a
    file system that can, XFS or Btrfs, and copies on the server over NFS 4.2), else sendfile."""
    size = os.fstat(src.fileno()).st_size
    dst.flush()
    done = 0
    copy = getattr(os, "copy_file_range", None)
    while done < size:
        try:
            sent = copy(src.fileno(), dst.fileno(), size - done, done) if copy else None
        except OSError:  # (EXDEV, ENOSYS, EINVAL: file systems or kernels that cannot)
            sent = copy = None
        if sent is None:
            sent = os.sendfile(dst.fileno(), src.fileno(), done, size - done)
        if sent == 0:
            break
        done += sent
    return done


def assemble_count(results: Sequence[PartResult], filters: Sequence[FilterSpec], *,
                   linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK,
                   errors: str = "raise") -> FileCounts:  # fmt: skip
    """The parts' counts, checked and redone as `verify` does: what `count_file` counts."""

    def redo(part: Part, at: int, context: ContextKey | None) -> PartResult:
        return count_part(part, filters, start=at, context=context, linktype=linktype, chunk=chunk)

    verified, _ = verify(results, redo)
    error = verified[-1].error
    if error is not None and errors == "raise":
        raise error
    packets = [sum(r.accepted[i] for r in verified) for i in range(len(filters))]
    nbytes = [sum(r.bytes[i] for r in verified) for i in range(len(filters))]
    return FileCounts(sum(r.read for r in verified), tuple(packets), tuple(nbytes), error)
