"""The disk cache of compiled code: a second process generates nothing, and no bad entry is ever run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bpfjit import cli, codecache, native, packetmix

# A child process that compiles a filter (and tiers it up), filters a capture file through a walker,
# and reports its results, what it generated and loaded, and how many IR functions it built.
CHILD = r"""
import json, sys
import bpfjit
from bpfjit import lower, native
built = {"ir": 0}
for name in ("lower_program_batch", "lower_filter"):
    original = getattr(lower, name)
    def counted(*args, _original=original, **kwargs):
        built["ir"] += 1
        return _original(*args, **kwargs)
    setattr(lower, name, counted)
f = bpfjit.compile("tcp port 80")
frame = bytes.fromhex(sys.argv[1])
results = [f(frame), f(frame[:20]), f.tier_up()(frame)]
stats = bpfjit.filter_file(sys.argv[2], sys.argv[3], "udp")
counts = {"generated": native.COUNTS["generated"], "loaded": native.COUNTS["loaded"]}
print(json.dumps({"results": results, "stats": list(stats), "counts": counts, "ir": built["ir"],
                  "shared": native.COUNTS["loaded shared"]}))
"""
TCP_80 = bytes.fromhex("000000000000000000000000080045000028000000004006000000000000000000000000" "0050" + "00" * 16)


def _child(tmp: Path, cache: Path, *, env: dict[str, str] | None = None) -> dict[str, object]:
    capture = tmp / "in.pcap"
    if not capture.exists():
        packetmix.write_pcap(capture, packetmix.generate(300, seed=4))
    environment = {**os.environ, "BPFJIT_CACHE_DIR": str(cache), "BPFJIT_CACHE": "on", **(env or {})}
    result = subprocess.run([sys.executable, "-c", CHILD, TCP_80.hex(), str(capture), str(tmp / "out.pcap")],
                            env=environment, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_a_second_run_builds_no_ir_and_generates_no_code(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _child(tmp_path, cache)
    assert first["counts"] == {"generated": 4, "loaded": 0}  # entry, baseline, tier-up, walker
    assert first["ir"] == 2 and first["results"] == [262144, 0, 262144]
    entries = sorted(cache.iterdir())
    assert len(entries) == 4
    second = _child(tmp_path, cache)
    assert second["counts"] == {"generated": 0, "loaded": 4} and second["ir"] == 0
    assert second["results"] == first["results"] and second["stats"] == first["stats"]


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "object byte flipped":
        path.write_bytes(data[:-40] + bytes([data[-40] ^ 0x01]) + data[-39:])
    elif how == "key changed":
        at = data.index(b"bpfjit ")
        path.write_bytes(data[:at] + b"BPFJIT " + data[at + 7 :])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "object byte flipped", "key changed", "garbage", "empty"])
def test_a_bad_entry_is_ignored_recompiled_and_replaced(tmp_path: Path, how: str) -> None:
    cache = tmp_path / "cache"
    first = _child(tmp_path, cache)
    for entry in cache.iterdir():
        _corrupt(entry, how)
    second = _child(tmp_path, cache)
    assert second["counts"] == {"generated": 4, "loaded": 0}, "a bad entry must never be loaded"
    assert second["results"] == first["results"] and second["stats"] == first["stats"]
    third = _child(tmp_path, cache)  # the bad entries were replaced by good ones
    assert third["counts"] == {"generated": 0, "loaded": 4}


def test_entries_are_only_found_under_their_own_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPFJIT_CACHE_DIR", str(tmp_path))
    native.binding()
    one, other = codecache.key("test", [b"one"]), codecache.key("test", [b"other"])
    codecache.store(one, b"object code")
    assert codecache.load(one) == b"object code"
    (tmp_path / f"{one.digest}{codecache.SUFFIX}").rename(tmp_path / f"{other.digest}{codecache.SUFFIX}")
    assert codecache.load(other) is None  # a file under another key's name: not that key's code
    assert not any(tmp_path.iterdir())  # and removed


def test_concurrent_writers_leave_whole_entries(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    capture = tmp_path / "in.pcap"
    packetmix.write_pcap(capture, packetmix.generate(300, seed=4))
    environment = {**os.environ, "BPFJIT_CACHE_DIR": str(cache), "BPFJIT_CACHE": "on"}
    children = [subprocess.Popen([sys.executable, "-c", CHILD, TCP_80.hex(), str(capture), str(tmp_path / f"{i}.pcap")],
                                 env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(4)]  # fmt: skip
    outputs = [child.communicate(timeout=120) for child in children]
    assert all(child.returncode == 0 for child in children), [err for _, err in outputs]
    assert len({json.dumps(json.loads(out)["results"]) for out, _ in outputs}) == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    assert _child(tmp_path, cache)["counts"] == {"generated": 0, "loaded": 4}


def test_the_directory_is_kept_under_its_limit_oldest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPFJIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("BPFJIT_CACHE_SIZE", str(20_000))
    monkeypatch.setattr(codecache, "EVICT_EVERY", 1)
    native.binding()
    keys = [codecache.key("test", [bytes([i])]) for i in range(40)]
    for i, k in enumerate(keys):
        codecache.store(k, bytes([i]) * 1000)
        os.utime(tmp_path / f"{k.digest}{codecache.SUFFIX}", (1_000_000 + i, 1_000_000 + i))
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total <= 20_000
    kept = [i for i, k in enumerate(keys) if codecache.load(k) is not None]
    assert kept == list(range(40 - len(kept), 40)) and len(kept) >= 8  # the newest survive


def test_off_means_no_files(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    report = _child(tmp_path, cache, env={"BPFJIT_CACHE": "off"})
    assert report["counts"] == {"generated": 4, "loaded": 0} and not cache.exists()


def test_cache_command_and_no_cache_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    cache = tmp_path / "cache"
    monkeypatch.setenv("BPFJIT_CACHE_DIR", str(cache))
    monkeypatch.setenv("BPFJIT_CACHE", "on")  # (so that what --no-cache sets is undone after the test)
    capture = tmp_path / "in.pcap"
    packetmix.write_pcap(capture, packetmix.generate(50, seed=2))
    assert cli.main(["filter", "--no-cache", "-r", str(capture), "-w", str(tmp_path / "a.pcap"), "icmp or arp"]) == 0
    assert not cache.exists() or not any(cache.iterdir())
    monkeypatch.delenv("BPFJIT_CACHE", raising=False)  # (--no-cache set it for this process)
    # (another expression: this process keeps the first one's walker in memory)
    assert cli.main(["filter", "-r", str(capture), "-w", str(tmp_path / "b.pcap"), "udp or arp"]) == 0
    capsys.readouterr()
    assert cli.main(["cache", "info"]) == 0
    text = capsys.readouterr().out
    entries = len(list(cache.iterdir()))
    assert entries >= 1 and f"entries:   {entries}" in text and str(cache) in text and "state:     on" in text
    assert cli.main(["cache", "clear"]) == 0
    assert f"removed {entries} entries" in capsys.readouterr().out and not any(cache.iterdir())


# A capture-file run as `bpfjit filter` makes it: which code it generated, loaded, and whether LLVM was loaded.
FILE_CHILD = r"""
import json, sys
from bpfjit import capfile, native
stats = capfile.filter_file(sys.argv[1], sys.argv[2], "tcp port 80")
print(json.dumps({"stats": list(stats), "counts": native.COUNTS, "llvm": "llvmlite.binding" in sys.modules}))
"""


def _file_child(tmp: Path, cache: Path, out: str) -> dict[str, object]:
    capture = tmp / "mix.pcap"
    if not capture.exists():
        packetmix.write_pcap(capture, packetmix.generate(2000, seed=9))
    environment = {**os.environ, "BPFJIT_CACHE_DIR": str(cache), "BPFJIT_CACHE_LINK": "sync", "BPFJIT_CACHE": "on"}
    result = subprocess.run([sys.executable, "-c", FILE_CHILD, str(capture), str(tmp / out)], env=environment,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_a_cached_file_run_loads_its_walker_without_llvm(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _file_child(tmp_path, cache, "a.pcap")
    assert first["counts"] == {"generated": 1, "loaded": 0, "loaded shared": 0} and first["llvm"]
    assert sorted(p.suffix for p in cache.iterdir()) == [".bpfjit-code", ".bpfjit-so"]
    second = _file_child(tmp_path, cache, "b.pcap")
    assert second["counts"] == {"generated": 0, "loaded": 1, "loaded shared": 1}
    assert second["llvm"] is False, "llvmlite.binding was imported although the code was cached"
    assert second["stats"] == first["stats"]
    assert (tmp_path / "a.pcap").read_bytes() == (tmp_path / "b.pcap").read_bytes()
    library = next(cache.glob("*.bpfjit-so"))
    _corrupt(library, "object byte flipped")
    third = _file_child(tmp_path, cache, "c.pcap")  # the library is refused; the object entry serves
    assert third["counts"] == {"generated": 0, "loaded": 1, "loaded shared": 0} and third["llvm"]
    assert (tmp_path / "c.pcap").read_bytes() == (tmp_path / "a.pcap").read_bytes()


def test_a_library_that_does_not_load_is_dropped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BPFJIT_CACHE_DIR", str(tmp_path))
    k = codecache.key("test", [b"not a library"])
    codecache.store(k, b"\x7fELF but not really", codecache.SHARED_SUFFIX)  # a whole, verified entry
    assert codecache.load_shared(k) is None and not any(tmp_path.iterdir())


def test_every_part_of_a_key_changes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """What is compiled, and every fact of the environment (bpfjit's version, the code generators'
    source, llvmlite's version, the CPU), each makes another key: no entry outlives what made it."""
    base = codecache.key("filter code", [b"\x06\x00\x00\x00\x00\x00\x00\x00", 2, 0])
    for parts in ([b"\x06\x00\x00\x00\x01\x00\x00\x00", 2, 0], [b"\x06\x00\x00\x00\x00\x00\x00\x00", 3, 0],
                  [b"\x06\x00\x00\x00\x00\x00\x00\x00", 2, 2]):  # fmt: skip
        assert codecache.key("filter code", parts).digest != base.digest
    assert codecache.key("walker", [b"\x06\x00\x00\x00\x00\x00\x00\x00", 2, 0]).digest != base.digest
    environment = list(codecache._environment_lines())
    assert [line.split()[0] for line in environment] == ["bpfjit", "source", "llvmlite", "cpu"]
    for index in range(len(environment)):
        changed = [*environment]
        changed[index] += "-other"
        monkeypatch.setattr(codecache, "_environment", changed)
        assert codecache.key("filter code", [b"\x06\x00\x00\x00\x00\x00\x00\x00", 2, 0]).digest != base.digest
    monkeypatch.setattr(codecache, "_environment", [])  # recomputed from the files: the same as before
    assert codecache.key("filter code", [b"\x06\x00\x00\x00\x00\x00\x00\x00", 2, 0]) == base
