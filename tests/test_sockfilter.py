"""bpfjit.sockfilter: programs attached to sockets in the kernel, and read back from it.

The kernel is the oracle: what SO_ATTACH_FILTER accepts or refuses (its validator's verdicts on
ancillary loads and negative offsets) and what SO_GET_FILTER hands back (the program as attached, to
the bit). UDP sockets need no privilege; AF_PACKET sockets need root.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from needs import require

from bpfjit import Insn, Program, text
from bpfjit.linux import ANCILLARY, SKF_AD_MAX, SKF_AD_OFF, SKF_LL_OFF, SKF_NET_OFF, Ancillary
from bpfjit.sockfilter import BPF_MAXINSNS, attach_filter, attached_filter, detach_filter
from bpfjit.strategies import programs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="socket filters are Linux's")

FIXTURES = Path(__file__).parent / "fixtures"
SO_BPF_EXTENSIONS = 48
LD_ABS = {"ld": 0x20, "ldh": 0x28, "ldb": 0x30}
RET_A = Insn(0x16)


def u32(value: int) -> int:
    return value & 0xFFFFFFFF


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        yield sock


@pytest.fixture
def packet_socket() -> Iterator[socket.socket]:
    require(os.geteuid() == 0, "root (AF_PACKET sockets)")
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:  # protocol 0: receives nothing
        yield sock


# Programs the kernel accepts, each read back as attached.
PROGRAMS = {
    "tcp port 80 (tcpdump -dd)": text.parse((FIXTURES / "tcp_port_80.dd").read_text()),
    "vlan 100 on lo (ancillary loads)": text.parse((FIXTURES / "live_vlan_100.dd").read_text()),
    "every ancillary load at every width": Program(
        [Insn(code, k=row.k) for row in ANCILLARY for code in LD_ABS.values()] + [RET_A]
    ),
    "negative offsets": Program([
        Insn(0x30, k=u32(SKF_NET_OFF + 9)),  # ldb [net + 9]: the IP protocol
        Insn(0x28, k=u32(SKF_LL_OFF + 12)),  # ldh [ll + 12]: the ethertype
        Insn(0x20, k=0x80000000),  # below SKF_LL_OFF: a fault at run time, accepted at attach
        Insn(0x07),  # tax
        Insn(0x50, k=u32(SKF_AD_OFF + 2)),  # [x + k] is never ancillary: any k is accepted
        Insn(0x48, k=u32(SKF_NET_OFF)),
        Insn(0xB1, k=u32(SKF_LL_OFF)),  # ldxb 4*([ll]&0xf)
        RET_A,
    ]),
    "unused fields kept as given": Program([Insn(0x30, 7, 9, SKF_AD_OFF + 48), Insn(0x87, 3, 4, 5), RET_A]),
    "the longest program": Program([Insn(0x06, k=n) for n in range(BPF_MAXINSNS)]),
}  # fmt: skip


@pytest.mark.parametrize("name", PROGRAMS)
def test_udp_socket_reads_back_what_was_attached(name: str, udp: socket.socket) -> None:
    attach_filter(udp, PROGRAMS[name])
    assert attached_filter(udp) == PROGRAMS[name]


@pytest.mark.parametrize("name", PROGRAMS)
def test_packet_socket_reads_back_what_was_attached(name: str, packet_socket: socket.socket) -> None:
    attach_filter(packet_socket, PROGRAMS[name])
    assert attached_filter(packet_socket) == PROGRAMS[name]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(programs())
def test_valid_programs_read_back(udp: socket.socket, program: Program) -> None:
    try:
        attach_filter(udp, program)
    except OSError as exc:  # an ABS load in the ancillary window the kernel does not know, its only extra rule
        assert exc.errno == errno.EINVAL
        assume(False)
    assert attached_filter(udp) == program


def test_the_listing_of_a_program_read_back_is_tcpdumps(udp: socket.socket) -> None:
    attach_filter(udp, text.parse((FIXTURES / "live_vlan_and_vlan_200.ddd").read_text()))
    assert attached_filter(udp).dump("d") == (FIXTURES / "live_vlan_and_vlan_200.d").read_text()


def test_a_new_filter_replaces_the_old_and_a_file_descriptor_will_do(udp: socket.socket) -> None:
    long, short = PROGRAMS["tcp port 80 (tcpdump -dd)"], Program([Insn(0x06, k=1)])
    attach_filter(udp.fileno(), long)
    attach_filter(udp, short)
    assert attached_filter(udp.fileno()) == short


def test_no_filter_is_enoent(udp: socket.socket) -> None:
    """The kernel answers SO_GET_FILTER on a socket without a filter with a count of 0 and no error;
    SO_DETACH_FILTER says ENOENT, and so does attached_filter."""
    with pytest.raises(FileNotFoundError, match=r"SO_GET_FILTER on fd \d+: the socket has no filter attached"):
        attached_filter(udp)
    with pytest.raises(FileNotFoundError, match="SO_DETACH_FILTER"):
        detach_filter(udp)
    attach_filter(udp, Program([Insn(0x06, k=1)]))
    detach_filter(udp)
    with pytest.raises(OSError) as caught:
        attached_filter(udp)
    assert caught.value.errno == errno.ENOENT


def test_a_closed_socket_is_ebadf() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sock.fileno()
    sock.close()
    with pytest.raises(OSError) as caught:
        attached_filter(fd)
    assert caught.value.errno == errno.EBADF


# -- the kernel's validator on ancillary loads --------------------------------------------------------------


def test_the_kernel_knows_as_many_ancillary_offsets_as_the_table() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, SO_BPF_EXTENSIONS) == SKF_AD_MAX  # an int: safe to ask
    assert [row.offset for row in ANCILLARY] == list(range(0, SKF_AD_MAX, 4))


@pytest.mark.parametrize("row", ANCILLARY, ids=[row.name for row in ANCILLARY])
@pytest.mark.parametrize("mnemonic", LD_ABS)
def test_kernel_accepts_every_ancillary_load(mnemonic: str, row: Ancillary, udp: socket.socket) -> None:
    program = text.parse(f"{mnemonic} [{row.tcpdump}]\nret a\n")
    attach_filter(udp, program)
    assert attached_filter(udp) == program


@pytest.mark.parametrize("offset", [2, 6, 47, SKF_AD_MAX, 0xFFC])
@pytest.mark.parametrize("mnemonic", LD_ABS)
def test_kernel_refuses_unknown_ancillary_offsets(mnemonic: str, offset: int, udp: socket.socket) -> None:
    program = Program([Insn(LD_ABS[mnemonic], k=SKF_AD_OFF + offset), RET_A])
    with pytest.raises(OSError, match=r"SO_ATTACH_FILTER on fd \d+ \(2 insns\): the kernel's validator") as caught:
        attach_filter(udp, program)
    assert caught.value.errno == errno.EINVAL


def test_too_long_a_program_is_einval(udp: socket.socket) -> None:
    with pytest.raises(OSError, match="the kernel takes at most 4096") as caught:
        attach_filter(udp, Program([Insn(0x06)] * (BPF_MAXINSNS + 1)))
    assert caught.value.errno == errno.EINVAL
