"""The Python entry point of a filter: a CPython vectorcall function emitted in IR beside it.

    PyObject *NAME_py(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)

A ctypes call costs ~300 ns, ten times a filter's work, so `f(packet)` does not go through ctypes:
the filter object's type is a vectorcall type (see `calltype`), and its instances point at this
function. The fast path takes exactly one positional buffer argument, borrows its bytes with
`PyObject_GetBuffer(PyBUF_SIMPLE)` (no copy; C-contiguous only), runs the filter inlined and
returns a Python int. Anything else (a wirelen, keywords, a non-buffer, a strided view, > 4 GiB)
re-dispatches to the Python method `self.call(...)`, which checks its arguments and raises the
documented errors. Only stable C-API functions are called; `Py_buffer`'s layout is part of the
stable ABI since 3.11 (buf at offset 0, len at offset 16 on 64-bit).
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

I8, I32, I64 = ir.IntType(8), ir.IntType(32), ir.IntType(64)
OBJ = I8.as_pointer()  # PyObject *
ENTRY_TYPE = ir.FunctionType(OBJ, [OBJ, OBJ.as_pointer(), I64, OBJ])
PY_BUFFER_SIZE = 80  # sizeof(Py_buffer) on 64-bit
PY_BUFFER_LEN_OFFSET = 16
PY_VECTORCALL_NARGS_MASK = (1 << 63) - 1
SLOW_METHOD_SYMBOL = "bpfjit_slow_method_name"  # a `str` object: the name of the method to re-dispatch to
BYTES_TYPE_SYMBOL = "PyBytes_Type"
MAX_CACHED_RESULTS = 8

# C-API functions the entry calls; resolved from the running interpreter by the native module.
C_API: dict[str, ir.FunctionType] = {
    "PyObject_GetBuffer": ir.FunctionType(I32, [OBJ, I8.as_pointer(), I32]),
    "PyBuffer_Release": ir.FunctionType(ir.VoidType(), [I8.as_pointer()]),
    "PyErr_Clear": ir.FunctionType(ir.VoidType(), []),
    "PyLong_FromUnsignedLong": ir.FunctionType(OBJ, [I64]),
    "PyObject_VectorcallMethod": ir.FunctionType(OBJ, [OBJ, OBJ.as_pointer(), I64, OBJ]),
    "PyTuple_Size": ir.FunctionType(I64, [OBJ]),
    "Py_IncRef": ir.FunctionType(ir.VoidType(), [OBJ]),
}


@dataclass(frozen=True)
class BytesLayout:
    """Where an exact `bytes` object keeps its type, size and data (checked at run time by calltype)."""

    type_offset: int
    size_offset: int
    data_offset: int


def _declare(module: ir.Module, name: str) -> ir.Function:
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    return ir.Function(module, C_API[name], name)


def results_symbol(name: str) -> str:
    return name + "_results"


def lower_entry(
    module: ir.Module,
    filter_fn: ir.Function,
    name: str,
    bytes_layout: BytesLayout | None,
    cached_results: tuple[int, ...] = (),
) -> ir.Function:
    """Add the vectorcall entry for `filter_fn` (i32 (i8*, i32, i32)) to `module`.

    `bytes_layout` (verified on this interpreter, or None) lets exact `bytes` skip the buffer
    protocol; `cached_results` are return values whose int objects the entry hands out from the
    global array `<name>_results` (filled in after compilation) instead of allocating one per call.
    """
    fn = ir.Function(module, ENTRY_TYPE, name)
    self_obj, args, nargsf, kwnames = fn.args
    blocks = ("entry", "one_arg", "is_bytes", "try_buffer", "no_buffer", "got", "too_long", "run_view", "slow")
    entry, one_arg, is_bytes, try_buffer, no_buffer, got, too_long, run_view, slow = (
        fn.append_basic_block(n) for n in blocks
    )
    b = ir.IRBuilder(entry)
    view = b.alloca(ir.ArrayType(I8, PY_BUFFER_SIZE), name="view")
    view.align = 8
    view_ptr = b.bitcast(view, I8.as_pointer())
    nargs = b.and_(nargsf, ir.Constant(I64, PY_VECTORCALL_NARGS_MASK), name="nargs")
    single = b.icmp_unsigned("==", nargs, ir.Constant(I64, 1))
    no_kw = b.icmp_unsigned("==", kwnames, ir.Constant(OBJ, None))
    b.cbranch(b.and_(single, no_kw), one_arg, slow)

    b.position_at_end(one_arg)
    packet_obj = b.load(args, name="packet")
    if bytes_layout is None:
        b.branch(try_buffer)
    else:
        bytes_type = module.globals.get(BYTES_TYPE_SYMBOL) or ir.GlobalVariable(module, I8, BYTES_TYPE_SYMBOL)
        type_ptr = b.bitcast(b.gep(packet_obj, [ir.Constant(I64, bytes_layout.type_offset)]), OBJ.as_pointer())
        exact = b.icmp_unsigned("==", b.load(type_ptr, name="type"), bytes_type)
        b.cbranch(exact, is_bytes, try_buffer)
    b.position_at_end(is_bytes)
    if bytes_layout is None:
        b.unreachable()
    else:
        size_ptr = b.bitcast(b.gep(packet_obj, [ir.Constant(I64, bytes_layout.size_offset)]), I64.as_pointer())
        size = b.load(size_ptr, name="size")
        data = b.gep(packet_obj, [ir.Constant(I64, bytes_layout.data_offset)], name="data")
        fits = b.icmp_unsigned("<=", size, ir.Constant(I64, 0xFFFFFFFF))
        run_bytes = fn.append_basic_block("run_bytes")
        b.cbranch(fits, run_bytes, slow)
        b.position_at_end(run_bytes)
        caplen = b.trunc(size, I32)
        result = b.call(filter_fn, [data, caplen, caplen], name="result")
        _emit_return_int(b, module, name, result, cached_results)

    b.position_at_end(try_buffer)
    rc = b.call(_declare(module, "PyObject_GetBuffer"), [packet_obj, view_ptr, ir.Constant(I32, 0)])
    b.cbranch(b.icmp_signed("==", rc, ir.Constant(I32, 0)), got, no_buffer)

    b.position_at_end(no_buffer)  # let the slow path raise the documented TypeError
    b.call(_declare(module, "PyErr_Clear"), [])
    b.branch(slow)

    b.position_at_end(got)
    buf = b.load(b.bitcast(view_ptr, I8.as_pointer().as_pointer()), name="buf")
    len_ptr = b.bitcast(b.gep(view_ptr, [ir.Constant(I64, PY_BUFFER_LEN_OFFSET)]), I64.as_pointer())
    length = b.load(len_ptr, name="len")
    b.cbranch(b.icmp_unsigned("<=", length, ir.Constant(I64, 0xFFFFFFFF)), run_view, too_long)

    b.position_at_end(too_long)
    b.call(_declare(module, "PyBuffer_Release"), [view_ptr])
    b.branch(slow)

    b.position_at_end(run_view)
    caplen = b.trunc(length, I32)
    result = b.call(filter_fn, [buf, caplen, caplen], name="result")
    b.call(_declare(module, "PyBuffer_Release"), [view_ptr])
    _emit_return_int(b, module, name, result, cached_results)

    b.position_at_end(slow)
    _emit_redispatch(b, module, self_obj, args, nargs, kwnames)
    return fn


def _emit_return_int(
    b: ir.IRBuilder, module: ir.Module, name: str, result: ir.Value, cached: tuple[int, ...]
) -> None:
    """return result as a Python int: a cached object (new reference) for the usual values."""
    if cached:
        symbol = results_symbol(name)
        table = module.globals.get(symbol)
        if table is None:
            table = ir.GlobalVariable(module, ir.ArrayType(OBJ, len(cached)), symbol)
            table.initializer = ir.Constant(table.type.pointee, None)
        for slot, value in enumerate(cached):
            hit = b.function.append_basic_block(f"cached{slot}")
            miss = b.function.append_basic_block(f"not_cached{slot}")
            b.cbranch(b.icmp_unsigned("==", result, ir.Constant(I32, value)), hit, miss)
            b.position_at_end(hit)
            obj = b.load(b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, slot)]))
            b.call(_declare(module, "Py_IncRef"), [obj])
            b.ret(obj)
            b.position_at_end(miss)
    b.ret(b.call(_declare(module, "PyLong_FromUnsignedLong"), [b.zext(result, I64)]))


def _emit_redispatch(
    b: ir.IRBuilder, module: ir.Module, self_obj: ir.Value, args: ir.Value, nargs: ir.Value, kwnames: ir.Value
) -> None:
    """return PyObject_VectorcallMethod("call", [self, *args, *kwvalues], nargs + 1, kwnames)"""
    fn = b.function
    has_kw = b.icmp_unsigned("!=", kwnames, ir.Constant(OBJ, None))
    count_kw, counted = fn.append_basic_block("count_kw"), fn.append_basic_block("counted")
    before = b.block
    b.cbranch(has_kw, count_kw, counted)
    b.position_at_end(count_kw)
    nkw = b.call(_declare(module, "PyTuple_Size"), [kwnames])
    b.branch(counted)
    b.position_at_end(counted)
    kw = b.phi(I64, name="nkw")
    kw.add_incoming(ir.Constant(I64, 0), before)
    kw.add_incoming(nkw, count_kw)
    total = b.add(nargs, kw, name="total")
    stack = b.alloca(OBJ, size=b.add(total, ir.Constant(I64, 1)), name="stack")
    b.store(self_obj, stack)
    # Copy args[0 .. total) to stack[1 ..]: a short loop (memcpy intrinsics' names depend on pointer mode).
    loop, body, done = (fn.append_basic_block(n) for n in ("copy", "copy_body", "call"))
    start = b.block
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64, name="i")
    i.add_incoming(ir.Constant(I64, 0), start)
    b.cbranch(b.icmp_unsigned("<", i, total), body, done)
    b.position_at_end(body)
    item = b.load(b.gep(args, [i]))
    b.store(item, b.gep(stack, [b.add(i, ir.Constant(I64, 1))]))
    nxt = b.add(i, ir.Constant(I64, 1))
    i.add_incoming(nxt, body)
    b.branch(loop)
    b.position_at_end(done)
    name_obj = module.globals.get(SLOW_METHOD_SYMBOL)
    if name_obj is None:
        name_obj = ir.GlobalVariable(module, I8, SLOW_METHOD_SYMBOL)
    method = _declare(module, "PyObject_VectorcallMethod")
    b.ret(b.call(method, [name_obj, stack, b.add(nargs, ir.Constant(I64, 1)), kwnames]))
