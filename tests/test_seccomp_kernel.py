"""The kernel's seccomp as the oracle (DIALECTS.md C.4, through tests/seccomp_kernel.py): unprivileged.

- random valid seccomp programs and syscalls: the interpreter, both JIT tiers and the kernel return
  the same value for every record;
- random, mutated and socket-only programs: bpfjit's seccomp validator accepts exactly what the
  kernel installs;
- actions and stacking: what a return makes the kernel do is what `seccomp.decode` says, and a
  stack's winner is what `seccomp.stack` says.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from needs import require
from seccomp_kernel import AVAILABLE, REASON, UNRELIABLE_NRS, Oracle

from bpfjit import Insn, Program, ValidationError, interpret, seccomp, validate
from bpfjit.opcodes import OPCODES
from bpfjit.strategies import any_programs, programs, seccomp_returns, syscalls

pytestmark = pytest.mark.skipif(not AVAILABLE, reason=REASON)
probe_syscalls = syscalls().filter(lambda call: call[0] not in UNRELIABLE_NRS)

# Kept modest so that the suite stays quick (HYPOTHESIS_PROFILE does not change them); a thorough run:
# SECCOMP_ORACLE_SCALE=20 pytest -s tests/test_seccomp_kernel.py (prints the counts at the end).
SCALE = int(os.environ.get("SECCOMP_ORACLE_SCALE", "1"))
PROGRAMS = 100 * SCALE
VALIDATOR_PROGRAMS = 300 * SCALE
FIGURES: dict[str, int] = {"programs": 0, "records": 0, "verdicts": 0, "rejected": 0}


@pytest.fixture(scope="module")
def kernel() -> Iterator[Oracle]:
    oracle = Oracle()
    yield oracle
    oracle.close()
    print(f"\nkernel oracle: {FIGURES}")


def _insns(program: Program) -> list[tuple[int, int, int, int]]:
    return [tuple(insn) for insn in program]  # type: ignore[misc]


@settings(max_examples=PROGRAMS, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(programs(dialect="seccomp", max_insns=40), st.lists(probe_syscalls, min_size=1, max_size=8))
def test_interpreter_jit_and_kernel_agree(kernel: Oracle, program: Program, calls: list[Any]) -> None:
    ip, kernel_values = kernel.run(_insns(program), [[nr, *args] for nr, args in calls])
    recs = seccomp.records(len(calls), arch=seccomp.AUDIT_ARCH_X86_64)
    for i, (nr, args) in enumerate(calls):
        recs[i]["nr"] = nr - (1 << 32) if nr >= 1 << 31 else nr
        recs[i]["args"], recs[i]["ip"] = args, ip
    sf = seccomp.compile(program)
    baseline = sf.evaluate(recs).tolist()
    optimised = sf.tier_up().evaluate(recs).tolist()
    interpreted = [interpret(program, rec.tobytes(), dialect="seccomp") for rec in recs]
    assert kernel_values == interpreted == baseline == optimised, str(program)
    FIGURES["programs"] += 1
    FIGURES["records"] += len(calls)


def test_the_oracle_sees_what_the_docs_say(kernel: Oracle) -> None:
    """DIALECTS.md C.1's measured facts, so that the oracle itself is known to work."""
    ld_ret = lambda k: [(0x20, 0, 0, k), (0x16, 0, 0, 0)]  # noqa: E731
    assert kernel.run(ld_ret(0), [[59, 0, 0, 0, 0, 0, 0], [0xFFFFFFFE, 0, 0, 0, 0, 0, 0]])[1] == [59, 0xFFFFFFFE]
    arg = [[1, 0x1122334455667788, 0, 0, 0, 0, 0]]
    assert kernel.run(ld_ret(16), arg)[1] == [0x55667788] and kernel.run(ld_ret(20), arg)[1] == [0x11223344]
    assert kernel.run(ld_ret(4), arg)[1] == [seccomp.AUDIT_ARCH_X86_64]
    assert kernel.run([(0x80, 0, 0, 0), (0x16, 0, 0, 0)], arg)[1] == [64]
    shift = [(0x00, 0, 0, 1), (0x01, 0, 0, 33), (0x6C, 0, 0, 0), (0x16, 0, 0, 0)]
    assert kernel.run(shift, arg)[1] == [2]
    # div by X == 0 returns 0, KILL_THREAD; the records around it are still answered
    div = [(0x20, 0, 0, 0), (0x15, 0, 2, 5), (0x01, 0, 0, 0), (0x3C, 0, 0, 0), (0x06, 0, 0, 77)]
    assert kernel.run(div, [[1, 0, 0, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0], [7, 0, 0, 0, 0, 0, 0]])[1] == [77, 0, 77]


# -- the validator -----------------------------------------------------------------------------
_MUTATION_CODES = st.one_of(st.sampled_from(sorted(OPCODES)), st.integers(0, 0xFFFF))
_MUTATION_KS = st.one_of(st.integers(0, 70), st.sampled_from((0xFFFFF000, 0xFFFFFFFC, 0xFFFFFFFF, 1 << 31)),
                         st.integers(0, 0xFFFFFFFF))  # fmt: skip


@st.composite
def mutated(draw: Any) -> Program:
    """A valid seccomp program with one field of one instruction changed."""
    program = list(draw(programs(dialect="seccomp", max_insns=24)))
    index = draw(st.integers(0, len(program) - 1))
    code, jt, jf, k = program[index]
    field = draw(st.sampled_from(("code", "k", "jt", "jf", "code+k")))
    if "code" in field:
        code = draw(_MUTATION_CODES)
    if "k" in field:
        k = draw(_MUTATION_KS)
    if field == "jt":
        jt = draw(st.integers(0, 255))
    if field == "jf":
        jf = draw(st.integers(0, 255))
    program[index] = Insn(code, jt, jf, k)
    return Program(program)


def _accepts(program: Program) -> bool:
    try:
        validate(program, "seccomp")
    except ValidationError:
        return False
    return True


@settings(max_examples=VALIDATOR_PROGRAMS, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.one_of(mutated(), programs(max_insns=16), any_programs(max_insns=12, known_only=True)))
def test_validator_agrees_with_the_kernel(kernel: Oracle, program: Program) -> None:
    verdict = kernel.install_verdict(_insns(program))
    assert verdict in (0, errno.EINVAL), f"errno {verdict}"
    assert _accepts(program) == (verdict == 0), str(program)
    FIGURES["verdicts"] += 1
    FIGURES["rejected"] += verdict != 0


@pytest.mark.parametrize(("length", "accepted"), [(4096, True), (4097, False)])
def test_length_limit(kernel: Oracle, length: int, accepted: bool) -> None:
    program = Program([Insn(0x00, 0, 0, 0)] * (length - 1) + [Insn(0x06, 0, 0, 0x7FFF0000)])
    assert (kernel.install_verdict(_insns(program)) == 0) == accepted == _accepts(program)


# -- actions -----------------------------------------------------------------------------------
GETPID = 39  # harmless when an ALLOW lets it run


def _observed(kernel: Oracle, values: list[int]) -> tuple[str, int]:
    """What the kernel did to getpid under filters returning `values` (oldest first)."""
    got = kernel.probe([[(0x06, 0, 0, value)] for value in values], GETPID)
    if "signal" in got:
        return ("killed", int(got["signal"]))
    if got["trapped"]:
        return ("trapped", 0)
    if got["allowed"]:
        return ("allowed", 0)
    return ("returned", int(got["return"]))


def _predicted(action: seccomp.Action) -> tuple[str, int]:
    """What DIALECTS.md C.2 says the kernel does for `action` (single-threaded child, no tracer)."""
    if action.kind in ("KILL_PROCESS", "KILL_THREAD"):
        return ("killed", signal.SIGSYS)
    if action.kind == "TRAP":
        return ("trapped", 0)
    if action.kind == "ERRNO":
        return ("returned", -action.data)
    if action.kind in ("TRACE", "USER_NOTIF"):
        return ("returned", -errno.ENOSYS)
    return ("allowed", 0)


@pytest.mark.parametrize("value", [0x80000000, 0, 0x00030005, 0x00050001, 0x00050000, 0x00050000 | 4095,
                                   0x00050000 | 5000, 0x0005FFFF, 0x7FC00000, 0x7FF00001, 0x7FFC0000, 0x7FFF0000,
                                   0x7FFF0001, 0x00010000, 0x00060000, 0x7FFE0000, 0xFFFF0000],
                         ids=hex)  # fmt: skip
def test_decode_is_what_the_kernel_does(kernel: Oracle, value: int) -> None:
    assert _observed(kernel, [value]) == _predicted(seccomp.decode(value))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(seccomp_returns, min_size=2, max_size=4))
def test_stack_is_what_the_kernel_does(kernel: Oracle, values: list[int]) -> None:
    winner = seccomp.stack([Program([Insn(0x06, 0, 0, v)]) for v in values])(nr=GETPID)
    observed = _observed(kernel, values)
    assert observed == _predicted(seccomp.decode(winner))
    if observed[0] == "returned" and seccomp.decode(winner).kind == "ERRNO":
        assert -observed[1] == seccomp.decode(winner).data  # ties went to the newest filter's data


# -- realistic filters (libseccomp) --------------------------------------------------------------
def _libseccomp_filter() -> Program:
    """A libseccomp filter with every argument comparison it knows, on 64-bit arguments."""
    try:
        lsc = seccomp.libseccomp()
    except ImportError as exc:  # optional: Debian's cp311 module loads only into a Python 3.11
        if sys.version_info[:2] != (3, 11):
            pytest.skip(f"libseccomp's Python binding is Debian's, for Python 3.11 only: {exc}")
        require(False, f"libseccomp's Python binding (python3-seccomp; tools/bootstrap.sh installs it): {exc}")
    f = lsc.SyscallFilter(lsc.ERRNO(1))
    for name in ("read", "write", "close", "getpid", "exit_group", "futex"):
        f.add_rule(lsc.ALLOW, name)
    f.add_rule(lsc.ALLOW, "openat", lsc.Arg(2, lsc.MASKED_EQ, 3, 0))  # read-only opens
    f.add_rule(lsc.ERRNO(13), "openat", lsc.Arg(2, lsc.MASKED_EQ, 3, 1))
    f.add_rule(lsc.ALLOW, "mmap", lsc.Arg(2, lsc.LE, 3), lsc.Arg(1, lsc.LT, 1 << 40))
    f.add_rule(lsc.TRAP, "kill", lsc.Arg(0, lsc.GT, 0xFFFFFFFF))
    f.add_rule(lsc.LOG, "kill", lsc.Arg(1, lsc.GE, 1 << 20))
    f.add_rule(lsc.ALLOW, "socket", lsc.Arg(0, lsc.NE, 40))
    f.add_rule(lsc.ERRNO(22), "ioctl", lsc.Arg(1, lsc.EQ, 0x5401))
    f.add_rule(lsc.TRACE(7), "ptrace")
    f.add_rule(lsc.KILL, "reboot")
    return seccomp.from_libseccomp(f)


NRS = {"read": 0, "write": 1, "close": 3, "mmap": 9, "ioctl": 16, "getpid": 39, "socket": 41, "exit_group": 231,
       "kill": 62, "openat": 257, "ptrace": 101, "reboot": 169}  # fmt: skip


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.sampled_from(sorted(NRS.values())), st.sampled_from((2, 500, 0x40000001))),
                          st.tuples(*[st.one_of(st.sampled_from((0, 1, 2, 3, 40, 0x5401, 1 << 20, 0xFFFFFFFF,
                                                                 1 << 32, (1 << 40) - 1, 1 << 40, (1 << 64) - 1)),
                                                st.integers(0, (1 << 64) - 1))] * 6)),
                min_size=40, max_size=40))  # fmt: skip
def test_a_libseccomp_filter_runs_as_in_the_kernel(kernel: Oracle, calls: list[Any]) -> None:
    program = _libseccomp_filter()
    ip, kernel_values = kernel.run(_insns(program), [[nr, *args] for nr, args in calls])
    sf = seccomp.compile(program)
    recs = seccomp.records(len(calls), arch=seccomp.AUDIT_ARCH_X86_64)
    for i, (nr, args) in enumerate(calls):
        recs[i]["nr"], recs[i]["args"], recs[i]["ip"] = nr, args, ip
    assert sf.evaluate(recs).tolist() == kernel_values
    FIGURES["libseccomp records"] = FIGURES.get("libseccomp records", 0) + len(calls)


# -- explaining a stack: what two installed filters make the kernel do ----------------------------------
def _two_libseccomp_filters() -> list[Program]:
    """Two filters a process might stack, argument-dependent on harmless syscalls (ALLOW runs them)."""
    from test_seccomp_names import lsc_module

    lsc = lsc_module()
    older = lsc.SyscallFilter(lsc.ALLOW)
    older.add_rule(lsc.ERRNO(5), "getpid", lsc.Arg(0, lsc.EQ, 1))
    older.add_rule(lsc.TRAP, "getpid", lsc.Arg(0, lsc.EQ, 2))
    older.add_rule(lsc.LOG, "getppid")
    older.add_rule(lsc.ERRNO(7), "gettid", lsc.Arg(1, lsc.GT, 1 << 32))
    newer = lsc.SyscallFilter(lsc.LOG)
    newer.add_rule(lsc.ERRNO(6), "getpid", lsc.Arg(1, lsc.MASKED_EQ, 1, 1))
    newer.add_rule(lsc.ERRNO(9), "getppid", lsc.Arg(0, lsc.GE, 100))
    newer.add_rule(lsc.KILL_PROCESS, "gettid", lsc.Arg(2, lsc.EQ, 3))
    newer.add_rule(lsc.TRACE(4), "gettid", lsc.Arg(2, lsc.EQ, 4))
    return [seccomp.from_libseccomp(older), seccomp.from_libseccomp(newer)]


def test_explain_a_stack_says_what_the_kernel_does(kernel: Oracle) -> None:
    """Two filters installed in a child (oldest first); every probe's outcome is the action of the
    case explain gives for its arguments, and what seccomp.stack returns."""
    from bpfjit.seccomp_explain import record_words

    filters = _two_libseccomp_filters()
    stacked = seccomp.stack(filters)
    nrs = {"getpid": 39, "getppid": 110, "gettid": 186}
    e = seccomp.explain(stacked, "x86_64", nrs=nrs.values())
    assert {p.name for p in e.depends()} == set(nrs)
    probes = 0
    for nr in nrs.values():
        for args in ((0, 0, 0), (1, 0, 0), (2, 1, 0), (1, 3, 0), (100, 0, 3), (7, 1 << 33, 4), (0, 1 << 33, 3),
                     (101, 1, 4), (2, (1 << 32) + 1, 5)):  # fmt: skip
            value = stacked(nr, args, arch=seccomp.AUDIT_ARCH_X86_64)
            (case,) = [c for c in e.syscalls[nr].cases if c.holds(record_words(args))]
            assert isinstance(case.action, seccomp.Action) and case.action == seccomp.decode(value)
            got = kernel.probe([list(map(tuple, f)) for f in filters], nr, args)
            observed = (("killed", int(got["signal"])) if "signal" in got else ("trapped", 0) if got["trapped"]
                        else ("allowed", 0) if got["allowed"] else ("returned", int(got["return"])))  # fmt: skip
            assert observed == _predicted(case.action), (nr, args, case)
            probes += 1
    FIGURES["stack probes"] = FIGURES.get("stack probes", 0) + probes


# -- the benchmark's hand-written filter -----------------------------------------------------------------
def _bench() -> Any:
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for bench/
    from bench import seccomp_bench

    return seccomp_bench


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_benchmarks_hand_written_filter_runs_as_in_the_kernel(kernel: Oracle, data: Any) -> None:
    bench = _bench()
    program = bench.hand_program()
    numbers = bench.syscall_numbers()
    named = sorted({numbers[name] for name, _, _ in bench.HAND_RULES})
    values = (0, 1, 2, 3, 4, 7, 0xF, 0x5412, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1, 1 << 40, (1 << 40) + 1, (1 << 64) - 1)
    arg = st.one_of(st.sampled_from(values), st.integers(0, (1 << 64) - 1))
    nr = st.one_of(st.sampled_from(named), st.sampled_from((2, 500, 0x40000000)))
    calls = data.draw(st.lists(st.tuples(nr, st.tuples(*[arg] * 6)), min_size=60, max_size=60))
    ip, kernel_values = kernel.run(_insns(program), [[nr, *args] for nr, args in calls])
    sf = seccomp.compile(program)
    recs = seccomp.records(len(calls), arch=seccomp.AUDIT_ARCH_X86_64)
    for i, (nr, args) in enumerate(calls):
        recs[i]["nr"], recs[i]["args"], recs[i]["ip"] = nr, args, ip
    assert sf.evaluate(recs).tolist() == kernel_values
    e = seccomp.explain(program, "x86_64", nrs=named)
    conditional = {name for name, _, conditions in bench.HAND_RULES if conditions}
    assert {p.name for p in e.depends()} == conditional  # every rule with conditions leaves its syscall open
