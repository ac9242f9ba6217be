"""Capture files read from a stream (a decompressor) through a moving window: every operation gives
what it gives on the mapped file, byte for byte, whatever the window size and however the stream
hands out its bytes (records and blocks cut by every window edge, records longer than the window)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
import savefiles
from pcapfiles import mixed_link_types, write_pcapng
from test_capparts import pcapng_blocks_mid_file, pcapng_mix
from test_parallel import pcap_over_tcp

import bpfjit
from bpfjit import capfile, capformat, packetmix
from bpfjit.capfile import Stream
from bpfjit.errors import CaptureFileError

EXPRESSIONS = [None, "udp"]


class Trickle(io.RawIOBase):
    """A stream that hands out at most `most` bytes a read (a pipe, a slow decompressor)."""

    def __init__(self, data: bytes, most: int):
        self.data, self.at, self.most = data, 0, most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: object) -> int:
        view = memoryview(buffer)  # type: ignore[arg-type]
        n = min(len(view), self.most, len(self.data) - self.at)
        view[:n] = self.data[self.at : self.at + n]
        self.at += n
        return n


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("streamed")
    made = {"be-ns.pcap": savefiles.pcap_bytes(savefiles.records([d for d, _ in packetmix.generate_list(800, seed=2)],
                                                                 nano=True), 1, order=">", nano=True),
            "le.pcapng": pcapng_mix("<", 800, seed=3), "be.pcapng": pcapng_mix(">", 800, seed=3),
            "blocks.pcapng": pcapng_blocks_mid_file()}  # fmt: skip
    for name, data in made.items():
        (tmp / name).write_bytes(data)
    packetmix.write_pcap(tmp / "mix.pcap", packetmix.generate(2000, seed=1))
    write_pcapng(tmp / "scapy.pcapng", mixed_link_types(400, seed=4))
    pcap_over_tcp(tmp)  # pcap-over-tcp.pcap, and the inner.pcap it carries
    return {path.name: path for path in tmp.iterdir() if path.name != "inner.pcap"}


def stream(path: Path, most: int | None = None) -> Stream:
    data = path.read_bytes()
    if most is None:
        return Stream(gzip.open(io.BytesIO(gzip.compress(data))), path.name + ".gz")
    return Stream(io.BufferedReader(Trickle(data, most)), path.name)


@pytest.mark.parametrize("window", [700, 5000, 1 << 22])  # 700: records longer than the window
def test_every_operation_equals_the_mapped_file(captures: dict[str, Path], tmp_path: Path, window: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(capformat, "STREAM_WINDOW", window)
    one, streamed = tmp_path / "one", tmp_path / "streamed"
    for name, path in sorted(captures.items()):
        for expression in EXPRESSIONS:
            expected = bpfjit.filter_file(path, one, expression, workers=1)
            assert bpfjit.filter_file(stream(path), streamed, expression) == expected, (name, expression)
            assert streamed.read_bytes() == one.read_bytes(), (name, expression)
        assert capfile.count_file(stream(path, most=333), ["tcp", "udp"]) == capfile.count_file(path, ["tcp", "udp"])
        got = [(t, bytes(p), c.linktype) for c in capfile.read_batches(stream(path), "ip")  # kept past the window
               for t, p in zip(c.timestamps.tolist(), c.batch, strict=True)]  # fmt: skip
        assert got == [(t, bytes(p), c.linktype) for c in capfile.read_batches(path, "ip")
                       for t, p in zip(c.timestamps.tolist(), c.batch, strict=True)], name  # fmt: skip
        assert list(bpfjit.read_file(stream(path, most=4096), "tcp")) == list(bpfjit.read_file(path, "tcp")), name
        outs = [tmp_path / f"split-{i}" for i in range(2)]
        singles = capfile.split_file(path, outs, ["tcp", "not tcp"])
        data = [out.read_bytes() for out in outs]
        assert capfile.split_file(stream(path), outs, ["tcp", "not tcp"]) == singles
        assert [out.read_bytes() for out in outs] == data, name


@pytest.mark.parametrize("name", ["mix.pcap", "le.pcapng"])
def test_a_truncated_stream_fails_where_the_file_does(captures: dict[str, Path], tmp_path: Path, name: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(capformat, "STREAM_WINDOW", 5000)
    data = captures[name].read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) * 3 // 5])
    one, streamed = tmp_path / "one", tmp_path / "streamed"
    with pytest.raises(CaptureFileError) as mapped:
        bpfjit.filter_file(cut, one, "udp", workers=1)
    with pytest.raises(CaptureFileError) as read:
        bpfjit.filter_file(stream(cut), streamed, "udp")
    assert (read.value.offset, read.value.reason) == (mapped.value.offset, mapped.value.reason) != (0, "")
    assert read.value.offset > 10 * 5000 and streamed.read_bytes() == one.read_bytes()
    with pytest.raises(CaptureFileError, match="empty file"):
        bpfjit.filter_file(Stream(io.BytesIO(b""), "empty"), streamed)


def test_zstandard_streams(captures: dict[str, Path], tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")  # fsspec's "zstd" needs it; not installed everywhere
    fsspec = pytest.importorskip("fsspec")
    path = captures["le.pcapng"]
    packed = tmp_path / "le.pcapng.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
    one, streamed = tmp_path / "one", tmp_path / "streamed"
    with fsspec.open(str(packed), "rb", compression="zstd") as f:
        assert bpfjit.filter_file(Stream(f, packed.name), streamed, "udp") == bpfjit.filter_file(path, one, "udp")
    assert streamed.read_bytes() == one.read_bytes()
