"""`bpfjit filter -r IN -w OUT EXPR` against `tcpdump -r IN -w OUT EXPR`, file by file, expression by expression.

Captures of ten link types (tests/savefiles.py) in both byte orders and both timestamp precisions,
as classic pcap and as pcapng with three interfaces (and an SPB), each filtered by every expression
of CORPUS (IPv6, the BSD loopback families, direction and interface qualifiers, expressions libpcap
refuses for a link type): both tools must keep the same packets (read back through libpcap, so that
tcpdump's pcap output and bpfjit's copy of the input compare packet for packet), refuse the same
expressions with libpcap's message, and exit with the same code; a refusal writes nothing. Then
fuzzed headers (snaplens 0, 1, 16, above 2^31; thiszone/sigfigs; records longer than the snaplen)
and runs that fail before their first record.

    python -m pytest tests/test_tcpdump_agreement.py -rA    # the agreement figures, one line per file
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from needs import require, tcpdump_path
from savefiles import LINKTYPES, libpcap_records, pcap_bytes, pcapng_bytes, records
from savefiles import frames as link_frames

import bpfjit
from bpfjit import Program, capfile, cli, libpcap, walkers
from bpfjit.errors import ExpressionError

CORPUS = (
    "", "ip", "ip6", "not ip", "not ip6", "udp", "tcp", "icmp", "icmp6", "arp", "tcp port 443", "port 53",
    "udp port 67 or udp port 68", "host 192.168.0.1", "net 10.0.0.0/8", "ip6 host 2001:db8::1", "src host 2001:db8::2",
    "ip[6:2] & 0x1fff != 0", "tcp[tcpflags] & tcp-syn != 0", "ip broadcast", "greater 100", "less 60", "len >= 300",
    "inbound", "outbound", "ifindex 3", "not inbound and udp", "vlan", "ether host 02:00:00:00:00:01",
    "ether broadcast", "wlan type data", "ppp", "link[0] = 0xff", "ip proto 17 or ip6 proto 6",
)  # fmt: skip
HOST_ORDER = "<" if struct.pack("=H", 1) == b"\x01\x00" else ">"


class Capture(NamedTuple):
    name: str
    data: bytes


def _captures() -> Iterator[Capture]:
    for link, linktype in LINKTYPES.items():
        for order in "<>":
            for nano in (False, True):
                tag = f"{link}-{'le' if order == '<' else 'be'}-{'ns' if nano else 'us'}"
                datas = link_frames(link, order)
                yield Capture(f"{tag}.pcap", pcap_bytes(records(datas, nano), linktype, order, nano))
                recs = records(datas * 2, nano, interfaces=3)
                yield Capture(f"{tag}.pcapng", pcapng_bytes(recs, linktype, order, nano, interfaces=3, spb=True))


CAPTURES = list(_captures())


@pytest.fixture(scope="module")
def tcpdump() -> str:
    path = tcpdump_path()
    require(path is not None, "tcpdump")
    assert path is not None
    return path


@pytest.fixture(scope="module", autouse=True)
def keep_walkers() -> Iterator[None]:
    """Keep every walker of the module's runs (the corpus cycles through more than the cache's usual
    32; compiling them again would triple the module's time, and change nothing it checks)."""
    keep = walkers._walkers.keep
    walkers._walkers.keep = 1024
    yield
    walkers._walkers.keep = keep
    walkers._walkers.clear()


class Run(NamedTuple):
    code: int
    stderr: str
    output: bytes | None  # None: the output file was left as it was


# libpcap 1.10's pcapng reader stops at an interface whose link type or snaplen differs from the first
# one's, or a section of the other byte order; bpfjit filters each with its own (README: Capture
# files). libpcap 1.10.3 also compares a later IDB's LINKTYPE_ value with the first's DLT_ value, so
# it stops at the second interface of any link type whose two differ (RAW: 101 and 12).
PCAPNG_LIMITS = ("an interface has a type", "an interface has a snapshot length", "sections with different byte orders")
PRECIOUS = b"precious: an existing output a failed run must leave alone"


def _run_tcpdump(tcpdump: str, src: Path, out: Path, expression: str) -> Run:
    out.write_bytes(PRECIOUS)
    as_root = ["-Z", "root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []  # it drops privileges
    result = subprocess.run([tcpdump, *as_root, "-r", str(src), "-w", str(out), expression], capture_output=True,
                            timeout=60)  # fmt: skip
    data = out.read_bytes()
    return Run(result.returncode, result.stderr.decode(), None if data == PRECIOUS else data)


def _run_bpfjit(src: Path, out: Path, expression: str) -> Run:
    out.write_bytes(PRECIOUS)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli.main(["filter", "-r", str(src), "-w", str(out), *([expression] if expression else [])])
    data = out.read_bytes()
    return Run(code, stderr.getvalue(), None if data == PRECIOUS else data)


def _libpcap_message(stderr: str) -> str:
    """What tcpdump says after `tcpdump: ` on its last line (libpcap's message for a refusal)."""
    last = stderr.strip().splitlines()[-1]
    return last.removeprefix("tcpdump: ").removeprefix("pcap_loop: ")


def _agree(tmp_path: Path, tcpdump: str, src: Path, expressions: tuple[str, ...]) -> dict[str, str]:
    """Run both tools on every expression (tcpdump's runs in parallel); the disagreements, by
    expression (empty: all agree)."""
    with ThreadPoolExecutor(8) as pool:
        tcpdump_runs = list(pool.map(lambda e: _run_tcpdump(tcpdump, src, tmp_path / f"td-{abs(hash(e))}.out", e),
                                     expressions))  # fmt: skip
    problems: dict[str, str] = {}
    for expression, theirs in zip(expressions, tcpdump_runs, strict=True):
        ours = _run_bpfjit(src, tmp_path / "bpfjit.out", expression)
        if theirs.code != 0 and any(limit in theirs.stderr for limit in PCAPNG_LIMITS):
            # libpcap 1.10 stops where bpfjit goes on: what tcpdump wrote must be what bpfjit wrote first
            mine, its = tmp_path / "mine.pcap", tmp_path / "its.pcap"
            mine.write_bytes(ours.output or b"")
            its.write_bytes(theirs.output or b"")
            wrote = libpcap_records(its).packets
            if libpcap_records(mine).packets[: len(wrote)] != wrote:
                problems[expression] = f"not a continuation of tcpdump's output: {ours.stderr!r}"
            continue
        if theirs.code != ours.code:
            problems[expression] = f"exit {ours.code}, tcpdump {theirs.code}: {ours.stderr!r} / {theirs.stderr!r}"
            continue
        if theirs.code != 0 and theirs.output is None:  # refused before any packet: nothing written by either
            message = _libpcap_message(theirs.stderr)
            if ours.output is not None or message not in ours.stderr:
                problems[expression] = f"refusal differs: {ours.stderr!r} / {theirs.stderr!r}"
            continue
        mine, its = tmp_path / "mine.pcap", tmp_path / "its.pcap"
        mine.write_bytes(ours.output or b"")
        its.write_bytes(theirs.output or b"")
        if libpcap_records(mine).packets != libpcap_records(its).packets:
            problems[expression] = "different packets"
    return problems


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda c: c.name)
def test_same_packets_as_tcpdump(tmp_path: Path, tcpdump: str, capture: Capture) -> None:
    """Every expression of the corpus on this capture: the same packets, refusals, exit codes."""
    src = tmp_path / capture.name
    src.write_bytes(capture.data)
    problems = _agree(tmp_path, tcpdump, src, CORPUS)
    assert not problems, problems
    print(f"{capture.name}: {len(CORPUS)} expressions agree with tcpdump")


def test_the_corpus_keeps_drops_and_refuses(tmp_path: Path) -> None:
    """The agreement means something: on every link type some expressions keep packets, some drop
    them, and the direction qualifiers are refused on link types without a direction field."""
    for link in LINKTYPES:
        src = tmp_path / f"{link}.pcap"
        src.write_bytes(next(c.data for c in CAPTURES if c.name == f"{link}-be-us.pcap"))
        kept = []
        for expression in ("ip", "ip6", "udp", "not ip"):
            try:
                kept.append(capfile.filter_file(src, None, expression).accepted)
            except ExpressionError as error:  # `ip6` on IPV4: libpcap says it rejects all packets
                assert "rejects all packets" in str(error) and link in ("IPV4", "IPV6")
                kept.append(0)
        assert any(kept) and not all(k == kept[0] for k in kept), (link, kept)
        refused = link not in ("LINUX_SLL", "LINUX_SLL2")
        try:
            capfile.filter_file(src, None, "inbound")
        except ValueError as error:
            assert refused and "when reading savefiles" in str(error), (link, error)
        else:
            assert not refused, link


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("link", ["NULL", "LOOP"])
def test_bsd_loopback_keeps_ipv6_in_either_byte_order(tmp_path: Path, order: str, link: str) -> None:
    """The issue's first two cases, named: every BSD AF_INET6 value is IPv6, in the file's byte order."""
    datas = link_frames(link, order)
    src = tmp_path / "lo0.pcap"
    src.write_bytes(pcap_bytes(records(datas, False), LINKTYPES[link], order))
    ip6 = sum(1 for d in datas if d[4] >> 4 == 6 and struct.unpack_from((order if link == "NULL" else ">") + "I", d)[0]
              in (24, 28, 30))  # fmt: skip
    ip4 = sum(1 for d in datas if d[4] >> 4 == 4)
    assert ip6 >= 3 and ip4 >= 5
    assert capfile.filter_file(src, None, "ip6").accepted == ip6  # Linux's 10 is not a savefile's AF_INET6
    live = bpfjit.compile("ip6", linktype=link)  # a live-capture compile: its expression is compiled again
    assert capfile.filter_file(src, None, live).accepted == ip6
    # a Program runs as it is: the live one tests Linux's AF_INET6 (10), for DLT_NULL in host order
    linux = sum(1 for d in datas if struct.unpack_from((order if link == "NULL" else ">") + "I", d)[0] == 10)
    readable = link == "LOOP" or order == HOST_ORDER
    assert linux == 1 and capfile.filter_file(src, None, live.program).accepted == (linux if readable else 0)
    assert capfile.filter_file(src, None, "ip").accepted == ip4
    assert capfile.filter_file(src, None, "not ip").accepted == len(datas) - ip4
    header = src.read_bytes()[:24]
    expected = Program.from_expr("ip", link, snaplen=262144, netmask=0, savefile=True, swapped=order != HOST_ORDER)
    assert capfile.file_program(src, "ip") == expected
    assert libpcap_compile_for(header, "ip") == expected


def libpcap_compile_for(header: bytes, expression: str) -> Program:
    from bpfjit import libpcap

    return libpcap.compile_for_savefile(expression, header, netmask=0)


# -- fuzzed headers ---------------------------------------------------------------------------------------------------
FUZZ_EXPRESSIONS = ("", "ip", "not ip", "udp", "ip6", "tcp port 443", "greater 40", "link[20:4] != 0")


def _fuzzed() -> Iterator[Capture]:
    for link in ("EN10MB", "NULL", "IEEE802_11_RADIO", "RAW"):
        linktype = LINKTYPES[link]
        for order in "<>":
            datas, tag = link_frames(link, order), f"{link}-{'le' if order == '<' else 'be'}"
            for snaplen in (0, 1, 16, 26, 60, 0x80000000, 0xFFFFFFFF):
                data = pcap_bytes(records(datas, False), linktype, order, snaplen=snaplen)
                yield Capture(f"{tag}-snaplen{snaplen}.pcap", data)
            data = pcap_bytes(records(datas, True), linktype, order, True, thiszone=-3600, sigfigs=7)
            yield Capture(f"{tag}-thiszone.pcap", data)
            for snaplen in (0, 40, 0x80000000):  # pcapng: caplen above an interface's snaplen is refused
                data = pcapng_bytes(records(datas, False, 2), linktype, order, interfaces=2, snaplen=snaplen, spb=True)
                yield Capture(f"{tag}-snaplen{snaplen}.pcapng", data)


FUZZED = list(_fuzzed())


@pytest.mark.parametrize("capture", FUZZED, ids=lambda c: c.name)
def test_fuzzed_headers_as_tcpdump_reads_them(tmp_path: Path, tcpdump: str, capture: Capture) -> None:
    """Snaplens libpcap adjusts (0, above 2^31), records longer than the snaplen (cut, filtered on
    what is left, written cut), caplens libpcap refuses: the same packets and exit codes."""
    src = tmp_path / capture.name
    src.write_bytes(capture.data)
    problems = _agree(tmp_path, tcpdump, src, FUZZ_EXPRESSIONS)
    assert not problems, problems


def test_cut_records_are_written_as_tcpdump_writes_them(tmp_path: Path) -> None:
    """A record longer than the snaplen: filtered on its first snaplen bytes (`not ip` keeps 5 of
    the 802.11 frames whole and none cut to 26 bytes: the filter cannot reach the LLC header), and
    written with caplen = snaplen and those bytes, its wirelen kept, whatever the chunk and output."""
    datas = link_frames("IEEE802_11_RADIO", "<")
    src = tmp_path / "wifi.pcap"
    src.write_bytes(pcap_bytes(records(datas, False), 127, "<", snaplen=40))
    everything = libpcap_records(src).packets
    assert [p[2] for p in everything] == [min(len(d), 40) for d in datas]
    assert [p[3] for p in everything] == [r.wirelen for r in records(datas, False)]
    src26 = tmp_path / "wifi26.pcap"
    src26.write_bytes(pcap_bytes(records(datas, False), 127, "<", snaplen=26))
    whole = tmp_path / "whole.pcap"
    whole.write_bytes(pcap_bytes(records(datas, False), 127, "<"))
    assert capfile.filter_file(whole, None, "not ip").accepted == 5
    assert capfile.filter_file(src26, None, "not ip").accepted == 0
    program = Program.from_expr("not udp", "IEEE802_11_RADIO", netmask=0, savefile=True)
    kept = [p for p in everything if libpcap.offline_filter(program, p[4], p[3])]
    assert len(kept) == 1  # the one frame of 40 bytes or less that is not UDP, of 7 whole ones
    for chunk in (1, 2, 4096):
        out = tmp_path / f"out{chunk}.pcap"
        stats = capfile.filter_file(src, out, "not udp", chunk=chunk)
        assert (stats.read, stats.accepted) == (len(datas), len(kept))
        assert libpcap_records(out).packets == kept
        assert stats.written == out.stat().st_size
        buffer = io.BytesIO()
        capfile.filter_file(src, buffer, "not udp", chunk=chunk)
        assert buffer.getvalue() == out.read_bytes()
        everything_out = tmp_path / f"all{chunk}.pcap"
        assert capfile.filter_file(src, everything_out, chunk=chunk).accepted == len(datas)
        assert libpcap_records(everything_out).packets == everything
        assert everything_out.stat().st_size == 24 + sum(16 + min(len(d), 40) for d in datas)
    assert capfile.filter_file(src, None, count=3).accepted == 3
    assert [len(p) for _, p, _ in capfile.read_file(src)] == [min(len(d), 40) for d in datas]
    split = capfile.split_file(src, [tmp_path / "a.pcap", tmp_path / "b.pcap"], ["not udp", ""])
    assert [s.accepted for s in split] == [len(kept), len(datas)]
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "out1.pcap").read_bytes()
    assert (tmp_path / "b.pcap").read_bytes() == (tmp_path / "all1.pcap").read_bytes()


# -- failures before the first record ------------------------------------------------------------------------------
def _failing_inputs() -> Iterator[Capture]:
    datas = link_frames("EN10MB", "<")
    ng = pcapng_bytes(records(datas, False), 1)
    yield Capture("truncated-shb.pcapng", ng[:20])
    yield Capture("truncated-idb.pcapng", ng[:28 + 12])
    yield Capture("bad-first-epb.pcapng", ng[:28 + 20] + ng[28 + 20 : 28 + 20 + 40][:-1])
    pcap = pcap_bytes(records(datas, False), 1)
    yield Capture("truncated-first-record.pcap", pcap[:24 + 10])
    yield Capture("huge-first-caplen.pcap", pcap_bytes(records(datas, False), 1, caplens={0: 300000}))
    yield Capture("version-2.5.pcap", pcap[:6] + b"\x05\x00" + pcap[8:])


@pytest.mark.parametrize("capture", list(_failing_inputs()), ids=lambda c: c.name)
def test_a_run_failing_before_its_first_record_leaves_the_output_alone(tmp_path: Path, tcpdump: str,
                                                                       capture: Capture) -> None:  # fmt: skip
    """No file is created or changed; both tools fail (tcpdump may leave a header-only file)."""
    src = tmp_path / capture.name
    src.write_bytes(capture.data)
    for expression in ("", "ip", "inbound"):
        theirs = _run_tcpdump(tcpdump, src, tmp_path / "td.out", expression)
        ours = _run_bpfjit(src, tmp_path / "bpfjit.out", expression)
        assert theirs.code != 0 and ours.code != 0, (expression, theirs, ours)
        assert ours.output is None, expression
        missing = tmp_path / "missing.out"
        with contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(["filter", "-r", str(src), "-w", str(missing), *([expression] if expression else [])]) == 1
        assert not missing.exists()


def test_an_input_with_a_header_and_no_records_writes_the_header(tmp_path: Path) -> None:
    for data in (pcap_bytes([], 1, ">", True, snaplen=0), pcapng_bytes([], 1, ">", interfaces=2)):
        src, out = tmp_path / "empty", tmp_path / "out"
        src.write_bytes(data)
        stats = capfile.filter_file(src, out, "ip")
        assert (stats.read, stats.written) == (0, len(data)) and out.read_bytes() == data


# -- the printed program --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["NULL-be-us.pcap", "NULL-le-ns.pcapng", "LOOP-le-us.pcap", "EN10MB-be-ns.pcap",
                                  "LINUX_SLL2-le-us.pcapng"])  # fmt: skip
def test_dump_matches_tcpdump_on_the_file(tmp_path: Path, tcpdump: str, name: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`bpfjit filter -d -r FILE EXPR` prints what `tcpdump -d -r FILE EXPR` prints: the program for
    that file (its link type, snaplen and byte order), and refuses what it refuses."""
    src = tmp_path / name
    src.write_bytes(next(c.data for c in CAPTURES if c.name == name))
    for expression in ("ip6", "ip or arp", "tcp port 443", "inbound", "ifindex 3"):
        for flag in ("-d", "-ddd"):
            theirs = subprocess.run([tcpdump, "-r", str(src), flag, expression], capture_output=True, timeout=60)
            code = cli.main(["filter", "-r", str(src), flag, expression])
            captured = capsys.readouterr()
            assert code == theirs.returncode, (expression, captured.err, theirs.stderr)
            assert captured.out == theirs.stdout.decode(), expression
            if code:
                assert _libpcap_message(theirs.stderr.decode()) in captured.err
