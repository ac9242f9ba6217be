"""Capture files: read and filter classic pcap and pcapng, with the per-packet loop in native code.

    stats = bpfjit.filter_file("in.pcap", "out.pcap", "tcp port 80")   # like tcpdump -r IN -w OUT EXPR
    for timestamp, packet, wirelen in bpfjit.read_file("in.pcapng", filter="udp"):
        ...

Formats: classic pcap in either byte order with microsecond or nanosecond timestamps (and the
"modified" pcap with 24-byte record headers); pcapng with SHB, IDB, EPB, SPB and the obsolete PB,
any number of sections (each with its own byte order) and interfaces, of any link types.

How a file is filtered, and why it is not a Python loop: a Python loop costs about a microsecond a
record, several times what it takes to read, filter and write one. The file is mmap'd read-only (no
copy into Python); a native walker (`walkers`) walks its records a chunk of thousands at a time,
runs the filter on each (inlined) and lists the accepted ones as iovecs over the mapping, adjacent
records merged; one writev call writes up to 1024 such runs. Python runs once per chunk. Accepted
records are written byte for byte, as are the pcap file header and every pcapng block that is not a
packet (SHB, IDB, NRB, ISB, custom blocks), in their order.

An expression is compiled for each link type the file holds (libpcap's `pcap_compile`, with the file's
snaplen, as `tcpdump -r` does); a `Program` applies to every packet; a `Filter` contributes its program,
and its expression is recompiled for link types other than its own.

A truncated last record or a corrupt header raises `CaptureFileError` naming the byte offset, after
every complete record before it has been written (or yielded).

Differences from libpcap's reader: a record whose caplen exceeds the file's snaplen (but not the
sanity limit, 256 KiB or the snaplen if larger) is kept whole where libpcap cuts it to the snaplen; a
pcapng file may mix link types (libpcap refuses). As in libpcap, an SPB's timestamp is 0 and its
caplen min(wirelen, snaplen of interface 0). A filtered SHB says its section's length is unknown (-1).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import stat
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from . import walkers
from .errors import CaptureFileError
from .walkers import Status

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .batch import Batch
    from .filter import Filter
    from .program import InsnLike, Program

    FilterSpec = str | Program | Iterable[InsnLike] | Filter | None
    Source = str | os.PathLike[str] | IO[bytes]

__all__ = ["CaptureFileError", "FileStats", "PacketBatch", "filter_file", "read_batches", "read_file", "split_file"]

DEFAULT_CHUNK = 1 << 12  # records per walker call: the chunk (~1.5 MB of file) is still in cache when written
HOST_ORDER = "<" if sys.byteorder == "little" else ">"
U64_MAX = (1 << 64) - 1

# classic pcap: magic -> (timestamp digits, record header length)
PCAP_MAGICS = {0xA1B2C3D4: (6, 16), 0xA1B23C4D: (9, 16), 0xA1B2CD34: (6, 24)}
PCAP_HEADER_LEN = 24
# libpcap's sanity limit on caplen (MAXIMUM_SNAPLEN); files with a larger snaplen get that, up to
# 256 MiB: beyond it a caplen is a corrupt header, not a packet.
MAX_SNAPLEN = 262144
CAPLEN_CEILING = 1 << 28

BT_SHB, BT_IDB = 0x0A0D0D0A, 1
PACKET_BLOCKS = (walkers.BT_EPB, walkers.BT_SPB, walkers.BT_PB)
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_ENDOFOPT, OPT_IF_TSRESOL, OPT_IF_TSOFFSET = 0, 9, 14
SHB_MIN, IDB_MIN, BLOCK_MIN = 28, 20, 12


class FileStats(NamedTuple):
    """What `filter_file` did: packet records read, accepted (and written), bytes written."""

    read: int
    accepted: int
    written: int


class PacketBatch(NamedTuple):
    """One chunk from `read_batches`: packets of one link type, in file order."""

    batch: Batch
    timestamps: npt.NDArray[np.float64]  # seconds since the epoch (float64: ~0.2 µs resolution today)
    linktype: int  # LINKTYPE_* value from the file (1 = Ethernet)


class Interface(NamedTuple):
    """A pcapng interface (IDB), or the single implicit interface of a classic pcap file."""

    linktype: int  # LINKTYPE_* value
    snaplen: int
    ts_units: int = 10**6  # timestamp ticks per second (if_tsresol)
    ts_offset: int = 0  # seconds added to every timestamp (if_tsoffset)

    def timestamp_text(self, ticks: int) -> str:
        """`ticks` as exact decimal seconds: 6 digits for microseconds, 9 for nanoseconds, ..."""
        seconds, frac = divmod(ticks, self.ts_units)
        digits = len(str(self.ts_units)) - 1
        if self.ts_units != 10**digits:  # a binary resolution (2^-k): show nanoseconds
            frac, digits = frac * 10**9 // self.ts_units, 9
        return f"{seconds + self.ts_offset}.{frac:0{digits}d}"


# -- the mapped file ---------------------------------------------------------------------------------
class _PyBuffer(ctypes.Structure):
    """CPython's Py_buffer: the way to the address of a read-only buffer (a PROT_READ mapping)."""

    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]  # fmt: skip


def _get_buffer(obj: object) -> _PyBuffer:
    """Export `obj`'s buffer (held until `_release_buffer`): its address without needing numpy.

    A private writable mapping (ACCESS_COPY, which ctypes could take) is charged against the commit
    limit in full, so a capture larger than RAM could not be mapped; a PROT_READ mapping costs nothing.
    """
    view = _PyBuffer()
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    get.restype = ctypes.c_int
    if get(obj, ctypes.byref(view), 0) != 0:  # PyBUF_SIMPLE; raises the Python error on failure
        raise BufferError("cannot export the mapping's buffer")
    return view


def _release_buffer(view: _PyBuffer) -> None:
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(_PyBuffer)]
    release.restype = None
    release(ctypes.byref(view))


class _Arrays:
    """The arrays one walker call fills, and the `walkers.Chunk` that points the walker at them.

    ctypes arrays, so that the command line needs no numpy; numpy views them without copying.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.starts = (ctypes.c_uint64 * (capacity + 1))()
        self.offsets = (ctypes.c_uint64 * capacity)()
        self.caplens = (ctypes.c_uint32 * capacity)()
        self.wirelens = (ctypes.c_uint32 * capacity)()
        self.ifaces = (ctypes.c_uint32 * capacity)()
        self.verdicts = (ctypes.c_uint32 * capacity)()
        self.iov = (ctypes.c_uint64 * (2 * capacity))()
        self.group_bytes = (ctypes.c_uint64 * (capacity // walkers.IOV_GROUP + 1))()
        arrays = {name: ctypes.addressof(getattr(self, name)) for name in
                  ("starts", "offsets", "caplens", "wirelens", "ifaces", "verdicts", "iov", "group_bytes")}  # fmt: skip
        self.chunk = walkers.Chunk(**arrays, capacity=capacity, limit=U64_MAX)
        self.address = ctypes.addressof(self.chunk)


class _Section:
    """A pcapng section: its byte order and interfaces, with the tables the walker reads."""

    def __init__(self, order: str):
        self.order = order
        self.interfaces: list[Interface] = []
        # ctypes u32 arrays indexed by interface id, grown as IDBs come
        self.snaplens: Any = (ctypes.c_uint32 * 8)()
        self.classes: Any = (ctypes.c_uint32 * 8)()

    def add(self, interface: Interface, cls: int) -> None:
        self.interfaces.append(interface)
        n = len(self.interfaces)
        if len(self.snaplens) < n:
            snaplens, classes = (ctypes.c_uint32 * (2 * n))(), (ctypes.c_uint32 * (2 * n))()
            ctypes.memmove(snaplens, self.snaplens, ctypes.sizeof(self.snaplens))
            ctypes.memmove(classes, self.classes, ctypes.sizeof(self.classes))
            self.snaplens, self.classes = snaplens, classes
        self.snaplens[n - 1] = min(interface.snaplen, 0xFFFFFFFF)
        self.classes[n - 1] = cls


class _Records(NamedTuple):
    """Event: `n` packet records in `arrays` (valid until the next event); `filtered`: verdicts set."""

    arrays: _Arrays
    n: int
    section: _Section | None
    filtered: bool


class _Block(NamedTuple):
    """Event: bytes to copy to the output as they are (file header, non-packet blocks)."""

    start: int
    end: int
    replacement: bytes | None = None


class Capture:
    """An open, mapped capture file (pcap or pcapng) and what its headers say.

    `linktypes` lists the LINKTYPE_* values seen so far, in order: the index of a link type is its
    *class*, which selects the filter for the packets of every interface of that type.
    """

    def __init__(self, source: Source):
        self.path = _describe(source)
        if hasattr(source, "fileno") and not isinstance(source, (str, bytes, os.PathLike)):
            fd, own = source.fileno(), False
        else:
            fd, own = os.open(os.fspath(source), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)), True
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise CaptureFileError(0, "not a regular file (bpfjit maps capture files into memory)", self.path)
            self.identity = (status.st_dev, status.st_ino)
            self.size = status.st_size
            if self.size == 0:
                raise CaptureFileError(0, "empty file: no pcap or pcapng header", self.path)
            self.map = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ)
        finally:
            if own:
                os.close(fd)
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            self.map.madvise(mmap.MADV_SEQUENTIAL)  # read-ahead: the walk reads the file front to back
        self._buffer: _PyBuffer | None = _get_buffer(self.map)
        self.address = int(self._buffer.buf or 0)
        self.linktypes: list[int] = []
        self.interfaces: list[Interface] = []  # pcap: the one interface; pcapng: all seen, in order
        self.snaplen = MAX_SNAPLEN
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    # -- headers -----------------------------------------------------------------------------------
    def _error(self, offset: int, reason: str) -> CaptureFileError:
        return CaptureFileError(offset, reason, self.path)

    def _read_header(self) -> None:
        if self.size < 4:
            raise self._error(0, f"truncated file header: {self.size} bytes")
        (magic_le,) = struct.unpack_from("<I", self.map, 0)
        (magic_be,) = struct.unpack_from(">I", self.map, 0)
        if magic_le == BT_SHB:
            self.format = "pcapng"
            self.order = HOST_ORDER  # each section sets its own
            self.first_linktypes = self._scan_linktypes()
            return
        if magic_le in PCAP_MAGICS:
            magic, self.order = magic_le, "<"
        elif magic_be in PCAP_MAGICS:
            magic, self.order = magic_be, ">"
        else:
            raise self._error(0, f"not a pcap or pcapng file (magic 0x{magic_le:08x})")
        self.format = "pcap"
        order = self.order
        self.digits, self.record_header = PCAP_MAGICS[magic]
        if self.size < PCAP_HEADER_LEN:
            raise self._error(0, f"truncated pcap file header: {self.size} of {PCAP_HEADER_LEN} bytes")
        major, minor, _, _, snaplen, linktype = struct.unpack_from(order + "HHiIII", self.map, 4)
        if major != 2:
            raise self._error(4, f"unsupported pcap version {major}.{minor} (only 2.x exists)")
        self.snaplen = snaplen
        self.linktype = linktype & 0xFFFF  # the upper bits carry FCS information
        self.max_caplen = max(snaplen, MAX_SNAPLEN) if 0 < snaplen <= CAPLEN_CEILING else MAX_SNAPLEN
        self.linktypes = [self.linktype]
        self.interfaces = [Interface(self.linktype, snaplen, 10**self.digits)]
        self.first_linktypes = [self.linktype]

    def class_of(self, linktype: int) -> int:
        if linktype not in self.linktypes:
            self.linktypes.append(linktype)
        return self.linktypes.index(linktype)

    def _scan_linktypes(self, limit: int = 256) -> list[int]:
        """The link types of the IDBs before the first packet (compiled before walking, in one go)."""
        found: list[int] = []
        pos, order = 0, "<"
        for _ in range(limit):
            if self.size - pos < 12:
                break
            btype = struct.unpack_from(order + "I", self.map, pos)[0]
            if btype == BT_SHB:  # a palindrome: the same in either byte order
                magic = struct.unpack_from("<I", self.map, pos + 8)[0]
                order = "<" if magic == BYTE_ORDER_MAGIC else ">"
            elif btype in PACKET_BLOCKS:
                break
            elif btype == BT_IDB and self.size - pos >= IDB_MIN:
                linktype, _, snaplen = struct.unpack_from(order + "HHI", self.map, pos + 8)
                if not found:
                    self.snaplen = snaplen or MAX_SNAPLEN  # what tcpdump compiles with (pcap_snapshot)
                found.append(linktype)
            length = struct.unpack_from(order + "I", self.map, pos + 4)[0]
            if length < BLOCK_MIN or length % 4:
                break
            pos += length
        return list(dict.fromkeys(found))

    # -- walking -----------------------------------------------------------------------------------
    def events(self, filters: _Filters, arrays: Callable[[], _Arrays]) -> Iterator[_Records | _Block]:
        """The file as events in file order: packet records a chunk at a time, and bytes to copy.

        Raises `CaptureFileError` at a truncated or corrupt spot, after yielding everything before it.
        `arrays()` gives the arrays to fill for the next chunk (the same ones, or fresh ones).
        """
        if self.format == "pcap":
            return self._pcap_events(filters, arrays)
        return self._pcapng_events(filters, arrays)

    def _pcap_events(self, filters: _Filters, arrays: Callable[[], _Arrays]) -> Iterator[_Records | _Block]:
        walk, filtered = filters.walker()
        swapped = int(self.order != HOST_ORDER)
        yield _Block(0, PCAP_HEADER_LEN)
        pos = PCAP_HEADER_LEN
        while True:
            arr = arrays()
            n = walk(self.address, self.size, pos, swapped, self.record_header, self.max_caplen, arr.address)
            pos, status = arr.chunk.end, arr.chunk.status
            if n:
                yield _Records(arr, n, None, filtered)
            if status == Status.FULL:
                continue
            if status in (Status.END, Status.LIMIT):
                return
            raise self._pcap_error(pos, status)

    def _pcap_error(self, pos: int, status: int) -> CaptureFileError:
        left = self.size - pos
        if left < self.record_header:
            return self._error(pos, f"truncated record header: {left} of {self.record_header} bytes")
        (caplen,) = struct.unpack_from(self.order + "I", self.map, pos + 8)
        if status == Status.BAD_CAPLEN:
            return self._error(pos, f"corrupt record header: caplen {caplen} is larger than the limit "
                                    f"{self.max_caplen} (snaplen {self.snaplen})")  # fmt: skip
        return self._error(pos, f"truncated record: {caplen} captured bytes, only {left - self.record_header} left")

    def _pcapng_events(self, filters: _Filters, arrays: Callable[[], _Arrays]) -> Iterator[_Records | _Block]:
        walk, filtered = filters.walker()
        pos = 0
        section: _Section | None = None
        while True:
            left = self.size - pos
            if left == 0:
                return
            if left < 8:
                raise self._error(pos, f"truncated block header: {left} of 8 bytes")
            order = section.order if section is not None else "<"
            btype = struct.unpack_from(order + "I", self.map, pos)[0]
            if section is None or btype not in PACKET_BLOCKS:
                block, section = self._pcapng_block(pos, section)
                yield block
                pos = block.end
                continue
            arr = arrays()
            n = walk(self.address, self.size, pos, int(section.order != HOST_ORDER), ctypes.addressof(section.snaplens),
                     ctypes.addressof(section.classes), len(section.interfaces), arr.address)  # fmt: skip
            pos, status = arr.chunk.end, arr.chunk.status
            if n:
                yield _Records(arr, n, section, filtered)
            if status == Status.NEW_LINKTYPE:  # an IDB brought a link type: a walker with its filter too
                walk, filtered = filters.walker()
                continue
            if status in (Status.FULL, Status.OTHER_BLOCK):
                continue
            if status in (Status.END, Status.LIMIT):
                return
            raise self._pcapng_error(pos, status, section)

    def _pcapng_error(self, pos: int, status: int, section: _Section) -> CaptureFileError:
        if self.size - pos < 8:
            return self._error(pos, f"truncated block header: {self.size - pos} of 8 bytes")
        btype, length = struct.unpack_from(section.order + "II", self.map, pos)
        name = {walkers.BT_EPB: "enhanced packet block", walkers.BT_SPB: "simple packet block",
                walkers.BT_PB: "packet block"}.get(btype, f"block of type 0x{btype:x}")  # fmt: skip
        left = self.size - pos
        if status == Status.TRUNCATED:
            return self._error(pos, f"truncated {name}: block length {length}, only {left} bytes left")
        if status == Status.BAD_INTERFACE:
            ifaces = len(section.interfaces)
            iface_format = {walkers.BT_EPB: "I", walkers.BT_PB: "H"}.get(btype)
            iface = struct.unpack_from(section.order + iface_format, self.map, pos + 8)[0] if iface_format else 0
            return self._error(pos, f"{name} names interface {iface}, but the section has {ifaces}")
        trailer = None
        if 12 <= length <= left:
            trailer = struct.unpack_from(section.order + "I", self.map, pos + length - 4)[0]
        if length < 16 or length % 4:
            return self._error(pos, f"corrupt {name}: block length {length}")
        if trailer is not None and trailer != length:
            return self._error(pos, f"corrupt {name}: block length {length} at its start, {trailer} at its end")
        return self._error(pos, f"corrupt {name}: captured length larger than the block (length {length})")

    def _pcapng_block(self, pos: int, section: _Section | None) -> tuple[_Block, _Section]:
        """Check and interpret one non-packet block (the first block is an SHB: `_read_header` saw to it)."""
        left = self.size - pos
        order = section.order if section is not None else "<"
        btype = struct.unpack_from(order + "I", self.map, pos)[0]
        if btype == BT_SHB:
            if left < 12:
                raise self._error(pos, f"truncated section header block: {left} bytes left")
            magic = struct.unpack_from("<I", self.map, pos + 8)[0]
            if magic == BYTE_ORDER_MAGIC:
                order = "<"
            elif magic == int.from_bytes(BYTE_ORDER_MAGIC.to_bytes(4, "little"), "big"):
                order = ">"
            else:
                raise self._error(pos + 8, f"corrupt section header block: byte-order magic 0x{magic:08x}")
        length = struct.unpack_from(order + "I", self.map, pos + 4)[0]
        minimum = SHB_MIN if btype == BT_SHB else IDB_MIN if btype == BT_IDB else BLOCK_MIN
        kind = {BT_SHB: "section header block", BT_IDB: "interface description block"}.get(
            btype, f"block of type 0x{btype:x}"
        )
        if length < minimum or length % 4:
            raise self._error(pos, f"corrupt {kind}: block length {length}")
        if length > left:
            raise self._error(pos, f"truncated {kind}: block length {length}, only {left} bytes left")
        trailer = struct.unpack_from(order + "I", self.map, pos + length - 4)[0]
        if trailer != length:
            raise self._error(pos, f"corrupt {kind}: block length {length} at its start, {trailer} at its end")
        replacement = None
        if btype == BT_SHB:
            major, minor, section_length = struct.unpack_from(order + "HHq", self.map, pos + 12)
            if major != 1:
                raise self._error(pos + 12, f"unsupported pcapng version {major}.{minor}")
            section = _Section(order)
            if section_length != -1:  # the filtered section is shorter: say "unknown", as the spec allows
                data = bytearray(self.map[pos : pos + length])
                struct.pack_into(order + "q", data, 16, -1)
                replacement = bytes(data)
        elif btype == BT_IDB:
            assert section is not None
            linktype, _, snaplen = struct.unpack_from(order + "HHI", self.map, pos + 8)
            units, offset = self._idb_options(pos + 16, pos + length - 4, order)
            interface = Interface(linktype, snaplen, units, offset)
            section.add(interface, self.class_of(linktype))
            self.interfaces.append(interface)
        assert section is not None
        return _Block(pos, pos + length, replacement), section

    def _idb_options(self, pos: int, end: int, order: str) -> tuple[int, int]:
        """if_tsresol (ticks per second) and if_tsoffset (seconds) from an IDB's options."""
        units, offset = 10**6, 0
        while end - pos >= 4:
            code, length = struct.unpack_from(order + "HH", self.map, pos)
            if code == OPT_ENDOFOPT or pos + 4 + length > end:
                break
            if code == OPT_IF_TSRESOL and length >= 1:
                value = self.map[pos + 4]
                units = 2 ** (value & 0x7F) if value & 0x80 else 10**value
            elif code == OPT_IF_TSOFFSET and length >= 8:
                offset = struct.unpack_from(order + "q", self.map, pos + 4)[0]
            pos += 4 + (length + 3) // 4 * 4
        return units, offset

    # -- per-record details (for the readers; per accepted packet, so Python is fine) ----------------
    def timestamp_ticks(self, start: int, iface: int, section: _Section | None) -> tuple[int, Interface]:
        """The timestamp of the record at `start` in its interface's ticks, and that interface."""
        if section is None:
            seconds, frac = struct.unpack_from(self.order + "II", self.map, start)
            interface = self.interfaces[0]
            return seconds * interface.ts_units + frac, interface
        interface = section.interfaces[iface]
        btype = struct.unpack_from(section.order + "I", self.map, start)[0]
        if btype == walkers.BT_SPB:
            return 0, interface
        high, low = struct.unpack_from(section.order + "II", self.map, start + 12)
        return (high << 32) | low, interface

    def close(self) -> None:
        if self._buffer is not None:
            _release_buffer(self._buffer)
            self._buffer = None
        with contextlib.suppress(BufferError):  # Batches from read_batches still use the mapping:
            self.map.close()  # it goes when they do

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _describe(source: object) -> str:
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    return str(getattr(source, "name", source))


# -- filters per link type --------------------------------------------------------------------------
class _Filters:
    """The program each class (link type) of a capture runs through: None keeps every packet."""

    def __init__(self, spec: FilterSpec, capture: Capture, linktype: int | str | None = None, opt_level: int = 2):
        self.capture = capture
        self.override = linktype
        self.opt_level = opt_level
        self.expression: str | None = None
        self.program: Program | None = None
        self.filter: Filter | None = None
        self.programs: list[Program | None] = []  # by class
        self.kernels: tuple[str, ...] = ()  # compiled with the first walker
        if spec is None:
            return
        if isinstance(spec, str):
            self.expression = spec
        elif _is_filter(spec):
            self.filter = spec  # type: ignore[assignment]
            self.opt_level = spec.opt_level  # type: ignore[union-attr]
        else:
            from .program import Program
            from .validate import validate

            self.program = validate(spec if isinstance(spec, Program) else Program(spec))

    def program_for(self, linktype: int) -> Program | None:
        """The program the packets of `linktype` (a LINKTYPE_* value) go through (None: no filter)."""
        if self.program is not None:
            return self.program
        expression = self.expression
        if self.filter is not None:
            if self.filter.expression is None or self._dlt(linktype) == _dlt_of(self.filter.linktype):
                return self.filter.program
            expression = self.filter.expression
        if expression is None:
            return None
        from .program import Program
        from .validate import validate

        snaplen = self.capture.snaplen if 0 < self.capture.snaplen <= 0x7FFFFFFF else MAX_SNAPLEN
        # netmask 0, as tcpdump -r passes it (it only matters to `ip broadcast`)
        return validate(Program.from_expr(expression, self._dlt(linktype), snaplen=snaplen, netmask=0))

    def _dlt(self, linktype: int) -> int:
        if self.override is not None:
            return _dlt_of(self.override)
        return _dlt_from_linktype(linktype)

    def walker(self) -> tuple[Any, bool]:
        """The walker running each class's program (compiled with `kernels` the first time), and
        whether it sets verdicts."""
        capture = self.capture
        for linktype in capture.linktypes or capture.first_linktypes:
            capture.class_of(linktype)
        for linktype in capture.linktypes[len(self.programs) :]:
            self.programs.append(self.program_for(linktype))
        walk = walkers.walker(capture.format, self.programs, self.kernels, self.opt_level)
        return walk, any(program is not None for program in self.programs)


def _is_filter(spec: object) -> bool:
    module = sys.modules.get("bpfjit.filter")  # a Filter exists only once bpfjit.filter is imported
    return module is not None and isinstance(spec, module.Filter)


def _dlt_of(linktype: int | str | None) -> int:
    from .libpcap import linktype_value

    return linktype_value(linktype if linktype is not None else "EN10MB")


def _dlt_from_linktype(linktype: int) -> int:
    # LINKTYPE_ 0..10 (Ethernet is 1) equal their DLT_ values on every platform (libpcap's
    # linktype_to_dlt); skipping the lookup saves a temporary file and libpcap's reader at start-up.
    if 0 <= linktype <= 10:
        return linktype
    from .libpcap import dlt_from_linktype

    return dlt_from_linktype(linktype)


# -- writing --------------------------------------------------------------------------------------------
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in getattr(os, "sysconf_names", {}) else 16  # POSIX minimum
_writev: Any = None


def _libc_writev() -> Any:
    global _writev
    if _writev is None:
        writev = ctypes.CDLL(None, use_errno=True).writev
        writev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        writev.restype = ctypes.c_ssize_t
        _writev = writev
    return _writev


class _Writer:
    """The output: a file descriptor written with writev straight from the mapping, or a file object."""

    def __init__(self, dst: Source, source: Capture):
        self.fd = -1
        self.own = False
        self.file: IO[bytes] | None = None
        self.written = 0
        if isinstance(dst, (str, bytes, os.PathLike)):
            with contextlib.suppress(FileNotFoundError):
                self._refuse_source(os.stat(dst), source)  # before O_TRUNC empties it
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            self.fd, self.own = os.open(dst, flags, 0o666), True
            return
        try:
            fd = dst.fileno()
        except (AttributeError, OSError, ValueError):  # io.BytesIO and friends
            self.file = dst
            return
        self._refuse_source(os.fstat(fd), source)
        dst.flush()  # what the caller wrote before must come first
        self.fd = fd

    @staticmethod
    def _refuse_source(status: os.stat_result, source: Capture) -> None:
        if (status.st_dev, status.st_ino) == source.identity:  # writing it would pull the mapping from under us
            raise ValueError(f"the output is the input file {source.path}: write to another file")

    @staticmethod
    def without_descriptor(dst: Source) -> bool:
        """Whether `dst` is a file object without a file descriptor (written through `gather`)."""
        if isinstance(dst, (str, bytes, os.PathLike)):
            return False
        try:
            dst.fileno()
        except (AttributeError, OSError, ValueError):  # io.BytesIO and friends
            return True
        return False

    def block(self, data: bytes | bytearray | memoryview) -> None:
        if self.file is not None:
            self.file.write(data)
        else:
            _write_all(self.fd, memoryview(data))
        self.written += len(data)

    def records(self, arrays: _Arrays) -> None:
        """The chunk's accepted records, as the walker listed them in `arrays.iov`."""
        count, nbytes = arrays.chunk.iov_count, arrays.chunk.bytes
        if not count:
            return
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

    def _finish(self, iov: Any, first: int, n: int, done: int, error: int) -> None:
        if done < 0 and error != errno.EINTR:
            raise OSError(error, os.strerror(error))
        skip = max(done, 0)
        for index in range(first, first + n):
            base, length = iov[2 * index], iov[2 * index + 1]
            if skip >= length:
                skip -= length
                continue
            _write_all(self.fd, memoryview(ctypes.string_at(base + skip, length - skip)))
            skip = 0

    def close(self) -> None:
        if self.own and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        elif self.file is not None and hasattr(self.file, "flush"):
            self.file.flush()


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view) :]


# -- public API ------------------------------------------------------------------------------------------
def filter_file(
    src: Source,
    dst: Source | None,
    filter: FilterSpec = None,
    *,
    count: int | None = None,
    linktype: int | str | None = None,
    chunk: int = DEFAULT_CHUNK,
    progress: Callable[[int, int, int], None] | None = None,
) -> FileStats:
    """Copy the packets of capture file `src` that `filter` accepts to `dst`, as `tcpdump -r -w` does.

    `filter` is an expression (compiled for each link type in the file, or for `linktype` if given),
    a `Program` (applied to every packet), a `Filter` or None (keep everything). `dst` is a path, a
    binary file object, or None to only count. The output keeps the input's format, byte order,
    header (link type, snaplen, timestamp precision) and accepted records byte for byte. `count` stops
    after that many accepted packets (tcpdump's -c). `progress(bytes_done, read, accepted)` is called
    after each chunk. A truncated or corrupt file raises `CaptureFileError` once every complete record
    before the bad spot has been written.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be positive, not {chunk}")
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, not {count}")
    with Capture(src) as capture:
        filters = _Filters(filter, capture, linktype)
        filters.kernels = ("gather",) if dst is not None and _Writer.without_descriptor(dst) else ()
        filters.walker()  # compile before the output is opened: a bad expression must not clobber it
        writer = _Writer(dst, capture) if dst is not None else None
        try:
            return _filter_into(capture, filters, writer, count, chunk, progress)
        finally:
            if writer is not None:
                writer.close()


def split_file(
    src: Source,
    dsts: Sequence[Source],
    filters: Sequence[str | Program],
    *,
    linktype: int | str | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> list[FileStats]:
    """Copy each packet of `src` to every `dsts[i]` whose `filters[i]` accepts it, in ONE pass.

    The filters (expressions compiled for each link type in the file, or programs) run together
    as one native classifier (`bpfjit.compile_many`) over each chunk of records the walker lists;
    every output keeps the input's header and non-packet blocks, and its accepted records byte for
    byte, as `filter_file` would write it for that filter alone.
    """
    import numpy as np

    from .batch import Batch
    from .classifier import MultiFilter, compile_many
    from .program import Program

    accept_all = Program([(0x06, 0, 0, 0xFFFFFFFF)])  # for a filter given as None
    if len(dsts) != len(filters) or not filters:
        raise ValueError(f"split_file needs one output per filter ({len(filters)} filters, {len(dsts)} outputs)")
    with Capture(src) as capture:
        keep_all = _Filters(None, capture, linktype)
        keep_all.kernels = ("gather",)
        keep_all.walker()
        per_filter = [_Filters(spec, capture, linktype) for spec in filters]
        classifiers: dict[int, MultiFilter] = {}

        def classifier(cls: int) -> MultiFilter:
            if cls not in classifiers:
                lt = capture.linktypes[cls]
                programs = [f.program_for(lt) or accept_all for f in per_filter]
                classifiers[cls] = compile_many(programs)
            return classifiers[cls]

        classifier(0)  # compile before the outputs are opened: a bad expression must not clobber them
        writers = [_Writer(dst, capture) for dst in dsts]
        stats = [[0, 0] for _ in dsts]  # accepted, unused
        read = 0
        gather = walkers.helper("gather")
        data = np.frombuffer(capture.map, dtype=np.uint8)
        arrays = _Arrays(chunk)
        try:
            with memoryview(capture.map) as view:
                for event in capture.events(keep_all, lambda: arrays):
                    if isinstance(event, _Block):
                        for writer in writers:
                            writer.block(event.replacement or view[event.start : event.end])
                        continue
                    arr, n = event.arrays, event.n
                    read += n
                    starts = np.frombuffer(memoryview(arr.starts), dtype=np.uint64, count=n + 1)
                    offsets = np.frombuffer(memoryview(arr.offsets), dtype=np.uint64, count=n)
                    caplens = np.frombuffer(memoryview(arr.caplens), dtype=np.uint32, count=n)
                    wirelens = np.maximum(np.frombuffer(memoryview(arr.wirelens), dtype=np.uint32, count=n), caplens)
                    if event.section is None:
                        classes = np.zeros(n, dtype=np.uint32)
                    else:
                        ifaces = np.frombuffer(memoryview(arr.ifaces), dtype=np.uint32, count=n)
                        classes = np.frombuffer(memoryview(event.section.classes), dtype=np.uint32)[ifaces]
                    verdicts = np.zeros((n, len(filters)), dtype=bool)
                    for cls in np.unique(classes).tolist():
                        rows = classes == cls
                        batch = Batch(data, offsets[rows], caplens[rows], wirelens[rows])
                        verdicts[rows] = classifier(cls).run_batch(batch)
                    lengths = starts[1:] - starts[:-1]
                    for index, writer in enumerate(writers):
                        chosen = np.flatnonzero(verdicts[:, index])
                        if not len(chosen):
                            continue
                        iov = np.empty((len(chosen), 2), dtype=np.uint64)  # struct iovec {base, len}
                        iov[:, 0] = starts[chosen] + np.uint64(capture.address)
                        iov[:, 1] = lengths[chosen]
                        out = bytearray(int(iov[:, 1].sum()))
                        gather(iov.ctypes.data, len(chosen), ctypes.addressof(ctypes.c_char.from_buffer(out)))
                        writer.block(out)
                        stats[index][0] += len(chosen)
        finally:
            for writer in writers:
                writer.close()
        return [FileStats(read, accepted, writer.written) for (accepted, _), writer in zip(stats, writers, strict=True)]


def _filter_into(capture: Capture, filters: _Filters, writer: _Writer | None, count: int | None, chunk: int,
                 progress: Callable[[int, int, int], None] | None) -> FileStats:  # fmt: skip
    arrays = _Arrays(chunk)
    read = accepted = 0
    limit = U64_MAX if count is None else count
    arrays.chunk.limit = limit
    with memoryview(capture.map) as view:
        for event in capture.events(filters, lambda: arrays):
            if isinstance(event, _Block):
                if writer is not None:
                    writer.block(event.replacement or view[event.start : event.end])
                continue
            if limit == 0:  # -c 0: the file header only
                break
            if writer is not None:
                writer.records(arrays)
            read += event.n
            accepted += arrays.chunk.accepted
            if progress is not None:
                progress(arrays.chunk.end, read, accepted)
            if accepted >= limit:
                break
            arrays.chunk.limit = limit - accepted
    return FileStats(read, accepted, writer.written if writer is not None else 0)


def read_file(
    path: Source, filter: FilterSpec = None, *, linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK
) -> Iterator[tuple[float, bytes, int]]:
    """Yield `(timestamp, packet, wirelen)` for each packet of a capture file that `filter` accepts.

    `timestamp` is float seconds since the epoch, as dpkt and scapy give them: a float64 resolves about
    0.2 µs for today's dates, so nanosecond files lose their last digits. `packet` is a copy of the
    captured bytes. Filtering runs natively a chunk at a time; only accepted packets reach Python. A
    truncated or corrupt file raises `CaptureFileError` after the packets before the bad spot.
    """
    with Capture(path) as capture, memoryview(capture.map) as view:
        for start, iface, section, offset, caplen, wirelen in _accepted(capture, filter, linktype, chunk, _Counts()):
            ticks, interface = capture.timestamp_ticks(start, iface, section)
            yield ticks / interface.ts_units + interface.ts_offset, bytes(view[offset : offset + caplen]), wirelen


def packet_lines(
    path: Source,
    filter: FilterSpec = None,
    *,
    linktype: int | str | None = None,
    count: int | None = None,
    progress: Callable[[int, int, int], None] | None = None,
) -> Iterator[tuple[str, int]]:
    """`(timestamp, wirelen)` of each accepted packet, the timestamp as exact decimal text in the
    file's precision (`1700000000.000032`): what `bpfjit filter` prints without -w."""
    counts = _Counts(progress)
    with Capture(path) as capture:
        for start, iface, section, _, _, wirelen in _accepted(capture, filter, linktype, DEFAULT_CHUNK, counts):
            ticks, interface = capture.timestamp_ticks(start, iface, section)
            yield interface.timestamp_text(ticks), wirelen
            if count is not None and counts.accepted >= count:
                counts.report(start)
                return


def file_program(path: Source, filter: FilterSpec, *, linktype: int | str | None = None) -> Program | None:
    """The program `filter_file` runs on the packets of the file's first link type (None: no filter)."""
    with Capture(path) as capture:
        linktypes = capture.linktypes or capture.first_linktypes
        if not linktypes:
            raise CaptureFileError(0, "no interface describes a link type before the first packet", capture.path)
        return _Filters(filter, capture, linktype).program_for(linktypes[0])


class _Counts:
    """Packets read and accepted so far (`read` counts up to the packet being yielded)."""

    def __init__(self, progress: Callable[[int, int, int], None] | None = None):
        self.progress = progress
        self.read = self.accepted = 0

    def report(self, position: int) -> None:
        if self.progress is not None:
            self.progress(position, self.read, self.accepted)


def _accepted(
    capture: Capture, filter: FilterSpec, linktype: int | str | None, chunk: int, counts: _Counts
) -> Iterator[tuple[int, int, _Section | None, int, int, int]]:
    """(record start, interface, section, data offset, caplen, wirelen) of each accepted packet."""
    filters = _Filters(filter, capture, linktype)
    filters.kernels = ("accepted_indices",)
    arrays = _Arrays(chunk)
    indices = (ctypes.c_uint32 * chunk)()
    select = None
    for event in capture.events(filters, lambda: arrays):
        if isinstance(event, _Block):
            continue
        n, read = event.n, counts.read
        if not event.filtered:
            chosen: Iterable[int] = range(n)
        else:
            select = select or walkers.helper("accepted_indices")
            chosen = indices[: select(ctypes.addressof(arrays.verdicts), n, ctypes.addressof(indices))]
        starts, offsets = arrays.starts[: n + 1], arrays.offsets[:n]
        caplens, wirelens, ifaces = arrays.caplens[:n], arrays.wirelens[:n], arrays.ifaces[:n]
        pcap = event.section is None
        for i in chosen:
            counts.read, counts.accepted = read + i + 1, counts.accepted + 1
            yield starts[i], 0 if pcap else ifaces[i], event.section, offsets[i], caplens[i], wirelens[i]
        counts.read = read + n
        counts.report(starts[n])


def read_batches(
    path: Source, filter: FilterSpec = None, *, linktype: int | str | None = None, chunk: int = DEFAULT_CHUNK
) -> Iterator[PacketBatch]:
    """Yield the accepted packets of a capture file as `PacketBatch(batch, timestamps, linktype)`.

    Each `Batch` points into the mapped file (zero-copy) and holds packets of one link type, in file
    order (a chunk that mixes link types is split where the type changes). A packet whose recorded
    wirelen is below its caplen (a broken writer) gets wirelen = caplen.
    """
    import numpy as np

    from .batch import Batch

    with Capture(path) as capture:
        filters = _Filters(filter, capture, linktype)
        data = np.frombuffer(capture.map, dtype=np.uint8)
        arrays = _Arrays(chunk)  # reused: what a PacketBatch holds is copied out of it (fancy indexing)
        for event in capture.events(filters, lambda: arrays):
            if isinstance(event, _Block):
                continue
            arr, n = event.arrays, event.n
            starts = np.frombuffer(memoryview(arr.starts), dtype=np.uint64, count=n)
            offsets = np.frombuffer(memoryview(arr.offsets), dtype=np.uint64, count=n)
            caplens = np.frombuffer(memoryview(arr.caplens), dtype=np.uint32, count=n)
            wirelens = np.maximum(np.frombuffer(memoryview(arr.wirelens), dtype=np.uint32, count=n), caplens)
            if event.section is None:
                classes = np.zeros(n, dtype=np.uint32)
                units = np.full(n, capture.interfaces[0].ts_units, dtype=np.float64)
                shift = np.zeros(n, dtype=np.float64)
            else:
                ifaces = np.frombuffer(memoryview(arr.ifaces), dtype=np.uint32, count=n)
                section = event.section
                classes = np.frombuffer(memoryview(section.classes), dtype=np.uint32)[ifaces]
                units = np.array([i.ts_units for i in section.interfaces], dtype=np.float64)[ifaces]
                shift = np.array([i.ts_offset for i in section.interfaces], dtype=np.float64)[ifaces]
            timestamps = _timestamps(data, starts, event.section, capture) / units + shift
            keep = np.ones(n, dtype=bool)
            if event.filtered:
                keep = np.frombuffer(memoryview(arr.verdicts), dtype=np.uint32, count=n) != 0
            cuts = np.flatnonzero(np.diff(classes)) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, n], strict=True):
                chosen = np.flatnonzero(keep[lo:hi]) + lo
                if len(chosen):
                    batch = Batch(capture.map, offsets[chosen], caplens[chosen], wirelens[chosen])
                    yield PacketBatch(batch, timestamps[chosen], capture.linktypes[int(classes[lo])])


def _timestamps(data: Any, starts: Any, section: _Section | None, capture: Capture) -> Any:
    """Timestamp ticks of the records at `starts`, vectorised (float64)."""
    import numpy as np

    if section is None:
        fields = data[starts[:, None].astype(np.int64) + np.arange(8)].view(capture.order + "u4")
        return fields[:, 0].astype(np.float64) * capture.interfaces[0].ts_units + fields[:, 1]
    index = np.minimum(starts[:, None].astype(np.int64) + np.arange(20), len(data) - 1)  # an SPB may be 16 bytes
    raw = data[index]
    btype = raw[:, 0:4].copy().view(section.order + "u4")[:, 0]
    words = raw[:, 12:20].copy().view(section.order + "u4")
    ticks = words[:, 0].astype(np.float64) * 2.0**32 + words[:, 1]
    return np.where(btype == walkers.BT_SPB, 0.0, ticks)
