"""compile_many: every bit equals the single filter's verdict; `first` equals the first accepting filter."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bpfjit
from bpfjit import Batch, Program
from bpfjit.samples import sample_frames
from bpfjit.strategies import packets_with_wirelen, programs

EXPRESSIONS = [
    "ip", "tcp port 80", "udp and (port 53 or port 123)", "vlan and udp port 53", "arp", "ip6",
    "icmp", "tcp[tcpflags] & tcp-syn != 0", "ip6 and tcp port 80", "host 10.0.0.2", "len > 100",
    "ip[6:2] & 0x1fff != 0",
]  # fmt: skip


@settings(max_examples=40)
@given(st.lists(programs(max_insns=16), min_size=1, max_size=5), st.lists(packets_with_wirelen(), max_size=12))
def test_random_sets_of_random_programs(progs: list[Program], items: list[tuple[bytes, int]]) -> None:
    bitmask = bpfjit.compile_many(progs)
    first = bpfjit.compile_many(progs, mode="first")
    for packet, wirelen in items:
        verdicts = [bpfjit.interpret(p, packet, wirelen) for p in progs]
        assert bitmask(packet, wirelen) == sum(1 << i for i, v in enumerate(verdicts) if v)
        accepting = [i for i, v in enumerate(verdicts) if v]
        expected = (accepting[0], verdicts[accepting[0]]) if accepting else (-1, 0)
        assert first(packet, wirelen) == expected
    if items:
        batch = Batch.from_packets([p for p, _ in items], [w for _, w in items])
        matrix = bitmask.run_batch(batch)
        expected_matrix = np.array([[bool(bpfjit.interpret(p, pk, w)) for p in progs] for pk, w in items])
        assert (matrix == expected_matrix).all()
        indices, values = first.run_batch(batch)
        assert [(int(i), int(v) if i >= 0 else 0) for i, v in zip(indices, values, strict=True)] == [
            first(pk, w) for pk, w in items
        ]


def test_real_expressions_on_sample_frames() -> None:
    frames = list(sample_frames().values())
    singles = [bpfjit.compile(e) for e in EXPRESSIONS]
    many = bpfjit.compile_many(EXPRESSIONS)
    matrix = many.run_batch(frames)
    assert matrix.shape == (len(frames), len(EXPRESSIONS)) and matrix.dtype == np.bool_
    for row, frame in zip(matrix, frames, strict=True):
        assert row.tolist() == [bool(f(frame)) for f in singles]
    first = bpfjit.compile_many(EXPRESSIONS, mode="first")
    indices, values = first.run_batch(frames)
    for index, value, frame in zip(indices.tolist(), values.tolist(), frames, strict=True):
        accepting = [i for i, f in enumerate(singles) if f(frame)]
        assert index == (accepting[0] if accepting else -1)
        assert value == (singles[index](frame) if accepting else 0)


def test_more_than_64_filters() -> None:
    exprs = [f"udp port {1000 + i}" for i in range(70)] + ["udp port 53"]
    many = bpfjit.compile_many(exprs)
    frames = list(sample_frames().values())
    matrix = many.run_batch(frames)
    assert matrix.shape == (len(frames), 71)
    dns = [bool(bpfjit.compile("udp port 53")(f)) for f in frames]
    assert matrix[:, 70].tolist() == dns and not matrix[:, :70].any()
    assert many(frames[3]) == (1 << 70 if dns[3] else 0)


def test_errors() -> None:
    with pytest.raises(ValueError):
        bpfjit.compile_many([])
    with pytest.raises(ValueError):
        bpfjit.compile_many(["ip"], mode="all")  # type: ignore[arg-type]
    with pytest.raises(bpfjit.ValidationError):
        bpfjit.compile_many([[(0x15, 9, 0, 0)]])
