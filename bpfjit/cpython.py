"""Every fact bpfjit relies on about the running CPython, and the probes that verify them.

`f(packet)` skips ctypes: `Filter` derives from `NativeCallable`, a vectorcall type built here at run
time with ctypes, so a call jumps straight to the native entry (`pyentry`) with the filter's own
code address in the instance. That couples bpfjit to CPython's object layouts; all of them are here,
each verified on the running interpreter before use:

- the object header (ob_type), an exact `bytes` object's ob_size/ob_sval (`BYTES_LAYOUT`, probed);
- `Py_buffer` (`PyBuffer`, Include/pybuffer.h: part of the stable ABI since 3.11), which the
  native entry reads and the capture-file readers fill through `get_buffer`/`release_buffer`;
- the vectorcall convention (PY_VECTORCALL_ARGUMENTS_OFFSET in nargsf) and, on 3.11, where
  PyTypeObject keeps tp_flags / tp_vectorcall_offset / tp_call (`enable_vectorcall`, probed);
- the native slots of a `NativeCallable` instance (entry, filter address, result table, countdown).

`NATIVE_ENTRY` says whether filters use the native entry: not on other implementations, not on
free-threaded builds (another object header; read from the build configuration, not from the
runtime GIL state), not when a probe fails, and not when the environment says
`BPFJIT_CALL_PATH=ctypes` (the fallback switch: every call then takes the checked ctypes path,
which the suite runs once more under it). Nothing else changes between the two paths.
"""

from __future__ import annotations

import ctypes
import os
import sys
import sysconfig
from typing import Any, NamedTuple

CALL_PATH_VARIABLE = "BPFJIT_CALL_PATH"  # "ctypes" forces the fallback path; anything else: the default
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

Py_tp_call, Py_tp_doc, Py_tp_new, Py_tp_members = 50, 56, 65, 72
T_PYSSIZET, READONLY = 19, 1
Py_TPFLAGS_BASETYPE = 1 << 10
Py_TPFLAGS_HAVE_VECTORCALL = 1 << 11
Py_TPFLAGS_HAVE_VERSION_TAG = 1 << 18


class _Slot(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_int), ("pfunc", ctypes.c_void_p)]


class _Member(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("type", ctypes.c_int),
        ("offset", ctypes.c_ssize_t),
        ("flags", ctypes.c_int),
        ("doc", ctypes.c_char_p),
    ]


class _Spec(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("basicsize", ctypes.c_int),
        ("itemsize", ctypes.c_int),
        ("flags", ctypes.c_uint),
        ("slots", ctypes.POINTER(_Slot)),
    ]


ENTRY_OFFSET = object.__basicsize__  # the vectorcall pointer follows the PyObject header
FILTER_OFFSET = ENTRY_OFFSET + ctypes.sizeof(ctypes.c_void_p)  # then the filter's native address
TABLE_OFFSET = FILTER_OFFSET + ctypes.sizeof(ctypes.c_void_p)  # then its table of result ints
COUNTDOWN_OFFSET = TABLE_OFFSET + ctypes.sizeof(ctypes.c_void_p)  # then calls left before a tier-up
NATIVE_SLOTS = 4
_keepalive: list[Any] = []  # the spec's memory: CPython may keep pointers into it


def _symbol(name: str) -> int:
    value = ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value
    assert value is not None
    return value


def _make_base() -> type | None:
    if sys.implementation.name != "cpython" or sys.version_info < (3, 10) or FREE_THREADED:
        return None  # (free-threaded builds use another object header)
    if os.environ.get(CALL_PATH_VARIABLE, "").strip().lower() == "ctypes":
        return None
    doc = b"Base of bpfjit.Filter: instances are called through their vectorcall pointer."
    members = (_Member * 2)(_Member(b"__vectorcalloffset__", T_PYSSIZET, ENTRY_OFFSET, READONLY, None))
    slots = (_Slot * 5)(
        _Slot(Py_tp_call, _symbol("PyVectorcall_Call")),
        _Slot(Py_tp_new, _symbol("PyType_GenericNew")),
        _Slot(Py_tp_members, ctypes.cast(members, ctypes.c_void_p).value),
        _Slot(Py_tp_doc, ctypes.cast(ctypes.c_char_p(doc), ctypes.c_void_p).value),
    )
    flags = Py_TPFLAGS_HAVE_VERSION_TAG | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_VECTORCALL
    size = ENTRY_OFFSET + NATIVE_SLOTS * ctypes.sizeof(ctypes.c_void_p)
    spec = _Spec(b"bpfjit.NativeCallable", size, 0, flags, slots)
    _keepalive.extend((doc, members, slots, spec))
    from_spec = ctypes.pythonapi.PyType_FromSpec
    from_spec.restype = ctypes.py_object
    from_spec.argtypes = [ctypes.POINTER(_Spec)]
    base = from_spec(ctypes.byref(spec))
    assert isinstance(base, type)
    return base


def enable_vectorcall(cls: type) -> bool:
    """Give a Python subclass of NativeCallable the vectorcall flag (3.12+ inherits it by itself).

    Python 3.10 and 3.11 do not pass Py_TPFLAGS_HAVE_VECTORCALL on to mutable subclasses, so calls
    would take the slower tp_call route (a tuple per call). The flag is set only after checking that
    the type object's fields are where CPython 3.10's and 3.11's PyTypeObject put them (the same
    offsets in both, up to tp_flags).
    """
    if cls.__flags__ & Py_TPFLAGS_HAVE_VECTORCALL:
        return True
    if sys.version_info[:2] not in ((3, 10), (3, 11)) or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    base = id(cls)
    flags = ctypes.c_ulong.from_address(base + 168)
    vectorcall_offset = ctypes.c_ssize_t.from_address(base + 56)
    tp_call = ctypes.c_void_p.from_address(base + 128)
    if (
        flags.value != cls.__flags__
        or vectorcall_offset.value != ENTRY_OFFSET
        or tp_call.value != _symbol("PyVectorcall_Call")
    ):
        return False
    flags.value |= Py_TPFLAGS_HAVE_VECTORCALL
    return bool(cls.__flags__ & Py_TPFLAGS_HAVE_VECTORCALL)


def set_entry(obj: object, entry: int, filter_address: int, table_address: int, countdown: int) -> None:
    """Fill `obj`'s native slots: its vectorcall entry (`pyentry`), its filter, its result table, and
    the calls the entry makes before it hands one to the slow path (at 0) instead.

    The caller keeps the filter's code and the table alive as long as `obj`."""
    ctypes.c_void_p.from_address(id(obj) + FILTER_OFFSET).value = filter_address
    ctypes.c_void_p.from_address(id(obj) + TABLE_OFFSET).value = table_address
    ctypes.c_uint64.from_address(id(obj) + COUNTDOWN_OFFSET).value = countdown
    ctypes.c_void_p.from_address(id(obj) + ENTRY_OFFSET).value = entry  # last: makes it callable


def countdown(obj: object) -> int:
    """The calls `obj`'s entry makes before it takes the slow path (see `set_entry`)."""
    return int(ctypes.c_uint64.from_address(id(obj) + COUNTDOWN_OFFSET).value)


def c_api_address(name: str) -> int:
    return _symbol(name)


try:
    NativeCallable: type | None = _make_base()
except (AttributeError, OSError, AssertionError):  # pragma: no cover - not CPython as we know it
    NativeCallable = None

AVAILABLE = NativeCallable is not None


def _verified_bytes_layout() -> tuple[int, int, int] | None:
    """(type, size, data) offsets of an exact `bytes` object, if this interpreter keeps them there."""
    if not AVAILABLE:
        return None
    sample = b"bpfjit layout probe"
    address = id(sample)
    type_offset = object.__basicsize__ - ctypes.sizeof(ctypes.c_void_p)
    size_offset = object.__basicsize__
    data_offset = bytes.__basicsize__ - 1  # ob_sval[1] is the last member
    if (
        ctypes.c_void_p.from_address(address + type_offset).value == id(bytes)
        and ctypes.c_ssize_t.from_address(address + size_offset).value == len(sample)
        and ctypes.string_at(address + data_offset, len(sample)) == sample
    ):
        return type_offset, size_offset, data_offset
    return None


BYTES_LAYOUT = _verified_bytes_layout()
# Whether filters are called through the native entry (else through ctypes: see the docstring).
NATIVE_ENTRY = AVAILABLE and BYTES_LAYOUT is not None

# -- Py_buffer ---------------------------------------------------------------------------------------
class PyBuffer(ctypes.Structure):
    """CPython's Py_buffer (Include/pybuffer.h): the way to the address of a read-only buffer, such as
    a PROT_READ mapping, which ctypes' `from_buffer` refuses."""

    _fields_ = [
        ("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p),
    ]  # fmt: skip


PyBUF_SIMPLE = 0


def get_buffer(obj: object) -> PyBuffer:
    """Export `obj`'s buffer (PyObject_GetBuffer, PyBUF_SIMPLE): `.buf` is its address, valid and
    pinned (the object refuses to resize or close) until `release_buffer`."""
    view = PyBuffer()
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
    get.restype = ctypes.c_int
    if get(obj, ctypes.byref(view), PyBUF_SIMPLE) != 0:  # ctypes.pythonapi raises the Python error first
        raise BufferError(f"cannot export the buffer of a {type(obj).__name__}")
    return view


def release_buffer(view: PyBuffer) -> None:
    """Undo `get_buffer` (PyBuffer_Release): once only, for each view."""
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(PyBuffer)]
    release.restype = None
    release(ctypes.byref(view))


# -- what the native entry reads (pyentry emits it from these) -----------------------------------------
PY_BUFFER_SIZE = ctypes.sizeof(PyBuffer)  # 80 on 64-bit
PY_BUFFER_LEN_OFFSET = PyBuffer.len.offset  # 16 on 64-bit (buf is at 0)
PY_VECTORCALL_NARGS_MASK = (1 << 63) - 1  # nargsf without PY_VECTORCALL_ARGUMENTS_OFFSET


class Layout(NamedTuple):
    """Offsets the entry reads: ob_type in any object; ob_size and ob_sval in an exact `bytes`; and,
    in a Filter instance, the filter's address, its result table (u64 count, u64 values[N], then
    PyObject *objects[N]) and a u64 countdown of calls: at 0 the call goes to the slow path."""

    type_offset: int
    bytes_size_offset: int
    bytes_data_offset: int
    filter_offset: int
    table_offset: int
    countdown_offset: int


def entry_layout() -> Layout:
    """The verified layout (only when NATIVE_ENTRY)."""
    assert BYTES_LAYOUT is not None
    type_offset, size_offset, data_offset = BYTES_LAYOUT
    return Layout(type_offset, size_offset, data_offset, FILTER_OFFSET, TABLE_OFFSET, COUNTDOWN_OFFSET)
