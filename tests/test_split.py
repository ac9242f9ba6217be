"""split_file / `bpfjit filter --split`: one pass, one output per filter, each equal to filter_file's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pcapfiles import mixed_link_types, write_pcapng

import bpfjit
from bpfjit import capfile, packetmix

EXPRESSIONS = ["tcp port 80", "udp port 53", "arp", "ip6", "ip[6:2] & 0x3fff != 0", "len > 600"]


def test_split_pcap_equals_filter_file_per_expression(tmp_path: Path) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(4000, seed=9))
    outputs = [tmp_path / f"split-{i}.pcap" for i in range(len(EXPRESSIONS))]
    results = capfile.split_file(src, outputs, EXPRESSIONS, chunk=700)
    for expression, output, stats in zip(EXPRESSIONS, outputs, results, strict=True):
        single = tmp_path / "single.pcap"
        expected = bpfjit.filter_file(src, single, expression)
        assert output.read_bytes() == single.read_bytes(), expression
        assert (stats.read, stats.accepted) == (expected.read, expected.accepted) and 0 < stats.accepted < 4000


def test_split_pcapng_with_several_link_types(tmp_path: Path) -> None:
    packets = mixed_link_types(400, seed=5)
    src = tmp_path / "multi.pcapng"
    write_pcapng(src, packets)
    exprs = ["ip", "udp port 53", "tcp and not port 22"]
    outputs = [tmp_path / f"out-{i}.pcapng" for i in range(len(exprs))]
    capfile.split_file(src, outputs, exprs, chunk=64)
    for expression, output in zip(exprs, outputs, strict=True):
        single = tmp_path / "single.pcapng"
        bpfjit.filter_file(src, single, expression)
        assert output.read_bytes() == single.read_bytes(), expression


def test_split_cli_and_errors(tmp_path: Path) -> None:
    src = tmp_path / "mix.pcap"
    packetmix.write_pcap(src, packetmix.generate(1000, seed=2))
    template = str(tmp_path / "part-{}.pcap")
    result = subprocess.run(
        [sys.executable, "-m", "bpfjit", "filter", "-r", str(src), "--split", template, "tcp", "udp"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for index, expression in enumerate(["tcp", "udp"]):
        single = tmp_path / "single.pcap"
        stats = bpfjit.filter_file(src, single, expression)
        assert Path(template.format(index)).read_bytes() == single.read_bytes()
        assert f"{stats.accepted} of 1000 packets ({expression})" in result.stderr
    with pytest.raises(ValueError):
        capfile.split_file(src, [tmp_path / "a.pcap"], ["tcp", "udp"])
    with pytest.raises(bpfjit.ExpressionError):
        capfile.split_file(src, [tmp_path / "a.pcap"], ["tcp port"])
    assert not (tmp_path / "a.pcap").exists()  # a bad expression fails before any output is opened
