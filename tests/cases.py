"""The semantic cases of SEMANTICS.md as data: every runtime rule and every edge case with a value.

A `Case` is a program and the runs that pin its meaning, each `(packet, wirelen or None, expected)`.
tests/test_semantics.py runs every case on every backend of tests/backends.py. Expected results are
worked out by hand from SEMANTICS.md (big-endian reads of known bytes, constants written out), never
by running a backend. Names start with the rule (`ruleNN_`) or edge case (`edgeNN_`) they test.

Programs are built with the small constructors below, which look their codes up in
`bpfjit.opcodes.OPCODES` by (mnemonic, kind); tests/test_semantics.py checks those codes against the
hex values SEMANTICS.md quotes, so the table cannot drift without a test noticing.

Most packets are `pattern(n)`: byte i is `i % 255 + 1`, never 0, so every successful load gives a
non-zero value that cannot be mistaken for a failed load's 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache

from bpfjit import Insn, Program
from bpfjit.opcodes import BPF_MAXINSNS, OPCODES

U32 = 0xFFFFFFFF

Run = tuple[bytes, "int | None", int]


@dataclass(frozen=True)
class Case:
    """One program and its runs: `(packet, wirelen or None, expected result)`."""

    name: str
    program: tuple[Insn, ...] | str
    runs: tuple[Run, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.program, str):
            object.__setattr__(self, "program", tuple(Insn(*insn) for insn in self.program))
        object.__setattr__(self, "runs", tuple(self.runs))


@cache
def program_of(case: Case) -> Program:
    """The case's program as a `Program` (built once: a 4096-insn program is not free to build)."""
    if isinstance(case.program, str):
        return Program.parse(case.program)
    return Program(case.program)


# -- instruction constructors --------------------------------------------------------------------
def code_of(mnemonic: str, kind: str) -> int:
    """The one opcode with this `tcpdump -d` mnemonic and kind (`ldh`, `ld_abs` -> 0x28)."""
    codes = [code for code, info in OPCODES.items() if info.mnemonic == mnemonic and info.kind == kind]
    assert len(codes) == 1, f"{mnemonic}/{kind} matches {codes}"
    return codes[0]


_SIZED = {4: "ld", 2: "ldh", 1: "ldb"}


def ld_imm(k: int) -> Insn:  # A <- k
    return Insn(code_of("ld", "ld_imm"), 0, 0, k)


def ld_len() -> Insn:  # A <- wirelen
    return Insn(code_of("ld", "ld_len"))


def ld_mem(k: int) -> Insn:  # A <- M[k]
    return Insn(code_of("ld", "ld_mem"), 0, 0, k)


def ld_abs(width: int, k: int) -> Insn:  # A <- P[k:width]
    return Insn(code_of(_SIZED[width], "ld_abs"), 0, 0, k)


def ld_ind(width: int, k: int) -> Insn:  # A <- P[X+k:width]
    return Insn(code_of(_SIZED[width], "ld_ind"), 0, 0, k)


def ldx_imm(k: int) -> Insn:  # X <- k
    return Insn(code_of("ldx", "ldx_imm"), 0, 0, k)


def ldx_len() -> Insn:  # X <- wirelen
    return Insn(code_of("ldx", "ldx_len"))


def ldx_mem(k: int) -> Insn:  # X <- M[k]
    return Insn(code_of("ldx", "ldx_mem"), 0, 0, k)


def ldx_msh(k: int) -> Insn:  # X <- 4*(P[k:1]&0xf)
    return Insn(code_of("ldxb", "ldx_msh"), 0, 0, k)


def st(k: int) -> Insn:  # M[k] <- A
    return Insn(code_of("st", "st"), 0, 0, k)


def stx(k: int) -> Insn:  # M[k] <- X
    return Insn(code_of("stx", "stx"), 0, 0, k)


def alu_k(op: str, k: int) -> Insn:  # A <- A op k
    return Insn(code_of(op, "alu_k"), 0, 0, k)


def alu_x(op: str) -> Insn:  # A <- A op X
    return Insn(code_of(op, "alu_x"))


def neg() -> Insn:  # A <- -A
    return Insn(code_of("neg", "neg"))


def ja(k: int) -> Insn:  # pc <- pc + 1 + k
    return Insn(code_of("ja", "ja"), 0, 0, k)


def jmp_k(op: str, k: int, jt: int, jf: int) -> Insn:  # pc <- pc + 1 + (A op k ? jt : jf)
    return Insn(code_of(op, "jmp_k"), jt, jf, k)


def jmp_x(op: str, jt: int, jf: int) -> Insn:  # pc <- pc + 1 + (A op X ? jt : jf)
    return Insn(code_of(op, "jmp_x"), jt, jf, 0)


def jeq_k(k: int, jt: int, jf: int) -> Insn:
    return jmp_k("jeq", k, jt, jf)


def ret_k(k: int) -> Insn:  # return k
    return Insn(code_of("ret", "ret_k"), 0, 0, k)


def ret_a() -> Insn:  # return A
    return Insn(code_of("ret", "ret_a"))


def tax() -> Insn:  # X <- A
    return Insn(code_of("tax", "tax"))


def txa() -> Insn:  # A <- X
    return Insn(code_of("txa", "txa"))


GOOD = 0x600D


def check_a(expected: int) -> list[Insn]:
    """Return GOOD when A == expected, else A itself: a computed 0 never looks like a stopped program."""
    return [jeq_k(expected, 1, 0), ret_a(), ret_k(GOOD)]


# -- packets -------------------------------------------------------------------------------------
def pattern(n: int) -> bytes:
    """n bytes where P[i] = i % 255 + 1: never 0, so a successful load is never 0."""
    return bytes(i % 255 + 1 for i in range(n))


def be(data: bytes, offset: int, width: int) -> int:
    """P[offset:width] read big-endian, as SEMANTICS.md defines a load."""
    assert offset + width <= len(data)
    return int.from_bytes(data[offset : offset + width], "big")


def around(end: int, value: int, wirelen: int | None = None) -> list[Run]:
    """Runs at caplen end-1, end, end+1 of a program returning `value` when P[..end-1] is readable."""
    return [
        (pattern(caplen), wirelen, value if caplen >= end else 0)
        for caplen in (end - 1, end, end + 1)
        if caplen >= 0
    ]


def truncations(packet: bytes, expected: int) -> list[Run]:
    """Edge 24: every caplen 0..N-1 of a matching packet returns 0 (wirelen stays N); caplen N matches."""
    runs: list[Run] = [(packet[:caplen], len(packet), 0) for caplen in range(len(packet))]
    runs.append((packet, None, expected))
    return runs


def case(name: str, program: Iterable[Insn], runs: Sequence[Run]) -> Case:
    return Case(name, tuple(program), tuple(runs))


ANY = (b"", pattern(1), pattern(64))
"""Packets for programs whose result does not depend on the packet."""


def always(expected: int) -> list[Run]:
    return [(packet, None, expected) for packet in ANY]


# -- rule 1, edges 9, 11, 13: bounds-checked loads -----------------------------------------------
def _load_boundary_cases() -> list[Case]:
    cases = []
    for width, mnemonic in _SIZED.items():
        for k in (0, 1, 3, 14, 59):
            end = k + width
            cases.append(
                case(f"edge09_{mnemonic}_abs_k{k}_ends_at_caplen", [ld_abs(width, k), ret_a()],
                     around(end, be(pattern(end), k, width)))
            )  # fmt: skip
        # Offset 14 split several ways between X and k gives the same answer (edge 11), and
        # [x + k] is bounds-checked like [k] (rule 1).
        for x, k in ((0, 14), (14, 0), (7, 7), (13, 1), (0, 0), (2, 1)):
            end = x + k + width
            cases.append(
                case(f"edge11_{mnemonic}_ind_x{x}_k{k}_ends_at_caplen",
                     [ldx_imm(x), ld_ind(width, k), ret_a()],
                     around(end, be(pattern(end), x + k, width)))
            )  # fmt: skip
    for k in (0, 3, 14, 29):
        # P[k] = k + 1, so X = 4 * ((k + 1) & 0xf): 4, 16, 60, 56.
        cases.append(
            case(f"rule01_ldxb_msh_k{k}_ends_at_caplen", [ldx_msh(k), txa(), ret_a()],
                 around(k + 1, 4 * ((k + 1) & 0xF)))
        )  # fmt: skip
    return cases


def _empty_packet_cases() -> list[Case]:
    loads = {
        "ld_abs": ld_abs(4, 0), "ldh_abs": ld_abs(2, 0), "ldb_abs": ld_abs(1, 0),
        "ld_ind": ld_ind(4, 0), "ldh_ind": ld_ind(2, 0), "ldb_ind": ld_ind(1, 0),
        "ldxb_msh": ldx_msh(0),
    }  # fmt: skip
    cases = [
        case(f"edge13_empty_packet_fails_{label}", [load, ret_k(1)],
             [(b"", None, 0), (b"", 100, 0), (pattern(4), None, 1)])
        for label, load in loads.items()
    ]  # fmt: skip
    cases += [
        case("edge13_empty_packet_load_free_program", [ld_imm(5), ret_a()], [(b"", None, 5), (b"", 1500, 5)]),
        case("edge13_empty_packet_ret_k", [ret_k(7)], [(b"", None, 7)]),
        case("edge13_empty_packet_ld_len", [ld_len(), ret_a()], [(b"", None, 0), (b"", 64, 64)]),
    ]
    return cases


def _failed_load_stops_cases() -> list[Case]:
    """A failed load ends the program with 0: it does not load 0 into A and carry on."""
    return [
        case("rule01_failed_ld_abs_stops_the_program", [ld_imm(7), ld_abs(1, 10), ret_a()],
             [(pattern(10), None, 0), (pattern(11), None, 11)]),
        case("rule01_failed_ld_abs_stops_before_ret_k", [ld_abs(4, 10), ret_k(1)],
             [(pattern(13), None, 0), (pattern(13), 1000, 0), (pattern(14), None, 1)]),
        case("rule01_failed_ld_ind_stops_the_program", [ld_imm(7), ldx_imm(3), ld_ind(2, 7), ret_k(1)],
             [(pattern(11), None, 0), (pattern(12), None, 1)]),
        # ldxb leaves A alone (edge 15), so on success A is still 7.
        case("rule01_failed_ldxb_stops_the_program", [ld_imm(7), ldx_msh(10), ret_a()],
             [(pattern(10), None, 0), (pattern(11), None, 7)]),
    ]  # fmt: skip


# -- rule 2, edges 10, 11, rule 9: offsets near 2^32 never wrap ----------------------------------
def _overflow_cases() -> list[Case]:
    cases = [
        # Wrapping X + k = 2^32 + 1 would read P[1:4] = 0x02030405.
        case("rule02_x_plus_k_overflow_is_out_of_bounds", [ldx_imm(U32), ld_ind(4, 2), ret_a()],
             [(pattern(20), None, 0), (pattern(20), 1000, 0)]),
    ]  # fmt: skip
    # X + k = 2^32 + 14, split four ways; wrapping would read P[14] = 15.
    for x, k in ((0xFFFFFFFF, 15), (15, 0xFFFFFFFF), (0x80000000, 0x8000000E), (0xFFFFFFF2, 0x1C)):
        for width, mnemonic in _SIZED.items():
            cases.append(
                case(f"edge11_{mnemonic}_ind_x{x:#x}_k{k:#x}_overflows",
                     [ldx_imm(x), ld_ind(width, k), ret_k(1)],
                     [(pattern(20), None, 0), (pattern(64), 1000, 0)])
            )  # fmt: skip
    # X + k = 2^32 exactly (would wrap to P[0]) and X large with k = 0.
    for x, k in ((1, 0xFFFFFFFF), (0x80000000, 0x80000000), (0xFFFFFFFF, 0)):
        cases.append(
            case(f"edge11_ldb_ind_x{x:#x}_k{k:#x}_overflows", [ldx_imm(x), ld_ind(1, k), ret_k(1)],
                 [(pattern(20), None, 0)])
        )  # fmt: skip
    for k in (0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFC):
        for width, mnemonic in _SIZED.items():
            cases.append(
                case(f"edge10_{mnemonic}_abs_k{k:#x}", [ld_abs(width, k), ret_k(1)],
                     [(pattern(64), None, 0), (pattern(64), U32, 0)])
            )  # fmt: skip
        cases.append(
            case(f"edge10_ld_ind_x0_k{k:#x}", [ldx_imm(0), ld_ind(4, k), ret_k(1)], [(pattern(64), None, 0)])
        )
        cases.append(case(f"edge10_ldxb_msh_k{k:#x}", [ldx_msh(k), ret_k(1)], [(pattern(64), None, 0)]))
    # Linux's ancillary offsets: SKF_AD_OFF (+SKF_AD_PROTOCOL, +SKF_AD_PKTTYPE), SKF_NET_OFF (+9, the
    # IPv4 protocol byte), SKF_LL_OFF. In this dialect they are plain out-of-bounds offsets.
    for k in (0xFFFFF000, 0xFFFFF004, 0xFFF00000, 0xFFF00009, 0xFFE00000):
        for width, mnemonic in _SIZED.items():
            cases.append(
                case(f"rule09_{mnemonic}_abs_linux_ancillary_k{k:#x}", [ld_abs(width, k), ret_k(1)],
                     [(pattern(64), None, 0), (pattern(64), 1500, 0)])
            )  # fmt: skip
    cases += [
        case("rule09_ldb_ind_linux_net_offset", [ldx_imm(0), ld_ind(1, 0xFFF00009), ret_k(1)],
             [(pattern(64), None, 0)]),
        case("rule09_ldxb_msh_linux_ancillary", [ldx_msh(0xFFFFF000), ret_k(1)], [(pattern(64), None, 0)]),
    ]  # fmt: skip
    return cases


# -- rule 3, edge 12: ld len is wirelen, loads stop at caplen ------------------------------------
def _wirelen_cases() -> list[Case]:
    return [
        case("rule03_ld_len_is_wirelen", [ld_len(), ret_a()],
             [(pattern(20), 1000, 1000), (pattern(20), None, 20), (pattern(20), 20, 20), (b"", U32, U32)]),
        # pattern(20)[16:20] = 17 18 19 20
        case("rule03_ld_16_reads_caplen_20", [ld_abs(4, 16), ret_a()], [(pattern(20), 1000, 0x11121314)]),
        case("rule03_ld_17_past_caplen_20", [ld_abs(4, 17), ret_k(1)],
             [(pattern(20), 1000, 0), (pattern(21), 1000, 1)]),
        # pattern(60)[56:60] = 57 58 59 60 = 0x393a3b3c
        case("edge12_pktlen_1000_caplen_60",
             [ld_len(),                      # 0: A <- wirelen
              jeq_k(1000, 0, 4),             # 1: wirelen == 1000 ? 2 : 6
              ld_abs(4, 56),                 # 2: the last 4 captured bytes
              jeq_k(0x393A3B3C, 0, 2),       # 3: ? 4 : 6
              ld_abs(1, 60),                 # 4: one byte past caplen 60
              ret_k(3),                      # 5
              ret_k(1)],                     # 6
             [(pattern(60), 1000, 0), (pattern(61), 1000, 3), (pattern(60), None, 1), (pattern(60), 60, 1)]),
        case("edge12_ldx_pktlen_is_wirelen", [ldx_len(), txa(), ret_a()],
             [(pattern(60), 1000, 1000), (pattern(60), None, 60), (b"", 7, 7)]),
    ]  # fmt: skip


# -- rule 4, edge 3: division and modulo by X == 0 -----------------------------------------------
def _division_cases() -> list[Case]:
    return [
        case("edge03_div_x_zero_returns_0", [ld_imm(10), ldx_imm(0), alu_x("div"), ret_k(7)], always(0)),
        case("edge03_mod_x_zero_returns_0", [ld_imm(10), ldx_imm(0), alu_x("mod"), ret_k(7)], always(0)),
        # X = wirelen: 100 / 0 stops; 100 / 7 = 14; 100 / 100 = 1; 100 / 101 = 0; then + 1.
        case("rule04_div_by_wirelen", [ld_imm(100), ldx_len(), alu_x("div"), alu_k("add", 1), ret_a()],
             [(b"", None, 0), (pattern(7), None, 15), (pattern(7), 100, 2), (pattern(7), 101, 1),
              (pattern(1), U32, 1)]),
        # 100 % 7 = 2; 100 % 100 = 0; 100 % 101 = 100; 100 % 30 = 10; then + 1.
        case("rule04_mod_by_wirelen", [ld_imm(100), ldx_len(), alu_x("mod"), alu_k("add", 1), ret_a()],
             [(b"", None, 0), (pattern(7), None, 3), (pattern(7), 100, 1), (pattern(7), 101, 101),
              (pattern(7), 30, 11)]),
        # X = 4 * (P[0] & 0xf): 0x05 -> 20 (100 / 20 = 5), 0x10 -> 0 (stop).
        case("rule04_div_by_x_from_packet", [ld_imm(100), ldx_msh(0), alu_x("div"), ret_a()],
             [(b"\x05", None, 5), (b"\x10", None, 0), (b"\xf0\xff", None, 0), (b"", None, 0)]),
    ]  # fmt: skip


# -- rules 5, 6, edges 16, 17, 18: ALU -----------------------------------------------------------
# (op, A, operand, A op operand mod 2^32), worked out by hand.
ALU_TABLE: tuple[tuple[str, int, int, int], ...] = (
    ("add", 0xF0F0F0F0, 7, 0xF0F0F0F7),
    ("sub", 0xF0F0F0F0, 7, 0xF0F0F0E9),
    ("mul", 0xF0F0F0F0, 7, 0x96969690),
    ("div", 0xF0F0F0F0, 7, 0x226B9022),
    ("or", 0xF0F0F0F0, 7, 0xF0F0F0F7),
    ("and", 0xF0F0F0F0, 7, 0),
    ("lsh", 0xF0F0F0F0, 7, 0x78787800),
    ("rsh", 0xF0F0F0F0, 7, 0x01E1E1E1),
    ("mod", 0xF0F0F0F0, 7, 2),
    ("xor", 0xF0F0F0F0, 7, 0xF0F0F0F7),
    ("add", 0x12345678, 0x10, 0x12345688),
    ("sub", 0x12345678, 0x10, 0x12345668),
    ("mul", 0x12345678, 0x10, 0x23456780),
    ("div", 0x12345678, 0x10, 0x01234567),
    ("or", 0x12345678, 0x10, 0x12345678),
    ("and", 0x12345678, 0x10, 0x10),
    ("lsh", 0x12345678, 0x10, 0x56780000),
    ("rsh", 0x12345678, 0x10, 0x1234),
    ("mod", 0x12345678, 0x10, 8),
    ("xor", 0x12345678, 0x10, 0x12345668),
    # edge 16: wrapping
    ("sub", 1, 2, 0xFFFFFFFF),
    ("add", 0xFFFFFFFF, 2, 1),
    ("mul", 0xFFFFFFFF, 3, 0xFFFFFFFD),
    ("mul", 0x10001, 0x10001, 0x20001),
    ("add", 0x80000000, 0x80000000, 0),
    # edge 17: unsigned division (signed would give 0x7fffffde / -2^31 = 0, and so on)
    ("div", 0xFFFFFFFF, 4, 0x3FFFFFFF),
    ("div", 0xFFFFFFDE, 0x80000000, 1),
    ("mod", 0xFFFFFFDE, 0x80000000, 0x7FFFFFDE),
    ("div", 0xFFFFFFFF, 10, 0x19999999),
    ("mod", 0xFFFFFFFF, 10, 5),
    ("div", 7, 1, 7),
    ("div", 6, 7, 0),
    # edge 18 and rule 5: shifts by 0, 16, 31 are exact; rsh is logical
    ("lsh", 0xFFFFFFFF, 0, 0xFFFFFFFF),
    ("lsh", 0xFFFFFFFF, 16, 0xFFFF0000),
    ("lsh", 0xFFFFFFFF, 31, 0x80000000),
    ("lsh", 1, 31, 0x80000000),
    ("rsh", 0xFFFFFFFF, 0, 0xFFFFFFFF),
    ("rsh", 0xFFFFFFFF, 16, 0xFFFF),
    ("rsh", 0xFFFFFFFF, 31, 1),
    ("rsh", 0x80000000, 31, 1),
)

# Shifts by X >= 32 give 0 (never the CPU's masked count: X = 32 masks to 0, 33 to 1).
SHIFT_BY_X_TOO_FAR: tuple[tuple[str, int, int], ...] = tuple(
    (op, a, x)
    for op, a in (("lsh", 0xFFFFFFFF), ("lsh", 1), ("rsh", 0xFFFFFFFF), ("rsh", 0x80000000))
    for x in (32, 33, 63, 64, 0x80000000, 0xFFFFFFFF)
)


_ALU_LABEL = {
    "add": "rule06", "sub": "rule06", "mul": "rule06", "or": "alu", "and": "alu", "xor": "alu",
    "div": "edge17", "mod": "edge17", "lsh": "edge18", "rsh": "edge18",
}  # fmt: skip


def _alu_cases() -> list[Case]:
    cases = []
    for op, a, b, expected in ALU_TABLE:
        label = _ALU_LABEL[op]
        runs = [(b"", None, GOOD), (pattern(8), None, GOOD)]
        name = f"{label}_{op}_{{}}_{a:#x}_{b:#x}"
        cases.append(case(name.format("k"), [ld_imm(a), alu_k(op, b), *check_a(expected)], runs))
        cases.append(case(name.format("x"), [ld_imm(a), ldx_imm(b), alu_x(op), *check_a(expected)], runs))
    for op, a, x in SHIFT_BY_X_TOO_FAR:
        cases.append(
            case(f"rule05_{op}_x_{a:#x}_by_{x:#x}_gives_0", [ld_imm(a), ldx_imm(x), alu_x(op), *check_a(0)],
                 always(GOOD))
        )  # fmt: skip
    for a, expected in ((0, 0), (1, 0xFFFFFFFF), (0x80000000, 0x80000000), (0xFFFFFFFE, 2), (5, 0xFFFFFFFB)):
        cases.append(case(f"edge16_neg_{a:#x}", [ld_imm(a), neg(), *check_a(expected)], always(GOOD)))
    cases += [
        case("rule06_tax_mul_x_wraps", [ld_imm(0x10001), tax(), alu_x("mul"), ret_a()], always(0x20001)),
        case("rule06_txa_copies_x", [ldx_imm(0x1234), ld_imm(0), txa(), ret_a()], always(0x1234)),
        case("rule06_tax_copies_a", [ld_imm(0xFEDCBA98), tax(), ld_imm(0), txa(), ret_a()],
             always(0xFEDCBA98)),
    ]
    return cases


# -- rule 7, edges 1, 20: returns ----------------------------------------------------------------
def _return_cases() -> list[Case]:
    return [
        case("edge01_ret_alone", [ret_k(5)], always(5)),
        case("edge20_ret_k_0xffffffff", [ret_k(0xFFFFFFFF)], always(0xFFFFFFFF)),
        case("edge20_ret_k_0x80000000", [ret_k(0x80000000)], always(0x80000000)),
        case("rule07_ret_k_0_drops", [ret_k(0)], always(0)),
        case("edge20_ret_a_returns_a_unchanged", [ld_imm(0xFFFFFFFF), ret_a()], always(0xFFFFFFFF)),
        case("edge20_ret_a_0x80000001", [ld_imm(0x80000001), ret_a()], always(0x80000001)),
    ]


# -- rule 8, edges 2, 8, 19, 21: jumps -----------------------------------------------------------
# (op, A, operand, taken), worked out by hand; every row runs with k and with X as the operand.
COMPARE_TABLE: tuple[tuple[str, int, int, bool], ...] = (
    ("jeq", 5, 5, True),
    ("jeq", 5, 6, False),
    ("jeq", 0xFFFFFFFF, 0xFFFFFFFF, True),
    ("jeq", 0, 0, True),
    ("jgt", 0xFFFFFFFF, 0x7FFFFFFF, True),
    ("jgt", 1, 0x80000000, False),
    ("jgt", 0x80000000, 0x7FFFFFFF, True),
    ("jgt", 5, 5, False),
    ("jgt", 6, 5, True),
    ("jge", 0xFFFFFFFF, 0xFFFFFFFF, True),
    ("jge", 5, 5, True),
    ("jge", 4, 5, False),
    ("jge", 0x7FFFFFFF, 0x80000000, False),
    ("jge", 0x80000000, 0x7FFFFFFF, True),
    ("jset", 0xFFFFFFFF, 0, False),
    ("jset", 0x80000000, 0x80000001, True),
    ("jset", 0x0F, 0xF0, False),
    ("jset", 6, 3, True),
    ("jset", 0, 0xFFFFFFFF, False),
)
TAKEN, NOT_TAKEN = 0x7A4E, 0x4E07


def _compare_cases() -> list[Case]:
    cases = []
    for op, a, b, taken in COMPARE_TABLE:
        expected = TAKEN if taken else NOT_TAKEN
        outcome = "taken" if taken else "not_taken"
        cases.append(
            case(f"edge19_{op}_k_{a:#x}_{b:#x}_{outcome}",
                 [ld_imm(a), jmp_k(op, b, 1, 0), ret_k(NOT_TAKEN), ret_k(TAKEN)], always(expected))
        )  # fmt: skip
        cases.append(
            case(f"edge19_{op}_x_{a:#x}_{b:#x}_{outcome}",
                 [ld_imm(a), ldx_imm(b), jmp_x(op, 1, 0), ret_k(NOT_TAKEN), ret_k(TAKEN)], always(expected))
        )  # fmt: skip
    return cases


def _jump_cases() -> list[Case]:
    return [
        case("rule08_ja_is_relative", [ja(1), ret_k(1), ret_k(2)], always(2)),
        # jt = 2 lands on the last insn (edge 2), jf = 1 on the one before
        case("edge02_jt_to_exactly_the_last_insn",
             [ld_len(), jeq_k(5, 2, 1), ret_k(1), ret_k(2), ret_k(3)],
             [(pattern(5), None, 3), (pattern(4), None, 2), (b"", 5, 3)]),
        case("edge02_jf_to_exactly_the_last_insn",
             [ld_len(), jeq_k(5, 0, 2), ret_k(1), ret_k(2), ret_k(3)],
             [(pattern(5), None, 1), (pattern(4), None, 3)]),
        case("edge02_ja_to_exactly_the_last_insn", [ja(2), ret_k(1), ret_k(2), ret_k(3)], always(3)),
        case("rule08_jumps_chain_forward",
             [ld_len(),            # 0
              jeq_k(3, 2, 0),      # 1: len == 3 ? 4 : 2
              ja(3),               # 2: -> 6
              ret_k(0x11),         # 3: unreachable
              jmp_k("jgt", 2, 1, 0),  # 4: A = 3 > 2, taken: -> 6
              ret_k(0x22),         # 5: unreachable
              ret_a()],            # 6
             [(pattern(3), None, 3), (pattern(4), None, 4), (b"", None, 0), (b"", 3, 3)]),
    ]  # fmt: skip


def _unused_field_cases() -> list[Case]:
    def noisy(insn: Insn, jt: int, jf: int, k: int | None = None) -> Insn:
        """`insn` with junk in the fields it does not use."""
        return Insn(insn.code, jt, jf, insn.k if k is None else k)

    return [
        case("edge08_unused_fields_are_ignored",
             [noisy(ld_abs(1, 0), 0xFF, 0xFF),         # A = P[0]
              noisy(ldx_imm(3), 3, 4),                 # X = 3
              noisy(alu_x("add"), 9, 9, 0xDEADBEEF),   # A = P[0] + 3
              noisy(neg(), 1, 1, 7),                   # A = -(P[0] + 3)
              noisy(tax(), 1, 2, 0xFFFFFFFF),          # X = -(P[0] + 3)
              noisy(ld_len(), 5, 0, 0x1234),           # A = wirelen
              noisy(alu_x("add"), 0, 0, 77),           # A = wirelen - P[0] - 3
              noisy(st(2), 1, 1),                      # M[2] = A
              noisy(ldx_len(), 1, 1, 0xABCD),          # X = wirelen
              noisy(txa(), 7, 0, 99),                  # A = wirelen
              noisy(ldx_mem(2), 3, 3),                 # X = wirelen - P[0] - 3
              noisy(ja(0), 200, 100),                  # no-op
              noisy(alu_x("add"), 0, 0, 1),            # A = 2 * wirelen - P[0] - 3
              noisy(ret_a(), 1, 2, 0x77)],             # return A
             [(pattern(10), None, 20 - 1 - 3),
              (pattern(1), 1000, 2000 - 1 - 3),
              (b"\x10\x10", None, 0xFFFFFFF1)]),      # 4 - 16 - 3 wraps
        case("edge08_ret_k_with_junk_jt_jf", [noisy(ret_k(9), 0xFF, 0x10)], always(9)),
        case("edge08_jt_equals_jf", [ld_len(), jeq_k(5, 1, 1), ret_k(1), ret_k(2)],
             [(pattern(5), None, 2), (pattern(4), None, 2)]),
        case("edge08_jt_and_jf_both_0", [ld_len(), jmp_k("jgt", 5, 0, 0), ret_k(7)],
             [(pattern(6), None, 7), (pattern(4), None, 7)]),
        case("edge08_ja_0_is_a_noop", [ld_imm(3), ja(0), ja(0), ret_a()], always(3)),
    ]  # fmt: skip


def _unreachable_cases() -> list[Case]:
    return [
        case("edge21_unreachable_load_after_ret", [ret_k(5), ld_abs(1, 0xFFFFFFFE), ret_k(0)], always(5)),
        case("edge21_unreachable_load_after_ja", [ja(1), ld_abs(1, 0xFFFFFFFE), ret_k(6)], always(6)),
        case("edge21_unreachable_load_skipped_by_both_branches",
             [ld_len(), jeq_k(0, 1, 1), ld_abs(4, 0xFFFFFFFC), ret_a()],
             [(b"", 9, 9), (pattern(3), None, 3)]),
        case("edge21_unreachable_division_by_x_zero", [ldx_imm(0), ja(1), alu_x("div"), ret_k(4)], always(4)),
    ]  # fmt: skip


# -- edges 4, 5: scratch memory ------------------------------------------------------------------
def _scratch_cases() -> list[Case]:
    # Word i holds 1 << i (even words through st, odd through stx); OR-ing all 16 back gives 0xffff
    # only if the words are independent.
    program: list[Insn] = []
    for i in range(16):
        program += [ld_imm(1 << i), st(i)] if i % 2 == 0 else [ldx_imm(1 << i), stx(i)]
    program.append(ld_mem(0))
    for i in range(1, 16):
        # odd words: X <- M[i]; A |= X.  even words: X <- A; A <- M[i]; A |= X.
        program += [ldx_mem(i), alu_x("or")] if i % 2 else [tax(), ld_mem(i), alu_x("or")]
    program.append(ret_a())
    return [
        case("edge04_all_16_words_are_independent", program, always(0xFFFF)),
        case("edge04_m15_is_fine", [ld_imm(0xABCD), st(15), ld_imm(0), ldx_mem(15), txa(), ret_a()],
             always(0xABCD)),
        case("edge04_store_overwrites", [ld_imm(1), st(3), ld_imm(2), st(3), ld_imm(0), ld_mem(3), ret_a()],
             always(2)),
        # M[7] is written on both branches before the read: accepted (edge 5) and runs.
        case("edge05_scratch_written_on_both_branches",
             [ld_len(),            # 0
              jeq_k(5, 0, 3),      # 1: len == 5 ? 2 : 5
              ld_imm(0x11),        # 2
              st(7),               # 3
              ja(2),               # 4: -> 7
              ldx_imm(0x22),       # 5
              stx(7),              # 6
              ldx_mem(7),          # 7
              txa(),               # 8
              ret_a()],            # 9
             [(pattern(5), None, 0x11), (pattern(4), None, 0x22)]),
    ]  # fmt: skip


# -- edges 6, 14, 15: initial registers, byte order, ldxb ----------------------------------------
def _register_and_byte_order_cases() -> list[Case]:
    return [
        case("edge06_ret_a_on_entry_drops", [ret_a()], always(0)),
        case("edge06_a_starts_at_0", [jeq_k(0, 0, 1), ret_k(1), ret_k(2)], always(1)),
        case("edge06_a_starts_at_0_add", [alu_k("add", 5), ret_a()], always(5)),
        case("edge06_x_starts_at_0", [txa(), jeq_k(0, 0, 1), ret_k(1), ret_k(2)], always(1)),
        case("edge06_ldb_x_plus_1_reads_p1", [ld_ind(1, 1), ret_a()],
             [(pattern(4), None, 2), (pattern(2), None, 2), (pattern(1), None, 0)]),
        # pattern(5) is 01 02 03 04 05
        case("edge14_ld_0_big_endian", [ld_abs(4, 0), ret_a()], [(pattern(5), None, 0x01020304)]),
        case("edge14_ldh_1_unaligned", [ld_abs(2, 1), ret_a()], [(pattern(5), None, 0x0203)]),
        case("edge14_ld_1_unaligned", [ld_abs(4, 1), ret_a()], [(pattern(5), None, 0x02030405)]),
        case("edge14_ld_x_plus_0_unaligned", [ldx_imm(1), ld_ind(4, 0), ret_a()],
             [(pattern(5), None, 0x02030405)]),
        case("edge14_explicit_bytes", [ld_abs(4, 0), ret_a()], [(b"\xde\xad\xbe\xef", None, 0xDEADBEEF)]),
        # A = 0x1000 survives ldxb; X = 4 * (P[14] & 0xf)
        case("edge15_ldxb_4_times_low_nibble",
             [ld_imm(0x1000), ldx_msh(14), alu_x("add"), ret_a()],
             [(bytes(14) + b"\x45", None, 0x1000 + 20),
              (bytes(14) + b"\x45", 100, 0x1000 + 20),
              (bytes(14) + b"\xff", None, 0x1000 + 60),
              (bytes(14) + b"\xf0", None, 0x1000),
              (bytes(14), None, 0),
              (bytes(14), 100, 0)]),
    ]  # fmt: skip


# -- edges 22, 23: bounds checks must not move above earlier exits -------------------------------
def _bounds_check_placement_cases() -> list[Case]:
    cd = b"\xcc" * 4
    return [
        case("edge22_early_exits_on_short_packets",
             [ld_abs(1, 0),                 # 0: needs 1 byte
              jeq_k(0xAA, 1, 0),            # 1: ? 3 : 2
              ret_k(1),                     # 2
              ld_abs(2, 1),                 # 3: needs 3
              jeq_k(0xBBBB, 1, 0),          # 4: ? 6 : 5
              ret_k(2),                     # 5
              ld_abs(4, 3),                 # 6: needs 7
              jeq_k(0xCCCCCCCC, 1, 0),      # 7: ? 9 : 8
              ret_k(3),                     # 8
              ld_abs(4, 7),                 # 9: needs 11
              ret_a()],                     # 10
             [(b"", None, 0),
              (b"\x00", None, 1),
              (b"\x00", 1000, 1),
              (b"\xaa", None, 0),
              (b"\xaa\x00", None, 0),
              (b"\xaa\x00\x00", None, 2),
              (b"\xaa\xbb\xbb", None, 0),
              (b"\xaa\xbb\xbb\x00\x00\x00\x00", None, 3),
              (b"\xaa\xbb\xbb" + cd, None, 0),
              (b"\xaa\xbb\xbb" + cd + b"\xdd\xdd\xdd", None, 0),
              (b"\xaa\xbb\xbb" + cd + b"\xdd\xdd\xdd\xdd", None, 0xDDDDDDDD),
              (b"\xaa\xbb\xbb" + cd + b"\xdd\xdd\xdd\xdd\xee", None, 0xDDDDDDDD)]),
        case("edge22_early_exits_with_indexed_loads",
             [ldx_msh(0),                   # 0: X = 4 * (P[0] & 0xf); needs 1
              txa(),                        # 1
              jeq_k(4, 1, 0),               # 2: X == 4 ? 4 : 3
              ret_k(1),                     # 3
              ld_ind(2, 0),                 # 4: P[4:2]; needs 6
              jeq_k(0x1234, 1, 0),          # 5: ? 7 : 6
              ret_k(2),                     # 6
              ld_ind(4, 4),                 # 7: P[8:4]; needs 12
              ret_a()],                     # 8
             [(b"", None, 0),
              (b"\x00", None, 1),
              (b"\x02", None, 1),
              (b"\x01\x00\x00\x00", None, 0),
              (b"\x01" + bytes(5), None, 2),
              (b"\x01" + bytes(3) + b"\x12\x34", None, 0),
              (b"\x01" + bytes(3) + b"\x12\x34\x00\x00\xde\xad\xbe", None, 0),
              (b"\x01" + bytes(3) + b"\x12\x34\x00\x00\xde\xad\xbe\xef", None, 0xDEADBEEF)]),
        case("edge23_ja_over_every_load",
             [ja(3), ld_abs(4, 0), ld_abs(2, 100), ld_ind(1, 1000), ret_k(0x23)],
             [(b"", None, 0x23), (b"\x01", None, 0x23), (pattern(2000), None, 0x23)]),
        case("edge23_ja_over_later_loads",
             [ld_abs(1, 0), ja(2), ld_abs(4, 50), ld_abs(2, 60), ret_a()],
             [(b"\x01", None, 1), (b"", None, 0), (b"\x7f" + bytes(70), None, 0x7F)]),
    ]  # fmt: skip


# -- edge 24: bpf(4) man-page filters on every truncation of a matching packet -------------------
ETHERTYPE_IP, ETHERTYPE_IPV6, ETHERTYPE_REVARP = 0x0800, 0x86DD, 0x8035


def ether(ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex("02 00 00 00 00 01 02 00 00 00 00 02") + ethertype.to_bytes(2, "big") + payload


def ipv4(src: str, dst: str, proto: int = 6, frag: int = 0x4000, options: bytes = b"") -> bytes:
    """An IPv4 header (ihl from the options); `frag` is the flags/fragment-offset word (DF by default)."""
    ihl = 5 + len(options) // 4
    return (
        bytes([0x40 | ihl, 0])
        + (100).to_bytes(2, "big")
        + b"\x12\x34"
        + frag.to_bytes(2, "big")
        + bytes([64, proto])
        + b"\x00\x00"
        + bytes(int(part) for part in src.split("."))
        + bytes(int(part) for part in dst.split("."))
        + options
    )


def ipv6_tcp_header() -> bytes:
    return bytes.fromhex("60000000 0014 06 40") + bytes(range(1, 17)) + bytes(range(17, 33))


def port(n: int) -> bytes:
    return n.to_bytes(2, "big")


# BPF_STMT/BPF_JUMP listings of bpf(4) (FreeBSD, NetBSD, OpenBSD), field for field.
MANPAGE_RARP = [
    ld_abs(2, 12),
    jeq_k(ETHERTYPE_REVARP, 0, 3),
    ld_abs(2, 20),
    jeq_k(3, 0, 1),  # REVARP_REQUEST
    ret_k(28 + 14),  # sizeof(struct ether_arp) + sizeof(struct ether_header)
    ret_k(0),
]
MANPAGE_IP_HOSTS = [  # IP packets between 128.3.112.15 and 128.3.112.35
    ld_abs(2, 12),
    jeq_k(ETHERTYPE_IP, 0, 8),
    ld_abs(4, 26),
    jeq_k(0x8003700F, 0, 2),
    ld_abs(4, 30),
    jeq_k(0x80037023, 3, 4),
    jeq_k(0x80037023, 0, 3),
    ld_abs(4, 30),
    jeq_k(0x8003700F, 0, 1),
    ret_k(0xFFFFFFFF),  # (u_int)-1
    ret_k(0),
]
MANPAGE_FINGER = [  # TCP finger packets (either port 79), unfragmented
    ld_abs(2, 12),
    jeq_k(ETHERTYPE_IP, 0, 10),
    ld_abs(1, 23),
    jeq_k(6, 0, 8),  # IPPROTO_TCP
    ld_abs(2, 20),
    jmp_k("jset", 0x1FFF, 6, 0),
    ldx_msh(14),
    ld_ind(2, 14),
    jeq_k(79, 2, 0),
    ld_ind(2, 16),
    jeq_k(79, 0, 1),
    ret_k(0xFFFFFFFF),
    ret_k(0),
]
# `tcpdump -dd -y EN10MB 'tcp dst port 79'` (tcpdump 4.99.3, libpcap 1.10.3), as printed.
TCPDUMP_TCP_DST_PORT_79 = [
    (0x28, 0, 0, 0x0000000C),
    (0x15, 0, 4, 0x000086DD),
    (0x30, 0, 0, 0x00000014),
    (0x15, 0, 11, 0x00000006),
    (0x28, 0, 0, 0x00000038),
    (0x15, 8, 9, 0x0000004F),
    (0x15, 0, 8, 0x00000800),
    (0x30, 0, 0, 0x00000017),
    (0x15, 0, 6, 0x00000006),
    (0x28, 0, 0, 0x00000014),
    (0x45, 4, 0, 0x00001FFF),
    (0xB1, 0, 0, 0x0000000E),
    (0x48, 0, 0, 0x00000010),
    (0x15, 0, 1, 0x0000004F),
    (0x6, 0, 0, 0x00040000),
    (0x6, 0, 0, 0x00000000),
]

HOST_15, HOST_35 = "128.3.112.15", "128.3.112.35"


def _manpage_cases() -> list[Case]:
    # Each matching packet ends with the last byte the filter needs.
    rarp_request = ether(ETHERTYPE_REVARP, bytes.fromhex("0001 0800 06 04 0003"))  # 22 bytes, op at 20
    ip_15_to_35 = ether(ETHERTYPE_IP, ipv4(HOST_15, HOST_35))  # 34 bytes, dst at 30..33
    ip_35_to_15 = ether(ETHERTYPE_IP, ipv4(HOST_35, HOST_15))
    finger_dst = ether(ETHERTYPE_IP, ipv4("10.0.0.1", "10.0.0.2")) + port(1023) + port(79)  # 38 bytes
    finger_src = ether(ETHERTYPE_IP, ipv4("10.0.0.2", "10.0.0.1")) + port(79)  # 36: dst port never read
    finger_options = ether(ETHERTYPE_IP, ipv4("10.0.0.1", "10.0.0.2", options=bytes(4))) + port(1) + port(79)
    ipv6_finger = ether(ETHERTYPE_IPV6, ipv6_tcp_header()) + port(1023) + port(79)  # 58 bytes
    return [
        case("edge24_manpage_rarp_request_truncated", MANPAGE_RARP, truncations(rarp_request, 42)),
        case("edge24_manpage_rarp_rejects",
             MANPAGE_RARP,
             [(rarp_request[:21] + b"\x04", None, 0),    # a reply-direction opcode
              (ether(ETHERTYPE_IP, bytes(8)), None, 0),
              (rarp_request + bytes(40), None, 42)]),
        case("edge24_manpage_ip_hosts_15_to_35_truncated", MANPAGE_IP_HOSTS, truncations(ip_15_to_35, U32)),
        case("edge24_manpage_ip_hosts_35_to_15_truncated", MANPAGE_IP_HOSTS, truncations(ip_35_to_15, U32)),
        case("edge24_manpage_ip_hosts_rejects",
             MANPAGE_IP_HOSTS,
             [(ether(ETHERTYPE_IP, ipv4(HOST_15, "128.3.112.36")), None, 0),
              (ether(ETHERTYPE_IP, ipv4("10.0.0.1", HOST_35)), None, 0),
              (ether(ETHERTYPE_IPV6, ipv4(HOST_15, HOST_35)), None, 0),
              (ether(ETHERTYPE_IP, ipv4(HOST_15, HOST_15)), None, 0),
              (ip_15_to_35 + bytes(100), None, U32)]),
        case("edge24_manpage_finger_dst_port_truncated", MANPAGE_FINGER, truncations(finger_dst, U32)),
        case("edge24_manpage_finger_src_port_truncated", MANPAGE_FINGER, truncations(finger_src, U32)),
        case("edge24_manpage_finger_ip_options_truncated", MANPAGE_FINGER, truncations(finger_options, U32)),
        case("edge24_manpage_finger_rejects",
             MANPAGE_FINGER,
             [(ether(ETHERTYPE_IP, ipv4("10.0.0.1", "10.0.0.2", frag=0x2001)) + port(1) + port(79), None, 0),
              (ether(ETHERTYPE_IP, ipv4("10.0.0.1", "10.0.0.2", proto=17)) + port(1) + port(79), None, 0),
              (ether(ETHERTYPE_IP, ipv4("10.0.0.1", "10.0.0.2")) + port(1) + port(80), None, 0),
              # ports read at X + 14 with X = 24: ports at 38, not 34
              (ether(ETHERTYPE_IP, ipv4("10.0.0.1", "10.0.0.2", options=port(79) * 2)) + port(1) + port(2),
               None, 0)]),
        case("edge24_tcpdump_tcp_dst_port_79_ipv4_truncated", TCPDUMP_TCP_DST_PORT_79,
             truncations(finger_dst, 262144)),
        case("edge24_tcpdump_tcp_dst_port_79_ipv6_truncated", TCPDUMP_TCP_DST_PORT_79,
             truncations(ipv6_finger, 262144)),
        case("edge24_tcpdump_tcp_dst_port_79_rejects", TCPDUMP_TCP_DST_PORT_79,
             [(finger_src + port(80), None, 0), (finger_options, None, 262144), (rarp_request, None, 0)]),
    ]  # fmt: skip


# -- edge 25: the longest program, the longest jumps ---------------------------------------------
FAR = 0xC0FFEE


def _far_jump_chain(branch: Insn, taken_is_jt: bool) -> list[Insn]:
    """4096 insns: ldb [0], then `branch` every 256 insns jumping 255 ahead, the last one to the end.

    Everything off the chain is `ret #index`, so a wrong turn shows where it happened.
    """
    n = BPF_MAXINSNS
    program = [ret_k(i) for i in range(n)]
    program[0] = ld_abs(1, 0)
    pc = 1
    while pc + 1 + 255 < n - 1:
        program[pc] = Insn(branch.code, 255 if taken_is_jt else 0, 0 if taken_is_jt else 255, branch.k)
        pc += 256
    last = n - 1 - (pc + 1)  # lands exactly on the last instruction
    program[pc] = Insn(branch.code, last if taken_is_jt else 0, 0 if taken_is_jt else last, branch.k)
    program[-1] = ret_k(FAR)
    return program


def _longest_cases() -> list[Case]:
    n = BPF_MAXINSNS
    filler = [ld_abs(1, 0xFFFFFFFE), ldx_imm(0), alu_x("div"), ret_k(0)]
    # ja 4094: over 4093 unreachable fillers and a `ret #1` that landing one short would hit
    ja_over_all = [ja(n - 2)] + [filler[i % len(filler)] for i in range(n - 3)] + [ret_k(1), ret_k(0x4094)]
    return [
        case("edge25_ja_over_4094_insns", ja_over_all, always(0x4094)),
        case("edge25_jt_255_chain_4096_insns", _far_jump_chain(jeq_k(0xAB, 0, 0), taken_is_jt=True),
             [(b"\xab", None, FAR), (b"\xab" + pattern(99), None, FAR), (b"\x00", None, 2), (b"", None, 0)]),
        case("edge25_jf_255_chain_4096_insns", _far_jump_chain(jmp_k("jset", 0x80, 0, 0), taken_is_jt=False),
             [(b"\x01", None, FAR), (b"\x80", None, 2), (b"\xff", None, 2), (b"", None, 0)]),
    ]  # fmt: skip


CASES: tuple[Case, ...] = tuple(
    _load_boundary_cases()
    + _empty_packet_cases()
    + _failed_load_stops_cases()
    + _overflow_cases()
    + _wirelen_cases()
    + _division_cases()
    + _alu_cases()
    + _return_cases()
    + _compare_cases()
    + _jump_cases()
    + _unused_field_cases()
    + _unreachable_cases()
    + _scratch_cases()
    + _register_and_byte_order_cases()
    + _bounds_check_placement_cases()
    + _manpage_cases()
    + _longest_cases()
)
