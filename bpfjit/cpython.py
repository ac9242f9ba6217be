"""CPython's C-level structures and API, reached through ctypes (no compiler, no numpy).

Each section is one fact about the interpreter's C side, kept here so that layouts are written once.
"""

from __future__ import annotations

import ctypes

__all__ = ["PyBuffer", "get_buffer", "release_buffer"]


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
