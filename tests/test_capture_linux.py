"""Live capture with the linux dialect: the kernel's filter, the JIT in user space and tcpdump agree.

In a throwaway namespace with a veth pair (tx0 -> rx0), frames are injected on tx0 (received on rx0:
the kernel moves the outer VLAN tag into metadata) and on rx0 (going out of rx0: PACKET_OUTGOING).
For each expression, a `Capture` filtering in the kernel, one filtering in user space (the JIT on the
kernel's view of each ring frame with the ring headers' metadata) and `tcpdump -w` on the same
interface must deliver the same frames, byte for byte (on `any`: kernel and user space only, see the
test). Then linux-dialect programs that read each
piece of metadata (the value decides how much of the frame is kept) check `ring_meta` against what the
kernel's filter read.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest
from needs import require, tcpdump_path
from test_linux_kernel import ANC, LL_OFF, NET_OFF, Pair, inside, veth_pair

from bpfjit import ExpressionError, Insn, Program, libpcap
from bpfjit.capture import Capture, PacketRecord
from bpfjit.samples import arp_request, ethernet, ipv4, ipv6, tcp, udp

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and AF_PACKET are Linux's")

OTHER = b"\x02\x00\x00\x00\x00\x99"


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with veth_pair() as made, inside(made.namespace):
        yield made


def frames(host: bytes) -> tuple[list[bytes], list[bytes]]:
    """(frames sent on tx0, frames sent on rx0): tagged and untagged, each distinct."""

    def eth(ethertype: int, payload: bytes, dst: bytes = host) -> bytes:
        return ethernet(ethertype, payload, dst=dst)

    def tagged(tpid: int, tci: int, ethertype: int, payload: bytes, dst: bytes = host) -> bytes:
        return eth(tpid, struct.pack("!HH", tci, ethertype) + payload, dst)

    incoming = [
        tagged(0x8100, 100, 0x0800, ipv4(17, udp(1, 53, b"vid100 udp"))),
        tagged(0x8100, 0xB064, 0x0800, ipv4(17, udp(2, 53, b"pcp5 dei vid100 udp"))),  # libpcap masks 0xfff
        tagged(0x8100, 100, 0x0800, ipv4(6, tcp(3, 80, payload=b"vid100 tcp"))),
        tagged(0x8100, 100, 0x86DD, ipv6(17, udp(4, 53, b"vid100 udp6"))),
        tagged(0x8100, 200, 0x0800, ipv4(17, udp(5, 53, b"vid200 udp"))),
        tagged(0x88A8, 100, 0x8100, struct.pack("!HH", 7, 0x0800) + ipv4(17, udp(6, 53, b"qinq"))),
        tagged(0x9100, 100, 0x0800, ipv4(17, udp(7, 53, b"9100 stays in the data"))),
        tagged(0x8100, 100, 0x0806, arp_request()[14:], dst=b"\xff" * 6),
        eth(0x0800, ipv4(17, udp(8, 53, b"untagged udp"))),
        eth(0x0800, ipv4(6, tcp(9, 80, payload=b"untagged tcp")), dst=OTHER),
        eth(0x86DD, ipv6(17, udp(10, 53, b"untagged udp6")), dst=b"\x33\x33\x00\x00\x00\x01"),
        arp_request(),
    ]
    outgoing = [
        tagged(0x8100, 100, 0x0800, ipv4(17, udp(11, 53, b"out vid100 udp")), dst=OTHER),
        eth(0x0800, ipv4(17, udp(12, 53, b"out untagged udp")), dst=OTHER),
        eth(0x0800, ipv4(1, b"\x08\x00" + bytes(20)), dst=OTHER),
    ]
    return incoming, outgoing


WARM_UP = b"warm-up"
WARM_UP_FRAMES = tuple((device, ethernet(0x0800, ipv4(17, udp(99, 53, WARM_UP)), dst=OTHER)[:12] + tagging
                        + ethernet(0x0800, ipv4(17, udp(port, 53, WARM_UP)))[12:])
                       for port, device in ((97, "tx0"), (98, "rx0"))
                       for tagging in (b"", b"\x81\x00\x00\x64"))  # fmt: skip
"""Frames every expression of the tests accepts (tagged and not, both ways), to open tcpdump's first block."""


def send(device: str, batch: list[bytes]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.bind((device, 0))
        for frame in batch:
            sock.send(frame)


def inject(pair: Pair) -> None:
    """The warm-up frames, a pause, then the mix. tcpdump (libpcap 1.10.3) filters the ring block that
    is being filled when its filter is set in user space, where `pcap_filter_with_aux_data` knows only
    `ldb [vlanp]`/`ldb [vlan_tci]` and reads `ldh [type]`, `ld [ifidx]` as out of bounds: every frame
    of that block is dropped in an `inbound`, `outbound` or `ifindex` capture (measured: "3 packets
    received by filter", 2 captured), and the block stays open for tcpdump's 1000 ms timeout after its
    first accepted frame. The warm-up frames open that block and are left out of comparisons."""
    for device, frame in WARM_UP_FRAMES:
        send(device, [frame])
    time.sleep(1.1)
    incoming, outgoing = frames(pair.rx_mac)
    send("tx0", incoming)
    send("rx0", outgoing)


def collect(cap: Capture, settle: float = 0.4) -> list[tuple[bytes, int]]:
    got: list[PacketRecord] = list(cap.packets(timeout=settle))
    return [(r.packet, r.wirelen) for r in got if not r.packet.endswith(WARM_UP)]


@contextlib.contextmanager
def tcpdump(pair: Pair, interface: str, expression: str, cooked: bool) -> Iterator[list[tuple[bytes, int]] | None]:
    """tcpdump -w on `interface` in the namespace for the block; its packets in the list afterwards."""
    binary = tcpdump_path()
    require(binary is not None, "tcpdump")
    assert binary is not None
    packets: list[tuple[bytes, int]] = []
    with tempfile.TemporaryDirectory() as directory:
        output = os.path.join(directory, "out.pcap")
        extra = ["-y", "LINUX_SLL"] if cooked else []
        command = ["ip", "netns", "exec", pair.namespace, binary, "-i", interface, *extra, "--immediate-mode", "-U",
                   "-w", output, expression]  # fmt: skip
        process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            assert process.stderr is not None
            line = ""
            while "listening" not in line:  # "listening on ..." once its filter is set
                ready, _, _ = select.select([process.stderr], [], [], 10)
                assert ready, "tcpdump did not start"
                line = process.stderr.readline().decode()
                assert line, "tcpdump stopped"
            yield packets
            time.sleep(1.2)  # tcpdump reads a ring block once the kernel retires it: 1000 ms after its first frame
            process.send_signal(signal.SIGINT)
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
        packets += [(p, w) for p, w in read_pcap(output) if not p.endswith(WARM_UP)]


def read_pcap(path: str) -> list[tuple[bytes, int]]:
    with open(path, "rb") as file:
        data = file.read()
    records, position = [], 24
    while position < len(data):
        _, _, caplen, wirelen = struct.unpack_from("=IIII", data, position)
        records.append((data[position + 16 : position + 16 + caplen], wirelen))
        position += 16 + caplen
    return records


EXPRESSIONS = ("vlan", "vlan 100 and udp", "vlan 100", "inbound", "outbound", "ifindex {rx}", "ifindex {tx}",
               "udp port 53")  # fmt: skip


@pytest.mark.parametrize("interface", ["rx0", "any"])
@pytest.mark.parametrize("template", EXPRESSIONS)
def test_kernel_and_user_space_deliver_what_tcpdump_captures(pair: Pair, interface: str, template: str) -> None:
    expression = template.format(rx=pair.rx_index, tx=socket.if_nametoindex("tx0"))
    if interface == "any" and template.startswith("vlan"):
        with pytest.raises(ExpressionError, match="no VLAN support for Linux cooked"):  # libpcap's, as tcpdump's
            Capture(interface, expression)
        return
    # On `any`, tcpdump's captures of this traffic differed from run to run (frames of both devices
    # missing or extra, in ring blocks it had not read yet): not compared there, not understood.
    theirs_or_none = contextlib.nullcontext(None) if interface == "any" else tcpdump(pair, interface, expression, False)
    with (
        theirs_or_none as theirs,
        Capture(interface, expression, in_kernel=True, buffer_size=1 << 22) as kernel,
        Capture(interface, expression, in_kernel=False, buffer_size=1 << 22) as jit,
    ):
        assert kernel.in_kernel and not jit.in_kernel
        assert kernel.dialect.name == jit.dialect.name == "linux"
        inject(pair)
        from_kernel, from_jit = collect(kernel), collect(jit)
    if interface == "any":
        # A known limit (README, capture.py): a frame sent on tx0 by a packet socket with its tag in the
        # data is, in cooked mode, reported by the ring with the tag in tp_vlan_tci and the inner
        # protocol (af_packet since 2024), while the kernel's filter read protocol 0x8100: user space
        # filters what the ring says. Those outgoing tagged frames are left out.
        def known(record: tuple[bytes, int]) -> bool:
            return record[0][:2] == b"\x00\x04" and record[0][14:16] in (b"\x81\x00", b"\x88\xa8")

        from_kernel = [r for r in from_kernel if not known(r)]
        from_jit = [r for r in from_jit if not known(r)]
    assert from_kernel == from_jit
    if theirs is not None:
        assert sorted(from_kernel) == sorted(theirs)
    nothing = interface == "rx0" and template == "ifindex {tx}"
    assert bool(from_kernel) is not nothing, f"{expression} on {interface}: {len(from_kernel)} frames"
    if interface == "rx0" and template.startswith("vlan"):
        # the tag is back in the frames, as libpcap puts it back
        assert all(packet[12:14] in (b"\x81\x00", b"\x88\xa8", b"\x91\x00") for packet, _ in from_kernel)


def test_the_program_is_tcpdumps_live_program(pair: Pair) -> None:
    binary = tcpdump_path()
    require(binary is not None, "tcpdump")
    assert binary is not None
    for expression in ("vlan 100 and udp", "inbound", f"ifindex {pair.rx_index}"):
        listing = subprocess.run(["ip", "netns", "exec", pair.namespace, binary, "-i", "rx0", "-ddd", expression],
                                 capture_output=True, text=True, check=True, timeout=20).stdout  # fmt: skip
        with Capture("rx0", expression) as cap:
            assert cap.program == Program.parse(listing)
    compiled = libpcap.compile_for_interface("vlan 100", "rx0", "EN10MB")
    assert {insn.k for insn in compiled} >= {ANC["VLAN_TAG_PRESENT"], ANC["VLAN_TAG"]}


def keep_by(load: list[Insn], shift: int = 0) -> Program:
    """A program that keeps 1 + ((value >> shift) & 0x3f) bytes of the frame: the value read back."""
    return Program([*load, Insn(0x74, 0, 0, shift), Insn(0x54, 0, 0, 0x3F), Insn(0x04, 0, 0, 1), Insn(0x16)])


def anc(name: str) -> list[Insn]:
    return [Insn(0x20, 0, 0, ANC[name])]


READERS = {
    "protocol": keep_by(anc("PROTOCOL")),
    "protocol >> 8": keep_by(anc("PROTOCOL"), 8),
    "pkttype": keep_by(anc("PKTTYPE")),
    "ifindex": keep_by(anc("IFINDEX")),
    "hatype": keep_by(anc("HATYPE")),
    "vlan_tci": keep_by(anc("VLAN_TAG")),
    "vlan_tci >> 6": keep_by(anc("VLAN_TAG"), 6),
    "vlan_tci >> 12": keep_by(anc("VLAN_TAG"), 12),
    "vlan_present": keep_by(anc("VLAN_TAG_PRESENT")),
    "vlan_tpid": keep_by(anc("VLAN_TPID")),
    "vlan_tpid >> 8": keep_by(anc("VLAN_TPID"), 8),
    "poff": keep_by(anc("PAY_OFFSET")),
    "net": keep_by([Insn(0x30, 0, 0, NET_OFF + 9)]),
    "ll": keep_by([Insn(0x28, 0, 0, LL_OFF + 12)]),
}


def test_ring_metadata_is_what_the_kernels_filter_read(pair: Pair) -> None:
    """Each program's result is a piece of metadata; kernel and user space must cut every frame alike.
    (On `any` a `ret a` program cannot run in the kernel: its view has no LINUX_SLL header.)"""
    interface = "rx0"
    with contextlib.ExitStack() as stack:
        captures = {
            (name, in_kernel): stack.enter_context(
                Capture(interface, program, in_kernel=in_kernel, dialect="linux", buffer_size=1 << 22)
            )
            for name, program in READERS.items()
            for in_kernel in (True, False)
        }
        for (_, in_kernel), cap in captures.items():
            assert cap.in_kernel is in_kernel
        inject(pair)
        got = {key: collect(cap, settle=0.2) for key, cap in captures.items()}
    for name in READERS:
        kernel, jit = got[name, True], got[name, False]
        assert kernel == jit, name
        assert len(kernel) >= 15, name
    lengths = {name: {len(packet) for packet, _ in got[name, True]} for name in READERS}
    assert len(lengths["vlan_tci"]) >= 2 and len(lengths["pkttype"]) >= 3, lengths
