"""The Python entry point of every filter: one CPython vectorcall function, emitted in IR once.

    PyObject *bpfjit_entry(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)

A ctypes call costs ~300 ns, ten times a filter's work, so `f(packet)` does not go through ctypes:
`Filter` is a vectorcall type (see `cpython`) whose instances point at this function and carry
the address of their own native code (its batch loop, called with n = 1) and of a small table of
prebuilt result ints. The entry is
the same for every filter, so it is compiled once per process and costs a filter's cold compile
nothing (it used to be ~5 ms of each).

Fast path: `f(packet)` or `f(packet, wirelen)` with an exact int, no keywords. The packet's bytes
are read in place: an exact `bytes` through its verified layout, anything else through
`PyObject_GetBuffer(PyBUF_SIMPLE)` (C-contiguous only, released after the call). The result is
returned as a Python int, from the table when it is one of the program's `ret #k` values.
Everything else (keywords, a non-buffer, a strided view, wirelen < caplen or not a u32, > 4 GiB)
re-dispatches to the Python method `self.call(...)`, which checks its arguments and raises the
documented errors. Only stable C-API functions are called (their signatures: `abi.C_API`); every
layout the entry reads comes verified from `cpython` (`cpython.Layout`).
"""

from __future__ import annotations

from llvmlite import ir

from . import abi
from .cpython import PY_BUFFER_LEN_OFFSET, PY_BUFFER_SIZE, PY_VECTORCALL_NARGS_MASK, Layout

I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
OBJ = I8.as_pointer()  # PyObject *
ENTRY_NAME = "bpfjit_entry"
NO_WIRELEN = 1 << 32  # "wirelen not given" (never a valid u32)
SLOW_METHOD_SYMBOL = "bpfjit_slow_method_name"  # a `str` object: the name of the method to re-dispatch to
BYTES_TYPE_SYMBOL = "PyBytes_Type"
INT_TYPE_SYMBOL = "PyLong_Type"
MAX_CACHED_RESULTS = 8
C_API = tuple(abi.C_API)  # what the entry calls: resolved from the running interpreter by filter.py


def _declare(module: ir.Module, name: str) -> ir.Function:
    return abi.C_API[name].declare_external(module, name)


def _external(module: ir.Module, name: str) -> ir.GlobalVariable:
    existing = module.globals.get(name)
    return existing if existing is not None else ir.GlobalVariable(module, I8, name)


def _entry_alloca(fn: ir.Function, ty: ir.Type, name: str) -> ir.Value:
    """An alloca at the top of the entry block, where sroa promotes it to SSA values."""
    builder = ir.IRBuilder(fn.entry_basic_block)
    builder.position_at_start(fn.entry_basic_block)
    return builder.alloca(ty, name=name)


def _field(b: ir.IRBuilder, obj: ir.Value, offset: int, ty: ir.Type, name: str) -> ir.Value:
    """*(ty *)((char *)obj + offset)"""
    return b.load(b.bitcast(b.gep(obj, [ir.Constant(I64, offset)]), ty.as_pointer()), name=name)


def entry_module(layout: Layout) -> ir.Module:
    """The module holding the entry alone (compiled once per process)."""
    module = ir.Module(name="bpfjit_entry")
    lower_entry(module, layout)
    return module


def lower_entry(module: ir.Module, layout: Layout) -> ir.Function:
    fn = abi.ENTRY.declare(module, ENTRY_NAME)
    self_obj, args, nargsf, kwnames = fn.args
    names = ("entry", "two_args", "is_int", "wire_ok", "bad_wire", "packet", "is_bytes", "try_buffer",
             "no_buffer", "got_view", "run", "release", "result", "slow")  # fmt: skip
    blocks = {n: fn.append_basic_block(n) for n in names}
    b = ir.IRBuilder(blocks["entry"])
    view = b.alloca(ir.ArrayType(I8, PY_BUFFER_SIZE), name="view")
    view.align = 8
    view_ptr = b.bitcast(view, I8.as_pointer())
    wire_slot, data_slot, len_slot, held_slot = (
        b.alloca(t, name=n) for t, n in ((I64, "wire"), (I8.as_pointer(), "data"), (I64, "len"), (I1, "held"))
    )  # promoted to SSA by sroa
    # the batch-of-one arguments: offset 0, caplen, wirelen, and where the result goes
    offset_arg, caplen_arg, wirelen_arg, result_arg = (
        b.alloca(t, name=n) for t, n in ((I64, "offset"), (I32, "caplen"), (I32, "wirelen"), (I32, "out"))
    )
    b.store(ir.Constant(I64, NO_WIRELEN), wire_slot)
    b.store(ir.Constant(I1, 0), held_slot)
    nargs = b.and_(nargsf, ir.Constant(I64, PY_VECTORCALL_NARGS_MASK), name="nargs")
    no_kw = b.icmp_unsigned("==", kwnames, ir.Constant(OBJ, None))
    sw = b.switch(b.select(no_kw, nargs, ir.Constant(I64, 0)), blocks["slow"])  # keywords: slow path
    sw.add_case(ir.Constant(I64, 1), blocks["packet"])
    sw.add_case(ir.Constant(I64, 2), blocks["two_args"])

    b.position_at_end(blocks["two_args"])  # f(packet, wirelen): only an exact int, in u32 range
    wire_obj = b.load(b.gep(args, [ir.Constant(I64, 1)]), name="wire_obj")
    int_type = _external(module, INT_TYPE_SYMBOL)
    exact_int = b.icmp_unsigned("==", _field(b, wire_obj, layout.type_offset, OBJ, "type"), int_type)
    b.cbranch(exact_int, blocks["is_int"], blocks["slow"])
    b.position_at_end(blocks["is_int"])
    wire = b.call(_declare(module, "PyLong_AsUnsignedLongLong"), [wire_obj], name="wirelen")
    b.cbranch(b.icmp_unsigned("<=", wire, ir.Constant(I64, 0xFFFFFFFF)), blocks["wire_ok"], blocks["bad_wire"])
    b.position_at_end(blocks["bad_wire"])  # negative or too large (maybe with an OverflowError set)
    b.call(_declare(module, "PyErr_Clear"), [])
    b.branch(blocks["slow"])
    b.position_at_end(blocks["wire_ok"])
    b.store(wire, wire_slot)
    b.branch(blocks["packet"])

    b.position_at_end(blocks["packet"])
    packet_obj = b.load(args, name="packet_obj")
    exact_bytes = b.icmp_unsigned(
        "==", _field(b, packet_obj, layout.type_offset, OBJ, "type"), _external(module, BYTES_TYPE_SYMBOL)
    )
    b.cbranch(exact_bytes, blocks["is_bytes"], blocks["try_buffer"])
    b.position_at_end(blocks["is_bytes"])
    b.store(b.gep(packet_obj, [ir.Constant(I64, layout.bytes_data_offset)]), data_slot)
    b.store(_field(b, packet_obj, layout.bytes_size_offset, I64, "size"), len_slot)
    b.branch(blocks["run"])

    b.position_at_end(blocks["try_buffer"])
    rc = b.call(_declare(module, "PyObject_GetBuffer"), [packet_obj, view_ptr, ir.Constant(I32, 0)])
    b.cbranch(b.icmp_signed("==", rc, ir.Constant(I32, 0)), blocks["got_view"], blocks["no_buffer"])
    b.position_at_end(blocks["no_buffer"])  # let the slow path raise the documented TypeError
    b.call(_declare(module, "PyErr_Clear"), [])
    b.branch(blocks["slow"])
    b.position_at_end(blocks["got_view"])
    b.store(b.load(b.bitcast(view_ptr, I8.as_pointer().as_pointer()), name="buf"), data_slot)
    b.store(_field(b, view_ptr, PY_BUFFER_LEN_OFFSET, I64, "len"), len_slot)
    b.store(ir.Constant(I1, 1), held_slot)
    b.branch(blocks["run"])

    b.position_at_end(blocks["run"])
    length = b.load(len_slot, name="caplen64")
    given = b.load(wire_slot, name="given")
    wire64 = b.select(b.icmp_unsigned("==", given, ir.Constant(I64, NO_WIRELEN)), length, given)
    lengths_ok = b.and_(
        b.icmp_unsigned("<=", length, ir.Constant(I64, 0xFFFFFFFF)), b.icmp_unsigned(">=", wire64, length)
    )
    call = fn.append_basic_block("call")
    b.cbranch(lengths_ok, call, blocks["release"])
    b.position_at_end(call)
    countdown = b.bitcast(b.gep(self_obj, [ir.Constant(I64, layout.countdown_offset)]), I64.as_pointer())
    left = b.load(countdown, name="left")
    counted = fn.append_basic_block("counted")
    b.cbranch(b.icmp_unsigned("==", left, ir.Constant(I64, 0)), blocks["release"], counted)
    b.position_at_end(counted)
    b.store(b.sub(left, ir.Constant(I64, 1)), countdown)
    batch_fn = _field(b, self_obj, layout.filter_offset, abi.BATCH.ir_type().as_pointer(), "batch")
    b.store(ir.Constant(I64, 0), offset_arg)
    b.store(b.trunc(length, I32), caplen_arg)
    b.store(b.trunc(wire64, I32), wirelen_arg)
    no_meta = ir.Constant(ir.IntType(8).as_pointer(), None)  # single-packet calls: the default metadata
    b.call(batch_fn, [b.load(data_slot), offset_arg, caplen_arg, wirelen_arg, ir.Constant(I64, 1), no_meta, result_arg])
    result = b.load(result_arg, name="result")
    done = fn.append_basic_block("done")
    b.branch(done)

    b.position_at_end(blocks["release"])  # lengths out of range: give the buffer back, then slow path
    release_then_slow = fn.append_basic_block("release_then_slow")
    b.cbranch(b.load(held_slot), release_then_slow, blocks["slow"])
    b.position_at_end(release_then_slow)
    b.call(_declare(module, "PyBuffer_Release"), [view_ptr])
    b.branch(blocks["slow"])

    b.position_at_end(done)
    release_view = fn.append_basic_block("release_view")
    b.cbranch(b.load(held_slot), release_view, blocks["result"])
    b.position_at_end(release_view)
    b.call(_declare(module, "PyBuffer_Release"), [view_ptr])
    b.branch(blocks["result"])

    b.position_at_end(blocks["result"])
    _emit_return_int(b, module, self_obj, result, layout)

    b.position_at_end(blocks["slow"])
    _emit_redispatch(b, module, self_obj, args, nargs, kwnames)
    return fn


def _emit_return_int(b: ir.IRBuilder, module: ir.Module, self_obj: ir.Value, result: ir.Value, layout: Layout) -> None:
    """return result as a Python int: the table's object (a new reference) when the value is there."""
    fn = b.function
    table = _field(b, self_obj, layout.table_offset, OBJ, "table")
    values = b.bitcast(table, I64.as_pointer())
    objects = b.bitcast(b.gep(table, [ir.Constant(I64, 8 * (1 + MAX_CACHED_RESULTS))]), OBJ.as_pointer())
    value = b.zext(result, I64, name="value")
    count = b.load(values, name="count")
    head, body, hit, miss, fresh = (fn.append_basic_block(n) for n in ("t_head", "t_body", "t_hit", "t_miss", "fresh"))
    slot = _entry_alloca(fn, I64, "slot")
    b.store(ir.Constant(I64, 0), slot)
    b.branch(head)
    b.position_at_end(head)
    j = b.load(slot, name="j")
    b.cbranch(b.icmp_unsigned("<", j, count), body, fresh)
    b.position_at_end(body)
    b.cbranch(b.icmp_unsigned("==", b.load(b.gep(values, [b.add(j, ir.Constant(I64, 1))])), value), hit, miss)
    b.position_at_end(hit)
    obj = b.load(b.gep(objects, [j]), name="cached")
    b.call(_declare(module, "Py_IncRef"), [obj])
    b.ret(obj)
    b.position_at_end(miss)
    b.store(b.add(j, ir.Constant(I64, 1)), slot)
    b.branch(head)
    b.position_at_end(fresh)
    b.ret(b.call(_declare(module, "PyLong_FromUnsignedLong"), [value]))


def result_table_size() -> int:
    """Bytes of one filter's result table."""
    return 8 * (1 + 2 * MAX_CACHED_RESULTS)


def _emit_redispatch(
    b: ir.IRBuilder, module: ir.Module, self_obj: ir.Value, args: ir.Value, nargs: ir.Value, kwnames: ir.Value
) -> None:
    """return PyObject_VectorcallMethod("call", [self, *args, *kwvalues], nargs + 1, kwnames)"""
    fn = b.function
    has_kw = b.icmp_unsigned("!=", kwnames, ir.Constant(OBJ, None))
    count_kw, counted = fn.append_basic_block("count_kw"), fn.append_basic_block("counted")
    nkw_slot = _entry_alloca(fn, I64, "nkw")
    b.store(ir.Constant(I64, 0), nkw_slot)
    b.cbranch(has_kw, count_kw, counted)
    b.position_at_end(count_kw)
    b.store(b.call(_declare(module, "PyTuple_Size"), [kwnames]), nkw_slot)
    b.branch(counted)
    b.position_at_end(counted)
    total = b.add(nargs, b.load(nkw_slot), name="total")
    stack = b.alloca(OBJ, size=b.add(total, ir.Constant(I64, 1)), name="stack")
    b.store(self_obj, stack)
    # Copy args[0 .. total) to stack[1 ..]: a short loop (memcpy intrinsics' names depend on pointer mode).
    loop, body, done = (fn.append_basic_block(n) for n in ("copy", "copy_body", "call_method"))
    index = _entry_alloca(fn, I64, "i")
    b.store(ir.Constant(I64, 0), index)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.load(index)
    b.cbranch(b.icmp_unsigned("<", i, total), body, done)
    b.position_at_end(body)
    b.store(b.load(b.gep(args, [i])), b.gep(stack, [b.add(i, ir.Constant(I64, 1))]))
    b.store(b.add(i, ir.Constant(I64, 1)), index)
    b.branch(loop)
    b.position_at_end(done)
    method = _declare(module, "PyObject_VectorcallMethod")
    name_obj = _external(module, SLOW_METHOD_SYMBOL)
    b.ret(b.call(method, [name_obj, stack, b.add(nargs, ir.Constant(I64, 1)), kwnames]))
