"""Optional test prerequisites: skipped with a reason on a developer's machine, a failure in CI."""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, what: str) -> None:
    """Skip (locally) or fail (CI=true) when `what` is missing, so CI never passes by skipping."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI (.ci/run installs it)")
    pytest.skip(f"{what} is not available")


def tcpdump_path() -> str | None:
    return shutil.which("tcpdump") or ((os.path.exists("/usr/bin/tcpdump") and "/usr/bin/tcpdump") or None)
