"""Analyses of a validated program that the lowering reads, kept beside the program (never inside).

- `leaders`: where basic blocks start.
- `bounds_plan`: which packet loads need a static length check, and what length each check tests.
- `analyse`: both, as the compile stage between validating and lowering (`pipeline.STAGES`).

Bounds-check merging rests on one fact: if caplen < need[i], every path from instruction i returns 0
(it either reaches `ret #0` or a load that fails). So a check `caplen >= need[i]` placed at i may
return 0 early without changing any result, and it covers every later load requiring <= need[i].
Paths that may return non-zero pull need[] down (a `ret a` or `ret #k != 0` needs nothing), which is
why a check is never hoisted above a path that accepts the packet (SEMANTICS.md edge case 22).
"""

from __future__ import annotations

from typing import NamedTuple

from .dialects import PCAP, Dialect
from .opcodes import OPCODES
from .program import Program
from .validate import jump_targets

REJECTS_ANY_LENGTH = 1 << 40  # need[i] when every path from i returns 0: larger than any requirement


def successors(program: Program, index: int) -> tuple[int, ...]:
    info = OPCODES[program[index].code]
    if info.is_return:
        return ()
    if info.is_jump:
        return jump_targets(program[index], index)
    return (index + 1,)


def leaders(program: Program) -> list[int]:
    """Sorted indices that start a basic block: 0, every jump target, every insn after a jump/ret."""
    starts = {0}
    for index, insn in enumerate(program):
        info = OPCODES[insn.code]
        if info.is_jump or info.is_return:
            starts.update(t for t in jump_targets(insn, index) if t < len(program))
            if index + 1 < len(program):
                starts.add(index + 1)
    return sorted(starts)


def static_requirement(program: Program, index: int, dialect: Dialect = PCAP) -> int:
    """Bytes a load needs whatever X is (`[x + k]` needs at least k + width: X >= 0, no wrap); 0 if none.
    With signed offsets (linux) only `[k]` for k < 2^31 has one: X + k may wrap, and a negative k
    reads metadata or from a header whose offset is known at run time only."""
    insn = program[index]
    info = OPCODES[insn.code]
    if not info.width:
        return 0
    if dialect.offsets == "signed" and (info.kind == "ld_ind" or insn.k >= 0x80000000):
        return 0
    return insn.k + info.width


class BoundsPlan(NamedTuple):
    """`checks[i]` is the caplen to test before instruction i (absent: no static check there)."""

    checks: dict[int, int]
    need: tuple[int, ...]
    known_caplen: int  # what the caller proved before the program runs (0: nothing)


def bounds_plan(program: Program, known_caplen: int = 0, dialect: Dialect = PCAP) -> BoundsPlan:
    """Static checks for `program` in `dialect`, given that the caller already proved caplen >= known_caplen."""
    n = len(program)
    need = [0] * n
    for index in range(n - 1, -1, -1):  # jumps go forward, so one backward sweep is a fixpoint
        insn = program[index]
        info = OPCODES[insn.code]
        if info.kind == "ret_k":
            need[index] = REJECTS_ANY_LENGTH if insn.k == 0 else 0
        elif info.kind == "ret_a":
            need[index] = 0
        else:
            after = min(need[s] for s in successors(program, index))
            need[index] = max(after, static_requirement(program, index, dialect))
    # Forward: the caplen every path to i has already proven; emit a check only where a load needs more.
    known_in = [REJECTS_ANY_LENGTH] * n
    known_in[0] = known_caplen
    checks: dict[int, int] = {}
    for index in range(n):
        known = known_in[index]
        required = static_requirement(program, index, dialect)
        if required and known < required:
            if OPCODES[program[index].code].kind == "ld_ind" and need[index] <= required:
                # [x + k]'s own runtime check proves caplen >= k + width; a static one adds nothing
                known = required
            else:
                checks[index] = need[index]
                known = need[index]
        for succ in successors(program, index):
            known_in[succ] = min(known_in[succ], known)
    return BoundsPlan(checks, tuple(need), known_caplen)


class Analysis(NamedTuple):
    """What the lowering needs to know about a validated program before it emits IR."""

    leaders: list[int]
    bounds: BoundsPlan


def analyse(program: Program, known_caplen: int = 0, dialect: Dialect = PCAP) -> Analysis:
    """Basic blocks and bounds checks of a VALIDATED program (`known_caplen`: see `bounds_plan`)."""
    return Analysis(leaders(program), bounds_plan(program, known_caplen, dialect))
