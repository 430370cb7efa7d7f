"""Long computations of a page, in a worker thread per browser session: progress with an
estimate, a Cancel button, and an end when the browser session ends.

A Streamlit script cannot be interrupted inside a long PyTorch call (a rerun request is only
seen at the next ``st.*`` call), and a closed tab leaves a running script computing to the
end. So a page hands its long work to :func:`start`, which runs it in a daemon thread under
``core.study.cancellable`` (every module forward checks the cancel event), and polls it with
:func:`wait`, drawing progress between polls. A session has at most one piece of work per
page (``slot``): starting another with a different ``signature`` cancels the old one — at
once (``cancel``) when the inputs it works on changed, after its current step
(``superseded``) when only its later steps are outdated (a slider move must not throw away
half-computed scores that the new work needs as well).

The watchdog thread cancels the work of every session the Streamlit runtime no longer holds
as active (tab closed, reload: the websocket is gone), within :data:`WATCH_S` seconds.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable

from core import study

from .keys import EXPECTED_ERRORS as EXPECTED

log = logging.getLogger("prunelens.dashboard")
WATCH_S = 1.0


@dataclass(eq=False)
class Work:
    """One session's computation for one page. The worker writes under ``lock`` (through
    :meth:`report` and :meth:`publish`); the page reads :meth:`snapshot`."""

    session: str
    slot: str
    signature: Hashable
    basis: Hashable
    status: str = "running"           # running, done, cancelled, failed
    reason: str = ""
    text: str = "starting"
    done: float = 0.0                 # progress units done of ``total``
    total: float = 1.0
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    version: int = 0                  # bumped when new results land
    results: dict = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    superseded: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None
    error: BaseException | None = None  # what made it fail, re-raised on the page

    @property
    def running(self) -> bool:
        return self.status == "running"

    def report(self, done: float, total: float, text: str) -> None:
        """Progress: ``done`` of ``total`` units (any unit in proportion to time)."""
        with self.changed:
            self.done, self.total, self.text = float(done), max(float(total), 1e-9), text
            self.changed.notify_all()

    def publish(self, **results) -> None:
        """New results for the page (merged into ``results``); wakes the page up."""
        with self.changed:
            self.results.update(results)
            self.version += 1
            self.changed.notify_all()

    def stop_here(self) -> bool:
        """True when the worker should stop before its next step."""
        return self.cancel.is_set() or self.superseded.is_set()

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def eta(self) -> float | None:
        """Seconds left, from the progress rate so far (None before the first unit)."""
        if self.done <= 0 or not self.running:
            return None
        return self.elapsed() * max(self.total - self.done, 0.0) / self.done

    def snapshot(self) -> dict:
        with self.changed:
            return {"status": self.status, "reason": self.reason, "text": self.text,
                    "fraction": min(self.done / self.total, 1.0), "eta": self.eta(),
                    "elapsed": self.elapsed(), "version": self.version,
                    "results": dict(self.results)}

    def _finish(self, status: str, reason: str = "") -> None:
        with self.changed:
            self.status, self.reason, self.ended = status, reason, time.monotonic()
            self.version += 1
            self.changed.notify_all()


_WORK: dict[tuple[str, str], Work] = {}
_LOCK = threading.Lock()


def session_id() -> str:
    """This browser session's id ("" outside a script run, e.g. in a warm-up thread)."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


def current(slot: str, session: str | None = None) -> Work | None:
    with _LOCK:
        return _WORK.get((session_id() if session is None else session, slot))


def start(slot: str, signature: Hashable, basis: Hashable, fn: Callable[[Work], None],
          session: str | None = None, restart: bool = False) -> Work:
    """The session's work for ``slot`` with ``signature``: the running or finished one if it
    has that signature (a rerun for another reason computes nothing again), else a new
    thread running ``fn(work)``. A different running work is cancelled at once when its
    ``basis`` (the inputs it computes on) differs, else after its current step. A finished
    cancelled one is kept (the page offers to resume) unless ``restart``."""
    sid = session_id() if session is None else session
    _ensure_watchdog()
    with _LOCK:
        old = _WORK.get((sid, slot))
        if old is not None and old.signature == signature and not restart and (
                old.running or old.status != "failed"):
            return old
        if old is not None and old.running:
            (old.cancel if old.basis != basis else old.superseded).set()
        work = Work(sid, slot, signature, basis)
        _WORK[(sid, slot)] = work
    work.thread = threading.Thread(target=_run, args=(work, fn), daemon=True,
                                   name=f"prunelens-work-{slot}")
    _attach_script_context(work.thread)
    work.thread.start()
    stop_at_exit(work.thread, lambda: _server_stopping(work))
    return work


def _attach_script_context(thread: threading.Thread) -> None:
    """Give the worker the session's script context, so the ``st.cache_*`` functions it calls
    behave as in the page (the worker itself never draws)."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import (
        add_script_run_ctx, get_script_run_ctx)

    ctx = get_script_run_ctx()
    if ctx is not None:
        add_script_run_ctx(thread, ctx)


def _run(work: Work, fn: Callable[[Work], None]) -> None:
    try:
        with study.cancellable(work.cancel):
            fn(work)
    except study.Cancelled:
        work._finish("cancelled", work.reason or "cancelled")
        return
    except Exception as e:  # reported on the page through the work
        if not isinstance(e, EXPECTED):
            log.exception("%s work failed", work.slot)
        work.error = e
        work._finish("failed", f"{type(e).__name__}: {e}")
        return
    if work.cancel.is_set():
        work._finish("cancelled", work.reason or "cancelled")
    elif work.superseded.is_set():
        work._finish("cancelled", "superseded by newer settings")
    else:
        work._finish("done")


def cancel(slot: str, reason: str = "cancelled", session: str | None = None) -> bool:
    """Cancel the session's running work for ``slot`` (a widget callback)."""
    work = current(slot, session)
    if work is None or not work.running:
        return False
    work.reason = reason
    work.cancel.set()
    return True


EXIT_JOIN_S = 10.0  # per thread: its current step (one mask, one slice, one sweep point)
_AT_EXIT: list[tuple[Callable[[], None], threading.Thread]] = []


def stop_at_exit(thread: threading.Thread, stop: Callable[[], None]) -> None:
    """At interpreter exit, call ``stop()`` and join the (started) daemon ``thread``, at most
    :data:`EXIT_JOIN_S`: a daemon thread still inside a PyTorch op while Python shuts down
    aborts the process ("terminate called …", status 134), e.g. when the server is stopped
    mid-computation. Used by every background thread of the dashboard's state."""
    with _LOCK:
        _AT_EXIT[:] = [(f, t) for f, t in _AT_EXIT if t.is_alive()] + [(stop, thread)]


def _stop_threads() -> None:
    with _LOCK:
        live = [(f, t) for f, t in _AT_EXIT if t.is_alive()]
    for stop, _ in live:
        stop()
    for _, thread in live:
        if thread is not threading.current_thread():
            thread.join(EXIT_JOIN_S)


atexit.register(_stop_threads)


def _server_stopping(work: Work) -> None:
    work.reason = "the server is stopping"
    work.cancel.set()


def wait(work: Work, version: int, timeout: float) -> None:
    """Until ``work`` publishes past ``version``, ends, or ``timeout`` seconds pass."""
    with work.changed:
        work.changed.wait_for(lambda: work.version > version or not work.running, timeout)


# ---------------------------------------------------------------------------- session end

def session_alive(session: str) -> bool:
    """False once the Streamlit runtime no longer holds ``session`` as active (its websocket
    closed: tab closed or reloaded). True without a runtime (AppTest, scripts)."""
    from streamlit.runtime import Runtime

    if not session or not Runtime.exists():
        return True
    return Runtime.instance().is_active_session(session)


_alive: Callable[[str], bool] = session_alive
_WATCHDOG: list[threading.Thread] = []


def sweep_ended_sessions(alive: Callable[[str], bool] | None = None) -> list[Work]:
    """Cancel running work whose session has ended; forget finished work of ended sessions.
    Returns the work cancelled."""
    alive = alive or _alive
    with _LOCK:
        items = list(_WORK.items())
    stopped = []
    for key, work in items:
        if alive(work.session):
            continue
        if work.running:
            work.reason = "the browser session ended"
            work.cancel.set()
            stopped.append(work)
            log.warning("cancelled the %s work of session %s: its browser session ended",
                        work.slot, work.session)
        else:
            with _LOCK:
                if _WORK.get(key) is work:
                    del _WORK[key]
    return stopped


def _watch() -> None:
    while True:
        time.sleep(WATCH_S)
        try:
            sweep_ended_sessions()
        except Exception:  # noqa: BLE001  the watchdog must outlive one bad sweep
            log.exception("session watchdog failed")


def _ensure_watchdog() -> None:
    with _LOCK:
        if not _WATCHDOG or not _WATCHDOG[0].is_alive():
            t = threading.Thread(target=_watch, daemon=True, name="prunelens-session-watchdog")
            _WATCHDOG[:] = [t]
            t.start()


def describe(snap: dict) -> str:
    """"text · 12 s so far · ≈ 30 s left" for a progress bar."""
    eta = snap["eta"]
    left = "estimating time left" if eta is None else f"≈ {_duration(eta)} left"
    return f"{snap['text']} · {_duration(snap['elapsed'])} so far · {left}"


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"
