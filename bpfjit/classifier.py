"""The classifier: many filters evaluated on each packet by one native function.

`compile_many(filters)` makes a `Classifier` (lowered by `lower_classifier`); the word "classifier"
means this everywhere in bpfjit (`MultiFilter` is its first name, kept as an alias)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from llvmlite import ir

from . import codecache, lower, lower_classifier, native
from .batch import Batch, buffer_address
from .buffers import check_lengths, packet_view
from .caches import CodeCache
from .program import DEFAULT_SNAPLEN, InsnLike, Program
from .validate import validate

Mode = Literal["bitmask", "first"]


class Classifier:
    """Filters evaluated together on each packet.

    `mode="bitmask"`: `m(packet)` is an int whose bit i says whether filter i accepts;
    `m.run_batch(batch)` a bool matrix (packets x filters).
    `mode="first"`: `m(packet)` is `(index, value)` of the first accepting filter, `(-1, 0)` for
    none; `m.run_batch(batch)` gives `(indices, values)` arrays.
    """

    def __init__(self, programs: Sequence[Program], mode: Mode, opt_level: int, expressions: Sequence[str | None]):
        self.programs = tuple(programs)
        self.mode: Mode = mode
        self.opt_level = opt_level
        self.expressions = tuple(expressions)
        key = codecache.key("classifier", [mode, opt_level, *(p.to_bytes("little") for p in self.programs)])
        name = f"bpf_classify_{key.symbol_suffix}"

        def module() -> ir.Module:
            made = lower.new_module(name)
            classifier = lower_classifier.lower_classifier(made, self.programs, name, mode)
            lower_classifier.lower_classifier_batch(made, classifier, name + "_batch", mode, len(self.programs))
            return made

        self._code = native.build(module, opt_level, (name, name + "_batch"), extra_passes=native.CLASSIFIER_EXTRA,
                                  cache_key=key, shared=True)  # fmt: skip
        self._words = lower_classifier.words_for(len(self.programs))
        self._one = lower_classifier.SIGNATURES[mode].prototype()(self._code.addresses[name])
        self._batch = lower_classifier.BATCH_SIGNATURES[mode].prototype()(self._code.addresses[name + "_batch"])

    def __len__(self) -> int:
        return len(self.programs)

    def __call__(self, packet: object, wirelen: int | None = None) -> int | tuple[int, int]:
        view = packet_view(packet)
        wire = check_lengths(len(view), wirelen)
        address, keep = buffer_address(view)
        if self.mode == "bitmask":
            words = (ctypes.c_uint64 * self._words)()
            self._one(address, len(view), wire, words)
            del keep
            return sum(int(word) << (64 * i) for i, word in enumerate(words))
        value = ctypes.c_uint32(0)
        index = int(self._one(address, len(view), wire, ctypes.byref(value)))
        del keep
        return index, int(value.value) if index >= 0 else 0

    def run_batch(self, packets: Batch | Sequence[Any]) -> Any:
        batch = packets if isinstance(packets, Batch) else Batch.from_packets(packets)
        n = len(batch)
        if self.mode == "bitmask":
            words = np.zeros((n, self._words), dtype=np.uint64)
            if n:
                self._call_batch(batch, words, None)
            bits = np.unpackbits(words.view(np.uint8), axis=1, count=len(self.programs), bitorder="little")
            matrix: npt.NDArray[np.bool_] = bits.view(np.bool_)
            return matrix
        indices = np.full(n, -1, dtype=np.int32)
        values = np.zeros(n, dtype=np.uint32)
        if n:
            self._call_batch(batch, indices, values)
        return indices, values

    def _call_batch(self, batch: Batch, out: npt.NDArray[Any], values: npt.NDArray[np.uint32] | None) -> None:
        self._batch(
            batch.data.ctypes.data, batch.offsets.ctypes.data, batch.caplens.ctypes.data,
            batch.wirelens.ctypes.data, len(batch), None, out.ctypes.data,
            None if values is None else values.ctypes.data,
        )  # fmt: skip

    @property
    def llvm_ir(self) -> str:
        return self._code.llvm_ir

    def __repr__(self) -> str:
        return f"<bpfjit.Classifier of {len(self)} filters, mode={self.mode!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # By its programs, as a Filter pickles: its machine code (ctypes pointers) is this process's.
        return (_rebuild, (self.programs, self.mode, self.opt_level, self.expressions))


MultiFilter = Classifier

ClassifierKey = tuple[tuple[Program, ...], str, int, tuple[str | None, ...]]
# A worker unpickles the same classifier with every task it runs: build it once per process (the disk
# code cache makes even that first build a load, not a compile).
_unpickled: CodeCache[ClassifierKey, Classifier] = CodeCache(keep=8)


def _rebuild(programs: tuple[Program, ...], mode: Mode, opt_level: int,
             expressions: tuple[str | None, ...]) -> Classifier:  # fmt: skip
    key = (tuple(programs), mode, opt_level, tuple(expressions))
    return _unpickled.get(key, lambda: Classifier(programs, mode, opt_level, expressions))


def compile_many(
    sources: Iterable[Program | Iterable[InsnLike] | str],
    *,
    mode: Mode = "bitmask",
    opt_level: int = 2,
    linktype: int | str = "EN10MB",
    snaplen: int = DEFAULT_SNAPLEN,
) -> Classifier:
    """Compile programs and/or pcap-filter expressions into one classifier (see Classifier)."""
    if mode not in ("bitmask", "first"):
        raise ValueError(f"mode must be 'bitmask' or 'first', not {mode!r}")
    programs: list[Program] = []
    expressions: list[str | None] = []
    for source in sources:
        if isinstance(source, str):
            programs.append(Program.from_expr(source, linktype, snaplen=snaplen))
            expressions.append(source)
        else:
            programs.append(validate(source if isinstance(source, Program) else Program(source)))
            expressions.append(None)
    if not programs:
        raise ValueError("compile_many needs at least one filter")
    return Classifier(programs, mode, opt_level, expressions)
