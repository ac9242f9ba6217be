"""bpfjit without root: compile a tcpdump expression, run it per packet and over a batch in one call.

python examples/userspace_demo.py
python examples/userspace_demo.py "tcp port 443 or udp port 53"
"""

from __future__ import annotations

import sys
import time

import numpy as np

import bpfjit
from bpfjit import packetmix
from bpfjit.batch import Batch
from bpfjit.samples import sample_frames


def main() -> int:
    expression = sys.argv[1] if len(sys.argv) > 1 else "tcp port 80 or udp port 53"

    # 1. Expression -> libpcap's cBPF program -> native code.
    f = bpfjit.compile(expression)
    print(f"{expression!r} compiles to {len(f.program)} instructions (tcpdump -d):\n{f.program}\n")

    # 2. One packet at a time: f(packet) is the BPF result, 0 = drop, else the number of bytes to keep.
    for name, frame in sample_frames().items():
        verdict = f(frame)
        assert verdict == bpfjit.interpret(f.program, frame)  # the pure-Python reference agrees
        print(f"  {'accept' if verdict else 'drop':6}  {name}")

    # 3. Many packets in one buffer, described by offsets/caplens/wirelens arrays: run_batch walks
    #    them in one native call, with the GIL released. (bpfjit.capture builds such a Batch over
    #    its packet ring without copying; here the packets come from a generator.)
    batch = packetmix.generate(200_000, seed=1)
    packets = [bytes(p) for p in batch]
    started = time.perf_counter()
    verdicts = f.run_batch(batch)
    batch_s = time.perf_counter() - started
    started = time.perf_counter()
    [f(p) for p in packets]  # (wirelen = caplen here; f(p, wirelen) takes the checked, slower path)
    loop_s = time.perf_counter() - started
    n = len(batch)
    print(f"\n{n} generated packets, {np.count_nonzero(verdicts)} accepted:")
    print(f"  f.run_batch(batch)        {batch_s * 1e3:6.1f} ms  {batch_s / n * 1e9:5.1f} ns a packet")
    print(f"  [f(p) for p in packets]   {loop_s * 1e3:6.1f} ms  {loop_s / n * 1e9:5.1f} ns a packet")

    # 4. The accepted packets, as a Batch sharing the same buffer (no copy).
    kept = f.filter(batch)
    assert isinstance(kept, Batch)
    print(f"  f.filter(batch) -> {kept!r}; the first starts {bytes(kept[0][:14]).hex(' ')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
