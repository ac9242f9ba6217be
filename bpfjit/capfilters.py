"""The filter of a capture file, per link type: which program each packet record runs through.

A file may hold several link types (pcapng interfaces); each gets a *link-type slot* (its index in
`CaptureFile.linktypes`) and a program, and one native walker (`walkers.walker`) runs each record
through its slot's program. An expression is compiled for each link type the file holds (libpcap's
`pcap_compile`, with the file's snaplen and netmask 0, as `tcpdump -r` does), or for the link type
given instead; a `Program` applies to every packet as it is; a `Filter` contributes its program,
and its expression is recompiled for link types other than its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import walkers
from .capformat import MAX_SNAPLEN
from .program import Program
from .validate import validate

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .capformat import CaptureFile
    from .filter import Filter
    from .program import InsnLike

    FilterSpec = str | Program | Iterable[InsnLike] | Filter | None

__all__ = ["LinkTypeFilters", "dlt_from_linktype", "dlt_of"]


class LinkTypeFilters:
    """The program each link-type slot of a capture runs through: None keeps every packet."""

    def __init__(
        self, spec: FilterSpec, capture: CaptureFile, linktype: int | str | None = None, opt_level: int = 2
    ):
        self.capture = capture
        self.override = linktype
        self.opt_level = opt_level
        self.expression: str | None = None
        self.program: Program | None = None
        self.filter: Filter | None = None
        self.programs: list[Program | None] = []  # by link-type slot
        self.helpers: tuple[str, ...] = ()  # compiled with the first walker
        if spec is None:
            return
        if isinstance(spec, str):
            self.expression = spec
        elif isinstance(spec, Program):
            self.program = validate(spec)
        else:
            # Imported only here: bpfjit.filter brings numpy, which the command line (whose spec is
            # always a str, a Program or None) does without. Other specs are rare and compile a
            # walker (LLVM) anyway.
            from .filter import Filter

            if isinstance(spec, Filter):
                self.filter, self.opt_level = spec, spec.opt_level
            else:
                self.program = validate(Program(spec))

    def program_for(self, linktype: int) -> Program | None:
        """The program the packets of `linktype` (a LINKTYPE_* value) go through (None: no filter)."""
        if self.program is not None:
            return self.program
        expression = self.expression
        if self.filter is not None:
            if self.filter.expression is None or self._dlt(linktype) == dlt_of(self.filter.linktype):
                return self.filter.program
            expression = self.filter.expression
        if expression is None:
            return None
        snaplen = self.capture.snaplen if 0 < self.capture.snaplen <= 0x7FFFFFFF else MAX_SNAPLEN
        # netmask 0, as tcpdump -r passes it (it only matters to `ip broadcast`)
        return validate(Program.from_expr(expression, self._dlt(linktype), snaplen=snaplen, netmask=0))

    def _dlt(self, linktype: int) -> int:
        if self.override is not None:
            return dlt_of(self.override)
        return dlt_from_linktype(linktype)

    def walker(self) -> tuple[Any, bool]:
        """The walker running each slot's program (compiled with `helpers` the first time), and
        whether it sets verdicts."""
        capture = self.capture
        for linktype in capture.linktypes or capture.first_linktypes:
            capture.slot_of(linktype)
        for linktype in capture.linktypes[len(self.programs) :]:
            self.programs.append(self.program_for(linktype))
        walk = walkers.walker(capture.format, self.programs, self.helpers, self.opt_level)
        return walk, any(program is not None for program in self.programs)


def dlt_of(linktype: int | str | None) -> int:
    """The DLT_ value of a link type given by name or value (None: Ethernet)."""
    from .libpcap import linktype_value

    return linktype_value(linktype if linktype is not None else "EN10MB")


def dlt_from_linktype(linktype: int) -> int:
    """The DLT_ value of a LINKTYPE_ value from a file header."""
    # LINKTYPE_ 0..10 (Ethernet is 1) equal their DLT_ values on every platform (libpcap's
    # linktype_to_dlt); skipping the lookup saves a temporary file and libpcap's reader at start-up.
    if 0 <= linktype <= 10:
        return linktype
    from .libpcap import dlt_from_linktype as lookup

    return lookup(linktype)
