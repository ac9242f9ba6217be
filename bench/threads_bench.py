"""Thread scaling of batch filtering: the batch entry releases the GIL, so threads use every core.

    python bench/threads_bench.py [--packets 400000] [--threads 1 2 4] [--repeat 5]

Each thread filters its own slice of one packet mix with the same Filter; wall time for the whole
mix, median of --repeat, and the speed-up over one thread in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np

import bpfjit
from bpfjit import Batch, packetmix


def run(f: bpfjit.Filter, parts: list[Batch]) -> float:
    threads = [threading.Thread(target=f.run_batch, args=(part,)) for part in parts]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=400_000)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--filter", default="tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420 or udp port 53")
    args = parser.parse_args()
    batch = packetmix.generate(args.packets, seed=3)
    f = bpfjit.compile(args.filter)
    splits = {
        n: [batch.select(np.arange(len(batch)) % n == i) for i in range(n)] for n in args.threads
    }  # each thread its own Batch over the shared buffer
    samples: dict[int, list[float]] = {n: [] for n in args.threads}
    for _ in range(args.repeat):
        for n in args.threads:  # interleaved
            samples[n].append(run(f, splits[n]))
    base = statistics.median(samples[args.threads[0]])
    print(f"{args.packets} packets, filter {args.filter!r} ({len(f.program)} insns)")
    for n in args.threads:
        med = statistics.median(samples[n])
        ns = med / args.packets * 1e9
        print(f"{n} thread(s): {med * 1e3:7.1f} ms  {ns:6.1f} ns/packet  speed-up {base / med:4.2f}x")


if __name__ == "__main__":
    main()
