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
from functools import cached_property
from typing import Any

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


class Arena:
    """One MCJIT engine (owning its target machine) that compiled modules are added to."""

    def __init__(self, opt_level: int):
        llvm = binding()
        self.level = opt_level
        placeholder = llvm.parse_assembly("")  # MCJIT is created around a module
        placeholder.triple = _state["triple"]
        self.machine = target_machine(opt_level)
        self.engine = llvm.create_mcjit_compiler(placeholder, self.machine)  # owns the machine from here
        self.modules = 0
        self.symbols: set[str] = set()  # external names defined so far: one engine, one namespace

    def add(self, module: Any, names: set[str]) -> None:
        """Generate code for `module` (call with LLVM_LOCK held); its symbols can be looked up after."""
        clash = names & self.symbols
        if clash:
            raise ValueError(f"symbols already defined in this engine: {sorted(clash)}")
        self.symbols |= names
        self.modules += 1
        self.engine.add_module(module)
        self.engine.finalize_object()

    def __del__(self, dispose: Any = _dispose) -> None:  # bound now: module globals are gone at exit
        dispose(self.__dict__.get("engine"))


def _arena(opt_level: int) -> Arena:
    """The arena new code at `opt_level` goes into (call with LLVM_LOCK held)."""
    key = ("arena", opt_level)
    arena: Arena | None = _state.get(key)
    if arena is None or arena.modules >= ARENA_MODULES:
        arena = _state[key] = Arena(opt_level)
    return arena


class MachineCode:
    """Machine code of one LLVM module, alive as long as this object is."""

    def __init__(self, arena: Arena, addresses: dict[str, int], module: Any, names: set[str]):
        self.arena = arena  # its engine holds the machine code
        self.addresses = addresses
        self._module = module  # optimised IR, kept for llvm_ir, asm and recompile()
        self._names = names
        self.codegen_level = arena.level

    def __del__(self, dispose: Any = _dispose) -> None:  # bound now: module globals are gone at exit
        dispose(self.__dict__.get("_module"))

    @cached_property
    def llvm_ir(self) -> str:
        """The optimised module as text (made on demand: it costs ~0.5 ms per compile)."""
        with LLVM_LOCK:
            return str(self._module)

    @cached_property
    def asm(self) -> str:
        with LLVM_LOCK:
            return str(self.arena.machine.emit_assembly(self._module))


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


# Extra rounds for the multi-filter classifier: after inlining N filters in a row, jump threading
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
    module: ir.Module,
    opt_level: int,
    symbols: tuple[str, ...],
    data_symbols: tuple[str, ...] = (),
    extra_passes: tuple[str, ...] = (),
    codegen_level: int | None = None,
) -> MachineCode:
    """translate, run_passes (PIPELINES[opt_level] + `extra_passes`), generate at `codegen_level`
    (default: opt_level); the code and the addresses of its functions `symbols` and globals `data_symbols`."""
    with LLVM_LOCK:
        translated = translate(module)
        run_passes(translated.module, opt_level, extra_passes)
        level = opt_level if codegen_level is None else codegen_level
        return generate(translated, level, symbols, data_symbols)


def recompile(code: MachineCode, codegen_level: int, symbols: tuple[str, ...]) -> MachineCode:
    """The same optimised IR as `code`, machine-coded again at `codegen_level` (the IR passes are
    not run again: only code generation)."""
    with LLVM_LOCK:
        return _generate(code._module.clone(), code._names, codegen_level, symbols, ())


def generate(
    translated: Translated, level: int, symbols: tuple[str, ...], data_symbols: tuple[str, ...] = ()
) -> MachineCode:
    """Machine code for a translated (and optimised) module, in the current arena of `level`; the
    module now belongs to the returned code."""
    with LLVM_LOCK:
        return _generate(translated.module, translated.names, level, symbols, data_symbols)


def _generate(
    parsed: Any, names: set[str], level: int, symbols: tuple[str, ...], data_symbols: tuple[str, ...]
) -> MachineCode:
    arena = _arena(level)
    arena.add(parsed, names)
    engine = arena.engine
    addresses = {name: engine.get_function_address(name) for name in symbols}
    addresses.update((name, engine.get_global_value_address(name)) for name in data_symbols)
    engine.remove_module(parsed)  # the code stays in the engine; the IR is now this MachineCode's
    return MachineCode(arena, addresses, parsed, names)


def _defined_names(module: ir.Module) -> set[str]:
    """Names `module` defines with external linkage (which would clash inside a shared engine)."""
    names = set()
    for value in module.global_values:
        declaration = value.is_declaration if isinstance(value, ir.Function) else value.initializer is None
        if not declaration and value.linkage not in ("internal", "private"):
            names.add(value.name)
    return names
