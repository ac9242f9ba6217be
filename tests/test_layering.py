"""Which module may import which: the package's layering, written down and checked.

Data flows one way (text/bytes/expression -> Program -> validate -> lower -> native -> Filter), and
imports follow it. Every module of the package belongs to exactly one group below; a group may
import only from the groups it lists (imports at any depth count, function-level ones included).

| group | modules | may import |
|---|---|---|
| model | the program, its text forms, validator, interpreter, analyses | model |
| support | the native ABI table, CPython facts, the code cache | nothing of bpfjit |
| native | the only user of `llvmlite.binding` | support (the disk cache of its code) |
| codegen | IR emitters and the compile stages | model, support, native |
| runtime | `compile()`/`Filter`, the classifier, `Batch` | model, support, codegen, native |
| peers | libpcap and the kernel's socket filters through ctypes | model, support, codegen, native, runtime |
| files | capture-file formats, walkers, readers, writers | everything above |
| live | live capture (AF_PACKET) | everything above but files |
| integrations | adapters for scapy/dpkt | the public API only (`bpfjit` and PUBLIC modules) |
| tools | the command line, the benchmark harness, generators | anything |

Also: model imports neither numpy nor llvmlite, support not at module level (the ABI table makes its
`llvmlite.ir` types on demand); only `native` imports llvmlite.binding; module-level imports have no
cycle. Deliberate exceptions are named in EXCEPTIONS with their reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bpfjit"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

GROUPS: dict[str, set[str]] = {
    "model": {"errors", "opcodes", "dialects", "linux", "program", "text", "validate", "interpret", "analysis",
              "buffers", "samples", "strategies", "syscalls"},
    "support": {"abi", "cpython", "caches", "codecache"},
    "native": {"native"},
    "codegen": {"lower", "lower_linux", "lower_classifier", "pyentry", "pipeline"},
    "runtime": {"filter", "classifier", "batch", "metadata", "seccomp", "seccomp_explain", "seccomp_oci"},
    "peers": {"libpcap", "libpcap_loop", "sockfilter"},
    "files": {"capfile", "capformat", "capfilters", "capwriter", "walkers", "capparallel", "capparts"},
    "live": {"capture", "fanout", "ringwalk"},
    "integrations": {"adapters", "dask"},
    "tools": {"__init__", "__main__", "cli", "seccomp_cli", "benchmark", "packetmix"},
}  # fmt: skip
MAY_IMPORT: dict[str, set[str]] = {
    "model": {"model"},
    "support": set(),
    "native": {"support"},
    "codegen": {"model", "support", "native", "codegen"},
    "runtime": {"model", "support", "codegen", "native", "runtime"},
    "peers": {"model", "support", "codegen", "native", "runtime", "peers"},
    "files": {"model", "support", "codegen", "native", "runtime", "peers", "files"},
    "live": {"model", "support", "codegen", "native", "runtime", "peers", "live"},
    "integrations": set(),  # see PUBLIC
    "tools": set(GROUPS),
}
# What integrations (and the examples) may use: the package itself and its documented modules.
PUBLIC = {"__init__", "errors", "program", "text", "validate", "interpret", "batch", "filter", "classifier",
          "libpcap", "capfile", "capparts", "capture", "adapters", "packetmix", "strategies", "samples"}  # fmt: skip
# (importer, imported): why the layering allows it.
EXCEPTIONS = {
    ("program", "text"): "Program.parse/dump delegate to the text module (imported at call time)",
    ("program", "libpcap"): "Program.from_expr delegates to libpcap's compiler (imported at call time)",
    ("filter", "adapters"): "Filter.scapy is a convenience for adapters.scapy_lfilter (imported at call time)",
    ("codecache", "__init__"): "the package's version is part of every cache key",
}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(what, at module level) for every import of a package module, TYPE_CHECKING blocks left out;
    `what` is a bpfjit module name (without the package) or a third-party top-level package."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    parts = alias.name.split(".")
                    if parts[0] == "bpfjit":
                        found.append((parts[1] if len(parts) > 1 else "__init__", top))
                    else:
                        found.append((alias.name, top))
            elif isinstance(child, ast.ImportFrom):
                module = child.module or ""
                if child.level == 0 and not module.startswith("bpfjit"):
                    found.append((module, top))
                    continue
                base = module.split(".")[1:] if child.level == 0 else ([module.split(".")[0]] if module else [])
                if base and base[0]:
                    found.append((base[0], top))
                else:  # `from . import x, y` / `from bpfjit import x`: x may be a module or a name
                    for alias in child.names:
                        name = alias.name
                        found.append((name if (PACKAGE / f"{name}.py").exists() else "__init__", top))
            else:
                nested = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(child, top and not nested)

    visit(ast.parse(path.read_text()), True)
    return found


MODULES = {path.stem: _imports(path) for path in sorted(PACKAGE.glob("*.py"))}


def _group(module: str) -> str:
    (group,) = [name for name, members in GROUPS.items() if module in members]
    return group


def test_every_module_is_in_exactly_one_group() -> None:
    members = [m for modules in GROUPS.values() for m in modules]
    assert sorted(members) == sorted(set(members)), "a module in two groups"
    assert set(members) == set(MODULES), f"unplaced: {set(MODULES) - set(members)}; gone: {set(members) - set(MODULES)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    group = _group(module)
    for imported, _top in MODULES[module]:
        if imported not in MODULES or imported == module:
            continue
        if (module, imported) in EXCEPTIONS:
            continue
        if group == "integrations":
            assert imported in PUBLIC, f"{module} (an integration) imports the internal module {imported}"
            continue
        allowed = MAY_IMPORT[group] | {group}
        assert _group(imported) in allowed, f"{module} ({group}) imports {imported} ({_group(imported)})"


@pytest.mark.parametrize("module", sorted(GROUPS["model"] | GROUPS["support"]))
def test_model_and_support_import_neither_numpy_nor_llvm(module: str) -> None:
    at_any_depth = _group(module) == "model"
    third_party = {name.split(".")[0] for name, top in MODULES[module] if name not in MODULES and (top or at_any_depth)}
    assert not third_party & {"numpy", "llvmlite"}, f"{module} imports {third_party & {'numpy', 'llvmlite'}}"


def test_only_native_touches_llvmlite_binding() -> None:
    users = {m for m, imports in MODULES.items() for name, _ in imports if name.startswith("llvmlite.binding")}
    assert users == {"native"}


def test_module_level_imports_have_no_cycle() -> None:
    graph = {m: {name for name, top in imports if top and name in MODULES and name != m}
             for m, imports in MODULES.items()}  # fmt: skip
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_exceptions_are_still_needed() -> None:
    for importer, imported in EXCEPTIONS:
        assert any(name == imported and not top for name, top in MODULES[importer]), (importer, imported)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_examples_use_only_the_public_api(example: str) -> None:
    for name, _ in _imports(EXAMPLES / example):
        if name in MODULES:
            assert name in PUBLIC, f"{example} imports bpfjit.{name}"


def test_the_readme_lists_every_module_in_its_layer() -> None:
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## How it is built") :]
    section = section[: section.index("\n## ", 1)]
    listed: dict[str, str] = {}
    for row in section.splitlines():
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in GROUPS:
            for name in re.findall(r"`([a-z_]+)\.py`", cells[1]):
                assert name not in listed, f"{name}.py is listed twice"
                listed[name] = cells[0]
    assert set(listed) == set(MODULES), f"missing: {set(MODULES) - set(listed)}; extra: {set(listed) - set(MODULES)}"
    assert {name: _group(name) for name in MODULES} == listed
