"""A dpkt loop over a capture file, sped up by testing the raw frame with bpfjit before parsing it.

    python examples/dpkt_loop.py                     # on a generated 50,000-packet capture
    python examples/dpkt_loop.py in.pcap "tcp port 443"

Needs dpkt (pip install bpfjit[dpkt]). Parsing a frame with dpkt costs microseconds; `f(buf)` costs
tens of nanoseconds, so parse only the frames the filter accepts.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable

import dpkt

import bpfjit
from bpfjit import packetmix
from bpfjit.adapters import dpkt_filter


def timed(label: str, path: str, loop: Callable[[dpkt.pcap.Reader], int]) -> float:
    with open(path, "rb") as fh:
        started = time.perf_counter()
        found = loop(dpkt.pcap.Reader(fh))
        elapsed = time.perf_counter() - started
    print(f"  {label:<48} {found:6d} packets  {elapsed * 1e3:7.1f} ms")
    return elapsed


def parse_all(reader: dpkt.pcap.Reader) -> int:
    """Before: parse every frame, then look at the parsed layers."""
    found = 0
    for _ts, buf in reader:
        try:
            ip = dpkt.ethernet.Ethernet(buf).data
        except dpkt.UnpackError:  # frames cut short by the capture's snap length
            continue
        if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) and isinstance(ip.data, dpkt.udp.UDP) and ip.data.dport == 53:
            found += 1
    return found


def main() -> int:
    expression = sys.argv[2] if len(sys.argv) > 2 else "udp dst port 53"
    f = bpfjit.compile(expression)  # compile once, outside the timings

    def filter_first(reader: dpkt.pcap.Reader) -> int:
        """After: the same loop, with one call on the raw bytes in front of the parser."""
        found = 0
        for _ts, buf in reader:
            if f(buf):
                dpkt.ethernet.Ethernet(buf)  # ... and whatever the loop did with the packet
                found += 1
        return found

    def helper(reader: dpkt.pcap.Reader) -> int:
        """The same with bpfjit.adapters.dpkt_filter (it compiles an expression for the file's link type)."""
        return sum(1 for _ts, buf in dpkt_filter(reader, f) if dpkt.ethernet.Ethernet(buf))

    with tempfile.TemporaryDirectory() as scratch:
        path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(scratch, "mix.pcap")
        if len(sys.argv) <= 1:
            packetmix.write_pcap(path, packetmix.generate(50_000, seed=1))
        print(f"{path}, {expression!r}:")
        before = timed("dpkt: parse every frame, test in Python", path, parse_all) if len(sys.argv) <= 2 else None
        after = timed("dpkt: `if f(buf)`, parse only the matches", path, filter_first)
        timed("bpfjit.adapters.dpkt_filter(reader, f)", path, helper)
        with open(path, "rb") as fh:
            started = time.perf_counter()
            n = sum(1 for _ts, _buf in dpkt.pcap.Reader(fh))
            elapsed = time.perf_counter() - started
        print(f"  {'(reading alone: no parsing, no filter)':<48} {n:6d} packets  {elapsed * 1e3:7.1f} ms")
    if before is not None:
        print(f"{before / after:.1f}x faster. (dpkt's parser also looks through VLAN tags and IPv6 extension")
        print("headers, which pcap-filter expressions, like tcpdump's, do not: hence the different counts.)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
