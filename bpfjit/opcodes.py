"""The one table of opcode facts that every stage reads.

The validator, the disassembler and parser, the reference interpreter and the LLVM lowering all
dispatch on `OPCODES[code].kind`; none of them decodes opcode bits on its own. Adding an opcode
means adding a row here and a handler per kind (a test checks every kind has one in every stage).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import NamedTuple

# Field layout of `code` (SEMANTICS.md, "Instruction encoding").
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = range(8)
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_LEN, BPF_MSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xA0
BPF_K, BPF_X = 0x00, 0x08
BPF_A = 0x10  # RET source
BPF_TAX, BPF_TXA = 0x00, 0x80

BPF_MEMWORDS = 16
BPF_MAXINSNS = 4096
U32_MASK = 0xFFFFFFFF


def u32(value: int) -> int:
    """Python ints don't wrap: every result the machine keeps goes through this."""
    return value & U32_MASK


def _shift_left(a: int, b: int) -> int:
    # libpcap gives 0 for a shift by X >= 32 (LLVM's shl would be poison there).
    return u32(a << b) if b < 32 else 0


def _shift_right(a: int, b: int) -> int:
    return a >> b if b < 32 else 0


class AluOp(NamedTuple):
    """One ALU operation: its Python meaning and the llvmlite IRBuilder method with the same one.

    `hazard` names what the lowering must guard: `divisor` (udiv/urem by 0 is undefined in LLVM,
    the program returns 0 instead) or `shift` (shl/lshr by >= 32 is poison in LLVM, we give 0).
    """

    name: str
    op: int
    apply: Callable[[int, int], int]
    ir_method: str
    hazard: str = ""


class JmpOp(NamedTuple):
    """One conditional jump's test: Python meaning and the LLVM unsigned predicate (`&` for jset)."""

    name: str
    op: int
    test: Callable[[int, int], bool]
    ir_predicate: str


ALU_OPS: tuple[AluOp, ...] = (
    AluOp("add", 0x00, lambda a, b: u32(a + b), "add"),
    AluOp("sub", 0x10, lambda a, b: u32(a - b), "sub"),
    AluOp("mul", 0x20, lambda a, b: u32(a * b), "mul"),
    AluOp("div", 0x30, operator.floordiv, "udiv", hazard="divisor"),
    AluOp("or", 0x40, operator.or_, "or_"),
    AluOp("and", 0x50, operator.and_, "and_"),
    AluOp("lsh", 0x60, _shift_left, "shl", hazard="shift"),
    AluOp("rsh", 0x70, _shift_right, "lshr", hazard="shift"),
    AluOp("mod", 0x90, operator.mod, "urem", hazard="divisor"),
    AluOp("xor", 0xA0, operator.xor, "xor"),
)
BPF_NEG = 0x80

JMP_OPS: tuple[JmpOp, ...] = (
    JmpOp("jeq", 0x10, operator.eq, "=="),
    JmpOp("jgt", 0x20, operator.gt, ">"),
    JmpOp("jge", 0x30, operator.ge, ">="),
    JmpOp("jset", 0x40, lambda a, b: (a & b) != 0, "&"),
)
BPF_JA = 0x00

# ALU immediates that tcpdump prints in hex; the others print as signed decimal.
_HEX_ALU = frozenset({"and", "or", "xor"})


class OpInfo(NamedTuple):
    """Facts about one accepted opcode.

    kind:    the handler every stage dispatches on (`ld_abs`, `alu_x`, `jmp_k`, `ret_a`, ...)
    operand: how `tcpdump -d` prints the operand: `hex` (#0x%x), `dec` (#%d, signed), `len`
             (#pktlen), `abs` ([%d]), `ind` ([x + %d]), `mem` (M[%d]), `msh` (4*([%d]&0xf)),
             `x`, `target` (ja's absolute target) or `none`
    width:   bytes read from the packet (0 for none)
    """

    code: int
    mnemonic: str
    kind: str
    operand: str
    width: int = 0
    alu: AluOp | None = None
    jmp: JmpOp | None = None

    @property
    def is_jump(self) -> bool:
        return self.kind in ("ja", "jmp_k", "jmp_x")

    @property
    def is_conditional(self) -> bool:
        return self.kind in ("jmp_k", "jmp_x")

    @property
    def is_return(self) -> bool:
        return self.kind in ("ret_k", "ret_a")

    @property
    def reads_scratch(self) -> bool:
        return self.kind in ("ld_mem", "ldx_mem")

    @property
    def writes_scratch(self) -> bool:
        return self.kind in ("st", "stx")

    @property
    def uses_k(self) -> bool:
        """Whether k means anything (for `ja` it is the offset)."""
        return self.operand not in ("x", "none", "len")


def _build_table() -> dict[int, OpInfo]:
    rows: list[OpInfo] = [
        OpInfo(BPF_LD | BPF_IMM, "ld", "ld_imm", "hex"),
        OpInfo(BPF_LD | BPF_W | BPF_LEN, "ld", "ld_len", "len"),
        OpInfo(BPF_LD | BPF_W | BPF_MEM, "ld", "ld_mem", "mem"),
        OpInfo(BPF_LDX | BPF_IMM, "ldx", "ldx_imm", "hex"),
        OpInfo(BPF_LDX | BPF_W | BPF_LEN, "ldx", "ldx_len", "len"),
        OpInfo(BPF_LDX | BPF_W | BPF_MEM, "ldx", "ldx_mem", "mem"),
        OpInfo(BPF_LDX | BPF_B | BPF_MSH, "ldxb", "ldx_msh", "msh", width=1),
        OpInfo(BPF_ST, "st", "st", "mem"),
        OpInfo(BPF_STX, "stx", "stx", "mem"),
        OpInfo(BPF_ALU | BPF_NEG, "neg", "neg", "none"),
        OpInfo(BPF_JMP | BPF_JA, "ja", "ja", "target"),
        OpInfo(BPF_RET | BPF_K, "ret", "ret_k", "dec"),
        OpInfo(BPF_RET | BPF_A, "ret", "ret_a", "none"),
        OpInfo(BPF_MISC | BPF_TAX, "tax", "tax", "none"),
        OpInfo(BPF_MISC | BPF_TXA, "txa", "txa", "none"),
    ]
    for size, suffix, width in ((BPF_W, "", 4), (BPF_H, "h", 2), (BPF_B, "b", 1)):
        rows.append(OpInfo(BPF_LD | size | BPF_ABS, "ld" + suffix, "ld_abs", "abs", width))
        rows.append(OpInfo(BPF_LD | size | BPF_IND, "ld" + suffix, "ld_ind", "ind", width))
    for alu in ALU_OPS:
        k_form = "hex" if alu.name in _HEX_ALU else "dec"
        rows.append(OpInfo(BPF_ALU | alu.op | BPF_K, alu.name, "alu_k", k_form, alu=alu))
        rows.append(OpInfo(BPF_ALU | alu.op | BPF_X, alu.name, "alu_x", "x", alu=alu))
    for jmp in JMP_OPS:
        rows.append(OpInfo(BPF_JMP | jmp.op | BPF_K, jmp.name, "jmp_k", "hex", jmp=jmp))
        rows.append(OpInfo(BPF_JMP | jmp.op | BPF_X, jmp.name, "jmp_x", "x", jmp=jmp))
    table = {row.code: row for row in rows}
    assert len(table) == len(rows), "two rows share an opcode"
    return table


OPCODES: dict[int, OpInfo] = _build_table()

KINDS: frozenset[str] = frozenset(info.kind for info in OPCODES.values())
