"""The filter of a capture file, per slot: which program each packet record runs through.

A file's interfaces are described by *slots* (`CaptureFile.slots`: a classic pcap file header for
each distinct link type, snaplen and byte order; a pcap file has one, its own header), and one
native walker (`walkers.walker`) runs each record through its slot's program. An expression is
compiled for each slot as `tcpdump -r` compiles it for the file: on a libpcap savefile handle opened
on that header (`libpcap.compile_for_savefile`; netmask 0, as tcpdump -r passes it), or for the link
type given instead (tcpdump's -y) with the slot's snaplen and byte order. A `Program` applies to
every packet as it is; a `Filter` contributes its program, or, if it was compiled from an
expression, that expression compiled for each slot of the file (a file is not a live capture).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from . import walkers
from .capformat import HOST_ORDER, PCAP_MAGICS
from .program import Program
from .validate import validate

if TYPE_CHECKING:
    from collections.abc import Iterable

    from .capformat import CaptureFile
    from .filter import Filter
    from .program import InsnLike

    FilterSpec = str | Program | Iterable[InsnLike] | Filter | None

__all__ = ["LinkTypeFilters", "dlt_of"]


class LinkTypeFilters:
    """The program each slot of a capture runs through: None keeps every packet."""

    def __init__(
        self, spec: FilterSpec, capture: CaptureFile, linktype: int | str | None = None, opt_level: int = 2
    ):
        self.capture = capture
        self.override = linktype
        self.opt_level = opt_level
        self.expression: str | None = None
        self.program: Program | None = None
        self.filter: Filter | None = None
        self.programs: list[Program | None] = []  # by slot
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

    def program_for(self, slot: int) -> Program | None:
        """The program the packets of slot `slot` go through (None: no filter)."""
        if self.program is not None:
            return self.program
        expression = self.expression
        if self.filter is not None:
            if self.filter.expression is None:
                return self.filter.program
            expression = self.filter.expression
        if expression is None:
            return None
        from .libpcap import compile_for_savefile, savefile_header

        header = self.capture.slots[slot]
        if self.override is not None:  # the given link type, with the slot's snaplen and byte order
            order = "<" if struct.unpack_from("<I", header)[0] in PCAP_MAGICS else ">"
            snaplen = struct.unpack_from(order + "I", header, 16)[0]
            header = savefile_header(dlt_of(self.override), snaplen, swapped=order != HOST_ORDER)
        # netmask 0, as tcpdump -r passes it (it only matters to `ip broadcast`)
        return validate(compile_for_savefile(expression, header, netmask=0))

    def walker(self) -> tuple[Any, bool]:
        """The walker running each slot's program (compiled with `helpers` the first time), and
        whether it sets verdicts."""
        capture = self.capture
        for linktype, header in capture.first_slots if not capture.slots else ():
            capture.slot_of(linktype, header)
        for slot in range(len(self.programs), len(capture.slots)):
            self.programs.append(self.program_for(slot))
        walk = walkers.walker(capture.format, self.programs, self.helpers, self.opt_level)
        return walk, any(program is not None for program in self.programs)


def dlt_of(linktype: int | str | None) -> int:
    """The DLT_ value of a link type given by name or value (None: Ethernet)."""
    from .libpcap import linktype_value

    return linktype_value(linktype if linktype is not None else "EN10MB")

