"""bpfjit.dask on a real LocalCluster (two worker processes): every result equals the single-process
one (filter_file, split_file, count_file in a loop) on a collection of pcap, pcapng and gzipped files
with a corrupt one, large files cut into parts (one of them a pcap carried over TCP), and a worker
that dies mid-task."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pcapfiles import mixed_link_types, write_pcapng
from test_parallel import pcap_over_tcp

import bpfjit
from bpfjit import capfile, packetmix
from bpfjit import dask as bpfjit_dask
from bpfjit.errors import CaptureFileError

distributed = pytest.importorskip("distributed")

FILTERS = {"web": "tcp port 80", "dns": "udp port 53", "udp": "udp", "v6": "ip6", "frag": "ip[6:2] & 0x3fff != 0"}
PART_BYTES = 20_000  # the pcap files of the collection are cut into parts of this size


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The inputs (in/), and for each the uncompressed file single-process runs read."""
    root = tmp_path_factory.mktemp("collection")
    src, plain = root / "in", root / "plain"
    src.mkdir()
    plain.mkdir()
    packetmix.write_pcap(plain / "a.pcap", packetmix.generate(3000, seed=41))
    shutil.copy(pcap_over_tcp(root), plain / "b.pcap")
    write_pcapng(plain / "c.pcapng", mixed_link_types(500, seed=42))
    packetmix.write_pcap(plain / "d.pcap", packetmix.generate(1500, seed=43))
    write_pcapng(plain / "e.pcapng", mixed_link_types(300, seed=44))
    packetmix.write_pcap(plain / "f.pcap", packetmix.generate(2000, seed=45))
    truncated = (plain / "f.pcap").read_bytes()
    (plain / "f.pcap").write_bytes(truncated[: len(truncated) * 2 // 3])  # the corrupt one: cut mid-record
    expected = {}
    for path in sorted(plain.iterdir()):
        if path.name in ("d.pcap", "e.pcapng"):
            (src / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        else:
            shutil.copy(path, src / path.name)
        expected[path.name] = path
    return src, expected


def single_filter(plain: Path, out: Path, expression: str) -> tuple[capfile.FileStats | None, str | None]:
    try:
        return bpfjit.filter_file(plain, out, expression, workers=1), None
    except CaptureFileError as error:
        return None, f"byte {error.offset}: {error.reason}"


def test_inputs(collection: tuple[Path, dict[str, Path]]) -> None:
    src, _ = collection
    found = bpfjit_dask.inputs(str(src / "*"))
    assert [(i.name, i.compression, i.local is not None) for i in found] == [
        ("a.pcap", None, True), ("b.pcap", None, True), ("c.pcapng", None, True), ("d.pcap", "gzip", False),
        ("e.pcapng", "gzip", False), ("f.pcap", None, True)]  # fmt: skip
    assert found[0].url == "file://" + str(src / "a.pcap")


def test_filter_files(client: object, collection: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    src, plain = collection
    results = bpfjit_dask.filter_files(str(src / "*"), "tcp or arp", tmp_path / "out", part_bytes=PART_BYTES)
    assert len(results) == 6
    for result in results:
        name = os.path.basename(result.url).removesuffix(".gz")
        stats, error = single_filter(plain[name], tmp_path / name, "tcp or arp")
        assert result.stats == stats and (result.error is None) == (error is None), name
        assert result.output == str(tmp_path / "out" / name)
        assert Path(result.output).read_bytes() == (tmp_path / name).read_bytes(), name
        if error is not None:  # the corrupt file: its own error, naming it and the offset
            assert name == "f.pcap" and result.error is not None and result.error.path == result.url
            assert str(result.error).endswith(error) and "truncated record" in error
        else:
            assert stats is not None and 0 < stats.accepted < stats.read
    assert sorted(os.listdir(tmp_path / "out")) == sorted(plain)  # no part or partial file left


def test_errors_raise(client: object, collection: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    src, _ = collection
    with pytest.raises(CaptureFileError, match=r"f\.pcap: byte \d+: truncated record") as caught:
        bpfjit_dask.filter_files(str(src / "f.pcap"), "udp", tmp_path, part_bytes=PART_BYTES, errors="raise")
    assert caught.value.offset > 24
    assert bpfjit_dask.filter_files(str(src / "a.pcap"), "udp", tmp_path, errors="raise")[0].error is None


def test_split_files(client: object, collection: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    src, plain = collection
    results = bpfjit_dask.split_files([str(src / "*.pcap"), str(src / "*.gz"), str(src / "c.pcapng")], FILTERS,
                                      tmp_path / "out")  # fmt: skip
    assert [os.path.basename(r.url) for r in results] == ["a.pcap", "b.pcap", "f.pcap", "d.pcap.gz", "e.pcapng.gz",
                                                          "c.pcapng"]  # fmt: skip
    with pytest.raises(ValueError, match=r"the same output: \['c.pcapng'\]"):
        bpfjit_dask.split_files([str(src / "*.pcap*"), str(src / "c.pcapng")], FILTERS, tmp_path / "out")
    for result in results:
        name = os.path.basename(result.url).removesuffix(".gz")
        outs = [tmp_path / f"{i}-{name}" for i in range(len(FILTERS))]
        try:
            expected, error = capfile.split_file(plain[name], outs, list(FILTERS.values()), workers=1), None
        except CaptureFileError as caught:
            expected, error = None, caught
        assert result.stats == (None if expected is None else dict(zip(FILTERS, expected, strict=True)))
        assert str(result.error).split(": ", 1)[-1] == str(error).split(": ", 1)[-1]
        for filter_name, out in zip(FILTERS, outs, strict=True):
            got = tmp_path / "out" / filter_name / name
            assert got.read_bytes() == out.read_bytes(), (name, filter_name)


def test_count(client: object, collection: tuple[Path, dict[str, Path]]) -> None:
    src, plain = collection
    totals = bpfjit_dask.count(str(src / "*"), FILTERS, part_bytes=PART_BYTES)
    singles = [capfile.count_file(path, list(FILTERS.values()), errors="report") for path in plain.values()]
    assert totals.files == 6 and totals.read == sum(s.read for s in singles) > 6000
    for i, name in enumerate(FILTERS):
        assert totals.counts[name] == (sum(s.packets[i] for s in singles), sum(s.bytes[i] for s in singles))
        assert totals.counts[name].packets > 0
    assert [e.path for e in totals.errors] == ["file://" + str(src / "f.pcap")]
    assert totals.errors[0].offset == next(s.error for s in singles if s.error is not None).offset


def test_the_extra_is_named_when_missing() -> None:
    script = "import sys; sys.modules['dask'] = None; import bpfjit.dask"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 1 and "pip install 'bpfjit[dask]'" in out.stderr


def test_a_worker_that_dies_mid_task(client: object, collection: tuple[Path, dict[str, Path]], tmp_path: Path) -> None:
    """The task whose worker died is run again elsewhere: every output once, complete, nothing left over."""
    import fsspec

    src, plain = collection
    client.run(fsspec.register_implementation, "dying", "dyingfs.DyingFileSystem", clobber=True)  # type: ignore[attr-defined]
    fsspec.register_implementation("dying", "dyingfs.DyingFileSystem", clobber=True)
    pids = set(client.run(os.getpid).values())  # type: ignore[attr-defined]
    (src / "b.pcap.die").touch()
    out = tmp_path / "out"
    out.mkdir()
    (out / ".a.pcap.partial").write_bytes(b"half of a dead worker's output")
    try:
        results = bpfjit_dask.filter_files(["dying://" + str(src / n) for n in ("a.pcap", "b.pcap", "c.pcapng")],
                                           "tcp", out, retries=0)  # fmt: skip
    finally:
        (src / "b.pcap.die").unlink(missing_ok=True)
    assert not (src / "b.pcap.die").exists()  # the marker was claimed: a worker died
    assert set(client.run(os.getpid).values()) != pids  # type: ignore[attr-defined]
    for result in results:
        name = os.path.basename(result.url)
        stats, _ = single_filter(plain[name], tmp_path / name, "tcp")
        assert result.stats == stats and Path(result.output or "").read_bytes() == (tmp_path / name).read_bytes()
    assert sorted(os.listdir(out)) == ["a.pcap", "b.pcap", "c.pcapng"]
