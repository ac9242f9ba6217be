"""bpfjit.adapters: scapy's and dpkt's loops keep exactly the packets the filter accepts."""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path

import pytest
from needs import require

import bpfjit
from bpfjit import packetmix
from bpfjit.adapters import dpkt_filter, scapy_lfilter, scapy_reader
from bpfjit.batch import Batch
from bpfjit.samples import ipv4, ipv6, tcp, udp

EXPRESSIONS = [
    "udp port 53",
    "tcp[tcpflags] & tcp-syn != 0",
    "vlan",
    "ip6 and tcp",
    "arp or icmp",
    "greater 600",  # reads the wire length: truncated records tell caplen from wirelen
    "ip and not tcp",
]


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def mix_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred frames of every kind packetmix makes, some captured short of their wire length."""
    path = tmp_path_factory.mktemp("adapters") / "mix.pcap"
    packetmix.write_pcap(path, packetmix.generate(400, seed=7, truncated=0.1))
    return path


@pytest.fixture(scope="module")
def raw_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """IP packets with no link header (LINKTYPE_RAW, 101): expressions must be compiled for that."""
    packets = [ipv4(17, udp(1000, 53)), ipv4(6, tcp(1, 80)), ipv6(17, udp(5, 53)), ipv4(17, udp(9, 9))] * 3
    path = tmp_path_factory.mktemp("adapters") / "raw.pcap"
    packetmix.write_pcap(path, Batch.from_packets(packets), linktype=101)
    return path


def _records(path: Path) -> list[tuple[bytes, int]]:
    """(captured bytes, wire length) of each record of a classic little-endian pcap file."""
    data = path.read_bytes()
    records, position = [], 24
    while position < len(data):
        caplen, wirelen = struct.unpack_from("<II", data, position + 8)
        records.append((data[position + 16 : position + 16 + caplen], wirelen))
        position += 16 + caplen
    return records


# -- scapy --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scapy_packets(mix_pcap: Path) -> list[object]:
    require(_installed("scapy"), "scapy")
    from scapy.utils import rdpcap

    return list(rdpcap(str(mix_pcap)))


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_scapy_lfilter_accepts_what_the_filter_accepts(
    mix_pcap: Path, scapy_packets: list[object], expression: str
) -> None:
    f = bpfjit.compile(expression)
    lfilter = scapy_lfilter(f)
    records = _records(mix_pcap)
    assert [bytes(p) for p in scapy_packets] == [data for data, _ in records]  # (what lfilter filters)
    wanted = [f.call(data, wirelen) != 0 for data, wirelen in records]
    assert [lfilter(p) for p in scapy_packets] == wanted
    assert 0 < sum(wanted) < len(wanted)


def test_scapy_sniff_offline_takes_it_as_lfilter(mix_pcap: Path, scapy_packets: list[object]) -> None:
    from scapy.sendrecv import sniff

    lfilter = scapy_lfilter("udp port 53")
    kept = sniff(offline=str(mix_pcap), lfilter=lfilter, store=True, quiet=True)
    assert [bytes(p) for p in kept] == [bytes(p) for p in scapy_packets if lfilter(p)]


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_scapy_reader_yields_what_pcapreader_would_and_the_filter_accepts(
    mix_pcap: Path, scapy_packets: list[object], expression: str
) -> None:
    f = bpfjit.compile(expression)
    records = _records(mix_pcap)
    expected = [p for p, (data, wirelen) in zip(scapy_packets, records, strict=True) if f.call(data, wirelen)]
    got = list(scapy_reader(mix_pcap, f))
    fields = [(bytes(p), p.time, p.wirelen, type(p)) for p in got]
    assert fields == [(bytes(p), p.time, p.wirelen, type(p)) for p in expected]


def test_scapy_reader_compiles_an_expression_for_the_files_link_type(raw_pcap: Path) -> None:
    require(_installed("scapy"), "scapy")
    from scapy.utils import rdpcap

    got = list(scapy_reader(raw_pcap, "udp port 53"))
    assert len(got) == 6
    # The same classes PcapReader picks (IP/IPv6 once scapy's layers are loaded, Raw before).
    f = bpfjit.compile("udp port 53", linktype="RAW")
    wanted = [p for p in rdpcap(str(raw_pcap)) if f(bytes(p))]
    assert [(type(p), bytes(p)) for p in got] == [(type(p), bytes(p)) for p in wanted]


def test_scapy_reader_reads_pcapng(mix_pcap: Path, scapy_packets: list[object], tmp_path: Path) -> None:
    from scapy.utils import wrpcapng

    path = tmp_path / "mix.pcapng"
    wrpcapng(str(path), scapy_packets)
    lfilter = scapy_lfilter("tcp")
    got = list(scapy_reader(path, "tcp"))
    assert [bytes(p) for p in got] == [bytes(p) for p in scapy_packets if lfilter(p)]


def test_a_missing_scapy_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, mix_pcap: Path) -> None:
    monkeypatch.setitem(sys.modules, "scapy", None)  # import scapy now raises ImportError
    with pytest.raises(ImportError, match=r"pip install bpfjit\[scapy\]"):
        next(scapy_reader(mix_pcap, "tcp"))


def test_adapters_want_a_filter_or_an_expression() -> None:
    with pytest.raises(TypeError, match="Filter or an expression"):
        scapy_lfilter(42)


# -- dpkt ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_dpkt_filter_keeps_what_the_filter_accepts(mix_pcap: Path, expression: str) -> None:
    require(_installed("dpkt"), "dpkt")
    import dpkt

    f = bpfjit.compile(expression)
    with open(mix_pcap, "rb") as fh:
        everything = list(dpkt.pcap.Reader(fh))
    with open(mix_pcap, "rb") as fh:
        kept = list(dpkt_filter(dpkt.pcap.Reader(fh), expression))
    # dpkt hands out the captured bytes only, so the filter sees wirelen = caplen, as in `if f(buf)`.
    assert kept == [(ts, buf) for ts, buf in everything if f(buf)]
    assert 0 < len(kept) < len(everything)


def test_dpkt_filter_compiles_an_expression_for_the_files_link_type(raw_pcap: Path) -> None:
    require(_installed("dpkt"), "dpkt")
    import dpkt

    with open(raw_pcap, "rb") as fh:
        kept = [buf for _, buf in dpkt_filter(dpkt.pcap.Reader(fh), "udp port 53")]
    assert len(kept) == 6 and all(buf[0] >> 4 in (4, 6) for buf in kept)


def test_dpkt_filter_reads_pcapng(mix_pcap: Path, tmp_path: Path) -> None:
    require(_installed("dpkt"), "dpkt")
    import dpkt

    path = tmp_path / "mix.pcapng"
    with open(mix_pcap, "rb") as fh, open(path, "wb") as out:
        writer = dpkt.pcapng.Writer(out)
        for ts, buf in dpkt.pcap.Reader(fh):
            writer.writepkt(buf, ts=ts)
    f = bpfjit.compile("udp")
    with open(path, "rb") as fh:
        kept = [buf for _, buf in dpkt_filter(dpkt.pcapng.Reader(fh), f)]
    assert kept == [data for data, _ in _records(mix_pcap) if f(data)]
