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
from collections.abc import Iterable
from typing import NamedTuple

# (os.path and os.open rather than pathlib and tempfile: this module is on every command's start-up
# path, and those two cost ~6 ms of imports there.)

MAGIC = b"BPFJIT-CODE-1\n"
HEADER = struct.Struct("<IQ32s")  # key length, object length, SHA-256 of the object
SUFFIX = ".bpfjit-code"
DEFAULT_LIMIT = 64 << 20
# The modules whose source decides the generated code: a change to any of them is a new key, even
# when the version number stays the same (a development checkout).
CODEGEN_SOURCES = ("abi.py", "analysis.py", "cpython.py", "lower.py", "lower_classifier.py", "native.py",
                   "opcodes.py", "pipeline.py", "program.py", "pyentry.py", "walkers.py")  # fmt: skip
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


def set_environment(*facts: str) -> None:
    """What else every key holds (native.py gives LLVM's version, the triple, the CPU and features)."""
    from . import __version__

    _environment[:] = [f"bpfjit {__version__}", f"source {_source_digest()}", *facts]


class Key(NamedTuple):
    text: str  # the whole key, kept in the entry and compared on load
    digest: str  # its SHA-256 in hex: the file name, and a suffix for symbol names

    @property
    def symbol_suffix(self) -> str:
        return self.digest[:20]


def key(kind: str, parts: Iterable[object]) -> Key:
    """The key of `kind` code made from `parts` (bytes are hashed, everything else is written out)."""
    assert _environment, "native.binding() sets the environment first"
    lines = [kind, *_environment]
    for part in parts:
        lines.append(hashlib.sha256(part).hexdigest() if isinstance(part, bytes) else repr(part))
    text = "\n".join(lines)
    return Key(text, hashlib.sha256(text.encode()).hexdigest())


def _path(k: Key) -> str:
    return os.path.join(directory(), f"{k.digest}{SUFFIX}")


def load(k: Key) -> bytes | None:
    """The object stored for `k`, or None (absent, disabled, or not exactly what was stored)."""
    if not enabled():
        return None
    path = _path(k)
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


def store(k: Key, obj: bytes) -> None:
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
            os.replace(temporary, _path(k))
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
            if item.name.endswith(SUFFIX) and not item.name.startswith(".tmp-"):
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
