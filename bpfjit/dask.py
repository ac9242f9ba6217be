"""Capture collections on Dask: the same filters on every worker, scheduled by Dask (`pip install 'bpfjit[dask]'`).

    from distributed import Client
    from bpfjit import dask as bpfjit_dask

    client = Client("scheduler:8786")           # or none: Dask's local threads
    bpfjit_dask.filter_files("day/*.pcap*", "tcp port 80", "/shared/web")    # one output per input
    bpfjit_dask.count("s3://bucket/day/*.pcap.gz", {"web": "tcp port 80", "dns": "udp port 53"})
    bpfjit_dask.count("day/*.pcap", {"web": "tcp port 80"}, bucket=60)     # also per minute
    df = bpfjit_dask.to_dataframe("day/*.pcap", "ip", fields=["time", "wirelen", "src", "dport"])

Paths are fsspec URLs or lists of them (local globs, `s3://...`, anything fsspec opens). Each input
is a task (or, for a local uncompressed pcap or pcapng file larger than the part size, one task per
byte-range part, one that checks them and lays the output out, one per part that copies its records
into place, and one that ends the file: `capparts`. The part size, `part_bytes`, is by default the
one that gives each thread of the cluster about 4 tasks, at least 64 MiB: a collection of many files
is not cut at all, one large file is cut for every thread); the functions build Dask's graph and call
`dask.compute`, so the active `distributed.Client` runs it, with its dashboard, retries and
rescheduling of the tasks of a worker that died. Tasks send expressions, not code: a worker compiles
each filter for each file it reads as `filter_file` does, through the disk code cache (a
load after the first compile on that machine).

A local uncompressed file is mapped in place; any other input (a `.gz`/`.bz2`/`.xz`/`.zst` file, an
object-store URL) is streamed: fsspec's decompressor is read chunk by chunk into a window the walkers
walk (`capfile.Stream`), a record cut by the window's end carried over, no temporary file. Such a
file is one task, never parts (its decompression, one core at zlib's few hundred MB/s, bounds it).

Outputs go to `out_dir`, a local or shared directory every worker writes: `out_dir/NAME` for an
input named NAME(.gz), written as `.NAME.partial` and renamed when complete, so a task run again (its
worker died) never leaves a half or doubled file; two inputs with the same name are refused.

Errors: with `errors="report"` (the default) a truncated or corrupt file fails only its own result
(`FileResult.error`, a `CaptureFileError` naming the file and byte offset; what precedes the bad spot
is written or counted, as `filter_file` does), with `errors="raise"` it fails the computation.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

try:
    import dask
    import fsspec
    from fsspec.utils import infer_compression
except ImportError as error:  # pragma: no cover - the extra is installed in the test environment
    missing = f"bpfjit.dask needs Dask and fsspec ({error.name} is missing)"
    raise ImportError(f"{missing}: pip install 'bpfjit[dask]'") from error

from . import capfile, capparts
from .batch import Batch
from .capfile import FileCounts, FileStats
from .capparts import DEFAULT_PART_BYTES, Part, PartResult, Span
from .errors import CaptureFileError
from .filter import Filter
from .libpcap import dlt_from_linktype, linktype_value
from .program import Program

__all__ = ["CollectionCounts", "Counts", "FileResult", "Input", "Piece", "SplitResult", "count", "decode",
           "filter_files", "inputs", "split_files", "to_dataframe"]  # fmt: skip

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
REDUCE_FANOUT = 32  # per-file counts summed 32 at a time on the cluster
TASKS_PER_THREAD = 4  # the automatic part size's aim (`_part_bytes`): enough tasks to balance the threads


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
    """`count`'s result: files counted, packet records read, per filter name its `Counts`, the
    errors of the files that ended early (their records before the bad spot are counted), and with
    `bucket=` per filter its non-empty time buckets (start, seconds since the epoch) in time order."""

    files: int
    read: int
    counts: dict[str, Counts]
    errors: list[CaptureFileError]
    buckets: dict[str, dict[float, Counts]] | None = None  # count(bucket=): per filter, bucket start -> Counts


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
def _opened(source: Input) -> Iterator[str | capfile.Stream]:
    """What the capfile operations read for `source`: its local path (mapped in place), or a stream
    (decompressed, or fetched, as it is read: `capfile.Stream`, no temporary file)."""
    if source.local is not None:
        yield source.local
        return
    # read once, front to back: over HTTP a stream (block_size=0) needs no range requests, which
    # many servers do not answer (fsspec's random-access HTTP file refuses such a server)
    options = {"block_size": 0} if source.url.startswith(("http://", "https://")) else {}
    with fsspec.open(source.url, "rb", compression=source.compression, **options) as stream:
        yield capfile.Stream(stream, source.url)


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


def _part_bytes(sources: Sequence[Input], part_bytes: int | None) -> int:
    """`part_bytes`, or for None the part size that gives each thread of the cluster about
    `TASKS_PER_THREAD` tasks, and at least `DEFAULT_PART_BYTES`: no parts where the inputs alone keep
    the threads busy (a part costs its file another task to settle, and `filter_files` a copy of the
    part's output), and as many as balance a collection with a few large files."""
    if part_bytes is not None:
        return part_bytes
    mapped = sum(source.size for source in sources if source.local is not None)
    return max(DEFAULT_PART_BYTES, -(-mapped // (TASKS_PER_THREAD * _threads())))


def _threads() -> int:
    """The threads `dask.compute` will run on: the current `distributed.Client`'s, else this machine's
    CPUs (Dask's local threads)."""
    try:
        from distributed import Client

        return max(1, sum(Client.current().nthreads().values()))
    except (ImportError, ValueError):  # (ValueError: no client)
        return os.cpu_count() or 1


def _plan(source: Input, part_bytes: int) -> list[Part] | None:
    """The parts of a local pcap or pcapng file larger than `part_bytes`, else None (one task)."""
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
                 linktype: int | str | None = None, part_bytes: int | None = None, errors: str = "report",
                 retries: int = 1) -> list[FileResult]:  # fmt: skip
    """`filter_file` on every input of `paths`, on the cluster: `out_dir/NAME` per input, byte-identical
    to what `filter_file` (and `bpfjit filter -r IN -w OUT`) writes; per input, its `FileResult`."""
    _check_errors(errors)
    sources = inputs(paths)
    part_bytes = _part_bytes(sources, part_bytes)
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
        layout = dask.delayed(capparts.settle)(walked, _partial(output), filter, linktype=linktype,
                                               dask_key_name=_key("settle"))  # fmt: skip
        placed = [dask.delayed(capparts.place)(layout, index, dask_key_name=_key("place"))
                  for index in range(len(parts))]  # fmt: skip
        tasks.append(dask.delayed(_filter_finish)(source, layout, placed, output, errors,
                                                  dask_key_name=_key("finish")))  # fmt: skip
    return _compute(tasks, retries)


def _filter_whole(source: Input, filter: capfile.FilterSpec, output: str, linktype: int | str | None,
                  errors: str) -> FileResult:  # fmt: skip
    partial = _partial(output)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(partial)  # a dead worker's half

    def run() -> capfile.FileStats:
        with _opened(source) as path:
            return capfile.filter_file(path, partial, filter, linktype=linktype, workers=1)

    return _filter_result(source, partial, output, errors, run)


def _filter_finish(source: Input, layout: capparts.Layout, placed: list[int], output: str,
                   errors: str) -> FileResult:  # fmt: skip
    """A file in parts, once settled and every part placed (`placed`: their tasks, done)."""
    return _filter_result(source, layout.dst, output, errors, lambda: capparts.finish(layout))


def _filter_result(source: Input, partial: str, output: str, errors: str,
                   run: Callable[[], capfile.FileStats]) -> FileResult:  # fmt: skip
    """`run()` writing `partial`, published as `output` whether it succeeds or stops at a bad record
    (the records before it are written); the error reported or raised as `errors` says."""
    try:
        stats = run()
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
        with _opened(source) as path:
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
          part_bytes: int | None = None, errors: str = "report", bucket: float | None = None,
          retries: int = 1) -> CollectionCounts:  # fmt: skip
    """Packets and wire bytes each filter accepts across the collection: per input (or part) one
    classifier pass (each packet once, whatever the number of filters), summed on the cluster. With
    `bucket` (seconds), also per filter and per time bucket (`CollectionCounts.buckets`); each input is
    then one task (its timestamps come from `read_batches`, not from byte-range parts)."""
    _check_errors(errors)
    if not filters:
        raise ValueError("count needs at least one filter")
    if bucket is not None and not bucket > 0:
        raise ValueError(f"bucket must be a positive number of seconds, not {bucket!r}")
    specs = list(filters.values())
    sources = inputs(paths)
    part_bytes = _part_bytes(sources, part_bytes)
    per_file = []
    for source in sources:
        if bucket is not None:
            per_file.append(dask.delayed(_bucket_total)(source, specs, linktype, errors, bucket,
                                                        dask_key_name=_key("count")))  # fmt: skip
            continue
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
        empty: dict[str, dict[float, Counts]] | None = {name: {} for name in filters} if bucket is not None else None
        return CollectionCounts(0, 0, {name: Counts(0, 0) for name in filters}, [], empty)
    (total,) = _compute([dask.delayed(_sum)(per_file, len(specs), dask_key_name=_key("sum"))], retries)
    files, read, packets, nbytes, failures, buckets = total
    counts = {name: Counts(p, b) for name, p, b in zip(filters, packets, nbytes, strict=True)}
    if bucket is None:
        return CollectionCounts(files, read, counts, failures)
    ordered = sorted(buckets.items())
    per_bucket = {name: {float(key * bucket): Counts(row[i], row[len(specs) + i]) for key, row in ordered if row[i]}
                  for i, name in enumerate(filters)}  # fmt: skip
    return CollectionCounts(files, read, counts, failures, per_bucket)


# A partial sum: files, read, packets per filter, bytes per filter, errors, and per time bucket index
# (count with `bucket`) packets per filter then bytes per filter.
Total = tuple[int, int, list[int], list[int], list[CaptureFileError], dict[int, list[int]]]


def _as_total(counted: FileCounts) -> Total:
    errors = [] if counted.error is None else [counted.error]
    return 1, counted.read, list(counted.packets), list(counted.bytes), errors, {}


def _sum(items: list[FileCounts | Total], filters: int) -> Total:
    files, read, packets, nbytes, failures = 0, 0, [0] * filters, [0] * filters, []
    buckets: dict[int, list[int]] = {}
    for item in items:
        total = _as_total(item) if isinstance(item, FileCounts) else item
        files, read = files + total[0], read + total[1]
        packets = [a + b for a, b in zip(packets, total[2], strict=True)]
        nbytes = [a + b for a, b in zip(nbytes, total[3], strict=True)]
        failures += total[4]
        for key, row in total[5].items():
            old = buckets.get(key)
            buckets[key] = row if old is None else [a + b for a, b in zip(old, row, strict=True)]
    return files, read, packets, nbytes, failures, buckets


def _count_whole(source: Input, specs: list[capfile.FilterSpec], linktype: int | str | None, errors: str) -> FileCounts:
    try:
        with _opened(source) as path:
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


# -- count per time bucket ---------------------------------------------------------------------------------
def _bucket_total(source: Input, specs: list[capfile.FilterSpec], linktype: int | str | None, errors: str,
                  bucket: float) -> Total:  # fmt: skip
    """One file's `Total` and, per bucket index (floor(time / bucket)), packets then bytes per filter."""
    import numpy as np

    read, packets, nbytes = 0, np.zeros(len(specs), np.int64), np.zeros(len(specs), np.int64)
    buckets: dict[int, list[int]] = {}
    failures: list[CaptureFileError] = []
    classify = _Classifiers(specs, linktype)
    try:
        with _opened(source) as path:
            for packet_batch in capfile.read_batches(path, linktype=linktype):
                read += len(packet_batch.batch)
                verdicts = classify(packet_batch).astype(np.int64)
                weighted = verdicts * packet_batch.batch.wirelens.astype(np.int64)[:, None]
                packets += verdicts.sum(axis=0)
                nbytes += weighted.sum(axis=0)
                index = np.floor(packet_batch.timestamps / bucket).astype(np.int64)
                keys, where = np.unique(index, return_inverse=True)
                sums = np.zeros((len(keys), 2 * len(specs)), np.int64)
                np.add.at(sums, where, np.hstack([verdicts, weighted]))
                for key, row in zip(keys.tolist(), sums.tolist(), strict=True):
                    old = buckets.get(key)
                    buckets[key] = row if old is None else [a + b for a, b in zip(old, row, strict=True)]
    except CaptureFileError as error:
        if errors == "raise":
            raise _named(error, source) from None
        failures.append(_named(error, source))
    return 1, read, packets.tolist(), nbytes.tolist(), failures, buckets


class _Classifiers:
    """The filters as one classifier per link type (`compile_many`, compiled on first use): verdict bits
    of a `PacketBatch`, each packet once whatever the number of filters."""

    def __init__(self, specs: Sequence[capfile.FilterSpec], linktype: int | str | None):
        self.specs, self.linktype = list(specs), linktype
        self.made: dict[int | str, Any] = {}

    def __call__(self, packet_batch: capfile.PacketBatch) -> Any:
        from .classifier import compile_many

        # compile_many takes DLT values; a file records LINKTYPE ones (101 RAW is DLT 12 on Linux)
        linktype = dlt_from_linktype(packet_batch.linktype) if self.linktype is None else self.linktype
        if linktype not in self.made:
            self.made[linktype] = compile_many([_classifiable(s) for s in self.specs], linktype=linktype)
        return self.made[linktype].run_batch(packet_batch.batch)


ACCEPT_ALL = Program([(0x06, 0, 0, 0xFFFFFFFF)])


def _classifiable(spec: capfile.FilterSpec) -> Any:
    """What `compile_many` takes for a filter spec: a `Filter` by its expression (else its program)."""
    if spec is None:
        return ACCEPT_ALL
    if isinstance(spec, Filter):
        return spec.expression if spec.expression is not None else spec.program
    return spec


# -- to_dataframe ----------------------------------------------------------------------------------------
RECORD_FIELDS = ("time", "caplen", "wirelen", "linktype", "file")
DECODED_FIELDS = ("src", "dst", "proto", "sport", "dport")
# caplen, wirelen as int64: pandas keeps a uint32 column's dtype in a groupby sum, which would wrap
_DTYPES = {"time": "float64", "caplen": "int64", "wirelen": "int64", "linktype": "uint32", "file": "string",
           "src": "string", "dst": "string", "proto": "UInt8", "sport": "UInt16", "dport": "UInt16"}  # fmt: skip


def to_dataframe(paths: Paths, filter: capfile.FilterSpec = None, *, fields: Sequence[str] | None = None,
                 classify: Mapping[str, str | Program] | None = None, linktype: int | str | None = None,
                 errors: str = "report", part_bytes: int | None = None, retries: int = 1) -> Any:  # fmt: skip
    """A Dask DataFrame of the packets `filter` accepts, one row per packet and one partition per input
    (or, for a local uncompressed file larger than the part size, per verified byte-range part).

    Columns (`fields`, default: the record fields and the `classify` names): `time` (float64 seconds
    since the epoch, as `read_file` gives it; `dd.to_datetime(df.time, unit="s")` for datetimes),
    `caplen`, `wirelen`, `linktype` (LINKTYPE_*), `file` (the input's URL); per `classify` name a
    bool column, the filter's verdict (the filters run as one classifier per link type: each packet
    once); and on request the decoded `src`, `dst` (address text), `proto` (IPv4 protocol, IPv6 next
    header), `sport`, `dport` (TCP, UDP, SCTP; not for a later IPv4 fragment nor behind an IPv6
    extension header) of IPv4/IPv6 over Ethernet (one or two VLAN tags), raw IP and Linux SLL/SLL2,
    <NA> elsewhere. `filter` runs natively before any row exists (predicate pushdown); a column left
    out (`fields`, or a projection like `df[["time", "src"]]`, which Dask pushes into the read) is
    never computed. With `errors="report"` a corrupt file gives its rows before the bad spot (`count`
    names such files); `errors="raise"` fails the computation with its `CaptureFileError`.

    A partition's rows must come from records one unbroken walk from the file's start reaches, and
    Dask computes partitions independently, so the parts' starts are verified before the DataFrame
    exists: this call runs `capparts.walk_part` on every part of the large files on the cluster (the
    native walk alone, no filter and no rows: a fraction of what reading the rows costs) and
    `capparts.spans` checks them in order, walking a part whose guess was wrong again from the offset
    (and, pcapng, in the context) its predecessor reported; each partition then reads one verified
    span (`capparts.read_span`).
    """
    import dask.dataframe as dd
    import pandas as pd

    _check_errors(errors)
    names = list(classify or {})
    known = [*RECORD_FIELDS, *DECODED_FIELDS]
    if clash := sorted(set(names) & set(known)):
        raise ValueError(f"classify names clash with fields: {clash}")
    columns = list(fields) if fields is not None else [*RECORD_FIELDS, *names]
    if unknown := [c for c in columns if c not in known and c not in names]:
        raise ValueError(f"unknown fields {unknown}: choose from {known + names}")
    pieces = _pieces(inputs(paths), part_bytes, retries)
    read = _ReadPartition(columns, filter, dict(classify or {}), linktype, errors)
    meta = pd.DataFrame({c: pd.Series(dtype="bool" if c in names else _DTYPES[c]) for c in columns})
    return dd.from_map(read, pieces, meta=meta, label="bpfjit-packets", enforce_metadata=False)


class Piece(NamedTuple):
    """What one partition of `to_dataframe` reads: an input, whole (`span` None) or one verified span."""

    source: Input
    span: Span | None = None


def _pieces(sources: list[Input], part_bytes: int | None, retries: int) -> list[Piece]:
    """One piece per input, or per verified span of an input that has parts (verified on the cluster)."""
    size = _part_bytes(sources, part_bytes)
    planned = [(source, _plan(source, size)) for source in sources]
    checks = [dask.delayed(capparts.spans)([dask.delayed(capparts.walk_part)(part, dask_key_name=_key("walk"))
                                            for part in parts], dask_key_name=_key("spans"))
              for _, parts in planned if parts is not None]  # fmt: skip
    verified = iter(_compute(checks, retries))
    pieces: list[Piece] = []
    for source, parts in planned:
        pieces += [Piece(source)] if parts is None else [Piece(source, span) for span in next(verified)]
    return pieces


class _ReadPartition:
    """One input's rows, of the columns a computation needs: Dask passes them as `columns=` (dask-expr)
    or through `project_columns` (the `DataFrameIOFunction` protocol of Dask before 2025)."""

    def __init__(self, columns: list[str], filter: capfile.FilterSpec, classify: dict[str, str | Program],
                 linktype: int | str | None, errors: str):  # fmt: skip
        self._columns, self.filter, self.classify = columns, filter, classify
        self.linktype, self.errors = linktype, errors

    @property
    def columns(self) -> list[str]:
        return self._columns

    def project_columns(self, columns: Sequence[str]) -> _ReadPartition:
        return _ReadPartition(list(columns), self.filter, self.classify, self.linktype, self.errors)

    def __call__(self, piece: Piece, columns: Sequence[str] | None = None) -> Any:
        if columns is not None and list(columns) != self._columns:
            return self.project_columns(columns)(piece)
        source = piece.source
        import numpy as np
        import pandas as pd

        names = [name for name in self.classify if name in self._columns]
        classify = _Classifiers([self.classify[name] for name in names], self.linktype) if names else None
        decoded = [c for c in self._columns if c in DECODED_FIELDS]
        pieces: dict[str, list[Any]] = {c: [] for c in self._columns if c != "file"}
        missing: dict[str, list[Any]] = {c: [] for c in decoded}  # True: not applicable (<NA>)
        rows = 0
        try:
            with contextlib.ExitStack() as stack:
                if piece.span is None:
                    path = stack.enter_context(_opened(source))
                    batches = capfile.read_batches(path, self.filter, linktype=self.linktype)
                else:
                    batches = capparts.read_span(piece.span, self.filter, linktype=self.linktype)
                for packet_batch in batches:
                    batch, n = packet_batch.batch, len(packet_batch.batch)
                    rows += n
                    row = {"time": packet_batch.timestamps, "caplen": batch.caplens, "wirelen": batch.wirelens,
                           "linktype": np.full(n, packet_batch.linktype, np.uint32)}  # fmt: skip
                    header = packet_batch.linktype if self.linktype is None else linktype_value(self.linktype)
                    if decoded:
                        for column, (values, valid) in decode(batch, header, decoded).items():
                            row[column] = values
                            missing[column].append(~valid)
                    if classify is not None:
                        row.update(zip(names, classify(packet_batch).T, strict=True))
                    for column, got in pieces.items():
                        got.append(row[column])
        except CaptureFileError as error:
            if self.errors == "raise":
                raise _named(error, source) from None
        frame = {}
        for column in self._columns:
            if column == "file":
                frame[column] = pd.array(np.full(rows, source.url, dtype=object), dtype="string")
                continue
            dtype = "bool" if column in self.classify else _DTYPES[column]
            if column in missing and column not in ("src", "dst"):  # nullable ints: values and their mask
                empty = np.zeros(0, dtype.lower())
                values = np.concatenate(pieces[column]) if rows else empty
                frame[column] = pd.arrays.IntegerArray(values, np.concatenate(missing[column]) if rows else empty != 0)
            else:
                frame[column] = pd.array(np.concatenate(pieces[column]) if rows else [], dtype=dtype)
        return pd.DataFrame(frame, columns=self._columns)


ETHERNET, LINUX_SLL, LINUX_SLL2 = 1, 113, 276
RAW_IP = (12, 101, 228, 229)  # DLT_RAW (Linux), LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6
VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
PORTS_OF = (6, 17, 132)  # TCP, UDP, SCTP: ports in the first 4 bytes


def decode(batch: Batch, linktype: int, fields: Sequence[str] = DECODED_FIELDS) -> dict[str, tuple[Any, Any]]:
    """The `fields` (of DECODED_FIELDS) of each packet of `batch` (link type `linktype`, a LINKTYPE_* or
    DLT_* value), vectorised over the batch: per field (values, valid). Addresses are text (None when
    not valid), formatted once per distinct address, never once per packet."""
    import numpy as np

    n, data = len(batch), batch.data
    if not fields:
        return {}
    base, caplen = batch.offsets.astype(np.int64), batch.caplens.astype(np.int64)
    last = max(len(data) - 1, 0)
    padded = data if len(data) else np.zeros(1, np.uint8)

    def u8(at: Any) -> Any:  # the byte at `at` of each packet, 0 past its caplen
        return np.where(at < caplen, padded[np.minimum(base + at, last)], 0).astype(np.int64)

    def u16(at: Any) -> Any:
        return u8(at) << 8 | u8(at + 1)

    zero = np.zeros(n, np.int64)
    if linktype == ETHERNET:
        l3, ethertype = zero + 14, u16(zero + 12)
        for _ in range(2):  # 802.1Q / 802.1ad tags, up to two
            tagged = np.isin(ethertype, VLAN_TYPES)
            ethertype, l3 = np.where(tagged, u16(l3 + 2), ethertype), l3 + 4 * tagged
    elif linktype == LINUX_SLL:
        l3, ethertype = zero + 16, u16(zero + 14)
    elif linktype == LINUX_SLL2:
        l3, ethertype = zero + 20, u16(zero)
    elif linktype in RAW_IP:
        version = u8(zero) >> 4
        l3, ethertype = zero, np.select([version == 4, version == 6], [0x0800, 0x86DD], 0)
    else:
        l3, ethertype = zero, zero
    first = u8(l3)
    v4 = (ethertype == 0x0800) & (first >> 4 == 4) & (first & 0xF >= 5) & (caplen >= l3 + 20)
    v6 = (ethertype == 0x86DD) & (first >> 4 == 6) & (caplen >= l3 + 40)
    ip = v4 | v6
    proto = np.where(v4, u8(l3 + 9), np.where(v6, u8(l3 + 6), 0))
    l4 = np.where(v4, l3 + (first & 0xF) * 4, l3 + 40)
    whole = np.where(v4, u16(l3 + 6) & 0x1FFF == 0, True)  # a later fragment has no ports
    ported = ip & np.isin(proto, PORTS_OF) & whole & (caplen >= l4 + 4)
    out: dict[str, tuple[Any, Any]] = {}
    for field in fields:
        if field == "proto":
            out[field] = (proto.astype(np.uint8), ip)
        elif field in ("sport", "dport"):
            at = l4 if field == "sport" else l4 + 2
            out[field] = (np.where(ported, u16(at), 0).astype(np.uint16), ported)
        elif field in ("src", "dst"):
            at = l3 + np.where(v4, 12, 8) + (0 if field == "src" else np.where(v4, 4, 16))
            out[field] = (_addresses(padded, base + at, v4, v6), ip)
        else:
            raise ValueError(f"no decoded field {field!r}: choose from {DECODED_FIELDS}")
    return out


def _addresses(data: Any, at: Any, v4: Any, v6: Any) -> Any:
    """Address text of the 4 (v4) or 16 (v6) bytes at `at` of `data`, None elsewhere: IPv4 dotted quads
    joined by pyarrow (a C++ loop), IPv6 ones by the C library's inet_ntop once per distinct address
    (their compressed form is not a fixed pattern; `ipaddress` would cost ~10x more)."""
    import socket

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    text = np.full(len(at), None, dtype=object)
    if v4.any():
        quads = data[np.minimum(at[v4, None] + np.arange(4), len(data) - 1)]
        octets = [pc.cast(pa.array(quads[:, i]), pa.string()) for i in range(4)]
        text[v4] = pc.binary_join_element_wise(*octets, ".").to_numpy(zero_copy_only=False)
    if v6.any():
        raw = np.ascontiguousarray(data[np.minimum(at[v6, None] + np.arange(16), len(data) - 1)])
        distinct, where = np.unique(raw.view(np.dtype((np.void, 16))).ravel(), return_inverse=True)
        formatted = [socket.inet_ntop(socket.AF_INET6, d.tobytes()) for d in distinct]
        text[v6] = np.array(formatted, dtype=object)[where.ravel()]
    return text
