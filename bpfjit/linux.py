"""Facts of the Linux socket-filter dialect (DIALECTS.md A): ancillary loads, negative offsets, metadata.

The kernel reads per-packet metadata through `ld [k]` at k = SKF_AD_OFF + off (`SKF_AD_*`, the load
size ignored) and reads relative to the network or link-layer header at negative offsets
(`SKF_NET_OFF`, `SKF_LL_OFF`). `ANCILLARY` is the one table of the 16 ancillary loads: the kernel's
name, tcpdump's (`bpf_image.c`) and bpf_asm's spelling, and where the value comes from; every stage
(validator, text, interpreter, lowering) reads it.

bpfjit's input in this dialect is the SOCK_RAW view of a packet: the data starts at the link-layer
header (so `SKF_LL_OFF + k` reads byte k), the network header starts `net_offset` bytes in.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

ByteOrder = Literal["little", "big"]

SKF_AD_OFF = 0xFFFFF000  # -0x1000 as an unsigned k
SKF_NET_OFF = -0x100000
SKF_LL_OFF = -0x200000
SKF_AD_MAX = 64  # what getsockopt(SO_BPF_EXTENSIONS) reports: the end of the ancillary area


class Ancillary(NamedTuple):
    """One ancillary load `ld [SKF_AD_OFF + offset]`.

    source: the `Meta` field A is loaded from (its word at `offset` of the 64-byte metadata record),
            or one of COMPUTED: what the dialect computes from the packet and the registers.
    """

    offset: int
    name: str  # SKF_AD_<name>
    tcpdump: str  # `ld [<tcpdump>]` in tcpdump -d (libpcap's bpf_image.c)
    asm: str  # `ld #<asm>` in the kernel's bpf_asm (tools/bpf/bpf_exp.l); "" where it has none
    source: str

    @property
    def k(self) -> int:
        return SKF_AD_OFF + self.offset


ANCILLARY: tuple[Ancillary, ...] = (
    Ancillary(0, "PROTOCOL", "proto", "proto", "protocol"),
    Ancillary(4, "PKTTYPE", "type", "type", "pkttype"),
    Ancillary(8, "IFINDEX", "ifidx", "ifidx", "ifindex"),
    Ancillary(12, "NLATTR", "nla", "nla", "nlattr"),
    Ancillary(16, "NLATTR_NEST", "nlan", "nlan", "nlattr_nest"),
    Ancillary(20, "MARK", "mark", "mark", "mark"),
    Ancillary(24, "QUEUE", "queue", "queue", "queue"),
    Ancillary(28, "HATYPE", "hatype", "hatype", "hatype"),
    Ancillary(32, "RXHASH", "rxhash", "rxhash", "rxhash"),
    Ancillary(36, "CPU", "cpu", "cpu", "cpu"),
    Ancillary(40, "ALU_XOR_X", "xor_x", "", "xor_x"),  # bpf_asm has no keyword for it
    Ancillary(44, "VLAN_TAG", "vlan_tci", "vlan_tci", "vlan_tci"),
    Ancillary(48, "VLAN_TAG_PRESENT", "vlanp", "vlan_pr", "vlan_present"),
    Ancillary(52, "PAY_OFFSET", "poff", "poff", "pay_offset"),
    Ancillary(56, "RANDOM", "random", "rand", "random"),
    Ancillary(60, "VLAN_TPID", "vlan_tpid", "vlan_tpid", "vlan_tpid"),
)
ANCILLARY_BY_K: dict[int, Ancillary] = {row.k: row for row in ANCILLARY}


def ancillary(k: int) -> Ancillary | None:
    """The ancillary load at `k`, or None (also for k in the window that names no load)."""
    return ANCILLARY_BY_K.get(k)


COMPUTED = frozenset({"nlattr", "nlattr_nest", "xor_x", "pay_offset"})  # the other sources are Meta fields


# -- packet metadata ------------------------------------------------------------------------------
class Meta(NamedTuple):
    """What the kernel knows about a packet beyond its bytes (`skb` fields), for one linux-dialect run.

    Defaults describe an Ethernet frame received for this host: `protocol` None reads the ethertype
    at bytes 12-13 (0 for a shorter packet), as `skb->protocol` is for a frame whose outer VLAN tag
    the kernel has already moved into `vlan_tci`. `net_offset` is where the network header starts
    (`SKF_NET_OFF` reads from there). `random` is what `ld [random]` reads (the kernel's prandom:
    give your own, e.g. `bpfjit.meta.meta_array(n, seed=...)`)."""

    protocol: int | None = None  # ethertype, host order (SKF_AD_PROTOCOL)
    pkttype: int = 0  # PACKET_HOST 0, BROADCAST 1, MULTICAST 2, OTHERHOST 3, OUTGOING 4
    ifindex: int = 0
    net_offset: int = 14
    mark: int = 0
    queue: int = 0
    hatype: int = 1  # ARPHRD_ETHER
    rxhash: int = 0
    cpu: int = 0
    vlan_tci: int = 0  # the whole TCI: PCP, DEI and VID
    vlan_present: int = 0
    random: int = 0
    vlan_tpid: int = 0


# (byte offset, size) of each Meta field in the native 32-byte record, each as wide as the kernel's
# field (skb->protocol, vlan_tci, vlan_proto, dev->type, the network header offset, queue_mapping:
# u16; pkt_type, VLAN present: u8; the rest u32; the CPU number as u16). Two records share a cache
# line: a batch's metadata is a second stream of memory beside its packets, and its size is what a
# program reading metadata pays (bench/linux_bench.py). The fields filters read most come first.
META_LAYOUT: dict[str, tuple[int, int]] = {
    "protocol": (0, 2), "vlan_tci": (2, 2), "vlan_tpid": (4, 2), "hatype": (6, 2), "net_offset": (8, 2),
    "queue": (10, 2), "cpu": (12, 2), "pkttype": (14, 1), "vlan_present": (15, 1),
    "ifindex": (16, 4), "mark": (20, 4), "rxhash": (24, 4), "random": (28, 4),
}  # fmt: skip
META_SIZE = 32
DEFAULT_META = Meta()
ETH_P_8021Q, ETH_P_8021AD, ETH_P_IP, ETH_P_IPV6, ETH_P_ARP, ETH_P_RARP = 0x8100, 0x88A8, 0x0800, 0x86DD, 0x0806, 0x8035


def resolved(meta: Meta | None, packet: bytes | memoryview) -> Meta:
    """`meta` (or the defaults) with `protocol` derived from the packet where it is None, and every
    field cut to its width in the record (`META_LAYOUT`), as native code reads it."""
    meta = DEFAULT_META if meta is None else meta
    if meta.protocol is None:
        meta = meta._replace(protocol=int.from_bytes(packet[12:14], "big") if len(packet) >= 14 else 0)
    return Meta(**{field: value & ((1 << 8 * META_LAYOUT[field][1]) - 1) for field, value in meta._asdict().items()})


# -- offsets ----------------------------------------------------------------------------------------
def data_offset(offset: int, net_offset: int) -> int | None:
    """Where a load at the 32-bit `offset` (read as signed, as the kernel's load helpers take an int)
    reads in the packet's data, or None when the kernel's helper fails (the program returns 0):
    >= 0 plainly; [SKF_NET_OFF, 0) from the network header; [SKF_LL_OFF, SKF_NET_OFF) from the
    link-layer header, which is the data's start in bpfjit's SOCK_RAW view; below that, nowhere."""
    signed = offset - (1 << 32) if offset & 0x80000000 else offset
    if signed >= 0:
        return signed
    if signed >= SKF_NET_OFF:
        return net_offset + signed - SKF_NET_OFF
    if signed >= SKF_LL_OFF:
        return signed - SKF_LL_OFF
    return None


# -- computed ancillary loads -------------------------------------------------------------------------
NLA_HDRLEN = 4
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)


def _nla_find(data: bytes | memoryview, start: int, length: int, attrtype: int, byteorder: ByteOrder) -> int:
    """nla_find over data[start:start+length]: the offset of the first attribute of `attrtype`, else 0.
    Attributes are {u16 nla_len; u16 nla_type} in the host's byte order, 4-byte aligned."""
    pos, remaining = start, length
    while remaining >= NLA_HDRLEN:
        nla_len = int.from_bytes(data[pos : pos + 2], byteorder)
        if nla_len < NLA_HDRLEN or nla_len > remaining:
            break
        if int.from_bytes(data[pos + 2 : pos + 4], byteorder) & NLA_TYPE_MASK == attrtype:
            return pos
        step = (nla_len + 3) & ~3
        pos, remaining = pos + step, remaining - step
    return 0


def nlattr(data: bytes | memoryview, a: int, x: int, byteorder: ByteOrder) -> int:
    """SKF_AD_NLATTR (bpf_skb_get_nlattr): the first attribute of type X from offset A, else 0."""
    length = len(data)
    if length < NLA_HDRLEN or a > length - NLA_HDRLEN:
        return 0
    return _nla_find(data, a, length - a, x, byteorder)


def nlattr_nest(data: bytes | memoryview, a: int, x: int, byteorder: ByteOrder) -> int:
    """SKF_AD_NLATTR_NEST (bpf_skb_get_nlattr_nest): the first attribute of type X inside the nest
    attribute at offset A (which must itself be whole), else 0."""
    length = len(data)
    if length < NLA_HDRLEN or a > length - NLA_HDRLEN:
        return 0
    nest_len = int.from_bytes(data[a : a + 2], byteorder)
    if nest_len < NLA_HDRLEN or nest_len > length - a:
        return 0
    return _nla_find(data, a + NLA_HDRLEN, nest_len - NLA_HDRLEN, x, byteorder)


# L4 header length the kernel's __skb_get_poff adds per IP protocol (TCP: its data offset, at least 20).
IPPROTO_TCP = 6
L4_HEADER = {17: 8, 136: 8, 1: 8, 58: 8, 2: 8, 33: 12, 132: 12}  # UDP UDPLITE ICMP ICMPV6 IGMP DCCP SCTP
IPV6_OPTIONS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
IPV6_FRAGMENT = 44
IPPROTO_GRE = 47
ETH_P_MPLS_UC, ETH_P_MPLS_MC, ETH_P_TEB = 0x8847, 0x8848, 0x6558
GRE_CSUM, GRE_ROUTING, GRE_KEY, GRE_SEQ, GRE_VERSION = 0x8000, 0x4000, 0x2000, 0x1000, 0x0007  # flags, host order
MAX_HEADERS = 15  # MAX_FLOW_DISSECT_HDRS: the kernel stops dissecting after this many headers


def pay_offset(data: bytes | memoryview, protocol: int, net_offset: int) -> int:
    """SKF_AD_PAY_OFFSET: where the transport payload starts (skb_get_poff), by the subset of the
    kernel's flow dissector this dialect implements: VLAN tags in the data (802.1Q/802.1ad), IPv4
    (IP-in-IP and IPv6-in-IPv4 followed), IPv6 with hop-by-hop, routing, destination-options and
    fragment headers, GRE version 0 (checksum, key, sequence; Ethernet inside followed), MPLS (the
    basic keys stop after the first label: its end), ARP/RARP; then TCP (its data offset), UDP,
    UDP-Lite, ICMP, ICMPv6, IGMP, DCCP, SCTP. 0 when dissection fails (a truncated or unknown network
    header); the transport header's start for non-first fragments and other IP protocols.

    Checked against Linux 6.18 (`tests/test_linux_kernel.py`, the kernel's own `ld [poff]`). Not
    followed, where the kernel goes further (its values differ on these frames): PPPoE sessions (the
    kernel reads the PPP protocol and dissects IP/IPv6/MPLS inside), GRE version 1 (PPTP: the kernel
    follows PPP inside; here the GRE header's start), and the kernel's other link-layer cases (TIPC,
    FCoE, batman-adv, PTP, HSR/PRP, ...; here 0); the kernel may also run a BPF flow dissector
    attached to the namespace instead. Written as the kernel's state machine (`__skb_flow_dissect`:
    proto_again, ip_proto_again, at most MAX_HEADERS repeats), which `lower_linux.emit_pay_offset`
    builds in IR block for block."""
    length = len(data)

    def half(at: int) -> int:
        return int.from_bytes(data[at : at + 2], "big")

    nhoff, proto, ip_proto, repeats = net_offset, protocol, -1, 0
    state = "proto"
    while state != "good":
        if state == "proto":
            if proto in (ETH_P_8021Q, ETH_P_8021AD):
                if nhoff + 4 > length:
                    return 0
                proto, nhoff = half(nhoff + 2), nhoff + 4
                repeats += 1
                state = "proto" if repeats <= MAX_HEADERS else "good"
            elif proto == ETH_P_IP:
                if nhoff + 20 > length or data[nhoff] & 0xF < 5:
                    return 0
                ip_proto, frag = data[nhoff + 9], half(nhoff + 6)
                nhoff += (data[nhoff] & 0xF) * 4
                if frag & 0x1FFF:  # a fragment after the first: no transport header here
                    return min(nhoff, length)
                state = "good" if frag & 0x2000 else "ip_proto"  # a first fragment: stop at its header
            elif proto == ETH_P_IPV6:
                if nhoff + 40 > length:
                    return 0
                ip_proto, nhoff = data[nhoff + 6], nhoff + 40
                state = "ip_proto"
            elif proto in (ETH_P_MPLS_UC, ETH_P_MPLS_MC):  # no MPLS key asked for: past one label, done
                nhoff += 4
                state = "good"
            elif proto in (ETH_P_ARP, ETH_P_RARP):
                state = "good"
            else:
                return 0
        else:  # ip_proto
            v6 = proto == ETH_P_IPV6
            if v6 and ip_proto in IPV6_OPTIONS:
                if nhoff + 2 > length:
                    return 0
                ip_proto, nhoff = data[nhoff], nhoff + (data[nhoff + 1] + 1) * 8
            elif v6 and ip_proto == IPV6_FRAGMENT:
                if nhoff + 8 > length:
                    return 0
                ip_proto, offset, nhoff = data[nhoff], half(nhoff + 2) & 0xFFF8, nhoff + 8
                if offset:
                    return min(nhoff, length)
                state = "good"  # the first fragment (no FLOW_DISSECTOR_F_PARSE_1ST_FRAG)
                continue
            elif ip_proto in (4, 41):  # IP-in-IP, IPv6-in-IP: dissect the inner header
                proto = ETH_P_IP if ip_proto == 4 else ETH_P_IPV6
                state = "proto"
            elif ip_proto == IPPROTO_GRE:  # __skb_flow_dissect_gre, version 0
                if nhoff + 4 > length:
                    return 0
                flags, inner = half(nhoff), half(nhoff + 2)
                if flags & (GRE_ROUTING | GRE_VERSION):  # routing, or not version 0: stop at GRE
                    state = "good"
                    continue
                offset = 8 if flags & GRE_CSUM else 4
                if flags & GRE_KEY:
                    if nhoff + offset + 4 > length:
                        return 0
                    offset += 4
                if flags & GRE_SEQ:
                    offset += 4
                if inner == ETH_P_TEB:  # Ethernet inside: its type is the next protocol
                    if nhoff + offset + 14 > length:
                        return 0
                    inner, offset = half(nhoff + offset + 12), offset + 14
                proto, nhoff = inner, nhoff + offset
                state = "proto"
            else:
                state = "good"
                continue
            repeats += 1
            if repeats > MAX_HEADERS:
                state = "good"
    thoff = min(nhoff, length)
    if ip_proto == IPPROTO_TCP:
        if thoff + 13 > length:
            return thoff
        return thoff + max(20, (data[thoff + 12] & 0xF0) >> 2)
    return thoff + L4_HEADER.get(ip_proto, 0)
