"""Cancellation of a computation from another thread, within one module's forward.

``with cancellable(event): ...`` makes every ``nn.Module`` forward in this thread check
``event`` first and raise :class:`Cancelled` once it is set, so scoring, pruning and
evaluation stop without each criterion having to poll. Threads a computation starts carry its
event over with :func:`current_event`.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class Cancelled(Exception):
    """Raised inside a computation run under :func:`cancellable` once its event is set."""


_CANCEL = threading.local()
_CANCEL_HOOK: list = []  # [handle, number of active blocks]
_CANCEL_HOOK_LOCK = threading.Lock()


def current_event() -> threading.Event | None:
    """The event of the innermost :func:`cancellable` block of this thread (None outside)."""
    return getattr(_CANCEL, "event", None)


def hook_installed() -> bool:
    """True while any thread is inside a :func:`cancellable` block (the global forward
    pre-hook is installed)."""
    with _CANCEL_HOOK_LOCK:
        return bool(_CANCEL_HOOK)


def _check_cancel(_module: nn.Module, _inputs: tuple) -> None:
    event = getattr(_CANCEL, "event", None)  # every forward of every thread: no extra call
    if event is not None and event.is_set():
        raise Cancelled("cancelled")


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Within this block, in this thread, every module forward first checks ``event`` and
    raises :class:`Cancelled` once it is set: scoring, pruning and evaluation stop within one
    layer's forward, without each criterion having to poll. (A global forward pre-hook that
    looks at a thread-local event, installed while any such block is active: other threads
    pay one attribute lookup per module forward meanwhile, nothing otherwise.)"""
    with _CANCEL_HOOK_LOCK:
        if not _CANCEL_HOOK:
            _CANCEL_HOOK[:] = [
                torch.nn.modules.module.register_module_forward_pre_hook(_check_cancel), 0]
        _CANCEL_HOOK[1] += 1
    previous = current_event()
    _CANCEL.event = event
    try:
        if event.is_set():
            raise Cancelled("cancelled")
        yield
    finally:
        _CANCEL.event = previous
        with _CANCEL_HOOK_LOCK:
            _CANCEL_HOOK[1] -= 1
            if _CANCEL_HOOK[1] == 0:
                _CANCEL_HOOK[0].remove()
                _CANCEL_HOOK.clear()
