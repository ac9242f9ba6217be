"""`bpfjit seccomp disasm|explain|eval|dump`: seccomp filters from files, OCI profiles and running processes.

    bpfjit seccomp disasm FILE [--arch ARCH]              # seccomp-tools' notation
    bpfjit seccomp explain FILE... [--arch ARCH]          # every syscall number's action; several
                                                          #   FILEs: a stack, oldest first
    bpfjit seccomp eval FILE... RECORDS [--arch ARCH]     # one line per record: its return and action
    bpfjit seccomp disasm|explain|eval --oci PROFILE.json [--cap CAP ...] [--kernel 6.1] [RECORDS]
    bpfjit seccomp dump --pid N [-o PREFIX]               # the filters of a process (root), oldest first

FILE is raw `struct sock_filter[]` bytes (host order), or any text form `bpfjit.text.parse` reads.
`--oci` compiles an OCI/Docker seccomp profile through libseccomp as runc does for --arch (the
container's bounding set: the --cap options; the kernel: --kernel, else this machine's).
RECORDS is JSON lines, `{"nr": 59 or "execve", "arch": "x86_64" or 3221225534, "args": [...], "ip": 0}`
(missing fields: 0, the --arch), or a binary file of 64-byte `struct seccomp_data` records.
numpy and the JIT are imported when a command runs, not when the CLI starts.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

from .program import Program
from .syscalls import arch_name, syscall_name, syscall_number

_HOST = {"x86_64": "x86_64", "amd64": "x86_64", "i686": "i386", "aarch64": "aarch64", "arm64": "aarch64"}
HOST = _HOST.get(platform.machine().lower(), "x86_64")


def read_program(path: str) -> Program:
    """A program file: raw sock_filter bytes (they hold a NUL; no text form does), else text."""
    from .errors import ParseError
    from .text import read_source

    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:
        return Program.from_bytes(data)
    source = read_source(data.decode("utf-8"))
    if not isinstance(source, Program):
        raise ParseError(f"{path}: neither sock_filter bytes nor a program in a text form bpfjit reads")
    return source


def read_records(path: str, arch: str) -> Any:
    """DATA_DTYPE records from a binary file of 64-byte records or from JSON lines (by a NUL: a
    record starting with nr 123 would start with `{` too)."""
    import numpy as np

    from . import seccomp

    with open(path, "rb") as f:
        data = f.read()
    if b"\0" in data:  # binary records hold NULs (arch's and the arguments' bytes); JSON text none
        return np.frombuffer(seccomp._record_bytes(data), dtype=seccomp.DATA_DTYPE)
    lines = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    recs = seccomp.records(len(lines), arch=seccomp.AUDIT_ARCH[arch])
    for rec, line in zip(recs, lines, strict=True):
        record_arch = line.get("arch", arch)
        number = seccomp.AUDIT_ARCH[arch_name(record_arch)] if isinstance(record_arch, str) else record_arch
        nr = line.get("nr", 0)
        rec["nr"] = np.uint32(syscall_number(nr, number) if isinstance(nr, str) else nr & 0xFFFFFFFF).view(np.int32)
        rec["arch"], rec["ip"] = number, line.get("ip", 0)
        rec["args"] = [*line.get("args", []), *[0] * (6 - len(line.get("args", [])))]
    return recs


def read_programs(args: argparse.Namespace, files: list[str]) -> list[Program]:
    """The programs a command runs: FILEs (oldest first), or the --oci profile's."""
    if args.oci is not None:
        if files:
            raise ValueError("give program FILEs or --oci PROFILE, not both")
        from . import seccomp

        return [seccomp.from_oci(args.oci, args.arch, frozenset(args.caps), args.kernel)]
    if not files:
        raise ValueError("no program: give a FILE or --oci PROFILE")
    return [read_program(path) for path in files]


def disasm_command(args: argparse.Namespace) -> int:
    from . import seccomp

    (program,) = read_programs(args, [args.files] if args.files else [])
    print(seccomp.disasm(program, args.arch))
    return 0


def explain_command(args: argparse.Namespace) -> int:
    from . import seccomp

    programs = read_programs(args, args.files)
    print(seccomp.explain(programs[0] if len(programs) == 1 else seccomp.stack(programs), args.arch))
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from . import seccomp

    if not args.files:
        raise ValueError("no RECORDS file")
    programs = read_programs(args, args.files[:-1])
    sf = seccomp.compile(programs[0]) if len(programs) == 1 else seccomp.stack(programs)
    recs = read_records(args.files[-1], args.arch)
    for rec, value in zip(recs, sf.evaluate(recs).tolist(), strict=True):
        arch, nr = int(rec["arch"]), int(rec["nr"]) & 0xFFFFFFFF
        try:
            name = syscall_name(nr, arch) or str(nr)
        except ValueError:  # an architecture without a table here
            name = str(nr)
        print(f"{name} ({nr}) arch={arch:#x}: {value:#010x} {seccomp.decode(value).name}")
    return 0


def dump_command(args: argparse.Namespace) -> int:
    from . import seccomp

    programs = seccomp.dump_pid(args.pid)
    if not programs:
        print(f"pid {args.pid} has no seccomp filters")
    for index, program in enumerate(programs):
        age = " (oldest)" if index == 0 else " (newest)" if index == len(programs) - 1 else ""
        print(f"filter {index}{age}: {len(program)} instructions")
        if args.out:
            with open(f"{args.out}.{index}.bpf", "wb") as f:
                f.write(program.to_bytes())
        else:
            print(seccomp.disasm(program, args.arch))
    return 0


def add_parser(sub: Any) -> None:
    """`bpfjit seccomp ...` under the CLI's subparsers."""
    parser = sub.add_parser("seccomp", help="seccomp filters: disasm, explain, eval records, dump a process's")
    commands = parser.add_subparsers(dest="seccomp_command", required=True)
    program_help = "raw struct sock_filter[] bytes, or a program in a text form"
    for name, func, text in (
        ("disasm", disasm_command, "print a filter in seccomp-tools' notation"),
        ("explain", explain_command, "every syscall number's action, or what decides it; of a stack of filters too"),
        ("eval", eval_command, "run a filter (or a stack) over records (JSON lines or 64-byte records)"),
        ("dump", dump_command, "the filters of a running process, oldest first (root)"),
    ):
        p = commands.add_parser(name, help=text, description=text)
        if name == "dump":
            p.add_argument("--pid", type=int, required=True, help="the process")
            p.add_argument("-o", dest="out", metavar="PREFIX", help="write PREFIX.N.bpf (raw bytes) instead")
        elif name == "disasm":
            p.add_argument("files", nargs="?", default=None, metavar="FILE", help=program_help)
        elif name == "explain":
            p.add_argument("files", nargs="*", metavar="FILE",
                           help=f"{program_help}; several FILEs are a stack, given OLDEST FIRST (the order they "
                                "were installed in): every filter runs, the lowest action wins, a tie keeps the "
                                "newest filter's data")  # fmt: skip
        else:
            p.add_argument("files", nargs="+", metavar="FILE... RECORDS",
                           help=f"{program_help} (several: a stack, oldest first), then the records: JSON lines "
                                "{nr, arch, args, ip} or 64-byte seccomp_data records")  # fmt: skip
        if name != "dump":
            p.add_argument("--oci", metavar="PROFILE", help="an OCI/Docker seccomp profile (JSON) instead of FILE, "
                           "compiled through libseccomp as runc compiles it for --arch")  # fmt: skip
            p.add_argument("--cap", dest="caps", action="append", default=[], metavar="CAP",
                           help="with --oci: a capability in the container's bounding set (CAP_SYS_ADMIN, ...)")
            p.add_argument("--kernel", metavar="VERSION", help="with --oci: the kernel its minKernel tests see "
                           "(default: this machine's)")  # fmt: skip
        p.add_argument("--arch", default=HOST, type=arch_name, help=f"syscall table (default {HOST})")
        p.set_defaults(func=partial(_reporting, func))


def _reporting(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; a file, record or process it cannot use is a one-line error, not a traceback."""
    try:
        return func(args)
    except (OSError, ValueError, KeyError) as error:  # ParseError and ValidationError are ValueErrors
        print(f"bpfjit seccomp {args.seccomp_command}: {error}", file=sys.stderr)
        return 1
