"""Dialects (bpfjit.dialects): the seccomp validator rules, and seccomp semantics on every backend.

Expected values are worked out by hand from DIALECTS.md C (host-order words of seccomp_data, shifts
by X & 31, `ld len` = 64); tests/test_seccomp_kernel.py checks the same facts against the kernel.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable

import cases as c
import numpy as np
import pytest

import bpfjit
from bpfjit import Insn, Program, ValidationError
from bpfjit.dialects import DIALECTS, PCAP, SECCOMP, dialect_of
from bpfjit.opcodes import KINDS

LITTLE = sys.byteorder == "little"


def data(nr: int = 0, arch: int = 0xC000003E, ip: int = 0, args: tuple[int, ...] = ()) -> bytes:
    """struct seccomp_data in host order (written out here, not taken from bpfjit.seccomp)."""
    return struct.pack("=iIQ6Q", nr, arch, ip, *args, *[0] * (6 - len(args)))


# -- the record ------------------------------------------------------------------------------------
def test_pcap_is_the_default_and_keeps_semantics_md() -> None:
    assert PCAP.rules == () and PCAP.byte_order == "big" and PCAP.shift_x == "zero" and PCAP.fixed_length is None
    assert dialect_of("pcap") is PCAP and dialect_of(SECCOMP) is SECCOMP
    assert set(DIALECTS) == {"pcap", "seccomp", "linux"}
    assert PCAP.offsets == "unsigned"


def test_unknown_dialects_are_refused_everywhere() -> None:
    program = Program([c.ret_k(1)])
    calls: list[Callable[[], object]] = [
        lambda: bpfjit.validate(program, "bsd"),
        lambda: bpfjit.interpret(program, b"", dialect="bogus"),
        lambda: bpfjit.compile(program, dialect="seccomp2"),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="unknown dialect"):
            call()


def test_seccomp_rules_name_kinds_that_exist() -> None:
    from bpfjit import dialects

    assert dialects._SECCOMP_KINDS <= KINDS


def test_expressions_are_pcap_programs() -> None:
    with pytest.raises(ValueError, match="pcap programs"):
        bpfjit.compile("tcp", dialect="seccomp")


# -- validator rules -------------------------------------------------------------------------------
# (code, k): refused by seccomp_check_filter although the socket rules accept them (DIALECTS.md C.1).
SECCOMP_OPCODE = [(0x28, 0), (0x30, 0), (0x40, 0), (0x48, 0), (0x50, 0), (0xB1, 0), (0x94, 3), (0x9C, 0)]
SECCOMP_OFFSET = [(0x20, 62), (0x20, 64), (0x20, 2), (0x20, 0xFFFFF000), (0x20, 0xFFFFFFFC)]
ACCEPTED = [(0x20, 0), (0x20, 60), (0x80, 0), (0x81, 0), (0x34, 3), (0x3C, 0), (0x6C, 0), (0x7C, 0)]


@pytest.mark.parametrize(("rule", "code", "k"), [("seccomp-opcode", code, k) for code, k in SECCOMP_OPCODE]
                         + [("seccomp-offset", code, k) for code, k in SECCOMP_OFFSET])  # fmt: skip
def test_seccomp_rules_name_the_rule_and_the_instruction(rule: str, code: int, k: int) -> None:
    program = Program([c.ld_imm(0), c.tax(), Insn(code, 0, 0, k), c.ret_a()])
    bpfjit.validate(program)  # a good socket filter ...
    with pytest.raises(ValidationError) as info:
        bpfjit.validate(program, "seccomp")  # ... but not a seccomp one
    assert (info.value.rule, info.value.index) == (rule, 2)


@pytest.mark.parametrize(("code", "k"), ACCEPTED)
def test_seccomp_accepts_what_the_kernel_keeps(code: int, k: int) -> None:
    bpfjit.validate(Program([Insn(code, 0, 0, k), c.ret_a()]), "seccomp")


def test_every_seccomp_rule_has_a_test() -> None:
    assert set(SECCOMP.rule_names) == {"seccomp-opcode", "seccomp-offset"}


def test_base_rules_come_first() -> None:
    # The kernel runs bpf_check_classic before seccomp_check_filter: the jump is reported, not the ldh.
    program = Program([c.ld_abs(2, 0), c.jeq_k(0, 5, 0), c.ret_k(0)])
    with pytest.raises(ValidationError) as info:
        bpfjit.validate(program, "seccomp")
    assert (info.value.rule, info.value.index) == ("jump-out-of-range", 1)


def test_the_first_bad_instruction_is_reported() -> None:
    program = Program([c.ld_abs(4, 0), c.ld_abs(4, 66), c.ld_abs(1, 0), c.ret_a()])
    with pytest.raises(ValidationError) as info:
        bpfjit.validate(program, "seccomp")
    assert (info.value.rule, info.value.index) == ("seccomp-offset", 1)


# -- semantics on every backend -----------------------------------------------------------------
ARG = 0x1122334455667788
SECCOMP_CASES: list[tuple[str, list[Insn], bytes, int]] = [
    ("nr", [c.ld_abs(4, 0), c.ret_a()], data(nr=59), 59),
    ("nr-negative", [c.ld_abs(4, 0), c.ret_a()], data(nr=-2), 0xFFFFFFFE),
    ("arch", [c.ld_abs(4, 4), c.ret_a()], data(), 0xC000003E),
    ("ip-low", [c.ld_abs(4, 8), c.ret_a()], data(ip=0x7F0011223344), 0x11223344 if LITTLE else 0x7F00),
    ("arg0-low", [c.ld_abs(4, 16), c.ret_a()], data(args=(ARG,)), 0x55667788 if LITTLE else 0x11223344),
    ("arg0-high", [c.ld_abs(4, 20), c.ret_a()], data(args=(ARG,)), 0x11223344 if LITTLE else 0x55667788),
    ("arg5-high", [c.ld_abs(4, 60), c.ret_a()], data(args=(0, 0, 0, 0, 0, 7 << 32)), 7 if LITTLE else 0),
    ("ld-len", [c.ld_len(), c.ret_a()], data(), 64),
    ("ldx-len", [c.ldx_len(), c.txa(), c.ret_a()], data(), 64),
    ("lsh-x-33", [c.ld_imm(1), c.ldx_imm(33), c.alu_x("lsh"), c.ret_a()], data(), 2),
    ("lsh-x-32", [c.ld_imm(5), c.ldx_imm(32), c.alu_x("lsh"), c.ret_a()], data(), 5),
    ("rsh-x-32", [c.ld_imm(0x80000000), c.ldx_imm(32), c.alu_x("rsh"), c.ret_a()], data(), 0x80000000),
    ("rsh-x-max", [c.ld_imm(0x80000000), c.ldx_imm(0xFFFFFFFF), c.alu_x("rsh"), c.ret_a()], data(), 1),
    ("div-x-0", [c.ld_imm(9), c.ldx_imm(0), c.alu_x("div"), c.ret_k(0x7FFF0000)], data(), 0),
    ("jeq-nr", [c.ld_abs(4, 0), c.jeq_k(2, 0, 1), c.ret_k(0x50001), c.ret_k(0x7FFF0000)], data(nr=2), 0x50001),
]
# pcap reads the same bytes big-endian and shifts by X >= 32 to 0: the same program, other answers.
PCAP_VALUES = {"lsh-x-33": 0, "lsh-x-32": 0, "rsh-x-32": 0, "rsh-x-max": 0,
               "nr": 59 << 24 if LITTLE else 59, "ld-len": 64, "div-x-0": 0}  # fmt: skip


def _jit_call(program: Program, record: bytes) -> int:
    return int(bpfjit.compile(program, dialect="seccomp").use_tier("baseline")(record))


def _jit_ctypes(program: Program, record: bytes) -> int:
    return bpfjit.compile(program, dialect="seccomp").use_tier("baseline").call(record)


def _jit_optimised(program: Program, record: bytes) -> int:
    f = bpfjit.compile(program, dialect="seccomp").use_tier("optimised")
    return int(f.run_records(record * 3, 64)[1])


def _seccomp_module(program: Program, record: bytes) -> int:
    from bpfjit import seccomp

    recs = np.frombuffer(record * 2, dtype=seccomp.DATA_DTYPE).copy()
    return int(seccomp.compile(program).evaluate(recs)[1])


SECCOMP_BACKENDS: dict[str, Callable[[Program, bytes], int]] = {
    "interpreter": lambda p, r: bpfjit.interpret(p, r, dialect="seccomp"),
    "jit": _jit_call,
    "jit-ctypes": _jit_ctypes,
    "jit-optimised": _jit_optimised,
    "seccomp.evaluate": _seccomp_module,
}


@pytest.mark.parametrize("backend", sorted(SECCOMP_BACKENDS))
@pytest.mark.parametrize(("name", "insns", "record", "expected"), SECCOMP_CASES, ids=[x[0] for x in SECCOMP_CASES])
def test_seccomp_case(backend: str, name: str, insns: list[Insn], record: bytes, expected: int) -> None:
    assert SECCOMP_BACKENDS[backend](Program(insns), record) == expected


@pytest.mark.parametrize("name", sorted(PCAP_VALUES))
def test_pcap_keeps_its_meaning_for_the_same_program(name: str) -> None:
    _, insns, record, _ = next(case for case in SECCOMP_CASES if case[0] == name)
    program = Program(insns)
    seccomp_result = _jit_call(program, record)  # compiled first: the caches must keep them apart
    assert bpfjit.interpret(program, record) == PCAP_VALUES[name]
    assert bpfjit.compile(program)(record) == PCAP_VALUES[name]
    assert bpfjit.compile(program, dialect="seccomp")(record) == seccomp_result


def test_compiled_code_is_kept_per_dialect() -> None:
    program = Program([c.ld_imm(1), c.ldx_imm(40), c.alu_x("lsh"), c.ret_a()])
    pcap, sec = bpfjit.compile(program), bpfjit.compile(program, dialect="seccomp")
    assert pcap.code is not sec.code and pcap.code.name != sec.code.name
    assert "seccomp" in sec.code._cache_key(0).text and "pcap" in pcap.code._cache_key(0).text
    assert (pcap(b"x" * 64), sec(b"x" * 64)) == (0, 1 << 8)
    assert "dialect 'seccomp'" in repr(sec) and "dialect" not in repr(pcap)


def test_seccomp_filters_pickle_in_their_dialect() -> None:
    import pickle

    program = Program([c.ld_imm(1), c.ldx_imm(33), c.alu_x("lsh"), c.ret_a()])
    copy = pickle.loads(pickle.dumps(bpfjit.compile(program, dialect="seccomp")))
    assert copy.dialect is SECCOMP and copy(data()) == 2


def test_a_second_process_loads_seccomp_code_from_the_disk_cache(tmp_path: object) -> None:
    import os
    import subprocess

    script = ("import bpfjit; from bpfjit import Program, Insn; "
              "p = Program([Insn(0x00,0,0,1), Insn(0x01,0,0,33), Insn(0x6c,0,0,0), Insn(0x16,0,0,0)]); "
              "print(bpfjit.compile(p, dialect='seccomp')(bytes(64)), bpfjit.compile(p)(bytes(64)))")  # fmt: skip
    env = {**os.environ, "BPFJIT_CACHE_DIR": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    second = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split() == second.stdout.split() == ["2", "0"]
