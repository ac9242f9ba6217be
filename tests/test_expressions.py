"""pcap-filter expressions end to end, across link types: bpfjit's `compile` prints what tcpdump prints,
and the compiled filter keeps exactly the packets libpcap's `pcap_offline_filter` keeps.

The corpus is data (`CORPUS`); each entry runs through the CLI (in-process, and twice as a real
`python -m bpfjit` subprocess), through `bpfjit.compile` on a varied packet mix (`packet_mix`), and
through `run_batch`. tcpdump passes netmask 0 when it has no interface, so `ip broadcast` compiles
there; the CLI does the same (`--netmask`, default 0.0.0.0) and the verdict tests pass netmask 0 too.
"""

from __future__ import annotations

import functools
import struct
import subprocess
import sys

import numpy as np
import pytest
from frames import ETH_IPV4, ETH_IPV6, ETH_QINQ, ETH_VLAN, Packet, handmade_frames
from needs import require, tcpdump_path

import bpfjit
from bpfjit import Batch, ExpressionError, ValidationError, libpcap, packetmix
from bpfjit.cli import main as cli_main

# (link type, expression). EN10MB mostly; each other link type gets what libpcap compiles for it.
CORPUS: tuple[tuple[str, str], ...] = (
    # hosts and nets
    ("EN10MB", "host 10.1.2.3"),
    ("EN10MB", "src host 10.1.2.3 and dst net 192.168.0.0/16"),
    ("EN10MB", "net 10.0.0.0/8 and not port 22"),
    ("EN10MB", "dst net 10.1.0.0 mask 255.255.240.0"),
    ("EN10MB", "ip host 10.1.2.3 or ip6 host 2001:db8:1::3"),
    ("EN10MB", "ip6 net 2001:db8:1::/64 and not ip6 multicast"),
    # ports and port ranges
    ("EN10MB", "tcp port 80"),
    ("EN10MB", "port 443"),
    ("EN10MB", "udp dst port 53 or udp src port 53"),
    ("EN10MB", "portrange 1000-2000"),
    ("EN10MB", "tcp dst portrange 32768-40000 or udp src portrange 120-130"),
    ("EN10MB", "port (20 or 21 or 22 or 23 or 25 or 53 or 80 or 110 or 143 or 443 or 993 or 995 or 8080)"),
    # protocols
    ("EN10MB", "icmp"),
    ("EN10MB", "icmp[icmptype] = icmp-echo"),
    ("EN10MB", "icmp[icmptype] != icmp-echo and icmp[icmptype] != icmp-echoreply"),
    ("EN10MB", "ip proto 47"),
    ("EN10MB", "igmp or ip proto 50"),
    ("EN10MB", "arp"),
    ("EN10MB", "rarp"),
    ("EN10MB", "not ip"),
    ("EN10MB", "ether proto 0x88cc"),
    ("EN10MB", "llc"),
    # header fields and arithmetic
    ("EN10MB", "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0"),
    ("EN10MB", "tcp[13] = 0x12 and not src net 10.0.0.0/8"),
    ("EN10MB", "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420"),
    ("EN10MB", "ip[6:2] & 0x1fff != 0"),
    ("EN10MB", "ip[0] & 0xf > 5"),
    ("EN10MB", "ip[8] < 64 and (tcp or udp) and ip[2:2] > 576"),
    ("EN10MB", "udp[8:2] & 0x8000 != 0 and udp port 53"),
    # lengths
    ("EN10MB", "len > 100"),
    ("EN10MB", "greater 64"),
    ("EN10MB", "less 100"),
    # link-layer addresses
    ("EN10MB", "ether broadcast"),
    ("EN10MB", "ether multicast"),
    ("EN10MB", "ether host 01:80:c2:00:00:0e or ether dst 33:33:00:00:00:16"),
    ("EN10MB", "ip broadcast"),
    ("EN10MB", "ip multicast"),
    # VLAN and MPLS
    ("EN10MB", "vlan"),
    ("EN10MB", "vlan 100 and ip"),
    ("EN10MB", "vlan and vlan"),
    ("EN10MB", "vlan and (tcp port 80 or udp port 53)"),
    ("EN10MB", "mpls"),
    ("EN10MB", "mpls 1024 and ip"),
    # IPv6, extension headers
    ("EN10MB", "ip6"),
    ("EN10MB", "ip6 and tcp port 80"),
    ("EN10MB", "ip6 and udp"),
    ("EN10MB", "ip6[6] = 0 or ip6[6] = 44"),
    ("EN10MB", "icmp6 and ip6[40] = 135"),
    ("EN10MB", "ip6 protochain 6"),
    # other link types
    ("LINUX_SLL", "tcp port 80"),
    ("LINUX_SLL", "ip6 and udp"),
    ("LINUX_SLL", "arp or host 10.1.2.3"),
    ("LINUX_SLL2", "udp port 53"),
    ("LINUX_SLL2", "not ip6 and len > 200"),
    ("RAW", "tcp port 443"),
    ("RAW", "ip6"),
    ("RAW", "ip[6:2] & 0x1fff != 0"),
    ("RAW", "ip6 protochain 6"),
    ("NULL", "ip and tcp"),
    ("NULL", "ip6"),
    ("LOOP", "icmp or icmp6"),
    ("LOOP", "ip6 and tcp port 80"),
    ("IPV4", "tcp[tcpflags] & tcp-syn != 0"),
    ("IPV4", "udp port 123 or icmp"),
    ("IPV6", "ip6 and tcp"),
    ("IPV6", "udp port 53"),
)
PROTOCHAIN = "ip6 protochain 6"  # compiles to a loop (a backward `ja`): a documented dialect difference
# Entries also compared in tcpdump's -d and -dd forms (the -ddd comparison covers all of them).
TEXT_SUBSET = CORPUS[::5]
# (link type, expression) that libpcap refuses; tcpdump's message is compared with bpfjit's.
REFUSED: tuple[tuple[str, str], ...] = (
    ("EN10MB", "tcp port"),
    ("EN10MB", "port 99999"),
    ("EN10MB", "tcp and udp"),
    ("EN10MB", "host 300.1.1.1"),
    ("RAW", "ether broadcast"),
    ("LINUX_SLL", "vlan"),
    ("IPV6", "ip"),
)

MIX_SIZE = 2000
MIX_SEED = 4


def _id(entry: tuple[str, str]) -> str:
    return f"{entry[0]}:{entry[1]}"


pytestmark = pytest.mark.usefixtures("needs_libpcap")


def tcpdump(*args: str) -> subprocess.CompletedProcess[str]:
    path = tcpdump_path()
    require(path is not None, "tcpdump")
    assert path is not None
    return subprocess.run([path, *args], capture_output=True, text=True, check=False, timeout=20)


def bpfjit_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`bpfjit ARGS` run in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = cli_main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- the CLI prints what tcpdump prints ---------------------------------------------------------------
@pytest.mark.parametrize("entry", CORPUS, ids=_id)
def test_compile_ddd_equals_tcpdump(entry: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    linktype, expression = entry
    theirs = tcpdump("-ddd", "-y", linktype, expression)
    assert theirs.returncode == 0, theirs.stderr
    code, out, err = bpfjit_cli(capsys, "compile", "-ddd", "-y", linktype, expression)
    assert (code, err) == (0, "")
    assert out == theirs.stdout


@pytest.mark.parametrize("style", ["-d", "-dd"])
@pytest.mark.parametrize("entry", TEXT_SUBSET, ids=_id)
def test_compile_d_and_dd_equal_tcpdump(entry: tuple[str, str], style: str, capsys: pytest.CaptureFixture[str]) -> None:
    linktype, expression = entry
    theirs = tcpdump(style, "-y", linktype, expression)
    assert theirs.returncode == 0, theirs.stderr
    code, out, _ = bpfjit_cli(capsys, "compile", style, "-y", linktype, expression)
    assert code == 0
    assert out == theirs.stdout


@pytest.mark.parametrize(
    ("args", "expression"),
    [(("-ddd", "-y", "LINUX_SLL2"), "udp port 53"), (("-d",), "ip broadcast or vlan 100 and ip")],
)
def test_compile_as_a_subprocess_equals_tcpdump(args: tuple[str, ...], expression: str) -> None:
    theirs = tcpdump(*args, expression)
    assert theirs.returncode == 0, theirs.stderr
    ours = subprocess.run([sys.executable, "-m", "bpfjit", "compile", *args, expression],
                          capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert (ours.returncode, ours.stderr) == (0, "")
    assert ours.stdout == theirs.stdout


def test_cli_netmask_option(capsys: pytest.CaptureFixture[str]) -> None:
    # Default 0.0.0.0 (tcpdump's without an interface); a real mask changes the program; 'unknown'
    # is libpcap's PCAP_NETMASK_UNKNOWN, with which `ip broadcast` cannot compile.
    slash24 = bpfjit.Program.from_expr("ip broadcast", netmask="255.255.255.0").dump("ddd")
    assert bpfjit_cli(capsys, "compile", "-ddd", "--netmask", "255.255.255.0", "ip broadcast")[:2] == (0, slash24)
    code, out, err = bpfjit_cli(capsys, "compile", "--netmask", "unknown", "ip broadcast")
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "netmask not known" in err
    code, _, err = bpfjit_cli(capsys, "compile", "--netmask", "255.255", "ip")
    assert code == 1 and err.count("\n") == 1 and "netmask" in err


# -- errors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", REFUSED, ids=_id)
def test_refused_expressions_carry_libpcaps_message(entry: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    linktype, expression = entry
    with pytest.raises(ExpressionError) as caught:
        bpfjit.compile(expression, linktype=linktype, netmask=0)
    assert caught.value.expression == expression
    assert isinstance(caught.value, ValueError)
    theirs = tcpdump("-ddd", "-y", linktype, expression)
    assert theirs.returncode == 1
    assert theirs.stderr.splitlines()[-1] == f"tcpdump: {caught.value.message}"
    code, out, err = bpfjit_cli(capsys, "compile", "-ddd", "-y", linktype, expression)
    assert (code, out) == (1, "")
    assert err == f"bpfjit: {caught.value}\n"


def test_unknown_linktype_lists_valid_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown link type 'EN10MBX'") as caught:
        bpfjit.compile("ip", linktype="EN10MBX")
    for name in ("EN10MB", "LINUX_SLL", "RAW", "IPV4", "IPV6"):
        assert name in str(caught.value)
    code, out, err = bpfjit_cli(capsys, "compile", "-ddd", "-y", "EN10MBX", "ip")
    assert (code, out) == (1, "")
    assert err == f"bpfjit: {caught.value}\n"


def test_unknown_linktype_in_a_subprocess_is_one_line() -> None:
    result = subprocess.run([sys.executable, "-m", "bpfjit", "compile", "-y", "nonsense", "tcp"],
                            capture_output=True, text=True, check=False, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("bpfjit: unknown link type 'nonsense'") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("linktype", ["EN10MB", "RAW"])
def test_protochain_is_a_backward_jump_bpfjit_rejects(linktype: str, capsys: pytest.CaptureFixture[str]) -> None:
    # libpcap runs the loop `ip6 protochain` compiles to; bpfjit, like Linux, takes forward jumps only.
    with pytest.raises(ValidationError) as caught:
        bpfjit.compile(PROTOCHAIN, linktype=linktype)
    assert caught.value.rule == "jump-out-of-range"
    assert "backward" in str(caught.value)
    assert bpfjit.Program.from_expr(PROTOCHAIN, linktype)[caught.value.index or 0].code == 0x05  # a `ja`
    code, out, err = bpfjit_cli(capsys, "compile", "--ir", "-y", linktype, PROTOCHAIN)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "backward" in err and "jump-out-of-range" in err


# -- verdicts: the JIT against libpcap's pcap_offline_filter ---------------------------------------------
@functools.cache
def ethernet_mix() -> tuple[Packet, ...]:
    """The generated mix (IPv4 with options, fragments, IPv6 with extension headers, ARP, VLAN, QinQ,
    LLDP; 10% truncated: wirelen > caplen) and the hand-made frames."""
    return (*packetmix.generate_list(MIX_SIZE, seed=MIX_SEED, truncated=0.1), *handmade_frames())


def _strip_tags(frame: bytes) -> tuple[int, int]:
    """(ethertype, offset of the network header) after any 802.1Q/802.1ad tags."""
    offset = 12
    while len(frame) >= offset + 2 and struct.unpack_from("!H", frame, offset)[0] in (ETH_VLAN, ETH_QINQ):
        offset += 4
    ethertype = struct.unpack_from("!H", frame, offset)[0] if len(frame) >= offset + 2 else -1
    return ethertype, offset + 2


# DLT_NULL/LOOP carry the sender's AF_INET6: 10 on Linux (what libpcap compiles `ip6` to here),
# 24, 28 or 30 on the BSDs.
_AF_INET6 = (10, 10, 24, 30)
_SLL_PKTTYPES = (0, 1, 2, 4)  # to us, broadcast, multicast, outgoing


def _link_header(linktype: str, ethertype: int, frame: bytes, i: int) -> bytes | None:
    """The link-layer header of `linktype` for a frame of this type, or None if it has no such form."""
    ip_version = {ETH_IPV4: 4, ETH_IPV6: 6}.get(ethertype)
    if linktype in ("RAW", "IPV4", "IPV6"):
        return b"" if ip_version is not None else None
    if linktype in ("NULL", "LOOP"):
        if ip_version is None:
            return None
        family = 2 if ip_version == 4 else _AF_INET6[i % 4]
        return struct.pack("=I" if linktype == "NULL" else "!I", family)
    source = frame[6:12].ljust(8, b"\0")
    if linktype == "LINUX_SLL":
        return struct.pack("!HHH8sH", _SLL_PKTTYPES[i % 4], 1, 6, source, ethertype)
    if linktype == "LINUX_SLL2":
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, _SLL_PKTTYPES[i % 4], 6, source)
    raise AssertionError(linktype)


@functools.cache
def packet_mix(linktype: str) -> tuple[Packet, ...]:
    """The Ethernet mix as `linktype` frames: the link header swapped, the truncation kept.

    RAW/IPV4/IPV6 get both IP versions (and some non-IP payloads) so the version checks matter.
    """
    if linktype == "EN10MB":
        return ethernet_mix()
    out: list[Packet] = []
    for i, (frame, wirelen) in enumerate(ethernet_mix()):
        ethertype, start = _strip_tags(frame)
        if ethertype < 0 or len(frame) <= start:
            continue
        header = _link_header(linktype, ethertype, frame, i)
        if header is None and i % 8 == 0:
            header = b"" if linktype in ("RAW", "IPV4", "IPV6") else None  # some non-IP payloads too
        if header is not None:
            out.append((header + frame[start:], len(header) + wirelen - start))
    return tuple(out)


def _verdicts(entry: tuple[str, str]) -> tuple[bpfjit.Filter, list[int], list[int]]:
    linktype, expression = entry
    f = bpfjit.compile(expression, linktype=linktype, netmask=0)
    peer = libpcap.LibpcapProgram(f.program)
    mix = packet_mix(linktype)
    ours = [f.call(p, w) for p, w in mix]
    theirs = [peer(p, w) for p, w in mix]
    assert [peer.matches(p, w) for p, w in mix] == [v != 0 for v in theirs]
    return f, ours, theirs


@pytest.mark.parametrize("entry", [e for e in CORPUS if e[1] != PROTOCHAIN], ids=_id)
def test_verdicts_equal_pcap_offline_filter(entry: tuple[str, str]) -> None:
    f, ours, theirs = _verdicts(entry)
    mix = packet_mix(entry[0])
    if ours != theirs:
        wrong = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
        packet, wirelen = mix[wrong[0]]
        pytest.fail(f"{len(wrong)} disagreements; first: packet {packet.hex()} wirelen {wirelen}: "
                    f"JIT {ours[wrong[0]]}, libpcap {theirs[wrong[0]]}")  # fmt: skip
    accepted = sum(v != 0 for v in ours)
    assert 0 < accepted < len(mix), f"{accepted} of {len(mix)} accepted: the mix does not tell verdicts apart"
    # The fast entry (no wirelen) and the batch entry give the same results.
    assert [f(p) for p, _ in mix[:200]] == [f.call(p) for p, _ in mix[:200]]
    batch = Batch.from_packets([p for p, _ in mix], [w for _, w in mix])
    assert f.run_batch(batch).tolist() == ours


def test_the_mix_is_varied() -> None:
    """What the verdict tests run on: every kind the corpus asks about is in it, some truncated."""
    mix = ethernet_mix()
    truncated = sum(len(p) < w for p, w in mix)
    assert truncated > 100
    kinds = {name: libpcap.LibpcapProgram(bpfjit.Program.from_expr(name, netmask=0)) for name in (
        "vlan and vlan", "vlan 100 and ip", "ip[0] & 0xf > 5", "ip[6:2] & 0x1fff != 0", "ip6[6] = 0",
        "ip6[6] = 43", "ip6[6] = 44", "ip6[6] = 60", "arp", "rarp", "mpls", "ip proto 47", "llc",
        "ether broadcast", "icmp[icmptype] = icmp-echo", "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
    )}  # fmt: skip
    for name, run in kinds.items():
        assert sum(run.matches(p, w) for p, w in mix) > 0, name
    for linktype in ("LINUX_SLL", "LINUX_SLL2", "RAW", "NULL", "LOOP", "IPV4", "IPV6"):
        assert len(packet_mix(linktype)) > MIX_SIZE // 2, linktype


def test_batch_of_every_linktype_matches_per_packet_libpcap() -> None:
    """One Batch per link type through several filters at once, against libpcap packet by packet."""
    for linktype in ("LINUX_SLL", "RAW", "IPV6"):
        mix = packet_mix(linktype)
        batch = Batch.from_packets([p for p, _ in mix], [w for _, w in mix])
        for expression in ("ip6 and tcp", "udp port 53", "len > 100"):
            f = bpfjit.compile(expression, linktype=linktype)
            peer = libpcap.LibpcapProgram(f.program)
            expected = np.array([peer(p, w) for p, w in mix], dtype=np.uint32)
            assert (f.run_batch(batch) == expected).all(), (linktype, expression)
