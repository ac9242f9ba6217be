"""capparallel: threads over byte ranges of one file write exactly what one thread writes.

The ranges are made small here (a few KiB, hundreds per file) so that every boundary case comes up:
guesses that are right, guesses fooled by record headers inside packets (a pcap carried over TCP),
ranges inside one record, a bad record in the middle or at the end, -c stopping mid-range; pcapng
whose context (sections, interfaces) changes mid-file, met by the ranges in every order.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import savefiles
from needs import require, tcpdump_path
from pcapfiles import pcap_records, pcapng_blocks

import bpfjit
from bpfjit import Batch, capfile, capparallel, cli, packetmix, samples
from bpfjit.capfilters import LinkTypeFilters
from bpfjit.capformat import CaptureFile
from bpfjit.capwriter import Writer
from bpfjit.errors import CaptureFileError

EXPRESSIONS = [None, "tcp port 80", "udp", "ip[6:2] & 0x3fff != 0"]


def parallel(src: Path, dst: Path | None, expression: str | None, *, workers: int = 2, range_bytes: int,
             count: int | None = None) -> capparallel.Run:  # fmt: skip
    """filter_file with the range size chosen (filter_file's default makes one range of a small file)."""
    with CaptureFile(src) as capture:
        filters = LinkTypeFilters(expression, capture)
        writer = Writer(dst, capture) if dst is not None else None
        try:
            return capparallel.filter_ranges(capture, filters, writer, workers, count=count, chunk=97,
                                             range_bytes=range_bytes)  # fmt: skip
        finally:
            if writer is not None:
                writer.close()


def pcap_over_tcp(tmp_path: Path, inner_packets: int = 1500, seed: int = 3) -> Path:
    """A capture of a pcap file (of short snaps: several records per segment) being copied over TCP
    (port 80), between ordinary traffic: its payloads are full of valid, chained record headers with
    timestamps near the outer ones."""
    inner = tmp_path / "inner.pcap"
    snaps = [(data[:96], wirelen) for data, wirelen in packetmix.generate_list(inner_packets, seed=seed)]
    packetmix.write_pcap(inner, Batch.from_packets([d for d, _ in snaps], [w for _, w in snaps]))
    data = inner.read_bytes()
    other = packetmix.generate_list(len(data) // 1448 + 1, seed=seed + 1)
    frames: list[tuple[bytes, int]] = []
    for index, at in enumerate(range(0, len(data), 1448)):
        segment = samples.tcp(40000, 80, 0x18, data[at : at + 1448])
        frame = samples.ethernet(0x0800, samples.ipv4(6, segment))
        frames += [(frame, len(frame)), other[index]]
    outer = tmp_path / "pcap-over-tcp.pcap"
    packetmix.write_pcap(outer, Batch.from_packets([f for f, _ in frames], [w for _, w in frames]))
    return outer


def test_boundaries_and_guesses(tmp_path: Path) -> None:
    assert capparallel.boundaries(24, 1024, 2, 300) == [24, 357, 690, 1024]
    assert capparallel.boundaries(24, 100, 4, 1000) == [24, 100]
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(2000, seed=4))
    _, records = pcap_records(src.read_bytes())
    starts, at = set(), 24
    for record in records:
        starts.add(at)
        at += len(record)
    with CaptureFile(src) as capture:
        guesses = [capparallel.guess_pcap(capture, lo, lo + 5000) for lo in range(24, capture.size - 5000, 3001)]
        right = [g for g in guesses if g in starts]
        assert len(right) >= 0.9 * len(guesses) and len(guesses) > 100  # an ordinary file: nearly always right
        for lo, g in zip(range(24, capture.size, 3001), guesses, strict=False):
            if g in starts:  # and the first record start at or after lo
                assert not any(lo <= s < g for s in starts)
        assert capparallel.guess_pcap(capture, capture.size - 10, capture.size) is None  # no room for a header


@pytest.mark.parametrize("nano", [False, True])
def test_same_bytes_as_one_thread(tmp_path: Path, nano: bool) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(3000, seed=7), nanosecond=nano)
    for expression in EXPRESSIONS:
        one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        for workers, range_bytes in ((2, 4096), (3, 777), (2, 1 << 20)):
            run = parallel(src, many, expression, workers=workers, range_bytes=range_bytes)
            assert many.read_bytes() == one.read_bytes(), (expression, workers, range_bytes)
            assert (run.read, run.accepted[0]) == (expected.read, expected.accepted)
            assert run.redone <= run.ranges // 10  # an ordinary file: guesses are right
        assert bpfjit.filter_file(src, many, expression, workers=2) == expected
        assert many.read_bytes() == one.read_bytes()


def test_big_endian_and_long_records(tmp_path: Path) -> None:
    """A big-endian file whose records are longer than a range: ranges with no record start of their own."""
    src = tmp_path / "be.pcap"
    frames = [(bytes([i % 251]) * (9000 if i % 5 == 0 else 70), 9000) for i in range(600)]
    with src.open("wb") as f:
        f.write(struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, (data, wirelen) in enumerate(frames):
            f.write(struct.pack(">IIII", 1_700_000_000 + i // 100, i * 7, len(data), wirelen) + data)
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    for expression in (None, "len > 1000"):
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        run = parallel(src, many, expression, range_bytes=2000)
        assert many.read_bytes() == one.read_bytes() and run.accepted[0] == expected.accepted
        assert run.ranges > 500


def test_pcap_over_tcp_guesses_wrong_and_is_redone(tmp_path: Path) -> None:
    """Record headers inside payloads fool the guesses; the checked boundaries put every range right."""
    src = pcap_over_tcp(tmp_path)
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    for expression in (None, "tcp port 80", "not tcp port 80"):
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        run = parallel(src, many, expression, range_bytes=3000)
        assert many.read_bytes() == one.read_bytes(), expression
        assert (run.read, run.accepted[0]) == (expected.read, expected.accepted)
        assert run.redone > run.ranges // 3, (run.redone, run.ranges)  # most boundaries fall in payloads


def test_pcap_over_tcp_same_as_tcpdump(tmp_path: Path) -> None:
    path = tcpdump_path()
    require(path is not None, "tcpdump")
    assert path is not None
    src = pcap_over_tcp(tmp_path, inner_packets=800, seed=8)
    theirs, ours = tmp_path / "tcpdump.pcap", tmp_path / "ours.pcap"
    as_root = ["-Z", "root"] if __import__("os").geteuid() == 0 else []
    for expression in ("tcp port 80", "udp or arp"):
        result = subprocess.run([path, *as_root, "-r", str(src), "-w", str(theirs), expression], capture_output=True)
        assert result.returncode == 0, result.stderr
        run = parallel(src, ours, expression, range_bytes=2048)
        assert ours.read_bytes() == theirs.read_bytes() and run.redone > 0, expression


def _outcome(call: object) -> tuple[str, int | None]:
    try:
        call()  # type: ignore[operator]
    except CaptureFileError as error:
        return "error", error.offset
    return "ok", None


@pytest.mark.parametrize("damage", ["truncated", "bad caplen", "short header"])
def test_bad_records_raise_where_one_thread_does(tmp_path: Path, damage: str) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(3000, seed=12))
    data = bytearray(src.read_bytes())
    _, records = pcap_records(bytes(data))
    at = 24 + sum(len(r) for r in records[:1700])  # a record in the middle of the file
    if damage == "truncated":
        data = data[: at + 30]
    elif damage == "bad caplen":
        struct.pack_into("<I", data, at + 8, 10_000_000)
    else:
        data = data[: at + 9]
    src.write_bytes(bytes(data))
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    for expression in (None, "tcp"):
        expected = _outcome(lambda: bpfjit.filter_file(src, one, expression, workers=1))  # noqa: B023
        for range_bytes in (1000, 5000, 1 << 20):
            got = _outcome(lambda: parallel(src, many, expression, range_bytes=range_bytes))  # noqa: B023
            assert got == expected == ("error", at), (expression, range_bytes)
            assert many.read_bytes() == one.read_bytes()  # every record before the bad one, nothing after


def test_count_gives_the_same_first_packets(tmp_path: Path) -> None:
    src = pcap_over_tcp(tmp_path, inner_packets=600)
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    for expression in ("tcp port 80", "udp"):
        total = bpfjit.filter_file(src, None, expression).accepted
        for count in (1, 2, 17, total // 2, total - 1, total, total + 5):
            expected = bpfjit.filter_file(src, one, expression, count=count, workers=1)
            run = parallel(src, many, expression, range_bytes=2500, count=count)
            assert many.read_bytes() == one.read_bytes(), (expression, count)
            assert run.accepted[0] == expected.accepted == min(count, total)
            assert bpfjit.filter_file(src, many, expression, count=count, workers=2) == expected


def test_split_same_as_one_thread(tmp_path: Path) -> None:
    src = pcap_over_tcp(tmp_path, inner_packets=600)
    expressions = ["tcp port 80", "udp", "arp", "len > 600"]
    singles = []
    for index, expression in enumerate(expressions):
        singles.append(tmp_path / f"single-{index}.pcap")
        bpfjit.filter_file(src, singles[-1], expression, workers=1)
    outputs = [tmp_path / f"split-{i}.pcap" for i in range(len(expressions))]
    expected = capfile.split_file(src, outputs, expressions, workers=1)
    with CaptureFile(src) as capture:
        keep_all = LinkTypeFilters(None, capture)
        programs = [LinkTypeFilters(e, capture).program_for(0) for e in expressions]
        classify = bpfjit.compile_many([p for p in programs if p is not None])
        writers = [Writer(o, capture) for o in outputs]
        run = capparallel.split_ranges(capture, keep_all, lambda slot: classify, writers, 2, chunk=50,
                                       range_bytes=1500)  # fmt: skip
        for writer in writers:
            writer.close()
    assert run.redone > 0 and run.accepted == [s.accepted for s in expected]
    for output, single in zip(outputs, singles, strict=True):
        assert output.read_bytes() == single.read_bytes()
    buffers = [io.BytesIO() for _ in expressions]  # no file descriptor: the gathered path
    assert capfile.split_file(src, buffers, expressions, workers=2) == expected
    assert [b.getvalue() for b in buffers] == [s.read_bytes() for s in singles]


def test_workers_argument_and_pcapng(tmp_path: Path) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(200, seed=1))
    with CaptureFile(src) as capture:
        assert capparallel.workers_for(capture, None) == 1  # too small to pay
        assert capparallel.workers_for(capture, 3) == 3 and capparallel.workers_for(capture, 3, count=0) == 1
        with pytest.raises(ValueError, match="workers"):
            capparallel.workers_for(capture, 0)
    assert capparallel.default_workers(capparallel.PARALLEL_MIN_BYTES) >= 1
    ng = tmp_path / "mix.pcapng"
    cli.main(["filter", "-r", str(src), "-w", str(tmp_path / "copy.pcap")])
    from pcapfiles import mix, write_pcapng

    write_pcapng(ng, mix(50))
    with CaptureFile(ng) as capture:
        assert capparallel.workers_for(capture, 4) == 4 and capparallel.workers_for(capture, 4, count=3) == 4
    assert bpfjit.filter_file(ng, tmp_path / "o.pcapng", "tcp", workers=4).read == 50


def test_cli_jobs(tmp_path: Path) -> None:
    src = pcap_over_tcp(tmp_path, inner_packets=300)
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    assert cli.main(["filter", "-r", str(src), "-w", str(one), "-j", "1", "tcp port 80"]) == 0
    assert cli.main(["filter", "-r", str(src), "-w", str(many), "-j", "2", "tcp port 80"]) == 0
    assert one.read_bytes() == many.read_bytes() and len(one.read_bytes()) > 10_000
    template = str(tmp_path / "part-{}.pcap")
    assert cli.main(["filter", "-r", str(src), "-j", "2", "--split", template, "tcp port 80", "udp"]) == 0
    assert Path(template.format(0)).read_bytes() == one.read_bytes()
    # -w - to a pipe (written in order) and to a redirected file (written at offsets)
    command = [sys.executable, "-m", "bpfjit", "filter", "-r", str(src), "-w", "-", "-j", "2", "--no-progress",
               "tcp port 80"]  # fmt: skip
    piped = subprocess.run(command, capture_output=True, check=True)
    assert piped.stdout == one.read_bytes()
    redirected = tmp_path / "redirected.pcap"
    with redirected.open("wb") as stdout:
        subprocess.run(command, stdout=stdout, stderr=subprocess.DEVNULL, check=True)
    assert redirected.read_bytes() == one.read_bytes()


def test_records_longer_than_the_snapshot_are_cut_as_one_thread_cuts_them(tmp_path: Path) -> None:
    """A fuzzed/foreign file whose records exceed its snaplen: each range writes the cut records
    (Status.CUT) in their place, for filter_file and split_file alike."""
    src = tmp_path / "long.pcap"
    frames = packetmix.generate_list(400, seed=11)
    with src.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 100, 1))  # snaplen 100
        for i, (data, wirelen) in enumerate(frames):
            f.write(struct.pack("<IIII", 1_700_000_000, i, len(data), wirelen) + data)
    assert sum(len(d) > 100 for d, _ in frames) > 50
    one, many = tmp_path / "one.pcap", tmp_path / "many.pcap"
    for expression in (None, "tcp", "len > 200"):
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        run = parallel(src, many, expression, range_bytes=3000)
        assert many.read_bytes() == one.read_bytes() and run.accepted[0] == expected.accepted, expression
    outputs = [tmp_path / "a.pcap", tmp_path / "b.pcap"]
    singles = [tmp_path / "sa.pcap", tmp_path / "sb.pcap"]
    expressions = ["tcp", "not tcp"]
    for expression, single in zip(expressions, singles, strict=True):
        bpfjit.filter_file(src, single, expression, workers=1)
    with CaptureFile(src) as capture:
        keep_all = LinkTypeFilters(None, capture)
        programs = [LinkTypeFilters(e, capture).program_for(0) for e in expressions]
        classify = bpfjit.compile_many([p for p in programs if p is not None])
        writers = [Writer(o, capture) for o in outputs]
        capparallel.split_ranges(capture, keep_all, lambda slot: classify, writers, 2, chunk=50, range_bytes=3000)
        for writer in writers:
            writer.finish()
            writer.close()
    assert [o.read_bytes() for o in outputs] == [s.read_bytes() for s in singles]


# -- pcapng ---------------------------------------------------------------------------------------------------
def parallel_pcapng(src: Path, dst: Path, expression: str | None, *, range_bytes: int,
                    workers: int = 2) -> capparallel.Run:  # fmt: skip
    with CaptureFile(src) as capture:
        filters = LinkTypeFilters(expression, capture)
        writer = Writer(dst, capture)
        try:
            run = capparallel.filter_ranges(capture, filters, writer, workers, chunk=61, range_bytes=range_bytes)
            writer.finish()
            return run
        finally:
            writer.close()


def _pcapng_mix(order: str, n: int = 1500, seed: int = 5) -> tuple[list[savefiles.Record], bytes]:
    datas = [data for data, _ in packetmix.generate_list(n, seed=seed)]
    recs = savefiles.records(datas, nano=False, interfaces=3)
    return recs, savefiles.pcapng_bytes(recs, 1, order=order, interfaces=3)


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_ranges_same_bytes_as_one_thread(tmp_path: Path, order: str) -> None:
    _, data = _pcapng_mix(order)
    src, one, many = tmp_path / "in.pcapng", tmp_path / "one.pcapng", tmp_path / "many.pcapng"
    src.write_bytes(data)
    for expression in EXPRESSIONS:
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        for range_bytes in (997, 5000, 1 << 20):
            run = parallel_pcapng(src, many, expression, range_bytes=range_bytes)
            assert many.read_bytes() == one.read_bytes(), (expression, range_bytes)
            assert (run.read, run.accepted[0]) == (expected.read, expected.accepted)
            assert run.redone <= max(1, run.ranges // 10)
    assert bpfjit.filter_file(src, many, "udp", workers=2) == bpfjit.filter_file(src, one, "udp", workers=1)


def test_pcapng_blocks_in_the_middle(tmp_path: Path) -> None:
    """Statistics and name blocks mid-file are written in place by the walking thread; an interface
    block mid-file (a new context) is read by the settling thread, the ranges after walked in it."""
    _, data = _pcapng_mix("<", n=900)
    blocks = pcapng_blocks(data)
    isb = savefiles._block("<", 5, struct.pack("<III", 0, 0, 0))
    nrb = savefiles._block("<", 4, struct.pack("<HH", 0, 0))
    idb = savefiles._block("<", 1, struct.pack("<HHI", 101, 0, 65535))  # a RAW interface: a new link type
    raw_epb = savefiles._block("<", 6, struct.pack("<IIIII", 3, 0, 0, 28, 28) + bytes([0x45]) + bytes(27))
    out = bytearray()
    for index, (_, block) in enumerate(blocks):
        out += block
        if index in (200, 500):
            out += isb + nrb
        if index == 700:
            out += idb + raw_epb
    src, one, many = tmp_path / "in.pcapng", tmp_path / "one.pcapng", tmp_path / "many.pcapng"
    src.write_bytes(bytes(out))
    for expression in (None, "ip", "tcp port 80"):
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        run = parallel_pcapng(src, many, expression, range_bytes=3000)
        assert many.read_bytes() == one.read_bytes(), expression
        assert (run.read, run.accepted[0]) == (expected.read, expected.accepted) and run.ranges > 20


def test_pcapng_over_tcp_guesses_wrong_and_is_redone(tmp_path: Path) -> None:
    """pcapng blocks carried in TCP payloads, shifted so that they lie 4-aligned in the outer file (in
    Ethernet/IPv4/TCP they are 2 off, which the alignment rule alone rejects): guesses land inside them."""
    _, inner = _pcapng_mix("<", n=800, seed=8)
    inner = b"\0\0" + inner
    other = packetmix.generate_list(len(inner) // 1448 + 1, seed=9)
    recs = []
    for index, at in enumerate(range(0, len(inner), 1448)):
        frame = samples.ethernet(0x0800, samples.ipv4(6, samples.tcp(40000, 80, 0x18, inner[at : at + 1448])))
        recs += [frame, other[index][0]]
    src, one, many = tmp_path / "outer.pcapng", tmp_path / "one.pcapng", tmp_path / "many.pcapng"
    src.write_bytes(savefiles.pcapng_bytes(savefiles.records(recs, nano=False), 1))
    for expression in (None, "tcp port 80", "udp"):
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        run = parallel_pcapng(src, many, expression, range_bytes=2048)
        assert many.read_bytes() == one.read_bytes() and run.accepted[0] == expected.accepted
    assert run.redone >= 5, (run.redone, run.ranges)  # (14 of 212 here: the chained framing check is strict)


@pytest.mark.parametrize("damage", ["truncated", "bad trailer"])
def test_pcapng_bad_blocks_raise_where_one_thread_does(tmp_path: Path, damage: str) -> None:
    _, data = _pcapng_mix("<", n=600)
    blocks = pcapng_blocks(data)
    at = sum(len(b) for _, b in blocks[:400])
    bad_length = b"\x06\x00\x00\x00\xff\x00\x00\x00"  # an EPB whose length (255) is no multiple of 4
    damaged = data[: at + 20] if damage == "truncated" else data[:at] + bad_length + data[at + 8 :]
    src, one, many = tmp_path / "in.pcapng", tmp_path / "one.pcapng", tmp_path / "many.pcapng"
    src.write_bytes(damaged)
    with pytest.raises(CaptureFileError) as single:
        bpfjit.filter_file(src, one, "ip", workers=1)
    with pytest.raises(CaptureFileError) as ranged:
        parallel_pcapng(src, many, "ip", range_bytes=1500)
    assert (ranged.value.offset, str(ranged.value)) == (single.value.offset, str(single.value))
    assert many.read_bytes() == one.read_bytes()


# -- where the output goes: at offsets (a regular file) or in order (anything else) ------------------------
class _Sink:
    """An output of kind `kind` for a run, and the bytes the run wrote to it.

    path: a file bpfjit opens (written at offsets by the range threads); fd-offset: the caller's open
    file, already 5 bytes in (at offsets from there; the file offset ends after the records); append: a
    file opened for appending (pwritev would ignore offsets: in order); pipe: a pipe, read by a thread
    (in order); bytesio: a file object without a descriptor (gathered, in order)."""

    KINDS = ("path", "fd-offset", "append", "pipe", "bytesio")

    def __init__(self, kind: str, tmp_path: Path):
        import threading

        self.kind, self.path = kind, tmp_path / f"sink-{kind}.pcap"
        self.path.unlink(missing_ok=True)
        self.dst: object = self.path
        self.reader: threading.Thread | None = None
        if kind == "fd-offset":
            self.file = self.path.open("wb")
            self.file.write(b"12345")
            self.dst = self.file
        elif kind == "append":
            self.path.write_bytes(b"")
            self.file = self.path.open("ab")
            self.dst = self.file
        elif kind == "pipe":
            import os

            read_end, write_end = os.pipe()
            self.file = os.fdopen(write_end, "wb")
            self.dst, self.got = self.file, bytearray()

            def drain() -> None:
                with os.fdopen(read_end, "rb") as reader:
                    while data := reader.read(1 << 16):
                        self.got += data

            self.reader = threading.Thread(target=drain)
            self.reader.start()
        elif kind == "bytesio":
            self.dst = io.BytesIO()

    def value(self) -> bytes:
        """Close the output; the bytes the run wrote (for fd-offset: checks the prefix and that the
        file offset was left at the end, by writing after it)."""
        if self.kind == "path":
            return self.path.read_bytes()
        if self.kind == "bytesio":
            return cast(io.BytesIO, self.dst).getvalue()
        if self.kind == "fd-offset":
            self.file.write(b"tail")
        self.file.close()
        if self.kind == "pipe":
            assert self.reader is not None
            self.reader.join()
            return bytes(self.got)
        data = self.path.read_bytes()
        if self.kind == "fd-offset":
            assert data[:5] == b"12345" and data[-4:] == b"tail"
            return data[5:-4]
        return data


def run_into(sink: _Sink, src: Path, expression: str | None, *, range_bytes: int, count: int | None = None,
             chunk: int = 97) -> tuple[str, object]:  # fmt: skip
    """A parallel run into `sink`: ("ok", its Run) or ("error", the CaptureFileError's offset)."""
    with CaptureFile(src) as capture:
        filters = LinkTypeFilters(expression, capture)
        filters.helpers = ("gather",)
        writer = Writer(cast(Any, sink.dst), capture)
        try:
            run = capparallel.filter_ranges(capture, filters, writer, 2, count=count, chunk=chunk,
                                            range_bytes=range_bytes)  # fmt: skip
            writer.finish()
            return "ok", run
        except CaptureFileError as error:
            return "error", error.offset
        finally:
            writer.close()


PART_SIZES = [4 << 10, 64 << 10, 1 << 20, 64 << 20]  # the last: the whole file in one range


@pytest.mark.parametrize("kind", _Sink.KINDS)
def test_every_output_kind_gets_one_threads_bytes(tmp_path: Path, kind: str) -> None:
    """The adversarial capture (a pcap carried over TCP: most guesses wrong) and an ordinary one, parts
    from 4 KiB to 64 MiB: every kind of output gets exactly what one thread writes."""
    adversarial = pcap_over_tcp(tmp_path, inner_packets=1200)
    ordinary = tmp_path / "mix.pcap"
    packetmix.write_pcap(ordinary, packetmix.generate(4000, seed=21))
    for src in (adversarial, ordinary):
        for expression in (None, "tcp port 80", "udp and (port 53 or port 123)"):
            one = tmp_path / "one.pcap"
            expected = bpfjit.filter_file(src, one, expression, workers=1)
            for range_bytes in PART_SIZES:
                sink = _Sink(kind, tmp_path)
                outcome, run = run_into(sink, src, expression, range_bytes=range_bytes)
                assert sink.value() == one.read_bytes(), (src.name, expression, range_bytes)
                run = cast(capparallel.Run, run)
                assert outcome == "ok" and (run.read, run.accepted[0]) == (expected.read, expected.accepted)
                if src is adversarial and range_bytes == 4 << 10:
                    assert run.redone > run.ranges // 3  # the redo path was taken, and written right


@pytest.mark.parametrize("kind", ["path", "pipe"])
def test_damage_and_count_on_both_write_paths(tmp_path: Path, kind: str) -> None:
    """A truncated file: the records before the damage, then the error at one thread's offset; -c: the
    same first N records — written at offsets and in order alike."""
    src = pcap_over_tcp(tmp_path, inner_packets=900, seed=5)
    data = src.read_bytes()
    _, records = pcap_records(data)
    at = 24 + sum(len(r) for r in records[: 2 * len(records) // 3])
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(data[: at + 30])
    one = tmp_path / "one.pcap"
    for expression in (None, "tcp port 80"):
        assert _outcome(lambda: bpfjit.filter_file(damaged, one, expression, workers=1)) == ("error", at)  # noqa: B023
        for range_bytes in (4 << 10, 1 << 20):
            sink = _Sink(kind, tmp_path)
            assert run_into(sink, damaged, expression, range_bytes=range_bytes) == ("error", at)
            assert sink.value() == one.read_bytes()
        total = bpfjit.filter_file(src, None, expression).accepted
        for count in (1, total // 3, total - 1, total + 1):
            expected = bpfjit.filter_file(src, one, expression, count=count, workers=1)
            sink = _Sink(kind, tmp_path)
            outcome, run = run_into(sink, src, expression, range_bytes=4 << 10, count=count)
            assert sink.value() == one.read_bytes() and outcome == "ok", (expression, count)
            assert cast(capparallel.Run, run).accepted[0] == expected.accepted


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_counting_only_on_threads(tmp_path: Path, fmt: str) -> None:
    """No output (dst None): the counts of one thread (pcapng: blocks and new contexts mid-file)."""
    if fmt == "pcap":
        src = pcap_over_tcp(tmp_path, inner_packets=400)
    else:
        src = _write_blocks(tmp_path / "in.pcapng", pcapng_changing_context(">"))
    for expression in (None, "tcp port 80"):
        one = bpfjit.filter_file(src, None, expression, workers=1)
        assert bpfjit.filter_file(src, None, expression, workers=2) == one
        with CaptureFile(src) as capture:
            run = capparallel.filter_ranges(capture, LinkTypeFilters(expression, capture), None, 2, chunk=50,
                                            range_bytes=4096)  # fmt: skip
        assert run.accepted[0] == bpfjit.filter_file(src, None, expression).accepted


# -- pcapng on the same engine: contexts that change mid-file, split, -c, outputs, damage -----------------------
SHB, IDB, ISB, NRB, EPB, CUSTOM = 0x0A0D0D0A, 1, 5, 4, 6, 0x00000BAD


def _shb(order: str, section_length: int = -1) -> bytes:
    return savefiles._block(order, SHB, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, section_length))


def _idb(order: str, linktype: int, snaplen: int = 262144) -> bytes:
    return savefiles._block(order, IDB, struct.pack(order + "HHI", linktype, 0, snaplen))


def _epb(order: str, iface: int, index: int, data: bytes, wirelen: int) -> bytes:
    ticks = savefiles.US_BASE * 10**6 + index * 1234
    body = struct.pack(order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), max(wirelen, len(data)))
    return savefiles._block(order, EPB, body + data)


def pcapng_changing_context(first: str, n: int = 1800, seed: int = 31) -> list[tuple[str, bytes]]:
    """The blocks (kind, bytes) of a pcapng file whose context changes mid-file, several times: section
    1 in byte order `first` (two Ethernet interfaces of different snap lengths; statistics and name
    blocks; a RAW interface described after 200 packets: a new link type), section 2 in the other byte
    order with its length given (written as unknown) and Ethernet (snaplen 128) and LINUX_SLL
    interfaces, a custom block, section 3 in `first` order again; a statistics block before the
    output's first record (held, as one thread holds it)."""
    other = ">" if first == "<" else "<"
    frames = packetmix.generate_list(n, seed=seed)
    third = n // 3
    blocks = [("shb", _shb(first)), ("idb", _idb(first, 1)), ("idb", _idb(first, 1, 65535)),
              ("isb", savefiles._block(first, ISB, struct.pack(first + "III", 0, 0, 0)))]  # fmt: skip
    for i in range(third):
        if i in (60, 500):
            blocks += [("isb", savefiles._block(first, ISB, struct.pack(first + "III", 1, 0, 0))),
                       ("nrb", savefiles._block(first, NRB, struct.pack(first + "HH", 0, 0)))]  # fmt: skip
        if i == 200:
            blocks.append(("idb", _idb(first, 101)))  # interface 2: RAW
        iface = i % 3 if i > 200 else i % 2
        data, wirelen = frames[i]
        if iface == 1:
            data = data[:65535]
        if iface == 2 and len(data) >= 14:
            data, wirelen = data[14:], wirelen - 14
        blocks.append(("epb", _epb(first, iface, i, data, wirelen)))
    blocks += [("shb", _shb(other, 123456)), ("idb", _idb(other, 1, 128)), ("idb", _idb(other, 113))]
    for i in range(third, 2 * third):
        data, wirelen = frames[i]
        if i % 2 and len(data) >= 14:
            sll = struct.pack("!HHH8sH", 0, 1, 6, data[6:12] + b"\0\0", struct.unpack("!H", data[12:14])[0])
            data, wirelen = sll + data[14:], wirelen + 2
        else:
            data = data[:128]
        if i == third + 100:
            blocks.append(("custom", savefiles._block(other, CUSTOM, struct.pack(other + "I", 32473) + b"bpfjit!!")))
        blocks.append(("epb", _epb(other, i % 2, i, data, wirelen)))
    blocks += [("shb", _shb(first)), ("idb", _idb(first, 1))]
    for i in range(2 * third, n):
        blocks.append(("epb", _epb(first, 0, i, *frames[i])))
        if i % 250 == 0:
            blocks.append(("isb", savefiles._block(first, ISB, struct.pack(first + "III", 0, 0, 0))))
    return blocks


def _write_blocks(path: Path, blocks: list[tuple[str, bytes]]) -> Path:
    path.write_bytes(b"".join(block for _, block in blocks))
    return path


def _offsets(blocks: list[tuple[str, bytes]], kind: str) -> list[int]:
    """Where each block of `kind` starts."""
    found, at = [], 0
    for name, block in blocks:
        if name == kind:
            found.append(at)
        at += len(block)
    return found


PCAPNG_EXPRESSIONS = [None, "ip", "tcp port 80", "udp and (port 53 or port 123)"]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("kind", _Sink.KINDS)
def test_pcapng_context_changes_mid_file(tmp_path: Path, order: str, kind: str) -> None:
    """New interfaces and sections (both byte orders, new link types) and other blocks mid-file, ranges
    of 4 KiB to 64 MiB, to every kind of output (at offsets or in order): one thread's bytes."""
    src = _write_blocks(tmp_path / "in.pcapng", pcapng_changing_context(order))
    one = tmp_path / "one.pcapng"
    for expression in PCAPNG_EXPRESSIONS:
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        assert expected.read == 1800 and one.read_bytes().count(b"bpfjit!!") == 1
        for range_bytes in PART_SIZES:
            sink = _Sink(kind, tmp_path)
            outcome, run = run_into(sink, src, expression, range_bytes=range_bytes)
            assert sink.value() == one.read_bytes(), (expression, range_bytes)
            run = cast(capparallel.Run, run)
            assert outcome == "ok" and (run.read, run.accepted[0]) == (expected.read, expected.accepted)
            assert run.ranges > 100 or range_bytes > 4 << 10
        assert bpfjit.filter_file(src, one, expression, workers=2) == expected


def test_pcapng_held_blocks_before_the_first_record(tmp_path: Path) -> None:
    """Blocks (statistics, a new interface) in ranges with no accepted record before them are held
    until the output opens; if none is ever accepted, the output is the header blocks alone."""
    src = _write_blocks(tmp_path / "in.pcapng", pcapng_changing_context("<"))
    one = tmp_path / "one.pcapng"
    for expression in ("ip6 and tcp port 4", "len > 100000", "tcp port 80"):
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        for range_bytes in (4 << 10, 64 << 10):
            sink = _Sink("path", tmp_path)
            outcome, run = run_into(sink, src, expression, range_bytes=range_bytes)
            assert sink.value() == one.read_bytes() and outcome == "ok", expression
            assert cast(capparallel.Run, run).accepted[0] == expected.accepted


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_count_gives_the_same_first_packets(tmp_path: Path, order: str) -> None:
    """-c N on pcapng: the count reached before, inside and after a change of context."""
    blocks = pcapng_changing_context(order)
    src = _write_blocks(tmp_path / "in.pcapng", blocks)
    one, many = tmp_path / "one.pcapng", tmp_path / "many.pcapng"
    for expression in (None, "tcp port 80", "udp"):
        total = bpfjit.filter_file(src, None, expression).accepted
        for count in (1, 2, 150, 201, 250, total // 3, total // 2, 2 * total // 3, total - 1, total, total + 3):
            expected = bpfjit.filter_file(src, one, expression, count=count, workers=1)
            for range_bytes in (4 << 10, 64 << 10):
                run = parallel(src, many, expression, range_bytes=range_bytes, count=count)
                assert many.read_bytes() == one.read_bytes(), (expression, count, range_bytes)
                assert run.accepted[0] == expected.accepted == min(count, total)
            assert bpfjit.filter_file(src, many, expression, count=count, workers=2) == expected
            assert many.read_bytes() == one.read_bytes()


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_split_same_as_one_thread(tmp_path: Path, order: str) -> None:
    """split_file on pcapng: each output one thread's bytes, with the contexts changing mid-file."""
    src = _write_blocks(tmp_path / "in.pcapng", pcapng_changing_context(order))
    expressions = ["tcp port 80", "udp", "ip6", "len > 600"]
    singles = [tmp_path / f"single-{i}.pcapng" for i in range(len(expressions))]
    for expression, single in zip(expressions, singles, strict=True):
        bpfjit.filter_file(src, single, expression, workers=1)
    outputs = [tmp_path / f"split-{i}.pcapng" for i in range(len(expressions))]
    expected = capfile.split_file(src, outputs, expressions, workers=1)
    assert [o.read_bytes() for o in outputs] == [s.read_bytes() for s in singles]
    for range_bytes in PART_SIZES:
        with CaptureFile(src) as capture:
            keep_all = LinkTypeFilters(None, capture)
            keep_all.helpers = ("gather",)
            writers = [Writer(o, capture) for o in outputs]
            run = capparallel.split_ranges(capture, keep_all, capfile.slot_classifiers(capture, expressions),
                                           writers, 2, chunk=50, range_bytes=range_bytes)  # fmt: skip
            for writer in writers:
                writer.finish()
                writer.close()
        assert run.accepted == [s.accepted for s in expected], range_bytes
        assert [o.read_bytes() for o in outputs] == [s.read_bytes() for s in singles], range_bytes
    assert capfile.split_file(src, outputs, expressions, workers=2) == expected
    assert [o.read_bytes() for o in outputs] == [s.read_bytes() for s in singles]
    buffers = [io.BytesIO() for _ in expressions]  # no file descriptor: in order
    assert capfile.split_file(src, buffers, expressions, workers=2) == expected
    assert [b.getvalue() for b in buffers] == [s.read_bytes() for s in singles]


def test_pcapng_over_tcp_split_and_count(tmp_path: Path) -> None:
    """The adversarial pcapng (blocks carried 4-aligned in TCP payloads) through split and -c too."""
    _, inner = _pcapng_mix("<", n=800, seed=8)
    inner = b"\0\0" + inner
    other = packetmix.generate_list(len(inner) // 1448 + 1, seed=9)
    recs = []
    for index, at in enumerate(range(0, len(inner), 1448)):
        frame = samples.ethernet(0x0800, samples.ipv4(6, samples.tcp(40000, 80, 0x18, inner[at : at + 1448])))
        recs += [frame, other[index][0]]
    src, one = tmp_path / "outer.pcapng", tmp_path / "one.pcapng"
    src.write_bytes(savefiles.pcapng_bytes(savefiles.records(recs, nano=False), 1))
    for kind in ("path", "pipe"):
        for count in (None, 5, 300):
            expected = bpfjit.filter_file(src, one, "tcp port 80", count=count, workers=1)
            sink = _Sink(kind, tmp_path)
            outcome, run = run_into(sink, src, "tcp port 80", range_bytes=4 << 10, count=count)
            assert sink.value() == one.read_bytes() and outcome == "ok", (kind, count)
            assert cast(capparallel.Run, run).accepted[0] == expected.accepted
    expressions = ["tcp port 80", "not tcp port 80"]
    singles = [tmp_path / "a1.pcapng", tmp_path / "b1.pcapng"]
    for expression, single in zip(expressions, singles, strict=True):
        bpfjit.filter_file(src, single, expression, workers=1)
    outputs = [tmp_path / "a.pcapng", tmp_path / "b.pcapng"]
    with CaptureFile(src) as capture:
        writers = [Writer(o, capture) for o in outputs]
        run = capparallel.split_ranges(capture, LinkTypeFilters(None, capture), capfile.slot_classifiers(
            capture, expressions), writers, 2, chunk=40, range_bytes=2048)  # fmt: skip
        for writer in writers:
            writer.finish()
            writer.close()
    assert [o.read_bytes() for o in outputs] == [s.read_bytes() for s in singles] and run.redone >= 5


def _damaged(blocks: list[tuple[str, bytes]], damage: str) -> tuple[bytes, int]:
    """The file of `blocks` damaged as `damage` says, and the offset one thread reports."""
    data = b"".join(block for _, block in blocks)
    epbs, idbs, isbs, shbs = (_offsets(blocks, kind) for kind in ("epb", "idb", "isb", "shb"))
    if damage == "truncated in section 2":  # in the other byte order
        at = epbs[700]
        return data[: at + 20], at
    if damage == "truncated block header":
        return data + b"\x06\0\0\0\x20", len(data)
    if damage == "bad interface block":  # the RAW IDB's trailer: read by the settling thread
        at = idbs[2]
        bad = bytearray(data)
        bad[at + len(_idb("<", 101)) - 4] ^= 0x40
        return bytes(bad), at
    if damage == "bad statistics block":  # read in place by whichever thread walks it
        at = isbs[3]
        bad = bytearray(data)
        bad[at + 4] = 0x0D  # length 13 ... : no multiple of 4
        return bytes(bad), at
    if damage == "unknown interface in section 3":  # an EPB naming interface 1 where the section has 1
        at = epbs[1500]
        bad = bytearray(data)
        bad[at + 8] = 1
        return bytes(bad), at
    assert damage == "truncated section header"
    at = shbs[2]
    return data[: at + 20], at


@pytest.mark.parametrize("damage", ["truncated in section 2", "truncated block header", "bad interface block",
                                    "bad statistics block", "unknown interface in section 3",
                                    "truncated section header"])  # fmt: skip
def test_pcapng_damage_raises_where_one_thread_does(tmp_path: Path, damage: str) -> None:
    """Records (and blocks) before the damage written, then the same error at the same offset, whether
    the damage is met by a walking thread or by the settling thread; to a file and to a pipe."""
    data, at = _damaged(pcapng_changing_context("<"), damage)
    src, one = tmp_path / "in.pcapng", tmp_path / "one.pcapng"
    src.write_bytes(data)
    for expression in (None, "tcp port 80"):
        with pytest.raises(CaptureFileError) as single:
            bpfjit.filter_file(src, one, expression, workers=1)
        assert single.value.offset in (at, at + 8), single.value  # (a section header's magic: at + 8)
        for kind in ("path", "pipe"):
            for range_bytes in (4 << 10, 64 << 10, 64 << 20):
                sink = _Sink(kind, tmp_path)
                with CaptureFile(src) as capture:
                    writer = Writer(cast(Any, sink.dst), capture)
                    with pytest.raises(CaptureFileError) as ranged:
                        capparallel.filter_ranges(capture, LinkTypeFilters(expression, capture), writer, 2, chunk=97,
                                                  range_bytes=range_bytes)  # fmt: skip
                    writer.close()
                assert (ranged.value.offset, str(ranged.value)) == (single.value.offset, str(single.value))
                assert sink.value() == one.read_bytes(), (expression, kind, range_bytes)


def test_pcapng_cli_jobs_count_and_split(tmp_path: Path) -> None:
    src = _write_blocks(tmp_path / "in.pcapng", pcapng_changing_context(">"))
    for extra in ([], ["-c", "321"]):
        one, many = tmp_path / "one.pcapng", tmp_path / "many.pcapng"
        assert cli.main(["filter", "-r", str(src), "-w", str(one), "-j", "1", *extra, "ip"]) == 0
        assert cli.main(["filter", "-r", str(src), "-w", str(many), "-j", "2", *extra, "ip"]) == 0
        assert one.read_bytes() == many.read_bytes()
    template = str(tmp_path / "part-{}.pcapng")
    assert cli.main(["filter", "-r", str(src), "-j", "2", "--split", template, "ip", "udp"]) == 0
    bpfjit.filter_file(src, one, "ip", workers=1)
    assert Path(template.format(0)).read_bytes() == one.read_bytes()


def test_pcapng_every_range_walked_ahead_in_the_first_context(tmp_path: Path) -> None:
    """The schedule where every range is walked before any is settled (deterministic, on one thread):
    each range after a section or interface block was walked in an older context and is walked again;
    the ranges walked in the context they lie in are not; the bytes are one thread's."""
    blocks = pcapng_changing_context("<")
    src = _write_blocks(tmp_path / "in.pcapng", blocks)
    one, many = tmp_path / "one.pcapng", tmp_path / "many.pcapng"
    for expression in (None, "tcp port 80"):
        expected = bpfjit.filter_file(src, one, expression, workers=1)
        with CaptureFile(src) as capture:
            writer = Writer(many, capture)
            walker = capparallel._walker(capture, LinkTypeFilters(expression, capture), 97,
                                         capparallel.filter_consume(capture, True), 1, 1)  # fmt: skip
            bounds = capparallel.boundaries(walker.first, capture.size, 1, 4096)
            for block in walker.lead:
                writer.block(capparallel._bytes(capture, block))
            run = capparallel._Ranges(walker, [writer], bounds, len(bounds), None, None)
            walks = []
            for index in range(run.ranges):
                run.claimed = index + 1
                walks.append(run.task(index))
            for index in reversed(range(len(walks))):  # handed in last to first: settled together, in order
                for write in run.settle(index, walks[index]):
                    run.write(write)
            writer.placed(cast(int, run.first[0]), cast(int, run.position[0]))
            writer.finish()
            writer.close()
        assert many.read_bytes() == one.read_bytes() and run.accepted[0] == expected.accepted
        first_change = _offsets(blocks, "idb")[2]  # the RAW interface, 200 packets in
        stale = sum(1 for lo in bounds[1:-1] if lo > first_change)
        assert run.chain.redone == stale > 100  # (every range here has a record start of its own)
