"""The output of `filter_file` and `split_file`: a capture file written from the mapped input.

The output is opened (created, or truncated) only at the first packet record, or when the input
has been read to its end: the header blocks before are held until then, so a run that fails before
its first record (a corrupt header or first block, a refused expression) leaves no file behind and
an existing one untouched.

Accepted records are written byte for byte, as are the pcap file header and every pcapng block that
is not a packet (SHB, IDB, NRB, ISB, custom blocks), in their order. The walker lists each chunk's
accepted records as iovecs over the mapping (adjacent records merged into one), so a file descriptor
gets one writev call per 1024 such runs, straight from the mapping; a file object without a
descriptor (io.BytesIO) gets them gathered into one buffer (the `gather` helper) instead.

A regular file (not opened for appending) may also be written at explicit offsets, from several
threads at once (`position`, `records_at`, `record_at`, `placed`: pwritev, which moves no file
offset): `capparallel` writes each byte range's records where the ranges before it end. Anything
else (a pipe, a terminal, a socket, a file object) is written in order, one stream. Buffered writes
to one file hold its inode lock (ext4, xfs, tmpfs), so threads' pwritev calls do not copy at once;
where the records are short, each thread gathers them into a buffer of its own first (in parallel)
and the locked part is one contiguous copy: on a 2-CPU VM, 43 MB of 375-byte runs took 32 ms as
pwritev of the iovecs and 10 ms as one pwrite after an 8 ms gather (`bench/parallel_bench.py`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import threading
from typing import IO, TYPE_CHECKING, Any

from . import walkers

if TYPE_CHECKING:
    from .capformat import CaptureFile, ChunkArrays, Output

__all__ = ["Writer"]

IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in getattr(os, "sysconf_names", {}) else 16  # POSIX minimum
_writev: Any = None
_pwritev: Any = None
# records_at gathers a chunk's records before writing when its runs average fewer bytes than this
# (the kernel's per-iovec cost: see the module doc) and the chunk is no larger than GATHER_MAX
GATHER_RUNS_BELOW, GATHER_MAX = 4096, 8 << 20
_scratch = threading.local()  # each thread's gather buffer


def _libc_writev() -> Any:
    global _writev
    if _writev is None:
        writev = ctypes.CDLL(None, use_errno=True).writev
        writev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        writev.restype = ctypes.c_ssize_t
        _writev = writev
    return _writev


def _libc_pwritev() -> Any:
    global _pwritev
    if _pwritev is None:  # (ctypes releases the GIL for the call: threads write at once)
        pwritev = ctypes.CDLL(None, use_errno=True).pwritev
        pwritev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64]
        pwritev.restype = ctypes.c_ssize_t
        _pwritev = pwritev
    return _pwritev


class Writer:
    """The output: a file descriptor written with writev straight from the mapping, or a file object."""

    def __init__(self, dst: Output, source: CaptureFile):
        self.fd = -1
        self.own = False
        self.file: IO[bytes] | None = None
        self.written = 0
        self.dst: Output | None = dst  # until opened
        self.pending: list[bytes] = []  # header blocks held until then
        if isinstance(dst, (str, bytes, os.PathLike)):
            with contextlib.suppress(FileNotFoundError):
                self._refuse_source(os.stat(dst), source)  # before O_TRUNC empties it
            return
        try:
            fd = dst.fileno()
        except (AttributeError, OSError, ValueError):  # io.BytesIO and friends
            return
        self._refuse_source(os.fstat(fd), source)

    def _open(self) -> None:
        dst, self.dst = self.dst, None
        assert dst is not None
        if isinstance(dst, (str, bytes, os.PathLike)):
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            self.fd, self.own = os.open(dst, flags, 0o666), True
        elif self.without_descriptor(dst):
            self.file = dst
        else:
            dst.flush()  # what the caller wrote before must come first
            self.fd = dst.fileno()
        pending, self.pending = self.pending, []
        for data in pending:
            self._write(data)

    @staticmethod
    def _refuse_source(status: os.stat_result, source: CaptureFile) -> None:
        if (status.st_dev, status.st_ino) == source.identity:  # writing it would pull the mapping from under us
            raise ValueError(f"the output is the input file {source.path}: write to another file")

    @staticmethod
    def without_descriptor(dst: Output) -> bool:
        """Whether `dst` is a file object without a file descriptor (written through `gather`)."""
        if isinstance(dst, (str, bytes, os.PathLike)):
            return False
        try:
            dst.fileno()
        except (AttributeError, OSError, ValueError):  # io.BytesIO and friends
            return True
        return False

    def block(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes that are not packet records (a header, a pcapng block): held until the output opens."""
        if self.dst is not None:
            self.pending.append(bytes(data))
            return
        self._write(data)

    def record(self, data: bytes | bytearray | memoryview) -> None:
        """One packet record's bytes (a cut record: not in the walker's iovecs)."""
        if self.dst is not None:
            self._open()
        self._write(data)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        if self.file is not None:
            self.file.write(data)
        else:
            _write_all(self.fd, memoryview(data))
        self.written += len(data)

    def records(self, arrays: ChunkArrays) -> None:
        """The chunk's accepted records, as the walker listed them in `arrays.iov`."""
        count, nbytes = arrays.chunk.iov_count, arrays.chunk.bytes
        if not count:
            return
        if self.dst is not None:
            self._open()
        if self.file is not None:
            buffer = bytearray(nbytes)
            gather = walkers.helper("gather")
            gather(ctypes.addressof(arrays.iov), count, ctypes.addressof(ctypes.c_char.from_buffer(buffer)))
            self.file.write(buffer)
        else:
            writev = _libc_writev()
            group = walkers.IOV_GROUP
            for first in range(0, count, group):  # one writev per 1024 runs of accepted records
                n = min(group, count - first)
                expected = arrays.group_bytes[first // group]
                done = writev(self.fd, ctypes.addressof(arrays.iov) + 16 * first, n) if group <= IOV_MAX else 0
                if done != expected:  # an error, a signal or a short write: finish this group slowly
                    self._finish(arrays.iov, first, n, done, ctypes.get_errno())
        self.written += nbytes

    def _finish(self, iov: Any, first: int, n: int, done: int, error: int, at: int | None = None) -> None:
        """Write what one (p)writev call left of iovecs [first, first + n) (`at`: its file offset)."""
        if done < 0 and error != errno.EINTR:
            raise OSError(error, os.strerror(error))
        skip = max(done, 0)
        if at is not None:
            at += skip
        for index in range(first, first + n):
            base, length = iov[2 * index], iov[2 * index + 1]
            if skip >= length:
                skip -= length
                continue
            data = memoryview(ctypes.string_at(base + skip, length - skip))
            if at is None:
                _write_all(self.fd, data)
            else:
                _pwrite_all(self.fd, data, at)
                at += len(data)
            skip = 0

    # -- at explicit offsets (threads) ------------------------------------------------------------------
    def open(self) -> None:
        """Open the output now (it gets the held header blocks) if no record has opened it."""
        if self.dst is not None:
            self._open()

    def position(self) -> int | None:
        """Where the next byte goes, if this output may be written at explicit offsets from several
        threads (an open regular file, not in append mode: pwritev would ignore the offset); else None."""
        if self.fd < 0 or self.file is not None:
            return None
        if not stat.S_ISREG(os.fstat(self.fd).st_mode) or fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_APPEND:
            return None
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def records_at(self, arrays: ChunkArrays, at: int) -> int:
        """The chunk's accepted records written from offset `at` (thread-safe: no file offset moves);
        returns the bytes written. `written` is settled by `placed`."""
        iov, count, nbytes = arrays.iov, arrays.chunk.iov_count, arrays.chunk.bytes
        if nbytes <= GATHER_MAX and nbytes < GATHER_RUNS_BELOW * count:
            buffer: bytearray | None = getattr(_scratch, "buffer", None)
            if buffer is None or len(buffer) < nbytes:
                buffer = _scratch.buffer = bytearray(max(nbytes, 1 << 20))
            walkers.helper("gather")(ctypes.addressof(iov), count, ctypes.addressof(ctypes.c_char.from_buffer(buffer)))
            with memoryview(buffer) as view:
                _pwrite_all(self.fd, view[:nbytes], at)
            return int(nbytes)
        pwritev, group = _libc_pwritev(), walkers.IOV_GROUP
        for first in range(0, count, group):
            n = min(group, count - first)
            expected = arrays.group_bytes[first // group]
            done = pwritev(self.fd, ctypes.addressof(iov) + 16 * first, n, at) if group <= IOV_MAX else 0
            if done != expected:
                self._finish(iov, first, n, done, ctypes.get_errno(), at)
            at += expected
        return int(arrays.chunk.bytes)

    def record_at(self, data: bytes, at: int) -> int:
        """One record's bytes (a cut record) at offset `at`; returns its length."""
        _pwrite_all(self.fd, memoryview(data), at)
        return len(data)

    def placed(self, start: int, end: int) -> None:
        """Bytes [start, end) were written at explicit offsets: the file offset moves to `end`, as if
        they had been written in order (a caller's descriptor goes on from there)."""
        if end != start:
            os.lseek(self.fd, end, os.SEEK_SET)
        self.written += end - start

    def finish(self) -> None:
        """The input has been read to its end: open the output if no record did (it gets the headers)."""
        if self.dst is not None:
            self._open()

    def close(self) -> None:
        """Close what was opened; an output never opened (the run failed before a record) stays as it was."""
        if self.own and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        elif self.file is not None and hasattr(self.file, "flush"):
            self.file.flush()


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


def _pwrite_all(fd: int, view: memoryview, at: int) -> None:
    while view:
        done = os.pwrite(fd, view, at)
        view, at = view[done:], at + done
