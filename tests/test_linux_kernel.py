"""The Linux kernel as the oracle of the linux dialect: what a socket filter computes, read back value by value.

A module fixture makes a network namespace with a veth pair (tx0 -> rx0), VLAN sub-interfaces on the
sending end (802.1Q `tx0.100` with an egress-qos-map that sets PCP 5, 802.1ad `tx0.300` and QinQ
`tx0.300.100`), and sends a mix of frames one at a time: IPv4/IPv6 TCP/UDP/ICMP, fragments, IPv6
extension headers, tunnels, ARP, MPLS, GRE, frames for this host / broadcast / multicast / another host,
tags in the data (PCP and DEI set, QinQ, 0x9100), short frames and netlink-attribute payloads.

How a value is read back (DIALECTS.md A, "ret a truncation"): a program P under test becomes 8
programs, one per socket on rx0, in which every `ret` goes to an epilogue
`rsh #4i; and #0xf; add #1; ret a`: the kernel delivers nibble i of P's result + 1 bytes of the
frame, or nothing when P stopped on a failed load (which returns 0). Frames are sent one at a time
and each socket drained after each, so a cut frame needs no marker: every frame is at least 16 bytes
in the kernel's view. An unfiltered socket bound first (so its packet tap runs last) receives the
whole frame with PACKET_AUXDATA and its `sockaddr_ll`: the metadata af_packet puts in each ring
frame's header too (`tp_status` VLAN_VALID, `tp_vlan_tci`, `tp_vlan_tpid`, `tp_net - tp_mac`,
`sll_protocol`, `sll_pkttype`, `sll_ifindex`, `sll_hatype`), from which the test builds `linux.Meta`
for the interpreter and a `metadata.META_DTYPE` array for the JIT. The data itself is the SOCK_RAW
view (the outer tag already in metadata).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netns import inside, namespace
from netns import ip as _ip

import bpfjit
from bpfjit import Batch, Insn, Program, ValidationError, linux, metadata, packetmix
from bpfjit.linux import ANCILLARY, SKF_AD_OFF, Meta
from bpfjit.opcodes import OPCODES
from bpfjit.samples import arp_request, ethernet, ipv4, ipv6, tcp, udp
from bpfjit.sockfilter import attach_filter
from bpfjit.strategies import programs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="network namespaces and AF_PACKET are Linux's")

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
SO_RCVBUFFORCE = 33
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
NIBBLES = 8
MIN_VIEW = 16  # a nibble + 1 is at most 16 bytes: every frame the filter sees is at least that long
NET_OFF = linux.SKF_NET_OFF & 0xFFFFFFFF
LL_OFF = linux.SKF_LL_OFF & 0xFFFFFFFF
ANC = {row.name: row.k for row in ANCILLARY}
PROGRAMS_PER_ROUND = 40  # 320 sockets open at once
WAIT = 1.0  # seconds for one frame to come out of the pair

def attach(sock: socket.socket, program: Program) -> int:
    """SO_ATTACH_FILTER; 0 or the errno."""
    try:
        attach_filter(sock, program)
    except OSError as error:
        return error.errno or -1
    return 0


SUBINTERFACES = (  # (name, link, protocol, id, egress-qos-map): the sender's VLAN devices
    ("tx0.100", "tx0", "802.1Q", 100, "0:5"),
    ("tx0.300", "tx0", "802.1ad", 300, "0:3"),
    ("tx0.300.100", "tx0.300", "802.1Q", 100, "0:6"),
)


@dataclass
class Pair:
    namespace: str
    rx: str
    rx_index: int
    rx_mac: bytes
    devices: tuple[str, ...]  # the sending devices: tx0 and the VLAN ones this kernel can make


@contextlib.contextmanager
def veth_pair() -> Iterator[Pair]:
    with namespace("linux", ipv6=False) as name:
        _ip("-n", name, "link", "add", "tx0", "mtu", "9000", "type", "veth", "peer", "name", "rx0", "mtu", "9000")
        devices = ["tx0", "rx0"]
        for sub, link, proto, vid, qos in SUBINTERFACES:
            try:
                _ip("-n", name, "link", "add", "link", link, "name", sub, "type", "vlan", "proto", proto,
                    "id", str(vid), "egress-qos-map", qos)  # fmt: skip
            except subprocess.CalledProcessError:  # a kernel without CONFIG_VLAN_8021Q: tags in the data only
                break
            devices.append(sub)
        for device in devices:
            _ip("-n", name, "link", "set", device, "up")
        with inside(name):
            index = socket.if_nametoindex("rx0")
        link = subprocess.run(["ip", "-n", name, "-o", "link", "show", "rx0"], check=True, capture_output=True,
                              text=True, timeout=10).stdout  # fmt: skip
        mac = bytes.fromhex(link.split("link/ether ")[1].split()[0].replace(":", ""))
        yield Pair(name, "rx0", index, mac, tuple(d for d in devices if d != "rx0"))


# -- frames ------------------------------------------------------------------------------------------
BROADCAST, MULTICAST, OTHER = b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", b"\x02\x00\x00\x00\x00\x99"


def nla(attrtype: int, payload: bytes) -> bytes:
    """One netlink attribute, host-endian {u16 nla_len; u16 nla_type}, padded to 4 bytes."""
    body = struct.pack("=HH", 4 + len(payload), attrtype) + payload
    return body + bytes(-len(body) % 4)


NLA_PAYLOAD = (bytes(2) + nla(1, b"abcd") + nla(2, b"xyz") + nla(0x8000 | 3, nla(5, b"12345678") + nla(7, b"q"))
               + nla(7, bytes(8)))  # fmt: skip
NLA_START = 14 + 2  # where the first attribute of NLA_PAYLOAD frames starts


def gre(protocol: int, payload: bytes, key: bool = False, seq: bool = False, csum: bool = False) -> bytes:
    """A GRE version 0 header (with the optional fields asked for) and its payload."""
    flags = (0x8000 if csum else 0) | (0x2000 if key else 0) | (0x1000 if seq else 0)
    extra = bytes(4) * csum + b"KEY!" * key + b"SEQ#" * seq
    return struct.pack("!HH", flags, protocol) + extra + payload


PPPOE_IP = ethernet(0x8864, b"\x11\x00\x00\x01\x00\x20\x00\x21" + ipv4(17, udp(5, 6)))  # a PPPoE session frame
PPTP = ethernet(0x0800, ipv4(47, struct.pack("!HHHHI", 0x3001, 0x880B, 24, 1, 7) + b"\xff\x03\x00\x21"
                             + ipv4(17, udp(7, 8))))  # GRE version 1 with PPP inside  # fmt: skip


def tag(tpid: int, tci: int) -> bytes:
    return struct.pack("!HH", tpid, tci)


def frame_mix(host: bytes, devices: Sequence[str]) -> list[tuple[str, bytes]]:
    """(device to send on, frame): every kind the dialect's loads tell apart, each frame distinct."""

    def eth(ethertype: int, payload: bytes, dst: bytes = host) -> bytes:
        return ethernet(ethertype, payload, dst=dst)

    tcp8 = struct.pack("!HHIIBBHHH", 40001, 80, 1, 0, 8 << 4, 0x18, 512, 0, 0) + bytes(12) + b"GET / HTTP/1.0\r\n"
    hop = bytes([6, 0]) + bytes(6)  # hop-by-hop options, 8 bytes, next TCP
    dest = bytes([17, 1]) + bytes(14)  # destination options, 16 bytes, next UDP
    routing = bytes([58, 0, 0, 0]) + bytes(4)  # routing header, next ICMPv6
    frames: list[tuple[str, bytes]] = [
        ("tx0", eth(0x0800, ipv4(6, tcp(40000, 80, payload=b"hello")))),
        ("tx0", eth(0x0800, ipv4(6, tcp8))),
        ("tx0", eth(0x0800, ipv4(17, udp(1000, 53, b"query")), dst=BROADCAST)),
        ("tx0", eth(0x0800, ipv4(17, udp(1000, 123, b"ntp")), dst=MULTICAST)),
        ("tx0", eth(0x0800, ipv4(1, b"\x08\x00" + bytes(30)), dst=OTHER)),
        ("tx0", eth(0x0800, ipv4(1, b"\x08\x00" + bytes(6), options=b"\x01\x01\x01\x00"))),
        ("tx0", eth(0x0800, ipv4(2, bytes(8)))),  # IGMP
        ("tx0", eth(0x0800, ipv4(132, bytes(16)))),  # SCTP
        ("tx0", eth(0x0800, ipv4(33, bytes(16)))),  # DCCP
        ("tx0", eth(0x0800, ipv4(136, bytes(8)))),  # UDP-Lite
        ("tx0", eth(0x0800, ipv4(99, bytes(20)))),  # an IP protocol with no known header
        ("tx0", eth(0x0800, ipv4(17, udp(1, 2, bytes(40)), frag=0x2000))),  # first fragment
        ("tx0", eth(0x0800, ipv4(17, bytes(40), frag=0x0005))),  # a later one
        ("tx0", eth(0x0800, ipv4(6, bytes(40), frag=0x2010))),
        ("tx0", eth(0x0800, ipv4(4, ipv4(17, udp(7, 8, b"inner"))))),  # IP in IP
        ("tx0", eth(0x0800, ipv4(41, ipv6(6, tcp(1, 2))))),  # IPv6 in IPv4
        ("tx0", eth(0x0800, ipv4(47, b"\x00\x00\x08\x00" + ipv4(1, b"\x08\x00" + bytes(6))))),  # GRE
        ("tx0", eth(0x0800, ipv4(6, tcp(1, 2))[:30])),  # IPv4 cut in the TCP header
        ("tx0", eth(0x0800, bytes([0x44]) + bytes(25))),  # IHL 4: a bad IPv4 header
        ("tx0", eth(0x86DD, ipv6(6, tcp(40000, 443)))),
        ("tx0", eth(0x86DD, ipv6(17, udp(53, 4000, b"answer")), dst=OTHER)),
        ("tx0", eth(0x86DD, ipv6(58, b"\x80\x00" + bytes(10)), dst=b"\x33\x33\x00\x00\x00\x01")),
        ("tx0", eth(0x86DD, ipv6(0, hop + tcp(1, 2)))),
        ("tx0", eth(0x86DD, ipv6(60, dest + udp(3, 4)))),
        ("tx0", eth(0x86DD, ipv6(43, routing + b"\x80\x00" + bytes(6)))),
        ("tx0", eth(0x86DD, ipv6(44, bytes([17, 0, 0, 1, 0, 0, 0, 1]) + udp(53, 53)))),  # first fragment
        ("tx0", eth(0x86DD, ipv6(44, bytes([17, 0, 0, 0x41, 0, 0, 0, 1]) + bytes(16)))),  # a later one
        ("tx0", eth(0x86DD, ipv6(0, hop)[:50])),  # cut in its extension header
        ("tx0", arp_request()),
        ("tx0", eth(0x8035, arp_request()[14:])),  # RARP
        ("tx0", eth(0x8847, struct.pack("!I", 1024 << 12 | 1 << 8 | 64) + ipv4(17, udp(1000, 53)))),  # MPLS
        ("tx0", eth(0x8847, struct.pack("!II", 1024 << 12 | 64, 2000 << 12 | 1 << 8 | 64) + ipv4(6, tcp(1, 2)))),
        ("tx0", eth(0x0800, ipv4(47, gre(0x0800, ipv4(6, tcp(3, 4)), key=True, seq=True, csum=True)))),
        ("tx0", eth(0x0800, ipv4(47, gre(0x6558, ethernet(0x86DD, ipv6(17, udp(5, 6))))), dst=BROADCAST)),
        ("tx0", eth(0x86DD, ipv6(47, gre(0x8847, struct.pack("!I", 1 << 8) + ipv4(17, udp(1, 2)))))),
        ("tx0", eth(0x0800, ipv4(47, struct.pack("!HH", 0x4000, 0x0800) + bytes(24)))),  # routing: not followed
        ("tx0", eth(0x0800, ipv4(47, gre(0x0800, b"", key=True)[:6]))),  # cut in its key
        ("tx0", eth(0x0800, ipv4(47, gre(0x6558, bytes(10))))),  # cut in the inner Ethernet header
        ("tx0", eth(0x88B5, NLA_PAYLOAD)),
        ("tx0", eth(0x88B5, NLA_PAYLOAD[:27])),  # the walk runs out of packet
        ("tx0", eth(0x88B6, bytes(2) + nla(9, b"") + nla(0x4000 | 1, b"zz") + nla(2, bytes(3)))),
        ("tx0", eth(0x0026, b"\xaa\xaa\x03" + bytes(35))),  # 802.3 length field
        ("tx0", eth(0x1234, bytes(2))),  # 16 bytes: the shortest frame read back
        ("tx0", eth(0x0800, b"\x45" + bytes(4))),
        ("tx0", eth(0x86DD, b"\x60" + bytes(10))),
        # Tags in the data: the receiving kernel moves the outer one into metadata.
        ("tx0", eth(0x8100, tag(0x0800, 0xB064)[2:] + struct.pack("!H", 0x0800) + ipv4(17, udp(9, 53)))),
        ("tx0", eth(0x8100, struct.pack("!HH", 0xB064, 0x0800) + ipv4(17, udp(10, 53)))),  # PCP 5, DEI, VID 100
        ("tx0", eth(0x8100, struct.pack("!HH", 0x0007, 0x86DD) + ipv6(17, udp(11, 53)))),
        ("tx0", eth(0x8100, struct.pack("!HH", 0x1000, 0x0800) + ipv4(6, tcp(12, 80)))),  # VID 0, DEI
        ("tx0", eth(0x88A8, struct.pack("!HHHH", 0x2012, 0x8100, 0x3064, 0x0800) + ipv4(17, udp(13, 53)))),  # QinQ
        ("tx0", eth(0x88A8, struct.pack("!HH", 0x00C8, 0x0806) + arp_request()[14:])),
        ("tx0", eth(0x9100, struct.pack("!HH", 0x0064, 0x0800) + ipv4(17, udp(14, 53)))),  # stays in the data
        ("tx0", eth(0x8100, struct.pack("!HH", 0x0064, 0x0800) + b"\x45" + bytes(3))),  # a tagged runt
        # Through the VLAN devices: the sender's kernel tags them.
        ("tx0.100", eth(0x0800, ipv4(17, udp(20, 53, b"vlan")))),
        ("tx0.100", eth(0x86DD, ipv6(6, tcp(21, 80)))),
        ("tx0.100", eth(0x0806, arp_request()[14:], dst=BROADCAST)),
        ("tx0.300", eth(0x0800, ipv4(17, udp(22, 53, b"ad")))),
        ("tx0.300.100", eth(0x0800, ipv4(17, udp(23, 53, b"qinq")))),
        ("tx0.300.100", eth(0x86DD, ipv6(17, udp(24, 53, b"qinq6")), dst=OTHER)),
    ]
    generated = [("tx0", p) for p, _ in packetmix.generate_list(60, seed=5, truncated=0.1)]
    seen: set[bytes] = set()
    unique = []
    for device, frame in frames + generated:
        if frame not in seen and len(frame) >= MIN_VIEW + 4 and device in devices:  # (a tagged frame loses 4 bytes)
            seen.add(frame)
            unique.append((device, frame))
    return unique


# -- reading values back ------------------------------------------------------------------------------
def probe(program: Program, nibble: int) -> Program:
    """`program` with every `ret` sent to `rsh #4*nibble; and #0xf; add #1; ret a` (`ret #k`: A = k first)."""
    place: list[int] = []
    size = 0
    for insn in program:
        place.append(size)
        size += 2 if OPCODES[insn.code].kind == "ret_k" else 1
    epilogue = size
    out: list[Insn] = []
    for i, insn in enumerate(program):
        kind = OPCODES[insn.code].kind
        here = len(out)
        if kind == "ret_k":
            out += [Insn(0x00, 0, 0, insn.k), Insn(0x05, 0, 0, epilogue - here - 2)]
        elif kind == "ret_a":
            out.append(Insn(0x05, 0, 0, epilogue - here - 1))
        elif kind == "ja":
            out.append(insn._replace(k=place[i + 1 + insn.k] - here - 1))
        elif kind in ("jmp_k", "jmp_x"):
            jt, jf = place[i + 1 + insn.jt] - here - 1, place[i + 1 + insn.jf] - here - 1
            assert jt < 256 and jf < 256
            out.append(insn._replace(jt=jt, jf=jf))
        else:
            out.append(insn)
    out += [Insn(0x74, 0, 0, 4 * nibble), Insn(0x54, 0, 0, 0xF), Insn(0x04, 0, 0, 1), Insn(0x16)]
    return Program(out)


@dataclass
class Received:
    device: str
    sent: bytes
    view: bytes  # the SOCK_RAW data the filter ran on
    meta: Meta
    results: list[int | None]  # per program: the kernel's result (None: the kernel refused the program)


def auxdata_meta(aux: bytes, address: Any) -> Meta:
    """linux.Meta from tpacket_auxdata and sockaddr_ll: the fields a TPACKET_V3 frame header carries."""
    status, _, _, mac, net, tci, tpid = AUXDATA.unpack(aux[: AUXDATA.size])
    _, protocol, pkttype, hatype, _ = address
    valid = bool(status & TP_STATUS_VLAN_VALID)
    return Meta(protocol=protocol, pkttype=pkttype, ifindex=socket.if_nametoindex(address[0]), net_offset=net - mac,
                hatype=hatype, vlan_tci=tci, vlan_present=int(valid),
                vlan_tpid=tpid if status & TP_STATUS_VLAN_TPID_VALID else 0)  # fmt: skip


def packet_socket(device: str, program: Program | None, auxdata: bool = False) -> tuple[socket.socket, int]:
    """A SOCK_RAW socket on `device`, its filter attached before it is bound; (socket, attach errno)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
    if auxdata:
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    error = attach(sock, program) if program is not None else 0
    sock.bind((device, ETH_P_ALL))
    sock.setblocking(False)
    return sock, error


def drain(sock: socket.socket) -> list[bytes]:
    got = []
    while True:
        try:
            got.append(sock.recv(1 << 16))
        except BlockingIOError:
            return got


def run_in_kernel(pair: Pair, frames: Sequence[tuple[str, bytes]], programs_: Sequence[Program]) -> list[Received]:
    """Each program's result on each frame, as the kernel computes it (see the module's docstring)."""
    received: list[Received] = []
    for start in range(0, len(programs_), PROGRAMS_PER_ROUND):
        chunk = programs_[start : start + PROGRAMS_PER_ROUND]
        with contextlib.ExitStack() as stack, inside(pair.namespace):
            everything, _ = packet_socket(pair.rx, None, auxdata=True)  # bound first: its tap runs last
            stack.callback(everything.close)
            probes: list[list[socket.socket] | None] = []
            for program in chunk:
                sockets, errors = [], set()
                for nibble in range(NIBBLES):
                    sock, error = packet_socket(pair.rx, probe(program, nibble))
                    stack.callback(sock.close)
                    sockets.append(sock)
                    errors.add(error)
                probes.append(None if errors != {0} else sockets)
            senders = {}
            for device in {d for d, _ in frames}:
                sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                stack.callback(sender.close)
                sender.bind((device, 0))
                senders[device] = sender
            for index, (device, frame) in enumerate(frames):
                got = _send_one(senders[device], frame, everything)
                if got is None:  # the receiving kernel dropped it (a tagged runt)
                    for maybe in probes:
                        assert maybe is None or not any(drain(s) for s in maybe)
                    continue
                view, meta = got
                results: list[int | None] = []
                for maybe in probes:
                    if maybe is None:
                        results.append(None)
                        continue
                    lengths = [[len(d) for d in drain(s)] for s in maybe]
                    assert all(len(ls) <= 1 for ls in lengths), f"frame {index} delivered twice: {lengths}"
                    if not any(lengths):
                        results.append(0)
                        continue
                    assert all(lengths), f"frame {index}: only some nibble sockets got it: {lengths}"
                    results.append(sum((ls[0] - 1) << (4 * i) for i, ls in enumerate(lengths)))
                if start == 0:
                    received.append(Received(device, frame, view, meta, results))
                else:
                    match = [r for r in received if r.sent == frame and r.device == device]
                    assert len(match) == 1 and match[0].view == view and match[0].meta == meta
                    match[0].results += results
    return received


def _send_one(sender: socket.socket, frame: bytes, everything: socket.socket) -> tuple[bytes, Meta] | None:
    """Send one frame; the view and metadata the unfiltered socket received, or None if it never came."""
    sender.send(frame)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        ready, _, _ = select.select([everything], [], [], 0.05)
        if not ready:
            continue
        data, ancdata, _, address = everything.recvmsg(1 << 16, socket.CMSG_SPACE(AUXDATA.size))
        assert data in (frame, frame[:12] + frame[16:]), "another frame came out of the pair"
        aux = next(d for level, kind, d in ancdata if level == SOL_PACKET and kind == PACKET_AUXDATA)
        return data, auxdata_meta(aux, address)
    return None


# -- bpfjit's side ----------------------------------------------------------------------------------------
def bpfjit_results(program: Program, received: Sequence[Received]) -> tuple[list[int], list[int]]:
    """(interpreter, JIT) results for every received frame, given its metadata."""
    interpreted = [bpfjit.interpret(program, r.view, dialect="linux", meta=r.meta) for r in received]
    f = bpfjit.compile(program, dialect="linux")
    batch = Batch.from_packets([r.view for r in received])
    columns: dict[str, Any] = {field: [getattr(r.meta, field) for r in received] for field in linux.META_LAYOUT
                               if field != "random"}  # fmt: skip
    jitted = f.run_batch(batch, meta=metadata.meta_array(batch, **columns)).tolist()
    return interpreted, jitted


def compare(programs_: Sequence[Program], received: Sequence[Received], offset: int = 0) -> None:
    """Every program's kernel results against the interpreter's and the JIT's."""
    for i, program in enumerate(programs_):
        kernel = [r.results[offset + i] for r in received]
        assert None not in kernel, f"the kernel refused a program bpfjit accepts:\n{program}"
        interpreted, jitted = bpfjit_results(program, received)
        diffs = [(r, k, a, b) for r, k, a, b in zip(received, kernel, interpreted, jitted, strict=True)
                 if not k == a == b]  # fmt: skip
        if diffs:
            shown = "\n".join(f"kernel {k:#x}, interpret {a:#x}, JIT {b:#x} on {r.view.hex()} ({r.device}, {r.meta})"
                               for r, k, a, b in diffs[:5])  # fmt: skip
            raise AssertionError(f"{len(diffs)} of {len(received)} frames differ for\n{program}\n{shown}")


# -- the fixed programs ------------------------------------------------------------------------------------
def parse(text: str) -> Program:
    return Program.parse(text)


def ld_anc(name: str, code: int = 0x20) -> list[Insn]:
    return [Insn(code, 0, 0, ANC[name])]


RET_A = Insn(0x16)
DETERMINISTIC = ("PROTOCOL", "PKTTYPE", "IFINDEX", "HATYPE", "VLAN_TAG", "VLAN_TAG_PRESENT", "VLAN_TPID", "PAY_OFFSET")
ANCILLARY_PROGRAMS: dict[str, Program] = {
    **{f"ld [{name}]": Program([*ld_anc(name), RET_A]) for name in DETERMINISTIC},
    "ldb [proto]": Program([*ld_anc("PROTOCOL", 0x30), RET_A]),  # the size is ignored
    "ldh [vlan_tci]": Program([*ld_anc("VLAN_TAG", 0x28), RET_A]),
    "ldb [vlan_tci]": Program([*ld_anc("VLAN_TAG", 0x30), RET_A]),
    "ldb [vlanp]": Program([*ld_anc("VLAN_TAG_PRESENT", 0x30), RET_A]),
    "ldh [type]": Program([*ld_anc("PKTTYPE", 0x28), RET_A]),
    "xor_x": Program([Insn(0x20, 0, 0, 2), Insn(0x01, 0, 0, 0x0F0F0F0F), *ld_anc("ALU_XOR_X"), RET_A]),
    "xor_x packet": Program([Insn(0xB1, 0, 0, 14), Insn(0x20, 0, 0, 6), *ld_anc("ALU_XOR_X"), RET_A]),
    **{f"nla A={a} X={x}": Program([Insn(0x00, 0, 0, a), Insn(0x01, 0, 0, x), *ld_anc("NLATTR"), RET_A])
       for a in (0, NLA_START, NLA_START + 8, 17, 200) for x in (1, 2, 3, 7, 9)},
    **{f"nlan A={a} X={x}": Program([Insn(0x00, 0, 0, a), Insn(0x01, 0, 0, x), *ld_anc("NLATTR_NEST"), RET_A])
       for a in (NLA_START + 8 + 8, NLA_START + 8, NLA_START + 12, 0) for x in (5, 7, 1)},
    # A from the packet: where the NLA_PAYLOAD frames keep their nest
    "nla then nlan": Program([Insn(0x00, 0, 0, NLA_START), Insn(0x01, 0, 0, 3), *ld_anc("NLATTR"),
                              Insn(0x01, 0, 0, 7), *ld_anc("NLATTR_NEST"), RET_A]),
}  # fmt: skip
OFFSET_PROGRAMS: dict[str, Program] = {
    "ldb [net+0]": parse(f"ldb [{NET_OFF}]\nret a"),
    "ldb [net+9]": parse(f"ldb [{NET_OFF + 9}]\nret a"),
    "ldh [net+2]": parse(f"ldh [{NET_OFF + 2}]\nret a"),
    "ld [net+16]": parse(f"ld [{NET_OFF + 16}]\nret a"),
    "ld [net+0xfeffc]": parse(f"ld [{NET_OFF + 0xFEFFC}]\nret a"),  # below the ancillary window: out of bounds
    "ldh [ll+12]": parse(f"ldh [{LL_OFF + 12}]\nret a"),
    "ld [ll+0]": parse(f"ld [{LL_OFF}]\nret a"),
    "ldb [ll+15]": parse(f"ldb [{LL_OFF + 15}]\nret a"),
    "ld [0x80000000]": parse("ld [0x80000000]\nret #77"),  # below SKF_LL_OFF: the helper fails
    "ld [0xffdfffff]": parse("ld [0xffdfffff]\nret #77"),
    "msh net": parse(f"ldxb 4*([{NET_OFF}]&0xf)\ntxa\nret a"),
    "msh ll": parse(f"ldxb 4*([{LL_OFF + 14}]&0xf)\ntxa\nret a"),
    "msh 0xfffff000": parse("ldxb 4*([0xfffff000]&0xf)\ntxa\nadd #1\nret a"),  # never ancillary
    "[x+9] x=net": parse(f"ldx #{NET_OFF}\nldb [x + 9]\nret a"),
    "[x+k] ancillary window": parse(f"ldx #{SKF_AD_OFF}\nldb [x + 0]\nret #5"),  # net offset >= 0xff000
    "[x+k] wraps to 14": parse("ldx #0xffffffff\nldb [x + 15]\nret a"),
    "[x+k] wraps to 0": parse("ldx #0x80000000\nld [x + 0x80000000]\nret a"),
    "[x+k] wraps to ll": parse(f"ldx #{LL_OFF + 0x100}\nldh [x + 0xffffff0c]\nret a"),
    "[x+k] data-driven": parse(f"ldb [14]\nadd #{NET_OFF - 0x45}\ntax\nldh [x + 2]\nret a"),
    "[x+k] below ll": parse(f"ldx #{LL_OFF}\nld [x + 0xffffffff]\nret #9"),
    "lsh x 33": parse("ld #1\nldx #33\nlsh x\nret a"),
    "rsh x 32": parse("ld #0x80000000\nldx #32\nrsh x\nret a"),
    "lsh x 63": parse("ld #3\nldx #63\nlsh x\nret a"),
    "rsh x from packet": parse("ldb [17]\ntax\nld [6]\nrsh x\nret a"),
    "lsh x from packet": parse("ldb [15]\ntax\nld [18]\nlsh x\nret a"),
    "len": parse("ld #len\nret a"),
    "ldx len": parse("ldx #len\ntxa\nret a"),
}


@dataclass
class Session:
    pair: Pair
    received: list[Received]
    names: list[str]
    programs: list[Program]


@pytest.fixture(scope="module")
def session() -> Iterator[Session]:
    with veth_pair() as pair:
        fixed = {**ANCILLARY_PROGRAMS, **OFFSET_PROGRAMS}
        property_programs = {name: Program([*ld_anc(name), RET_A]) for name in ("MARK", "QUEUE", "RXHASH", "CPU",
                                                                                  "RANDOM")}  # fmt: skip
        names = [*fixed, *property_programs]
        programs_ = [*fixed.values(), *property_programs.values()]
        received = run_in_kernel(pair, frame_mix(pair.rx_mac, pair.devices), programs_)
        yield Session(pair, received, names, programs_)


# -- the tests ----------------------------------------------------------------------------------------
def test_the_mix_covers_what_the_loads_tell_apart(session: Session) -> None:
    metas = [r.meta for r in session.received]
    assert len(session.received) >= 90
    assert {m.pkttype for m in metas} >= {0, 1, 2, 3}
    assert {m.vlan_tpid for m in metas} >= {0, 0x8100, 0x88A8}
    assert {m.vlan_tci >> 12 for m in metas} >= {0, 1, 2, 0xB}  # PCP and DEI set in the data
    if "tx0.300.100" in session.pair.devices:  # and by the sender's VLAN devices' egress-qos-map
        assert {m.vlan_tci >> 12 for m in metas} >= {5, 3, 6}
    assert {m.protocol for m in metas} >= {0x0800, 0x86DD, 0x0806, 0x8100, 0x9100, 0x88B5}
    assert {m.net_offset for m in metas} == {14}
    assert all(m.ifindex == session.pair.rx_index and m.hatype == 1 for m in metas)
    assert all(len(r.view) >= MIN_VIEW for r in session.received)


@pytest.mark.parametrize("name", [*ANCILLARY_PROGRAMS, *OFFSET_PROGRAMS])
def test_interpreter_and_jit_compute_what_the_kernel_computes(session: Session, name: str) -> None:
    index = session.names.index(name)
    compare([session.programs[index]], session.received, index)


@pytest.mark.parametrize("family", ["ld [", "ldb [", "nla ", "nlan ", "ld [net", "ldh [ll", "[x+k]", "msh",
                                    "lsh x from", "rsh x from", "len"])  # fmt: skip
def test_the_mix_tells_the_values_apart(session: Session, family: str) -> None:
    """Each family of programs gets several different values from the kernel over the mix."""
    values = {r.results[i] for i, name in enumerate(session.names) if name.startswith(family)
              for r in session.received}  # fmt: skip
    assert len(values) >= 3, values


def test_metadata_the_ring_does_not_carry_by_property(session: Session) -> None:
    """MARK, QUEUE, RXHASH, CPU and RANDOM: nothing to compare, but what the kernel says is what they mean."""

    def values(name: str) -> list[int]:
        index = session.names.index(name)
        results = [r.results[index] for r in session.received]
        assert None not in results
        return [v for v in results if v is not None]

    assert set(values("MARK")) == {0}  # nothing marks these packets
    assert all(v < 1 << 16 for v in values("QUEUE"))  # skb->queue_mapping is a u16
    assert all(v < (os.cpu_count() or 1) for v in values("CPU"))
    assert len(set(values("RANDOM"))) > len(session.received) // 2  # prandom: hardly ever the same twice
    # and bpfjit reads each from the metadata it is given, wherever it sits in the record
    for name in ("MARK", "QUEUE", "RXHASH", "CPU", "RANDOM"):
        program = Program([*ld_anc(name), RET_A])
        field = next(row.source for row in ANCILLARY if row.name == name)
        meta = Meta(**{field: 0x1234})  # (queue and cpu are u16 in the record, as in the kernel)
        assert bpfjit.interpret(program, bytes(20), dialect="linux", meta=meta) == 0x1234
        assert bpfjit.compile(program, dialect="linux").call(bytes(20), meta=meta) == 0x1234


def test_pay_offset_differs_where_its_docstring_says(session: Session) -> None:
    """PPPoE sessions and GRE version 1 (PPTP): the kernel's flow dissector goes further than
    `linux.pay_offset`'s subset (documented there); if this fails, the kernel changed or bpfjit grew."""
    program = Program([*ld_anc("PAY_OFFSET"), RET_A])
    received = run_in_kernel(session.pair, [("tx0", PPPOE_IP), ("tx0", PPTP)], [program])
    kernel = [r.results[0] for r in received]
    ours = [bpfjit.interpret(program, r.view, dialect="linux", meta=r.meta) for r in received]
    assert kernel == [14 + 8 + 20 + 8, 14 + 20 + 16 + 20 + 8]  # PPP's IPv4 and UDP headers skipped
    assert ours == [0, 14 + 20]  # unknown ethertype; the GRE header's start


# Random programs: bpfjit's strategy for the linux dialect, minus the loads the kernel does not repeat.
NOT_REPEATABLE = frozenset(ANC[name] for name in ("MARK", "QUEUE", "RXHASH", "CPU", "RANDOM"))


def repeatable(program: Program) -> Program:
    return Program(insn._replace(k=ANC["PROTOCOL"]) if OPCODES[insn.code].kind == "ld_abs" and insn.k in NOT_REPEATABLE
                   else insn for insn in program)  # fmt: skip


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
@given(st.lists(programs(max_insns=24, dialect="linux").map(repeatable), min_size=40, max_size=40))
def test_random_programs_compute_what_the_kernel_computes(session: Session, programs_: list[Program]) -> None:
    frames = [(r.device, r.sent) for r in session.received]
    received = run_in_kernel(session.pair, frames, programs_)
    compare(programs_, received)


# -- the validator -------------------------------------------------------------------------------------------
def kernel_accepts(program: Program) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return attach(sock, program) == 0


def bpfjit_accepts(program: Program) -> bool:
    try:
        bpfjit.validate(program, dialect="linux")
    except ValidationError as exc:
        assert exc.rule == "unknown-ancillary", exc
        return False
    return True


def test_the_validator_agrees_on_every_offset_of_the_ancillary_window() -> None:
    """SKF_AD_OFF + 0 ... + 0xfff with each load size: the 16 known offsets, and nothing else, are valid."""
    disagree = []
    for offset in (*range(0, 0x200), *range(0x200, 0x1000, 7), 0xFFC, 0xFFF):
        for code in (0x20, 0x28, 0x30):
            program = Program([Insn(code, 0, 0, SKF_AD_OFF + offset), RET_A])
            if bpfjit_accepts(program) != kernel_accepts(program):
                disagree.append((hex(code), offset))
    assert not disagree


window_offsets = st.one_of(
    st.integers(0x80000000, 0xFFFFFFFF), st.integers(NET_OFF, NET_OFF + 64), st.integers(LL_OFF, LL_OFF + 64),
    st.integers(SKF_AD_OFF, SKF_AD_OFF + 80), st.sampled_from([row.k for row in ANCILLARY]),
)


@given(st.sampled_from([0x20, 0x28, 0x30, 0x40, 0x48, 0x50, 0xB1]), window_offsets)
def test_the_validator_agrees_on_negative_offsets(code: int, k: int) -> None:
    """ABS loads in the windows (ancillary only for ABS), IND and MSH at any k: bpfjit accepts what Linux does."""
    program = Program([Insn(code, 0, 0, k), RET_A])
    assert bpfjit_accepts(program) == kernel_accepts(program), program
