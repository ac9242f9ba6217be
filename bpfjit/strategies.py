"""Hypothesis strategies for cBPF programs and packets, public so users can test their own filters.

    from hypothesis import given
    from bpfjit.strategies import programs, packets

    @given(programs(), packets())
    def test_my_backend(program, packet): ...

`programs()` builds VALID programs by construction (every jump in range, scratch words written
before they are read as Linux's checker wants, no constant division by 0 or shift >= 32), so no
example is wasted on the validator; `programs(dialect="seccomp")` keeps to seccomp's instructions
(`syscalls()` draws inputs for them); `programs(dialect="linux")` draws ancillary loads and offsets
in the kernel's negative windows (`metas()` draws the packets' metadata). `any_programs()` builds
anything, for testing rejection.
Requires the `hypothesis` package (`pip install bpfjit[test]`).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from .dialects import LINUX, PCAP, SECCOMP, SECCOMP_DATA_SIZE, Dialect, DialectLike, dialect_of
from .linux import ANCILLARY, SKF_LL_OFF, SKF_NET_OFF, Meta
from .opcodes import BPF_MAXINSNS, BPF_MEMWORDS, OPCODES, U32_MASK
from .program import Insn, Program

_CODES_BY_KIND: dict[str, list[int]] = {}
for _code, _info in sorted(OPCODES.items()):
    _CODES_BY_KIND.setdefault(_info.kind, []).append(_code)

# Values where unsigned 32-bit arithmetic and comparisons tend to go wrong.
EDGE_VALUES = (0, 1, 2, 3, 4, 7, 8, 14, 0x7F, 0x80, 0xFF, 0x800, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFE, 0xFFFFFFFF)  # fmt: skip

constants = st.one_of(st.sampled_from(EDGE_VALUES), st.integers(0, U32_MASK), st.integers(0, 300))
"""u32 immediates, biased toward edge values."""

offsets = st.one_of(
    st.integers(0, 80),
    st.sampled_from((0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFC, 0xFFFFF000, 0x7FFFFFFF, 0x80000000)),
    st.integers(0, U32_MASK),
)
"""Packet offsets: mostly inside a small packet, some near 2^32."""

_NET, _LL = SKF_NET_OFF & U32_MASK, SKF_LL_OFF & U32_MASK
linux_offsets = st.one_of(
    st.integers(0, 80),
    st.sampled_from([row.k for row in ANCILLARY]),
    st.integers(_NET, _NET + 60),
    st.integers(_LL, _LL + 60),
    st.sampled_from((0x7FFFFFFF, 0x80000000, _NET - 1, _LL - 1, 0xFFFFEFFF)),
)
"""`ld [k]` offsets of the linux dialect: in the packet, every ancillary load, the network- and
link-relative windows and their edges (none in the ancillary window that names no load)."""
linux_x = st.one_of(st.integers(0, 64), st.sampled_from((_NET, _LL, _NET - 4, 0xFFFFF000, 0xFFFFFFFF, 0x80000000)))
"""X values that make `[x + k]` wrap into the negative windows."""

# Kinds drawn for the body of a program, weighted toward loads, ALU and jumps.
_BODY_KINDS = (
    ["ld_abs"] * 4 + ["ld_ind"] * 3 + ["ldx_msh"] * 2 + ["alu_k"] * 4 + ["alu_x"] * 3
    + ["jmp_k"] * 4 + ["jmp_x"] * 2 + ["ja"] + ["ld_imm", "ld_len", "ldx_imm", "ldx_len", "neg",
    "tax", "txa", "st", "stx", "ld_mem", "ldx_mem", "ret_k", "ret_a"]
)  # fmt: skip


# seccomp returns: every action, with data at its edges; some actions the kernel does not know
seccomp_returns = st.builds(
    lambda action, data: action | data,
    st.sampled_from((0x80000000, 0, 0x30000, 0x50000, 0x7FC00000, 0x7FF00000, 0x7FFC0000, 0x7FFF0000,
                     0x10000, 0x60000, 0x7FFE0000, 0xFFFF0000)),
    st.sampled_from((0, 1, 13, 4095, 4096, 0xFFFF)),
)  # fmt: skip
"""u32 seccomp return values (action | data), biased to the kernel's actions."""

_SECCOMP_WORDS = tuple(range(0, SECCOMP_DATA_SIZE, 4))


def _allowed_codes(dialect: Dialect) -> dict[str, list[int]]:
    """The codes of each kind that the dialect's rules accept (with k = 0)."""
    allowed: dict[str, list[int]] = {}
    for kind, codes in _CODES_BY_KIND.items():
        kept = [c for c in codes if all(rule.check(Insn(c), OPCODES[c]) is None for rule in dialect.rules)]
        if kept:
            allowed[kind] = kept
    return allowed


def _immediate(draw: Any, code: int, dialect: Dialect = PCAP) -> int:
    info = OPCODES[code]
    if dialect is SECCOMP:
        if info.kind == "ld_abs":
            return draw(st.sampled_from(_SECCOMP_WORDS))
        if info.kind == "ret_k":
            return draw(seccomp_returns)
    if dialect is LINUX and info.kind == "ld_abs":
        return draw(linux_offsets)
    if dialect is LINUX and info.kind == "ldx_imm":
        return draw(linux_x)
    if info.kind in ("ld_abs", "ld_ind", "ldx_msh"):
        return draw(offsets)
    if info.alu is not None and info.kind == "alu_k":
        if info.alu.hazard == "divisor":
            return draw(constants.filter(bool))
        if info.alu.hazard == "shift":
            return draw(st.integers(0, 31))
    if info.kind == "ldx_imm":
        return draw(st.one_of(st.integers(0, 64), constants))
    if info.kind == "ret_k":
        return draw(st.sampled_from((0, 1, 0xFFFF, 262144, 0xFFFFFFFF)))
    return draw(constants) if info.uses_k else draw(st.sampled_from((0, 0, 7, U32_MASK)))


@st.composite
def programs(draw: Any, max_insns: int = 48, min_insns: int = 1, dialect: DialectLike = PCAP) -> Program:
    """Valid cBPF programs (validate(p, dialect) accepts every one), up to `max_insns` long."""
    record = dialect_of(dialect)
    codes_by_kind = _CODES_BY_KIND if record is PCAP else _allowed_codes(record)
    body_kinds = [kind for kind in _BODY_KINDS if kind in codes_by_kind]
    max_insns = min(max_insns, BPF_MAXINSNS)
    n = draw(st.integers(min_insns, max_insns))
    all_words = (1 << BPF_MEMWORDS) - 1
    masks = [all_words] * n
    written = 0
    insns: list[Insn] = []
    for i in range(n - 1):
        written &= masks[i]
        kind = draw(st.sampled_from(body_kinds))
        readable = [w for w in range(BPF_MEMWORDS) if written >> w & 1]
        if kind in ("ld_mem", "ldx_mem") and not readable:
            kind = "st"
        code = draw(st.sampled_from(codes_by_kind[kind]))
        room = n - 2 - i  # instructions strictly between this one and the final ret
        jt = jf = 0
        if kind in ("ld_mem", "ldx_mem"):
            k = draw(st.sampled_from(readable))
        elif kind in ("st", "stx"):
            k = draw(st.integers(0, BPF_MEMWORDS - 1))
            written |= 1 << k
        elif kind == "ja":
            k = draw(st.integers(0, room))
        else:
            k = _immediate(draw, code, record)
        if kind in ("jmp_k", "jmp_x"):
            jt = draw(st.integers(0, min(room, 255)))
            jf = draw(st.integers(0, min(room, 255)))
        if kind in ("ja", "jmp_k", "jmp_x"):
            targets = (i + 1 + k,) if kind == "ja" else (i + 1 + jt, i + 1 + jf)
            for target in targets:
                masks[target] &= written
            written = all_words
        insns.append(Insn(code, jt, jf, k))
    ret = draw(st.sampled_from(_CODES_BY_KIND["ret_k"] + _CODES_BY_KIND["ret_a"]))
    insns.append(Insn(ret, 0, 0, _immediate(draw, ret, record)))
    return Program(insns)


U64_EDGES = (0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 32) + 1, 0xFFFFFFFF00000000,
             1 << 63, (1 << 64) - 1)  # fmt: skip
syscall_args = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, 1 << 12), st.integers(0, (1 << 64) - 1))
"""u64 syscall arguments: small numbers (flags, fds), word boundaries, anything."""
syscall_numbers = st.one_of(st.integers(0, 460), st.sampled_from((0x40000000, 0x40000001, 0x7FFFFFFF, 0x80000000,
                            0xFFFFFFFE, 0xFFFFFFFF)), st.integers(0, U32_MASK))  # fmt: skip
"""nr as the u32 the filter reads: real syscall numbers mostly, x32's bit, -1 and -2."""


@st.composite
def metas(draw: Any) -> Meta:
    """`linux.Meta` for one packet: VLAN tags with PCP/DEI bits, packet types, header offsets."""
    words = st.one_of(st.sampled_from((0, 1, 0xFFFF, U32_MASK)), st.integers(0, U32_MASK))
    return Meta(
        protocol=draw(st.one_of(st.none(), st.sampled_from((0x0800, 0x86DD, 0x8100, 0x88A8, 0x0806, 0)), words)),
        pkttype=draw(st.integers(0, 7)),
        ifindex=draw(st.one_of(st.integers(0, 8), words)),
        net_offset=draw(st.one_of(st.sampled_from((14, 18, 0)), st.integers(0, 100))),
        mark=draw(words), queue=draw(st.integers(0, 0xFFFF)), hatype=draw(st.sampled_from((1, 772, 65534))),
        rxhash=draw(words), cpu=draw(st.integers(0, 63)), random=draw(words),
        vlan_tci=draw(st.one_of(st.just(0), st.integers(0, 0xFFFF))), vlan_present=draw(st.integers(0, 1)),
        vlan_tpid=draw(st.sampled_from((0, 0x8100, 0x88A8))),
    )  # fmt: skip


def syscalls() -> st.SearchStrategy[tuple[int, tuple[int, ...]]]:
    """`(nr, args)` of one syscall: nr an unsigned 32-bit number, six u64 arguments."""
    return st.tuples(syscall_numbers, st.tuples(*[syscall_args] * 6))


def packets(max_size: int = 96) -> st.SearchStrategy[bytes]:
    """Packet bytes, including empty packets; short ones make bounds checks fail often."""
    return st.one_of(st.binary(max_size=16), st.binary(max_size=max_size))


@st.composite
def packets_with_wirelen(draw: Any, max_size: int = 96) -> tuple[bytes, int]:
    """`(packet, wirelen)` with wirelen >= len(packet), sometimes far larger (a truncated capture)."""
    packet = draw(packets(max_size))
    extra = draw(st.one_of(st.just(0), st.integers(0, 2000), st.just(U32_MASK - len(packet))))
    return packet, len(packet) + extra


known_insns = st.builds(
    Insn, st.sampled_from(sorted(OPCODES)), st.integers(0, 255), st.integers(0, 255), constants
)
"""Instructions with accepted opcodes and arbitrary fields (jumps possibly out of range)."""

any_insns = st.one_of(
    known_insns, st.builds(Insn, st.integers(0, 0xFFFF), st.integers(0, 255), st.integers(0, 255), constants)
)
"""Any 8 bytes read as an instruction."""


def any_programs(max_insns: int = 24, known_only: bool = False) -> st.SearchStrategy[Program]:
    """Arbitrary, usually invalid programs (for validator and rejection tests)."""
    insns = known_insns if known_only else any_insns
    return st.lists(insns, max_size=max_insns).map(Program)
