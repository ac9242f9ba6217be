"""Where a `bpfjit filter` run's time goes before and after the packets, and how it compares with tcpdump.

    python bench/startup.py [--rounds 15] [--sizes 5 10000 100000 1000000]

Part 1, stage by stage: each stage of a `bpfjit filter -r IN -w OUT 'tcp port 80'` run timed inside
a fresh process (median wall ms over the rounds): the interpreter alone (`python -c pass`), importing
the command-line modules, libpcap (loading it and compiling the expression), the walker's code (with
the disk cache off: llvmlite imported, LLVM set up, code generated; on: the cached shared library
loaded, LLVM never imported), and the rest of `filter_file` on a 5-packet file (open, walk, write).

Part 2, end to end: `tcpdump -r IN -w OUT EXPR` against `bpfjit filter -r IN -w OUT EXPR` with the
disk cache off (every run generates its code) and on (warm: loaded), for generated captures of
each size, the runs of one size interleaved, median wall ms and the ratio tcpdump / bpfjit (> 1:
bpfjit is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXPRESSION = "tcp port 80"

STAGES_SCRIPT = r"""
import json, sys, time
marks = [("start", time.perf_counter())]
def mark(name): marks.append((name, time.perf_counter()))
import bpfjit.cli, bpfjit.capfile
mark("import the command")
from bpfjit import libpcap
program = libpcap.compile_expression(sys.argv[2])
mark("libpcap: load, compile the expression")
from bpfjit import native, walkers
walkers.walker("pcap", [program], ("gather",))
how = "loaded, no LLVM" if "llvmlite.binding" not in sys.modules else (
    "loaded into the JIT" if native.COUNTS["loaded"] else "LLVM imported and set up, code generated")
mark(f"walker code ({how})")
bpfjit.capfile.filter_file(sys.argv[1], sys.argv[3], sys.argv[2])
mark("filter_file: open, walk, write")
print(json.dumps([(name, 1e3 * (t - marks[i][1])) for i, (name, t) in enumerate(marks[1:])]))
"""


def _run_ms(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return 1e3 * (time.perf_counter() - start)


def stages(capture: Path, out: Path, rounds: int, env: dict[str, str]) -> None:
    python = sys.executable
    print(f"Stages of one run on a 5-packet file, median of {rounds} fresh processes (wall ms):")
    interpreter = statistics.median(_run_ms([python, "-c", "pass"], env) for _ in range(rounds))
    print(f"  {'interpreter (python -c pass)':<42} {interpreter:7.1f}")
    for cache in ("off", "on"):
        samples: dict[str, list[float]] = {}
        warm = {**env, "BPFJIT_CACHE": cache, "BPFJIT_CACHE_LINK": "sync"}
        subprocess.run([python, "-c", STAGES_SCRIPT, str(capture), EXPRESSION, str(out)], env=warm, check=True,
                       capture_output=True)  # fills the disk cache: every measured round with it on loads
        for _ in range(rounds):
            result = subprocess.run([python, "-c", STAGES_SCRIPT, str(capture), EXPRESSION, str(out)],
                                    env={**env, "BPFJIT_CACHE": cache}, check=True, capture_output=True,
                                    text=True)  # fmt: skip
            for name, ms in json.loads(result.stdout):
                samples.setdefault(name, []).append(ms)
        print(f"  disk cache {cache}:")
        for name, values in samples.items():
            print(f"    {name:<40} {statistics.median(values):7.1f}")


def end_to_end(sizes: list[int], rounds: int, folder: Path, env: dict[str, str]) -> None:
    from bpfjit import packetmix

    bpfjit = [sys.executable, "-m", "bpfjit", "filter"]
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    print(f"\nEnd to end, {EXPRESSION!r}, median of {rounds} interleaved runs (wall ms):")
    print(f"  {'packets':>9} {'MB':>7} {'tcpdump':>9} {'bpfjit, no cache':>17} {'bpfjit, cached':>15}"
          f" {'tcpdump/no cache':>17} {'tcpdump/cached':>15}")  # fmt: skip
    for size in sizes:
        capture = folder / f"mix{size}.pcap"
        packetmix.write_pcap(capture, packetmix.generate(size, seed=7))
        out = str(folder / "out.pcap")
        commands = {
            "tcpdump": ([tcpdump, "-r", str(capture), "-w", out, EXPRESSION], env),
            "no cache": ([*bpfjit, "--no-cache", "-r", str(capture), "-w", out, EXPRESSION], env),
            "cached": ([*bpfjit, "-r", str(capture), "-w", out, EXPRESSION], env),
        }
        for command, run_env in commands.values():  # warm the page cache and the disk cache
            _run_ms(command, run_env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(rounds):
            for name, (command, run_env) in commands.items():
                times[name].append(_run_ms(command, run_env))
        med = {name: statistics.median(values) for name, values in times.items()}
        mb = capture.stat().st_size / 1e6
        print(f"  {size:>9} {mb:7.1f} {med['tcpdump']:9.1f} {med['no cache']:17.1f} {med['cached']:15.1f}"
              f" {med['tcpdump'] / med['no cache']:16.2f}x {med['tcpdump'] / med['cached']:14.2f}x")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10_000, 100_000, 1_000_000])
    args = parser.parse_args()
    from bpfjit import packetmix

    with tempfile.TemporaryDirectory(prefix="bpfjit-startup-") as tmp:
        folder = Path(tmp)
        # a cache of this run's own, libraries linked at once (the first warm-up run stores them)
        env = {**os.environ, "BPFJIT_CACHE_DIR": str(folder / "cache"), "BPFJIT_CACHE_LINK": "sync"}
        # as installed: with bytecode (compiled now), whatever this shell says
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        package = Path(__file__).resolve().parent.parent / "bpfjit"
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], env=env, check=False,
                       capture_output=True)  # fmt: skip
        small = folder / "small.pcap"
        packetmix.write_pcap(small, packetmix.generate(5, seed=3))
        stages(small, folder / "small-out.pcap", args.rounds, env)
        end_to_end(args.sizes, args.rounds, folder, env)


if __name__ == "__main__":
    main()
