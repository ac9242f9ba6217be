"""The Linux kernel as a second oracle: frames its socket filter delivers are exactly those the JIT accepts.

A module fixture makes a network namespace with a veth pair in it (IPv6 off, so the stack stays
silent), opens on one end an unfiltered AF_PACKET socket and one socket per expression with the
libpcap/tcpdump-compiled program attached by SO_ATTACH_FILTER, and injects ~200 varied frames from
the other end with a raw AF_PACKET send. Nothing leaves the namespace; it is deleted afterwards.

What the kernel's filter runs on is not always the frame we sent: receive strips the outer 802.1Q /
802.1ad tag into metadata (a QinQ frame keeps its inner tag), drops tagged runts it cannot untag, and
refuses to send frames shorter than an Ethernet header. So the JIT runs on what the unfiltered
socket received (caplen = wirelen = the frame's length, as the kernel sees it), and a separate test
pins that view down. Each frame is its own marker: the injected frames are distinct byte strings,
and anything else arriving (the stack's own traffic) is ignored.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from frames import handmade_frames
from needs import require, tcpdump_path
from netns import inside, namespace
from netns import ip as _ip

import bpfjit
from bpfjit import LibraryMissingError, Program, libpcap, packetmix
from bpfjit.samples import ipv4, udp, vlan
from bpfjit.sockfilter import attach_filter

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and AF_PACKET are Linux's")

# (expression, snap length): each reads different headers; the last cuts what it accepts.
EXPRESSIONS: tuple[tuple[str, int], ...] = (
    ("tcp port 80", 262144),
    ("udp port 53 or udp port 123", 262144),
    ("ip6 and tcp", 262144),
    ("arp or rarp", 262144),
    ("vlan", 262144),  # only QinQ frames still carry a tag when the filter runs
    ("icmp[icmptype] = icmp-echo", 262144),
    ("tcp[tcpflags] & (tcp-syn|tcp-fin) != 0", 262144),
    ("tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420", 262144),
    ("net 10.1.0.0/16 and not port 22", 262144),
    ("ip[6:2] & 0x1fff != 0", 262144),
    ("ether broadcast or ether multicast", 262144),
    ("len > 200 and not ip6", 262144),
    ("port (20 or 21 or 22 or 23 or 25 or 53 or 80 or 110 or 143 or 443 or 993 or 995 or 8080)", 262144),
    ("udp or ip6", 96),
)
GENERATED = 170  # frames from bpfjit.packetmix; the hand-made ones come on top
SEED = 11

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33  # root may exceed rmem_max: every frame must fit while we are still sending
ETH_HLEN = 14
VLAN_TPIDS = (b"\x81\x00", b"\x88\xa8")
DEADLINE = 5.0  # seconds to wait for the frames; the whole module takes well under a second normally
SETTLE = 0.2  # then this long without a new frame on any socket



def packet_stats(sock: socket.socket) -> tuple[int, int]:
    """(packets that passed the filter, packets dropped for lack of buffer) since the last call."""
    packets, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return packets, drops


@contextlib.contextmanager
def veth_namespace() -> Iterator[tuple[str, str, str]]:
    """(namespace, sending end, receiving end): a veth pair, up, in a new namespace; deleted after."""
    with namespace("oracle", ipv6=False) as name:
        # MTU 9000: QinQ frames of 1522 bytes exceed what a 1500-byte veth forwards.
        _ip("-n", name, "link", "add", "tx0", "mtu", "9000", "type", "veth", "peer", "name", "rx0", "mtu", "9000")
        _ip("-n", name, "link", "set", "tx0", "up")
        _ip("-n", name, "link", "set", "rx0", "up")
        yield name, "tx0", "rx0"


def receiver(interface: str, program: Program | None) -> socket.socket:
    """A packet socket on `interface` (created in the current namespace), the filter attached first.

    It is made with protocol 0, which receives nothing, and bound to ETH_P_ALL only once the filter
    is in place, so no unfiltered frame slips in between.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 25)
        if program is not None:
            attach_filter(sock, program)
        sock.bind((interface, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def drain(sock: socket.socket, into: list[bytes]) -> int:
    """Read every frame queued on a non-blocking socket; how many there were."""
    count = 0
    while True:
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            return count
        into.append(data)
        count += 1


PROBE = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"bpfjit kernel-oracle probe".ljust(46, b".")


def wait_until_forwarding(sender: socket.socket, everything: socket.socket, others: list[socket.socket]) -> None:
    """Send probes until one comes out of the pair, then drop every probe queued anywhere.

    A veth's carrier comes up a moment after `ip link set up`; frames sent before are dropped.
    """
    deadline = time.monotonic() + DEADLINE
    got: list[bytes] = []
    while PROBE not in got:
        assert time.monotonic() < deadline, "the veth pair did not come up"
        sender.send(PROBE)
        select.select([everything], [], [], 0.02)
        drain(everything, got)
    time.sleep(0.02)
    for sock in (everything, *others):
        drain(sock, [])
    for sock in (everything, *others):
        packet_stats(sock)  # reading the counters resets them


# -- the frames ------------------------------------------------------------------------------------
def frames_to_inject() -> list[bytes]:
    """Distinct frames the kernel lets us send: the generated mix's captured bytes (truncated ones are
    simply shorter frames here) and the hand-made frames, at least an Ethernet header long."""
    generated = [packet for packet, _ in packetmix.generate_list(GENERATED, seed=SEED, truncated=0.1)]
    tagged = vlan(7, 0x0800, ipv4(17, udp(1000, 53)))
    runts = [tagged[:n] for n in (16, 18, 19, 20, 21)]  # the kernel can untag from 20 bytes on
    by_view: dict[bytes | None, bytes] = {}
    for frame in [*generated, *(packet for packet, _ in handmade_frames()), *runts]:
        if len(frame) >= ETH_HLEN:
            view = kernel_view(frame)
            # One frame per view: a tagged frame and its untagged twin look the same to the filter.
            by_view.setdefault(view if view is not None else frame, frame)
    return list(by_view.values())


def kernel_view(frame: bytes) -> bytes | None:
    """The frame as a receiving packet socket (and its filter) sees it, or None when it is dropped.

    Receive moves the outer VLAN tag into metadata (skb_vlan_untag) and frees a tagged frame too short
    to hold the tag and a type after it.
    """
    if frame[12:14] in VLAN_TPIDS:
        return frame[:12] + frame[16:] if len(frame) >= ETH_HLEN + 6 else None
    return frame


@dataclass
class KernelRun:
    injected: list[bytes]
    seen: list[bytes]  # what the unfiltered socket received, ours only
    delivered: dict[tuple[str, int], list[bytes]]  # what each filtered socket received, ours only
    drops: dict[str, int]


@pytest.fixture(scope="module")
def kernel_run() -> Iterator[KernelRun]:
    require(os.geteuid() == 0, "root (network namespaces and AF_PACKET sockets)")
    try:
        libpcap.library()
    except LibraryMissingError as exc:
        require(False, f"libpcap ({exc})")
    programs = {entry: Program.from_expr(entry[0], snaplen=entry[1]) for entry in EXPRESSIONS}
    injected = frames_to_inject()
    with veth_namespace() as (name, tx_name, rx_name), contextlib.ExitStack() as stack:
        with inside(name):
            everything = stack.enter_context(receiver(rx_name, None))
            filtered = {entry: stack.enter_context(receiver(rx_name, p)) for entry, p in programs.items()}
            sender = stack.enter_context(socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
            sender.bind((tx_name, 0))
        expected = {view for view in map(kernel_view, injected) if view is not None}
        ours = {view[:cut] for view in expected for cut in {len(view), *(s for _, s in EXPRESSIONS)}}
        wait_until_forwarding(sender, everything, [*filtered.values()])
        for frame in injected:
            sender.send(frame)
        everything_got: list[bytes] = []
        filtered_got: dict[tuple[str, int], list[bytes]] = {entry: [] for entry in filtered}
        deadline = time.monotonic() + DEADLINE
        quiet_since = time.monotonic()
        sockets = [everything, *filtered.values()]
        # Until every frame the unfiltered socket should see arrived, then until all sockets go quiet.
        while time.monotonic() < deadline:
            done = len(expected.intersection(everything_got)) == len(expected)
            if done and time.monotonic() - quiet_since > SETTLE:
                break
            ready, _, _ = select.select(sockets, [], [], 0.05)
            new = drain(everything, everything_got) if everything in ready else 0
            for entry, sock in filtered.items():
                if sock in ready:
                    new += drain(sock, filtered_got[entry])
            if new:
                quiet_since = time.monotonic()
        drops = {"unfiltered": packet_stats(everything)[1]}
        drops.update({expression: packet_stats(sock)[1] for (expression, _), sock in filtered.items()})
    yield KernelRun(
        injected=injected,
        seen=[frame for frame in everything_got if frame in expected],
        delivered={entry: [f for f in got if f in ours] for entry, got in filtered_got.items()},
        drops=drops,
    )


# -- the tests ---------------------------------------------------------------------------------------
def test_the_kernel_saw_what_we_sent(kernel_run: KernelRun) -> None:
    """Every frame arrived once, as `kernel_view` says (VLAN tags stripped), and none was dropped."""
    expected = [view for view in map(kernel_view, kernel_run.injected) if view is not None]
    assert len(kernel_run.injected) >= 200
    assert len(set(expected)) == len(expected)  # each frame is its own marker
    assert sorted(kernel_run.seen) == sorted(expected)
    assert kernel_run.drops == dict.fromkeys(kernel_run.drops, 0)
    tagged = [f for f in kernel_run.injected if f[12:14] in VLAN_TPIDS]
    assert len(tagged) >= 10 and any(kernel_view(f) is None for f in tagged)  # the mix has both cases


@pytest.mark.parametrize("entry", EXPRESSIONS, ids=lambda e: e[0] if e[1] == 262144 else f"{e[0]} (snaplen {e[1]})")
def test_kernel_delivers_exactly_what_the_jit_accepts(entry: tuple[str, int], kernel_run: KernelRun) -> None:
    expression, snaplen = entry
    f = bpfjit.compile(expression, snaplen=snaplen)
    tcpdump = tcpdump_path()
    if tcpdump is not None:  # the program attached is tcpdump's, instruction for instruction
        listing = subprocess.run([tcpdump, "-ddd", "-s", str(snaplen), "-y", "EN10MB", expression],
                                 capture_output=True, text=True, check=True, timeout=20).stdout  # fmt: skip
        assert Program.parse(listing) == f.program
    verdicts = [f.call(frame, len(frame)) for frame in kernel_run.seen]  # caplen = wirelen, as in the kernel
    expected = [frame[:verdict] for frame, verdict in zip(kernel_run.seen, verdicts, strict=True) if verdict]
    delivered = kernel_run.delivered[entry]
    extra = collections.Counter(delivered) - collections.Counter(expected)
    missing = collections.Counter(expected) - collections.Counter(delivered)
    assert not extra and not missing, (
        f"kernel delivered {len(extra)} frames the JIT rejects (first {next(iter(extra), b'').hex()}), "
        f"and not {len(missing)} the JIT accepts (first {next(iter(missing), b'').hex()})"
    )
    assert 0 < len(expected) < len(kernel_run.seen), "the mix does not tell this filter's verdicts apart"
    if snaplen < 262144:
        assert any(len(frame) == snaplen for frame in delivered)  # the kernel cut, as the JIT's return said
