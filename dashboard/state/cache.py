"""Caches bounded by bytes, for the big results: scores, pruned models (masks or shrunk
models) and attention maps.

An entry count says nothing about memory: 1,024 attention-map entries are ~0.3 GB on vit-tiny
and ~22 GB on deit-base. :data:`BIG` is one least-recently-used store shared by those caches,
sized by the bytes of the tensors and arrays each entry holds (``core.study.nbytes``), with
one total budget: ``PRUNELENS_CACHE_MB`` (default :data:`DEFAULT_BUDGET_MB`), read at server
start. An entry larger than the whole budget is returned but not kept.

Like ``st.cache_resource``, it is process-wide (every session shares an entry, nobody may
mutate one) and computes each key once: a second caller of a key being computed waits for
that computation (the server's warm-up relies on it) instead of starting another.

Background work writes only into the cache it read from (STYLE.md): a job runs with the cache
that was current where it was started (``bound``, set by ``job.py``), so a cache replaced
meanwhile (``BIG`` swapped by a test, or by a server that clears it) gets nothing from it.
"""
from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Hashable, Iterator, TypeVar

from core.study import nbytes

T = TypeVar("T")
DEFAULT_BUDGET_MB = 2048


class ByteLRU:
    """A thread-safe LRU mapping whose total size (``size(value)`` bytes) stays under
    ``budget`` bytes; the least recently used entries go first."""

    def __init__(self, budget: int, size: Callable[[object], int] = nbytes):
        if budget < 0:
            raise ValueError(f"cache budget must be ≥ 0 bytes, got {budget}")
        self.budget, self._size = int(budget), size
        self._data: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._pending: dict[Hashable, threading.Event] = {}
        self._lock = threading.Lock()
        self.used = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def keys(self) -> list[Hashable]:
        """Keys held, least recently used first."""
        with self._lock:
            return list(self._data)

    def get(self, key: Hashable, compute: Callable[[], T],
            size: Callable[[T], int] | None = None) -> T:
        """The value of ``key``, computed by ``compute()`` if absent (once, however many
        threads ask at the same time). ``size`` overrides how the value is measured."""
        while True:
            with self._lock:
                if key in self._data:
                    self._data.move_to_end(key)
                    return self._data[key][0]  # type: ignore[return-value]
                running = self._pending.get(key)
                if running is None:
                    running = self._pending[key] = threading.Event()
                    break
            running.wait()  # then read it; if that computation failed, compute it ourselves
        try:
            value = compute()
            self.put(key, value, (size or self._size)(value))
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)
            running.set()

    def put(self, key: Hashable, value: object, nbytes_: int) -> None:
        with self._lock:
            if key in self._data:
                self.used -= self._data.pop(key)[1]
            if nbytes_ > self.budget:
                return
            self._data[key] = (value, int(nbytes_))
            self.used += int(nbytes_)
            while self.used > self.budget:
                _, (_, n) = self._data.popitem(last=False)
                self.used -= n

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.used = 0


def budget_bytes() -> int:
    return int(float(os.environ.get("PRUNELENS_CACHE_MB", DEFAULT_BUDGET_MB)) * 2**20)


BIG = ByteLRU(budget_bytes())
_BOUND = threading.local()


def current() -> ByteLRU:
    """The cache this thread reads and writes: its job's (:func:`bound`), else :data:`BIG`."""
    bound_ = getattr(_BOUND, "cache", None)
    return BIG if bound_ is None else bound_


@contextmanager
def bound(c: ByteLRU) -> Iterator[None]:
    """Within this block, in this thread, :func:`byte_cached` functions use ``c``."""
    previous = getattr(_BOUND, "cache", None)
    _BOUND.cache = c
    try:
        yield
    finally:
        _BOUND.cache = previous


def byte_cached(size: Callable[[object], int] | None = None
                ) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: cache a function in :func:`current` (:data:`BIG` outside a job), keyed by
    its name and its positional arguments (hashable keys), leaving out the trailing arguments
    whose names start with ``_`` (as ``st.cache_*`` does: e.g. the image tensor that an
    ``ImageRef`` already names).
    ``f.cached(*args)`` says whether ``f(*args)`` is in the cache, without computing it."""
    def deco(fn: Callable[..., T]) -> Callable[..., T]:
        names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
        keep = [i for i, n in enumerate(names) if not n.startswith("_")]
        where = f"{fn.__module__}.{fn.__qualname__}"

        def key(args: tuple) -> tuple:
            return (where, *(args[i] for i in keep if i < len(args)))

        @functools.wraps(fn)
        def wrapper(*args):
            return current().get(key(args), lambda: fn(*args), size)

        wrapper.cached = lambda *args: key(args) in current()  # type: ignore[attr-defined]
        return wrapper
    return deco
