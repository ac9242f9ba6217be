"""Hand-made Ethernet frames for the tests: the kinds the generated mix (bpfjit.packetmix) lacks.

Shared by tests/test_expressions.py (verdicts against libpcap) and tests/test_kernel_oracle.py
(against the kernel's socket filter).
"""

from __future__ import annotations

import struct

from bpfjit.samples import arp_request, ethernet, ipv4, ipv6, sample_frames, tcp, udp, vlan

Packet = tuple[bytes, int]  # captured bytes, wire length

ETH_VLAN, ETH_QINQ, ETH_IPV4, ETH_IPV6 = 0x8100, 0x88A8, 0x0800, 0x86DD


def extra_frames() -> list[bytes]:
    """Kinds the generated mix lacks: MPLS, RARP, GRE, 802.3/LLC, broadcasts, QinQ by hand, runts."""
    http = tcp(40000, 80, 0x18, b"GET /index.html HTTP/1.1\r\n")
    tcp_header_with_options = struct.pack("!HHIIBBHHH", 40001, 80, 1, 0, 8 << 4, 0x18, 512, 0, 0) + bytes(12)
    mpls_ip = struct.pack("!I", 1024 << 12 | 1 << 8 | 64) + ipv4(17, udp(1000, 53))
    mpls_stack = struct.pack("!II", 1024 << 12 | 64, 2000 << 12 | 1 << 8 | 64) + ipv4(6, tcp(1, 2))
    rarp = arp_request()[14:]
    return [
        ethernet(0x8847, mpls_ip),
        ethernet(0x8847, mpls_stack),
        ethernet(0x8035, rarp[:6] + b"\x00\x03" + rarp[8:], dst=b"\xff" * 6),
        ethernet(ETH_IPV4, ipv4(47, b"\x00\x00\x08\x00" + ipv4(1, b"\x08\x00" + bytes(6)))),  # GRE
        ethernet(ETH_IPV4, ipv4(17, udp(68, 67, bytes(300)), "0.0.0.0", "255.255.255.255"), dst=b"\xff" * 6),
        ethernet(ETH_IPV4, ipv4(17, udp(5000, 5000), dst="10.1.2.0")),
        ethernet(ETH_IPV4, ipv4(6, http, src="10.1.2.3", dst="192.168.7.7")),
        ethernet(ETH_IPV4, ipv4(6, tcp_header_with_options + b"GET / HTTP/1.0\r\n")),
        ethernet(ETH_IPV4, ipv4(6, tcp(80, 1500, 0x12), src="8.8.8.8", dst="10.1.2.3")),
        ethernet(ETH_IPV4, ipv4(1, b"\x08\x00" + bytes(6), options=b"\x01\x01\x01\x00")),
        ethernet(0x0026, b"\xaa\xaa\x03" + bytes(35)),  # 802.3 length field, LLC/SNAP
        ethernet(ETH_IPV6, ipv6(44, bytes([17, 0, 0, 1, 0, 0, 0, 1]) + udp(53, 53))),  # fragment header
        vlan(100, ETH_IPV4, ipv4(6, tcp(40000, 80))),
        vlan(100, ETH_IPV6, ipv6(17, udp(53, 4000))),
        ethernet(ETH_QINQ, struct.pack("!HHHH", 200, ETH_VLAN, 100, ETH_IPV4) + ipv4(17, udp(1, 53))),
        b"\xff" * 6 + b"\x66\x77\x88\x99\xaa\xbb\x08",  # 13 bytes: not even an Ethernet header
        bytes(14),
    ]


def handmade_frames() -> list[Packet]:
    """The demo frames and the hand-built extras, whole and cut to 30 bytes."""
    frames = [*sample_frames().values(), *extra_frames()]
    return [*((f, len(f)) for f in frames), *((f[:30], len(f)) for f in frames if len(f) > 30)]
