"""bpfjit.seccomp: records, decoding returns into actions, stacks, batch evaluation (DIALECTS.md C.1, C.2).

The kernel itself confirms these facts in tests/test_seccomp_kernel.py."""

from __future__ import annotations

import sys
import threading

import cases as c
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfjit import Insn, Program, ValidationError, interpret, seccomp
from bpfjit.seccomp import RET, decode
from bpfjit.strategies import programs, seccomp_returns, syscalls


# -- records ---------------------------------------------------------------------------------------
def test_data_dtype_is_struct_seccomp_data() -> None:
    assert seccomp.DATA_DTYPE.itemsize == 64
    assert [seccomp.DATA_DTYPE.fields[name][1] for name in ("nr", "arch", "ip", "args")] == [0, 4, 8, 16]
    recs = seccomp.records(2)
    recs[1]["nr"], recs[1]["ip"], recs[1]["args"][2] = -2, 0x1122, 0xAABBCCDD00112233
    expected = seccomp.record(0xFFFFFFFE, (0, 0, 0xAABBCCDD00112233), ip=0x1122)
    assert recs[1].tobytes() == expected
    assert int.from_bytes(expected[32:40], sys.byteorder) == 0xAABBCCDD00112233


def test_record_checks_its_fields() -> None:
    assert seccomp.record(-1) == seccomp.record(0xFFFFFFFF)
    for bad in (lambda: seccomp.record(1 << 32), lambda: seccomp.record(1, (0,) * 7),
                lambda: seccomp.record(1, (1 << 64,)), lambda: seccomp.record(1, arch=1 << 32)):  # fmt: skip
        with pytest.raises(ValueError):
            bad()


def test_host_arch_is_known_here() -> None:
    import platform

    if platform.machine() == "x86_64":
        assert seccomp.HOST_ARCH == seccomp.AUDIT_ARCH_X86_64 == 0xC000003E


# -- decode ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "kind", "data", "name"), [
    (0x80000000, "KILL_PROCESS", 0, "KILL_PROCESS"),
    (0x00000000, "KILL_THREAD", 0, "KILL_THREAD"),
    (0x00030007, "TRAP", 7, "TRAP(7)"),
    (0x00050001, "ERRNO", 1, "ERRNO(1)"),
    (0x00050000, "ERRNO", 0, "ERRNO(0)"),
    (0x00050000 | 4095, "ERRNO", 4095, "ERRNO(4095)"),
    (0x00050000 | 5000, "ERRNO", 4095, "ERRNO(4095)"),  # capped at MAX_ERRNO
    (0x7FC00000, "USER_NOTIF", 0, "USER_NOTIF"),
    (0x7FF00009, "TRACE", 9, "TRACE(9)"),
    (0x7FFC0000, "LOG", 0, "LOG"),
    (0x7FFF0000, "ALLOW", 0, "ALLOW"),
    (0x7FFF0001, "ALLOW", 1, "ALLOW"),
])  # fmt: skip
def test_decode(value: int, kind: str, data: int, name: str) -> None:
    action = decode(value)
    assert (action.kind, action.data, action.value, action.known, action.name) == (kind, data, value, True, name)


@pytest.mark.parametrize("value", [0x00010000, 0x00060000, 0x7FFE0000, 0xFFFF0000, 0x80010005])
def test_unknown_actions_kill_the_process(value: int) -> None:
    action = decode(value)
    assert action.kind == "KILL_PROCESS" and not action.known
    assert action.name == f"KILL_PROCESS (unknown action {value & 0xFFFF0000:#010x})"


def test_decode_refuses_non_u32() -> None:
    with pytest.raises(ValueError):
        decode(1 << 32)


def test_precedence_is_the_table_order() -> None:
    ranks = seccomp.precedence(list(RET.values())).tolist()
    assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks)
    assert list(RET) == ["KILL_PROCESS", "KILL_THREAD", "TRAP", "ERRNO", "USER_NOTIF", "TRACE", "LOG", "ALLOW"]


# -- filters ---------------------------------------------------------------------------------------
def _ret(value: int) -> Program:
    return Program([c.ret_k(value)])


def test_compile_takes_programs_insns_and_sock_filter_bytes() -> None:
    program = Program([c.ld_abs(4, 0), c.ret_a()])
    for source in (program, list(program), program.to_bytes()):
        assert seccomp.compile(source)(nr=231) == 231


def test_compile_refuses_what_the_kernel_refuses() -> None:
    with pytest.raises(ValidationError) as info:
        seccomp.compile([c.ld_abs(2, 0), c.ret_a()])
    assert info.value.rule == "seccomp-opcode"


def test_call_by_fields() -> None:
    sf = seccomp.compile([c.ld_abs(4, 4), c.st(0), c.ld_abs(4, 12), c.ret_a()])
    assert sf(nr=0, ip=0x1234_0000_5678) == 0x1234
    assert seccomp.compile([c.ld_abs(4, 4), c.ret_a()])(nr=1, arch=seccomp.AUDIT_ARCH_AARCH64) == 0xC00000B7
    assert seccomp.compile([c.ret_k(0x50001)]).action(nr=1).name == "ERRNO(1)"


@given(programs(dialect="seccomp", max_insns=32), st.lists(syscalls(), min_size=1, max_size=6))
def test_evaluate_agrees_with_the_interpreter_and_calls(program: Program, calls: list) -> None:
    sf = seccomp.compile(program)
    recs = seccomp.records(len(calls))
    for i, (nr, args) in enumerate(calls):
        recs[i]["nr"], recs[i]["args"] = np.uint32(nr).view(np.int32), args
    values = sf.evaluate(recs).tolist()
    assert values == [interpret(program, seccomp.record(nr, args), dialect="seccomp") for nr, args in calls]
    assert values == [sf(nr, args) for nr, args in calls]
    assert sf.evaluate(recs.tobytes()).tolist() == values


def test_evaluate_checks_its_input() -> None:
    sf = seccomp.compile(_ret(0x7FFF0000))
    with pytest.raises(TypeError):
        sf.evaluate(np.zeros(2, dtype=[("nr", "i4")]))
    with pytest.raises(ValueError):
        sf.evaluate(b"x" * 65)
    with pytest.raises(ValueError):
        sf.evaluate(seccomp.records(4)[::2])
    assert sf.evaluate(seccomp.records(0)).shape == (0,)
    out = np.zeros(3, dtype=np.uint32)
    assert sf.evaluate(seccomp.records(3), out) is out and out.tolist() == [0x7FFF0000] * 3


def test_evaluate_runs_threads_in_parallel_on_the_same_filter() -> None:
    sf = seccomp.compile([c.ld_abs(4, 0), c.jeq_k(59, 0, 1), c.ret_k(0x50001), c.ret_k(0x7FFF0000)]).tier_up()
    recs = seccomp.records(200_000)
    recs["nr"] = np.arange(len(recs)) % 64
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(sf.evaluate(recs))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = np.where(recs["nr"] == 59, 0x50001, 0x7FFF0000)
    assert len(results) == 4 and all((r == expected).all() for r in results)


# -- stacks ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("older", "newer", "winner"), [
    (0x50001, 0x50002, 0x50002),  # same action: the newest filter's data
    (0x50002, 0x50001, 0x50001),
    (0x7FFC0000, 0x50003, 0x50003),  # ERRNO beats LOG
    (0x50003, 0x7FF00000, 0x50003),  # ... and TRACE
    (0x50003, 0x30001, 0x30001),  # TRAP beats ERRNO
    (0x7FFF0005, 0x7FFF0006, 0x7FFF0000),  # ALLOW never replaces the starting ALLOW
    (0x00010000, 0x80000000, 0x80000000),  # KILL_PROCESS is lowest of all ...
    (0x00010000, 0x00030000, 0x00010000),  # ... an unknown action sorts by number (and kills)
])  # fmt: skip
def test_stack_precedence(older: int, newer: int, winner: int) -> None:
    stacked = seccomp.stack([_ret(older), _ret(newer)])
    assert stacked(nr=0) == winner
    assert stacked.evaluate(seccomp.records(3)).tolist() == [winner] * 3


@given(st.lists(seccomp_returns, min_size=1, max_size=5), syscalls())
def test_stack_is_the_kernels_loop(values: list[int], call: tuple[int, tuple[int, ...]]) -> None:
    expected = 0x7FFF0000
    for value in reversed(values):  # seccomp_run_filters: newest first, strictly lower wins
        if np.int32(np.uint32(value & 0xFFFF0000).view(np.int32)) < np.uint32(expected & 0xFFFF0000).view(np.int32):
            expected = value
    assert seccomp.stack([_ret(v) for v in values])(*call) == expected


def test_stack_limits() -> None:
    big = Program([c.ld_imm(0)] * 4095 + [c.ret_k(0x7FFF0000)])
    filters = [seccomp.compile(big)] * 8
    assert len(seccomp.stack(filters[:7])) == 7  # 7 * 4096 + 6 * 4 <= 32768
    with pytest.raises(ValidationError) as info:
        seccomp.stack(filters)
    assert info.value.rule == "stack-too-long" and "32796" in str(info.value)  # 8 * 4096 + 7 * 4
    with pytest.raises(ValueError):
        seccomp.stack([])


def test_stack_of_one_is_the_filter_but_allow_data_is_dropped() -> None:
    sf = seccomp.compile([c.ld_abs(4, 0), c.jeq_k(1, 0, 1), c.ret_k(0x50001), c.ret_k(0x7FFF0003)])
    recs = seccomp.records(2)
    recs["nr"] = [1, 2]
    assert sf.evaluate(recs).tolist() == [0x50001, 0x7FFF0003]
    assert seccomp.stack([sf]).evaluate(recs).tolist() == [0x50001, 0x7FFF0000]


def test_insn_tuples_are_accepted_by_stack() -> None:
    assert seccomp.stack([[Insn(0x06, 0, 0, 0x50004)]])(nr=3) == 0x50004
