"""Where a cold compile goes, stage by stage, for every filter of the benchmark suite.

    python bench/compile_stages.py [--rounds 5]

Each round compiles a variant of every suite program that no compile has seen (an unreachable
`ret #n` appended) through `bpfjit.pipeline.STAGES` - the very calls `bpfjit.compile` makes:
validate, analyse, lower (build the IR in Python), translate (IR to text, parsed and verified by
LLVM), optimise (the IR passes), generate (the baseline tier's machine code) - timing each in CPU ms,
then the tier-up (the optimised tier's machine code, from the same optimised IR). The last line
holds the medians over the suite; compiles run back to back here, so their caches are warmer than in
`python -m bench`, where other methods run in between.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

from bpfjit import Insn, Program, benchmark, native, pipeline
from bpfjit.opcodes import BPF_K, BPF_RET

TIER_UP = "tier-up"
STAGES = (*(name for name, _ in pipeline.STAGES), TIER_UP)


def compile_in_stages(program: Program, name: str, opt_level: int = 2) -> dict[str, float]:
    """CPU ms of each stage of one cold compile (and of its tier-up)."""
    times: dict[str, float] = {}

    def timed(stage_name: str, stage: pipeline.Stage, compilation: pipeline.Compilation) -> None:
        start = time.process_time_ns()
        stage(compilation)
        times[stage_name] = (time.process_time_ns() - start) / 1e6

    code = pipeline.run(pipeline.Compilation(program, opt_level, name), observe=timed)
    start = time.process_time_ns()
    pipeline.tier_up(code, opt_level, name)
    times[TIER_UP] = (time.process_time_ns() - start) / 1e6
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cases = benchmark.suite()
    native.binding()  # LLVM's one-time set-up is not a cold compile
    pipeline.compile_program(Program([Insn(BPF_RET | BPF_K, 0, 0, 0)]), 2, "warm_up")
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
    return sum(ms for stage, ms in stages.items() if stage != TIER_UP)


if __name__ == "__main__":
    main()
