"""Many filters, one pass: compile_many versus running each filter's batch entry in turn.

    python bench/classifier_bench.py [--packets 200000] [--repeat 7] [--out bench/out/classifier.json]

For 1, 4, 16 and 64 real filters (one per port, host or protocol), ns/packet of the classifier's
native pass (and of run_batch, which adds the bool-matrix conversion) against the filters run one by
one through Filter.run_batch, all in the same run, interleaved, median of --repeat rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import bpfjit
from bpfjit import packetmix

# A monitor's worth of real filters: services by port, some hosts and protocols.
POOL = (
    [f"tcp port {p}" for p in (80, 443, 22, 25, 110, 143, 993, 995, 3306, 5432, 6379, 8080, 8443, 9200, 27017)]
    + [f"udp port {p}" for p in (53, 123, 161, 162, 514, 1812, 5353, 67, 68, 69, 4789, 51820)]
    + [f"host 10.0.{i}.{i + 1}" for i in range(10)]
    + ["arp", "icmp", "ip6", "vlan", "ip[6:2] & 0x1fff != 0", "tcp[tcpflags] & tcp-syn != 0", "icmp6", "len > 1000"]
    + [f"net 192.168.{i}.0/24" for i in range(19)]
)


def _median_ns(run: Callable[[], object], packets: int, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) / packets * 1e9)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--out", default="bench/out/classifier.json")
    args = parser.parse_args()

    batch = packetmix.generate(args.packets, seed=1)
    rows = []
    print(f"{args.packets} packets from bpfjit.packetmix; ns/packet, median of {args.repeat} (min-max)")
    heads = ("classifier", "+ bool matrix", "one by one")
    print(f"{'filters':>8} " + " ".join(f"{h:>16}" for h in heads) + f" {'speed-up':>9} {'vs 1 filter':>12}")
    one_filter = None
    for count in (1, 4, 16, 64):
        exprs = POOL[:count]
        many = bpfjit.compile_many(exprs)
        singles = [bpfjit.compile(e) for e in exprs]
        words = np.zeros((len(batch), many._words), dtype=np.uint64)
        # sanity: the classifier agrees with the single filters on this mix
        matrix = many.run_batch(batch)
        for i, f in enumerate(singles):
            assert (matrix[:, i] == (f.run_batch(batch) != 0)).all(), exprs[i]
        native: list[float] = []
        full: list[float] = []
        serial: list[float] = []
        for _ in range(args.repeat):  # interleave the methods round by round
            native += _median_ns(lambda m=many, w=words: m._call_batch(batch, w, None), len(batch), 1)
            full += _median_ns(lambda m=many: m.run_batch(batch), len(batch), 1)
            serial += _median_ns(lambda fs=singles: [f.run_batch(batch) for f in fs], len(batch), 1)
        med = {name: statistics.median(v) for name, v in (("native", native), ("full", full), ("serial", serial))}
        if one_filter is None:
            one_filter = med["native"]
        rows.append({"filters": count, "expressions": exprs, "classifier_ns": native, "run_batch_ns": full,
                     "one_by_one_ns": serial, "median": med})  # fmt: skip
        print(
            f"{count:>8} {med['native']:>7.1f} ({min(native):.1f}-{max(native):.1f}) {med['full']:>7.1f} ns"
            f"       {med['serial']:>7.1f} ns {med['serial'] / med['native']:>8.1f}x"
            f" {med['native'] / one_filter:>11.1f}x"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"packets": args.packets, "rows": rows}, indent=1))
    print(f"samples: {out}")


if __name__ == "__main__":
    main()
