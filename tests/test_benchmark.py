"""bpfjit.benchmark: the harness runs end to end (--quick) and its outputs are complete. No timing is
asserted: these machines are shared and noisy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bpfjit
from bpfjit import Insn, Program, benchmark, cli, libpcap, packetmix
from bpfjit.libpcap_loop import LIBPCAP_SYMBOL, LibpcapLoop
from bpfjit.validate import validate

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One --quick run of the whole harness, shared by the tests that read its outputs."""
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout


def test_quick_run_writes_every_output(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "table.md").read_text().startswith("| filter |")
    assert (out / "table.txt").exists()


def test_table_and_json_cover_every_filter_and_method(quick_run: tuple[Path, str]) -> None:
    out, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    cases = benchmark.suite()
    assert [f["name"] for f in results["filters"]] == [c.name for c in cases]
    rounds = results["settings"]["rounds"]
    for entry in results["filters"]:
        assert set(entry["samples"]) == {m.key for m in benchmark.METHODS}
        assert all(len(samples) == rounds for samples in entry["samples"].values())
        assert all(len(samples) == rounds for samples in entry["wall_samples"].values())
        assert set(entry["stats"]["jit_batch"]) == {"median", "min", "max"}
        assert entry["speedup"]["libpcap_batch"] == pytest.approx(1.0)
        assert entry["static_checks"] <= entry["loads"]
    assert {t["name"] for t in results["targets"]} >= {"cold compile, median of the suite"}
    assert results["mix"]["packets"] == results["settings"]["count"]
    table = stdout.split("targets:")[0]
    for case in cases:
        assert case.name in table
    for method in benchmark.METHODS:
        if method.per_packet:
            assert method.label in table


def test_suite_spans_real_expressions_and_synthetic_worst_cases() -> None:
    cases = benchmark.suite()
    real = [c for c in cases if c.real]
    assert len(real) >= 12
    assert min(len(c.program) for c in real) <= 4 and max(len(c.program) for c in real) >= 60
    synthetic = [c for c in cases if not c.real]
    assert {c.name for c in synthetic} == {name for name, _ in benchmark.SYNTHETIC_FILTERS}
    for case in synthetic:
        validate(case.program)
    kinds = {bpfjit.opcodes.OPCODES[i.code].kind for c in synthetic for i in c.program}
    assert {"alu_x", "ld_ind", "ld_mem", "st", "ldx_mem"} <= kinds
    ops = {bpfjit.opcodes.OPCODES[i.code].alu.name for c in synthetic for i in c.program  # type: ignore[union-attr]
           if bpfjit.opcodes.OPCODES[i.code].alu}  # fmt: skip
    assert {"div", "mod", "mul", "lsh", "rsh"} <= ops
    assert [c.name for c in benchmark.suite(["port"])] == ["tcp port 80", "13 ports"]


def test_synthetic_cases_are_not_folded_to_a_constant() -> None:
    """A synthetic case LLVM could fold (always accept or always drop) would time nothing."""
    batch = packetmix.generate(3000, seed=3)
    for case in benchmark.suite():
        if case.real or case.name == "32 indexed loads":  # that one is meant to run every load and drop
            continue
        verdicts = bpfjit.compile(case.program).run_batch(batch)
        assert 0 < np.count_nonzero(verdicts) < len(batch), case.name


def test_libpcap_loop_agrees_with_libpcap_per_packet() -> None:
    batch = packetmix.generate(1500, seed=11)
    for case in benchmark.suite(["tcp port 80", "http get", "scratch", "long frames"]):
        loop = LibpcapLoop(case.program)
        verdicts = loop.run_batch(batch, np.empty(len(batch), dtype=np.uint32))
        expected = [libpcap.bpf_filter(case.program, p, w) for p, w in packetmix.to_list(batch)]
        assert verdicts.tolist() == expected, case.name
        assert f"call i32 @{LIBPCAP_SYMBOL}" in loop.llvm_ir  # libpcap's interpreter, not inlined code
    assert benchmark.LibpcapLoop is LibpcapLoop  # still importable from the harness, as bench scripts do


def test_cli_bench_passes_options_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--list", "--filter", "ip6"]) == 0
    assert capsys.readouterr().out.split()[:4] == ["ip6", "tcp", "80", "10"]
    with pytest.raises(SystemExit):
        cli.main(["bench", "--no-such-option"])
    assert benchmark.main(["--filter", "no-such-filter"]) == 2


def test_update_readme_replaces_only_the_marked_block(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{benchmark.README_BEGIN}\nold\n{benchmark.README_END}\noutro\n")
    assert benchmark.update_readme(readme, "| new |\n", "docs/bench.png")
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| new |" in text and "(docs/bench.png)" in text
    readme.write_text("no markers\n")
    assert not benchmark.update_readme(readme, "| new |\n", "docs/bench.png")


def test_compile_stages_times_every_stage_of_both_tiers() -> None:
    from bench.compile_stages import STAGES, compile_in_stages

    program = Program.from_expr("tcp port 80")
    fresh = Program([*program, Insn(0x06, 0, 0, 424242)])
    times = compile_in_stages(fresh, "stages_test")
    assert tuple(times) == STAGES and all(ms > 0 for ms in times.values())
    f = bpfjit.compile(fresh)  # the stages compiled outside the cache: compile() still builds its own
    assert f(bytes(60)) == 0
