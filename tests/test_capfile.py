"""Capture files: round trips through files written by independent writers (scapy, dpkt), filtering
checked against libpcap, truncated and corrupt files, the `bpfjit filter` command, and tcpdump itself.

Expected verdicts come from libpcap (`pcap_offline_filter`, as tcpdump applies a filter), expected
packets from the writers' own inputs or scapy's readers, expected bytes from a block splitter
(tests/pcapfiles.py): none of it from bpfjit's reader.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from needs import require, tcpdump_path
from pcapfiles import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    US_BASE,
    Packet,
    accepted_by_libpcap,
    expected_pcapng_output,
    mix,
    mixed_link_types,
    pcap_records,
    pcapng_blocks,
    raw_ip,
    scapy_read,
    write_pcap,
    write_pcapng,
)

import bpfjit
from bpfjit import CaptureFileError, Program, capfile, capwriter, cli, packetmix, samples

EXPRESSIONS = ("ip", "udp", "tcp port 80", "ip6", "udp port 53 or tcp port 443", "not ip", "greater 200")


# -- classic pcap ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_round_trip(tmp_path: Path, order: str, nano: bool) -> None:
    packets = mix(400, seed=3, nano=nano)
    src = tmp_path / "in.pcap"
    write_pcap(src, packets, order, nano)
    data = src.read_bytes()
    header, records = pcap_records(data, order)

    got = list(bpfjit.read_file(src))
    assert [(d, w) for _, d, w in got] == [(p.data, p.wirelen) for p in packets]
    units = 10**9 if nano else 10**6
    assert [t for t, _, _ in got] == [p.sec + p.frac / units for p in packets]
    assert got == scapy_read(src)

    out = tmp_path / "all.pcap"
    stats = bpfjit.filter_file(src, out)
    assert out.read_bytes() == data  # byte for byte: header (order, precision, snaplen, link type) and records
    assert stats == capfile.FileStats(len(packets), len(packets), len(data))

    for expression in EXPRESSIONS:
        verdicts = accepted_by_libpcap(expression, packets)
        stats = bpfjit.filter_file(src, out, expression)
        assert out.read_bytes() == header + b"".join(r for r, keep in zip(records, verdicts, strict=True) if keep)
        assert stats.read == len(packets) and stats.accepted == sum(verdicts), expression
        assert [d for _, d, _ in bpfjit.read_file(src, expression)] == [
            p.data for p, keep in zip(packets, verdicts, strict=True) if keep
        ]


def test_pcap_link_type_snaplen_and_modified_format(tmp_path: Path) -> None:
    """The expression is compiled for the file's link type; a 24-byte-record ("modified") pcap reads too."""
    packets = [p._replace(data=raw_ip(p.data), wirelen=p.wirelen - 14, linktype=LINKTYPE_RAW) for p in mix(200)]
    packets = [p for p in packets if p.data]
    src = tmp_path / "raw.pcap"
    write_pcap(src, packets, linktype=LINKTYPE_RAW, snaplen=1500)
    out = tmp_path / "out.pcap"
    bpfjit.filter_file(src, out, "udp")
    verdicts = accepted_by_libpcap("udp", packets)
    assert sum(verdicts) > 10
    header, records = pcap_records(src.read_bytes())
    assert out.read_bytes() == header + b"".join(r for r, keep in zip(records, verdicts, strict=True) if keep)
    assert capfile.file_program(src, "udp") == Program.from_expr("udp", "RAW", snaplen=1500, netmask=0)

    # Kuznetzov's modified pcap: magic a1b2cd34, 8 more bytes per record header (ifindex, protocol, type)
    modified = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    frames = [samples.ethernet(0x0800, samples.ipv4(17, samples.udp(1, 53))), samples.arp_request()]
    for i, frame in enumerate(frames):
        modified += struct.pack("<IIIIIHBx", US_BASE, i, len(frame), len(frame), 2, 0x0800, 0) + frame
    (tmp_path / "mod.pcap").write_bytes(modified)
    assert [d for _, d, _ in bpfjit.read_file(tmp_path / "mod.pcap")] == frames
    assert [d for _, d, _ in bpfjit.read_file(tmp_path / "mod.pcap", "udp")] == frames[:1]


def pcap_and_expected(
    src: Path, packets: list[Packet], expression: str
) -> tuple[bytes, list[bytes], list[bool], bytes]:
    """Write `packets` to `src`; its header, records, libpcap's verdicts and the filtered file expected."""
    write_pcap(src, packets)
    header, records = pcap_records(src.read_bytes())
    verdicts = accepted_by_libpcap(expression, packets)
    return header, records, verdicts, header + b"".join(r for r, keep in zip(records, verdicts, strict=True) if keep)


def test_a_chunk_below_one_is_refused_everywhere(tmp_path: Path) -> None:
    src = tmp_path / "in.pcap"
    write_pcap(src, mix(5))
    calls = {
        "filter_file": lambda chunk: bpfjit.filter_file(src, tmp_path / "out.pcap", "tcp", chunk=chunk),
        "split_file": lambda chunk: capfile.split_file(src, [str(tmp_path / "a.pcap")], ["tcp"], chunk=chunk),
        "read_file": lambda chunk: list(bpfjit.read_file(src, chunk=chunk)),
        "read_batches": lambda chunk: list(bpfjit.read_batches(src, chunk=chunk)),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="chunk must be positive"):
            call(0)
        assert not (tmp_path / "out.pcap").exists() and not (tmp_path / "a.pcap").exists(), name


def test_chunk_sizes_and_count(tmp_path: Path) -> None:
    """Chunk boundaries change nothing; `count` stops after that many accepted packets (tcpdump's -c)."""
    packets = mix(300, seed=5)
    src = tmp_path / "in.pcap"
    header, records, verdicts, expected = pcap_and_expected(src, packets, "tcp")
    for chunk in (1, 2, 7, 64, 4096):
        out = tmp_path / f"out{chunk}.pcap"
        assert bpfjit.filter_file(src, out, "tcp", chunk=chunk).accepted == sum(verdicts)
        assert out.read_bytes() == expected
        assert len(list(bpfjit.read_file(src, "tcp", chunk=chunk))) == sum(verdicts)
    kept = [i for i, keep in enumerate(verdicts) if keep]
    for count, chunk in ((1, 4096), (5, 3), (17, 4096), (0, 10), (10_000, 8)):
        out = tmp_path / "count.pcap"
        stats = bpfjit.filter_file(src, out, "tcp", count=count, chunk=chunk)
        taken = kept[:count]
        assert stats.accepted == len(taken)
        assert stats.read == (taken[-1] + 1 if count < len(kept) and taken else 0 if not count else len(packets))
        assert out.read_bytes() == header + b"".join(records[i] for i in taken)


def test_many_writev_groups(tmp_path: Path) -> None:
    """Over 1024 separate runs in one chunk: several writev calls, each checked against its byte count."""
    dns = samples.ethernet(0x0800, samples.ipv4(17, samples.udp(5353, 53, bytes(30))))
    web = samples.ethernet(0x0800, samples.ipv4(6, samples.tcp(40000, 80)))
    packets = [Packet(dns if i % 2 else web, 0, US_BASE, i) for i in range(5000)]
    packets = [p._replace(wirelen=len(p.data)) for p in packets]
    src = tmp_path / "alt.pcap"
    write_pcap(src, packets)
    header, records = pcap_records(src.read_bytes())
    out = tmp_path / "out.pcap"
    assert bpfjit.filter_file(src, out, "udp port 53", chunk=4096).accepted == 2500
    assert out.read_bytes() == header + b"".join(records[1::2])


def test_destinations(tmp_path: Path) -> None:
    """A path, an open file (after what the caller wrote), a file object without a descriptor, or None."""
    packets = mix(120, seed=7)
    src = tmp_path / "in.pcap"
    header, records, verdicts, expected = pcap_and_expected(src, packets, "udp")
    memory = io.BytesIO()
    bpfjit.filter_file(src, memory, "udp")
    assert memory.getvalue() == expected
    with open(tmp_path / "open.pcap", "wb") as f:
        f.write(b"prefix")  # buffered: it must still come first
        bpfjit.filter_file(src, f, "udp")
    assert (tmp_path / "open.pcap").read_bytes() == b"prefix" + expected
    stats = bpfjit.filter_file(src, None, "udp")
    assert stats == capfile.FileStats(len(packets), sum(verdicts), 0)
    with open(src, "rb") as f:  # a source given as an open file
        assert bpfjit.filter_file(f, None, "udp") == stats
    with pytest.raises(ValueError, match="the output is the input file"):
        bpfjit.filter_file(src, src, "udp")  # it would truncate the file being read
    assert src.read_bytes() == header + b"".join(records)
    with pytest.raises(CaptureFileError, match="not a regular file"):
        bpfjit.filter_file("/dev/null", None)


def test_filter_kinds(tmp_path: Path) -> None:
    """A Filter, a Program, an iterable of tuples or None: each gives the verdicts libpcap gives."""
    packets = mix(200, seed=11)
    src = tmp_path / "in.pcap"
    write_pcap(src, packets)
    verdicts = accepted_by_libpcap("tcp port 443", packets)
    program = Program.from_expr("tcp port 443")
    for spec in (bpfjit.compile("tcp port 443"), bpfjit.compile(program), program, list(program)):
        assert bpfjit.filter_file(src, None, spec).accepted == sum(verdicts)  # type: ignore[arg-type]
    with pytest.raises(bpfjit.ValidationError):
        bpfjit.filter_file(src, None, [(0x06, 0, 0, 1), (0x06, 0, 0, 0), (0x0E, 0, 0, 0)])
    out = tmp_path / "kept.pcap"
    out.write_bytes(b"precious")
    with pytest.raises(bpfjit.ExpressionError):
        bpfjit.filter_file(src, out, "tcp port")
    assert out.read_bytes() == b"precious"  # compiled before the output is opened, as tcpdump does


def test_read_batches(tmp_path: Path) -> None:
    packets = mix(500, seed=13)
    src = tmp_path / "in.pcap"
    write_pcap(src, packets)
    batches = list(capfile.read_batches(src, "ip", chunk=128))
    assert all(b.linktype == LINKTYPE_ETHERNET for b in batches)
    flat = [(float(t), bytes(p), int(w)) for b in batches for t, p, w in
            zip(b.timestamps, b.batch, b.batch.wirelens, strict=True)]  # fmt: skip
    assert flat == list(bpfjit.read_file(src, "ip"))
    assert bpfjit.compile("ip").run_batch(batches[0].batch).all()


def test_partial_and_interrupted_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """writev writing less than asked, or interrupted, or failing: the rest is written, or OSError."""
    packets = mix(300, seed=17)
    src = tmp_path / "in.pcap"
    write_pcap(src, packets)
    header, records = pcap_records(src.read_bytes())
    verdicts = accepted_by_libpcap("tcp", packets)
    expected = header + b"".join(r for r, keep in zip(records, verdicts, strict=True) if keep)

    def short(fd: int, iov: int, count: int) -> int:  # writes the first run, and half of it only
        base, length = ctypes.c_uint64.from_address(iov).value, ctypes.c_uint64.from_address(iov + 8).value
        return os.write(fd, ctypes.string_at(base, max(1, length // 2)))

    def interrupted(fd: int, iov: int, count: int) -> int:
        ctypes.set_errno(errno.EINTR)
        return -1

    for fake in (short, interrupted):
        monkeypatch.setattr(capwriter, "_libc_writev", lambda fake=fake: fake)
        out = tmp_path / f"{fake.__name__}.pcap"
        bpfjit.filter_file(src, out, "tcp", chunk=50)
        assert out.read_bytes() == expected

    def failing(fd: int, iov: int, count: int) -> int:
        ctypes.set_errno(errno.ENOSPC)
        return -1

    monkeypatch.setattr(capwriter, "_libc_writev", lambda: failing)
    with pytest.raises(OSError) as raised:
        bpfjit.filter_file(src, tmp_path / "full.pcap", "tcp")
    assert raised.value.errno == errno.ENOSPC


# -- pcapng -----------------------------------------------------------------------------------------------------
def test_pcapng_round_trip(tmp_path: Path) -> None:
    packets = mix(300, seed=19)
    src = tmp_path / "in.pcapng"
    write_pcapng(src, packets)
    data = src.read_bytes()
    got = list(bpfjit.read_file(src))
    assert [(d, w) for _, d, w in got] == [(p.data, p.wirelen) for p in packets]
    assert got == scapy_read(src)
    out = tmp_path / "out.pcapng"
    bpfjit.filter_file(src, out)
    assert out.read_bytes() == data
    for expression in EXPRESSIONS:
        bpfjit.filter_file(src, out, expression)
        assert out.read_bytes() == expected_pcapng_output(data, accepted_by_libpcap(expression, packets)), expression


def test_pcapng_interfaces_of_several_link_types(tmp_path: Path) -> None:
    """Ethernet, raw IP and Linux cooked interfaces interleaved in one file: each packet goes through
    the expression compiled for its own interface's link type."""
    packets = mixed_link_types(600, seed=23)
    src = tmp_path / "multi.pcapng"
    write_pcapng(src, packets)
    data = src.read_bytes()
    assert [b for b, _ in pcapng_blocks(data)].count(1) == 3  # three IDBs
    assert [(d, w) for _, d, w in bpfjit.read_file(src)] == [(p.data, p.wirelen) for p in packets]
    out = tmp_path / "out.pcapng"
    for expression in ("ip", "udp port 53", "tcp and not port 22", "ip6 or arp"):
        verdicts = accepted_by_libpcap(expression, packets)
        assert 0 < sum(verdicts) < len(packets)
        for chunk in (5, 4096):
            bpfjit.filter_file(src, out, expression, chunk=chunk)
            assert out.read_bytes() == expected_pcapng_output(data, verdicts), expression
        kept = [p.data for p, keep in zip(packets, verdicts, strict=True) if keep]
        assert [d for _, d, _ in bpfjit.read_file(src, expression)] == kept
        batches = list(capfile.read_batches(src, expression, chunk=64))
        assert [bytes(p) for b in batches for p in b.batch] == kept
        for b in batches:
            assert {pk.linktype for pk in packets if pk.data in {bytes(x) for x in b.batch}} <= {b.linktype}
    # a Filter for Ethernet is recompiled from its expression for the other link types
    verdicts = accepted_by_libpcap("udp", packets)
    assert bpfjit.filter_file(src, None, bpfjit.compile("udp")).accepted == sum(verdicts)
    # a Program applies as it is to every packet (`ldb [0]; jeq #0x45`: an IPv4 header at byte 0)
    program = Program.parse("ldb [0]\njeq #0x45, keep, drop\nkeep: ret #1\ndrop: ret #0")
    expected = sum(p.data[:1] == b"\x45" for p in packets)
    assert bpfjit.filter_file(src, None, program).accepted == expected


def _be_section(packets: list[Packet], linktype: int, tsresol: int | None = None,
                tsoffset: int | None = None, obsolete: bool = False) -> bytes:  # fmt: skip
    """A big-endian pcapng section written by dpkt (EPBs, or obsolete PBs)."""
    import dpkt.pcapng as ng

    options = []
    if tsresol is not None:
        options.append(ng.PcapngOption(code=9, data=bytes([tsresol])))
    if tsoffset is not None:
        options.append(ng.PcapngOption(code=14, data=struct.pack(">q", tsoffset)))
    if options:
        options.append(ng.PcapngOption(code=0, data=b""))
    # dpkt's Writer insists on the host's byte order; its big-endian block slots serialise themselves
    blocks = [ng.SectionHeaderBlock(), ng.InterfaceDescriptionBlock(linktype=linktype, snaplen=65535, opts=options)]
    for p in packets:
        ticks = p.sec * 10**6 + p.frac
        kind = ng.PacketBlock if obsolete else ng.EnhancedPacketBlock
        blocks.append(kind(pkt_data=p.data, ts_high=ticks >> 32, ts_low=ticks & 0xFFFFFFFF))
    return b"".join(bytes(block) for block in blocks)


def test_pcapng_sections_byte_orders_blocks_and_timestamps(tmp_path: Path) -> None:
    """Sections of both byte orders, PB and SPB blocks, if_tsresol/if_tsoffset, and other blocks
    (NRB, ISB, custom) copied through: all in one file."""
    first = [p._replace(wirelen=len(p.data)) for p in mix(40, seed=29)]
    le = tmp_path / "le.pcapng"
    write_pcapng(le, first)
    second = [p._replace(wirelen=len(p.data)) for p in mix(30, seed=31)]
    third = [p._replace(wirelen=len(p.data)) for p in mix(20, seed=37)]
    be_epb = _be_section(second, LINKTYPE_ETHERNET, tsresol=9, tsoffset=-100)
    be_pb = _be_section(third, LINKTYPE_ETHERNET, obsolete=True)
    frame = samples.ethernet(0x0800, samples.ipv4(17, samples.udp(1, 53, b"x" * 80)))

    def spb(data: bytes, wirelen: int) -> bytes:  # dpkt has no SPB writer
        padded = data + bytes(-len(data) % 4)
        return struct.pack("<III", 3, 16 + len(padded), wirelen) + padded + struct.pack("<I", 16 + len(padded))

    nrb = struct.pack("<IIHH4sHHI", 4, 24, 1, 4, b"\x0a\0\0\x01", 0, 0, 24)  # a name record, end
    custom = struct.pack("<III", 0xBAD, 20, 0x7FFF) + b"abcd" + struct.pack("<I", 20)
    # a section whose interface has snaplen 40: an SPB holds min(wirelen, 40) bytes
    short = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    short += struct.pack("<IIHHII", 1, 20, 1, 0, 40, 20) + spb(frame[:40], len(frame))
    data = le.read_bytes() + nrb + spb(frame, len(frame)) + custom + short + be_epb + be_pb
    src = tmp_path / "sections.pcapng"
    src.write_bytes(data)

    got = list(bpfjit.read_file(src))
    spb_packets = [(0.0, frame, len(frame)), (0.0, frame[:40], len(frame))]  # SPBs have no timestamp
    expected = [(p.sec + p.frac / 1e6, p.data, p.wirelen) for p in first] + spb_packets
    # dpkt wrote microsecond ticks; if_tsresol says nanoseconds and if_tsoffset -100 s
    expected += [((p.sec * 10**6 + p.frac) / 10**9 - 100, p.data, p.wirelen) for p in second]
    expected += [(p.sec + p.frac / 1e6, p.data, p.wirelen) for p in third]
    assert got == expected
    lines = list(capfile.packet_lines(src))
    assert lines[0] == (f"{first[0].sec}.{first[0].frac:06d}", first[0].wirelen)
    assert lines[len(first)] == ("0.000000", len(frame))
    ticks = second[0].sec * 10**6 + second[0].frac
    assert lines[len(first) + 2] == (f"{ticks // 10**9 - 100}.{ticks % 10**9:09d}", second[0].wirelen)

    out = tmp_path / "out.pcapng"
    everything = [*first, Packet(frame, len(frame), 0, 0), Packet(frame[:40], len(frame), 0, 0), *second, *third]
    for expression in ("udp", "tcp", "ip6"):
        bpfjit.filter_file(src, out, expression)
        assert out.read_bytes() == expected_pcapng_output(data, accepted_by_libpcap(expression, everything))


def test_pcapng_section_length_is_reset(tmp_path: Path) -> None:
    """A filtered section is shorter than its SHB said: the copy says -1 (unknown), as the spec allows."""
    packets = mix(10, seed=41)
    src = tmp_path / "in.pcapng"
    write_pcapng(src, packets)
    data = bytearray(src.read_bytes())
    struct.pack_into("<q", data, 16, len(data))
    src.write_bytes(bytes(data))
    out = tmp_path / "out.pcapng"
    bpfjit.filter_file(src, out, "udp")
    written = out.read_bytes()
    assert struct.unpack_from("<q", written, 16)[0] == -1
    assert written[:16] == data[:16] and written[24 : len(pcapng_blocks(bytes(data))[0][1])] == data[24:28]


# -- truncated and corrupt files ------------------------------------------------------------------------------
def _pcap_file(tmp_path: Path, n: int = 30) -> tuple[Path, bytes, list[bytes], list[Packet]]:
    packets = mix(n, seed=43)
    path = tmp_path / "good.pcap"
    write_pcap(path, packets)
    data = path.read_bytes()
    header, records = pcap_records(data)
    return path, header, records, packets


@pytest.mark.parametrize("cut", ["in header", "after header", "in data", "one byte short"])
def test_truncated_pcap(tmp_path: Path, cut: str) -> None:
    """Everything before the last, incomplete record is written (and yielded); the error names its offset."""
    _, header, records, packets = _pcap_file(tmp_path)
    start = len(header) + sum(map(len, records[:-1]))
    keep = {"in header": 7, "after header": 16, "in data": 30, "one byte short": len(records[-1]) - 1}[cut]
    src = tmp_path / "cut.pcap"
    src.write_bytes(header + b"".join(records[:-1]) + records[-1][:keep])
    out = tmp_path / "out.pcap"
    with pytest.raises(CaptureFileError) as raised:
        bpfjit.filter_file(src, out, chunk=4)
    assert raised.value.offset == start
    assert f"byte {start}" in str(raised.value) and "truncated" in str(raised.value)
    assert out.read_bytes() == header + b"".join(records[:-1])
    seen = []
    with pytest.raises(CaptureFileError):
        for _, packet, _ in bpfjit.read_file(src, chunk=4):
            seen.append(packet)
    assert seen == [p.data for p in packets[:-1]]


def test_corrupt_pcap_record(tmp_path: Path) -> None:
    """A caplen beyond any sane snaplen is a corrupt header, not a huge packet."""
    _, header, records, _ = _pcap_file(tmp_path)
    bad = bytearray(records[10])
    struct.pack_into("<I", bad, 8, 0x00FFFFFF)
    src = tmp_path / "bad.pcap"
    src.write_bytes(header + b"".join(records[:10]) + bytes(bad) + b"".join(records[11:]))
    out = tmp_path / "out.pcap"
    with pytest.raises(CaptureFileError, match="invalid packet capture length 16777215, bigger than snaplen") as raised:
        bpfjit.filter_file(src, out)
    assert raised.value.offset == len(header) + sum(map(len, records[:10]))
    assert out.read_bytes() == header + b"".join(records[:10])


@pytest.mark.parametrize(
    ("content", "offset", "message"),
    [
        (b"", 0, "empty file"),
        (b"\xd4\xc3", 0, "truncated file header"),
        (b"GIF89a" + bytes(30), 0, "not a pcap or pcapng file"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)[:20], 0, "truncated pcap file header"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 3, 0, 0, 0, 65535, 1), 4, "unsupported pcap savefile version 3.0"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 5, 0, 0, 65535, 1), 4, "unsupported pcap savefile version 2.5"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 4, 0, 0, 65535, 1), 4, "archaic pcap savefile format"),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 2, 0, 0, 65535, 1), 4, "version 2.2 .caplen and len swapped"),
        (struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x11223344, 1, 0, -1) + struct.pack("<I", 28), 8,
         "byte-order magic"),
        (struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 2, 0, -1) + struct.pack("<I", 28), 12,
         "unsupported pcapng version 2.0"),
        (struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 32), 0,
         "block length 28 at its start, 32 at its end"),
        (struct.pack("<IIIHHq", 0x0A0D0D0A, 48, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 48), 0,
         "truncated section header block"),
    ],
)  # fmt: skip
def test_bad_headers(tmp_path: Path, content: bytes, offset: int, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(CaptureFileError, match=message) as raised:
        bpfjit.filter_file(path, tmp_path / "out")
    assert raised.value.offset == offset
    assert isinstance(raised.value, ValueError) and raised.value.path == str(path)


def _pcapng_file(tmp_path: Path) -> tuple[bytes, list[bytes], list[Packet]]:
    packets = mix(12, seed=47)
    path = tmp_path / "good.pcapng"
    write_pcapng(path, packets)
    data = path.read_bytes()
    return data, [b for _, b in pcapng_blocks(data)], packets


def _patch(block: bytes, offset: int, value: int) -> bytes:
    patched = bytearray(block)
    struct.pack_into("<I", patched, offset, value)
    return bytes(patched)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-6], "truncated enhanced packet block: block length"),
        (lambda b: _patch(b, len(b) - 4, len(b) + 4), "at its start"),
        (lambda b: _patch(b, 4, 30), "corrupt enhanced packet block: block length 30"),
        (lambda b: _patch(b, 20, 5000), "captured length larger than the block"),
        (lambda b: _patch(b, 8, 7), "names interface 7, but the section has 1"),
    ],
)
def test_corrupt_pcapng_packet(tmp_path: Path, damage: Any, message: str) -> None:
    """The bad block's offset is named after every packet before it has been written."""
    _, blocks, _ = _pcapng_file(tmp_path)
    index = 6  # SHB, IDB, then packets: this is the fifth packet
    src = tmp_path / "bad.pcapng"
    bad = damage(blocks[index])
    src.write_bytes(b"".join(blocks[:index]) + bad + (b"" if len(bad) < len(blocks[index]) - 4 else
                                                        b"".join(blocks[index + 1 :])))  # fmt: skip
    out = tmp_path / "out.pcapng"
    with pytest.raises(CaptureFileError, match=message) as raised:
        bpfjit.filter_file(src, out, chunk=2)
    assert raised.value.offset == sum(map(len, blocks[:index]))
    assert out.read_bytes() == b"".join(blocks[:index])


def test_pcapng_structure_errors(tmp_path: Path) -> None:
    data, blocks, _ = _pcapng_file(tmp_path)
    path = tmp_path / "bad.pcapng"
    path.write_bytes(blocks[2])  # a packet block first
    with pytest.raises(CaptureFileError, match="not a pcap or pcapng file"):
        list(bpfjit.read_file(path))
    path.write_bytes(data + b"\x06\0\0")  # three stray bytes at the end
    with pytest.raises(CaptureFileError, match="truncated block header") as raised:
        list(bpfjit.read_file(path))
    assert raised.value.offset == len(data)
    spb = struct.pack("<III", 3, 16, 0) + struct.pack("<I", 16)
    path.write_bytes(blocks[0] + spb)  # an SPB before any IDB
    with pytest.raises(CaptureFileError, match="simple packet block names interface 0, but the section has 0"):
        list(bpfjit.read_file(path))


# -- the command line ------------------------------------------------------------------------------------------
def _cli(*args: str) -> int:
    return cli.main(["filter", *args])


def test_cli_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packets = mix(200, seed=53)
    src = tmp_path / "in.pcap"
    write_pcap(src, packets)
    out = tmp_path / "out.pcap"
    verdicts = accepted_by_libpcap("udp", packets)
    assert _cli("-r", str(src), "-w", str(out), "udp") == 0
    assert capsys.readouterr().err == f"{len(packets)} packets read, {sum(verdicts)} accepted\n"
    assert [d for _, d, _ in bpfjit.read_file(out)] == [p.data for p, k in zip(packets, verdicts, strict=True) if k]

    assert _cli("-r", str(src), "-c", "3", "udp") == 0  # no -w: a line per accepted packet
    lines = capsys.readouterr().out.splitlines()
    chosen = [p for p, keep in zip(packets, verdicts, strict=True) if keep][:3]
    assert lines == [f"{p.sec}.{p.frac:06d} {p.wirelen}" for p in chosen]

    (tmp_path / "expr").write_text("udp\n  and not port 53\n")
    assert _cli("-r", str(src), "-w", str(out), "-F", str(tmp_path / "expr")) == 0
    assert "accepted\n" in capsys.readouterr().err
    assert len(list(bpfjit.read_file(out))) == sum(accepted_by_libpcap("udp and not port 53", packets))

    program = Program.from_expr("tcp")
    (tmp_path / "prog").write_text(program.dump("ddd"))
    assert _cli("-r", str(src), "-w", str(out), "-F", str(tmp_path / "prog")) == 0
    assert len(list(bpfjit.read_file(out))) == sum(accepted_by_libpcap("tcp", packets))
    (tmp_path / "asm").write_text("ldh [12]\njeq #0x800, yes\nret #0\nyes: ret #-1\n")
    assert _cli("-r", str(src), "-w", str(out), "-F", str(tmp_path / "asm")) == 0
    assert len(list(bpfjit.read_file(out))) == sum(accepted_by_libpcap("ip", packets))
    (tmp_path / "typo").write_text("ldh [12]\njeq #0x800, yes\n")
    assert cli.main(["filter", "-r", str(src), "-F", str(tmp_path / "typo")]) == 1
    assert "bpfjit: " in capsys.readouterr().err


def test_cli_dump_and_link_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packets = [p._replace(data=raw_ip(p.data), linktype=LINKTYPE_RAW) for p in mix(50)]
    src = tmp_path / "raw.pcap"
    write_pcap(src, packets, linktype=LINKTYPE_RAW, snaplen=9000)
    for flag, style in (("-d", "d"), ("-dd", "dd"), ("-ddd", "ddd")):
        assert _cli("-r", str(src), flag, "udp") == 0
        assert capsys.readouterr().out == Program.from_expr("udp", "RAW", snaplen=9000).dump(style)  # type: ignore[arg-type]
    assert _cli("-d", "-y", "LINUX_SLL", "udp") == 0  # no file: the link type of -y, or EN10MB
    assert capsys.readouterr().out == Program.from_expr("udp", "LINUX_SLL").dump("d")
    # -y compiles for a link type other than the file's: Ethernet offsets on raw IP packets
    expected = sum(accepted_by_libpcap("ip", [p._replace(linktype=LINKTYPE_ETHERNET) for p in packets]))
    assert _cli("-r", str(src), "-w", str(tmp_path / "o.pcap"), "-y", "EN10MB", "ip") == 0
    assert capsys.readouterr().err.endswith(f" {expected} accepted\n")


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, header, records, _ = _pcap_file(tmp_path)
    src = tmp_path / "cut.pcap"
    src.write_bytes(header + b"".join(records[:-1]) + records[-1][:20])
    assert _cli("-r", str(src), "-w", str(tmp_path / "o.pcap")) == 1
    err = capsys.readouterr().err
    offset = len(header) + sum(map(len, records[:-1]))
    assert f"{len(records) - 1} packets read, {len(records) - 1} accepted\n" in err
    assert f"bpfjit: {src}: byte {offset}: truncated record" in err
    assert _cli("udp") == 2
    assert "-r FILE" in capsys.readouterr().err
    assert _cli("-r", str(tmp_path / "missing.pcap")) == 1
    assert "No such file" in capsys.readouterr().err
    assert _cli("-r", str(src), "-c", "0") == 2
    assert _cli("-r", str(src), "-w", str(src)) == 1
    assert "the output is the input file" in capsys.readouterr().err


def test_cli_process(tmp_path: Path) -> None:
    """The installed command's path (it leaves without the interpreter's teardown): output complete."""
    packets = mix(3000, seed=59)
    src = tmp_path / "in.pcap"
    write_pcap(src, packets)
    command = [sys.executable, "-m", "bpfjit", "filter", "-r", str(src), "tcp"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    verdicts = accepted_by_libpcap("tcp", packets)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == sum(verdicts)
    assert result.stderr == f"{len(packets)} packets read, {sum(verdicts)} accepted\n"


def test_cli_standard_input_and_output(tmp_path: Path) -> None:
    """`-r -` and `-w -` as tcpdump takes them: piped (streamed; copied to a temporary file for -j 2)
    or redirected (mapped)."""
    packets = mix(2000, seed=61)
    src = tmp_path / "in.pcap"
    write_pcap(src, packets)
    expected = tmp_path / "expected.pcap"
    bpfjit.filter_file(src, expected, "udp or arp")
    command = [sys.executable, "-m", "bpfjit", "filter", "-r", "-", "-w", "-", "udp or arp"]
    piped = subprocess.run(command, input=src.read_bytes(), capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == expected.read_bytes()
    spooled = subprocess.run([*command[:-1], "-j", "2", "udp or arp"], input=src.read_bytes(), capture_output=True,
                             timeout=120)  # fmt: skip
    assert spooled.returncode == 0 and spooled.stdout == expected.read_bytes()
    with open(src, "rb") as stdin:
        redirected = subprocess.run(command, stdin=stdin, capture_output=True, timeout=120)
    assert redirected.returncode == 0 and redirected.stdout == expected.read_bytes()
    kept = sum(accepted_by_libpcap("udp or arp", packets))
    assert redirected.stderr.decode() == f"{len(packets)} packets read, {kept} accepted\n"
    lines = subprocess.run([*command[:-3], "-c", "2", "udp"], input=src.read_bytes(), capture_output=True, timeout=120)
    assert lines.returncode == 0 and len(lines.stdout.splitlines()) == 2
    empty = subprocess.run(command, input=b"", capture_output=True, timeout=120)
    assert empty.returncode == 1 and b"empty file" in empty.stderr


def test_cli_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    src, _, _, _ = _pcap_file(tmp_path, 2000)
    monkeypatch.setattr(cli, "PROGRESS_AFTER", 0.0)
    assert _cli("-r", str(src), "-w", str(tmp_path / "o.pcap"), "--progress") == 0
    err = capsys.readouterr().err
    assert "B/s" in err or "it/s" in err or "%" in err
    assert err.endswith("2000 packets read, 2000 accepted\n")


# -- tcpdump itself ------------------------------------------------------------------------------------------------
TCPDUMP_CORPUS = (
    "ip", "ip6", "arp", "tcp", "udp", "icmp", "icmp6", "vlan", "tcp port 80", "udp port 53", "port 443",
    "portrange 1000-2000", "tcp[tcpflags] & tcp-syn != 0", "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn",
    "host 10.1.2.3", "net 10.1.0.0/16", "not net 192.168.0.0/16", "src net 10.1.0.0/16 and dst port 443",
    "ip6 host 2001:db8:1::3", "greater 1000", "less 100", "len > 60 and len < 600", "ether broadcast",
    "ether multicast", "ip[6:2] & 0x1fff != 0", "ip[0] & 0xf != 5", "ip proto 50", "vlan and udp",
    "(tcp port 80 or tcp port 443 or udp port 53) and not net 192.168.0.0/16", "ip multicast", "igmp",
    "udp and (port 53 or port 123)", "tcp dst portrange 8000-9000 or udp src port 5353", "ip6 and tcp",
)  # fmt: skip


@pytest.fixture(scope="module")
def tcpdump() -> str:
    path = tcpdump_path()
    require(path is not None, "tcpdump")
    assert path is not None
    return path


def _tcpdump(tcpdump: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    as_root = ["-Z", "root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # it drops privileges
    return subprocess.run([tcpdump, *as_root, *args], capture_output=True, timeout=60)


def _tcpdump_pair(tmp_path: Path, tcpdump: str, src: Path, expression: str) -> Iterator[tuple[bytes, bytes]]:
    theirs, ours = tmp_path / "tcpdump.out", tmp_path / "bpfjit.out"
    result = _tcpdump(tcpdump, "-r", str(src), "-w", str(theirs), expression)
    assert result.returncode == 0, result.stderr
    assert cli.main(["filter", "-r", str(src), "-w", str(ours), expression]) == 0
    yield theirs.read_bytes(), ours.read_bytes()


def test_same_packets_as_tcpdump(tmp_path: Path, tcpdump: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`bpfjit filter -r IN -w OUT EXPR` writes exactly what `tcpdump -r IN -w OUT EXPR` writes: for a
    little-endian microsecond file, the same bytes."""
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(3000, seed=61))
    kept = 0
    for expression in TCPDUMP_CORPUS:
        for theirs, ours in _tcpdump_pair(tmp_path, tcpdump, src, expression):
            assert ours == theirs, expression
            kept += len(pcap_records(ours)[1]) > 0
    assert kept >= len(TCPDUMP_CORPUS) - 3  # the corpus exercises the mix


def test_same_packets_as_tcpdump_pcapng_and_nanoseconds(tmp_path: Path, tcpdump: str) -> None:
    """tcpdump writes classic pcap in microseconds whatever it reads: compare packets, not bytes."""
    packets = mix(800, seed=67, nano=True)
    nano = tmp_path / "nano.pcap"
    write_pcap(nano, packets, order=">", nano=True)
    ng = tmp_path / "in.pcapng"
    write_pcapng(ng, mix(800, seed=71))
    for src in (nano, ng):
        for expression in ("udp", "tcp port 443 or arp", "ip6"):
            for theirs, _ in _tcpdump_pair(tmp_path, tcpdump, src, expression):
                (tmp_path / "theirs.pcap").write_bytes(theirs)
                ours = [(d, w) for _, d, w in bpfjit.read_file(tmp_path / "bpfjit.out")]
                assert ours == [(d, w) for _, d, w in scapy_read(tmp_path / "theirs.pcap")], (src.name, expression)
                assert ours == [(d, w) for _, d, w in bpfjit.read_file(src, expression)]


def test_dump_matches_tcpdump(tmp_path: Path, tcpdump: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "raw.pcap"
    write_pcap(src, [p._replace(data=raw_ip(p.data)) for p in mix(5)], linktype=LINKTYPE_RAW, snaplen=9000)
    for flag in ("-d", "-dd", "-ddd"):
        expected = _tcpdump(tcpdump, "-r", str(src), flag, "tcp port 80").stdout.decode()
        assert _cli("-r", str(src), flag, "tcp port 80") == 0
        assert capsys.readouterr().out == expected



@pytest.mark.skipif(sys.platform != "linux", reason="MADV_POPULATE_READ is Linux's")
def test_walks_populate_the_mapping_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A walk maps the pages ahead of it a window at a time, up to a range's stop, and reads the same."""
    from bpfjit import capformat

    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(3000, seed=5))
    expected = capfile.count_file(src, ["tcp", "udp"])
    monkeypatch.setattr(capformat, "POPULATE_AHEAD", 64 << 10)
    size = src.stat().st_size
    with capformat.CaptureFile(src) as capture:
        capture._populate(100_000, capformat.U64_MAX)
        if capture._populated < 0:
            pytest.skip("this kernel has no MADV_POPULATE_READ (Linux 5.14)")
        assert capture._populated == 100_000 + (64 << 10)
        capture._populate(110_000, capformat.U64_MAX)  # less than half-way: nothing to do
        assert capture._populated == 100_000 + (64 << 10)
    with capformat.CaptureFile(src) as capture:
        capture._populate(10_000, 50_000)  # not past the stop
        assert capture._populated == 50_000
    assert capfile.count_file(src, ["tcp", "udp"], chunk=64) == expected
    with capformat.CaptureFile(src) as capture:
        arrays = capformat.ChunkArrays(64)
        assert sum(1 for _ in capture.events(capfile.LinkTypeFilters(None, capture), lambda: arrays)) > 10
        assert capture._populated == size  # the walk populated as it went
