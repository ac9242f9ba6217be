"""Live capture (`bpfjit.capture`) on lo inside a network namespace each test creates.

A fresh namespace has nothing but its own lo, so what the capture sees is exactly what the test sends
(to 127.0.0.1, or frames injected on lo with a packet socket): nothing leaves the namespace. The test
thread enters the namespace with setns(2) and goes back afterwards; the fixture deletes it.
Without root the live tests skip (fail under CI=true); the unprivileged ones always run.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from needs import require, tcpdump_path
from netns import inside, namespace
from netns import ip as _ip

import bpfjit
from bpfjit import Insn, Program
from bpfjit.capture import Capture, PacketRecord, interface_linktype, kernel_program
from bpfjit.samples import sample_frames

IS_ROOT = os.geteuid() == 0
PORT_A, PORT_B = 47001, 47002


@pytest.fixture
def netns() -> Iterator[str]:
    """A new network namespace with lo up, entered by this thread for the test's duration."""
    with namespace("test") as name, inside(name):
        yield name


# -- traffic ------------------------------------------------------------------------------------------
def send_udp(datagrams: list[tuple[int, bytes]], listen: bool = True) -> None:
    """Send to 127.0.0.1; with `listen`, sockets wait on the ports, so no ICMP port-unreachable comes back."""
    with contextlib.ExitStack() as stack:
        if listen:
            for port in {port for port, _ in datagrams}:
                receiver = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                receiver.bind(("127.0.0.1", port))
        sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        for port, payload in datagrams:
            sock.sendto(payload, ("127.0.0.1", port))


def inject(frames: list[bytes]) -> None:
    """Send raw Ethernet frames on lo: they come back in as received frames (and stay in the namespace)."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind(("lo", 0))
        for frame in frames:
            sock.send(frame)


def tcp_to_closed_port(port: int) -> None:
    """A SYN and the RST that answers it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, contextlib.suppress(ConnectionRefusedError):
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))


def collect(cap: Capture, expected: int, settle: float = 0.25) -> list[PacketRecord]:
    """The expected number of packets (waiting up to 3 s), then whatever else arrives in `settle` s."""
    got = list(cap.packets(count=expected, timeout=3))
    return got + list(cap.packets(timeout=settle))


def udp_payloads(records: list[PacketRecord], size: int) -> list[bytes]:
    return [record.packet[-size:] for record in records]


# -- delivery -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_kernel", [True, False], ids=["kernel", "jit"])
@pytest.mark.parametrize("interface", ["lo", "any"])
def test_exactly_the_datagrams_to_the_filtered_port_arrive(netns: str, interface: str, in_kernel: bool) -> None:
    with Capture(interface, f"udp dst port {PORT_A}", in_kernel=in_kernel) as cap:
        assert cap.in_kernel is in_kernel
        assert cap.linktype == ("LINUX_SLL" if interface == "any" else "EN10MB")
        before = time.time()
        send_udp([(port, b"%c%03d" % (tag, i)) for i in range(12) for port, tag in ((PORT_A, 65), (PORT_B, 66))])
        got = collect(cap, 12)
        stats = cap.stats()
    assert udp_payloads(got, 4) == [b"A%03d" % i for i in range(12)]
    header = 16 if interface == "any" else 14
    assert all(len(r.packet) == r.wirelen == header + 20 + 8 + 4 for r in got)
    assert all(before - 1 <= r.timestamp <= time.time() + 1 for r in got)
    assert stats.dropped == 0
    assert stats.rejected == (0 if in_kernel else 12)


@pytest.mark.parametrize("in_kernel", [True, False], ids=["kernel", "jit"])
def test_snaplen_cuts_packets_and_keeps_wirelen(netns: str, in_kernel: bool) -> None:
    with Capture("lo", "udp", snaplen=50, in_kernel=in_kernel) as cap:
        send_udp([(PORT_A, bytes(500))])
        got = collect(cap, 1)
    assert [(len(r.packet), r.wirelen) for r in got] == [(50, 14 + 20 + 8 + 500)]


@pytest.mark.parametrize("interface", ["lo", "any"])
def test_the_kernel_accepts_and_cuts_exactly_what_the_jit_does(netns: str, interface: str) -> None:
    """One program attached in the kernel and run by the JIT, against an unfiltered capture of the same traffic."""
    linktype = "LINUX_SLL" if interface == "any" else "EN10MB"
    # Reads the link header, IPv4, UDP and TCP headers; accepts with ret #80, so long packets get cut.
    expression = f"udp dst port {PORT_A} or icmp or arp or ip6 or (tcp[tcpflags] & tcp-rst != 0)"
    f = bpfjit.compile(expression, linktype=linktype, snaplen=80)
    with (
        Capture(interface, in_kernel=False) as everything,
        Capture(interface, f.program, in_kernel=True) as kernel,
        Capture(interface, f, in_kernel=False) as jit,
    ):
        assert kernel.in_kernel and not jit.in_kernel
        send_udp([(PORT_A, b"short"), (PORT_B, bytes(200)), (PORT_A, bytes(300)), (PORT_B, b"x")], listen=False)
        tcp_to_closed_port(PORT_B)
        inject([frame for name, frame in sample_frames().items() if len(frame) >= 14 and "vlan" not in name])
        seen = collect(everything, 1, settle=0.4)
        from_kernel = collect(kernel, 1)
        from_jit = collect(jit, 1)
    verdicts = [f.call(r.packet, r.wirelen) for r in seen]
    expected = [(r.packet[: min(len(r.packet), v)], r.wirelen) for r, v in zip(seen, verdicts, strict=True) if v]
    assert len(seen) >= 20 and 5 <= len(expected) < len(seen)  # the traffic exercised both verdicts
    assert any(len(p) == 80 < wirelen for p, wirelen in expected)  # and the cut
    assert [(r.packet, r.wirelen) for r in from_kernel] == expected
    assert [(r.packet, r.wirelen) for r in from_jit] == expected


@pytest.mark.parametrize("in_kernel", [True, False], ids=["kernel", "jit"])
def test_a_vlan_tag_the_kernel_took_out_is_put_back(netns: str, in_kernel: bool) -> None:
    frame = sample_frames()["vlan 7 ipv4 udp :53"]
    program = None if in_kernel else "vlan 7 and udp port 53"  # the kernel's filter sees the frame untagged
    with Capture("lo", program, in_kernel=in_kernel) as cap:
        inject([frame])
        got = collect(cap, 1)
    assert [(r.packet, r.wirelen) for r in got] == [(frame, len(frame))]


@pytest.mark.parametrize("interface", ["lo", "any"])
def test_packets_are_byte_identical_to_tcpdumps(netns: str, interface: str) -> None:
    tcpdump = tcpdump_path()
    require(tcpdump is not None, "tcpdump")
    assert tcpdump is not None
    expression = f"udp dst port {PORT_A}"
    output = f"/tmp/{netns}-{interface}.pcap"
    extra = ["-y", "LINUX_SLL"] if interface == "any" else []
    command = [tcpdump, "-i", interface, *extra, "--immediate-mode", "-c", "3", "-w", output, expression]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert process.stderr is not None
        ready, _, _ = select.select([process.stderr], [], [], 5)  # "listening on ..." once its filter is set
        assert ready, "tcpdump did not start"
        process.stderr.readline()
        with Capture(interface, expression) as cap:
            send_udp([(PORT_B, b"no"), (PORT_A, b"one"), (PORT_A, b"two" * 100), (PORT_A, b"three")])
            ours = collect(cap, 3)
        process.wait(timeout=5)
        theirs = _read_pcap(output)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(output)
    assert [(r.packet, r.wirelen) for r in ours] == theirs
    assert len(theirs) == 3


def _read_pcap(path: str) -> list[tuple[bytes, int]]:
    with open(path, "rb") as file:
        data = file.read()
    records, position = [], 24
    while position < len(data):
        _, _, caplen, wirelen = struct.unpack_from("=IIII", data, position)
        records.append((data[position + 16 : position + 16 + caplen], wirelen))
        position += 16 + caplen
    return records


# -- other devices ----------------------------------------------------------------------------------------
@pytest.fixture
def veth(netns: str) -> tuple[str, str]:
    """A veth pair bj0 (10.199.0.1/24) - bj1 (no address): datagrams to 10.199.0.2 go out bj0 into bj1.

    A permanent neighbour entry points 10.199.0.2 at bj1's MAC, so no ARP is needed; bj1 has no
    address and the namespace does not forward, so the datagrams end there.
    """
    _ip("link", "add", "bj0", "type", "veth", "peer", "name", "bj1")
    for name in ("bj0", "bj1"):
        _ip("link", "set", name, "up")
    _ip("addr", "add", "10.199.0.1/24", "dev", "bj0")
    link = subprocess.run(["ip", "-o", "link", "show", "bj1"], check=True, capture_output=True, text=True, timeout=10)
    mac = link.stdout.split("link/ether ")[1].split()[0]
    _ip("neigh", "add", "10.199.0.2", "lladdr", mac, "dev", "bj0", "nud", "permanent")
    return "bj0", "bj1"


@pytest.mark.parametrize("in_kernel", [True, False], ids=["kernel", "jit"])
def test_a_veth_pair_delivers_on_both_ends(veth: tuple[str, str], in_kernel: bool) -> None:
    """Outgoing on one end, incoming on the other; only lo's outgoing copies are skipped."""
    sender_end, receiver_end = veth
    expression = f"udp dst port {PORT_A}"
    with (
        Capture(sender_end, expression, in_kernel=in_kernel) as outgoing,
        Capture(receiver_end, expression, in_kernel=in_kernel) as incoming,
    ):
        assert outgoing.linktype == incoming.linktype == "EN10MB"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(5):
                sock.sendto(b"A%03d" % i, ("10.199.0.2", PORT_A))
                sock.sendto(b"B%03d" % i, ("10.199.0.2", PORT_B))
        sent, received = collect(outgoing, 5), collect(incoming, 5)
    assert udp_payloads(sent, 4) == udp_payloads(received, 4) == [b"A%03d" % i for i in range(5)]
    assert [r.packet for r in sent] == [r.packet for r in received]


def test_promiscuous_mode_is_on_while_the_capture_is_open(veth: tuple[str, str]) -> None:
    def promiscuity() -> int:
        link = subprocess.run(["ip", "-d", "link", "show", "bj1"], check=True, capture_output=True, text=True)
        return int(link.stdout.split("promiscuity ")[1].split()[0])

    with Capture("bj1", promisc=True):
        assert promiscuity() == 1
    assert promiscuity() == 0


def test_an_interface_going_down_is_an_os_error(veth: tuple[str, str]) -> None:
    with Capture("bj1") as cap:
        _ip("link", "set", "bj1", "down")
        with pytest.raises(OSError, match="Network is down") as caught:
            list(cap.packets(timeout=2))
        assert caught.value.errno == errno.ENETDOWN


def test_a_tun_device_captures_raw_ip(netns: str) -> None:
    _ip("tuntap", "add", "dev", "bjtun0", "mode", "tun")
    assert interface_linktype("bjtun0") == ("RAW", 12, False)  # ARPHRD_NONE: packets start at the IP header
    with Capture("bjtun0", "udp port 53") as cap:
        assert cap.linktype == "RAW" and cap.in_kernel


# -- statistics, closing, errors ------------------------------------------------------------------------
def test_stats_count_what_the_full_ring_dropped(netns: str) -> None:
    with Capture("lo", snaplen=100, buffer_size=0) as cap:  # the smallest ring: 2 blocks of 128 KiB
        send_udp([(PORT_A, bytes(1400))] * 400)  # twice over on lo, ~1.2 MB: far more than the ring holds
        got = list(cap.packets(timeout=0.3))
        stats = cap.stats()
    assert stats.received == 800  # each datagram is seen going out and coming in on lo
    assert stats.dropped > 0
    assert 0 < len(got) < 400
    assert all(len(r.packet) == 100 and r.wirelen == 14 + 20 + 8 + 1400 for r in got)
    assert cap.stats() == stats  # the totals stay readable after close


def test_promiscuous_mode_can_be_requested(netns: str) -> None:
    with Capture("lo", "udp", promisc=True) as cap:
        send_udp([(PORT_A, b"p")])
        assert len(collect(cap, 1, settle=0)) == 1


def test_a_keyboard_interrupt_closes_the_capture(netns: str) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    cap = Capture("lo", "udp")
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            for _ in cap.packets(timeout=5):
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cap.closed
    with pytest.raises(ValueError, match="closed"):
        cap.fileno()
    cap.close()  # idempotent


def test_close_from_another_thread_ends_the_loop(netns: str) -> None:
    with Capture("lo") as cap:
        timer = threading.Timer(0.1, cap.close)
        timer.start()
        started = time.monotonic()
        assert list(cap.packets(timeout=5)) == []
        assert time.monotonic() - started < 2
        timer.join()
    assert cap.closed


def test_a_filter_compiled_for_another_link_type_is_refused(netns: str) -> None:
    with pytest.raises(ValueError, match="link type"):
        Capture("lo", bpfjit.compile("ip", linktype="RAW"))


def test_programs_the_kernel_reads_differently_are_run_by_the_jit(netns: str) -> None:
    shift = Program.parse("ldx #33\nld #1\nlsh x\nret a")  # the kernel masks the count: 2, bpfjit: 0
    with Capture("lo", shift) as cap:
        assert not cap.in_kernel
        send_udp([(PORT_A, b"dropped")])
        assert list(cap.packets(timeout=0.3)) == []
        assert cap.stats().rejected == 1


def test_a_program_the_kernel_refuses_is_run_by_the_jit(netns: str) -> None:
    # Valid cBPF, but `ja` over 4093 loads overflows the jump offset of the kernel's eBPF translation.
    program = Program([Insn(0x05, 0, 0, 4093)] + [Insn(0x30, 0, 0, 0)] * 4093 + [Insn(0x06, 0, 0, 262144)])
    with Capture("lo", program) as cap:
        assert not cap.in_kernel
        send_udp([(PORT_A, b"kept")])
        assert udp_payloads(collect(cap, 1, settle=0), 4) == [b"kept"]


def test_without_cap_net_raw_a_permission_error_says_what_is_needed() -> None:
    """Run in a child without CAP_NET_RAW: root drops it from the bounding set before exec."""
    script = (
        "from bpfjit.capture import Capture\n"
        "try:\n    Capture('lo', 'udp')\n"
        "except PermissionError as e:\n    print('PermissionError:', e)\n"
    )

    def drop_cap_net_raw() -> None:
        PR_CAPBSET_DROP, CAP_NET_RAW = 24, 13
        if ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0) != 0:
            os._exit(99)

    result = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=drop_cap_net_raw if IS_ROOT else None,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert message.startswith("PermissionError:"), message
    assert "CAP_NET_RAW" in message and "run as root" in message
    assert "setcap cap_net_raw+ep" in message


def test_an_unknown_interface_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="no network interface named 'nosuch0'"):
        Capture("nosuch0")


def test_promiscuous_any_is_refused() -> None:
    with pytest.raises(ValueError, match="promiscuous"):
        Capture("any", promisc=True)


# -- kernel_program (no privileges) ----------------------------------------------------------------------
def test_kernel_program_leaves_link_layer_programs_alone() -> None:
    program = Program.from_expr("tcp port 80")
    assert kernel_program(program) == program


def test_kernel_program_moves_cooked_loads_past_the_sll_header() -> None:
    sll = Program.from_expr("ip and udp port 53", "LINUX_SLL")
    moved = kernel_program(sll, cooked=True)
    assert moved is not None
    assert str(moved[0]) == str(Program.parse("ldh [-4096]")[0])  # the protocol, SKF_AD_PROTOCOL
    loads = [(a.k, b.k) for a, b in zip(sll, moved, strict=True) if a.k != b.k and a.code not in (0x06,)]
    assert all(new in (a - 16, 0xFFFFF000) for a, new in loads)
    assert moved[-2] == sll[-2]._replace(k=262144 - 16)  # ret #snaplen keeps the same bytes, header aside


@pytest.mark.parametrize(
    "text, cooked",
    [
        ("ldx #1\nld #1\nlsh x\nret a", False),  # the kernel masks shift counts
        ("ldx #1\nld #1\nrsh x\nret a", False),
        ("ld [0x80000000]\nret a", False),  # negative offsets mean something to the kernel
        ("ldb [x + 0xfffff000]\nret a", False),
        ("ld #len\nret a", True),  # the kernel's length has no SLL header in it
        ("ldb [2]\nret #1", True),  # the SLL header's hatype/address: not in the kernel's packet
        ("ret #16", True),  # keeps no more than the SLL header
        ("ld #1\nret a", True),
    ],
)
def test_kernel_program_refuses_what_the_kernel_reads_differently(text: str, cooked: bool) -> None:
    assert kernel_program(Program.parse(text), cooked) is None
