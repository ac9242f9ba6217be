"""The linux dialect in the batch loop: what reading metadata costs, as ratios within one run.

    python bench/linux_bench.py [--packets 1000000] [--rounds 7]

Rows (each the median ns/packet of `run_batch` over the same packet mix, bpfjit.packetmix):
- a program that reads no metadata (`tcp port 80`, libpcap's code), in the pcap and linux dialects:
  the same machine code should run (target: ratio 1.0);
- `vlan 100 and udp` as tcpdump compiles it for a LIVE interface (`ldb [vlanp]`, `ldb [vlan_tci]`,
  through `tcpdump -i lo -ddd`; needs root), in the linux dialect on the kernel's view of the frames
  (outer VLAN tag moved into metadata, `metadata.meta_array`), against the same expression compiled
  for a capture file (tag tests in the packet) in the pcap dialect on the file's view (target: within
  1.3x);
- an ancillary-heavy synthetic program (protocol, pkttype, ifindex, hatype, VLAN TCI/TPID) against a
  pcap program of the same shape reading packet bytes instead.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

import numpy as np

import bpfjit
from bpfjit import Batch, Program, packetmix
from bpfjit.linux import ANCILLARY
from bpfjit.metadata import meta_array

ANC = {row.name: row.k for row in ANCILLARY}


def kernel_view(batch: Batch) -> tuple[Batch, np.ndarray]:
    """The frames as an AF_PACKET socket sees them: the outer 802.1Q/802.1ad tag removed from the data
    and put into the metadata (TCI, TPID, present), the protocol the ethertype after it."""
    frames, tci, tpid, present = [], [], [], []
    for i in range(len(batch)):
        frame = bytes(batch[i])
        outer = int.from_bytes(frame[12:14], "big") if len(frame) >= 18 else 0
        if outer in (0x8100, 0x88A8):
            tci.append(int.from_bytes(frame[14:16], "big"))
            tpid.append(outer)
            present.append(1)
            frame = frame[:12] + frame[16:]
        else:
            tci.append(0)
            tpid.append(0)
            present.append(0)
        frames.append(frame)
    view = Batch.from_packets(frames)
    return view, meta_array(view, vlan_tci=tci, vlan_tpid=tpid, vlan_present=present)


def live_program(expression: str) -> Program:
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    listing = subprocess.run([tcpdump, "-i", "lo", "-ddd", expression], capture_output=True, text=True, check=True)
    return Program.parse(listing.stdout)


SYNTHETIC_LINUX = Program([
    (0x30, 0, 0, ANC["PROTOCOL"]), (0x15, 0, 10, 0x0800),
    (0x30, 0, 0, ANC["PKTTYPE"]), (0x15, 8, 0, 4),
    (0x20, 0, 0, ANC["IFINDEX"]), (0x15, 0, 6, 2),
    (0x20, 0, 0, ANC["HATYPE"]), (0x15, 0, 4, 1),
    (0x28, 0, 0, ANC["VLAN_TAG"]), (0x54, 0, 0, 0xFFF),
    (0x15, 0, 1, 100), (0x06, 0, 0, 262144), (0x06, 0, 0, 0),
])  # fmt: skip
SYNTHETIC_PCAP = Program([
    (0x28, 0, 0, 12), (0x15, 0, 10, 0x0800),
    (0x30, 0, 0, 23), (0x15, 8, 0, 4),
    (0x20, 0, 0, 26), (0x15, 0, 6, 2),
    (0x28, 0, 0, 20), (0x15, 0, 4, 1),
    (0x28, 0, 0, 14), (0x54, 0, 0, 0xFFF),
    (0x15, 0, 1, 100), (0x06, 0, 0, 262144), (0x06, 0, 0, 0),
])  # fmt: skip


def ns_per_packet(f: bpfjit.Filter, batch: Batch, rounds: int, meta: np.ndarray | None = None) -> float:
    out = np.empty(len(batch), dtype=np.uint32)
    f.run_batch(batch, out, meta=meta)  # warm
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        f.run_batch(batch, out, meta=meta)
        samples.append((time.perf_counter() - start) / len(batch) * 1e9)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    generated = packetmix.generate(args.packets, seed=1)
    # both views laid out alike (Batch.from_packets), so that only the programs and metadata differ
    batch = Batch.from_packets([bytes(generated[i]) for i in range(len(generated))])
    view, meta = kernel_view(batch)
    tagged = int(meta["vlan_present"].sum())
    print(f"{len(batch)} packets ({tagged} with an outer VLAN tag), median of {args.rounds}, ns/packet\n")
    print(f"{'filter':<34}{'pcap':>9}{'linux':>9}{'ratio':>8}  accepted (pcap / linux)")

    def row(name: str, pcap: bpfjit.Filter, linux: bpfjit.Filter, pcap_batch: Batch, linux_batch: Batch,
            linux_meta: np.ndarray | None) -> None:  # fmt: skip
        for f in (pcap, linux):
            f.tier_up()
        p = ns_per_packet(pcap, pcap_batch, args.rounds)
        li = ns_per_packet(linux, linux_batch, args.rounds, linux_meta)
        accepted = (int((pcap.run_batch(pcap_batch) != 0).sum()),
                    int((linux.run_batch(linux_batch, meta=linux_meta) != 0).sum()))  # fmt: skip
        print(f"{name:<34}{p:>9.2f}{li:>9.2f}{li / p:>7.2f}x  {accepted[0]} / {accepted[1]}")

    tcp80 = Program.from_expr("tcp port 80")
    row("tcp port 80 (no metadata)", bpfjit.compile(tcp80), bpfjit.compile(tcp80, dialect="linux"),
        batch, batch, None)  # fmt: skip
    try:
        live = live_program("vlan 100 and udp")
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"vlan 100 and udp: skipped (tcpdump -i lo -ddd needs root and tcpdump: {error})")
    else:
        dead = bpfjit.compile("vlan 100 and udp")
        row("vlan 100 and udp (live program)", dead, bpfjit.compile(live, dialect="linux"), batch, view, meta)
    ifindex = meta.copy()
    ifindex["ifindex"] = 2
    synthetic = bpfjit.compile(SYNTHETIC_LINUX, dialect="linux")
    row("synthetic: 5 ancillary loads", bpfjit.compile(SYNTHETIC_PCAP), synthetic, view, view, ifindex)


if __name__ == "__main__":
    main()
