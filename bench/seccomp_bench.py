"""Realistic seccomp filters over many syscall records: native batch, the pure-Python interpreter, the kernel.

    python bench/seccomp_bench.py [--records 1000000] [--interpreted 20000] [--kernel-records 10000] [--repeat 5]

Two filters. A Docker-like one built by libseccomp (Debian's python3-seccomp) in the shape of
Docker's default profile: ERRNO(EPERM) by default; every x86-64 syscall of the system's
<asm/unistd_64.h> allowed but Docker's denylist; `personality` allowed for a few argument values;
`clone` only without namespace flags (a masked 64-bit argument test); `socket` denied for AF_VSOCK.
And a hand-written one of 20 rules (`hand_filter`): arch and x32 guards, then one block per rule
that tests the syscall number and ANDs its argument conditions, every 64-bit comparison split into
a high-word and a low-word test the way libseccomp emits them; ERRNO(EPERM) by default.

Records: nr drawn from real syscall numbers (with some x32 and unknown ones), arguments random
(mostly small, some full 64-bit), seeded. For each filter, in the same run: ns per record for
`SeccompFilter.evaluate` (one native call, optimised tier; the share of building the output array
included), for `bpfjit.interpret` per record, and for the kernel itself: the unprivileged oracle of
tests/seccomp_kernel.py probing the first --kernel-records records (each record is three probes, one
per 11-bit chunk of the return; a record that kills costs a fork; the rate includes the pipe and
Python around each probe). Prints the ratios and checks that all three agree. Then times
`seccomp.explain` over every x86_64 number of the Docker-like filter and compares its allowed set to
the allow list.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bpfjit import Insn, Program, interpret, seccomp

UNISTD_64 = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
# moby/moby profiles/seccomp/default.json: syscalls not in its allowlist (x86-64), abridged.
_DENIED_TEXT = """
acct add_key bpf clock_adjtime clock_settime create_module delete_module finit_module get_kernel_syms
get_mempolicy init_module ioperm iopl kcmp kexec_file_load kexec_load keyctl lookup_dcookie mbind mount
move_pages name_to_handle_at nfsservctl open_by_handle_at perf_event_open pivot_root process_vm_readv
process_vm_writev ptrace query_module quotactl reboot request_key set_mempolicy setns settimeofday
swapon swapoff sysfs _sysctl umount2 unshare uselib userfaultfd ustat vm86 vm86old personality clone socket
"""
DENIED = frozenset(_DENIED_TEXT.split())
CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
AF_VSOCK = 40


def syscall_numbers(path: str = UNISTD_64) -> dict[str, int]:
    with open(path, encoding="utf-8") as header:
        return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR_(\w+)\s+(\d+)", header.read())}


def docker_like_filter() -> tuple[seccomp.SeccompFilter, dict[str, int]]:
    lsc = seccomp.libseccomp()
    numbers = syscall_numbers()
    f = lsc.SyscallFilter(lsc.ERRNO(1))
    for name in sorted(numbers):
        if name not in DENIED:
            f.add_rule(lsc.ALLOW, name)
    for persona in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF):
        f.add_rule(lsc.ALLOW, "personality", lsc.Arg(0, lsc.EQ, persona))
    f.add_rule(lsc.ALLOW, "clone", lsc.Arg(0, lsc.MASKED_EQ, CLONE_NAMESPACES, 0))
    f.add_rule(lsc.ALLOW, "socket", lsc.Arg(0, lsc.NE, AF_VSOCK))
    return seccomp.compile(seccomp.from_libseccomp(f)), numbers


# The hand-written filter: (syscall, action, conditions); a condition is (argument, op, value) or
# (argument, "masked_eq", mask, value) on the 64-bit argument. Rules run in order; the first whose
# number and conditions all match returns its action.
ALLOW, KILL_PROCESS, KILL_THREAD = 0x7FFF0000, 0x80000000, 0x00000000
EPERM, EACCES, ENOTTY, ENOSYS = 1, 13, 25, 38
ERRNO, TRAP, LOG = (lambda e: 0x00050000 | e), (lambda d: 0x00030000 | d), 0x7FFC0000
HAND_RULES: list[tuple[str, int, list[tuple[Any, ...]]]] = [
    ("read", ALLOW, []),
    ("write", ALLOW, [(0, "le", 2)]),  # stdout and stderr only
    ("write", ALLOW, [(2, "lt", 1 << 32), (0, "ge", 3)]),  # other fds: under 4 GiB a write
    ("openat", ERRNO(EACCES), [(2, "masked_eq", 3, 1)]),  # O_WRONLY opens refused
    ("openat", ALLOW, []),
    ("close", ALLOW, []),
    ("fstat", ALLOW, []),
    ("mmap", ALLOW, [(2, "masked_eq", 4, 0), (1, "le", 1 << 40)]),  # no PROT_EXEC, at most 1 TiB
    ("mprotect", ERRNO(EACCES), [(2, "masked_eq", 4, 4)]),
    ("mprotect", ALLOW, []),
    ("futex", ALLOW, [(1, "ne", 0xFFFFFFFF_FFFFFFFF)]),
    ("clone", ALLOW, [(0, "masked_eq", CLONE_NAMESPACES, 0)]),
    ("socket", ALLOW, [(0, "eq", 1)]),  # AF_UNIX
    ("socket", ALLOW, [(0, "eq", 2), (1, "masked_eq", 0xF, 1)]),  # AF_INET, SOCK_STREAM
    ("ioctl", ERRNO(ENOTTY), [(1, "eq", 0x5412)]),  # TIOCSTI
    ("kill", TRAP(1), [(0, "gt", 0xFFFFFFFF)]),  # a pid past 32 bits
    ("personality", ALLOW, [(0, "eq", 0xFFFFFFFF)]),  # the query
    ("lseek", LOG, [(2, "ge", 3)]),  # SEEK_DATA, SEEK_HOLE and beyond logged
    ("exit_group", ALLOW, []),
    ("ptrace", KILL_PROCESS, []),
]


def _words(value: int) -> tuple[int, int]:
    return value >> 32, value & 0xFFFFFFFF


def _condition(arg: int, op: str, *operands: int) -> list[tuple[int, Any, Any, int]]:
    """One 64-bit comparison as libseccomp lays it out: the high word first, then the low word.
    Jump targets are labels: "pass" (on to the next condition), "fail" (the next rule), None (the
    next instruction)."""
    hi_k, lo_k = (16 + 8 * arg + 4, 16 + 8 * arg) if sys.byteorder == "little" else (16 + 8 * arg, 16 + 8 * arg + 4)
    ld_hi, ld_lo = (0x20, None, None, hi_k), (0x20, None, None, lo_k)
    if op == "masked_eq":
        (mask_hi, mask_lo), (v_hi, v_lo) = _words(operands[0]), _words(operands[1])
        return [ld_hi, (0x54, None, None, mask_hi), (0x15, None, "fail", v_hi),
                ld_lo, (0x54, None, None, mask_lo), (0x15, "pass", "fail", v_lo)]  # fmt: skip
    hi, lo = _words(operands[0])
    if op in ("eq", "ne"):
        yes, no = ("pass", "fail") if op == "eq" else ("fail", "pass")
        return [ld_hi, (0x15, None, no, hi), ld_lo, (0x15, yes, no, lo)]
    # gt/ge; lt and le are their negations
    strict = op in ("gt", "le")
    yes, no = ("pass", "fail") if op in ("gt", "ge") else ("fail", "pass")
    return [ld_hi, (0x25, yes, None, hi), (0x15, None, no, hi), ld_lo, (0x25 if strict else 0x35, yes, no, lo)]


def hand_program() -> Program:
    """HAND_RULES assembled: labels resolved into forward jumps."""
    numbers = syscall_numbers()
    items: list[tuple] = [(0x20, None, None, 4), (0x15, None, "kill", seccomp.AUDIT_ARCH_X86_64),
                          (0x20, None, None, 0), (0x35, "kill", None, 0x40000000)]  # fmt: skip
    for index, (name, action, conditions) in enumerate(HAND_RULES):
        fail = f"rule{index + 1}"
        items += [("label", f"rule{index}"), (0x20, None, None, 0), (0x15, None, fail, numbers[name])]
        for j, condition in enumerate(conditions):
            targets = {"pass": f"rule{index}.{j + 1}", "fail": fail}
            for code, jt, jf, k in _condition(*condition):
                items.append((code, targets.get(jt, jt), targets.get(jf, jf), k))
            items.append(("label", targets["pass"]))
        items.append((0x06, None, None, action))
    items += [("label", f"rule{len(HAND_RULES)}"), (0x06, None, None, ERRNO(EPERM)),
              ("label", "kill"), (0x06, None, None, KILL_THREAD)]  # fmt: skip
    labels: dict[str, int] = {}
    insns: list[tuple] = []
    for item in items:
        if item[0] == "label":
            labels[item[1]] = len(insns)
        else:
            insns.append(item)
    offset = lambda target, pc: 0 if target is None else labels[target] - pc - 1  # noqa: E731
    return Program([Insn(code, offset(jt, pc), offset(jf, pc), k) for pc, (code, jt, jf, k) in enumerate(insns)])


def make_records(n: int, numbers: dict[str, int], seed: int = 17) -> np.ndarray:
    rng = np.random.default_rng(seed)
    known = np.array(sorted(numbers.values()), dtype=np.int64)
    nr = rng.choice(known, n)
    odd = rng.random(n)
    nr = np.where(odd < 0.02, nr | 0x40000000, nr)  # x32 numbers
    nr = np.where((odd >= 0.02) & (odd < 0.03), rng.integers(500, 1 << 20, n), nr)  # unknown
    recs = seccomp.records(n, arch=seccomp.AUDIT_ARCH_X86_64)
    recs["nr"] = nr.astype(np.int32)
    recs["ip"] = 0x7F0000001000 + rng.integers(0, 1 << 20, n, dtype=np.uint64)
    small = rng.integers(0, 64, (n, 6), dtype=np.uint64)
    large = rng.integers(0, np.iinfo(np.uint64).max, (n, 6), dtype=np.uint64, endpoint=True)
    recs["args"] = np.where(rng.random((n, 6)) < 0.7, small, large)
    return recs


def _oracle_module() -> Any:
    """tests/seccomp_kernel.py: the kernel as an unprivileged oracle (stdlib only)."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import seccomp_kernel

    return seccomp_kernel


def kernel_values(program: Program, recs: np.ndarray) -> tuple[list[int | None], float]:
    """The kernel's return for each record (through the oracle of tests/seccomp_kernel.py, x86-64
    only), and the seconds the probes took (the worker started before the clock)."""
    oracle = _oracle_module().Oracle()
    try:
        oracle.run([(0x06, 0, 0, ALLOW)], [[0] * 7])  # the worker is up: time the probes only
        start = time.perf_counter()
        _, values = oracle.run([tuple(insn) for insn in program],
                               [[int(r["nr"]) & 0xFFFFFFFF, *map(int, r["args"])] for r in recs])  # fmt: skip
        return values, time.perf_counter() - start
    finally:
        oracle.close()


def measure(sf: seccomp.SeccompFilter, recs: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """ns per record of the three ways, on the same records; they must agree."""
    sf.tier_up()
    out = np.empty(len(recs), dtype=np.uint32)
    sf.evaluate(recs, out)  # warm
    native = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        sf.evaluate(recs)
        native.append(time.perf_counter() - start)
    sample = recs[: args.interpreted]
    start = time.perf_counter()
    interpreted = [interpret(sf.program, rec.tobytes(), dialect="seccomp") for rec in sample]
    python_s = time.perf_counter() - start
    assert interpreted == out[: len(sample)].tolist(), "the JIT and the interpreter disagree"
    figures = {"insns": len(sf.program), "out": out, "native_ns": statistics.median(native) / len(recs) * 1e9,
               "native_ms": statistics.median(native) * 1e3, "python_ns": python_s / len(sample) * 1e9}  # fmt: skip
    oracle = _oracle_module()
    if args.kernel_records and oracle.AVAILABLE:
        probed = recs[: args.kernel_records]
        probed = probed[~np.isin(probed["nr"], sorted(oracle.UNRELIABLE_NRS))]
        values, seconds = kernel_values(sf.program, probed)
        # (the kernel sees the oracle's instruction pointer: neither filter reads it)
        assert values == sf.evaluate(probed).tolist(), "the JIT and the kernel disagree"
        figures.update(kernel_ns=seconds / len(probed) * 1e9, kernel_records=len(probed),
                       probes_per_s=3 * len(probed) / seconds)  # fmt: skip
    return figures


def _time(ns: float) -> str:
    return f"{ns:,.1f} ns" if ns < 1000 else f"{ns / 1000:,.1f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--interpreted", type=int, default=20_000, help="records the interpreter runs")
    parser.add_argument("--kernel-records", type=int, default=10_000, help="records the kernel runs (0: none)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--oci", metavar="PROFILE.json", action="append", default=[],
                        help="also a real OCI/Docker profile (e.g. moby's profiles/seccomp/default.json), "
                             "compiled through libseccomp for x86_64 without capabilities")  # fmt: skip
    args = parser.parse_args()
    docker, numbers = docker_like_filter()
    recs = make_records(args.records, numbers)
    print(f"{len(recs):,} records; per record, median of {args.repeat} native runs; interpreter over "
          f"{min(args.interpreted, len(recs)):,}; kernel over the first {args.kernel_records:,}")  # fmt: skip
    header = (f"{'filter':<28} {'insns':>5} {'native batch':>13} {'interpreter':>12} {'kernel':>10}"
              f" {'interp/native':>14} {'kernel/native':>14} {'kernel probes/s':>16}")  # fmt: skip
    print(header)
    rows = [("Docker-like (libseccomp)", docker), ("hand-written, 20 rules", seccomp.compile(hand_program()))]
    rows += [(os.path.basename(path)[:28], seccomp.compile(seccomp.from_oci(path))) for path in args.oci]
    for name, sf in rows:
        f = measure(sf, recs, args)
        kernel = ("kernel_ns" in f and (_time(f["kernel_ns"]), f"{f['kernel_ns'] / f['native_ns']:,.0f}x",
                                        f"{f['probes_per_s']:,.0f}")) or ("-", "-", "-")  # fmt: skip
        print(f"{name:<28} {f['insns']:>5} {_time(f['native_ns']):>13} {_time(f['python_ns']):>12} {kernel[0]:>10}"
              f" {f['python_ns'] / f['native_ns']:>13,.0f}x {kernel[1]:>14} {kernel[2]:>16}")  # fmt: skip
        actions = np.unique(f["out"], return_counts=True)
        print("    results: " + ", ".join(f"{seccomp.decode(int(v)).name} x{int(c):,}"
                                          for v, c in zip(*actions, strict=True)))  # fmt: skip
    start = time.perf_counter()
    explained = seccomp.explain(docker, "x86_64")
    allow_list = {nr for name, nr in numbers.items() if name not in DENIED}
    print(f"explain: {(time.perf_counter() - start) * 1e3:.0f} ms for {len(explained.syscalls)} syscall numbers; "
          f"allowed set == allow list: {explained.allowed() == allow_list}")  # fmt: skip


if __name__ == "__main__":
    main()
