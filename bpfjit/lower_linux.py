"""Lowering of the linux dialect's loads: ancillary data, negative offsets, `[x + k]` that wraps.

`lower.Lowering` hands a load here when its dialect has signed offsets (`Dialect.offsets`) and the
load is one the pcap dialect would read plainly no differently only for k < 2^31: `ld [k]` with
k >= 2^31, `ldxb 4*([k]&0xf)` with k >= 2^31, and every `[x + k]`. The facts are `bpfjit.linux`'s;
the interpreter (`interpret.Machine.offset`, `.ancillary`) is the reference this code is tested
against.

- Metadata words come from the packet's 64-byte record (`abi.PACKETS`' `meta`), read only by the
  loads that name them; a NULL record reads as `linux.Meta()`'s defaults, so a program reading no
  metadata costs nothing and `f(packet)` needs none.
- PAY_OFFSET and NLATTR/NLATTR_NEST are functions of the module (`abi.PAY_OFFSET`, `abi.NLATTR`),
  emitted once per module and only when a program uses them.
- `[x + k]` stays on its pcap-shaped fast path while X + k, wrapped to 32 bits, is below 2^31; the
  windows below 0 (network header, link-layer header) are a cold path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from llvmlite import ir

from . import abi, linux
from .opcodes import OPCODES
from .program import Insn, Program

if TYPE_CHECKING:
    from .lower import Lowering

I1, I8, I16, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
NULL = ir.Constant(I8.as_pointer(), None)
PAY_OFFSET_NAME = "bpfjit_linux_pay_offset"
NLATTR_NAME = "bpfjit_linux_nlattr"
SIGNED = 0x80000000  # offsets at or above this are negative as the kernel's int
NET_BASE = linux.SKF_NET_OFF & 0xFFFFFFFF
LL_BASE = linux.SKF_LL_OFF & 0xFFFFFFFF
UNLIKELY = (1, 2000)


def _const(value: int, ty: ir.IntType = I32) -> ir.Constant:
    return ir.Constant(ty, value)


# -- metadata ------------------------------------------------------------------------------------------
def reads_metadata(program: Program) -> bool:
    """Whether a linux-dialect program may read its packets' metadata: a metadata load, PAY_OFFSET,
    a network-relative offset, or any `[x + k]` (which may land in the network window)."""
    for insn in program:
        kind = OPCODES[insn.code].kind
        if kind == "ld_ind":
            return True
        if kind in ("ld_abs", "ldx_msh") and insn.k >= NET_BASE:
            row = linux.ancillary(insn.k) if kind == "ld_abs" else None
            if row is None or row.source not in ("xor_x", "nlattr", "nlattr_nest"):
                return True
    return False


def meta_word(lo: Lowering, field: str) -> ir.Value:
    """The packet's metadata field (`linux.Meta`) as a u32: its record's word, or the default."""
    if lo.meta is None:
        return _default_word(lo, field)
    b = lo.builder
    offset, size = linux.META_LAYOUT[field]
    width = ir.IntType(8 * size)
    pointer = b.bitcast(b.gep(lo.meta, [_const(offset, I64)], inbounds=True), width.as_pointer())
    value = b.load(pointer, name=field, align=size)
    return value if size == 4 else b.zext(value, I32)


def _default_word(lo: Lowering, field: str) -> ir.Value:
    """`linux.Meta()`'s value of a field; `protocol` is the ethertype at bytes 12-13 (0 if shorter)."""
    if field != "protocol":
        return _const(getattr(linux.DEFAULT_META, field))
    b = lo.builder
    long_enough = b.icmp_unsigned(">=", lo.caplen, _const(14), name="has_ethertype")
    with b.if_else(long_enough, likely=True) as (then, otherwise):
        with then:
            ethertype = lo.load_packet(_const(12, I64), 2)
            loaded_block = b.block
        with otherwise:
            short_block = b.block
    protocol = b.phi(I32, name="protocol")
    protocol.add_incoming(ethertype, loaded_block)
    protocol.add_incoming(_const(0), short_block)
    return protocol


# -- loads ---------------------------------------------------------------------------------------------
def checked_load(lo: Lowering, offset64: ir.Value, width: int) -> ir.Value:
    """P[offset:width], after checking offset + width <= caplen at run time (else return 0)."""
    b = lo.builder
    end = b.add(offset64, _const(width, I64), name="end")
    lo.check(b.icmp_unsigned("<=", end, lo.caplen64, name="in_packet"), "win")
    return lo.load_packet(offset64, width)


def _window(lo: Lowering, k: int) -> ir.Value | None:
    """The data offset of a constant negative offset k (as u32): network- or link-relative, or None."""
    if k >= NET_BASE:
        return lo.builder.add(lo.builder.zext(meta_word(lo, "net_offset"), I64), _const(k - NET_BASE, I64), name="net")
    if k >= LL_BASE:
        return _const(k - LL_BASE, I64)
    return None


def _load_at(lo: Lowering, k: int, width: int) -> ir.Value | None:
    """A load at the constant negative offset k, or None after branching to reject (it always fails)."""
    offset = _window(lo, k)
    if offset is None:
        lo.builder.branch(lo.reject)
        lo.builder.position_at_end(lo.function.append_basic_block(f"{lo.builder.block.name}.fault"))
        return None
    return checked_load(lo, offset, width)


def ld_abs(lo: Lowering, insn: Insn) -> None:
    """`ld [k]` for k >= 2^31: an ancillary load (any size), else a network/link-relative load."""
    row = linux.ancillary(insn.k)
    if row is None:
        value = _load_at(lo, insn.k, OPCODES[insn.code].width)
        if value is not None:
            lo.write(lo.a, value)
        return
    lo.write(lo.a, ancillary(lo, row))


def ldx_msh(lo: Lowering, insn: Insn) -> None:
    """`ldxb 4*([k]&0xf)` for k >= 2^31 (never ancillary: the kernel reads it as a network offset)."""
    byte = _load_at(lo, insn.k, 1)
    if byte is not None:
        b = lo.builder
        lo.write(lo.x, b.shl(b.and_(byte, _const(0xF)), _const(2)))


def ld_ind(lo: Lowering, insn: Insn) -> None:
    """`ld [x + k]`: X + k wraps to 32 bits and is read as signed (DIALECTS.md A.3)."""
    b = lo.builder
    width = OPCODES[insn.code].width
    offset = b.add(lo.read(lo.x), _const(insn.k), name="off")  # i32: wraps
    plain = b.icmp_unsigned("<", offset, _const(SIGNED), name="nonnegative")
    with b.if_else(plain, likely=True) as (then, otherwise):
        with then:
            direct = b.zext(offset, I64)
            direct_block = b.block
        with otherwise:
            net = b.add(b.zext(meta_word(lo, "net_offset"), I64), b.zext(b.sub(offset, _const(NET_BASE)), I64))
            link = b.zext(b.sub(offset, _const(LL_BASE)), I64)
            relative = b.select(b.icmp_unsigned(">=", offset, _const(NET_BASE)), net, link, name="relative")
            # below SKF_LL_OFF the kernel's helper fails: an offset no packet reaches
            in_window = b.icmp_unsigned(">=", offset, _const(LL_BASE))
            windowed = b.select(in_window, relative, _const(1 << 40, I64), name="windowed")
            window_block = b.block
    data_offset = b.phi(I64, name="data_off")
    data_offset.add_incoming(direct, direct_block)
    data_offset.add_incoming(windowed, window_block)
    lo.write(lo.a, checked_load(lo, data_offset, width))


def ancillary(lo: Lowering, row: linux.Ancillary) -> ir.Value:
    """A <- the ancillary value of `row` (DIALECTS.md A.2)."""
    b = lo.builder
    if row.source == "xor_x":
        return b.xor(lo.read(lo.a), lo.read(lo.x))
    module = lo.function.module
    if row.source in ("nlattr", "nlattr_nest"):
        nest = _const(int(row.source == "nlattr_nest"))
        return b.call(emit_nlattr(module), [lo.packet, lo.caplen, lo.read(lo.a), lo.read(lo.x), nest], name="nla")
    if row.source == "pay_offset":
        protocol, net_offset = meta_word(lo, "protocol"), meta_word(lo, "net_offset")
        return b.call(emit_pay_offset(module), [lo.packet, lo.caplen, protocol, net_offset], name="poff")
    return meta_word(lo, row.source)


def _emit_gre(b: ir.IRBuilder, fn: ir.Function, read: _Reader, length: ir.Value, nhoff: ir.Value, proto: ir.Value,
              offset: ir.Value, blk: dict[str, ir.Block], need: Callable[[int, ir.Block], None],
              again: Callable[[ir.Block], None]) -> None:  # fmt: skip
    """The `gre` state of `linux.pay_offset` (__skb_flow_dissect_gre, version 0): on to the inner protocol.
    `offset` is an entry-block alloca (the GRE header's length so far)."""
    names = ("gre_ok", "gre_v0", "gre_key", "gre_key_ok", "gre_seq", "gre_teb", "gre_teb_ok", "gre_done")
    g = {n: fn.append_basic_block(n) for n in names}
    b.position_at_end(blk["gre"])
    need(4, g["gre_ok"])
    b.position_at_end(g["gre_ok"])
    at = b.load(nhoff)
    flags = read.u16(at, big_endian=True)
    inner = read.u16(b.add(at, _const(2, I64)), big_endian=True)
    stop = b.icmp_unsigned("!=", b.and_(flags, _const(linux.GRE_ROUTING | linux.GRE_VERSION)), _const(0))
    b.cbranch(stop, blk["good"], g["gre_v0"])  # routing, or not version 0: stop at GRE

    def flag(bit: int) -> ir.Value:
        return b.icmp_unsigned("!=", b.and_(flags, _const(bit)), _const(0))

    b.position_at_end(g["gre_v0"])
    b.store(b.select(flag(linux.GRE_CSUM), _const(8, I64), _const(4, I64)), offset)
    b.store(inner, proto)
    b.cbranch(flag(linux.GRE_KEY), g["gre_key"], g["gre_seq"])
    b.position_at_end(g["gre_key"])
    key_end = b.add(b.add(at, b.load(offset)), _const(4, I64))
    b.cbranch(b.icmp_unsigned("<=", key_end, length), g["gre_key_ok"], blk["fail"])
    b.position_at_end(g["gre_key_ok"])
    b.store(b.add(b.load(offset), _const(4, I64)), offset)
    b.branch(g["gre_seq"])
    b.position_at_end(g["gre_seq"])
    b.store(b.add(b.load(offset), b.select(flag(linux.GRE_SEQ), _const(4, I64), _const(0, I64))), offset)
    teb = b.icmp_unsigned("==", inner, _const(linux.ETH_P_TEB))
    b.cbranch(teb, g["gre_teb"], g["gre_done"])
    b.position_at_end(g["gre_teb"])  # Ethernet inside: its type is the next protocol
    ethernet = b.add(at, b.load(offset))
    b.cbranch(b.icmp_unsigned("<=", b.add(ethernet, _const(14, I64)), length), g["gre_teb_ok"], blk["fail"])
    b.position_at_end(g["gre_teb_ok"])
    b.store(read.u16(b.add(ethernet, _const(12, I64)), big_endian=True), proto)
    b.store(b.add(b.load(offset), _const(14, I64)), offset)
    b.branch(g["gre_done"])
    b.position_at_end(g["gre_done"])
    b.store(b.add(at, b.load(offset)), nhoff)
    again(blk["proto"])


# -- computed loads as functions ------------------------------------------------------------------------
class _Reader:
    """Loads from a helper's packet argument (the caller has checked the bounds)."""

    def __init__(self, b: ir.IRBuilder, packet: ir.Value):
        self.b, self.packet = b, packet

    def u8(self, offset: ir.Value) -> ir.Value:
        return self.b.zext(self.b.load(self.b.gep(self.packet, [offset], inbounds=True), align=1), I32)

    def u16(self, offset: ir.Value, big_endian: bool) -> ir.Value:
        b = self.b
        raw = b.load(b.bitcast(b.gep(self.packet, [offset], inbounds=True), I16.as_pointer()), align=1)
        if big_endian != (sys.byteorder == "big"):
            module = b.function.module
            bswap = module.globals.get("llvm.bswap.i16") or ir.Function(module, ir.FunctionType(I16, [I16]),
                                                                       "llvm.bswap.i16")  # fmt: skip
            raw = b.call(bswap, [raw])
        return b.zext(raw, I32)


def _helper(module: ir.Module, name: str, signature: abi.Signature) -> tuple[ir.Function, bool]:
    existing = module.globals.get(name)
    if existing is not None:
        return existing, False
    fn = signature.declare(module, name)
    fn.linkage = "internal"
    return fn, True


def emit_nlattr(module: ir.Module) -> ir.Function:
    """`abi.NLATTR`: bpf_skb_get_nlattr (nest 0) / bpf_skb_get_nlattr_nest (nest 1), as `linux.nlattr`."""
    fn, new = _helper(module, NLATTR_NAME, abi.NLATTR)
    if not new:
        return fn
    arg = abi.args(fn)
    blocks = {n: fn.append_basic_block(n) for n in ("entry", "nest", "flat", "loop", "attr", "check_type", "next",
                                                     "found", "none")}  # fmt: skip
    b = ir.IRBuilder(blocks["entry"])
    read = _Reader(b, arg["P"])
    length = b.zext(arg["caplen"], I64)
    a = b.zext(arg["a"], I64)
    pos = b.alloca(I64, name="pos")
    remaining = b.alloca(I64, name="remaining")  # signed: nla_next may take it below 0
    ok = b.and_(b.icmp_unsigned(">=", length, _const(4, I64)), b.icmp_unsigned("<=", a, b.sub(length, _const(4, I64))))
    b.cbranch(ok, blocks["nest"], blocks["none"])
    b.position_at_end(blocks["nest"])
    b.store(a, pos)
    b.store(b.sub(length, a), remaining)
    nest_len = b.zext(read.u16(a, big_endian=False), I64)
    whole = b.and_(b.icmp_unsigned(">=", nest_len, _const(4, I64)), b.icmp_unsigned("<=", nest_len, b.sub(length, a)))
    is_nest = b.icmp_unsigned("!=", arg["nest"], _const(0))
    b.cbranch(is_nest, blocks["flat"], blocks["loop"])
    b.position_at_end(blocks["flat"])  # the nest: its payload is the area searched
    b.store(b.add(a, _const(4, I64)), pos)
    b.store(b.sub(nest_len, _const(4, I64)), remaining)
    b.cbranch(whole, blocks["loop"], blocks["none"])
    b.position_at_end(blocks["loop"])
    here, left = b.load(pos), b.load(remaining)
    b.cbranch(b.icmp_signed(">=", left, _const(4, I64)), blocks["attr"], blocks["none"])
    b.position_at_end(blocks["attr"])
    nla_len = b.zext(read.u16(here, big_endian=False), I64)
    fits = b.and_(b.icmp_unsigned(">=", nla_len, _const(4, I64)), b.icmp_signed("<=", nla_len, left))
    b.cbranch(fits, blocks["check_type"], blocks["none"])
    b.position_at_end(blocks["check_type"])
    attrtype = b.and_(read.u16(b.add(here, _const(2, I64)), big_endian=False), _const(linux.NLA_TYPE_MASK))
    b.cbranch(b.icmp_unsigned("==", attrtype, arg["x"]), blocks["found"], blocks["next"])
    b.position_at_end(blocks["next"])
    step = b.and_(b.add(nla_len, _const(3, I64)), _const(~3 & 0xFFFFFFFFFFFFFFFF, I64))
    b.store(b.add(here, step), pos)
    b.store(b.sub(left, step), remaining)
    b.branch(blocks["loop"])
    b.position_at_end(blocks["found"])
    b.ret(b.trunc(here, I32))
    b.position_at_end(blocks["none"])
    b.ret(_const(0))
    return fn


def emit_pay_offset(module: ir.Module) -> ir.Function:
    """`abi.PAY_OFFSET`: the flow-dissector subset of `linux.pay_offset`, state for state."""
    fn, new = _helper(module, PAY_OFFSET_NAME, abi.PAY_OFFSET)
    if not new:
        return fn
    arg = abi.args(fn)
    names = ("entry", "proto", "vlan", "ipv4", "ipv4_ok", "ipv4_whole", "ipv6", "ip_proto", "v6", "options",
             "not_options", "fragment", "not_v6_ext", "encap", "not_encap", "mpls", "gre", "good", "tcp",
             "tcp_doff", "fail", "stop")  # fmt: skip
    blk = {n: fn.append_basic_block(n) for n in names}
    b = ir.IRBuilder(blk["entry"])
    read = _Reader(b, arg["P"])
    length = b.zext(arg["caplen"], I64)
    nhoff, proto = b.alloca(I64, name="nhoff"), b.alloca(I32, name="proto_v")
    ip_proto, repeats = b.alloca(I32, name="ip_proto_v"), b.alloca(I32, name="repeats")
    gre_offset = b.alloca(I64, name="gre_off")
    b.store(b.zext(arg["net_offset"], I64), nhoff)
    b.store(arg["protocol"], proto)
    b.store(_const(0xFFFFFFFF), ip_proto)
    b.store(_const(0), repeats)
    b.branch(blk["proto"])

    def need(size: int, then: ir.Block) -> None:
        """Continue to `then` when nhoff + size <= length, else dissection fails (0)."""
        b.cbranch(b.icmp_unsigned("<=", b.add(b.load(nhoff), _const(size, I64)), length), then, blk["fail"])

    def again(state: ir.Block) -> None:
        """The kernel's skb_flow_dissect_allowed: at most MAX_HEADERS repeats, then out_good."""
        count = b.add(b.load(repeats), _const(1))
        b.store(count, repeats)
        b.cbranch(b.icmp_unsigned("<=", count, _const(linux.MAX_HEADERS)), state, blk["good"])

    def stop_at(offset: ir.Value) -> None:
        """Return min(offset, length): a non-first fragment's transport header start."""
        b.store(offset, nhoff)
        b.branch(blk["stop"])

    # proto_again
    b.position_at_end(blk["proto"])
    current = b.load(proto)
    switch = b.switch(current, blk["fail"])
    cases = ((linux.ETH_P_8021Q, "vlan"), (linux.ETH_P_8021AD, "vlan"), (linux.ETH_P_IP, "ipv4"),
             (linux.ETH_P_IPV6, "ipv6"), (linux.ETH_P_ARP, "good"), (linux.ETH_P_RARP, "good"),
             (linux.ETH_P_MPLS_UC, "mpls"), (linux.ETH_P_MPLS_MC, "mpls"))  # fmt: skip
    for value, target in cases:
        switch.add_case(_const(value), blk[target])
    b.position_at_end(blk["mpls"])  # no MPLS key asked for: past one label, done
    b.store(b.add(b.load(nhoff), _const(4, I64)), nhoff)
    b.branch(blk["good"])
    vlan_body = fn.append_basic_block("vlan_body")
    b.position_at_end(blk["vlan"])
    need(4, vlan_body)
    b.position_at_end(vlan_body)
    at = b.load(nhoff)
    b.store(read.u16(b.add(at, _const(2, I64)), big_endian=True), proto)
    b.store(b.add(at, _const(4, I64)), nhoff)
    again(blk["proto"])
    # IPv4
    b.position_at_end(blk["ipv4"])
    need(20, blk["ipv4_ok"])
    b.position_at_end(blk["ipv4_ok"])
    at = b.load(nhoff)
    ihl = b.and_(read.u8(at), _const(0xF))
    b.cbranch(b.icmp_unsigned(">=", ihl, _const(5)), blk["ipv4_whole"], blk["fail"])
    b.position_at_end(blk["ipv4_whole"])
    b.store(read.u8(b.add(at, _const(9, I64))), ip_proto)
    frag = read.u16(b.add(at, _const(6, I64)), big_endian=True)
    after = b.add(at, b.zext(b.shl(ihl, _const(2)), I64))
    b.store(after, nhoff)
    later = fn.append_basic_block("ipv4_later_fragment")
    first = fn.append_basic_block("ipv4_first_or_whole")
    b.cbranch(b.icmp_unsigned("!=", b.and_(frag, _const(0x1FFF)), _const(0)), later, first)
    b.position_at_end(later)
    stop_at(after)
    b.position_at_end(first)
    b.cbranch(b.icmp_unsigned("!=", b.and_(frag, _const(0x2000)), _const(0)), blk["good"], blk["ip_proto"])
    # IPv6
    ipv6_ok = fn.append_basic_block("ipv6_ok")
    b.position_at_end(blk["ipv6"])
    need(40, ipv6_ok)
    b.position_at_end(ipv6_ok)
    at = b.load(nhoff)
    b.store(read.u8(b.add(at, _const(6, I64))), ip_proto)
    b.store(b.add(at, _const(40, I64)), nhoff)
    b.branch(blk["ip_proto"])
    # ip_proto_again
    b.position_at_end(blk["ip_proto"])
    next_proto = b.load(ip_proto)
    b.cbranch(b.icmp_unsigned("==", b.load(proto), _const(linux.ETH_P_IPV6)), blk["v6"], blk["not_v6_ext"])
    b.position_at_end(blk["v6"])
    is_option = b.icmp_unsigned("==", next_proto, _const(0))
    for number in sorted(linux.IPV6_OPTIONS - {0}):
        is_option = b.or_(is_option, b.icmp_unsigned("==", next_proto, _const(number)))
    b.cbranch(is_option, blk["options"], blk["not_options"])
    options_ok = fn.append_basic_block("options_ok")
    b.position_at_end(blk["options"])
    need(2, options_ok)
    b.position_at_end(options_ok)
    at = b.load(nhoff)
    b.store(read.u8(at), ip_proto)
    size = b.shl(b.add(read.u8(b.add(at, _const(1, I64))), _const(1)), _const(3))
    b.store(b.add(at, b.zext(size, I64)), nhoff)
    again(blk["ip_proto"])
    b.position_at_end(blk["not_options"])
    b.cbranch(b.icmp_unsigned("==", next_proto, _const(linux.IPV6_FRAGMENT)), blk["fragment"], blk["not_v6_ext"])
    fragment_ok = fn.append_basic_block("fragment_ok")
    b.position_at_end(blk["fragment"])
    need(8, fragment_ok)
    b.position_at_end(fragment_ok)
    at = b.load(nhoff)
    b.store(read.u8(at), ip_proto)
    offset = b.and_(read.u16(b.add(at, _const(2, I64)), big_endian=True), _const(0xFFF8))
    after = b.add(at, _const(8, I64))
    b.store(after, nhoff)
    later6 = fn.append_basic_block("ipv6_later_fragment")
    b.cbranch(b.icmp_unsigned("!=", offset, _const(0)), later6, blk["good"])
    b.position_at_end(later6)
    stop_at(after)
    b.position_at_end(blk["not_v6_ext"])
    is_encap = b.or_(b.icmp_unsigned("==", next_proto, _const(4)), b.icmp_unsigned("==", next_proto, _const(41)))
    b.cbranch(is_encap, blk["encap"], blk["not_encap"])
    b.position_at_end(blk["encap"])
    inner = b.select(b.icmp_unsigned("==", next_proto, _const(4)), _const(linux.ETH_P_IP), _const(linux.ETH_P_IPV6))
    b.store(inner, proto)
    again(blk["proto"])
    b.position_at_end(blk["not_encap"])
    b.cbranch(b.icmp_unsigned("==", next_proto, _const(linux.IPPROTO_GRE)), blk["gre"], blk["good"])
    _emit_gre(b, fn, read, length, nhoff, proto, gre_offset, blk, need, again)
    # out_good: thoff = min(nhoff, len), then the transport header
    b.position_at_end(blk["good"])
    at = b.load(nhoff)
    thoff = b.select(b.icmp_unsigned("<", at, length), at, length, name="thoff")
    final_proto = b.load(ip_proto)
    header = _const(0)
    for number, size_ in sorted(linux.L4_HEADER.items()):
        header = b.select(b.icmp_unsigned("==", final_proto, _const(number)), _const(size_), header)
    b.cbranch(b.icmp_unsigned("==", final_proto, _const(linux.IPPROTO_TCP)), blk["tcp"], blk["tcp_doff"])
    b.position_at_end(blk["tcp_doff"])  # not TCP
    b.ret(b.add(b.trunc(thoff, I32), header))
    b.position_at_end(blk["tcp"])
    has_doff = b.icmp_unsigned("<=", b.add(thoff, _const(13, I64)), length)
    tcp_header = fn.append_basic_block("tcp_header")
    tcp_short = fn.append_basic_block("tcp_short")
    b.cbranch(has_doff, tcp_header, tcp_short)
    b.position_at_end(tcp_short)
    b.ret(b.trunc(thoff, I32))
    b.position_at_end(tcp_header)
    doff = b.lshr(b.and_(read.u8(b.add(thoff, _const(12, I64))), _const(0xF0)), _const(2))
    longest = b.select(b.icmp_unsigned(">", doff, _const(20)), doff, _const(20))
    b.ret(b.add(b.trunc(thoff, I32), longest))
    b.position_at_end(blk["stop"])
    at = b.load(nhoff)
    b.ret(b.trunc(b.select(b.icmp_unsigned("<", at, length), at, length), I32))
    b.position_at_end(blk["fail"])
    b.ret(_const(0))
    return fn
