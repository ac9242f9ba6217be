"""A few hand-built frames for the demo and the tests: one of each common kind, bytes exact."""

from __future__ import annotations

import struct


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ethernet(ethertype: int, payload: bytes, dst: bytes = b"\x00\x11\x22\x33\x44\x55",
             src: bytes = b"\x66\x77\x88\x99\xaa\xbb") -> bytes:  # fmt: skip
    return dst + src + struct.pack("!H", ethertype) + payload


def vlan(vid: int, ethertype: int, payload: bytes) -> bytes:
    """An 802.1Q-tagged Ethernet frame."""
    return ethernet(0x8100, struct.pack("!HH", vid & 0xFFF, ethertype) + payload)


def ipv4(proto: int, payload: bytes, src: str = "10.0.0.1", dst: str = "10.0.0.2",
         options: bytes = b"", frag: int = 0, ttl: int = 64) -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(payload), 1, frag, ttl, proto, 0,
        bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))),
    ) + options  # fmt: skip
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def ipv6(next_header: int, payload: bytes, src: bytes = bytes(15) + b"\x01", dst: bytes = bytes(15) + b"\x02") -> bytes:
    return struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64) + src + dst + payload


def tcp(sport: int, dport: int, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def arp_request(sender: str = "10.0.0.1", target: str = "10.0.0.2") -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + b"\x66\x77\x88\x99\xaa\xbb"
    body += bytes(map(int, sender.split("."))) + bytes(6) + bytes(map(int, target.split(".")))
    return ethernet(0x0806, body, dst=b"\xff" * 6)


def sample_frames() -> dict[str, bytes]:
    """Named frames covering what the demo's filters tell apart."""
    return {
        "tcp 10.0.0.1:40000 > 10.0.0.2:80 SYN": ethernet(0x0800, ipv4(6, tcp(40000, 80))),
        "tcp 10.0.0.2:80 > 10.0.0.1:40000 GET": ethernet(
            0x0800, ipv4(6, tcp(80, 40000, 0x18, b"GET / HTTP/1.1\r\n"), "10.0.0.2", "10.0.0.1")
        ),
        "tcp 10.0.0.1:40001 > 10.0.0.2:22": ethernet(0x0800, ipv4(6, tcp(40001, 22, 0x10))),
        "udp 10.0.0.1:5353 > 10.0.0.2:53 (dns)": ethernet(0x0800, ipv4(17, udp(5353, 53, bytes(20)))),
        "udp 10.0.0.1:123 > 10.0.0.2:123 (ntp)": ethernet(0x0800, ipv4(17, udp(123, 123, bytes(48)))),
        "icmp echo 10.0.0.1 > 10.0.0.2": ethernet(0x0800, ipv4(1, b"\x08\x00\xf7\xff" + bytes(4))),
        "ipv4 with options, tcp :80": ethernet(0x0800, ipv4(6, tcp(1234, 80), options=b"\x01\x01\x01\x00")),
        "ipv4 fragment (offset 8), tcp": ethernet(0x0800, ipv4(6, bytes(20), frag=1)),
        "ipv6 tcp :80": ethernet(0x86DD, ipv6(6, tcp(40000, 80))),
        "ipv6 udp :53": ethernet(0x86DD, ipv6(17, udp(5353, 53))),
        "vlan 7 ipv4 udp :53": vlan(7, 0x0800, ipv4(17, udp(1000, 53))),
        "arp who-has 10.0.0.2": arp_request(),
        "truncated tcp :80 (20 bytes)": ethernet(0x0800, ipv4(6, tcp(40000, 80)))[:20],
        "empty": b"",
    }
