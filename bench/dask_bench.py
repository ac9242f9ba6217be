"""A capture collection on Dask: `bpfjit.dask` on 1 and 2 local workers against plain loops and tcpdump.

    python bench/dask_bench.py                       # 16 files x 40,000 packets (~230 MB), 3 rounds
    python bench/dask_bench.py --files 32 --packets 100000 --rounds 5

Generates the collection once (bpfjit.packetmix, four seeds, kept in --workdir, read into the page
cache), starts two `distributed.LocalCluster`s (1 and 2 worker processes of one thread each, warmed up
once so that the disk code cache holds every walker and classifier), then, round by round and
interleaved so that every way sees the same machine:

- count: the 16 real filters of `bpfjit.benchmark` over every file: `bpfjit.dask.count` on 1 and 2
  workers; a plain loop of `count_file` (one classifier pass per file); and a loop of `filter_file`
  without output per filter (16 passes per file: what counting without the classifier costs);
- filter: 'tcp port 80' to one output per file: `bpfjit.dask.filter_files` on 1 and 2 workers and on
  Dask's threads (`LocalCluster(processes=False)`, 2 threads); a plain loop over `filter_file`, on one
  thread and on bpfjit's own two threads (`workers=2`); and `tcpdump -r IN -w OUT` per file, two at a
  time (`xargs -P 2`);
- python: the same filter in Python, as users do it today: pcap-parallel (PyPI `pcap-parallel`: dpkt
  reads the file in the main process and hands chunks to a process pool) with a dpkt callback that
  decodes Ethernet/IPv4/IPv6/TCP and tests the ports, on two processes; the count must equal bpfjit's
  (skipped when pcap-parallel is not installed: `pip install pcap-parallel dpkt`);
- gzip: the first file gzipped (`gzip -6`): `zcat > /dev/null` against `count_file` (16 filters) and
  `filter_file` reading it streamed (`capfile.Stream(gzip.open(...))`, no temporary file);
- one large file: the records of the first 8 files in one pcap file, counted and filtered on 1 and 2
  workers (cut into byte-range parts: `capparts`, the part size the cluster's threads ask for) against
  `count_file` / `filter_file` on one thread and `filter_file(..., workers=2)`.

Every output and count is checked against the loop's first. Reports medians (wall time) and the ratios
of the same run: on a shared machine only ratios from one run mean anything.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXPRESSION = "tcp port 80"


def generate(workdir: Path, files: int, packets: int) -> list[Path]:
    from bpfjit import packetmix

    src = workdir / f"collection-{files}x{packets}"
    src.mkdir(parents=True, exist_ok=True)
    paths = [src / f"capture-{i:03d}.pcap" for i in range(files)]
    for i, path in enumerate(paths):
        if not path.exists():
            seed_file = src / f"seed-{i % 4}.bin"
            if not seed_file.exists():
                packetmix.write_pcap(seed_file, packetmix.generate(packets, seed=1 + i % 4))
            shutil.copy(seed_file, path)
    for path in paths:
        path.read_bytes()  # into the page cache
    return paths


def dpkt_tcp_port_80(chunk: object) -> int:
    """`tcp port 80` as a dpkt user writes it (pcap-parallel's callback): Ethernet without VLAN tags,
    IPv4 first fragments or IPv6 with TCP right after the fixed header, either port 80."""
    import dpkt

    accepted = 0
    for _, frame in dpkt.pcap.Reader(chunk):
        try:
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if isinstance(ip, bytes):  # an IP header cut by the snap length
                continue
            if eth.type == dpkt.ethernet.ETH_TYPE_IP:
                if ip.offset or ip.p != dpkt.ip.IP_PROTO_TCP:
                    continue
            elif eth.type == dpkt.ethernet.ETH_TYPE_IP6:
                if ip.nxt != dpkt.ip.IP_PROTO_TCP:
                    continue
            else:
                continue
            tcp = ip.data
            if isinstance(tcp, bytes):  # a header cut by the snap length: dpkt keeps the bytes; tcpdump
                ports = struct.unpack_from(f"!{len(tcp[:4]) // 2}H", tcp)  # reads the ports that are there
            else:
                ports = (tcp.sport, tcp.dport)
            accepted += 80 in ports
        except dpkt.UnpackError:  # the IP header itself is cut: tcpdump's loads fail too
            continue
    return accepted


def timed(run: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def concatenated(paths: list[Path], big: Path) -> Path:
    """One pcap file with the records of `paths` (same header), kept beside them."""
    if not big.exists():
        with open(big, "wb") as out:
            out.write(paths[0].read_bytes()[:24])
            for path in paths:
                out.write(path.read_bytes()[24:])
    big.read_bytes()
    return big


def fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--packets", type=int, default=40_000, help="packets per file (~365 bytes a record)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bpfjit-dask-bench")
    parser.add_argument("--part-bytes", type=int, default=None,
                        help="bpfjit.dask's part size (default: the one the cluster's threads ask for)")
    parser.add_argument("--no-python", action="store_true", help="leave out the pcap-parallel + dpkt row (slow)")
    args = parser.parse_args()

    import distributed

    from bpfjit import capfile
    from bpfjit import dask as bpfjit_dask
    from bpfjit.benchmark import REAL_FILTERS

    filters = dict(REAL_FILTERS)
    assert len(filters) == 16
    paths = generate(args.workdir, args.files, args.packets)
    size = sum(p.stat().st_size for p in paths)
    glob = str(paths[0].parent / "capture-*.pcap")
    tcpdump = shutil.which("tcpdump") or "/usr/bin/tcpdump"
    print(f"{len(paths)} files, {size / 1e6:.0f} MB, {args.packets} packets each; {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds")  # fmt: skip

    clusters = {n: distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
                for n in (1, 2)}  # fmt: skip
    clusters[0] = distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0")
    clients = {n: distributed.Client(cluster, set_as_default=False) for n, cluster in clusters.items()}
    packed = paths[0].with_name(paths[0].name + ".gz")
    if not packed.exists():
        subprocess.run(f"gzip -6 -c {paths[0]} > {packed}", shell=True, check=True)
    packed.read_bytes()
    big = concatenated(paths[:8], paths[0].with_name("one-large.pcap"))
    out = args.workdir / "out"
    expected_counts = None

    def loop_count() -> object:
        results = [capfile.count_file(p, list(filters.values())) for p in paths]
        return [sum(r.packets[i] for r in results) for i in range(len(filters))]

    def loop_filter_per_filter() -> object:
        return [sum(capfile.filter_file(p, None, e, workers=1).accepted for p in paths) for e in filters.values()]

    def dask_count(n: int) -> object:
        with clients[n].as_current():
            totals = bpfjit_dask.count(glob, filters, part_bytes=args.part_bytes)
        return [c.packets for c in totals.counts.values()]

    def loop_filter() -> object:
        target = fresh(out / "loop")
        return [capfile.filter_file(p, target / p.name, EXPRESSION, workers=1).accepted for p in paths]

    def dask_filter(n: int) -> object:
        with clients[n].as_current():
            results = bpfjit_dask.filter_files(glob, EXPRESSION, fresh(out / f"dask{n}"), part_bytes=args.part_bytes)
        return [r.stats.accepted for r in results if r.stats is not None]

    def loop_filter_threads() -> object:
        target = fresh(out / "threads")
        return [capfile.filter_file(p, target / p.name, EXPRESSION, workers=2).accepted for p in paths]

    def zcat() -> object:
        subprocess.run(f"zcat {packed} > /dev/null", shell=True, check=True)
        return None

    def gz_count() -> object:
        with gzip.open(packed) as stream:
            return capfile.count_file(capfile.Stream(stream, packed.name), list(filters.values())).packets

    def gz_filter() -> object:
        with gzip.open(packed) as stream:
            return capfile.filter_file(capfile.Stream(stream, packed.name), out / "gz.pcap", EXPRESSION).accepted

    def pcap_parallel_filter() -> object:
        from pcap_parallel import PCAPParallel

        counts = []
        for path in paths:
            futures = PCAPParallel(str(path), callback=dpkt_tcp_port_80, maximum_cores=2).split()
            counts.append(sum(future.result() for future in futures))
        return counts

    def tcpdump_filter() -> object:
        target = fresh(out / "tcpdump")
        names = "".join(f"{p}\n" for p in paths)
        script = f'exec {tcpdump} -r "$1" -w "{target}/$(basename "$1")" {EXPRESSION} 2>/dev/null'
        subprocess.run(["xargs", "-P", "2", "-I{}", "sh", "-c", script, "sh", "{}"], input=names.encode(), check=True)
        return None

    def big_count() -> object:
        return list(capfile.count_file(big, list(filters.values())).packets)

    def big_dask_count(n: int) -> object:
        with clients[n].as_current():
            return [c.packets for c in bpfjit_dask.count(str(big), filters, part_bytes=args.part_bytes).counts.values()]

    def big_filter(workers: int) -> object:
        return capfile.filter_file(big, fresh(out / f"big-threads{workers}") / big.name, EXPRESSION,
                                   workers=workers).accepted  # fmt: skip

    def big_dask_filter(n: int) -> object:
        with clients[n].as_current():
            (result,) = bpfjit_dask.filter_files(str(big), EXPRESSION, fresh(out / f"big-dask{n}"),
                                                 part_bytes=args.part_bytes)
        return result.stats.accepted if result.stats is not None else None

    ways: dict[str, Callable[[], object]] = {
        "count: loop of count_file": loop_count,
        "count: loop of filter_file x16": loop_filter_per_filter,
        "count: dask, 1 worker": lambda: dask_count(1),
        "count: dask, 2 workers": lambda: dask_count(2),
        "filter: loop of filter_file": loop_filter,
        "filter: dask, 1 worker": lambda: dask_filter(1),
        "filter: dask, 2 workers": lambda: dask_filter(2),
        "filter: dask, 2 threads (no procs)": lambda: dask_filter(0),
        "filter: loop, workers=2 threads": loop_filter_threads,
        "filter: tcpdump, xargs -P 2": tcpdump_filter,
    }
    try:
        import dpkt  # noqa: F401
        import pcap_parallel  # noqa: F401
    except ImportError:
        print("pcap-parallel or dpkt not installed: no Python row")
    else:
        if not args.no_python:
            ways["filter: pcap-parallel + dpkt, 2 procs"] = pcap_parallel_filter
    gz_ways: dict[str, Callable[[], object]] = {
        "gz: zcat > /dev/null": zcat,
        "gz: count_file, streamed": gz_count,
        "gz: filter_file, streamed": gz_filter,
    }
    ways.update(gz_ways)
    big_ways: dict[str, Callable[[], object]] = {
        "one file: count_file": big_count,
        "one file: dask count, 1 worker": lambda: big_dask_count(1),
        "one file: dask count, 2 workers": lambda: big_dask_count(2),
        "one file: filter_file": lambda: big_filter(1),
        "one file: filter_file workers=2": lambda: big_filter(2),
        "one file: dask filter, 1 worker": lambda: big_dask_filter(1),
        "one file: dask filter, 2 workers": lambda: big_dask_filter(2),
    }
    ways.update(big_ways)
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for name in ways:  # warm-up: compiles (or loads) every walker and classifier in every process
            _, result = timed(ways[name])
            if name.startswith("count") and expected_counts is None:
                expected_counts = result
            elif name.startswith("count"):
                assert result == expected_counts, (name, result, expected_counts)
            elif name == "filter: pcap-parallel + dpkt, 2 procs":  # the same job: the same packets kept
                assert result == loop_filter(), (name, result)
            elif name.startswith("one file"):
                expected = big_count() if "count" in name else big_filter(1)
                assert result == expected, (name, result, expected)
        for name in ("dask1", "dask2", "dask0", "threads", "tcpdump"):  # same bytes as the loop's
            for path in paths:
                assert (out / name / path.name).read_bytes() == (out / "loop" / path.name).read_bytes(), (name, path)
        assert (out / "gz.pcap").read_bytes() == (out / "loop" / paths[0].name).read_bytes()
        for name in ("big-threads2", "big-dask1", "big-dask2"):
            assert (out / name / big.name).read_bytes() == (out / "big-threads1" / big.name).read_bytes(), name
        for _ in range(args.rounds):
            for name, run in ways.items():
                elapsed, _ = timed(run)
                times[name].append(elapsed)
    finally:
        for client in clients.values():
            client.close()
        for cluster in clusters.values():
            cluster.close()

    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n{'way':36} {'median s':>9} {'MB/s':>7}")
    for name, seconds in median.items():
        nbytes = paths[0].stat().st_size if name in gz_ways else big.stat().st_size if name in big_ways else size
        print(f"{name:36} {seconds:9.3f} {nbytes / 1e6 / seconds:7.0f}")
    print("\nratios (same run):")
    ratios = [
        ("count: dask 2 workers vs 1", "count: dask, 1 worker", "count: dask, 2 workers"),
        ("count: dask 2 workers vs loop of count_file", "count: loop of count_file", "count: dask, 2 workers"),
        ("count: count_file vs filter_file x16", "count: loop of filter_file x16", "count: loop of count_file"),
        ("filter: dask 2 workers vs 1", "filter: dask, 1 worker", "filter: dask, 2 workers"),
        ("filter: dask 2 workers vs loop", "filter: loop of filter_file", "filter: dask, 2 workers"),
        ("filter: dask 1 worker vs loop", "filter: loop of filter_file", "filter: dask, 1 worker"),
        ("filter: dask 2 workers vs 2 tcpdumps", "filter: tcpdump, xargs -P 2", "filter: dask, 2 workers"),
        ("filter: loop vs 2 tcpdumps", "filter: tcpdump, xargs -P 2", "filter: loop of filter_file"),
        ("filter: dask 2 workers vs pcap-parallel+dpkt", "filter: pcap-parallel + dpkt, 2 procs",
         "filter: dask, 2 workers"),
        ("filter: dask threads vs loop workers=2", "filter: loop, workers=2 threads",
         "filter: dask, 2 threads (no procs)"),
        ("one file: dask count 2 workers vs 1", "one file: dask count, 1 worker", "one file: dask count, 2 workers"),
        ("one file: dask count 2 workers vs count_file", "one file: count_file", "one file: dask count, 2 workers"),
        ("one file: dask filter 2 workers vs 1", "one file: dask filter, 1 worker", "one file: dask filter, 2 workers"),
        ("one file: dask filter 2 workers vs filter_file", "one file: filter_file",
         "one file: dask filter, 2 workers"),
        ("one file: filter_file workers=2 vs 1", "one file: filter_file", "one file: filter_file workers=2"),
        ("gz: count_file streamed vs zcat (time ratio)", "gz: count_file, streamed", "gz: zcat > /dev/null"),
        ("gz: filter_file streamed vs zcat (time ratio)", "gz: filter_file, streamed", "gz: zcat > /dev/null"),
    ]
    for label, slow, fast in ratios:
        if slow not in median:
            continue
        print(f"  {label:44} {median[slow] / median[fast]:5.2f}x")


if __name__ == "__main__":
    main()
