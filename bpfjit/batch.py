"""`Batch`: many packets in one contiguous buffer, described by offset, caplen and wirelen arrays.

This is the shape the native batch entry walks in one call (no Python per packet), the shape the
file readers produce over an mmap'd capture (zero-copy), and what `Filter.run_batch` takes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .buffers import check_lengths, packet_view
from .opcodes import U32_MASK

U8Array = npt.NDArray[np.uint8]
U32Array = npt.NDArray[np.uint32]
U64Array = npt.NDArray[np.uint64]


def buffer_address(view: memoryview) -> tuple[int, object]:
    """Address of a C-contiguous buffer's first byte without copying it, and the object that keeps
    it valid while the address is used (hold it until the native call returns)."""
    if not view.readonly:
        holder = (ctypes.c_char * len(view)).from_buffer(view)
        return ctypes.addressof(holder), holder
    array = np.frombuffer(view, dtype=np.uint8)  # read-only: ctypes' from_buffer refuses it, numpy reads it
    return array.ctypes.data, array


def _as_array(values: Any, dtype: type[np.unsignedinteger[Any]], name: str) -> npt.NDArray[Any]:
    array = np.ascontiguousarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional")
    if array.dtype != dtype:
        if not np.issubdtype(array.dtype, np.integer) and array.size:
            raise ValueError(f"{name} must hold integers")
        if array.size and (array.min() < 0 or array.max() > np.iinfo(dtype).max):
            raise ValueError(f"{name} must hold integers that fit in {np.dtype(dtype).name}")
        array = array.astype(dtype)
    return array


class Batch:
    """Packets `data[offsets[i] : offsets[i] + caplens[i]]` with wire lengths `wirelens[i]`.

    Every packet is checked to lie inside `data` when the batch is built, so native code that
    walks it never reads outside the buffer.
    """

    __slots__ = ("_owner", "caplens", "data", "offsets", "wirelens")

    def __init__(self, data: Any, offsets: Any, caplens: Any, wirelens: Any = None):
        view = packet_view(data)
        self._owner = data  # keeps an mmap or other exporter alive while the batch is used
        self.data: U8Array = np.frombuffer(view, dtype=np.uint8)
        self.offsets: U64Array = _as_array(offsets, np.uint64, "offsets")
        self.caplens: U32Array = _as_array(caplens, np.uint32, "caplens")
        if len(self.offsets) != len(self.caplens):
            raise ValueError(f"{len(self.offsets)} offsets but {len(self.caplens)} caplens")
        size = np.uint64(len(self.data))
        # offset + caplen <= size, written so that nothing overflows 64 bits
        outside = (self.offsets > size) | (self.caplens.astype(np.uint64) > size - np.minimum(self.offsets, size))
        if outside.any():
            bad = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"packet {bad} (offset {int(self.offsets[bad])}, caplen {int(self.caplens[bad])}) "
                f"lies outside the {int(size)}-byte buffer"
            )
        if wirelens is None:
            self.wirelens: U32Array = self.caplens
        else:
            self.wirelens = _as_array(wirelens, np.uint32, "wirelens")
            if len(self.wirelens) != len(self.caplens):
                raise ValueError(f"{len(self.wirelens)} wirelens but {len(self.caplens)} caplens")
            if len(self.wirelens) and (self.wirelens < self.caplens).any():
                bad = int(np.flatnonzero(self.wirelens < self.caplens)[0])
                raise ValueError(f"packet {bad}: wirelen {int(self.wirelens[bad])} < caplen {int(self.caplens[bad])}")

    @classmethod
    def from_packets(cls, packets: Sequence[Any], wirelens: Sequence[int] | None = None) -> Batch:
        """Copy bytes-like packets into one buffer (one copy, so the native walk is contiguous)."""
        views = [packet_view(p) for p in packets]
        caplens = np.fromiter((len(v) for v in views), dtype=np.int64, count=len(views))
        if len(caplens) and caplens.max() > U32_MASK:
            raise ValueError("a packet is longer than 2^32-1 bytes")
        if wirelens is not None:
            if len(wirelens) != len(views):
                raise ValueError(f"{len(wirelens)} wirelens for {len(views)} packets")
            wires = [check_lengths(len(v), w) for v, w in zip(views, wirelens, strict=True)]
        offsets = np.zeros(len(views), dtype=np.uint64)
        if len(views) > 1:
            np.cumsum(caplens[:-1], out=offsets[1:])
        data = b"".join(views)
        return cls(data, offsets, caplens, None if wirelens is None else wires)

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> memoryview:
        start = int(self.offsets[index])
        return self._view()[start : start + int(self.caplens[index])]

    def __iter__(self) -> Iterator[memoryview]:
        data = self._view()
        for start, length in zip(self.offsets.tolist(), self.caplens.tolist(), strict=True):
            yield data[start : start + length]

    def _view(self) -> memoryview:
        return memoryview(self.data.data)  # ndarray.data is the buffer itself

    def select(self, mask: npt.NDArray[np.bool_]) -> Batch:
        """The packets where `mask` is true, sharing this batch's buffer."""
        return Batch(self._owner, self.offsets[mask], self.caplens[mask], self.wirelens[mask])

    def __reduce__(self) -> tuple[Any, ...]:
        # By value, compacted: the packets' bytes end to end and new offsets. A batch over a mapped
        # capture (read_batches) holds an mmap, which does not pickle, and may point at a few packets of
        # a large file: shipping the packets is what a worker on another machine can use.
        caplens = self.caplens.astype(np.uint64)
        offsets = np.zeros(len(self), dtype=np.uint64)
        if len(self) > 1:
            np.cumsum(caplens[:-1], out=offsets[1:])
        data = b"".join(self)
        wirelens = None if self.wirelens is self.caplens else self.wirelens
        return (Batch, (data, offsets, self.caplens, wirelens))

    def __repr__(self) -> str:
        return f"<bpfjit.Batch of {len(self)} packets, {len(self.data)} bytes>"
