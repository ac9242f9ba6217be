"""bench/capture_bench.py's pure parts: arguments, the traffic it sends, sender choice, the report.

The measurement itself needs root, network namespaces and the senders, and is run by hand.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import pytest

import bpfjit
from bench import capture_bench as cb
from bpfjit import Program, interpret


def test_rates_parse_with_suffixes_and_max() -> None:
    assert cb.parse_rate("50k") == 50_000
    assert cb.parse_rate("1.2M") == 1_200_000
    assert cb.parse_rate("8000") == 8000
    assert cb.parse_rate("max") is None
    for bad in ("fast", "0", "-5k"):
        with pytest.raises(argparse.ArgumentTypeError):
            cb.parse_rate(bad)
    assert [cb.rate_label(r) for r in (5_000, 20_000, 1_000_000, 1_500_000, 800, None)] == [
        "5k", "20k", "1M", "1500k", "800", "max",
    ]  # fmt: skip


def test_quick_and_full_defaults() -> None:
    quick = cb.parse_args(["--quick"])
    assert (quick.sizes, quick.rates, quick.filters, quick.rounds) == ([64], [20_000, None], ["none"], 1)
    full = cb.parse_args([])
    assert full.sizes == [64, 512, 1500] and full.rounds >= 3 and full.filters == list(cb.FILTERS)
    assert full.receivers == list(cb.RECEIVERS)
    narrowed = cb.parse_args(["--quick", "--rates", "5k,max", "--receivers", "tcpdump,bpfjit-packets"])
    assert narrowed.rates == [5_000, None] and narrowed.receivers == ["tcpdump", "bpfjit-packets"]


@pytest.mark.parametrize("argv", [["--filters", "bogus"], ["--sizes", "40"], ["--receivers", "wireshark"],
                                  ["--rounds", "0"]])  # fmt: skip
def test_bad_arguments_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cb.parse_args(argv)


@pytest.mark.parametrize("size", [64, 512, 1500])
def test_frames_have_the_size_and_checksums_and_half_match_the_filter(size: int) -> None:
    frames = cb.traffic(size)
    assert [len(frame) for frame in frames] == [size - 4] * 2
    for frame in frames:
        assert cb._checksum(frame[14:34]) == 0  # a valid IPv4 header sums to 0xffff
    program = Program.from_expr(cb.FILTER_EXPR)
    assert [bool(interpret(program, frame)) for frame in frames] == [True, False]
    assert cb.MATCHING_SHARE["kernel"] == cb.MATCHING_SHARE["user"] == 0.5


def test_pcap_and_trafgen_files_carry_the_frames(tmp_path: Path) -> None:
    frames = cb.traffic(64)
    cb.write_pcap(tmp_path / "t.pcap", frames, repeat=3)
    packets = [packet for _, packet, _ in bpfjit.read_file(tmp_path / "t.pcap")]
    assert packets == frames * 3
    config = cb.trafgen_config(frames).splitlines()
    assert len(config) == 2
    assert bytes(int(b, 16) for b in config[1].strip("{} ").split(", ")) == frames[1]


def test_sender_choice() -> None:
    files = {"pcap": Path("t.pcap"), "trafgen": Path("t.cfg")}
    paced = cb.sender_for(5_000, 150_000, 25_000, 2.0, "vtx", files)
    assert paced.name == "trafgen -t" and paced.stop_after is None
    assert paced.command[-4:] == ["-n", "10000", "-t", "175000ns"]  # 200 µs interval less the overhead
    assert cb.sender_for(30_000, 150_000, 25_000, 2.0, "vtx", files).name == "tcpreplay"  # too fast to pace
    replay = cb.sender_for(300_000, 150_000, 0, 1.0, "vtx", files)
    assert replay.name == "tcpreplay" and "--pps-multi" in replay.command and "300000" in replay.command
    unpaced = cb.sender_for(None, 150_000, 0, 3.0, "vtx", files)
    assert unpaced.name == "trafgen" and unpaced.stop_after == 3.0 and "-t" not in unpaced.command


def test_receivers_take_turns_in_a_rotated_order() -> None:
    args = cb.parse_args(["--sizes", "64", "--rates", "5k", "--filters", "none", "--rounds", "3",
                          "--receivers", "tcpdump,pcapy,bpfjit-packets"])  # fmt: skip
    order = [step[4] for step in cb.plan(args)]
    assert order == ["tcpdump", "pcapy", "bpfjit-packets", "pcapy", "bpfjit-packets", "tcpdump",
                     "bpfjit-packets", "tcpdump", "pcapy"]  # fmt: skip


def _rows() -> list[cb.Measurement]:
    rows = []
    for round_, delivered, cpu in ((1, 50_000, 0.05), (2, 40_000, 0.06), (3, 45_000, 0.03)):
        rows.append(cb.Measurement(round_, "pcapy", "kernel", 64, "300k", sender="tcpreplay", offered=100_000,
                                   expected=50_000, seconds=0.5, delivered=delivered, cpu_s=cpu,
                                   kernel_received=50_000, kernel_dropped=50_000 - delivered,
                                   marked_busy=round_ == 2))  # fmt: skip
        rows.append(cb.Measurement(round_, "bpfjit-batches", "kernel", 64, "300k", status="n/a",
                                   note="no Capture.batches() yet"))  # fmt: skip
    return rows


def test_summary_medians_spread_and_na() -> None:
    pcapy, batches = cb.summarise(_rows())
    assert (pcapy.share, pcapy.share_min, pcapy.share_max) == (0.9, 0.8, 1.0)
    assert pcapy.offered_kpps == 200.0 and pcapy.rounds == 3 and pcapy.busy_rounds == 1
    assert pcapy.cpu_us == pytest.approx(1.0)  # medians of 1.0, 1.5, 0.667 µs
    assert pcapy.dropped == pytest.approx(0.05)
    assert batches.rounds == 0 and batches.share is None and batches.notes == ["no Capture.batches() yet"]
    table = cb.format_table([pcapy, batches]).splitlines()
    assert "90.0%" in table[1] and "80.0%-100.0%" in table[1] and "3 (1*)" in table[1]
    assert "n/a" in table[2] and "no Capture.batches() yet" in table[2]


def test_csv_has_one_row_per_measurement(tmp_path: Path) -> None:
    path = tmp_path / "out" / "bench.csv"
    cb.write_csv(path, _rows())
    with open(path) as f:
        records = list(csv.DictReader(f))
    assert len(records) == 6 and list(records[0]) == cb.CSV_FIELDS
    assert records[0]["share"] == "1" and records[0]["offered_pps"] == "200000"
    assert records[1]["status"] == "n/a" and records[1]["share"] == "" and records[1]["delivered"] == ""


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    assert cb.plot(tmp_path / "share.png", cb.summarise(_rows()))
    assert (tmp_path / "share.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refuses_to_run_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cb.os, "geteuid", lambda: 1000)
    assert "needs root" in (cb.preflight(cb.parse_args(["--quick"])) or "")
    assert cb.main(["--quick"]) == 2


def test_csv_reads_back_and_reports_without_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bench.csv"
    cb.write_csv(path, _rows())
    assert cb.read_csv(path) == _rows()
    monkeypatch.setattr(cb.os, "geteuid", lambda: 1000)
    assert cb.main(["--report", str(path), str(path), "--plot", str(tmp_path / "p.png")]) == 0
    out = capsys.readouterr().out
    assert "80.0%-100.0%" in out and "6 (2*)" in out  # both files' rounds, together
    assert (tmp_path / "p.png").exists()


def test_batch_size_counts_the_packets_of_a_ring_batch() -> None:
    batch = bpfjit.Batch.from_packets([b"a", b"bc", b"def"])
    assert cb.batch_size(batch) == 3
    assert cb.batch_size(argparse.Namespace(batch=batch, timestamps_ns=None, meta=None)) == 3
    assert cb._count_from(argparse.Namespace(packets=7, bytes=999, capture=None)) == 7
    assert cb._count_from(5) == 5 and cb._count_from(None) is None
