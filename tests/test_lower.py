"""The IR's shape, read off the unoptimised `llvmlite.ir` the lowering emits (before LLVM sees it).

- one shared `reject` block, which returns 0 and is where every failed check goes;
- every packet load is dominated by a check that covers it: a constant load P[k:w] only runs where
  every path has tested caplen >= k + w (a static check, or what the caller proved), an `[x + k]`
  load only right after its own test of X + k + w <= caplen on the very offset it loads from.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from llvmlite import ir

from bpfjit import Program, benchmark, lower
from bpfjit.analysis import Analysis, BoundsPlan, analyse
from bpfjit.strategies import programs
from bpfjit.validate import validate


def _lower(program: Program, analysis: Analysis | None = None) -> ir.Function:
    module = ir.Module(name="shape")
    return lower.lower_filter(module, program, analysis or analyse(program), "f")


def _operands(instruction: ir.Instruction) -> list[ir.Value]:
    return list(instruction.operands)


def _successors(block: ir.Block) -> list[ir.Block]:
    terminator = block.terminator
    assert terminator is not None, f"block {block.name} is not terminated"
    return [op for op in _operands(terminator) if isinstance(op, ir.Block)]


def _length_test(cond: ir.Value, caplen64: ir.Value) -> int | None:
    """The caplen the true edge of `cond` proves: C for a static check `caplen64 >= C`; k + width for
    an `[x + k]` check `(X + k) + width <= caplen64` (X >= 0)."""
    if not isinstance(cond, ir.instructions.ICMPInstr):
        return None
    left, right = cond.operands
    if cond.op == "uge" and left is caplen64 and isinstance(right, ir.Constant):
        return int(right.constant)
    if cond.op == "ule" and right is caplen64 and left.opname == "add":
        offset, width = left.operands
        if offset.opname == "add" and isinstance(offset.operands[1], ir.Constant):
            return int(offset.operands[1].constant) + int(width.constant)
    return None


def _packet_loads(fn: ir.Function, packet: ir.Argument) -> list[tuple[ir.Block, ir.Value, int]]:
    """(block, offset, width) of every load from the packet."""
    loads = []
    for block in fn.blocks:
        for instruction in block.instructions:
            if not isinstance(instruction, ir.instructions.LoadInstr):
                continue
            pointer = instruction.operands[0]
            if isinstance(pointer, ir.instructions.CastInstr):  # bitcast to i16* / i32*
                pointer = pointer.operands[0]
            if isinstance(pointer, ir.instructions.GEPInstr) and pointer.pointer is packet:
                width = instruction.type.width // 8
                loads.append((block, pointer.indices[0], width))
    return loads


def check_shape(fn: ir.Function, known_caplen: int = 0) -> None:
    rejects = [block for block in fn.blocks if block.name == "reject"]
    assert len(rejects) == 1, "one shared reject block"
    reject = rejects[0]
    assert [i.opname for i in reject.instructions] == ["ret"] and str(reject.instructions[0]).strip() == "ret i32 0"
    packet = fn.args[0]
    caplen64 = next(i for i in fn.entry_basic_block.instructions if i.name == "caplen64")
    # The caplen every path into a block has proven (a forward fixpoint over the DAG).
    proven: dict[ir.Block, float] = {block: math.inf for block in fn.blocks}
    proven[fn.entry_basic_block] = known_caplen
    for _ in range(len(fn.blocks)):
        changed = False
        incoming: dict[ir.Block, float] = {block: math.inf for block in fn.blocks}
        incoming[fn.entry_basic_block] = known_caplen
        for block in fn.blocks:
            if proven[block] == math.inf:
                continue
            terminator = block.terminator
            tested = None
            if isinstance(terminator, ir.instructions.ConditionalBranch):
                tested = _length_test(terminator.operands[0], caplen64)
            for index, successor in enumerate(_successors(block)):
                value = proven[block]
                if tested is not None and index == 0:  # the true edge of caplen >= C
                    value = max(value, tested)
                incoming[successor] = min(incoming[successor], value)
        for block in fn.blocks:
            if incoming[block] != proven[block]:
                proven[block], changed = incoming[block], True
        if not changed:
            break
    predecessors: dict[ir.Block, list[ir.Block]] = {block: [] for block in fn.blocks}
    for block in fn.blocks:
        for successor in _successors(block):
            predecessors[successor].append(block)
            terminator = block.terminator
            if isinstance(terminator, ir.instructions.ConditionalBranch) and successor is reject:
                assert terminator.operands[2] is reject, "a failed check is the false edge"
    for block, offset, width in _packet_loads(fn, packet):
        if isinstance(offset, ir.Constant):
            assert proven[block] >= int(offset.constant) + width, f"P[{offset.constant}:{width}] in {block.name}"
            continue
        # [x + k]: the block's only way in is the test `offset + width <= caplen` on this offset
        (before,) = predecessors[block]
        branch = before.terminator
        assert isinstance(branch, ir.instructions.ConditionalBranch) and branch.operands[2] is reject
        test = branch.operands[0]
        assert isinstance(test, ir.instructions.ICMPInstr) and test.op == "ule"
        end, bound = test.operands
        assert bound is caplen64 and end.opname == "add" and end.operands[0] is offset
        assert int(end.operands[1].constant) == width


TCP_80 = Program.parse("""
    ldh [12]
    jne #0x800, drop
    ldb [23]
    jne #6, drop
    ldh [20]
    jset #0x1fff, drop
    ldxb 4*([14]&0xf)
    ldh [x + 14]
    jeq #80, keep
    ldh [x + 16]
    jeq #80, keep, drop
    keep: ret #262144
    drop: ret #0
""")


def test_tcp_port_80_has_the_planned_checks_and_one_reject_block() -> None:
    fn = _lower(TCP_80)
    check_shape(fn)
    text = str(fn)
    assert text.count("len_ok") // 2 == 1 and text.count("ind_ok") // 2 == 2  # (each: defined, then used)


def test_shape_of_the_benchmark_suite() -> None:  # tcpdump's programs and synthetic worst cases
    for case in benchmark.suite():
        check_shape(_lower(case.program))


@settings(max_examples=200)
@given(programs())
def test_shape_of_random_programs(program: Program) -> None:
    validate(program)
    check_shape(_lower(program))


@given(programs())
def test_shape_with_a_caplen_the_caller_proved(program: Program) -> None:
    known = 20
    check_shape(_lower(program, analyse(program, known)), known_caplen=known)


def test_the_check_finds_a_missing_bounds_check() -> None:
    # the same program lowered as if its static checks were already made: the shape check must fail
    analysis = analyse(TCP_80)
    unchecked = Analysis(analysis.leaders, BoundsPlan({}, analysis.bounds.need, 0))
    with pytest.raises(AssertionError, match=r"P\[12:2\]"):
        check_shape(_lower(TCP_80, unchecked))
