"""libpcap's interpreter in a native loop over a `Batch`: the baseline bpfjit's batch loop is measured
against (`bpfjit bench`, `bpfjit demo`).

Calling `bpf_filter` through ctypes per packet would time ctypes, not libpcap. `LibpcapLoop` builds,
with `lower.lower_batch` (the loop bpfjit's own filters run in), a loop whose body calls libpcap's
`bpf_filter(insns, packet, wirelen, caplen)` on a constant copy of the instructions, so both loops
have the same shape and only the filter differs.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .batch import Batch
    from .program import Program

__all__ = ["LIBPCAP_SYMBOL", "LibpcapLoop"]

LIBPCAP_SYMBOL = "bpfjit_bench_libpcap_bpf_filter"  # libpcap's bpf_filter, as the loop module calls it
_loop_names = itertools.count()


class LibpcapLoop:
    """libpcap's interpreter over a Batch, in a native loop: `lower.lower_batch` around a call to
    `bpf_filter(insns, P, wirelen, caplen)`, the instructions a constant array in the module."""

    def __init__(self, program: Program, opt_level: int = 2):
        from llvmlite import ir

        from . import abi, libpcap, lower, native

        native.add_symbol(LIBPCAP_SYMBOL, libpcap.native_symbol_address("bpf_filter"))
        name = f"libpcap_loop_{next(_loop_names)}"
        module = lower.new_module(name)
        i32 = ir.IntType(32)
        insn_type = abi.ir_type("bpf_insn")
        table_type = ir.ArrayType(insn_type, len(program))
        table = ir.GlobalVariable(module, table_type, f"{name}_insns")
        table.global_constant = True
        table.linkage = "private"
        table.initializer = ir.Constant(
            table_type, [ir.Constant(insn_type, [insn.code, insn.jt, insn.jf, insn.k]) for insn in program]
        )
        bpf_filter = abi.LIBPCAP_BPF_FILTER.declare_external(module, LIBPCAP_SYMBOL)
        wrapper = abi.FILTER.declare(module, f"{name}_filter")
        packet, caplen, wirelen = wrapper.args
        b = ir.IRBuilder(wrapper.append_basic_block("entry"))
        first = b.gep(table, [ir.Constant(i32, 0), ir.Constant(i32, 0)], inbounds=True)
        b.ret(b.call(bpf_filter, [first, packet, wirelen, caplen]))
        lower.lower_batch(module, wrapper, name)
        self._code = native.build(module, opt_level, (name,))
        self._run = abi.BATCH.prototype()(self._code.addresses[name])

    @property
    def llvm_ir(self) -> str:
        return self._code.llvm_ir

    def run_batch(self, batch: Batch, out: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
        if len(batch):
            self._run(batch.data.ctypes.data, batch.offsets.ctypes.data, batch.caplens.ctypes.data,
                      batch.wirelens.ctypes.data, len(batch), None, out.ctypes.data)  # fmt: skip
        return out
