"""bpfjit.packetmix: the generated frames are deterministic, well-formed, varied, and written as pcap."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from needs import require, tcpdump_path

import bpfjit
from bpfjit import Batch, packetmix

dpkt = pytest.importorskip("dpkt")  # a test extra: `pip install -e '.[test]'`

N = 20_000


@pytest.fixture(scope="module")
def mix() -> tuple[Batch, np.ndarray]:
    return packetmix.generate_with_kinds(N, seed=7)


def _frames(batch: Batch) -> list[tuple[bytes, int]]:
    return packetmix.to_list(batch)


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a, b, c = packetmix.generate(3000, seed=5), packetmix.generate(3000, seed=5), packetmix.generate(3000, seed=6)
    assert _frames(a) == _frames(b)
    assert _frames(a) != _frames(c)


def test_count_lengths_and_truncated_share(mix: tuple[Batch, np.ndarray]) -> None:
    batch, _ = mix
    assert len(batch) == N
    assert (batch.wirelens >= batch.caplens).all()
    assert (batch.wirelens >= packetmix.MIN_FRAME).all()  # padded as on the wire
    assert (batch.caplens >= 1).all()
    share = float(np.mean(batch.caplens < batch.wirelens))
    assert 0.03 < share < 0.05
    assert 250 < float(batch.wirelens.mean()) < 500  # a realistic average frame size
    assert len(packetmix.generate(1000, truncated=0.0)) == 1000
    assert (packetmix.generate(1000, truncated=0.0).caplens == packetmix.generate(1000, truncated=0.0).wirelens).all()


def test_every_kind_appears_in_its_share(mix: tuple[Batch, np.ndarray]) -> None:
    _, kinds = mix
    weights = np.array([k.weight for k in packetmix.KINDS])
    expected = weights / weights.sum() * N
    counts = np.bincount(kinds, minlength=len(packetmix.KINDS))
    assert (counts > 0).all(), [k.name for k, c in zip(packetmix.KINDS, counts, strict=True) if not c]
    assert (np.abs(counts - expected) < 5 * np.sqrt(expected) + 5).all()


def _ipv4_checksum_ok(header: bytes) -> bool:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _network_offset(frame: bytes) -> int:
    """Where the network header starts: after the MAC addresses, any 802.1Q/802.1ad tags and the type."""
    position = 12
    while frame[position : position + 2] in (b"\x81\x00", b"\x88\xa8"):
        position += 4
    return position + 2


def test_frames_are_well_formed(mix: tuple[Batch, np.ndarray]) -> None:
    """Lengths, checksums and headers as a dissector (dpkt) reads them, on whole frames."""
    batch, kinds = mix
    seen: set[str] = set()
    for i, (frame, wirelen) in enumerate(_frames(batch)[:4000]):
        if len(frame) < wirelen:
            continue
        name = packetmix.KINDS[kinds[i]].name
        eth = dpkt.ethernet.Ethernet(frame)
        layer = eth.data
        if isinstance(layer, dpkt.ip.IP):
            seen.add("ipv4")
            start = _network_offset(frame)
            header = frame[start : start + 4 * layer.hl]
            assert _ipv4_checksum_ok(header), name
            assert layer.len <= len(frame) - start
            assert (layer.len == len(frame) - start) or len(frame) == packetmix.MIN_FRAME, name
            unfragmented = layer.offset == 0 and not layer.mf
            if layer.p == 17 and unfragmented:
                assert layer.data.ulen == layer.len - 4 * layer.hl, name
            if layer.p == 6 and unfragmented:
                assert isinstance(layer.data, dpkt.tcp.TCP), name
        elif isinstance(layer, dpkt.ip6.IP6):
            seen.add("ipv6")
            assert layer.plen == len(bytes(layer)) - 40 or len(frame) == packetmix.MIN_FRAME, name
        elif isinstance(layer, dpkt.arp.ARP):
            seen.add("arp")
            assert layer.op in (1, 2)
    assert seen == {"ipv4", "ipv6", "arp"}


# What the mix must contain, as pcap-filter expressions (the benchmark suite relies on these).
CONTENT = {
    "vlan": 0.03, "ether proto 0x88a8": 0.004, "arp": 0.01, "icmp": 0.005, "icmp6": 0.005,
    "ip[0] & 0xf > 5": 0.005, "ip[6:2] & 0x1fff != 0": 0.004, "ip[6:2] & 0x2000 != 0": 0.004,
    "ip6[6] == 0": 0.003, "ip6[6] == 43": 0.002, "ip6[6] == 44": 0.002, "ip6[6] == 60": 0.001,
    "tcp port 80": 0.05, "tcp port 443": 0.2, "udp port 53": 0.04, "udp port 123": 0.01, "tcp port 22": 0.02,
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420": 0.01, "tcp[tcpflags] & tcp-syn != 0": 0.02,
    f"host {packetmix.BUSY_HOST}": 0.02, f"net {packetmix.LOCAL_NET}": 0.5, "ip6 host " + packetmix.BUSY_HOST6: 0.003,
    "ether proto 0x88cc": 0.001,
}  # fmt: skip


@pytest.mark.parametrize("expression", sorted(CONTENT))
def test_mix_contains(mix: tuple[Batch, np.ndarray], expression: str) -> None:
    batch, _ = mix
    share = float(np.mean(bpfjit.compile(expression).run_batch(batch) != 0))
    assert share >= CONTENT[expression], f"{expression}: {share:.4f}"


def test_http_get_payload_lies_where_tcp_header_length_says(mix: tuple[Batch, np.ndarray]) -> None:
    batch, kinds = mix
    names = [k.name for k in packetmix.KINDS]
    get = np.isin(kinds, [names.index("ipv4-tcp-http-get"), names.index("ipv4-tcp-http-get-ts")])
    get &= batch.caplens == batch.wirelens
    verdicts = bpfjit.compile("tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420").run_batch(batch) != 0
    assert (verdicts[get]).all()


def test_to_list_and_generate_list() -> None:
    batch = packetmix.generate(500, seed=2)
    frames = packetmix.to_list(batch)
    assert [bytes(p) for p in batch] == [p for p, _ in frames]
    assert [w for _, w in frames] == batch.wirelens.tolist()
    assert packetmix.generate_list(500, seed=2) == frames
    assert packetmix.to_list(packetmix.generate(0)) == []


@pytest.mark.parametrize("bad", [{"count": -1}, {"truncated": 1.5}, {"truncated": -0.1}])
def test_bad_arguments(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        packetmix.generate(**bad)  # type: ignore[arg-type]


def _records(path: Path) -> tuple[bytes, list[tuple[int, int, bytes, int]]]:
    """The file header and each record's (seconds, fraction, data, wirelen), parsed by hand."""
    raw = path.read_bytes()
    records, pos = [], 24
    while pos < len(raw):
        sec, frac, caplen, wirelen = struct.unpack_from("<IIII", raw, pos)
        records.append((sec, frac, raw[pos + 16 : pos + 16 + caplen], wirelen))
        pos += 16 + caplen
    return raw[:24], records


@pytest.mark.parametrize("nanosecond", [False, True])
def test_write_pcap_round_trip(tmp_path: Path, nanosecond: bool) -> None:
    batch = packetmix.generate(3000, seed=4)
    path = tmp_path / "mix.pcap"
    size = packetmix.write_pcap(path, batch, nanosecond=nanosecond)
    assert size == path.stat().st_size
    header, records = _records(path)
    magic, major, minor, _, _, snaplen, linktype = struct.unpack("<IHHiIII", header)
    assert (magic, major, minor, snaplen, linktype) == (0xA1B23C4D if nanosecond else 0xA1B2C3D4, 2, 4, 262144, 1)
    assert [(data, wire) for _, _, data, wire in records] == _frames(batch)
    step = packetmix.DEFAULT_SPACING_NS if nanosecond else packetmix.DEFAULT_SPACING_NS // 1000
    assert records[1][1] - records[0][1] == step
    with open(path, "rb") as handle:  # a third-party reader agrees
        assert [data for _, data in dpkt.pcap.Reader(handle)] == [p for p, _ in _frames(batch)]


def test_write_pcap_timestamps_any_layout_and_limits(tmp_path: Path) -> None:
    batch = packetmix.generate(200, seed=4)
    reordered = Batch(batch.data, batch.offsets[::-1], batch.caplens[::-1], batch.wirelens[::-1])
    stamps = np.arange(200, dtype=np.int64) * 1_500_000_000 + 123_456_789
    path = tmp_path / "reordered.pcap"
    packetmix.write_pcap(path, reordered, linktype=1, timestamps=stamps)
    _, records = _records(path)
    assert [(d, w) for _, _, d, w in records] == _frames(reordered)
    assert [(s, f) for s, f, _, _ in records][:2] == [(0, 123456), (1, 623456)]
    with pytest.raises(ValueError, match="snaplen"):
        packetmix.write_pcap(tmp_path / "x.pcap", batch, snaplen=64)
    with pytest.raises(ValueError, match="timestamps"):
        packetmix.write_pcap(tmp_path / "x.pcap", batch, timestamps=stamps[:5])
    assert packetmix.write_pcap(tmp_path / "empty.pcap", packetmix.generate(0)) == 24


def test_tcpdump_reads_the_file_and_agrees_on_a_filter(tmp_path: Path) -> None:
    tcpdump = tcpdump_path()
    require(tcpdump is not None, "tcpdump")
    assert tcpdump is not None
    batch = packetmix.generate(2000, seed=9)
    path = tmp_path / "mix.pcap"
    packetmix.write_pcap(path, batch)
    expression = "tcp port 80 or udp port 53"
    out = subprocess.run([tcpdump, "-nn", "-r", str(path), expression], capture_output=True, text=True, check=True)
    expected = int(np.count_nonzero(bpfjit.compile(expression).run_batch(batch)))
    assert len(out.stdout.splitlines()) == expected
