"""bpfjit.interpret: what it takes as a packet and a wire length, and what bad input gets.

Its semantics are tested case by case in tests/test_semantics.py, like every other backend's.
"""

from __future__ import annotations

import array
import mmap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cases import ld_abs, ld_len, ret_a, ret_k

import bpfjit
from bpfjit import Insn, Program, ValidationError, interpret
from bpfjit.interpret import HANDLERS
from bpfjit.opcodes import KINDS, OPCODES

LD_0 = Program([ld_abs(4, 0), ret_a()])  # A <- P[0:4]; return A
LD_LEN = Program([ld_len(), ret_a()])
DATA = bytes([0x01, 0x02, 0x03, 0x04, 0x05])


def _readonly_numpy(data: bytes) -> np.ndarray:
    packet = np.frombuffer(data, dtype=np.uint8)
    assert not packet.flags.writeable
    return packet


BUFFERS: dict[str, Callable[[bytes], object]] = {
    "bytes": bytes,
    "bytearray": bytearray,
    "memoryview_readonly": lambda data: memoryview(data),
    "memoryview_writable": lambda data: memoryview(bytearray(data)),
    "memoryview_slice": lambda data: memoryview(b"\xff" + data + b"\xff")[1:-1],
    "numpy_uint8": lambda data: np.array(list(data), dtype=np.uint8),
    "numpy_uint8_readonly": _readonly_numpy,
    "numpy_uint8_slice": lambda data: np.frombuffer(b"\xee" + data, dtype=np.uint8)[1:],
    "array_B": lambda data: array.array("B", data),
}


@pytest.mark.parametrize("kind", sorted(BUFFERS))
def test_buffer_types_accepted(kind: str) -> None:
    packet = BUFFERS[kind](DATA)
    assert interpret(LD_0, packet) == 0x01020304
    assert interpret(LD_LEN, packet) == len(DATA)
    assert interpret(LD_LEN, packet, 1000) == 1000


def test_mmap_accepted() -> None:
    with mmap.mmap(-1, len(DATA)) as region:
        region.write(DATA)
        assert interpret(LD_0, region) == 0x01020304
        assert interpret(LD_LEN, region) == len(DATA)


def test_packet_longer_than_u32_rejected(tmp_path: Path) -> None:
    # A sparse file mapped read-only: 4 GiB of address space, no memory, nothing read.
    path = tmp_path / "huge"
    with path.open("wb") as file:
        file.truncate(1 << 32)
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as region:
        assert len(region) == 1 << 32
        with pytest.raises(ValueError):
            interpret(LD_LEN, region)


def test_the_packet_is_not_changed() -> None:
    packet = bytearray(DATA)
    interpret(LD_0, packet)
    assert packet == DATA


@pytest.mark.parametrize(
    "packet",
    [memoryview(b"\x01\x00\x02\x00\x03\x00\x04\x00")[::2], np.arange(16, dtype=np.uint8)[::2]],
    ids=["memoryview_step_2", "numpy_step_2"],
)
def test_non_contiguous_buffers_rejected(packet: object) -> None:
    with pytest.raises(TypeError, match="contiguous"):
        interpret(LD_0, packet)


@pytest.mark.parametrize("packet", ["\x01\x02\x03\x04", 1234, None, [1, 2, 3, 4], 1.5, object()], ids=repr)
def test_non_buffers_rejected(packet: object) -> None:
    with pytest.raises(TypeError):
        interpret(LD_0, packet)


def test_wirelen_defaults_to_caplen() -> None:
    for size in (0, 1, 60, 1514):
        assert interpret(LD_LEN, bytes(size)) == size
        assert interpret(LD_LEN, bytes(size), None) == size


def test_wirelen_may_equal_or_exceed_caplen() -> None:
    assert interpret(LD_LEN, DATA, len(DATA)) == len(DATA)
    assert interpret(LD_LEN, DATA, 0xFFFFFFFF) == 0xFFFFFFFF
    assert interpret(LD_LEN, b"", 0) == 0


@pytest.mark.parametrize(("packet", "wirelen"), [(DATA, 4), (DATA, 0), (b"\x00", 0), (DATA, -1)])
def test_wirelen_below_caplen_rejected(packet: bytes, wirelen: int) -> None:
    with pytest.raises(ValueError):
        interpret(LD_LEN, packet, wirelen)


@pytest.mark.parametrize("wirelen", [1 << 32, (1 << 32) + 5, 1 << 64])
def test_wirelen_above_u32_rejected(wirelen: int) -> None:
    with pytest.raises(ValueError):
        interpret(LD_LEN, DATA, wirelen)


@pytest.mark.parametrize(
    "program",
    [[], [ld_abs(4, 0)], [Insn(0x0E), ret_k(0)], [Insn(0x15, 5, 0, 0), ret_k(0)]],
    ids=["empty", "no_final_ret", "unknown_opcode", "jump_out_of_range"],
)
def test_invalid_program_raises_validation_error(program: list[Insn]) -> None:
    with pytest.raises(ValidationError):
        interpret(program, DATA)


def test_program_as_a_list_of_tuples() -> None:
    assert interpret([tuple(insn) for insn in LD_0], DATA) == 0x01020304
    assert bpfjit.interpret(list(LD_0), DATA) == 0x01020304


def test_result_is_a_plain_int() -> None:
    assert type(interpret(LD_0, DATA)) is int
    assert type(interpret(Program([ret_k(0xFFFFFFFF)]), b"")) is int


# -- the handler table ---------------------------------------------------------------------------
def test_every_kind_has_a_handler() -> None:
    assert set(HANDLERS) == set(KINDS)


def test_every_opcode_dispatches_to_a_handler() -> None:
    for code, info in OPCODES.items():
        assert info.kind in HANDLERS, f"{code:#04x} ({info.kind}) has no handler"


@pytest.mark.parametrize("kind", sorted(HANDLERS))
def test_every_handler_documents_itself_in_bpf_notation(kind: str) -> None:
    doc = HANDLERS[kind].__doc__ or ""
    assert doc.startswith("BPF_"), f"{kind}: {doc!r}"
