"""The `bpfjit` command: `demo` runs end to end (its numbers are not asserted); `-F FILE` reads the
same filter source the same way in `compile` and `filter`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import bpfjit
from bpfjit import ParseError, Program, packetmix, text
from bpfjit.cli import DEMO_FILTERS, main


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


# -- -F FILE: one reader for both commands (text.read_source) ---------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures"
# tcp port 80 in every form a filter file may hold: the same program each time
TCP_PORT_80_SOURCES = {
    "bpf_asm with labels and comments": (FIXTURES / "asm" / "tcp_port_80.bpf").read_text(),
    "tcpdump -d": (FIXTURES / "tcp_port_80.d").read_text(),
    "tcpdump -dd": (FIXTURES / "tcp_port_80.dd").read_text(),
    "tcpdump -ddd": (FIXTURES / "tcp_port_80.ddd").read_text(),
    "bpf_asm's comma form": (FIXTURES / "asm" / "tcp_port_80.bpf.out").read_text(),
    "an expression": "tcp\n  port 80\n",
}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("kind", list(TCP_PORT_80_SOURCES))
@pytest.mark.parametrize("command", ["compile", "filter"])
def test_filter_file_forms(
    kind: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "tcp_port_80.filter"
    source.write_text(TCP_PORT_80_SOURCES[kind])
    expected = Program.from_expr("tcp port 80", "EN10MB", snaplen=262144, netmask=0)
    for style in ("d", "dd", "ddd"):
        assert run_cli(capsys, command, f"-{style}", "-F", str(source)) == (0, expected.dump(style), "")


@pytest.mark.parametrize("source_style", ["dd", "ddd", "asm"])
@pytest.mark.parametrize("command", ["compile", "filter"])
def test_filter_file_with_ancillary_loads_prints_as_tcpdump(
    source_style: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A live program (`tcpdump -i lo vlan 100`: ancillary loads) read from -F prints as tcpdump printed it."""
    listings = {style: (FIXTURES / f"live_vlan_100.{style}").read_text() for style in ("d", "dd", "ddd")}
    source = tmp_path / "vlan.filter"
    program = text.parse(listings["dd"])
    source.write_text(text.dump_asm(program) if source_style == "asm" else listings[source_style])
    for style, listing in listings.items():
        assert run_cli(capsys, command, f"-{style}", "-F", str(source)) == (0, listing, "")


def test_filter_file_filters_a_capture_alike_in_every_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(2000, seed=4))
    expected = bpfjit.filter_file(src, None, "tcp port 80").accepted
    assert expected > 0
    for kind, content in TCP_PORT_80_SOURCES.items():
        source = tmp_path / "f"
        source.write_text(content)
        code, _, err = run_cli(capsys, "filter", "-r", str(src), "-w", str(tmp_path / "out.pcap"), "-F", str(source))
        assert (code, err) == (0, f"2000 packets read, {expected} accepted\n"), kind


@pytest.mark.parametrize("command", ["compile", "filter"])
def test_filter_file_program_with_a_mistake_says_where(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A program with a mistake is a ParseError naming the line, not an expression libpcap rejects."""
    for content, message in (
        ("; ip only\nldh [12]\njeq #0x800, keep\nret #0\n", "line 3: unknown label 'keep'"),
        ("start: ldh [12]\n  jeq #0x800, start\nret #0\n", "line 2: jump to label 'start'"),
        ("LDH [12]\nret #0, #1\n", "line 2: expected a mnemonic or a label, found ','"),
        ("(000) ldh [12]\n(002) ret #0\n", "line 2: instruction (002) where (001) belongs"),
    ):
        source = tmp_path / "bad.filter"
        source.write_text(content)
        code, out, err = run_cli(capsys, command, "-d", "-F", str(source))
        assert (code, out) == (1, ""), content
        assert err.startswith("bpfjit: ") and message in err and "syntax error" not in err, err


@pytest.mark.parametrize("command", ["compile", "filter"])
def test_filter_file_expressions_that_look_like_programs(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`(` starts an expression unless `(NNN)` does; `#` lines decide nothing; blank keeps everything."""
    source = tmp_path / "expr.filter"
    for content, expression in (
        ("(tcp or udp) and port 53\n", "(tcp or udp) and port 53"),
        ("  (ip6)\n", "(ip6)"),
        ("\n  \n", ""),
        ("# the web\ntcp port 80  # http\n or udp port 53\n", "tcp port 80 or udp port 53"),  # as tcpdump -F
    ):
        source.write_text(content)
        expected = Program.from_expr(expression, "EN10MB", snaplen=262144, netmask=0).dump("ddd")
        assert run_cli(capsys, command, "-ddd", "-F", str(source)) == (0, expected, ""), content
    source.write_text("#define PORT 80\nldh [12]\nret #0\n")  # bpf_asm run through cpp: a program
    assert run_cli(capsys, command, "-ddd", "-F", str(source)) == (0, "2\n40 0 0 12\n6 0 0 0\n", "")


def test_mnemonics_are_the_text_module_s() -> None:
    """What once was a hand-written list in cli.py: every mnemonic `parse` reads, no other."""
    assert frozenset({
        "ld", "ldi", "ldh", "ldb", "ldx", "ldxi", "ldxb", "st", "stx", "jmp", "ja", "jeq", "jneq", "jne", "jlt",
        "jle", "jgt", "jge", "jset", "add", "sub", "mul", "div", "mod", "neg", "and", "or", "xor", "lsh", "rsh",
        "tax", "txa", "ret",
    }) == text.MNEMONICS  # fmt: skip
    for mnemonic in text.MNEMONICS:  # a program (with a mistake: its ParseError), not an expression
        with pytest.raises(ParseError, match="unexpected character"):
            text.read_source(f"{mnemonic.upper()} ?")
    assert text.read_source("tcp ?") == "tcp ?"
