"""A realistic seccomp filter over many syscall records: native batch against the pure-Python interpreter.

    python bench/seccomp_bench.py [--records 1000000] [--interpreted 20000] [--repeat 5]

The filter is built by libseccomp (Debian's python3-seccomp) in the shape of Docker's default
profile: ERRNO(EPERM) by default; every x86-64 syscall of the system's <asm/unistd_64.h> allowed but
Docker's denylist; `personality` allowed for a few argument values; `clone` only without namespace
flags (a masked 64-bit argument test); `socket` denied for AF_VSOCK. Records: nr drawn from real
syscall numbers (with some x32 and unknown ones), arguments random, seeded. Prints ns per record
for `SeccompFilter.evaluate` (one native call, optimised tier; the per-call share of building the
output array included) and for `bpfjit.interpret` per record, and their ratio; checks they agree.
Then times `seccomp.explain` over every x86_64 number and compares its allowed set to the allow list.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import numpy as np

from bpfjit import interpret, seccomp

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--interpreted", type=int, default=20_000, help="records the interpreter runs")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sf, numbers = docker_like_filter()
    sf.tier_up()
    recs = make_records(args.records, numbers)
    out = np.empty(len(recs), dtype=np.uint32)
    sf.evaluate(recs, out)  # warm
    native = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        sf.evaluate(recs)
        native.append(time.perf_counter() - start)
    native_ns = statistics.median(native) / len(recs) * 1e9
    sample = recs[: args.interpreted]
    start = time.perf_counter()
    interpreted = [interpret(sf.program, rec.tobytes(), dialect="seccomp") for rec in sample]
    python_ns = (time.perf_counter() - start) / len(sample) * 1e9
    assert interpreted == out[: len(sample)].tolist(), "the JIT and the interpreter disagree"
    actions = np.unique(out, return_counts=True)
    print(f"filter: {len(sf.program)} insns (libseccomp, Docker-like); {len(recs):,} records")
    print("results: " + ", ".join(f"{seccomp.decode(int(v)).name} x{int(c):,}" for v, c in zip(*actions, strict=True)))
    print(f"native batch (optimised tier): {native_ns:8.2f} ns/record  ({statistics.median(native) * 1e3:.1f} ms)")
    print(f"pure-Python interpreter:       {python_ns:8.0f} ns/record  ({len(sample):,} records)")
    print(f"speed-up: {python_ns / native_ns:,.0f}x")
    start = time.perf_counter()
    explained = seccomp.explain(sf, "x86_64")
    allow_list = {nr for name, nr in numbers.items() if name not in DENIED}
    print(f"explain: {(time.perf_counter() - start) * 1e3:.0f} ms for {len(explained.syscalls)} syscall numbers; "
          f"allowed set == allow list: {explained.allowed() == allow_list}")  # fmt: skip


if __name__ == "__main__":
    main()
