"""seccomp.disasm and seccomp.explain: exact text on hand-written programs, and explain held to the JIT
on real libseccomp filters (every syscall number; witnesses for both sides of "depends")."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_seccomp_names import lsc_module

from bpfjit import Insn, Program, seccomp
from bpfjit.opcodes import OPCODES
from bpfjit.seccomp import RET, decode
from bpfjit.seccomp_explain import Case, PathBudgetError, explain, numbers, record_words
from bpfjit.strategies import programs, syscalls

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for bench/
from bench import seccomp_bench

X86_64 = seccomp.AUDIT_ARCH_X86_64
LO, HI = (16, 20) if sys.byteorder == "little" else (20, 16)  # args[0]'s words
HAND = Program([
    Insn(0x20, 0, 0, 4),                 # A = arch
    Insn(0x15, 1, 0, X86_64),            # if (A == ARCH_X86_64) goto 3
    Insn(0x06, 0, 0, 0x80000000),        # return KILL_PROCESS
    Insn(0x20, 0, 0, 0),                 # A = sys_number
    Insn(0x15, 0, 1, 1),                 # if (A != write) goto 6
    Insn(0x06, 0, 0, RET["ALLOW"]),
    Insn(0x15, 0, 6, 257),               # if (A != openat) goto 13
    Insn(0x20, 0, 0, 40),                # A = args[3] (its low word on little-endian hosts)
    Insn(0x54, 0, 0, 3),                 # A &= 3
    Insn(0x02, 0, 0, 5),                 # mem[5] = A
    Insn(0x61, 0, 0, 5),                 # X = mem[5]
    Insn(0x1D, 0, 1, 0),                 # if (A != X) goto 13: never, they are the same value
    Insn(0x16, 0, 0, 0),                 # return A: ALLOW only by an impossible path, A & 3 is small
    Insn(0x06, 0, 0, RET["ERRNO"] | 1),  # return ERRNO(1)
])  # fmt: skip


def test_disasm_of_a_hand_written_program() -> None:
    lo = "args[3]" if sys.byteorder == "little" else "args[3] >> 32"
    assert seccomp.disasm(HAND, arch="x86_64").splitlines()[2:] == [
        " 0000: 0x20 0x00 0x00 0x00000004  A = arch",
        " 0001: 0x15 0x01 0x00 0xc000003e  if (A == ARCH_X86_64) goto 0003",
        " 0002: 0x06 0x00 0x00 0x80000000  return KILL_PROCESS",
        " 0003: 0x20 0x00 0x00 0x00000000  A = sys_number",
        " 0004: 0x15 0x00 0x01 0x00000001  if (A != write) goto 0006",
        " 0005: 0x06 0x00 0x00 0x7fff0000  return ALLOW",
        " 0006: 0x15 0x00 0x06 0x00000101  if (A != openat) goto 0013",
        f" 0007: 0x20 0x00 0x00 0x00000028  A = {lo}",
        " 0008: 0x54 0x00 0x00 0x00000003  A &= 0x3",
        " 0009: 0x02 0x00 0x00 0x00000005  mem[5] = A",
        " 0010: 0x61 0x00 0x00 0x00000005  X = mem[5]",
        " 0011: 0x1d 0x00 0x01 0x00000000  if (A != X) goto 0013",
        " 0012: 0x16 0x00 0x00 0x00000000  return A",
        " 0013: 0x06 0x00 0x00 0x00050001  return ERRNO(1)",
    ]


def test_disasm_names_syscalls_by_the_architecture_a_test_selected() -> None:
    program = Program([
        Insn(0x20, 0, 0, 4), Insn(0x15, 0, 3, seccomp.AUDIT_ARCH_I386), Insn(0x20, 0, 0, 0),
        Insn(0x15, 3, 0, 11), Insn(0x06, 0, 0, RET["ALLOW"]), Insn(0x20, 0, 0, 0), Insn(0x15, 0, 1, 11),
        Insn(0x06, 0, 0, 0), Insn(0x25, 0, 1, 0x1F), Insn(0x06, 0, 0, 0x00010000), Insn(0x45, 0, 1, 0x0F),
        Insn(0x1C, 0, 0, 0), Insn(0x06, 0, 0, RET["ERRNO"] | 5000),
    ])  # fmt: skip
    text = [line.split("  ", 2)[-1] for line in seccomp.disasm(program, arch="x86_64").splitlines()[2:]]
    assert text == ["A = arch", "if (A != ARCH_I386) goto 0005", "A = sys_number",
                    "if (A == execve) goto 0007",  # 11 on i386 ...
                    "return ALLOW", "A = sys_number",
                    "if (A != munmap) goto 0008",  # ... and on x86_64 (the caller's arch)
                    "return KILL_THREAD", "if (A <= 0x1f) goto 0010", "return 0x00010000",
                    "if (!(A & 0xf)) goto 0012", "A -= X", "return ERRNO(4095)"]  # fmt: skip


def test_explain_a_hand_written_program() -> None:
    e = seccomp.explain(HAND, "x86_64")
    errno1, allow = decode(RET["ERRNO"] | 1), decode(RET["ALLOW"])
    assert e.syscalls[1].cases == (Case(allow, ()),)
    assert e.syscalls[257].cases == (Case("return args[3].lo & 0x3" if sys.byteorder == "little"
                                          else "return args[3].hi & 0x3", ()),)  # fmt: skip
    assert e.syscalls[0].action == errno1 and e.allowed() == {1}
    assert e.by_action()[errno1] == [nr for nr in numbers("x86_64") if nr not in (1, 257)]
    assert seccomp.explain(HAND, "i386").by_action() == {decode(0x80000000): numbers("i386")}


def test_explain_tracks_argument_conditions_and_cuts_contradictions() -> None:
    program = Program([
        Insn(0x20, 0, 0, 0), Insn(0x15, 0, 8, 2),        # nr == 2 (open) or ERRNO(1)
        Insn(0x20, 0, 0, HI), Insn(0x15, 0, 6, 0),        # args[0].hi == 0
        Insn(0x20, 0, 0, LO), Insn(0x25, 0, 2, 0x10),     # args[0].lo > 0x10
        Insn(0x35, 4, 0, 0x11),                           # >= 0x11: always, given > 0x10
        Insn(0x06, 0, 0, 0),                              # unreachable KILL_THREAD
        Insn(0x87, 0, 0, 0), Insn(0x3C, 0, 0, 0),         # A = X (0); A /= X: divides by 0
        Insn(0x06, 0, 0, RET["ERRNO"] | 1),
        Insn(0x06, 0, 0, RET["ALLOW"]),
    ])  # fmt: skip
    p = seccomp.explain(program, "x86_64").syscalls[2]
    assert p.depends and p.name == "open"
    assert p.cases == (
        Case(decode(RET["ALLOW"]), ("args[0].hi == 0", "args[0].lo > 0x10")),
        Case(decode(0), ("args[0].hi == 0", "args[0].lo <= 0x10")),  # the division by X == 0
        Case(decode(RET["ERRNO"] | 1), ("args[0].hi != 0",)),
    )
    assert seccomp.explain(program, "x86_64").by_action() == {
        decode(RET["ERRNO"] | 1): [nr for nr in numbers("x86_64") if nr != 2]
    }
    check_against_jit(program, "x86_64")


def test_a_range_narrowed_to_one_value_is_said_as_that_value() -> None:
    """libseccomp's 64-bit `>` on a high word: `hi > 1`, `hi == 1` (then the low word), else `hi == 0`.
    The last path is `hi <= 1 and hi != 1`: written `hi == 0` (a bare `hi != 1` would hold for hi = 5)."""
    program = Program([
        Insn(0x20, 0, 0, HI), Insn(0x25, 3, 0, 1), Insn(0x15, 0, 3, 1),   # hi > 1: ALLOW; hi != 1: ERRNO(1)
        Insn(0x20, 0, 0, LO), Insn(0x25, 0, 1, 0),                         # hi == 1: lo > 0 ALLOW, else ERRNO(1)
        Insn(0x06, 0, 0, RET["ALLOW"]), Insn(0x06, 0, 0, RET["ERRNO"] | 1),
    ])  # fmt: skip
    cases = seccomp.explain(program, "x86_64", nrs=[0]).syscalls[0].cases
    assert [str(c) for c in cases] == ["ALLOW if args[0].hi > 1", "ALLOW if args[0].hi == 1 and args[0].lo > 0",
                                       "ERRNO(1) if args[0].hi == 1 and args[0].lo == 0",
                                       "ERRNO(1) if args[0].hi == 0"]  # fmt: skip
    assert [c.holds(record_words([5 << 32])) for c in cases] == [True, False, False, False]
    check_against_jit(program, "x86_64")


def test_explain_gives_up_on_exponential_programs() -> None:
    insns = [Insn(0x20, 0, 0, LO + 8 * (i % 5)) if j == 0 else Insn(0x45, 0, 0, 1 << (i % 31))
             for i in range(40) for j in range(2)]  # fmt: skip
    program = Program([*insns, Insn(0x06, 0, 0, RET["ALLOW"])])
    program = Program([Insn(i.code, 0, 1, i.k) if OPCODES[i.code].is_conditional else i for i in program])
    with pytest.raises(PathBudgetError):
        explain(program, "x86_64", budget=10_000)


# -- against the JIT, on libseccomp's filters ----------------------------------------------------------
def _candidates(program: Program, rng: np.random.Generator, n: int) -> np.ndarray:
    """n values per 32-bit word: the program's constants (and their neighbours), 0, ~0, random."""
    ks = {i.k for i in program if OPCODES[i.code].kind in ("jmp_k", "alu_k", "ld_imm")}
    pool = np.array(sorted({v & 0xFFFFFFFF for k in ks for v in (k, k - 1, k + 1)} | {0, 1, 0xFFFFFFFF}),
                    dtype=np.uint64)  # fmt: skip
    picked = np.where(rng.random(n) < rng.choice([0.1, 0.5, 0.9], n), np.uint64(0), rng.choice(pool, n))
    return np.where(rng.random(n) < 0.9, picked, rng.integers(0, 1 << 32, n, dtype=np.uint64))


def check_against_jit(program: Program, arch: str, seed: int = 5) -> tuple[int, int]:
    """Every number: the explained action is what the JIT returns for random argument vectors, and
    every action a "depends" number lists is reached by some vector (and no other is). Returns
    (numbers checked, numbers that depend)."""
    sf, e = seccomp.compile(program), seccomp.explain(program, arch)
    rng = np.random.default_rng(seed)
    depends = 0
    for nr, policy in e.syscalls.items():
        n = 2000 if policy.depends else 8
        recs = seccomp.records(n, arch=e.audit_arch)
        recs["nr"] = np.uint32(nr).view(np.int32)
        words = [_candidates(program, rng, n * 6).reshape(n, 6) for _ in range(2)]
        recs["args"] = (words[0] << np.uint64(32)) | words[1]
        recs["ip"] = (_candidates(program, rng, n) << np.uint64(32)) | _candidates(program, rng, n)
        values = sf.evaluate(recs)
        assert {decode(int(v)) for v in np.unique(values)} == policy.actions, (policy.label, policy.cases)
        for rec, value in list(zip(recs, values.tolist(), strict=True))[:50]:  # the path each record takes
            words = record_words(rec["args"].tolist(), int(rec["ip"]))
            assert [c.returns(words) for c in policy.cases if c.holds(words)] == [value], (policy.label, rec)
        depends += policy.depends
    return len(e.syscalls), depends


def test_explain_agrees_with_the_jit_on_a_libseccomp_filter() -> None:
    from test_seccomp_kernel import _libseccomp_filter

    lsc_module()
    program = _libseccomp_filter()
    checked, depends = check_against_jit(program, "x86_64")
    assert checked == len(numbers("x86_64")) and depends == 5  # openat, mmap, kill, socket, ioctl
    e = seccomp.explain(program, "x86_64")
    assert {e.syscalls[nr].name for nr in (0, 1, 3, 39, 231, 202)} == {
        p.name for p in e.syscalls.values() if p.action == decode(RET["ALLOW"])
    }
    assert e.syscalls[101].action == decode(RET["TRACE"] | 7) and e.syscalls[169].action == decode(0)
    assert {"ALLOW if args[2].lo & 0x3 == 0", "ERRNO(13) if args[2].lo & 0x3 == 1"} <= {
        str(case) for case in e.syscalls[257].cases
    }
    assert e.syscalls[0x40000000].action == decode(0)  # x32 numbers: libseccomp's guard kills


def test_explain_a_docker_like_policy_allows_exactly_its_allow_list() -> None:
    lsc_module()
    sf, names = seccomp_bench.docker_like_filter()
    e = seccomp.explain(sf, "x86_64")
    assert e.allowed() == {nr for name, nr in names.items() if name not in seccomp_bench.DENIED}
    assert {p.name for p in e.depends()} == {"socket", "clone", "personality"}
    denied = {nr for nr, p in e.syscalls.items() if p.action == decode(RET["ERRNO"] | 1)}
    assert {names[n] for n in seccomp_bench.DENIED - {"socket", "clone", "personality"} if n in names} <= denied
    assert check_against_jit(sf.program, "x86_64")[1] == 3


@pytest.mark.parametrize("arch", ["i386", "aarch64"])
def test_explain_other_architectures_of_a_multi_arch_filter(arch: str) -> None:
    lsc = lsc_module()
    f = lsc.SyscallFilter(lsc.ERRNO(38))
    f.add_arch(lsc.Arch.X86)
    f.add_arch(lsc.Arch.AARCH64)
    for name in ("read", "write", "openat", "exit_group"):
        f.add_rule(lsc.ALLOW, name)
    f.add_rule(lsc.ALLOW, "close", lsc.Arg(0, lsc.GT, 2))
    program = seccomp.from_libseccomp(f)
    e = seccomp.explain(program, arch)
    assert {e.syscalls[nr].name for nr in e.allowed()} == {"read", "write", "openat", "exit_group"}
    assert [p.name for p in e.depends()] == ["close"]
    assert check_against_jit(program, arch)[1] == 1
    assert "if (A == openat)" in seccomp.disasm(program, arch)


def test_disasm_prints_programs_the_kernel_would_refuse() -> None:
    program = [Insn(0x28, 0, 0, 2), Insn(0x15, 7, 0, 1), Insn(0x05, 0, 0, 9), Insn(0x94, 0, 0, 3),
               Insn(0xFF, 0, 0, 0), Insn(0x06, 0, 0, 0)]  # fmt: skip
    assert [line.split("  ", 2)[-1] for line in seccomp.disasm(program, "x86_64").splitlines()[2:]] == [
        "ldh [2]",
        "if (A == 1) goto 0009",
        "goto 0012",
        "mod #3",
        "unimp 0xff",
        "return KILL_THREAD",
    ]


@settings(max_examples=300, deadline=None)
@given(programs(max_insns=32, dialect="seccomp"), st.lists(syscalls(), min_size=1, max_size=16),
       st.integers(0, (1 << 64) - 1))  # fmt: skip
def test_explain_predicts_what_the_jit_returns_on_random_programs(
    program: Program, calls: list[tuple[int, tuple[int, ...]]], ip: int
) -> None:
    """For every record exactly one case's conditions hold (the path it takes), and that case returns
    what the JIT does (its action: the one explain names when it says the arguments do not matter)."""
    try:
        e = seccomp.explain(program, "x86_64", nrs=[nr for nr, _ in calls])
    except PathBudgetError:
        assume(False)
    sf = seccomp.compile(program)
    for nr, args in calls:
        value, policy, words = sf(nr, args, arch=X86_64, ip=ip), e.syscalls[nr], record_words(args, ip)
        holding = [case for case in policy.cases if case.holds(words)]
        assert len(holding) == 1 and holding[0].returns(words) == value, (hex(nr), args, policy)
        if policy.action is not None and not isinstance(policy.action, str):
            assert decode(value) == policy.action


def test_explain_computes_return_a_over_the_arguments() -> None:
    program = Program([
        Insn(0x20, 0, 0, LO), Insn(0x84, 0, 0, 0), Insn(0x07, 0, 0, 0),  # X = -args[0].lo
        Insn(0x20, 0, 0, LO + 8), Insn(0x6C, 0, 0, 0),                    # A = args[1].lo << (X & 31)
        Insn(0x44, 0, 0, RET["ERRNO"]), Insn(0x54, 0, 0, 0xFFFF0FFF),     # an ERRNO with those bits
        Insn(0x16, 0, 0, 0),
    ])  # fmt: skip
    (case,) = seccomp.explain(program, "x86_64", nrs=[7]).syscalls[7].cases
    assert case.action == "return ((args[1].lo << (-args[0].lo & 31)) | 0x50000) & 0xffff0fff"
    sf = seccomp.compile(program)
    for args in ((0, 1), (31, 5), (1, 0xFFFFFFFF), (0xFFFFFFFF, 3), (7, 0x123)):
        assert case.returns(record_words(args)) == sf(7, args, arch=X86_64)


def test_disasm_and_explain_a_libseccomp_filter_exactly() -> None:
    lsc = lsc_module()
    if sys.byteorder != "little":
        pytest.skip("the expected text has little-endian argument words")
    f = lsc.SyscallFilter(lsc.ERRNO(1))
    f.add_rule(lsc.ALLOW, "read")
    f.add_rule(lsc.ALLOW, "write")
    f.add_rule(lsc.ALLOW, "openat", lsc.Arg(2, lsc.MASKED_EQ, 3, 0))
    f.add_rule(lsc.KILL, "ptrace")
    program = seccomp.from_libseccomp(f)
    assert seccomp.disasm(program, "x86_64").splitlines()[2:] == [
        " 0000: 0x20 0x00 0x00 0x00000004  A = arch",
        " 0001: 0x15 0x00 0x0f 0xc000003e  if (A != ARCH_X86_64) goto 0017",
        " 0002: 0x20 0x00 0x00 0x00000000  A = sys_number",
        " 0003: 0x35 0x00 0x01 0x40000000  if (A < 0x40000000) goto 0005",
        " 0004: 0x15 0x00 0x0c 0xffffffff  if (A != 0xffffffff) goto 0017",
        " 0005: 0x15 0x0a 0x00 0x00000000  if (A == read) goto 0016",
        " 0006: 0x15 0x09 0x00 0x00000001  if (A == write) goto 0016",
        " 0007: 0x15 0x09 0x00 0x00000065  if (A == ptrace) goto 0017",
        " 0008: 0x15 0x00 0x06 0x00000101  if (A != openat) goto 0015",
        " 0009: 0x20 0x00 0x00 0x00000024  A = args[2] >> 32",
        " 0010: 0x54 0x00 0x00 0x00000000  A &= 0x0",
        " 0011: 0x15 0x00 0x03 0x00000000  if (A != 0) goto 0015",
        " 0012: 0x20 0x00 0x00 0x00000020  A = args[2]",
        " 0013: 0x54 0x00 0x00 0x00000003  A &= 0x3",
        " 0014: 0x15 0x01 0x00 0x00000000  if (A == 0) goto 0016",
        " 0015: 0x06 0x00 0x00 0x00050001  return ERRNO(1)",
        " 0016: 0x06 0x00 0x00 0x7fff0000  return ALLOW",
        " 0017: 0x06 0x00 0x00 0x00000000  return KILL_THREAD",
    ]
    text = str(seccomp.explain(program, "x86_64")).splitlines()
    assert text[0] == "arch x86_64 (ARCH_X86_64), 999 syscall numbers"
    assert text[1] == "ALLOW (2): read write"
    assert text[2].startswith("ERRNO(1) (447): open close stat")
    assert text[3].startswith("KILL_THREAD (549): ptrace x32:read x32:write")  # x32: by its guard
    assert text[4:] == [
        "depends on arguments (1):",
        "  openat (257): ALLOW if args[2].lo & 0x3 == 0; ERRNO(1) if args[2].lo & 0x3 != 0",
    ]


# -- stacks ------------------------------------------------------------------------------------------
OLDER = Program([Insn(0x20, 0, 0, 0), Insn(0x15, 0, 1, 39), Insn(0x06, 0, 0, RET["ERRNO"] | 1),
                 Insn(0x15, 0, 1, 1), Insn(0x06, 0, 0, RET["TRAP"] | 3), Insn(0x06, 0, 0, RET["ALLOW"])])  # fmt: skip
NEWER = Program([Insn(0x20, 0, 0, 0), Insn(0x15, 3, 0, 0), Insn(0x20, 0, 0, LO), Insn(0x25, 0, 1, 10),
                 Insn(0x06, 0, 0, RET["ERRNO"] | 2), Insn(0x06, 0, 0, RET["LOG"])])  # fmt: skip


def test_explain_a_stack_by_the_kernels_precedence() -> None:
    e = seccomp.explain(seccomp.stack([OLDER, NEWER]), "x86_64", nrs=[0, 1, 39, 60])
    lo = "args[0].lo" if sys.byteorder == "little" else "args[0].hi"
    assert str(e).splitlines() == [
        "arch x86_64 (ARCH_X86_64), 4 syscall numbers, 2 filters stacked",
        "LOG (1): read",  # the newer LOG beats the older ALLOW
        "TRAP(3) (1): write",  # the older TRAP beats either ERRNO(2) or LOG
        "depends on arguments (2):",
        f"  getpid (39): ERRNO(2) if {lo} > 0xa; ERRNO(1) if {lo} <= 0xa",  # a tie: the newest filter's data
        f"  exit (60): ERRNO(2) if {lo} > 0xa; LOG if {lo} <= 0xa",
    ]
    assert seccomp.explain(seccomp.stack([NEWER, OLDER]), "x86_64", nrs=[39]).syscalls[39].cases[0].conditions == ()
    assert seccomp.explain(seccomp.stack([NEWER, OLDER]), "x86_64", nrs=[39]).syscalls[39].action == decode(
        RET["ERRNO"] | 1)  # fmt: skip
    alone = seccomp.explain(seccomp.stack([OLDER]), "x86_64", nrs=[1, 39])
    assert str(alone).splitlines()[0] == "arch x86_64 (ARCH_X86_64), 2 syscall numbers"
    assert alone.syscalls == seccomp.explain(OLDER, "x86_64", nrs=[1, 39]).syscalls


def test_explain_a_stack_cuts_paths_the_filters_contradict() -> None:
    """Facts learnt in the newer filter hold in the older: `args[0].lo > 10` there, `== 3` here cannot both be."""
    older = Program([Insn(0x20, 0, 0, LO), Insn(0x15, 0, 1, 3), Insn(0x06, 0, 0, RET["KILL_PROCESS"]),
                     Insn(0x06, 0, 0, RET["ALLOW"])])  # fmt: skip
    policy = seccomp.explain(seccomp.stack([older, NEWER]), "x86_64", nrs=[60]).syscalls[60]
    assert [str(c.action) for c in policy.cases] == ["ERRNO(2)", "KILL_PROCESS", "LOG"]


@settings(max_examples=200, deadline=None)
@given(st.lists(programs(max_insns=20, dialect="seccomp"), min_size=2, max_size=3),
       st.lists(syscalls(), min_size=1, max_size=8), st.integers(0, (1 << 64) - 1))  # fmt: skip
def test_explain_a_stack_predicts_what_the_stack_returns(
    filters: list[Program], calls: list[tuple[int, tuple[int, ...]]], ip: int
) -> None:
    stacked = seccomp.stack(filters)
    try:
        e = seccomp.explain(stacked, "x86_64", nrs=[nr for nr, _ in calls])
    except PathBudgetError:
        assume(False)
    for nr, args in calls:
        value, policy, words = stacked(nr, args, arch=X86_64, ip=ip), e.syscalls[nr], record_words(args, ip)
        holding = [case for case in policy.cases if case.holds(words)]
        assert len(holding) == 1 and holding[0].returns(words) == value, (hex(nr), args, policy)
        if policy.action is not None and not isinstance(policy.action, str):
            assert decode(value) == policy.action
