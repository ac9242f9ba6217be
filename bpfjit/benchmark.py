"""The benchmark harness: `python -m bench` or `bpfjit bench`.

In one process and one run, for every filter of a suite (real tcpdump expressions and synthetic
worst cases) over one generated packet mix (`packetmix`), it measures:

    interpreter      bpfjit.interpret(program, p), the pure-Python reference, per packet
    JIT f(p)         the filter's native vectorcall entry, per packet from Python
    JIT f.call(p)    the checked ctypes path, per packet
    libpcap ctypes   libpcap's bpf_filter through ctypes (LibpcapProgram), per packet
    JIT batch        f.run_batch(batch): bpfjit's native loop over the batch, the filter inlined
    libpcap loop     libpcap's bpf_filter called from a native loop over the same batch, built by
                     `lower.lower_batch` too, so both loops have the same shape (`libpcap_loop`)
    compile          cold (a program never compiled before) and cached (a live filter's program)

Rounds interleave the methods (in a fresh seeded order per filter and round) and repeat them;
each method's samples give median, min and max. Times are this thread's CPU time (wall-clock times
are kept too), so other processes' time slices on a shared machine do not count. Speedups are
paired: each round's libpcap-loop sample divided by that round's sample of the other method, then
the median of those ratios, so slow phases of a noisy machine hit both sides. Every method's
verdicts are checked against the others before anything is timed. Outputs, in --out (bench/out/):
the terminal table (`table.txt`), `results.json` (every sample), `table.md` and `bench.png`.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import functools
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from . import __version__, packetmix
from .analysis import bounds_plan
from .batch import Batch
from .libpcap_loop import LIBPCAP_SYMBOL, LibpcapLoop  # noqa: F401 (both importable from here, as bench scripts do)
from .opcodes import BPF_K, BPF_RET, OPCODES
from .program import Insn, Program

if TYPE_CHECKING:
    from .filter import Filter
    from .libpcap import LibpcapProgram

DEFAULT_OUT = Path("bench") / "out"
README_BEGIN, README_END = "<!-- bench:begin -->", "<!-- bench:end -->"
DOCS_CHART = Path("docs") / "bench.png"

# -- the suite ---------------------------------------------------------------------------------------
PORTS_13 = "20 or 21 or 22 or 23 or 25 or 53 or 80 or 110 or 143 or 443 or 993 or 995 or 8080"
HTTP_GET = "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420"
REAL_FILTERS: tuple[tuple[str, str], ...] = (
    ("ip", "ip"),
    ("tcp", "tcp"),
    ("host", f"host {packetmix.BUSY_HOST}"),
    ("tcp port 80", "tcp port 80"),
    ("dns or ntp", "udp and (port 53 or port 123)"),
    ("net, not ssh", f"net {packetmix.LOCAL_NET} and not port 22"),
    ("syn or fin", "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0"),
    ("http get", HTTP_GET),
    ("13 ports", f"port ({PORTS_13})"),
    ("vlan and ip", "vlan and ip"),
    ("ip6 tcp 80", "ip6 and tcp port 80"),
    ("fragments", "ip[6:2] & 0x3fff != 0"),
    ("icmp or arp", "icmp or arp"),
    ("long frames", "greater 1000"),
    ("vlan web/dns", "vlan and (tcp port 80 or udp port 53)"),
    ("hosts x services",
     f"(host {packetmix.BUSY_HOST} or net 192.168.0.0/16) and (tcp port 443 or udp port 53 or udp port 123)"),
)  # fmt: skip
"""(label, pcap-filter expression) of the real filters: from 4 to 60 instructions."""


def _alu_chain(length: int = 128) -> str:
    """Many ALU operations on one loaded word, by constants and by X, then one test."""
    ops = ("add #0x9e3779b9", "xor x", "mul #0x01000193", "rsh #7", "or #0x10", "sub x", "lsh #3",
           "and #0x7fffffff", "neg", "xor #0x5bd1e995", "add x", "mod #65521")  # fmt: skip
    body = "\n".join(ops[i % len(ops)] for i in range(length))
    # The test reads a bit no constant operation could fix, so LLVM cannot fold the chain away.
    tail = "rsh #13\nxor x\njset #0x100, keep, drop"
    return f"ld [26]\nldx #0x2545f491\n{body}\n{tail}\nkeep: ret #262144\ndrop: ret #0"


def _indexed_loads(count: int = 32) -> str:
    """Many `[x + k]` loads past a variable-length IPv4 header, each with its own runtime check."""
    tests = "\n".join(f"ldh [x + {14 + 2 * i}]\njeq #{0xFFF0 + i % 16}, keep" for i in range(count))
    return f"ldh [12]\njne #0x800, drop\nldxb 4*([14]&0xf)\n{tests}\ndrop: ret #0\nkeep: ret #262144"


def _division(rounds: int = 16) -> str:
    """Division and modulo by X (checked for X == 0 at run time) and by constants."""
    # The multiplication after `mod x` spreads the value again, so no range analysis folds the test.
    step = "div x\nadd #0x12345\nmod #1000003\nmul #2654435761\nmod x\nadd #7\nmul #0x9e3779b1\ndiv #3"
    body = "\n".join(step for _ in range(rounds))
    return f"ld [26]\nldxb 4*([14]&0xf)\n{body}\njgt #0x20000000, keep, drop\nkeep: ret #262144\ndrop: ret #0"


def _scratch() -> str:
    """All 16 scratch words written from packet bytes, then read back and combined through X."""
    stores = "\n".join(f"ldb [{14 + i}]\nadd #{i}\nst M[{i}]" for i in range(16))
    sums = "\n".join(f"ld M[{i}]\nadd x\ntax" for i in range(1, 16))
    return f"{stores}\nldx M[0]\n{sums}\ntxa\njset #4, keep, drop\nkeep: ret #262144\ndrop: ret #0"


SYNTHETIC_FILTERS: tuple[tuple[str, Callable[[], str]], ...] = (
    ("alu chain x128", _alu_chain),
    ("32 indexed loads", _indexed_loads),
    ("div/mod chain", _division),
    ("scratch M[0..15]", _scratch),
)
"""(label, bpf_asm source) of the synthetic worst cases."""


@dataclass(frozen=True)
class Case:
    """One filter of the suite."""

    name: str
    program: Program
    source: str  # the expression, or the bpf_asm text of a synthetic program
    real: bool

    @property
    def loads(self) -> int:
        return sum(1 for insn in self.program if OPCODES[insn.code].kind in ("ld_abs", "ld_ind", "ldx_msh"))

    @property
    def static_checks(self) -> int:
        """Length checks the JIT emits after merging (`analysis.bounds_plan`)."""
        return len(bounds_plan(self.program).checks)

    @property
    def dynamic_checks(self) -> int:
        """`[x + k]` loads: each keeps its own check, X being known only at run time."""
        return sum(1 for insn in self.program if OPCODES[insn.code].kind == "ld_ind")


def suite(names: Sequence[str] = ()) -> list[Case]:
    """The benchmark suite; with `names`, only the cases whose label contains one of them."""
    cases = [Case(label, Program.from_expr(expr), expr, True) for label, expr in REAL_FILTERS]
    cases += [Case(label, Program.parse(make()), make(), False) for label, make in SYNTHETIC_FILTERS]
    if names:
        cases = [c for c in cases if any(n.lower() in c.name.lower() for n in names)]
    return cases


# -- methods -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    key: str
    label: str
    what: str
    per_packet: bool = True  # False: the sample is the time of one compile


METHODS: tuple[Method, ...] = (
    Method("interpreter", "interpreter", "bpfjit.interpret(program, p): the pure-Python reference, per packet"),
    Method("jit_call", "JIT f(p)", "f(p): the native vectorcall entry, called per packet from Python"),
    Method("jit_ctypes", "JIT f.call(p)", "f.call(p): the checked ctypes path, per packet"),
    Method("libpcap_ctypes", "libpcap ctypes", "libpcap's bpf_filter through ctypes (LibpcapProgram), per packet"),
    Method("jit_batch", "JIT batch", "f.run_batch(batch): bpfjit's native loop, the filter inlined"),
    Method("jit_batch_baseline", "JIT batch, baseline tier",
           "the same loop machine-coded by the baseline tier (what a filter runs before it tiers up)"),
    Method("libpcap_batch", "libpcap loop", "libpcap's bpf_filter called from an LLVM-built loop of the same shape"),
    Method("compile_cold", "compile cold",
           "bpfjit.compile(program) of a program never compiled before: the baseline tier, ready to run", False),
    Method("compile_tier_up", "compile + tier-up",
           "bpfjit.compile(program).tier_up() of a program never compiled before: both tiers", False),
    Method("compile_cached", "compile cached", "bpfjit.compile(program) while a Filter of it is alive", False),
)
METHOD = {m.key: m for m in METHODS}
PACKET_METHODS = tuple(m.key for m in METHODS if m.per_packet)
BASELINE = "libpcap_batch"


@dataclass(frozen=True)
class Settings:
    count: int = 100_000
    seed: int = 1
    rounds: int = 7
    per_packet: int = 20_000  # packets of the mix the per-packet methods are timed on
    interpreted: int = 1_000  # packets of the mix the interpreter is timed on (it is slow)
    min_sample_ms: float = 5.0  # a batch sample repeats its loop until it lasts this long
    cached_compiles: int = 200  # compiles per cached-compile sample
    opt_level: int = 2
    quick: bool = False

    @classmethod
    def quick_run(cls, **overrides: Any) -> Settings:
        base = {"count": 2_000, "rounds": 2, "per_packet": 500, "interpreted": 40, "min_sample_ms": 0.5,
                "cached_compiles": 20, "quick": True}  # fmt: skip
        return cls(**{**base, **overrides})


# -- measuring ---------------------------------------------------------------------------------------
class MismatchError(AssertionError):
    """Two methods disagreed on a packet's verdict: the numbers would be meaningless."""


@dataclass
class Inputs:
    batch: Batch
    packets: list[bytes]  # the first `per_packet` packets of the mix, for the per-packet methods
    wirelens: list[int]
    interpreted: list[bytes]  # the first `interpreted` of them, for the interpreter
    out: npt.NDArray[np.uint32] = field(init=False)  # where both batch loops write their verdicts

    def __post_init__(self) -> None:
        self.out = np.empty(len(self.batch), dtype=np.uint32)


def _timed(run: Callable[[], object], repeat: int) -> tuple[int, int]:
    """(CPU, wall) nanoseconds of `repeat` calls of `run`, the garbage collector held off (as timeit does).

    The CPU time is this thread's (CLOCK_THREAD_CPUTIME_ID): on a shared machine, time slices given
    to other processes inflate wall-clock samples several-fold but not this one (checked here: with
    two busy processes on two CPUs, wall-clock ratios swung from 2x to 7x, CPU-time ratios stayed 2.0-2.2x).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(repeat):
            run()
        return time.thread_time_ns() - cpu, time.perf_counter_ns() - wall
    finally:
        if enabled:
            gc.enable()


Work = tuple[Callable[[], object], int]  # a no-argument callable doing one unit of work, and its item count
_sink = collections.deque[object](maxlen=0).extend  # consumes a map without keeping anything


def _interpreter(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    from .interpret import interpret

    reference = functools.partial(interpret, s.case.program)
    return lambda: _sink(map(reference, inputs.interpreted)), len(inputs.interpreted)


def _jit_call(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    f = s.filter
    return lambda: _sink(map(f, inputs.packets)), len(inputs.packets)


def _jit_ctypes(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    call = s.filter.call
    return lambda: _sink(map(call, inputs.packets)), len(inputs.packets)


def _libpcap_ctypes(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    pcap = s.libpcap
    return lambda: _sink(map(pcap, inputs.packets)), len(inputs.packets)


def _jit_batch(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    return lambda: s.filter.run_batch(inputs.batch, inputs.out), len(inputs.batch)


def _jit_batch_baseline(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    from .filter import compile as jit_compile

    # Another Filter of the same program (same code), pinned to its baseline tier: no tier-up.
    baseline = jit_compile(s.filter.program, opt_level=s.filter.opt_level).use_tier("baseline")
    return lambda: baseline.run_batch(inputs.batch, inputs.out), len(inputs.batch)


def _libpcap_batch(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    return lambda: s.loop.run_batch(inputs.batch, inputs.out), len(inputs.batch)


def _compile_cold(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    from .filter import compile as jit_compile

    fresh = _fresh_variant(s.case.program)  # made before the clock starts
    return lambda: jit_compile(fresh, opt_level=settings.opt_level), 1


def _compile_tier_up(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    from .filter import compile as jit_compile

    fresh = _fresh_variant(s.case.program)
    return lambda: jit_compile(fresh, opt_level=settings.opt_level).tier_up(), 1


def _compile_cached(s: Subject, inputs: Inputs, settings: Settings) -> Work:
    from .filter import compile as jit_compile

    program, level = s.case.program, settings.opt_level
    return lambda: jit_compile(program, opt_level=level), 1


WORK: dict[str, Callable[[Subject, Inputs, Settings], Work]] = {
    "interpreter": _interpreter, "jit_call": _jit_call, "jit_ctypes": _jit_ctypes, "libpcap_ctypes": _libpcap_ctypes,
    "jit_batch": _jit_batch, "jit_batch_baseline": _jit_batch_baseline, "libpcap_batch": _libpcap_batch,
    "compile_cold": _compile_cold, "compile_tier_up": _compile_tier_up, "compile_cached": _compile_cached,
}  # fmt: skip
BATCH_METHODS = ("jit_batch", "jit_batch_baseline", "libpcap_batch")


@dataclass
class Subject:
    """A suite case ready to measure: its compiled filter, its libpcap program and loop, samples."""

    case: Case
    filter: Filter
    libpcap: LibpcapProgram
    loop: LibpcapLoop
    samples: dict[str, list[float]] = field(default_factory=dict)  # CPU ns per packet (per compile)
    wall: dict[str, list[float]] = field(default_factory=dict)  # the same, by the wall clock
    repeats: dict[str, int] = field(default_factory=dict)
    accepted: float = 0.0

    def sample(self, key: str, inputs: Inputs, settings: Settings) -> None:
        """Take one sample of method `key`: nanoseconds per packet (per compile for compiles)."""
        run, items = WORK[key](self, inputs, settings)
        repeat = self._repeat(key, run, settings)
        if key in BATCH_METHODS:
            # One untimed pass first, so both loops start from the same cache state (as warm as one
            # pass over the mix leaves it), whichever method ran before them.
            run()
        cpu, wall = _timed(run, repeat)
        self.samples.setdefault(key, []).append(cpu / (repeat * items))
        self.wall.setdefault(key, []).append(wall / (repeat * items))

    def _repeat(self, key: str, run: Callable[[], object], settings: Settings) -> int:
        """Calls per sample: batch loops repeat until a sample lasts `min_sample_ms` (sized once)."""
        if key == "compile_cached":
            return settings.cached_compiles
        if key not in BATCH_METHODS:
            return 1
        if key not in self.repeats:
            warm = max(_timed(run, 1)[0], 1)
            self.repeats[key] = int(settings.min_sample_ms * 1e6 / warm) + 1
        return self.repeats[key]


_variants = iter(range(1, 1 << 31))


def _fresh_variant(program: Program) -> Program:
    """The program plus one unreachable `ret #n` (n never used before): a cache key no compile has
    seen, which lowers to the same machine code (the dead block is deleted)."""
    return Program([*program, Insn(BPF_RET | BPF_K, 0, 0, next(_variants))])


def _prepare(cases: Sequence[Case], settings: Settings, inputs: Inputs) -> list[Subject]:
    from .filter import compile as jit_compile
    from .libpcap import LibpcapProgram

    subjects = []
    for case in cases:
        # Throughput is measured on the optimising tier, which any filter reaches after 2^17 packets.
        f = jit_compile(case.program, opt_level=settings.opt_level).tier_up()
        subject = Subject(case, f, LibpcapProgram(case.program), LibpcapLoop(case.program, settings.opt_level))
        _check(subject, inputs)
        subjects.append(subject)
    return subjects


def _check(subject: Subject, inputs: Inputs) -> None:
    """Every method gives the same verdicts (JIT and libpcap loops on the whole mix, the others on samples)."""
    from .interpret import interpret

    batch = inputs.batch
    jit = subject.filter.run_batch(batch)
    pcap = subject.loop.run_batch(batch, inputs.out).copy()
    name = subject.case.name
    if not np.array_equal(jit, pcap):
        bad = int(np.flatnonzero(jit != pcap)[0])
        raise MismatchError(f"{name}: packet {bad}: JIT batch {int(jit[bad])}, libpcap loop {int(pcap[bad])}")
    run_baseline, _ = _jit_batch_baseline(subject, inputs, Settings())
    run_baseline()
    if not np.array_equal(jit, inputs.out):
        bad = int(np.flatnonzero(jit != inputs.out)[0])
        raise MismatchError(f"{name}: packet {bad}: JIT batch {int(jit[bad])}, baseline tier {int(inputs.out[bad])}")
    subject.accepted = float(np.count_nonzero(jit)) / max(1, len(batch))
    f, program = subject.filter, subject.case.program
    for i, (packet, wirelen) in enumerate(zip(inputs.packets, inputs.wirelens, strict=True)):
        results = {
            "JIT f.call": f.call(packet, wirelen),
            "libpcap ctypes": subject.libpcap(packet, wirelen),
            "JIT f(p)": f(packet) if wirelen == len(packet) else int(jit[i]),  # f(p) assumes wirelen == caplen
        }
        if i < len(inputs.interpreted):
            results["interpreter"] = interpret(program, packet, wirelen)
        for method, value in results.items():
            if value != jit[i]:
                raise MismatchError(f"{name}: packet {i}: {method} {value}, JIT batch {int(jit[i])}")


def measure(cases: Sequence[Case], settings: Settings, progress: Callable[[str], None] | None = None) -> Report:
    """Run the whole benchmark: prepare every case, then `settings.rounds` interleaved rounds. The
    disk cache of compiled code is off meanwhile: a cold compile must generate code, not load it."""
    saved = os.environ.get("BPFJIT_CACHE")
    os.environ["BPFJIT_CACHE"] = "off"
    try:
        return _measure(cases, settings, progress)
    finally:
        if saved is None:
            del os.environ["BPFJIT_CACHE"]
        else:
            os.environ["BPFJIT_CACHE"] = saved


def _measure(cases: Sequence[Case], settings: Settings, progress: Callable[[str], None] | None) -> Report:
    started = time.time()
    mix_start = time.perf_counter()
    batch = packetmix.generate(settings.count, settings.seed)
    mix_seconds = time.perf_counter() - mix_start
    per_packet = packetmix.to_list(batch)[: settings.per_packet]
    inputs = Inputs(
        batch=batch,
        packets=[p for p, _ in per_packet],
        wirelens=[w for _, w in per_packet],
        interpreted=[p for p, _ in per_packet[: settings.interpreted]],
    )
    from .filter import compile as jit_compile

    jit_compile(Program([Insn(BPF_RET | BPF_K, 0, 0, 1)]))  # LLVM's one-time set-up is not a cold compile
    subjects = _prepare(cases, settings, inputs)
    keys = [m.key for m in METHODS]
    shuffle = random.Random(settings.seed)
    for round_index in range(settings.rounds):
        if progress:
            progress(f"round {round_index + 1}/{settings.rounds}")
        for subject in subjects:
            # A fresh order per filter and round: a fixed or rotated one would always run the same
            # method after the same neighbour (libpcap's loop right after the JIT's, on data it warmed).
            for key in shuffle.sample(keys, len(keys)):
                subject.sample(key, inputs, settings)
    return Report(settings, subjects, batch, mix_seconds, started, time.time() - started)


# -- results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Stats:
        return cls(statistics.median(samples), min(samples), max(samples))


def _paired_speedup(baseline: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of baseline / other: how many times faster `other` is, round by round."""
    return statistics.median(b / o for b, o in zip(baseline, other, strict=True))


@dataclass(frozen=True)
class Target:
    name: str
    value: str
    goal: str
    met: bool


@dataclass
class Report:
    settings: Settings
    subjects: list[Subject]
    batch: Batch
    mix_seconds: float
    started: float
    elapsed: float

    def stats(self, subject: Subject, key: str) -> Stats:
        return Stats.of(subject.samples[key])

    def speedup(self, subject: Subject, key: str, baseline: str = BASELINE) -> float:
        return _paired_speedup(subject.samples[baseline], subject.samples[key])

    def find(self, name: str) -> Subject | None:
        return next((s for s in self.subjects if s.case.name == name), None)

    def targets(self) -> list[Target]:
        """The issue's targets, judged on this run's numbers."""
        out: list[Target] = []
        real = [s for s in self.subjects if s.case.real]
        if real:
            worst = min(real, key=lambda s: self.speedup(s, "jit_batch"))
            slow = [s.case.name for s in real if self.speedup(s, "jit_batch") < 2.0]
            out.append(Target(
                "JIT batch vs libpcap loop, every real filter",
                f"{self.speedup(worst, 'jit_batch'):.1f}x at worst ({worst.case.name})"
                + (f"; under 2x: {', '.join(slow)}" if slow else ""),
                ">= 2x", not slow,
            ))  # fmt: skip
        port80 = self.find("tcp port 80")
        if port80 is not None:
            vs_interp = _paired_speedup(port80.samples["interpreter"], port80.samples["jit_call"])
            vs_pcap = _paired_speedup(port80.samples["libpcap_ctypes"], port80.samples["jit_call"])
            out.append(Target("JIT f(p) vs interpreter, tcp port 80", f"{vs_interp:.0f}x", ">= 10x", vs_interp >= 10))
            out.append(Target("JIT f(p) vs libpcap ctypes, tcp port 80", f"{vs_pcap:.1f}x", "> 1x", vs_pcap > 1))
        if self.subjects:
            cold = statistics.median(self.stats(s, "compile_cold").median for s in self.subjects) / 1e6
            both = statistics.median(self.stats(s, "compile_tier_up").median for s in self.subjects) / 1e6
            cached = max(self.stats(s, "compile_cached").median for s in self.subjects) / 1e3
            out.append(Target(
                "cold compile, median of the suite",
                f"{cold:.1f} ms (with the tier-up to optimised code: {both:.1f} ms)", "< 10 ms", cold < 10,
            ))  # fmt: skip
            out.append(Target("cached compile, slowest filter", f"{cached:.1f} µs", "< 100 µs", cached < 100))
        return out

    def to_json(self) -> dict[str, Any]:
        batch = self.batch
        return {
            "bpfjit": __version__,
            "environment": _environment(),
            "started": datetime.datetime.fromtimestamp(self.started, datetime.timezone.utc).isoformat(),
            "elapsed_s": round(self.elapsed, 3),
            "settings": self.settings.__dict__,
            "mix": {
                "packets": len(batch),
                "bytes": int(batch.caplens.sum(dtype=np.int64)),
                "truncated": int(np.count_nonzero(batch.caplens < batch.wirelens)),
                "generate_s": round(self.mix_seconds, 3),
            },
            "methods": {m.key: _method_json(m) for m in METHODS},
            "clock": "samples: this thread's CPU time (CLOCK_THREAD_CPUTIME_ID); wall_samples: perf_counter",
            "speedup": f"paired: median over rounds of {BASELINE} / method (> 1: faster than libpcap's loop)",
            "filters": [self._filter_json(s) for s in self.subjects],
            "targets": [t.__dict__ for t in self.targets()],
        }

    def _filter_json(self, s: Subject) -> dict[str, Any]:
        case = s.case
        return {
            "name": case.name,
            "source": case.source,
            "real": case.real,
            "insns": len(case.program),
            "loads": case.loads,
            "static_checks": case.static_checks,
            "dynamic_checks": case.dynamic_checks,
            "accepted": round(s.accepted, 5),
            "repeats": s.repeats,
            "samples": s.samples,
            "wall_samples": s.wall,
            "stats": {key: self.stats(s, key).__dict__ for key in s.samples},
            "speedup": {key: self.speedup(s, key) for key in PACKET_METHODS},
        }


def _method_json(m: Method) -> dict[str, str]:
    return {"label": m.label, "what": m.what, "unit": "ns per packet" if m.per_packet else "ns per compile"}


def _environment() -> dict[str, Any]:
    import llvmlite

    from . import libpcap, native

    llvm = native.binding()
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "llvmlite": llvmlite.__version__,
        "llvm": ".".join(map(str, llvm.llvm_version_info)),
        "numpy": np.__version__,
        "libpcap": libpcap.version(),
    }


# -- presenting --------------------------------------------------------------------------------------
def _ns(value: float) -> str:
    """A duration in ns, at a readable precision and unit."""
    if value >= 1e6:
        return f"{value / 1e6:.1f} ms"
    if value >= 1e4:
        return f"{value / 1e3:.1f} µs"
    if value >= 100:
        return f"{value:.0f} ns"
    return f"{value:.1f} ns"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> list[str]:
    """Plain aligned columns: the first `left` columns left-aligned, the rest right-aligned."""
    rows = [list(header), *map(list, rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render(report: Report) -> str:
    """The terminal report: per-packet times, spreads, compile and bounds checks, targets."""
    s = report.settings
    batch = report.batch
    env = _environment()
    truncated = int(np.count_nonzero(batch.caplens < batch.wirelens))
    lines = [
        f"bpfjit {__version__} benchmark — {env['cpu']} ({env['cpus']} cpus), Python {env['python']}, "
        f"LLVM {env['llvm']}, {env['libpcap']}",
        f"mix: {len(batch):,} packets (seed {s.seed}), {batch.caplens.sum(dtype=np.int64) / 1e6:.1f} MB, "
        f"{truncated:,} truncated; per-packet methods on {s.per_packet:,} "
        f"packets, the interpreter on {s.interpreted:,}; {s.rounds} interleaved rounds"
        + (" (--quick: numbers are indicative only)" if s.quick else ""),
        "",
        "ns per packet, median of the rounds; 'x pcap' = JIT batch speedup over libpcap's loop (paired)",
    ]
    header = ["filter", "insns", "match", *(METHOD[k].label for k in PACKET_METHODS), "x pcap", "Mpps"]
    rows = []
    for sub in report.subjects:
        batch_ns = report.stats(sub, "jit_batch").median
        rows.append([
            sub.case.name + ("" if sub.case.real else " *"), str(len(sub.case.program)), f"{100 * sub.accepted:.1f}%",
            *(_ns(report.stats(sub, k).median) for k in PACKET_METHODS),
            f"{report.speedup(sub, 'jit_batch'):.1f}x", f"{1e3 / batch_ns:.0f}",
        ])  # fmt: skip
    lines += _table(header, rows)
    lines += ["(* synthetic worst case)", "", "spread: min – max ns per packet over the rounds"]
    rows = [
        [sub.case.name, *(f"{_ns(report.stats(sub, k).min)} – {_ns(report.stats(sub, k).max)}" for k in PACKET_METHODS)]
        for sub in report.subjects
    ]
    lines += _table(["filter", *(METHOD[k].label for k in PACKET_METHODS)], rows)
    lines += ["", "compile time (median [min – max]) and bounds checks (static after merging + dynamic [x+k])"]
    rows = []
    for sub in report.subjects:
        case = sub.case
        rows.append([
            case.name, str(len(case.program)), str(case.loads), f"{case.static_checks} + {case.dynamic_checks}",
            *(_spread(report.stats(sub, k)) for k in ("compile_cold", "compile_tier_up", "compile_cached")),
        ])  # fmt: skip
    lines += _table(["filter", "insns", "loads", "checks", "cold compile", "compile + tier-up", "cached compile"], rows)
    lines += ["", "targets:"]
    for t in report.targets():
        lines.append(f"  [{'met' if t.met else 'MISSED'}] {t.name}: {t.value} (goal {t.goal})")
    return "\n".join(lines) + "\n"


def _spread(stats: Stats) -> str:
    return f"{_ns(stats.median)} [{_ns(stats.min)} – {_ns(stats.max)}]"


HEADLINE = ("interpreter", "jit_call", "libpcap_ctypes", "jit_batch", "jit_batch_baseline", "libpcap_batch")


def markdown(report: Report) -> str:
    """The README's headline table: real filters, ns per packet, batch speedup, cold compile."""
    header = ["filter", "insns", *(METHOD[k].label for k in HEADLINE), "JIT batch vs libpcap loop", "cold compile",
              "+ tier-up"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header) - 1)) + "|"]
    for sub in report.subjects:
        cells = [
            f"`{sub.case.source}`" if sub.case.real else f"{sub.case.name} (synthetic)", str(len(sub.case.program)),
            *(_ns(report.stats(sub, k).median) for k in HEADLINE),
            f"{report.speedup(sub, 'jit_batch'):.1f}x", _ns(report.stats(sub, "compile_cold").median),
            _ns(report.stats(sub, "compile_tier_up").median),
        ]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    env = _environment()
    s = report.settings
    lines += [
        "",
        f"ns per packet, median of {s.rounds} interleaved rounds over {s.count:,} generated packets (per-packet "
        f"calls from Python on {s.per_packet:,}, the interpreter on {s.interpreted:,}); {env['cpu']}, "
        f"Python {env['python']}, LLVM {env['llvm']}, {env['libpcap']}. Targets in this run:",
        "",
        *(f"- {'met' if t.met else '**missed**'}: {t.name}: {t.value} (goal {t.goal})" for t in report.targets()),
    ]
    return "\n".join(lines) + "\n"


CHART_METHODS = ("interpreter", "libpcap_ctypes", "jit_ctypes", "jit_call", "libpcap_batch", "jit_batch")


def chart(report: Report, path: Path) -> Path | None:
    """A bar chart of ns per packet per method per filter (log scale); None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("no chart: matplotlib is missing (pip install 'bpfjit[bench]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = report.subjects
    fig, ax = plt.subplots(figsize=(10.5, 1.2 + 0.42 * len(subjects)), dpi=90)
    height = 0.8 / len(CHART_METHODS)
    colors = ("#9e9e9e", "#ef9a9a", "#90caf9", "#1e88e5", "#c62828", "#0d47a1")
    positions = np.arange(len(subjects))
    for i, key in enumerate(CHART_METHODS):
        values = [report.stats(s, key).median for s in subjects]
        ax.barh(positions + (i - (len(CHART_METHODS) - 1) / 2) * height, values, height, label=METHOD[key].label,
                color=colors[i])  # fmt: skip
    ax.set_xscale("log")
    ax.set_yticks(positions)
    ax.set_yticklabels([s.case.name + ("" if s.case.real else " *") for s in subjects], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ns per packet (log scale; lower is faster)")
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.set_title(f"bpfjit {__version__}: ns per packet, median of {report.settings.rounds} rounds (* synthetic)",
                 fontsize=10)  # fmt: skip
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)  # beside, covering nothing
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def update_readme(readme: Path, table: str, image: str) -> bool:
    """Replace the README's text between the bench markers with `table` and the chart; False if no markers."""
    text = readme.read_text(encoding="utf-8")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        return False
    block = f"{README_BEGIN}\n{table}\n![ns per packet per method and filter]({image})\n{README_END}"
    readme.write_text(text[:begin] + block + text[end + len(README_END) :], encoding="utf-8")
    return True


# -- the command -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The harness's options (shared by `python -m bench` and `bpfjit bench`)."""
    parser.add_argument("--quick", action="store_true", help="a small mix and 2 rounds: proves it works in seconds")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--count", type=int, help="packets in the mix (default 100000; --quick 2000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the packet mix (default 1)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7; --quick 2)")
    parser.add_argument("--filter", action="append", default=[], metavar="NAME",
                        help="only the suite filters whose name contains NAME (repeatable)")  # fmt: skip
    parser.add_argument("--opt-level", type=int, default=2, choices=(0, 1, 2, 3))
    parser.add_argument("--readme", action="store_true",
                        help=f"also write the chart to {DOCS_CHART} and the headline table into README.md")  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the suite and exit")


def run(args: argparse.Namespace) -> int:
    """Run the harness as `args` ask; write the outputs; 0, or 1 if two methods disagreed."""
    cases = suite(args.filter)
    if args.list:
        for case in cases:
            kind = "real" if case.real else "synthetic"
            source = case.source if case.real else case.source.splitlines()[0] + " ..."
            print(f"{case.name:<18} {len(case.program):4d} insns  {kind:<9}  {source}")
        return 0
    if not cases:
        print(f"bench: no suite filter matches {args.filter}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("count", args.count), ("rounds", args.rounds)) if v is not None}
    overrides.update(seed=args.seed, opt_level=args.opt_level)
    settings = Settings.quick_run(**overrides) if args.quick else Settings(**overrides)
    if settings.rounds < 1 or settings.count < 1:
        print("bench: --rounds and --count must be at least 1", file=sys.stderr)
        return 2
    settings = Settings(**{**settings.__dict__, "per_packet": min(settings.per_packet, settings.count)})
    try:
        report = measure(cases, settings, progress=lambda text: print(f"bench: {text}", file=sys.stderr, flush=True))
    except MismatchError as error:
        print(f"bench: MISMATCH {error}", file=sys.stderr)
        return 1
    text = render(report)
    sys.stdout.write(text)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.json", "w", encoding="utf-8") as handle:
        json.dump(report.to_json(), handle, indent=1)
    (out / "table.txt").write_text(text, encoding="utf-8")
    table = markdown(report)
    (out / "table.md").write_text(table, encoding="utf-8")
    written = [out / "results.json", out / "table.txt", out / "table.md"]
    png = chart(report, out / "bench.png")
    if png is not None:
        written.append(png)
    if args.readme:
        docs_png = chart(report, DOCS_CHART)
        if docs_png is not None:
            written.append(docs_png)
        if update_readme(Path("README.md"), table, DOCS_CHART.as_posix()):
            written.append(Path("README.md"))
        else:
            print(f"bench: README.md has no {README_BEGIN} ... {README_END} block to update", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="bpfjit's benchmark harness: see bpfjit/benchmark.py.")
    add_arguments(parser)
    return run(parser.parse_args(argv))
