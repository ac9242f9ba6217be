"""capparts: byte-range parts walked separately (any order, pickled between) and assembled exactly.

Parts are made small (a few KiB) so that guesses fooled by a pcap carried over TCP, parts inside one
record and a bad record mid-file all come up; outputs and counts must equal filter_file's and
count_file's, byte for byte.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from test_parallel import pcap_over_tcp

import bpfjit
from bpfjit import capfile, capparts, packetmix
from bpfjit.errors import CaptureFileError

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

        def walk(part: capparts.Part, at: int | None = None, e: str | None = expression) -> capparts.PartResult:
            return capparts.filter_part(part, assembled, e, start=at)

        results = walk_all(parts, walk, seed=part_bytes)
        _, redone = capparts.verify(results, walk)
        if name == "over_tcp" and part_bytes == 4096:
            assert redone > 10  # the guesses were fooled, and put right
        stats = capparts.assemble_filter(results, assembled, expression)
        assert stats == expected and assembled.read_bytes() == single.read_bytes() and expected.accepted > 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["assembled.pcap", "single.pcap"]  # no part file left


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


def test_pcapng_is_one_part(tmp_path: Path) -> None:
    from pcapfiles import mix, write_pcapng

    src = tmp_path / "a.pcapng"
    write_pcapng(src, mix(50))
    assert capparts.plan(src, 100) == [capparts.Part(str(src), 0, 0, src.stat().st_size)]
    with pytest.raises(ValueError, match="only classic pcap"):
        capparts.filter_part(capparts.plan(src)[0], tmp_path / "out.pcapng")
