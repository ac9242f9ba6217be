"""Every semantic case of tests/cases.py, on every backend of tests/backends.py, run by run."""

from __future__ import annotations

from collections import Counter

import cases as c
import pytest
from backends import BACKENDS
from cases import CASES, Case, program_of
from needs import require

from bpfjit.opcodes import KINDS, OPCODES

RUNS = [
    pytest.param(case, index, id=f"{case.name}-{index}")
    for case in CASES
    for index in range(len(case.runs))
]


def _describe(packet: bytes, wirelen: int | None) -> str:
    head = packet[:16].hex(" ") + (" ..." if len(packet) > 16 else "")
    return f"caplen {len(packet)}, wirelen {wirelen}, packet [{head}]"


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize(("case", "index"), RUNS)
def test_case(backend: str, case: Case, index: int) -> None:
    packet, wirelen, expected = case.runs[index]
    try:
        result = BACKENDS[backend](program_of(case), packet, wirelen)
    except ImportError as exc:  # includes bpfjit.LibraryMissingError
        require(False, f"the {backend} backend ({exc})")
    assert result == expected, f"{case.name} on {_describe(packet, wirelen)}: {result:#x} != {expected:#x}"


def test_case_names_are_unique() -> None:
    repeated = [name for name, count in Counter(case.name for case in CASES).items() if count > 1]
    assert repeated == []


def test_cases_cover_every_kind() -> None:
    used = {OPCODES[insn.code].kind for case in CASES for insn in program_of(case)}
    assert used == set(KINDS)


def test_cases_cover_every_opcode() -> None:
    used = {insn.code for case in CASES for insn in program_of(case)}
    assert set(OPCODES) - used == set()


def test_every_case_has_runs_and_a_valid_program() -> None:
    import bpfjit

    for case in CASES:
        assert case.runs, case.name
        bpfjit.validate(program_of(case))
        for packet, wirelen, expected in case.runs:
            assert isinstance(packet, bytes)
            assert wirelen is None or wirelen >= len(packet)
            assert 0 <= expected <= 0xFFFFFFFF


def test_cases_name_the_rule_or_edge_case() -> None:
    prefixes = {f"rule{i:02d}_" for i in range(1, 10)} | {f"edge{i:02d}_" for i in range(1, 26)} | {"alu_"}
    unnamed = [case.name for case in CASES if not any(case.name.startswith(p) for p in prefixes)]
    assert unnamed == []


def test_runtime_edge_cases_all_have_cases() -> None:
    # Edge cases of SEMANTICS.md with a runtime value (7 is validation only).
    runtime = {1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25}
    runtime_rules = set(range(1, 10))
    named_edges = {int(case.name[4:6]) for case in CASES if case.name.startswith("edge")}
    named_rules = {int(case.name[4:6]) for case in CASES if case.name.startswith("rule")}
    assert runtime - named_edges == set()
    assert runtime_rules - named_rules == set()


# The codes SEMANTICS.md's table quotes: the case constructors must agree with them, so that a
# wrong row in bpfjit.opcodes cannot make the cases test the wrong instruction.
SPEC_CODES = {
    0x00: c.ld_imm(0), 0x80: c.ld_len(), 0x20: c.ld_abs(4, 0), 0x28: c.ld_abs(2, 0), 0x30: c.ld_abs(1, 0),
    0x40: c.ld_ind(4, 0), 0x48: c.ld_ind(2, 0), 0x50: c.ld_ind(1, 0), 0x60: c.ld_mem(0),
    0x01: c.ldx_imm(0), 0x81: c.ldx_len(), 0x61: c.ldx_mem(0), 0xB1: c.ldx_msh(0),
    0x02: c.st(0), 0x03: c.stx(0), 0x84: c.neg(), 0x05: c.ja(0),
    0x15: c.jmp_k("jeq", 0, 0, 0), 0x25: c.jmp_k("jgt", 0, 0, 0), 0x35: c.jmp_k("jge", 0, 0, 0),
    0x45: c.jmp_k("jset", 0, 0, 0), 0x1D: c.jmp_x("jeq", 0, 0), 0x2D: c.jmp_x("jgt", 0, 0),
    0x3D: c.jmp_x("jge", 0, 0), 0x4D: c.jmp_x("jset", 0, 0),
    0x06: c.ret_k(0), 0x16: c.ret_a(), 0x07: c.tax(), 0x87: c.txa(),
    0x04: c.alu_k("add", 0), 0x14: c.alu_k("sub", 0), 0x24: c.alu_k("mul", 0), 0x34: c.alu_k("div", 0),
    0x44: c.alu_k("or", 0), 0x54: c.alu_k("and", 0), 0x64: c.alu_k("lsh", 0), 0x74: c.alu_k("rsh", 0),
    0x94: c.alu_k("mod", 0), 0xA4: c.alu_k("xor", 0),
    0x0C: c.alu_x("add"), 0x1C: c.alu_x("sub"), 0x2C: c.alu_x("mul"), 0x3C: c.alu_x("div"),
    0x4C: c.alu_x("or"), 0x5C: c.alu_x("and"), 0x6C: c.alu_x("lsh"), 0x7C: c.alu_x("rsh"),
    0x9C: c.alu_x("mod"), 0xAC: c.alu_x("xor"),
}  # fmt: skip


@pytest.mark.parametrize("code", sorted(SPEC_CODES), ids=lambda code: f"{code:#04x}")
def test_constructors_use_the_codes_semantics_md_quotes(code: int) -> None:
    assert SPEC_CODES[code].code == code


def test_opcode_table_is_exactly_the_spec_table() -> None:
    assert set(OPCODES) == set(SPEC_CODES)
