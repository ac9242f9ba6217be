"""A scapy loop over a capture file, sped up by filtering the raw records with bpfjit first.

    python examples/scapy_loop.py                    # on a generated 3,000-packet capture
    python examples/scapy_loop.py in.pcap "tcp port 443"

Needs scapy (pip install bpfjit[scapy]). scapy spends ~100 µs dissecting each packet; a test on the
dissected packet comes too late to save that. `scapy_reader` runs the filter on the raw bytes and
dissects only the packets that pass.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import bpfjit
from bpfjit import packetmix
from bpfjit.adapters import scapy_lfilter, scapy_reader


def timed(label: str, run: Callable[[], list[Any]]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    packets = run()
    elapsed = time.perf_counter() - started
    print(f"  {label:<52} {len(packets):5d} packets  {elapsed * 1e3:7.1f} ms")
    return elapsed, packets


def main() -> int:
    from scapy.layers.inet import UDP  # (loads scapy's Ethernet/IP dissectors too)
    from scapy.utils import PcapReader

    expression = sys.argv[2] if len(sys.argv) > 2 else "udp dst port 53"
    with tempfile.TemporaryDirectory() as scratch:
        path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(scratch, "mix.pcap")
        if len(sys.argv) <= 1:
            packetmix.write_pcap(path, packetmix.generate(3_000, seed=1))
        f = bpfjit.compile(expression)  # compile once, outside the timings
        lfilter = scapy_lfilter(f)
        print(f"{path}, {expression!r}:")

        # Before: dissect everything, then test the dissected packet in Python.
        python_test: list[Any] = []
        if expression == "udp dst port 53":
            _, python_test = timed("scapy: dissect all, test `UDP in p` in Python", lambda: [
                p for p in PcapReader(path) if UDP in p and p[UDP].dport == 53])  # fmt: skip
        # Drop-in: the same loop with bpfjit as the test (also what `sniff(lfilter=...)` takes).
        before, slow = timed(
            "scapy: dissect all, bpfjit as lfilter", lambda: [p for p in PcapReader(path) if lfilter(p)]
        )
        # After: filter the raw records, dissect only what passes.
        after, fast = timed("bpfjit.adapters.scapy_reader: dissect the matches", lambda: list(scapy_reader(path, f)))

    assert [bytes(p) for p in fast] == [bytes(p) for p in slow]  # the very same packets
    print(f"scapy_reader: {before / after:.1f}x faster than the lfilter loop, with the same packets.")
    if len(python_test) != len(fast):
        print("(The Python test finds more: scapy dissects through QinQ tags and IPv6 extension headers,")
        print(" which pcap-filter expressions, like tcpdump's, do not look inside.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
