"""The linux dialect (bpfjit.linux, DIALECTS.md A): ancillary loads, negative offsets, metadata.

Expected values are worked out by hand from DIALECTS.md's measured facts (tests/test_linux_kernel.py
checks the same against the kernel); every fact runs on the interpreter and on both JIT tiers, and
hypothesis checks the JIT against the interpreter on random linux-dialect programs and metadata.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bpfjit
from bpfjit import Batch, Insn, Program, ValidationError
from bpfjit.linux import ANCILLARY, SKF_AD_OFF, SKF_LL_OFF, SKF_NET_OFF, Meta
from bpfjit.metadata import META_DTYPE, meta_array
from bpfjit.strategies import metas, packets_with_wirelen, programs

NET, LL = SKF_NET_OFF & 0xFFFFFFFF, SKF_LL_OFF & 0xFFFFFFFF
LD_W, LD_H, LD_B = 0x20, 0x28, 0x30  # ld/ldh/ldb [k]
LD_IND_B, LDX_IMM, LDX_MSH, RET_A, TAX = 0x50, 0x01, 0xB1, 0x16, 0x07


def anc(name: str) -> int:
    (row,) = [row for row in ANCILLARY if row.name == name]
    return row.k


def ret_a(*insns: tuple[int, int, int, int]) -> Program:
    return Program([*insns, (RET_A, 0, 0, 0)])


Runner = Callable[[Program, bytes, "Meta | None"], int]


def _jit(tier: str) -> Runner:
    def run(program: Program, packet: bytes, meta: Meta | None) -> int:
        f = bpfjit.compile(program, dialect="linux").use_tier(tier)  # type: ignore[arg-type]
        single = f(packet) if meta is None else f(packet, meta=meta)
        batch = Batch.from_packets([packet])
        records = None if meta is None else meta_array(batch, **{k: v for k, v in meta._asdict().items()
                                                                   if v is not None})  # fmt: skip
        assert f.run_batch(batch, meta=records)[0] == single
        return single

    return run


RUNNERS: dict[str, Runner] = {
    "interpreter": lambda p, packet, meta: bpfjit.interpret(p, packet, dialect="linux", meta=meta),
    "baseline": _jit("baseline"),
    "optimised": _jit("optimised"),
}


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    return RUNNERS[request.param]


def ethernet(ethertype: int, payload: bytes, dst: bytes = b"\x02" * 6) -> bytes:
    return dst + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ethertype) + payload


def ipv4(proto: int, payload: bytes, ihl: int = 5, frag: int = 0) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                         b"\x0a\0\0\1", b"\x0a\0\0\2")  # fmt: skip
    return header + bytes(4 * max(ihl - 5, 0)) + payload


def ipv6(next_header: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), next_header, 64, bytes(16), bytes(16)) + payload


def tcp(doff: int = 5) -> bytes:
    return struct.pack("!HHIIBBHHH", 1, 80, 0, 0, doff << 4, 2, 0, 0, 0) + bytes(4 * (doff - 5)) + b"data"


UDP = struct.pack("!HHHH", 53, 53, 12, 0) + b"data"


# -- validator ------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [SKF_AD_OFF + 2, SKF_AD_OFF + 64, 0xFFFFFFFC])
@pytest.mark.parametrize("code", [LD_W, LD_H, LD_B])
def test_unknown_ancillary_offsets_are_refused_as_the_kernel_does(code: int, k: int) -> None:
    program = ret_a((code, 0, 0, k))
    with pytest.raises(ValidationError) as error:
        bpfjit.validate(program, "linux")
    assert error.value.rule == "unknown-ancillary" and error.value.index == 0
    assert bpfjit.validate(program, "pcap") == program  # out of bounds there, nothing more


def test_every_ancillary_load_and_the_negative_windows_validate() -> None:
    for row in ANCILLARY:
        bpfjit.validate(ret_a((LD_B, 0, 0, row.k)), "linux")
    for k in (NET, NET + 100, LL, 0x80000000, 0xFFDFFFFF):
        bpfjit.validate(ret_a((LD_H, 0, 0, k), (LDX_MSH, 0, 0, k), (LD_IND_B, 0, 0, k)), "linux")


# -- ancillary loads --------------------------------------------------------------------------------
META = Meta(protocol=0x0800, pkttype=3, ifindex=7, mark=0xDEADBEEF, queue=5, hatype=772, rxhash=0x12345678,
            cpu=1, vlan_tci=0xB064, vlan_present=1, random=0xCAFEF00D, vlan_tpid=0x88A8)  # fmt: skip


@pytest.mark.parametrize("row", [row for row in ANCILLARY if row.source in Meta._fields], ids=lambda r: r.name)
@pytest.mark.parametrize("code", [LD_W, LD_H, LD_B])
def test_metadata_loads_ignore_the_load_size(run: Runner, row: object, code: int) -> None:
    assert isinstance(row, type(ANCILLARY[0]))
    expected = getattr(META, row.source)
    assert run(ret_a((code, 0, 0, row.k)), bytes(60), META) == expected  # ldb [vlan_tci] = 0xb064 [M]


def test_defaults_without_metadata(run: Runner) -> None:
    frame = ethernet(0x86DD, bytes(40))
    assert run(ret_a((LD_B, 0, 0, anc("PROTOCOL"))), frame, None) == 0x86DD  # the frame's ethertype
    assert run(ret_a((LD_B, 0, 0, anc("PROTOCOL"))), frame[:13], None) == 0
    assert run(ret_a((LD_W, 0, 0, anc("HATYPE"))), frame, None) == 1  # ARPHRD_ETHER
    for name in ("PKTTYPE", "IFINDEX", "VLAN_TAG", "VLAN_TAG_PRESENT", "VLAN_TPID", "MARK", "RANDOM"):
        assert run(ret_a((LD_W, 0, 0, anc(name)), (0x04, 0, 0, 1)), frame, None) == 1  # A + 1 == 1
    assert run(ret_a((LD_B, 0, 0, NET + 6)), frame, None) == 0  # network header at 14: IPv6 next header
    assert run(ret_a((LD_B, 0, 0, NET)), ethernet(0x0800, ipv4(17, UDP)), None) == 0x45


def test_xor_x_reads_no_packet_byte(run: Runner) -> None:
    program = ret_a((0x00, 0, 0, 0x12345678), (LDX_IMM, 0, 0, 0x0F0F0F0F), (LD_W, 0, 0, anc("ALU_XOR_X")))
    assert run(program, b"", None) == 0x12345678 ^ 0x0F0F0F0F


def nla(attrtype: int, payload: bytes) -> bytes:
    """One netlink attribute in host byte order, padded to 4 bytes."""
    body = struct.pack("=HH", 4 + len(payload), attrtype) + payload
    return body + bytes(-len(body) % 4)


def test_nlattr_finds_the_first_attribute_of_type_x(run: Runner) -> None:
    # A = 98: an 8-byte type-3 attribute, then type 7 at 106 [M: 106]
    packet = bytes(98) + nla(3, b"abcd") + nla(7, b"xyzw") + nla(7, b"second")
    program = ret_a((0x00, 0, 0, 98), (LDX_IMM, 0, 0, 7), (LD_W, 0, 0, anc("NLATTR")))
    assert run(program, packet, None) == 106
    flagged = bytes(98) + nla(3 | 0x8000, b"abcd") + nla(7 | 0x4000, b"xyzw")  # NLA_F_* bits are masked
    assert run(program, flagged, None) == 106
    assert run(ret_a((0x00, 0, 0, 98), (LDX_IMM, 0, 0, 9), (LD_W, 0, 0, anc("NLATTR"))), packet, None) == 0
    assert run(ret_a((0x00, 0, 0, 200), (LDX_IMM, 0, 0, 7), (LD_W, 0, 0, anc("NLATTR"))), packet, None) == 0
    broken = bytes(98) + struct.pack("=HH", 2, 3) + nla(7, b"xyzw")  # nla_len < 4 stops the walk
    assert run(program, broken, None) == 0


def test_nlattr_nest_searches_inside_the_nest(run: Runner) -> None:
    inner = nla(1, b"aaaa") + nla(5, b"bbbb")
    packet = bytes(110) + nla(2, b"zz") + nla(9 | 0x8000, inner)  # the nest at 118
    program = ret_a((0x00, 0, 0, 118), (LDX_IMM, 0, 0, 5), (LD_W, 0, 0, anc("NLATTR_NEST")))
    assert run(program, packet, None) == 118 + 4 + 8
    assert run(ret_a((0x00, 0, 0, 118), (LDX_IMM, 0, 0, 2), (LD_W, 0, 0, anc("NLATTR_NEST"))), packet, None) == 0
    truncated = packet[:-4]  # the nest's length now runs past the packet
    assert run(program, truncated, None) == 0


POFF_CASES = {
    "udp": (ethernet(0x0800, ipv4(17, UDP)), None, 42),  # [M] 42
    "tcp doff 8": (ethernet(0x0800, ipv4(6, tcp(8))), None, 66),  # [M] 66
    "qinq udp": (ethernet(0x8100, b"\x00\x64\x08\x00" + ipv4(17, UDP)), Meta(protocol=0x8100), 46),  # [M] 46
    "ip options": (ethernet(0x0800, ipv4(1, bytes(8), ihl=7)), None, 14 + 28 + 8),
    "later fragment": (ethernet(0x0800, ipv4(6, tcp(), frag=0x0010)), None, 34),
    "first fragment": (ethernet(0x0800, ipv4(6, tcp(6), frag=0x2000)), None, 34 + 24),
    "ipv6 hop-by-hop udp": (ethernet(0x86DD, ipv6(0, bytes([17, 0]) + bytes(6) + UDP)), None, 14 + 40 + 8 + 8),
    "ipv6 later fragment": (ethernet(0x86DD, ipv6(44, bytes([6, 0, 0, 0x18]) + bytes(4) + tcp())), None, 62),
    "ipip": (ethernet(0x0800, ipv4(4, ipv4(17, UDP))), None, 14 + 20 + 20 + 8),
    "arp": (ethernet(0x0806, bytes(28)), None, 14),
    "unknown ethertype": (ethernet(0x88CC, bytes(40)), None, 0),
    "truncated ipv4": (ethernet(0x0800, ipv4(17, UDP))[:30], None, 0),
    "tcp without doff": (ethernet(0x0800, ipv4(6, b""))[:40], None, 34),
    "sctp": (ethernet(0x0800, ipv4(132, bytes(16))), None, 46),
    "other ip protocol": (ethernet(0x0800, ipv4(99, bytes(16))), None, 34),
    # GRE is followed (the kernel: 0 here, tests/test_linux_kernel.py): protocol 0 inside is unknown
    "gre with protocol 0 inside": (ethernet(0x0800, ipv4(47, bytes(16))), None, 0),
    "gre with ipv4 inside": (ethernet(0x0800, ipv4(47, b"\x00\x00\x08\x00" + ipv4(17, UDP))), None, 66),
}


@pytest.mark.parametrize("case", sorted(POFF_CASES))
def test_pay_offset_dissects_as_the_kernel(run: Runner, case: str) -> None:
    packet, meta, expected = POFF_CASES[case]
    assert run(ret_a((LD_W, 0, 0, anc("PAY_OFFSET"))), packet, meta) == expected


# -- negative offsets and wrapping -------------------------------------------------------------------
def test_network_and_link_relative_loads(run: Runner) -> None:
    frame = ethernet(0x0800, ipv4(17, UDP))
    assert run(ret_a((LD_B, 0, 0, NET + 9)), frame, None) == 17
    assert run(ret_a((LD_B, 0, 0, NET + 9)), b"\x00" * 4 + frame, Meta(net_offset=18)) == 17
    assert run(ret_a((LD_H, 0, 0, LL + 12)), frame, None) == 0x0800  # [M] ethertype
    assert run(ret_a((LD_W, 0, 0, LL)), frame, None) == 0x02020202
    assert run(ret_a((LDX_MSH, 0, 0, NET), (0x87, 0, 0, 0)), frame, None) == 20  # txa: 4*(0x45&0xf)
    for k in (0x80000000, LL - 1, NET + len(frame)):  # below the link window; past the packet
        assert run(Program([(LD_B, 0, 0, k), (0x06, 0, 0, 1)]), frame, None) == 0


def test_x_plus_k_wraps_and_is_read_as_signed(run: Runner) -> None:
    frame = ethernet(0x0800, ipv4(17, UDP))
    assert run(ret_a((LDX_IMM, 0, 0, NET), (LD_IND_B, 0, 0, 9)), frame, None) == 17  # [M]
    assert run(ret_a((LDX_IMM, 0, 0, 0xFFFFFFFF), (LD_IND_B, 0, 0, 13)), frame, None) == 0x08  # wraps to 12
    assert run(ret_a((LDX_IMM, 0, 0, LL), (0x48, 0, 0, 12)), frame, None) == 0x0800
    # [x + k] is never ancillary: SKF_AD_OFF as an offset is network offset 0xff000, out of the packet [M]
    dropped = Program([(LDX_IMM, 0, 0, SKF_AD_OFF), (LD_IND_B, 0, 0, 0), (0x06, 0, 0, 1)])
    assert run(dropped, frame, None) == 0


def test_shift_by_x_masks_and_ld_len_is_the_wire_length() -> None:
    program = ret_a((0x00, 0, 0, 1), (LDX_IMM, 0, 0, 33), (0x6C, 0, 0, 0))  # lsh x
    assert bpfjit.interpret(program, b"", dialect="linux") == 2 == bpfjit.compile(program, dialect="linux")(b"")
    length = ret_a((0x80, 0, 0, 0))
    assert bpfjit.interpret(length, bytes(10), 70, dialect="linux") == 70
    assert bpfjit.compile(length, dialect="linux")(bytes(10), 70) == 70


# -- metadata API -----------------------------------------------------------------------------------
def test_metadata_records_and_their_errors() -> None:
    assert META_DTYPE.itemsize == 32 and META_DTYPE.fields["vlan_tci"][1] == 2  # type: ignore[index]
    assert meta_array(1, vlan_tci=0x1B064, pkttype=0x104)[["vlan_tci", "pkttype"]].tolist() == [(0xB064, 4)]
    batch = Batch.from_packets([ethernet(0x0800, b""), ethernet(0x86DD, b""), b"short"])
    records = meta_array(batch, ifindex=[1, 2, 3], seed=5)
    assert records["protocol"].tolist() == [0x800, 0x86DD, 0] and records["ifindex"].tolist() == [1, 2, 3]
    assert records["net_offset"].tolist() == [14] * 3 and records["hatype"].tolist() == [1] * 3
    assert (meta_array(3, seed=5)["random"] == records["random"]).all()  # reproducible from the seed
    f = bpfjit.compile(ret_a((LD_W, 0, 0, anc("IFINDEX"))), dialect="linux")
    assert f.run_batch(batch, meta=records).tolist() == [1, 2, 3]
    assert f.run_batch(batch).tolist() == [0, 0, 0]
    assert f(batch[0], meta={"ifindex": 9}) == 9
    with pytest.raises(TypeError, match="META_DTYPE"):
        f.run_batch(batch, meta=np.zeros(3, dtype=np.uint32))
    with pytest.raises(ValueError, match="3 records"):
        f.run_batch(batch, meta=meta_array(2))
    with pytest.raises(TypeError, match="unknown metadata fields"):
        f(b"", meta={"vlan": 1})
    with pytest.raises(TypeError, match="unknown metadata fields"):
        meta_array(2, vlan=1)
    pcap = bpfjit.compile(Program([(0x06, 0, 0, 1)]))
    with pytest.raises(ValueError, match="linux-dialect"):
        pcap(b"", meta=Meta())
    with pytest.raises(ValueError, match="linux-dialect"):
        pcap.run_batch(batch, meta=records)
    with pytest.raises(TypeError, match="Meta"):
        bpfjit.interpret(ret_a((LD_W, 0, 0, anc("IFINDEX"))), b"", dialect="linux", meta=3)  # type: ignore[arg-type]


def test_a_program_reading_no_metadata_never_touches_it() -> None:
    plain = Program([(LD_H, 0, 0, 12), (0x15, 0, 1, 0x800), (0x06, 0, 0, 1), (0x06, 0, 0, 0)])
    assert "meta_record" not in bpfjit.compile(plain, dialect="linux").llvm_ir  # one loop, no record
    tagged = bpfjit.compile(ret_a((LD_B, 0, 0, anc("VLAN_TAG"))), dialect="linux").llvm_ir
    assert "meta_record" in tagged and "defaults" in tagged  # a loop over records, one over defaults


# -- differential: JIT == interpreter on random linux-dialect programs -------------------------------
@given(programs(dialect="linux"), packets_with_wirelen(), st.one_of(st.none(), metas()))
def test_jit_agrees_with_the_interpreter(program: Program, packet_wirelen: tuple[bytes, int],
                                        meta: Meta | None) -> None:  # fmt: skip
    packet, wirelen = packet_wirelen
    expected = bpfjit.interpret(program, packet, wirelen, dialect="linux", meta=meta)
    f = bpfjit.compile(program, dialect="linux")
    assert (f(packet, wirelen) if meta is None else f(packet, wirelen, meta=meta)) == expected
    batch = Batch.from_packets([packet], wirelens=[wirelen])
    records = None
    if meta is not None:
        fields = {k: v for k, v in meta._asdict().items() if v is not None}
        records = meta_array(batch, **fields)
    assert f.run_batch(batch, meta=records)[0] == expected


def test_pcap_programs_keep_their_meaning() -> None:
    """The same bytes mean different things in the two dialects: ancillary offsets are out of bounds in pcap."""
    program = ret_a((LD_B, 0, 0, anc("PROTOCOL")))
    frame = ethernet(0x0800, b"")
    assert bpfjit.interpret(program, frame) == 0 == bpfjit.compile(program)(frame)
    assert bpfjit.compile(program, dialect="linux")(frame) == 0x800
    assert Insn(LD_B, 0, 0, anc("PROTOCOL")).k == 0xFFFFF000 and sys.byteorder in ("little", "big")


@st.composite
def dissectable_frames(draw: st.DrawFn) -> tuple[bytes, Meta]:
    """Frames built from the headers the flow dissector follows, sometimes cut short or malformed."""
    transport = draw(st.sampled_from([tcp(draw(st.integers(5, 15))), UDP, bytes(8), b""]))
    ip_proto = draw(st.sampled_from([6, 17, 136, 1, 58, 2, 33, 132, 47, 4, 41, 0, 43, 60, 44]))
    if draw(st.booleans()):
        network = ipv4(ip_proto, transport, ihl=draw(st.sampled_from([5, 6, 4, 15])),
                       frag=draw(st.sampled_from([0, 0x2000, 0x0010, 0x4000])))  # fmt: skip
        ethertype = 0x0800
    else:
        extension = bytes([draw(st.sampled_from([6, 17, 44, 0])), draw(st.integers(0, 2))]) + bytes(6)
        network = ipv6(ip_proto, extension + transport)
        ethertype = 0x86DD
    if draw(st.booleans()):  # an inner VLAN tag in the data (QinQ after the kernel took the outer one)
        network = struct.pack("!HH", draw(st.integers(0, 0xFFFF)), ethertype) + network
        ethertype = draw(st.sampled_from([0x8100, 0x88A8]))
    ethertype = draw(st.sampled_from([ethertype] * 4 + [0x0806, 0x88CC]))
    frame = ethernet(ethertype, network)
    cut = draw(st.integers(0, len(frame)))
    frame = frame[:cut] if draw(st.booleans()) else frame
    return frame, Meta(protocol=ethertype, net_offset=14)


@given(dissectable_frames())
def test_pay_offset_jit_agrees_with_the_interpreter(frame_meta: tuple[bytes, Meta]) -> None:
    frame, meta = frame_meta
    program = ret_a((LD_W, 0, 0, anc("PAY_OFFSET")))
    expected = bpfjit.interpret(program, frame, dialect="linux", meta=meta)
    assert bpfjit.compile(program, dialect="linux")(frame, meta=meta) == expected


@given(st.lists(st.tuples(st.integers(0, 20), st.binary(max_size=9), st.booleans()), max_size=6),
       st.integers(0, 64), st.integers(0, 20), st.sampled_from(["NLATTR", "NLATTR_NEST"]))  # fmt: skip
def test_nlattr_jit_agrees_with_the_interpreter(attrs: list[tuple[int, bytes, bool]], a: int, x: int,
                                                name: str) -> None:  # fmt: skip
    packet = bytes(a % 8) + b"".join(nla(t, p) if whole else struct.pack("=HH", len(p), t) + p for t, p, whole in attrs)
    program = ret_a((0x00, 0, 0, a), (LDX_IMM, 0, 0, x), (LD_W, 0, 0, anc(name)))
    expected = bpfjit.interpret(program, packet, dialect="linux")
    assert bpfjit.compile(program, dialect="linux")(packet) == expected
