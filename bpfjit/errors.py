"""The exception tree of bpfjit.

    BpfjitError
    ├── ValidationError (also a ValueError): a program breaks a rule of SEMANTICS.md
    ├── ParseError (also a ValueError): text that is no cBPF listing we know
    ├── ExpressionError (also a ValueError): libpcap rejected a filter expression
    ├── CaptureFileError (also a ValueError): a pcap/pcapng file is truncated or corrupt at `.offset`
    └── LibraryMissingError (also an ImportError): a system library is not installed
"""

from __future__ import annotations


class BpfjitError(Exception):
    """Base class of every error bpfjit raises on purpose."""


class ValidationError(BpfjitError, ValueError):
    """A program breaks a validation rule.

    `index` is the offending instruction (None for whole-program rules such as `empty`),
    `rule` the rule's stable name from SEMANTICS.md, `reason` the human explanation.
    """

    def __init__(self, rule: str, reason: str, index: int | None = None, insn_text: str | None = None):
        self.rule = rule
        self.reason = reason
        self.index = index
        self.insn_text = insn_text
        where = "program" if index is None else f"insn {index}"
        if insn_text:
            where += f" ({insn_text})"
        super().__init__(f"{where}: {reason} [{rule}]")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.rule, self.reason, self.index, self.insn_text), None)


class ParseError(BpfjitError, ValueError):
    """Text that could not be read as a cBPF program; `line` is 1-based when known."""

    def __init__(self, message: str, line: int | None = None):
        self.message = message
        self.line = line
        super().__init__(message if line is None else f"line {line}: {message}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.message, self.line), None)


class ExpressionError(BpfjitError, ValueError):
    """libpcap's `pcap_compile` rejected an expression; the message is libpcap's own."""

    def __init__(self, expression: str, message: str):
        self.expression = expression
        self.message = message
        super().__init__(f"{message} (in filter expression {expression!r})")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.expression, self.message), None)


class LibraryMissingError(BpfjitError, ImportError):
    """A system library bpfjit needs is not installed; the message names the package."""


class CaptureFileError(BpfjitError, ValueError):
    """A capture file is not pcap/pcapng, is corrupt or is truncated; `offset` is the byte where.

    Raised after every complete record before `offset` has been delivered (written or yielded).
    """

    def __init__(self, offset: int, reason: str, path: str | None = None):
        self.offset = offset
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}byte {offset}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.offset, self.reason, self.path), None)
