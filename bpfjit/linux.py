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

from typing import NamedTuple

SKF_AD_OFF = 0xFFFFF000  # -0x1000 as an unsigned k
SKF_NET_OFF = -0x100000
SKF_LL_OFF = -0x200000
SKF_AD_MAX = 64  # what getsockopt(SO_BPF_EXTENSIONS) reports: the end of the ancillary area


class Ancillary(NamedTuple):
    """One ancillary load `ld [SKF_AD_OFF + offset]`.

    source: "meta" (A <- the metadata word at `offset` of the packet's META record), or the name of
            what the dialect computes: "nlattr", "nlattr_nest", "xor_x", "pay_offset".
    """

    offset: int
    name: str  # SKF_AD_<name>
    tcpdump: str  # `ld [<tcpdump>]` in tcpdump -d (libpcap's bpf_image.c)
    asm: str  # `ld #<asm>` in the kernel's bpf_asm (tools/bpf/bpf_exp.l)
    source: str = "meta"

    @property
    def k(self) -> int:
        return SKF_AD_OFF + self.offset


ANCILLARY: tuple[Ancillary, ...] = (
    Ancillary(0, "PROTOCOL", "proto", "proto"),
    Ancillary(4, "PKTTYPE", "type", "type"),
    Ancillary(8, "IFINDEX", "ifidx", "ifidx"),
    Ancillary(12, "NLATTR", "nla", "nla", "nlattr"),
    Ancillary(16, "NLATTR_NEST", "nlan", "nlan", "nlattr_nest"),
    Ancillary(20, "MARK", "mark", "mark"),
    Ancillary(24, "QUEUE", "queue", "queue"),
    Ancillary(28, "HATYPE", "hatype", "hatype"),
    Ancillary(32, "RXHASH", "rxhash", "rxhash"),
    Ancillary(36, "CPU", "cpu", "cpu"),
    Ancillary(40, "ALU_XOR_X", "xor_x", "xor_x", "xor_x"),
    Ancillary(44, "VLAN_TAG", "vlan_tci", "vlan_tci"),
    Ancillary(48, "VLAN_TAG_PRESENT", "vlanp", "vlan_pr"),
    Ancillary(52, "PAY_OFFSET", "poff", "poff", "pay_offset"),
    Ancillary(56, "RANDOM", "random", "rand"),
    Ancillary(60, "VLAN_TPID", "vlan_tpid", "vlan_tpid"),
)
ANCILLARY_BY_K: dict[int, Ancillary] = {row.k: row for row in ANCILLARY}


def ancillary(k: int) -> Ancillary | None:
    """The ancillary load at `k`, or None (also for k in the window that names no load)."""
    return ANCILLARY_BY_K.get(k)
