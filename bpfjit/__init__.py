"""bpfjit: classic BPF (cBPF) compiled to native code with LLVM.

    >>> import bpfjit
    >>> f = bpfjit.compile("tcp port 80")          # a pcap-filter expression, through libpcap
    >>> f(packet)                                   # the BPF return value: 0 drops, else snap length

Data flows one way: text/bytes/expression -> Program -> the stages of `pipeline` (validate, analyse,
lower, translate, optimise, generate) -> Filter; `interpret` is the reference semantics. The README's
"How it is built" lists every module by layer. `import bpfjit` does not load LLVM; the first
`compile` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import (
    BpfjitError,
    CaptureFileError,
    ExpressionError,
    LibraryMissingError,
    ParseError,
    ValidationError,
)
from .interpret import interpret  # (eager: a lazy name would be shadowed by the submodule once imported)
from .program import Insn, Program
from .validate import validate

if TYPE_CHECKING:
    from .batch import Batch
    from .capfile import filter_file, read_batches, read_file
    from .classifier import Classifier, MultiFilter, compile_many
    from .filter import Filter, compile
    from .interpret import interpret


def __getattr__(name: str) -> object:
    # The JIT stage (and llvmlite with it) loads on first use, so tools that only parse, validate
    # or interpret programs, and the CLI's start-up, don't pay for it.
    if name in ("compile", "Filter"):
        from . import filter as _filter

        return getattr(_filter, name)
    if name in ("compile_many", "Classifier", "MultiFilter"):
        from . import classifier

        return getattr(classifier, name)
    # numpy (Batch) costs ~60 ms of start-up that `bpfjit filter -r IN -w OUT` does without.
    if name == "Batch":
        from .batch import Batch

        return Batch
    if name in ("filter_file", "read_file", "read_batches"):
        from . import capfile

        return getattr(capfile, name)
    raise AttributeError(f"module 'bpfjit' has no attribute {name!r}")

__all__ = [
    "Batch",
    "BpfjitError",
    "CaptureFileError",
    "Classifier",
    "ExpressionError",
    "Filter",
    "Insn",
    "LibraryMissingError",
    "MultiFilter",
    "ParseError",
    "Program",
    "ValidationError",
    "compile",
    "compile_many",
    "filter_file",
    "interpret",
    "read_batches",
    "read_file",
    "validate",
]
__version__ = "0.1.0"
