"""The one eviction policy of compiled code: everything in use is found, the recently used is kept.

Compiled code is expensive to make (milliseconds) and cheap to keep (tens of KiB), and its users
hold it as long as they need it. So a `CodeCache` finds every value still referenced anywhere (a
weak map: a live Filter's code is never compiled twice) and, beyond those, keeps the `keep` most
recently used values alive itself, for programs compiled again soon after their last user went.
Used for filters' machine code, capture-file walkers and libpcap's prepared programs.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CodeCache(Generic[K, V]):
    """Values by key: the live ones (weakly referenced) and the `keep` most recently used (strongly)."""

    def __init__(self, keep: int):
        self.keep = keep
        self._lock = threading.Lock()
        self._live: weakref.WeakValueDictionary[K, V] = weakref.WeakValueDictionary()
        self._recent: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[], V]) -> V:
        """The value for `key`, made by `make()` (outside the lock) when none is alive. Two threads
        may both make one; the first stored wins and both get it."""
        with self._lock:
            value = self._live.get(key)
            if value is not None:
                self._touch(key, value)
                return value
        made = make()
        with self._lock:
            value = self._live.setdefault(key, made)
            self._touch(key, value)
            return value

    def _touch(self, key: K, value: V) -> None:
        self._recent[key] = value
        self._recent.move_to_end(key)
        while len(self._recent) > self.keep:
            self._recent.popitem(last=False)

    def clear(self) -> None:
        """Drop the recently used values (those still referenced elsewhere stay findable)."""
        with self._lock:
            self._recent.clear()

    def __len__(self) -> int:
        return len(self._live)
