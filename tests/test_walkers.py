"""The native record walkers and their helper kernels, called directly on hand-built buffers.

A walker must return exactly the whole records that lie inside the file, say why it stopped, run the
filter on each record as the interpreter would, and list the accepted ones as merged iovecs.
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfjit import Insn, Program, capfile, interpret, strategies, walkers
from bpfjit.capformat import HOST_ORDER, U64_MAX, ChunkArrays
from bpfjit.walkers import Status

UDP_OR_KEEP_ALL = Program.from_expr("udp")


def pcap_records(frames: list[tuple[bytes, int]], order: str = "<", header_len: int = 16) -> bytes:
    out = b""
    for i, (data, wirelen) in enumerate(frames):
        out += struct.pack(order + "IIII", 1_700_000_000, i, len(data), wirelen) + bytes(header_len - 16) + data
    return out


def walk_pcap(data: bytes, capacity: int = 64, programs: tuple[Program | None, ...] = (), order: str = "<",
              max_caplen: int = 262144, limit: int = U64_MAX, pos: int = 0,
              snaplen: int | None = None, stop_at: int = U64_MAX) -> tuple[int, ChunkArrays]:  # fmt: skip
    """Run the pcap walker over `data` (records only, no file header) from `pos`; records longer
    than `snaplen` (default: `max_caplen`) are cut; the walk stops before a record at `stop_at`."""
    buffer = ctypes.create_string_buffer(data, len(data))
    arrays = ChunkArrays(capacity)
    arrays.chunk.limit = limit
    arrays.chunk.stop_at = stop_at
    swapped = int(order != HOST_ORDER)
    n = walkers.walker("pcap", programs)(ctypes.addressof(buffer), len(data), pos, swapped, 16, max_caplen,
                                         max_caplen if snaplen is None else snaplen, arrays.address)  # fmt: skip
    return n, arrays


FRAMES = [(b"\x01" * 10, 10), (b"", 0), (b"\x02" * 3, 1500), (b"\x03" * 60, 60)]


def test_walk_pcap_records_and_end() -> None:
    for order in "<>":
        data = pcap_records(FRAMES, order)
        n, arr = walk_pcap(data, order=order)
        assert n == 4 and arr.chunk.status == Status.END and arr.chunk.end == len(data)
        starts = [0, 26, 42, 61]
        assert arr.starts[:5] == [*starts, len(data)]
        assert arr.offsets[:4] == [s + 16 for s in starts]
        assert arr.caplens[:4] == [10, 0, 3, 60] and arr.wirelens[:4] == [10, 0, 1500, 60]
        assert arr.verdicts[:4] == [1, 1, 1, 1]  # no filter: everything is kept
        assert arr.chunk.iov_count == 1 and arr.iov[1] == len(data) and arr.chunk.bytes == len(data)


def test_walk_pcap_stops() -> None:
    data = pcap_records(FRAMES)
    n, arr = walk_pcap(data, capacity=2)
    assert (n, arr.chunk.status, arr.chunk.end, arr.starts[2]) == (2, Status.FULL, 42, 42)
    n, arr = walk_pcap(data, pos=42)  # resumes where it stopped
    assert (n, arr.chunk.status, arr.starts[:3]) == (2, Status.END, [42, 61, len(data)])
    for cut, n_whole in ((len(data) - 1, 3), (61 + 15, 3), (61 + 16, 3), (26 + 3, 1)):
        n, arr = walk_pcap(data[:cut])
        assert (n, arr.chunk.status, arr.chunk.end) == (n_whole, Status.TRUNCATED, [0, 26, 42, 61][n_whole])
    n, arr = walk_pcap(data, max_caplen=59)
    assert (n, arr.chunk.status, arr.chunk.end) == (3, Status.BAD_CAPLEN, 61)
    n, arr = walk_pcap(b"")
    assert (n, arr.chunk.status) == (0, Status.END)


def test_walk_pcap_cuts_records_longer_than_the_snapshot() -> None:
    """A record longer than the snapshot is filtered on its first snaplen bytes, as libpcap hands it
    on, counted, left out of the iovecs, and ends the walk (Status.CUT) for Python to write."""
    data = pcap_records(FRAMES)
    n, arr = walk_pcap(data, snaplen=8)
    assert (n, arr.chunk.status, arr.chunk.end) == (1, Status.CUT, 26)
    assert (arr.caplens[0], arr.wirelens[0], arr.offsets[0], arr.chunk.accepted) == (8, 10, 16, 1)
    assert arr.chunk.iov_count == 0 and arr.chunk.bytes == 0
    n, arr = walk_pcap(data, snaplen=8, pos=26)  # resumes after it; the two short ones merge, the last is cut
    assert (n, arr.chunk.status, arr.caplens[:3], arr.chunk.iov_count, arr.iov[1]) == (3, Status.CUT, [0, 3, 8], 1, 35)
    n, arr = walk_pcap(data, snaplen=8, pos=61, max_caplen=59)  # above the link type's maximum: corrupt
    assert (n, arr.chunk.status, arr.chunk.end) == (0, Status.BAD_CAPLEN, 61)
    # the filter sees the cut length: a program that needs byte 9 drops what it would keep whole
    needs_ten = Program([Insn(0x30, 0, 0, 9), Insn(0x06, 0, 0, 1)])  # ldb [9]; ret #1
    assert walk_pcap(data, programs=(needs_ten,))[1].verdicts[0] == 1
    n, arr = walk_pcap(data, programs=(needs_ten,), snaplen=9)
    assert (n, arr.chunk.status, arr.verdicts[0], arr.chunk.accepted) == (1, Status.CUT, 0, 0)


def test_walk_pcap_stop_at() -> None:
    """A walk stops before the first record starting at or after `stop_at` and reports where that is:
    the offset the next byte range must start from (capparallel's boundary protocol)."""
    data = pcap_records(FRAMES)  # records at 0, 26, 42, 61
    for stop_at, walked, end in ((1, 1, 26), (26, 1, 26), (27, 2, 42), (61, 3, 61), (62, 4, len(data)), (0, 0, 0)):
        n, arr = walk_pcap(data, stop_at=stop_at)
        status = Status.END if end == len(data) else Status.STOP
        assert (n, arr.chunk.status, arr.chunk.end, arr.starts[n]) == (walked, status, end, end)
    n, arr = walk_pcap(data, pos=42, stop_at=42)  # already past it: no record, stopped where it is
    assert (n, arr.chunk.status, arr.chunk.end) == (0, Status.STOP, 42)
    n, arr = walk_pcap(data[:61 + 20], stop_at=61)  # a bad record past the range is not this range's error
    assert (n, arr.chunk.status, arr.chunk.end) == (3, Status.STOP, 61)


def test_walk_filters_and_merges_iovecs() -> None:
    udp = b"\x00" * 12 + b"\x08\x00" + bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17]) + bytes(18)
    tcp = udp[:23] + b"\x06" + udp[24:]
    frames = [(udp, 42), (udp, 42), (tcp, 42), (udp, 42), (tcp, 42), (tcp, 42), (udp, 42)]
    data = pcap_records(frames)
    n, arr = walk_pcap(data, programs=(UDP_OR_KEEP_ALL,))
    assert n == 7 and arr.verdicts[:7] == [262144 if f[0] is udp else 0 for f in frames]
    record = 16 + 42
    address = arr.iov[0]  # the first iovec starts at the first record
    assert [(arr.iov[2 * i] - address, arr.iov[2 * i + 1]) for i in range(arr.chunk.iov_count)] == [
        (0, 2 * record), (3 * record, record), (6 * record, record)]  # fmt: skip
    assert arr.chunk.accepted == 4 and arr.chunk.bytes == 4 * record
    assert arr.group_bytes[0] == 4 * record
    n, arr = walk_pcap(data, programs=(UDP_OR_KEEP_ALL,), limit=3)  # stop after the third accepted
    assert (n, arr.chunk.status, arr.chunk.accepted, arr.chunk.end) == (4, Status.LIMIT, 3, 4 * record)


def _pcapng(order: str, blocks: list[bytes]) -> bytes:
    shb = struct.pack(order + "IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack(order + "I", 28)
    return shb + b"".join(blocks)


def _epb(order: str, iface: int, data: bytes, wirelen: int) -> bytes:
    padded = data + bytes(-len(data) % 4)
    length = 32 + len(padded)
    return struct.pack(order + "IIIIIII", 6, length, iface, 0, 0, len(data), wirelen) + padded + struct.pack(
        order + "I", length)  # fmt: skip


@pytest.mark.parametrize("order", ["<", ">"])
def test_walk_pcapng_blocks_and_classes(order: str) -> None:
    idb = struct.pack(order + "IIHHII", 1, 20, 1, 0, 0, 20)
    blocks = [_epb(order, 0, b"\x01" * 5, 5), _epb(order, 1, b"\x02" * 8, 9), idb, _epb(order, 0, b"", 0)]
    data = _pcapng(order, blocks)
    buffer = ctypes.create_string_buffer(data, len(data))
    snaplens, slots = (ctypes.c_uint32 * 2)(262144, 262144), (ctypes.c_uint32 * 2)(0, 1)  # adjusted snaplens
    arrays = ChunkArrays(16)
    swapped = int(order != HOST_ORDER)

    def walk(programs: tuple[Program | None, ...], pos: int) -> int:
        fn = walkers.walker("pcapng", programs)
        return int(fn(ctypes.addressof(buffer), len(data), pos, swapped, ctypes.addressof(snaplens),
                      ctypes.addressof(slots), 2, arrays.address))  # fmt: skip

    n = walk((), 28)
    assert (n, arrays.chunk.status, arrays.chunk.end) == (2, Status.OTHER_BLOCK, 28 + 40 + 40)
    assert arrays.ifaces[:2] == [0, 1] and arrays.caplens[:2] == [5, 8] and arrays.wirelens[:2] == [5, 9]
    assert arrays.offsets[:2] == [28 + 28, 28 + 40 + 28]
    n = walk((UDP_OR_KEEP_ALL,), 28)  # a filter for class 0 only: class 1 needs a new walker
    assert (n, arrays.chunk.status, arrays.chunk.end) == (1, Status.NEW_LINKTYPE, 28 + 40)
    n = walk((UDP_OR_KEEP_ALL, None), 28)
    assert (n, arrays.chunk.status, arrays.verdicts[:2]) == (2, Status.OTHER_BLOCK, [0, 1])
    snaplens[1] = 7  # libpcap refuses a caplen above its interface's snaplen: a corrupt block
    n = walk((), 28)
    assert (n, arrays.chunk.status, arrays.chunk.end) == (1, Status.BAD_CAPLEN, 28 + 40)


@settings(max_examples=min(settings().max_examples, 100))  # a compile per example
@given(
    program=strategies.programs(max_insns=16),
    frames=st.lists(strategies.packets_with_wirelen(max_size=80), max_size=40),
    chunk=st.integers(1, 9),
)
def test_filter_file_agrees_with_the_interpreter(program: Program, frames: list[tuple[bytes, int]], chunk: int) -> None:
    """Any valid program, any packets (empty, short, truncated), any chunk size: the file's accepted
    records are those the reference interpreter accepts, byte for byte, in order."""
    import tempfile

    records = [struct.pack("<IIII", 1_700_000_000, i, len(d), w) + d for i, (d, w) in enumerate(frames)]
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "in.pcap", Path(tmp) / "out.pcap"
        src.write_bytes(header + b"".join(records))
        stats = capfile.filter_file(src, out, program, chunk=chunk)
        keep = [interpret(program, d, w) != 0 for d, w in frames]
        assert out.read_bytes() == header + b"".join(r for r, k in zip(records, keep, strict=True) if k)
        assert stats.read == len(frames) and stats.accepted == sum(keep)


def test_gather_and_accepted_indices() -> None:
    data = b"0123456789abcdef"
    buffer = ctypes.create_string_buffer(data, len(data))
    base = ctypes.addressof(buffer)
    iov = (ctypes.c_uint64 * 6)(base + 2, 3, base + 10, 0, base + 12, 4)
    out = ctypes.create_string_buffer(16)
    assert walkers.helper("gather")(ctypes.addressof(iov), 3, ctypes.addressof(out)) == 7
    assert out.raw[:7] == b"234cdef"
    verdicts = (ctypes.c_uint32 * 6)(0, 5, 0, 0, 1, 0xFFFFFFFF)
    indices = (ctypes.c_uint32 * 6)()
    assert walkers.helper("accepted_indices")(ctypes.addressof(verdicts), 6, ctypes.addressof(indices)) == 3
    assert indices[:3] == [1, 4, 5]
