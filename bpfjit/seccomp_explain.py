"""seccomp programs as people read them: a disassembler, and what a policy does to every syscall.

    print(disasm(program, arch="x86_64"))     #  0004: 0x15 0x00 0x01 0x00000000  if (A != read) goto 0006
    e = explain(program, "x86_64")            # symbolic evaluation, one pass per syscall number
    e.syscalls[257].cases                      # (Case(ALLOW, ('args[2].lo & 0x3 == 0',)), ...)
    e.allowed()                                # the numbers every argument vector may run
    case.holds(record_words(args, ip))         # does this record take that case's path; .returns(): value
    explain_stack([older, newer], "x86_64")    # filters stacked in one thread, under the kernel's precedence

`explain` runs the program once per syscall number of the architecture's table (and every number in
between) with `nr` and `arch` known and the instruction pointer and arguments symbolic: loads of
those give a field (`args[2].lo`, `ip.hi`), ALU operations build an expression over it, and a branch
on one forks the path, recording the condition on each side. Conditions on one expression are kept as
a range (and excluded values), so contradictory paths are cut. The program is a DAG (validated), so
the walk ends; a budget of paths per number guards against exponential programs. Every expression
and condition also keeps the function that computes it, so a case can be checked on a record: the
tests hold each case that holds for a record to the JIT's return for it.

A stack (DIALECTS.md C.2) is explained the way the kernel runs it: every filter runs, newest first,
and the return kept is the lowest action (`(s32)(ret & 0xffff0000)`), a tie keeping the newest
filter's (its data: ERRNO(2) over an older ERRNO(1)). Each filter's walk starts from the conditions
and facts of a path through the newer ones, so a case is one path through all of them.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter

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
Words = Mapping[str, int]  # a record's symbolic 32-bit words by name: "ip.lo", "args[2].hi", ...


def record_words(args: Sequence[int] = (), ip: int = 0) -> dict[str, int]:
    """The words `Case.holds` and `Case.returns` read, from a syscall's arguments and ip."""
    values = {"ip": ip, **{f"args[{i}]": v for i, v in enumerate([*args, *[0] * (6 - len(args))])}}
    return {f"{name}.{half}": (v >> 32 if half == "hi" else v) & U32_MASK for name, v in values.items()
            for half in ("lo", "hi")}  # fmt: skip


@dataclass(frozen=True)
class Sym:
    """A value that depends on the instruction pointer or the arguments: its expression's text, and
    the expression to compute it from a record's words."""

    expr: str
    value: Callable[[Words], int] = field(compare=False, repr=False)

    def wrapped(self) -> str:
        return f"({self.expr})" if " " in self.expr else self.expr


Value = int | Sym
_FULL = (0, U32_MASK, frozenset[int]())
_ALU_BY_NAME = {info.alu.name: info.alu for info in OPCODES.values() if info.alu is not None}


def _apply(name: str, a: int, b: int) -> int:
    """The kernel's ALU: shifts by the amount & 31, division by 0 gives 0 (the program ends there)."""
    if name == "div" and b == 0:
        return 0
    return _ALU_BY_NAME[name].apply(a, b & 31 if name in ("lsh", "rsh") else b)


def _evaluator(v: Value) -> Callable[[Words], int]:
    return v.value if isinstance(v, Sym) else lambda _: v


def _negated(fa: Callable[[Words], int]) -> Callable[[Words], int]:
    return lambda w: (-fa(w)) & U32_MASK


def _jump_test(test: Callable[[int, int], bool], fa: Callable[[Words], int], fb: Callable[[Words], int],
               outcome: bool) -> Callable[[Words], bool]:  # fmt: skip
    """Whether the jump `test(A, operand)` comes out as `outcome` for a record."""
    return lambda w: test(fa(w), fb(w)) == outcome


def _alu(name: str, a: Value, b: Value) -> Value | None:
    """A op b; None when b is a known 0 divisor (the program returns 0 there)."""
    if isinstance(a, int) and isinstance(b, int):
        if name == "div" and b == 0:
            return None
        return _apply(name, a, b)
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
    fa, fb = _evaluator(a), _evaluator(b)
    return Sym(f"{left} {_ALU_SIGN[name]} {right}", lambda w: _apply(name, fa(w), fb(w)))


@dataclass(frozen=True)
class Case:
    """One way a syscall ends: its action (or `return A`'s expression) when every condition holds.
    `holds(words)` tells whether a record takes this path, `returns(words)` what it returns there."""

    action: Action | str
    conditions: tuple[str, ...]
    tests: tuple[Callable[[Words], bool], ...] = field(default=(), compare=False, repr=False)
    result: Callable[[Words], int] | None = field(default=None, compare=False, repr=False)

    def holds(self, words: Words) -> bool:
        return all(test(words) for test in self.tests)

    def returns(self, words: Words) -> int:
        assert self.result is not None
        return self.result(words)

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


@dataclass(frozen=True)
class _Cond:
    text: str
    test: Callable[[Words], bool]
    about: str | None = None  # the expression a range fact (==, >, ...) bounds, None for the others
    of: Callable[[Words], int] | None = field(default=None, compare=False, repr=False)  # computes `about`


def _equal(about: str, of: Callable[[Words], int], value: int) -> _Cond:
    """`about == value`: what a range narrowed to one value says (all the earlier bounds on it too)."""
    return _Cond(f"{about} == {_num(value)}", lambda w: of(w) == value, about, of)


@dataclass
class _State:
    pc: int
    a: Value
    x: Value
    mem: tuple[Value, ...]
    conditions: tuple[_Cond, ...]
    facts: dict[str, tuple[int, int, frozenset[int]]]  # expression -> (low, high, excluded values)

    def fork(self, pc: int, condition: _Cond | None = None,
             fact: tuple[int, int, frozenset[int]] | None = None) -> _State:  # fmt: skip
        conditions, facts = self.conditions, self.facts
        if condition is not None and condition.about is not None and fact is not None:
            facts = {**facts, condition.about: fact}
            if fact[0] == fact[1]:  # a known value says all the earlier bounds on it said, and only it does
                conditions = tuple(c for c in conditions if c.about != condition.about)
                if condition.of is not None:  # (`hi != 1` after `hi <= 1` is `hi == 0`, not `hi != 1` alone)
                    condition = _equal(condition.about, condition.of, fact[0])
        if condition is not None:
            conditions = (*conditions, condition)
        return _State(pc, self.a, self.x, self.mem, conditions, facts)

    def end(self, value: Value) -> Case:
        """The case of a path that returns `value`."""
        action = decode(value) if isinstance(value, int) else f"return {value.expr}"
        tests = tuple(c.test for c in self.conditions)
        return Case(action, tuple(c.text for c in self.conditions), tests, _evaluator(value))


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


def _start(after: _State | None = None) -> _State:
    """A filter's first state: A, X and M[] zero; the conditions and facts of `after` (the path
    through the filters that ran before, in a stack) or none."""
    return _State(0, 0, 0, (0,) * 16, after.conditions if after else (), after.facts if after else {})


def _paths(program: Program, nr: int, audit_arch: int, budget: int) -> Iterator[Case]:
    """Every way `program` ends for syscall `nr`, the arguments and instruction pointer unknown."""
    return (state.end(value) for state, value in _ends(program, nr, audit_arch, budget, _start()))


def _ends(program: Program, nr: int, audit_arch: int, budget: int, start: _State) -> Iterator[tuple[_State, Value]]:
    """Every way `program` ends for syscall `nr` from `start`: the state at the return (its
    conditions and facts) and the value returned."""
    insns = list(program)
    todo = [start]
    walked = 0
    while todo:
        s = todo.pop()
        while True:
            walked += 1
            if walked > budget:
                raise PathBudgetError(f"syscall {nr}: more than {budget} steps through the program's paths")
            if s.pc == len(insns):  # the division fork's end: the program returned 0
                yield s, 0
                break
            insn = insns[s.pc]
            info = OPCODES[insn.code]
            kind = info.kind
            if kind in ("ret_k", "ret_a"):
                yield s, insn.k if kind == "ret_k" else s.a
                break
            if kind == "ld_abs":
                field = FIELDS[insn.k][1]
                s.a = nr if field == "nr" else audit_arch if field == "arch" else Sym(field, itemgetter(field))
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
                if isinstance(s.a, int):
                    s.a = (-s.a) & U32_MASK
                else:
                    s.a = Sym(f"-{s.a.wrapped()}", _negated(s.a.value))
            elif kind in ("alu_k", "alu_x"):
                assert info.alu is not None
                operand = insn.k if kind == "alu_k" else s.x
                if info.alu.name == "div" and isinstance(operand, Sym):  # X == 0 ends the program with 0
                    nonzero, fx, zero = operator.ne, operand.value, _evaluator(0)
                    todo.append(s.fork(len(insns), _Cond(f"{operand.expr} == 0", _jump_test(nonzero, fx, zero, False))))
                    s = s.fork(s.pc, _Cond(f"{operand.expr} != 0", _jump_test(nonzero, fx, zero, True)))
                result = _alu(info.alu.name, s.a, operand)
                if result is None:
                    yield s, 0
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
                fa, fb, jump = _evaluator(s.a), _evaluator(operand), info.jmp.test
                ranged = isinstance(s.a, Sym) and isinstance(operand, int) and info.jmp.name != "jset"
                about = s.a.expr if isinstance(s.a, Sym) and ranged else None
                of = fa if about is not None else None
                yes_cond = _Cond(true_text, _jump_test(jump, fa, fb, True), about, of)
                no_cond = _Cond(false_text, _jump_test(jump, fa, fb, False), about, of)
                if isinstance(s.a, Sym) and isinstance(operand, int):
                    fact = s.facts.get(s.a.expr, _FULL)
                    decided, on_true, on_false = _decide(info.jmp.name, s.a, operand, fact)
                    if decided is not None:
                        s.pc = taken_pc if decided else other_pc
                        continue
                    todo.append(s.fork(other_pc, no_cond, on_false))
                    s = s.fork(taken_pc, yes_cond, on_true)
                else:
                    todo.append(s.fork(other_pc, no_cond))
                    s = s.fork(taken_pc, yes_cond)
            else:
                s.pc += 1


@dataclass(frozen=True)
class Explanation:
    """What a program (or a stack of `filters` programs) does to every syscall number of one architecture."""

    arch: str
    audit_arch: int
    syscalls: dict[int, SyscallPolicy]
    filters: int = 1  # more: a stack's, under the kernel's precedence

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
        stacked = f", {self.filters} filters stacked" if self.filters > 1 else ""
        lines = [f"arch {self.arch} ({ARCH_NAMES.get(self.audit_arch, hex(self.audit_arch))}), "
                 f"{len(self.syscalls)} syscall numbers{stacked}"]  # fmt: skip
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


def _rank(value: int) -> int:
    """The kernel's order of returns, `(s32)(ret & SECCOMP_RET_ACTION_FULL)`: lower wins."""
    action = value & 0xFFFF0000
    return action - (1 << 32) if action & 0x80000000 else action


def stack_winner(values: Iterable[int]) -> int:
    """What a stack returns when its filters return `values`, newest first (`seccomp_run_filters`):
    from ALLOW, a value replaces the one kept only by a strictly lower rank, so ties keep the newest's."""
    best = 0x7FFF0000
    for value in values:
        if _rank(value) < _rank(best):
            best = value
    return best


def _stacked(state: _State, values: tuple[Value, ...]) -> Case:
    """The case of one path through every filter of a stack (`values` newest first)."""
    texts, tests = tuple(c.text for c in state.conditions), tuple(c.test for c in state.conditions)
    if all(isinstance(v, int) for v in values):
        winner = stack_winner(v for v in values if isinstance(v, int))
        return Case(decode(winner), texts, tests, _evaluator(winner))
    evaluators = [_evaluator(v) for v in values]
    parts = [f"return {v.expr}" if isinstance(v, Sym) else decode(v).name for v in values]
    return Case(f"the lowest of {', '.join(parts)} (newest first)", texts, tests,
                lambda w: stack_winner(f(w) for f in evaluators))  # fmt: skip


def _stack_paths(programs: Sequence[Program], nr: int, audit_arch: int, budget: int) -> Iterator[Case]:
    """Every way a stack (oldest first) ends for `nr`: each filter runs on from the conditions and
    facts of a path through the newer ones, so contradictions between filters are cut too."""
    paths: list[tuple[_State | None, tuple[Value, ...]]] = [(None, ())]
    for program in reversed(programs):  # newest first, as the kernel runs them
        longer: list[tuple[_State | None, tuple[Value, ...]]] = []
        for state, values in paths:
            for end, value in _ends(program, nr, audit_arch, budget, _start(state)):
                longer.append((end, (*values, value)))
                if len(longer) > budget:
                    raise PathBudgetError(f"syscall {nr}: more than {budget} paths through the stack")
        paths = longer
    for state, values in paths:
        assert state is not None
        yield _stacked(state, values)


def explain(program: Program, arch: str | int, nrs: Iterable[int] | None = None, budget: int = 1 << 16) -> Explanation:
    """The cases of every syscall number (`numbers(arch)`, or `nrs`) under `arch` (a name or
    AUDIT_ARCH value). Cases with the same action and conditions are merged; `PathBudgetError` past
    `budget` steps for one number."""
    return _explain(lambda nr, audit_arch: _paths(program, nr, audit_arch, budget), arch, nrs, 1)


def explain_stack(programs: Sequence[Program], arch: str | int, nrs: Iterable[int] | None = None,
                  budget: int = 1 << 16) -> Explanation:  # fmt: skip
    """`explain` for filters stacked in one thread, given oldest first: every filter runs, the lowest
    action wins, a tie keeps the newest filter's (its data). A case's conditions are those of its
    path through all of them. `PathBudgetError` past `budget` steps in one filter or paths in all."""
    if not programs:
        raise ValueError("a stack needs at least one filter")
    return _explain(lambda nr, audit_arch: _stack_paths(programs, nr, audit_arch, budget), arch, nrs, len(programs))


def _explain(paths: Callable[[int, int], Iterable[Case]], arch: str | int, nrs: Iterable[int] | None,
             filters: int) -> Explanation:  # fmt: skip
    name = arch_name(arch)
    if name not in AUDIT_ARCH:
        raise ValueError(f"{name} runs under another AUDIT_ARCH (x32: explain x86_64)")
    audit_arch = AUDIT_ARCH[name]
    found: dict[int, SyscallPolicy] = {}
    for nr in numbers(name) if nrs is None else sorted({nr & U32_MASK for nr in nrs}):
        cases = tuple(dict.fromkeys(paths(nr, audit_arch)))
        if len({c.action for c in cases}) == 1:
            # every path ends the same: the conditions do not matter
            cases = (Case(cases[0].action, (), (), cases[0].result),)
        found[nr] = SyscallPolicy(nr, syscall_name(nr, name), cases)
    return Explanation(name, audit_arch, found, filters)


__all__ = ["Case", "Explanation", "PathBudgetError", "SyscallPolicy", "disasm", "explain", "explain_stack", "numbers",
           "record_words", "stack_winner"]
