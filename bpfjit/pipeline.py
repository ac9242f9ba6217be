"""`compile()`'s stages, as named calls in order: what a filter's machine code is made of.

    validate -> analyse -> lower -> translate -> optimise -> generate

| stage | module | takes -> gives |
|---|---|---|
| validate | `validate` | Program -> Program (ValidationError naming the instruction and rule) |
| analyse | `analysis` | basic-block leaders and the bounds-check plan |
| lower | `lower` | the batch loop in `llvmlite.ir` (`abi.BATCH`), the program inlined |
| translate | `native` | IR text -> LLVM's module, verified |
| optimise | `native` | the IR passes of the opt level (`native.PIPELINES`) |
| generate | `native` | machine code at a code-generation level (the baseline tier's: `BASELINE_CODEGEN`) |

`STAGES` lists them; `run` calls each in turn on one `Compilation`, so that `bench/compile_stages.py`
times exactly the steps `compile()` takes. The tier-up is one more `generate`, from the same
optimised IR (`native.recompile`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .analysis import Analysis, analyse
from .program import Program
from .validate import validate

if TYPE_CHECKING:
    from llvmlite import ir

    from .native import MachineCode, Translated

# Code generation level of the baseline tier (LLVM's -O0 back end: FastISel + the fast allocator).
BASELINE_CODEGEN = 0


class Compilation:
    """One program on its way to machine code: each stage fills in the next field."""

    def __init__(self, program: Program, opt_level: int, name: str, codegen_level: int | None = None):
        self.program = program
        self.opt_level = opt_level
        self.name = name  # the batch function's symbol
        self.codegen_level = min(opt_level, BASELINE_CODEGEN) if codegen_level is None else codegen_level
        self.analysis: Analysis | None = None
        self.module: ir.Module | None = None
        self.translated: Translated | None = None
        self.code: MachineCode | None = None


def validate_stage(c: Compilation) -> None:
    validate(c.program)


def analyse_stage(c: Compilation) -> None:
    c.analysis = analyse(c.program)


def lower_stage(c: Compilation) -> None:
    from . import lower

    assert c.analysis is not None
    c.module = lower.new_module(f"module_{c.name}")
    lower.lower_program_batch(c.module, c.program, c.analysis, c.name)


def translate_stage(c: Compilation) -> None:
    from . import native

    assert c.module is not None
    c.translated = native.translate(c.module)


def optimise_stage(c: Compilation) -> None:
    from . import native

    assert c.translated is not None
    native.run_passes(c.translated.module, c.opt_level)


def generate_stage(c: Compilation) -> None:
    from . import native

    assert c.translated is not None
    c.code = native.generate(c.translated, c.codegen_level, (c.name,))


Stage = Callable[[Compilation], None]
STAGES: tuple[tuple[str, Stage], ...] = (
    ("validate", validate_stage),
    ("analyse", analyse_stage),
    ("lower", lower_stage),
    ("translate", translate_stage),
    ("optimise", optimise_stage),
    ("generate", generate_stage),
)


def run(compilation: Compilation, observe: Callable[[str, Stage, Compilation], None] | None = None) -> MachineCode:
    """Every stage in order (`observe(name, stage, compilation)` calls each instead, e.g. to time it).
    The native stages take `native.LLVM_LOCK` themselves; building IR in Python needs no lock."""
    for name, stage in STAGES:
        if observe is None:
            stage(compilation)
        else:
            observe(name, stage, compilation)
    assert compilation.code is not None
    return compilation.code


def compile_program(program: Program, opt_level: int, name: str) -> MachineCode:
    """The baseline tier's machine code for `program` (its batch loop is the symbol `name`)."""
    return run(Compilation(program, opt_level, name))


def tier_up(code: MachineCode, opt_level: int, name: str) -> MachineCode:
    """The optimising tier: the same optimised IR, machine-coded at `opt_level`."""
    from . import native

    return native.recompile(code, opt_level, (name,))
