"""bpfjit.dask on a real LocalCluster (two worker processes): every result equals the single-process
one (filter_file, split_file, count_file in a loop) on a collection of pcap, pcapng and gzipped files
with a corrupt one, large files cut into parts (one of them a pcap carried over TCP), and a worker
that dies mid-task."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pcapfiles import mixed_link_types, write_pcapng
from test_capparts import pcapng_blocks_mid_file, pcapng_mix, pcapng_over_tcp
from test_parallel import pcap_over_tcp

import bpfjit
from bpfjit import capfile, packetmix, samples
from bpfjit import dask as bpfjit_dask
from bpfjit.batch import Batch
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


@pytest.fixture(scope="module")
def http_server(collection: tuple[Path, dict[str, Path]]) -> Iterator[str]:
    """The collection served over HTTP by Python's own server (no range requests: a plain server)."""
    import functools
    import http.server
    import threading

    src, _ = collection

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(src)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_inputs_over_http(client: object, collection: tuple[Path, dict[str, Path]], http_server: str,
                          tmp_path: Path) -> None:  # fmt: skip
    """fsspec URLs that are no local files (here HTTP, as an object store serves them) are streamed on
    the workers: the same outputs, counts and errors (naming the URL) as the local files give."""
    pytest.importorskip("aiohttp")  # fsspec's HTTP file system
    src, plain = collection
    names = sorted(p.name for p in src.iterdir())
    urls = [f"{http_server}/{name}" for name in names]
    assert [s.local for s in bpfjit_dask.inputs(urls)] == [None] * len(urls)
    totals = bpfjit_dask.count(urls, FILTERS)
    assert totals == bpfjit_dask.count(str(src / "*"), FILTERS)._replace(errors=totals.errors)
    assert [(e.path, e.offset) for e in totals.errors] == [(f"{http_server}/f.pcap", totals.errors[0].offset)]
    results = bpfjit_dask.filter_files(urls, "tcp or arp", tmp_path / "out")
    for result, name in zip(results, names, strict=True):
        plain_name = name.removesuffix(".gz")
        stats, error = single_filter(plain[plain_name], tmp_path / plain_name, "tcp or arp")
        assert result.stats == stats and (error is None) == (result.error is None)
        assert Path(result.output or "").read_bytes() == (tmp_path / plain_name).read_bytes()


def test_the_part_size_follows_the_cluster(client: object) -> None:
    """By default: about 4 tasks per thread of the cluster (2 here), never parts under 64 MiB; given, as given."""
    mib = 1 << 20

    def files(*sizes: int, local: bool = True) -> list[bpfjit_dask.Input]:
        return [bpfjit_dask.Input(f"f{i}", f"/f{i}" if local else None, None, size, f"f{i}")
                for i, size in enumerate(sizes)]  # fmt: skip

    assert bpfjit_dask._threads() == 2
    assert bpfjit_dask._part_bytes(files(*[110 * mib] * 32), None) == 440 * mib  # many files: none is cut
    assert bpfjit_dask._part_bytes(files(2048 * mib), None) == 256 * mib  # one large file: 8 parts
    assert bpfjit_dask._part_bytes(files(100 * mib, 100 * mib), None) == 64 * mib  # no part under 64 MiB
    assert bpfjit_dask._part_bytes(files(4096 * mib, local=False), None) == 64 * mib  # streamed: never cut
    assert bpfjit_dask._part_bytes(files(2048 * mib), 1000) == 1000


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


def _read_until_error(path: Path, expression: str) -> list[tuple[float, bytes, int]]:
    """read_file's packets, up to the bad spot of a corrupt file (errors="report" keeps them)."""
    got: list[tuple[float, bytes, int]] = []
    with contextlib.suppress(CaptureFileError):
        got.extend(bpfjit.read_file(path, expression))
    return got


def test_to_dataframe_rows_equal_read_file(client: object, collection: tuple[Path, dict[str, Path]]) -> None:
    src, plain = collection
    classify = {"web": "tcp port 80", "v6": "ip6"}
    df = bpfjit_dask.to_dataframe(str(src / "*"), "tcp or udp", classify=classify)
    assert list(df.columns) == ["time", "caplen", "wirelen", "linktype", "file", "web", "v6"]
    assert df.npartitions == 6
    frame = df.compute()
    assert frame.dtypes.to_dict() == df.dtypes.to_dict()
    assert frame.wirelen.dtype == "int64"  # a groupby sum of bytes must not wrap at 4 GiB
    for source in bpfjit_dask.inputs(str(src / "*")):
        rows = frame[frame.file == source.url]
        expected = _read_until_error(plain[source.name], "tcp or udp")
        assert len(rows) == len(expected) > 100, source.name
        assert rows.time.tolist() == [t for t, _, _ in expected]
        assert rows.caplen.tolist() == [len(p) for _, p, _ in expected]
        assert rows.wirelen.tolist() == [w for _, _, w in expected]
        for name, expression in classify.items():  # the verdict bits: read_file with both filters
            both = _read_until_error(plain[source.name], f"(tcp or udp) and ({expression})")
            chosen = rows[rows[name]]
            assert list(zip(chosen.time, chosen.wirelen, strict=True)) == [(t, w) for t, _, w in both], name
    assert set(frame.linktype) == {1, 101, 113}  # the pcapng files mix Ethernet, raw IP and SLL


def test_to_dataframe_partitions_per_part_equal_one_partition(
    client: object, tmp_path: Path, collection: tuple[Path, dict[str, Path]]
) -> None:
    """Large files in many parts (a pcap and a pcapng carried over TCP among them: guesses fooled,
    walked again before any row exists) give the rows of one partition per file, in order."""
    src, _ = collection
    (tmp_path / "ng-mix.pcapng").write_bytes(pcapng_mix(">", 1500, seed=5))
    (tmp_path / "ng-over-tcp.pcapng").write_bytes(pcapng_over_tcp())
    (tmp_path / "ng-blocks.pcapng").write_bytes(pcapng_blocks_mid_file())
    fields = ["time", "caplen", "wirelen", "linktype", "file", "src", "dport", "web"]
    for path in [src / "a.pcap", src / "b.pcap", tmp_path / "ng-mix.pcapng", tmp_path / "ng-over-tcp.pcapng",
                 tmp_path / "ng-blocks.pcapng", src / "c.pcapng", src / "f.pcap"]:  # fmt: skip
        whole = bpfjit_dask.to_dataframe(str(path), "ip or ip6 or arp", fields=fields, classify={"web": "tcp port 80"})
        parts = bpfjit_dask.to_dataframe(str(path), "ip or ip6 or arp", fields=fields, classify={"web": "tcp port 80"},
                                         part_bytes=3000)  # fmt: skip
        # c.pcapng's writer (scapy) describes each interface at its first packet: after the second
        # interface block, the rest of the file is one span
        assert whole.npartitions == 1 and parts.npartitions > (1 if path.name == "c.pcapng" else 10), path.name
        expected, got = whole.compute(), parts.compute()
        assert len(expected) > 20
        pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True))
    with pytest.raises(CaptureFileError, match=r"f\.pcap: byte \d+: truncated record"):
        bpfjit_dask.to_dataframe(str(src / "f.pcap"), errors="raise", part_bytes=3000).compute()


def test_to_dataframe_errors_raise(client: object, collection: tuple[Path, dict[str, Path]]) -> None:
    src, _ = collection
    df = bpfjit_dask.to_dataframe(str(src / "f.pcap"), errors="raise")
    with pytest.raises(CaptureFileError, match=r"f\.pcap: byte \d+: truncated record"):
        df.compute()


def test_to_dataframe_computes_only_the_columns_asked(collection: tuple[Path, dict[str, Path]],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    src, _ = collection
    decoded: list[tuple[str, ...]] = []
    classified: list[int] = []
    decode, classify = bpfjit_dask.decode, bpfjit_dask._Classifiers.__call__

    def spy_decode(batch: object, linktype: int, fields: tuple[str, ...]) -> object:
        decoded.append(tuple(fields))
        return decode(batch, linktype, fields)  # type: ignore[arg-type]

    def spy_classify(self: object, packet_batch: object) -> object:
        classified.append(1)
        return classify(self, packet_batch)  # type: ignore[arg-type]

    monkeypatch.setattr(bpfjit_dask, "decode", spy_decode)
    monkeypatch.setattr(bpfjit_dask._Classifiers, "__call__", spy_classify)
    fields = ["time", "file", "src", "sport", "web"]
    df = bpfjit_dask.to_dataframe(str(src / "a.pcap"), fields=fields, classify={"web": "tcp port 80"})
    assert list(df.columns) == fields
    assert df.dtypes.astype(str).tolist() == ["float64", "string", "string", "UInt16", "bool"]  # meta: no file read
    assert not decoded and not classified
    times = df[["time"]].compute(scheduler="sync")  # in this process, where the spies are
    assert list(times.columns) == ["time"] and len(times) == 3000 and not decoded and not classified
    ports = df[["time", "sport"]].compute(scheduler="sync")
    assert list(ports.columns) == ["time", "sport"] and set(decoded) == {("sport",)} and not classified
    assert ports.sport.notna().sum() > 1000
    assert int(df.web.sum().compute(scheduler="sync")) > 0 and classified
    with pytest.raises(ValueError, match=r"unknown fields \['port'\]"):
        bpfjit_dask.to_dataframe(str(src / "a.pcap"), fields=["port"])


def test_decode_hand_made_frames() -> None:
    from pcapfiles import linux_sll, raw_ip

    v6a, v6b = bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000abc")
    tcp4 = samples.ethernet(0x0800, samples.ipv4(6, samples.tcp(1234, 80), "192.0.2.1", "198.51.100.7"))
    udp6 = samples.vlan(5, 0x86DD, samples.ipv6(17, samples.udp(5353, 53), v6a, v6b))
    later = samples.ethernet(0x0800, samples.ipv4(17, samples.udp(1, 2), frag=0x0010))  # offset 128: no ports
    icmp6 = samples.ethernet(0x86DD, samples.ipv6(58, b"\x80\x00\x00\x00"))
    arp = samples.arp_request()
    cut = tcp4[: 14 + 20 + 2]  # TCP header cut after its source port
    frames = [tcp4, udp6, later, icmp6, arp, cut]
    batch = Batch.from_packets(frames)
    got = {name: [None if not ok else (v if isinstance(v, str) else int(v)) for v, ok in zip(*pair, strict=True)]
           for name, pair in bpfjit_dask.decode(batch, 1).items()}  # fmt: skip
    assert got == {
        "src": ["192.0.2.1", "2001:db8::1", "10.0.0.1", "::1", None, "192.0.2.1"],
        "dst": ["198.51.100.7", "2001:db8::abc", "10.0.0.2", "::2", None, "198.51.100.7"],
        "proto": [6, 17, 17, 58, None, 6],
        "sport": [1234, 5353, None, None, None, None],
        "dport": [80, 53, None, None, None, None],
    }
    for framed, linktype in ((raw_ip, 101), (linux_sll, 113)):
        other = bpfjit_dask.decode(Batch.from_packets([framed(tcp4), framed(udp6[:12] + udp6[16:])]), linktype)
        assert other["src"][0].tolist() == ["192.0.2.1", "2001:db8::1"], linktype
        assert other["dport"][0].tolist() == [80, 53] and other["dport"][1].all()
    unknown = bpfjit_dask.decode(Batch.from_packets([tcp4]), 147)  # a link type without IP: all <NA>
    assert not any(valid.any() for _, valid in unknown.values())


def test_to_dataframe_decoded_columns(client: object, tmp_path: Path) -> None:
    frames = [samples.ethernet(0x0800, samples.ipv4(17, samples.udp(1000 + i, 53), "10.9.0.1", f"10.9.1.{i}"))
              for i in range(5)] + [samples.arp_request()]  # fmt: skip
    packetmix.write_pcap(tmp_path / "h.pcap", Batch.from_packets(frames))
    fields = ["src", "dst", "proto", "sport", "dport"]
    frame = bpfjit_dask.to_dataframe(str(tmp_path / "h.pcap"), fields=fields).compute()
    assert frame.dst.tolist()[:5] == [f"10.9.1.{i}" for i in range(5)]
    assert frame.dst.isna().tolist() == [False] * 5 + [True]
    assert frame.sport.tolist()[:5] == list(range(1000, 1005)) and frame.proto.isna().sum() == 1
    assert str(frame.dport.dtype) == "UInt16" and frame.dport.iloc[5] is pd.NA


def test_count_buckets_equal_a_numpy_groupby(client: object, collection: tuple[Path, dict[str, Path]]) -> None:
    import numpy as np

    src, plain = collection
    bucket = 0.05  # the collection spans ~0.6 s
    totals = bpfjit_dask.count(str(src / "*"), FILTERS, bucket=bucket)
    assert totals.counts == bpfjit_dask.count(str(src / "*"), FILTERS, part_bytes=PART_BYTES).counts
    assert [e.path for e in totals.errors] == ["file://" + str(src / "f.pcap")]
    assert totals.buckets is not None
    for name, expression in FILTERS.items():
        packets = [p for path in plain.values() for p in _read_until_error(path, expression)]
        index = np.floor(np.array([t for t, _, _ in packets]) / bucket).astype(np.int64)
        wire = np.array([w for _, _, w in packets], dtype=np.int64)
        keys, where = np.unique(index, return_inverse=True)
        sums = zip(keys, np.bincount(where), np.bincount(where, weights=wire).astype(np.int64), strict=True)
        expected = {float(k * bucket): (int(c), int(b)) for k, c, b in sums}
        assert {k: tuple(v) for k, v in totals.buckets[name].items()} == expected, name
        assert len(expected) > 3 and list(totals.buckets[name]) == sorted(expected)
        assert all(type(start) is float for start in totals.buckets[name])
        assert sum(c.packets for c in totals.buckets[name].values()) == totals.counts[name].packets


def test_to_dataframe_empty_partitions_keep_the_meta(client: object, collection: tuple[Path, dict[str, Path]]) -> None:
    src, _ = collection
    fields = [*bpfjit_dask.RECORD_FIELDS, *bpfjit_dask.DECODED_FIELDS, "web"]
    df = bpfjit_dask.to_dataframe(str(src / "*"), "tcp port 1", fields=fields, classify={"web": "tcp"})
    frame = df.compute()
    assert len(frame) == 0 and list(frame.columns) == fields
    assert frame.dtypes.to_dict() == df.dtypes.to_dict()


def test_count_buckets_errors_raise(client: object, collection: tuple[Path, dict[str, Path]]) -> None:
    src, _ = collection
    with pytest.raises(CaptureFileError, match=r"f\.pcap: byte \d+: truncated record"):
        bpfjit_dask.count(str(src / "f.pcap"), {"udp": "udp"}, bucket=1.0, errors="raise")
    with pytest.raises(ValueError, match="bucket must be a positive"):
        bpfjit_dask.count(str(src / "a.pcap"), {"udp": "udp"}, bucket=0)
