"""capparts: byte-range parts walked separately (any order, pickled between) and assembled exactly.

Parts are made small (a few KiB) so that guesses fooled by a pcap carried over TCP, parts inside one
record, a bad record mid-file, pcapng sections joined one after another and an interface described
mid-section all come up; outputs and counts must equal filter_file's and count_file's, byte for byte.
"""

from __future__ import annotations

import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import savefiles
from pcapfiles import pcapng_blocks
from test_parallel import pcap_over_tcp

import bpfjit
from bpfjit import capfile, capparts, packetmix, samples
from bpfjit.capformat import CaptureFile
from bpfjit.errors import CaptureFileError
from bpfjit.walkers import Status

EXPRESSIONS = ["tcp port 80", "udp", "ip[6:2] & 0x3fff != 0", "arp or icmp"]


def walk_all(parts: list[capparts.Part], walk: object, seed: int) -> list[capparts.PartResult]:
    """Each part walked in a shuffled order, its result through pickle (as from another process)."""
    order = list(parts)
    random.Random(seed).shuffle(order)
    return [pickle.loads(pickle.dumps(walk(part))) for part in order]  # type: ignore[operator]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("parts")
    mix = tmp / "mix.pcap"
    packetmix.write_pcap(mix, packetmix.generate(3000, seed=31))
    return {"mix": mix, "over_tcp": pcap_over_tcp(tmp)}


@pytest.mark.parametrize("name", ["mix", "over_tcp"])
@pytest.mark.parametrize("part_bytes", [4096, 60_000, 1 << 30])
def test_filter_parts_equal_filter_file(files: dict[str, Path], tmp_path: Path, name: str, part_bytes: int) -> None:
    src = files[name]
    parts = capparts.plan(src, part_bytes)
    assert len(parts) == (1 if part_bytes > src.stat().st_size else pytest.approx(src.stat().st_size / part_bytes, 0.1))
    single, assembled = tmp_path / "single.pcap", tmp_path / "assembled.pcap"
    for expression in [None, "tcp port 80"]:
        expected = bpfjit.filter_file(src, single, expression, workers=1)

        def walk(part: capparts.Part, at: int | None = None, context: capparts.ContextKey | None = None,
                 e: str | None = expression) -> capparts.PartResult:  # fmt: skip
            return capparts.filter_part(part, assembled, e, start=at, context=context)

        results = walk_all(parts, walk, seed=part_bytes)
        _, redone = capparts.verify(results, walk)
        if name == "over_tcp" and part_bytes == 4096:
            assert redone > 10  # the guesses were fooled, and put right
        stats = capparts.assemble_filter(results, assembled, expression)
        assert stats == expected and assembled.read_bytes() == single.read_bytes() and expected.accepted > 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["assembled.pcap", "single.pcap"]  # no part file left


@pytest.mark.parametrize("name", ["mix", "over_tcp"])
def test_parts_placed_in_any_order_and_again(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    """`settle` lays the output out, `place` copies each part in at its offset (any order, in another
    process, twice), `settle` run again leaves placed parts be, a part placed after `finish` removed
    its file is walked again: the bytes and stats `filter_file` gives, no part file left."""
    import pickle

    src, single, dst = files[name], tmp_path / "single.pcap", tmp_path / "placed.pcap"
    dst.write_bytes(b"stale bytes of an older run, longer than the header" * 10_000)
    expected = bpfjit.filter_file(src, single, "tcp", workers=1)
    results = walk_all(capparts.plan(src, 4096), lambda p: capparts.filter_part(p, dst, "tcp"), seed=11)
    layout = capparts.settle(results, dst, "tcp")
    assert dst.stat().st_size == expected.written and pickle.loads(pickle.dumps(layout)) == layout
    order = list(range(len(layout.offsets)))
    random.Random(12).shuffle(order)
    half = len(order) // 2
    for index in order[:half]:
        capparts.place(layout, index)
    assert capparts.settle(results, dst, "tcp") == layout  # settled again (its task re-run): same layout
    script = ("import pickle, sys; from bpfjit import capparts; layout, order = pickle.load(sys.stdin.buffer); "
              "print(sum(capparts.place(layout, i) for i in order))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], input=pickle.dumps((layout, order[half:] + order[:3])),
                         capture_output=True, check=True)  # fmt: skip
    assert int(out.stdout) > 0
    assert capparts.finish(layout) == expected and dst.read_bytes() == single.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["placed.pcap", "single.pcap"]
    placed = capparts.place(layout, order[0])  # after finish: walked again, the same bytes to the same place
    assert dst.read_bytes() == single.read_bytes() and placed == layout.parts[order[0]].bytes[0]


@pytest.mark.parametrize("name", ["mix", "over_tcp"])
def test_count_parts_equal_count_file(files: dict[str, Path], name: str) -> None:
    src = files[name]
    expected = capfile.count_file(src, EXPRESSIONS)
    results = walk_all(capparts.plan(src, 5000), lambda p: capparts.count_part(p, EXPRESSIONS), seed=1)
    assert capparts.assemble_count(results, EXPRESSIONS) == expected
    # and count_file counts what filter_file accepts, with the wire bytes read_batches sees
    for i, expression in enumerate(EXPRESSIONS):
        chunks = list(capfile.read_batches(src, expression))
        accepted = bpfjit.filter_file(src, None, expression).accepted
        assert expected.packets[i] == accepted == sum(len(c.batch) for c in chunks)
        assert expected.bytes[i] == sum(int(c.batch.wirelens.astype(np.uint64).sum()) for c in chunks)
    assert max(expected.packets) > 0 and expected.read == bpfjit.filter_file(src, None).read
    assert name != "mix" or min(expected.packets) > 0


def test_a_bad_record_mid_file(files: dict[str, Path], tmp_path: Path) -> None:
    data = bytearray(files["mix"].read_bytes())
    at = 24
    for _ in range(1500):  # the 1500th record's header gets an impossible caplen
        at += 16 + int.from_bytes(data[at + 8 : at + 12], "little")
    bad_at = at
    data[bad_at + 8 : bad_at + 12] = (1 << 30).to_bytes(4, "little")
    src = tmp_path / "bad.pcap"
    src.write_bytes(bytes(data))
    single, assembled = tmp_path / "single.pcap", tmp_path / "assembled.pcap"
    with pytest.raises(CaptureFileError) as one:
        bpfjit.filter_file(src, single, "udp", workers=1)
    results = walk_all(capparts.plan(src, 7000), lambda p: capparts.filter_part(p, assembled, "udp"), seed=2)
    with pytest.raises(CaptureFileError) as parts:
        capparts.assemble_filter(results, assembled, "udp")
    assert str(parts.value) == str(one.value) and parts.value.offset == bad_at
    assert assembled.read_bytes() == single.read_bytes() and len(single.read_bytes()) > 24
    counts = capparts.assemble_count(walk_all(capparts.plan(src, 7000), lambda p: capparts.count_part(p, ["udp"]),
                                              seed=3), ["udp"], errors="report")  # fmt: skip
    assert counts.error is not None and counts.error.offset == bad_at
    single_counts = capfile.count_file(src, ["udp"], errors="report")
    assert counts[:3] == single_counts[:3] and str(counts.error) == str(single_counts.error)
    assert counts.read == 1500 and counts.packets[0] > 0


# -- pcapng ---------------------------------------------------------------------------------------------------
def pcapng_mix(order: str, n: int, seed: int) -> bytes:
    """Three interfaces (one IDB each, before the first packet), packets spread over them."""
    datas = [data for data, _ in packetmix.generate_list(n, seed=seed)]
    return savefiles.pcapng_bytes(savefiles.records(datas, nano=False, interfaces=3), 1, order=order, interfaces=3)


def pcapng_blocks_mid_file(n: int = 900) -> bytes:
    """Statistics and name-resolution blocks among the packets (written in place by a part), then an
    interface block of a new link type after packet 700 (the rest of the file is walked in one piece)."""
    isb = savefiles._block("<", 5, struct.pack("<III", 0, 0, 0))
    nrb = savefiles._block("<", 4, struct.pack("<HH", 0, 0))
    idb = savefiles._block("<", 1, struct.pack("<HHI", 101, 0, 65535))
    raw_epb = savefiles._block("<", 6, struct.pack("<IIIII", 3, 0, 0, 28, 28) + bytes([0x45]) + bytes(27))
    out = bytearray()
    for index, (_, block) in enumerate(pcapng_blocks(pcapng_mix("<", n, seed=6))):
        out += block
        if index in (200, 500):
            out += isb + nrb
        if index == 700:
            out += idb + raw_epb
    return bytes(out)


def pcapng_over_tcp(n: int = 800, inner: bytes | None = None) -> bytes:
    """pcapng blocks (`inner`, default a section of `n` packets) carried in TCP payloads, shifted to lie
    4-aligned in the outer file: guesses land inside them (as `test_parallel` does for threads), and
    section headers are found there."""
    inner = b"\0\0" + (pcapng_mix("<", n, seed=8) if inner is None else inner)
    other = packetmix.generate_list(len(inner) // 1448 + 1, seed=9)
    recs = []
    for index, at in enumerate(range(0, len(inner), 1448)):
        frame = samples.ethernet(0x0800, samples.ipv4(6, samples.tcp(40000, 80, 0x18, inner[at : at + 1448])))
        recs += [frame, other[index][0]]
    return savefiles.pcapng_bytes(savefiles.records(recs, nano=False), 1)


def pcapng_sections(n: int = 900) -> bytes:
    """Sections joined as `cat` joins rotated captures: little-endian Ethernet on three interfaces;
    big-endian with nanosecond timestamps on two; one with no packet; raw IP (link type 101) on one."""
    datas = [data for data, _ in packetmix.generate_list(n, seed=12)]
    second = savefiles.pcapng_bytes(savefiles.records(datas[: n // 2], nano=True, interfaces=2), 1, order=">",
                                    nano=True, interfaces=2)  # fmt: skip
    empty = savefiles.pcapng_bytes([], 1, order="<", interfaces=1)
    third = savefiles.pcapng_bytes(savefiles.records([d[14:] for d in datas[n // 2 :]], nano=False), 101)
    return pcapng_mix("<", 700, seed=11) + second + empty + third


def block_starts(data: bytes) -> list[int]:
    """Where each block of a pcapng file starts (`pcapng_blocks` order)."""
    starts, at = [], 0
    for _, block in pcapng_blocks(data):
        starts.append(at)
        at += len(block)
    return starts


def pcapng_late_interfaces(n: int = 1200) -> bytes:
    """Interfaces described at their first packet, as scapy's writer does: a raw-IP interface after
    packet 300, then its packets every 40th block on; an Ethernet one after packet 800, used once."""
    idb_raw = savefiles._block("<", 1, struct.pack("<HHI", 101, 0, 65535))
    idb_eth = savefiles._block("<", 1, struct.pack("<HHI", 1, 0, 65535))
    out = bytearray()
    for index, (_, block) in enumerate(pcapng_blocks(pcapng_mix("<", n, seed=17))):
        out += block
        if index == 300:
            out += idb_raw
        if index > 300 and index % 40 == 0:
            ip = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]) + bytes(8)
            out += savefiles._block("<", 6, struct.pack("<IIIII", 3, 0, index, 28, 28) + ip)
        if index == 800:
            out += idb_eth + savefiles._block("<", 6, struct.pack("<IIIII", 4, 0, index, 60, 60) + bytes(60))
    return bytes(out)


def section_heads(data: bytes) -> list[int]:
    """Where the section header blocks of a pcapng file are."""
    heads, at = [], 0
    for btype, block in pcapng_blocks(data):
        heads += [at] if btype == 0x0A0D0D0A else []
        at += len(block)
    return heads


@pytest.fixture(scope="module")
def ng_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ng")
    made = {"le": pcapng_mix("<", 1500, seed=5), "be": pcapng_mix(">", 1500, seed=5),
            "blocks": pcapng_blocks_mid_file(), "over_tcp": pcapng_over_tcp(), "sections": pcapng_sections(),
            "sections_idb": pcapng_blocks_mid_file() + pcapng_mix(">", 600, seed=13),
            "late_interfaces": pcapng_late_interfaces(),
            "over_tcp_sections": pcapng_over_tcp(inner=pcapng_sections(400))}  # fmt: skip
    for name, data in made.items():
        (tmp / f"{name}.pcapng").write_bytes(data)
    return {name: tmp / f"{name}.pcapng" for name in made}


def assembled(src: Path, dst: Path, expression: str | None, part_bytes: int,
              seed: int) -> tuple[capfile.FileStats, int]:  # fmt: skip
    """filter parts walked in a shuffled order, checked and assembled into `dst`; and the parts redone."""

    def walk(part: capparts.Part, at: int | None = None,
             context: capparts.ContextKey | None = None) -> capparts.PartResult:  # fmt: skip
        return capparts.filter_part(part, dst, expression, start=at, context=context)

    results = walk_all(capparts.plan(src, part_bytes), walk, seed=seed)
    _, redone = capparts.verify(results, walk)
    return capparts.assemble_filter(results, dst, expression), redone


@pytest.mark.parametrize("name", ["le", "be", "blocks", "over_tcp", "sections", "sections_idb", "over_tcp_sections",
                                  "late_interfaces"])
@pytest.mark.parametrize("part_bytes", [997, 4096, 60_000, 1 << 30])
def test_pcapng_parts_equal_filter_file(ng_files: dict[str, Path], tmp_path: Path, name: str, part_bytes: int) -> None:
    src = ng_files[name]
    parts = capparts.plan(src, part_bytes)
    assert len(parts) > 20 or part_bytes > 4096
    single, joined = tmp_path / "single.pcapng", tmp_path / "joined.pcapng"
    for expression in [None, "tcp port 80", "udp"]:
        expected = bpfjit.filter_file(src, single, expression, workers=1)
        stats, redone = assembled(src, joined, expression, part_bytes, seed=part_bytes)
        assert stats == expected and joined.read_bytes() == single.read_bytes(), expression
        assert sorted(p.name for p in tmp_path.iterdir()) == ["joined.pcapng", "single.pcapng"]
        if name == "over_tcp" and part_bytes == 997:
            assert redone >= 5  # fooled guesses, walked again
    walked = walk_all(parts, lambda p: capparts.count_part(p, EXPRESSIONS), seed=4)
    counted = capparts.assemble_count(walked, EXPRESSIONS)
    assert counted == capfile.count_file(src, EXPRESSIONS)


def walk_again(part: capparts.Part, at: int, context: capparts.ContextKey | None) -> capparts.PartResult:
    return capparts.walk_part(part, start=at, context=context)


def test_sections_keep_their_parts(ng_files: dict[str, Path], tmp_path: Path) -> None:
    """Parts after a second section are walked as planned, none again: a part starts at a section
    header found by `plan`, and the parts after it are walked in its context. An interface block
    mid-section adds to the context: the part that holds it is walked again, the parts after it were
    read alike in the lead's context (a prefix of the true one) and count as they are."""
    src, single, joined = ng_files["sections"], tmp_path / "single.pcapng", tmp_path / "joined.pcapng"
    heads = section_heads(src.read_bytes())
    parts = capparts.plan(src, 997)
    assert len(heads) == 4 and {p.section for p in parts} == set(heads) and set(heads[1:3]) <= {p.lo for p in parts}
    for expression in [None, "udp"]:
        expected = bpfjit.filter_file(src, single, expression, workers=1)
        stats, redone = assembled(src, joined, expression, 997, seed=7)
        assert stats == expected and joined.read_bytes() == single.read_bytes() and redone == 0
    verified, redone = capparts.verify(walk_all(parts, capparts.walk_part, seed=8), walk_again)
    assert redone == 0 and len(verified) == len(parts)

    src = ng_files["sections_idb"]
    second = section_heads(src.read_bytes())[1]
    redone_at: list[int] = []

    def redo(part: capparts.Part, at: int, context: capparts.ContextKey | None) -> capparts.PartResult:
        redone_at.extend([part.lo] if at < part.hi else [])  # (not a part inside one block: no walk)
        return walk_again(part, at, context)

    parts = capparts.plan(src, 997)
    idb = max(at for at, (btype, _) in zip(block_starts(src.read_bytes()), pcapng_blocks(src.read_bytes()),
                                           strict=True) if btype == 1 and at < second)  # fmt: skip
    _, redone = capparts.verify(walk_all(parts, capparts.walk_part, seed=9), redo)
    assert next(p.lo for p in parts if p.lo <= idb < p.hi) in redone_at and redone == len(redone_at) <= 3
    expected = bpfjit.filter_file(src, single, "udp", workers=1)
    assert assembled(src, joined, "udp", 997, seed=10)[0] == expected and joined.read_bytes() == single.read_bytes()


def test_late_interfaces_cost_only_the_parts_that_use_them(ng_files: dict[str, Path]) -> None:
    """Interfaces described at their first packet: a part walked in the lead's context counts as it
    is unless it holds such a block or a packet of such an interface (read in the lead's context, a
    packet naming an interface past it stops the walk): those few are walked again, not the rest."""
    src = ng_files["late_interfaces"]
    data = src.read_bytes()
    parts = capparts.plan(src, 997)
    first_idb = min(at for at, (btype, _) in zip(block_starts(data), pcapng_blocks(data), strict=True)
                    if btype == 1 and at > 100)  # fmt: skip
    after = [p for p in parts if p.hi > first_idb]
    redone_at: list[int] = []

    def redo(part: capparts.Part, at: int, context: capparts.ContextKey | None) -> capparts.PartResult:
        redone_at.extend([part.lo] if at < part.hi else [])
        return walk_again(part, at, context)

    results = walk_all(parts, capparts.walk_part, seed=3)
    assert sum(r.status == Status.BAD_INTERFACE for r in results) >= 10  # packets of the late interface
    verified, redone = capparts.verify(results, redo)
    assert 10 <= redone < len(after) // 3 and verified[-1].status == Status.END
    assert capparts.assemble_count(walk_all(parts, lambda p: capparts.count_part(p, EXPRESSIONS), seed=5),
                                   EXPRESSIONS) == capfile.count_file(src, EXPRESSIONS)  # fmt: skip


def test_wrong_hints_cost_walks_only(ng_files: dict[str, Path], tmp_path: Path) -> None:
    """A part hinted at the wrong section header (`Part.section`: bytes in a packet may look like one)
    is walked again in the context the walk before it ended in: the output is exact all the same."""
    src, single, joined = ng_files["sections"], tmp_path / "single.pcapng", tmp_path / "joined.pcapng"
    wrong = section_heads(src.read_bytes())[1]
    parts = [part._replace(section=wrong) for part in capparts.plan(src, 4096)]

    def walk(part: capparts.Part, at: int | None = None,
             context: capparts.ContextKey | None = None) -> capparts.PartResult:  # fmt: skip
        return capparts.filter_part(part, joined, "tcp", start=at, context=context)

    results = walk_all(parts, walk, seed=11)
    assert capparts.verify(results, walk)[1] > len(parts) // 3
    expected = bpfjit.filter_file(src, single, "tcp", workers=1)
    assert capparts.assemble_filter(results, joined, "tcp") == expected and joined.read_bytes() == single.read_bytes()
    counted = capparts.assemble_count(walk_all(parts, lambda p: capparts.count_part(p, EXPRESSIONS), 12), EXPRESSIONS)
    assert counted == capfile.count_file(src, EXPRESSIONS)


def test_section_headers_inside_packets_are_no_hints(ng_files: dict[str, Path]) -> None:
    """The pre-scan finds the section headers, not those of a pcapng carried in packets (their framing
    does not chain up into the outer file's blocks)."""
    # (section headers found, more such patterns in packets)
    expected = {"sections": (3, 0), "sections_idb": (1, 0), "over_tcp": (0, 1), "over_tcp_sections": (0, 4)}
    for name, (hints, inside) in expected.items():
        data = ng_files[name].read_bytes()
        with CaptureFile(ng_files[name]) as capture:
            found = capparts._sections(capture)
        patterns = data.count(b"\n\r\r\n") - 1  # (the file's own first)
        assert found == section_heads(data)[1:] and (len(found), patterns - len(found)) == (hints, inside)


@pytest.mark.parametrize("damage", ["truncated", "bad trailer", "bad idb", "bad idb, second section"])
def test_pcapng_bad_blocks_raise_where_filter_file_does(tmp_path: Path, damage: str) -> None:
    data = pcapng_blocks_mid_file(900)
    blocks = pcapng_blocks(data)
    at = sum(len(b) for _, b in blocks[:400])
    if damage == "truncated":
        data = data[: at + 20]
    elif damage == "bad trailer":
        data = data[:at] + b"\x06\x00\x00\x00\xff\x00\x00\x00" + data[at + 8 :]  # length 255: no multiple of 4
    elif damage == "bad idb, second section":  # its second interface block's trailer
        second = bytearray(pcapng_mix(">", 300, seed=7))
        end = sum(len(b) for _, b in pcapng_blocks(bytes(second))[:3])
        second[end - 4 : end] = b"\0\0\0\x99"
        data += bytes(second)
    else:  # the mid-file interface block's trailer
        idb = next(i for i, (t, _) in enumerate(blocks) if t == 1 and i > 10)
        end = sum(len(b) for _, b in blocks[: idb + 1])
        data = data[: end - 4] + b"\x99\x00\x00\x00" + data[end:]
    src, single, joined = tmp_path / "in.pcapng", tmp_path / "single.pcapng", tmp_path / "joined.pcapng"
    src.write_bytes(data)
    with pytest.raises(CaptureFileError) as one:
        bpfjit.filter_file(src, single, "ip", workers=1)
    with pytest.raises(CaptureFileError) as parts:
        assembled(src, joined, "ip", 1500, seed=5)
    assert (parts.value.offset, str(parts.value)) == (one.value.offset, str(one.value))
    assert joined.read_bytes() == single.read_bytes()
    counts = capparts.assemble_count(walk_all(capparts.plan(src, 1500), lambda p: capparts.count_part(p, ["ip"]), 6),
                                     ["ip"], errors="report")  # fmt: skip
    expected = capfile.count_file(src, ["ip"], errors="report")
    assert counts[:3] == expected[:3] and str(counts.error) == str(expected.error)


# -- spans: verified stretches for readers (to_dataframe's partitions) ---------------------------------------
def span_batches(src: Path, part_bytes: int, expression: str | None) -> list[tuple[bytes, float, int]]:
    """(packet, timestamp, link type) of every accepted packet, read span by span."""
    results = walk_all(capparts.plan(src, part_bytes), capparts.walk_part, seed=part_bytes)
    rows = []
    for span in capparts.spans(results):
        for chunk in capparts.read_span(span, expression):
            rows += [(packet, t, chunk.linktype) for packet, t in
                     zip(map(bytes, chunk.batch), chunk.timestamps.tolist(), strict=True)]  # fmt: skip
    return rows


@pytest.mark.parametrize("name", ["mix", "over_tcp", "ng:le", "ng:be", "ng:blocks", "ng:over_tcp", "ng:sections",
                                  "ng:sections_idb", "ng:over_tcp_sections", "ng:late_interfaces"])
def test_spans_read_what_read_batches_reads(files: dict[str, Path], ng_files: dict[str, Path], name: str) -> None:
    src = ng_files[name[3:]] if name.startswith("ng:") else files[name]
    for expression in [None, "udp"]:
        expected = [(packet, float(t), chunk.linktype) for chunk in capfile.read_batches(src, expression)
                    for packet, t in zip(map(bytes, chunk.batch), chunk.timestamps.tolist(), strict=True)]  # fmt: skip
        for part_bytes in (997, 1500, 4096, 50_000, 1 << 30):
            assert span_batches(src, part_bytes, expression) == expected, (expression, part_bytes)
        assert len(expected) > 20


def test_a_lead_cut_short_fails_as_filter_file_does(tmp_path: Path) -> None:
    """A pcapng file that ends within a block header before its first packet: `plan` raises the
    `CaptureFileError` `filter_file` raises (was a struct.error out of `read_lead`)."""
    data = pcapng_mix("<", 10, seed=3)
    lead = next(i for i, (btype, _) in enumerate(pcapng_blocks(data)) if btype == 6)
    src = tmp_path / "cut.pcapng"
    src.write_bytes(data[: sum(len(b) for _, b in pcapng_blocks(data)[:lead])] + b"\x06\x00\x00")
    with pytest.raises(CaptureFileError) as one:
        bpfjit.filter_file(src, None, "ip", workers=1)
    with pytest.raises(CaptureFileError) as planned:
        capparts.plan(src, 100)
    assert (planned.value.offset, str(planned.value)) == (one.value.offset, str(one.value))
    assert "truncated block header: 3 of 8 bytes" in str(one.value)
