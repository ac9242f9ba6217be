"""bpfjit.text: the `tcpdump -d/-dd/-ddd` listings, the comma form and bpf_asm, written and read.

The oracles: libpcap's own `bpf_image` (every opcode's -d spelling, Linux's ancillary names), tcpdump's
output (fixtures under tests/fixtures, and tcpdump itself when installed: `-y EN10MB` listings, and
`-i lo` listings of live programs with ancillary loads when run as root) and Linux's `bpf_asm` (its
output for the sources under tests/fixtures/asm; its ancillary keywords as tools/bpf/bpf_exp.l and
bpf_exp.y define them). Round trips run on hypothesis programs, valid and invalid.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from needs import require, tcpdump_path

from bpfjit import Insn, ParseError, Program
from bpfjit.linux import ANCILLARY, SKF_AD_MAX, SKF_AD_OFF, SKF_LL_OFF, SKF_NET_OFF, Ancillary
from bpfjit.opcodes import OPCODES
from bpfjit.strategies import any_programs, programs
from bpfjit.text import Style, dump, dump_asm, format_insn, parse, read_source

FIXTURES = Path(__file__).parent / "fixtures"

# Fixture name -> the expression tcpdump compiled (tests/fixtures/NAME.d, .dd, .ddd).
FILTERS = {
    "ip": "ip",
    "tcp_port_80": "tcp port 80",
    "udp_port_53_or_123": "udp and (port 53 or port 123)",
    "vlan_and_ip": "vlan and ip",
    "ip6_tcp_port_80": "ip6 and tcp port 80",
    "tcp_syn": "tcp[tcpflags] & tcp-syn != 0",
    "arith_scratch": "len > 100 and ip[2:2] * 2 - 1 > ip[0] & 0xf",
}
# Fixture name -> the expression tcpdump compiled for a live Linux interface (`tcpdump -i lo`, as
# root): libpcap's live-handle code reads VLAN tags, direction and interface as ancillary loads.
LIVE_FILTERS = {
    "live_vlan_100": "vlan 100",
    "live_vlan_100_and_ip": "vlan 100 and ip",
    "live_vlan_and_vlan_200": "vlan and vlan 200",
    "live_inbound": "inbound",
    "live_ifindex_1": "ifindex 1",
}
FIXTURES_OF_TCPDUMP = [*FILTERS, *LIVE_FILTERS]
STYLES: tuple[Style, ...] = ("d", "dd", "ddd")


def canonical(program: Program) -> Program:
    """The program with the fields its instructions ignore set to 0 (what -d and asm can express)."""
    insns = []
    for code, jt, jf, k in program:
        info = OPCODES[code]
        conditional = info.is_conditional
        insns.append(Insn(code, jt if conditional else 0, jf if conditional else 0, k if info.uses_k else 0))
    return Program(insns)


def d_listing(*lines: str) -> str:
    return "".join(f"({i:03d}) {line}\n" for i, line in enumerate(lines))


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# ================================================================================================
# -d spellings: every opcode, as libpcap 1.10.3's bpf_image printed it at index 3 with jt 1, jf 4
# ================================================================================================

D_SPELLINGS = [
    (Insn(0x00, 1, 4, 0x800), "ld       #0x800"),
    (Insn(0x01, 1, 4, 0x800), "ldx      #0x800"),
    (Insn(0x02, 1, 4, 0xF), "st       M[15]"),
    (Insn(0x03, 1, 4, 0xF), "stx      M[15]"),
    (Insn(0x04, 1, 4, 0xFFFFFFFF), "add      #-1"),
    (Insn(0x05, 1, 4, 0x2), "ja       6"),
    (Insn(0x06, 1, 4, 0x40000), "ret      #262144"),
    (Insn(0x07, 1, 4, 0x0), "tax      "),
    (Insn(0x0C, 1, 4, 0x0), "add      x"),
    (Insn(0x14, 1, 4, 0xFFFFFFFF), "sub      #-1"),
    (Insn(0x15, 1, 4, 0x800), "jeq      #0x800           jt 5\tjf 8"),
    (Insn(0x16, 1, 4, 0x0), "ret      "),
    (Insn(0x1C, 1, 4, 0x0), "sub      x"),
    (Insn(0x1D, 1, 4, 0x0), "jeq      x                jt 5\tjf 8"),
    (Insn(0x20, 1, 4, 0xC), "ld       [12]"),
    (Insn(0x24, 1, 4, 0xFFFFFFFF), "mul      #-1"),
    (Insn(0x25, 1, 4, 0x800), "jgt      #0x800           jt 5\tjf 8"),
    (Insn(0x28, 1, 4, 0xC), "ldh      [12]"),
    (Insn(0x2C, 1, 4, 0x0), "mul      x"),
    (Insn(0x2D, 1, 4, 0x0), "jgt      x                jt 5\tjf 8"),
    (Insn(0x30, 1, 4, 0xC), "ldb      [12]"),
    (Insn(0x34, 1, 4, 0x3), "div      #3"),
    (Insn(0x35, 1, 4, 0x800), "jge      #0x800           jt 5\tjf 8"),
    (Insn(0x3C, 1, 4, 0x0), "div      x"),
    (Insn(0x3D, 1, 4, 0x0), "jge      x                jt 5\tjf 8"),
    (Insn(0x40, 1, 4, 0xFFFFFFFF), "ld       [x + -1]"),
    (Insn(0x44, 1, 4, 0x800), "or       #0x800"),
    (Insn(0x45, 1, 4, 0x800), "jset     #0x800           jt 5\tjf 8"),
    (Insn(0x48, 1, 4, 0xFFFFFFFF), "ldh      [x + -1]"),
    (Insn(0x4C, 1, 4, 0x0), "or       x"),
    (Insn(0x4D, 1, 4, 0x0), "jset     x                jt 5\tjf 8"),
    (Insn(0x50, 1, 4, 0xFFFFFFFF), "ldb      [x + -1]"),
    (Insn(0x54, 1, 4, 0x800), "and      #0x800"),
    (Insn(0x5C, 1, 4, 0x0), "and      x"),
    (Insn(0x60, 1, 4, 0xF), "ld       M[15]"),
    (Insn(0x61, 1, 4, 0xF), "ldx      M[15]"),
    (Insn(0x64, 1, 4, 0x3), "lsh      #3"),
    (Insn(0x6C, 1, 4, 0x0), "lsh      x"),
    (Insn(0x74, 1, 4, 0x3), "rsh      #3"),
    (Insn(0x7C, 1, 4, 0x0), "rsh      x"),
    (Insn(0x80, 1, 4, 0x0), "ld       #pktlen"),
    (Insn(0x81, 1, 4, 0x0), "ldx      #pktlen"),  # libpcap 1.10 prints `unimp    0x81`
    (Insn(0x84, 1, 4, 0x0), "neg      "),
    (Insn(0x87, 1, 4, 0x0), "txa      "),
    (Insn(0x94, 1, 4, 0x3), "mod      #3"),
    (Insn(0x9C, 1, 4, 0x0), "mod      x"),
    (Insn(0xA4, 1, 4, 0x800), "xor      #0x800"),
    (Insn(0xAC, 1, 4, 0x0), "xor      x"),
    (Insn(0xB1, 1, 4, 0xE), "ldxb     4*([14]&0xf)"),
]


def test_every_opcode_has_a_d_spelling_test() -> None:
    assert sorted(insn.code for insn, _ in D_SPELLINGS) == sorted(OPCODES)


@pytest.mark.parametrize(("insn", "text"), D_SPELLINGS, ids=[f"0x{i.code:02x}" for i, _ in D_SPELLINGS])
def test_d_spelling(insn: Insn, text: str) -> None:
    assert format_insn(insn, 3) == text


@pytest.mark.parametrize(("insn", "text"), D_SPELLINGS, ids=[f"0x{i.code:02x}" for i, _ in D_SPELLINGS])
def test_d_spelling_parses_back(insn: Insn, text: str) -> None:
    listing = d_listing("ret      #0", "ret      #0", "ret      #0", text)
    assert parse(listing)[3] == canonical(Program([insn]))[0]


def test_d_signed_operands() -> None:
    """tcpdump's %d: offsets, arithmetic and ret print as C ints, `ja` its absolute target."""
    assert format_insn(Insn(0x06, k=0xFFFFFFFF)) == "ret      #-1"
    assert format_insn(Insn(0x20, k=0x80000000)) == "ld       [-2147483648]"
    assert format_insn(Insn(0x05, k=0xFFFFFFFF), 5) == "ja       5"
    assert format_insn(Insn(0x05, k=0xFFFFFFFE), 0) == "ja       -1"


def test_d_unknown_opcodes_print_as_libpcap() -> None:
    assert format_insn(Insn(0x0E, 1, 2, 3), 7) == "unimp    0xe"
    # libpcap appends the edges to any JMP-class code but JA, even one it cannot name
    assert format_insn(Insn(0x55, 3, 200, 5), 7) == "unimp    0x55             jt 11\tjf 208"
    assert format_insn(Insn(0x0D, 3, 200, 5), 7) == "unimp    0xd"


class _BpfInsn(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


def test_d_matches_libpcap_bpf_image_for_every_code() -> None:
    """All 65536 codes, known or not, byte for byte (but 0x81, which libpcap 1.10 cannot name)."""
    name = ctypes.util.find_library("pcap")
    require(name is not None, "libpcap (apt install libpcap0.8)")
    bpf_image = ctypes.CDLL(name).bpf_image
    bpf_image.restype = ctypes.c_char_p
    bpf_image.argtypes = [ctypes.POINTER(_BpfInsn), ctypes.c_int]
    wrong = []
    for code in range(0x10000):
        for jt, jf, k in ((1, 4, 0x800), (0, 255, 0xFFFFFFFF), (255, 0, 0x80000000)):
            theirs = bpf_image(ctypes.byref(_BpfInsn(code, jt, jf, k)), 3).decode()
            ours = f"(003) {format_insn(Insn(code, jt, jf, k), 3)}"
            if code == 0x81:
                assert (theirs, ours) == ("(003) unimp    0x81", "(003) ldx      #pktlen")
            elif ours != theirs:
                wrong.append((ours, theirs))
    assert wrong == []


# ================================================================================================
# tcpdump's own output: fixtures (always) and tcpdump itself (when installed; required in CI)
# ================================================================================================


@pytest.mark.parametrize("name", FIXTURES_OF_TCPDUMP)
def test_fixture_styles_agree(name: str) -> None:
    """-dd and -ddd carry every field; -d drops the unused ones (tcpdump leaves `tax` k = 7)."""
    d, dd, ddd = (parse(fixture(f"{name}.{style}")) for style in STYLES)
    assert dd == ddd
    assert d == canonical(dd)
    assert len(d) > 1


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("name", FIXTURES_OF_TCPDUMP)
def test_fixture_dump_reproduces_tcpdump(name: str, style: Style) -> None:
    text = fixture(f"{name}.{style}")
    assert parse(text).dump(style) == text
    assert parse(fixture(f"{name}.dd")).dump(style) == text


@pytest.mark.parametrize("name", FIXTURES_OF_TCPDUMP)
def test_fixture_asm_round_trip(name: str) -> None:
    program = parse(fixture(f"{name}.dd"))
    assert parse(dump_asm(program)) == canonical(program)


def test_str_of_a_program_is_its_d_listing() -> None:
    program = parse(fixture("ip.ddd"))
    assert str(program) == fixture("ip.d")
    assert Program.parse(fixture("ip.d")) == program


@pytest.mark.parametrize("name", FILTERS)
def test_tcpdump_live(name: str) -> None:
    """Whatever this tcpdump prints, bpfjit reads it and prints it back byte for byte."""
    tcpdump = tcpdump_path()
    require(tcpdump is not None, "tcpdump (apt install tcpdump)")
    assert tcpdump is not None
    texts = {
        style: subprocess.run(
            [tcpdump, f"-{style}", "-y", "EN10MB", FILTERS[name]], capture_output=True, text=True, check=True
        ).stdout
        for style in STYLES
    }
    program = parse(texts["dd"])
    assert parse(texts["ddd"]) == program
    assert parse(texts["d"]) == canonical(program)
    for style, text in texts.items():
        assert program.dump(style) == text


# ================================================================================================
# Linux's ancillary loads: tcpdump's names, bpf_asm's keywords, live programs
# ================================================================================================

ABS_LOADS = {"ld": 0x20, "ldh": 0x28, "ldb": 0x30}  # the load size is ignored by Linux; named at each
# bpf_asm's extension keywords (tools/bpf/bpf_exp.l) -> SKF_AD_* offset, read from the kernel's lexer
# by hand: `"#"?("name")`, caseless, so `ld #proto` = `ld proto` = `ld #PROTO`; no keyword for XOR_X.
ASM_KEYWORDS = {
    "proto": 0, "type": 4, "poff": 52, "ifidx": 8, "nla": 12, "nlan": 16, "mark": 20, "queue": 24,
    "hatype": 28, "rxhash": 32, "cpu": 36, "vlan_tci": 44, "vlan_pr": 48, "vlan_avail": 48,
    "vlan_tpid": 60, "rand": 56,
}  # fmt: skip


def test_the_ancillary_table_spells_as_bpf_asm() -> None:
    assert {row.asm: row.offset for row in ANCILLARY if row.asm} == {
        name: off for name, off in ASM_KEYWORDS.items() if name != "vlan_avail"
    }
    assert [row.name for row in ANCILLARY if not row.asm] == ["ALU_XOR_X"]


@pytest.mark.parametrize("row", ANCILLARY, ids=[row.name for row in ANCILLARY])
@pytest.mark.parametrize("mnemonic", ABS_LOADS)
def test_ancillary_spellings(mnemonic: str, row: Ancillary) -> None:
    """Every ancillary load at every width: tcpdump's `-d` name and bpf_asm's keyword, both ways."""
    insn = Insn(ABS_LOADS[mnemonic], k=row.k)
    d = f"{mnemonic:<8} [{row.tcpdump}]"
    assert format_insn(insn) == d
    assert parse(f"(000) {d}\n") == Program([insn])
    asm = dump_asm(Program([insn]))
    expected = f"#{row.asm}" if row.asm else f"[0x{row.k:x}]"
    assert asm == f"{mnemonic:<5}{expected}\n"
    assert parse(asm) == Program([insn])
    assert parse(f"{mnemonic} [{row.tcpdump}]\n") == Program([insn])  # tcpdump's name in bpf_asm source too


@pytest.mark.parametrize("mnemonic", ABS_LOADS)
def test_asm_reads_every_bpf_asm_keyword(mnemonic: str) -> None:
    """`#name` or bare `name`, any case, for ld/ldh/ldb: an absolute load at SKF_AD_OFF + n (bpf_exp.y)."""
    for name, offset in ASM_KEYWORDS.items():
        expected = Program([Insn(ABS_LOADS[mnemonic], k=SKF_AD_OFF + offset), Insn(0x16)])
        for spelt in (f"#{name}", name, f"#{name.upper()}"):
            assert parse(f"{mnemonic} {spelt}\nret a\n") == expected, spelt


def test_d_ancillary_names_match_libpcap_bpf_image() -> None:
    """libpcap names an absolute load of any width in [SKF_AD_OFF, SKF_AD_OFF + SKF_AD_MAX) that has a
    name, and prints every other k, the rest of that window included, as `[%d]`; indexed and msh
    loads never get a name."""
    name = ctypes.util.find_library("pcap")
    require(name is not None, "libpcap (apt install libpcap0.8)")
    bpf_image = ctypes.CDLL(name).bpf_image
    bpf_image.restype = ctypes.c_char_p
    bpf_image.argtypes = [ctypes.POINTER(_BpfInsn), ctypes.c_int]
    ks = [*range(SKF_AD_OFF - 8, SKF_AD_OFF + SKF_AD_MAX + 8), SKF_NET_OFF & 0xFFFFFFFF, SKF_LL_OFF & 0xFFFFFFFF,
          0xFFFFFFFF, 0xFFFFFFFC, 0x80000000, 0x7FFFFFFF]  # fmt: skip
    named = 0
    for code in (0x20, 0x28, 0x30, 0x40, 0x48, 0x50, 0xB1):
        for k in ks:
            theirs = bpf_image(ctypes.byref(_BpfInsn(code, 0, 0, k)), 0).decode()
            assert f"(000) {format_insn(Insn(code, k=k))}" == theirs
            named += re.search(r"\[[a-z_]+\]", theirs) is not None
    assert named == 3 * len(ANCILLARY)  # this libpcap knows all 16 names (built with Linux's filter.h)


def test_d_ancillary_window_without_a_name_prints_signed() -> None:
    assert format_insn(Insn(0x20, k=SKF_AD_OFF + 2)) == "ld       [-4094]"
    assert format_insn(Insn(0x30, k=SKF_AD_OFF + SKF_AD_MAX)) == "ldb      [-4032]"
    assert format_insn(Insn(0x28, k=SKF_NET_OFF & 0xFFFFFFFF)) == "ldh      [-1048576]"
    assert format_insn(Insn(0x30, k=SKF_AD_OFF + 48 + 1)) == "ldb      [-4047]"
    assert format_insn(Insn(0x50, k=SKF_AD_OFF + 48)) == "ldb      [x + -4048]"
    assert parse("(000) ld       [-4094]\n") == Program([Insn(0x20, k=SKF_AD_OFF + 2)])


def test_dd_and_ddd_of_ancillary_loads_are_numeric() -> None:
    program = Program([Insn(0x30, k=SKF_AD_OFF + 48), Insn(0x16)])
    assert program.dump("dd") == "{ 0x30, 0, 0, 0xfffff030 },\n{ 0x16, 0, 0, 0x00000000 },\n"
    assert program.dump("ddd") == "2\n48 0 0 4294963248\n22 0 0 0\n"


def test_dump_asm_of_a_live_vlan_program() -> None:
    assert dump_asm(parse(fixture("live_vlan_100.dd"))) == (
        "      ldb  #vlan_pr\n"
        "      jeq  #0x1, l006\n"
        "      ldh  [12]\n"
        "      jeq  #0x8100, l006\n"
        "      jeq  #0x88a8, l006\n"
        "      jne  #0x9100, l014\n"
        "l006: ldb  #vlan_pr\n"
        "      jne  #0x1, l010\n"
        "      ldb  #vlan_tci\n"
        "      jmp  l011\n"
        "l010: ldh  [14]\n"
        "l011: and  #0xfff\n"
        "      jne  #0x64, l014\n"
        "      ret  #262144\n"
        "l014: ret  #0\n"
    )


def test_ancillary_programs_parse_to_plain_instructions() -> None:
    """Whether a dialect runs `ld [SKF_AD_OFF + n]` is validate's business: the text is only read."""
    assert parse("ld #proto\nret a\n") == Program([Insn(0x20, k=0xFFFFF000), Insn(0x16)])
    assert parse("(000) ld       [xor_x]\n(001) ret      \n") == Program([Insn(0x20, k=0xFFFFF028), Insn(0x16)])


# Expressions whose live program (libpcap's code for an activated Linux handle) has ancillary loads.
LIVE_EXPRESSIONS = [*LIVE_FILTERS.values(), "vlan", "outbound", "vlan and udp", "vlan 100 or vlan 200", "not vlan"]


@pytest.mark.parametrize("expression", LIVE_EXPRESSIONS)
def test_tcpdump_live_interface(expression: str) -> None:
    """`tcpdump -i lo -d/-dd/-ddd EXPR`: the program tcpdump attaches, ancillary loads and all, read and
    printed back byte for byte in each style."""
    tcpdump = tcpdump_path()
    require(tcpdump is not None, "tcpdump (apt install tcpdump)")
    require(os.geteuid() == 0, "root (tcpdump -i lo opens the interface to compile a live program)")
    assert tcpdump is not None
    texts = {
        style: subprocess.run(
            [tcpdump, "-i", "lo", f"-{style}", expression], capture_output=True, text=True, check=True
        ).stdout
        for style in STYLES
    }
    program = parse(texts["dd"])
    assert any(0x20 <= code <= 0x30 and k >= SKF_AD_OFF for code, _, _, k in program), "no ancillary load"
    assert parse(texts["ddd"]) == program
    assert parse(texts["d"]) == canonical(program)
    for style, text in texts.items():
        assert program.dump(style) == text
    assert parse(dump_asm(program)) == canonical(program)


# ================================================================================================
# Reading -d, -dd, -ddd and the comma form
# ================================================================================================


def test_parse_d_libpcap_quirks() -> None:
    """`unimp 0x81` is libpcap 1.10's `ldx #pktlen`; `ret` alone is `ret a`; targets are absolute."""
    program = parse(
        d_listing(
            "unimp    0x81",
            "ld       #-1",
            "ldh      [x + -1]",
            "jeq      #0x800           jt 5\tjf 6",
            "ja       6",
            "ret      ",
            "ret      #-1",
        )
    )
    assert list(program) == [
        Insn(0x81),
        Insn(0x00, k=0xFFFFFFFF),
        Insn(0x48, k=0xFFFFFFFF),
        Insn(0x15, 1, 2, 0x800),
        Insn(0x05, k=1),
        Insn(0x16),
        Insn(0x06, k=0xFFFFFFFF),
    ]


def test_parse_d_backward_ja_target() -> None:
    """libpcap prints a `ja` k that wraps as a negative target; it reads back to the same k."""
    assert parse("(000) ja       -1\n") == Program([Insn(0x05, k=0xFFFFFFFE)])


def test_parse_d_is_lenient_about_whitespace_and_blank_lines() -> None:
    text = "\n  (000)   ldh [12]\r\n\n(001) jeq #2048 jt 2 jf 3\n(002) ret #262144\n(003) ret #0\n\n"
    assert parse(text) == parse(fixture("ip.d"))


def test_parse_dd_as_bpf_asm_prints_it() -> None:
    """`bpf_asm -c`: `%#04x`, `%2u` and `%#010x` (so 0 is `0000000000`)."""
    text = fixture("asm/tcp_port_80.bpf.c.out")
    assert "0000000000" in text
    assert parse(text) == parse(fixture("asm/tcp_port_80.bpf.out"))


def test_parse_dd_trailing_comma_is_optional() -> None:
    assert parse("{ 0x6, 0, 0, 0x00000001 }\n") == Program([Insn(0x06, k=1)])


def test_parse_comma_form() -> None:
    program = Program([Insn(0x30, k=9), Insn(0x15, 0, 1, 6), Insn(0x06, k=1), Insn(0x06)])
    assert parse("4,48 0 0 9,21 0 1 6,6 0 0 1,6 0 0 0") == program  # iptables -m bpf --bytecode
    assert parse("4,48 0 0 9,21 0 1 6,6 0 0 1,6 0 0 0,\n") == program  # bpf_asm
    assert parse("4,\n48 0 0 9,\n21 0 1 6,\n6 0 0 1,\n6 0 0 0\n") == program


@pytest.mark.parametrize("text", ["", "\n", "  \n\t\n"])
def test_parse_no_instructions_is_the_empty_program(text: str) -> None:
    assert parse(text) == Program([])


def test_parse_takes_str_only() -> None:
    with pytest.raises(TypeError):
        parse(b"(000) ret #0\n")  # type: ignore[arg-type]


def test_dump_unknown_style() -> None:
    with pytest.raises(ValueError, match="unknown dump style"):
        dump(Program([Insn(0x06)]), "ddddd")  # type: ignore[arg-type]


LISTING_ERRORS = [
    # (text, line, part of the message)
    ("(000) ldh [12]\n(002) ret #0\n", 2, "instruction (002) where (001) belongs"),
    ("(000) ldh [12]\n\n(001) frob #1\n", 3, "unknown mnemonic 'frob'"),
    ("(000) jeq #1 jt 0 jf 1\n(001) ret #0\n", 1, "jump target 0 of instruction 0 is not 1 to 256"),
    ("(000) jeq #1 jt 1 jf 300\n", 1, "jump target 300"),
    ("(000) jeq #1\n", 1, "expected 'jt'"),
    ("(000) ret #0 jt 1 jf 2\n", 1, "unexpected 'jt'"),
    ("(000) unimp    0xe\n", 1, "use -dd or -ddd"),
    ("(000) ld #0x100000000\n", 1, "does not fit in 32 bits"),
    ("(000) ldb #1\n", 1, "ldb does not take #k"),
    ("(000) ret #0\nret #0\n", 2, "expected '(NNN) mnemonic operand'"),
    ("{ 0x28, 0, 0, 0x0c },\n{ 0x28, 0, 0 },\n", 2, "expected '{ code, jt, jf, k },'"),
    ("{ 0x28, 256, 0, 0 },\n", 1, "jt 256 does not fit in u8"),
    ("{ 0x10000, 0, 0, 0 },\n", 1, "code 0x10000 does not fit in u16"),
    ("{ 0x28, 0, 0, 09 },\n", 1, "malformed number '09'"),
    ("3\n6 0 0 0\n6 0 0 1\n", 1, "the count says 3 instructions but 2 follow"),
    ("1\n6 0 0\n", 2, "expected 'code jt jf k'"),
    ("1\n6 0 0 -1\n", 2, "k '-1' is not an unsigned number"),
    ("1\n6 0 0 4294967296\n", 2, "k 4294967296 does not fit in u32"),
    ("2,6 0 0 0,", 1, "the count says 2 instructions but 1 follow"),
    ("1,6 0 0", 1, "item 1 of the comma form"),
    ("2,6 0 0 0,\n6 0 0 4294967296", 2, "k 4294967296 does not fit in u32"),
    ("2,6 0 0 0,,6 0 0 0", 1, "item 2 of the comma form"),
]


@pytest.mark.parametrize(("text", "line", "message"), LISTING_ERRORS)
def test_listing_errors_name_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(text)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"line {line}: ")
    assert message in str(caught.value)


# ================================================================================================
# Reading bpf_asm
# ================================================================================================

ASM_SOURCES = sorted(path.name for path in (FIXTURES / "asm").glob("*.bpf"))


@pytest.mark.parametrize("name", ASM_SOURCES)
def test_asm_reads_as_linux_bpf_asm_does(name: str) -> None:
    """The fixture's .out is Linux bpf_asm's own output for the source."""
    assert parse(fixture(f"asm/{name}")) == parse(fixture(f"asm/{name}.out"))


def test_asm_fixture_is_tcp_port_80() -> None:
    """The hand-written source compiles to what tcpdump gives (modulo jumps into the shared exits)."""
    assert len(parse(fixture("asm/tcp_port_80.bpf"))) == len(parse(fixture("tcp_port_80.dd")))


ASM_FILTER = """\
/* IPv4 TCP to port 22 or to a port of 8 or more but below 1024 */
        ldh [12]
        jne #0x800, drop        ; jeq with `drop` on the false edge
        ldb [23]
        jneq #6, drop
        ldh [20]
        jset #0x1fff, drop      ; a later fragment
        ldxb 4*([14]&0xf)
        ldh [x + 16]
        jeq #22, keep           ; the false edge falls through
        jle #010, drop          ; octal 8: jgt #8 with `drop` on the false edge
        jlt #1024, drop         ; jge #1024 likewise
keep:   ret #-1
drop:   ret #0
"""


def test_asm_filter_with_sugar_comments_and_labels() -> None:
    # Checked against Linux bpf_asm -c.
    assert list(parse(ASM_FILTER)) == [
        Insn(0x28, 0, 0, 12),
        Insn(0x15, 0, 10, 0x800),
        Insn(0x30, 0, 0, 23),
        Insn(0x15, 0, 8, 6),
        Insn(0x28, 0, 0, 20),
        Insn(0x45, 6, 0, 0x1FFF),
        Insn(0xB1, 0, 0, 14),
        Insn(0x48, 0, 0, 16),
        Insn(0x15, 2, 0, 22),
        Insn(0x25, 0, 2, 8),
        Insn(0x35, 0, 1, 1024),
        Insn(0x06, 0, 0, 0xFFFFFFFF),
        Insn(0x06, 0, 0, 0),
    ]


def test_asm_x_operands_ja_scratch_and_negative_numbers() -> None:
    source = """
        ld #-1          ; 0xffffffff
        st M[017]       ; octal 15
        ldx #-2147483648
        jgt x, big, small
small:  ja out
big:    ld M[15]
out:    ret a
    """
    # Checked against Linux bpf_asm -c.
    assert list(parse(source)) == [
        Insn(0x00, 0, 0, 0xFFFFFFFF),
        Insn(0x02, 0, 0, 15),
        Insn(0x01, 0, 0, 0x80000000),
        Insn(0x2D, 1, 0, 0),
        Insn(0x05, 0, 0, 1),
        Insn(0x60, 0, 0, 15),
        Insn(0x16, 0, 0, 0),
    ]


@pytest.mark.parametrize(
    ("number", "k"),
    [
        ("0", 0),
        ("42", 42),
        ("-1", 0xFFFFFFFF),
        ("+7", 7),
        ("-2147483648", 0x80000000),
        ("4294967295", 0xFFFFFFFF),
        ("0x1F", 0x1F),
        ("0XfF", 0xFF),
        ("010", 8),
        ("00", 0),
        ("0b101", 5),
        ("-0x10", 0xFFFFFFF0),
    ],
)
def test_asm_numbers(number: str, k: int) -> None:
    assert parse(f"ld #{number}\n") == Program([Insn(0x00, k=k)])


def test_asm_jump_reach() -> None:
    """A conditional jump reaches 255 instructions ahead (jt is u8); `ja` any distance."""
    body = "ld #0\n" * 255
    assert parse(f"jeq #1, far\n{body}far: ret #0\n")[0] == Insn(0x15, 255, 0, 1)
    assert parse(f"jmp far\n{body * 4}far: ret #0\n")[0] == Insn(0x05, k=1020)
    with pytest.raises(ParseError, match="at most 255") as caught:
        parse(f"ld #1\njeq #1, far\n{body}ld #0\nfar: ret #0\n")
    assert caught.value.line == 2


def test_asm_extensions_beyond_bpf_asm() -> None:
    """tcpdump's spellings, `[x+k]` unspaced, two-label negated jumps, several labels per insn."""
    assert parse("ld #pktlen\nldx #pktlen\n") == Program([Insn(0x80), Insn(0x81)])
    assert parse("ldb [x+1]\nret\n") == Program([Insn(0x50, k=1), Insn(0x16)])
    assert parse("jne #1, aa, bb\naa: ret #1\nbb: ret #0\n")[0] == Insn(0x15, 1, 0, 1)
    assert parse("jlt x, aa, bb\naa: ret #1\nbb: ret #0\n")[0] == Insn(0x3D, 1, 0, 0)
    assert parse("jmp bb\naa: bb: ret #0\n")[0] == Insn(0x05, k=0)


def test_asm_is_free_form_and_case_insensitive() -> None:
    assert parse("LDH [12] JEQ #0x800, yes RET #0 yes: Ret A") == Program(
        [Insn(0x28, k=12), Insn(0x15, 1, 0, 0x800), Insn(0x06), Insn(0x16)]
    )


def test_asm_labels_are_case_sensitive() -> None:
    with pytest.raises(ParseError, match="unknown label 'Done'"):
        parse("jmp Done\ndone: ret #0\n")


ASM_ERRORS = [
    # (source, line, part of the message)
    ("ld [12]\nfoo #1\nret #0\n", 2, "unknown mnemonic 'foo'"),
    ("ld [12]\njeq #1, nowhere\nret #0\n", 2, "unknown label 'nowhere'"),
    ("back: ld [12]\njeq #1, back\nret #0\n", 2, "goes backward"),
    ("ld #1\nself: jmp self\n", 2, "goes backward"),
    ("aa: ld #1\naa: ret #0\n", 2, "label 'aa' is defined twice"),
    ("ret #0\nend:\n", 2, "label 'end' is not followed by an instruction"),
    ("ret x\n", 1, "ret does not take x"),
    ("ld #0x100000000\n", 1, "does not fit in 32 bits"),
    ("ld #-2147483649\n", 1, "does not fit in 32 bits"),
    ("ld #09\n", 1, "malformed number '09'"),
    ("ld #12ab\n", 1, "malformed number '12ab'"),
    ("ret #0\nldb #1\n", 2, "ldb does not take #k"),
    ("ldx [1]\n", 1, "ldx does not take [k]"),
    ("st #1\n", 1, "st does not take #k"),
    ("jmp 3\n", 1, "expected a label"),
    ("ret #0\n/* never\nclosed\n", 2, "comment '/*' is never closed"),
    ("ld #random\n", 1, "'random' is tcpdump's name for SKF_AD_RANDOM: write [random] or bpf_asm's #rand"),
    ("ld #xor_x\n", 1, "write [xor_x] (bpf_asm has no keyword for it), or [-4056]"),
    ("ld [rand]\n", 1, "[rand] is not tcpdump's name for SKF_AD_RANDOM: write [random]"),
    ("ld [protocol]\n", 1, "expected an offset or an ancillary name in [...], found 'protocol'"),
    ("ret #0\nldx #proto\n", 2, "ldx does not take an ancillary name"),
    ("ldi #ifidx\n", 1, "ldi does not take an ancillary name"),
    ("jeq #proto, aa\naa: ret #0\n", 1, "jeq takes #k or x, not an ancillary name"),
    ("ld [x + proto]\n", 1, "expected a number, found 'proto'"),
    ("ldxb 4*([proto]&0xf)\n", 1, "expected a number, found 'proto'"),
    ("ldxb 2*([14]&0xf)\n", 1, "only 4*([k]&0xf)"),
    ("ldxb 4*([14]&0xff)\n", 1, "only 4*([k]&0xf)"),
    ("L: ret #0\n", 1, "too short"),
    ("ld 5\n", 1, "ld does not take a bare number (it takes"),
    ("ret #0 $\n", 1, "unexpected character '$'"),
    ("jeq #1 done\ndone: ret #0\n", 1, "expected ','"),
    ("ld [12\nret #0\n", 2, "expected ']', found 'ret'"),
    ("ld\n", 1, "expected an operand, found the end of the text"),
    ("ret %y\n", 1, "expected 'x' or 'a' after '%'"),
    ("jne M[1], aa\naa: ret #0\n", 1, "jne takes #k or x, not M[k]"),
    ("#2 at the start of a line is a comment\n  ret #2 ; fine\n 42\n", 3, "expected a mnemonic or a label"),
]


@pytest.mark.parametrize(("source", "line", "message"), ASM_ERRORS)
def test_asm_errors_name_the_line(source: str, line: int, message: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse(source)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"line {line}: ")
    assert message in str(caught.value)


# ================================================================================================
# Writing bpf_asm
# ================================================================================================

ASM_SPELLINGS = [
    (Insn(0x00, k=0x800), "ld   #0x800"),
    (Insn(0x80, k=9), "ld   #len"),
    (Insn(0x20, k=12), "ld   [12]"),
    (Insn(0x28, k=12), "ldh  [12]"),
    (Insn(0x30, k=0xFFFFF004), "ldb  #type"),  # SKF_AD_OFF + SKF_AD_PKTTYPE, by its bpf_asm keyword
    (Insn(0x30, k=0xFFFFF002), "ldb  [0xfffff002]"),  # in the ancillary window, no name
    (Insn(0x40, k=0xFFFFFFFF), "ld   [x + 0xffffffff]"),
    (Insn(0x48, k=14), "ldh  [x + 14]"),
    (Insn(0x50, k=0), "ldb  [x + 0]"),
    (Insn(0x60, k=15), "ld   M[15]"),
    (Insn(0x01, k=0), "ldx  #0x0"),
    (Insn(0x81), "ldx  #len"),
    (Insn(0x61, k=3), "ldx  M[3]"),
    (Insn(0xB1, k=14), "ldxb 4*([14]&0xf)"),
    (Insn(0x02, k=0), "st   M[0]"),
    (Insn(0x03, k=15), "stx  M[15]"),
    (Insn(0x04, k=1), "add  #1"),
    (Insn(0x14, k=0xFFFFFFFF), "sub  #-1"),
    (Insn(0x24, k=0x80000000), "mul  #0x80000000"),
    (Insn(0x34, k=65536), "div  #65536"),
    (Insn(0x44, k=0x800), "or   #0x800"),
    (Insn(0x54, k=0xFF), "and  #0xff"),
    (Insn(0x64, k=31), "lsh  #31"),
    (Insn(0x74, k=1), "rsh  #1"),
    (Insn(0x94, k=7), "mod  #7"),
    (Insn(0xA4, k=0xFFFFFFFF), "xor  #0xffffffff"),
    (Insn(0x0C, k=5), "add  x"),
    (Insn(0x1C), "sub  x"),
    (Insn(0x2C), "mul  x"),
    (Insn(0x3C), "div  x"),
    (Insn(0x4C), "or   x"),
    (Insn(0x5C), "and  x"),
    (Insn(0x6C), "lsh  x"),
    (Insn(0x7C), "rsh  x"),
    (Insn(0x9C), "mod  x"),
    (Insn(0xAC), "xor  x"),
    (Insn(0x84), "neg"),
    (Insn(0x06, k=262144), "ret  #262144"),
    (Insn(0x06, k=0xFFFFFFFF), "ret  #-1"),
    (Insn(0x16), "ret  a"),
    (Insn(0x07, jt=3, k=7), "tax"),
    (Insn(0x87), "txa"),
]
JUMP_CODES = {code for code, info in OPCODES.items() if info.is_jump}


def test_every_non_jump_opcode_has_an_asm_spelling_test() -> None:
    assert {insn.code for insn, _ in ASM_SPELLINGS} == set(OPCODES) - JUMP_CODES


@pytest.mark.parametrize(("insn", "text"), ASM_SPELLINGS, ids=[f"0x{i.code:02x}" for i, _ in ASM_SPELLINGS])
def test_asm_spelling(insn: Insn, text: str) -> None:
    program = Program([insn])
    assert dump_asm(program) == text + "\n"
    assert parse(dump_asm(program)) == canonical(program)


def test_dump_asm_of_a_tcpdump_program() -> None:
    assert dump_asm(parse(fixture("tcp_syn.dd"))) == (
        "      ldh  [12]\n"
        "      jne  #0x800, l010\n"
        "      ldb  [23]\n"
        "      jne  #0x6, l010\n"
        "      ldh  [20]\n"
        "      jset #0x1fff, l010\n"
        "      ldxb 4*([14]&0xf)\n"
        "      ldb  [x + 27]\n"
        "      jset #0x2, l009, l010\n"
        "l009: ret  #262144\n"
        "l010: ret  #0\n"
    )


@pytest.mark.parametrize(
    ("insn", "text"),
    [
        (Insn(0x15, 1, 2, 0x800), "jeq  #0x800, l002, l003"),  # both edges jump
        (Insn(0x15, 1, 0, 0x800), "jeq  #0x800, l002"),  # false edge falls through
        (Insn(0x15, 0, 2, 0x800), "jne  #0x800, l003"),  # true edge falls through
        (Insn(0x35, 0, 2, 3), "jlt  #0x3, l003"),
        (Insn(0x25, 0, 1, 3), "jle  #0x3, l002"),
        (Insn(0x45, 0, 2, 3), "jset #0x3, l001, l003"),  # no negated jset in bpf_asm
        (Insn(0x1D, 0, 0, 9), "jeq  x, l001"),  # jt == jf == 0
        (Insn(0x2D, 2, 1), "jgt  x, l003, l002"),
        (Insn(0x3D, 0, 1), "jlt  x, l002"),
        (Insn(0x05, 3, 4, 2), "jmp  l003"),
    ],
)
def test_dump_asm_jumps(insn: Insn, text: str) -> None:
    program = Program([insn, Insn(0x06), Insn(0x06, k=1), Insn(0x06, k=2)])
    lines = dump_asm(program).splitlines()
    assert lines[0].strip() == text
    assert parse(dump_asm(program)) == canonical(program)


def test_dump_asm_labels_only_targets() -> None:
    text = dump_asm(Program([Insn(0x05, k=1), Insn(0x06), Insn(0x06, k=1)]))
    assert text == "      jmp  l002\n      ret  #0\nl002: ret  #1\n"


def test_dump_asm_without_jumps_has_no_margin() -> None:
    assert dump_asm(Program([Insn(0x28, k=12), Insn(0x16)])) == "ldh  [12]\nret  a\n"


def test_dump_asm_empty() -> None:
    assert dump_asm(Program([])) == ""
    assert dump(Program([]), "asm") == ""


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (Program([Insn(0x06), Insn(0x0E)]), r"insn 1 \(unimp 0xe\): opcode 0x0e has no bpf_asm spelling"),
        (Program([Insn(0x15, 1, 0), Insn(0x06)]), r"insn 0 \(jeq #0x0 jt 2 jf 1\): jump target 2 is past"),
        (Program([Insn(0x06), Insn(0x05, k=0xFFFFFFFF), Insn(0x06)]), r"insn 1 \(ja 1\): jump target"),
    ],
)
def test_dump_asm_refuses_what_labels_cannot_say(program: Program, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dump_asm(program)


# ================================================================================================
# Round trips
# ================================================================================================


@given(programs(max_insns=64))
def test_round_trip_valid_programs(program: Program) -> None:
    exact: tuple[Style, ...] = ("dd", "ddd")
    for style in exact:
        assert parse(dump(program, style)) == program
    lossy: tuple[Style, ...] = ("d", "asm")  # they drop the fields an instruction ignores
    for style in lossy:
        assert parse(dump(program, style)) == canonical(program)


@given(any_programs(known_only=True))
def test_round_trip_any_known_program(program: Program) -> None:
    """-d/-dd/-ddd print any instruction of a known opcode, jumps out of range included."""
    assert parse(dump(program, "dd")) == program
    assert parse(dump(program, "ddd")) == program
    assert parse(dump(program, "d")) == canonical(program)


@given(any_programs(known_only=True))
def test_round_trip_asm_when_labels_can_say_it(program: Program) -> None:
    """asm writes every known program whose jumps land on instructions, and refuses the others."""
    in_range = all(
        all(target < len(program) for target in _targets(insn, i)) for i, insn in enumerate(program)
    )
    if in_range:
        assert parse(dump_asm(program)) == canonical(program)
    else:
        with pytest.raises(ValueError, match="past the end"):
            dump_asm(program)


@given(any_programs())
def test_round_trip_any_program_binary_styles(program: Program) -> None:
    """-dd and -ddd carry any 8 bytes; -d reads back unless libpcap's `unimp` hides the fields."""
    assert parse(dump(program, "dd")) == program
    assert parse(dump(program, "ddd")) == program
    if all(insn.known for insn in program):
        assert parse(dump(program, "d")) == canonical(program)
    else:
        with pytest.raises(ParseError, match="unimp"):
            parse(dump(program, "d"))


def _targets(insn: Insn, index: int) -> list[int]:
    """Where dump_asm needs labels: ja's target, and the conditional edges it writes."""
    info = OPCODES[insn.code]
    if info.kind == "ja":
        return [index + 1 + insn.k]
    if info.is_conditional:
        return [index + 1 + insn.jt, index + 1 + insn.jf]
    return []


# -- read_source: a filter file's program or expression ---------------------------------------
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("tcp port 80\n", "tcp port 80"),
        ("udp\n\tand not\n  port 53", "udp and not port 53"),  # whitespace collapsed, as tcpdump -F
        ("(tcp or udp) and port 53", "(tcp or udp) and port 53"),  # `(` without a number: not -d
        ("not ip", "not ip"),
        ("", ""),  # blank: the empty expression (keep everything), as tcpdump reads it
        ("# a comment\ntcp  # port 80 later\n", "tcp"),  # `#` comments removed, as tcpdump -F does
        ("(000) ret      #1\n", Program([(0x06, 0, 0, 1)])),
        ("{ 0x6, 0, 0, 0x00000001 },\n", Program([(0x06, 0, 0, 1)])),
        ("1\n6 0 0 1\n", Program([(0x06, 0, 0, 1)])),
        ("1,6 0 0 1,", Program([(0x06, 0, 0, 1)])),
        ("RET #1", Program([(0x06, 0, 0, 1)])),
        ("  /* first */ ret #1", Program([(0x06, 0, 0, 1)])),
        ("; nothing but a comment\n", Program([])),
        ("#include <x.h>\nkeep: ret #1", Program([(0x06, 0, 0, 1)])),
    ],
)
def test_read_source(source: str, expected: Program | str) -> None:
    assert read_source(source) == expected


@pytest.mark.parametrize("source", ["ret #1, x", "start: tcp", "; ip\ntcp", "(000) tcp"])
def test_read_source_program_with_a_mistake_is_a_parse_error(source: str) -> None:
    with pytest.raises(ParseError):
        read_source(source)
