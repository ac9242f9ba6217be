"""Packet metadata for linux-dialect filters, as native code reads it: 32-byte records in numpy.

`META_DTYPE` is the record `abi.PACKETS`' `meta` argument points at, one per packet: each `linux.Meta`
field at its `linux.META_LAYOUT` offset, as wide as the kernel's field (values are cut to it).

    f = bpfjit.compile(program, dialect="linux")
    f(packet, meta=Meta(vlan_tci=0x2064, vlan_present=1))          # one packet
    f.run_batch(batch, meta=meta_array(batch, ifindex=2, seed=1))   # a column per field
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from .batch import Batch
from .linux import DEFAULT_META, META_LAYOUT, META_SIZE, Meta

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32}
META_DTYPE = np.dtype({
    "names": list(META_LAYOUT),
    "formats": [_UNSIGNED[size] for _, size in META_LAYOUT.values()],
    "offsets": [offset for offset, _ in META_LAYOUT.values()],
    "itemsize": META_SIZE,
})  # fmt: skip


def as_meta(meta: Meta | Mapping[str, int]) -> Meta:
    """A `Meta` from itself or a mapping of its fields (`TypeError` for anything else)."""
    if isinstance(meta, Meta):
        return meta
    if isinstance(meta, Mapping):
        unknown = set(meta) - set(Meta._fields)
        if unknown:
            raise TypeError(f"unknown metadata fields {sorted(unknown)} (known: {', '.join(Meta._fields)})")
        return Meta(**meta)
    raise TypeError(f"meta must be a bpfjit.linux.Meta or a mapping of its fields, not {type(meta).__name__}")


def meta_record(meta: Meta | Mapping[str, int], packet: bytes | memoryview) -> npt.NDArray[Any]:
    """One packet's record (a 1-element META_DTYPE array); `protocol` None reads the packet's ethertype."""
    meta = as_meta(meta)
    record = np.zeros(1, dtype=META_DTYPE)
    for field in META_LAYOUT:
        value = getattr(meta, field)
        if value is None:  # protocol
            value = int.from_bytes(packet[12:14], "big") if len(packet) >= 14 else 0
        record[field] = value & _mask(field)
    return record


def meta_array(packets: Batch | int, *, seed: int | None = None, **columns: Any) -> npt.NDArray[Any]:
    """Records for a Batch (or `n` packets): `linux.Meta()`'s defaults, then the given columns (a
    scalar or one value per packet). With a Batch, `protocol` defaults to each packet's ethertype
    (bytes 12-13; 0 when shorter). `seed` fills `random` from numpy's PCG64 so that `ld [random]`
    programs give the same results on every run (the kernel's is prandom)."""
    unknown = set(columns) - set(META_LAYOUT)
    if unknown:
        raise TypeError(f"unknown metadata fields {sorted(unknown)} (known: {', '.join(META_LAYOUT)})")
    n = len(packets) if isinstance(packets, Batch) else int(packets)
    records = np.zeros(n, dtype=META_DTYPE)
    for field in META_LAYOUT:
        default = getattr(DEFAULT_META, field)
        if default:
            records[field] = default
    if isinstance(packets, Batch) and "protocol" not in columns and n:
        records["protocol"] = _ethertypes(packets)
    if seed is not None and "random" not in columns:
        records["random"] = np.random.default_rng(seed).integers(0, 1 << 32, size=n, dtype=np.uint64)
    for field, values in columns.items():
        records[field] = np.asarray(values, dtype=np.int64) & _mask(field)
    return records


def _mask(field: str) -> int:
    return (1 << 8 * META_LAYOUT[field][1]) - 1


def _ethertypes(batch: Batch) -> npt.NDArray[np.uint32]:
    long_enough = batch.caplens >= 14
    at = batch.offsets[long_enough].astype(np.int64) + 12
    data = batch.data
    ethertypes = np.zeros(len(batch), dtype=np.uint32)
    ethertypes[long_enough] = (data[at].astype(np.uint32) << 8) | data[at + 1]
    return ethertypes


def check_meta_array(meta: Any, n: int) -> npt.NDArray[Any]:
    """`meta` if it is a C-contiguous META_DTYPE array of n records (else `TypeError`/`ValueError`)."""
    if not isinstance(meta, np.ndarray):
        raise TypeError(f"meta must be a numpy array of bpfjit.metadata.META_DTYPE, not {type(meta).__name__}")
    if meta.dtype != META_DTYPE:
        raise TypeError(f"meta has dtype {meta.dtype}, not bpfjit.metadata.META_DTYPE (use meta_array)")
    if meta.shape != (n,) or not meta.flags.c_contiguous:
        raise ValueError(f"meta must be a C-contiguous array of {n} records, one per packet")
    return meta
