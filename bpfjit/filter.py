"""`compile()` and `Filter`: a program (or expression) made into a callable filter.

    source -> Program -> pipeline.STAGES (validate, analyse, lower, translate, optimise, generate) -> Filter

Machine code comes in two tiers, from the same optimised IR. `compile()` returns the baseline tier:
LLVM's fast code generator (FastISel, fast register allocation) makes it in about a quarter of the
time the full one takes, and its code is 5-110% slower on the benchmark suite (still faster than
libpcap's interpreter loop). A filter tiers up - the IR is machine-coded again at its opt_level -
when `tier_up()` is called, or by itself once it has run TIER_UP_PACKETS packets in batches or as
many single-packet calls (the native entry counts those down). A program's tiers (`TieredCode`) are
shared by every Filter of it and kept in a cache (`caches.CodeCache`).
"""

from __future__ import annotations

import ctypes
import itertools
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from . import abi, codecache, cpython, metadata, native, pipeline, pyentry
from .batch import Batch, buffer_address
from .buffers import check_lengths, packet_view
from .caches import CodeCache
from .dialects import PCAP, Dialect, DialectLike, dialect_of
from .linux import Meta
from .opcodes import BPF_K, BPF_RET
from .program import DEFAULT_SNAPLEN, InsnLike, Program
from .validate import validate

# ctypes releases the GIL for the call, so threads filtering different batches run in parallel.
BATCH_PROTOTYPE = abi.BATCH.prototype()
OPT_LEVELS = (0, 1, 2, 3)
# The method the native entry re-dispatches to; interned and kept alive for the process's life.
_SLOW_METHOD = sys.intern("call")
FAST_ENTRY = cpython.NATIVE_ENTRY  # False: every call takes the ctypes path (see cpython)

# Packets (in batches, or single-packet calls) after which a filter tiers up. The baseline tier costs
# ~3-40 ns more a packet here, so by then it has cost about what the ~5 ms recompile does.
TIER_UP_PACKETS = 1 << 17
NO_COUNTDOWN = (1 << 64) - 1  # the native entry's countdown once tiered up: never reaches 0
Tier = Literal["baseline", "optimised"]

# Compiled programs (~40 KiB each, ~80 once tiered up): every one a live Filter uses, and the 16
# most recently used after their last Filter is gone. Keyed by (program, opt_level, dialect name).
_codes: CodeCache[tuple[Program, int, str], TieredCode] = CodeCache(keep=16)
_names = itertools.count()


_entry: dict[str, Any] = {}


def entry_address() -> int:
    """The shared vectorcall entry (pyentry), compiled on first use; 0 where it is not available."""
    if not FAST_ENTRY:
        return 0
    if "code" not in _entry:
        with native.LLVM_LOCK:
            if "code" not in _entry:
                for name in pyentry.C_API:
                    native.add_symbol(name, cpython.c_api_address(name))
                native.add_symbol(pyentry.BYTES_TYPE_SYMBOL, id(bytes))
                native.add_symbol(pyentry.INT_TYPE_SYMBOL, id(int))
                native.add_symbol(pyentry.SLOW_METHOD_SYMBOL, id(_SLOW_METHOD))
                layout = cpython.entry_layout()
                key = codecache.key("python entry", [sys.implementation.cache_tag, sys.version, tuple(layout),
                                                     tuple(pyentry.C_API), pyentry.MAX_CACHED_RESULTS])  # fmt: skip
                _entry["code"] = native.build(lambda: pyentry.entry_module(layout), 2, (pyentry.ENTRY_NAME,),
                                              cache_key=key)  # fmt: skip
    return int(_entry["code"].addresses[pyentry.ENTRY_NAME])


def _cached_results(program: Program) -> tuple[int, ...]:
    """`ret #k` values the Python entry returns as prebuilt ints (CPython caches 0..256 itself)."""
    values = sorted({insn.k for insn in program if insn.code == BPF_RET | BPF_K and insn.k > 256})
    return tuple(values[: pyentry.MAX_CACHED_RESULTS])


def _result_table(program: Program) -> tuple[ctypes.Array[ctypes.c_uint64], list[int]]:
    """The table pyentry reads: count, values, then the int objects' addresses (kept alive by the caller)."""
    values = _cached_results(program)
    objects = [int(value) for value in values]  # distinct objects, owned by the table's keeper
    table = (ctypes.c_uint64 * (1 + 2 * pyentry.MAX_CACHED_RESULTS))()
    table[0] = len(values)
    for slot, (value, obj) in enumerate(zip(values, objects, strict=True)):
        table[1 + slot] = value
        table[1 + pyentry.MAX_CACHED_RESULTS + slot] = id(obj)
    return table, objects


class TieredCode:
    """A program's machine code: the baseline tier, then the optimising one once it is made.

    Every tier stays alive with this object: a thread may still be running an earlier one. Each tier
    is stored in, and loaded from, the disk cache (`codecache`) under a key of the program's bytes,
    the opt level, the dialect and the tier's code-generation level; the batch function's name
    derives from the first three (one program compiled in two dialects is two symbols)."""

    def __init__(self, program: Program, opt_level: int, dialect: Dialect = PCAP):
        self._program_bytes = program.to_bytes("little")
        self.dialect = dialect
        suffix = codecache.key("filter", [self._program_bytes, opt_level, dialect.name]).symbol_suffix
        self.name = f"bpf_filter_{suffix}"
        self.opt_level = opt_level
        # The batch loop is the filter's only machine code: single packets are batches of one. (A
        # separate single-packet function cost ~1.5 ms more of code generation per compile.)
        baseline = min(opt_level, pipeline.BASELINE_CODEGEN)
        self.tiers = [pipeline.compile_program(program, opt_level, self.name, self._cache_key(baseline), dialect)]
        self._table, self._objects = _result_table(program)
        self.table = ctypes.addressof(self._table)
        self._lock = threading.Lock()

    def _cache_key(self, codegen_level: int) -> codecache.Key:
        return codecache.key("filter code", [self._program_bytes, self.opt_level, codegen_level, self.dialect.name])

    @property
    def current(self) -> native.MachineCode:
        return self.tiers[-1]

    @property
    def tiered_up(self) -> bool:
        return self.current.codegen_level == self.opt_level

    def batch_address(self, tier: native.MachineCode) -> int:
        return int(tier.addresses[self.name])

    def tier(self, name: Tier) -> native.MachineCode:
        """The baseline tier, or the optimising one (made on first use)."""
        return self.tiers[0] if name == "baseline" else self.tier_up()

    def tier_up(self) -> native.MachineCode:
        """The optimising tier, machine-coded from the same IR on first use."""
        with self._lock:
            if not self.tiered_up:
                key = self._cache_key(self.opt_level)
                self.tiers.append(pipeline.tier_up(self.tiers[0], self.opt_level, self.name, key))
            return self.current


def tiered_code(program: Program, opt_level: int, dialect: Dialect = PCAP) -> TieredCode:
    """The machine code for a program validated in `dialect`, from the cache when it was compiled before."""
    return _codes.get((program, opt_level, dialect.name), lambda: TieredCode(program, opt_level, dialect))


def clear_cache() -> None:
    """Forget compiled code that no live Filter uses (benchmarks use it to time cold compiles)."""
    _codes.clear()


_layouts: dict[int, tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint32]]] = {}


def _record_layout(n: int, size: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint32]]:
    """Offsets 0, size, 2*size, ... and lengths `size` for at least n records: made once per size and
    grown to the largest n asked for (read-only, so threads share them; a grown pair replaces the old)."""
    layout = _layouts.get(size)
    if layout is None or len(layout[0]) < n:
        count = max(n, 1024)
        offsets = np.arange(count, dtype=np.uint64) * np.uint64(size)
        lengths = np.full(count, size, dtype=np.uint32)
        offsets.flags.writeable = lengths.flags.writeable = False
        layout = _layouts[size] = (offsets, lengths)
    return layout


_scratch = threading.local()


def _new_scratch() -> tuple[Any, ...]:
    """This thread's (lengths, out, the batch call's other arguments) for single-packet ctypes calls."""
    offset, lengths, out = ctypes.c_uint64(0), (ctypes.c_uint32 * 2)(), ctypes.c_uint32()
    # plain addresses: ctypes converts ints to pointers far faster than byref() objects
    at = ctypes.addressof
    tail = (at(offset), at(lengths), at(lengths) + 4, 1, None, at(out))
    _scratch.arrays = (lengths, out, tail, offset)
    return _scratch.arrays


_FilterBase: Any = cpython.NativeCallable if FAST_ENTRY else object


class Filter(_FilterBase):
    """A cBPF program compiled to native code. `f(packet)` returns the BPF result (0 = drop).

    Build one with `bpfjit.compile`. `f(packet)` and `f(packet, wirelen)` run the native entry
    directly (see `pyentry`); keywords, unusual arguments and `f.call(...)` take the checked ctypes
    route, which raises the documented errors (and is the only route under BPFJIT_CALL_PATH=ctypes).
    """

    program: Program
    opt_level: int
    expression: str | None
    linktype: int | str | None
    dialect: Dialect

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("build a Filter with bpfjit.compile(program_or_expression)")

    @classmethod
    def _create(
        cls, program: Program, opt_level: int, expression: str | None = None, linktype: int | str | None = None,
        dialect: Dialect = PCAP,
    ) -> Filter:  # fmt: skip
        code = tiered_code(program, opt_level, dialect)
        self: Filter = cls.__new__(cls)
        self.program = program
        self.dialect = dialect
        self.opt_level = opt_level
        self.expression = expression
        self.linktype = linktype
        self._code = code
        self._packets = 0  # packets run in batches and ctypes calls, towards TIER_UP_PACKETS
        self._adopt(code.current)
        return self

    def _adopt(self, tier: native.MachineCode, pinned: bool = False) -> None:
        """Point both call paths at `tier`'s machine code (`pinned`: and never tier up by itself)."""
        address = self._code.batch_address(tier)
        self._batch = BATCH_PROTOTYPE(address)
        self._tier = tier
        counting = not pinned and not self.optimized
        if not counting:
            self._packets = NO_COUNTDOWN  # nothing left to count
        if FAST_ENTRY:
            countdown = TIER_UP_PACKETS if counting else NO_COUNTDOWN
            cpython.set_entry(self, entry_address(), address, self._code.table, countdown)

    def _count(self, packets: int) -> None:
        """Count packets run on the baseline tier (the native entry counts its own calls down to 0,
        then hands one call to `call`); tier up past TIER_UP_PACKETS."""
        self._packets += packets
        if self._packets > TIER_UP_PACKETS or (FAST_ENTRY and cpython.countdown(self) == 0):
            self.tier_up()

    def tier_up(self) -> Filter:
        """Switch to the optimising tier now (made once per program; ~5 ms), and return the filter.

        Without this, a filter tiers up by itself after TIER_UP_PACKETS packets (in batches, or one
        per call)."""
        tier = self._code.tier_up()
        if tier is not self._tier:
            self._adopt(tier)
        return self

    optimize = tier_up  # the name the README used first; `compile(optimize=)` is libpcap's optimiser flag

    def use_tier(self, tier: Tier) -> Filter:
        """Run `tier` ("baseline" or "optimised") from now on, and never tier up by itself: for tests
        and benchmarks that must know which code runs. Returns the filter."""
        if tier not in ("baseline", "optimised"):
            raise ValueError(f"tier must be 'baseline' or 'optimised', not {tier!r}")
        self._adopt(self._code.tier(tier), pinned=True)
        return self

    @property
    def code(self) -> TieredCode:
        """The program's machine code in its tiers, shared by every Filter of the same program."""
        return self._code

    @property
    def tier(self) -> Tier:
        """The tier this filter runs: "baseline" until it tiers up, then "optimised"."""
        return "optimised" if self.optimized else "baseline"

    @property
    def optimized(self) -> bool:
        """Whether this filter runs the optimising tier (see the module's docstring)."""
        return self._tier.codegen_level == self.opt_level

    def call(self, packet: object, wirelen: int | None = None, *, meta: Meta | Mapping[str, int] | None = None) -> int:
        """Run the filter through ctypes, with every argument checked (the fallback call path).
        `meta`: what the kernel knows about the packet (`linux.Meta`), for linux-dialect filters."""
        if self._packets <= TIER_UP_PACKETS:
            self._count(1)
        record = None
        if meta is not None:
            record = self._meta_record(meta, packet)
        if isinstance(packet, bytes):
            caplen = len(packet)
            return self._run_one(packet, caplen, check_lengths(caplen, wirelen), record)
        view = packet_view(packet)
        caplen = len(view)
        wire = check_lengths(caplen, wirelen)
        if caplen == 0:
            return self._run_one(None, 0, wire, record)
        address, keep = buffer_address(view)
        result = self._run_one(address, caplen, wire, record)
        del keep
        return result

    def _meta_record(self, meta: Meta | Mapping[str, int], packet: object) -> npt.NDArray[Any]:
        if self.dialect.offsets != "signed":
            raise ValueError(f"packet metadata is read by linux-dialect filters only, not {self.dialect.name!r} ones")
        return metadata.meta_record(meta, packet_view(packet))

    def _run_one(
        self, data: bytes | int | None, caplen: int, wirelen: int, meta: npt.NDArray[Any] | None = None
    ) -> int:
        """One packet as a batch of one, through ctypes (each thread has its own argument arrays)."""
        scratch = _scratch.__dict__.get("arrays") or _new_scratch()
        lengths, out, tail = scratch[:3]
        lengths[0] = caplen
        lengths[1] = wirelen
        if meta is None:
            self._batch(data, *tail)
        else:
            self._batch(data, *tail[:4], meta.ctypes.data, tail[5])
        return int(out.value)

    if not FAST_ENTRY:
        __call__ = call

    def run_batch(
        self, packets: Batch | Sequence[Any], out: npt.NDArray[np.uint32] | None = None, *, meta: Any = None
    ) -> npt.NDArray[np.uint32]:
        """The filter's result for every packet, in one native call (the GIL is released meanwhile).

        `packets` is a `Batch` or a sequence of bytes-like packets (copied into a Batch first).
        `out`, if given, is a C-contiguous uint32 array of the batch's length to write into.
        `meta` (linux-dialect filters): one `metadata.META_DTYPE` record per packet (`meta_array`);
        without it every packet has `linux.Meta()`'s defaults.
        """
        batch = packets if isinstance(packets, Batch) else Batch.from_packets(packets)
        n = len(batch)
        if meta is not None:
            if self.dialect.offsets != "signed":
                raise ValueError(
                    f"packet metadata is read by linux-dialect filters only, not {self.dialect.name!r} ones"
                )
            meta = metadata.check_meta_array(meta, n)
        out = self._prepare_run(n, out)
        if n:
            self._batch(
                batch.data.ctypes.data, batch.offsets.ctypes.data, batch.caplens.ctypes.data,
                batch.wirelens.ctypes.data, n, None if meta is None else meta.ctypes.data, out.ctypes.data,
            )  # fmt: skip
        return out

    def _prepare_run(self, n: int, out: npt.NDArray[np.uint32] | None) -> npt.NDArray[np.uint32]:
        """The output array for `n` results (checked when the caller gave one); count the packets
        towards the tier-up, and adopt the optimised tier another Filter of this program made."""
        if out is None:
            out = np.empty(n, dtype=np.uint32)
        elif out.dtype != np.uint32 or out.shape != (n,) or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writable C-contiguous uint32 array of shape ({n},)")
        if self._packets <= TIER_UP_PACKETS:
            self._count(n)
        if self._tier is not self._code.current and self._packets != NO_COUNTDOWN:
            self._adopt(self._code.current)
        return out

    def run_records(
        self, records: Any, size: int, out: npt.NDArray[np.uint32] | None = None
    ) -> npt.NDArray[np.uint32]:
        """The result for every `size`-byte record of a buffer laid out back to back (seccomp's
        64-byte `seccomp_data`), caplen = wirelen = `size`: one native call with the GIL released,
        without building a Batch (its offset and length arrays are shared by every call)."""
        view = packet_view(records)
        if size <= 0 or len(view) % size:
            raise ValueError(f"a buffer of {len(view)} bytes is not a whole number of {size}-byte records")
        n = len(view) // size
        out = self._prepare_run(n, out)
        if n:
            offsets, lengths = _record_layout(n, size)
            address, keep = buffer_address(view)
            self._batch(address, offsets.ctypes.data, lengths.ctypes.data, lengths.ctypes.data, n, None,
                        out.ctypes.data)  # fmt: skip
            del keep
        return out

    def filter(self, packets: Batch | Sequence[Any]) -> Batch | list[Any]:
        """The accepted packets: a Batch for a Batch (sharing its buffer), else a list of the same objects."""
        verdicts = self.run_batch(packets) != 0
        if isinstance(packets, Batch):
            return packets.select(verdicts)
        return [packet for packet, keep in zip(packets, verdicts.tolist(), strict=True) if keep]

    @property
    def scapy(self) -> Callable[[Any], bool]:
        """This filter as scapy's `lfilter=` (takes a scapy packet; see bpfjit.adapters)."""
        from .adapters import scapy_lfilter

        return scapy_lfilter(self)

    @property
    def address(self) -> int:
        """Address of the filter's native code: `void batch(const u8 *base, const u64 *offsets,
        const u32 *caplens, const u32 *wirelens, u64 n, const u8 *meta, u32 *out)` (`out[i]` = result for
        packet i; `meta` NULL, or one 64-byte `metadata.META_DTYPE` record per packet for linux-dialect filters).
        The code of the tier the filter runs; it stays valid while the filter lives."""
        return self._code.batch_address(self._tier)

    @property
    def llvm_ir(self) -> str:
        """The optimised LLVM IR of the filter (its batch loop), the same for both tiers."""
        return self._tier.llvm_ir

    @property
    def asm(self) -> str:
        """Host assembly of the tier the filter runs."""
        return self._tier.asm

    def __repr__(self) -> str:
        source = f" {self.expression!r}" if self.expression is not None else ""
        dialect = f", dialect {self.dialect.name!r}" if self.dialect is not PCAP else ""
        return (f"<bpfjit.Filter{source}: {len(self.program)} insns, opt_level={self.opt_level}, "
                f"{self.tier} tier{dialect}>")  # fmt: skip

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.program, self.opt_level, self.expression, self.linktype, self.dialect.name))


if FAST_ENTRY:
    cpython.enable_vectorcall(Filter)


def _rebuild(program: Program, opt_level: int, expression: str | None, linktype: int | str | None,
             dialect: str = PCAP.name) -> Filter:  # fmt: skip
    return Filter._create(program, opt_level, expression, linktype, dialect_of(dialect))


def compile(
    source: Program | Iterable[InsnLike] | str,
    *,
    opt_level: int = 2,
    linktype: int | str = "EN10MB",
    snaplen: int = DEFAULT_SNAPLEN,
    optimize: bool = True,
    netmask: int | str | None = None,
    savefile: bool = False,
    swapped: bool = False,
    dialect: DialectLike = PCAP,
) -> Filter:
    """Compile a program, an iterable of (code, jt, jf, k), or a pcap-filter expression to a Filter.

    A `str` is a pcap-filter expression compiled by libpcap for `linktype` (`linktype`, `snaplen`,
    `optimize` and `netmask` are `pcap_compile`'s); programs are validated (`ValidationError`) in
    `dialect` ("pcap", SEMANTICS.md; "linux", the kernel's socket filters with ancillary data and
    negative offsets, see `bpfjit.linux`; or "seccomp": see `bpfjit.dialects`), whose semantics the
    code runs.
    An expression is compiled for a live capture, or with `savefile=True` (and `swapped`) as
    `tcpdump -r` compiles it for a capture file (`Program.from_expr`). `filter_file` and the other
    file operations compile a Filter's expression again for each file they read, as tcpdump does.
    """
    record = dialect_of(dialect)
    if opt_level not in OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {OPT_LEVELS}, not {opt_level!r}")
    expression: str | None = None
    if isinstance(source, str):
        if record is not PCAP:
            raise ValueError(f"pcap-filter expressions compile to pcap programs, not {record.name!r} ones")
        expression = source
        program = Program.from_expr(source, linktype, snaplen=snaplen, optimize=optimize, netmask=netmask,
                                    savefile=savefile, swapped=swapped)  # fmt: skip
    elif isinstance(source, bytes | bytearray | memoryview):
        raise TypeError("compile() takes a Program or an expression; use Program.from_bytes(data) for bytecode")
    else:
        program = source if isinstance(source, Program) else Program(source)
    validate(program, record)
    return Filter._create(program, opt_level, expression, linktype if expression is not None else None, record)
