"""Where a cold compile goes, stage by stage, for every filter of the benchmark suite.

    python bench/compile_stages.py [--rounds 5]

Each round compiles a variant of every suite program that no compile has seen (an unreachable
`ret #n` appended), through the same steps as `bpfjit.compile`, timing each one in CPU ms:
validate, lower (build the IR in Python), print (IR to text), parse, verify, the IR passes, then
machine code for the baseline tier and, from the same optimised IR, for the optimised tier (the
tier-up). The last lines are the medians over the suite; compiles run back to back here, so their
caches are warmer than in `python -m bench`, where other methods run in between.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

from bpfjit import Insn, Program, benchmark, lower, native
from bpfjit.filter import BASELINE_CODEGEN
from bpfjit.opcodes import BPF_K, BPF_RET
from bpfjit.validate import validate

STAGES = ("validate", "lower", "print", "parse", "verify", "IR passes", "baseline code", "tier-up code")


def compile_in_stages(program: Program, name: str, opt_level: int = 2) -> dict[str, float]:
    """CPU ms of each stage of one cold compile (and of its tier-up)."""
    times: dict[str, float] = {}

    def timed(stage: str, step: Callable[[], object]) -> object:
        start = time.process_time_ns()
        result = step()
        times[stage] = (time.process_time_ns() - start) / 1e6
        return result

    llvm = native.binding()
    with native.LLVM_LOCK:
        timed("validate", lambda: validate(program))
        module = lower.new_module(name)
        timed("lower", lambda: lower.lower_program_batch(module, program, name))
        module.triple = native.process_triple()
        text = timed("print", lambda: str(module))
        parsed = timed("parse", lambda: llvm.parse_assembly(text))
        timed("verify", parsed.verify)
        timed("IR passes", lambda: native.optimize(parsed, opt_level))
        names = {name}
        start_code = time.process_time_ns()
        code = native.generate(parsed, names, BASELINE_CODEGEN, (name,), ())
        times["baseline code"] = (time.process_time_ns() - start_code) / 1e6
        timed("tier-up code", lambda: native.recompile(code, opt_level, (name,)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases = benchmark.suite()
    native.build(lower.new_module("warm_up"), 2, ())  # LLVM's one-time set-up is not a cold compile
    serial = itertools.count(1)
    samples: dict[str, dict[str, list[float]]] = {c.name: {s: [] for s in STAGES} for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            n = next(serial)
            fresh = Program([*case.program, Insn(BPF_RET | BPF_K, 0, 0, n)])
            for stage, ms in compile_in_stages(fresh, f"stages_{n}").items():
                samples[case.name][stage].append(ms)
    width = max(len(c.name) for c in cases)
    print(f"{'filter':<{width}} " + " ".join(f"{s:>13}" for s in STAGES) + "  cold compile")
    medians: dict[str, dict[str, float]] = {}
    for case in cases:
        medians[case.name] = {s: statistics.median(v) for s, v in samples[case.name].items()}
        row = medians[case.name]
        print(f"{case.name:<{width}} " + " ".join(f"{row[s]:13.2f}" for s in STAGES) + f"  {_cold(row):12.2f}")
    suite = {s: statistics.median(m[s] for m in medians.values()) for s in STAGES}
    cold = statistics.median(_cold(m) for m in medians.values())
    print(f"{'median':<{width}} " + " ".join(f"{suite[s]:13.2f}" for s in STAGES) + f"  {cold:12.2f}")


def _cold(stages: dict[str, float]) -> float:
    """A cold compile: every stage up to the baseline tier's code."""
    return sum(ms for stage, ms in stages.items() if stage != "tier-up code")


if __name__ == "__main__":
    main()
