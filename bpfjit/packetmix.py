"""A deterministic, seeded mix of Ethernet frames, built with numpy: the input of benchmarks and demos.

    batch = packetmix.generate(100_000, seed=1)         # a Batch (with wirelens), ~35 MB
    packets = packetmix.to_list(batch)                  # [(bytes, wirelen), ...] for per-packet paths
    packetmix.write_pcap("mix.pcap", batch)             # a classic pcap file of the same frames

The mix (see `KINDS` for the exact shares): IPv4 TCP/UDP/ICMP with the usual ports (443, 80, 53,
123, 22, ...), HTTP GET requests, IPv4 with options, IPv4 fragments, IPv6 with hop-by-hop, routing,
fragment and destination-options headers, ICMPv6, ARP, 802.1Q and QinQ, LLDP; about 4% of the frames
are captured shorter than their wire length (caplen < wirelen), as with a small snap length.

How it is fast (1M frames in a few seconds): each kind of frame is a header template built for all
its packets at once as an (n, header_length) uint8 array whose columns (addresses, ports, lengths,
flags, checksums) are filled with vectorised draws; payloads are filler from a tiled random block.
Frames are shuffled (kinds interleaved at random), so branch predictors see a realistic stream.
The same (count, seed, truncated) gives the same bytes on any machine with the same numpy.
IPv4 header checksums are correct; TCP/UDP/ICMP checksums are left 0 (no filter reads them).
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .batch import Batch
from .program import DEFAULT_SNAPLEN

__all__ = [
    "BUSY_HOST",
    "BUSY_HOST6",
    "KINDS",
    "LOCAL_NET",
    "Kind",
    "generate",
    "generate_list",
    "generate_with_kinds",
    "to_list",
    "write_pcap",
]

U8 = npt.NDArray[np.uint8]
Ints = npt.NDArray[np.int64]

BUSY_HOST = "10.1.2.3"
"""A local IPv4 host that appears in about 5% of the IPv4 frames (for `host H` filters)."""
BUSY_HOST6 = "2001:db8:1::3"
"""Its IPv6 twin."""
LOCAL_NET = "10.1.0.0/16"
"""The network every IPv4 flow has one end in (the other is remote: public space or 192.168/16)."""
MIN_FRAME = 60  # Ethernet minimum without the FCS: shorter frames are zero-padded, as received ones are
FILLER_BLOCK = 1 << 20  # payload filler period (random bytes): copying it beats drawing 370 MB anew

ETH_IPV4, ETH_IPV6, ETH_ARP, ETH_VLAN, ETH_QINQ, ETH_LLDP = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8, 0x88CC
TCP, UDP, ICMP, IGMP, ICMPV6, ESP = 6, 17, 1, 2, 58, 50
IPV6_HOPOPTS, IPV6_ROUTING, IPV6_FRAGMENT, IPV6_DSTOPTS = 0, 43, 44, 60
# TCP flags as seen on a busy link: mostly ACKs and data, some handshakes, teardowns and resets.
TCP_FLAGS = ((0x10, 0.52), (0x18, 0.27), (0x02, 0.05), (0x12, 0.05), (0x11, 0.05), (0x04, 0.02),
             (0x14, 0.02), (0xC2, 0.01), (0x19, 0.01))  # fmt: skip
OTHER_TCP_PORTS = (21, 23, 25, 110, 143, 445, 993, 995, 3306, 3389, 5432, 6379, 8080, 8443)
OTHER_UDP_PORTS = (67, 137, 161, 500, 514, 1900, 3478, 4500, 5353)
RESOLVERS = tuple(int(ipaddress.IPv4Address(a)) for a in ("10.1.0.53", "8.8.8.8", "1.1.1.1"))
HTTP_GET = (
    b"GET /static/img/00000000.png HTTP/1.1\r\nHost: www.example.com\r\n"
    b"User-Agent: bpfjit-packetmix/1.0\r\nAccept: */*\r\n\r\n"
)
HTTP_GET_DIGITS = slice(16, 24)  # the 8 characters of the path varied per request
TRUNCATE_SNAPLENS = (54, 64, 68, 96, 128)  # typical small snap lengths (tcpdump -s)
PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
DEFAULT_START_NS = 1_700_000_000 * 10**9  # first timestamp when none are given (2023-11-14)
DEFAULT_SPACING_NS = 10_000  # then one frame every 10 µs


# -- columns -------------------------------------------------------------------------------------
def _be(values: npt.ArrayLike, width: int) -> U8:
    """(n,) integers as an (n, width) array of big-endian bytes."""
    array = np.asarray(values, dtype=np.uint64).astype(">u8")
    return array.view(np.uint8).reshape(-1, 8)[:, 8 - width :]


def _const(n: int, data: bytes) -> U8:
    return np.tile(np.frombuffer(data, dtype=np.uint8), (n, 1))


def _cat(*blocks: U8) -> U8:
    return np.ascontiguousarray(np.hstack(blocks))


class _Draw:
    """The random draws every kind shares: address pools, ports, directions, lengths."""

    def __init__(self, rng: np.random.Generator):
        self.rng = r = rng
        local = int(ipaddress.IPv4Address("10.1.0.0"))
        # 240 local hosts in 10.1.0-15.x; the busy host takes a fixed share on top of them.
        self.local4 = (local + r.integers(0, 16, 240) * 256 + r.integers(1, 255, 240)).astype(np.uint64)
        public = r.integers(int(ipaddress.IPv4Address("11.0.0.0")), int(ipaddress.IPv4Address("223.0.0.0")), 3000)
        private = int(ipaddress.IPv4Address("192.168.0.0")) + r.integers(0, 1 << 16, 400)
        self.remote4 = np.concatenate([public, private]).astype(np.uint64)
        self.busy4 = int(ipaddress.IPv4Address(BUSY_HOST))
        self.local6_prefix = ipaddress.IPv6Address("2001:db8:1::").packed[:8]
        self.busy6 = ipaddress.IPv6Address(BUSY_HOST6).packed
        self.macs = r.integers(0, 1 << 40, 64, dtype=np.uint64) | (0x02 << 40)  # locally administered
        self.gateway_mac = 0x02_00_5E_10_00_01

    # addresses
    def ipv4_pair(self, n: int) -> tuple[Ints, Ints]:
        """(local, remote) IPv4 addresses: the busy host is the local end of about 5% of flows."""
        local = self.rng.choice(self.local4, n)
        local[self.rng.random(n) < 0.05] = self.busy4
        return local.astype(np.int64), self.rng.choice(self.remote4, n).astype(np.int64)

    def ipv6_pair(self, n: int) -> tuple[U8, U8]:
        """(local, remote) IPv6 addresses as (n, 16) byte arrays: 2001:db8:1::/64 and 2001:db8:ffxx::/48."""
        local = _cat(_const(n, self.local6_prefix), self.rng.integers(0, 256, (n, 8), dtype=np.uint8))
        local[self.rng.random(n) < 0.05] = np.frombuffer(self.busy6, dtype=np.uint8)
        remote = _cat(_const(n, bytes.fromhex("20010db8ff")), self.rng.integers(0, 256, (n, 11), dtype=np.uint8))
        return local, remote

    def macs_pair(self, n: int) -> tuple[U8, U8]:
        host = self.rng.choice(self.macs, n)
        gateway = np.full(n, self.gateway_mac, dtype=np.uint64)
        outbound = self.rng.random(n) < 0.5
        return _be(np.where(outbound, gateway, host), 6), _be(np.where(outbound, host, gateway), 6)

    def direction(self, n: int) -> npt.NDArray[np.bool_]:
        """True where the packet goes client (local) -> server (remote)."""
        return self.rng.random(n) < 0.5

    # ports and lengths
    def pick(self, choices: Sequence[int], n: int, p: Sequence[float] | None = None) -> Ints:
        weights = None if p is None else np.asarray(p, dtype=float) / sum(p)
        return self.rng.choice(np.asarray(choices, dtype=np.int64), n, p=weights)

    def ephemeral(self, n: int) -> Ints:
        return self.rng.integers(32768, 61000, n)

    def tcp_payload(self, n: int, mss: int) -> Ints:
        """Bimodal, as on real links: zero (pure ACKs), full segments, or a short request/response."""
        u = self.rng.random(n)
        sizes = self.rng.integers(1, 640, n)
        return np.where(u < 0.53, 0, np.where(u < 0.69, mss, sizes))


@dataclass(frozen=True)
class Frames:
    """Headers of n frames of one kind (the same length for all), and each frame's payload length."""

    headers: U8
    payload: Ints


# -- layers --------------------------------------------------------------------------------------
def _ethernet(d: _Draw, n: int, ethertype: int, tags: Sequence[int] = (), dst: U8 | None = None) -> U8:
    """dst, src, then 802.1Q/802.1ad tags (TPID values in `tags`, random VLAN ids), then the type."""
    out_dst, src = d.macs_pair(n)
    parts = [out_dst if dst is None else dst, src]
    for tpid in tags:
        vid = d.pick((10, 20, 100, 200, 300, 4000), n)
        priority = d.rng.integers(0, 8, n) << 13
        parts += [_const(n, struct.pack("!H", tpid)), _be(priority | vid, 2)]
    parts.append(_const(n, struct.pack("!H", ethertype)))
    return _cat(*parts)


def _ipv4(
    d: _Draw, n: int, proto: int, length: Ints, src: Ints, dst: Ints,
    options: bytes = b"", frag: Ints | None = None, ttl: Ints | None = None,
) -> U8:  # fmt: skip
    """An IPv4 header with a correct checksum; `length` is what follows the header."""
    ihl = 5 + len(options) // 4
    if ttl is None:
        ttl = d.pick((64, 128, 255, 63, 127, 54, 117), n, (30, 25, 3, 15, 12, 8, 7))
    flags = np.full(n, 0x4000, dtype=np.int64) if frag is None else frag  # DF unless fragments
    tos = d.pick((0, 0x10, 0x28, 0xB8), n, (85, 5, 5, 5))
    header = _cat(
        _const(n, bytes([0x40 | ihl])), _be(tos, 1), _be(4 * ihl + length, 2), _be(d.rng.integers(0, 1 << 16, n), 2),
        _be(flags, 2), _be(ttl, 1), _const(n, bytes([proto, 0, 0])), _be(src, 4), _be(dst, 4), _const(n, options),
    )  # fmt: skip
    _set_checksum(header)
    return header


def _set_checksum(header: U8) -> None:
    """Fill in the IPv4 header checksum (bytes 10-11) of each row."""
    header[:, 10:12] = 0
    total = (header[:, 0::2].astype(np.uint32) << 8 | header[:, 1::2]).sum(axis=1)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    header[:, 10:12] = _be(~total & 0xFFFF, 2)


def _ipv6(d: _Draw, n: int, next_header: int, length: Ints, src: U8, dst: U8, hop_limit: int | None = None) -> U8:
    """An IPv6 header; `length` is the payload length (extension headers included)."""
    flow = d.rng.integers(0, 1 << 20, n)
    hops = d.pick((64, 255, 128, 57), n) if hop_limit is None else np.full(n, hop_limit)
    return _cat(_be((6 << 28) | flow, 4), _be(length, 2), _const(n, bytes([next_header])), _be(hops, 1), src, dst)


def _tcp(d: _Draw, n: int, sport: Ints, dport: Ints, flags: Ints | None = None, timestamps: bool = False) -> U8:
    """A TCP header, 20 bytes or 32 with the timestamps option (NOP, NOP, TS)."""
    if flags is None:
        values, weights = zip(*TCP_FLAGS, strict=True)
        flags = d.pick(values, n, weights)
    offset = 8 if timestamps else 5
    parts = [
        _be(sport, 2), _be(dport, 2), _be(d.rng.integers(0, 1 << 32, n), 4), _be(d.rng.integers(0, 1 << 32, n), 4),
        _const(n, bytes([offset << 4])), _be(flags, 1), _be(d.rng.integers(512, 65536, n), 2), _const(n, bytes(4)),
    ]  # fmt: skip
    if timestamps:
        tsval, tsecr = d.rng.integers(0, 1 << 32, (2, n))
        parts += [_const(n, b"\x01\x01\x08\x0a"), _be(tsval, 4), _be(tsecr, 4)]
    return _cat(*parts)


def _segment(d: _Draw, n: int, sport: Ints, dport: Ints, mss: int, timestamps: bool = False) -> tuple[U8, Ints]:
    """A TCP header and its payload length, consistent: no data on SYNs and RSTs, PSH only with data."""
    tcp = _tcp(d, n, sport, dport, timestamps=timestamps)
    payload = d.tcp_payload(n, mss - (12 if timestamps else 0))
    payload[(tcp[:, 13] & 0x06) != 0] = 0
    tcp[payload == 0, 13] &= ~np.uint8(0x08)
    return tcp, payload


def _udp(n: int, sport: Ints, dport: Ints, payload: Ints) -> U8:
    return _cat(_be(sport, 2), _be(dport, 2), _be(8 + payload, 2), _const(n, bytes(2)))


def _endpoints(d: _Draw, n: int, server_ports: Ints, src: Any, dst: Any) -> tuple[Any, Any, Ints, Ints]:
    """Orient flows at random: client -> server (local client) or server -> client."""
    client = d.ephemeral(n)
    out = d.direction(n)
    mask = out if np.ndim(src) == 1 else out[:, None]
    return (
        np.where(mask, src, dst), np.where(mask, dst, src),
        np.where(out, client, server_ports), np.where(out, server_ports, client),
    )  # fmt: skip


# -- kinds ---------------------------------------------------------------------------------------
Build = Callable[[_Draw, int], Frames]


@dataclass(frozen=True)
class Kind:
    """One kind of frame in the mix and its share (weights are relative)."""

    name: str
    weight: float
    build: Build


Weights = Sequence[float] | None


def _tcp4(ports: Sequence[int], port_weights: Weights, timestamps: bool, tags: Sequence[int] = ()) -> Build:
    def build(d: _Draw, n: int) -> Frames:
        local, remote = d.ipv4_pair(n)
        src, dst, sport, dport = _endpoints(d, n, d.pick(ports, n, port_weights), local, remote)
        tcp, payload = _segment(d, n, sport, dport, 1460, timestamps)
        ip = _ipv4(d, n, TCP, tcp.shape[1] + payload, src, dst)
        return Frames(_cat(_ethernet(d, n, ETH_IPV4, tags), ip, tcp), payload)

    return build


def _tcp6(ports: Sequence[int], port_weights: Weights, tags: Sequence[int] = ()) -> Build:
    def build(d: _Draw, n: int) -> Frames:
        local, remote = d.ipv6_pair(n)
        src, dst, sport, dport = _endpoints(d, n, d.pick(ports, n, port_weights), local, remote)
        tcp, payload = _segment(d, n, sport, dport, 1440, timestamps=True)
        ip = _ipv6(d, n, TCP, tcp.shape[1] + payload, src, dst)
        return Frames(_cat(_ethernet(d, n, ETH_IPV6, tags), ip, tcp), payload)

    return build


def _http_get(timestamps: bool) -> Build:
    """Client -> server requests on port 80 (some 8080), the payload starting with `GET `; with
    timestamps the TCP header is 32 bytes, so only `tcp[12] >> 2` finds the payload."""

    def build(d: _Draw, n: int) -> Frames:
        local, remote = d.ipv4_pair(n)
        tcp = _tcp(d, n, d.ephemeral(n), d.pick((80, 8080), n, (9, 1)), np.full(n, 0x18), timestamps=timestamps)
        request = _const(n, HTTP_GET)
        request[:, HTTP_GET_DIGITS] = d.rng.choice(np.frombuffer(b"0123456789abcdef", dtype=np.uint8), (n, 8))
        ip = _ipv4(d, n, TCP, np.full(n, tcp.shape[1] + len(HTTP_GET)), local, remote)
        return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip, tcp, request), np.zeros(n, dtype=np.int64))

    return build


def _udp4(ports: Sequence[int], port_weights: Weights, sizes: tuple[int, int], tags: Sequence[int] = ()) -> Build:
    def build(d: _Draw, n: int) -> Frames:
        local, remote = d.ipv4_pair(n)
        src, dst, sport, dport = _endpoints(d, n, d.pick(ports, n, port_weights), local, remote)
        payload = d.rng.integers(sizes[0], sizes[1] + 1, n)
        ip = _ipv4(d, n, UDP, 8 + payload, src, dst)
        return Frames(_cat(_ethernet(d, n, ETH_IPV4, tags), ip, _udp(n, sport, dport, payload)), payload)

    return build


def _dns4(d: _Draw, n: int) -> Frames:
    """Queries (client -> resolver) and responses, with a DNS header (id, flags, one question)."""
    local, _ = d.ipv4_pair(n)
    resolvers = d.pick(RESOLVERS, n)
    query = d.direction(n)
    src, dst = np.where(query, local, resolvers), np.where(query, resolvers, local)
    client = d.ephemeral(n)
    sport, dport = np.where(query, client, 53), np.where(query, 53, client)
    payload = np.where(query, d.rng.integers(28, 64, n), d.rng.integers(60, 320, n))
    answers = np.where(query, 0, d.rng.integers(1, 6, n))
    flags = np.where(query, 0x0100, 0x8180)
    ident = d.rng.integers(0, 1 << 16, n)
    dns = _cat(_be(ident, 2), _be(flags, 2), _const(n, b"\x00\x01"), _be(answers, 2), _const(n, bytes(4)))
    ip = _ipv4(d, n, UDP, 8 + payload, src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip, _udp(n, sport, dport, payload), dns), payload - dns.shape[1])


def _ntp4(d: _Draw, n: int) -> Frames:
    """NTP: 48-byte messages, between 123 and 123 (servers) or an ephemeral port and 123 (clients)."""
    local, remote = d.ipv4_pair(n)
    server_to_server = d.rng.random(n) < 0.4
    src, dst, sport, dport = _endpoints(d, n, np.full(n, 123), local, remote)
    sport = np.where(server_to_server, 123, sport)
    dport = np.where(server_to_server, 123, dport)
    mode = _be(np.where(dport == 123, 0x23, 0x24), 1)  # version 4, client or server mode
    ip = _ipv4(d, n, UDP, np.full(n, 8 + 48), src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip, _udp(n, sport, dport, np.full(n, 48)), mode), np.full(n, 47))


def _icmp4(d: _Draw, n: int) -> Frames:
    """Echo requests and replies (56 bytes of data) and some port unreachables."""
    local, remote = d.ipv4_pair(n)
    kind = d.pick((0x0800, 0x0000, 0x0303, 0x0B00), n, (40, 40, 15, 5))  # type << 8 | code
    out = d.direction(n)
    src, dst = np.where(out, local, remote), np.where(out, remote, local)
    payload = np.where(kind >= 0x0300, 28, 56)
    icmp = _cat(_be(kind, 2), _const(n, bytes(2)), _be(d.rng.integers(0, 1 << 32, n), 4))
    ip = _ipv4(d, n, ICMP, 8 + payload, src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip, icmp), payload)


def _igmp_router_alert(d: _Draw, n: int) -> Frames:
    """IGMPv2 reports to 224.0.0.x with the IPv4 router-alert option (IHL 6)."""
    local, _ = d.ipv4_pair(n)
    group = int(ipaddress.IPv4Address("224.0.0.0")) + d.pick((22, 251, 252, 2), n)
    igmp = _cat(_const(n, b"\x16\x00\x00\x00"), _be(group, 4))
    ip = _ipv4(d, n, IGMP, np.full(n, 8), local, group, options=b"\x94\x04\x00\x00", ttl=np.full(n, 1))
    dst = _be(0x01005E000000 | (group & 0x7FFFFF), 6)
    return Frames(_cat(_ethernet(d, n, ETH_IPV4, dst=dst), ip, igmp), np.zeros(n, dtype=np.int64))


def _tcp4_options(d: _Draw, n: int) -> Frames:
    """TCP over IPv4 with 12 bytes of options (record route, NOP): the TCP header starts at 46."""
    local, remote = d.ipv4_pair(n)
    src, dst, sport, dport = _endpoints(d, n, d.pick((80, 443, 22), n, (4, 4, 2)), local, remote)
    tcp, payload = _segment(d, n, sport, dport, 1448)
    ip = _ipv4(d, n, TCP, tcp.shape[1] + payload, src, dst, options=b"\x07\x0b\x04" + bytes(8) + b"\x01")
    return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip, tcp), payload)


def _fragment4_first(d: _Draw, n: int) -> Frames:
    """First fragments (MF set, offset 0) of large UDP datagrams, the UDP header present."""
    local, remote = d.ipv4_pair(n)
    src, dst, sport, dport = _endpoints(d, n, d.pick((53, 4500, 443, 2049), n), local, remote)
    payload = np.full(n, 1472)
    ip = _ipv4(d, n, UDP, 8 + payload, src, dst, frag=np.full(n, 0x2000))
    udp = _udp(n, sport, dport, payload + d.rng.integers(8, 3000, n))  # the whole datagram's length
    return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip, udp), payload)


def _fragment4_later(d: _Draw, n: int) -> Frames:
    """Later fragments (offset > 0): no transport header, whatever the protocol field says."""
    local, remote = d.ipv4_pair(n)
    proto = d.pick((UDP, TCP), n, (8, 2))
    offset = d.rng.integers(1, 8, n) * 185  # in 8-byte units: multiples of 1480 bytes
    more = np.where(d.rng.random(n) < 0.5, 0x2000, 0)
    payload = d.rng.integers(8, 1481, n)
    out = d.direction(n)
    src, dst = np.where(out, local, remote), np.where(out, remote, local)
    ip = _ipv4(d, n, 0, payload, src, dst, frag=more | offset)
    ip[:, 9] = proto
    _set_checksum(ip)
    return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip), payload)


def _esp4(d: _Draw, n: int) -> Frames:
    """IPsec ESP (protocol 50): neither TCP nor UDP nor ICMP."""
    local, remote = d.ipv4_pair(n)
    out = d.direction(n)
    payload = d.rng.integers(60, 1400, n)
    esp = _cat(_be(d.rng.integers(1, 1 << 32, n), 4), _be(d.rng.integers(1, 1 << 32, n), 4))
    ip = _ipv4(d, n, ESP, 8 + payload, np.where(out, local, remote), np.where(out, remote, local))
    return Frames(_cat(_ethernet(d, n, ETH_IPV4), ip, esp), payload)


def _udp6(d: _Draw, n: int) -> Frames:
    local, remote = d.ipv6_pair(n)
    src, dst, sport, dport = _endpoints(d, n, d.pick((53, 443, 123), n, (5, 4, 1)), local, remote)
    payload = d.rng.integers(24, 1300, n)
    ip = _ipv6(d, n, UDP, 8 + payload, src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV6), ip, _udp(n, sport, dport, payload)), payload)


def _icmp6(d: _Draw, n: int) -> Frames:
    """Echo request/reply (128/129) and neighbour solicitations (135, hop limit 255)."""
    local, remote = d.ipv6_pair(n)
    kind = d.pick((128, 129, 135), n, (4, 4, 2))
    icmp = _cat(_be(kind, 1), _const(n, bytes(3)), _be(d.rng.integers(0, 1 << 32, n), 4))
    payload = np.where(kind == 135, 24, 56)
    ip = _ipv6(d, n, ICMPV6, 8 + payload, local, remote)
    ip[kind == 135, 7] = 255
    return Frames(_cat(_ethernet(d, n, ETH_IPV6), ip, icmp), payload)


def _mld_hop_by_hop(d: _Draw, n: int) -> Frames:
    """MLDv2 reports (ICMPv6 143) behind a hop-by-hop header with the router-alert option."""
    local, _ = d.ipv6_pair(n)
    local[:, :8] = np.frombuffer(bytes.fromhex("fe80000000000000"), dtype=np.uint8)
    dst = _const(n, ipaddress.IPv6Address("ff02::16").packed)
    hbh = _const(n, bytes([ICMPV6, 0, 5, 2, 0, 0, 1, 0]))  # router alert (MLD), PadN
    record = bytes([4, 0, 0, 0]) + ipaddress.IPv6Address("ff02::2").packed  # "exclude none" for ff02::2
    mld = _const(n, bytes([143, 0, 0, 0, 0, 0, 0, 1]) + record)
    ip = _ipv6(d, n, IPV6_HOPOPTS, np.full(n, 8 + mld.shape[1]), local, dst, hop_limit=1)
    ethernet = _ethernet(d, n, ETH_IPV6, dst=_const(n, bytes.fromhex("333300000016")))
    return Frames(_cat(ethernet, ip, hbh, mld), np.zeros(n, dtype=np.int64))


def _routing6_tcp(d: _Draw, n: int) -> Frames:
    """TCP behind a segment routing header (routing type 4, one segment)."""
    local, remote = d.ipv6_pair(n)
    src, dst, sport, dport = _endpoints(d, n, d.pick((443, 80), n), local, remote)
    srh = _cat(_const(n, bytes([TCP, 2, 4, 0, 0, 0, 0, 0])), dst)
    tcp, payload = _segment(d, n, sport, dport, 1380)
    ip = _ipv6(d, n, IPV6_ROUTING, srh.shape[1] + tcp.shape[1] + payload, src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV6), ip, srh, tcp), payload)


def _fragment6_udp(d: _Draw, n: int) -> Frames:
    """Fragmented UDP: first fragments carry the UDP header, later ones (offset > 0) do not."""
    local, remote = d.ipv6_pair(n)
    src, dst, sport, dport = _endpoints(d, n, d.pick((53, 443, 4789), n), local, remote)
    first = d.rng.random(n) < 0.5
    offset = np.where(first, 0, d.rng.integers(1, 5, n) * 1448)  # bytes, a multiple of 8
    more = np.where(first | (d.rng.random(n) < 0.5), 1, 0)
    frag = _cat(_const(n, bytes([UDP, 0])), _be(offset | more, 2), _be(d.rng.integers(0, 1 << 32, n), 4))
    data = d.rng.integers(0, 256, (n, 8), dtype=np.uint8)
    udp = np.where(first[:, None], _udp(n, sport, dport, np.full(n, 2000)), data)
    payload = np.where(first, 1440, d.rng.integers(16, 1440, n))
    ip = _ipv6(d, n, IPV6_FRAGMENT, 16 + payload, src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV6), ip, frag, udp.astype(np.uint8)), payload)


def _dstopts6_tcp(d: _Draw, n: int) -> Frames:
    """TCP behind a destination-options header (8 bytes of padding options)."""
    local, remote = d.ipv6_pair(n)
    src, dst, sport, dport = _endpoints(d, n, d.pick((80, 443, 22), n), local, remote)
    opts = _const(n, bytes([TCP, 0, 1, 4, 0, 0, 0, 0]))
    tcp, payload = _segment(d, n, sport, dport, 1400)
    ip = _ipv6(d, n, IPV6_DSTOPTS, 8 + tcp.shape[1] + payload, src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV6), ip, opts, tcp), payload)


def _ext_chain6_udp(d: _Draw, n: int) -> Frames:
    """UDP behind hop-by-hop, then destination options: two extension headers to walk."""
    local, remote = d.ipv6_pair(n)
    src, dst, sport, dport = _endpoints(d, n, d.pick((53, 123, 443), n), local, remote)
    chain = _const(n, bytes([IPV6_DSTOPTS, 0, 1, 4, 0, 0, 0, 0, UDP, 0, 1, 4, 0, 0, 0, 0]))
    payload = d.rng.integers(24, 512, n)
    ip = _ipv6(d, n, IPV6_HOPOPTS, 16 + 8 + payload, src, dst)
    return Frames(_cat(_ethernet(d, n, ETH_IPV6), ip, chain, _udp(n, sport, dport, payload)), payload)


def _arp(tags: Sequence[int] = ()) -> Build:
    def build(d: _Draw, n: int) -> Frames:
        local, _ = d.ipv4_pair(n)
        target, _ = d.ipv4_pair(n)
        request = d.rng.random(n) < 0.7
        sender_mac, target_mac = d.macs_pair(n)
        dst = np.where(request[:, None], np.uint8(0xFF), target_mac)
        body = _cat(_const(n, b"\x00\x01\x08\x00\x06\x04\x00"), _be(np.where(request, 1, 2), 1), sender_mac,
                    _be(local, 4), np.where(request[:, None], np.uint8(0), target_mac), _be(target, 4))  # fmt: skip
        return Frames(_cat(_ethernet(d, n, ETH_ARP, tags, dst=dst), body), np.zeros(n, dtype=np.int64))

    return build


def _lldp(d: _Draw, n: int) -> Frames:
    """LLDP announcements to the nearest-bridge address."""
    dst = _const(n, bytes.fromhex("0180c200000e"))
    return Frames(_ethernet(d, n, ETH_LLDP, dst=dst), d.rng.integers(40, 300, n))


_HTTPS_WEB = ((443, 80), (85, 15))
KINDS: tuple[Kind, ...] = (
    Kind("ipv4-tcp-443", 17.0, _tcp4((443,), None, timestamps=False)),
    Kind("ipv4-tcp-443-ts", 11.0, _tcp4((443,), None, timestamps=True)),
    Kind("ipv4-tcp-80", 5.0, _tcp4((80,), None, timestamps=False)),
    Kind("ipv4-tcp-80-ts", 3.0, _tcp4((80,), None, timestamps=True)),
    Kind("ipv4-tcp-http-get", 1.5, _http_get(timestamps=False)),
    Kind("ipv4-tcp-http-get-ts", 1.0, _http_get(timestamps=True)),
    Kind("ipv4-tcp-22", 3.0, _tcp4((22,), None, timestamps=True)),
    Kind("ipv4-tcp-other", 6.0, _tcp4(OTHER_TCP_PORTS, None, timestamps=False)),
    Kind("ipv4-udp-53", 6.0, _dns4),
    Kind("ipv4-udp-123", 1.5, _ntp4),
    Kind("ipv4-udp-443", 5.0, _udp4((443,), None, (24, 1350))),
    Kind("ipv4-udp-other", 2.5, _udp4(OTHER_UDP_PORTS, None, (20, 600))),
    Kind("ipv4-icmp", 1.5, _icmp4),
    Kind("ipv4-options-igmp", 0.5, _igmp_router_alert),
    Kind("ipv4-options-tcp", 0.5, _tcp4_options),
    Kind("ipv4-fragment-first", 0.7, _fragment4_first),
    Kind("ipv4-fragment-later", 0.8, _fragment4_later),
    Kind("ipv4-esp", 0.5, _esp4),
    Kind("ipv6-tcp", 7.0, _tcp6((443, 80, 22), (70, 20, 10))),
    Kind("ipv6-udp", 3.0, _udp6),
    Kind("ipv6-icmp6", 1.5, _icmp6),
    Kind("ipv6-hopopts-mld", 0.4, _mld_hop_by_hop),
    Kind("ipv6-routing-tcp", 0.4, _routing6_tcp),
    Kind("ipv6-fragment-udp", 0.5, _fragment6_udp),
    Kind("ipv6-dstopts-tcp", 0.3, _dstopts6_tcp),
    Kind("ipv6-hopopts-dstopts-udp", 0.3, _ext_chain6_udp),
    Kind("arp", 2.0, _arp()),
    Kind("vlan-ipv4-tcp", 3.0, _tcp4(*_HTTPS_WEB, timestamps=False, tags=(ETH_VLAN,))),
    Kind("vlan-ipv4-udp", 1.0, _udp4((53, 123, 443), (5, 2, 3), (28, 400), tags=(ETH_VLAN,))),
    Kind("vlan-ipv6-tcp", 0.5, _tcp6(*_HTTPS_WEB, tags=(ETH_VLAN,))),
    Kind("vlan-arp", 0.3, _arp((ETH_VLAN,))),
    Kind("qinq-ipv4-tcp", 0.7, _tcp4(*_HTTPS_WEB, timestamps=False, tags=(ETH_QINQ, ETH_VLAN))),
    Kind("qinq-ipv4-udp", 0.3, _udp4((53, 443), None, (28, 400), tags=(ETH_QINQ, ETH_VLAN))),
    Kind("lldp", 0.3, _lldp),
)
"""The kinds of frame in the mix, with relative weights (a kind's share is weight / total)."""


# -- assembly ------------------------------------------------------------------------------------
def _truncate(rng: np.random.Generator, wirelens: Ints, share: float) -> Ints:
    """caplens: wirelens, except `share` of the frames cut short (half at a typical snap length)."""
    caplens = wirelens.copy()
    cut = np.flatnonzero(rng.random(len(wirelens)) < share)
    wire = wirelens[cut]
    snap = rng.choice(np.asarray(TRUNCATE_SNAPLENS), len(cut))
    anywhere = rng.integers(1, np.maximum(wire, 2))  # 1 .. wirelen-1
    caplens[cut] = np.where((rng.random(len(cut)) < 0.5) & (snap < wire), snap, anywhere)
    return caplens


def _scatter_rows(data: U8, starts: Ints, rows: U8, chunk: int = 1 << 15) -> None:
    """data[starts[i] : starts[i] + w] = rows[i] for each row (rows are w bytes wide)."""
    width = rows.shape[1]
    columns = np.arange(width, dtype=np.int64)
    for lo in range(0, len(starts), chunk):
        index = starts[lo : lo + chunk, None] + columns
        data[index] = rows[lo : lo + chunk]


def generate_with_kinds(count: int = 100_000, seed: int = 1, truncated: float = 0.04) -> tuple[Batch, Ints]:
    """`generate`, and each frame's index into `KINDS`."""
    if count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    if not 0.0 <= truncated <= 1.0:
        raise ValueError(f"truncated must be a share between 0 and 1, not {truncated}")
    rng = np.random.default_rng(seed)
    draw = _Draw(rng)
    weights = np.array([k.weight for k in KINDS])
    kinds = rng.choice(len(KINDS), count, p=weights / weights.sum())
    members = [np.flatnonzero(kinds == i) for i in range(len(KINDS))]
    frames = [kind.build(draw, len(idx)) for kind, idx in zip(KINDS, members, strict=True)]
    unpadded = np.zeros(count, dtype=np.int64)
    for idx, built in zip(members, frames, strict=True):
        unpadded[idx] = built.headers.shape[1] + built.payload
    wirelens = np.maximum(unpadded, MIN_FRAME)
    caplens = _truncate(rng, wirelens, truncated)
    # Whole frames are laid out (a truncated frame's tail stays in the buffer, unread), so the
    # bytes a short caplen hides are realistic rather than absent.
    offsets = np.zeros(count, dtype=np.int64)
    np.cumsum(wirelens[:-1], out=offsets[1:])
    total = int(wirelens.sum()) if count else 0
    data = np.empty(total, dtype=np.uint8)
    filler = rng.integers(0, 256, FILLER_BLOCK, dtype=np.uint8)
    for start in range(0, total, FILLER_BLOCK):
        stop = min(total, start + FILLER_BLOCK)
        data[start:stop] = filler[: stop - start]
    for idx, built in zip(members, frames, strict=True):
        _scatter_rows(data, offsets[idx], built.headers)
    short = np.flatnonzero(unpadded < MIN_FRAME)  # zero padding up to 60 bytes, as on the wire
    if len(short):
        columns = np.arange(MIN_FRAME, dtype=np.int64)
        pad = columns >= (unpadded[short, None])
        data[(offsets[short, None] + columns)[pad]] = 0
    return Batch(data, offsets.astype(np.uint64), caplens, wirelens), kinds


def generate(count: int = 100_000, seed: int = 1, truncated: float = 0.04) -> Batch:
    """`count` frames of the mix (see the module doc), the same for the same arguments.

    `truncated` is the share of frames captured shorter than their wire length.
    """
    return generate_with_kinds(count, seed, truncated)[0]


def to_list(batch: Batch) -> list[tuple[bytes, int]]:
    """Each packet of `batch` as (its captured bytes, its wire length), for per-packet call paths."""
    data = batch.data.tobytes() if len(batch) else b""
    columns = (batch.offsets.tolist(), batch.caplens.tolist(), batch.wirelens.tolist())
    return [(data[start : start + length], wire) for start, length, wire in zip(*columns, strict=True)]


def generate_list(count: int = 100_000, seed: int = 1, truncated: float = 0.04) -> list[tuple[bytes, int]]:
    """`generate` as a list of (bytes, wirelen)."""
    return to_list(generate(count, seed, truncated))


PCAP_RECORD = np.dtype([("sec", "<u4"), ("frac", "<u4"), ("caplen", "<u4"), ("wirelen", "<u4")])


def write_pcap(
    path: str | os.PathLike[str],
    batch: Batch,
    linktype: int = 1,
    snaplen: int = DEFAULT_SNAPLEN,
    nanosecond: bool = False,
    timestamps: npt.ArrayLike | None = None,
) -> int:
    """Write `batch` as a classic little-endian pcap file; return the number of bytes written.

    `timestamps` are integer nanoseconds since the epoch, one per packet (default: from
    2023-11-14 22:13:20 UTC, one packet every 10 µs); stored as microseconds unless `nanosecond`.
    A minimal writer for generated captures (bpfjit.capfile is the full reader and writer).
    """
    n = len(batch)
    if n and int(batch.caplens.max()) > snaplen:
        raise ValueError(f"a packet's caplen {int(batch.caplens.max())} exceeds the snaplen {snaplen}")
    if timestamps is None:
        ns = DEFAULT_START_NS + np.arange(n, dtype=np.int64) * DEFAULT_SPACING_NS
    else:
        ns = np.asarray(timestamps, dtype=np.int64)
        if ns.shape != (n,):
            raise ValueError(f"{ns.shape[0] if ns.ndim == 1 else ns.shape} timestamps for {n} packets")
        if n and ns.min() < 0:
            raise ValueError("timestamps must be nanoseconds since the epoch, not negative")
    records = np.empty(n, dtype=PCAP_RECORD)
    records["sec"] = ns // 10**9
    records["frac"] = ns % 10**9 if nanosecond else (ns % 10**9) // 1000
    records["caplen"] = batch.caplens
    records["wirelen"] = batch.wirelens
    header = struct.pack("<IHHiIII", PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US, 2, 4, 0, 0, snaplen, linktype)
    heads = records.view(np.uint8).reshape(n, 16)
    offsets = batch.offsets.astype(np.int64)
    caplens = batch.caplens.astype(np.int64)
    with open(path, "wb") as file:
        file.write(header)
        for lo in range(0, n, WRITE_CHUNK):
            part = slice(lo, lo + WRITE_CHUNK)
            file.write(_records(batch.data, offsets[part], caplens[part], heads[part]).data)
    return len(header) + 16 * n + int(caplens.sum())


WRITE_CHUNK = 1 << 14  # packets per numpy-built block of records (a few MB: stays in cache)
_RECORD_COLUMNS = np.arange(16, dtype=np.int64)


def _records(data: U8, offsets: Ints, caplens: Ints, heads: U8) -> U8:
    """The pcap records (16-byte header, then the captured bytes) of some packets, as one block."""
    ends = offsets + caplens
    # Runs of packets that follow each other in `data` are copied as one slice (a whole generated
    # batch is a few runs: only truncated frames leave gaps).
    breaks = (np.flatnonzero(offsets[1:] != ends[:-1]) + 1).tolist()
    bounds = zip([0, *breaks], [*breaks, len(offsets)], strict=True)
    payload = np.concatenate([data[offsets[a] : ends[b - 1]] for a, b in bounds])
    starts = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(caplens[:-1] + 16, out=starts[1:])
    out = np.empty(16 * len(offsets) + len(payload), dtype=np.uint8)
    is_head = np.zeros(len(out), dtype=bool)
    where = (starts[:, None] + _RECORD_COLUMNS).ravel()
    is_head[where] = True
    out[where] = heads.ravel()
    out[~is_head] = payload
    return out
