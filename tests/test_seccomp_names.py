"""bpfjit.syscalls: tables read from the system's kernel headers, checked against libseccomp's own."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from needs import require

from bpfjit import seccomp, syscalls
from bpfjit.syscalls import X32_SYSCALL_BIT, syscall_name, syscall_number


def lsc_module() -> Any:
    try:
        return seccomp.libseccomp()
    except ImportError as exc:  # Debian's cp311 module loads only into a Python 3.11
        if sys.version_info[:2] != (3, 11):
            pytest.skip(f"libseccomp's Python binding is Debian's, for Python 3.11 only: {exc}")
        require(False, f"libseccomp's Python binding (python3-seccomp; tools/bootstrap.sh installs it): {exc}")


def test_well_known_numbers() -> None:
    assert [syscall_name(n, "x86_64") for n in (0, 59, 231, 435)] == ["read", "execve", "exit_group", "clone3"]
    assert syscall_name(11, "i386") == "execve" and syscall_name(221, "aarch64") == "execve"
    assert syscall_name(59, seccomp.AUDIT_ARCH_X86_64) == "execve"
    assert syscall_name(11, seccomp.AUDIT_ARCH_I386) == "execve"
    assert syscall_number("openat", "aarch64") == 56 and syscall_number("openat", "x86_64") == 257
    # the generic table's 64-bit names (__NR3264_*) and arm64's __ARCH_WANT_* entries
    assert [syscall_number(n, "aarch64") for n in ("fcntl", "newfstatat", "mmap", "renameat", "clone3")] == [
        25, 79, 222, 38, 435]  # fmt: skip
    assert syscall_name(100_000, "x86_64") is None
    with pytest.raises(KeyError):
        syscall_number("open", "aarch64")  # the generic table has only openat
    with pytest.raises(ValueError, match="no syscall table"):
        syscall_name(0, "sparc")


def test_x32_numbers_live_under_x86_64() -> None:
    assert syscall_name(X32_SYSCALL_BIT | 0, "x86_64") == "x32:read"
    assert syscall_name(X32_SYSCALL_BIT | 512, "x86_64") == "x32:rt_sigaction"  # x32's own compat entries
    assert syscall_number("x32:execve", "x86_64") == X32_SYSCALL_BIT | 520
    assert syscall_name(X32_SYSCALL_BIT | 0, "x32") == "read"
    assert syscall_name(-1, "x86_64") is None and syscall_name(X32_SYSCALL_BIT | 59, "x86_64") is None


def test_a_missing_header_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(syscalls, "HEADER_DIRS", ("/nonexistent",))
    syscalls.table.cache_clear()
    try:
        with pytest.raises(syscalls.HeaderMissingError, match="linux-libc-dev"):
            syscalls.table("i386")
    finally:
        syscalls.table.cache_clear()


@pytest.mark.parametrize("arch", ["x86_64", "i386", "aarch64"])
def test_tables_agree_with_libseccomp(arch: str) -> None:
    lsc = lsc_module()
    larch = {"x86_64": lsc.Arch.X86_64, "i386": lsc.Arch.X86, "aarch64": lsc.Arch.AARCH64}[arch]
    table = {nr: name for nr, name in syscalls.table(arch).items() if not name.startswith("x32:")}
    assert len(table) > 290
    agree = 0
    for nr, name in table.items():
        theirs = lsc.resolve_syscall(larch, name)
        if arch == "i386" and theirs in (102, 117):  # libseccomp maps socket/ipc calls to socketcall/ipc
            continue
        assert theirs == nr, (name, nr, theirs)
        assert lsc.resolve_syscall(larch, nr).decode() == name
        agree += 1
    assert agree > 290
