"""The reference interpreter: the executable form of SEMANTICS.md, written for clarity first.

Every other backend (the JIT, libpcap) is tested against this. Each handler runs one instruction
kind and returns the index of the next instruction, or STOP after setting `vm.result`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from . import linux
from .buffers import check_lengths, packet_view
from .dialects import PCAP, Dialect, DialectLike, dialect_of
from .opcodes import BPF_MEMWORDS, OPCODES, u32
from .program import Insn, InsnLike, Program
from .validate import validate

STOP = -1


class Machine:
    """Registers and input of one run: A, X, M[], the packet P and its wire length, in a dialect."""

    __slots__ = ("a", "caplen", "dialect", "m", "meta", "packet", "result", "wirelen", "x")

    def __init__(self, packet: memoryview, wirelen: int, dialect: Dialect = PCAP, meta: linux.Meta | None = None):
        self.a = 0
        self.x = 0
        # Validation guarantees every word is written before it is read, so this 0 is never seen.
        self.m = [0] * BPF_MEMWORDS
        self.packet = packet
        self.caplen = len(packet)
        # `ld len`: the wire length, or the length the dialect fixes (seccomp_data's 64)
        self.wirelen = wirelen if dialect.fixed_length is None else dialect.fixed_length
        self.dialect = dialect
        self.meta = linux.resolved(meta, packet)  # read by the linux dialect only
        self.result = 0

    def load(self, offset: int | None, width: int) -> int | None:
        """P[offset:width] in the dialect's byte order (big-endian for packets), or None when any
        byte lies past caplen (offset may exceed 2^32) or the offset is None."""
        if offset is None or offset > self.caplen or width > self.caplen - offset:
            return None
        return int.from_bytes(self.packet[offset : offset + width], self.dialect.byte_order)

    def offset(self, offset: int) -> int | None:
        """Where a load at `offset` reads: itself, or in the linux dialect (`signed` offsets) the data
        offset of a 32-bit offset read as signed (`linux.data_offset`; None: nowhere)."""
        if self.dialect.offsets == "unsigned":
            return offset
        return linux.data_offset(u32(offset), self.meta.net_offset)

    def ancillary(self, row: linux.Ancillary) -> int:
        """A linux-dialect ancillary load: a metadata word, or what the kernel computes for it."""
        if row.source == "xor_x":
            return self.a ^ self.x
        if row.source == "nlattr":
            return linux.nlattr(self.packet, self.a, self.x, sys.byteorder)
        if row.source == "nlattr_nest":
            return linux.nlattr_nest(self.packet, self.a, self.x, sys.byteorder)
        if row.source == "pay_offset":
            protocol = self.meta.protocol
            assert protocol is not None  # resolved
            return linux.pay_offset(self.packet, protocol, self.meta.net_offset)
        return u32(getattr(self.meta, row.source))


Handler = Callable[[Machine, Insn, int], int]


def _abort(vm: Machine) -> int:
    vm.result = 0
    return STOP


def ld_imm(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LD+BPF_IMM: A <- k"""
    vm.a = insn.k
    return pc + 1


def ld_len(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LD+BPF_W+BPF_LEN: A <- wirelen"""
    vm.a = vm.wirelen
    return pc + 1


def ld_mem(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LD+BPF_MEM: A <- M[k]"""
    vm.a = vm.m[insn.k]
    return pc + 1


def ld_abs(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LD+BPF_ABS: A <- P[k:width] (linux: k >= SKF_AD_OFF is an ancillary load, whatever its size)"""
    if vm.dialect.offsets == "signed" and insn.k >= linux.SKF_AD_OFF:
        row = linux.ancillary(insn.k)
        assert row is not None  # validated: unknown-ancillary
        vm.a = vm.ancillary(row)
        return pc + 1
    value = vm.load(vm.offset(insn.k), OPCODES[insn.code].width)
    if value is None:
        return _abort(vm)
    vm.a = value
    return pc + 1


def ld_ind(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LD+BPF_IND: A <- P[X+k:width]; X+k past 2^32 is out of bounds, it does not wrap (linux:
    it wraps, and the 32-bit sum is a signed offset)"""
    value = vm.load(vm.offset(vm.x + insn.k), OPCODES[insn.code].width)
    if value is None:
        return _abort(vm)
    vm.a = value
    return pc + 1


def ldx_imm(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LDX+BPF_IMM: X <- k"""
    vm.x = insn.k
    return pc + 1


def ldx_len(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LDX+BPF_W+BPF_LEN: X <- wirelen"""
    vm.x = vm.wirelen
    return pc + 1


def ldx_mem(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LDX+BPF_MEM: X <- M[k]"""
    vm.x = vm.m[insn.k]
    return pc + 1


def ldx_msh(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_LDX+BPF_B+BPF_MSH: X <- 4*(P[k:1]&0xf) (linux: k is a signed offset, never ancillary)"""
    value = vm.load(vm.offset(insn.k), 1)
    if value is None:
        return _abort(vm)
    vm.x = 4 * (value & 0xF)
    return pc + 1


def st(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_ST: M[k] <- A"""
    vm.m[insn.k] = vm.a
    return pc + 1


def stx(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_STX: M[k] <- X"""
    vm.m[insn.k] = vm.x
    return pc + 1


def _alu(vm: Machine, insn: Insn, pc: int, operand: int) -> int:
    alu = OPCODES[insn.code].alu
    assert alu is not None
    if alu.hazard == "divisor" and operand == 0:
        return _abort(vm)
    if alu.hazard == "shift" and vm.dialect.shift_x == "mask":
        operand &= 31  # the kernel's shift by X (k < 32 is validated, so only X is affected)
    vm.a = alu.apply(vm.a, operand)
    return pc + 1


def alu_k(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_ALU+op+BPF_K: A <- A op k"""
    return _alu(vm, insn, pc, insn.k)


def alu_x(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_ALU+op+BPF_X: A <- A op X (div/mod by X == 0 return 0; shifts by X >= 32 give 0, or
    shift by X & 31 in dialects that say so)"""
    return _alu(vm, insn, pc, vm.x)


def neg(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_ALU+BPF_NEG: A <- -A"""
    vm.a = u32(-vm.a)
    return pc + 1


def ja(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_JMP+BPF_JA: pc <- pc + 1 + k"""
    return pc + 1 + insn.k


def _branch(insn: Insn, pc: int, taken: bool) -> int:
    return pc + 1 + (insn.jt if taken else insn.jf)


def jmp_k(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_JMP+op+BPF_K: pc <- pc + 1 + (A op k ? jt : jf)"""
    jmp = OPCODES[insn.code].jmp
    assert jmp is not None
    return _branch(insn, pc, jmp.test(vm.a, insn.k))


def jmp_x(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_JMP+op+BPF_X: pc <- pc + 1 + (A op X ? jt : jf)"""
    jmp = OPCODES[insn.code].jmp
    assert jmp is not None
    return _branch(insn, pc, jmp.test(vm.a, vm.x))


def ret_k(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_RET+BPF_K: return k"""
    vm.result = insn.k
    return STOP


def ret_a(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_RET+BPF_A: return A"""
    vm.result = vm.a
    return STOP


def tax(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_MISC+BPF_TAX: X <- A"""
    vm.x = vm.a
    return pc + 1


def txa(vm: Machine, insn: Insn, pc: int) -> int:
    """BPF_MISC+BPF_TXA: A <- X"""
    vm.a = vm.x
    return pc + 1


HANDLERS: dict[str, Handler] = {
    "ld_imm": ld_imm, "ld_len": ld_len, "ld_mem": ld_mem, "ld_abs": ld_abs, "ld_ind": ld_ind,
    "ldx_imm": ldx_imm, "ldx_len": ldx_len, "ldx_mem": ldx_mem, "ldx_msh": ldx_msh,
    "st": st, "stx": stx, "alu_k": alu_k, "alu_x": alu_x, "neg": neg,
    "ja": ja, "jmp_k": jmp_k, "jmp_x": jmp_x, "ret_k": ret_k, "ret_a": ret_a, "tax": tax, "txa": txa,
}  # fmt: skip


def _plan(program: Program) -> list[tuple[Handler, Insn]]:
    return [(HANDLERS[OPCODES[insn.code].kind], insn) for insn in program]


def interpret(
    program: Program | Iterable[InsnLike],
    packet: object,
    wirelen: int | None = None,
    *,
    dialect: DialectLike = PCAP,
    meta: linux.Meta | None = None,
) -> int:
    """Run `program` on `packet` and return the BPF result (0 = drop). Validates the program first
    (in `dialect`, whose semantics it runs: a seccomp "packet" is a 64-byte struct seccomp_data). In
    the linux dialect `meta` is what the kernel knows about the packet (`linux.Meta`; default: an
    Ethernet frame for this host)."""
    record = dialect_of(dialect)
    program = validate(program, record)
    view = packet_view(packet)
    if meta is not None and not isinstance(meta, linux.Meta):
        raise TypeError(f"meta must be a bpfjit.linux.Meta, not {type(meta).__name__}")
    vm = Machine(view, check_lengths(len(view), wirelen), record, meta)
    steps = _plan(program)
    pc = 0
    while pc != STOP:
        handler, insn = steps[pc]
        pc = handler(vm, insn, pc)
    return vm.result
