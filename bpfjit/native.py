"""Native code: the one module that owns `llvmlite.binding` (LLVM's state).

LLVM is initialised lazily, once per process, under a lock (never at import). Compiled modules go
into a shared MCJIT engine (an `Arena`) that takes ARENA_MODULES of them before a fresh one is made:
an engine's target machine builds its X86 subtarget (instruction and lowering tables) on first use,
which was ~2.5 ms of a ~10 ms cold compile when every module had an engine of its own. An arena, with
its machine code, is freed when the last `MachineCode` compiled into it is dropped; each module's IR is
taken back out of the engine after code generation, so it is freed with its own `MachineCode`.
llvmlite's binding shares one LLVM context, so everything that touches it runs under `LLVM_LOCK`.

The compile stages this module owns (`pipeline.STAGES` names them all): `translate` (llvmlite.ir
text to an LLVM module, verified), `run_passes` (the IR passes of an opt level) and `generate`
(machine code at a code-generation level); `build` runs the three for the other code generators.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from . import codecache

if TYPE_CHECKING:  # (llvmlite.ir only to build modules: code loaded from the disk cache needs none)
    from llvmlite import ir

LLVM_LOCK = threading.RLock()
_state: dict[object, Any] = {}


def binding() -> Any:
    """`llvmlite.binding`, with the native target initialised (once, thread-safely)."""
    if "llvm" not in _state:
        with LLVM_LOCK:
            if "llvm" not in _state:
                import llvmlite.binding as llvm

                # llvm.initialize() raises in llvmlite >= 0.45; only the native target is needed.
                llvm.initialize_native_target()
                llvm.initialize_native_asmprinter()
                _state["target"] = llvm.Target.from_default_triple()
                _state["cpu"] = llvm.get_host_cpu_name()
                _state["features"] = llvm.get_host_cpu_features().flatten()
                _state["triple"] = llvm.get_process_triple()
                _state["llvm"] = llvm
    return _state["llvm"]


def target_machine(opt_level: int) -> Any:
    binding()
    return _state["target"].create_target_machine(
        cpu=_state["cpu"], features=_state["features"], opt=opt_level, jit=True
    )


def process_triple() -> str:
    binding()
    return str(_state["triple"])


def add_symbol(name: str, address: int) -> None:
    """Make `name` resolve to `address` in code compiled from now on (process-wide)."""
    with LLVM_LOCK:
        binding().add_symbol(name, address)


def _dispose(ref: Any, finalizing: Any = sys.is_finalizing) -> None:
    """Free an llvmlite object under LLVM_LOCK: the binding has one LLVM context, which a compile in
    another thread may be using (llvmlite's own finaliser would free it from any thread, unlocked).
    Not at interpreter exit, where llvmlite's bindings may be gone (llvmlite skips it there too)."""
    if ref is None or finalizing():
        return
    with LLVM_LOCK:
        ref.close()


# Modules per shared engine: a live filter keeps its arena's code (a few KiB per module) alive, and
# each new arena costs one subtarget set-up (~2.5 ms), so 32 spreads that to <0.1 ms a compile.
ARENA_MODULES = 32


class _ObjectSink:
    """Receives the object code MCJIT generates for each module (its object-cache "notify" hook)."""

    def __init__(self) -> None:
        self.last = b""

    def notify(self, module: Any, buffer: bytes) -> None:
        self.last = bytes(buffer)


class Arena:
    """One MCJIT engine (owning its target machine) that compiled modules and cached objects are added to."""

    def __init__(self, opt_level: int):
        llvm = binding()
        self.level = opt_level
        placeholder = llvm.parse_assembly("")  # MCJIT is created around a module
        placeholder.triple = _state["triple"]
        self.machine = target_machine(opt_level)
        self.engine = llvm.create_mcjit_compiler(placeholder, self.machine)  # owns the machine from here
        self.modules = 0
        self.symbols: set[str] = set()  # external names defined so far: one engine, one namespace
        self.objects = _ObjectSink()  # (not a method of self: the engine would keep its arena alive)
        self.engine.set_object_cache(self.objects.notify, None)

    def accepts(self, names: set[str]) -> bool:
        return self.modules < ARENA_MODULES and not names & self.symbols

    def add(self, module: Any, names: set[str]) -> bytes:
        """Generate code for `module` (call with LLVM_LOCK held); its symbols can be looked up after.
        Returns the object code LLVM made."""
        clash = names & self.symbols
        if clash:
            raise ValueError(f"symbols already defined in this engine: {sorted(clash)}")
        self.symbols |= names
        self.modules += 1
        self.objects.last = b""
        self.engine.add_module(module)
        self.engine.finalize_object()
        return self.objects.last

    def add_object(self, obj: bytes, names: set[str]) -> None:
        """Load object code generated earlier (call with LLVM_LOCK held)."""
        clash = names & self.symbols
        if clash:
            raise ValueError(f"symbols already defined in this engine: {sorted(clash)}")
        self.symbols |= names
        self.modules += 1
        self.engine.add_object_file(binding().ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def __del__(self, dispose: Any = _dispose) -> None:  # bound now: module globals are gone at exit
        dispose(self.__dict__.get("engine"))


def _arena(opt_level: int, names: set[str]) -> Arena:
    """The arena new code at `opt_level` defining `names` goes into (call with LLVM_LOCK held): a
    fresh one when the current one is full or already defines one of the names (the same cached
    code loaded again after its first copy was dropped)."""
    key = ("arena", opt_level)
    arena: Arena | None = _state.get(key)
    if arena is None or not arena.accepts(names):
        arena = _state[key] = Arena(opt_level)
    return arena


Rebuild = Callable[[], "Translated"]


class MachineCode:
    """Machine code of one LLVM module, alive as long as this object is.

    Code loaded from the disk cache has no IR; `rebuild` makes the same optimised module again when
    it is asked for (its text, its assembly, or a recompile at another level)."""

    def __init__(self, arena: Arena | None, addresses: dict[str, int], module: Any, names: set[str],
                 rebuild: Rebuild | None = None, level: int = 0, library: object = None):  # fmt: skip
        self.arena = arena  # its engine holds the machine code (None: a shared library does)
        self.library = library  # a cached shared library holding the code (ctypes never unloads one)
        self.addresses = addresses
        self._module = module  # optimised IR, kept for llvm_ir, asm and recompile()
        self._names = names
        self._rebuild = rebuild
        self.codegen_level = arena.level if arena is not None else level
        self.from_cache = module is None

    def __del__(self, dispose: Any = _dispose) -> None:  # bound now: module globals are gone at exit
        dispose(self.__dict__.get("_module"))

    def optimised_module(self) -> Any:
        """The optimised LLVM module (call with LLVM_LOCK held): kept, or rebuilt for cached code."""
        if self._module is None:
            if self._rebuild is None:
                raise RuntimeError("this code was loaded from the cache without a way to rebuild its IR")
            self._module = self._rebuild().module
        return self._module

    @cached_property
    def llvm_ir(self) -> str:
        """The optimised module as text (made on demand: it costs ~0.5 ms per compile)."""
        with LLVM_LOCK:
            return str(self.optimised_module())

    @cached_property
    def asm(self) -> str:
        with LLVM_LOCK:
            machine = self.arena.machine if self.arena is not None else target_machine(self.codegen_level)
            return str(machine.emit_assembly(self.optimised_module()))


# The IR passes run at each opt level, on llvmlite's new pass manager. Not LLVM's default O2
# pipeline (PassBuilder.getModulePassManager): through llvmlite 0.50 each one built leaks about
# 70 KiB (1000 compiles grew RSS by 70 MB here) and one cannot be run twice, which a process that
# compiles thousands of filters cannot afford. cBPF code is a loop-free DAG over a few registers,
# so these passes are what matters: promote A/X/M[] to SSA (sroa), inline the filter into its
# Python entry, fold constants and merge branches.
PIPELINES: dict[int, tuple[str, ...]] = {
    0: (),
    1: ("always_inliner", "sroa", "instruction_combine", "simplify_cfg", "global_dead_code_eliminate"),
    2: ("always_inliner", "sroa", "sccp", "instruction_combine", "simplify_cfg", "jump_threading",
        "new_gvn", "instruction_combine", "aggressive_dce", "simplify_cfg", "global_dead_code_eliminate"),
    3: ("always_inliner", "sroa", "sccp", "instruction_combine", "simplify_cfg", "jump_threading",
        "new_gvn", "aggressive_instcombine", "instruction_combine", "jump_threading", "sccp",
        "aggressive_dce", "simplify_cfg", "instruction_combine", "simplify_cfg", "global_dead_code_eliminate"),
}  # fmt: skip


# Extra rounds for the classifier: after inlining N filters in a row, jump threading
# with a larger duplication budget lets a later filter skip tests an earlier one already decided
# (16 `tcp port N` filters: 15.6 -> 12.0 ns/packet here, at ~1.5x the compile time).
CLASSIFIER_EXTRA: tuple[str, ...] = ("jump_threading:50", "new_gvn", "instruction_combine", "simplify_cfg",
                                     "jump_threading:50", "simplify_cfg")  # fmt: skip


def _pass_manager(opt_level: int, extra: tuple[str, ...]) -> Any:
    """One module pass manager per pipeline, built once: llvmlite never frees a disposed one's passes
    (about 3.5 KiB per instcombine), while reusing one across modules is LLVM's normal use."""
    key = ("pipeline", opt_level, extra)
    manager = _state.get(key)
    if manager is None:
        manager = binding().create_new_module_pass_manager()
        for entry in PIPELINES[opt_level] + extra:
            name, _, argument = entry.partition(":")
            getattr(manager, f"add_{name}_pass")(*((int(argument),) if argument else ()))
        _state[key] = manager
    return manager


def run_passes(module: Any, opt_level: int, extra: tuple[str, ...] = ()) -> None:
    """Run PIPELINES[opt_level] (+ `extra` passes) on a translated module, in place."""
    if not PIPELINES[opt_level]:
        return
    with LLVM_LOCK:
        llvm = binding()
        machine = _state.get(("passes", opt_level))
        if machine is None:  # not owned by any engine, so one per level can be shared
            machine = _state[("passes", opt_level)] = target_machine(opt_level)
        # A fresh PassBuilder per run: llvmlite registers per-run instrumentation callbacks in it,
        # which would dangle if the builder outlived the run. (Each still leaks ~2.4 KiB in llvmlite.)
        tuning = llvm.create_pipeline_tuning_options(speed_level=opt_level)
        builder = llvm.create_pass_builder(machine, tuning)
        _pass_manager(opt_level, extra).run(module, builder)


class Translated:
    """An `llvmlite.ir` module as LLVM's own (parsed and verified), with the external names it defines."""

    def __init__(self, module: ir.Module):
        self.names = _defined_names(module)
        with LLVM_LOCK:
            llvm = binding()
            module.triple = _state["triple"]
            self.module = llvm.parse_assembly(str(module))
            self.module.verify()


def translate(module: ir.Module) -> Translated:
    return Translated(module)


def build(
    module: ir.Module | Callable[[], ir.Module],
    opt_level: int,
    symbols: tuple[str, ...],
    extra_passes: tuple[str, ...] = (),
    codegen_level: int | None = None,
    cache_key: codecache.Key | None = None,
    shared: bool = False,
) -> MachineCode:
    """translate, run_passes (PIPELINES[opt_level] + `extra_passes`), generate at `codegen_level`
    (default: opt_level); the code and the addresses of its functions `symbols`.

    With a `cache_key`, code stored for it on disk is loaded instead, and code generated is stored;
    `module` may then be a function that builds it, called only when nothing was stored. `shared`:
    also keep it as a shared library, which later runs load without LLVM (for code that
    command-line runs need; it must call only C symbols the dynamic linker can find)."""
    level = opt_level if codegen_level is None else codegen_level

    def translated() -> Translated:
        made = translate(module() if callable(module) else module)
        run_passes(made.module, opt_level, extra_passes)
        return made

    cached = load(cache_key, level, symbols, translated, shared) if cache_key is not None else None
    if cached is not None:
        return cached
    with LLVM_LOCK:
        return generate(translated(), level, symbols, cache_key, translated, shared)


def recompile(
    code: MachineCode, codegen_level: int, symbols: tuple[str, ...], cache_key: codecache.Key | None = None
) -> MachineCode:
    """The same optimised IR as `code`, machine-coded again at `codegen_level` (the IR passes are
    not run again: only code generation), or that code from the disk cache."""
    cached = load(cache_key, codegen_level, symbols, code._rebuild) if cache_key is not None else None
    if cached is not None:
        return cached
    with LLVM_LOCK:
        module = code.optimised_module().clone()
        return _generate(module, code._names, codegen_level, symbols, cache_key, code._rebuild)


def generate(
    translated: Translated, level: int, symbols: tuple[str, ...], cache_key: codecache.Key | None = None,
    rebuild: Rebuild | None = None, shared: bool = False,
) -> MachineCode:
    """Machine code for a translated (and optimised) module, in the current arena of `level`; the
    module now belongs to the returned code (stored on disk under `cache_key`, if given)."""
    with LLVM_LOCK:
        return _generate(translated.module, translated.names, level, symbols, cache_key, rebuild, shared)


def _generate(parsed: Any, names: set[str], level: int, symbols: tuple[str, ...], cache_key: codecache.Key | None,
              rebuild: Rebuild | None, shared: bool = False) -> MachineCode:  # fmt: skip
    arena = _arena(level, names)
    obj = arena.add(parsed, names)
    COUNTS["generated"] += 1
    engine = arena.engine
    addresses = {name: engine.get_function_address(name) for name in symbols}
    engine.remove_module(parsed)  # the code stays in the engine; the IR is now this MachineCode's
    if cache_key is not None:
        codecache.store(cache_key, _with_names(names, obj))
        if shared and codecache.link_mode() != "off":
            codecache.store_shared(cache_key, _pic_object(parsed, level))
    return MachineCode(arena, addresses, parsed, names, rebuild)


def _pic_object(parsed: Any, level: int) -> bytes:
    """Position-independent object code of `parsed`, for a shared library (call with LLVM_LOCK held)."""
    key = ("pic", level)
    machine = _state.get(key)
    if machine is None:
        machine = _state[key] = _state["target"].create_target_machine(
            cpu=_state["cpu"], features=_state["features"], opt=level, reloc="pic", codemodel="default"
        )
    return bytes(machine.emit_object(parsed))


def load(cache_key: codecache.Key, level: int, symbols: tuple[str, ...], rebuild: Rebuild | None,
         shared: bool = False) -> MachineCode | None:  # fmt: skip
    """The code stored on disk for `cache_key`: its shared library if `shared` and there is one (no
    LLVM needed), else its object loaded into an arena of `level`; None if there is neither."""
    if shared:
        library = codecache.load_shared(cache_key)
        if library is not None:
            import ctypes

            try:
                addresses = {name: ctypes.cast(getattr(library, name), ctypes.c_void_p).value or 0 for name in symbols}
            except AttributeError:
                addresses = {}
            if addresses and all(addresses.values()):
                COUNTS["loaded"] += 1
                COUNTS["loaded shared"] += 1
                return MachineCode(None, addresses, None, set(), rebuild, level=level, library=library)
    stored = codecache.load(cache_key)
    if stored is None:
        return None
    names, obj = _split_names(stored)
    if names is None or not set(symbols) <= names:
        return None
    with LLVM_LOCK:
        binding()
        arena = _arena(level, names)
        arena.add_object(obj, names)
        addresses = {name: arena.engine.get_function_address(name) for name in symbols}
    if not all(addresses.values()):  # (a verified entry always defines them: this is a safety net)
        raise RuntimeError(f"cached code for {sorted(symbols)} lacks a symbol")
    COUNTS["loaded"] += 1
    return MachineCode(arena, addresses, None, names, rebuild)


# How much code this process generated and loaded from the disk cache (tests and the start-up bench).
COUNTS = {"generated": 0, "loaded": 0, "loaded shared": 0}


def _with_names(names: set[str], obj: bytes) -> bytes:
    """The object with the external names it defines in front (an arena checks them for clashes)."""
    listed = "\n".join(sorted(names)).encode()
    return len(listed).to_bytes(4, "little") + listed + obj


def _split_names(stored: bytes) -> tuple[set[str] | None, bytes]:
    size = int.from_bytes(stored[:4], "little")
    if len(stored) < 4 + size:
        return None, b""
    listed = stored[4 : 4 + size].decode(errors="replace")
    return set(filter(None, listed.split("\n"))), stored[4 + size :]


def _defined_names(module: ir.Module) -> set[str]:
    """Names `module` defines with external linkage (which would clash inside a shared engine)."""
    from llvmlite import ir

    names = set()
    for value in module.global_values:
        declaration = value.is_declaration if isinstance(value, ir.Function) else value.initializer is None
        if not declaration and value.linkage not in ("internal", "private"):
            names.add(value.name)
    return names
