"""Filter a capture file, as `tcpdump -r IN -w OUT EXPRESSION` does, and read the packets you kept.

    python examples/filter_pcap.py                                  # makes a 50,000-packet capture first
    python examples/filter_pcap.py in.pcap "tcp port 443" -o out.pcap

No root needed. The file is mmap'd and filtered a chunk of records per native call; only the
accepted records are written (byte for byte) or handed to Python.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import bpfjit
from bpfjit import packetmix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", help="a pcap or pcapng file (default: a generated one)")
    parser.add_argument(
        "expression", nargs="?", default="udp port 53 or (tcp port 80 and tcp[tcpflags] & tcp-syn != 0)"
    )
    parser.add_argument("-o", "--output", help="where to write the accepted packets (default: a temporary file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        source = args.input
        if source is None:
            # A reproducible mix of TCP, UDP, ICMP, IPv6, ARP, VLAN... frames (bpfjit.packetmix).
            source = os.path.join(scratch, "mix.pcap")
            packetmix.write_pcap(source, packetmix.generate(50_000, seed=1))
            print(f"generated {source}: 50,000 packets, {os.path.getsize(source) / 1e6:.1f} MB")
        output = args.output or os.path.join(scratch, "kept.pcap")

        # 1. File to file. Compiling (libpcap, then LLVM) is a one-off cost, timed apart; an expression
        #    passed as a string instead is compiled for each link type the file holds.
        started = time.perf_counter()
        f = bpfjit.compile(args.expression)
        compile_ms = (time.perf_counter() - started) * 1e3
        print(f"compiled {args.expression!r} ({len(f.program)} insns) in {compile_ms:.0f} ms")
        for run in ("first run (builds the native record walker once)", "second run"):
            started = time.perf_counter()
            stats = bpfjit.filter_file(source, output, f)
            elapsed = time.perf_counter() - started
            print(f"{run}: kept {stats.accepted} of {stats.read} packets in {elapsed * 1e3:.1f} ms "
                  f"({elapsed / max(stats.read, 1) * 1e9:.0f} ns a packet)")  # fmt: skip
        print(f"wrote {output}")

        # 2. A Python loop over the packets that pass: only they are copied into Python objects.
        for timestamp, packet, wirelen in bpfjit.read_file(output):
            print(f"  first kept: {timestamp:.6f}, {wirelen} bytes on the wire, starts {packet[:14].hex(' ')}")
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
