"""Live capture that keeps up: the share of offered packets each receiver delivers to its loop (issue 19).

    sudo .venv/bin/python bench/capture_bench.py --quick          # one frame size, two rates, one round
    sudo .venv/bin/python bench/capture_bench.py --plot           # the full grid (about 40 minutes)
    sudo .venv/bin/python bench/capture_bench.py --sizes 64 --rates 20k,300k,max --filters none,kernel
    .venv/bin/python bench/capture_bench.py --report a.csv b.csv --plot   # earlier runs' CSVs, together

Needs root (network namespaces, AF_PACKET) and a Linux kernel with veth. Not run by CI, and nothing it
needs is installed by tools/bootstrap.sh; install by hand:

    apt-get install -y netsniff-ng tcpreplay tcpdump   # trafgen, tcpreplay, tcpdump
    .venv/bin/pip install pcapy-ng                      # the libpcap peer (its rows print n/a without it)
    .venv/bin/pip install -e '.[test]'                  # scapy and matplotlib (--plot), if missing

The set-up, made anew on every run and always torn down (also on Ctrl-C and SIGTERM): two throwaway
network namespaces joined by a veth pair, the sender on one side (pinned to --sender-cpu) and the
receiver on the other (pinned to --receiver-cpu; veth's receive work, which runs the packet taps and
any in-kernel filter, happens on the sender's core). IPv6 is off in both so that no neighbour
discovery or MLD frame adds to the counts; the receiving side has no address, so the kernel drops
every frame after the taps have seen it.

Traffic: IPv4/UDP frames from 198.18.0.1 to 198.18.0.2 (the benchmarking range), alternately to
port 9 and to port 10, so `udp port 9` accepts exactly half. Frame sizes count as RFC 2544 counts
them, FCS included: size 64 is a 60-byte frame on the veth. Senders, by offered rate:

- up to --paced-max (150 kpps): `trafgen -t GAP` (netsniff-ng), one process, one CPU, as long as it
  can pace the rate: trafgen spends some time per packet beyond the gap (measured at start-up; about
  25 µs here, so trafgen -t tops out near 40 kpps on this machine), and is used for rates whose
  interval is at least twice that, with the gap shortened by it;
- above: `tcpreplay --pps R --pps-multi 16` looping a preloaded pcap (it paces accurately from 5 kpps
  up to its maximum, about 850 kpps here);
- `max`: unpaced trafgen for --duration seconds (not `trafgen -b`, which sends in bursts).

Offered = the receiving interface's rx counter (/sys/class/net/IF/statistics/rx_packets in its
namespace) over the sender's run: the frames that entered the receive path. For a filter, the
expected count is half of it (the port-9 frames).

Receivers, each in its own process (so its CPU time is its own), one at a time, round-robin over
--rounds rounds, with the same ring/buffer size (--buffer), snaplen and filter:

- `tcpdump -w /dev/null`: delivered = its "packets captured" line ("received by filter" and "dropped
  by kernel" are kept too); CPU from /proc/PID/stat once it listens to its exit (wait4);
- pcapy-ng: libpcap with a Python callback that counts (the user-space filter: libpcap's bpf_filter
  on each packet in the callback);
- scapy `sniff(store=False, prn=count)` (only up to --scapy-max-rate; its user-space filter an
  `lfilter`; it reads a plain socket, no ring, so --buffer does not apply);
- bpfjit `Capture.packets()` with a counting loop, and `Capture.batches()` (counting `len(rb.batch)`)
  and `Capture.dump("/dev/null")` once the Capture has them (n/a before).

Filters: `none`; `kernel` = `udp port 9` attached in the kernel; `user` = the same expression run in
user space (bpfjit `in_kernel=False`; tcpdump has no such mode: n/a). Python receivers measure their
CPU time (getrusage, every thread) from the moment the capture is open, so start-up, imports and
compilation are not counted; CPU per packet = that time over the packets delivered.

Idle: the run refuses to start when the 1-minute load average exceeds --max-load (--force starts
anyway), and before every measurement the machine's busy share is sampled for half a second while
nothing of the benchmark runs; above --max-busy it waits up to --idle-wait seconds, then measures
anyway and marks the row busy (`*` in the table, `busy` in the CSV). The figures are noisy on a
shared machine: read the min-max spread beside each median.

Output: a table on stdout, every measurement in a CSV (--csv, default bench/out/capture_bench.csv),
and with --plot a PNG of the share captured against the offered rate (matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import inspect
import json
import os
import re
import resource
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "out"
FILTER_EXPR = "udp port 9"
MATCHING_SHARE = {"none": 1.0, "kernel": 0.5, "user": 0.5}  # of the offered frames, by the traffic mix
FILTERS = ("none", "kernel", "user")
RECEIVERS = ("tcpdump", "pcapy", "scapy", "bpfjit-packets", "bpfjit-batches", "bpfjit-dump")
SENDER_MAC = bytes.fromhex("020000000001")
RECEIVER_MAC = bytes.fromhex("020000000002")
SENDER_IP = bytes([198, 18, 0, 1])
RECEIVER_IP = bytes([198, 18, 0, 2])
PORTS = (9, 10)  # alternate frames: `udp port 9` keeps half
FCS_LEN = 4
SLICE = 0.25  # seconds: how often a receiver's loop looks for the stop request


# -- arguments -------------------------------------------------------------------------------------
def parse_rate(text: str) -> int | None:
    """'50k' -> 50000, '1.2M' -> 1200000, '8000' -> 8000, 'max' -> None (unpaced)."""
    text = text.strip().lower()
    if text == "max":
        return None
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale != 1 else text
    try:
        rate = round(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a rate is packets per second (50k, 1.2M, 8000) or max: {text!r}") from None
    if rate <= 0:
        raise argparse.ArgumentTypeError(f"a rate must be positive, not {text!r}")
    return rate


def rate_label(rate: int | None) -> str:
    if rate is None:
        return "max"
    if rate % 1_000_000 == 0:
        return f"{rate // 1_000_000}M"
    return f"{rate / 1000:g}k" if rate >= 1000 else str(rate)


def _list(convert: Callable[[str], Any], choices: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [convert(item) for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("an empty list")
        for item in items:
            if choices is not None and item not in choices:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(choices)}")
        return items

    return parse


def _frame_size(text: str) -> int:
    size = int(text)
    if not 64 <= size <= 1518:
        raise argparse.ArgumentTypeError(f"a frame size is 64 to 1518 bytes (FCS included), not {size}")
    return size


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Share of offered packets delivered to the capture loop, per receiver, frame size and rate.",
        epilog="Needs root. The module docstring says what to install.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="one frame size (64), two rates (20k, max), filter none, one round of 1 s"
    )
    parser.add_argument("--sizes", type=_list(_frame_size), help="frame sizes, FCS included (64,512,1500)")
    parser.add_argument("--rates", type=_list(parse_rate), help="offered rates (5k,20k,100k,300k,600k,max)")
    parser.add_argument("--filters", type=_list(str, FILTERS), help="none,kernel,user (all)")
    parser.add_argument("--receivers", type=_list(str, RECEIVERS), help=f"{','.join(RECEIVERS)} (all)")
    parser.add_argument("--rounds", type=int, help="round-robin rounds (3)")
    parser.add_argument("--duration", type=float, help="seconds each sender runs (3)")
    parser.add_argument("--drain", type=float, default=1.0, help="seconds a receiver gets after the sender stops")
    parser.add_argument("--buffer", type=int, default=4 << 20, help="ring/buffer bytes for every receiver (4 MiB)")
    parser.add_argument("--snaplen", type=int, default=262144, help="snapshot length for every receiver")
    parser.add_argument(
        "--paced-max", type=parse_rate, default=150_000, help="highest rate trafgen -t paces; tcpreplay above it (150k)"
    )
    parser.add_argument(
        "--scapy-max-rate", type=parse_rate, default=20_000, help="scapy only runs at rates up to this (20k)"
    )
    parser.add_argument("--sender-cpu", type=int, default=0)
    parser.add_argument("--receiver-cpu", type=int, default=1)
    parser.add_argument("--max-load", type=float, default=0.5, help="refuse to start above this 1-minute load")
    parser.add_argument(
        "--max-busy",
        type=float,
        default=0.10,
        help="busy share of all CPUs before a measurement above which the row is marked busy",
    )
    parser.add_argument("--idle-wait", type=float, default=10.0, help="seconds to wait for an idle machine")
    parser.add_argument("--force", action="store_true", help="start even when the load average is high")
    parser.add_argument("--csv", type=Path, default=OUT / "capture_bench.csv")
    parser.add_argument(
        "--plot",
        nargs="?",
        type=Path,
        const=OUT / "capture_bench.png",
        default=None,
        help="write a PNG of share captured vs offered rate (default bench/out/capture_bench.png)",
    )
    parser.add_argument(
        "--report", type=Path, nargs="+", metavar="CSV",
        help="measure nothing: print the table (and --plot) of the CSVs of earlier runs, together",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one receiver (a JSON spec)
    args = parser.parse_args(argv)
    quick = {"sizes": [64], "rates": [20_000, None], "filters": ["none"], "rounds": 1, "duration": 1.0}
    full = {
        "sizes": [64, 512, 1500],
        "rates": [5_000, 20_000, 100_000, 300_000, 600_000, None],
        "filters": list(FILTERS),
        "rounds": 3,
        "duration": 3.0,
    }
    for name, default in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.receivers is None:
        args.receivers = list(RECEIVERS)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration positive")
    return args


# -- traffic ---------------------------------------------------------------------------------------
def _checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(size: int, dport: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of `size` bytes FCS included (so size - 4 on the wire here)."""
    length = size - FCS_LEN
    ip_len = length - 14
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0x4000, 64, 17, 0, SENDER_IP, RECEIVER_IP)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    udp = struct.pack("!HHHH", 1024, dport, ip_len - 20, 0)  # checksum 0: none, legal for IPv4
    return RECEIVER_MAC + SENDER_MAC + b"\x08\x00" + ip + udp + bytes(ip_len - 28)


def traffic(size: int) -> list[bytes]:
    return [udp_frame(size, port) for port in PORTS]


def write_pcap(path: Path, frames: Sequence[bytes], repeat: int = 1) -> None:
    """A classic pcap (µs, Ethernet) of `frames` repeated; tcpreplay loops it."""
    with open(path, "wb") as out:
        out.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for _ in range(repeat):
            for frame in frames:
                out.write(struct.pack("=IIII", 0, 0, len(frame), len(frame)) + frame)


def trafgen_config(frames: Sequence[bytes]) -> str:
    """trafgen's packet configuration: one `{ bytes }` block per frame, sent in order, round robin."""
    return "".join("{ " + ", ".join(f"0x{byte:02x}" for byte in frame) + " }\n" for frame in frames)


# -- the machine -----------------------------------------------------------------------------------
def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def busy_share(interval: float = 0.5) -> float:
    """The share of all CPUs' time spent not idle over `interval` seconds (/proc/stat)."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle, iowait
        return sum(values[:8]) - idle, sum(values[:8])  # user..steal; guest is already in user

    busy0, total0 = sample()
    time.sleep(interval)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


class Testbed:
    """Two throwaway network namespaces and a veth pair between them; `close()` removes everything."""

    def __init__(self) -> None:
        tag = f"bjcb{os.getpid()}"
        self.tx_ns, self.rx_ns = f"{tag}-tx", f"{tag}-rx"
        self.tx_if, self.rx_if = "vtx", "vrx"
        self.children: set[subprocess.Popen[Any]] = set()

    def open(self) -> None:
        for ns in (self.tx_ns, self.rx_ns):
            _run("ip", "netns", "add", ns)
            no_ipv6 = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            _run("ip", "netns", "exec", ns, "sysctl", "-qw", *no_ipv6)
        tx = [self.tx_if, "netns", self.tx_ns, "address", _mac(SENDER_MAC)]
        rx = [self.rx_if, "netns", self.rx_ns, "address", _mac(RECEIVER_MAC)]
        _run("ip", "link", "add", *tx, "type", "veth", "peer", "name", *rx)
        _run("ip", "-n", self.tx_ns, "link", "set", self.tx_if, "up")
        _run("ip", "-n", self.rx_ns, "link", "set", self.rx_if, "up")

    def close(self) -> None:
        for child in list(self.children):
            _stop_process(child)
        for ns in (self.tx_ns, self.rx_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __enter__(self) -> Testbed:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def rx_packets(self) -> int:
        path = f"/sys/class/net/{self.rx_if}/statistics/rx_packets"
        return int(_run("ip", "netns", "exec", self.rx_ns, "cat", path))

    def spawn(self, ns: str, cpu: int, command: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start `command` in namespace `ns` pinned to `cpu` (ip netns exec and taskset exec: one pid)."""
        # A session of its own: trafgen signals its whole process group when it stops, and Ctrl-C
        # reaches the benchmark alone, which then stops its children itself.
        child: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", ns, "taskset", "-c", str(cpu), *command], start_new_session=True, **popen
        )
        self.children.add(child)
        return child

    def reap(self, child: subprocess.Popen[Any], timeout: float) -> tuple[int, float]:
        """Wait for `child` (killing it after `timeout`): its exit status and CPU seconds (wait4)."""
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.01)
        child.returncode = os.waitstatus_to_exitcode(status)
        self.children.discard(child)
        return child.returncode, usage.ru_utime + usage.ru_stime


def _mac(raw: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in raw)


def _stop_process(child: subprocess.Popen[Any]) -> None:
    """Stop a child and whatever it forked (its process group: `Testbed.spawn` starts a session)."""
    with contextlib.suppress(ProcessLookupError, ChildProcessError):
        os.killpg(child.pid, signal.SIGINT)
        try:
            child.wait(2)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def _process_cpu(pid: int) -> float:
    """utime + stime of a live process (/proc/PID/stat fields 14 and 15), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat.rsplit(")", 1)[1].split()
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


# -- senders ---------------------------------------------------------------------------------------
@dataclass
class Sender:
    name: str
    command: list[str]
    stop_after: float | None  # seconds, for the unpaced sender; None: it stops at its packet count


def trafgen_command(device: str, files: dict[str, Path]) -> list[str]:
    # One process on one CPU (sending the frames in order); leave the socket-memory sysctls and IRQ
    # affinities, which are the machine's, alone; no CPU statistics.
    return ["trafgen", "-o", device, "-i", str(files["trafgen"]), "-P", "1", "--no-sock-mem", "--notouch-irq", "-C"]


def sender_for(
    rate: int | None, paced_max: int, overhead_ns: float, duration: float, device: str, files: dict[str, Path]
) -> Sender:
    """The sender that offers `rate` (None: as fast as one core sends) for about `duration` seconds.

    trafgen's -t gap comes on top of what sending and sleeping cost it (`overhead_ns` a packet,
    `calibrate_trafgen`), so the gap asked for is the interval less that, and trafgen paces only rates
    whose interval is at least twice it; tcpreplay sends the faster ones.
    """
    if rate is None:
        return Sender("trafgen", trafgen_command(device, files), duration)
    count = max(2, round(rate * duration))
    interval = 1e9 / rate
    if rate <= paced_max and interval >= 2 * overhead_ns:
        gap = f"{round(interval - overhead_ns)}ns"
        return Sender("trafgen -t", [*trafgen_command(device, files), "-n", str(count), "-t", gap], None)
    replay = ["tcpreplay", "-q", "-i", device, "-K", "--pps", str(rate), "--pps-multi", "16"]
    return Sender("tcpreplay", [*replay, "--loop", "0", "-L", str(count), str(files["pcap"])], None)


def calibrate_trafgen(
    bed: Testbed, cpu: int, files: dict[str, Path], gap_ns: int = 20_000, count: int = 20_000
) -> float:
    """What one paced packet costs trafgen beyond its -t gap, in ns (seen here: about 25 µs, which caps
    trafgen -t near 40 kpps on this machine, not the 150 kpps it reaches elsewhere)."""
    command = [*trafgen_command(bed.tx_if, files), "-n", "2"]
    started = time.monotonic()
    bed.reap(bed.spawn(bed.tx_ns, cpu, command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), 30)
    startup = time.monotonic() - started
    command = [*trafgen_command(bed.tx_if, files), "-n", str(count), "-t", f"{gap_ns}ns"]
    started = time.monotonic()
    bed.reap(bed.spawn(bed.tx_ns, cpu, command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), 60)
    elapsed = time.monotonic() - started - startup
    return max(0.0, elapsed * 1e9 / count - gap_ns)


# -- receivers (run in their own process: `--worker SPEC`) -----------------------------------------
def _stop_requested() -> threading.Event:
    """An event set when the parent writes a line to our stdin (or closes it)."""
    stop = threading.Event()

    def wait() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait, daemon=True).start()
    return stop


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ready() -> None:
    print("READY", flush=True)


def _capture_class() -> Any:
    import bpfjit

    found = getattr(bpfjit, "Capture", None)
    if found is None:
        from bpfjit.capture import Capture as found
    return found


def _count_from(result: object) -> int | None:
    """A packet count out of whatever `dump()` returns: an int, or a stats-like record."""
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    for name in ("packets", "accepted", "captured", "delivered"):  # (DumpStats: packets, bytes, capture)
        value = getattr(result, name, None)
        if isinstance(value, int):
            return value
    return None


def batch_size(item: Any) -> int:
    """Packets in what `batches()` yields: a `RingBatch` (batch, timestamps_ns, meta) or a bare `Batch`."""
    return len(getattr(item, "batch", item))


def _takes_timeout(method: Callable[..., Any]) -> bool:
    try:
        return "timeout" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def worker_bpfjit(spec: dict[str, Any]) -> dict[str, Any]:
    Capture = _capture_class()
    expr = None if spec["filter"] == "none" else FILTER_EXPR
    cap = Capture(
        spec["iface"], expr, snaplen=spec["snaplen"], in_kernel=spec["filter"] != "user", buffer_size=spec["buffer"]
    )
    stop = _stop_requested()
    mode = spec["receiver"].removeprefix("bpfjit-")
    delivered: int | None = 0
    start = _cpu_seconds()
    _ready()
    if mode == "packets" or (mode == "batches" and _takes_timeout(cap.batches)):
        count: Callable[[Any], int] = (lambda _: 1) if mode == "packets" else batch_size
        method = getattr(cap, mode)
        total = 0
        while not stop.is_set():
            for item in method(timeout=SLICE):
                total += count(item)
        delivered = total
    else:
        # batches() without a timeout, and dump(), run until the capture is closed from another thread.
        threading.Thread(target=lambda: (stop.wait(), cap.close()), daemon=True).start()
        if mode == "batches":
            total = 0
            for batch in cap.batches():
                total += batch_size(batch)
            delivered = total
        else:
            delivered = _count_from(cap.dump("/dev/null"))
    cpu = _cpu_seconds() - start
    stats = cap.stats()
    cap.close()
    if delivered is None:  # dump() said nothing: what the socket took in and kept
        delivered = stats.received - stats.dropped - stats.rejected
    return {
        "delivered": delivered,
        "cpu": cpu,
        "received": stats.received,
        "dropped": stats.dropped,
        "in_kernel": bool(getattr(cap, "in_kernel", False)),
    }


def worker_pcapy(spec: dict[str, Any]) -> dict[str, Any]:
    import pcapy  # type: ignore[import-not-found]

    handle = pcapy.create(spec["iface"])
    handle.set_snaplen(spec["snaplen"])
    handle.set_promisc(0)
    handle.set_timeout(50)  # ms: bpfjit's block timeout
    handle.set_buffer_size(spec["buffer"])
    handle.activate()
    counted = [0]
    if spec["filter"] == "kernel":
        handle.setfilter(FILTER_EXPR)
    if spec["filter"] == "user":
        program = pcapy.compile(handle.datalink(), spec["snaplen"], FILTER_EXPR, 1, 0)
        test = program.filter

        def callback(header: Any, data: bytes) -> None:
            if test(data):
                counted[0] += 1

    else:

        def callback(header: Any, data: bytes) -> None:
            counted[0] += 1

    handle.setnonblock(1)
    fd = handle.getfd()
    stop = _stop_requested()
    start = _cpu_seconds()
    _ready()
    while not stop.is_set():
        select.select([fd], [], [], SLICE)
        handle.dispatch(-1, callback)
    handle.dispatch(-1, callback)
    cpu = _cpu_seconds() - start
    received, dropped, _ = handle.stats()
    handle.close()
    return {"delivered": counted[0], "cpu": cpu, "received": received, "dropped": dropped}


def worker_scapy(spec: dict[str, Any]) -> dict[str, Any]:
    from scapy.config import conf
    from scapy.layers.inet import UDP
    from scapy.sendrecv import AsyncSniffer

    conf.verb = 0
    counted = [0]
    started = threading.Event()

    def count(_packet: Any) -> None:
        counted[0] += 1

    def port_9(packet: Any) -> bool:
        return UDP in packet and 9 in (packet[UDP].sport, packet[UDP].dport)

    sniffer = AsyncSniffer(
        iface=spec["iface"],
        store=False,
        prn=count,
        promisc=False,
        started_callback=started.set,
        filter=FILTER_EXPR if spec["filter"] == "kernel" else None,
        lfilter=port_9 if spec["filter"] == "user" else None,
    )
    stop = _stop_requested()
    sniffer.start()
    if not started.wait(30):
        raise RuntimeError("scapy's sniffer did not start")
    start = _cpu_seconds()
    _ready()
    stop.wait()
    sniffer.stop()
    cpu = _cpu_seconds() - start
    return {"delivered": counted[0], "cpu": cpu}


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "pcapy": worker_pcapy,
    "scapy": worker_scapy,
    "bpfjit-packets": worker_bpfjit,
    "bpfjit-batches": worker_bpfjit,
    "bpfjit-dump": worker_bpfjit,
}


def run_worker(spec_text: str) -> int:
    spec = json.loads(spec_text)
    try:
        result = WORKERS[spec["receiver"]](spec)
    except Exception as exc:  # reported to the parent as the row's note
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def unavailable(receiver: str, filter_name: str, rate: int | None, scapy_max_rate: int) -> str | None:
    """Why `receiver` has no row for this filter and rate (None: it runs)."""
    if receiver == "tcpdump":
        if shutil.which("tcpdump") is None:
            return "tcpdump not installed"
        return "no user-space filter mode" if filter_name == "user" else None
    if receiver == "pcapy":
        try:
            import pcapy  # noqa: F401
        except ImportError:
            return "pcapy-ng not installed"
        return None
    if receiver == "scapy":
        try:
            import scapy  # noqa: F401
        except ImportError:
            return "scapy not installed"
        return None if rate is not None and rate <= scapy_max_rate else "only at low rates"
    method = receiver.removeprefix("bpfjit-")
    if method != "packets" and not hasattr(_capture_class(), method):
        return f"no Capture.{method}() yet"
    return None


# -- one measurement -------------------------------------------------------------------------------
@dataclass
class Measurement:
    """One receiver at one (frame size, rate, filter) in one round; a CSV row."""

    round: int
    receiver: str
    filter: str
    size: int
    rate: str
    sender: str = ""
    offered: int = 0  # frames the receiving interface took in over the sender's run
    expected: int = 0  # of those, the ones the filter accepts
    seconds: float = 0.0  # the sender's run
    delivered: int | None = None
    cpu_s: float | None = None
    kernel_received: int | None = None
    kernel_dropped: int | None = None
    busy: float = 0.0  # the machine's busy share just before
    marked_busy: bool = False
    status: str = "ok"  # ok, n/a, error
    note: str = ""

    @property
    def offered_pps(self) -> float:
        return self.offered / self.seconds if self.seconds else 0.0

    @property
    def share(self) -> float | None:
        if self.status != "ok" or self.delivered is None or not self.expected:
            return None
        return self.delivered / self.expected

    @property
    def cpu_per_packet_us(self) -> float | None:
        if self.status != "ok" or self.cpu_s is None or not self.delivered:
            return None
        return self.cpu_s / self.delivered * 1e6


def _wait_line(stream: Any, want: Callable[[str], bool], timeout: float, seen: list[str]) -> bool:
    """Read lines of `stream` into `seen` until one satisfies `want` (True) or EOF/timeout (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = stream.readline()
        if not line:
            return False
        seen.append(line.rstrip("\n"))
        if want(line):
            return True
    return False


class ReceiverRun:
    """A receiver process: started, ready, stopped; then its delivered count and CPU seconds."""

    def __init__(self, bed: Testbed, spec: dict[str, Any], cpu: int) -> None:
        self.bed, self.spec = bed, spec
        self.lines: list[str] = []
        tcpdump = spec["receiver"] == "tcpdump"  # (writes to /dev/null, reports on stderr; a worker on stdout)
        if tcpdump:
            command = ["tcpdump", "-i", spec["iface"], "-n", "-p", "-B", str(spec["buffer"] // 1024),
                       "-s", str(spec["snaplen"]), "-w", "/dev/null"]  # fmt: skip
            if spec["filter"] == "kernel":
                command.append(FILTER_EXPR)
        else:
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        talk = subprocess.DEVNULL if tcpdump else subprocess.PIPE
        self.child = bed.spawn(bed.rx_ns, cpu, command, stdin=talk, stdout=talk, stderr=subprocess.PIPE, text=True)
        self.stream = self.child.stderr if tcpdump else self.child.stdout
        self.cpu_at_ready = 0.0

    def wait_ready(self, timeout: float = 60.0) -> None:
        tcpdump = self.spec["receiver"] == "tcpdump"
        ok = _wait_line(
            self.stream,
            (lambda line: "listening on" in line) if tcpdump else (lambda line: line.startswith(("READY", "RESULT"))),
            timeout,
            self.lines,
        )
        if not ok or self.lines[-1].startswith("RESULT"):
            raise RuntimeError(self._failure("did not start"))
        if tcpdump:
            self.cpu_at_ready = _process_cpu(self.child.pid)

    def stop(self) -> dict[str, Any]:
        if self.spec["receiver"] == "tcpdump":
            os.kill(self.child.pid, signal.SIGINT)
            _, total_cpu = self.bed.reap(self.child, 10)
            assert self.stream is not None
            self.lines += self.stream.read().splitlines()
            counts = {}
            for line in self.lines:
                found = re.match(r"(\d+) packets? (captured|received by filter|dropped by kernel)", line)
                if found:
                    counts[found.group(2)] = int(found.group(1))
            if "captured" not in counts:
                raise RuntimeError(self._failure("printed no counts"))
            return {
                "delivered": counts["captured"],
                "cpu": total_cpu - self.cpu_at_ready,
                "received": counts.get("received by filter"),
                "dropped": counts.get("dropped by kernel"),
            }
        assert self.child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.child.stdin.write("STOP\n")
            self.child.stdin.flush()
        _wait_line(self.stream, lambda line: line.startswith("RESULT "), 30, self.lines)
        self.bed.reap(self.child, 5)
        result: dict[str, Any] = next(
            (json.loads(line[7:]) for line in self.lines if line.startswith("RESULT ")), {"error": ""}
        )
        if "error" in result:
            raise RuntimeError(result["error"] or self._failure("gave no result"))
        return result

    def _failure(self, what: str) -> str:
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()
        self.bed.children.discard(self.child)
        error = self.child.stderr.read() if self.child.stderr and self.child.stderr is not self.stream else ""
        tail = " | ".join([*self.lines[-3:], *error.strip().splitlines()[-3:]])
        return f"{self.spec['receiver']} {what}: {tail}"


def wait_for_idle(max_busy: float, patience: float) -> float:
    """The machine's busy share, sampled until it is at most `max_busy` or `patience` seconds pass."""
    deadline = time.monotonic() + patience
    while True:
        busy = busy_share()
        if busy <= max_busy or time.monotonic() >= deadline:
            return busy


def measure(
    bed: Testbed, args: argparse.Namespace, row: Measurement, rate: int | None, files: dict[str, Path]
) -> Measurement:
    row.busy = wait_for_idle(args.max_busy, args.idle_wait)
    row.marked_busy = row.busy > args.max_busy
    sender = sender_for(rate, args.paced_max, args.trafgen_overhead_ns, args.duration, bed.tx_if, files)
    row.sender = sender.name
    spec = {
        "receiver": row.receiver,
        "filter": row.filter,
        "iface": bed.rx_if,
        "snaplen": args.snaplen,
        "buffer": args.buffer,
    }
    receiver = ReceiverRun(bed, spec, args.receiver_cpu)
    try:
        receiver.wait_ready()
        before = bed.rx_packets()
        started = time.monotonic()
        child = bed.spawn(
            bed.tx_ns,
            args.sender_cpu,
            sender.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if sender.stop_after is not None:
            time.sleep(sender.stop_after)
            # Its process group: trafgen's sending process is a child of the one started (as after ^C).
            # (os, not Popen.send_signal, whose poll() would reap the child before reap's wait4.)
            os.killpg(child.pid, signal.SIGINT)
        status, _ = bed.reap(child, args.duration * 3 + 30)
        row.seconds = time.monotonic() - started
        if status not in (0, -signal.SIGINT, 130):
            error = child.stderr.read().decode(errors="replace").strip() if child.stderr else ""
            raise RuntimeError(f"{sender.name} exited {status}: {error[-300:]}")
        time.sleep(0.05)
        row.offered = bed.rx_packets() - before
        row.expected = round(row.offered * MATCHING_SHARE[row.filter])
        time.sleep(args.drain)
        result = receiver.stop()
    except RuntimeError as exc:
        row.status, row.note = "error", str(exc)
        _stop_process(receiver.child)
        bed.children.discard(receiver.child)
        return row
    row.delivered, row.cpu_s = result["delivered"], result["cpu"]
    row.kernel_received, row.kernel_dropped = result.get("received"), result.get("dropped")
    if result.get("in_kernel") is False and row.filter == "kernel":
        row.note = "bpfjit filtered in user space"
    return row


def plan(args: argparse.Namespace) -> Iterator[tuple[int, int, int | None, str, str]]:
    """(round, size, rate, filter, receiver) in run order: receivers round-robin, their order rotated each round."""
    receivers = list(args.receivers)
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(receivers)
        order = receivers[shift:] + receivers[:shift]
        for size in args.sizes:
            for rate in args.rates:
                for filter_name in args.filters:
                    for receiver in order:
                        yield round_, size, rate, filter_name, receiver


# -- reporting -------------------------------------------------------------------------------------
CSV_FIELDS = [f.name for f in fields(Measurement)] + ["offered_pps", "share", "cpu_per_packet_us"]


def write_csv(path: Path, rows: Iterable[Measurement]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            record = {name: getattr(row, name) for name in CSV_FIELDS}
            for name in ("offered_pps", "share", "cpu_per_packet_us", "cpu_s", "seconds", "busy"):
                value = record[name]
                record[name] = "" if value is None else f"{value:.6g}"
            writer.writerow({k: "" if v is None else v for k, v in record.items()})


def read_csv(path: Path) -> list[Measurement]:
    """The measurements `write_csv` wrote (the derived columns are computed again)."""
    kinds = {f.name: str(f.type) for f in fields(Measurement)}
    rows = []
    with open(path, newline="") as f:
        for record in csv.DictReader(f):
            values: dict[str, Any] = {}
            for name, kind in kinds.items():
                text = record.get(name, "")
                if text == "" and "None" in kind:
                    values[name] = None
                elif kind.startswith("int"):
                    values[name] = int(text)
                elif kind.startswith("float"):
                    values[name] = float(text or 0)
                elif kind == "bool":
                    values[name] = text == "True"
                else:
                    values[name] = text
            rows.append(Measurement(**values))
    return rows


@dataclass
class Summary:
    """The rounds of one (receiver, filter, size, rate)."""

    receiver: str
    filter: str
    size: int
    rate: str
    offered_kpps: float | None = None
    share: float | None = None  # median over the rounds
    share_min: float | None = None
    share_max: float | None = None
    cpu_us: float | None = None  # median CPU per delivered packet
    dropped: float | None = None  # median kernel drops as a share of the offered frames
    rounds: int = 0
    busy_rounds: int = 0
    notes: list[str] = field(default_factory=list)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(rows: Iterable[Measurement]) -> list[Summary]:
    groups: dict[tuple[str, str, int, str], list[Measurement]] = {}
    for row in rows:
        groups.setdefault((row.receiver, row.filter, row.size, row.rate), []).append(row)
    out = []
    for (receiver, filter_name, size, rate), members in groups.items():
        ok = [m for m in members if m.status == "ok"]
        shares = [s for m in ok if (s := m.share) is not None]
        drops = [m.kernel_dropped / m.offered for m in ok if m.kernel_dropped is not None and m.offered]
        summary = Summary(
            receiver, filter_name, size, rate,
            offered_kpps=_median([m.offered_pps / 1000 for m in ok]),
            share=_median(shares), share_min=min(shares, default=None), share_max=max(shares, default=None),
            cpu_us=_median([c for m in ok if (c := m.cpu_per_packet_us) is not None]),
            dropped=_median(drops), rounds=len(ok), busy_rounds=sum(m.marked_busy for m in ok),
            notes=sorted({m.note for m in members if m.note}),
        )  # fmt: skip
        out.append(summary)
    return out


def format_table(summaries: Sequence[Summary]) -> str:
    header = (
        "receiver",
        "filter",
        "frame",
        "rate",
        "offered kpps",
        "share",
        "min-max",
        "CPU us/pkt",
        "drop/offered",
        "rounds",
    )
    lines = [header]
    for s in summaries:
        if s.rounds == 0:
            lines.append((s.receiver, s.filter, str(s.size), s.rate, "", "n/a", "", "", "", "; ".join(s.notes)))
            continue
        assert s.share is not None and s.share_min is not None and s.share_max is not None
        busy = f" ({s.busy_rounds}*)" if s.busy_rounds else ""
        lines.append((
            s.receiver, s.filter, str(s.size), s.rate,
            "" if s.offered_kpps is None else f"{s.offered_kpps:.1f}",
            f"{s.share:.1%}", f"{s.share_min:.1%}-{s.share_max:.1%}",
            "" if s.cpu_us is None else f"{s.cpu_us:.3g}",
            "" if s.dropped is None else f"{s.dropped:.1%}",
            f"{s.rounds}{busy}" + ("; " + "; ".join(s.notes) if s.notes else ""),
        ))  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in lines
    )


def plot(path: Path, summaries: Sequence[Summary]) -> bool:
    """Share captured vs offered rate: one panel per (filter, frame size), one line per receiver."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: .venv/bin/pip install matplotlib", file=sys.stderr)
        return False
    measured = [s for s in summaries if s.share is not None and s.offered_kpps]
    # Only the (filter, frame size) pairs measured: runs of different grids can be reported together.
    panels = sorted({(FILTERS.index(s.filter), s.size) for s in measured})
    if not panels:
        return False
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        rows, columns, squeeze=False, sharex=True, sharey=True, figsize=(4.5 * columns, 3.4 * rows)
    )
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (filter_index, size) in zip(axes.flat, panels, strict=False):
        filter_name = FILTERS[filter_index]
        for number, receiver in enumerate(RECEIVERS):  # one colour per receiver in every panel
            points = sorted(
                (s.offered_kpps or 0.0, (s.share or 0.0) * 100)
                for s in measured
                if s.receiver == receiver and s.filter == filter_name and s.size == size
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", color=f"C{number}", label=receiver)
        ax.set_title(f"{size}-byte frames, filter: {filter_name}", fontsize=9)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("offered (kpps)")
        ax.xaxis.set_tick_params(labelbottom=True)  # (sharex hides them above an empty slot)
        ax.set_ylabel("share captured (%)")
        ax.set_ylim(0, 105)
        ax.grid(True, alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        handles.update((label, handle) for handle, label in zip(*ax.get_legend_handles_labels(), strict=True))
    figure.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=8)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return True


# -- main ------------------------------------------------------------------------------------------
def preflight(args: argparse.Namespace) -> str | None:
    """Why the run cannot start, or None."""
    if os.geteuid() != 0:
        return "capture_bench needs root (network namespaces, veth, AF_PACKET): sudo .venv/bin/python " + " ".join(
            sys.argv
        )
    missing = [tool for tool in ("ip", "taskset", "trafgen", "tcpreplay") if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install -y iproute2 util-linux netsniff-ng tcpreplay"
    cpus = os.cpu_count() or 1
    if max(args.sender_cpu, args.receiver_cpu) >= cpus or args.sender_cpu == args.receiver_cpu:
        return f"--sender-cpu and --receiver-cpu must be two different CPUs below {cpus}"
    load = load_average()
    if load > args.max_load and not args.force:
        return f"the machine is not idle (load average {load:.2f} > --max-load {args.max_load}); --force runs anyway"
    return None


def report(rows: Sequence[Measurement], args: argparse.Namespace) -> int:
    summaries = summarise(rows)
    print()
    print(format_table(summaries))
    print(f"\n* = rounds measured while the machine was busier than --max-busy ({args.max_busy:.0%} by default)")
    if args.plot and plot(args.plot, summaries):
        print(f"plot: {args.plot}")
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args.worker)
    if args.report:
        return report([row for path in args.report for row in read_csv(path)], args)
    reason = preflight(args)
    if reason:
        print(reason, file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    steps = list(plan(args))
    print(
        f"{len(steps)} measurements of {args.duration:g} s (+ start-up, {args.drain:g} s drain, idle checks); "
        f"load average {load_average():.2f}",
        flush=True,
    )
    rows: list[Measurement] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="capture_bench.") as scratch, Testbed() as bed:
        files_by_size = {}
        for size in args.sizes:
            frames = traffic(size)
            pcap, config = Path(scratch) / f"{size}.pcap", Path(scratch) / f"{size}.cfg"
            write_pcap(pcap, frames, repeat=256)
            config.write_text(trafgen_config(frames))
            files_by_size[size] = {"pcap": pcap, "trafgen": config}
        try:
            args.trafgen_overhead_ns = calibrate_trafgen(bed, args.sender_cpu, files_by_size[args.sizes[0]])
            print(f"trafgen -t costs {args.trafgen_overhead_ns / 1000:.1f} us a packet beyond its gap", flush=True)
            for number, (round_, size, rate, filter_name, receiver) in enumerate(steps, 1):
                row = Measurement(round_, receiver, filter_name, size, rate_label(rate))
                why_not = unavailable(receiver, filter_name, rate, args.scapy_max_rate)
                if why_not:
                    row.status, row.note = "n/a", why_not
                else:
                    measure(bed, args, row, rate, files_by_size[size])
                    share = "" if row.share is None else f"{row.share:.1%}"
                    cpu = "" if row.cpu_per_packet_us is None else f"{row.cpu_per_packet_us:.3g} us/pkt"
                    print(
                        f"[{number}/{len(steps)}] round {round_} {receiver} {filter_name} {size} B "
                        f"{rate_label(rate)}: offered {row.offered_pps / 1000:.1f} kpps, {share} {cpu}"
                        f"{' BUSY %.0f%%' % (row.busy * 100) if row.marked_busy else ''} {row.note}",
                        flush=True,
                    )
                rows.append(row)
        except KeyboardInterrupt as exc:
            interrupted = True
            print(f"interrupted ({str(exc) or 'Ctrl-C'}): reporting what was measured", file=sys.stderr)
    write_csv(args.csv, rows)
    print(f"CSV: {args.csv}")
    report(rows, args)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
