"""Syscall names and numbers per architecture, read at run time from the system's kernel headers.

    syscall_name(59, "x86_64")              # 'execve'
    syscall_number("openat", "aarch64")     # 56
    syscall_name(0x40000000, "x86_64")      # 'x32:read' (x32 runs under AUDIT_ARCH_X86_64)

The tables are not typed here: they come from linux-libc-dev's `<asm/unistd_64.h>` (x86_64),
`<asm/unistd_32.h>` (i386), `<asm/unistd_x32.h>` (x32) and `<asm-generic/unistd.h>` (aarch64, which
uses the generic table: read through a small preprocessor with arm64's `__ARCH_WANT_*` switches),
so they follow the kernel the system's headers describe.
"""

from __future__ import annotations

import functools
import os
import re

X32_SYSCALL_BIT = 0x40000000  # x32 syscalls run under AUDIT_ARCH_X86_64 with this bit set in nr
X32_PREFIX = "x32:"
HEADER_DIRS = ("/usr/include/x86_64-linux-gnu/asm", "/usr/include/asm", "/usr/include/i386-linux-gnu/asm")
GENERIC_HEADER = "/usr/include/asm-generic/unistd.h"
# arch/arm64/include/uapi/asm/unistd.h: the switches it sets before including the generic table.
_ARM64_WANTS = ("__ARCH_WANT_RENAMEAT", "__ARCH_WANT_NEW_STAT", "__ARCH_WANT_SET_GET_RLIMIT",
                "__ARCH_WANT_TIME32_SYSCALLS", "__ARCH_WANT_SYS_CLONE3", "__ARCH_WANT_MEMFD_SECRET")  # fmt: skip
ARCHES = ("x86_64", "i386", "x32", "aarch64")
_AUDIT_NAMES = {0xC000003E: "x86_64", 0x40000003: "i386", 0xC00000B7: "aarch64"}  # DIALECTS.md C.3


class HeaderMissingError(FileNotFoundError):
    """A kernel header the tables are read from is not installed."""


def arch_name(arch: str | int) -> str:
    """`"x86_64"`, `"i386"`, `"x32"` or `"aarch64"` for one of those names or an AUDIT_ARCH value."""
    name = _AUDIT_NAMES.get(arch) if isinstance(arch, int) else arch
    if name not in ARCHES:
        shown = f"{arch:#x}" if isinstance(arch, int) else repr(arch)
        raise ValueError(f"no syscall table for architecture {shown} (known: {', '.join(ARCHES)})")
    return name


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as header:
            return header.read()
    except FileNotFoundError:
        raise HeaderMissingError(
            f"{path} is missing: the syscall tables come from the kernel headers "
            "(apt-get install linux-libc-dev on Debian/Ubuntu; kernel-headers on Fedora)"
        ) from None


def _arch_header(filename: str) -> str:
    for directory in HEADER_DIRS:
        if os.path.exists(os.path.join(directory, filename)):
            return _read(os.path.join(directory, filename))
    return _read(os.path.join(HEADER_DIRS[0], filename))  # raises, naming the package


_DEFINE = re.compile(r"#define\s+__NR_(\w+)\s+(?:\(__X32_SYSCALL_BIT \+ )?(\d+)\)?\s*$")


def _flat_table(text: str, bias: int = 0) -> dict[int, str]:
    """x86's generated headers: one `#define __NR_name number` per syscall, no conditionals."""
    table: dict[int, str] = {}
    for line in text.splitlines():
        m = _DEFINE.match(line.strip())
        if m:
            table.setdefault(int(m[2]) + bias, m[1])
    return table


def _condition(expr: str, defined: dict[str, str], bits: int) -> bool:
    """A `#if` expression of the generic header: defined(), `__BITS_PER_LONG`, ==, !=, &&, ||, !."""
    expr = re.sub(r"defined\s*\(?\s*(\w+)\s*\)?", lambda m: "1" if m[1] in defined else "0", expr)
    expr = expr.replace("__BITS_PER_LONG", str(bits)).replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    if not re.fullmatch(r"[\d\s()=!<>a-z]*", expr):
        raise ValueError(f"unexpected #if expression in {GENERIC_HEADER}: {expr!r}")
    return bool(eval(expr, {"__builtins__": {}}))  # checked above: digits, parentheses and operators only


def _generic_table(text: str, wants: tuple[str, ...], bits: int = 64) -> dict[int, str]:
    """asm-generic/unistd.h through the few preprocessor directives it uses."""
    defined: dict[str, str] = dict.fromkeys(wants, "")
    stack: list[tuple[bool, bool]] = []  # (this branch active, some branch of this #if taken)
    active = True
    for raw in text.splitlines():
        line = raw.strip()
        directive = re.match(r"#\s*(\w+)\s*(.*)", line)
        if not directive:
            continue
        word, rest = directive[1], directive[2].split("/*")[0].strip()
        if word in ("if", "ifdef", "ifndef"):
            cond = (rest in defined) if word == "ifdef" else (rest not in defined) if word == "ifndef" else None
            taken = active and (cond if cond is not None else _condition(rest, defined, bits))
            stack.append((active, taken))
            active = taken
        elif word == "elif":
            outer, taken = stack[-1]
            active = outer and not taken and _condition(rest, defined, bits)
            stack[-1] = (outer, taken or active)
        elif word == "else":
            outer, taken = stack[-1]
            active = outer and not taken
            stack[-1] = (outer, True)
        elif word == "endif":
            active = stack.pop()[0]
        elif active and word == "define":
            parts = rest.split(None, 1)
            defined[parts[0]] = parts[1].strip() if len(parts) > 1 else ""
        elif active and word == "undef":
            defined.pop(rest, None)
    table: dict[int, str] = {}
    for macro, value in defined.items():
        if macro.startswith("__NR_") and macro not in ("__NR_syscalls", "__NR_arch_specific_syscall"):
            value = defined.get(value, value)  # __NR_fcntl -> __NR3264_fcntl -> 25
            if value.isdigit():
                table[int(value)] = macro[len("__NR_") :]
    return table


@functools.cache
def table(arch: str | int) -> dict[int, str]:
    """{number: name} of an architecture (for x86_64: its own numbers and x32's, those with
    X32_SYSCALL_BIT set and named `x32:name`)."""
    name = arch_name(arch)
    if name == "x86_64":
        own = _flat_table(_arch_header("unistd_64.h"))
        return own | {nr: X32_PREFIX + n for nr, n in table("x32").items()}
    if name == "x32":
        return _flat_table(_arch_header("unistd_x32.h"), bias=X32_SYSCALL_BIT)
    if name == "i386":
        return _flat_table(_arch_header("unistd_32.h"))
    return _generic_table(_read(GENERIC_HEADER), _ARM64_WANTS)


@functools.cache
def _numbers(arch: str) -> dict[str, int]:
    return {name: nr for nr, name in sorted(table(arch).items(), reverse=True)}


def syscall_name(nr: int, arch: str | int) -> str | None:
    """The name of syscall `nr` on `arch` (a name or AUDIT_ARCH value), None if it has none."""
    return table(arch_name(arch)).get(nr & 0xFFFFFFFF)


def syscall_number(name: str, arch: str | int) -> int:
    """The number of syscall `name` on `arch` (`x32:name` for x32's under x86_64); KeyError if none."""
    found = _numbers(arch_name(arch)).get(name)
    if found is None:
        raise KeyError(f"no syscall {name!r} on {arch_name(arch)}")
    return found


__all__ = ["ARCHES", "X32_SYSCALL_BIT", "HeaderMissingError", "arch_name", "syscall_name", "syscall_number", "table"]
