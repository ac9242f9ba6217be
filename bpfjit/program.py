"""The instruction model: `Insn` (one `struct bpf_insn`) and `Program` (an immutable sequence of them).

A `Program` may be invalid: it can be built, printed and stored so users can inspect it; `validate`,
`interpret` and `compile` are where rules are enforced.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, NamedTuple, overload

from .opcodes import OPCODES

if TYPE_CHECKING:
    from .text import Style

# struct sock_filter / struct bpf_insn: u16 code, u8 jt, u8 jf, u32 k, native byte order, no padding.
INSN_STRUCT = struct.Struct("=HBBI")
INSN_SIZE = INSN_STRUCT.size
# The snap length expressions are compiled for unless told: libpcap's MAXIMUM_SNAPLEN, tcpdump's default.
DEFAULT_SNAPLEN = 262144


def _layout(byteorder: str) -> struct.Struct:
    if byteorder not in ("little", "big"):
        raise ValueError(f"byteorder must be 'little' or 'big', not {byteorder!r}")
    return INSN_STRUCT if byteorder == sys.byteorder else struct.Struct("<HBBI" if byteorder == "little" else ">HBBI")


class _InsnFields(NamedTuple):
    code: int
    jt: int
    jf: int
    k: int


class Insn(_InsnFields):
    """One cBPF instruction, `(code, jt, jf, k)` as in `struct bpf_insn`; field widths are checked."""

    __slots__ = ()

    def __new__(cls, code: int, jt: int = 0, jf: int = 0, k: int = 0) -> Insn:
        for name, value, bits in (("code", code, 16), ("jt", jt, 8), ("jf", jf, 8), ("k", k, 32)):
            if type(value) is not int:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"Insn.{name} must be an int, not {type(value).__name__}")
                value = int(value)
            if not 0 <= value < (1 << bits):
                raise ValueError(f"Insn.{name} = {value} does not fit in u{bits}")
        return super().__new__(cls, int(code), int(jt), int(jf), int(k))

    def __repr__(self) -> str:
        return f"Insn(code=0x{self.code:02x}, jt={self.jt}, jf={self.jf}, k=0x{self.k:x})"

    @property
    def known(self) -> bool:
        """Whether the opcode is one bpfjit accepts."""
        return self.code in OPCODES

    def text(self, index: int = 0) -> str:
        """This instruction as `tcpdump -d` prints it, without the `(NNN) ` prefix."""
        from .text import format_insn

        return format_insn(self, index)


InsnLike = Insn | tuple[int, int, int, int]


def _as_insn(item: object, index: int) -> Insn:
    if isinstance(item, Insn):
        return item
    if isinstance(item, tuple | list) and len(item) == 4:
        return Insn(*item)
    raise TypeError(f"instruction {index} must be an Insn or a (code, jt, jf, k) tuple, not {item!r}")


class Program:
    """An immutable, hashable sequence of `Insn`; `str(program)` is its `tcpdump -d` listing."""

    __slots__ = ("_hash", "_insns")

    def __init__(self, insns: Iterable[InsnLike] = ()):
        if isinstance(insns, Program):
            self._insns: tuple[Insn, ...] = insns._insns
        elif isinstance(insns, str | bytes | bytearray | memoryview):
            raise TypeError(
                "Program() takes instructions; use Program.parse(text) or Program.from_bytes(data)"
            )
        else:
            try:
                items = iter(insns)
            except TypeError:
                raise TypeError(f"Program() takes an iterable of instructions, not {type(insns).__name__}") from None
            self._insns = tuple(_as_insn(item, i) for i, item in enumerate(items))
        self._hash: int | None = None

    # -- sequence protocol --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._insns)

    @overload
    def __getitem__(self, index: int) -> Insn: ...
    @overload
    def __getitem__(self, index: slice) -> Program: ...
    def __getitem__(self, index: int | slice) -> Insn | Program:
        if isinstance(index, slice):
            return Program(self._insns[index])
        return self._insns[index]

    def __iter__(self) -> Iterator[Insn]:
        return iter(self._insns)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Program):
            return self._insns == other._insns
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._insns)
        return self._hash

    def __add__(self, other: Program) -> Program:
        if not isinstance(other, Program):
            return NotImplemented
        return Program(self._insns + other._insns)

    def __reduce__(self) -> tuple[object, ...]:
        return (Program, (self._insns,))

    @property
    def insns(self) -> tuple[Insn, ...]:
        return self._insns

    def __repr__(self) -> str:
        if len(self) <= 4:
            return f"Program({list(self._insns)!r})"
        return f"<Program of {len(self)} insns>"

    def __str__(self) -> str:
        return self.dump("d")

    # -- binary form ---------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, byteorder: str = sys.byteorder) -> Program:
        """Read an array of `struct sock_filter` (8 bytes each, host byte order unless told)."""
        try:
            view = memoryview(data).cast("B")
        except TypeError:
            raise TypeError(f"Program.from_bytes needs a bytes-like object, not {type(data).__name__}") from None
        if len(view) % INSN_SIZE:
            raise ValueError(
                f"{len(view)} bytes is not a whole number of {INSN_SIZE}-byte instructions"
            )
        layout = _layout(byteorder)
        return cls(Insn(*fields) for fields in layout.iter_unpack(view))

    def to_bytes(self, byteorder: str = sys.byteorder) -> bytes:
        """The program as an array of `struct sock_filter`, as `SO_ATTACH_FILTER` takes it."""
        layout = _layout(byteorder)
        return b"".join(layout.pack(*insn) for insn in self._insns)

    # -- text forms (see bpfjit.text) ----------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> Program:
        """Read `tcpdump -d/-dd/-ddd` output, the `N,c jt jf k,...` form or `bpf_asm` source."""
        from .text import parse

        return parse(text)

    def dump(self, style: Style = "d") -> str:
        """The program as `tcpdump -d`, `-dd`, `-ddd` print it, or as `bpf_asm` source (`asm`)."""
        from .text import dump

        return dump(self, style)

    # -- filter expressions (see bpfjit.libpcap) -----------------------------------------------
    @classmethod
    def from_expr(
        cls,
        expression: str,
        linktype: int | str = "EN10MB",
        snaplen: int = DEFAULT_SNAPLEN,
        optimize: bool = True,
        netmask: int | str | None = None,
        *,
        savefile: bool = False,
        swapped: bool = False,
    ) -> Program:
        """Compile a pcap-filter expression (`tcp port 80`) with libpcap's `pcap_compile`: for a live
        capture by default (as `tcpdump -d -y`), or with `savefile=True` as `tcpdump -r` does for a
        capture file of that link type and header snaplen (`swapped`: written in the other byte
        order); the two differ (see `bpfjit.libpcap.compile_expression`)."""
        from .libpcap import compile_expression

        return compile_expression(expression, linktype, snaplen=snaplen, optimize=optimize, netmask=netmask,
                                  savefile=savefile, swapped=swapped)  # fmt: skip
