"""The validator: the rules of SEMANTICS.md, which are Linux's `bpf_check_classic` rules.

A program passing `validate` terminates, never reads uninitialised scratch memory, never divides by a
constant zero and never shifts by a constant >= 32; runtime hazards (loads past the packet, division
by X == 0) are the interpreter's and the lowering's job.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from .dialects import PCAP, Dialect, DialectLike, dialect_of
from .errors import ValidationError
from .opcodes import BPF_MAXINSNS, BPF_MEMWORDS, OPCODES
from .program import Insn, InsnLike, Program

ALL_WORDS = (1 << BPF_MEMWORDS) - 1


def _fail(program: Program, index: int, rule: str, reason: str) -> ValidationError:
    return ValidationError(rule, reason, index, " ".join(program[index].text(index).split()))


def jump_targets(insn: Insn, index: int) -> tuple[int, ...]:
    """Absolute targets of a jump at `index` (unbounded ints: no wrap-around), () for non-jumps."""
    info = OPCODES.get(insn.code)
    if info is None or not info.is_jump:
        return ()
    if info.kind == "ja":
        return (index + 1 + insn.k,)
    return (index + 1 + insn.jt, index + 1 + insn.jf)


def _check_insn(program: Program, index: int) -> None:
    insn = program[index]
    info = OPCODES.get(insn.code)
    if info is None:
        raise _fail(
            program, index, "unknown-opcode", f"opcode 0x{insn.code:02x} is not a cBPF instruction bpfjit accepts"
        )
    if (info.reads_scratch or info.writes_scratch) and insn.k >= BPF_MEMWORDS:
        raise _fail(program, index, "bad-scratch-index", f"scratch index {insn.k} is not below {BPF_MEMWORDS}")
    if info.kind == "alu_k" and info.alu is not None:
        if info.alu.hazard == "divisor" and insn.k == 0:
            raise _fail(program, index, "division-by-zero", f"{info.alu.name} by the constant 0")
        if info.alu.hazard == "shift" and insn.k >= 32:
            raise _fail(program, index, "shift-too-large", f"shift by the constant {insn.k} (must be < 32)")
    n = len(program)
    for target in jump_targets(insn, index):
        if target >= n:
            if info.kind == "ja" and insn.k >= 0x80000000:
                reason = (
                    f"jump offset {insn.k} is backward as a signed offset ({insn.k - (1 << 32)}); "
                    "cBPF jumps are forward only (libpcap runs such loops, Linux and bpfjit reject them)"
                )
            else:
                reason = f"jump target {target} is past the end ({n} insns)"
            raise _fail(program, index, "jump-out-of-range", reason)


def _check_scratch_init(program: Program) -> None:
    """Linux's check_load_and_stores: a M[k] read needs a write of M[k] on the way, conservatively."""
    n = len(program)
    masks = [ALL_WORDS] * n
    written = 0
    for index, insn in enumerate(program):
        written &= masks[index]
        info = OPCODES[insn.code]
        if info.writes_scratch:
            written |= 1 << insn.k
        elif info.reads_scratch and not written >> insn.k & 1:
            raise _fail(
                program, index, "uninitialized-scratch", f"M[{insn.k}] may be read before it is written"
            )
        elif info.is_jump:
            for target in jump_targets(insn, index):
                masks[target] &= written
            written = ALL_WORDS


def validate(program: Program | Iterable[InsnLike], dialect: DialectLike = PCAP) -> Program:
    """Check every rule of SEMANTICS.md, then the dialect's own (`dialects`); return the program (as
    a `Program`) or raise `ValidationError`."""
    if not isinstance(program, Program):
        program = Program(program)
    return _validated(program, dialect_of(dialect))


def _check_dialect(program: Program, dialect: Dialect) -> None:
    """The dialect's rules, after the base ones (the kernel runs seccomp_check_filter after
    bpf_check_classic): the first instruction breaking any of them, its first broken rule."""
    for index, insn in enumerate(program):
        info = OPCODES[insn.code]
        for rule in dialect.rules:
            reason = rule.check(insn, info)
            if reason is not None:
                raise _fail(program, index, rule.name, reason)


@lru_cache(maxsize=1024)
def _validated(program: Program, dialect: Dialect = PCAP) -> Program:
    # Programs are immutable, so a verdict can be remembered; errors are not cached (lru_cache
    # does not store exceptions), which keeps a bad program's cost where it belongs.
    n = len(program)
    if n == 0:
        raise ValidationError("empty", "a program needs at least one instruction")
    if n > BPF_MAXINSNS:
        raise ValidationError("too-long", f"{n} instructions is more than the {BPF_MAXINSNS} allowed")
    for index in range(n):
        _check_insn(program, index)
    if not OPCODES[program[-1].code].is_return:
        raise _fail(program, n - 1, "no-final-return", "the last instruction is not a ret")
    _check_scratch_init(program)
    _check_dialect(program, dialect)
    return program


# The base rules, every dialect's; a dialect adds its own (`Dialect.rule_names`).
RULES: tuple[str, ...] = (
    "empty",
    "too-long",
    "unknown-opcode",
    "jump-out-of-range",
    "no-final-return",
    "bad-scratch-index",
    "division-by-zero",
    "shift-too-large",
    "uninitialized-scratch",
)
