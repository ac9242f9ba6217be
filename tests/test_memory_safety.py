"""Generated code never reads outside the packet: packets end right before an inaccessible page.

The checks run in a subprocess, so a fault shows up as a failed test with the child's output
instead of killing the test runner.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import ctypes, mmap, os, sys
    from hypothesis import given, settings, strategies as st, HealthCheck
    import bpfjit
    from bpfjit import Batch, Program
    from bpfjit.strategies import programs, packets

    PAGE = mmap.PAGESIZE
    area = mmap.mmap(-1, 2 * PAGE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    libc = ctypes.CDLL(None, use_errno=True)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    if libc.mprotect(ctypes.c_void_p(base + PAGE), PAGE, 0) != 0:  # PROT_NONE: any touch faults
        raise OSError(ctypes.get_errno(), "mprotect")
    examples = int(os.environ.get("EXAMPLES", "200"))

    def at_page_end(packet):
        start = PAGE - len(packet)
        area[start:PAGE] = packet
        return memoryview(area)[start:PAGE]

    # Loads that hug the end of the packet, with every size, mode and offsets near 2^32.
    EDGE = []
    for width_code in (0x20, 0x28, 0x30):
        for k in (0, 1, 2, 3, 4, 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFC, 0x7FFFFFFF, 0x80000000):
            EDGE.append(Program([(width_code, 0, 0, k), (0x16, 0, 0, 0)]))
            for x in (0, 1, 3, 0xFFFFFFFF, 0xFFFFFFFE, 0x80000000):
                EDGE.append(Program([(0x01, 0, 0, x), (width_code + 0x20, 0, 0, k), (0x16, 0, 0, 0)]))
        EDGE.append(Program([(0xB1, 0, 0, 0), (width_code + 0x20, 0, 0, 0), (0x16, 0, 0, 0)]))
    for program in EDGE:
        f = bpfjit.compile(program)
        for tier in ("baseline", "optimized"):
            for size in range(0, 9):
                view = at_page_end(bytes(range(1, size + 1)))
                expected = bpfjit.interpret(program, view)
                assert f(view) == expected == f.call(view), (program, size, tier)
                assert f.run_batch(Batch(area, [PAGE - size], [size])).tolist() == [expected]
            f.tier_up()

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
    @given(programs(max_insns=24), packets(max_size=40))
    def check(program, packet):
        view = at_page_end(packet)
        expected = bpfjit.interpret(program, view)
        f = bpfjit.compile(program)
        for tier in ("baseline", "optimized"):
            assert f(view) == expected
            assert f.call(view) == expected
            assert f.run_batch(Batch(area, [PAGE - len(packet)], [len(packet)])).tolist() == [expected]
            f.tier_up()

    check()
    print("ok", len(EDGE), examples)
    """
)


def test_no_read_past_the_packet_end() -> None:
    examples = "400" if os.environ.get("CI") == "true" else "100"
    env = {**os.environ, "EXAMPLES": examples}
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=600, env=env)
    if result.returncode < 0:
        signal = -result.returncode
        pytest.fail(f"the child died of signal {signal} (a read outside the packet?)\n{result.stderr[-3000:]}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.startswith("ok")
