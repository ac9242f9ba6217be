"""Whatever it is given, bpfjit raises a documented error or agrees with the interpreter."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import bpfjit
from bpfjit import Batch, Program
from bpfjit.strategies import any_programs, known_insns, packets_with_wirelen, programs

DOCUMENTED = (bpfjit.ValidationError, ValueError, TypeError)


def _agree_or_reject(program: Program, packet: bytes, wirelen: int) -> None:
    try:
        f = bpfjit.compile(program)
    except bpfjit.ValidationError as error:
        assert error.rule and (error.index is None or 0 <= error.index < len(program))
        with pytest.raises(bpfjit.ValidationError):
            bpfjit.interpret(program, packet, wirelen)
        return
    expected = bpfjit.interpret(program, packet, wirelen)
    assert f(packet, wirelen) == expected
    assert f.run_batch(Batch.from_packets([packet], [wirelen])).tolist() == [expected]


@given(st.binary(max_size=8 * 40), packets_with_wirelen(max_size=48))
def test_raw_bytes_from_a_fuzzer(raw: bytes, pw: tuple[bytes, int]) -> None:
    try:
        program = Program.from_bytes(raw)
    except ValueError:
        assert len(raw) % 8
        return
    _agree_or_reject(program, *pw)


@given(any_programs(max_insns=24, known_only=True), packets_with_wirelen(max_size=48))
def test_known_opcodes_with_any_fields(program: Program, pw: tuple[bytes, int]) -> None:
    _agree_or_reject(program, *pw)


@given(programs(max_insns=20), st.data(), packets_with_wirelen(max_size=48))
def test_mutated_valid_programs(program: Program, data: st.DataObject, pw: tuple[bytes, int]) -> None:
    insns = list(program)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(insns) - 1))
        insns[i] = data.draw(known_insns)
    _agree_or_reject(Program(insns), *pw)


@given(st.lists(st.tuples(st.integers(-5, 70000), st.integers(-1, 300), st.integers(-1, 300), st.integers(-1, 2**33)),
                max_size=6))  # fmt: skip
def test_malformed_tuples_raise_documented_errors(items: list[tuple[int, int, int, int]]) -> None:
    try:
        bpfjit.compile(items)
    except DOCUMENTED:
        return


@pytest.mark.parametrize("size", [0, 1, 64 * 1024, 16 * 1024 * 1024])
def test_huge_and_tiny_packets(size: int) -> None:
    packet = bytearray(size)
    if size > 14:
        packet[12:14] = b"\x08\x00"
    program = Program([(0x80, 0, 0, 0), (0x25, 0, 1, 60000), (0x06, 0, 0, 1), (0x28, 0, 0, 12), (0x16, 0, 0, 0)])
    f = bpfjit.compile(program)
    expected = bpfjit.interpret(program, packet)
    assert f(packet) == expected == f(bytes(packet)) == f(memoryview(packet).toreadonly())
    assert f(packet, size + 10) == bpfjit.interpret(program, packet, size + 10)


def test_non_contiguous_views_are_refused_not_copied() -> None:
    f = bpfjit.compile([(0x30, 0, 0, 0), (0x16, 0, 0, 0)])
    with pytest.raises(TypeError, match="contiguous"):
        f(memoryview(bytes(10))[::2])
    with pytest.raises(TypeError, match="contiguous"):
        bpfjit.interpret(f.program, memoryview(bytes(10))[::2])


def _run_pickled(blob: bytes) -> int:
    return int(pickle.loads(blob)(b"\x45" + bytes(19)))


def test_filters_work_in_a_multiprocessing_pool() -> None:
    f = bpfjit.compile([(0x30, 0, 0, 0), (0x16, 0, 0, 0)])
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        assert pool.map(_run_pickled, [pickle.dumps(f)] * 4) == [0x45] * 4
        assert pool.map(f, [b"\x07", b"\x09"]) == [7, 9]  # the Filter itself pickles


def _rss_kib() -> int:
    """Resident memory, after handing glibc's free arenas back (freed, not leaked, memory would count)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_ten_thousand_distinct_filters_keep_memory_bounded() -> None:
    """The long run (pytest -m slow -s): prints the RSS figures for the closing note."""

    def compile_and_drop(start: int, stop: int) -> None:
        for i in range(start, stop):
            f = bpfjit.compile([(0x20, 0, 0, i % 64), (0x54, 0, 0, i + 1), (0x16, 0, 0, 0)])
            assert f(bytes(80)) == 0
        bpfjit.filter.clear_cache()
        gc.collect()

    compile_and_drop(0, 300)  # LLVM's own start-up and the allocator's first growth
    base = peak = _rss_kib()
    for start in range(1000, 11_000, 1000):
        compile_and_drop(start, start + 1000)
        peak = max(peak, _rss_kib())
    grown = peak - base
    print(f"RSS after warm-up {base} KiB, peak {peak} KiB over 10,000 compiles: +{grown / 10_000:.1f} KiB each")
    assert grown < 60_000  # llvmlite leaks ~2.4 KiB per PassBuilder; everything else is freed
