"""The `bpfjit` command's main job, `demo`, runs end to end (its numbers are not asserted)."""

from __future__ import annotations

import subprocess
import sys

from bpfjit.cli import DEMO_FILTERS


def test_demo_runs_on_a_generated_capture() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bpfjit", "demo", "--packets", "3000"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "generated mix.pcap: 3000 packets" in out
    for expr in DEMO_FILTERS:
        assert out.count(expr) == 2, expr  # a file-filtering line and a timing row each
    assert "MISMATCH" not in result.stderr


def test_no_subcommand_means_demo() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bpfjit", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "demo" in result.stdout
