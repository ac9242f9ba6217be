"""Capture-file formats: reading classic pcap and pcapng headers, and walking their records.

`CaptureFile` maps a file read-only and reads what its headers say (format, byte order, link types,
snaplen, interfaces, timestamp resolution); `events` walks it front to back as `Records` (a chunk of
packet records, listed by a native walker, `walkers`) and `Block`s (bytes the output copies as they
are: the pcap file header, every pcapng block that is not a packet). Which program runs on the
records is the caller's (`capfilters`); what becomes of them is the caller's too (`capfile`).

Formats: classic pcap in either byte order with microsecond or nanosecond timestamps (and the
"modified" pcap with 24-byte record headers); pcapng with SHB, IDB, EPB, SPB and the obsolete PB,
any number of sections (each with its own byte order) and interfaces, of any link types.

A truncated last record or a corrupt header raises `CaptureFileError` naming the byte offset, after
every complete record before it has been yielded.

Records are read as libpcap 1.10's savefile reader reads them for tcpdump: snapshot lengths are
libpcap's (a header snaplen of 0 or above 2^31-1 is the link type's maximum, `snapshot`); a pcap
record longer than the snapshot is filtered and written cut to it (`Records.cut`, `cut_record`); a
caplen above the link type's maximum, or above its interface's snaplen in pcapng, is refused with
libpcap's message; an SPB's caplen is min(wirelen, the interface's snapshot) and its timestamp 0.
Each slot's `savefile_header` is what its filter is compiled on (`libpcap.compile_for_savefile`).

Where bpfjit reads more than libpcap 1.10: a pcapng file may mix link types, snaplens and byte
orders across interfaces and sections (libpcap stops at the first interface or section that differs
from the first; bpfjit filters each with its own description). Where it reads less: pcap versions
before 2.3 and 543.0 (libpcap swaps their caplen and len fields) are refused; libpcap's swapping of
pseudo-headers in byte-swapped files (the CAN ID after a LINUX_SLL/SLL2 header, PFLOG, NFLOG, Linux
USB) is not done. A filtered SHB says its section's length is unknown (-1).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import stat
import struct
import sys
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, NamedTuple, Protocol

from . import walkers
from .cpython import PyBuffer, get_buffer, release_buffer
from .errors import CaptureFileError
from .walkers import Status

__all__ = ["Block", "CaptureFile", "ChunkArrays", "Interface", "Records", "Section", "Stream", "StreamedCapture",
           "WalkerSource", "max_snaplen", "savefile_header", "snapshot"]

HOST_ORDER = "<" if sys.byteorder == "little" else ">"
U64_MAX = (1 << 64) - 1
# Linux 5.14's madvise(MADV_POPULATE_READ) (Python names it from 3.13); elsewhere the walks fault pages in
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform == "linux" else None
POPULATE_AHEAD = 64 << 20  # bytes of the mapping populated at a time ahead of a walk (16 MiB: half the gain)

# classic pcap: magic -> (timestamp digits, record header length)
PCAP_MAGICS = {0xA1B2C3D4: (6, 16), 0xA1B23C4D: (9, 16), 0xA1B2CD34: (6, 24)}
PCAP_HEADER_LEN = 24
# libpcap's MAXIMUM_SNAPLEN, and its larger maximums for three link types (max_snaplen_for_dlt;
# their LINKTYPE and DLT values are equal): DBUS, EBHSCR, USBPCAP.
MAX_SNAPLEN = 262144
_MAX_SNAPLENS = {231: 128 << 20, 279: 8 << 20, 249: 1 << 20}
INT_MAX = 0x7FFFFFFF
KUZNETZOV_MAGIC = 0xA1B2CD34

BT_SHB, BT_IDB = 0x0A0D0D0A, 1
PACKET_BLOCKS = (walkers.BT_EPB, walkers.BT_SPB, walkers.BT_PB)
BYTE_ORDER_MAGIC = 0x1A2B3C4D
OPT_ENDOFOPT, OPT_IF_TSRESOL, OPT_IF_TSOFFSET = 0, 9, 14
SHB_MIN, IDB_MIN, BLOCK_MIN = 28, 20, 12


def max_snaplen(linktype: int) -> int:
    """libpcap's largest caplen for a link type (`max_snaplen_for_dlt`): larger is a corrupt record."""
    return _MAX_SNAPLENS.get(linktype, MAX_SNAPLEN)


def snapshot(linktype: int, snaplen: int) -> int:
    """The snapshot length libpcap reads from a header's snaplen (`pcap_adjust_snapshot`): a snaplen
    of 0 or above 2^31-1 is the link type's maximum."""
    return max_snaplen(linktype) if snaplen == 0 or snaplen > INT_MAX else snaplen


def savefile_header(linktype: int, snaplen: int, order: str) -> bytes:
    """The classic pcap header that describes a pcapng interface to libpcap's compiler (the snaplen
    as the IDB states it, the section's byte order)."""
    return struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)


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


class ChunkArrays:
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
        self.chunk = walkers.Chunk(**arrays, capacity=capacity, limit=U64_MAX, stop_at=U64_MAX)
        self.address = ctypes.addressof(self.chunk)


class Section:
    """A pcapng section: its byte order and interfaces, with the tables the walker reads."""

    def __init__(self, order: str):
        self.order = order
        self.interfaces: list[Interface] = []
        # ctypes u32 arrays indexed by interface id, grown as IDBs come
        self.snaplens: Any = (ctypes.c_uint32 * 8)()
        self.slots: Any = (ctypes.c_uint32 * 8)()

    def add(self, interface: Interface, slot: int) -> None:
        self.interfaces.append(interface)
        n = len(self.interfaces)
        if len(self.snaplens) < n:
            snaplens, slots = (ctypes.c_uint32 * (2 * n))(), (ctypes.c_uint32 * (2 * n))()
            ctypes.memmove(snaplens, self.snaplens, ctypes.sizeof(self.snaplens))
            ctypes.memmove(slots, self.slots, ctypes.sizeof(self.slots))
            self.snaplens, self.slots = snaplens, slots
        self.snaplens[n - 1] = snapshot(interface.linktype, interface.snaplen)
        self.slots[n - 1] = slot

    def copy(self) -> Section:
        """A section with the same byte order and interfaces, and tables of its own (`add` to one
        leaves the other as it was: capparallel's threads walk in a copy while the file goes on)."""
        copied = Section(self.order)
        copied.interfaces = list(self.interfaces)
        copied.snaplens = (ctypes.c_uint32 * len(self.snaplens))(*self.snaplens)
        copied.slots = (ctypes.c_uint32 * len(self.slots))(*self.slots)
        return copied


class Records(NamedTuple):
    """Event: `n` packet records in `arrays` (valid until the next event); `filtered`: verdicts set.
    `cut`: the last record was longer than the snapshot, so its bytes are `CaptureFile.cut_record`'s,
    not the file's (and it is not in the iovecs)."""

    arrays: ChunkArrays
    n: int
    section: Section | None
    filtered: bool
    cut: bool = False


class Block(NamedTuple):
    """Event: bytes to copy to the output as they are (file header, non-packet blocks)."""

    start: int
    end: int
    replacement: bytes | None = None


class WalkerSource(Protocol):
    """What `CaptureFile.events` walks with (`capfilters.LinkTypeFilters`): asked again whenever a new
    link type appears, so that the walker runs a program for every link-type slot seen so far."""

    def walker(self) -> tuple[Any, bool]:
        """The native walker for this file's format and slots, and whether it sets verdicts."""
        ...


class CaptureFile:
    """An open, mapped capture file (pcap or pcapng) and what its headers say.

    `slots` lists the savefile headers (`savefile_header`: link type, snaplen, byte order) seen so
    far, in order, and `linktypes` their LINKTYPE_* values: the index of one is its *slot*, which
    selects the filter for the packets of every interface it describes (a pcap file has one).
    """

    streamed = False  # read through a window of memory from a stream (`StreamedCapture`), not mapped
    map: Any  # the mapping (mmap.mmap), or a StreamedCapture's window (bytearray)

    def __new__(cls, source: Source) -> CaptureFile:
        if cls is CaptureFile and isinstance(source, Stream):
            return super().__new__(StreamedCapture)
        return super().__new__(cls)

    def __init__(self, source: Source):
        assert not isinstance(source, Stream)
        self.path = _describe(source)
        self._named = isinstance(source, (str, bytes, os.PathLike))  # can be opened again by name
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
            # PROT_READ costs nothing; a private writable mapping (ACCESS_COPY, whose address ctypes
            # could take without `get_buffer`) is charged against the commit limit in full, so a
            # capture larger than RAM could not be mapped.
            self.map = mmap.mmap(fd, self.size, access=mmap.ACCESS_READ)
        finally:
            if own:
                os.close(fd)
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            self.map.madvise(mmap.MADV_SEQUENTIAL)  # read-ahead: the walk reads the file front to back
        self._buffer: PyBuffer | None = get_buffer(self.map)
        self.address = int(self._buffer.buf or 0)
        self._populated = 0  # the mapping's pages before this offset are mapped (`_populate`)
        self.linktypes: list[int] = []  # by slot
        self.slots: list[bytes] = []  # savefile headers, by slot
        self.interfaces: list[Interface] = []  # pcap: the one interface; pcapng: all seen, in order
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
            self.first_slots = self._scan_slots()
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
        # libpcap's words for the versions it refuses; 2.0-2.2 and 543.0 it reads with caplen and len
        # swapped, which bpfjit does not
        if major < 2:
            raise self._error(4, "archaic pcap savefile format")
        if not (major == 2 and 3 <= minor <= 4):
            unsupported = (major == 2 and minor < 3) or (major, minor) == (543, 0)
            why = " (caplen and len swapped: not supported by bpfjit)" if unsupported else ""
            raise self._error(4, f"unsupported pcap savefile version {major}.{minor}{why}")
        self.linktype = linktype & 0xFFFF  # the upper bits carry FCS information
        # as libpcap reads it: the snapshot, and the largest caplen that is not a corrupt header
        self.snaplen = snapshot(self.linktype, snaplen)
        if magic == KUZNETZOV_MAGIC and self.linktype == 1:  # libpcap: its Ethernet snaplen left out the header
            self.snaplen = min(self.snaplen + 14, INT_MAX)
        self.max_caplen = max_snaplen(self.linktype)
        self.linktypes = [self.linktype]
        self.slots = [bytes(self.map[:PCAP_HEADER_LEN])]  # compiled on the file's own header, as tcpdump does
        self.interfaces = [Interface(self.linktype, snaplen, 10**self.digits)]
        self.first_slots = [(self.linktype, self.slots[0])]

    def slot_of(self, linktype: int, header: bytes) -> int:
        """The slot of an interface described by `header` (`savefile_header`), added if new."""
        if header not in self.slots:
            self.slots.append(header)
            self.linktypes.append(linktype)
        return self.slots.index(header)

    def _scan_slots(self, limit: int = 256) -> list[tuple[int, bytes]]:
        """(link type, savefile header) of the IDBs before the first packet (compiled before walking,
        so that a refused expression fails before anything is written)."""
        found: list[tuple[int, bytes]] = []
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
                found.append((linktype, savefile_header(linktype, snaplen, order)))
            length = struct.unpack_from(order + "I", self.map, pos + 4)[0]
            if length < BLOCK_MIN or length % 4:
                break
            pos += length
        return list(dict.fromkeys(found))

    # -- walking -----------------------------------------------------------------------------------
    def events(self, filters: WalkerSource, arrays: Callable[[], ChunkArrays], start: int = 0,
               section: Section | None = None, stop: int = U64_MAX,
               context_stop: bool = False) -> Iterator[Records | Block]:  # fmt: skip
        """The file as events in file order: packet records a chunk at a time, and bytes to copy.

        Raises `CaptureFileError` at a truncated or corrupt spot, after yielding everything before it.
        `arrays()` gives the arrays to fill for the next chunk (the same ones, or fresh ones). From
        the record (pcap) or block (pcapng, in `section`) at `start` if not 0 (capparallel and
        capparts go on from where a range starts); up to the first record or block at or after
        `stop` (then the last arrays' `chunk.status` is `Status.STOP`, `chunk.end` where it stopped).
        pcapng with `context_stop`: also before a section or interface block (status
        `Status.OTHER_BLOCK`), for a caller that reads it itself (to know the context it leaves).
        """
        if self.format == "pcap":
            return self._pcap_events(filters, arrays, start, stop)
        return self._pcapng_events(filters, arrays, start, section, stop, context_stop)

    def _pcap_events(self, filters: WalkerSource, arrays: Callable[[], ChunkArrays], start: int = 0,
                     stop: int = U64_MAX) -> Iterator[Records | Block]:  # fmt: skip
        walk, filtered = filters.walker()
        if start == 0:
            yield Block(0, PCAP_HEADER_LEN)
        pos = start or PCAP_HEADER_LEN
        while True:
            arr, n = self._pcap_chunk(walk, arrays, pos, stop)
            pos, status = arr.chunk.end, arr.chunk.status
            if n:
                yield Records(arr, n, None, filtered, status == Status.CUT)
            if status in (Status.FULL, Status.CUT):
                continue
            if status in (Status.END, Status.LIMIT, Status.STOP):
                return
            raise self._pcap_error(pos, status)

    def _pcap_chunk(self, walk: Callable[..., int], arrays: Callable[[], ChunkArrays], pos: int,
                    stop: int = U64_MAX) -> tuple[ChunkArrays, int]:  # fmt: skip
        """One native walk of the records from `pos` (up to `stop`): the arrays it filled, records walked."""
        arr = arrays()
        arr.chunk.stop_at = stop
        self._populate(pos, stop)
        n = walk(self.address, self.size, pos, int(self.order != HOST_ORDER), self.record_header, self.max_caplen,
                 min(self.snaplen, self.max_caplen), arr.address)  # fmt: skip
        return arr, n

    def _pcapng_chunk(self, walk: Callable[..., int], arrays: Callable[[], ChunkArrays], pos: int, section: Section,
                      stop: int = U64_MAX) -> tuple[ChunkArrays, int]:  # fmt: skip
        """One native walk of packet blocks from `pos` in `section` (up to `stop`): the arrays, blocks walked."""
        arr = arrays()
        arr.chunk.stop_at = stop
        self._populate(pos, stop)
        n = walk(self.address, self.size, pos, int(section.order != HOST_ORDER), ctypes.addressof(section.snaplens),
                 ctypes.addressof(section.slots), len(section.interfaces), arr.address)  # fmt: skip
        return arr, n

    def _populate(self, pos: int, stop: int) -> None:
        """Map the pages of the next `POPULATE_AHEAD` bytes from `pos` (up to a range's `stop`) in one
        call, once the walk is half-way through the last ones: faulting them in as the walk touches them
        made filtering a file in the page cache 10% slower, counting 2-3%. Pages not read yet are read
        as a fault would read them, a window at a time (a file larger than memory stays fine)."""
        if MADV_POPULATE_READ is None or self.streamed or self._populated < 0 \
                or pos + POPULATE_AHEAD // 2 < self._populated:
            return
        lo = max(pos, self._populated) & ~(mmap.PAGESIZE - 1)
        hi = min(self.size, pos + POPULATE_AHEAD, stop)
        if hi <= lo:
            return
        try:
            self.map.madvise(MADV_POPULATE_READ, lo, hi - lo)
        except (OSError, ValueError):  # before Linux 5.14, or not Linux: the walk faults them in
            self._populated = -1
            return
        self._populated = hi

    def _pcap_error(self, pos: int, status: int) -> CaptureFileError:
        left = self.size - pos
        if left < self.record_header:
            return self._error(pos, f"truncated record header: {left} of {self.record_header} bytes")
        (caplen,) = struct.unpack_from(self.order + "I", self.map, pos + 8)
        if status == Status.BAD_CAPLEN:  # libpcap's words
            limit = f"snaplen of {self.snaplen}" if caplen > self.snaplen else f"maximum of {self.max_caplen}"
            return self._error(pos, f"invalid packet capture length {caplen}, bigger than {limit}")
        return self._error(pos, f"truncated record: {caplen} captured bytes, only {left - self.record_header} left")

    def cut_record(self, start: int) -> bytes:
        """The pcap record at `start` as libpcap hands it on when it is longer than the snapshot:
        its header with caplen = snapshot, then the first snapshot bytes (what tcpdump -w writes)."""
        header = bytearray(self.map[start : start + self.record_header])
        struct.pack_into(self.order + "I", header, 8, self.snaplen)
        data = start + self.record_header
        return bytes(header) + self.map[data : data + self.snaplen]

    def _pcapng_events(self, filters: WalkerSource, arrays: Callable[[], ChunkArrays], pos: int = 0,
                       section: Section | None = None, stop: int = U64_MAX,
                       context_stop: bool = False) -> Iterator[Records | Block]:  # fmt: skip
        walk, filtered = filters.walker()
        arr = None

        def stopped(status: Status) -> None:  # where and why, for a caller walking a range
            nonlocal arr
            arr = arr or arrays()
            arr.chunk.end, arr.chunk.status = pos, status

        while True:
            left = self.size - pos
            if left == 0 or pos >= stop:
                stopped(Status.END if left == 0 else Status.STOP)
                return
            if left < 8:
                raise self._error(pos, f"truncated block header: {left} of 8 bytes")
            order = section.order if section is not None else "<"
            btype = struct.unpack_from(order + "I", self.map, pos)[0]
            if section is None or btype not in PACKET_BLOCKS:
                if context_stop and btype in (BT_SHB, BT_IDB):
                    stopped(Status.OTHER_BLOCK)
                    return
                block, section = self._pcapng_block(pos, section)
                yield block
                pos = block.end
                continue
            arr, n = self._pcapng_chunk(walk, arrays, pos, section, stop)
            pos, status = arr.chunk.end, arr.chunk.status
            if n:
                yield Records(arr, n, section, filtered)
            if status == Status.NEW_LINKTYPE:  # an IDB brought a link type: a walker with its filter too
                walk, filtered = filters.walker()
                continue
            if status in (Status.FULL, Status.OTHER_BLOCK):
                continue
            if status in (Status.END, Status.LIMIT, Status.STOP):
                return
            raise self._pcapng_error(pos, status, section)

    def read_lead(self, start: int = 0) -> tuple[list[Block], Section | None, int]:
        """pcapng: the blocks from the section header at `start` (default: the file's) before the next
        packet block (checked and read, as `events` reads them), the section they leave (its interfaces:
        the context packets are read in) and where that packet block (or the end of the file) is."""
        if start and (self.size - start < 4 or struct.unpack_from("<I", self.map, start)[0] != BT_SHB):
            raise self._error(start, "no section header block here")
        pos, section, blocks = start, None, []
        while pos < self.size:
            if self.size - pos < 8:  # (as `events` says it)
                raise self._error(pos, f"truncated block header: {self.size - pos} of 8 bytes")
            btype = struct.unpack_from((section.order if section else "<") + "I", self.map, pos)[0]
            if section is not None and btype in PACKET_BLOCKS:
                break
            block, section = self._pcapng_block(pos, section)
            blocks.append(block)
            pos = block.end
        return blocks, section, pos

    def _pcapng_error(self, pos: int, status: int, section: Section) -> CaptureFileError:
        if self.size - pos < 8:
            return self._error(pos, f"truncated block header: {self.size - pos} of 8 bytes")
        btype, length = struct.unpack_from(section.order + "II", self.map, pos)
        name = {walkers.BT_EPB: "enhanced packet block", walkers.BT_SPB: "simple packet block",
                walkers.BT_PB: "packet block"}.get(btype, f"block of type 0x{btype:x}")  # fmt: skip
        left = self.size - pos
        if status == Status.TRUNCATED:
            return self._error(pos, f"truncated {name}: block length {length}, only {left} bytes left")
        if status == Status.BAD_CAPLEN:  # libpcap's words
            iface = struct.unpack_from(section.order + ("I" if btype == walkers.BT_EPB else "H"), self.map, pos + 8)[0]
            caplen = struct.unpack_from(section.order + "I", self.map, pos + 20)[0]
            return self._error(pos, f"invalid packet capture length {caplen}, bigger than snaplen of "
                                    f"{section.snaplens[iface]}")  # fmt: skip
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

    def _pcapng_block(self, pos: int, section: Section | None) -> tuple[Block, Section]:
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
            section = Section(order)
            if section_length != -1:  # the filtered section is shorter: say "unknown", as the spec allows
                data = bytearray(self.map[pos : pos + length])
                struct.pack_into(order + "q", data, 16, -1)
                replacement = bytes(data)
        elif btype == BT_IDB:
            assert section is not None
            linktype, _, snaplen = struct.unpack_from(order + "HHI", self.map, pos + 8)
            units, offset = self._idb_options(pos + 16, pos + length - 4, order)
            interface = Interface(linktype, snaplen, units, offset)
            section.add(interface, self.slot_of(linktype, savefile_header(linktype, snaplen, order)))
            self.interfaces.append(interface)
        assert section is not None
        return Block(pos, pos + length, replacement), section

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
    def timestamp_ticks(self, start: int, iface: int, section: Section | None) -> tuple[int, Interface]:
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

    def __reduce__(self) -> tuple[Any, ...]:
        # By name: another process maps the file again (it must see the same file at that path).
        if not self._named:
            raise TypeError(f"a CaptureFile opened from a file object ({self.path}) cannot be pickled: open it by path")
        return (CaptureFile, (self.path,))

    def close(self) -> None:
        if self._buffer is not None:
            release_buffer(self._buffer)
            self._buffer = None
        with contextlib.suppress(BufferError):  # Batches from read_batches still use the mapping:
            self.map.close()  # it goes when they do

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Stream(NamedTuple):
    """A capture file read front to back from a binary file object — a decompressor (`gzip.open`,
    fsspec's `open(..., compression=...)`), a pipe, an object-store stream — never mapped nor copied
    to a temporary file: `CaptureFile(Stream(f, "day.pcap.gz"))`, and so `filter_file(Stream(...), ...)`,
    `split_file`, `count_file`, `read_batches`, `read_file` (one thread: ranges need the whole file)."""

    file: IO[bytes]
    name: str


if TYPE_CHECKING:
    Output = str | os.PathLike[str] | IO[bytes]
    Source = Output | Stream

# A streamed capture's window: filled this much at a time (bench/dask_bench.py: a `.pcap.gz` filtered
# through 4 MiB windows runs at zlib's speed; a smaller window costs more walker calls and refills).
STREAM_WINDOW = 4 << 20


class StreamedCapture(CaptureFile):
    """A capture file read from a `Stream` through a window of memory: the walkers walk the window as
    they walk a mapped file (they take any address and size), and where a record or block runs past
    the window's end (the walker's `Status.TRUNCATED`, or a block header not all there) the rest of the
    window is moved to its start and filled from the stream, chunk by chunk, so the partial record is
    carried over; the window grows only for a record longer than itself. Offsets in `events` are the
    window's (`base` is the stream offset of its first byte; errors name stream offsets). Blocks come
    with their bytes (`Block.replacement`): the window moves on. Readers must take `map` and `address`
    afresh after each event, as the capfile operations do."""

    streamed = True

    def __init__(self, source: Source):
        assert isinstance(source, Stream)
        self.path, self._named, self.stream = source.name, False, source.file
        self.identity = (-1, -1)  # no file to refuse writing over
        self.base, self.eof = 0, False
        self._buffer = None
        self._window(STREAM_WINDOW)
        self.size = 0
        self._fill(STREAM_WINDOW)
        if self.size == 0:
            raise CaptureFileError(0, "empty file: no pcap or pcapng header", self.path)
        self.linktypes, self.slots, self.interfaces = [], [], []
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def _window(self, capacity: int) -> None:
        """A window of `capacity` bytes holding what the current one holds (the old one is left to its
        last reader: a numpy view or Batch may still point into it)."""
        old, old_size = getattr(self, "map", None), getattr(self, "size", 0)
        self.map = bytearray(capacity)
        if old is not None:
            self.map[:old_size] = old[:old_size]
        if self._buffer is not None:
            release_buffer(self._buffer)
        self._buffer = get_buffer(self.map)
        self.address = int(self._buffer.buf or 0)

    def _fill(self, target: int) -> None:
        """Read from the stream until the window holds `target` bytes or the stream ends."""
        view = memoryview(self.map)
        try:
            while self.size < target and not self.eof:
                got = self.stream.readinto(view[self.size : target])  # type: ignore[attr-defined]
                if not got:
                    self.eof = True
                self.size += got or 0
        finally:
            view.release()

    def _more(self, pos: int, need: int) -> int:
        """Make the `need` bytes from window offset `pos` present if the stream has them: move them to
        the window's start, grow it if they do not fit, fill it; the new offset of `pos` (0)."""
        keep = self.size - pos
        if pos:
            ctypes.memmove(self.address, self.address + pos, keep)
            self.base += pos
            self.size = keep
        if need > len(self.map):
            self._window(max(need, 2 * len(self.map)))
        self._fill(len(self.map))
        return 0

    def _error(self, offset: int, reason: str) -> CaptureFileError:
        return CaptureFileError(self.base + offset, reason, self.path)

    def events(self, filters: WalkerSource, arrays: Callable[[], ChunkArrays], start: int = 0,
               section: Section | None = None, stop: int = U64_MAX,
               context_stop: bool = False) -> Iterator[Records | Block]:  # fmt: skip
        if start or stop != U64_MAX or context_stop:
            raise ValueError(f"{self.path}: a stream is read from its start to its end (no ranges)")
        if self.format == "pcap":
            return self._streamed_pcap(filters, arrays)
        return self._streamed_pcapng(filters, arrays)

    def _streamed_pcap(self, filters: WalkerSource, arrays: Callable[[], ChunkArrays]) -> Iterator[Records | Block]:
        walk, filtered = filters.walker()
        yield Block(0, PCAP_HEADER_LEN, bytes(self.map[:PCAP_HEADER_LEN]))
        pos = PCAP_HEADER_LEN
        while True:
            arr, n = self._pcap_chunk(walk, arrays, pos)
            pos, status = arr.chunk.end, arr.chunk.status
            if n:
                yield Records(arr, n, None, filtered, status == Status.CUT)
            if status in (Status.FULL, Status.CUT):
                continue
            if status in (Status.END, Status.TRUNCATED) and not self.eof:  # the window's end, not the file's
                pos = self._more(pos, self.size - pos + 1)
                continue
            if status in (Status.END, Status.LIMIT):
                return
            raise self._pcap_error(pos, status)

    def _streamed_pcapng(self, filters: WalkerSource, arrays: Callable[[], ChunkArrays]) -> Iterator[Records | Block]:
        walk, filtered = filters.walker()
        pos, section = 0, None
        while True:
            if self.size - pos < 12 and not self.eof:
                pos = self._more(pos, 12)
            left = self.size - pos
            if left == 0:
                return
            if left < 8:
                raise self._error(pos, f"truncated block header: {left} of 8 bytes")
            order = section.order if section is not None else "<"
            btype = struct.unpack_from(order + "I", self.map, pos)[0]
            if section is None or btype not in PACKET_BLOCKS:
                if btype == BT_SHB and left >= 12:  # its own byte order
                    order = "<" if struct.unpack_from("<I", self.map, pos + 8)[0] == BYTE_ORDER_MAGIC else ">"
                length = struct.unpack_from(order + "I", self.map, pos + 4)[0]
                if length > left and not self.eof and length % 4 == 0:
                    pos = self._more(pos, length)
                block, section = self._pcapng_block(pos, section)
                yield block._replace(replacement=block.replacement or bytes(self.map[block.start : block.end]))
                pos = block.end
                continue
            arr, n = self._pcapng_chunk(walk, arrays, pos, section)
            pos, status = arr.chunk.end, arr.chunk.status
            if n:
                yield Records(arr, n, section, filtered)
            if status == Status.NEW_LINKTYPE:
                walk, filtered = filters.walker()
                continue
            if status in (Status.FULL, Status.OTHER_BLOCK):
                continue
            if status in (Status.END, Status.TRUNCATED) and not self.eof:
                left = self.size - pos
                length = struct.unpack_from(section.order + "I", self.map, pos + 4)[0] if left >= 8 else 0
                pos = self._more(pos, max(length, left + 1))
                continue
            if status in (Status.END, Status.LIMIT):
                return
            raise self._pcapng_error(pos, status, section)

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(f"a streamed capture ({self.path}) cannot be pickled: pickle what opens its stream")

    def close(self) -> None:
        if self._buffer is not None:
            release_buffer(self._buffer)
            self._buffer = None


def _describe(source: object) -> str:
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(source)
    return str(getattr(source, "name", source))

