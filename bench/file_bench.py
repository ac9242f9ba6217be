"""`bpfjit filter -r IN -w OUT EXPR` against `tcpdump -r IN -w OUT EXPR` on a generated capture.

    python bench/file_bench.py --packets 1000000            # ~365 MB capture, 4 filters, 7 rounds

Writes the capture once (bpfjit.packetmix, a few seconds; kept in --workdir), then for each
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FILTERS = {
    "ip": "ip",
    "tcp port 80": "tcp port 80",
    # 27 instructions, selective (~2% kept): one host's web and DNS traffic
    "27-insn": "host 10.1.2.3 and (tcp port 80 or tcp port 443 or udp port 53)",
    # 43 instructions, IPv4 and IPv6 paths: web and DNS traffic not from or to 192.168/16
    "43-insn": "(tcp port 80 or tcp port 443 or udp port 53) and not net 192.168.0.0/16",
}


# -- the capture ---------------------------------------------------------------------------------------
def generate_capture(path: Path, packets: int, seed: int = 1) -> int:
    """A little-endian microsecond pcap of `packets` frames of bpfjit.packetmix (~365 bytes a record)."""
    from bpfjit import packetmix

    return packetmix.write_pcap(path, packetmix.generate(packets, seed=seed))


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
    capture = args.workdir / f"packetmix-{args.packets}.pcap"
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
