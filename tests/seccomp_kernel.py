"""The Linux kernel's seccomp as an oracle, unprivileged (DIALECTS.md C.4), for x86-64.

The tests talk to an `Oracle`: this file run as a worker process (stdlib only: no numpy threads to
make fork unsafe), which forks one child per program. A child:
sets no-new-privs and RLIMIT_CORE 0; maps a raw-syscall stub; installs `guard + P'`, where the guard
ALLOWs every syscall not made from the stub (so Python, the pipe and exit work), then sets A back
to 0, and P' is the program
under test with each `ret #k` turned into `ret ERRNO|code` naming that ret, and each `ret a` into a
jump to a tail that returns one 11-bit chunk of A the same way. The probed syscall therefore never
runs, whatever nr and args are. Three such filters are stacked (chunks 0, 1, 2 of A): every return
is ERRNO, and on a tie the kernel keeps the newest filter's data, so each probe after the k-th
install reads chunk k. A path that stops without a ret (div by X == 0) returns 0, KILL_THREAD: the
child dies of SIGSYS, the parent records 0 for that record and goes on in a new child.

What the probes see: arch is AUDIT_ARCH_X86_64 and instruction_pointer is the stub's address + 25
(after its `syscall`), reported back so the other backends run the same record.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import resource
import signal
import struct
import subprocess
import sys
from collections.abc import Sequence

AVAILABLE = sys.platform == "linux" and platform.machine() == "x86_64"
REASON = "the kernel oracle's syscall stub is x86-64 machine code (an aarch64 stub is not written yet)"

# Syscall numbers that do not reach seccomp as the others do on the machine this was written on
# (Linux 6.18.44-fc, in a VM): x86-64 leaves 335 and 336 unallocated, yet probing 335 killed the
# child with SIGILL and ERRNO(5) on 336 came back as -6. Every other nr of 0..4095, x32's and 3000
# random ones read back as themselves. Not seccomp's doing: the tests leave these two out.
UNRELIABLE_NRS = frozenset({335, 336})

ERRNO, ALLOW = 0x00050000, 0x7FFF0000
SYS_SECCOMP, PR_SET_NO_NEW_PRIVS = 317, 38
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1, 4
# mov rax,rdi; mov rdi,rsi; mov rsi,rdx; mov rdx,rcx; mov r10,r8; mov r8,r9; mov r9,[rsp+8]; syscall; ret
STUB = bytes.fromhex("4889f8" "4889f7" "4889d6" "4889ca" "4d89c2" "4d89c8" "4c8b4c2408" "0f05" "c3")
IP_OFFSET = 25  # instruction_pointer as the filter sees it: just after the syscall instruction
CHUNK_BITS = 11  # ERRNO data is capped at 4095: A comes back in three chunks of 11 bits (+1, so 0 is no chunk)
RET_K_BASE = 1 << CHUNK_BITS  # errno for the j-th `ret #k`: RET_K_BASE + 1 + j (chunks are 1..2048)

Insn = tuple[int, int, int, int]


def _sock_fprog(insns: Sequence[Insn]) -> tuple[ctypes.Structure, object]:
    data = b"".join(struct.pack("=HBBI", *insn) for insn in insns)
    buffer = ctypes.create_string_buffer(data, len(data))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    return SockFprog(len(insns), ctypes.addressof(buffer)), buffer


def _install(libc: ctypes.CDLL, insns: Sequence[Insn]) -> int:
    """0, or the errno of seccomp(SECCOMP_SET_MODE_FILTER) (EINVAL: the kernel's validator said no)."""
    prog, keep = _sock_fprog(insns)
    result = libc.syscall(SYS_SECCOMP, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW, ctypes.byref(prog))
    del keep
    return 0 if result == 0 else ctypes.get_errno()


def _guarded(program: Sequence[Insn], ip: int, chunk: int) -> tuple[list[Insn], list[int]]:
    """guard + P' for one chunk; also the ret #k values in the order their codes number them."""
    guard = [*_guard(ip), (0x00, 0, 0, 0)]  # A = 0 again after the guard's loads: P starts as in the kernel
    body: list[Insn] = []
    values: list[int] = []
    n = len(program)
    for index, (code, jt, jf, k) in enumerate(program):
        if code == 0x06:  # ret #k
            values.append(k)
            body.append((0x06, 0, 0, ERRNO | (RET_K_BASE + len(values))))
        elif code == 0x16:  # ret a: to the tail, past the program's end (ja keeps every offset intact)
            body.append((0x05, 0, 0, n - index - 1))
        else:
            body.append((code, jt, jf, k))
    tail: list[Insn] = [(0x74, 0, 0, CHUNK_BITS * chunk), (0x54, 0, 0, (1 << CHUNK_BITS) - 1),
                        (0x04, 0, 0, 1), (0x44, 0, 0, ERRNO), (0x16, 0, 0, 0)]  # fmt: skip
    return guard + body + tail, values


def _child(libc: ctypes.CDLL, program: list[Insn], records: list[list[int]], write_fd: int) -> None:
    """Install the three filters in turn and probe every record after each; write one line per probe."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        os._exit(101)
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(STUB)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    stub = ctypes.CFUNCTYPE(ctypes.c_long, *[ctypes.c_uint64] * 7)(address)
    ip = address + IP_OFFSET
    os.write(write_fd, f"ip {ip}\n".encode())
    for chunk in range(3):
        insns, _ = _guarded(program, ip, chunk)
        err = _install(libc, insns)
        if err:
            os.write(write_fd, f"install-failed {err}\n".encode())
            os._exit(102)
        for index, (nr, *args) in enumerate(records):
            os.write(write_fd, f"probe {chunk} {index}\n".encode())
            result = stub(nr & 0xFFFFFFFF, *args)
            os.write(write_fd, f"result {chunk} {index} {-result}\n".encode())
    os._exit(0)


def _run_one(libc: ctypes.CDLL, program: list[Insn], records: list[list[int]]) -> dict[str, object]:
    """The kernel's return value for each record (None where the probes disagree), and the ip."""
    codes: dict[tuple[int, int], int] = {}  # (chunk, record) -> errno, or 0 when the child was killed
    ip = 0
    remaining = list(range(len(records)))
    while remaining:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            try:
                _child(libc, program, [records[i] for i in remaining], write_fd)
            finally:
                os._exit(103)
        os.close(write_fd)
        with os.fdopen(read_fd) as lines:
            output = lines.read().split("\n")
        _, status = os.waitpid(pid, 0)
        pending: tuple[int, int] | None = None
        for line in output:
            fields = line.split()
            if not fields:
                continue
            if fields[0] == "ip":
                ip = int(fields[1])
            elif fields[0] == "install-failed":
                return {"error": f"install failed: errno {fields[1]}"}
            elif fields[0] == "probe":
                pending = (int(fields[1]), remaining[int(fields[2])])
            elif fields[0] == "result":
                codes[(int(fields[1]), remaining[int(fields[2])])] = int(fields[3])
                pending = None
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break
        if pending is None or not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS):
            return {"error": f"child ended with status {status:#x} outside a probe"}
        _, killed = pending
        for c in range(3):
            codes[(c, killed)] = 0  # (the same path kills under every chunk's tail)
        # A new child for every record not probed under all three filters yet.
        remaining = [i for i in range(len(records)) if any((c, i) not in codes for c in range(3))]
    return {"ip": ip, "values": [_value(codes, i, program) for i in range(len(records))]}


def _value(codes: dict[tuple[int, int], int], index: int, program: list[Insn]) -> int | None:
    got = [codes[(chunk, index)] for chunk in range(3)]
    if got == [0, 0, 0]:
        return 0  # killed: the program stopped (div by X == 0) and returned 0
    ret_values = [k for code, _, _, k in program if code == 0x06]
    if got[0] > RET_K_BASE:
        if got != [got[0]] * 3:
            return None
        return ret_values[got[0] - RET_K_BASE - 1]
    if not all(1 <= g <= RET_K_BASE for g in got):
        return None
    return sum((g - 1) << (CHUNK_BITS * chunk) for chunk, g in enumerate(got)) & 0xFFFFFFFF


def _install_verdict(libc: ctypes.CDLL, program: list[Insn]) -> int:
    """0 when the kernel accepts the program as a seccomp filter, else the errno (EINVAL 22, ...)."""
    pid = os.fork()
    if pid == 0:
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            err = _install(libc, program)
            # Installed: exiting is itself filtered now (it may be killed or refused): status 0 or a signal.
            os._exit(200 + err if err else 0)
        finally:
            os._exit(199)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) >= 200:
        return os.WEXITSTATUS(status) - 200
    return 0


def _guard(ip: int) -> list[Insn]:
    return [(0x20, 0, 0, 8), (0x15, 1, 0, ip & 0xFFFFFFFF), (0x06, 0, 0, ALLOW),
            (0x20, 0, 0, 12), (0x15, 1, 0, ip >> 32), (0x06, 0, 0, ALLOW)]  # fmt: skip


def _probe_raw(libc: ctypes.CDLL, programs: list[list[Insn]], record: list[int]) -> dict[str, object]:
    """Install each program as it is (oldest first, each behind the guard), make the syscall from
    the stub once, and say what happened: the value it returned (and whether it was the syscall's
    own: `allowed`), a SIGSYS caught (TRAP), or the signal the child died of."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            trapped = []
            signal.signal(signal.SIGSYS, lambda *_: trapped.append(1))
            libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
            page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            page.write(STUB)
            address = ctypes.addressof(ctypes.c_char.from_buffer(page))
            stub = ctypes.CFUNCTYPE(ctypes.c_long, *[ctypes.c_uint64] * 7)(address)
            for program in programs:
                err = _install(libc, _guard(address + IP_OFFSET) + program)
                if err:
                    os.write(write_fd, json.dumps({"error": f"install failed: errno {err}"}).encode())
                    os._exit(0)
            result = stub(record[0] & 0xFFFFFFFF, *record[1:])
            real = libc.syscall(record[0], *record[1:])  # (allowed: what the syscall itself returns)
            answer = {"return": result, "trapped": bool(trapped), "allowed": result == real}
            os.write(write_fd, json.dumps(answer).encode())
            os._exit(0)
        finally:
            os._exit(103)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    parsed: dict[str, object] = json.loads(text)
    return parsed


def _worker() -> None:
    """Serve jobs, one JSON line each ({"run": [program, records]} or {"install": program}), until EOF."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    for line in sys.stdin:
        job = json.loads(line)
        if "run" in job:
            program, recs = job["run"]
            out: object = _run_one(libc, [tuple(i) for i in program], recs)
        elif "raw" in job:
            programs, record = job["raw"]
            out = _probe_raw(libc, [[tuple(i) for i in p] for p in programs], record)
        else:
            out = _install_verdict(libc, [tuple(i) for i in job["install"]])
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


class Oracle:
    """A worker process serving the kernel's verdicts (one forked child per program)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, bufsize=1)  # fmt: skip

    def _ask(self, job: dict[str, object]) -> object:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(job) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the seccomp oracle worker died (status {self._process.poll()})")
        return json.loads(line)

    def run(self, program: Sequence[Insn], records: Sequence[Sequence[int]]) -> tuple[int, list[int | None]]:
        """The kernel's return value for each record ([nr, arg0..arg5]; None where its three probes
        disagree), and the instruction_pointer every record had. RuntimeError if it would not install."""
        answer = self._ask({"run": [[list(i) for i in program], [list(r) for r in records]]})
        assert isinstance(answer, dict)
        if "error" in answer:
            raise RuntimeError(str(answer["error"]))
        return int(answer["ip"]), list(answer["values"])

    def install_verdict(self, program: Sequence[Insn]) -> int:
        """0 if the kernel installs `program` as a seccomp filter, else the errno (EINVAL 22, ...)."""
        answer = self._ask({"install": [list(i) for i in program]})
        assert isinstance(answer, int)
        return answer

    def probe(self, programs: Sequence[Sequence[Insn]], nr: int, args: Sequence[int] = ()) -> dict[str, object]:
        """Stack `programs` as they are (oldest first) in a fresh child and make one syscall: what
        happened (see `_probe_raw`). Use a harmless nr: an ALLOW runs it (twice)."""
        record = [nr, *args, *[0] * (6 - len(args))]
        answer = self._ask({"raw": [[[list(i) for i in p] for p in programs], record]})
        assert isinstance(answer, dict)
        if "error" in answer:
            raise RuntimeError(str(answer["error"]))
        return answer

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)


if __name__ == "__main__":
    _worker()
