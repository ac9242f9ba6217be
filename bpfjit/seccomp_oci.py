"""OCI/Docker seccomp profiles (JSON) compiled through libseccomp, as Docker and runc compile them.

    program = from_oci("profile.json", arch="x86_64", caps={"CAP_SYS_ADMIN"}, kernel_version="6.1")

Two programs turn a profile into a filter at container start, and this module does what each does:

- **moby** (`profiles/seccomp`, the daemon) resolves the profile for the host: `archMap`'s entry for
  the host's architecture gives the filter's architectures (it and its `subArchitectures`;
  `architectures` instead is taken as it is, and giving both is an error); a `syscalls[]` entry is
  left out when its `excludes` match (the host's architecture among `arches`, any of `caps` in the
  container's bounding set, a kernel at least `minKernel`) or its `includes` do not (all of them
  must). `arches` there are Go's names: `amd64`, `x86`, `arm64`, ...
- **runc** (`libcontainer/seccomp`, through libseccomp-golang) builds the libseccomp filter: the
  default action from `defaultAction` (+ `defaultErrnoRet`); for every name of every entry a rule,
  its action from `action` (+ `errnoRet`): SCMP_ACT_KILL is KILL_THREAD, ERRNO and TRACE without a
  number are ERRNO(EPERM) and TRACE(EPERM). A rule whose action is the default action is skipped
  (libseccomp would refuse it); a name libseccomp does not know is skipped (runc logs it at debug
  level), and libseccomp itself leaves a name out of an architecture that lacks it. `args` are
  ANDed in one rule, except when two of them test the same argument index: then runc adds every
  condition of the entry as a rule of its own (so they are ORed; libseccomp 2.5 refuses two
  conditions on one argument in a rule). Past 32 rules runc asks libseccomp for its binary-tree
  layout (`SCMP_FLTATR_CTL_OPTIMIZE` 2): the same decisions, a different program shape. An
  architecture the filter does not list (x32 numbers too, unless SCMP_ARCH_X32 is listed) gets
  libseccomp's bad-architecture action, which runc leaves at KILL_THREAD.

Not done: runc's `patchbpf` prepends to libseccomp's program a stub that returns ERRNO(ENOSYS) for
syscall numbers above the largest the profile names (per architecture; unless the default action
is ALLOW, LOG or TRACE), so that newer syscalls fail the way old kernels fail them. The program
here is libseccomp's alone: those numbers get the default action. `flags`, `listenerPath` and
`listenerMetadata` do not change the program and are not read; the containers/common extensions
(`defaultErrno`, `errno` as names) are not read either.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .program import Program
from .seccomp import from_libseccomp, libseccomp

EPERM = 1  # runc's number for ERRNO and TRACE when the profile gives none
MAX_ARGS = 6
OPTIMIZE_PAST = 32  # runc: libseccomp's binary tree for more rules than this

# bpfjit's architecture name -> (libseccomp's SCMP_ARCH_ name, Go's name that includes/excludes use)
ARCHES: dict[str, tuple[str, str]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "amd64"), "i386": ("SCMP_ARCH_X86", "x86"),
    "aarch64": ("SCMP_ARCH_AARCH64", "arm64"), "arm": ("SCMP_ARCH_ARM", "arm"),
    "riscv64": ("SCMP_ARCH_RISCV64", "riscv64"), "s390x": ("SCMP_ARCH_S390X", "s390x"),
    "ppc64le": ("SCMP_ARCH_PPC64LE", "ppc64le"), "ppc64": ("SCMP_ARCH_PPC64", "ppc64"),
    "mipsel64": ("SCMP_ARCH_MIPSEL64", "mipsel64"),
}  # fmt: skip
ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
           "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY")  # fmt: skip
OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
             "SCMP_CMP_MASKED_EQ")  # fmt: skip


def _load(profile: str | bytes | Mapping[str, Any] | os.PathLike[str]) -> Mapping[str, Any]:
    """The profile as a dict: given as one, as JSON text (str or bytes), or as a file's path."""
    if isinstance(profile, Mapping):
        data: Any = profile
    else:
        if isinstance(profile, os.PathLike) or (isinstance(profile, str) and not profile.lstrip().startswith("{")):
            with open(profile, "rb") as f:
                profile = f.read()
        try:
            data = json.loads(profile)
        except json.JSONDecodeError as exc:
            raise ValueError(f"seccomp profile: not JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise ValueError(f"seccomp profile: a JSON object is needed, not {type(data).__name__}")
    return data


def _kernel(text: str, where: str) -> tuple[int, int]:
    """`"5.10"` -> (5, 10), as moby reads `minKernel` and the host's release (the rest ignored)."""
    m = re.match(r"(\d+)\.(\d+)", text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f'{where}: {text!r} is not a kernel version like "5.10"')
    return int(m[1]), int(m[2])


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: a list of strings is needed, not {value!r}")
    return value


def _uint(value: Any, bits: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError(f"{where}: an integer from 0 to {(1 << bits) - 1} is needed, not {value!r}")
    return value


class _Resolver:
    """What moby and runc decide for one target: the filter's actions, architectures and rules."""

    def __init__(self, lsc: Any, arch: str, caps: frozenset[str], kernel: tuple[int, int]):
        self.lsc, self.arch, self.caps, self.kernel = lsc, arch, caps, kernel
        self.scmp_arch, self.go_arch = ARCHES[arch]

    def action(self, name: Any, errno: Any, field: str, errno_field: str) -> int:
        """runc's getAction: the libseccomp action value of a profile's action name (+ errno)."""
        if name not in ACTIONS:
            raise ValueError(f"{field}: {name!r} is not one of {', '.join(ACTIONS)}")
        number = EPERM if errno is None else _uint(errno, 16, errno_field)
        lsc = self.lsc
        if name == "SCMP_ACT_ERRNO":
            return int(lsc.ERRNO(number))
        if name == "SCMP_ACT_TRACE":
            return int(lsc.TRACE(number))
        fixed = {"SCMP_ACT_KILL": lsc.KILL, "SCMP_ACT_KILL_THREAD": lsc.KILL, "SCMP_ACT_KILL_PROCESS": lsc.KILL_PROCESS,
                 "SCMP_ACT_TRAP": lsc.TRAP, "SCMP_ACT_ALLOW": lsc.ALLOW, "SCMP_ACT_LOG": lsc.LOG,
                 "SCMP_ACT_NOTIFY": lsc.NOTIFY}  # fmt: skip
        return int(fixed[name])

    def arch_token(self, name: Any, where: str) -> Any:
        if not isinstance(name, str) or not name.startswith("SCMP_ARCH_"):
            raise ValueError(f"{where}: {name!r} is not an SCMP_ARCH_ name")
        token = getattr(self.lsc.Arch, name[len("SCMP_ARCH_") :], None)
        if token is None:
            raise ValueError(f"{where}: {name} is not an architecture this libseccomp knows")
        return token

    def architectures(self, profile: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """moby: `architectures` as given, or the `archMap` entry of the target (it, then its subarches)."""
        listed, arch_map = profile.get("architectures"), profile.get("archMap")
        if listed and arch_map:
            raise ValueError("architectures, archMap: give one of them, not both (as moby requires)")
        if listed:
            return [(n, self.arch_token(n, f"architectures[{i}]"))
                    for i, n in enumerate(_strings(listed, "architectures"))]  # fmt: skip
        if not isinstance(arch_map or [], list):
            raise ValueError(f"archMap: a list is needed, not {arch_map!r}")
        for i, entry in enumerate(arch_map or []):
            where = f"archMap[{i}]"
            if not isinstance(entry, Mapping) or not isinstance(entry.get("architecture"), str):
                raise ValueError(f'{where}: an object with an "architecture" is needed, not {entry!r}')
            if entry["architecture"] == self.scmp_arch:
                names = [entry["architecture"], *_strings(entry.get("subArchitectures"), f"{where}.subArchitectures")]
                return [(n, self.arch_token(n, where)) for n in names]
        return []

    def applies(self, call: Mapping[str, Any], where: str) -> bool:
        """moby's includes/excludes for the target architecture, capabilities and kernel."""
        excludes, includes = call.get("excludes") or {}, call.get("includes") or {}
        for key, value in (("excludes", excludes), ("includes", includes)):
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}.{key}: an object is needed, not {value!r}")
            unknown = set(value) - {"arches", "caps", "minKernel"}
            if unknown:
                raise ValueError(f"{where}.{key}: unknown field {sorted(unknown)[0]!r} (arches, caps, minKernel)")
        if self.go_arch in _strings(excludes.get("arches"), f"{where}.excludes.arches"):
            return False
        if set(_strings(excludes.get("caps"), f"{where}.excludes.caps")) & self.caps:
            return False
        if excludes.get("minKernel") is not None and self.kernel >= _kernel(
            excludes["minKernel"], f"{where}.excludes.minKernel"
        ):
            return False
        arches = _strings(includes.get("arches"), f"{where}.includes.arches")
        if arches and self.go_arch not in arches:
            return False
        if not set(_strings(includes.get("caps"), f"{where}.includes.caps")) <= self.caps:
            return False
        return not (
            includes.get("minKernel") is not None
            and self.kernel < _kernel(includes["minKernel"], f"{where}.includes.minKernel")
        )

    def conditions(self, args: Any, where: str) -> list[Any]:
        """The entry's `args` as libseccomp conditions (lsc.Arg), each field checked."""
        if args is None:
            return []
        if not isinstance(args, list):
            raise ValueError(f"{where}.args: a list is needed, not {args!r}")
        found = []
        for j, arg in enumerate(args):
            at = f"{where}.args[{j}]"
            if not isinstance(arg, Mapping):
                raise ValueError(f"{at}: an object is needed, not {arg!r}")
            index = _uint(arg.get("index"), 32, f"{at}.index")
            if index >= MAX_ARGS:
                raise ValueError(f"{at}.index: {index} is past the last argument ({MAX_ARGS - 1})")
            op = arg.get("op")
            if op not in OPERATORS:
                raise ValueError(f"{at}.op: {op!r} is not one of {', '.join(OPERATORS)}")
            value = _uint(arg.get("value", 0), 64, f"{at}.value")
            value_two = _uint(arg.get("valueTwo", 0), 64, f"{at}.valueTwo")
            found.append((index, self.lsc.Arg(index, getattr(self.lsc, op[len("SCMP_CMP_") :]), value, value_two)))
        indexes = [index for index, _ in found]
        if len(set(indexes)) < len(indexes):  # runc: one rule per condition when an index repeats
            return [[cond] for _, cond in found]
        return [[cond for _, cond in found]] if found else []


def _host_kernel() -> tuple[int, int]:
    return _kernel(os.uname().release, "the host's kernel release")


def from_oci(
    profile: str | bytes | Mapping[str, Any] | os.PathLike[str],
    arch: str = "x86_64",
    caps: Iterable[str] = frozenset(),
    kernel_version: str | tuple[int, int] | None = None,
) -> Program:
    """The program runc would install for `profile` (a path, JSON text or its dict) on an `arch`
    host, for a container whose bounding set is `caps` (`"CAP_SYS_ADMIN"`, ...), on a kernel
    `kernel_version` ("5.10", or (5, 10); None: this machine's, as moby reads it). `ValueError`
    naming the field for what moby or runc would refuse; `LibraryMissingError` without
    python3-seccomp."""
    if arch not in ARCHES:
        raise ValueError(f"arch {arch!r}: one of {', '.join(ARCHES)}")
    data = _load(profile)
    kernel = (_host_kernel() if kernel_version is None else kernel_version if isinstance(kernel_version, tuple)
              else _kernel(kernel_version, "kernel_version"))  # fmt: skip
    unknown = set(data) - {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags",
                           "listenerPath", "listenerMetadata"}  # fmt: skip
    if unknown:
        raise ValueError(f"seccomp profile: unknown field {sorted(unknown)[0]!r}")
    calls = data.get("syscalls")
    calls = [] if calls is None else calls
    if not isinstance(calls, list):
        raise ValueError(f"syscalls: a list is needed, not {calls!r}")
    if not data.get("defaultAction"):
        # moby: with neither, the container runs unconfined (no filter at all)
        raise ValueError("defaultAction: missing" + ("" if calls else " (moby installs no filter at all then)"))
    lsc = libseccomp()
    r = _Resolver(lsc, arch, frozenset(caps), kernel)
    default = r.action(data["defaultAction"], data.get("defaultErrnoRet"), "defaultAction", "defaultErrnoRet")
    if default == lsc.NOTIFY:
        raise ValueError("defaultAction: SCMP_ACT_NOTIFY cannot be the default action (runc refuses it)")
    rules: list[tuple[str, str, int, list[list[Any]]]] = []  # (where, name, action, condition sets)
    for i, call in enumerate(calls):
        where = f"syscalls[{i}]"
        if not isinstance(call, Mapping):
            raise ValueError(f"{where}: an object is needed, not {call!r}")
        if call.get("name") and call.get("names"):
            raise ValueError(f"{where}: give name or names, not both (as moby requires)")
        if call.get("name"):
            names = _strings([call["name"]], f"{where}.name")
        else:
            names = _strings(call.get("names"), f"{where}.names")
        if "" in names:
            raise ValueError(f"{where}.names: an empty string is not a syscall name (runc refuses it)")
        if not r.applies(call, where):
            continue
        action = r.action(call.get("action"), call.get("errnoRet"), f"{where}.action", f"{where}.errnoRet")
        conditions = r.conditions(call.get("args"), where)
        if action == lsc.NOTIFY and "write" in names:
            raise ValueError(f"{where}: SCMP_ACT_NOTIFY cannot be used for write (runc refuses it)")
        rules.extend((where, name, action, conditions) for name in names)

    f = lsc.SyscallFilter(default)
    target = r.arch_token(r.scmp_arch, "arch")
    if lsc.system_arch() != (target & 0xFFFFFFFF):  # another host's filter: its native architecture instead
        f.add_arch(target)
        f.remove_arch(lsc.Arch.NATIVE)
    for _name, token in r.architectures(data):
        if not f.exist_arch(token):
            f.add_arch(token)
    if len(rules) > OPTIMIZE_PAST:
        f.set_attr(lsc.Attr.CTL_OPTIMIZE, 2)
    for where, name, action, conditions in rules:
        if action == default:
            continue  # runc: redundant, and libseccomp refuses it
        if lsc.resolve_syscall(target, name) == -1:
            continue  # runc: a name libseccomp does not know is not supported by this kernel
        for conds in conditions or [[]]:
            try:
                f.add_rule(action, name, *conds)
            except (RuntimeError, ValueError) as exc:
                raise ValueError(f"{where}: libseccomp refused the rule for {name}: {exc}") from None
    return from_libseccomp(f)


__all__ = ["ACTIONS", "ARCHES", "OPERATORS", "from_oci"]
