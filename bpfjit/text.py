"""Text forms of a program: `tcpdump -d`, `-dd`, `-ddd`, the `N,c jt jf k,...` form and bpf_asm.

`dump` writes them; `parse` reads any of them, telling which by the text's shape. Every spelling is
derived from the one opcode table (`OPCODES`): the writers print `OpInfo.mnemonic` and
`OpInfo.operand`, the readers look `(mnemonic, operand syntax)` up in a reverse map built from it.
Linux's ancillary loads (`ld [SKF_AD_OFF + n]`) are spelt from the one table of them
(`linux.ANCILLARY`): `ldb [vlanp]` as tcpdump -d prints them, `ldb #vlan_pr` in bpf_asm. Names are
written and read whatever the dialect (libpcap's printer does not know one either): the text is only
the instruction, whether a dialect runs it is `validate`'s business.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

from .errors import ParseError
from .linux import ANCILLARY, Ancillary, ancillary
from .opcodes import BPF_JA, BPF_JMP, OPCODES, U32_MASK, OpInfo, u32
from .program import Insn, Program

Style = Literal["d", "dd", "ddd", "asm"]

__all__ = ["MNEMONICS", "Style", "dump", "dump_asm", "format_insn", "parse", "read_source"]


# ============================================================================================
# Writing
# ============================================================================================


def _signed(k: int) -> int:
    """tcpdump prints most operands with %d: the u32 read as a C int."""
    return k - (1 << 32) if k & 0x80000000 else k


# The operand forms of OPCODES as both notations write them; `{}` is the number, written by the
# notation's own rule (tcpdump's or bpf_asm's). `len`, jump targets and `ret a` differ: see the callers.
_OPERAND_SHAPES = {"hex": "#{}", "dec": "#{}", "abs": "[{}]", "ind": "[x + {}]", "mem": "M[{}]",
                   "msh": "4*([{}]&0xf)", "x": "x"}  # fmt: skip


def _shaped(form: str, k: int, number: Callable[[int, str], str]) -> str:
    shape = _OPERAND_SHAPES.get(form)
    return "" if shape is None else shape.format(number(k, form))


def _tcpdump_number(k: int, form: str) -> str:
    return f"0x{k:x}" if form == "hex" else str(_signed(k))


def _operand(insn: Insn, index: int) -> str:
    """The operand as libpcap's bpf_image prints it.

    An absolute load (`ld`, `ldh` or `ldb`) of one of Linux's 16 ancillary offsets prints its name
    (`[vlanp]`); any other k, the rest of the ancillary window included, prints as `[%d]` of the
    u32 (`[-4094]` for SKF_AD_OFF + 2). `[x + k]` and `4*([k]&0xf)` never print names.
    """
    form = OPCODES[insn.code].operand
    if form == "len":
        return "#pktlen"
    if form == "target":
        return str(_signed((index + 1 + insn.k) & 0xFFFFFFFF))
    if form == "abs" and (row := ancillary(insn.k)) is not None:
        return f"[{row.tcpdump}]"
    return _shaped(form, insn.k, _tcpdump_number)


def format_insn(insn: Insn, index: int = 0) -> str:
    """One instruction as `tcpdump -d` prints it, without the `(NNN) ` prefix.

    Unknown opcodes print as libpcap does (`unimp 0x..`); the `ldx #pktlen` that libpcap 1.10
    prints as `unimp 0x81` prints here by its name.
    """
    info = OPCODES.get(insn.code)
    if info is None:
        if _libpcap_shows_edges(insn.code):
            return _with_edges("unimp", f"0x{insn.code:x}", insn, index)
        return f"{'unimp':<8} 0x{insn.code:x}"
    operand = _operand(insn, index)
    if info.is_conditional:
        return _with_edges(info.mnemonic, operand, insn, index)
    return f"{info.mnemonic:<8} {operand}"


def _with_edges(mnemonic: str, operand: str, insn: Insn, index: int) -> str:
    return f"{mnemonic:<8} {operand:<16} jt {index + 1 + insn.jt}\tjf {index + 1 + insn.jf}"


def _libpcap_shows_edges(code: int) -> bool:
    """Whether bpf_image prints `jt`/`jf` after a code it cannot name.

    A quirk of libpcap's printer, not a fact of the instruction set (so it is not in OPCODES): it
    appends the edges to every code of the JMP class except JA, known or not (`unimp 0x55 ... jt`).
    """
    return code & 0x07 == BPF_JMP and code & 0xF0 != BPF_JA


def dump(program: Program, style: Style = "d") -> str:
    """The program in `style`; every line ends with a newline, as tcpdump prints it."""
    if style == "d":
        lines = [f"({i:03d}) {format_insn(insn, i)}" for i, insn in enumerate(program)]
    elif style == "dd":
        lines = [f"{{ 0x{c:x}, {jt}, {jf}, 0x{k:08x} }}," for c, jt, jf, k in program]
    elif style == "ddd":
        lines = [str(len(program))] + [f"{c} {jt} {jf} {k}" for c, jt, jf, k in program]
    elif style == "asm":
        return dump_asm(program)
    else:
        raise ValueError(f"unknown dump style {style!r}: use 'd', 'dd', 'ddd' or 'asm'")
    return "".join(line + "\n" for line in lines)


# -- bpf_asm ----------------------------------------------------------------------------------

# bpf_asm's one-label forms of the negated tests: `jne #k, L` is `jeq #k` with L on the FALSE edge.
_NEGATED = {"jne": "jeq", "jneq": "jeq", "jlt": "jge", "jle": "jgt"}
# What dump_asm writes for a test whose true edge falls through ("jneq" is the same opcode as "jne").
_NEGATION_OF = {"jeq": "jne", "jge": "jlt", "jgt": "jle"}
# `jmp` is what Linux's own tools (bpf_asm's documentation, bpf_dbg) write for `ja`.
_ASM_MNEMONIC_OF_KIND = {"ja": "jmp"}


def _label(index: int) -> str:
    # bpf_asm labels are [a-zA-Z_][a-zA-Z0-9_]+ (two characters at least), matched case-sensitively.
    return f"l{index:03d}"


def _asm_number(k: int, form: str) -> str:
    """k as it reads best: tcpdump's hex for bit patterns, decimal for counts, sizes and offsets."""
    if form == "hex":
        return f"0x{k:x}"
    if form == "dec":  # arithmetic and `ret`: `ret #-1` is the idiom, huge positives read as hex
        if k < 0x80000000:
            return str(k)
        return str(_signed(k)) if k >= 0xFFFF0000 else f"0x{k:x}"
    # offsets and scratch indexes: near 2^32 they are Linux's ancillary area, clearer in hex
    return str(k) if k < 0x10000 else f"0x{k:x}"


def _asm_operand(info: OpInfo, k: int) -> str:
    if info.operand == "len":
        return "#len"
    if info.kind == "ret_a":
        return "a"  # bpf_asm has no operand-less `ret`
    if info.operand == "abs" and (row := ancillary(k)) is not None and row.asm:
        return f"#{row.asm}"  # `ldb #vlan_pr`; ALU_XOR_X has no keyword: `ld [0xfffff028]`
    return _shaped(info.operand, k, _asm_number)  # `target`: ja's label comes from _asm_edges


def _asm_edges(insn: Insn, info: OpInfo, index: int) -> tuple[str, list[int]]:
    """The mnemonic to write and the absolute targets its labels name, in the order written."""
    mnemonic = _ASM_MNEMONIC_OF_KIND.get(info.kind, info.mnemonic)
    if info.kind == "ja":
        return mnemonic, [index + 1 + insn.k]
    if not info.is_conditional:
        return mnemonic, []
    taken, skipped = index + 1 + insn.jt, index + 1 + insn.jf
    if insn.jf == 0:  # false edge falls through: `jeq #k, Lt`
        return mnemonic, [taken]
    if insn.jt == 0 and mnemonic in _NEGATION_OF:  # true edge falls through: `jne #k, Lf`
        return _NEGATION_OF[mnemonic], [skipped]
    return mnemonic, [taken, skipped]


def dump_asm(program: Program) -> str:
    """The program as Linux `bpf_asm` source (tools/bpf/bpf_exp.y), which `parse` reads back.

    Jump targets get labels `lNNN:` (NNN the instruction index); only targets are labelled. A test
    whose false edge falls through is written `jeq #k, Lt`, one whose true edge does `jne #k, Lf`
    (`jlt`/`jle` for `jge`/`jgt`; `jset` then takes two labels). Fields an instruction does not use
    (jt/jf outside conditional jumps, k of `x`-operand and operand-less instructions) are not
    written: bpf_asm has no syntax for them and they mean nothing, so `parse(dump_asm(p))` is `p`
    with those fields zeroed.

    Raises ValueError naming the instruction for an unknown opcode or a jump whose target is not
    an instruction of the program: a label can only name an instruction that exists (the `-d`,
    `-dd` and `-ddd` styles print both).
    """
    rows: list[tuple[str, str, list[int]]] = []  # (mnemonic, operand, targets)
    for index, insn in enumerate(program):
        info = OPCODES.get(insn.code)
        if info is None:
            raise ValueError(
                f"insn {index} ({_flat(insn, index)}): opcode 0x{insn.code:02x} has no bpf_asm spelling"
            )
        mnemonic, targets = _asm_edges(insn, info, index)
        for target in targets:
            if target >= len(program):
                raise ValueError(
                    f"insn {index} ({_flat(insn, index)}): jump target {target} is past the end "
                    f"({len(program)} insns), so no bpf_asm label can name it"
                )
        rows.append((mnemonic, _asm_operand(info, insn.k), targets))

    labelled = {target for _, _, targets in rows for target in targets}
    margin = len(_label(max(labelled))) + 2 if labelled else 0
    lines = []
    for index, (mnemonic, operand, targets) in enumerate(rows):
        head = f"{_label(index)}:" if index in labelled else ""
        args = ", ".join(([operand] if operand else []) + [_label(t) for t in targets])
        lines.append(f"{head:<{margin}}{mnemonic:<5}{args}".rstrip() + "\n")
    return "".join(lines)


def _flat(insn: Insn, index: int) -> str:
    """The -d text of an instruction on one line, for error messages."""
    return " ".join(format_insn(insn, index).split())


# ============================================================================================
# Reading
# ============================================================================================

# Operand syntax as text shows it. OPCODES' `hex` and `dec` forms are both written `#k`; a bare
# number is a `ja` target in -d listings and the operand of bpf_asm's `ldi`/`ldxi`.
_SYNTAX_OF_FORM = {
    "hex": "imm", "dec": "imm", "len": "len", "abs": "abs", "ind": "ind", "mem": "mem",
    "msh": "msh", "x": "x", "target": "target", "none": "none",
}  # fmt: skip
_SYNTAX_TEXT = {
    "imm": "#k", "len": "#len", "abs": "[k]", "ind": "[x + k]", "mem": "M[k]", "msh": "4*([k]&0xf)",
    "x": "x", "a": "a", "target": "a jump target", "none": "no operand", "number": "a bare number",
    "anc": "an ancillary name (#proto, ...)",
}  # fmt: skip


def _reverse_table() -> dict[tuple[str, str], int]:
    codes: dict[tuple[str, str], int] = {}
    for code, info in OPCODES.items():
        key = (info.mnemonic, _SYNTAX_OF_FORM[info.operand])
        assert key not in codes, f"opcodes 0x{codes[key]:02x} and 0x{code:02x} are spelt alike"
        codes[key] = code
    return codes


_CODES: dict[tuple[str, str], int] = _reverse_table()
"""(mnemonic, operand syntax) -> opcode, the inverse of what `format_insn` prints."""

# Other spellings of the same instructions: bpf_asm's `ldi`/`ldxi`/`jmp`/`ldx 4*(...)`/`ret a`.
_ALIASES: dict[tuple[str, str], tuple[str, str]] = {
    ("jmp", "target"): ("ja", "target"),
    ("ldi", "imm"): ("ld", "imm"),
    ("ldi", "number"): ("ld", "imm"),
    ("ldxi", "imm"): ("ldx", "imm"),
    ("ldxi", "number"): ("ldx", "imm"),
    ("ldx", "msh"): ("ldxb", "msh"),
    ("ret", "a"): ("ret", "none"),
    # bpf_asm's `ld #proto`, `ldh #proto`, `ldb #proto`: an absolute load at SKF_AD_OFF + n, any width
    **{(info.mnemonic, "anc"): (info.mnemonic, "abs") for info in OPCODES.values() if info.kind == "ld_abs"},
}


def _syntaxes() -> dict[str, set[str]]:
    """mnemonic -> the operand syntaxes it takes, aliases included."""
    syntaxes: dict[str, set[str]] = {}
    for (mnemonic, syntax), key in [*((key, key) for key in _CODES), *_ALIASES.items()]:
        if key in _CODES:
            syntaxes.setdefault(mnemonic, set()).add(syntax)
    return syntaxes


_SYNTAXES = _syntaxes()

_JA_MNEMONICS = frozenset(m for m, syntaxes in _SYNTAXES.items() if "target" in syntaxes)
_CONDITIONAL_MNEMONICS = frozenset(info.mnemonic for info in OPCODES.values() if info.is_conditional)
_OPERANDLESS = frozenset(m for m, syntaxes in _SYNTAXES.items() if syntaxes == {"none"})
_LEN_WORDS = frozenset({"len", "pktlen"})  # bpf_asm's `#len`/`len`, tcpdump's `#pktlen`
# Linux's ancillary loads by name: tcpdump's in brackets (`ldb [vlanp]`), bpf_asm's after an optional
# `#` (`ldb #vlan_pr`, `ld rand`), where bpf_exp.l also spells VLAN_TAG_PRESENT `vlan_avail`.
_ANCILLARY_OF_TCPDUMP: dict[str, Ancillary] = {row.tcpdump: row for row in ANCILLARY}
_ANCILLARY_OF_ASM: dict[str, Ancillary] = {
    **{row.asm: row for row in ANCILLARY if row.asm},
    "vlan_avail": next(row for row in ANCILLARY if row.asm == "vlan_pr"),
}


# -- tokens ----------------------------------------------------------------------------------


class _Token(NamedTuple):
    kind: str  # "num", "word", "punct" or "end"
    text: str
    line: int

    def __str__(self) -> str:
        return "the end of the text" if self.kind == "end" else repr(self.text)


_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\f\v]+)
      | (?P<newline>\n)
      | (?P<block>/\*.*?\*/)
      | (?P<comment>;[^\n]*)
      | (?P<num>0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9]+)(?P<glued>[A-Za-z0-9_]*)
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>[:,\#%\[\]()+*&-])
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokenize(text: str, line: int = 1, hash_comments: bool = False) -> list[_Token]:
    """bpf_asm's lexer: free-form, `;` and `/* */` comments (and `#` lines, when cpp ran first)."""
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if hash_comments and text[pos] == "#" and (pos == 0 or text[pos - 1] == "\n"):
            end = text.find("\n", pos)
            pos = len(text) if end < 0 else end
            continue
        match = _TOKEN.match(text, pos)
        if match is None:
            if text.startswith("/*", pos):
                raise ParseError("comment '/*' is never closed", line)
            raise ParseError(f"unexpected character {text[pos]!r}", line)
        kind = "num" if match.group("num") is not None else match.lastgroup
        if match.group("glued"):
            raise ParseError(f"malformed number {match.group(0)!r}", line)
        if kind in ("num", "word", "punct"):
            tokens.append(_Token(kind, match.group(kind), line))
        line += match.group(0).count("\n")
        pos = match.end()
    # An error at the end of the text belongs to its last line with something on it.
    tokens.append(_Token("end", "", tokens[-1].line if tokens else line))
    return tokens


class _Cursor:
    """A position in a token list; the list always ends with an `end` token."""

    def __init__(self, tokens: list[_Token]):
        self._tokens = tokens
        self._pos = 0

    def peek(self, ahead: int = 0) -> _Token:
        return self._tokens[min(self._pos + ahead, len(self._tokens) - 1)]

    def take(self) -> _Token:
        token = self.peek()
        self._pos = min(self._pos + 1, len(self._tokens) - 1)
        return token

    def at_end(self) -> bool:
        return self.peek().kind == "end"

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text.lower() != text:
            raise ParseError(f"expected {text!r}, found {token}", token.line)

    def take_x(self) -> bool:
        """Take the index register, `x` or bpf_asm's `%x`, if it is next."""
        if self.peek().text.lower() == "x":
            self.take()
            return True
        if self.peek().text == "%" and self.peek(1).text.lower() == "x":
            self.take()
            self.take()
            return True
        return False

    def expect_end(self, what: str) -> None:
        if not self.at_end():
            token = self.peek()
            raise ParseError(f"unexpected {token} after {what}", token.line)


# -- numbers and operands --------------------------------------------------------------------


def _literal(text: str, line: int) -> int:
    """A C-style unsigned literal as bpf_asm's lexer reads it: 0x hex, 0b binary, 0 octal, decimal."""
    low = text.lower()
    try:
        if low.startswith("0x"):
            return int(low[2:], 16)
        if low.startswith("0b"):
            return int(low[2:], 2)
        if len(low) > 1 and low.startswith("0"):
            return int(low[1:], 8)
        return int(low, 10)
    except ValueError:
        raise ParseError(f"malformed number {text!r}", line) from None


def _read_number(cur: _Cursor) -> int:
    """A signed 32-bit number stored as u32: `-1` is 0xffffffff, like tcpdump's %d and bpf_asm."""
    token = cur.take()
    sign = 1
    if token.text in ("-", "+"):
        sign = -1 if token.text == "-" else 1
        token = cur.take()
    if token.kind != "num":
        raise ParseError(f"expected a number, found {token}", token.line)
    value = sign * _literal(token.text, token.line)
    if not -(1 << 31) <= value <= U32_MASK:
        raise ParseError(f"{'-' if sign < 0 else ''}{token.text} does not fit in 32 bits", token.line)
    return u32(value)


def _named_operand(token: _Token) -> tuple[str, int]:
    """`#len` / `len` / `#pktlen`, or a bpf_asm ancillary name (`#proto`, `rand`): ("anc", its k)."""
    name = token.text.lower()
    if name in _LEN_WORDS:
        return "len", 0
    if (row := _ANCILLARY_OF_ASM.get(name)) is not None:
        return "anc", row.k
    if (row := _ANCILLARY_OF_TCPDUMP.get(name)) is not None:
        raise ParseError(f"{token} is tcpdump's name for SKF_AD_{row.name}: {_spellings(row)}", token.line)
    raise ParseError(f"expected an operand, found {token}", token.line)


def _ancillary_in_brackets(cur: _Cursor) -> int:
    """k of tcpdump's `[vlanp]`, after the `[`, through the `]`."""
    token = cur.take()
    name = token.text.lower()
    if (row := _ANCILLARY_OF_TCPDUMP.get(name)) is None:
        if (row := _ANCILLARY_OF_ASM.get(name)) is not None:
            message = f"[{token.text}] is not tcpdump's name for SKF_AD_{row.name}: {_spellings(row)}"
            raise ParseError(message, token.line)
        raise ParseError(f"expected an offset or an ancillary name in [...], found {token}", token.line)
    cur.expect("]")
    return row.k


def _spellings(row: Ancillary) -> str:
    asm = f" or bpf_asm's #{row.asm}" if row.asm else " (bpf_asm has no keyword for it)"
    return f"write [{row.tcpdump}]{asm}, or [{_signed(row.k)}]"


def _read_operand(cur: _Cursor) -> tuple[str, int]:
    """One operand: its syntax (`imm`, `len`, `abs`, `ind`, `mem`, `msh`, `x`, `a`, `number`, `anc`) and k."""
    token = cur.peek()
    if token.text == "#":
        cur.take()
        if cur.peek().kind == "word":
            return _named_operand(cur.take())
        return "imm", _read_number(cur)
    if token.text == "%":  # bpf_asm's `%x`, `%a`
        cur.take()
        register = cur.take()
        if register.text.lower() not in ("x", "a"):
            raise ParseError(f"expected 'x' or 'a' after '%', found {register}", register.line)
        return register.text.lower(), 0
    if token.kind == "word":
        name = token.text.lower()
        if name in ("x", "a"):
            cur.take()
            return name, 0
        if name == "m" and cur.peek(1).text == "[":
            cur.take()
            cur.take()
            k = _read_number(cur)
            cur.expect("]")
            return "mem", k
        return _named_operand(cur.take())
    if token.text == "[":
        cur.take()
        if cur.peek().kind == "word" and cur.peek().text.lower() != "x":
            return "abs", _ancillary_in_brackets(cur)
        indexed = cur.take_x()
        if indexed:
            cur.expect("+")
        k = _read_number(cur)
        cur.expect("]")
        return ("ind" if indexed else "abs"), k
    if token.kind == "num" or token.text in ("-", "+"):
        value = _read_number(cur)
        if cur.peek().text != "*":
            return "number", value
        return "msh", _read_msh(cur, value, token)
    raise ParseError(f"expected an operand, found {token}", token.line)


def _read_msh(cur: _Cursor, factor: int, first: _Token) -> int:
    """The rest of `4*([k]&0xf)` after the 4; bpf_asm accepts no other factor or mask."""
    cur.expect("*")
    cur.expect("(")
    cur.expect("[")
    k = _read_number(cur)
    cur.expect("]")
    cur.expect("&")
    mask = _read_number(cur)
    cur.expect(")")
    if factor != 4 or mask != 0xF:
        raise ParseError("only 4*([k]&0xf) exists (the IP header length load)", first.line)
    return k


def _opcode(mnemonic: _Token, syntax: str) -> int:
    """The opcode spelt `mnemonic operand`, through the reverse table."""
    name = mnemonic.text.lower()
    code = _CODES.get(_ALIASES.get((name, syntax), (name, syntax)))
    if code is not None:
        return code
    if name not in _SYNTAXES:
        raise ParseError(f"unknown mnemonic {mnemonic}", mnemonic.line)
    takes = " or ".join(sorted(_SYNTAX_TEXT[s] for s in _SYNTAXES[name]))
    raise ParseError(f"{name} does not take {_SYNTAX_TEXT[syntax]} (it takes {takes})", mnemonic.line)


# -- format detection ------------------------------------------------------------------------


def parse(text: str) -> Program:
    """Read a program from any of the text forms, telling which by the first non-blank line.

    - `(000) ldh [12]`: `tcpdump -d` (absolute jump targets; `unimp 0x81` is `ldx #pktlen`)
    - `{ 0x28, 0, 0, 0x0000000c },`: `tcpdump -dd` (or `bpf_asm -c`)
    - a lone count, then `code jt jf k` lines: `tcpdump -ddd`
    - `N,code jt jf k,...`: the comma form of iptables `-m bpf --bytecode` and `bpf_asm`
    - anything else: `bpf_asm` source (see `_parse_asm`)

    Raises ParseError, with the 1-based line number, on text it cannot read. Text with no
    instruction at all is the empty program (what every style prints for it), which `validate`
    rejects.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, not {type(text).__name__}")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first.startswith("("):
        return _parse_d(text)
    if first.startswith("{"):
        return _parse_dd(text)
    if re.fullmatch(r"\d+", first):
        return _parse_ddd(text)
    if re.match(r"\d+\s*,", first):
        return _parse_comma(text)
    return _parse_asm(text)


# -- filter files: a program or an expression ------------------------------------------------

MNEMONICS: frozenset[str] = frozenset(_SYNTAXES) | frozenset(_NEGATED)
"""Every mnemonic `parse` reads, lower case: the opcode table's, bpf_asm's aliases and negated jumps."""

# Before bpf_asm's first instruction: blanks, `;` and `/* */` comments (no expression has those)
# and `#` lines (tcpdump's comments too, so they decide nothing).
_LEAD = re.compile(r"\s+|(?P<comment>;[^\n]*|/\*.*?\*/)|(?:^|(?<=\n))\#[^\n]*", re.DOTALL)
_WORD = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)[ \t]*(?P<colon>:)?")


def read_source(text: str) -> Program | str:
    """What a filter file holds (`-F FILE`, as tcpdump's): a program in any form `parse` reads, or
    else a pcap-filter expression, returned as tcpdump reads it: `#` comments to the end of a line
    removed, whitespace collapsed (a blank file is the empty expression, which keeps every packet).

    The start of the text decides, as it decides the form in `parse`: a `tcpdump -d/-dd/-ddd` listing
    or the comma form, or bpf_asm source (a `;` or `/* */` comment, a label or a mnemonic first; no
    expression starts with one). A program with a mistake in it raises its ParseError (the line and
    what is wrong) rather than reaching libpcap as an expression and its "syntax error". An expression
    may start with `(`: only `(NNN)` starts a -d listing.
    """
    if not isinstance(text, str):
        raise TypeError(f"read_source() takes a str, not {type(text).__name__}")
    if _is_program_text(text):
        return parse(text)
    return " ".join(re.sub(r"#[^\n]*", " ", text).split())  # tcpdump blanks `#` comments out of -F files


def _is_program_text(text: str) -> bool:
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if re.match(r"\(\d+\)|\{|\d+\s*(,|$)", first):
        return True  # a listing: tcpdump -d, -dd, -ddd (a lone count first) or the comma form
    pos, commented = _skip_lead(text, 0)
    word = _WORD.match(text, pos)
    return commented or (word is not None and (bool(word.group("colon")) or word.group("name").lower() in MNEMONICS))


def _skip_lead(text: str, pos: int) -> tuple[int, bool]:
    """Where the blanks and comments at `pos` end, and whether a bpf_asm-only comment was among them."""
    commented = False
    while (match := _LEAD.match(text, pos)) is not None and match.end() > pos:
        commented |= match.group("comment") is not None
        pos = match.end()
    return pos, commented


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for the non-blank lines."""
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield number, line.strip()


def _field(text: str, bits: int, name: str, line: int) -> int:
    """An unsigned instruction field of a -dd/-ddd/comma listing."""
    if not re.fullmatch(r"0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9]+", text):
        raise ParseError(f"{name} {text!r} is not an unsigned number", line)
    value = _literal(text, line)
    if value >= 1 << bits:
        raise ParseError(f"{name} {text} does not fit in u{bits}", line)
    return value


def _fields(parts: list[str], line: int) -> Insn:
    widths = {"code": 16, "jt": 8, "jf": 8, "k": 32}
    code, jt, jf, k = (
        _field(part, bits, name, line) for part, (name, bits) in zip(parts, widths.items(), strict=True)
    )
    return Insn(code, jt, jf, k)


# -- tcpdump -d ------------------------------------------------------------------------------

_D_LINE = re.compile(r"\((\d+)\)\s*(.*)")


def _parse_d(text: str) -> Program:
    insns: list[Insn] = []
    for number, line in _lines(text):
        match = _D_LINE.fullmatch(line)
        if match is None:
            raise ParseError("expected '(NNN) mnemonic operand' (tcpdump -d)", number)
        if int(match.group(1)) != len(insns):
            raise ParseError(f"instruction ({match.group(1)}) where ({len(insns):03d}) belongs", number)
        insns.append(_parse_d_insn(_Cursor(_tokenize(match.group(2), number)), len(insns)))
    return Program(insns)


def _parse_d_insn(cur: _Cursor, index: int) -> Insn:
    """One `tcpdump -d` instruction after its `(NNN)`; jump targets there are absolute."""
    mnemonic = cur.take()
    if mnemonic.kind != "word":
        raise ParseError(f"expected a mnemonic, found {mnemonic}", mnemonic.line)
    name = mnemonic.text.lower()
    syntax, k = ("none", 0) if cur.at_end() else _read_operand(cur)
    if name == "unimp":  # libpcap's listing of a code it has no name for; only 0x81 has one here
        if syntax != "number" or k != 0x81:
            raise ParseError(
                "'unimp' lists an opcode libpcap cannot name, without its jt/jf/k; use -dd or -ddd",
                mnemonic.line,
            )
        code, k = _CODES[("ldx", "len")], 0
    else:
        if name in _JA_MNEMONICS and syntax == "number":
            syntax, k = "target", u32(k - index - 1)
        code = _opcode(mnemonic, syntax)
    jt = jf = 0
    if OPCODES[code].is_conditional:
        cur.expect("jt")
        jt = _d_offset(cur, index)
        cur.expect("jf")
        jf = _d_offset(cur, index)
    cur.expect_end("the instruction")
    return Insn(code, jt, jf, k)


def _d_offset(cur: _Cursor, index: int) -> int:
    token = cur.peek()
    target = _read_number(cur)
    offset = target - index - 1
    if not 0 <= offset <= 255:
        raise ParseError(
            f"jump target {target} of instruction {index} is not 1 to 256 instructions ahead", token.line
        )
    return offset


# -- tcpdump -dd, -ddd and the comma form ----------------------------------------------------

_DD_LINE = re.compile(r"\{\s*([^,\s]+)\s*,\s*([^,\s]+)\s*,\s*([^,\s]+)\s*,\s*([^,\s}]+)\s*\}\s*,?")


def _parse_dd(text: str) -> Program:
    insns = []
    for number, line in _lines(text):
        match = _DD_LINE.fullmatch(line)
        if match is None:
            raise ParseError("expected '{ code, jt, jf, k },' (tcpdump -dd)", number)
        insns.append(_fields(list(match.groups()), number))
    return Program(insns)


def _parse_ddd(text: str) -> Program:
    lines = list(_lines(text))
    count_line, count = lines[0]
    insns = []
    for number, line in lines[1:]:
        parts = line.split()
        if len(parts) != 4:
            raise ParseError("expected 'code jt jf k' (tcpdump -ddd)", number)
        insns.append(_fields(parts, number))
    if int(count) != len(insns):
        raise ParseError(f"the count says {int(count)} instructions but {len(insns)} follow", count_line)
    return Program(insns)


def _parse_comma(text: str) -> Program:
    """`N,c jt jf k,c jt jf k,...` (a trailing comma is fine, as bpf_asm prints one)."""
    items: list[tuple[int, str]] = []  # (line of the item's first character, item)
    line = 1
    for item in text.split(","):
        items.append((line + item[: len(item) - len(item.lstrip())].count("\n"), item.strip()))
        line += item.count("\n")
    if items[-1][1] == "" and len(items) > 1:
        items.pop()
    (count_line, count), body = items[0], items[1:]
    insns = []
    for number, (line, item) in enumerate(body, 1):
        parts = item.split()
        if len(parts) != 4:
            raise ParseError(f"item {number} of the comma form: expected 'code jt jf k', not {item!r}", line)
        insns.append(_fields(parts, line))
    if int(count) != len(insns):
        raise ParseError(f"the count says {int(count)} instructions but {len(insns)} follow", count_line)
    return Program(insns)


# -- bpf_asm ---------------------------------------------------------------------------------


class _LabelRef(NamedTuple):
    insn: int  # the index of the jumping instruction
    field: str  # "jt", "jf" or "k"
    label: _Token


def _parse_asm(text: str) -> Program:
    """bpf_asm source, as Linux's tools/bpf/bpf_exp.y and bpf_exp.l define it.

    Free-form like bpf_asm (line breaks are whitespace), case-insensitive mnemonics, `;` and
    `/* */` comments and `#` lines. Accepted beyond bpf_asm: tcpdump's spellings `ld #pktlen` and a
    `ret` alone on its line (`ret a`), `[x+k]` without spaces, a signed hex number, several labels
    on one instruction, two-label forms of the negated jumps (`jne #k, Lt, Lf` is
    `jeq #k, Lf, Lt`) and tcpdump's ancillary names (`ldb [vlanp]`, beside bpf_asm's `ldb #vlan_pr`
    or `ldb vlan_pr`). Rejected, though bpf_asm takes it: `ret x` (opcode 0x0e, which bpfjit does
    not run). Labels are `[A-Za-z_][A-Za-z0-9_]+` and case-sensitive; jumps go to labels only,
    forward only, with jt/jf offsets of at most 255.
    """
    cur = _Cursor(_tokenize(text, hash_comments=True))
    labels: dict[str, int] = {}
    refs: list[_LabelRef] = []
    fields: list[list[int]] = []  # [code, jt, jf, k]; jt/jf/k of jumps filled in from labels last
    while not cur.at_end():
        token = cur.take()
        if token.kind == "word" and cur.peek().text == ":":
            cur.take()
            _define_label(labels, token, len(fields))
            if cur.at_end():
                raise ParseError(f"label {token} is not followed by an instruction", token.line)
            continue
        if token.kind != "word":
            raise ParseError(f"expected a mnemonic or a label, found {token}", token.line)
        code, k, jump_labels = _parse_asm_insn(cur, token, len(fields))
        refs.extend(jump_labels)
        fields.append([code, 0, 0, k])
    _resolve_labels(fields, labels, refs)
    return Program(Insn(*row) for row in fields)


def _define_label(labels: dict[str, int], token: _Token, index: int) -> None:
    if len(token.text) < 2:
        raise ParseError(f"label {token} is too short: bpf_asm labels have 2 characters or more", token.line)
    if token.text in labels:
        raise ParseError(f"label {token} is defined twice", token.line)
    labels[token.text] = index


def _parse_asm_insn(cur: _Cursor, mnemonic: _Token, index: int) -> tuple[int, int, list[_LabelRef]]:
    """One instruction after its mnemonic: (code, k, the labels its jumps name)."""
    name = mnemonic.text.lower()
    if name in _JA_MNEMONICS:
        return _CODES[("ja", "target")], 0, [_LabelRef(index, "k", _read_label(cur))]
    if name in _CONDITIONAL_MNEMONICS or name in _NEGATED:
        syntax, k = _read_operand(cur)
        if syntax not in ("imm", "x"):
            raise ParseError(f"{name} takes #k or x, not {_SYNTAX_TEXT[syntax]}", mnemonic.line)
        code = _CODES[(_NEGATED.get(name, name), syntax)]
        cur.expect(",")
        edges = [_read_label(cur)]
        if cur.peek().text == ",":
            cur.take()
            edges.append(_read_label(cur))
        # The negated forms swap the edges: the first label is where the (un-negated) test fails.
        order = ("jf", "jt") if name in _NEGATED else ("jt", "jf")
        return code, k, [_LabelRef(index, field, label) for field, label in zip(order, edges, strict=False)]
    # tcpdump's `ret` for `ret a`: bpf_asm is free-form, so only a line break ends it
    ret_alone = name == "ret" and (cur.at_end() or cur.peek().line != mnemonic.line)
    if name in _OPERANDLESS or ret_alone:
        return _opcode(mnemonic, "none"), 0, []
    syntax, k = _read_operand(cur)
    return _opcode(mnemonic, syntax), k, []


def _read_label(cur: _Cursor) -> _Token:
    token = cur.take()
    if token.kind != "word":
        raise ParseError(f"expected a label (bpf_asm jumps go to labels), found {token}", token.line)
    return token


def _resolve_labels(fields: list[list[int]], labels: dict[str, int], refs: list[_LabelRef]) -> None:
    """bpf_asm's second pass: labels become relative offsets, forward only (jt/jf at most 255)."""
    for ref in refs:
        target = labels.get(ref.label.text)
        if target is None:
            raise ParseError(f"unknown label {ref.label}", ref.label.line)
        offset = target - ref.insn - 1
        if offset < 0:
            raise ParseError(
                f"jump to label {ref.label} (insn {target}) from insn {ref.insn} goes backward; "
                "cBPF jumps only forward",
                ref.label.line,
            )
        if ref.field != "k" and offset > 255:
            raise ParseError(
                f"jump to label {ref.label} (insn {target}) from insn {ref.insn} is {offset} insns "
                "ahead; a conditional jump reaches at most 255",
                ref.label.line,
            )
        fields[ref.insn][{"jt": 1, "jf": 2, "k": 3}[ref.field]] = offset
