"""Every script in examples/ runs with no arguments and exits 0 (the live one as root, in its own netns)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from needs import require

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NEEDS = {"scapy_loop.py": "scapy", "dpkt_loop.py": "dpkt"}  # optional packages an example imports
LIVE = "live_capture.py"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=EXAMPLES, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s != LIVE])
def test_example_runs(script: str) -> None:
    package = NEEDS.get(script)
    if package:
        require(importlib.util.find_spec(package) is not None, package)
    result = _run([sys.executable, script])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()


@pytest.mark.parametrize("arguments", [[], ["--user-space"], ["--interface", "any", "--count", "3"]])
def test_live_capture_example_runs_in_a_fresh_namespace(arguments: list[str]) -> None:
    require(os.geteuid() == 0, "root (network namespaces and AF_PACKET sockets)")
    require(shutil.which("ip") is not None, "iproute2's `ip`")
    name = f"bpfjit-example-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True, timeout=10)
        result = _run(["ip", "netns", "exec", name, sys.executable, LIVE, *arguments])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stdout + result.stderr
    count = 3 if "--count" in arguments else 5
    assert f"{count} packets" in result.stdout, result.stdout


def test_every_example_is_run() -> None:
    assert {*SCRIPTS} == {LIVE, "filter_pcap.py", "scapy_loop.py", "dpkt_loop.py", "userspace_demo.py"}
