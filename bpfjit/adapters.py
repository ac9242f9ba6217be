"""A Filter in the packet loops people already have: scapy's and dpkt's.

    f = bpfjit.compile("udp port 53")
    sniff(offline="in.pcap", lfilter=scapy_lfilter(f))       # any scapy lfilter= takes it
    [p for p in rdpcap("in.pcap") if scapy_lfilter(f)(p)]
    for packet in scapy_reader("in.pcap", f): ...             # dissects only the packets that pass
    for ts, buf in dpkt_filter(dpkt.pcap.Reader(fh), f): ...  # or `if f(buf):` in your own loop

An expression instead of a Filter is compiled for the capture's link type where the reader knows it.
The filter sees the packet's bytes; scapy's and dpkt's readers give only the captured bytes (dpkt
loses the wire length), so `len`/`greater` see the captured length there unless noted.
scapy and dpkt are optional (`pip install bpfjit[scapy]` / `bpfjit[dpkt]`): imported only in here.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bpfjit import Filter

__all__ = ["dpkt_filter", "scapy_lfilter", "scapy_reader"]


def _as_filter(f: Filter | str, linktype: int | str) -> Filter:
    """`f` itself, or the expression `f` compiled for `linktype` (a DLT value or name)."""
    import bpfjit  # the public API only (an integration, see tests/test_layering.py)

    if isinstance(f, bpfjit.Filter):
        return f
    if isinstance(f, str):
        return bpfjit.compile(f, linktype=linktype)
    raise TypeError(f"expected a bpfjit.Filter or an expression, not {type(f).__name__}")


def _require(package: str) -> None:
    """An ImportError that says how to install an optional package."""
    try:
        importlib.import_module(package)
    except ImportError:
        raise ImportError(
            f"{package} is not installed: pip install bpfjit[{package}] (or pip install {package})"
        ) from None


# -- scapy --------------------------------------------------------------------------------------------
def scapy_lfilter(f: Filter | str, *, linktype: int | str = "EN10MB") -> Callable[[Any], bool]:
    """A scapy `lfilter`: takes a scapy Packet, True when `f` accepts `bytes(packet)`.

    A packet read from a file with `wirelen` above its captured length is filtered with that wire
    length. An expression is compiled for `linktype` (Ethernet unless told).
    """
    filter = _as_filter(f, linktype)
    call = filter.call

    def lfilter(packet: Any) -> bool:
        data = bytes(packet)
        wirelen = getattr(packet, "wirelen", None)
        if wirelen is not None and wirelen > len(data):
            return call(data, wirelen) != 0
        return filter(data) != 0

    lfilter.__doc__ = f"scapy lfilter: {filter!r}"
    return lfilter


def scapy_reader(source: str | os.PathLike[str], f: Filter | str) -> Iterator[Any]:
    """The packets of a pcap or pcapng file that `f` accepts, as scapy Packets like `PcapReader`'s.

    The filter runs on the raw records (scapy's RawPcapReader), so only accepted packets pay for
    scapy's dissection, which costs far more than reading. An expression is compiled for each
    link type the file uses. Packets carry `time` and `wirelen` as `PcapReader` sets them.
    """
    _require("scapy")
    from decimal import Decimal

    from scapy.config import conf
    from scapy.utils import EDecimal, RawPcapReader

    from bpfjit.libpcap import dlt_from_linktype

    filters: dict[int, Filter] = {}
    with RawPcapReader(os.fspath(source)) as reader:
        file_linktype: int = getattr(reader, "linktype", 1)
        power = Decimal(10) ** Decimal(-9 if getattr(reader, "nano", False) else -6)
        records: Iterable[tuple[bytes, Any]] = reader  # (pcapng records name their own link type)
        for data, meta in records:
            linktype: int = getattr(meta, "linktype", file_linktype)
            filter = filters.get(linktype)
            if filter is None:
                filter = filters[linktype] = _as_filter(f, dlt_from_linktype(linktype))
            wirelen = meta.wirelen
            if not (filter.call(data, wirelen) if wirelen is not None and wirelen > len(data) else filter(data)):
                continue
            layer = conf.l2types.num2layer.get(linktype, conf.raw_layer)
            try:
                packet = layer(data)
            except Exception:  # what PcapReader does with a packet its dissectors choke on
                packet = conf.raw_layer(data)
            if hasattr(meta, "usec"):
                packet.time = EDecimal(meta.sec + power * meta.usec)
            elif getattr(meta, "tshigh", None) is not None:
                packet.time = EDecimal((meta.tshigh << 32) + meta.tslow) / meta.tsresol
            packet.wirelen = wirelen
            yield packet


# -- dpkt ---------------------------------------------------------------------------------------------
def dpkt_filter(reader: Iterable[tuple[float, bytes]], f: Filter | str) -> Iterator[tuple[float, bytes]]:
    """The `(ts, buf)` records of a dpkt `pcap.Reader`/`pcapng.Reader` that `f` accepts.

    Same as `for ts, buf in reader: if f(buf): ...`, except that an expression is compiled for the
    file's link type (`reader.datalink()`).
    """
    linktype: int | str = "EN10MB"
    datalink = getattr(reader, "datalink", None)
    if isinstance(f, str) and callable(datalink):
        from bpfjit.libpcap import dlt_from_linktype

        linktype = dlt_from_linktype(datalink())
    filter = _as_filter(f, linktype)
    for ts, buf in reader:
        if filter(buf):
            yield ts, buf
