"""Dialects of cBPF: what the input is and where the semantics part from SEMANTICS.md's default.

One immutable record per dialect; every stage asks it rather than testing the dialect's name:

- `rules` (validate): extra validator rules, checked after the base ones as the kernel runs
  `seccomp_check_filter` after `bpf_check_classic`. pcap: none; seccomp: `seccomp-opcode`,
  `seccomp-offset`.
- `byte_order` (interpret's `Machine.load`, lower's `load_packet`): of multi-byte loads. pcap:
  big-endian packet bytes; seccomp: the host's (`seccomp_data` is native 32-bit words).
- `shift_x` (interpret's `alu_x`, lower's `alu`): `lsh/rsh x` with X >= 32. pcap: `zero` (0, as
  libpcap); seccomp: `mask` (shift by X & 31, as the kernel's converted eBPF).
- `fixed_length` (interpret's and lower's `ld_len`/`ldx_len`): None reads wirelen; seccomp: 64
  (the kernel rewrites `ld len` to `ld #64`).
- `offsets` (interpret's loads, lower's loads, analysis's bounds plan): how a load's offset is read.
  pcap/seccomp: `unsigned` (k and X + k are plain offsets, X + k does not wrap); linux: `signed` (the
  kernel's: `ld [k]` at k >= SKF_AD_OFF reads metadata, X + k wraps modulo 2^32, and a negative
  offset reads relative to the network or link-layer header; see `bpfjit.linux`).
- `name`: part of every cache key of validated programs and compiled code (memory and disk).

Dialects differ only in facts listed here; `DIALECTS.md` (section C for seccomp) is the source.
Every field has the pcap value as its default, so a new fact is a new field whose default keeps the
other dialects as they are: the "linux" dialect (ancillary loads, negative offsets, packet
metadata) is `offsets="signed"` (the ancillary table lives in `bpfjit.linux`) with its own rule
(`unknown-ancillary`). Division by X == 0 returns 0 in every dialect
(for seccomp that 0 is SECCOMP_RET_KILL_THREAD), so it is not a field.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Literal, NamedTuple

from .linux import SKF_AD_OFF, ancillary
from .opcodes import BPF_ABS, BPF_LD, BPF_W, OpInfo
from .program import Insn

InsnCheck = Callable[[Insn, OpInfo], "str | None"]


class Rule(NamedTuple):  # (NamedTuples, not dataclasses: `dataclasses` costs ~6 ms of every start-up)
    """A validator rule of one dialect: `check(insn, info)` gives the reason an instruction breaks it, or None."""

    name: str
    check: InsnCheck


class Dialect(NamedTuple):
    name: str
    rules: tuple[Rule, ...] = ()
    byte_order: Literal["big", "little"] = "big"  # of multi-byte loads
    shift_x: Literal["zero", "mask"] = "zero"  # lsh/rsh x with X >= 32: 0, or shift by X & 31
    fixed_length: int | None = None  # the input's length when the dialect fixes it: `ld len` reads it
    offsets: Literal["unsigned", "signed"] = "unsigned"  # signed: the kernel's ancillary and negative offsets
    doc: str = ""

    @property
    def rule_names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self.rules)

    def __repr__(self) -> str:
        return f"<bpfjit dialect {self.name!r}>"


# -- seccomp (DIALECTS.md C.1) -------------------------------------------------------------------
SECCOMP_DATA_SIZE = 64  # sizeof(struct seccomp_data)
_SECCOMP_KINDS = frozenset({"ld_imm", "ld_len", "ld_mem", "ld_abs", "ldx_imm", "ldx_len", "ldx_mem",
                            "st", "stx", "alu_k", "alu_x", "neg", "ja", "jmp_k", "jmp_x", "ret_k", "ret_a",
                            "tax", "txa"})  # fmt: skip
_SECCOMP_LOAD = BPF_LD | BPF_W | BPF_ABS  # the only packet load seccomp_check_filter keeps


def _seccomp_opcode(insn: Insn, info: OpInfo) -> str | None:
    """seccomp_check_filter's whitelist: no ldh/ldb, no [x + k], no ldxb msh, no mod."""
    if info.kind not in _SECCOMP_KINDS or (info.kind == "ld_abs" and insn.code != _SECCOMP_LOAD):
        return f"{info.mnemonic} ({info.kind}) is not allowed in seccomp filters"
    if info.alu is not None and info.alu.name == "mod":
        return "mod is not allowed in seccomp filters"
    return None


def _seccomp_offset(insn: Insn, info: OpInfo) -> str | None:
    """`ld [k]` reads one aligned 32-bit word of struct seccomp_data."""
    if insn.code == _SECCOMP_LOAD and (insn.k >= SECCOMP_DATA_SIZE or insn.k % 4):
        return f"ld [{insn.k}] is not an aligned word of the {SECCOMP_DATA_SIZE}-byte seccomp_data"
    return None


# -- linux (DIALECTS.md A) -----------------------------------------------------------------------
def _unknown_ancillary(insn: Insn, info: OpInfo) -> str | None:
    """bpf_anc_helper: an `ld [k]` (any size) in the ancillary window must name one of SKF_AD_*."""
    if info.kind == "ld_abs" and insn.k >= SKF_AD_OFF and ancillary(insn.k) is None:
        return f"k = 0x{insn.k:08x} is SKF_AD_OFF + {insn.k - SKF_AD_OFF}, which names no ancillary load"
    return None


PCAP = Dialect("pcap", doc="libpcap's interpreter with Linux's validator (SEMANTICS.md); the default")
SECCOMP = Dialect(
    "seccomp",
    rules=(Rule("seccomp-opcode", _seccomp_opcode), Rule("seccomp-offset", _seccomp_offset)),
    byte_order="little" if sys.byteorder == "little" else "big",
    shift_x="mask",
    fixed_length=SECCOMP_DATA_SIZE,
    doc="seccomp filters over struct seccomp_data (DIALECTS.md C): the kernel's rules and runtime",
)
LINUX = Dialect(
    "linux",
    rules=(Rule("unknown-ancillary", _unknown_ancillary),),
    shift_x="mask",
    offsets="signed",
    doc="Linux socket filters (DIALECTS.md A): ancillary loads, negative offsets, packet metadata",
)
DIALECTS: dict[str, Dialect] = {d.name: d for d in (PCAP, SECCOMP, LINUX)}
DialectLike = Dialect | str


def dialect_of(dialect: DialectLike) -> Dialect:
    """The record for a dialect or its name (`ValueError` naming the known ones otherwise)."""
    if isinstance(dialect, Dialect):
        if DIALECTS.get(dialect.name) is not dialect:
            raise ValueError(f"{dialect!r} is not one of bpfjit's dialects")  # caches key by name
        return dialect
    found = DIALECTS.get(dialect)
    if found is None:
        raise ValueError(f"unknown dialect {dialect!r} (known: {', '.join(DIALECTS)})")
    return found
