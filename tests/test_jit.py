"""The JIT: differential against the interpreter, every call path, the Filter API, the code cache."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import os
import pickle
import sys
import threading
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bpfjit
import bpfjit.filter  # the module (bpfjit loads it lazily)
import bpfjit.pipeline
from bpfjit import Insn, Program, cpython, lower
from bpfjit.analysis import bounds_plan
from bpfjit.opcodes import KINDS
from bpfjit.strategies import packets_with_wirelen, programs

IP_ONLY = Program([(0x28, 0, 0, 12), (0x15, 0, 1, 0x800), (0x6, 0, 0, 262144), (0x6, 0, 0, 0)])
IPV4_FRAME = bytes(12) + b"\x08\x00" + bytes(46)


@given(programs(), packets_with_wirelen(), st.sampled_from([0, 1, 2, 3]))
def test_jit_equals_interpreter_at_every_opt_level(program: Program, pw: tuple[bytes, int], opt: int) -> None:
    packet, wirelen = pw
    expected = bpfjit.interpret(program, packet, wirelen)
    f = bpfjit.compile(program, opt_level=opt)
    for _tier in ("baseline", "optimized"):
        assert f.call(packet, wirelen) == expected
        assert f(packet, wirelen) == expected
        assert f(packet, wirelen=wirelen) == expected
        if wirelen == len(packet):
            assert f(packet) == expected  # the native entry's fast path
            assert f(bytearray(packet)) == expected
            assert f(memoryview(packet)) == expected
        f.tier_up()


@given(programs(max_insns=24), st.binary(max_size=64))
def test_fast_path_buffers_equal_ctypes_path(program: Program, packet: bytes) -> None:
    f = bpfjit.compile(program)
    expected = f.call(packet)
    assert f(np.frombuffer(packet, dtype=np.uint8)) == expected
    assert f(memoryview(bytearray(packet)).toreadonly()) == expected
    assert f.call(memoryview(packet)) == expected


def test_every_kind_has_an_emitter() -> None:
    assert set(lower.EMITTERS) == set(KINDS)


def test_native_entry_is_in_use_unless_switched_off() -> None:
    if os.environ.get(cpython.CALL_PATH_VARIABLE) == "ctypes":  # the fallback switch: no native entry
        assert not cpython.NATIVE_ENTRY and not bpfjit.filter.FAST_ENTRY
        assert bpfjit.filter.entry_address() == 0 and bpfjit.Filter.__call__ is bpfjit.Filter.call
        return
    assert cpython.NATIVE_ENTRY, "the vectorcall entry should be available on CPython"
    assert bpfjit.Filter.__flags__ & cpython.Py_TPFLAGS_HAVE_VECTORCALL
    f = bpfjit.compile(IP_ONLY)
    entry = bpfjit.filter.entry_address()
    assert entry != 0 and entry == bpfjit.filter.entry_address()  # one entry, shared by every filter
    assert ctypes.c_void_p.from_address(id(f) + cpython.ENTRY_OFFSET).value == entry
    assert ctypes.c_void_p.from_address(id(f) + cpython.FILTER_OFFSET).value == f.address


def test_results_are_python_ints_with_exact_values() -> None:
    f = bpfjit.compile([(0x6, 0, 0, 0xFFFFFFFF)])
    assert f(b"") == 0xFFFFFFFF and type(f(b"")) is int
    g = bpfjit.compile(IP_ONLY)
    results = [g(IPV4_FRAME) for _ in range(1000)]  # cached int objects keep their refcounts right
    assert results == [262144] * 1000
    del results
    gc.collect()
    assert g(IPV4_FRAME) == 262144


@pytest.mark.parametrize("call", ["fast", "ctypes"])
def test_bad_packets_raise_the_documented_errors(call: str) -> None:
    f = bpfjit.compile(IP_ONLY)
    run = f if call == "fast" else f.call
    for bad in ("text", 42, None, [1, 2, 3], 3.5):
        with pytest.raises(TypeError):
            run(bad)
    with pytest.raises(TypeError):
        run(memoryview(IPV4_FRAME)[::2])
    with pytest.raises(ValueError):
        run(IPV4_FRAME, 10)
    with pytest.raises(ValueError):
        run(IPV4_FRAME, 1 << 32)
    with pytest.raises(TypeError):
        run(IPV4_FRAME, "60")


def test_call_signature_errors() -> None:
    f = bpfjit.compile(IP_ONLY)
    with pytest.raises(TypeError):
        f()
    with pytest.raises(TypeError):
        f(IPV4_FRAME, 60, 70)
    with pytest.raises(TypeError):
        f(IPV4_FRAME, snaplen=3)
    with pytest.raises(TypeError):
        bpfjit.Filter(IP_ONLY)


def test_buffer_kinds_without_copy() -> None:
    f = bpfjit.compile(IP_ONLY)
    with mmap.mmap(-1, len(IPV4_FRAME)) as mapped:
        mapped[:] = IPV4_FRAME
        assert f(mapped) == 262144
        assert f.call(mapped) == 262144
    assert f(np.frombuffer(IPV4_FRAME, dtype=np.uint8)) == 262144
    assert f(np.frombuffer(IPV4_FRAME, dtype=np.uint8).reshape(4, 15)) == 262144  # C-contiguous 2-D
    assert f(b"") == 0 and f.call(b"") == 0 and f(bytearray()) == 0


def test_filter_api() -> None:
    program = Program([*IP_ONLY, (0x6, 0, 0, 1008)])  # compiled by no other test: its own tiers
    f = bpfjit.compile(program, opt_level=1)
    assert f.program == program and f.opt_level == 1 and f.expression is None
    assert "5 insns" in repr(f) and "opt_level=1" in repr(f) and "baseline tier" in repr(f)
    assert repr(f.tier_up()).endswith("opt_level=1, optimised tier>")
    assert "define" in f.llvm_ir and "bswap" not in f.llvm_ir.split("define")[0]
    assert f.asm.strip() and f.address
    with pytest.raises(ValueError):
        bpfjit.compile(IP_ONLY, opt_level=4)
    with pytest.raises(TypeError):
        bpfjit.compile(IP_ONLY.to_bytes())  # type: ignore[arg-type]


def test_compile_validates_first() -> None:
    with pytest.raises(bpfjit.ValidationError) as info:
        bpfjit.compile([(0x15, 200, 0, 0x800), (0x6, 0, 0, 0)])
    assert info.value.rule == "jump-out-of-range" and info.value.index == 0


def test_compile_accepts_tuples_and_insns() -> None:
    assert bpfjit.compile([Insn(0x6, 0, 0, 7)])(b"") == 7
    assert bpfjit.compile(iter([(0x6, 0, 0, 7)]))(b"") == 7


def test_filter_pickles_by_recompiling() -> None:
    f = bpfjit.compile(IP_ONLY, opt_level=3)
    g = pickle.loads(pickle.dumps(f))
    assert g is not f and g.program == f.program and g.opt_level == 3
    assert g(IPV4_FRAME) == 262144


def test_compiling_twice_reuses_machine_code() -> None:
    program = Program([(0x6, 0, 0, 12345)])
    first = bpfjit.compile(program)
    second = bpfjit.compile(Program([(0x6, 0, 0, 12345)]))
    assert first is not second and first.code is second.code
    assert bpfjit.compile(program, opt_level=0).code is not first.code


def test_calls_from_many_threads() -> None:
    f = bpfjit.compile(IP_ONLY)
    frames = [IPV4_FRAME, bytes(60), IPV4_FRAME[:13]]
    expected = [262144, 0, 0]
    errors: list[object] = []

    def work() -> None:
        for _ in range(2000):
            if [f(p) for p in frames] != expected:
                errors.append("mismatch")

    _in_threads(work, 8)
    assert errors == []


def _in_threads(work: Callable[[], object], count: int) -> None:
    """Run `work` in `count` threads at once and wait for them all."""
    threads = [threading.Thread(target=work) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_compile_from_many_threads() -> None:
    results: dict[int, int] = {}

    def work(i: int) -> None:
        f = bpfjit.compile([(0x0, 0, 0, 1000 + i), (0x16, 0, 0, 0)])
        results[i] = f(b"")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 1000 + i for i in range(16)}


def _rss_kib() -> int:
    """Resident memory, after handing glibc's free arenas back (freed, not leaked, memory would count)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_compiling_and_dropping_filters_keeps_memory_flat() -> None:
    def churn(count: int, base: int) -> None:
        for i in range(count):
            f = bpfjit.compile([(0x20, 0, 0, i % 64), (0x54, 0, 0, base + i), (0x16, 0, 0, 0)])
            assert f(bytes(80)) == 0
            if i % 4 == 0:  # some with both tiers
                assert f.tier_up()(bytes(80)) == 0
            del f
        bpfjit.filter.clear_cache()
        gc.collect()

    churn(300, 0)  # warm up allocators and LLVM's own caches
    before = _rss_kib()
    churn(2000, 10_000)
    grown = _rss_kib() - before
    # A leaked engine costs ~20 KiB or more; 2000 of them would be 40 MiB.
    assert grown < 15_000, f"RSS grew by {grown} KiB over 2000 compile/drop cycles"


def test_bounds_checks_are_merged_for_tcp_port_80() -> None:
    # tcpdump -dd -y EN10MB 'tcp port 80' (fixture-free: this is the listing of libpcap 1.10).
    program = Program.parse(
        "20\n40 0 0 12\n21 0 6 34525\n48 0 0 20\n21 0 15 6\n40 0 0 54\n21 12 0 80\n40 0 0 56\n"
        "21 10 11 80\n21 0 10 2048\n48 0 0 23\n21 0 8 6\n40 0 0 20\n69 6 0 8191\n177 0 0 14\n"
        "72 0 0 14\n21 2 0 80\n72 0 0 16\n21 0 1 80\n6 0 0 262144\n6 0 0 0\n"
    )
    plan = bounds_plan(program)
    # 6 constant loads, 3 static checks: [56] cannot be hoisted above (004), which may accept at 56.
    assert plan.checks == {0: 24, 4: 56, 6: 58}
    f = bpfjit.compile(program)
    # the batch loop is the only machine code, the filter inlined in it
    batch_ir = next(chunk for chunk in f.llvm_ir.split("\ndefine ") if "void @bpf_filter_" in chunk[:80])
    compares = [line for line in batch_ir.splitlines() if "icmp" in line and ("len_ok" in line or "ind_ok" in line)]
    loads = sum(1 for insn in program if insn.code in (0x28, 0x30, 0x48, 0xB1))
    assert loads == 9 and len(compares) == 5, compares  # 3 static + 2 for [x + k]


def test_merged_check_never_hoists_above_an_accepting_path() -> None:
    # ldb [0]; jeq #1 -> ret #7; ldh [10]; ret a.  A 1-byte packet [1] must return 7.
    program = Program([(0x30, 0, 0, 0), (0x15, 0, 1, 1), (0x6, 0, 0, 7), (0x28, 0, 0, 10), (0x16, 0, 0, 0)])
    f = bpfjit.compile(program)
    assert f(b"\x01") == 7 and f(b"\x02") == 0 and f(b"\x02" + bytes(11)) == 0
    assert bounds_plan(program).checks == {0: 1, 3: 12}


@pytest.mark.parametrize("opt", [0, 1, 2, 3])
def test_known_x_still_takes_the_runtime_checks(opt: int) -> None:
    # X is a constant the lowering can see; the division must still check it (the validator only
    # rejects `div #0`), and a shift by X >= 32 must still give 0, at every optimisation level.
    for alu_x in (0x3C, 0x9C):  # div x, mod x
        f = bpfjit.compile([(0x00, 0, 0, 7), (0x01, 0, 0, 0), (alu_x, 0, 0, 0), (0x06, 0, 0, 9)], opt_level=opt)
        assert f(b"") == 0 and f.call(b"") == 0
        assert f.tier_up()(b"") == 0 and f.call(b"") == 0
    for shift_x in (0x6C, 0x7C):  # lsh x, rsh x
        f = bpfjit.compile([(0x00, 0, 0, 0xFFFF), (0x01, 0, 0, 40), (shift_x, 0, 0, 0), (0x16, 0, 0, 0)], opt_level=opt)
        assert f(b"") == 0
        assert f.tier_up()(b"") == 0


# -- tiers -------------------------------------------------------------------------------------------
def _fresh_ip_filter(tag: int) -> bpfjit.Filter:
    """IP_ONLY plus an unreachable `ret #tag`: a program no other test compiled (its own tiers)."""
    return bpfjit.compile([*IP_ONLY, (0x6, 0, 0, tag)])


def test_compile_gives_the_baseline_tier_and_tier_up_switches() -> None:
    f = _fresh_ip_filter(1001)
    assert not f.optimized and f.tier == "baseline" and f.code.current.codegen_level == bpfjit.pipeline.BASELINE_CODEGEN
    baseline_address, baseline_asm = f.address, f.asm
    assert f.tier_up() is f and f.optimized and f.tier == "optimised" and f.code.current.codegen_level == 2
    assert f.address != baseline_address and f.asm != baseline_asm
    assert f(IPV4_FRAME) == 262144 and f(bytes(60)) == 0 and f.call(IPV4_FRAME[:13]) == 0
    assert f.tier_up().address == f.address  # made once
    # the baseline code stays valid while the filter lives (native callers may hold its address)
    assert baseline_address in [f.code.batch_address(tier) for tier in f.code.tiers]
    run = bpfjit.filter.BATCH_PROTOTYPE(baseline_address)
    out = ctypes.c_uint32(7)
    offset, caplen = ctypes.c_uint64(0), ctypes.c_uint32(len(IPV4_FRAME))
    run(IPV4_FRAME, ctypes.byref(offset), ctypes.byref(caplen), ctypes.byref(caplen), 1, None, ctypes.byref(out))
    assert out.value == 262144


def test_optimize_is_the_old_name_of_tier_up() -> None:
    f = _fresh_ip_filter(1009)
    assert bpfjit.Filter.optimize is bpfjit.Filter.tier_up and f.optimize() is f and f.tier == "optimised"


def test_opt_level_0_has_one_tier() -> None:
    f = bpfjit.compile([*IP_ONLY, (0x6, 0, 0, 1002)], opt_level=0)
    assert f.optimized and f.tier_up().address == f.address and len(f.code.tiers) == 1


def test_batches_tier_up_after_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpfjit.filter, "TIER_UP_PACKETS", 10)
    f = _fresh_ip_filter(1003)
    frames = [IPV4_FRAME, bytes(60), IPV4_FRAME[:13], IPV4_FRAME]
    assert f.run_batch(frames).tolist() == [262144, 0, 0, 262144] and not f.optimized
    f.run_batch(frames)
    assert not f.optimized  # 8 packets so far
    assert f.run_batch(frames).tolist() == [262144, 0, 0, 262144] and f.optimized  # the 12th packet
    # another Filter of the same program adopts the optimised code on its next batch
    g = _fresh_ip_filter(1003)
    assert g.code is f.code and g.optimized  # created after the tier-up: starts on it
    h_code_before = _fresh_ip_filter(1004)
    h = _fresh_ip_filter(1004)
    h_code_before.tier_up()
    assert not h.optimized and h.filter(frames) == [IPV4_FRAME, IPV4_FRAME] and h.optimized


def test_use_tier_pins_a_tier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpfjit.filter, "TIER_UP_PACKETS", 10)
    f = _fresh_ip_filter(1008).use_tier("baseline")
    frames = [IPV4_FRAME, bytes(60)] * 20
    assert f.run_batch(frames).tolist() == [262144, 0] * 20 and [f(p) for p in frames] == [262144, 0] * 20
    assert f.tier == "baseline"  # pinned: 80 packets, no tier-up
    other = _fresh_ip_filter(1008).tier_up()  # the program's code tiers up through another filter
    assert other.tier == "optimised" and f.run_batch(frames).tolist() == [262144, 0] * 20 and f.tier == "baseline"
    assert f.use_tier("optimised").address == other.address and f.tier == "optimised"
    with pytest.raises(ValueError, match="tier must be"):
        f.use_tier("fast")  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["native entry", "ctypes"])
def test_single_packet_calls_tier_up_after_the_threshold(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.setattr(bpfjit.filter, "TIER_UP_PACKETS", 10)
    f = _fresh_ip_filter(1005 if path == "ctypes" else 1007)
    call = f.call if path == "ctypes" else f
    for _ in range(10):
        assert call(IPV4_FRAME) == 262144 and not f.optimized
    assert call(bytes(60)) == 0 and f.optimized  # the 11th call: the countdown reached 0
    assert [call(IPV4_FRAME) for _ in range(30)] == [262144] * 30
    if bpfjit.filter.FAST_ENTRY:
        counted = 30 if path == "native entry" else 0
        assert cpython.countdown(f) == bpfjit.filter.NO_COUNTDOWN - counted  # counting on, never to reach 0


def test_tier_up_while_other_threads_run_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpfjit.filter, "TIER_UP_PACKETS", 5000)
    f = _fresh_ip_filter(1006)
    batch = bpfjit.Batch.from_packets([IPV4_FRAME, bytes(60), IPV4_FRAME[:13]] * 100)
    expected = [262144, 0, 0] * 100
    errors: list[object] = []

    def work() -> None:
        for _ in range(40):
            if f.run_batch(batch).tolist() != expected or f(IPV4_FRAME) != 262144:
                errors.append("mismatch")

    _in_threads(work, 6)
    assert errors == [] and f.optimized


def test_a_test_between_two_constant_returns_is_a_select() -> None:
    # tcpdump's `ip and udp`-style ending: jeq #17 -> ret #262144 / ret #0. No branch on the
    # protocol byte: a select (a mixed stream would make the predictor miss that branch often).
    program = Program.from_expr("udp")
    f = bpfjit.compile(program)
    assert "select i1" in f.llvm_ir
    for proto, expected in ((17, 262144), (6, 0)):
        frame = bytes(12) + b"\x08\x00" + bytes(9) + bytes([proto]) + bytes(40)
        assert f(frame) == bpfjit.interpret(program, frame) == expected
        assert f.tier_up()(frame) == expected
