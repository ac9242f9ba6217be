"""Socket filters in the Linux kernel, through ctypes: attach a program, read the attached one back.

`attach_filter(sock, program)` is `setsockopt(SOL_SOCKET, SO_ATTACH_FILTER)` with a `struct
sock_fprog`. The kernel validates the program (`bpf_check_classic`; its verdict is the errno: EINVAL
for a program it refuses, ENOMEM for one larger than `net.core.optmem_max` allows) and keeps the
instructions as given, unused jt/jf/k included, which `attached_filter(sock)` reads back with
`getsockopt(SOL_SOCKET, SO_GET_FILTER)`. `detach_filter(sock)` removes it.

SO_GET_FILTER counts in instructions, not bytes, both ways (`sk_get_filter`, DIALECTS.md A.1): optlen
0 asks for the count, then a buffer of 8 * n bytes goes in with optlen n, and n comes back. A socket
without a filter answers a count of 0 and no error; a buffer shorter than the program, EINVAL. Python's
own `sock.getsockopt(SOL_SOCKET, SO_GET_FILTER, n)` passes a buffer of n *bytes* with optlen n, the
kernel writes 8 * n bytes into it and the interpreter crashes: never call it.

`sock` is a socket or anything with `fileno()`, or a file descriptor. Linux only.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from typing import Protocol

from .program import Program

__all__ = ["SO_ATTACH_FILTER", "SO_DETACH_FILTER", "SO_GET_FILTER", "attach_filter", "attached_filter",
           "detach_filter"]  # fmt: skip

SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
SO_GET_FILTER = SO_ATTACH_FILTER  # the same number, read with getsockopt
BPF_MAXINSNS = 4096  # the kernel refuses longer programs (EINVAL); sock_fprog.len is a u16 anyway
INSN_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k
# A program read back is sized by a first call; one replaced by a longer one in between (EINVAL) is
# asked for again, this many times in all.
READ_ATTEMPTS = 4


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


Socket = _HasFileno | int


class _SockFprog(ctypes.Structure):
    """struct sock_fprog { unsigned short len; struct sock_filter *filter; } (padding after len)."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    """libc's setsockopt/getsockopt with their prototypes (loaded on first use)."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        # int setsockopt(int fd, int level, int optname, const void *optval, socklen_t optlen)
        libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        libc.setsockopt.restype = ctypes.c_int
        # int getsockopt(int fd, int level, int optname, void *optval, socklen_t *optlen)
        libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                    ctypes.POINTER(ctypes.c_uint32)]  # fmt: skip
        libc.getsockopt.restype = ctypes.c_int
        _libc = libc
    return _libc


def _fd(sock: Socket) -> int:
    return sock if isinstance(sock, int) else sock.fileno()


def _error(what: str, fd: int, why: str = "") -> OSError:
    """OSError from the errno of the call just made: `[Errno 22] Invalid argument: SO_ATTACH_FILTER ...`."""
    code = ctypes.get_errno()
    return OSError(code, f"{os.strerror(code)}: {what} on fd {fd}{why}")


def attach_filter(sock: Socket, program: Program) -> None:
    """Attach `program` to the socket (SO_ATTACH_FILTER), replacing any filter it had.

    Raises OSError with the kernel's errno: EINVAL when its validator (or the program's translation to
    eBPF) refuses the program, ENOMEM when the program is larger than `net.core.optmem_max` allows.
    """
    fd = _fd(sock)
    if len(program) > BPF_MAXINSNS:  # the kernel says EINVAL too; this says why, before a u16 wraps
        raise OSError(errno.EINVAL, f"SO_ATTACH_FILTER on fd {fd}: {len(program)} insns, the kernel takes "
                                    f"at most {BPF_MAXINSNS}")  # fmt: skip
    code = ctypes.create_string_buffer(program.to_bytes(), max(1, len(program) * INSN_SIZE))
    fprog = _SockFprog(len(program), ctypes.addressof(code))
    if _library().setsockopt(fd, socket.SOL_SOCKET, SO_ATTACH_FILTER, ctypes.byref(fprog), ctypes.sizeof(fprog)):
        why = {
            errno.EINVAL: f" ({len(program)} insns): the kernel's validator refused the program",
            errno.ENOMEM: f" ({len(program)} insns): more than net.core.optmem_max allows",
        }.get(ctypes.get_errno(), "")
        raise _error("SO_ATTACH_FILTER", fd, why)


def detach_filter(sock: Socket) -> None:
    """Remove the socket's filter (SO_DETACH_FILTER); FileNotFoundError (ENOENT) when it has none."""
    fd = _fd(sock)
    unused = ctypes.c_int(0)  # the kernel wants an int-sized option it does not read
    if _library().setsockopt(fd, socket.SOL_SOCKET, SO_DETACH_FILTER, ctypes.byref(unused), ctypes.sizeof(unused)):
        raise _error("SO_DETACH_FILTER", fd)


def _get_filter(fd: int, buffer: ctypes.Array[ctypes.c_char] | None, count: int) -> int:
    """One SO_GET_FILTER call with room for `count` instructions: the count the kernel answers."""
    optlen = ctypes.c_uint32(count)
    if _library().getsockopt(fd, socket.SOL_SOCKET, SO_GET_FILTER, buffer, ctypes.byref(optlen)):
        raise _error("SO_GET_FILTER", fd)
    return optlen.value


def attached_filter(sock: Socket) -> Program:
    """The program attached to the socket, as it was attached (SO_GET_FILTER).

    Raises FileNotFoundError (ENOENT, the kernel's word for it on SO_DETACH_FILTER) when the socket has
    no filter (the kernel answers a count of 0, without an error); other OSErrors carry the kernel's
    errno (EACCES: an eBPF program attached with SO_ATTACH_BPF, which has no cBPF original).
    """
    fd = _fd(sock)
    for _ in range(READ_ATTEMPTS):
        count = _get_filter(fd, None, 0)
        if count == 0:
            break
        buffer = ctypes.create_string_buffer(count * INSN_SIZE)
        try:
            count = _get_filter(fd, buffer, count)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # replaced by a longer program since the count: ask again
                continue
            raise
        if count == 0:  # detached since the count
            break
        return Program.from_bytes(buffer.raw[: count * INSN_SIZE])
    else:
        raise OSError(errno.EAGAIN, f"SO_GET_FILTER on fd {fd}: the filter kept changing while it was read")
    raise OSError(errno.ENOENT, f"SO_GET_FILTER on fd {fd}: the socket has no filter attached")
