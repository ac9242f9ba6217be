"""bpfjit.libpcap: the ctypes binding to the system libpcap, checked against tcpdump and itself."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from socket import inet_aton

import pytest
from expressions import EXPRESSIONS
from hypothesis import given
from hypothesis import strategies as st
from needs import require, tcpdump_path

import bpfjit
from bpfjit import ExpressionError, Insn, Program, ValidationError, libpcap
from bpfjit.opcodes import OPCODES
from bpfjit.strategies import constants

pytestmark = pytest.mark.usefixtures("needs_libpcap")


def tcpdump_ddd(expression: str, *options: str) -> Program:
    """tcpdump's `-ddd` listing of `expression`, parsed here: the count, then `code jt jf k` lines."""
    path = tcpdump_path()
    require(path is not None, "tcpdump")
    assert path is not None
    result = subprocess.run([path, "-ddd", *options, expression], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    count, *lines = result.stdout.split("\n")
    insns = [Insn(*map(int, line.split())) for line in lines if line.strip()]
    assert len(insns) == int(count)
    return Program(insns)


def tcpdump_d(expression: str, *options: str) -> list[str]:
    path = tcpdump_path()
    require(path is not None, "tcpdump")
    assert path is not None
    result = subprocess.run([path, "-d", *options, expression], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


# -- hand-made packets ---------------------------------------------------------------------------------
def ipv4_tcp(dport: int = 80, sport: int = 12345, dst: str = "192.168.1.1") -> bytes:
    """Ethernet II + IPv4 (no options) + TCP SYN (no options), no payload."""
    ether = bytes.fromhex("001122334455" "66778899aabb" "0800")
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0x4000, 64, 6, 0, bytes([10, 0, 0, 1]), inet_aton(dst))
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, 0x02, 8192, 0, 0)
    return ether + ip + tcp


# -- compile_expression ------------------------------------------------------------------------------
@pytest.mark.parametrize("expression", [e for e in EXPRESSIONS if e])
def test_compile_expression_equals_tcpdump(expression: str) -> None:
    assert libpcap.compile_expression(expression) == tcpdump_ddd(expression, "-y", "EN10MB")


def test_compile_expression_options_equal_tcpdump() -> None:
    unoptimized = tcpdump_ddd("tcp port 80", "-O", "-y", "EN10MB")
    assert libpcap.compile_expression("tcp port 80", optimize=False) == unoptimized
    assert libpcap.compile_expression("ip", snaplen=100) == tcpdump_ddd("ip", "-s", "100", "-y", "EN10MB")
    for linktype in ("LINUX_SLL", "LINUX_SLL2", "RAW", "NULL", "IEEE802_11_RADIO"):
        assert libpcap.compile_expression("ip", linktype) == tcpdump_ddd("ip", "-y", linktype)


def test_compiled_programs_pass_bpfjit_validation() -> None:
    for expression in EXPRESSIONS:
        bpfjit.validate(libpcap.compile_expression(expression))


def test_program_from_expr_is_compile_expression() -> None:
    assert Program.from_expr("udp", "RAW") == libpcap.compile_expression("udp", linktype="RAW")


def test_empty_expression_accepts_everything() -> None:
    assert libpcap.compile_expression("") == Program([Insn(0x06, 0, 0, 262144)])


def test_syntax_error_keeps_libpcaps_message() -> None:
    with pytest.raises(ExpressionError) as caught:
        libpcap.compile_expression("tcp port")
    assert caught.value.expression == "tcp port"
    assert "syntax error" in caught.value.message
    assert "tcp port" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_semantic_error_keeps_libpcaps_message() -> None:
    with pytest.raises(ExpressionError, match="rejects all packets"):
        libpcap.compile_expression("tcp and udp")
    with pytest.raises(ExpressionError) as caught:
        libpcap.compile_expression("port 99999")
    assert caught.value.message == "illegal port number 99999 > 65535"


def test_expression_type_and_nul() -> None:
    with pytest.raises(TypeError):
        libpcap.compile_expression(b"ip")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        libpcap.compile_expression(None)  # type: ignore[arg-type]
    with pytest.raises(ExpressionError, match="NUL"):
        libpcap.compile_expression("ip\0 and garbage")  # C would silently stop at the NUL


def test_snaplen_is_returned_and_checked() -> None:
    assert libpcap.compile_expression("", snaplen=96)[-1] == Insn(0x06, 0, 0, 96)
    for bad in (0, -1, 1 << 31):
        with pytest.raises(ValueError):
            libpcap.compile_expression("ip", snaplen=bad)
    with pytest.raises(TypeError):
        libpcap.compile_expression("ip", snaplen=1.5)  # type: ignore[arg-type]


def test_netmask_forms() -> None:
    # Without a netmask libpcap cannot compile `ip broadcast` (PCAP_NETMASK_UNKNOWN).
    with pytest.raises(ExpressionError, match="netmask not known"):
        libpcap.compile_expression("ip broadcast")
    with pytest.raises(ExpressionError, match="netmask not known"):
        libpcap.compile_expression("ip broadcast", netmask=0xFFFFFFFF)
    slash24 = libpcap.compile_expression("ip broadcast", netmask="255.255.255.0")
    assert slash24 == libpcap.compile_expression("ip broadcast", netmask=0xFFFFFF00)
    # The host part is the low byte: all ones or all zeros there is a broadcast.
    cases = (("10.1.2.255", True), ("10.1.2.0", True), ("10.1.2.1", False), ("10.1.255.1", False))
    for dst, broadcast in cases:
        assert (libpcap.bpf_filter(slash24, ipv4_tcp(dst=dst)) != 0) is broadcast, dst
    # tcpdump -d without an interface passes netmask 0.
    tcpdump = tcpdump_ddd("ip broadcast", "-y", "EN10MB")
    assert libpcap.compile_expression("ip broadcast", netmask="0.0.0.0") == tcpdump
    for bad in ("255.255.255", "nonsense", 1 << 32, -1):
        with pytest.raises(ValueError):
            libpcap.compile_expression("ip broadcast", netmask=bad)
    with pytest.raises(TypeError):
        libpcap.compile_expression("ip", netmask=1.0)  # type: ignore[arg-type]


def test_compile_expression_is_thread_safe() -> None:
    expected = {e: libpcap.compile_expression(e) for e in EXPRESSIONS}
    results: list[dict[str, Program]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work() -> None:
        try:
            start.wait()
            mine: dict[str, Program] = {}
            for _ in range(5):
                for expression in EXPRESSIONS:
                    mine[expression] = libpcap.compile_expression(expression)
            results.append(mine)
        except BaseException as exc:  # reported below; a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert results == [expected] * 8


# -- link types ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EN10MB", 1), ("en10mb", 1), ("DLT_EN10MB", 1), ("dlt_en10mb", 1), ("LINKTYPE_ETHERNET", 1),
        ("RAW", 12), ("DLT_RAW", 12), ("LINKTYPE_RAW", 12), ("NULL", 0), ("LOOP", 108),
        ("LINUX_SLL", 113), ("LINUX_SLL2", 276), ("IPV4", 228), ("IPV6", 229),
        ("IEEE802_11_RADIO", 127), ("LINKTYPE_IEEE802_11_RADIOTAP", 127), (" raw ", 12), ("105", 105),
        (1, 1), (228, 228), (0, 0),
    ],
)  # fmt: skip
def test_linktype_value(name: str | int, value: int) -> None:
    assert libpcap.linktype_value(name) == value


def test_unknown_linktype_names_valid_ones() -> None:
    for bad in ("EN10", "DLT_", "", "ethernet2", "ΩMEGA"):
        with pytest.raises(ValueError, match="unknown link type") as caught:
            libpcap.linktype_value(bad)
        for name in ("EN10MB", "LINUX_SLL", "RAW", "IPV4", "IPV6"):
            assert name in str(caught.value)
    with pytest.raises(ValueError, match="EN10MB"):
        libpcap.compile_expression("ip", linktype="bogus")
    with pytest.raises(ValueError):
        libpcap.linktype_value(-1)
    with pytest.raises(TypeError):
        libpcap.linktype_value(1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        libpcap.linktype_value(True)


def test_linktype_name() -> None:
    assert libpcap.linktype_name(1) == "EN10MB"
    assert libpcap.linktype_name(12) == "RAW"
    assert libpcap.linktype_name("dlt_ipv6") == "IPV6"
    with pytest.raises(ValueError):
        libpcap.linktype_name(9999)


@pytest.mark.parametrize(
    ("linktype", "dlt"),
    # pcap-common.c: LINKTYPE_ATM_RFC1483, RAW, SLIP_BSDOS, PPP_BSDOS map to the OS's DLT_ values
    # (Linux's here); 0..99 and the "matching" range 104.. stay as they are.
    [(100, 11), (101, 12), (102, 15), (103, 16), (104, 104), (106, 19), (1, 1), (0, 0), (113, 113),
     (228, 228), (276, 276)],
)  # fmt: skip
def test_dlt_from_linktype(linktype: int, dlt: int) -> None:
    if sys.platform != "linux" and linktype in (101, 106):
        pytest.skip("DLT_RAW / DLT_ATM_CLIP differ by OS")
    assert libpcap.dlt_from_linktype(linktype) == dlt


def test_dlt_from_linktype_checks_its_argument() -> None:
    for bad in (-1, 1 << 16):
        with pytest.raises(ValueError):
            libpcap.dlt_from_linktype(bad)
    with pytest.raises(TypeError):
        libpcap.dlt_from_linktype("RAW")


def test_linktype_raw_from_a_capture_file_compiles_as_dlt_raw() -> None:
    raw = libpcap.compile_expression("udp", "RAW")
    assert libpcap.compile_expression("udp", libpcap.dlt_from_linktype(101)) == raw


# -- savefile compiles ---------------------------------------------------------------------------------
HOST = "<" if sys.byteorder == "little" else ">"


def _file(tmp_path: object, linktype: int, snaplen: int, order: str) -> str:
    path = os.path.join(str(tmp_path), f"lt{linktype}-{snaplen}-{order == '>'}.pcap")
    with open(path, "wb") as f:
        f.write(struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
    return path


@pytest.mark.parametrize(
    ("dlt", "linktype", "snaplen"),
    [("NULL", 0, 65535), ("NULL", 0, 0), ("LOOP", 108, 1500), ("EN10MB", 1, 0x80000000), ("RAW", 101, 96),
     ("LINUX_SLL", 113, 262144), ("LINUX_SLL2", 276, 0xFFFFFFFF)],
)  # fmt: skip
@pytest.mark.parametrize("order", ["<", ">"])
def test_savefile_compile_equals_tcpdump_reading_the_file(tmp_path: object, dlt: str, linktype: int, snaplen: int,
                                                          order: str) -> None:  # fmt: skip
    """`savefile=True` (and `swapped`) compiles what `tcpdump -r FILE -ddd` prints for such a file:
    libpcap's snaplen adjustment (0, above 2^31-1), DLT_NULL's byte order, the BSD AF_INET6 values."""
    path = _file(tmp_path, linktype, snaplen, order)
    header = open(path, "rb").read()  # noqa: SIM115
    for expression in ("ip", "ip6", "tcp port 443", "not ip6 and udp", "inbound"):
        try:
            expected = tcpdump_ddd(expression, "-r", path)
        except AssertionError:  # tcpdump refused it: so does bpfjit, in libpcap's words
            with pytest.raises(ExpressionError, match="when reading savefiles"):
                libpcap.compile_for_savefile(expression, header)
            continue
        swapped = order != HOST
        assert libpcap.compile_for_savefile(expression, header, netmask=0) == expected
        assert libpcap.compile_expression(expression, dlt, snaplen, savefile=True, swapped=swapped) == expected
        assert Program.from_expr(expression, dlt, snaplen, savefile=True, swapped=swapped) == expected


def test_live_and_savefile_compiles_differ_and_are_cached_apart() -> None:
    live = libpcap.compile_expression("ip6", "NULL")
    savefile = libpcap.compile_expression("ip6", "NULL", savefile=True)
    assert live != savefile and len(savefile) == len(live) + 2  # three AF_INET6 values against Linux's one
    assert live[1].k == 10 << 24 and {insn.k for insn in savefile[1:4]} == {24 << 24, 28 << 24, 30 << 24}
    assert libpcap.compile_expression("ip6", "NULL") == live  # in any order, each gets its own
    assert libpcap.compile_expression("ip", "NULL", savefile=True, swapped=True)[1].k == 2
    assert libpcap.compile_expression("ip", "NULL", savefile=True)[1].k == 2 << 24
    assert libpcap.compile_expression("inbound", "LINUX_SLL", savefile=True) == libpcap.compile_expression(
        "inbound", "LINUX_SLL")  # fmt: skip
    with pytest.raises(ExpressionError, match="inbound/outbound not supported on Ethernet when reading savefiles"):
        libpcap.compile_expression("inbound", savefile=True)
    with pytest.raises(ExpressionError, match="ifindex not supported on BSD loopback when reading savefiles"):
        bpfjit.compile("ifindex 3", linktype="NULL", savefile=True)
    assert len(libpcap.compile_expression("inbound")) > 2  # a live capture reads the packet type
    # the snaplen a file header states, as libpcap reads it: 0 is the link type's maximum
    assert libpcap.compile_expression("ip", snaplen=0, savefile=True) == libpcap.compile_expression("ip")


def test_savefile_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="savefile=True"):
        libpcap.compile_expression("ip", swapped=True)
    with pytest.raises(ValueError, match="between 1 and"):
        libpcap.compile_expression("ip", snaplen=0)
    with pytest.raises(ValueError, match="32 bits"):
        libpcap.compile_expression("ip", snaplen=1 << 32, savefile=True)
    with pytest.raises(ValueError, match="24 bytes"):
        libpcap.compile_for_savefile("ip", b"\xd4\xc3\xb2\xa1")
    version_9 = struct.pack("<IHHiIII", 0xA1B2C3D4, 9, 0, 0, 0, 65535, 1)
    with pytest.raises(ValueError, match=r"unsupported pcap savefile version 9\.0"):
        libpcap.compile_for_savefile("ip", version_9)


@pytest.mark.parametrize("dlt", [0, 1, 9, 12, 105, 113, 127, 228, 229, 276])
def test_linktype_from_dlt_inverts_dlt_from_linktype(dlt: int) -> None:
    assert libpcap.dlt_from_linktype(libpcap.linktype_from_dlt(dlt)) == dlt
    assert libpcap.savefile_header(dlt, 100)[20:] == struct.pack("=I", libpcap.linktype_from_dlt(dlt))
    if sys.platform == "linux" and dlt == 12:
        assert libpcap.linktype_from_dlt(dlt) == 101


# -- libpcap's interpreter, validator and disassembler ----------------------------------------------------
def test_bpf_filter_on_a_tcp_port_80_packet() -> None:
    program = libpcap.compile_expression("tcp port 80")
    packet = ipv4_tcp(dport=80)
    assert libpcap.bpf_filter(program, packet) == 262144
    assert libpcap.bpf_filter(program, ipv4_tcp(dport=80, sport=80)) == 262144
    assert libpcap.bpf_filter(program, ipv4_tcp(dport=81)) == 0
    assert libpcap.bpf_filter(program, ipv4_tcp(dport=8080, sport=80)) == 262144
    # The destination port is bytes 36..37; a capture cut before them is dropped.
    assert libpcap.bpf_filter(program, packet[:38]) == 262144
    assert libpcap.bpf_filter(program, packet[:37]) == 0
    assert libpcap.bpf_filter(program, packet[:37], wirelen=1500) == 0
    assert libpcap.offline_filter(program, packet) is True
    assert libpcap.offline_filter(program, packet[:37]) is False
    assert bpfjit.interpret(program, packet) == 262144


@pytest.mark.parametrize(
    "make",
    [bytes, bytearray, memoryview, lambda b: memoryview(bytearray(b)), lambda b: memoryview(b"xx" + b)[2:]],
)
def test_bpf_filter_takes_any_contiguous_buffer(make: object) -> None:
    program = Program([Insn(0x20, 0, 0, 0), Insn(0x16)])  # ld [0]; ret a
    assert libpcap.bpf_filter(program, make(b"\x01\x02\x03\x04")) == 0x01020304  # type: ignore[operator]
    assert libpcap.bpf_filter(program, make(b"\x01\x02\x03")) == 0  # type: ignore[operator]
    assert libpcap.bpf_filter(program, make(b"")) == 0  # type: ignore[operator]


def test_bpf_filter_takes_numpy_arrays() -> None:
    np = pytest.importorskip("numpy")
    program = Program([Insn(0x28, 0, 0, 2), Insn(0x16)])  # ldh [2]; ret a
    assert libpcap.bpf_filter(program, np.arange(8, dtype=np.uint8)) == 0x0203
    readonly = np.arange(8, dtype=np.uint8)
    readonly.flags.writeable = False
    assert libpcap.bpf_filter(program, readonly) == 0x0203


def test_bpf_filter_checks_its_arguments() -> None:
    program = Program([Insn(0x80), Insn(0x16)])  # ld #pktlen; ret a
    assert libpcap.bpf_filter(program, b"abc") == 3
    assert libpcap.bpf_filter(program, b"abc", 1000) == 1000
    with pytest.raises(ValueError):
        libpcap.bpf_filter(program, b"abc", 2)
    with pytest.raises(ValueError):
        libpcap.bpf_filter(program, b"abc", 1 << 32)
    with pytest.raises(TypeError):
        libpcap.bpf_filter(program, "abc")
    with pytest.raises(TypeError):
        libpcap.bpf_filter(program, memoryview(b"abcdef")[::2])


def test_bpf_filter_refuses_programs_bpfjit_rejects() -> None:
    # libpcap's interpreter calls abort() on 0x0e (`ret x`, which its bpf_validate accepts).
    for bad in ([Insn(0x0E)], [Insn(0x21), Insn(0x06)], [], [Insn(0x05, 0, 0, 0xFFFFFFFF), Insn(0x06)]):
        with pytest.raises(ValidationError):
            libpcap.bpf_filter(bad, b"\0" * 64)
        with pytest.raises(ValidationError):
            libpcap.LibpcapProgram(bad)


def test_prepared_program_runs_like_bpf_filter() -> None:
    program = libpcap.compile_expression("tcp port 80")
    prepared = libpcap.LibpcapProgram(program)
    assert prepared.program == program
    assert "20 insns" in repr(prepared)
    for packet in (ipv4_tcp(80), ipv4_tcp(81), b""):
        assert prepared(packet) == libpcap.bpf_filter(program, packet) == libpcap.bpf_filter(prepared, packet)
        assert prepared.matches(packet) == (prepared(packet) != 0)


def test_bpf_validate() -> None:
    for expression in EXPRESSIONS:
        assert libpcap.bpf_validate(libpcap.compile_expression(expression))
    ret = Insn(0x06, 0, 0, 0)
    assert not libpcap.bpf_validate([])
    assert not libpcap.bpf_validate([Insn(0x00)])  # no final ret
    assert not libpcap.bpf_validate([Insn(0x15, 1, 0, 0), ret])  # jt past the end
    assert not libpcap.bpf_validate([Insn(0x34, 0, 0, 0), ret])  # div #0
    assert not libpcap.bpf_validate([Insn(0x02, 0, 0, 16), ret])  # st M[16]
    # Looser than bpfjit: libpcap's validator accepts `ret x`, which its own interpreter aborts on.
    assert libpcap.bpf_validate([Insn(0x0E)])
    with pytest.raises(ValidationError):
        bpfjit.validate([Insn(0x0E)])


def test_bpf_image_matches_tcpdump() -> None:
    for expression in ("tcp port 80", "ip[1] * 3 / 2 % 5 = 1", "tcp[((tcp[12] & 0xf0) >> 2):4] = 0x47455420"):
        program = libpcap.compile_expression(expression)
        lines = [libpcap.bpf_image(insn, i) for i, insn in enumerate(program)]
        assert lines == tcpdump_d(expression, "-y", "EN10MB")


def test_bpf_image_takes_tuples() -> None:
    assert libpcap.bpf_image((0x28, 0, 0, 12)) == "(000) ldh      [12]"
    assert libpcap.bpf_image(Insn(0x06, 0, 0, 0xFFFFFFFF), 7) == "(007) ret      #-1"


# libpcap 1.10 prints `unimp 0x81` for `ldx #pktlen`; bpfjit prints its name (SEMANTICS.md).
_CODES = st.sampled_from(sorted(set(OPCODES) - {0x81}))


@given(st.builds(Insn, _CODES, st.integers(0, 255), st.integers(0, 255), constants), st.integers(0, 9999))
def test_bpf_image_matches_bpfjit_text(insn: Insn, index: int) -> None:
    assert libpcap.bpf_image(insn, index) == f"({index:03d}) {insn.text(index)}"


# -- loading ---------------------------------------------------------------------------------------------
def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, check=False
    )


def test_missing_libpcap_names_the_package() -> None:
    code = (
        "import bpfjit, bpfjit.libpcap as L\n"
        "try:\n"
        "    L.compile_expression('ip')\n"
        "except bpfjit.LibraryMissingError as e:\n"
        "    assert isinstance(e, ImportError)\n"
        "    print(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "try:\n"
        "    bpfjit.Program.from_expr('ip')\n"
        "except bpfjit.LibraryMissingError:\n"
        "    print('again')\n"
    )
    result = _python(code, BPFJIT_LIBPCAP="/nonexistent/libpcap.so")
    assert result.returncode == 0, result.stderr
    assert "apt-get install libpcap0.8" in result.stdout
    assert "/nonexistent/libpcap.so" in result.stdout
    assert "again" in result.stdout


def test_library_override_is_used() -> None:
    path = libpcap.library()._name
    result = _python("import bpfjit.libpcap as L; print(L.library()._name)", BPFJIT_LIBPCAP=path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == path


def test_import_loads_neither_libpcap_nor_llvm() -> None:
    code = (
        "import sys, bpfjit, bpfjit.libpcap as L\n"
        "assert L._library is None\n"
        "assert 'llvmlite.binding' not in sys.modules, 'LLVM loaded by import'\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


def test_version_and_symbols() -> None:
    assert libpcap.version().startswith("libpcap version ")
    address = libpcap.native_symbol_address("bpf_filter")
    assert isinstance(address, int) and address > 0
    with pytest.raises(ValueError):
        libpcap.native_symbol_address("no_such_function_here")

