"""Packet arguments: what every backend accepts as a packet, checked in one place."""

from __future__ import annotations

from .opcodes import U32_MASK


def packet_view(packet: object) -> memoryview:
    """A flat byte view of a C-contiguous buffer (no copy); `TypeError` for anything else.

    Non-contiguous views (e.g. `memoryview(b)[::2]`) are refused rather than copied, so a filter
    never silently pays for a copy: call `bytes(view)` yourself when that is what you want.
    """
    if isinstance(packet, str):
        raise TypeError("a packet must be a bytes-like object, not str (encode it first)")
    try:
        view = memoryview(packet)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a packet must be a bytes-like object, not {type(packet).__name__}") from None
    if not view.c_contiguous:
        raise TypeError("a packet buffer must be C-contiguous (copy it with bytes() first)")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def check_lengths(caplen: int, wirelen: object) -> int:
    """The wire length to use: `caplen` when None; `ValueError` when below caplen or above u32."""
    if caplen > U32_MASK:
        raise ValueError(f"packet of {caplen} bytes is longer than 2^32-1")
    if wirelen is None:
        return caplen
    if not isinstance(wirelen, int) or isinstance(wirelen, bool):
        raise TypeError(f"wirelen must be an int, not {type(wirelen).__name__}")
    if wirelen < caplen:
        raise ValueError(f"wirelen {wirelen} is smaller than the {caplen} captured bytes")
    if wirelen > U32_MASK:
        raise ValueError(f"wirelen {wirelen} does not fit in 32 bits")
    return wirelen

