"""bpfjit: classic BPF (cBPF) compiled to native code with LLVM.

    >>> import bpfjit
    >>> f = bpfjit.compile("tcp port 80")          # a pcap-filter expression, through libpcap
    >>> f(packet)                                   # the BPF return value: 0 drops, else snap length

Stages, each a module: program (Insn, Program) -> text (parse, dump) -> validate -> interpret (the
reference semantics) | lower (LLVM IR) -> native (machine code) -> filter (Filter, compile).
`import bpfjit` does not load LLVM; the first `compile` does.
"""

from __future__ import annotations

from .errors import (
    BpfjitError,
    ExpressionError,
    LibraryMissingError,
    ParseError,
    ValidationError,
)
from .filter import Filter, compile
from .interpret import interpret
from .program import Insn, Program
from .validate import validate

__all__ = [
    "BpfjitError",
    "ExpressionError",
    "Filter",
    "Insn",
    "LibraryMissingError",
    "ParseError",
    "Program",
    "ValidationError",
    "compile",
    "interpret",
    "validate",
]
__version__ = "0.1.0"
