"""The native ABI: every signature of generated code (and of the C functions it calls), written once.

Each `Signature` yields both sides of a call: the `llvmlite.ir` function type the lowering emits
(`ir_type`, or `declare` for a new function with its arguments named and annotated) and the ctypes
prototype Python calls it through (`prototype`). `tests/test_abi.py` checks that every function the
lowering generates has exactly its entry's type.

Batch-shaped functions share one argument list, `PACKETS` (the packets of a `Batch`): a per-packet
argument that every batch function must receive (the Linux dialect's metadata) is added there once.
Emitters read arguments by name (`args(fn)`), never by position.
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from llvmlite import ir


class Chunk(ctypes.Structure):
    """A file walker's arrays and results (a C struct the generated code reads with GEPs, by index)."""

    _fields_ = [
        ("starts", ctypes.c_void_p),  # u64[capacity + 1]: record starts, then where the walk stopped
        ("offsets", ctypes.c_void_p),  # u64[capacity]: packet data offsets
        ("caplens", ctypes.c_void_p),  # u32[capacity]
        ("wirelens", ctypes.c_void_p),  # u32[capacity]
        ("ifaces", ctypes.c_void_p),  # u32[capacity]: pcapng interface ids
        ("verdicts", ctypes.c_void_p),  # u32[capacity]: the filter's results (1 without a filter)
        ("iov", ctypes.c_void_p),  # struct iovec[capacity]: accepted records, adjacent ones merged
        ("group_bytes", ctypes.c_void_p),  # u64[capacity / IOV_GROUP + 1]: bytes per writev call
        ("capacity", ctypes.c_uint64),  # in: records per call at most
        ("limit", ctypes.c_uint64),  # in: stop once this many records are accepted
        ("stop_at", ctypes.c_uint64),  # in: stop before a record that starts at or after this offset
        ("end", ctypes.c_uint64),  # out: where the walk stopped (the file offset)
        ("status", ctypes.c_uint64),  # out: Status
        ("iov_count", ctypes.c_uint64),  # out: iovecs used
        ("accepted", ctypes.c_uint64),  # out: records accepted
        ("bytes", ctypes.c_uint64),  # out: bytes in the iovecs
    ]


CHUNK_FIELDS = {field[0]: index for index, field in enumerate(Chunk._fields_)}


class RingChunk(ctypes.Structure):
    """A ring walker's arrays and results (bpfjit.ringwalk): one slot per accepted frame of a ring block."""

    _fields_ = [
        ("offsets", ctypes.c_void_p),  # u64[capacity]: where each packet starts in the ring
        ("caplens", ctypes.c_void_p),  # u32[capacity]: bytes kept (the link header put back)
        ("wirelens", ctypes.c_void_p),  # u32[capacity]
        ("seconds", ctypes.c_void_p),  # u32[capacity]: tp_sec
        ("nanoseconds", ctypes.c_void_p),  # u32[capacity]: tp_nsec
        ("meta", ctypes.c_void_p),  # u8[capacity * META_SIZE]: metadata.META_DTYPE records
        ("iov", ctypes.c_void_p),  # struct iovec[capacity * 3]: record header, data, pcapng trailer
        ("headers", ctypes.c_void_p),  # u8[capacity * 48]: pcap/pcapng record headers (and trailers)
        ("capacity", ctypes.c_uint64),  # in: slots
        ("limit", ctypes.c_uint64),  # in: stop once this many frames are accepted
        ("snaplen", ctypes.c_uint64),  # in: the capture's snapshot length
        ("lo_index", ctypes.c_uint64),  # in: lo's ifindex (its outgoing copies are skipped)
        ("random", ctypes.c_uint64),  # in/out: xorshift64 state for the metadata's `random`
        ("position", ctypes.c_uint64),  # out: where the walk stopped (the next frame's header)
        ("walked", ctypes.c_uint64),  # out: frames walked
        ("skipped", ctypes.c_uint64),  # out: lo's outgoing copies skipped
        ("rejected", ctypes.c_uint64),  # out: frames the filter rejected
        ("iov_count", ctypes.c_uint64),  # out: iovecs used
        ("bytes", ctypes.c_uint64),  # out: bytes in the iovecs
        ("status", ctypes.c_uint64),  # out: ringwalk.Status
    ]


RING_CHUNK_FIELDS = {field[0]: index for index, field in enumerate(RingChunk._fields_)}
_RING_CHUNK_POINTEES = {"offsets": "u64", "caplens": "u32", "wirelens": "u32", "seconds": "u32",
                        "nanoseconds": "u32", "meta": "u8", "iov": "iovec", "headers": "u8"}  # fmt: skip
# Element types of Chunk's pointer fields (the others are u64).
_CHUNK_POINTEES = {"starts": "u64", "offsets": "u64", "caplens": "u32", "wirelens": "u32", "ifaces": "u32",
                   "verdicts": "u32", "iov": "iovec", "group_bytes": "u64"}  # fmt: skip


@cache
def ir_type(name: str) -> ir.Type:
    """The `llvmlite.ir` type of a type name used in the table below ("u32", "u8*", "chunk*", ...)."""
    from llvmlite import ir

    if name.endswith("*"):
        return ir_type(name[:-1]).as_pointer()
    scalars: dict[str, ir.Type] = {"void": ir.VoidType(), "bool": ir.IntType(1), "u8": ir.IntType(8),
                                   "u16": ir.IntType(16), "u32": ir.IntType(32), "i32": ir.IntType(32),
                                   "u64": ir.IntType(64)}  # fmt: skip
    if name in scalars:
        return scalars[name]
    if name == "object":  # PyObject: opaque, handled through i8 pointers and byte offsets
        return ir.IntType(8)
    if name == "iovec":  # struct iovec {void *base; size_t len}
        return ir.LiteralStructType([ir.IntType(8).as_pointer(), ir.IntType(64)])
    if name == "bpf_insn":  # struct bpf_insn {u16 code; u8 jt; u8 jf; u32 k}
        return ir.LiteralStructType([ir.IntType(16), ir.IntType(8), ir.IntType(8), ir.IntType(32)])
    if name == "chunk":
        return ir.LiteralStructType(
            [ir_type(_CHUNK_POINTEES[f] + "*") if f in _CHUNK_POINTEES else ir_type("u64") for f in CHUNK_FIELDS]
        )
    if name == "ring_chunk":
        return ir.LiteralStructType(
            [ir_type(_RING_CHUNK_POINTEES[f] + "*") if f in _RING_CHUNK_POINTEES else ir_type("u64")
             for f in RING_CHUNK_FIELDS]
        )  # fmt: skip
    raise KeyError(f"no native type {name!r}")


_CTYPES: dict[str, Any] = {"void": None, "u8": ctypes.c_uint8, "u16": ctypes.c_uint16, "u32": ctypes.c_uint32,
                           "i32": ctypes.c_int32, "u64": ctypes.c_uint64}  # fmt: skip


def c_type(name: str) -> Any:
    """The ctypes type passed for a type name: pointers are plain addresses (`c_void_p`)."""
    return ctypes.c_void_p if name.endswith("*") else _CTYPES[name]


class Param(NamedTuple):
    name: str
    type: str
    attributes: tuple[str, ...] = ()  # LLVM parameter attributes the lowering may rely on


class Signature(NamedTuple):
    """`result name(params...)`; `attributes` are function attributes every definition carries."""

    result: str
    params: tuple[Param, ...]
    attributes: tuple[str, ...] = ()

    def ir_type(self) -> ir.FunctionType:
        from llvmlite import ir

        return ir.FunctionType(ir_type(self.result), [ir_type(p.type) for p in self.params])

    def declare(self, module: ir.Module, name: str) -> ir.Function:
        """A new function `name` of this type in `module`, arguments named and annotated."""
        from llvmlite import ir

        fn = ir.Function(module, self.ir_type(), name)
        for arg, param in zip(fn.args, self.params, strict=True):
            arg.name = param.name
            for attribute in param.attributes:
                arg.attributes.add(attribute)
        for attribute in self.attributes:
            fn.attributes.add(attribute)
        return fn

    def declare_external(self, module: ir.Module, name: str) -> ir.Function:
        """`name` declared (not defined) in `module`: a C function the generated code calls."""
        from llvmlite import ir

        existing = module.globals.get(name)
        return existing if existing is not None else ir.Function(module, self.ir_type(), name)

    def prototype(self) -> Any:
        """The ctypes function type to call code of this signature with (releases the GIL)."""
        return _prototype(self)


@cache
def _prototype(signature: Signature) -> Any:
    return ctypes.CFUNCTYPE(c_type(signature.result), *(c_type(p.type) for p in signature.params))


def args(fn: ir.Function) -> dict[str, ir.Argument]:
    """A declared function's arguments by name."""
    return {arg.name: arg for arg in fn.args}


# -- generated code ----------------------------------------------------------------------------------
# The packets of a Batch: packet i is base[offsets[i] : offsets[i] + caplens[i]], wirelens[i] long on
# the wire, for i < n; `meta` is NULL or n 32-byte metadata records (`linux.META_LAYOUT`), which only
# linux-dialect programs read (a NULL record reads as `linux.Meta()`'s defaults). Every batch-shaped
# function starts with these.
PACKETS = (
    Param("base", "u8*"),
    Param("offsets", "u64*", ("captures(none)",)),
    Param("caplens", "u32*", ("captures(none)",)),
    Param("wirelens", "u32*", ("captures(none)",)),
    Param("n", "u64"),
    Param("meta", "u8*", ("captures(none)",)),
)
# One packet, as a filter body sees it.
PACKET = (Param("P", "u8*", ("noalias", "captures(none)")), Param("caplen", "u32"), Param("wirelen", "u32"))

# A filter body: the BPF result for one packet. Always inlined (into a batch loop, a classifier, a walker).
FILTER = Signature("u32", PACKET, ("alwaysinline", "nounwind"))
# A compiled filter's only machine code: out[i] <- the filter's result for packet i. Single packets
# are batches of one. (`Filter.address`, and what libpcap's loop in the benchmark runs too.)
BATCH = Signature("void", (*PACKETS, Param("out", "u32*", ("noalias",))), ("nounwind",))
# The classifier: bit i of mask[i / 64] set when filter i accepts / the first accepting filter's index
# (or -1) with its result in *value; and their batch loops (out: words per packet / one index per packet).
CLASSIFY_BITMASK = Signature("void", (*PACKET, Param("mask", "u64*")), ("alwaysinline",))
CLASSIFY_FIRST = Signature("i32", (*PACKET, Param("value", "u32*")), ("alwaysinline",))
CLASSIFY_BITMASK_BATCH = Signature(
    "void", (*PACKETS, Param("out", "u64*"), Param("values", "u32*")), ("nounwind",)
)
CLASSIFY_FIRST_BATCH = Signature("void", (*PACKETS, Param("out", "i32*"), Param("values", "u32*")), ("nounwind",))
# The linux dialect's computed ancillary loads (bpfjit.lower_linux), called by the filters that use
# them: SKF_AD_PAY_OFFSET, and SKF_AD_NLATTR / NLATTR_NEST (`nest` 1) for A = `a`, X = `x`.
PAY_OFFSET = Signature(
    "u32", (Param("P", "u8*", ("noalias", "captures(none)")), Param("caplen", "u32"), Param("protocol", "u32"),
            Param("net_offset", "u32")), ("nounwind",),
)  # fmt: skip
NLATTR = Signature(
    "u32", (Param("P", "u8*", ("noalias", "captures(none)")), Param("caplen", "u32"), Param("a", "u32"),
            Param("x", "u32"), Param("nest", "u32")), ("nounwind",),
)  # fmt: skip
# Capture-file walkers (bpfjit.walkers): records from `pos` into a Chunk; returns the records walked.
WALK_PCAP = Signature(
    "u64",
    (Param("file", "u8*", ("noalias",)), Param("size", "u64"), Param("pos", "u64"), Param("swapped", "u32"),
     Param("hdrlen", "u32"), Param("max_caplen", "u32"), Param("snaplen", "u32"),
     Param("chunk", "chunk*", ("noalias",))),
    ("nounwind",),
)  # fmt: skip
WALK_PCAPNG = Signature(
    "u64",
    (Param("file", "u8*", ("noalias",)), Param("size", "u64"), Param("pos", "u64"), Param("swapped", "u32"),
     Param("iface_snaplens", "u32*", ("noalias",)), Param("iface_slots", "u32*", ("noalias",)),
     Param("n_ifaces", "u32"), Param("chunk", "chunk*", ("noalias",))),
    ("nounwind",),
)  # fmt: skip
# The live-capture ring walker (bpfjit.ringwalk): the TPACKET_V3 frames of one ring block, `frames`
# of them from the header at `pos`, inside [0, end) of the mapped ring, into a RingChunk; returns the
# frames accepted.
WALK_RING = Signature(
    "u64",
    (Param("ring", "u8*", ("noalias",)), Param("pos", "u64"), Param("frames", "u64"), Param("end", "u64"),
     Param("chunk", "ring_chunk*", ("noalias",))),
    ("nounwind",),
)  # fmt: skip
# Walker helpers: copy iovecs into one buffer; list a chunk's accepted record indices.
GATHER = Signature(
    "u64", (Param("iov", "iovec*", ("noalias",)), Param("count", "u64"), Param("out", "u8*", ("noalias",))),
    ("nounwind",),
)
ACCEPTED_INDICES = Signature(
    "u64", (Param("verdicts", "u32*", ("noalias",)), Param("n", "u64"), Param("out", "u32*", ("noalias",))),
    ("nounwind",),
)
# Every filter's Python entry (bpfjit.pyentry): a CPython vectorcall function.
ENTRY = Signature(
    "object*",
    (Param("self", "object*"), Param("args", "object**"), Param("nargsf", "u64"), Param("kwnames", "object*")),
)

# -- C functions generated code calls ------------------------------------------------------------------
# libpcap's interpreter (the benchmark's native loop): u_int bpf_filter(insns, packet, wirelen, caplen).
LIBPCAP_BPF_FILTER = Signature(
    "u32", (Param("insns", "bpf_insn*"), Param("packet", "u8*"), Param("wirelen", "u32"), Param("caplen", "u32"))
)
# The CPython C-API functions the Python entry calls (stable ABI), resolved from the running interpreter.
C_API: dict[str, Signature] = {
    "PyObject_GetBuffer": Signature("i32", (Param("obj", "object*"), Param("view", "u8*"), Param("flags", "i32"))),
    "PyBuffer_Release": Signature("void", (Param("view", "u8*"),)),
    "PyErr_Clear": Signature("void", ()),
    "PyLong_FromUnsignedLong": Signature("object*", (Param("value", "u64"),)),
    "PyLong_AsUnsignedLongLong": Signature("u64", (Param("obj", "object*"),)),
    "PyObject_VectorcallMethod": Signature(
        "object*",
        (Param("name", "object*"), Param("args", "object**"), Param("nargsf", "u64"), Param("kwnames", "object*")),
    ),
    "PyTuple_Size": Signature("u64", (Param("tuple", "object*"),)),
    "Py_IncRef": Signature("void", (Param("obj", "object*"),)),
}

# Every signature of the table by name (tests/test_abi.py walks it).
GENERATED: dict[str, Signature] = {
    "FILTER": FILTER, "BATCH": BATCH, "CLASSIFY_BITMASK": CLASSIFY_BITMASK, "CLASSIFY_FIRST": CLASSIFY_FIRST,
    "CLASSIFY_BITMASK_BATCH": CLASSIFY_BITMASK_BATCH, "CLASSIFY_FIRST_BATCH": CLASSIFY_FIRST_BATCH,
    "PAY_OFFSET": PAY_OFFSET, "NLATTR": NLATTR,
    "WALK_PCAP": WALK_PCAP, "WALK_PCAPNG": WALK_PCAPNG, "WALK_RING": WALK_RING, "GATHER": GATHER,
    "ACCEPTED_INDICES": ACCEPTED_INDICES,
    "ENTRY": ENTRY,
}  # fmt: skip
