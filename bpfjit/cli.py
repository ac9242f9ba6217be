"""The `bpfjit` command: `demo` (the default), `compile`, `filter`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from . import __version__, seccomp_cli

if TYPE_CHECKING:
    from .program import Program
    from .text import Style

DEMO_FILTERS = (
    "ip",
    "tcp port 80",
    "udp and (port 53 or port 123)",
    "vlan and udp port 53",
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
)


def _time_per_call(run: Callable[[bytes], object], frames: Sequence[bytes], budget: float = 0.05) -> float:
    """Median seconds per call of `run` over `frames` (a few rounds, each about budget/5 long)."""
    rounds: list[float] = []
    loops = 1
    while True:  # size one round to the budget
        start = time.perf_counter()
        for _ in range(loops):
            for frame in frames:
                run(frame)
        elapsed = time.perf_counter() - start
        if elapsed > budget / 5 or loops > 1 << 20:
            break
        loops *= 4
    rounds.append(elapsed)
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(loops):
            for frame in frames:
                run(frame)
        rounds.append(time.perf_counter() - start)
    rounds.sort()
    return rounds[len(rounds) // 2] / (loops * len(frames))


def _ns(seconds: float) -> str:
    ns = seconds * 1e9
    return f"{ns / 1000:.1f} µs" if ns >= 10_000 else f"{ns:.0f} ns"


def demo(args: argparse.Namespace) -> int:
    """Generate a capture, filter it with a few expressions, compare every way of running them."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from . import compile as jit_compile
    from . import interpret, libpcap, packetmix
    from .capfile import filter_file, read_batches
    from .libpcap_loop import LibpcapLoop

    expressions = args.expression or list(DEMO_FILTERS)
    name_width = max(34, *(len(e) for e in expressions))
    with tempfile.TemporaryDirectory(prefix="bpfjit-demo-") as tmp:
        capture = Path(tmp) / "mix.pcap"
        packetmix.write_pcap(capture, packetmix.generate(args.packets, seed=1))
        size = capture.stat().st_size
        print(f"bpfjit {__version__} demo; {libpcap.version()}")
        print(f"generated {capture.name}: {args.packets} packets ({size / 1e6:.1f} MB; Ethernet, IPv4/IPv6,"
              " VLAN, ARP, fragments, 4% truncated)\n")  # fmt: skip
        print("bpfjit filter -r mix.pcap -w OUT EXPR, for each filter:")
        for expr in expressions:
            start = time.perf_counter()
            stats = filter_file(capture, Path(tmp) / "out.pcap", expr)
            elapsed = time.perf_counter() - start
            print(f"  {expr:<{name_width}} kept {stats.accepted:>7} of {stats.read} in {elapsed * 1e3:6.1f} ms"
                  f" (compile included)")  # fmt: skip
        batch = next(iter(read_batches(capture, chunk=args.packets))).batch

    packets = [bytes(p) for p in batch]
    wirelens = batch.wirelens.tolist()
    print("\ntime per packet (median of 5 rounds), the same packets for every method:")
    cols = ("interpreter", "libpcap f(p)", "bpfjit f(p)", "libpcap loop", "bpfjit batch", "batch vs loop")
    print(f"  {'filter':<{name_width}}" + "".join(f"{c:>14}" for c in cols))
    sample = packets[: max(1, len(packets) // 50)]
    for expr in expressions:
        f = jit_compile(expr).tier_up()  # the tier any filter reaches after 2^17 packets
        program = f.program
        loop = LibpcapLoop(program)
        out = np.empty(len(batch), dtype=np.uint32)
        verdicts = f.run_batch(batch)
        if (verdicts != loop.run_batch(batch, out)).any() or any(
            interpret(program, p, w) != v for p, w, v in zip(sample, wirelens, verdicts.tolist(), strict=False)
        ):
            print(f"MISMATCH for {expr!r}", file=sys.stderr)
            return 1
        prepared = libpcap.LibpcapProgram(program)
        t_interp = _time_per_call(partial(interpret, program), sample)
        t_pcap = _time_per_call(prepared, packets[:5000])
        t_jit = _time_per_call(f, packets[:5000])
        t_loop = _time_whole(partial(loop.run_batch, batch, out), len(batch))
        t_batch = _time_whole(partial(f.run_batch, batch, out), len(batch))
        row = (_ns(t_interp), _ns(t_pcap), _ns(t_jit), _ns(t_loop), _ns(t_batch), f"{t_loop / t_batch:.1f}x")
        print(f"  {expr:<{name_width}}" + "".join(f"{c:>14}" for c in row))
    print("\n'libpcap f(p)' is bpf_filter called through ctypes, 'libpcap loop' bpf_filter called from a")
    print("native loop over the same buffer. Full benchmark: bpfjit bench  |  the code: bpfjit compile EXPR --asm")
    return 0


def _time_whole(run: Callable[[], object], count: int, rounds: int = 5) -> float:
    """Median seconds per packet of `run`, which processes `count` packets per call."""
    run()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    samples.sort()
    return samples[len(samples) // 2] / count


def compile_command(args: argparse.Namespace) -> int:
    """Print a filter as tcpdump -d/-dd/-ddd would, or its LLVM IR / assembly."""
    from . import Program
    from . import compile as jit_compile

    try:
        if args.file:
            source = _read_filter_file(args.file)
            program = source if isinstance(source, Program) else _from_expr(source, args)
        elif args.expression:
            program = _from_expr(" ".join(args.expression), args)
        else:
            print("bpfjit compile: give an expression or -F FILE", file=sys.stderr)
            return 2
    except ValueError as error:  # an unknown link type or a bad --netmask: one line, as tcpdump does
        print(f"bpfjit: {error}", file=sys.stderr)
        return 1
    if args.ir or args.asm:
        f = jit_compile(program, opt_level=args.opt_level).tier_up()  # the code a busy filter runs
        sys.stdout.write(f.llvm_ir if args.ir else f.asm)
        return 0
    style: Style = "ddd" if args.d >= 3 else "dd" if args.d == 2 else "d"
    sys.stdout.write(program.dump(style))
    return 0


def _from_expr(expression: str, args: argparse.Namespace) -> Program:
    from . import Program

    netmask = None if args.netmask == "unknown" else args.netmask
    return Program.from_expr(
        expression, args.linktype, snaplen=args.snaplen, optimize=not args.no_optimize, netmask=netmask
    )


def _read_filter_file(path: str) -> Program | str:
    """-F FILE of both commands: a program (-d/-dd/-ddd, the comma form, bpf_asm) or an expression."""
    from .text import read_source

    with open(path, encoding="utf-8") as handle:
        return read_source(handle.read())


# -- bpfjit filter: tcpdump -r IN [-w OUT] [EXPR] ------------------------------------------------------
# Start-up is most of a run's time (tcpdump needs ~0.2 s for a 370 MB file), so this path imports only
# what it uses: no numpy, llvmlite only to compile, tqdm only once a run proves slow.
PROGRESS_AFTER = 0.5  # seconds before a progress bar appears


def _filter_spec(args: argparse.Namespace) -> Program | str | None:
    """The filter: an expression (str), a Program (-F with bytecode or bpf_asm), or None (keep all)."""
    if args.file:
        return _read_filter_file(args.file)
    return " ".join(args.expression) if args.expression else None


class _Progress:
    """Counts from filter_file's callback, and a tqdm bar on stderr once the run takes a while."""

    def __init__(self, total: int | None, enabled: bool | None):
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.perf_counter()
        self.read = self.accepted = self.done = 0
        self.bar: Any = None

    def __call__(self, done: int, read: int, accepted: int) -> None:
        self.read, self.accepted = read, accepted
        if not self.enabled:
            return
        if self.bar is None:
            if time.perf_counter() - self.start < PROGRESS_AFTER:
                return
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, file=sys.stderr, leave=False)
        self.bar.update(done - self.done)
        self.done = done

    def summary(self) -> None:
        if self.bar is not None:
            self.bar.close()
        print(f"{self.read} packets read, {self.accepted} accepted", file=sys.stderr)


def filter_command(args: argparse.Namespace) -> int:
    """Filter a capture file as tcpdump -r IN [-w OUT] [EXPR] does; report packets read and accepted."""
    import gc

    from .errors import BpfjitError

    # A run is short and allocation-heavy (imports, LLVM IR): the cycle collector's passes over
    # everything imported cost ~5 ms and free nothing. Per-packet objects have no cycles.
    collecting = gc.isenabled()
    gc.disable()
    try:
        code = _filter_command(args)
    except BpfjitError:
        raise  # main() reports it
    except (OSError, ValueError) as error:  # a missing input, a full disk, the output being the input
        print(f"bpfjit filter: {error}", file=sys.stderr)
        code = 1
    finally:
        if collecting:
            gc.enable()
    if getattr(args, "standalone", False):
        # The process ends here: skip the interpreter's teardown (freeing every module and LLVM's
        # state, ~10 ms); the output file is closed, only Python's own buffers need flushing.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _split_command(args: argparse.Namespace) -> int:
    """bpfjit filter -r IN --split TEMPLATE EXPR [EXPR ...]: one output per expression, one pass."""
    from . import capfile

    if args.file:
        with open(args.file, encoding="utf-8") as handle:
            expressions = [line.strip() for line in handle if line.strip() and not line.lstrip().startswith("#")]
    else:
        expressions = list(args.expression)
    if not expressions or args.read is None:
        print("bpfjit filter --split: give -r FILE and one or more expressions (or -F FILE, one per line)",
              file=sys.stderr)  # fmt: skip
        return 2
    template = args.split if "{}" in args.split else args.split + ".{}"
    outputs = [template.format(index) for index in range(len(expressions))]
    results = capfile.split_file(args.read, outputs, expressions, linktype=args.linktype, workers=args.jobs)
    for expression, output, stats in zip(expressions, outputs, results, strict=True):
        print(f"{output}: {stats.accepted} of {stats.read} packets ({expression})", file=sys.stderr)
    return 0


def _standard_streams(args: argparse.Namespace) -> None:
    """`-r -` and `-w -`, as tcpdump takes them: standard input and output.

    A redirected file is mapped in place. A pipe is read as it comes (`capfile.Stream`: one thread,
    memory bounded by the stream window), unless `-j N` asks for more threads: byte ranges need the
    whole file, so then it is first copied to an unnamed temporary file."""
    if args.read == "-":
        import shutil
        import stat
        import tempfile

        from .capfile import Stream

        stdin = sys.stdin.buffer
        if stat.S_ISREG(os.fstat(stdin.fileno()).st_mode) and stdin.tell() == 0:
            args.read = stdin
        elif not args.jobs or args.jobs <= 1:
            args.read = Stream(stdin, "-")
        else:
            spool = tempfile.TemporaryFile(prefix="bpfjit-stdin-")  # noqa: SIM115 (read until the run ends)
            shutil.copyfileobj(stdin, spool, 1 << 20)
            spool.flush()
            args.read = spool
    if args.write == "-":
        args.write = sys.stdout.buffer


def _size(source: object) -> int | None:
    """The capture's size in bytes for the progress bar (None: a stream, read until it ends)."""
    from .capfile import Stream

    if isinstance(source, Stream):
        return None
    fileno = getattr(source, "fileno", None)
    return os.fstat(fileno()).st_size if fileno is not None else os.path.getsize(source)  # type: ignore[arg-type]


def _filter_command(args: argparse.Namespace) -> int:
    from . import capfile
    from .errors import CaptureFileError

    _standard_streams(args)
    if args.split:
        return _split_command(args)
    spec = _filter_spec(args)
    if args.d:
        return _dump_filter(args, spec)
    if args.read is None:
        print("bpfjit filter: give the capture file to read with -r FILE", file=sys.stderr)
        return 2
    if args.count is not None and args.count < 1:
        print(f"bpfjit filter: invalid packet count {args.count}", file=sys.stderr)
        return 2
    progress = _Progress(_size(args.read), args.progress)
    try:
        if args.write is None:
            _print_packets(args, spec, progress)
        else:
            capfile.filter_file(args.read, args.write, spec, count=args.count, linktype=args.linktype,
                                progress=progress, workers=args.jobs)  # fmt: skip
    except CaptureFileError:  # what came before the bad spot was written: say how much
        progress.summary()
        raise
    progress.summary()
    return 0


def _print_packets(args: argparse.Namespace, spec: Program | str | None, progress: _Progress) -> None:
    """One line per accepted packet: its timestamp (the file's precision) and its length on the wire."""
    from . import capfile

    out = sys.stdout
    lines: list[str] = []
    for timestamp, wirelen in capfile.packet_lines(args.read, spec, linktype=args.linktype,
                                                   count=args.count, progress=progress):  # fmt: skip
        lines.append(f"{timestamp} {wirelen}\n")
        if len(lines) >= 4096:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))
    out.flush()


def _dump_filter(args: argparse.Namespace, spec: Program | str | None) -> int:
    """-d/-dd/-ddd: the program for the file's (first) link type, or for -y (default EN10MB) without -r."""
    from . import Program, capfile

    if spec is None:
        print("bpfjit filter: -d needs an expression or -F FILE", file=sys.stderr)
        return 2
    program: Program | None
    if isinstance(spec, Program):
        program = spec
    elif args.read is not None:
        program = capfile.file_program(args.read, spec, linktype=args.linktype)
        assert program is not None  # there is an expression
    else:
        program = Program.from_expr(str(spec), args.linktype or "EN10MB")
    style: Style = "ddd" if args.d >= 3 else "dd" if args.d == 2 else "d"
    sys.stdout.write(program.dump(style))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bpfjit", description="Classic BPF compiled to native code.")
    parser.add_argument("--version", action="version", version=f"bpfjit {__version__}")
    sub = parser.add_subparsers(dest="command")

    p_demo = sub.add_parser("demo", help="run built-in filters on built-in frames and compare backends")
    p_demo.add_argument("expression", nargs="*", help="filters to use instead of the built-in ones")
    p_demo.add_argument("--packets", type=int, default=100_000, help="packets in the generated capture")
    p_demo.set_defaults(func=demo)

    p_compile = sub.add_parser("compile", help="print a filter's bytecode, LLVM IR or assembly")
    p_compile.add_argument("expression", nargs="*", help="a pcap-filter expression, e.g. 'tcp port 80'")
    p_compile.add_argument("-F", dest="file", help="read the expression or bytecode (-d/-dd/-ddd/asm) from FILE")
    p_compile.add_argument("-y", dest="linktype", default="EN10MB", help="link type (default EN10MB)")
    p_compile.add_argument("-s", dest="snaplen", type=int, default=262144, help="snap length (default 262144)")
    p_compile.add_argument("-O", dest="no_optimize", action="store_true", help="don't run libpcap's optimizer")
    # tcpdump -d with no interface compiles with netmask 0 (so `ip broadcast` compiles); match it.
    p_compile.add_argument("--netmask", default="0.0.0.0",
                           help="netmask for `ip broadcast`: a dotted quad or 'unknown' (default 0.0.0.0)")  # fmt: skip
    p_compile.add_argument("-d", action="count", default=0, help="-d, -dd or -ddd as tcpdump prints them")
    p_compile.add_argument("--ir", action="store_true", help="print the optimised LLVM IR")
    p_compile.add_argument("--asm", action="store_true", help="print the host assembly (optimised tier)")
    p_compile.add_argument("--opt-level", type=int, default=2, choices=(0, 1, 2, 3))
    p_compile.add_argument("--no-cache", action="store_true", help="neither load nor store compiled code on disk")
    p_compile.set_defaults(func=compile_command)

    p_filter = sub.add_parser("filter", help="filter a pcap/pcapng file, as tcpdump -r IN -w OUT EXPR does")
    p_filter.add_argument("expression", nargs="*", help="a pcap-filter expression (none: keep every packet)")
    p_filter.add_argument("-r", dest="read", metavar="FILE",
                          help="the capture file to read (pcap or pcapng); - for standard input")  # fmt: skip
    p_filter.add_argument("-w", dest="write", metavar="FILE",
                          help="write accepted packets here (same format; - for standard output); without it, "
                               "print one line each")  # fmt: skip
    p_filter.add_argument("-c", dest="count", type=int, help="stop after COUNT accepted packets")
    p_filter.add_argument("-j", dest="jobs", type=int, metavar="N",
                          help="threads over byte ranges of the file (default: every CPU for a large pcap)")
    p_filter.add_argument("-y", dest="linktype", help="compile the expression for this link type, not the file's")
    p_filter.add_argument("-F", dest="file", help="read the expression, or a program (-d/-dd/-ddd/bpf_asm), from FILE")
    p_filter.add_argument("-d", action="count", default=0, help="print the program (-d, -dd, -ddd) and exit")
    p_filter.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                          help="progress bar on stderr (default: when it is a terminal and the run is slow)")
    p_filter.add_argument("--split", metavar="TEMPLATE",
                          help="one output per expression (each argument is one; -F: one per line), written "
                               "in one pass; '{}' in TEMPLATE is the filter's number, e.g. out-{}.pcap")  # fmt: skip
    p_filter.add_argument("--no-cache", action="store_true", help="neither load nor store compiled code on disk")
    p_filter.set_defaults(func=filter_command)

    # bench: bpfjit.benchmark parses its own options (shared with `python -m bench`), so that the
    # CLI's start-up does not import it and numpy.
    p_bench = sub.add_parser("bench", add_help=False, prefix_chars="\0",  # every word is passed on
                             help="benchmark the JIT against the interpreter and libpcap")  # fmt: skip
    p_bench.add_argument("options", nargs="*", help="see bpfjit bench --help")
    p_bench.set_defaults(func=bench_command)

    p_cache = sub.add_parser("cache", help="the disk cache of compiled code: where, how big; empty it")
    p_cache.add_argument("action", choices=("info", "clear"), help="info: where and how big; clear: remove all")
    p_cache.set_defaults(func=cache_command)
    seccomp_cli.add_parser(sub)
    return parser


def cache_command(args: argparse.Namespace) -> int:
    """bpfjit cache info|clear (bpfjit/codecache.py)."""
    from . import codecache

    if args.action == "clear":
        removed = codecache.clear()
        print(f"removed {removed} entries from {codecache.directory()}")
        return 0
    info = codecache.info()
    state = "on" if info.enabled else "off (BPFJIT_CACHE)"
    print(f"directory: {info.directory}\nstate:     {state}\nentries:   {info.entries}")
    print(f"size:      {info.bytes / 1024:.1f} KiB of {info.limit / (1 << 20):.0f} MiB (BPFJIT_CACHE_SIZE)")
    return 0


def bench_command(args: argparse.Namespace) -> int:
    """The benchmark harness (bpfjit/benchmark.py)."""
    from . import benchmark

    return benchmark.main(args.options, prog="bpfjit bench")


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import BpfjitError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *(argv or [])])
    args.standalone = argv is None  # the process is this command: it may exit without teardown
    saved = os.environ.get("BPFJIT_CACHE")
    if getattr(args, "no_cache", False):
        os.environ["BPFJIT_CACHE"] = "off"
    try:
        return int(args.func(args))
    except BpfjitError as error:
        print(f"bpfjit: {error}", file=sys.stderr)
        return 1
    finally:  # (main(argv) may be called in a longer-lived process)
        if saved is None:
            os.environ.pop("BPFJIT_CACHE", None)
        else:
            os.environ["BPFJIT_CACHE"] = saved


if __name__ == "__main__":
    sys.exit(main())
