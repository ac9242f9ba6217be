"""The system libpcap through ctypes: its filter compiler, its interpreter and its link-type tables.

bpfjit uses libpcap for three things: turning pcap-filter expressions (`tcp port 80`) into programs
(`compile_expression`), serving as the reference every other backend is tested against (`bpf_filter`,
libpcap's own C interpreter) and naming link types. The library is loaded on first use, not at
import, so `import bpfjit` works without it; a missing libpcap raises `LibraryMissingError` naming
the package to install. Set `BPFJIT_LIBPCAP=/path/to/libpcap.so` to choose the library (read once,
at first use).

libpcap's interpreter trusts its input: it aborts the whole process on an opcode it does not know
and runs backward jumps. Every entry point that runs a program here validates it with
`bpfjit.validate` first, so only programs bpfjit accepts ever reach libpcap's C code.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import os
import socket
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from .buffers import check_lengths, packet_view
from .caches import CodeCache
from .errors import ExpressionError, LibraryMissingError
from .opcodes import U32_MASK
from .program import DEFAULT_SNAPLEN, Insn, InsnLike, Program
from .validate import validate

__all__ = [
    "LibpcapProgram",
    "bpf_filter",
    "bpf_image",
    "bpf_validate",
    "compile_expression",
    "compile_for_interface",
    "compile_for_savefile",
    "dlt_from_linktype",
    "library",
    "linktype_from_dlt",
    "linktype_name",
    "linktype_value",
    "native_symbol_address",
    "offline_filter",
    "savefile_header",
    "version",
]

ENV_VAR = "BPFJIT_LIBPCAP"
"""Environment variable naming the libpcap shared object to load instead of searching for one."""

# The usual sonames, tried before ctypes.util.find_library (which needs ldconfig or gcc, and finds
# nothing in some minimal containers although the library is installed).
_FALLBACK_NAMES = ("libpcap.so.1", "libpcap.so.0.8", "libpcap.so", "libpcap.dylib")

INSTALL_HINT = (
    "install libpcap: `apt-get install libpcap0.8` (Debian/Ubuntu), "
    "`dnf install libpcap` (Fedora/RHEL), `brew install libpcap` (macOS)"
)

PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF
"""The netmask pcap_compile takes when it is not known (then `ip broadcast` is an error)."""

PCAP_ERRBUF_SIZE = 256


# -- C structures (pcap/bpf.h, pcap/pcap.h) --------------------------------------------------------
class bpf_insn(ctypes.Structure):
    """struct bpf_insn: u_short code; u_char jt; u_char jf; bpf_u_int32 k."""

    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class bpf_program(ctypes.Structure):
    """struct bpf_program: u_int bf_len; struct bpf_insn *bf_insns."""

    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(bpf_insn))]


class timeval(ctypes.Structure):
    # time_t and suseconds_t are both `long` on Linux; on macOS suseconds_t is an int followed by
    # padding, which leaves caplen at the same offset.
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class pcap_pkthdr(ctypes.Structure):
    """struct pcap_pkthdr: struct timeval ts; bpf_u_int32 caplen; bpf_u_int32 len."""

    _fields_ = [("ts", timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


_P = ctypes.c_void_p  # pcap_t *, opaque
_INSNS = ctypes.POINTER(bpf_insn)
_PROG = ctypes.POINTER(bpf_program)

# name: (restype, argtypes); declared so ctypes converts and checks every argument.
_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "pcap_lib_version": (ctypes.c_char_p, []),
    "pcap_open_dead": (_P, [ctypes.c_int, ctypes.c_int]),
    "pcap_fopen_offline": (_P, [ctypes.c_void_p, ctypes.c_char_p]),
    "pcap_dump_fopen": (_P, [_P, ctypes.c_void_p]),
    "pcap_dump_close": (None, [_P]),
    "pcap_close": (None, [_P]),
    "pcap_geterr": (ctypes.c_char_p, [_P]),
    "pcap_datalink": (ctypes.c_int, [_P]),
    "pcap_snapshot": (ctypes.c_int, [_P]),
    "pcap_is_swapped": (ctypes.c_int, [_P]),
    "pcap_compile": (ctypes.c_int, [_P, _PROG, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint32]),
    "pcap_freecode": (None, [_PROG]),
    "pcap_offline_filter": (ctypes.c_int, [_PROG, ctypes.POINTER(pcap_pkthdr), ctypes.c_void_p]),
    "pcap_create": (_P, [ctypes.c_char_p, ctypes.c_char_p]),
    "pcap_set_snaplen": (ctypes.c_int, [_P, ctypes.c_int]),
    "pcap_set_buffer_size": (ctypes.c_int, [_P, ctypes.c_int]),
    "pcap_activate": (ctypes.c_int, [_P]),
    "pcap_set_datalink": (ctypes.c_int, [_P, ctypes.c_int]),
    "pcap_statustostr": (ctypes.c_char_p, [ctypes.c_int]),
    "pcap_datalink_name_to_val": (ctypes.c_int, [ctypes.c_char_p]),
    "pcap_datalink_val_to_name": (ctypes.c_char_p, [ctypes.c_int]),
    # The packet is c_void_p so bytes pass as a pointer to their own storage (no copy).
    "bpf_filter": (ctypes.c_uint, [_INSNS, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]),
    "bpf_validate": (ctypes.c_int, [_INSNS, ctypes.c_int]),
    "bpf_image": (ctypes.c_char_p, [_INSNS, ctypes.c_int]),
}

_load_lock = threading.Lock()
_library: ctypes.CDLL | None = None

# pcap_compile kept global parser state before libpcap 1.8 and is documented as not thread-safe
# there; bpf_image writes into a static buffer. Serialize both.
_compile_lock = threading.Lock()
_image_lock = threading.Lock()


def _candidates() -> Iterator[str]:
    override = os.environ.get(ENV_VAR)
    if override:
        yield override
        return
    # The usual sonames first: find_library runs ldconfig in a subprocess (milliseconds of start-up).
    yield from _FALLBACK_NAMES
    import ctypes.util

    found = ctypes.util.find_library("pcap")
    if found and found not in _FALLBACK_NAMES:
        yield found


def _load() -> ctypes.CDLL:
    errors: list[str] = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        try:
            for symbol, (restype, argtypes) in _SIGNATURES.items():
                function = getattr(lib, symbol)
                function.restype = restype
                function.argtypes = argtypes
        except AttributeError as exc:  # a libpcap too old for pcap_offline_filter (< 1.0)
            errors.append(f"{name}: {exc}")
            continue
        return lib
    override = os.environ.get(ENV_VAR)
    where = f"{ENV_VAR}={override!r} could not be loaded" if override else "libpcap was not found"
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise LibraryMissingError(f"{where}{detail}: {INSTALL_HINT}")


def library() -> ctypes.CDLL:
    """The loaded libpcap (loaded on first call, thread-safe); `LibraryMissingError` if absent."""
    global _library
    if _library is None:
        with _load_lock:
            if _library is None:
                _library = _load()
    return _library


def version() -> str:
    """libpcap's version string, e.g. `libpcap version 1.10.3 (with TPACKET_V3)`."""
    return _text(library().pcap_lib_version())


def native_symbol_address(name: str) -> int:
    """The address of a function in the loaded libpcap (e.g. `bpf_filter`), to call from native code.

    The library stays loaded for the life of the process, so the address stays valid.
    """
    lib = library()
    try:
        function = lib[name]  # a symbol lookup, unlike getattr (which also finds CDLL attributes)
    except AttributeError:
        raise ValueError(f"libpcap has no symbol {name!r}") from None
    address = ctypes.cast(function, ctypes.c_void_p).value
    assert address is not None
    return address


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", errors="replace")


# -- programs as C arrays ------------------------------------------------------------------------------
def _insn_array(program: Program) -> ctypes.Array[bpf_insn]:
    return (bpf_insn * len(program))(*(bpf_insn(*insn) for insn in program))


class LibpcapProgram:
    """A validated program laid out once as a C `struct bpf_program`, to run many packets through.

        run = LibpcapProgram(Program.from_expr("tcp port 80"))
        run(packet)                 # libpcap's bpf_filter: the BPF return value, 0 = drop
        run.matches(packet)         # libpcap's pcap_offline_filter: accepted or not

    Construction raises `ValidationError` for a program bpfjit rejects: libpcap's interpreter would
    abort the process on some of them.
    """

    __slots__ = ("__weakref__", "_bpf_filter", "_bpf_program", "_insns", "_offline_filter", "program")

    def __init__(self, program: Program | Iterable[InsnLike]):
        self.program = validate(program)
        lib = library()
        self._insns = _insn_array(self.program)
        self._bpf_program = bpf_program(len(self.program), self._insns)
        self._bpf_filter = lib.bpf_filter
        self._offline_filter = lib.pcap_offline_filter

    def __repr__(self) -> str:
        return f"<LibpcapProgram of {len(self.program)} insns>"

    def __call__(self, packet: object, wirelen: int | None = None) -> int:
        """libpcap's `bpf_filter(insns, packet, wirelen, caplen)`: the BPF return value."""
        pointer, caplen = _packet_pointer(packet)
        return int(self._bpf_filter(self._insns, pointer, check_lengths(caplen, wirelen), caplen))

    def matches(self, packet: object, wirelen: int | None = None) -> bool:
        """libpcap's `pcap_offline_filter`, as `tcpdump -r` applies a filter: True when accepted."""
        pointer, caplen = _packet_pointer(packet)
        header = pcap_pkthdr(timeval(0, 0), caplen, check_lengths(caplen, wirelen))
        return self._offline_filter(ctypes.byref(self._bpf_program), ctypes.byref(header), pointer) != 0


def _packet_pointer(packet: object) -> tuple[object, int]:
    """Something ctypes passes as `const u_char *`, and the captured length.

    bytes pass as a pointer to their own storage; any other buffer through `batch.buffer_address`
    (no copy; it loads numpy, which only such callers pay for).
    """
    if type(packet) is bytes:
        return packet, len(packet)
    from .batch import buffer_address

    view = packet_view(packet)
    address, keep = buffer_address(view)
    return _Pinned(address, keep), len(view)


class _Pinned(ctypes.c_void_p):
    """An address ctypes passes as `void *`, holding what keeps the buffer behind it alive."""

    def __init__(self, address: int, keep: object):
        super().__init__(address)
        self.keep = keep


# Prepared programs: every one in use, and the 256 most recently used (the code cache's policy).
_prepared: CodeCache[Program, LibpcapProgram] = CodeCache(keep=256)


def _prepare(program: Program | Iterable[InsnLike] | LibpcapProgram) -> LibpcapProgram:
    if isinstance(program, LibpcapProgram):
        return program
    key = program if isinstance(program, Program) else Program(program)
    return _prepared.get(key, lambda: LibpcapProgram(key))


def bpf_filter(
    program: Program | Iterable[InsnLike] | LibpcapProgram, packet: object, wirelen: int | None = None
) -> int:
    """Run `program` on `packet` with libpcap's own interpreter; the BPF return value (0 = drop).

    The program is validated with `bpfjit.validate` (a `ValidationError` for a bad one) and laid out
    as a C array once per distinct program (cached); pass a `LibpcapProgram` to skip even the lookup.
    """
    return _prepare(program)(packet, wirelen)


def offline_filter(
    program: Program | Iterable[InsnLike] | LibpcapProgram, packet: object, wirelen: int | None = None
) -> bool:
    """libpcap's `pcap_offline_filter`: whether `tcpdump -r` would keep the packet."""
    return _prepare(program).matches(packet, wirelen)


def bpf_validate(program: Program | Iterable[InsnLike]) -> bool:
    """libpcap's own `bpf_validate`: looser than bpfjit's (e.g. it accepts `ret x`, 0x0e).

    Safe on any program: it only reads the instructions.
    """
    if not isinstance(program, Program):
        program = Program(program)
    if not program:
        return False  # bpf_validate(f, 0) rejects too; an empty ctypes array is not worth making
    return library().bpf_validate(_insn_array(program), len(program)) != 0


def bpf_image(insn: InsnLike, index: int = 0) -> str:
    """libpcap's disassembly of one instruction, as `tcpdump -d` prints it (with the `(NNN) `)."""
    if not isinstance(insn, Insn):
        insn = Insn(*insn)
    c_insn = bpf_insn(*insn)
    with _image_lock:  # bpf_image formats into a static buffer
        return _text(library().bpf_image(ctypes.byref(c_insn), index))


# -- filter expressions ------------------------------------------------------------------------------
def _netmask_value(netmask: int | str | None) -> int:
    if netmask is None:
        return PCAP_NETMASK_UNKNOWN
    if isinstance(netmask, bool):
        raise TypeError("netmask must be an int, a dotted-quad str or None, not bool")
    if isinstance(netmask, int):
        if not 0 <= netmask <= U32_MASK:
            raise ValueError(f"netmask {netmask} does not fit in 32 bits")
        return netmask
    if isinstance(netmask, str):
        try:
            # pcap_compile takes the mask as a host-order number: 255.255.255.0 is 0xffffff00.
            return int(ipaddress.IPv4Address(netmask.strip()))
        except ValueError:
            raise ValueError(f"netmask {netmask!r} is not a dotted-quad IPv4 netmask") from None
    raise TypeError(f"netmask must be an int, a dotted-quad str or None, not {type(netmask).__name__}")


def compile_expression(
    expression: str,
    linktype: int | str = "EN10MB",
    snaplen: int = DEFAULT_SNAPLEN,
    optimize: bool = True,
    netmask: int | str | None = None,
    *,
    savefile: bool = False,
    swapped: bool = False,
) -> Program:
    """Compile a pcap-filter expression with libpcap's `pcap_compile`, as `tcpdump -d` does.

    `linktype` is a DLT name (`EN10MB`, `DLT_RAW`, `linux_sll`) or number (see `linktype_value`);
    accepted packets return `snaplen`. `netmask` (an int such as 0xffffff00, a str such as
    "255.255.255.0", or None for unknown) is only used by `ip broadcast`. libpcap's error message
    becomes an `ExpressionError`. The result is NOT validated: `ip6 protochain` compiles to a
    backward jump, which libpcap runs and bpfjit rejects.

    By default the program is for a live capture (`pcap_open_dead`, as `tcpdump -d -y` compiles).
    `savefile=True` compiles it as `tcpdump -r` does for a capture file of that link type and
    `snaplen` (the file header's value: 0 or above 2^31-1 becomes the link type's maximum, as
    libpcap reads it), written in the other byte order if `swapped`: libpcap's code differs there
    (DLT_NULL/LOOP test every BSD value of AF_INET6, and DLT_NULL's family in the file's byte order;
    `inbound`, `outbound` and `ifindex` are refused on most link types). See `compile_for_savefile`.
    """
    _check_expression(expression)
    if not isinstance(snaplen, int) or isinstance(snaplen, bool):
        raise TypeError(f"snaplen must be an int, not {type(snaplen).__name__}")
    if savefile:
        header = savefile_header(linktype, snaplen, swapped=swapped)
        return compile_for_savefile(expression, header, optimize=optimize, netmask=netmask)
    if swapped:
        raise ValueError("swapped=True describes a capture file: pass savefile=True too")
    if not 0 < snaplen <= 0x7FFFFFFF:
        raise ValueError(f"snaplen {snaplen} must be between 1 and 2^31-1")
    dlt = linktype_value(linktype)
    mask = _netmask_value(netmask)
    key = (expression, "live", dlt, snaplen, bool(optimize), mask)
    with _compile_lock:
        found = _compiled.get(key)
        if found is not None:
            _compiled.move_to_end(key)
            return found
        handle = library().pcap_open_dead(dlt, snaplen)
        if not handle:
            raise MemoryError("pcap_open_dead failed")
        try:
            return _compile_on(handle, expression, optimize, mask, key)
        finally:
            library().pcap_close(handle)


def compile_for_savefile(
    expression: str, header: bytes, optimize: bool = True, netmask: int | str | None = None
) -> Program:
    """Compile `expression` exactly as `tcpdump -r FILE` does for a file that begins with `header`.

    `header` is a classic pcap file header (24 bytes: magic, version, thiszone, sigfigs, snaplen,
    link type, in either byte order); a pcapng interface is described by `savefile_header` for its
    link type, snaplen and section byte order. libpcap opens it as a savefile (`pcap_fopen_offline`
    on the bytes in memory), so the link type, snapshot length and byte order are libpcap's own
    reading of it, and `pcap_compile` runs on that handle as tcpdump's does on the file's.
    A header libpcap refuses raises `ValueError` with libpcap's message; a refused expression
    (`inbound` on Ethernet: "not supported ... when reading savefiles") an `ExpressionError`.

    Programs are cached by what changes libpcap's output: the expression, link type, snapshot length,
    byte order (for the link types whose code depends on it), `optimize` and the netmask.
    """
    _check_expression(expression)
    if not isinstance(header, (bytes, bytearray)) or len(header) != SAVEFILE_HEADER_LEN:
        raise ValueError(f"a savefile header is {SAVEFILE_HEADER_LEN} bytes of a classic pcap file")
    mask = _netmask_value(netmask)
    lib = library()
    with _compile_lock, _savefile(bytes(header)) as handle:
        dlt, snapshot = int(lib.pcap_datalink(handle)), int(lib.pcap_snapshot(handle))
        swapped = bool(lib.pcap_is_swapped(handle)) and dlt in _BYTE_ORDER_DLTS
        key = (expression, "savefile", dlt, snapshot, bool(optimize), mask, swapped)
        found = _compiled.get(key)
        if found is not None:
            _compiled.move_to_end(key)
            return found
        return _compile_on(handle, expression, optimize, mask, key)


def compile_for_interface(
    expression: str,
    interface: str,
    linktype: int | str,
    snaplen: int = DEFAULT_SNAPLEN,
    optimize: bool = True,
    netmask: int | str | None = None,
) -> Program:
    """Compile `expression` as `tcpdump -i INTERFACE` does: on an activated live handle.

    `pcap_create(interface)` and `pcap_activate` (root or CAP_NET_RAW; the interface must exist in
    the calling thread's network namespace), the link type set to `linktype` (the one the capture
    uses), then `pcap_compile`. On Linux, activation tells libpcap's code generator that the kernel
    runs the program with its extensions (BPF_SPECIAL_VLAN_HANDLING when the kernel has them, DIALECTS.md
    B.1): `vlan` tests `ldb [vlanp]` / `[vlan_tci]`, `inbound` `ldh [type]`, `ifindex N` `ld [ifidx]`.
    Such programs belong to the linux dialect (`dialect="linux"`). A handle libpcap cannot activate
    raises `OSError` with libpcap's message; a refused expression `ExpressionError`. Cached like
    `compile_expression` (by interface name and index as well).
    """
    _check_expression(expression)
    if not isinstance(interface, str) or "\0" in interface:
        raise TypeError(f"interface must be a str naming a network interface, not {interface!r}")
    if not isinstance(snaplen, int) or isinstance(snaplen, bool) or not 0 < snaplen <= 0x7FFFFFFF:
        raise ValueError(f"snaplen {snaplen!r} must be an int between 1 and 2^31-1")
    dlt = linktype_value(linktype)
    mask = _netmask_value(netmask)
    lib = library()
    # (the index changes when an interface of the same name is made again, in another namespace say)
    index = socket.if_nametoindex(interface) if interface != "any" else 0
    key = (expression, "interface", interface, index, dlt, snaplen, bool(optimize), mask)
    with _compile_lock:
        found = _compiled.get(key)
        if found is not None:
            _compiled.move_to_end(key)
            return found
        errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
        handle = lib.pcap_create(interface.encode(), errbuf)
        if not handle:
            raise OSError(f"pcap_create({interface!r}): {_text(errbuf.value)}")
        try:
            lib.pcap_set_snaplen(handle, snaplen)
            lib.pcap_set_buffer_size(handle, 1 << 16)  # the smallest ring: this handle never reads a packet
            status = lib.pcap_activate(handle)
            if status < 0:
                detail = _text(lib.pcap_geterr(handle)) or _text(lib.pcap_statustostr(status))
                raise OSError(f"pcap_activate({interface!r}): {detail}")
            if lib.pcap_datalink(handle) != dlt and lib.pcap_set_datalink(handle, dlt) != 0:
                raise OSError(f"pcap_set_datalink({interface!r}, {dlt}): {_text(lib.pcap_geterr(handle))}")
            return _compile_on(handle, expression, optimize, mask, key)
        finally:
            lib.pcap_close(handle)


SAVEFILE_HEADER_LEN = 24
PCAP_MAGIC = 0xA1B2C3D4
# gencode.c reads the handle's byte order (pcap_is_swapped) only for these: DLT_NULL and DLT_ENC
# store the address family in the writer's byte order. For the others it is not part of the key.
_BYTE_ORDER_DLTS = frozenset((0, 109))
# Compiled programs by everything that changes pcap_compile's output (guarded by _compile_lock).
_compiled: OrderedDict[tuple[object, ...], Program] = OrderedDict()
COMPILED_KEEP = 512


def savefile_header(linktype: int | str, snaplen: int, *, swapped: bool = False) -> bytes:
    """The 24-byte classic pcap file header of a file of DLT `linktype` and header snaplen `snaplen`,
    in this machine's byte order or, if `swapped`, the other one (for `compile_for_savefile`)."""
    if not isinstance(snaplen, int) or isinstance(snaplen, bool):
        raise TypeError(f"snaplen must be an int, not {type(snaplen).__name__}")
    if not 0 <= snaplen <= U32_MASK:
        raise ValueError(f"a file header's snaplen is 32 bits, not {snaplen}")
    order = ("<" if sys.byteorder == "big" else ">") if swapped else "="
    return struct.pack(order + "IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, snaplen, linktype_from_dlt(linktype_value(linktype)))


def _check_expression(expression: object) -> None:
    if not isinstance(expression, str):
        raise TypeError(f"a filter expression must be a str, not {type(expression).__name__}")
    if "\0" in expression:
        # C would silently see only the text before it.
        raise ExpressionError(expression, "a filter expression cannot contain a NUL character")


def _compile_on(handle: int, expression: str, optimize: bool, mask: int, key: tuple[object, ...]) -> Program:
    """pcap_compile on an open handle (with _compile_lock held); the program is cached under `key`."""
    lib = library()
    compiled = bpf_program()
    if lib.pcap_compile(handle, ctypes.byref(compiled), expression.encode("utf-8"), int(bool(optimize)), mask) != 0:
        raise ExpressionError(expression, _text(lib.pcap_geterr(handle)))
    try:
        program = Program([Insn(i.code, i.jt, i.jf, i.k) for i in compiled.bf_insns[: compiled.bf_len]])
    finally:
        lib.pcap_freecode(ctypes.byref(compiled))
    _compiled[key] = program
    while len(_compiled) > COMPILED_KEEP:
        _compiled.popitem(last=False)
    return program


# -- savefile handles from bytes in memory ---------------------------------------------------------------
_libc: ctypes.CDLL | None = None


def _c_library() -> ctypes.CDLL:
    """The C library's fmemopen and fclose (stdio streams over memory, for libpcap's FILE * calls)."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fmemopen.restype = ctypes.c_void_p
        libc.fmemopen.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        libc.fclose.restype = ctypes.c_int
        libc.fclose.argtypes = [ctypes.c_void_p]
        _libc = libc
    return _libc


def _memory_stream(buffer: ctypes.Array[ctypes.c_char], mode: bytes) -> int:
    stream = _c_library().fmemopen(buffer, len(buffer), mode)
    if not stream:
        error = ctypes.get_errno()
        raise OSError(error, f"fmemopen: {os.strerror(error)}")
    return int(stream)


@contextlib.contextmanager
def _savefile(header: bytes) -> Iterator[int]:
    """A libpcap savefile handle opened on `header` in memory, as `pcap_open_offline` opens a file."""
    lib = library()
    buffer = ctypes.create_string_buffer(header, len(header))
    stream = _memory_stream(buffer, b"rb")
    errbuf = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
    handle = lib.pcap_fopen_offline(stream, errbuf)
    if not handle:
        _c_library().fclose(stream)
        raise ValueError(f"libpcap cannot read this file header: {_text(errbuf.value)}")
    try:
        yield handle
    finally:
        lib.pcap_close(handle)  # closes the stream too


# -- link types ----------------------------------------------------------------------------------
COMMON_LINKTYPES = ("EN10MB", "LINUX_SLL", "LINUX_SLL2", "RAW", "IPV4", "IPV6", "NULL", "LOOP",
                    "IEEE802_11_RADIO")  # fmt: skip
"""DLT names worth suggesting when a name is unknown."""

# LINKTYPE_* names (tcpdump.org's link-layer header type registry) whose DLT_* name differs.
_LINKTYPE_ALIASES = {
    "ETHERNET": "EN10MB",
    "IEEE802_5": "IEEE802",
    "ARCNET_BSD": "ARCNET",
    "PPP_HDLC": "PPP_SERIAL",
    "IEEE802_11_RADIOTAP": "IEEE802_11_RADIO",
}


def linktype_value(linktype: int | str) -> int:
    """A DLT_* value: ints as they are; names with or without `DLT_`/`LINKTYPE_`, any case.

    Names are libpcap's (`pcap_datalink_name_to_val`): EN10MB, RAW, LINUX_SLL, IPV4, ... For the
    LINKTYPE_* number stored in a capture file, use `dlt_from_linktype`.
    """
    if isinstance(linktype, bool):
        raise TypeError("linktype must be a DLT name or number, not bool")
    if isinstance(linktype, int):
        if not 0 <= linktype <= 0x7FFFFFFF:
            raise ValueError(f"link type {linktype} is not a DLT number")
        return linktype
    if not isinstance(linktype, str):
        raise TypeError(f"linktype must be a DLT name or number, not {type(linktype).__name__}")
    name = linktype.strip()
    if name.isdigit():
        return int(name)
    upper = name.upper()
    for prefix in ("DLT_", "LINKTYPE_"):
        if upper.startswith(prefix):
            name, upper = name[len(prefix) :], upper[len(prefix) :]
            break
    lib = library()
    for candidate in (name, _LINKTYPE_ALIASES.get(upper)):
        if candidate:
            try:
                value = lib.pcap_datalink_name_to_val(candidate.encode("ascii"))
            except UnicodeEncodeError:
                break
            if value >= 0:
                return int(value)
    raise ValueError(
        f"unknown link type {linktype!r}; valid names include {', '.join(COMMON_LINKTYPES)} "
        "(any DLT_ name libpcap knows, with or without the DLT_ prefix)"
    )


def linktype_name(value: int | str) -> str:
    """libpcap's name for a DLT value (`pcap_datalink_val_to_name`): 1 -> "EN10MB"."""
    dlt = linktype_value(value)
    name = library().pcap_datalink_val_to_name(dlt)
    if name is None:
        raise ValueError(f"libpcap has no name for link type {dlt}")
    return _text(name)


@functools.cache
def dlt_from_linktype(linktype: int) -> int:
    """The DLT_* value for a LINKTYPE_* value from a capture file header (101 RAW -> DLT_RAW, 12).

    The two differ for a few types whose DLT numbers vary by OS (ATM_RFC1483, RAW, SLIP_BSDOS,
    PPP_BSDOS, ATM_CLIP, PFSYNC, PKTAP). libpcap does not export its `linktype_to_dlt`, so this asks
    libpcap's savefile reader, which applies it: the answer is the platform's, by construction.
    """
    if isinstance(linktype, bool) or not isinstance(linktype, int):
        raise TypeError(f"linktype must be an int, not {type(linktype).__name__}")
    if not 0 <= linktype <= 0xFFFF:
        raise ValueError(f"LINKTYPE value {linktype} does not fit in 16 bits")
    # A pcap file header: magic, version 2.4, thiszone, sigfigs, snaplen, linktype (host order).
    header = struct.pack("=IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, linktype)
    try:
        with _savefile(header) as handle:
            return int(library().pcap_datalink(handle))
    except ValueError as error:
        raise ValueError(f"libpcap cannot read link type {linktype}: {error}") from None


@functools.cache
def linktype_from_dlt(dlt: int) -> int:
    """The LINKTYPE_* value a capture file stores for DLT `dlt` (DLT_RAW 12 -> 101): libpcap's
    `dlt_to_linktype`, which it does not export, read back from the header `pcap_dump_fopen` writes."""
    lib = library()
    handle = lib.pcap_open_dead(linktype_value(dlt), 65535)
    if not handle:
        raise MemoryError("pcap_open_dead failed")
    buffer = ctypes.create_string_buffer(SAVEFILE_HEADER_LEN + 8)
    try:
        dumper = lib.pcap_dump_fopen(handle, _memory_stream(buffer, b"wb"))
        if not dumper:
            raise ValueError(f"libpcap cannot write link type {dlt}: {_text(lib.pcap_geterr(handle))}")
        lib.pcap_dump_close(dumper)  # flushes the header into `buffer` and closes the stream
    finally:
        lib.pcap_close(handle)
    linktype = struct.unpack_from("=I", buffer.raw, 20)[0]
    if linktype == U32_MASK:  # dlt_to_linktype's "no LINKTYPE for it"
        raise ValueError(f"link type {dlt} has no LINKTYPE_ value for a capture file")
    return int(linktype)
