"""The native ABI table (bpfjit.abi) is the only place a signature is written, and the code agrees with it."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import pytest
from llvmlite import ir

from bpfjit import Program, abi, lower, lower_classifier, lower_linux, pyentry, ringwalk, walkers
from bpfjit.analysis import analyse
from bpfjit.cpython import Layout

PACKAGE = Path(__file__).resolve().parent.parent / "bpfjit"
TCP_80 = Program.parse("""
    ldh [12]
    jne #0x800, drop
    ldb [23]
    jne #6, drop
    ldxb 4*([14]&0xf)
    ldh [x + 16]
    jeq #80, keep, drop
    keep: ret #262144
    drop: ret #0
""")


def _generated() -> dict[str, list[ir.Function]]:
    """Every kind of function the code generators emit, by the ABI entry it must match."""
    module = ir.Module(name="abi_test")
    analysis = analyse(TCP_80)
    filter_fn = lower.lower_filter(module, TCP_80, analysis, "f")
    functions: dict[str, list[ir.Function]] = {
        "FILTER": [filter_fn],
        "BATCH": [lower.lower_program_batch(module, TCP_80, analysis, "batch"),
                  lower.lower_batch(module, filter_fn, "batch_of_filter")],
    }  # fmt: skip
    for mode, upper in (("bitmask", "BITMASK"), ("first", "FIRST")):
        classify = lower_classifier.lower_classifier(module, [TCP_80, TCP_80], f"classify_{mode}", mode)
        functions[f"CLASSIFY_{upper}"] = [classify]
        batch = lower_classifier.lower_classifier_batch(module, classify, f"classify_{mode}_batch", mode, 2)
        functions[f"CLASSIFY_{upper}_BATCH"] = [batch]
    functions["WALK_PCAP"] = [walkers.emit_walk_pcap(module, "pcap", [filter_fn])]
    functions["WALK_PCAPNG"] = [walkers.emit_walk_pcapng(module, "pcapng", [filter_fn, None])]
    spec = ringwalk.View(TCP_80, "link", True, 14, "pcapng")
    functions["WALK_RING"] = [ringwalk.emit_walk_ring(module, "ring", spec)]
    walkers.emit_gather(module)
    walkers.emit_accepted_indices(module)
    functions["GATHER"] = [module.get_global(walkers.PREFIX + "gather")]
    functions["ACCEPTED_INDICES"] = [module.get_global(walkers.PREFIX + "accepted_indices")]
    functions["ENTRY"] = [pyentry.lower_entry(module, Layout(8, 16, 32, 24, 32, 40))]
    functions["PAY_OFFSET"] = [lower_linux.emit_pay_offset(module)]
    functions["NLATTR"] = [lower_linux.emit_nlattr(module)]
    return functions


def test_every_generated_function_has_its_entrys_type() -> None:
    generated = _generated()
    assert set(generated) == set(abi.GENERATED)  # every entry is generated somewhere, and nothing else
    for name, functions in generated.items():
        signature = abi.GENERATED[name]
        for fn in functions:
            assert str(fn.function_type) == str(signature.ir_type()), (name, fn.name)
            assert [arg.name for arg in fn.args] == [param.name for param in signature.params]
            for arg, param in zip(fn.args, signature.params, strict=True):
                assert set(param.attributes) <= set(arg.attributes), (name, param.name)


def test_c_functions_the_entry_calls_are_declared_from_the_table() -> None:
    module = ir.Module(name="entry")
    pyentry.lower_entry(module, Layout(8, 16, 32, 24, 32, 40))
    declared = {fn.name: fn for fn in module.functions if fn.is_declaration}
    assert set(declared) == set(abi.C_API)
    for name, fn in declared.items():
        assert str(fn.function_type) == str(abi.C_API[name].ir_type())


@pytest.mark.parametrize("name", sorted(abi.GENERATED))
def test_ctypes_prototypes_follow_the_same_table(name: str) -> None:
    signature = abi.GENERATED[name]
    prototype = signature.prototype()
    assert prototype is signature.prototype()  # made once
    assert len(prototype._argtypes_) == len(signature.params)
    for c_type, param in zip(prototype._argtypes_, signature.params, strict=True):
        if param.type.endswith("*"):
            assert c_type is ctypes.c_void_p
        else:  # the integer's width is the IR's width
            assert ctypes.sizeof(c_type) * 8 == abi.ir_type(param.type).width
    assert prototype._restype_ is (None if signature.result == "void" else abi.c_type(signature.result))


def test_chunk_struct_and_its_ir_type_have_the_same_fields() -> None:
    chunk = abi.ir_type("chunk")
    assert len(chunk.elements) == len(abi.Chunk._fields_)
    for element, (_, c_type) in zip(chunk.elements, abi.Chunk._fields_, strict=True):
        assert (isinstance(element, ir.PointerType)) == (c_type is ctypes.c_void_p)


# Where a function type may still be written outside abi.py: declarations of LLVM's own intrinsics.
INTRINSIC_DECLARERS = {"lower.py": "llvm.bswap", "lower_linux.py": "llvm.bswap", "walkers.py": "llvm.",
                       "ringwalk.py": "llvm."}


def test_no_signature_is_written_outside_the_table() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "abi.py":
            continue
        text = path.read_text()
        assert "CFUNCTYPE(" not in text, f"{path.name}: a ctypes prototype outside abi.py"
        if re.search(r"\bFunctionType\(", text):
            assert path.name in INTRINSIC_DECLARERS, f"{path.name}: a function type outside abi.py"
            assert INTRINSIC_DECLARERS[path.name] in text
