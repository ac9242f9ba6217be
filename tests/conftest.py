"""Shared test set-up: hypothesis profiles and the list of backends every semantic case runs on."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# `ci` is thorough (the default under CI=true), `dev` is quick for the edit-test loop.
settings.register_profile(
    "ci", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") == "true" else "dev"))

IN_CI = os.environ.get("CI") == "true"

# The disk cache of compiled code (bpfjit.codecache) is on, as for users, in a directory of this run's
# own: compiles after the first of a program load its code (subprocesses of the suite inherit it too).
if "BPFJIT_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache_dir = tempfile.mkdtemp(prefix="bpfjit-test-cache-")
    os.environ["BPFJIT_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, True)
# Shared libraries (linked in a detached process per new walker) only where a test asks for them.
os.environ.setdefault("BPFJIT_CACHE_LINK", "off")


@pytest.fixture
def needs_libpcap() -> None:
    """Tests that run libpcap: skipped without it locally, failed without it in CI."""
    from needs import require

    from bpfjit import libpcap
    from bpfjit.errors import LibraryMissingError

    try:
        libpcap.library()
    except LibraryMissingError as exc:
        require(False, f"libpcap ({exc})")
