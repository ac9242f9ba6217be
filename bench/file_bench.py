"""`bpfjit filter -r IN -w OUT EXPR` against `tcpdump -r IN -w OUT EXPR` on a generated capture.

    python bench/file_bench.py --packets 1000000            # ~386 MB capture, 3 filters, 7 rounds

Writes the capture once (numpy, a few seconds; kept in --workdir for the next run), then for each
filter times both commands as subprocesses (wall clock, start-up and compile included), interleaved
round by round so that both see the same machine, and reports the median. Outputs are compared: they
must hold the same packets (tcpdump's output is byte-identical for a little-endian microsecond file).
Then it times `bpfjit.filter_file` in-process (no start-up, compiled filter cached) for throughput.

The child Python gets a bytecode cache (PYTHONPYCACHEPREFIX in the work directory), as an installed
package has; --no-bytecode runs it as PYTHONDONTWRITEBYTECODE=1 environments do (recompiling
bpfjit's modules on every start).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bpfjit import samples  # noqa: E402

FILTERS = {
    "ip": "ip",
    "tcp port 80": "tcp port 80",
    # 43 instructions: IPv4 and IPv6 paths, three ports, a network exclusion
    "43-insn": "(tcp port 80 or tcp port 443 or udp port 53) and not net 10.0.0.0/24",
}


# -- the capture ---------------------------------------------------------------------------------------
def _templates(rng: random.Random, count: int = 2000) -> list[bytes]:
    """Distinct frame headers: TCP/UDP over IPv4 (some with options, some fragments), IPv6, VLAN, ICMP, ARP."""
    hosts = [f"10.0.0.{i}" for i in range(1, 20)] + [f"192.168.1.{i}" for i in range(1, 10)] + ["8.8.8.8", "1.1.1.1"]
    frames = []
    for _ in range(count):
        kind = rng.random()
        src, dst = rng.choice(hosts), rng.choice(hosts)
        sport = rng.choice([rng.randrange(1024, 65536)] * 3 + [80, 443, 53, 22])
        dport = rng.choice([80, 80, 443, 443, 22, 53, 123, 8080, rng.randrange(1, 65536)])
        if rng.random() < 0.5:
            sport, dport = dport, sport
        l4 = samples.tcp(sport, dport, rng.choice([0x02, 0x10, 0x18, 0x11, 0x12]))
        if kind < 0.55:
            frame = samples.ethernet(0x0800, samples.ipv4(6, l4, src, dst))
        elif kind < 0.72:
            frame = samples.ethernet(0x0800, samples.ipv4(17, samples.udp(sport, dport), src, dst))
        elif kind < 0.75:
            frame = samples.ethernet(0x0800, samples.ipv4(1, b"\x08\x00\xf7\xff" + bytes(4), src, dst))
        elif kind < 0.77:
            frame = samples.ethernet(0x0800, samples.ipv4(6, l4, src, dst, options=b"\x01\x01\x01\x00"))
        elif kind < 0.79:
            frame = samples.ethernet(0x0800, samples.ipv4(6, bytes(20), src, dst, frag=rng.randrange(1, 100)))
        elif kind < 0.88:
            payload = l4 if rng.random() < 0.6 else samples.udp(sport, dport)
            frame = samples.ethernet(0x86DD, samples.ipv6(6 if len(payload) == 20 else 17, payload))
        elif kind < 0.95:
            proto, payload = (6, l4) if rng.random() < 0.5 else (17, samples.udp(sport, dport))
            frame = samples.vlan(rng.randrange(1, 100), 0x0800, samples.ipv4(proto, payload, src, dst))
        else:
            frame = samples.arp_request(src, dst)
        frames.append(frame)
    return frames


def generate_capture(path: Path, packets: int, seed: int = 1) -> int:
    """A little-endian microsecond pcap of `packets` Ethernet frames (~386 bytes a record); its size."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    frames = _templates(rng)
    width = max(map(len, frames))
    table = np.zeros((len(frames), width), np.uint8)
    header_lens = np.array([len(f) for f in frames])
    for i, frame in enumerate(frames):
        table[i, : len(frame)] = np.frombuffer(frame, np.uint8)
    kind = nrng.integers(0, len(frames), packets)
    u = nrng.random(packets)  # sizes: 58% minimum, 27% medium, 15% full-size
    lengths = np.where(u < 0.58, 60, np.where(u < 0.85, nrng.integers(100, 700, packets), 1514))
    lengths = np.maximum(lengths, header_lens[kind])
    starts = np.zeros(packets, np.int64)
    np.cumsum(16 + lengths[:-1], out=starts[1:])
    starts += 24
    total = int(starts[-1] + 16 + lengths[-1])
    out = np.full(total, 0x5A, np.uint8)  # payload filler
    out[:24] = np.frombuffer(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1), np.uint8)
    micros = 1_700_000_000 * 10**6 + np.cumsum(nrng.integers(1, 50, packets))
    record = np.empty((packets, 4), "<u4")
    record[:, 0], record[:, 1] = micros // 10**6, micros % 10**6
    record[:, 2] = record[:, 3] = lengths
    record_bytes = record.view(np.uint8).reshape(packets, 16)
    for j in range(16):  # scatter column by column: vectorised, no per-packet Python
        out[starts + j] = record_bytes[:, j]
    for j in range(width):
        has = j < header_lens[kind]
        out[starts[has] + 16 + j] = table[kind[has], j]
    out.tofile(path)
    return total


# -- timing ----------------------------------------------------------------------------------------------
def _run(cmd: list[str], env: dict[str, str] | None, out: Path) -> float:
    if out.exists():
        out.unlink()  # truncating a large file costs time: give both tools a fresh output
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {result.stderr.decode(errors='replace')}")
    return elapsed


def _bpfjit_command() -> list[str]:
    script = Path(sys.executable).with_name("bpfjit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bpfjit"]


def _same_packets(ours: Path, theirs: Path) -> bool:
    if ours.read_bytes() == theirs.read_bytes():
        return True
    from bpfjit import read_file

    return list(read_file(ours)) == list(read_file(theirs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bpfjit-file-bench")
    parser.add_argument("--no-bytecode", action="store_true", help="child Python without a bytecode cache")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    tcpdump = shutil.which("tcpdump") or ("/usr/bin/tcpdump" if os.path.exists("/usr/bin/tcpdump") else None)
    if tcpdump is None:
        raise SystemExit("tcpdump is not installed (apt-get install tcpdump)")

    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(args.workdir, 0o777)  # tcpdump drops privileges to its own user before writing
    capture = args.workdir / f"mix-{args.packets}.pcap"
    if not capture.exists():
        start = time.perf_counter()
        size = generate_capture(capture, args.packets)
        print(f"generated {capture} ({size / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
    size = capture.stat().st_size
    capture.read_bytes()  # into the page cache: both tools then read from memory
    env = dict(os.environ)
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(args.workdir / "pycache")
    ours_out, theirs_out = args.workdir / "bpfjit.pcap", args.workdir / "tcpdump.pcap"
    bpfjit_cmd = _bpfjit_command()

    from bpfjit import filter_file

    print(f"{args.packets} packets, {size / 1e6:.0f} MB, {args.rounds} rounds; {os.cpu_count()} CPUs; "
          f"tcpdump {subprocess.run([tcpdump, '--version'], capture_output=True, text=True).stdout.split()[2]}")
    header = f"{'filter':<12} {'insns':>5} {'accepted':>9} {'tcpdump':>9} {'bpfjit':>9} {'speed-up':>8}"
    header += f" {'in-process':>10} {'throughput':>10} {'vs tcpdump':>10}"
    print(header)
    results = {}
    for name, expression in FILTERS.items():
        ours_cmd = [*bpfjit_cmd, "filter", "-r", str(capture), "-w", str(ours_out), expression]
        theirs_cmd = [tcpdump, "-r", str(capture), "-w", str(theirs_out), expression]
        _run(ours_cmd, env, ours_out)  # warm-up: bytecode cache, page cache
        _run(theirs_cmd, None, theirs_out)
        if not _same_packets(ours_out, theirs_out):
            raise SystemExit(f"{name}: bpfjit and tcpdump kept different packets")
        ours_times, theirs_times = [], []
        for _ in range(args.rounds):
            theirs_times.append(_run(theirs_cmd, None, theirs_out))
            ours_times.append(_run(ours_cmd, env, ours_out))
        in_process = []
        stats = filter_file(capture, ours_out, expression)  # compile once; the rest reuse it
        for _ in range(args.rounds):
            ours_out.unlink()
            start = time.perf_counter()
            filter_file(capture, ours_out, expression)
            in_process.append(time.perf_counter() - start)
        t_theirs, t_ours = statistics.median(theirs_times), statistics.median(ours_times)
        t_in = statistics.median(in_process)
        from bpfjit import Program

        insns = len(Program.from_expr(expression))
        results[name] = {
            "expression": expression, "insns": insns, "accepted": stats.accepted, "read": stats.read,
            "tcpdump_s": t_theirs, "bpfjit_s": t_ours, "bpfjit_in_process_s": t_in,
            "tcpdump_runs": theirs_times, "bpfjit_runs": ours_times, "in_process_runs": in_process,
        }  # fmt: skip
        print(f"{name:<12} {insns:>5} {stats.accepted:>9} {t_theirs * 1e3:>7.0f}ms {t_ours * 1e3:>7.0f}ms "
              f"{t_theirs / t_ours:>7.2f}x {t_in * 1e3:>8.0f}ms {args.packets / t_in / 1e6:>6.1f}Mp/s "
              f"{t_theirs / t_in:>9.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"packets": args.packets, "bytes": size, "filters": results}, indent=2))


if __name__ == "__main__":
    main()
