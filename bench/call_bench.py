"""The per-packet call from Python, next to a builtin call and a plain ctypes call, in one run.

    python bench/call_bench.py [--calls 200000] [--rounds 7]

For `ip`, `tcp port 80` and `udp and (port 53 or port 123)`: ns per call of len(p), of a plain
ctypes call of the filter's own native code (a batch of one: what a ctypes binding costs), of f.call(p) (the
checked ctypes path) and of f(p) / f(p, wirelen) (the native vectorcall entry), each in the same
kind of loop; plus cold and cached compile times. Median of interleaved rounds.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import time
from collections.abc import Callable

os.environ["BPFJIT_CACHE"] = "off"  # a cold compile generates code; it does not load it from disk

import bpfjit
from bpfjit import Program, packetmix
from bpfjit.filter import BATCH_PROTOTYPE, clear_cache

FILTERS = ("ip", "tcp port 80", "udp and (port 53 or port 123)")


def loop_ns(call: Callable[[bytes], object], packets: list[bytes]) -> float:
    start = time.perf_counter()
    for p in packets:
        call(p)
    return (time.perf_counter() - start) / len(packets) * 1e9


def loop_wirelen_ns(call: Callable[[bytes, int], object], packets: list[bytes]) -> float:
    start = time.perf_counter()
    for p in packets:
        call(p, 65535)
    return (time.perf_counter() - start) / len(packets) * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    packets = [p for p, _ in packetmix.generate_list(args.calls, seed=2)]
    print(f"ns per call over {args.calls} packets, median of {args.rounds} interleaved rounds")
    print(f"{'filter':<32}{'len(p)':>9}{'ctypes':>9}{'f.call':>9}{'f(p)':>9}{'f(p,w)':>9}"
          f"{'f(p)/len':>10}{'cold ms':>9}{'cached µs':>11}")  # fmt: skip
    for expr in FILTERS:
        program = Program.from_expr(expr)
        f = bpfjit.compile(program)
        raw = BATCH_PROTOTYPE(f.address)  # the native code itself, called as a batch of one
        offset, lengths, out = ctypes.c_uint64(0), (ctypes.c_uint32 * 2)(), ctypes.c_uint32()
        at = ctypes.addressof
        batch_of_one = (at(offset), at(lengths), at(lengths) + 4, 1, at(out))
        n = [len(p) for p in packets]
        keys = ("len", "ctypes", "call", "fast", "fast_w", "cold", "cached")
        samples: dict[str, list[float]] = {k: [] for k in keys}
        for r in range(args.rounds):
            samples["len"].append(loop_ns(len, packets))
            start = time.perf_counter()
            for p, size in zip(packets, n, strict=True):
                lengths[0] = lengths[1] = size
                raw(p, *batch_of_one)
            samples["ctypes"].append((time.perf_counter() - start) / len(packets) * 1e9)
            samples["call"].append(loop_ns(f.call, packets))
            samples["fast"].append(loop_ns(f, packets))
            samples["fast_w"].append(loop_wirelen_ns(f, packets))
            clear_cache()
            fresh = program + Program([(0x06, 0, 0, 1000 + r)])  # unreachable tail: a new program, same code
            start = time.perf_counter()
            bpfjit.compile(fresh)
            samples["cold"].append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            for _ in range(100):
                bpfjit.compile(fresh)
            samples["cached"].append((time.perf_counter() - start) / 100 * 1e6)
        med = {k: statistics.median(v) for k, v in samples.items()}
        cells = [f"{med[k]:>9.1f}" for k in ("len", "ctypes", "call", "fast", "fast_w")]
        ratio = med["fast"] / med["len"]
        print(f"{expr:<32}{''.join(cells)}{ratio:>9.2f}x{med['cold']:>9.2f}{med['cached']:>11.2f}")


if __name__ == "__main__":
    main()
