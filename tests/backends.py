"""Every way bpfjit can run a program; each semantic case runs on all of them (cbpfc's checkBackends)."""

from __future__ import annotations

from collections.abc import Callable

import bpfjit
from bpfjit import Program

Runner = Callable[[Program, bytes, "int | None"], int]


def run_interpreter(program: Program, packet: bytes, wirelen: int | None) -> int:
    return bpfjit.interpret(program, packet, wirelen)


def run_libpcap(program: Program, packet: bytes, wirelen: int | None) -> int:
    from bpfjit import libpcap

    bpfjit.validate(program)  # libpcap's interpreter trusts its input; never hand it a bad program
    return libpcap.bpf_filter(program, packet, wirelen)


BACKENDS: dict[str, Runner] = {
    "interpreter": run_interpreter,
    "libpcap": run_libpcap,
}


def _compiled(program: Program, opt_level: int = 2) -> bpfjit.Filter:
    return bpfjit.compile(program, opt_level=opt_level)


def _baseline(program: Program, opt_level: int = 2) -> bpfjit.Filter:
    """A Filter on the baseline tier, even when another backend has tiered this program's code up
    (filters of one program share it, and a new one starts on the best tier made so far)."""
    f = _compiled(program, opt_level).use_tier("baseline")
    assert f.tier == "baseline" or opt_level == 0  # -O0 has one tier
    return f


def run_jit(program: Program, packet: bytes, wirelen: int | None) -> int:
    """The native Python entry (f(packet)); with a distinct wirelen, f(packet, wirelen)."""
    f = _baseline(program)
    if wirelen is None or wirelen == len(packet):
        return f(packet)
    return f(packet, wirelen)


def run_jit_ctypes(program: Program, packet: bytes, wirelen: int | None) -> int:
    return _baseline(program).call(packet, wirelen)


def run_jit_optimized(program: Program, packet: bytes, wirelen: int | None) -> int:
    """The optimising tier (compile() gives the baseline one), through the batch entry."""
    f = _compiled(program).tier_up()
    assert f.tier == "optimised"
    return int(f.run_batch(bpfjit.Batch.from_packets([packet], None if wirelen is None else [wirelen]))[0])


def run_jit_o0(program: Program, packet: bytes, wirelen: int | None) -> int:
    return _compiled(program, opt_level=0).call(bytearray(packet), wirelen)


def run_jit_o3(program: Program, packet: bytes, wirelen: int | None) -> int:
    return _baseline(program, opt_level=3)(memoryview(packet), *(() if wirelen is None else (wirelen,)))


BACKENDS.update(
    {
        "jit": run_jit,
        "jit-ctypes": run_jit_ctypes,
        "jit-optimized": run_jit_optimized,
        "jit-O0": run_jit_o0,
        "jit-O3": run_jit_o3,
    }
)
