"""The validation rules of SEMANTICS.md: one test per rule (rule, index, message), then the edge cases."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
from cases import (
    alu_k,
    alu_x,
    ja,
    jeq_k,
    jmp_k,
    jmp_x,
    ld_imm,
    ld_mem,
    ldx_imm,
    ldx_mem,
    ret_a,
    ret_k,
    st,
    stx,
    tax,
)

import bpfjit
from bpfjit import BpfjitError, Insn, Program, ValidationError, validate
from bpfjit.opcodes import BPF_MAXINSNS, OPCODES
from bpfjit.validate import RULES


def rejected(program: list[Insn] | list[tuple[int, int, int, int]]) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate(program)
    return info.value


def check(program: list[Insn], rule: str, index: int | None, fragment: str) -> ValidationError:
    error = rejected(program)
    assert (error.rule, error.index) == (rule, index), str(error)
    assert fragment in str(error)
    assert rule in str(error)
    return error


# -- one test per rule ---------------------------------------------------------------------------
def test_rule_empty() -> None:
    check([], "empty", None, "at least one instruction")


def test_rule_too_long() -> None:
    check([ret_k(0)] * (BPF_MAXINSNS + 1), "too-long", None, "4097")


def test_rule_unknown_opcode() -> None:
    check([ld_imm(0), Insn(0x0E), ret_k(0)], "unknown-opcode", 1, "0x0e")


def test_rule_jump_out_of_range() -> None:
    check([ld_imm(0), jeq_k(0x800, 250, 0), ret_k(0)], "jump-out-of-range", 1, "past the end")


def test_rule_no_final_return() -> None:
    check([ld_imm(0), ret_k(1), ld_imm(2)], "no-final-return", 2, "not a ret")


def test_rule_bad_scratch_index() -> None:
    check([ld_imm(0), st(16), ret_k(0)], "bad-scratch-index", 1, "16")


def test_rule_division_by_zero() -> None:
    check([ld_imm(1), alu_k("div", 0), ret_a()], "division-by-zero", 1, "div")


def test_rule_shift_too_large() -> None:
    check([ld_imm(1), alu_k("lsh", 32), ret_a()], "shift-too-large", 1, "32")


def test_rule_uninitialized_scratch() -> None:
    check([ld_imm(1), ld_mem(3), ret_a()], "uninitialized-scratch", 1, "M[3]")


def test_every_rule_has_a_test() -> None:
    tests = [name for name in globals() if name.startswith("test_rule_")]
    tested = {name.removeprefix("test_rule_").replace("_", "-") for name in tests}
    assert tested == set(RULES)


# -- the error itself ----------------------------------------------------------------------------
# One rejected program per rule that names an instruction.
INDEXED = {
    "unknown-opcode": [ld_imm(0), Insn(0x21), ret_k(0)],
    "jump-out-of-range": [ld_imm(0), jeq_k(0x800, 250, 0), ret_k(0)],
    "no-final-return": [ld_imm(0), ret_k(1), ld_imm(2)],
    "bad-scratch-index": [ld_imm(0), st(16), ret_k(0)],
    "division-by-zero": [ld_imm(0), alu_k("mod", 0), ret_k(0)],
    "shift-too-large": [ld_imm(0), alu_k("rsh", 32), ret_k(0)],
    "uninitialized-scratch": [ld_imm(0), ldx_mem(0), ret_k(0)],
}


def test_indexed_cases_cover_every_rule_but_the_whole_program_ones() -> None:
    assert set(INDEXED) | {"empty", "too-long"} == set(RULES)


@pytest.mark.parametrize("rule", sorted(INDEXED))
def test_message_is_one_line_naming_the_insn(rule: str) -> None:
    error = rejected(INDEXED[rule])
    assert error.rule == rule
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"insn {error.index} ("), message


@pytest.mark.parametrize("rule", sorted(INDEXED))
def test_validation_error_pickles(rule: str) -> None:
    error = rejected(INDEXED[rule])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ValidationError
    assert (copy.rule, copy.index, str(copy)) == (error.rule, error.index, str(error))


def test_validation_error_is_a_value_error_and_a_bpfjit_error() -> None:
    error = rejected([])
    assert isinstance(error, ValueError)
    assert isinstance(error, BpfjitError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.rule, copy.index, str(copy)) == ("empty", None, str(error))


@pytest.mark.parametrize("rule", sorted(INDEXED))
def test_interpret_validates_first(rule: str) -> None:
    with pytest.raises(ValidationError) as info:
        bpfjit.interpret(INDEXED[rule], b"\x00" * 64)
    assert info.value.rule == rule


def test_validate_returns_the_program() -> None:
    insns = [ld_imm(1), ret_a()]
    assert validate(insns) == Program(insns)
    assert isinstance(validate(insns), Program)
    program = Program(insns)
    assert validate(program) == program
    assert validate([tuple(insn) for insn in insns]) == program


def test_the_same_bad_program_is_rejected_every_time() -> None:
    program = Program([ld_imm(0), st(16), ret_k(0)])
    for _ in range(3):
        assert rejected(program).rule == "bad-scratch-index"


# -- edge 1: empty, missing final ret, ret alone, 4096 vs 4097 ------------------------------------
def test_edge01_ret_alone_is_valid() -> None:
    validate([ret_k(0)])
    validate([ret_a()])


def test_edge01_4096_insns_ok_4097_too_long() -> None:
    validate([ld_imm(0)] * (BPF_MAXINSNS - 1) + [ret_a()])
    check([ld_imm(0)] * BPF_MAXINSNS + [ret_a()], "too-long", None, "4096")


def test_edge01_missing_final_ret() -> None:
    check([ld_imm(0)], "no-final-return", 0, "not a ret")
    check([ret_k(0), tax()], "no-final-return", 1, "not a ret")


# -- edge 2: jumps to the last instruction and one further ---------------------------------------
def test_edge02_jump_to_exactly_the_last_insn() -> None:
    validate([jeq_k(0, 2, 0), ret_k(1), ret_k(2), ret_k(3)])  # jt -> 3
    validate([jeq_k(0, 0, 2), ret_k(1), ret_k(2), ret_k(3)])  # jf -> 3
    validate([ja(2), ret_k(1), ret_k(2), ret_k(3)])  # ja -> 3
    validate([ld_imm(0), jmp_x("jset", 1, 1), ret_k(1), ret_k(2)])


@pytest.mark.parametrize(
    "jump",
    [jeq_k(0, 3, 0), jeq_k(0, 0, 3), ja(3), jmp_x("jgt", 3, 0), jmp_x("jge", 0, 3)],
    ids=["jt", "jf", "ja", "jt_x", "jf_x"],
)
def test_edge02_jump_one_past_the_last_insn(jump: Insn) -> None:
    error = check([jump, ret_k(1), ret_k(2), ret_k(3)], "jump-out-of-range", 0, "past the end")
    assert "4" in error.reason  # the target


def test_edge02_jump_from_the_middle_one_past_the_end() -> None:
    check([ld_imm(0), jeq_k(0, 0, 1), ret_k(0)], "jump-out-of-range", 1, "past the end")
    check([ld_imm(0), ld_imm(0), ja(1), ret_k(0)], "jump-out-of-range", 2, "past the end")


@pytest.mark.parametrize("k", [0xFFFFFFFF, 0xFFFFFFFE, 0x80000000])
def test_edge02_ja_negative_is_backward_not_a_loop(k: int) -> None:
    # index + 1 + k wraps to index (0xffffffff) or index - 1 (0xfffffffe) in 32 bits: never allowed.
    error = check([ld_imm(0), ld_imm(0), ja(k), ret_k(0)], "jump-out-of-range", 2, "backward")
    assert "forward" in str(error)


@pytest.mark.parametrize("k", [0x7FFFFFFF, 4096, 2])
def test_edge02_ja_far_forward_is_out_of_range(k: int) -> None:
    check([ja(k), ret_k(0)], "jump-out-of-range", 0, "past the end")


def test_edge02_ja_max_forward_in_the_longest_program() -> None:
    validate([ja(BPF_MAXINSNS - 2)] + [ret_k(0)] * (BPF_MAXINSNS - 1))
    check([ja(BPF_MAXINSNS - 1)] + [ret_k(0)] * (BPF_MAXINSNS - 1), "jump-out-of-range", 0, "past the end")


def test_edge02_conditional_255_is_checked_like_any_other() -> None:
    validate([jeq_k(0, 255, 0)] + [ret_k(0)] * 256)
    check([jeq_k(0, 255, 0)] + [ret_k(0)] * 255, "jump-out-of-range", 0, "past the end")
    check([jeq_k(0, 0, 255)] + [ret_k(0)] * 255, "jump-out-of-range", 0, "past the end")


# -- edge 3: division by a constant zero ---------------------------------------------------------
@pytest.mark.parametrize("op", ["div", "mod"])
def test_edge03_div_mod_by_constant_zero_rejected(op: str) -> None:
    check([ld_imm(1), alu_k(op, 0), ret_a()], "division-by-zero", 1, op)


@pytest.mark.parametrize("op", ["div", "mod"])
def test_edge03_div_mod_by_constant_nonzero_and_by_x_accepted(op: str) -> None:
    validate([ld_imm(1), alu_k(op, 1), ret_a()])
    validate([ld_imm(1), alu_k(op, 0xFFFFFFFF), ret_a()])
    validate([ld_imm(1), alu_x(op), ret_a()])  # k = 0 is unused for the X form


# -- edge 4: scratch indices ---------------------------------------------------------------------
def test_edge04_m15_accepted_everywhere() -> None:
    validate([ld_imm(1), st(15), ld_mem(15), ldx_imm(2), stx(15), ldx_mem(15), ret_a()])


@pytest.mark.parametrize("k", [16, 17, 0xFFFFFFFF])
@pytest.mark.parametrize("make", [ld_mem, ldx_mem, st, stx], ids=["ld", "ldx", "st", "stx"])
def test_edge04_m16_rejected_for_ld_ldx_st_stx(make: Callable[[int], Insn], k: int) -> None:
    # Stores first, so the bad index is what is reported, not an uninitialised read.
    check([ld_imm(1), st(0), make(k), ret_a()], "bad-scratch-index", 2, str(k))


# -- edge 5: uninitialised scratch reads, exactly as Linux's check_load_and_stores -----------------
def test_edge05_read_before_any_write() -> None:
    check([ld_mem(0), ret_a()], "uninitialized-scratch", 0, "M[0]")
    check([ldx_mem(9), ret_a()], "uninitialized-scratch", 0, "M[9]")


def test_edge05_write_of_another_word_does_not_count() -> None:
    check([ld_imm(1), st(1), ld_mem(0), ret_a()], "uninitialized-scratch", 2, "M[0]")


def test_edge05_write_on_one_branch_only_rejected() -> None:
    program = [
        jeq_k(0, 1, 0),  # 0: -> 2 or 1
        st(0),  # 1
        ld_mem(0),  # 2: the path 0 -> 2 skips the store
        ret_a(),  # 3
    ]
    check(program, "uninitialized-scratch", 2, "M[0]")


def test_edge05_write_on_both_branches_accepted() -> None:
    validate([
        jeq_k(0, 0, 2),  # 0: -> 1 or 3
        st(0),  # 1
        ja(1),  # 2: -> 4
        stx(0),  # 3
        ld_mem(0),  # 4
        ret_a(),  # 5
    ])


def test_edge05_write_before_a_branch_reaches_both_sides() -> None:
    validate([st(0), jeq_k(0, 1, 0), ld_mem(0), ldx_mem(0), ret_a()])


def test_edge05_across_a_ret_is_rejected_as_linux_does() -> None:
    # SEMANTICS.md: `jeq #0 jt 3 jf 1; st M[0]; ja 4; ret #0; ld M[0]; ret a`, its targets written
    # absolute as tcpdump -d prints them: jeq goes to 3 (ret #0) or 1 (st), ja goes to 4 (ld M[0]).
    # Every path to the load stores M[0], but `written` flows from the ret at 3 into 4 and Linux
    # (so bpfjit) rejects it.
    program = [
        jeq_k(0, 2, 0),  # 0: jt -> 3, jf -> 1
        st(0),  # 1
        ja(1),  # 2: -> 4
        ret_k(0),  # 3
        ld_mem(0),  # 4
        ret_a(),  # 5
    ]
    check(program, "uninitialized-scratch", 4, "M[0]")


def test_edge05_the_same_paths_with_the_ret_moved_last_are_accepted() -> None:
    validate([
        jeq_k(0, 3, 0),  # 0: jt -> 4 (ret #0), jf -> 1
        st(0),  # 1
        ld_mem(0),  # 2
        ret_a(),  # 3
        ret_k(0),  # 4
    ])


def test_edge05_a_ret_does_not_reset_written() -> None:
    # The dead read after the ret inherits `written` from the store before it: Linux accepts it.
    validate([ld_imm(1), st(0), ret_k(0), ld_mem(0), ret_a()])


# -- edge 7: unknown opcodes -------------------------------------------------------------------
SPEC_UNKNOWN = [0x08, 0x18, 0x21, 0x0E, 0x0D, 0x27, 0x8C, 0xB4, 0x106]


@pytest.mark.parametrize("code", SPEC_UNKNOWN, ids=lambda code: f"{code:#x}")
def test_edge07_spec_listed_codes_rejected(code: int) -> None:
    check([ld_imm(0), Insn(code), ret_k(0)], "unknown-opcode", 1, f"{code:#04x}")


def test_edge07_every_code_outside_the_table_rejected() -> None:
    wrong = []
    for code in range(1 << 16):
        if code in OPCODES:
            continue
        try:
            validate([ret_k(0), Insn(code), ret_k(0)])
        except ValidationError as error:
            if (error.rule, error.index) != ("unknown-opcode", 1):
                wrong.append((code, str(error)))
        else:
            wrong.append((code, "accepted"))
    assert wrong == []


# -- edge 8: unused fields, jt == jf -------------------------------------------------------------
def _around(insn: Insn) -> list[Insn]:
    """A valid program running `insn`: M[0] written first, a final ret after (unless it is one)."""
    info = OPCODES[insn.code]
    if info.is_return:
        return [ld_imm(1), st(0), insn]
    return [ld_imm(1), st(0), insn, ret_k(0)]


def _valid_k(code: int) -> int:
    info = OPCODES[code]
    if info.kind == "ja" or info.reads_scratch or info.writes_scratch:
        return 0
    return 1


@pytest.mark.parametrize("code", sorted(c for c, info in OPCODES.items() if not info.is_conditional),
                         ids=lambda code: f"{code:#04x}")  # fmt: skip
def test_edge08_unused_jt_jf_accepted(code: int) -> None:
    validate(_around(Insn(code, 0xFF, 0xA5, _valid_k(code))))


@pytest.mark.parametrize("code", sorted(c for c, info in OPCODES.items() if not info.uses_k),
                         ids=lambda code: f"{code:#04x}")  # fmt: skip
def test_edge08_unused_k_accepted(code: int) -> None:
    validate(_around(Insn(code, 0, 0, 0xFFFFFFFF)))
    validate(_around(Insn(code, 0, 0, 0)))


def test_edge08_unused_k_of_x_forms_includes_the_hazards() -> None:
    # k = 0 on div x / mod x and k >= 32 on shifts by X are not constants: nothing to reject.
    for op in ("div", "mod", "lsh", "rsh"):
        validate([ld_imm(1), Insn(alu_x(op).code, 0, 0, 0), ret_a()])
        validate([ld_imm(1), Insn(alu_x(op).code, 0, 0, 32), ret_a()])


def test_edge08_unused_k_list_matches_the_spec() -> None:
    unused = {info.kind for info in OPCODES.values() if not info.uses_k}
    # SEMANTICS.md: `k` of X-source operations, tax, txa, neg, ret a (and ld/ldx #pktlen).
    assert unused == {"alu_x", "jmp_x", "tax", "txa", "neg", "ret_a", "ld_len", "ldx_len"}


@pytest.mark.parametrize("jt", [0, 1])
def test_edge08_jt_equals_jf(jt: int) -> None:
    validate([ld_imm(0), jeq_k(0, jt, jt), ret_k(0), ret_k(1)])
    validate([ld_imm(0), jmp_k("jset", 0, jt, jt), ret_k(0), ret_k(1)])
    validate([ld_imm(0), jmp_x("jgt", jt, jt), ret_k(0), ret_k(1)])


def test_edge08_ja_0_accepted() -> None:
    validate([ja(0), ret_k(0)])


# -- edge 18: constant shifts --------------------------------------------------------------------
@pytest.mark.parametrize("op", ["lsh", "rsh"])
def test_edge18_shift_by_constant(op: str) -> None:
    validate([ld_imm(1), alu_k(op, 31), ret_a()])
    validate([ld_imm(1), alu_k(op, 0), ret_a()])
    for k in (32, 33, 0xFFFFFFFF):
        check([ld_imm(1), alu_k(op, k), ret_a()], "shift-too-large", 1, str(k))


# -- order of checks -----------------------------------------------------------------------------
def test_first_bad_instruction_is_reported() -> None:
    error = rejected([ld_imm(0), st(16), alu_k("div", 0), ret_k(0)])
    assert (error.rule, error.index) == ("bad-scratch-index", 1)


def test_tax_then_ret_valid() -> None:
    validate([tax(), ret_a()])
