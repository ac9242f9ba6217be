"""Batch: the container's checks, and the native batch entry against per-packet calls and the interpreter."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import bpfjit
from bpfjit import Batch, Program
from bpfjit.samples import sample_frames
from bpfjit.strategies import packets_with_wirelen, programs

IP_ONLY = Program([(0x28, 0, 0, 12), (0x15, 0, 1, 0x800), (0x6, 0, 0, 262144), (0x6, 0, 0, 0)])


@given(programs(max_insns=32), st.lists(packets_with_wirelen(), max_size=20))
def test_batch_equals_per_packet_equals_interpreter(program: Program, items: list[tuple[bytes, int]]) -> None:
    packets = [p for p, _ in items]
    wirelens = [w for _, w in items]
    f = bpfjit.compile(program)
    batch = Batch.from_packets(packets, wirelens)
    results = f.run_batch(batch)
    assert results.dtype == np.uint32 and results.shape == (len(packets),)
    expected = [bpfjit.interpret(program, p, w) for p, w in items]
    assert results.tolist() == expected
    assert [f(p, w) for p, w in items] == expected


def test_batch_over_a_shared_buffer_with_gaps() -> None:
    frames = list(sample_frames().values())
    data = bytearray()
    offsets = []
    for frame in frames:
        data += b"\xee" * 3  # bytes between packets that must never be read as packet data
        offsets.append(len(data))
        data += frame
    batch = Batch(bytes(data), offsets, [len(f) for f in frames])
    f = bpfjit.compile(IP_ONLY)
    assert f.run_batch(batch).tolist() == [f(frame) for frame in frames]
    assert [bytes(p) for p in batch] == frames and bytes(batch[2]) == frames[2]


def test_run_batch_accepts_plain_sequences_and_out() -> None:
    frames = list(sample_frames().values())
    f = bpfjit.compile(IP_ONLY)
    out = np.full(len(frames), 7, dtype=np.uint32)
    assert f.run_batch(frames, out=out) is out
    assert out.tolist() == [f(frame) for frame in frames]
    with pytest.raises(ValueError):
        f.run_batch(frames, out=np.zeros(len(frames), dtype=np.int64))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        f.run_batch(frames, out=np.zeros(len(frames) + 1, dtype=np.uint32))
    assert f.run_batch([]).tolist() == []


def test_filter_returns_the_accepted_packets() -> None:
    frames = list(sample_frames().values())
    f = bpfjit.compile(IP_ONLY)
    accepted = f.filter(frames)
    assert accepted == [frame for frame in frames if f(frame)]
    assert all(any(a is frame for frame in frames) for a in accepted)  # the same objects, not copies
    subset = f.filter(Batch.from_packets(frames))
    assert isinstance(subset, Batch) and [bytes(p) for p in subset] == accepted


@pytest.mark.parametrize(
    ("offsets", "caplens", "message"),
    [
        ([0, 8], [8, 3], "outside"),
        ([11], [0], "outside"),
        ([2**64 - 1], [1], "outside"),
        ([0], [1, 2], "caplens"),
        ([-1], [1], "fit"),
    ],
)
def test_batch_rejects_packets_outside_the_buffer(offsets: list[int], caplens: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batch(bytes(10), offsets, caplens)


def test_batch_checks_wirelens() -> None:
    with pytest.raises(ValueError, match="wirelen"):
        Batch(bytes(10), [0], [10], [9])
    with pytest.raises(ValueError):
        Batch.from_packets([b"abc"], [2])
    with pytest.raises(ValueError):
        Batch.from_packets([b"abc"], [3, 4])
    with pytest.raises(TypeError):
        Batch.from_packets(["text"])
    batch = Batch.from_packets([b"ab", b""], [100, 5])
    assert batch.wirelens.tolist() == [100, 5] and batch.caplens.tolist() == [2, 0]


def test_batches_from_many_threads_agree() -> None:
    frames = list(sample_frames().values()) * 500
    batch = Batch.from_packets(frames)
    f = bpfjit.compile("tcp port 80")
    expected = f.run_batch(batch)
    results: list[bool] = []

    def work() -> None:
        for _ in range(20):
            results.append(bool((f.run_batch(batch) == expected).all()))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 80
