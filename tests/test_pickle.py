"""Everything that crosses a process boundary pickles, and comes back equal and working."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bpfjit
from bpfjit import capfile, packetmix
from bpfjit.capformat import CaptureFile
from bpfjit.errors import CaptureFileError, ExpressionError, LibraryMissingError, ParseError, ValidationError

EXPRESSIONS = ["tcp port 80", "udp port 53", "arp", "ip6"]


def roundtrip(value: object) -> object:
    return pickle.loads(pickle.dumps(value))


@pytest.fixture(scope="module")
def mix() -> bpfjit.Batch:
    return packetmix.generate(3000, seed=21)


def test_program_and_filter(mix: bpfjit.Batch) -> None:
    f = bpfjit.compile("tcp port 80")
    g = roundtrip(f)
    assert isinstance(g, bpfjit.Filter) and g.program == f.program and g.expression == "tcp port 80"
    assert (g.run_batch(mix) == f.run_batch(mix)).all() and f.run_batch(mix).any()
    assert roundtrip(f.program) == f.program and roundtrip(f.program[0]) == f.program[0]


@pytest.mark.parametrize("mode", ["bitmask", "first"])
def test_classifier(mix: bpfjit.Batch, mode: str) -> None:
    m = bpfjit.compile_many(EXPRESSIONS, mode=mode)  # type: ignore[arg-type]
    n = roundtrip(m)
    assert isinstance(n, bpfjit.Classifier) and n is not m
    assert (n.programs, n.mode, n.opt_level, n.expressions) == (m.programs, m.mode, m.opt_level, m.expressions)
    expected, got = m.run_batch(mix), n.run_batch(mix)
    if mode == "bitmask":
        assert (got == expected).all() and expected.sum(axis=0).min() > 0  # every filter accepts some
    else:
        assert all((a == b).all() for a, b in zip(got, expected, strict=True))
    assert roundtrip(m) is n  # unpickled once per process: the second is the first one's code


def test_classifier_in_a_fresh_process(tmp_path: Path, mix: bpfjit.Batch) -> None:
    m = bpfjit.compile_many(EXPRESSIONS)
    (tmp_path / "m.pickle").write_bytes(pickle.dumps((m, mix)))
    script = "import pickle, sys; m, b = pickle.load(open(sys.argv[1], 'rb')); print(m.run_batch(b).sum(0).tolist())"
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.pickle")], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.strip() == str(m.run_batch(mix).sum(axis=0).tolist())


def test_batch_by_value(mix: bpfjit.Batch) -> None:
    b = roundtrip(mix)
    assert isinstance(b, bpfjit.Batch) and len(b) == len(mix)
    assert [bytes(p) for p in b] == [bytes(p) for p in mix]
    assert (b.wirelens == mix.wirelens).all() and (b.caplens == mix.caplens).all()
    plain = bpfjit.Batch(b"abcdefgh", [6, 0], [2, 3])
    again = roundtrip(plain)
    assert [bytes(p) for p in again] == [b"gh", b"abc"] and again.wirelens.tolist() == [2, 3]  # type: ignore[attr-defined]


def test_batches_over_a_mapped_file(tmp_path: Path, mix: bpfjit.Batch) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, mix)
    chunks = list(capfile.read_batches(src, "udp", chunk=500))
    assert len(chunks) > 1
    for chunk in chunks:
        again = roundtrip(chunk)
        assert isinstance(again, capfile.PacketBatch) and again.linktype == chunk.linktype == 1
        assert [bytes(p) for p in again.batch] == [bytes(p) for p in chunk.batch]
        assert (again.timestamps == chunk.timestamps).all()
        assert len(pickle.dumps(chunk.batch)) < 2 * len(b"".join(chunk.batch)) + 64 * len(chunk.batch)  # not the file


def test_capture_file_and_stats(tmp_path: Path, mix: bpfjit.Batch) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, mix)
    with CaptureFile(src) as capture:
        again = roundtrip(capture)
        assert isinstance(again, CaptureFile)
        with again:
            assert (again.path, again.format, again.size, again.linktypes, again.snaplen) == (
                capture.path, "pcap", capture.size, [1], capture.snaplen)  # fmt: skip
    with open(src, "rb") as file, CaptureFile(file) as capture, pytest.raises(TypeError, match="open it by path"):
        pickle.dumps(capture)
    stats = bpfjit.filter_file(src, None, "tcp")
    assert roundtrip(stats) == stats and stats.accepted > 0


def test_errors() -> None:
    errors = [
        CaptureFileError(1234, "truncated record", "x.pcap"),
        ExpressionError("tcp port", "syntax error"),
        ValidationError("jump_range", "jump target 9 is past the end", 3, "ja 9"),
        ParseError("unexpected character", 7),
        ParseError("no instructions"),
        LibraryMissingError("libpcap is not installed"),
    ]
    for error in errors:
        again = roundtrip(error)
        assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)
    with pytest.raises(ExpressionError) as caught:
        bpfjit.compile("tcp port")
    assert str(roundtrip(caught.value)) == str(caught.value)


def test_numpy_results() -> None:
    verdicts = bpfjit.compile("tcp").run_batch(packetmix.generate(100, seed=2))
    assert (roundtrip(verdicts) == verdicts).all() and verdicts.dtype == np.uint32


def test_parts_of_a_file_and_their_results(tmp_path: Path) -> None:
    """capparts' plan, walk results and spans (contexts of a file of several pcapng sections included)
    come back equal, and a part that crossed a process boundary walks as the original does."""
    from test_capparts import pcapng_sections

    from bpfjit import capparts

    ip_expressions = ["tcp port 80", "udp port 53", "ip6"]  # (arp rejects every packet of a raw IP section)
    src = tmp_path / "sections.pcapng"
    src.write_bytes(pcapng_sections())
    parts = capparts.plan(src, 4096)
    assert len(parts) > 4 and len({p.section for p in parts}) > 1
    results = [capparts.count_part(p, ip_expressions) for p in parts]
    assert {r.context for r in results if r.context is not None} and roundtrip(results) == results
    assert [capparts.count_part(roundtrip(p), ip_expressions) for p in parts] == results
    spans = capparts.spans([capparts.walk_part(p) for p in parts])
    assert roundtrip(spans) == spans and roundtrip(capparts.assemble_count(results, ip_expressions)) == \
        capfile.count_file(src, ip_expressions)  # fmt: skip


def test_dask_results(tmp_path: Path, mix: bpfjit.Batch) -> None:
    dask = pytest.importorskip("bpfjit.dask")
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, mix)
    (source,) = dask.inputs(str(src))
    results = [
        source, dask.Piece(source),
        dask.FileResult(source.url, str(src), bpfjit.filter_file(src, None, "tcp"), None),
        dask.FileResult(source.url, None, None, CaptureFileError(24, "truncated record", source.url)),
        dask.SplitResult(source.url, {"web": str(src)}, {"web": capfile.FileStats(3, 2, 100)}, None),
        dask.CollectionCounts(1, 3000, {"web": dask.Counts(5, 600)}, [], {"web": {60.0: dask.Counts(5, 600)}}),
    ]  # fmt: skip
    for result in results:
        again = roundtrip(result)
        assert type(again) is type(result) and repr(again) == repr(result)
