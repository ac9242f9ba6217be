"""Capture collections on Dask: the same filters on every worker, scheduled by Dask (`pip install 'bpfjit[dask]'`).

    from distributed import Client
    from bpfjit import dask as bpfjit_dask

    client = Client("scheduler:8786")           # or none: Dask's local threads
    bpfjit_dask.filter_files("day/*.pcap*", "tcp port 80", "/shared/web")    # one output per input
    bpfjit_dask.count("s3://bucket/day/*.pcap.gz", {"web": "tcp port 80", "dns": "udp port 53"})

Paths are fsspec URLs or lists of them (local globs, `s3://...`, anything fsspec opens). Each input
is a task (or, for a classic pcap file larger than `part_bytes`, one task per byte-range part and
one that checks and assembles them: `capparts`); the functions build Dask's graph and call
`dask.compute`, so the active `distributed.Client` runs it, with its dashboard, retries and
rescheduling of the tasks of a worker that died. Tasks send expressions, not code: a worker compiles
each filter for each file it reads as `filter_file` does, through the disk code cache (a load after
the first compile on that machine).

bpfjit walks mapped files, so an input that is not a local uncompressed file (a `.gz`/`.bz2`/`.xz`/
`.zst` file, an object-store URL) is first copied, decompressed, to a temporary file on the worker
(Dask's `temporary-directory`, else the system's): for a gzip file that copy (zlib's ~300-500 MB/s per
core) costs more than filtering it; such a file is one task, never parts. Outputs go to `out_dir`, a
local or shared directory every worker writes: `out_dir/NAME` for an input named NAME(.gz), written
as `.NAME.partial` and renamed when complete, so a task run again (its worker died) never leaves a
half or doubled file; two inputs with the same name are refused.

Errors: with `errors="report"` (the default) a truncated or corrupt file fails only its own result
(`FileResult.error`, a `CaptureFileError` naming the file and byte offset; what precedes the bad spot
is written or counted, as `filter_file` does), with `errors="raise"` it fails the computation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

try:
    import dask
    import fsspec
    from fsspec.utils import infer_compression
except ImportError as error:  # pragma: no cover - the extra is installed in the test environment
    missing = f"bpfjit.dask needs Dask and fsspec ({error.name} is missing)"
    raise ImportError(f"{missing}: pip install 'bpfjit[dask]'") from error

from . import capfile, capparts
from .capfile import FileCounts, FileStats
from .capparts import DEFAULT_PART_BYTES, Part, PartResult
from .errors import CaptureFileError
from .program import Program

__all__ = ["CollectionCounts", "Counts", "FileResult", "Input", "SplitResult", "count", "filter_files", "inputs",
           "split_files"]  # fmt: skip

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
REDUCE_FANOUT = 32  # per-file counts summed 32 at a time on the cluster


class Input(NamedTuple):
    """One capture file of a collection: its URL, its local path when it can be mapped in place, its
    compression (fsspec's name, None), its size in bytes (compressed) and the name its outputs get."""

    url: str
    local: str | None
    compression: str | None
    size: int
    name: str


class FileResult(NamedTuple):
    """What `filter_files` did with one input: the output's path (None: not written, as `filter_file`
    writes nothing when a file fails before its first record), its stats, or the error that ended it."""

    url: str
    output: str | None
    stats: FileStats | None
    error: CaptureFileError | None


class SplitResult(NamedTuple):
    """What `split_files` did with one input: per filter name, the output path and stats."""

    url: str
    outputs: dict[str, str]
    stats: dict[str, FileStats] | None
    error: CaptureFileError | None


class Counts(NamedTuple):
    """Packets a filter accepted across a collection, and their bytes on the wire."""

    packets: int
    bytes: int


class CollectionCounts(NamedTuple):
    """`count`'s result: files counted, packet records read, per filter name its `Counts`, and the
    errors of the files that ended early (their records before the bad spot are counted)."""

    files: int
    read: int
    counts: dict[str, Counts]
    errors: list[CaptureFileError]


# -- inputs ----------------------------------------------------------------------------------------------
def inputs(paths: Paths) -> list[Input]:
    """The capture files `paths` names (URLs, globs expanded), in order."""
    urls = [os.fspath(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    found: list[Input] = []
    for url in urls:
        fs, _, expanded = fsspec.core.get_fs_token_paths(url, mode="rb")
        if not expanded:
            raise FileNotFoundError(f"no capture file matches {url}")
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        for path in expanded:
            compression = infer_compression(path)
            name = os.path.basename(path)
            if compression is not None:
                name = os.path.splitext(name)[0]
            mapped = path if local and compression is None else None
            found.append(Input(fs.unstrip_protocol(path), mapped, compression, fs.size(path), name))
    return found


@contextlib.contextmanager
def _local_copy(source: Input) -> Iterator[str]:
    """A local, uncompressed path of `source`: its own, or a temporary decompressed copy."""
    if source.local is not None:
        yield source.local
        return
    directory = dask.config.get("temporary-directory", None) or tempfile.gettempdir()
    with tempfile.NamedTemporaryFile(dir=directory, prefix="bpfjit-", suffix=".pcap") as copy:
        with fsspec.open(source.url, "rb", compression=source.compression) as stream:
            shutil.copyfileobj(stream, copy, 1 << 20)
        copy.flush()
        yield copy.name


def _named(error: CaptureFileError, source: Input) -> CaptureFileError:
    """The error with the input's URL, not a temporary copy's path (offsets count decompressed bytes)."""
    where = source.url if source.compression is None else f"{source.url} (decompressed)"
    return CaptureFileError(error.offset, error.reason, where)


def _check_errors(errors: str) -> None:
    if errors not in ("raise", "report"):
        raise ValueError(f"errors must be 'raise' or 'report', not {errors!r}")


def _outputs(sources: Sequence[Input], out_dir: str | os.PathLike[str]) -> list[str]:
    names = [source.name for source in sources]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"inputs with the same name would write the same output: {twice}")
    return [os.path.join(os.fspath(out_dir), name) for name in names]


def _partial(output: str) -> str:
    head, tail = os.path.split(output)
    return os.path.join(head, f".{tail}.partial")


def _publish(partial: str, output: str) -> str | None:
    """Rename a complete output into place; None if the run wrote no file."""
    if not os.path.exists(partial):
        return None
    os.replace(partial, output)
    return output


def _plan(source: Input, part_bytes: int) -> list[Part] | None:
    """The parts of a local classic pcap file larger than `part_bytes`, else None (one task)."""
    if source.local is None or source.size <= part_bytes:
        return None
    try:
        parts = capparts.plan(source.local, part_bytes)
    except CaptureFileError:
        return None  # its own task reports it
    return parts if len(parts) > 1 else None


def _key(kind: str) -> str:
    return f"bpfjit-{kind}-{uuid.uuid4().hex}"


def _compute(tasks: list[Any], retries: int) -> list[Any]:
    return list(dask.compute(*tasks, retries=retries)) if tasks else []


# -- filter_files ------------------------------------------------------------------------------------------
def filter_files(paths: Paths, filter: capfile.FilterSpec, out_dir: str | os.PathLike[str], *,
                 linktype: int | str | None = None, part_bytes: int = DEFAULT_PART_BYTES, errors: str = "report",
                 retries: int = 1) -> list[FileResult]:  # fmt: skip
    """`filter_file` on every input of `paths`, on the cluster: `out_dir/NAME` per input, byte-identical
    to what `filter_file` (and `bpfjit filter -r IN -w OUT`) writes; per input, its `FileResult`."""
    _check_errors(errors)
    sources = inputs(paths)
    os.makedirs(out_dir, exist_ok=True)
    tasks = []
    for source, output in zip(sources, _outputs(sources, out_dir), strict=True):
        parts = _plan(source, part_bytes)
        if parts is None:
            tasks.append(dask.delayed(_filter_whole)(source, filter, output, linktype, errors,
                                                     dask_key_name=_key("filter")))  # fmt: skip
            continue
        walked = [dask.delayed(capparts.filter_part)(part, _partial(output), filter, linktype=linktype,
                                                     dask_key_name=_key("part")) for part in parts]  # fmt: skip
        tasks.append(dask.delayed(_filter_assemble)(source, walked, filter, output, linktype, errors,
                                                    dask_key_name=_key("assemble")))  # fmt: skip
    return _compute(tasks, retries)


def _filter_whole(source: Input, filter: capfile.FilterSpec, output: str, linktype: int | str | None,
                  errors: str) -> FileResult:  # fmt: skip
    partial = _partial(output)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # a dead worker's half
    try:
        with _local_copy(source) as path:
            stats = capfile.filter_file(path, partial, filter, linktype=linktype, workers=1)
    except CaptureFileError as error:
        named = _named(error, source)
        written = _publish(partial, output)
        if errors == "raise":
            raise named from None
        return FileResult(source.url, written, None, named)
    return FileResult(source.url, _publish(partial, output), stats, None)


def _filter_assemble(source: Input, walked: list[PartResult], filter: capfile.FilterSpec, output: str,
                     linktype: int | str | None, errors: str) -> FileResult:  # fmt: skip
    partial = _partial(output)
    try:
        stats = capparts.assemble_filter(walked, partial, filter, linktype=linktype)
    except CaptureFileError as error:
        named = _named(error, source)
        written = _publish(partial, output)
        if errors == "raise":
            raise named from None
        return FileResult(source.url, written, None, named)
    return FileResult(source.url, _publish(partial, output), stats, None)


# -- split_files ---------------------------------------------------------------------------------------------
def split_files(paths: Paths, filters: Mapping[str, str | Program], out_dir: str | os.PathLike[str], *,
                linktype: int | str | None = None, errors: str = "report",
                retries: int = 1) -> list[SplitResult]:  # fmt: skip
    """`split_file` on every input: `out_dir/FILTER_NAME/NAME` per filter and input, as `split_file`
    writes them in one classifier pass per input (one task per input)."""
    _check_errors(errors)
    if not filters:
        raise ValueError("split_files needs at least one filter")
    sources = inputs(paths)
    names = list(filters)
    for name in names:
        os.makedirs(os.path.join(os.fspath(out_dir), name), exist_ok=True)
    outputs = _outputs(sources, out_dir)  # checks the names
    tasks = [dask.delayed(_split_one)(source, filters, [os.path.join(os.path.dirname(output), name, source.name)
                                                        for name in names], linktype, errors,
                                      dask_key_name=_key("split"))
             for source, output in zip(sources, outputs, strict=True)]  # fmt: skip
    return _compute(tasks, retries)


def _split_one(source: Input, filters: Mapping[str, str | Program], outputs: list[str],
               linktype: int | str | None, errors: str) -> SplitResult:  # fmt: skip
    partials = [_partial(output) for output in outputs]
    for partial in partials:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    names = list(filters)
    try:
        with _local_copy(source) as path:
            stats = capfile.split_file(path, partials, list(filters.values()), linktype=linktype, workers=1)
    except CaptureFileError as error:
        named = _named(error, source)
        written = {name: out for name, partial, out in zip(names, partials, outputs, strict=True)
                   if _publish(partial, out) is not None}  # fmt: skip
        if errors == "raise":
            raise named from None
        return SplitResult(source.url, written, None, named)
    for partial, output in zip(partials, outputs, strict=True):
        _publish(partial, output)
    return SplitResult(source.url, dict(zip(names, outputs, strict=True)), dict(zip(names, stats, strict=True)), None)


# -- count ---------------------------------------------------------------------------------------------------
def count(paths: Paths, filters: Mapping[str, capfile.FilterSpec], *, linktype: int | str | None = None,
          part_bytes: int = DEFAULT_PART_BYTES, errors: str = "report",
          retries: int = 1) -> CollectionCounts:  # fmt: skip
    """Packets and wire bytes each filter accepts across the collection: per input (or part) one
    classifier pass (each packet once, whatever the number of filters), summed on the cluster."""
    _check_errors(errors)
    if not filters:
        raise ValueError("count needs at least one filter")
    specs = list(filters.values())
    per_file = []
    for source in inputs(paths):
        parts = _plan(source, part_bytes)
        if parts is None:
            per_file.append(dask.delayed(_count_whole)(source, specs, linktype, errors, dask_key_name=_key("count")))
            continue
        walked = [dask.delayed(capparts.count_part)(part, specs, linktype=linktype, dask_key_name=_key("part"))
                  for part in parts]  # fmt: skip
        per_file.append(dask.delayed(_count_assemble)(source, walked, specs, linktype, errors,
                                                      dask_key_name=_key("assemble")))  # fmt: skip
    while len(per_file) > 1:  # a tree of sums: no task holds thousands of inputs
        per_file = [dask.delayed(_sum)(per_file[i : i + REDUCE_FANOUT], len(specs), dask_key_name=_key("sum"))
                    for i in range(0, len(per_file), REDUCE_FANOUT)]  # fmt: skip
    if not per_file:
        return CollectionCounts(0, 0, {name: Counts(0, 0) for name in filters}, [])
    (total,) = _compute([dask.delayed(_sum)(per_file, len(specs), dask_key_name=_key("sum"))], retries)
    files, read, packets, nbytes, failures = total
    counts = {name: Counts(p, b) for name, p, b in zip(filters, packets, nbytes, strict=True)}
    return CollectionCounts(files, read, counts, failures)


# A partial sum: files, read, packets per filter, bytes per filter, errors.
Total = tuple[int, int, list[int], list[int], list[CaptureFileError]]


def _as_total(counted: FileCounts) -> Total:
    return 1, counted.read, list(counted.packets), list(counted.bytes), [] if counted.error is None else [counted.error]


def _sum(items: list[FileCounts | Total], filters: int) -> Total:
    files, read, packets, nbytes, failures = 0, 0, [0] * filters, [0] * filters, []
    for item in items:
        total = _as_total(item) if isinstance(item, FileCounts) else item
        files, read = files + total[0], read + total[1]
        packets = [a + b for a, b in zip(packets, total[2], strict=True)]
        nbytes = [a + b for a, b in zip(nbytes, total[3], strict=True)]
        failures += total[4]
    return files, read, packets, nbytes, failures


def _count_whole(source: Input, specs: list[capfile.FilterSpec], linktype: int | str | None, errors: str) -> FileCounts:
    try:
        with _local_copy(source) as path:
            counted = capfile.count_file(path, specs, linktype=linktype, errors=errors)
    except CaptureFileError as error:  # errors="raise", or a file that fails at its header
        if errors == "raise":
            raise _named(error, source) from None
        zeros = (0,) * len(specs)
        return FileCounts(0, zeros, zeros, _named(error, source))
    return counted if counted.error is None else counted._replace(error=_named(counted.error, source))


def _count_assemble(source: Input, walked: list[PartResult], specs: list[capfile.FilterSpec],
                    linktype: int | str | None, errors: str) -> FileCounts:  # fmt: skip
    try:
        counted = capparts.assemble_count(walked, specs, linktype=linktype, errors=errors)
    except CaptureFileError as error:
        raise _named(error, source) from None
    return counted if counted.error is None else counted._replace(error=_named(counted.error, source))
