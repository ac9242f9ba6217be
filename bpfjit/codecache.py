"""The persistent compiled-code cache: machine code on disk, so a second run generates none.

A command-line run lives a fraction of a second, and code generation was most of it for small files
(a walker with its filter inlined: ~30 ms of a ~80 ms `bpfjit filter` run). So the object code LLVM
generates (for filters' tiers, walkers, the classifier and the Python entry) is kept in the
platform's cache directory, and the next run that needs the same code loads it into the JIT
instead: no IR is built, optimised or machine-coded.

An entry is keyed by everything that changes the code: what is compiled (the program's bytes, the
link-type slots, the opt and code-generation levels, ...), the source of the modules that generate
code, the llvmlite and LLVM versions, the target triple and the host CPU and its features. Its file
holds that key in full and a SHA-256 of the object; an entry whose key, length or digest does not
match (truncated, corrupt, from another machine or version) is ignored and replaced, never handed
to the JIT. Entries are written to a temporary file and renamed into place (atomic: concurrent
writers of one key both succeed, readers see a whole entry or none) and the directory is kept under
a size limit, least recently used first.

Environment: `BPFJIT_CACHE=off` (or 0/no/false) disables it; `BPFJIT_CACHE_DIR` moves it (default:
`$XDG_CACHE_HOME/bpfjit`, else `~/.cache/bpfjit`); `BPFJIT_CACHE_SIZE` bounds it in bytes (default
64 MiB). `bpfjit cache info|clear` shows and empties it; `bpfjit filter --no-cache` bypasses it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

# (os.path and os.open rather than pathlib and tempfile: this module is on every command's start-up
# path, and those two cost ~6 ms of imports there.)

MAGIC = b"BPFJIT-CODE-1\n"
SHARED_SUFFIX = ".bpfjit-so"
HEADER = struct.Struct("<IQ32s")  # key length, object length, SHA-256 of the object
SUFFIX = ".bpfjit-code"
DEFAULT_LIMIT = 64 << 20
# The modules whose source decides the generated code: a change to any of them is a new key, even
# when the version number stays the same (a development checkout).
CODEGEN_SOURCES = ("abi.py", "analysis.py", "cpython.py", "dialects.py", "lower.py", "lower_classifier.py",
                   "native.py", "opcodes.py", "pipeline.py", "program.py", "pyentry.py", "walkers.py")  # fmt: skip
_environment: list[str] = []
# Listing the directory costs more than writing an entry, so eviction runs on a run's first store and
# then every EVICT_EVERY stores: the directory exceeds its limit by at most that many entries.
EVICT_EVERY = 16
_stores = [0]


def enabled() -> bool:
    return os.environ.get("BPFJIT_CACHE", "on").strip().lower() not in ("off", "0", "no", "false")


def directory() -> str:
    configured = os.environ.get("BPFJIT_CACHE_DIR")
    if configured:
        return configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bpfjit")


def limit() -> int:
    try:
        return max(0, int(os.environ.get("BPFJIT_CACHE_SIZE", DEFAULT_LIMIT)))
    except ValueError:
        return DEFAULT_LIMIT


def _source_digest() -> str:
    digest = hashlib.sha256()
    package = os.path.dirname(os.path.abspath(__file__))
    for name in CODEGEN_SOURCES:
        digest.update(name.encode())
        with open(os.path.join(package, name), "rb") as source:
            digest.update(source.read())
    return digest.hexdigest()[:32]


def _cpu() -> str:
    """The host CPU as the kernel describes it (model and feature flags): LLVM generates code for
    the CPU it detects, so code made on another CPU must not match. Read without LLVM, so that a
    run whose code is all cached never loads it."""
    facts = [os.uname().machine, sys.byteorder]  # (not platform.machine(): `platform` costs ~2 ms to import)
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
        for line in info:
            if not line.strip():
                break  # the first processor is enough
            name, _, value = line.partition(":")
            if name.strip() in ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU part"):
                facts.append(f"{name.strip()}={value.strip()}")
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:32]


def _environment_lines() -> list[str]:
    """What every key holds besides what is compiled (computed once)."""
    if not _environment:
        import llvmlite  # (the package only: its version pins the LLVM it bundles; no LLVM is loaded)

        from . import __version__

        _environment[:] = [f"bpfjit {__version__}", f"source {_source_digest()}",
                           f"llvmlite {llvmlite.__version__}", f"cpu {_cpu()}"]  # fmt: skip
    return _environment


class Key(NamedTuple):
    text: str  # the whole key, kept in the entry and compared on load
    digest: str  # its SHA-256 in hex: the file name, and a suffix for symbol names

    @property
    def symbol_suffix(self) -> str:
        return self.digest[:20]


def key(kind: str, parts: Iterable[object]) -> Key:
    """The key of `kind` code made from `parts` (bytes are hashed, everything else is written out)."""
    lines = [kind, *_environment_lines()]
    for part in parts:
        lines.append(hashlib.sha256(part).hexdigest() if isinstance(part, bytes) else repr(part))
    text = "\n".join(lines)
    return Key(text, hashlib.sha256(text.encode()).hexdigest())


def _path(k: Key, suffix: str = SUFFIX) -> str:
    return os.path.join(directory(), f"{k.digest}{suffix}")


def load(k: Key, suffix: str = SUFFIX) -> bytes | None:
    """The object stored for `k`, or None (absent, disabled, or not exactly what was stored)."""
    if not enabled():
        return None
    path = _path(k, suffix)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    obj = _verified(data, k)
    if obj is None:
        with contextlib.suppress(OSError):
            os.unlink(path)  # a bad entry is replaced by the next store
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: the last to be evicted
    return obj


def _verified(data: bytes, k: Key) -> bytes | None:
    key_text = k.text.encode()
    start = len(MAGIC) + HEADER.size
    if len(data) < start or not data.startswith(MAGIC):
        return None
    key_length, object_length, digest = HEADER.unpack_from(data, len(MAGIC))
    if key_length != len(key_text) or len(data) != start + key_length + object_length:
        return None
    if data[start : start + key_length] != key_text:
        return None  # another key whose digest collides, or a foreign file under this name
    obj = data[start + key_length :]
    return obj if hashlib.sha256(obj).digest() == digest else None


def store(k: Key, obj: bytes, suffix: str = SUFFIX) -> None:
    """Keep `obj` for `k` (best effort: a cache that cannot be written is no error)."""
    if not enabled() or not obj:
        return
    folder = directory()
    key_text = k.text.encode()
    entry = MAGIC + HEADER.pack(len(key_text), len(obj), hashlib.sha256(obj).digest()) + key_text + obj
    try:
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(6).hex()}{SUFFIX}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(entry)
            os.replace(temporary, _path(k, suffix))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _stores[0] += 1
        if (_stores[0] - 1) % EVICT_EVERY == 0:  # the first store of a run, then every EVICT_EVERY-th
            _evict(folder, limit())
    except OSError:
        return


def _entries(folder: str) -> list[tuple[float, int, str]]:
    found = []
    with contextlib.suppress(OSError), os.scandir(folder) as listing:
        for item in listing:
            if item.name.endswith((SUFFIX, SHARED_SUFFIX)) and not item.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    status = item.stat()
                    found.append((status.st_mtime, status.st_size, item.path))
    return found


def _evict(folder: str, budget: int) -> None:
    """Remove the least recently used entries until the folder holds at most `budget` bytes."""
    entries = sorted(_entries(folder))
    total = sum(size for _, size, _ in entries)
    for _, size, path in entries:
        if total <= budget:
            break
        with contextlib.suppress(OSError):
            os.unlink(path)
            total -= size


class Info(NamedTuple):
    directory: str
    enabled: bool
    entries: int
    bytes: int
    limit: int


def info() -> Info:
    entries = _entries(directory())
    return Info(directory(), enabled(), len(entries), sum(size for _, size, _ in entries), limit())


def clear() -> int:
    """Remove every entry; how many there were."""
    entries = _entries(directory())
    for _, _, path in entries:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return len(entries)


# -- shared libraries: cached code that loads without LLVM ------------------------------------------
# Loading an object into the JIT needs llvmlite's binding, whose import and set-up (~25 ms) were a
# third of a cached `bpfjit filter` run. So code that command-line runs load (walkers, classifiers)
# is also linked, once, into a shared library by the system's C compiler driver, in a detached
# process (`BPFJIT_CACHE_LINK`: "background", the default; "sync"; or "off"), from position-
# independent object code; later runs verify it like any entry and dlopen it from a memfd (the
# verified bytes themselves, not a path that could change in between). Without `cc`, or where a
# library fails to load, the object entry serves as before.


def link_mode() -> str:
    mode = os.environ.get("BPFJIT_CACHE_LINK", "background").strip().lower()
    return mode if mode in ("background", "sync", "off") else "background"


def _compiler() -> str | None:
    import shutil

    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def store_shared(k: Key, pic_object: bytes) -> None:
    """Link `pic_object` into a shared library entry for `k`, now or in a detached process."""
    mode = link_mode()
    if mode == "off" or not enabled() or not hasattr(os, "memfd_create") or _compiler() is None:
        return
    folder = directory()
    try:
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(6).hex()}")
        with open(stem + ".o", "wb") as handle:
            handle.write(pic_object)
        with open(stem + ".key", "w", encoding="utf-8") as handle:
            handle.write(k.text)
    except OSError:
        return
    if mode == "sync":
        _link(stem)
        return
    import subprocess

    with contextlib.suppress(OSError):
        job = "import sys; from bpfjit.codecache import _link; _link(sys.argv[1])"
        subprocess.Popen([sys.executable, "-c", job, stem],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, env={**os.environ, "PYTHONPATH": _package_parent()})  # fmt: skip


def _package_parent() -> str:
    parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.pathsep.join(filter(None, [parent, os.environ.get("PYTHONPATH", "")]))


def _link(stem: str) -> None:
    """Link `stem`.o into a shared library and store it under the key in `stem`.key; clean up."""
    import subprocess

    compiler = _compiler()
    try:
        with open(stem + ".key", encoding="utf-8") as handle:
            text = handle.read()
        if compiler is None:
            return
        result = subprocess.run([compiler, "-shared", "-nostartfiles", "-Wl,-z,noexecstack", "-o", stem + ".so",
                                 stem + ".o"], capture_output=True, timeout=120)  # fmt: skip
        if result.returncode == 0:
            with open(stem + ".so", "rb") as handle:
                library = handle.read()
            store(Key(text, hashlib.sha256(text.encode()).hexdigest()), library, SHARED_SUFFIX)
    except (OSError, subprocess.SubprocessError):
        return
    finally:
        for extension in (".o", ".key", ".so"):
            with contextlib.suppress(OSError):
                os.unlink(stem + extension)


def load_shared(k: Key) -> object | None:
    """The shared library stored for `k`, loaded (a ctypes.CDLL), or None."""
    if not hasattr(os, "memfd_create"):
        return None
    library = load(k, SHARED_SUFFIX)
    if library is None:
        return None
    import ctypes

    fd = os.memfd_create("bpfjit-code")
    try:
        with os.fdopen(os.dup(fd), "wb") as handle:
            handle.write(library)
        return ctypes.CDLL(f"/proc/self/fd/{fd}")
    except OSError:  # not loadable here after all: remove it, the object entry serves
        with contextlib.suppress(OSError):
            os.unlink(_path(k, SHARED_SUFFIX))
        return None
    finally:
        os.close(fd)
