"""bpfjit's reference interpreter against libpcap's own C interpreter (`bpf_filter`).

SEMANTICS.md says bpfjit runs cBPF as libpcap 1.10 does; these tests hold it to that on random valid
programs, on every runtime rule, and on programs tcpdump compiles. Programs bpfjit's validator rejects
never reach libpcap (its interpreter aborts the process on some of them).
"""

from __future__ import annotations

import struct

import pytest
from expressions import EXPRESSIONS
from hypothesis import given
from hypothesis import strategies as st

import bpfjit
from bpfjit import Insn, Program, libpcap
from bpfjit.strategies import packets, packets_with_wirelen, programs

pytestmark = pytest.mark.usefixtures("needs_libpcap")


def both(program: Program, packet: bytes, wirelen: int | None = None) -> tuple[int, int]:
    """(bpfjit's interpreter, libpcap's bpf_filter) on the same input."""
    return bpfjit.interpret(program, packet, wirelen), libpcap.bpf_filter(program, packet, wirelen)


# -- random valid programs ------------------------------------------------------------------------------
@given(programs(), packets_with_wirelen())
def test_interpreter_agrees_with_libpcap(program: Program, packet_and_wirelen: tuple[bytes, int]) -> None:
    packet, wirelen = packet_and_wirelen
    ours, theirs = both(program, packet, wirelen)
    assert ours == theirs
    assert libpcap.offline_filter(program, packet, wirelen) == (theirs != 0)


@given(programs(max_insns=12), packets(max_size=24))
def test_interpreter_agrees_with_libpcap_on_short_packets(program: Program, packet: bytes) -> None:
    ours, theirs = both(program, packet)
    assert ours == theirs


@given(programs(max_insns=128, min_insns=64), packets())
def test_interpreter_agrees_with_libpcap_on_long_programs(program: Program, packet: bytes) -> None:
    ours, theirs = both(program, packet)
    assert ours == theirs


# -- every runtime rule of SEMANTICS.md, on both --------------------------------------------------------
def _p(*insns: tuple[int, ...]) -> Program:
    return Program(Insn(*insn) for insn in insns)


RET_A = (0x16,)


def _branch(*insns: tuple[int, ...]) -> Program:
    """`insns` ending in a jump with jt 0, jf 1, then `ret #1` (taken) and `ret #2` (not taken)."""
    return _p(*insns, (0x06, 0, 0, 1), (0x06, 0, 0, 2))

P20 = bytes(range(1, 21))  # 01 02 .. 14
FF = 0xFFFFFFFF

# name: (program, packet, wirelen, expected result)
RUNTIME_CASES: dict[str, tuple[Program, bytes, int | None, int]] = {
    # 1. Out-of-bounds loads return 0, for every width and mode, and an empty packet fails every load.
    "ld-abs-last-word": (_p((0x20, 0, 0, 16), RET_A), P20, None, 0x11121314),
    "ld-abs-one-past": (_p((0x20, 0, 0, 17), RET_A), P20, None, 0),
    "ldh-abs-last": (_p((0x28, 0, 0, 18), RET_A), P20, None, 0x1314),
    "ldh-abs-one-past": (_p((0x28, 0, 0, 19), RET_A), P20, None, 0),
    "ldb-abs-last": (_p((0x30, 0, 0, 19), RET_A), P20, None, 0x14),
    "ldb-abs-past": (_p((0x30, 0, 0, 20), RET_A), P20, None, 0),
    "ld-abs-k-near-2^32": (_p((0x20, 0, 0, 0xFFFFFFFC), RET_A), P20, None, 0),
    "ldh-abs-k-ffffffff": (_p((0x28, 0, 0, FF), RET_A), P20, None, 0),
    "ldb-abs-k-fffffffe": (_p((0x30, 0, 0, 0xFFFFFFFE), RET_A), P20, None, 0),
    "ldb-abs-ancillary-offset": (_p((0x30, 0, 0, 0xFFFFF000), RET_A), P20, None, 0),
    "ld-ind-last-word": (_p((0x01, 0, 0, 6), (0x40, 0, 0, 10), RET_A), P20, None, 0x11121314),
    "ld-ind-one-past": (_p((0x01, 0, 0, 6), (0x40, 0, 0, 11), RET_A), P20, None, 0),
    "ldh-ind-one-past": (_p((0x01, 0, 0, 9), (0x48, 0, 0, 10), RET_A), P20, None, 0),
    "ldb-ind-last": (_p((0x01, 0, 0, 9), (0x50, 0, 0, 10), RET_A), P20, None, 0x14),
    "ldxb-msh-last-byte": (_p((0xB1, 0, 0, 19), (0x87,), RET_A), P20, None, 4 * (0x14 & 0xF)),
    "empty-packet-ldb": (_p((0x30, 0, 0, 0), RET_A), b"", None, 0),
    "empty-packet-ldxb": (_p((0xB1, 0, 0, 0), (0x06, 0, 0, 1)), b"", None, 0),
    "empty-packet-no-load": (_p((0x06, 0, 0, 7),), b"", None, 7),
    # 2. X + k past 2^32 is out of bounds, never a wrap-around to a small offset.
    "ind-x-plus-k-overflow": (_p((0x01, 0, 0, FF), (0x50, 0, 0, 2), RET_A), P20, None, 0),
    "ind-x-plus-k-overflow-15": (_p((0x01, 0, 0, FF), (0x50, 0, 0, 15), RET_A), P20, None, 0),
    "ind-x-plus-k-2^32-exactly": (_p((0x01, 0, 0, 0xFFFFFFF0), (0x50, 0, 0, 0x10), RET_A), P20, None, 0),
    "ind-k-ffffffff-x-1": (_p((0x01, 0, 0, 1), (0x48, 0, 0, FF), RET_A), P20, None, 0),
    "ind-initial-x-is-0": (_p((0x50, 0, 0, 1), RET_A), P20, None, 2),
    # 3. Loads stop at caplen although `ld len` reports wirelen.
    "len-is-wirelen": (_p((0x80,), RET_A), P20, 1000, 1000),
    "ldx-len-is-wirelen": (_p((0x81,), (0x87,), RET_A), P20, 1000, 1000),
    "len-defaults-to-caplen": (_p((0x80,), RET_A), P20, None, 20),
    "load-stops-at-caplen-not-wirelen": (_p((0x20, 0, 0, 17), RET_A), P20, 1000, 0),
    "load-at-caplen-boundary-with-wirelen": (_p((0x20, 0, 0, 16), RET_A), P20, 1000, 0x11121314),
    "wirelen-u32-max": (_p((0x80,), RET_A), P20, FF, FF),
    # 4. div/mod by X == 0 stop the program with 0, whatever came before.
    "div-x-zero": (_p((0x00, 0, 0, 5), (0x3C,), (0x06, 0, 0, 9)), P20, None, 0),
    "mod-x-zero": (_p((0x00, 0, 0, 5), (0x9C,), (0x06, 0, 0, 9)), P20, None, 0),
    "div-x-unsigned": (_p((0x00, 0, 0, 0xFFFFFFDE), (0x01, 0, 0, 0x80000000), (0x3C,), RET_A), P20, None, 1),
    "mod-x-unsigned": (
        _p((0x00, 0, 0, 0xFFFFFFDE), (0x01, 0, 0, 0x80000000), (0x9C,), RET_A), P20, None, 0x7FFFFFDE,
    ),
    "div-k-unsigned": (_p((0x00, 0, 0, FF), (0x34, 0, 0, 4), RET_A), P20, None, 0x3FFFFFFF),
    # 5. Shifts by X >= 32 give 0; smaller shifts are ordinary (rsh is logical).
    "lsh-x-32": (_p((0x00, 0, 0, 1), (0x01, 0, 0, 32), (0x6C,), RET_A), P20, None, 0),
    "lsh-x-33": (_p((0x00, 0, 0, 1), (0x01, 0, 0, 33), (0x6C,), RET_A), P20, None, 0),
    "lsh-x-ffffffff": (_p((0x00, 0, 0, 1), (0x01, 0, 0, FF), (0x6C,), RET_A), P20, None, 0),
    "rsh-x-32": (_p((0x00, 0, 0, FF), (0x01, 0, 0, 32), (0x7C,), RET_A), P20, None, 0),
    "rsh-x-0xffffffff": (_p((0x00, 0, 0, FF), (0x01, 0, 0, FF), (0x7C,), RET_A), P20, None, 0),
    "lsh-x-31": (_p((0x00, 0, 0, 3), (0x01, 0, 0, 31), (0x6C,), RET_A), P20, None, 0x80000000),
    "rsh-x-31-logical": (_p((0x00, 0, 0, 0x80000000), (0x01, 0, 0, 31), (0x7C,), RET_A), P20, None, 1),
    "lsh-k-31": (_p((0x00, 0, 0, 3), (0x64, 0, 0, 31), RET_A), P20, None, 0x80000000),
    "rsh-k-16": (_p((0x00, 0, 0, 0x12345678), (0x74, 0, 0, 16), RET_A), P20, None, 0x1234),
    "lsh-k-0": (_p((0x00, 0, 0, 0x12345678), (0x64, 0, 0, 0), RET_A), P20, None, 0x12345678),
    # 6. MUL, ADD, SUB, NEG wrap modulo 2^32.
    "sub-wraps": (_p((0x00, 0, 0, 1), (0x14, 0, 0, 2), RET_A), P20, None, FF),
    "add-wraps": (_p((0x00, 0, 0, FF), (0x04, 0, 0, 2), RET_A), P20, None, 1),
    "mul-wraps": (_p((0x00, 0, 0, FF), (0x24, 0, 0, 3), RET_A), P20, None, 0xFFFFFFFD),
    "mul-x-wraps": (_p((0x00, 0, 0, 0x10001), (0x01, 0, 0, 0x10001), (0x2C,), RET_A), P20, None, 0x20001),
    "neg-1": (_p((0x00, 0, 0, 1), (0x84,), RET_A), P20, None, FF),
    "neg-0": (_p((0x84,), RET_A), P20, None, 0),
    "neg-0x80000000": (_p((0x00, 0, 0, 0x80000000), (0x84,), RET_A), P20, None, 0x80000000),
    # 7. ret k returns all 32 bits; ret a returns A.
    "ret-k-ffffffff": (_p((0x06, 0, 0, FF),), P20, None, FF),
    "ret-a-initial-0": (_p(RET_A), P20, None, 0),
    # 8. Jumps are relative and forward; unsigned comparisons.
    "jgt-unsigned": (_branch((0x00, 0, 0, FF), (0x25, 0, 1, 0x7FFFFFFF)), P20, None, 1),
    "jgt-unsigned-false": (_branch((0x00, 0, 0, 1), (0x25, 0, 1, 0x80000000)), P20, None, 2),
    "jge-equal-max": (_branch((0x00, 0, 0, FF), (0x35, 0, 1, FF)), P20, None, 1),
    "jset-0": (_branch((0x00, 0, 0, FF), (0x45, 0, 1, 0)), P20, None, 2),
    "jset-x-0": (_branch((0x00, 0, 0, FF), (0x4D, 0, 1)), P20, None, 2),
    "jeq-x": (_branch((0x00, 0, 0, 7), (0x01, 0, 0, 7), (0x1D, 0, 1)), P20, None, 1),
    "ja-over-bad-load": (_p((0x05, 0, 0, 1), (0x30, 0, 0, 0xFFFFFFFE), (0x06, 0, 0, 3)), b"\0", None, 3),
    "ja-0-is-a-no-op": (_p((0x05, 0, 0, 0), (0x06, 0, 0, 3)), b"", None, 3),
    "jt-equals-jf": (_p((0x15, 1, 1, 0), (0x06, 0, 0, 1), (0x06, 0, 0, 2)), b"", None, 2),
    # Big-endian, unaligned loads; ldxb 4*([k]&0xf) leaves A alone.
    "big-endian-unaligned": (_p((0x20, 0, 0, 1), RET_A), bytes([1, 2, 3, 4, 5]), None, 0x02030405),
    "msh-ihl": (_p((0x00, 0, 0, 9), (0xB1, 0, 0, 0), (0x0C,), RET_A), bytes([0x45]), None, 29),
    "msh-past-end": (_p((0xB1, 0, 0, 1), (0x06, 0, 0, 1)), bytes([0x45]), None, 0),
    # Scratch memory: 16 independent words.
    "scratch-words": (
        _p((0x00, 0, 0, 5), (0x02, 0, 0, 0), (0x01, 0, 0, 7), (0x03, 0, 0, 15), (0x60, 0, 0, 0),
           (0x61, 0, 0, 15), (0x2C,), RET_A),
        P20, None, 35,
    ),
    # An early non-zero exit is kept on a short packet: no bounds check hoisted above it.
    "early-exit-before-load": (
        _p((0x30, 0, 0, 0), (0x15, 0, 1, 1), (0x06, 0, 0, 77), (0x20, 0, 0, 16), RET_A), P20[:1], None, 77,
    ),
}


@pytest.mark.parametrize("name", sorted(RUNTIME_CASES))
def test_runtime_rule(name: str) -> None:
    program, packet, wirelen, expected = RUNTIME_CASES[name]
    assert both(program, packet, wirelen) == (expected, expected)


@pytest.mark.parametrize("name", sorted(RUNTIME_CASES))
def test_runtime_rule_at_every_caplen(name: str) -> None:
    """Each case on every truncation of its packet, with the full length as wirelen."""
    program, packet, wirelen, _ = RUNTIME_CASES[name]
    wire = max(len(packet), wirelen or 0)
    for caplen in range(len(packet) + 1):
        ours, theirs = both(program, packet[:caplen], wire)
        assert ours == theirs, caplen


def test_shift_by_constant_32_is_not_compared() -> None:
    # libpcap computes `lsh #33` on 1 as 2 (x86 masks the count); bpfjit's validator rejects both.
    with pytest.raises(bpfjit.ValidationError):
        both(_p((0x00, 0, 0, 1), (0x64, 0, 0, 33), RET_A), P20)


# -- tcpdump-compiled programs on a mix of packets -----------------------------------------------------------
def _ether(ethertype: int, payload: bytes, dst: bytes = bytes.fromhex("001122334455")) -> bytes:
    return dst + bytes.fromhex("66778899aabb") + struct.pack("!H", ethertype) + payload


def _ipv4(protocol: int, payload: bytes, src: bytes = b"\x0a\x01\x02\x03", dst: bytes = b"\xc0\xa8\x01\x01",
          ttl: int = 64, frag: int = 0x4000, options: bytes = b"") -> bytes:  # fmt: skip
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(options) + len(payload), 7, frag, ttl,
                         protocol, 0, src, dst)  # fmt: skip
    return header + options + payload


def _ipv6(next_header: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), next_header, 64, b"\x20\x01" + bytes(14),
                       b"\xfe\x80" + bytes(13) + b"\x01") + payload  # fmt: skip


def _tcp(sport: int, dport: int, flags: int = 0x02, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 8192, 0, 0) + payload


def _udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


PACKETS: dict[str, bytes] = {
    "tcp-80-syn": _ether(0x0800, _ipv4(6, _tcp(40000, 80))),
    "tcp-443-from-10/8": _ether(0x0800, _ipv4(6, _tcp(40000, 443, 0x12))),
    "tcp-http-get": _ether(0x0800, _ipv4(6, _tcp(40000, 80, 0x18, b"GET / HTTP/1.1\r\n"))),
    "tcp-ip-options": _ether(0x0800, _ipv4(6, _tcp(80, 1500), options=b"\x01\x01\x01\x00")),
    "tcp-fragment": _ether(0x0800, _ipv4(6, _tcp(1, 80), frag=0x2001)),
    "udp-53": _ether(0x0800, _ipv4(17, _udp(5353, 53, b"\x12\x34" + bytes(30)))),
    "udp-123-host": _ether(0x0800, _ipv4(17, _udp(123, 123), src=b"\xc0\xa8\x01\x01", ttl=63)),
    "udp-1234-payload": _ether(0x0800, _ipv4(17, _udp(9, 9, b"\x12\x34"))),
    "icmp": _ether(0x0800, _ipv4(1, b"\x08\x00" + bytes(30))),
    "ip-multicast": _ether(
        0x0800, _ipv4(17, _udp(1, 2), dst=b"\xe0\x00\x00\xfb"), dst=bytes.fromhex("01005e0000fb")
    ),
    "ip6-tcp-80": _ether(0x86DD, _ipv6(6, _tcp(1, 80))),
    "ip6-icmp6": _ether(0x86DD, _ipv6(58, b"\x80\x00" + bytes(6))),
    "arp-broadcast": _ether(0x0806, bytes(28), dst=b"\xff" * 6),
    "vlan-ip-tcp": _ether(0x8100, b"\x00\x05\x08\x00" + _ipv4(6, _tcp(1, 80))),
    "lldp": _ether(0x88CC, bytes(50)),
    "pppoe-ip": _ether(0x8864, b"\x11\x00\x00\x01\x00\x30\x00\x21" + _ipv4(17, _udp(1, 53))),
    "mpls-ip": _ether(0x8847, b"\x00\x01\x01\x40" + _ipv4(6, _tcp(1, 80))),
    "big-frame": _ether(0x0800, _ipv4(6, _tcp(1, 80, 0x10, bytes(1400)))),
    "runt": b"\x00\x11\x22",
    "empty": b"",
}


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_tcpdump_programs_agree_with_libpcap(expression: str) -> None:
    program = libpcap.compile_expression(expression)
    for name, packet in PACKETS.items():
        for caplen in range(len(packet) + 1):
            for wirelen in (None, len(packet), len(packet) + 1000):
                if wirelen is not None and wirelen < caplen:
                    continue
                ours, theirs = both(program, packet[:caplen], wirelen)
                assert ours == theirs, (name, caplen, wirelen)


@given(st.sampled_from(EXPRESSIONS), st.sampled_from(sorted(PACKETS)), st.data())
def test_tcpdump_programs_on_corrupted_packets(expression: str, name: str, data: st.DataObject) -> None:
    """Random byte flips in realistic packets reach the deep branches random packets never do."""
    packet = bytearray(PACKETS[name])
    if packet:
        for _ in range(data.draw(st.integers(0, 4))):
            packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
    program = libpcap.compile_expression(expression)
    ours, theirs = both(program, bytes(packet), len(packet) + 4)
    assert ours == theirs

