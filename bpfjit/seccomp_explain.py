"""seccomp programs as people read them: a disassembler, and what a policy does to every syscall.

    print(disasm(program, arch="x86_64"))     #  0004: 0x15 0x00 0x01 0x00000000  if (A != read) goto 0006
    e = explain(program, "x86_64")            # symbolic evaluation, one pass per syscall number
    e.syscalls[257].cases                      # (Case(ALLOW, ('args[2].lo & 0x3 == 0',)), ...)
    e.allowed()                                # the numbers every argument vector may run

`explain` runs the program once per syscall number of the architecture's table (and every number in
between) with `nr` and `arch` known and the instruction pointer and arguments symbolic: loads of
those give a field (`args[2].lo`, `ip.hi`), ALU operations build an expression over it, and a branch
on one forks the path, recording the condition on each side. Conditions on one expression are kept as
a range (and excluded values), so contradictory paths are cut. The program is a DAG (validated), so
the walk ends; a budget of paths per number guards against exponential programs.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

from .dialects import SECCOMP
from .opcodes import OPCODES, U32_MASK
from .program import Insn, Program
from .seccomp import AUDIT_ARCH, Action, decode
from .syscalls import X32_SYSCALL_BIT, arch_name, syscall_name, table
from .text import format_insn

_LITTLE = sys.byteorder == "little"  # seccomp_data is in the host's order: which word is low
ARCH_NAMES = {value: "ARCH_" + name.upper() for name, value in AUDIT_ARCH.items()}


def _fields() -> dict[int, tuple[str, str]]:
    """ld [k] offset -> (disassembler's name, explain's name) of the 32-bit word it reads."""
    lo, hi = (0, 4) if _LITTLE else (4, 0)
    found = {0: ("sys_number", "nr"), 4: ("arch", "arch"),
             8 + lo: ("instruction_pointer", "ip.lo"), 8 + hi: ("instruction_pointer >> 32", "ip.hi")}  # fmt: skip
    for i in range(6):
        found[16 + 8 * i + lo] = (f"args[{i}]", f"args[{i}].lo")
        found[16 + 8 * i + hi] = (f"args[{i}] >> 32", f"args[{i}].hi")
    return found


FIELDS = _fields()
_ALU_SIGN = {"add": "+", "sub": "-", "mul": "*", "div": "/", "or": "|", "and": "&", "lsh": "<<", "rsh": ">>",
             "mod": "%", "xor": "^"}  # fmt: skip
_JMP_TEXT = {"jeq": ("==", "!="), "jgt": (">", "<="), "jge": (">=", "<"), "jset": ("&", "&")}


def _num(k: int, op: str = "") -> str:
    """Small numbers in decimal, masks (and/or/xor operands) and the rest in hex."""
    return str(k) if k < 10 and op not in ("and", "or", "xor") else f"{k:#x}"


# -- disassembler ----------------------------------------------------------------------------------
def _source(insn: Insn) -> str | None:
    """What an instruction loads into A (a FIELDS key's name), None if not a seccomp_data word."""
    kind = OPCODES[insn.code].kind if insn.code in OPCODES else None
    return FIELDS.get(insn.k, (None, None))[1] if kind == "ld_abs" else None


def _value_text(k: int, source: str | None, arch: str | None) -> str:
    """A compared constant by name: a syscall when A holds nr, an architecture when A holds arch."""
    if source == "arch" and k in ARCH_NAMES:
        return ARCH_NAMES[k]
    if source == "nr" and arch is not None:
        name = syscall_name(k, arch)
        if name is not None:
            return name
    return _num(k)


def _flow(program: Program, arch: str | None) -> list[tuple[str | None, str | None]]:
    """(what A holds, the architecture known) at each instruction: agreed by every path into it.
    The architecture is known after `A == ARCH_X` is taken; otherwise it is the caller's."""
    states: list[list[tuple[str | None, str | None]]] = [[] for _ in program]
    states[0].append((None, arch))
    seen: list[tuple[str | None, str | None]] = []
    for pc, insn in enumerate(program):
        incoming = states[pc]
        source = incoming[0][0] if incoming and all(s[0] == incoming[0][0] for s in incoming) else None
        known = incoming[0][1] if incoming and all(s[1] == incoming[0][1] for s in incoming) else arch
        seen.append((source, known))
        info = OPCODES.get(insn.code)
        if info is None:  # an unknown opcode (the validator refuses it): on to the next
            if pc + 1 < len(states):
                states[pc + 1].append((None, known))
            continue
        after = source
        if info.kind.startswith("ld_") or info.kind in ("txa", "neg", "alu_k", "alu_x"):
            after = _source(insn)
        if info.is_return:
            continue
        if info.kind == "ja":
            edges = [(pc + 1 + insn.k, known)]
        elif info.is_conditional:
            taken = known
            if source == "arch" and info.kind == "jmp_k" and info.mnemonic == "jeq" and insn.k in _ARCH_OF:
                taken = _ARCH_OF[insn.k]
            edges = [(pc + 1 + insn.jt, taken), (pc + 1 + insn.jf, known)]
        else:
            edges = [(pc + 1, known)]
        for target, state in edges:
            if target < len(states):  # a jump out of the program is invalid, yet still printable
                states[target].append((after, state))
    return seen


_ARCH_OF = {value: name for name, value in AUDIT_ARCH.items() if name in ("x86_64", "i386", "aarch64")}


def _text(insn: Insn, pc: int, source: str | None, arch: str | None) -> str:
    info = OPCODES.get(insn.code)
    if info is None or any(rule.check(insn, info) for rule in SECCOMP.rules):
        return " ".join(format_insn(insn, pc).split())  # no seccomp meaning: as tcpdump -d prints it
    kind, k = info.kind, insn.k
    target = lambda offset: f"{pc + 1 + offset:04d}"  # noqa: E731
    if kind == "ld_abs":
        return f"A = {FIELDS[k][0]}" if k in FIELDS else f"A = data[{k}]"
    simple = {"ld_imm": f"A = {_num(k)}", "ld_len": "A = 64", "ld_mem": f"A = mem[{k}]",
              "ldx_imm": f"X = {_num(k)}", "ldx_len": "X = 64", "ldx_mem": f"X = mem[{k}]",
              "st": f"mem[{k}] = A", "stx": f"mem[{k}] = X", "neg": "A = -A", "tax": "X = A", "txa": "A = X",
              "ja": f"goto {target(k)}", "ret_a": "return A"}  # fmt: skip
    if kind in simple:
        return simple[kind]
    if kind in ("alu_k", "alu_x"):
        assert info.alu is not None
        return f"A {_ALU_SIGN[info.alu.name]}= {_num(k, info.alu.name) if kind == 'alu_k' else 'X'}"
    if kind == "ret_k":
        action = decode(k)
        return f"return {action.name if action.known else f'{k:#010x}'}"
    assert info.jmp is not None
    # names for equality only: `A >= 0x40000000` is a range bound, not a syscall
    operand = "X" if kind == "jmp_x" else _value_text(k, source if info.jmp.name == "jeq" else None, arch)
    yes, no = _JMP_TEXT[info.jmp.name]
    cond, negated = f"A {yes} {operand}", f"A {no} {operand}"
    if info.jmp.name == "jset":
        cond, negated = f"A & {operand}", f"!(A & {operand})"
    if insn.jt == 0:
        return f"if ({negated}) goto {target(insn.jf)}"
    if insn.jf == 0:
        return f"if ({cond}) goto {target(insn.jt)}"
    return f"if ({cond}) goto {target(insn.jt)} else goto {target(insn.jf)}"


def disasm(program: Program, arch: str | int | None = None) -> str:
    """One line per instruction: index, the raw fields and seccomp-tools' notation (`A = sys_number`,
    `A = args[1] >> 32` for the high word, `if (A == read) goto 0005`, `return ERRNO(1)`); syscalls
    named from `arch`'s table, or from the one a taken `A == ARCH_...` test selects."""
    known = arch_name(arch) if arch is not None else None
    lines = [" line  CODE  JT   JF      K", "================================="]
    for pc, (insn, (source, at)) in enumerate(zip(program, _flow(program, known), strict=True)):
        lines.append(f" {pc:04d}: {insn.code:#04x} {insn.jt:#04x} {insn.jf:#04x} {insn.k:#010x}  "
                     + _text(insn, pc, source, at))  # fmt: skip
    return "\n".join(lines)


# -- explain ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sym:
    """A value that depends on the instruction pointer or the arguments: its expression's text."""

    expr: str

    def wrapped(self) -> str:
        return f"({self.expr})" if " " in self.expr else self.expr


Value = int | Sym
_FULL = (0, U32_MASK, frozenset[int]())


def _alu(name: str, a: Value, b: Value) -> Value | None:
    """A op b; None when b is a known 0 divisor (the program returns 0 there)."""
    if isinstance(a, int) and isinstance(b, int):
        if name == "div" and b == 0:
            return None
        if name in ("lsh", "rsh"):
            b &= 31  # the kernel's runtime; a constant shift >= 32 does not validate
        alu = next(info.alu for info in OPCODES.values() if info.alu is not None and info.alu.name == name)
        return alu.apply(a, b)
    if isinstance(b, int):
        if name == "div" and b == 0:
            return None
        if (name in ("and", "mul") and b == 0) or (name == "or" and b == U32_MASK):
            return b  # constant whatever the field holds
        if (name in ("add", "sub", "or", "xor", "lsh", "rsh") and b == 0) or (name in ("mul", "div") and b == 1):
            return a
    left = a.wrapped() if isinstance(a, Sym) else _num(a)
    right = b.wrapped() if isinstance(b, Sym) else _num(b, name)
    if name in ("lsh", "rsh") and isinstance(b, Sym):
        right = f"({right} & 31)"
    return Sym(f"{left} {_ALU_SIGN[name]} {right}")


@dataclass(frozen=True)
class Case:
    """One way a syscall ends: its action (or `return A`'s expression) when every condition holds."""

    action: Action | str
    conditions: tuple[str, ...]

    def __str__(self) -> str:
        what = self.action if isinstance(self.action, str) else self.action.name
        return f"{what} if {' and '.join(self.conditions)}" if self.conditions else what


@dataclass(frozen=True)
class SyscallPolicy:
    """Every way one syscall number ends. `depends` when the cases differ in their action."""

    nr: int
    name: str | None
    cases: tuple[Case, ...]

    @property
    def actions(self) -> frozenset[Action | str]:
        return frozenset(case.action for case in self.cases)

    @property
    def depends(self) -> bool:
        return len(self.actions) > 1

    @property
    def action(self) -> Action | str | None:
        """The action whatever the arguments and instruction pointer, None when it depends on them."""
        return None if self.depends else self.cases[0].action

    @property
    def label(self) -> str:
        return f"{self.name} ({self.nr})" if self.name else f"#{self.nr}"


class PathBudgetError(ValueError):
    """A syscall number has more paths through the program than `explain` follows."""


@dataclass
class _State:
    pc: int
    a: Value
    x: Value
    mem: tuple[Value, ...]
    conditions: tuple[str, ...]
    facts: dict[str, tuple[int, int, frozenset[int]]]  # expression -> (low, high, excluded values)

    def fork(self, pc: int, condition: str | None, expr: str | None = None,
             fact: tuple[int, int, frozenset[int]] | None = None) -> _State:  # fmt: skip
        facts = self.facts if expr is None or fact is None else {**self.facts, expr: fact}
        conditions = self.conditions
        if expr is not None and fact is not None and fact[0] == fact[1]:  # a known value says it all
            conditions = tuple(c for c in conditions if not c.startswith(f"{expr} "))
        if condition is not None:
            conditions = (*conditions, condition)
        return _State(pc, self.a, self.x, self.mem, conditions, facts)


def _decide(name: str, a: Sym, k: int, fact: tuple[int, int, frozenset[int]]) -> tuple[bool | None, tuple, tuple]:
    """A jump on a symbolic value against a constant: (its outcome when the facts decide it, else
    None; the facts on the taken side; on the other side)."""
    low, high, excluded = fact
    if name == "jeq":
        if low == high or not low <= k <= high or k in excluded:
            return (low == high == k), fact, fact
        return None, (k, k, frozenset()), (low + (k == low), high - (k == high), excluded | {k})
    if name in ("jgt", "jge"):
        bound = k + 1 if name == "jgt" else k  # A >= bound
        if low >= bound or high < bound:
            return low >= bound, fact, fact
        return None, (bound, high, excluded), (low, bound - 1, excluded)
    if low == high:
        return bool(low & k), fact, fact
    return None, fact, fact


def _paths(program: Program, nr: int, audit_arch: int, budget: int) -> Iterator[Case]:
    """Every way `program` ends for syscall `nr`, the arguments and instruction pointer unknown."""
    insns = list(program)
    todo = [_State(0, 0, 0, (0,) * 16, (), {})]
    walked = 0
    while todo:
        s = todo.pop()
        while True:
            walked += 1
            if walked > budget:
                raise PathBudgetError(f"syscall {nr}: more than {budget} steps through the program's paths")
            if s.pc == len(insns):  # the division fork's end: the program returned 0
                yield Case(decode(0), s.conditions)
                break
            insn = insns[s.pc]
            info = OPCODES[insn.code]
            kind = info.kind
            if kind == "ret_k":
                yield Case(decode(insn.k), s.conditions)
                break
            if kind == "ret_a":
                yield Case(decode(s.a) if isinstance(s.a, int) else f"return {s.a.expr}", s.conditions)
                break
            if kind == "ld_abs":
                field = FIELDS[insn.k][1]
                s.a = nr if field == "nr" else audit_arch if field == "arch" else Sym(field)
            elif kind in ("ld_imm", "ld_len", "ld_mem"):
                s.a = s.mem[insn.k] if kind == "ld_mem" else 64 if kind == "ld_len" else insn.k
            elif kind in ("ldx_imm", "ldx_len", "ldx_mem"):
                s.x = s.mem[insn.k] if kind == "ldx_mem" else 64 if kind == "ldx_len" else insn.k
            elif kind in ("st", "stx"):
                mem = list(s.mem)
                mem[insn.k] = s.a if kind == "st" else s.x
                s.mem = tuple(mem)
            elif kind == "tax":
                s.x = s.a
            elif kind == "txa":
                s.a = s.x
            elif kind == "neg":
                s.a = (-s.a) & U32_MASK if isinstance(s.a, int) else Sym(f"-{s.a.wrapped()}")
            elif kind in ("alu_k", "alu_x"):
                assert info.alu is not None
                operand = insn.k if kind == "alu_k" else s.x
                if info.alu.name == "div" and isinstance(operand, Sym):  # X == 0 ends the program with 0
                    zero = s.fork(s.pc, f"{operand.expr} == 0")
                    todo.append(_State(len(insns), 0, 0, (), zero.conditions, zero.facts))
                    s = s.fork(s.pc, f"{operand.expr} != 0")
                result = _alu(info.alu.name, s.a, operand)
                if result is None:
                    yield Case(decode(0), s.conditions)
                    break
                s.a = result
            if kind == "ja":
                s.pc += 1 + insn.k
            elif info.is_conditional:
                assert info.jmp is not None
                operand = insn.k if kind == "jmp_k" else s.x
                taken_pc, other_pc = s.pc + 1 + insn.jt, s.pc + 1 + insn.jf
                if isinstance(s.a, int) and isinstance(operand, int):
                    s.pc = taken_pc if info.jmp.test(s.a, operand) else other_pc
                    continue
                if insn.jt == insn.jf or (s.a == operand and info.jmp.name != "jset"):
                    s.pc = taken_pc if insn.jt == insn.jf or info.jmp.name != "jgt" else other_pc  # x == x
                    continue
                left = s.a.expr if isinstance(s.a, Sym) else _num(s.a)
                right = operand.expr if isinstance(operand, Sym) else _num(operand)
                yes, no = _JMP_TEXT[info.jmp.name]
                if info.jmp.name == "jset":
                    true_text, false_text = f"{left} & {right} != 0", f"{left} & {right} == 0"
                else:
                    true_text, false_text = f"{left} {yes} {right}", f"{left} {no} {right}"
                if isinstance(s.a, Sym) and isinstance(operand, int):
                    fact = s.facts.get(s.a.expr, _FULL)
                    decided, on_true, on_false = _decide(info.jmp.name, s.a, operand, fact)
                    if decided is not None:
                        s.pc = taken_pc if decided else other_pc
                        continue
                    todo.append(s.fork(other_pc, false_text, s.a.expr, on_false))
                    s = s.fork(taken_pc, true_text, s.a.expr, on_true)
                else:
                    todo.append(s.fork(other_pc, false_text))
                    s = s.fork(taken_pc, true_text)
            else:
                s.pc += 1


@dataclass(frozen=True)
class Explanation:
    """What a program does to every syscall number of one architecture."""

    arch: str
    audit_arch: int
    syscalls: dict[int, SyscallPolicy]

    def allowed(self) -> set[int]:
        """The numbers whose only action is ALLOW."""
        return {nr for nr, p in self.syscalls.items() if p.action == decode(0x7FFF0000)}

    def by_action(self) -> dict[Action | str, list[int]]:
        """The numbers each argument-independent action applies to."""
        found: dict[Action | str, list[int]] = {}
        for nr, p in sorted(self.syscalls.items()):
            if p.action is not None:
                found.setdefault(p.action, []).append(nr)
        return found

    def depends(self) -> list[SyscallPolicy]:
        return [p for _, p in sorted(self.syscalls.items()) if p.depends]

    def _labels(self, nrs: list[int]) -> str:
        """Named numbers by name; runs of unnamed ones as `#335-#423`."""
        parts: list[str] = []
        run: list[int] = []
        for nr in [*nrs, -1]:
            named = nr >= 0 and self.syscalls[nr].name is not None
            if run and (nr < 0 or named or nr != run[-1] + 1):
                parts.append(f"#{run[0]}" if len(run) == 1 else f"#{run[0]}-#{run[-1]}")
                run = []
            if named:
                parts.append(self.syscalls[nr].name or "")
            elif nr >= 0:
                run.append(nr)
        return " ".join(parts)

    def __str__(self) -> str:
        lines = [f"arch {self.arch} ({ARCH_NAMES.get(self.audit_arch, hex(self.audit_arch))}), "
                 f"{len(self.syscalls)} syscall numbers"]  # fmt: skip
        for action, nrs in self.by_action().items():
            lines.append(f"{action if isinstance(action, str) else action.name} ({len(nrs)}): {self._labels(nrs)}")
        deps = self.depends()
        if deps:
            lines.append(f"depends on arguments ({len(deps)}):")
            lines.extend(f"  {p.label}: " + "; ".join(str(c) for c in p.cases) for p in deps)
        return "\n".join(lines)


def numbers(arch: str | int) -> list[int]:
    """The syscall numbers `explain` covers: 0 to the table's largest, and x32's range on x86_64."""
    names = table(arch_name(arch))
    own = [nr for nr in names if not nr & X32_SYSCALL_BIT]
    x32 = [nr for nr in names if nr & X32_SYSCALL_BIT]
    found = list(range(max(own) + 1))
    return found + (list(range(X32_SYSCALL_BIT, max(x32) + 1)) if x32 else [])


def explain(program: Program, arch: str | int, budget: int = 1 << 16) -> Explanation:
    """Every syscall number's cases under `arch` (a name or AUDIT_ARCH value). Cases with the same
    action and conditions are merged; `PathBudgetError` past `budget` steps for one number."""
    name = arch_name(arch)
    if name not in AUDIT_ARCH:
        raise ValueError(f"{name} runs under another AUDIT_ARCH (x32: explain x86_64)")
    audit_arch = AUDIT_ARCH[name]
    found: dict[int, SyscallPolicy] = {}
    for nr in numbers(name):
        cases = tuple(dict.fromkeys(_paths(program, nr, audit_arch, budget)))
        if len({c.action for c in cases}) == 1:
            cases = (Case(cases[0].action, ()),)  # every path ends the same: the conditions do not matter
        found[nr] = SyscallPolicy(nr, syscall_name(nr, name), cases)
    return Explanation(name, audit_arch, found)


__all__ = ["Case", "Explanation", "PathBudgetError", "SyscallPolicy", "disasm", "explain", "numbers"]
