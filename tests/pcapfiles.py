"""Capture files for the tests, built and taken apart without bpfjit's reader.

Packets (`Packet`, `mix`, `mixed_link_types`) with their link type and timestamp; files written by
independent writers (scapy for pcap and little-endian pcapng); the expected bytes of a filtered file
from a block splitter here; expected verdicts from libpcap (`pcap_offline_filter`, as tcpdump applies
a filter). Shared by tests/test_capfile.py and tests/test_split.py.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any, NamedTuple

from bpfjit import libpcap, packetmix

US_BASE = 1_700_000_000
LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL = 1, 101, 113
DLT = {LINKTYPE_ETHERNET: "EN10MB", LINKTYPE_RAW: "RAW", LINKTYPE_LINUX_SLL: "LINUX_SLL"}


class Packet(NamedTuple):
    data: bytes
    wirelen: int
    sec: int
    frac: int  # microseconds or nanoseconds (or pcapng ticks below the second)
    linktype: int = LINKTYPE_ETHERNET


def mix(n: int, seed: int = 1, nano: bool = False) -> list[Packet]:
    """packetmix frames (about 4% captured shorter than their wire length), 1.37 ms apart."""
    step = 1_370_011 if nano else 1_370
    units = 10**9 if nano else 10**6
    return [Packet(data, wire, US_BASE + (i * step) // units, (i * step) % units)
            for i, (data, wire) in enumerate(packetmix.generate_list(n, seed=seed))]  # fmt: skip


def raw_ip(packet: bytes) -> bytes:
    """The IP packet inside an Ethernet frame (or the frame, for non-IP ones)."""
    return packet[14:]


def linux_sll(packet: bytes) -> bytes:
    """An Ethernet frame re-framed as Linux cooked capture (LINKTYPE_LINUX_SLL)."""
    return struct.pack("!HHH8sH", 0, 1, 6, packet[6:12] + b"\0\0", struct.unpack("!H", packet[12:14])[0]) + packet[14:]


def accepted_by_libpcap(expression: str | None, packets: list[Packet]) -> list[bool]:
    if expression is None:
        return [True] * len(packets)
    programs: dict[int, Any] = {}
    verdicts = []
    for p in packets:
        if p.linktype not in programs:
            program = libpcap.compile_expression(expression, DLT[p.linktype], netmask=0)
            programs[p.linktype] = libpcap.LibpcapProgram(program)
        verdicts.append(programs[p.linktype].matches(p.data, p.wirelen))
    return verdicts


# -- writers (scapy for pcap and little-endian pcapng, dpkt for big-endian pcapng) -------------------------
def write_pcap(path: Path, packets: list[Packet], order: str = "<", nano: bool = False, linktype: int = 1,
               snaplen: int = 262144) -> None:  # fmt: skip
    from scapy.utils import RawPcapWriter

    writer = RawPcapWriter(str(path), linktype=linktype, endianness=order, nano=nano, snaplen=snaplen, sync=False)
    writer.write_header(None)
    for p in packets:
        writer.write_packet(p.data, sec=p.sec, usec=p.frac, caplen=len(p.data), wirelen=p.wirelen)
    writer.close()


def pcap_records(data: bytes, order: str = "<") -> tuple[bytes, list[bytes]]:
    """A classic pcap file split into its header and its records (16-byte header + captured bytes)."""
    records, pos = [], 24
    while pos < len(data):
        caplen = struct.unpack_from(order + "I", data, pos + 8)[0]
        records.append(data[pos : pos + 16 + caplen])
        pos += 16 + caplen
    return data[:24], records


def write_pcapng(path: Path, packets: list[Packet], interfaces: dict[int, int] | None = None) -> None:
    """Little-endian pcapng (scapy): one IDB per link type among `packets` (interface i = i-th link type)."""
    from scapy.utils import RawPcapNgWriter

    linktypes = list(dict.fromkeys(p.linktype for p in packets))
    writer = RawPcapNgWriter(str(path))
    writer.linktype = linktypes[0]
    writer.write_header(None)
    names = {t: (None if i == 0 else f"if{i}".encode()) for i, t in enumerate(linktypes)}
    for p in packets:
        writer._write_packet(p.data, p.linktype, sec=p.sec + p.frac / 10**6, caplen=len(p.data), wirelen=p.wirelen,
                             ifname=names[p.linktype])  # fmt: skip
    writer.close()


def pcapng_blocks(data: bytes) -> list[tuple[int, bytes]]:
    """(type, bytes) of each block of a pcapng file, by the spec (each section's byte-order magic)."""
    blocks, pos, order = [], 0, "<"
    while pos < len(data):
        btype = struct.unpack_from("<I", data, pos)[0]
        if btype == 0x0A0D0D0A:
            order = "<" if data[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
        else:
            btype = struct.unpack_from(order + "I", data, pos)[0]
        length = struct.unpack_from(order + "I", data, pos + 4)[0]
        blocks.append((btype, data[pos : pos + length]))
        pos += length
    return blocks


def expected_pcapng_output(data: bytes, verdicts: list[bool]) -> bytes:
    """Every non-packet block, and the packet blocks whose verdict is True, in file order."""
    kept, packets = [], iter(verdicts)
    for btype, block in pcapng_blocks(data):
        if btype not in (2, 3, 6) or next(packets):
            kept.append(block)
    assert next(packets, None) is None
    return b"".join(kept)


def scapy_read(path: Path) -> list[tuple[float, bytes, int]]:
    """(timestamp, data, wirelen) of each packet as scapy's raw readers see them."""
    from scapy.utils import RawPcapNgReader, RawPcapReader

    out = []
    with open(path, "rb") as f:
        ng = f.read(4) == b"\x0a\x0d\x0d\x0a"
    if ng:
        for data, meta in RawPcapNgReader(str(path)):
            out.append((((meta.tshigh << 32) | meta.tslow) / meta.tsresol, data, meta.wirelen))
    else:
        reader = RawPcapReader(str(path))
        units = 10**9 if reader.nano else 10**6
        for data, meta in reader:
            out.append((meta.sec + meta.usec / units, data, meta.wirelen))
        reader.close()
    return out


def mixed_link_types(n: int, seed: int) -> list[Packet]:
    """Ethernet frames, every third one as raw IP and every third as Linux cooked (SLL)."""
    packets = []
    for i, p in enumerate(mix(n, seed=seed)):
        if i % 3 == 1 and len(p.data) > 14 and p.data[12:14] in (b"\x08\x00", b"\x86\xdd"):
            p = p._replace(data=raw_ip(p.data), wirelen=p.wirelen - 14, linktype=LINKTYPE_RAW)
        elif i % 3 == 2 and len(p.data) >= 14:
            p = p._replace(data=linux_sll(p.data), wirelen=p.wirelen + 2, linktype=LINKTYPE_LINUX_SLL)
        packets.append(p)
    return packets
