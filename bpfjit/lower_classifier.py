"""Lowering of the classifier (MPF / BPF+ style): many filters in ONE function.

Each filter is lowered as usual (`lower.lower_filter`, marked alwaysinline) and called in order from
one classifier function; after inlining, LLVM sees every filter's loads and compares at once, so the
`ldh [12]; jeq #0x800` that every filter starts with is loaded and compared once (GVN, jump
threading). The lowering helps it in one way it can prove: when the packet is shorter than what
every filter needs before it could accept (`need[0]` of `analysis.bounds_plan`), all filters reject,
so one up-front length test returns "none" for the whole set.

    abi.CLASSIFY_BITMASK   mask[i/64] bit i%64 = filter i accepted
    abi.CLASSIFY_FIRST     the first accepting filter's index (its result in *value), or -1
    abi.CLASSIFY_*_BATCH   the batch loops around them
"""

from __future__ import annotations

from collections.abc import Sequence

from llvmlite import ir

from . import abi
from .analysis import analyse, bounds_plan
from .lower import I32, I64, emit_packet_loop, lower_filter
from .opcodes import U32_MASK
from .program import Program

SIGNATURES = {"bitmask": abi.CLASSIFY_BITMASK, "first": abi.CLASSIFY_FIRST}
BATCH_SIGNATURES = {"bitmask": abi.CLASSIFY_BITMASK_BATCH, "first": abi.CLASSIFY_FIRST_BATCH}


def words_for(count: int) -> int:
    """u64 words in one packet's bitmask."""
    return max(1, (count + 63) // 64)


def _shortest_acceptable(programs: Sequence[Program]) -> int:
    """No filter of the set can accept a packet shorter than this (0 when one accepts anything)."""
    return min(bounds_plan(p).need[0] for p in programs)


def lower_classifier(module: ir.Module, programs: Sequence[Program], name: str, mode: str) -> ir.Function:
    shortest = _shortest_acceptable(programs)
    # Each filter runs only after the shared test caplen >= shortest, so none repeats it; with no
    # check in between, the filters' common loads dominate one another and GVN merges them.
    known = shortest if shortest <= U32_MASK else 0
    filters = [lower_filter(module, program, analyse(program, known), f"{name}_f{i}")
               for i, program in enumerate(programs)]  # fmt: skip
    for filter_fn in filters:
        filter_fn.linkage = "internal"  # only the classifier calls them; dropped once inlined
    fn = SIGNATURES[mode].declare(module, name)
    packet, caplen, wirelen, out = fn.args
    entry = fn.append_basic_block("entry")
    none = fn.append_basic_block("none")
    body = fn.append_basic_block("filters")
    b = ir.IRBuilder(entry)
    words = words_for(len(programs))
    # The mask is built in locals (promoted to registers) and stored once at the end.
    masks = [b.alloca(I64, name=f"mask{w}") for w in range(words)] if mode == "bitmask" else []
    for w, mask in enumerate(masks):
        b.store(ir.Constant(I64, 0), mask)
        b.store(ir.Constant(I64, 0), b.gep(out, [ir.Constant(I64, w)]))
    if shortest > U32_MASK:
        b.branch(none)
    elif shortest > 0:
        long_enough = b.icmp_unsigned(">=", caplen, ir.Constant(I32, shortest))
        b.cbranch(long_enough, body, none).set_weights([2000, 1])
    else:
        b.branch(body)
    b.position_at_end(none)
    if mode == "bitmask":
        b.ret_void()
    else:
        b.ret(ir.Constant(I32, -1))
    b.position_at_end(body)
    for index, filter_fn in enumerate(filters):
        result = b.call(filter_fn, [packet, caplen, wirelen], name=f"r{index}")
        accepted = b.icmp_unsigned("!=", result, ir.Constant(I32, 0))
        if mode == "bitmask":
            mask = masks[index // 64]
            bit = b.shl(b.zext(accepted, I64), ir.Constant(I64, index % 64))
            b.store(b.or_(b.load(mask), bit), mask)
        else:
            hit, miss = fn.append_basic_block(f"hit{index}"), fn.append_basic_block(f"miss{index}")
            b.cbranch(accepted, hit, miss)
            b.position_at_end(hit)
            b.store(result, out)
            b.ret(ir.Constant(I32, index))
            b.position_at_end(miss)
    if mode == "bitmask":
        for w, mask in enumerate(masks):
            b.store(b.load(mask), b.gep(out, [ir.Constant(I64, w)]))
        b.ret_void()
    else:
        b.ret(ir.Constant(I32, -1))
    return fn


def lower_classifier_batch(module: ir.Module, classifier: ir.Function, name: str, mode: str, count: int) -> ir.Function:
    """The batch loop around the classifier: `out` gets words_for(count) u64 per packet (bitmask) or
    one i32 index per packet with the accepting filter's result in `values` (first)."""
    fn = BATCH_SIGNATURES[mode].declare(module, name)
    arg = abi.args(fn)
    out, values = arg["out"], arg["values"]

    def classify(b: ir.IRBuilder, i: ir.Value, packet: ir.Value, caplen: ir.Value, wirelen: ir.Value,
                 meta: ir.Value | None) -> None:  # fmt: skip
        if mode == "bitmask":
            slot = b.gep(out, [b.mul(i, ir.Constant(I64, words_for(count)))])
            b.call(classifier, [packet, caplen, wirelen, slot])
        else:
            value = b.gep(values, [i])
            b.store(ir.Constant(I32, 0), value)
            b.store(b.call(classifier, [packet, caplen, wirelen, value]), b.gep(out, [i]))

    emit_packet_loop(fn, classify)
    return fn
