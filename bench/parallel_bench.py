"""One big file on every core: `filter_file(..., workers=N)` and `bpfjit filter -j N` against -j 1 and tcpdump.

    python bench/parallel_bench.py --packets 1000000          # ~365 MB capture, 7 rounds
    python bench/parallel_bench.py --threshold                # also: where workers=2 starts to pay
    python bench/parallel_bench.py --format pcapng            # the same packets as pcapng (~381 MB)

Generates the capture once (bpfjit.packetmix, kept in --workdir, read into the page cache), then for each
filter runs, round by round and interleaved so that every way sees the same machine: `filter_file` in
process with workers=1 and workers=N (compiled filter cached), `bpfjit filter -j 1` and `-j N` and
`tcpdump -r -w` as subprocesses (start-up included). Every output is checked: -j N's bytes equal -j 1's,
and tcpdump's (a little-endian microsecond file; for pcapng, which tcpdump writes as pcap, only -j 1's).
The pcapng capture (`--format pcapng`) has the same packets as EPBs on two Ethernet interfaces, with
a statistics block every 100,000 packets. Reports medians and the ratios of the same run: on a
shared machine only ratios from one run mean anything, and the best of the rounds (printed under the
medians) is the figure least disturbed by other processes. --threshold times workers=1 and 2 in process on
smaller captures (how `capparallel.PARALLEL_MIN_BYTES` was chosen).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.file_bench import _bpfjit_command, _run, generate_capture  # noqa: E402

FILTERS = {
    "none": None,  # every packet written: the write dominates
    "ip": "ip",  # most packets written, in long runs
    "tcp port 80": "tcp port 80",  # 13% written, short runs
    "udp 53/123": "udp and (port 53 or port 123)",
    # 43 instructions, IPv4 and IPv6 paths (bench/file_bench.py's)
    "43-insn": "(tcp port 80 or tcp port 443 or udp port 53) and not net 192.168.0.0/16",
}


def generate_pcapng(path: Path, packets: int, seed: int = 1) -> int:
    """packetmix's frames as a little-endian pcapng file: a section header, two Ethernet interfaces
    (packets alternate between them), one EPB per packet 10 µs apart, a statistics block (ISB) every
    100,000 packets. Returns the bytes written."""
    import struct

    from bpfjit import packetmix

    batch = packetmix.generate(packets, seed=seed)
    data, offsets = batch.data, batch.offsets.tolist()
    caplens, wirelens = batch.caplens.tolist(), batch.wirelens.tolist()

    def block(btype: int, body: bytes) -> bytes:
        body += bytes(-len(body) % 4)
        return struct.pack("<II", btype, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))

    head = struct.Struct("<IIIIIII")
    written = 0
    with path.open("wb") as out:
        lead = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
        lead += block(1, struct.pack("<HHI", 1, 0, 262144)) * 2
        out.write(lead)
        written += len(lead)
        pieces: list[bytes] = []
        for i in range(packets):
            caplen = caplens[i]
            pad = -caplen % 4
            length = 32 + caplen + pad
            ticks = 1_700_000_000_000_000 + 10 * i
            pieces.append(head.pack(6, length, i & 1, ticks >> 32, ticks & 0xFFFFFFFF, caplen, wirelens[i]))
            pieces.append(data[offsets[i] : offsets[i] + caplen].tobytes() + bytes(pad) + struct.pack("<I", length))
            if i % 100_000 == 99_999:
                pieces.append(block(5, struct.pack("<III", i & 1, ticks >> 32, ticks & 0xFFFFFFFF)))
            if len(pieces) >= 1 << 15:
                chunk = b"".join(pieces)
                out.write(chunk)
                written += len(chunk)
                pieces.clear()
        chunk = b"".join(pieces)
        out.write(chunk)
        return written + len(chunk)


def _in_process(capture: Path, out: Path | None, expression: str | None, workers: int) -> float:
    from bpfjit import filter_file

    if out is not None and out.exists():
        out.unlink()
    start = time.perf_counter()
    filter_file(capture, out, expression, workers=workers)
    return time.perf_counter() - start


def threshold(workdir: Path, rounds: int, workers: int) -> dict[str, list[float]]:
    """workers=1 vs `workers` in process on captures of 10k-300k packets (3.6-110 MB)."""
    print(f"\nthreshold: filter_file 'tcp port 80' in process, workers=1 vs {workers}, median of {rounds}")
    results = {}
    out = workdir / "threshold.pcap"
    for packets in (10_000, 30_000, 100_000, 300_000):
        capture = workdir / f"packetmix-{packets}.pcap"
        if not capture.exists():
            generate_capture(capture, packets)
        capture.read_bytes()
        times: dict[int, list[float]] = {1: [], workers: []}
        for _ in range(rounds):
            for w in times:
                times[w].append(_in_process(capture, out, "tcp port 80", w))
        one, many = statistics.median(times[1]), statistics.median(times[workers])
        size = capture.stat().st_size
        print(f"  {packets:>7} packets {size / 1e6:>6.1f} MB: {one * 1e3:7.1f} ms vs {many * 1e3:7.1f} ms  "
              f"{one / many:.2f}x")  # fmt: skip
        results[str(packets)] = [size, one, many]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("-j", "--workers", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bpfjit-file-bench")
    parser.add_argument("--threshold", action="store_true", help="also time smaller captures")
    parser.add_argument("--format", choices=("pcap", "pcapng"), default="pcap", help="the capture's format")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--remove", action="store_true", help="delete the capture and outputs at the end")
    args = parser.parse_args()
    tcpdump = shutil.which("tcpdump") or ("/usr/bin/tcpdump" if os.path.exists("/usr/bin/tcpdump") else None)
    if tcpdump is None:
        raise SystemExit("tcpdump is not installed (apt-get install tcpdump)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(args.workdir, 0o777)  # tcpdump drops privileges to its own user before writing
    capture = args.workdir / f"packetmix-{args.packets}.{args.format}"
    if not capture.exists():
        (generate_capture if args.format == "pcap" else generate_pcapng)(capture, args.packets)
    size = capture.stat().st_size
    capture.read_bytes()  # into the page cache
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(args.workdir / "pycache")
    outs = {name: args.workdir / f"{name}.{args.format}" for name in ("one", "many", "cli-one", "cli-many")}
    outs["tcpdump"] = args.workdir / "tcpdump.pcap"
    cmd = _bpfjit_command()
    n = args.workers
    print(f"{args.packets} packets, {args.format}, {size / 1e6:.0f} MB, {args.rounds} rounds, {os.cpu_count()} CPUs; "
          f"workers {n}; medians in ms (ratios: -j 1 / -j {n}, tcpdump / -j {n})")  # fmt: skip
    print(f"{'filter':<12} {'':6} {'no output':>9} {f'j{n}':>6} {'ratio':>6} | {'in-proc j1':>10} {f'j{n}':>7} "
          f"{'ratio':>6} | {'cli -j1':>8} {f'-j{n}':>7} {'ratio':>6} {'tcpdump':>8} {'vs tcpdump':>10}")  # fmt: skip
    results = {}
    for name, expression in FILTERS.items():
        expr_args = [expression] if expression else []
        commands = {
            "cli-one": [*cmd, "filter", "-r", str(capture), "-w", str(outs["cli-one"]), "-j", "1", *expr_args],
            "cli-many": [*cmd, "filter", "-r", str(capture), "-w", str(outs["cli-many"]), "-j", str(n), *expr_args],
            "tcpdump": [tcpdump, *(["-Z", "root"] if os.geteuid() == 0 else []), "-r", str(capture),
                        "-w", str(outs["tcpdump"]), *expr_args],
        }  # fmt: skip
        for key, command in commands.items():  # warm-up: bytecode and page caches, compiled-code cache
            _run(command, env if key != "tcpdump" else None, outs[key])
        _in_process(capture, outs["one"], expression, 1)
        _in_process(capture, outs["many"], expression, n)
        reference = outs["one"].read_bytes()
        for key in ("many", "cli-one", "cli-many", *(("tcpdump",) if args.format == "pcap" else ())):
            if outs[key].read_bytes() != reference:
                raise SystemExit(f"{name}: {key} wrote other bytes than filter_file(workers=1)")
        del reference
        times: dict[str, list[float]] = {key: [] for key in ("one", "many", "count-one", "count-many", *commands)}
        for _ in range(args.rounds):
            times["one"].append(_in_process(capture, outs["one"], expression, 1))
            times["many"].append(_in_process(capture, outs["many"], expression, n))
            times["count-one"].append(_in_process(capture, None, expression, 1))  # no output: the walk alone
            times["count-many"].append(_in_process(capture, None, expression, n))
            for key, command in commands.items():
                times[key].append(_run(command, env if key != "tcpdump" else None, outs[key]))
        med = {key: statistics.median(values) for key, values in times.items()}
        best = {key: min(values) for key, values in times.items()}
        for label, figures in (("median", med), ("best", best)):
            ms = {key: value * 1e3 for key, value in figures.items()}
            print(f"{name if label == 'median' else '':<12} {label:6} {ms['count-one']:>9.1f} {ms['count-many']:>6.1f} "
                  f"{ms['count-one'] / ms['count-many']:>5.2f}x | "
                  f"{ms['one']:>10.1f} {ms['many']:>7.1f} {ms['one'] / ms['many']:>5.2f}x | "
                  f"{ms['cli-one']:>8.1f} {ms['cli-many']:>7.1f} {ms['cli-one'] / ms['cli-many']:>5.2f}x "
                  f"{ms['tcpdump']:>8.1f} {ms['tcpdump'] / ms['cli-many']:>9.2f}x", flush=True)  # fmt: skip
        results[name] = {"expression": expression, "median_s": med, "best_s": best, "runs_s": times}
    report = {"packets": args.packets, "format": args.format, "bytes": size, "workers": n, "filters": results}
    if args.threshold:
        report["threshold"] = threshold(args.workdir, args.rounds, n)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.remove:  # (a 10M-packet capture is 3.6 GB)
        for path in (capture, *outs.values()):
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
