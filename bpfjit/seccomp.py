"""seccomp filters: compiled, run over syscall records, their returns decoded as the kernel acts on them.

    from bpfjit import seccomp
    sf = seccomp.compile(program)                    # the seccomp rules (dialect "seccomp"), then the JIT
    sf(nr=59, args=(0, 0, 0))                        # the filter's raw u32 return for one syscall
    seccomp.decode(sf(nr=59))                        # Action(kind='ERRNO', data=1, ...), as the kernel acts
    recs = seccomp.records(n); recs["nr"] = ...      # numpy DATA_DTYPE: struct seccomp_data, host order
    sf.evaluate(recs)                                # uint32 per record, one native call, GIL released
    seccomp.stack([older, newer]).evaluate(recs)     # the kernel's precedence over stacked filters

The input is `struct seccomp_data` (64 bytes: `int nr`, `u32 arch`, `u64 instruction_pointer`,
`u64 args[6]`, all in the host's byte order), which the filter reads as 32-bit words: `ld [16]` is
the low word of args[0] on a little-endian host. Facts are DIALECTS.md section C's (Linux 6.x).
"""

from __future__ import annotations

import os
import platform
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from .dialects import SECCOMP, SECCOMP_DATA_SIZE
from .errors import LibraryMissingError, ValidationError
from .filter import Filter
from .filter import compile as _compile_filter
from .opcodes import U32_MASK
from .program import InsnLike, Program
from .validate import validate

if TYPE_CHECKING:
    from .seccomp_explain import Explanation

# AUDIT_ARCH_* (linux/audit.h: EM_* | 0x80000000 when 64-bit | 0x40000000 when little-endian).
AUDIT_ARCH: dict[str, int] = {
    "x86_64": 0xC000003E, "i386": 0x40000003, "aarch64": 0xC00000B7, "arm": 0x40000028,
    "riscv64": 0xC00000F3, "s390x": 0x80000016, "ppc64le": 0xC0000015, "ppc64": 0x80000015,
    "mipsel64": 0xC0000008, "loongarch64": 0xC0000102,
}  # fmt: skip
AUDIT_ARCH_X86_64 = AUDIT_ARCH["x86_64"]
AUDIT_ARCH_I386 = AUDIT_ARCH["i386"]
AUDIT_ARCH_AARCH64 = AUDIT_ARCH["aarch64"]
X32_SYSCALL_BIT = 0x40000000  # x32 syscalls run under AUDIT_ARCH_X86_64 with this bit in nr
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "i686": "i386", "i386": "i386", "aarch64": "aarch64",
             "arm64": "aarch64", "riscv64": "riscv64", "s390x": "s390x", "ppc64le": "ppc64le",
             "ppc64": "ppc64", "loongarch64": "loongarch64"}  # fmt: skip
HOST_ARCH: int | None = AUDIT_ARCH.get(_MACHINES.get(platform.machine().lower(), ""))
"""This machine's AUDIT_ARCH (the default `arch` of records), None where unknown."""

DATA_DTYPE = np.dtype(
    {"names": ["nr", "arch", "ip", "args"], "formats": ["=i4", "=u4", "=u8", ("=u8", (6,))],
     "offsets": [0, 4, 8, 16], "itemsize": SECCOMP_DATA_SIZE}
)  # fmt: skip
"""`struct seccomp_data` as a numpy record: nr, arch, ip (instruction_pointer), args[6]; host order."""
_DATA = struct.Struct("=iIQ6Q")

# Return values (linux/seccomp.h): action in the high 16 bits (SECCOMP_RET_ACTION_FULL), data below.
ACTION_MASK = 0xFFFF0000
DATA_MASK = 0x0000FFFF
MAX_ERRNO = 4095  # the kernel caps ERRNO's data here
RET: dict[str, int] = {
    "KILL_PROCESS": 0x80000000, "KILL_THREAD": 0x00000000, "TRAP": 0x00030000, "ERRNO": 0x00050000,
    "USER_NOTIF": 0x7FC00000, "TRACE": 0x7FF00000, "LOG": 0x7FFC0000, "ALLOW": 0x7FFF0000,
}  # fmt: skip
"""Every action the kernel knows, most restrictive first (its precedence when filters are stacked)."""
_KIND_OF = {value: kind for kind, value in RET.items()}
_SHOWS_DATA = frozenset({"ERRNO", "TRAP", "TRACE"})  # actions whose data the kernel passes on

MAX_STACKED_INSNS = 32768  # MAX_INSNS_PER_PATH: (1 << 18) / sizeof(struct sock_filter)
STACK_PENALTY = 4  # instructions the kernel adds for every filter below the newest


def _u32(value: int, what: str) -> int:
    if not 0 <= value <= U32_MASK:
        raise ValueError(f"{what} {value:#x} does not fit in 32 bits")
    return value


class Action(NamedTuple):
    """What the kernel does with a filter's return `value` (DIALECTS.md C.2).

    `kind` is one of RET's names; a value whose action the kernel does not know is KILL_PROCESS
    (its `default:` branch) with `known` False. `data` is the low 16 bits as the kernel uses them:
    ERRNO's errno (capped at MAX_ERRNO, as the kernel caps it; 0 makes the syscall return 0), TRAP's
    `si_errno`, TRACE's event message; the other actions ignore it. (TRACE with no tracer and
    USER_NOTIF with no listener fail the syscall with ENOSYS.)"""

    kind: str
    data: int
    value: int
    known: bool = True

    @property
    def name(self) -> str:
        """`ERRNO(1)`, `ALLOW`, `KILL_PROCESS (unknown action 0x00010000)`, ..."""
        if not self.known:
            return f"KILL_PROCESS (unknown action {self.value & ACTION_MASK:#010x})"
        return f"{self.kind}({self.data})" if self.kind in _SHOWS_DATA else self.kind

    def __str__(self) -> str:
        return self.name


def decode(value: int) -> Action:
    """The kernel's action for a filter's return value."""
    value = _u32(int(value), "return value")
    action, data = value & ACTION_MASK, value & DATA_MASK
    kind = _KIND_OF.get(action)
    if kind is None:
        return Action("KILL_PROCESS", data, value, known=False)
    return Action(kind, min(data, MAX_ERRNO) if kind == "ERRNO" else data, value)


def precedence(values: npt.ArrayLike) -> npt.NDArray[np.int32]:
    """The kernel's order of returns (`(s32)(ret & SECCOMP_RET_ACTION_FULL)`): lower wins."""
    return (np.asarray(values, dtype=np.uint32) & np.uint32(ACTION_MASK)).view(np.int32)


# -- records ---------------------------------------------------------------------------------------
def records(n: int, arch: int | None = HOST_ARCH) -> npt.NDArray[Any]:
    """`n` zeroed DATA_DTYPE records with `arch` filled in (this machine's by default)."""
    recs = np.zeros(n, dtype=DATA_DTYPE)
    if arch is not None:
        recs["arch"] = arch
    return recs


def record(nr: int, args: Sequence[int] = (), arch: int | None = HOST_ARCH, ip: int = 0) -> bytes:
    """One `struct seccomp_data` as bytes. `nr` is a signed or unsigned 32-bit number (-1 and
    0xffffffff are the same nr); `args` up to six u64 values (missing ones are 0)."""
    if not -(1 << 31) <= nr <= U32_MASK:
        raise ValueError(f"nr {nr} does not fit in 32 bits")
    if len(args) > 6:
        raise ValueError(f"a syscall has at most 6 arguments, not {len(args)}")
    values = [*args, *[0] * (6 - len(args))]
    if any(not 0 <= v < 1 << 64 for v in (*values, ip)):
        raise ValueError("args and ip are unsigned 64-bit values")
    signed_nr = nr - (1 << 32) if nr >= 1 << 31 else nr
    return _DATA.pack(signed_nr, 0 if arch is None else _u32(arch, "arch"), ip, *values)


def _record_bytes(recs: Any) -> npt.NDArray[np.uint8]:
    """The bytes of a C-contiguous DATA_DTYPE array (or of a bytes-like run of 64-byte records)."""
    if isinstance(recs, np.ndarray) and recs.dtype.names is not None:
        if recs.dtype != DATA_DTYPE:
            raise TypeError(f"records must have seccomp.DATA_DTYPE, not {recs.dtype}")
        if recs.ndim != 1 or not recs.flags.c_contiguous:
            raise ValueError("records must be a one-dimensional C-contiguous array")
        return recs.view(np.uint8)
    data = np.frombuffer(memoryview(recs).cast("B"), dtype=np.uint8)
    if len(data) % SECCOMP_DATA_SIZE:
        raise ValueError(f"{len(data)} bytes is not a whole number of {SECCOMP_DATA_SIZE}-byte records")
    return data


# -- filters ---------------------------------------------------------------------------------------
def _program(source: Program | Iterable[InsnLike] | bytes | bytearray | memoryview) -> Program:
    if isinstance(source, Program):
        return source
    if isinstance(source, bytes | bytearray | memoryview):
        return Program.from_bytes(source)  # struct sock_filter[], host order
    return Program(source)


class SeccompFilter:
    """A seccomp program validated by the kernel's rules and compiled to native code."""

    def __init__(self, program: Program, opt_level: int = 2):
        self.program = program
        self.filter: Filter = _compile_filter(program, opt_level=opt_level, dialect=SECCOMP)

    def __call__(self, nr: int, args: Sequence[int] = (), arch: int | None = HOST_ARCH, ip: int = 0) -> int:
        """The filter's return value for one syscall."""
        return int(self.filter(record(nr, args, arch, ip)))

    def action(self, nr: int, args: Sequence[int] = (), arch: int | None = HOST_ARCH, ip: int = 0) -> Action:
        """`decode(self(...))`: what the kernel would do with this syscall."""
        return decode(self(nr, args, arch, ip))

    def evaluate(self, recs: Any, out: npt.NDArray[np.uint32] | None = None) -> npt.NDArray[np.uint32]:
        """The return value for every record (a DATA_DTYPE array, or bytes of 64-byte records), in
        one native call with the GIL released."""
        return self.filter.run_records(_record_bytes(recs), SECCOMP_DATA_SIZE, out)

    def tier_up(self) -> SeccompFilter:
        """Switch to the optimising tier now (see `Filter.tier_up`); returns the filter."""
        self.filter.tier_up()
        return self

    def __len__(self) -> int:
        return len(self.program)

    def __repr__(self) -> str:
        return f"<bpfjit.seccomp.SeccompFilter: {len(self.program)} insns, {self.filter.tier} tier>"


def compile(
    source: Program | Iterable[InsnLike] | bytes | bytearray | memoryview, *, opt_level: int = 2
) -> SeccompFilter:
    """A seccomp filter from a `Program`, instructions, or `struct sock_filter[]` bytes (host order).
    `ValidationError` when the kernel would refuse it (its rule names the seccomp ones too)."""
    return SeccompFilter(_program(source), opt_level)


class Stack:
    """Filters as a thread stacks them, oldest first: every one runs on every syscall, and the
    return that wins is the one the kernel keeps (`seccomp_run_filters`): the lowest action by
    `precedence`, ties to the newest filter (its data), starting from ALLOW."""

    def __init__(self, filters: Sequence[SeccompFilter]):
        if not filters:
            raise ValueError("a stack needs at least one filter")
        total = 0
        for depth, f in enumerate(filters):
            total += len(f) + (STACK_PENALTY if depth else 0)
            if total > MAX_STACKED_INSNS:
                raise ValidationError(
                    "stack-too-long",
                    f"filter {depth} brings the stack to {total} instructions (each filter below the newest "
                    f"counts {STACK_PENALTY} more); the kernel allows {MAX_STACKED_INSNS} (ENOMEM)",
                )
        self.filters = tuple(filters)

    def evaluate(self, recs: Any) -> npt.NDArray[np.uint32]:
        """The winning return for every record (each filter runs once over all of them)."""
        data = _record_bytes(recs)
        result = np.full(len(data) // SECCOMP_DATA_SIZE, RET["ALLOW"], dtype=np.uint32)
        best = precedence(result)
        out = np.empty_like(result)
        for f in reversed(self.filters):  # newest first; a later filter wins only by being lower
            f.evaluate(data, out)
            rank = precedence(out)
            lower = rank < best
            result[lower] = out[lower]
            best = np.where(lower, rank, best)
        return result

    def __call__(self, nr: int, args: Sequence[int] = (), arch: int | None = HOST_ARCH, ip: int = 0) -> int:
        """The winning return value for one syscall."""
        return int(self.evaluate(record(nr, args, arch, ip))[0])

    def __len__(self) -> int:
        return len(self.filters)


def stack(filters: Iterable[SeccompFilter | Program | Iterable[InsnLike]]) -> Stack:
    """A `Stack` of filters given oldest first (the order they were installed in). `ValidationError`
    (rule `stack-too-long`) past the kernel's limit: 7 filters of 4096 instructions fit, 8 do not."""
    return Stack([f if isinstance(f, SeccompFilter) else compile(f) for f in filters])


# -- reading programs (bpfjit.seccomp_explain) ----------------------------------------------------
def disasm(source: Program | Iterable[InsnLike] | bytes, arch: str | int | None = HOST_ARCH) -> str:
    """One line per instruction in seccomp-tools' notation (`A = sys_number`, `if (A == read) goto 0005`,
    `return ERRNO(1)`), syscalls named from `arch`'s table; see `seccomp_explain.disasm`."""
    from .seccomp_explain import disasm as _disasm

    return _disasm(_program(source), arch)


def explain(
    source: SeccompFilter | Stack | Program | Iterable[InsnLike] | bytes,
    arch: str | int = HOST_ARCH or 0,
    nrs: Iterable[int] | None = None,
) -> Explanation:
    """An `seccomp_explain.Explanation`: every syscall number's action under `arch` (all of its
    table's numbers, or `nrs`), or the argument conditions that decide it. For a `Stack`, what the
    stack returns under the kernel's precedence (lowest action wins, ties to the newest filter)."""
    from .seccomp_explain import explain as _explain
    from .seccomp_explain import explain_stack

    if isinstance(source, Stack):
        return explain_stack([f.program for f in source.filters], arch, nrs)
    program = source.program if isinstance(source, SeccompFilter) else _program(source)
    validate(program, dialect=SECCOMP)  # only programs the kernel accepts: a DAG, aligned loads
    return _explain(program, arch, nrs)


# -- programs of a running process (DIALECTS.md C.5) ------------------------------------------------
PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH, PTRACE_SECCOMP_GET_FILTER = 0x4206, 0x4207, 17, 0x420C
_WALL = 0x40000000  # waitpid: any child, the tracee a seized task is


def dump_pid(pid: int) -> list[Program]:
    """The seccomp filters of process `pid`, oldest first (PTRACE_SECCOMP_GET_FILTER's index 0 is the
    first installed, measured), as the programs were given to the kernel. Needs CAP_SYS_ADMIN (root)
    and a kernel with CONFIG_CHECKPOINT_RESTORE; the process is stopped only while they are read.
    An empty list when it has no filters."""
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]

    def ptrace(request: int, index: int = 0, buffer: Any = None) -> int:
        result = int(libc.ptrace(request, pid, index, buffer))
        if result == -1 and ctypes.get_errno():
            code = ctypes.get_errno()
            raise OSError(code, f"ptrace({request:#x}) on pid {pid}: {os.strerror(code)}")
        return result

    ctypes.set_errno(0)
    try:
        ptrace(PTRACE_SEIZE)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise PermissionError(exc.errno, f"reading pid {pid}'s seccomp filters needs root (CAP_SYS_ADMIN)") from exc
        raise
    programs: list[Program] = []
    try:
        ptrace(PTRACE_INTERRUPT)
        os.waitpid(pid, _WALL)  # the tracee stops: only then does the kernel answer
        for index in range(MAX_STACKED_INSNS):  # a bound: every filter counts at least one instruction
            ctypes.set_errno(0)
            try:
                count = ptrace(PTRACE_SECCOMP_GET_FILTER, index)
            except OSError as exc:
                if exc.errno == errno.ENOENT or (exc.errno == errno.EINVAL and index == 0):
                    break  # past the oldest filter; EINVAL at 0: the process is not in filter mode
                raise
            buffer = ctypes.create_string_buffer(count * 8)
            ptrace(PTRACE_SECCOMP_GET_FILTER, index, buffer)
            programs.append(Program.from_bytes(buffer.raw))
    finally:
        ctypes.set_errno(0)
        libc.ptrace(PTRACE_DETACH, pid, None, None)  # the tracee runs on as before
    return programs


# -- programs from libseccomp ----------------------------------------------------------------------
DEBIAN_PYTHON_PATH = "/usr/lib/python3/dist-packages"  # where Debian's python3-seccomp puts its module


def libseccomp() -> Any:
    """libseccomp's Python binding (`import seccomp`), found on sys.path or where Debian's
    python3-seccomp installs it (a cp311 extension: it loads in a venv of the same Python);
    `LibraryMissingError` naming the package otherwise."""
    import importlib
    import sys

    try:
        return importlib.import_module("seccomp")
    except ImportError:
        pass
    if os.path.isdir(DEBIAN_PYTHON_PATH) and DEBIAN_PYTHON_PATH not in sys.path:
        sys.path.append(DEBIAN_PYTHON_PATH)
        try:
            return importlib.import_module("seccomp")
        except ImportError:
            pass
    raise LibraryMissingError(
        "libseccomp's Python binding is not installed: apt-get install python3-seccomp (Debian/Ubuntu; "
        f"for Python {sys.version_info.major}.{sys.version_info.minor} it must match the system's python3)"
    )


def from_libseccomp(syscall_filter: Any) -> Program:
    """The BPF program of a libseccomp `SyscallFilter` (as `seccomp_export_bpf` writes it)."""
    with tempfile.TemporaryFile() as out:
        syscall_filter.export_bpf(out)
        out.seek(0)
        return Program.from_bytes(out.read())


def from_oci(
    profile: str | bytes | Mapping[str, Any] | os.PathLike[str],
    arch: str = "x86_64",
    caps: Iterable[str] = frozenset(),
    kernel_version: str | tuple[int, int] | None = None,
) -> Program:
    """The program runc installs for an OCI/Docker seccomp profile (a path, JSON text or its dict)
    on an `arch` host, for a container with bounding set `caps` on kernel `kernel_version` (None:
    this machine's); compiled by libseccomp as runc compiles it. See `seccomp_oci.from_oci`."""
    from .seccomp_oci import from_oci as _from_oci

    return _from_oci(profile, arch, caps, kernel_version)


__all__ = [
    "AUDIT_ARCH",
    "DATA_DTYPE",
    "HOST_ARCH",
    "RET",
    "Action",
    "SeccompFilter",
    "Stack",
    "compile",
    "decode",
    "disasm",
    "dump_pid",
    "explain",
    "from_libseccomp",
    "from_oci",
    "libseccomp",
    "precedence",
    "record",
    "records",
    "stack",
]
