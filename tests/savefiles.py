"""Captures of many link types, written here byte by byte, and libpcap's own reading of a capture.

Frames are built per link type from a handful of IP/ARP packets (`frames`), so that every expression
of the agreement corpus has packets to keep and to drop on every link type; the writers take any
byte order, timestamp precision, snaplen and thiszone/sigfigs (classic pcap) and several interfaces
and an SPB (pcapng). `libpcap_records` reads a file through libpcap (`pcap_open_offline`, microsecond
precision), which is how the tests compare bpfjit's output with tcpdump's: packet for packet.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path
from typing import NamedTuple

from bpfjit import libpcap

# LINKTYPE_* values (what a file stores) of the link types the corpus covers
LINKTYPES = {"EN10MB": 1, "LINUX_SLL": 113, "LINUX_SLL2": 276, "RAW": 101, "NULL": 0, "LOOP": 108, "IPV4": 228,
             "IPV6": 229, "PPP": 9, "IEEE802_11_RADIO": 127}  # fmt: skip
US_BASE = 1_700_000_000


def _checksum_free_ipv4(proto: int, payload: bytes, src: bytes, dst: bytes, frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0, src, dst) + payload


def _ipv6(next_header: int, payload: bytes, src: bytes, dst: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, 64, src, dst) + payload


def _udp(sport: int, dport: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def _tcp(sport: int, dport: int, flags: int = 0x02, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 8192, 0, 0) + data


A1, A2, BCAST = bytes([192, 168, 0, 1]), bytes([10, 1, 2, 3]), bytes([255, 255, 255, 255])
B1 = bytes.fromhex("20010db8000000000000000000000001")
B2 = bytes.fromhex("20010db8000000000000000000000002")


class Payload(NamedTuple):
    """A network-layer packet: 'ip', 'ip6' or 'arp', and its bytes."""

    kind: str
    data: bytes


PAYLOADS = [
    Payload("ip", _checksum_free_ipv4(17, _udp(5353, 53, b"q" * 20), A1, A2)),
    Payload("ip", _checksum_free_ipv4(6, _tcp(40000, 443), A2, A1)),
    Payload("ip", _checksum_free_ipv4(6, _tcp(80, 40001, 0x12, b"x" * 300), A1, A2)),
    Payload("ip", _checksum_free_ipv4(1, b"\x08\x00" + bytes(30), A2, A1)),
    Payload("ip", _checksum_free_ipv4(17, _udp(68, 67, bytes(200)), A1, BCAST)),
    Payload("ip", _checksum_free_ipv4(17, _udp(1000, 2000), A1, A2, frag=0x2000 | 185)),  # a fragment
    Payload("ip6", _ipv6(17, _udp(5353, 53, b"q" * 20), B1, B2)),
    Payload("ip6", _ipv6(6, _tcp(40000, 443), B2, B1)),
    Payload("ip6", _ipv6(58, b"\x80\x00" + bytes(14), B1, B2)),
    Payload("ip6", _ipv6(6, _tcp(443, 40002, 0x10, b"y" * 600), B1, B2)),
    Payload("arp", struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes(6), A1, bytes(6), A2)),
]
ETHERTYPES = {"ip": 0x0800, "ip6": 0x86DD, "arp": 0x0806}
MAC1, MAC2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def frames(name: str, order: str) -> list[bytes]:
    """The PAYLOADS framed for link type `name` (a file of byte order `order`: DLT_NULL's header)."""
    out = []
    for index, (kind, data) in enumerate(PAYLOADS):
        ethertype = ETHERTYPES[kind]
        outgoing = index % 3 == 0  # direction and interface qualifiers have something to tell apart
        if name == "EN10MB":
            if index == 2:  # one VLAN-tagged frame
                out.append(MAC2 + MAC1 + struct.pack("!HHH", 0x8100, 7, ethertype) + data)
            else:
                out.append((b"\xff" * 6 if index == 4 else MAC2) + MAC1 + struct.pack("!H", ethertype) + data)
        elif name == "LINUX_SLL":
            out.append(struct.pack("!HHH8sH", 4 if outgoing else 0, 1, 6, MAC1 + bytes(2), ethertype) + data)
        elif name == "LINUX_SLL2":
            ifindex = 3 if outgoing else 2
            pkttype = 4 if outgoing else 0
            out.append(struct.pack("!HHIHBB8s", ethertype, 0, ifindex, 1, pkttype, 6, MAC1 + bytes(2)) + data)
        elif kind == "arp" and name not in ("PPP", "IEEE802_11_RADIO"):
            continue  # no ARP on IP-only link types
        elif name in ("RAW", "IPV4", "IPV6"):
            if (name == "IPV4" and kind != "ip") or (name == "IPV6" and kind != "ip6"):
                continue
            out.append(data)
        elif name in ("NULL", "LOOP"):
            families = (10, 24, 28, 30)  # AF_INET6 of Linux, NetBSD/OpenBSD, FreeBSD, Darwin
            family = 2 if kind == "ip" else families[index % 4]
            out.append(struct.pack((order if name == "NULL" else ">") + "I", family) + data)
        elif name == "PPP":
            protocol = {"ip": 0x0021, "ip6": 0x0057, "arp": 0x8021}[kind]
            out.append(struct.pack("!BBH", 0xFF, 0x03, protocol) + data)
        elif name == "IEEE802_11_RADIO":
            radiotap = struct.pack("<BBHI", 0, 0, 8, 0)
            header = struct.pack("<HH6s6s6sH", 0x0208, 0, MAC2, MAC1, MAC1, 0)  # data frame, from DS
            out.append(radiotap + header + bytes.fromhex("aaaa03000000") + struct.pack("!H", ethertype) + data)
        else:
            raise ValueError(name)
    return out


# -- writers ------------------------------------------------------------------------------------------------
class Record(NamedTuple):
    data: bytes  # what the record holds (its caplen is len(data) unless `caplen` says otherwise)
    wirelen: int
    sec: int
    frac: int  # microseconds, nanoseconds, or pcapng ticks of the interface's resolution
    iface: int = 0


def records(datas: list[bytes], nano: bool, interfaces: int = 1) -> list[Record]:
    step = 1_234_567 if nano else 1_234
    units = 10**9 if nano else 10**6
    return [Record(d, len(d) + (7 if i % 5 == 4 else 0), US_BASE + (i * step) // units, (i * step) % units,
                   i % interfaces) for i, d in enumerate(datas)]  # fmt: skip


def pcap_bytes(recs: list[Record], linktype: int, order: str = "<", nano: bool = False, snaplen: int = 262144,
               thiszone: int = 0, sigfigs: int = 0, caplens: dict[int, int] | None = None) -> bytes:  # fmt: skip
    """A classic pcap file; `caplens` overrides a record's stated caplen (a corrupt header)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, thiszone, sigfigs, snaplen, linktype)]
    for i, r in enumerate(recs):
        caplen = (caplens or {}).get(i, len(r.data))
        out.append(struct.pack(order + "IIII", r.sec, r.frac, caplen, max(r.wirelen, len(r.data))) + r.data)
    return b"".join(out)


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack(order + "II", btype, 12 + len(body)) + body + struct.pack(order + "I", 12 + len(body))


def pcapng_bytes(recs: list[Record], linktype: int, order: str = "<", nano: bool = False, interfaces: int = 1,
                 snaplen: int = 262144, spb: bool = False, caplens: dict[int, int] | None = None) -> bytes:  # fmt: skip
    """A pcapng file of one section: `interfaces` IDBs of one link type and snaplen, the records as
    EPBs (and, if `spb`, the first record of interface 0 as an SPB)."""
    out = [_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    options = struct.pack(order + "HHB3x", 9, 1, 9) + struct.pack(order + "HH", 0, 0) if nano else b""
    for _ in range(interfaces):
        out.append(_block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options))
    units = 10**9 if nano else 10**6
    for i, r in enumerate(recs):
        if spb and i == 0 and r.iface == 0:
            out.append(_block(order, 3, struct.pack(order + "I", max(r.wirelen, len(r.data))) + r.data))
            continue
        ticks = r.sec * units + r.frac
        caplen = (caplens or {}).get(i, len(r.data))
        wirelen = max(r.wirelen, len(r.data))
        body = struct.pack(order + "IIIII", r.iface, ticks >> 32, ticks & 0xFFFFFFFF, caplen, wirelen)
        out.append(_block(order, 6, body + r.data))
    return b"".join(out)


# -- libpcap's reading ------------------------------------------------------------------------------------------
class Read(NamedTuple):
    """A capture as libpcap reads it: (seconds, microseconds, caplen, len, data) per packet, and the
    error that stopped the reading ("" at a clean end)."""

    packets: list[tuple[int, int, int, int, bytes]]
    error: str


def libpcap_records(path: Path) -> Read:
    lib = libpcap.library()
    open_offline = lib["pcap_open_offline"]
    open_offline.restype, open_offline.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
    next_ex = lib["pcap_next_ex"]
    next_ex.restype = ctypes.c_int
    next_ex.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(libpcap.pcap_pkthdr)),
                        ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte))]  # fmt: skip
    errbuf = ctypes.create_string_buffer(libpcap.PCAP_ERRBUF_SIZE)
    handle = open_offline(str(path).encode(), errbuf)
    if not handle:
        return Read([], errbuf.value.decode())
    packets = []
    header = ctypes.POINTER(libpcap.pcap_pkthdr)()
    data = ctypes.POINTER(ctypes.c_ubyte)()
    try:
        while (status := next_ex(handle, ctypes.byref(header), ctypes.byref(data))) == 1:
            h = header.contents
            packets.append((h.ts.tv_sec, h.ts.tv_usec, h.caplen, h.len, ctypes.string_at(data, h.caplen)))
        error = "" if status == -2 else (lib.pcap_geterr(handle) or b"").decode()
    finally:
        lib.pcap_close(handle)
    return Read(packets, error)
