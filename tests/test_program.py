"""bpfjit.program: Insn field checks and immutability, Program as a sequence, the struct sock_filter form."""

from __future__ import annotations

import copy
import enum
import pickle
import struct
import sys

import pytest

from bpfjit import Insn, Program

# -- Insn ----------------------------------------------------------------------------------------
FIELD_BITS = {"code": 16, "jt": 8, "jf": 8, "k": 32}


def make(field: str, value: object) -> Insn:
    return Insn(**{"code": 0x06, "jt": 0, "jf": 0, "k": 0, field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", sorted(FIELD_BITS))
def test_insn_fields_accept_their_whole_range(field: str) -> None:
    top = (1 << FIELD_BITS[field]) - 1
    assert getattr(make(field, 0), field) == 0
    assert getattr(make(field, top), field) == top


@pytest.mark.parametrize("field", sorted(FIELD_BITS))
@pytest.mark.parametrize("offset", ["too_big", "negative"])
def test_insn_fields_reject_values_that_do_not_fit(field: str, offset: str) -> None:
    value = (1 << FIELD_BITS[field]) if offset == "too_big" else -1
    with pytest.raises(ValueError, match=field):
        make(field, value)


@pytest.mark.parametrize("field", sorted(FIELD_BITS))
@pytest.mark.parametrize("value", ["1", 1.0, True, False, None, b"\x01", [1]], ids=repr)
def test_insn_fields_must_be_ints(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        make(field, value)


def test_insn_accepts_int_subclasses_and_stores_plain_ints() -> None:
    class Code(enum.IntEnum):
        RET_K = 0x06

    insn = Insn(Code.RET_K, 0, 0, 5)
    assert insn == (6, 0, 0, 5)
    assert type(insn.code) is int


def test_insn_defaults_and_names() -> None:
    insn = Insn(0x06)
    assert (insn.code, insn.jt, insn.jf, insn.k) == (0x06, 0, 0, 0)
    assert Insn(0x15, jt=1, jf=2, k=0x800) == (0x15, 1, 2, 0x800)
    code, jt, jf, k = Insn(0x15, 1, 2, 3)
    assert (code, jt, jf, k) == (0x15, 1, 2, 3)


def test_insn_is_immutable() -> None:
    insn = Insn(0x06, 0, 0, 1)
    with pytest.raises(AttributeError):
        insn.k = 2  # type: ignore[misc]
    with pytest.raises(AttributeError):
        insn.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        insn[3] = 2  # type: ignore[index]


def test_insn_equality_hash_and_pickle() -> None:
    insn = Insn(0x15, 1, 2, 0x800)
    assert insn == Insn(0x15, 1, 2, 0x800)
    assert hash(insn) == hash(Insn(0x15, 1, 2, 0x800))
    assert insn != Insn(0x15, 1, 2, 0x801)
    assert pickle.loads(pickle.dumps(insn)) == insn
    assert type(pickle.loads(pickle.dumps(insn))) is Insn


def test_insn_known() -> None:
    assert Insn(0x06).known
    assert not Insn(0x0E).known  # ret x: accepted by libpcap's bpf_validate, not by bpfjit


def test_insn_repr_shows_the_fields() -> None:
    assert repr(Insn(0x15, 1, 2, 0x800)) == "Insn(code=0x15, jt=1, jf=2, k=0x800)"


# -- Program as a sequence -----------------------------------------------------------------------
INSNS = [Insn(0x28, 0, 0, 12), Insn(0x15, 0, 1, 0x800), Insn(0x06, 0, 0, 0xFFFFFFFF), Insn(0x06, 0, 0, 0)]
TUPLES = [tuple(insn) for insn in INSNS]


def test_program_from_insns_tuples_lists_and_iterators() -> None:
    expected = Program(INSNS)
    assert Program(TUPLES) == expected
    assert Program([list(t) for t in TUPLES]) == expected
    assert Program(iter(INSNS)) == expected
    assert Program(tuple(INSNS)) == expected
    assert Program(insn for insn in INSNS) == expected
    assert Program(expected) == expected
    assert all(type(insn) is Insn for insn in Program(TUPLES))


def test_program_checks_fields_of_tuples() -> None:
    with pytest.raises(ValueError):
        Program([(0x06, 0, 0, 1 << 32)])
    with pytest.raises(TypeError):
        Program([(0x06, 0, 0, 1.5)])


@pytest.mark.parametrize("item", [(0x06, 0, 0), (0x06, 0, 0, 0, 0), "abcd", 6, None], ids=repr)
def test_program_rejects_what_is_not_an_instruction(item: object) -> None:
    with pytest.raises(TypeError):
        Program([Insn(0x06), item])  # type: ignore[list-item]


@pytest.mark.parametrize("value", ["ret #0", b"\x06\x00\x00\x00\x00\x00\x00\x00", 5, None], ids=repr)
def test_program_rejects_text_bytes_and_non_iterables(value: object) -> None:
    with pytest.raises(TypeError):
        Program(value)  # type: ignore[arg-type]


def test_program_may_be_invalid_until_validated() -> None:
    program = Program([Insn(0x0E), Insn(0x15, 200, 200, 0)])
    assert len(program) == 2
    assert Program([]) == Program()
    assert len(Program()) == 0


def test_program_sequence_protocol() -> None:
    program = Program(INSNS)
    assert len(program) == 4
    assert program[0] == INSNS[0]
    assert program[-1] == INSNS[-1]
    assert list(program) == INSNS
    assert program.insns == tuple(INSNS)
    assert INSNS[1] in program
    with pytest.raises(IndexError):
        program[4]


def test_program_slices_are_programs() -> None:
    program = Program(INSNS)
    assert isinstance(program[1:3], Program)
    assert program[1:3] == Program(INSNS[1:3])
    assert program[::-1] == Program(INSNS[::-1])
    assert program[:0] == Program()
    assert program[:2] + program[2:] == program


def test_program_equality_and_hash() -> None:
    a, b = Program(INSNS), Program(TUPLES)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != Program(INSNS[:-1])
    assert a != INSNS  # a Program is not equal to a list, even of the same instructions
    assert a != tuple(INSNS)
    assert {a: 1}[b] == 1


def test_program_is_immutable() -> None:
    program = Program(INSNS)
    with pytest.raises(TypeError):
        program[0] = Insn(0x06)  # type: ignore[index]
    with pytest.raises(TypeError):
        del program[0]  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        program.extra = 1  # type: ignore[attr-defined]
    source = list(INSNS)
    program = Program(source)
    source.append(Insn(0x06))
    assert len(program) == 4


def test_program_pickles_and_copies() -> None:
    program = Program(INSNS)
    for clone in (pickle.loads(pickle.dumps(program)), copy.copy(program), copy.deepcopy(program)):
        assert clone == program
        assert type(clone) is Program
        assert hash(clone) == hash(program)


# -- struct sock_filter --------------------------------------------------------------------------
JEQ = Insn(0x15, 1, 2, 0x800)
JEQ_LITTLE = bytes([0x15, 0x00, 0x01, 0x02, 0x00, 0x08, 0x00, 0x00])
JEQ_BIG = bytes([0x00, 0x15, 0x01, 0x02, 0x00, 0x00, 0x08, 0x00])


def test_sock_filter_layout_little_and_big_endian() -> None:
    program = Program([JEQ])
    assert program.to_bytes("little") == JEQ_LITTLE
    assert program.to_bytes("big") == JEQ_BIG
    assert Program.from_bytes(JEQ_LITTLE, "little") == program
    assert Program.from_bytes(JEQ_BIG, "big") == program


def test_sock_filter_default_is_host_byte_order() -> None:
    program = Program(INSNS)
    native = b"".join(struct.pack("=HBBI", *insn) for insn in INSNS)
    assert program.to_bytes() == native
    assert program.to_bytes() == program.to_bytes(sys.byteorder)
    assert Program.from_bytes(native) == program


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_sock_filter_round_trip(byteorder: str) -> None:
    program = Program([*INSNS, Insn(0xFFFF, 0xFF, 0xFF, 0xFFFFFFFF), Insn(0x0E, 7, 9, 0x01020304)])
    data = program.to_bytes(byteorder)
    assert len(data) == 8 * len(program)
    assert Program.from_bytes(data, byteorder) == program
    assert Program.from_bytes(bytearray(data), byteorder) == program
    assert Program.from_bytes(memoryview(data), byteorder) == program


def test_sock_filter_each_insn_is_8_bytes() -> None:
    data = Program(INSNS).to_bytes("little")
    for index, insn in enumerate(INSNS):
        assert data[8 * index : 8 * index + 8] == struct.pack("<HBBI", *insn)


def test_sock_filter_empty() -> None:
    assert Program().to_bytes() == b""
    assert Program.from_bytes(b"") == Program()


@pytest.mark.parametrize("length", [1, 7, 9, 15, 17])
def test_sock_filter_length_must_be_a_multiple_of_8(length: int) -> None:
    with pytest.raises(ValueError, match="8"):
        Program.from_bytes(bytes(length))


@pytest.mark.parametrize("data", ["\x06\x00\x00\x00\x00\x00\x00\x00", 8, None, [6, 0, 0, 0]], ids=repr)
def test_sock_filter_needs_bytes(data: object) -> None:
    with pytest.raises(TypeError):
        Program.from_bytes(data)  # type: ignore[arg-type]
