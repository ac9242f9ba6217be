"""`bpfjit seccomp disasm|explain|eval|dump` and seccomp.dump_pid (on a child that installed two filters)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from needs import require

from bpfjit import Insn, Program, cli, seccomp
from bpfjit.seccomp import RET

PROGRAM = Program([
    Insn(0x20, 0, 0, 4), Insn(0x15, 0, 5, seccomp.AUDIT_ARCH_X86_64), Insn(0x20, 0, 0, 0),
    Insn(0x15, 2, 0, 59), Insn(0x15, 0, 2, 101), Insn(0x06, 0, 0, RET["ERRNO"] | 1),
    Insn(0x06, 0, 0, RET["ALLOW"]), Insn(0x06, 0, 0, RET["TRAP"] | 2),
])  # fmt: skip


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert cli.main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def test_disasm_reads_raw_bytes_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.bpf").write_bytes(PROGRAM.to_bytes())
    (tmp_path / "f.txt").write_text(PROGRAM.dump())
    raw = run(capsys, "seccomp", "disasm", str(tmp_path / "f.bpf"), "--arch", "x86_64")
    assert raw == run(capsys, "seccomp", "disasm", str(tmp_path / "f.txt"), "--arch", "x86_64")
    assert [line.split("  ", 2)[-1] for line in raw[2:]] == [
        "A = arch", "if (A != ARCH_X86_64) goto 0007", "A = sys_number", "if (A == execve) goto 0006",
        "if (A != ptrace) goto 0007", "return ERRNO(1)", "return ALLOW", "return TRAP(2)"]  # fmt: skip
    # past a taken `A == ARCH_X86_64` the names are x86_64's whatever --arch says (59 is i386's waitpid)
    assert run(capsys, "seccomp", "disasm", str(tmp_path / "f.bpf"), "--arch", "i386") == raw


def test_explain_prints_each_action_with_its_syscalls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.bpf").write_bytes(PROGRAM.to_bytes())
    out = run(capsys, "seccomp", "explain", str(tmp_path / "f.bpf"), "--arch", "x86_64")
    assert out[0] == "arch x86_64 (ARCH_X86_64), 999 syscall numbers"
    assert out[1].startswith("TRAP(2) (997): read write open close ")
    assert "#335-#423" in out[1] and out[1].endswith("x32:pwritev2")
    assert out[2:] == ["ALLOW (1): execve", "ERRNO(1) (1): ptrace"]  # in the order of their first number
    other = run(capsys, "seccomp", "explain", str(tmp_path / "f.bpf"), "--arch", "aarch64")
    assert len(other) == 2 and other[1].startswith("TRAP(2) (451): io_setup io_destroy io_submit io_cancel ")


def test_eval_json_lines_and_binary_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.bpf").write_bytes(PROGRAM.to_bytes())
    lines = [{"nr": "execve", "args": [1, 2]}, {"nr": 101}, {"nr": 0, "arch": "i386"}, {"nr": -1}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    expected = ["execve (59) arch=0xc000003e: 0x7fff0000 ALLOW", "ptrace (101) arch=0xc000003e: 0x00050001 ERRNO(1)",
                "restart_syscall (0) arch=0x40000003: 0x00030002 TRAP(2)",
                "4294967295 (4294967295) arch=0xc000003e: 0x00030002 TRAP(2)"]  # fmt: skip
    program = str(tmp_path / "f.bpf")
    assert run(capsys, "seccomp", "eval", program, str(tmp_path / "r.jsonl"), "--arch", "x86_64") == expected
    x86_64, i386 = seccomp.AUDIT_ARCH_X86_64, seccomp.AUDIT_ARCH_I386
    calls = ((59, x86_64), (101, x86_64), (0, i386), (-1, x86_64), (ord("{"), x86_64))
    recs = b"".join(seccomp.record(nr, arch=arch) for nr, arch in calls)
    (tmp_path / "r.bin").write_bytes(recs)
    assert run(capsys, "seccomp", "eval", program, str(tmp_path / "r.bin")) == [
        *expected, "setfsgid (123) arch=0xc000003e: 0x00030002 TRAP(2)"]  # fmt: skip
    (tmp_path / "bad.bin").write_bytes(recs[:-1])
    assert cli.main(["seccomp", "eval", program, str(tmp_path / "bad.bin")]) == 1
    assert "319 bytes is not a whole number of 64-byte records" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"nr": "nosuchcall"}\n')
    assert cli.main(["seccomp", "eval", program, str(tmp_path / "bad.jsonl"), "--arch", "x86_64"]) == 1
    assert "no syscall 'nosuchcall' on x86_64" in capsys.readouterr().err


# -- a running process's filters (root) ------------------------------------------------------------------
FIRST = Program([Insn(0x20, 0, 0, 0), Insn(0x06, 0, 0, RET["ALLOW"])])
SECOND = Program([Insn(0x20, 0, 0, 0), Insn(0x15, 0, 1, 0xFFFF), Insn(0x06, 0, 0, RET["ERRNO"] | 9),
                  Insn(0x06, 0, 0, RET["ALLOW"])])  # fmt: skip
CHILD = textwrap.dedent("""
    import ctypes, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    for hexed in sys.argv[1:]:
        data = bytes.fromhex(hexed)
        buf = ctypes.create_string_buffer(data, len(data))
        prog = Fprog(len(data) // 8, ctypes.addressof(buf))
        assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
    print("ready", flush=True)
    time.sleep(60)
""")


def test_dump_a_process_reads_its_filters_oldest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require(sys.platform == "linux" and os.geteuid() == 0, "root (PTRACE_SECCOMP_GET_FILTER needs CAP_SYS_ADMIN)")
    child = subprocess.Popen([sys.executable, "-c", CHILD, FIRST.to_bytes().hex(), SECOND.to_bytes().hex()],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert seccomp.dump_pid(child.pid) == [FIRST, SECOND]  # index 0: the first installed
        assert seccomp.dump_pid(child.pid) == [FIRST, SECOND]  # detached, and readable again
        out = run(capsys, "seccomp", "dump", "--pid", str(child.pid), "--arch", "x86_64")
        assert out[0] == "filter 0 (oldest): 2 instructions" and out[5] == "filter 1 (newest): 4 instructions"
        assert out[3].endswith("A = sys_number") and out[9].endswith("if (A != 0xffff) goto 0003")
        run(capsys, "seccomp", "dump", "--pid", str(child.pid), "-o", str(tmp_path / "f"))
        assert Program.from_bytes((tmp_path / "f.1.bpf").read_bytes()) == SECOND
        assert child.poll() is None  # still running after the reads
    finally:
        child.kill()
        child.wait()


def test_dump_a_process_without_filters(capsys: pytest.CaptureFixture[str]) -> None:
    require(sys.platform == "linux" and os.geteuid() == 0, "root (PTRACE_SECCOMP_GET_FILTER needs CAP_SYS_ADMIN)")
    child = subprocess.Popen([sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert seccomp.dump_pid(child.pid) == []
        assert run(capsys, "seccomp", "dump", "--pid", str(child.pid)) == [f"pid {child.pid} has no seccomp filters"]
    finally:
        child.kill()
        child.wait()


def test_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.bpf").write_bytes(Program([Insn(0x28, 0, 0, 0), Insn(0x06, 0, 0, 0)]).to_bytes())  # ldh
    assert cli.main(["seccomp", "explain", str(tmp_path / "bad.bpf")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("bpfjit seccomp explain: ") and "seccomp" in err and len(err.splitlines()) == 1
    assert cli.main(["seccomp", "disasm", str(tmp_path / "missing.bpf")]) == 1
    assert "No such file" in capsys.readouterr().err


def test_explain_and_eval_a_stack_oldest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    older = Program([Insn(0x20, 0, 0, 0), Insn(0x15, 0, 1, 39), Insn(0x06, 0, 0, RET["ERRNO"] | 1),
                     Insn(0x06, 0, 0, RET["ALLOW"])])  # fmt: skip
    newer = Program([Insn(0x20, 0, 0, 0), Insn(0x15, 0, 1, 39), Insn(0x06, 0, 0, RET["ERRNO"] | 2),
                     Insn(0x06, 0, 0, RET["LOG"])])  # fmt: skip
    (tmp_path / "a.bpf").write_bytes(older.to_bytes())
    (tmp_path / "b.bpf").write_bytes(newer.to_bytes())
    a, b = str(tmp_path / "a.bpf"), str(tmp_path / "b.bpf")
    out = run(capsys, "seccomp", "explain", a, b, "--arch", "x86_64")
    assert out[0] == "arch x86_64 (ARCH_X86_64), 999 syscall numbers, 2 filters stacked"
    assert out[1].startswith("LOG (998): read write ") and out[2] == "ERRNO(2) (1): getpid"  # a tie: the newest's
    assert run(capsys, "seccomp", "explain", b, a, "--arch", "x86_64")[2] == "ERRNO(1) (1): getpid"
    (tmp_path / "r.jsonl").write_text('{"nr": "getpid"}\n{"nr": "read"}\n')
    assert run(capsys, "seccomp", "eval", a, b, str(tmp_path / "r.jsonl"), "--arch", "x86_64") == [
        "getpid (39) arch=0xc000003e: 0x00050002 ERRNO(2)", "read (0) arch=0xc000003e: 0x7ffc0000 LOG"]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(["seccomp", "explain", "--help"])
    assert "OLDEST FIRST" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["seccomp", "disasm", a, b])  # one program only
