"""Network-namespace plumbing for the tests that use the kernel itself (root): one copy for all of them.

    with namespace("oracle") as name, inside(name):   # a throwaway namespace, this thread inside it
        ...
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from needs import require

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


def ip(*args: str) -> None:
    """Run iproute2's `ip` (an error raises CalledProcessError with its stderr)."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """This thread in namespace `name` for the block (sockets made there stay there afterwards)."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        setns(target)
        try:
            yield
        finally:
            setns(original)
    finally:
        os.close(target)
        os.close(original)


@contextlib.contextmanager
def namespace(purpose: str, ipv6: bool = True) -> Iterator[str]:
    """A new network namespace with lo up (skips without root, `ip` or namespaces), deleted after.
    `ipv6=False` turns IPv6 off before any link exists, so that links made in it inherit that: no
    link-local address, router solicitations or MLD reports of the stack's own on the wire."""
    require(os.geteuid() == 0, "root (network namespaces and AF_PACKET sockets)")
    require(shutil.which("ip") is not None, "iproute2's `ip`")
    name = f"bpfjit-{purpose}-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"no network namespace: {exc.stderr.decode().strip()}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        if not ipv6:
            with inside(name):
                for conf in ("default", "all"):
                    path = f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"
                    if os.path.exists(path):
                        with open(path, "w") as knob:
                            knob.write("1")
        yield name
    finally:
        ip("netns", "del", name)
