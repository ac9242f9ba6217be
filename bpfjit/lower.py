"""Lowering: a validated, analysed `Program` becomes LLVM IR, built with `llvmlite.ir` only.

    abi.BATCH   void @NAME(base, offsets, caplens, wirelens, n, u32 *out)   lower_program_batch
    abi.FILTER  u32 @NAME(u8 *P, u32 caplen, u32 wirelen)                   lower_filter

A compiled filter is its batch loop with the program lowered straight into the loop body;
`lower_filter` makes a function of it for callers that inline several (the classifier, walkers).
One basic block per leader; A, X and the M[k] the program uses are entry-block allocas that SROA
turns into SSA values; every failed check (packet bounds, division by X == 0) branches to ONE
shared, cold `reject` block that yields 0. Static length checks follow the analysis's bounds plan
(`analysis.analyse`), so a load already covered by an earlier check costs nothing. Hazards handled
here and only here:
  - `shl`/`lshr` by >= 32 is poison in LLVM: shift by (X & 31) and select 0 when X >= 32;
  - `udiv`/`urem` by zero is undefined in LLVM: test X == 0 first and reject;
  - `[x + k]` offsets are summed in 64 bits so that X + k >= 2^32 fails the check instead of wrapping.
The dialect (`dialects.Dialect`) decides what the loads' byte order is, what a shift by X >= 32
gives and what `ld len` reads; the default is SEMANTICS.md's ("pcap").
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from llvmlite import ir

from . import abi, lower_linux
from .analysis import Analysis
from .dialects import PCAP, Dialect
from .linux import META_SIZE
from .opcodes import OPCODES, U32_MASK
from .program import Insn, Program

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
# Weights for (likely, unlikely) edges of a check: failed checks are the cold path.
LIKELY = (2000, 1)


Finish = Callable[[ir.IRBuilder, ir.Value], None]


class Lowering:
    """State of one filter being built: the builder, registers, blocks and the reject exit.

    The filter is emitted at `builder`'s position inside `function`, reading `packet`, `caplen`
    and `wirelen`; each way out (`ret`, a failed check) ends its block with `finish(builder, value)`
    (a `ret` in a filter function, a branch to the next packet in a batch loop). The emitters ask
    `dialect` what loads, shifts by X and `ld len` mean; `meta` is the packet's metadata record
    (None: the defaults), which only the linux dialect's loads read (`lower_linux`)."""

    def __init__(
        self,
        program: Program,
        analysis: Analysis,
        function: ir.Function,
        builder: ir.IRBuilder,
        args: tuple[ir.Value, ir.Value, ir.Value],
        finish: Finish,
        dialect: Dialect = PCAP,
        meta: ir.Value | None = None,
    ):
        self.program = program
        self.dialect = dialect
        self.meta = meta
        self.function = function
        self.builder = b = builder
        self.packet, self.caplen, self.wirelen = args
        if dialect.fixed_length is not None:  # `ld len` reads the length the dialect fixes
            self.wirelen = ir.Constant(I32, dialect.fixed_length)
        self.finish = finish
        # Registers live in allocas at the top of the function's entry block, where sroa looks.
        top = ir.IRBuilder()
        top.position_at_start(function.entry_basic_block)
        self.a = top.alloca(I32, name="A")
        self.x = top.alloca(I32, name="X")
        infos = [(insn.k, OPCODES[insn.code]) for insn in program]
        used = sorted({k for k, info in infos if info.reads_scratch or info.writes_scratch})  # even unreachable
        self.m = {k: top.alloca(I32, name=f"M{k}") for k in used}
        b.position_at_end(b.block)  # llvmlite builders insert by index: re-anchor after those allocas
        b.store(ir.Constant(I32, 0), self.a)
        b.store(ir.Constant(I32, 0), self.x)
        self.caplen64 = b.zext(self.caplen, I64, name="caplen64")
        self.blocks = {i: function.append_basic_block(f"insn{i}") for i in analysis.leaders}
        self.reject = function.append_basic_block("reject")
        finish(ir.IRBuilder(self.reject), ir.Constant(I32, 0))
        self.values: dict[ir.AllocaInstr, ir.Value] = {}  # register -> value, in the current block
        self.checks = analysis.bounds.checks
        self.preloaded = self.preload(analysis.bounds.known_caplen)
        b.branch(self.blocks[0])

    # -- registers ---------------------------------------------------------------------------
    def read(self, register: ir.AllocaInstr, name: str = "") -> ir.Value:
        """A, X or M[k]: the value stored earlier in this block, else a load (sroa makes SSA of it).

        Reusing the block's own values keeps the IR small, which is most of what a cold compile
        costs in Python; across blocks the loads stay, and LLVM builds the phis."""
        value = self.values.get(register)
        if value is None:
            value = self.values[register] = self.builder.load(register, name=name)
        return value

    def write(self, register: ir.AllocaInstr, value: ir.Value) -> None:
        self.builder.store(value, register)
        self.values[register] = value

    # -- helpers -----------------------------------------------------------------------------
    def preload(self, known_caplen: int) -> dict[tuple[int, int], ir.Value]:
        """Load, in the entry block, every P[k:width] that the proven caplen already covers.

        Safe (those bytes exist) and free of side effects; it pays off when several filters are
        inlined one after another (the classifier): each filter's entry then dominates the next
        one's, so GVN merges their identical loads and jump threading their identical tests."""
        preloaded: dict[tuple[int, int], ir.Value] = {}
        for insn in self.program:
            info = OPCODES[insn.code]
            if info.kind in ("ld_abs", "ldx_msh") and insn.k + info.width <= known_caplen:
                key = (insn.k, info.width)
                if key not in preloaded:
                    preloaded[key] = self.load_packet(ir.Constant(I64, insn.k), info.width)
        return preloaded

    def load_abs(self, k: int, width: int) -> ir.Value:
        """P[k:width] for a constant k (the caller's static check covers it)."""
        value = self.preloaded.get((k, width))
        return value if value is not None else self.load_packet(ir.Constant(I64, k), width)

    def check(self, ok: ir.Value, what: str) -> None:
        """Continue when `ok`, else return 0 through the shared reject block (weighted cold)."""
        cont = self.function.append_basic_block(f"{self.builder.block.name}.{what}")
        branch = self.builder.cbranch(ok, cont, self.reject)
        branch.set_weights(list(LIKELY))
        self.builder.position_at_end(cont)

    def static_check(self, index: int) -> None:
        """caplen >= need: covers this load and every later one that `bounds_plan` merged into it."""
        need = self.checks.get(index)
        if need is None:
            return
        if need > U32_MASK:  # no packet is that long: the load always fails
            self.builder.branch(self.reject)
            self.builder.position_at_end(self.function.append_basic_block(f"insn{index}.dead"))
            return
        ok = self.builder.icmp_unsigned(">=", self.caplen64, ir.Constant(I64, need), name="len_ok")
        self.check(ok, "len")

    def load_packet(self, offset64: ir.Value, width: int) -> ir.Value:
        """P[offset:width] as a u32 in the dialect's byte order (the caller has checked the bounds)."""
        b = self.builder
        ptr = b.gep(self.packet, [offset64], inbounds=True, name="p")
        if width == 1:
            return b.zext(b.load(ptr, name="byte", align=1), I32)
        wide = ir.IntType(8 * width)
        value = b.load(b.bitcast(ptr, wide.as_pointer()), name=f"raw{8 * width}", align=1)
        if self.dialect.byte_order != sys.byteorder:  # the code runs on this host
            value = b.call(self.bswap(wide), [value], name="swapped")
        return value if width == 4 else b.zext(value, I32)

    def bswap(self, ty: ir.IntType) -> ir.Function:
        module = self.function.module
        name = f"llvm.bswap.i{ty.width}"
        existing = module.globals.get(name)
        if existing is not None:
            return existing
        return ir.Function(module, ir.FunctionType(ty, [ty]), name)

    def operand(self, insn: Insn) -> ir.Value:
        """The second operand of ALU and jump instructions: k for BPF_K forms, X for BPF_X forms."""
        if OPCODES[insn.code].kind in ("alu_x", "jmp_x"):
            return self.read(self.x, "x")
        return ir.Constant(I32, insn.k)

    # -- driver ------------------------------------------------------------------------------
    def run(self) -> ir.Function:
        for index, insn in enumerate(self.program):
            if index in self.blocks:
                if not self.builder.block.is_terminated:
                    self.builder.branch(self.blocks[index])
                self.builder.position_at_end(self.blocks[index])
                self.values = {}  # a new block: its registers come from its predecessors
            elif self.builder.block.is_terminated:
                continue  # unreachable tail of a block after ret/ja (cannot happen: next is a leader)
            self.static_check(index)
            EMITTERS[OPCODES[insn.code].kind](self, insn, index)
        return self.function


Emitter = Callable[[Lowering, Insn, int], None]


def ld_imm(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- k"""
    lo.write(lo.a, ir.Constant(I32, insn.k))


def ld_len(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- wirelen (or the dialect's fixed length)"""
    lo.write(lo.a, lo.wirelen)


def ld_mem(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- M[k]"""
    lo.write(lo.a, lo.read(lo.m[insn.k]))


def ld_abs(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- P[k:width] (the static check before it covers k + width)"""
    if lo.dialect.offsets == "signed" and insn.k >= lower_linux.SIGNED:
        lower_linux.ld_abs(lo, insn)  # ancillary data, or relative to a header
        return
    lo.write(lo.a, lo.load_abs(insn.k, OPCODES[insn.code].width))


def ld_ind(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- P[X+k:width], X + k + width <= caplen computed in 64 bits"""
    if lo.dialect.offsets == "signed":
        lower_linux.ld_ind(lo, insn)  # X + k wraps to a signed 32-bit offset
        return
    b = lo.builder
    width = OPCODES[insn.code].width
    offset = b.add(b.zext(lo.read(lo.x), I64), ir.Constant(I64, insn.k), name="off")
    end = b.add(offset, ir.Constant(I64, width), name="end")
    lo.check(b.icmp_unsigned("<=", end, lo.caplen64, name="ind_ok"), "ind")
    lo.write(lo.a, lo.load_packet(offset, width))


def ldx_imm(lo: Lowering, insn: Insn, index: int) -> None:
    """X <- k"""
    lo.write(lo.x, ir.Constant(I32, insn.k))


def ldx_len(lo: Lowering, insn: Insn, index: int) -> None:
    """X <- wirelen (or the dialect's fixed length)"""
    lo.write(lo.x, lo.wirelen)


def ldx_mem(lo: Lowering, insn: Insn, index: int) -> None:
    """X <- M[k]"""
    lo.write(lo.x, lo.read(lo.m[insn.k]))


def ldx_msh(lo: Lowering, insn: Insn, index: int) -> None:
    """X <- 4*(P[k:1]&0xf)"""
    if lo.dialect.offsets == "signed" and insn.k >= lower_linux.SIGNED:
        lower_linux.ldx_msh(lo, insn)
        return
    b = lo.builder
    byte = lo.load_abs(insn.k, 1)
    lo.write(lo.x, b.shl(b.and_(byte, ir.Constant(I32, 0xF)), ir.Constant(I32, 2)))


def st(lo: Lowering, insn: Insn, index: int) -> None:
    """M[k] <- A"""
    lo.write(lo.m[insn.k], lo.read(lo.a))


def stx(lo: Lowering, insn: Insn, index: int) -> None:
    """M[k] <- X"""
    lo.write(lo.m[insn.k], lo.read(lo.x))


def alu(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- A op k / A <- A op X"""
    b = lo.builder
    op = OPCODES[insn.code].alu
    assert op is not None
    a = lo.read(lo.a, "a")
    operand = lo.operand(insn)
    method = getattr(b, op.ir_method)
    # Decide by the instruction's form, never by whether X happens to be a known constant here:
    # `ldx #0; div x` must still take the X == 0 check (the validator only vouches for k).
    from_x = OPCODES[insn.code].kind == "alu_x"
    if op.hazard == "divisor" and from_x:
        lo.check(b.icmp_unsigned("!=", operand, ir.Constant(I32, 0), name="div_ok"), "div")
        result = method(a, operand)
    elif op.hazard == "shift" and from_x and lo.dialect.shift_x == "mask":
        result = method(a, b.and_(operand, ir.Constant(I32, 31)))  # the kernel's shift by X & 31
    elif op.hazard == "shift" and from_x:
        shifted = method(a, b.and_(operand, ir.Constant(I32, 31)))
        in_range = b.icmp_unsigned("<", operand, ir.Constant(I32, 32), name="shift_ok")
        result = b.select(in_range, shifted, ir.Constant(I32, 0))
    else:
        result = method(a, operand)
    lo.write(lo.a, result)


def neg(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- -A"""
    b = lo.builder
    lo.write(lo.a, b.neg(lo.read(lo.a)))


def ja(lo: Lowering, insn: Insn, index: int) -> None:
    """pc <- pc + 1 + k"""
    lo.builder.branch(lo.blocks[index + 1 + insn.k])


def jmp(lo: Lowering, insn: Insn, index: int) -> None:
    """pc <- pc + 1 + (A op k|X ? jt : jf)"""
    b = lo.builder
    op = OPCODES[insn.code].jmp
    assert op is not None
    a = lo.read(lo.a, "a")
    operand = lo.operand(insn)
    if op.ir_predicate == "&":
        cond = b.icmp_unsigned("!=", b.and_(a, operand), ir.Constant(I32, 0), name="jset")
    else:
        cond = b.icmp_unsigned(op.ir_predicate, a, operand, name=op.name)
    true_index, false_index = index + 1 + insn.jt, index + 1 + insn.jf
    true_block, false_block = lo.blocks[true_index], lo.blocks[false_index]
    returns = [_constant_return(lo.program, i) for i in (true_index, false_index)]
    if true_block is false_block:
        b.branch(true_block)
    elif returns[0] is not None and returns[1] is not None:
        # Both ways return a constant (`jeq #80, accept, drop`, how most programs end): a select,
        # not a branch on packet data that the predictor would miss on a mixed stream.
        lo.finish(b, b.select(cond, ir.Constant(I32, returns[0]), ir.Constant(I32, returns[1])))
    else:
        b.cbranch(cond, true_block, false_block)


def _constant_return(program: Program, index: int) -> int | None:
    """k when instruction `index` is `ret #k`, else None."""
    insn = program[index]
    return insn.k if OPCODES[insn.code].kind == "ret_k" else None


def ret_k(lo: Lowering, insn: Insn, index: int) -> None:
    """return k"""
    lo.finish(lo.builder, ir.Constant(I32, insn.k))


def ret_a(lo: Lowering, insn: Insn, index: int) -> None:
    """return A"""
    lo.finish(lo.builder, lo.read(lo.a))


def tax(lo: Lowering, insn: Insn, index: int) -> None:
    """X <- A"""
    lo.write(lo.x, lo.read(lo.a))


def txa(lo: Lowering, insn: Insn, index: int) -> None:
    """A <- X"""
    lo.write(lo.a, lo.read(lo.x))


EMITTERS: dict[str, Emitter] = {
    "ld_imm": ld_imm, "ld_len": ld_len, "ld_mem": ld_mem, "ld_abs": ld_abs, "ld_ind": ld_ind,
    "ldx_imm": ldx_imm, "ldx_len": ldx_len, "ldx_mem": ldx_mem, "ldx_msh": ldx_msh,
    "st": st, "stx": stx, "alu_k": alu, "alu_x": alu, "neg": neg,
    "ja": ja, "jmp_k": jmp, "jmp_x": jmp, "ret_k": ret_k, "ret_a": ret_a, "tax": tax, "txa": txa,
}  # fmt: skip


def lower_filter(module: ir.Module, program: Program, analysis: Analysis, name: str) -> ir.Function:
    """Add the filter function (`abi.FILTER`) of a VALIDATED program to `module` and return it
    (always inlined). An analysis made with a `known_caplen` (the classifier, which calls the filter
    only once caplen >= known_caplen is proven) leaves out the checks that bound already covers."""
    function = abi.FILTER.declare(module, name)
    arg = abi.args(function)
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    packet = (arg["P"], arg["caplen"], arg["wirelen"])
    Lowering(program, analysis, function, builder, packet, _return).run()
    return function


def _return(builder: ir.IRBuilder, value: ir.Value) -> None:
    builder.ret(value)


def new_module(name: str) -> ir.Module:
    return ir.Module(name=name)


PacketVisitor = Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value, ir.Value, "ir.Value | None"], None]


def emit_packet_loop(fn: ir.Function, visit: PacketVisitor, reads_meta: bool = False) -> None:
    """The body of a batch-shaped function (its arguments start with `abi.PACKETS`): for i < n,
    visit(builder, i, base + offsets[i], caplens[i], wirelens[i], meta) where meta is None, or for
    a body that `reads_meta`, metadata record i. Such a body is emitted twice, once per loop: one
    for a call with records, one (meta None: the defaults) for a NULL `meta`; the test is made once
    per call, not once per load."""
    arg = abi.args(fn)
    entry = fn.append_basic_block("entry")
    if not reads_meta:
        _emit_loop(fn, entry, visit, False, "")
        return
    with_records, without = fn.append_basic_block("records"), fn.append_basic_block("defaults")
    b = ir.IRBuilder(entry)
    b.cbranch(b.icmp_unsigned("==", arg["meta"], lower_linux.NULL, name="no_meta"), without, with_records)
    _emit_loop(fn, with_records, visit, True, ".records")
    _emit_loop(fn, without, visit, False, ".defaults")


def _emit_loop(fn: ir.Function, start: ir.Block, visit: PacketVisitor, records: bool, suffix: str) -> None:
    arg = abi.args(fn)
    head, body, done = (fn.append_basic_block(n + suffix) for n in ("head", "body", "done"))
    b = ir.IRBuilder(start)
    counter = b.alloca(I64, name="i")  # promoted to a phi by sroa
    b.store(ir.Constant(I64, 0), counter)
    b.branch(head)
    b.position_at_end(head)
    i = b.load(counter, name="i")
    b.cbranch(b.icmp_unsigned("<", i, arg["n"]), body, done)
    b.position_at_end(body)
    offset = b.load(b.gep(arg["offsets"], [i]), name="offset")
    packet = b.gep(arg["base"], [offset], inbounds=True, name="packet")
    caplen = b.load(b.gep(arg["caplens"], [i]), name="caplen")
    wirelen = b.load(b.gep(arg["wirelens"], [i]), name="wirelen")
    meta = None
    if records:
        meta = b.gep(arg["meta"], [b.mul(i, ir.Constant(I64, META_SIZE))], inbounds=True, name="meta_record")
    visit(b, i, packet, caplen, wirelen, meta)
    b.store(b.add(i, ir.Constant(I64, 1)), counter)
    b.branch(head)
    b.position_at_end(done)
    b.ret_void()


def lower_batch(module: ir.Module, filter_fn: ir.Function, name: str) -> ir.Function:
    """`abi.BATCH` around a filter function: out[i] <- filter_fn(packet i) for i < n."""
    fn = abi.BATCH.declare(module, name)
    out = abi.args(fn)["out"]

    def run_filter(b: ir.IRBuilder, i: ir.Value, packet: ir.Value, caplen: ir.Value, wirelen: ir.Value,
                   meta: ir.Value | None) -> None:  # fmt: skip
        b.store(b.call(filter_fn, [packet, caplen, wirelen]), b.gep(out, [i]))

    emit_packet_loop(fn, run_filter)
    return fn


def lower_program_batch(
    module: ir.Module, program: Program, analysis: Analysis, name: str, dialect: Dialect = PCAP
) -> ir.Function:
    """`abi.BATCH` with a program VALIDATED in `dialect` lowered straight into the loop body (no
    separate filter function to inline: less IR to build, print, parse and optimise)."""
    fn = abi.BATCH.declare(module, name)
    out = abi.args(fn)["out"]

    def run_program(b: ir.IRBuilder, i: ir.Value, packet: ir.Value, caplen: ir.Value, wirelen: ir.Value,
                    meta: ir.Value | None) -> None:  # fmt: skip
        done = fn.append_basic_block("result")
        results: list[tuple[ir.Value, ir.Block]] = []

        def finish(builder: ir.IRBuilder, value: ir.Value) -> None:
            results.append((value, builder.block))
            builder.branch(done)

        Lowering(program, analysis, fn, b, (packet, caplen, wirelen), finish, dialect, meta).run()
        b.position_at_end(done)
        result = b.phi(I32, name="result")
        for value, block in results:
            result.add_incoming(value, block)
        b.store(result, b.gep(out, [i]))

    emit_packet_loop(fn, run_program, dialect.offsets == "signed" and lower_linux.reads_metadata(program))
    return fn
