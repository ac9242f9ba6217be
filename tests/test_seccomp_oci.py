"""seccomp.from_oci: an OCI/Docker profile compiled through libseccomp as moby and runc compile it.

The profile below is written for these tests in the format of moby's profiles (not a copy of its
default.json): an allow list, argument conditions of every operator (64-bit values too, and two on
one argument, which runc turns into one rule each), includes/excludes on capabilities,
architectures and kernel versions, names the architecture lacks and one nobody knows. Its allowed
set is written out by hand (ALLOWED) and `explain` must find exactly that; the kernel (the
unprivileged oracle of tests/seccomp_kernel.py) must return what the JIT returns through it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from seccomp_kernel import AVAILABLE, REASON, UNRELIABLE_NRS, Oracle
from test_seccomp_names import lsc_module

from bpfjit import Program, cli, seccomp
from bpfjit.seccomp import RET, decode
from bpfjit.seccomp_explain import record_words
from bpfjit.syscalls import X32_SYSCALL_BIT, syscall_number, table

EPERM, EACCES, ENOSYS = 1, 13, 38
AF_VSOCK = 40
CLONE_NAMESPACES = 0x7E020000
_BASICS_TEXT = """
accept4 access bind brk capget chdir close connect dup dup3 epoll_create1 epoll_ctl epoll_pwait execve exit exit_group
fchmod fcntl fstat futex getcwd getdents64 getpid getppid getrandom gettid ioctl lseek madvise munmap nanosleep
newfstatat pipe2 pread64 read readlinkat recvfrom rt_sigaction rt_sigprocmask rt_sigreturn sendto set_robust_list
set_tid_address uname wait4 write writev
"""
BASICS = _BASICS_TEXT.split()


def arg(index: int, op: str, value: int, value_two: int | None = None) -> dict[str, Any]:
    """One `args` entry (valueTwo left out unless given, as profiles mostly do)."""
    entry = {"index": index, "value": value, "op": f"SCMP_CMP_{op}"}
    return entry if value_two is None else {**entry, "valueTwo": value_two}


PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": EPERM,
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        # set_tls is ARM's alone; no kernel has bpfjit_no_such_call: runc skips it, libseccomp leaves set_tls out
        {"names": [*BASICS, "set_tls", "bpfjit_no_such_call"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [arg(0, "EQ", v) for v in (0x0, 0x8, 0x20000, 0xFFFFFFFF)]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [arg(0, "MASKED_EQ", CLONE_NAMESPACES, 0)],
         "excludes": {"caps": ["CAP_SYS_ADMIN"], "arches": ["s390", "s390x"]}},
        {"names": ["clone", "unshare", "setns", "mount", "umount2"], "action": "SCMP_ACT_ALLOW",
         "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
         "args": [arg(0, "NE", AF_VSOCK), arg(2, "LT", 256)]},
        {"names": ["mmap"], "action": "SCMP_ACT_ALLOW",
         "args": [arg(2, "MASKED_EQ", 4, 0), arg(1, "LE", 1 << 40)]},
        {"names": ["mprotect"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES,
         "args": [arg(2, "MASKED_EQ", 4, 4)]},
        {"names": ["kill", "tgkill"], "action": "SCMP_ACT_TRAP", "args": [arg(1, "GT", 64)]},
        {"names": ["kill", "tgkill"], "action": "SCMP_ACT_LOG", "args": [arg(0, "GE", 1 << 33)]},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ERRNO", "excludes": {"minKernel": "4.8"}},
        {"names": ["arch_prctl", "modify_ldt"], "action": "SCMP_ACT_ALLOW",
         "includes": {"arches": ["amd64", "x32", "x86"]}},
        {"names": ["sync_file_range2"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["ppc64le"]}},
        {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"},
        {"names": ["kexec_load"], "action": "SCMP_ACT_KILL"},
        {"names": ["acct"], "action": "SCMP_ACT_TRACE"},
        {"names": ["syslog"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYSLOG", "CAP_SYS_ADMIN"]}},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "comment": "the same action as the default: skipped"},
    ],
}  # fmt: skip
# What the profile allows on x86_64 whatever the arguments (kernel 6.1, no capabilities), by hand.
ALLOWED = {*BASICS, "ptrace", "arch_prctl", "modify_ldt"}
DEPENDS = {"personality", "clone", "socket", "mmap", "mprotect", "kill", "tgkill"}


def x86_64_numbers(names: set[str], x32: bool = True) -> set[int]:
    """The numbers of `names` under AUDIT_ARCH_X86_64: x86_64's, and x32's (X32 is a sub-architecture)."""
    own = {nr for nr, name in table("x86_64").items() if name in names}
    return own | ({nr for nr, name in table("x86_64").items() if name.removeprefix("x32:") in names and
                   nr & X32_SYSCALL_BIT} if x32 else set())  # fmt: skip


@pytest.fixture(scope="module")
def program() -> Program:
    lsc_module()
    return seccomp.from_oci(PROFILE, "x86_64", kernel_version="6.1")


def test_explain_allows_exactly_the_allow_list(program: Program) -> None:
    e = seccomp.explain(program, "x86_64")
    assert e.allowed() == x86_64_numbers(ALLOWED)
    assert {p.name for p in e.depends()} == DEPENDS | {f"x32:{name}" for name in DEPENDS}
    by_name = {p.name: p for p in e.syscalls.values()}
    assert by_name["clone3"].action == decode(RET["ERRNO"] | ENOSYS)
    assert by_name["reboot"].action == decode(RET["KILL_PROCESS"])
    assert by_name["kexec_load"].action == decode(RET["KILL_THREAD"])  # SCMP_ACT_KILL kills the thread
    assert by_name["acct"].action == decode(RET["TRACE"] | EPERM)  # TRACE without errnoRet: runc's EPERM
    assert by_name["mount"].action == by_name["openat"].action == decode(RET["ERRNO"] | 1)
    assert by_name["getppid"].action == decode(RET["ALLOW"])  # its ERRNO(1) rule was the default: skipped
    beyond = seccomp.explain(program, "x86_64", nrs=[1000]).syscalls[1000]
    assert beyond.action == decode(RET["ERRNO"] | 1)  # runc's stub would say ENOSYS past the largest number


def test_sub_architectures_and_the_other_hosts(program: Program) -> None:
    i386 = seccomp.explain(program, "i386")
    # includes.arches name the host (amd64), not each architecture of its filter: arch_prctl is i386's too
    assert i386.allowed() == {syscall_number(n, "i386") for n in ALLOWED if n != "newfstatat"}
    aarch64 = seccomp.explain(seccomp.from_oci(PROFILE, "aarch64", kernel_version="6.1"), "aarch64")
    names = {name for nr, name in table("aarch64").items() if nr in aarch64.allowed()}
    known = set(table("aarch64").values())
    assert names == (ALLOWED - {"arch_prctl", "modify_ldt"}) & known  # includes.arches: amd64, x32, x86 only
    assert seccomp.explain(program, "aarch64").allowed() == set()  # the x86_64 host's filter kills other arches


def test_capabilities_and_kernel_versions() -> None:
    lsc_module()
    admin = seccomp.explain(seccomp.from_oci(PROFILE, caps={"CAP_SYS_ADMIN"}, kernel_version="6.1"), "x86_64")
    extra = {"clone", "unshare", "setns", "mount", "umount2"}
    assert admin.allowed() == x86_64_numbers(ALLOWED | extra)
    assert admin.syscalls[syscall_number("clone3", "x86_64")].action == decode(RET["ERRNO"] | 1)
    both = seccomp.from_oci(PROFILE, caps={"CAP_SYS_ADMIN", "CAP_SYSLOG"}, kernel_version=(6, 1))
    assert syscall_number("syslog", "x86_64") in seccomp.explain(both, "x86_64").allowed()
    old = seccomp.explain(seccomp.from_oci(PROFILE, kernel_version="4.4.0-generic"), "x86_64")
    assert old.syscalls[syscall_number("ptrace", "x86_64")].action == decode(RET["ERRNO"] | 1)


def test_argument_conditions_are_runcs(program: Program) -> None:
    """Two conditions on one argument: one rule each (ORed); on different arguments: ANDed."""
    sf = seccomp.compile(program)
    allow, eperm = RET["ALLOW"], RET["ERRNO"] | 1
    personality, socket, mmap = (syscall_number(n, "x86_64") for n in ("personality", "socket", "mmap"))
    assert [sf(personality, (v,)) for v in (0, 8, 0x20000, 0xFFFFFFFF, 1, 1 << 32)] == [allow] * 4 + [eperm] * 2
    assert [sf(socket, a) for a in ((2, 1, 0), (40, 1, 0), (2, 1, 256), (2, 1, 1 << 32))] == [allow] + [eperm] * 3
    assert [sf(mmap, (0, 1 << 40, 3)), sf(mmap, (0, (1 << 40) + 1, 3)), sf(mmap, (0, 4096, 7))] == [allow, eperm, eperm]
    kill = syscall_number("kill", "x86_64")
    assert [sf(kill, a) for a in ((1, 9), (1, 65), (1 << 33, 9))] == [eperm, RET["TRAP"], RET["LOG"]]


def test_profiles_from_files_text_and_bytes(tmp_path: Path, program: Program) -> None:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    for source in (path, str(path), json.dumps(PROFILE), json.dumps(PROFILE).encode()):
        assert seccomp.from_oci(source, kernel_version="6.1") == program


def test_the_old_name_field_and_architectures_list() -> None:
    lsc_module()
    profile = {"defaultAction": "SCMP_ACT_KILL_PROCESS", "architectures": ["SCMP_ARCH_X86_64"],
               "syscalls": [{"name": "read", "action": "SCMP_ACT_ALLOW"}]}  # fmt: skip
    e = seccomp.explain(seccomp.from_oci(profile, kernel_version="6.1"), "x86_64")
    assert e.allowed() == {0}
    # x32 not listed: libseccomp's bad-architecture action, which runc leaves at KILL_THREAD
    assert e.syscalls[X32_SYSCALL_BIT].action == decode(RET["KILL_THREAD"])
    assert e.syscalls[1].action == decode(RET["KILL_PROCESS"])


def _broken(change: Any) -> dict[str, Any]:
    profile = copy.deepcopy(PROFILE)
    change(profile)
    return profile


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.update(defaultAction="SCMP_ACT_NOPE"), "defaultAction: 'SCMP_ACT_NOPE' is not one of"),
    (lambda p: p.pop("defaultAction"), "defaultAction: missing"),
    (lambda p: p.update(defaultAction="SCMP_ACT_NOTIFY"), "defaultAction: SCMP_ACT_NOTIFY cannot be"),
    (lambda p: p.update(defaultErrnoRet=-1), "defaultErrnoRet: an integer from 0 to 65535"),
    (lambda p: p.update(architectures=["SCMP_ARCH_X86_64"]), "architectures, archMap: give one of them"),
    (lambda p: p.update(architectures=["x86_64"]) or p.pop("archMap"), "architectures[0]: 'x86_64' is not an SCMP"),
    (lambda p: p["archMap"][0]["subArchitectures"].append("SCMP_ARCH_VAX"), "archMap[0]: SCMP_ARCH_VAX is not"),
    (lambda p: p.update(syscalls={}), "syscalls: a list is needed"),
    (lambda p: p.update(sycalls=[]), "unknown field 'sycalls'"),
    (lambda p: p["syscalls"][1].update(action="ALLOW"), "syscalls[1].action: 'ALLOW' is not one of"),
    (lambda p: p["syscalls"][1]["args"][2].update(op="SCMP_CMP_IN"), "syscalls[1].args[2].op: 'SCMP_CMP_IN'"),
    (lambda p: p["syscalls"][1]["args"][0].update(index=6), "syscalls[1].args[0].index: 6 is past the last"),
    (lambda p: p["syscalls"][1]["args"][0].update(value=1 << 64), "syscalls[1].args[0].value: an integer from 0"),
    (lambda p: p["syscalls"][1]["args"][0].pop("index"), "syscalls[1].args[0].index: an integer"),
    (lambda p: p["syscalls"][4].update(errnoRet="ENOSYS"), "syscalls[4].errnoRet: an integer from 0 to 65535"),
    (lambda p: p["syscalls"][0].update(name="read"), "syscalls[0]: give name or names, not both"),
    (lambda p: p["syscalls"][0]["names"].append(""), "syscalls[0].names: an empty string"),
    (lambda p: p["syscalls"][0].update(names="read"), "syscalls[0].names: a list of strings"),
    (lambda p: p["syscalls"][10].update(includes={"minKernel": "four"}), "syscalls[10].includes.minKernel: 'four'"),
    (lambda p: p["syscalls"][2]["excludes"].update(arch=["amd64"]), "syscalls[2].excludes: unknown field 'arch'"),
    (lambda p: p["syscalls"][0].update(action="SCMP_ACT_NOTIFY"), "syscalls[0]: SCMP_ACT_NOTIFY cannot be used for"),
])  # fmt: skip
def test_errors_name_the_field(change: Any, message: str) -> None:
    lsc_module()
    with pytest.raises(ValueError) as info:
        seccomp.from_oci(_broken(change), kernel_version="6.1")
    assert message in str(info.value)


def test_errors_outside_the_fields() -> None:
    with pytest.raises(ValueError, match="arch 'sparc'"):
        seccomp.from_oci(PROFILE, "sparc")
    with pytest.raises(ValueError, match="not JSON"):
        seccomp.from_oci("{nope")
    with pytest.raises(ValueError, match="a JSON object is needed, not list"):
        seccomp.from_oci(b"[]")
    with pytest.raises(ValueError, match="kernel_version: '6' is not a kernel version"):
        seccomp.from_oci(PROFILE, kernel_version="6")


def test_cli_oci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lsc_module()
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE))
    args = ["--oci", str(path), "--arch", "x86_64", "--kernel", "6.1"]
    assert cli.main(["seccomp", "explain", *args, "--cap", "CAP_SYS_ADMIN"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "arch x86_64 (ARCH_X86_64), 999 syscall numbers" and "clone3" not in out[1]
    assert out[1].startswith("ALLOW (") and " mount " in out[1] and "unshare" in out[1]
    assert cli.main(["seccomp", "disasm", *args]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("A = arch")
    (tmp_path / "r.jsonl").write_text('{"nr": "mount"}\n{"nr": "clone", "args": [256]}\n')
    assert cli.main(["seccomp", "eval", *args, str(tmp_path / "r.jsonl")]) == 0
    assert capsys.readouterr().out.splitlines() == ["mount (165) arch=0xc000003e: 0x00050001 ERRNO(1)",
                                                     "clone (56) arch=0xc000003e: 0x7fff0000 ALLOW"]  # fmt: skip
    (tmp_path / "bad.json").write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": [1]}]}))
    assert cli.main(["seccomp", "explain", "--oci", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err
    assert err == "bpfjit seccomp explain: syscalls[0].names: a list of strings is needed, not [1]\n"
    assert cli.main(["seccomp", "explain", "--oci", str(path), str(path)]) == 1
    assert "not both" in capsys.readouterr().err


# -- the kernel ------------------------------------------------------------------------------------------
NAMED = sorted(x86_64_numbers(ALLOWED | DEPENDS | {"clone3", "reboot", "kexec_load", "acct", "mount", "ptrace"})
               - UNRELIABLE_NRS)  # fmt: skip
VALUES = (0, 1, 2, 3, 4, 7, 8, 9, 40, 64, 65, 255, 256, 0x20000, 0xFFFFFFFF, 1 << 32, 1 << 33, 1 << 40, (1 << 40) + 1,
          CLONE_NAMESPACES, 1 << 28, (1 << 64) - 1)  # fmt: skip
OTHER_NRS = st.integers(0, 600).filter(lambda n: n not in UNRELIABLE_NRS)  # x32's are among NAMED


@pytest.fixture(scope="module")
def kernel() -> Iterator[Oracle]:
    if not AVAILABLE:
        pytest.skip(REASON)
    oracle = Oracle()
    yield oracle
    oracle.close()


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.sampled_from(NAMED), OTHER_NRS),
                          st.tuples(*[st.one_of(st.sampled_from(VALUES), st.integers(0, (1 << 64) - 1))] * 6)),
                min_size=50, max_size=50))  # fmt: skip
def test_the_kernel_runs_the_profile_as_the_jit_does(kernel: Oracle, program: Program, calls: list[Any]) -> None:
    ip, kernel_values = kernel.run([tuple(insn) for insn in program], [[nr, *args] for nr, args in calls])
    recs = seccomp.records(len(calls), arch=seccomp.AUDIT_ARCH_X86_64)
    for i, (nr, args) in enumerate(calls):
        recs[i]["nr"], recs[i]["args"], recs[i]["ip"] = nr, args, ip
    values = seccomp.compile(program).evaluate(recs).tolist()
    assert values == kernel_values
    e = seccomp.explain(program, "x86_64", nrs=[nr for nr, _ in calls])
    for (nr, args), value in zip(calls, values, strict=True):  # and explain's case for each record returns it
        words = record_words(args, ip)
        assert [c.returns(words) for c in e.syscalls[nr].cases if c.holds(words)] == [value]
