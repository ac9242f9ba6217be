"""Ruff and mypy are part of the suite, so the README's one test command checks them too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    paths = [name for name in ("bpfjit", "tests", "bench", "examples") if (ROOT / name).is_dir()]
    result = _run("ruff", "check", *paths)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean() -> None:
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run's command is the README's test command (the second line of its first code block)."""
    readme = (ROOT / "README.md").read_text().split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    test_command = readme[1].split("#", 1)[0].strip()
    ci_run = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in ci_run if line.strip() and not line.startswith("#")]
    assert commands[-1] == test_command
    assert "tools/test.sh" in test_command  # the matrix over every supported Python, not one venv
