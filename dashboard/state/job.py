"""The dashboard's one way to run work in the background: :class:`Job`.

Every thread the dashboard starts is a job: a page's long computation (Prune, the Attention
grid, rollout), the Compare page's sweep, fine-tuning and AMAP, folder scans, the slider
prefetch, the server's warm-up, the upload sweep and the session watchdog. :func:`start` runs
``fn(job)`` in a daemon thread; ``fn`` reports through :meth:`Job.progress` and
:meth:`Job.publish`, looks at :attr:`Job.cancelled` between its steps, and returns its result
or raises. Pages read :meth:`Job.snapshot` and wait with :meth:`Job.wait`; :func:`follow` does
both, the one way a page polls.

How a job ends: ``done`` when ``fn`` returns; ``cancelled`` when it returns or raises after a
cancel, or raises ``core.study.Cancelled``; ``failed`` on any other exception (kept in
``error``, re-raised by the page) or :class:`Failed`, an ending ``fn`` reports in its own words.

Registries: a job sits in a slot ``(session, key)``, one job per slot. ``session`` is the browser
session that started it (its jobs end with it: the watchdog cancels them within
:data:`WATCH_S` of its websocket closing) or :data:`SERVER` for work that outlives sessions
(training runs, the prefetch, the warm-up). Starting a job in an occupied slot replaces the
job there (:func:`start` says how).

Caches: a job runs with the byte-bounded cache that was current where it was started
(``cache.current()``) and writes only there: a cache swapped meanwhile (a test, a server
that replaces its cache) receives nothing from work that did not read from it.

At interpreter exit every running job is cancelled and its thread joined (at most
:data:`EXIT_JOIN_S`): a daemon thread still inside a PyTorch op while Python shuts down aborts
the process ("terminate called …", status 134), e.g. when the server is stopped mid-run.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable

from core import study

from . import cache
from .keys import EXPECTED_ERRORS

log = logging.getLogger("prunelens.dashboard")

SERVER = ""          # the session of server-wide jobs (no browser session ends them)
WATCH_S = 1.0        # the watchdog looks for ended sessions this often
EXIT_JOIN_S = 10.0   # per job at exit: its current step (one mask, one slice, one sweep point)


class Failed(Exception):
    """Raised by a job's ``fn`` to end it as ``failed`` with this message as the reason (an
    outcome the work itself reports, e.g. a non-finite training loss: not logged)."""


@dataclass(eq=False)
class Job:
    """One piece of background work. The worker writes through its methods, under
    ``changed`` (a Condition: each write wakes the waiting pages); pages read
    :meth:`snapshot`."""

    id: str
    kind: str
    session: str = SERVER
    key: Hashable = None
    label: str = ""
    owner: str | None = None      # who may follow and cancel it (training runs: owners.py)
    info: dict = field(default_factory=dict)  # fixed facts for the page, in every snapshot
    signature: Hashable = None    # what it computes (start() reuses a job with the same one)
    basis: Hashable = None        # what it computes on (a change cancels it at once)
    status: str = "running"       # running, done, failed, cancelled
    reason: str | None = None     # why it was cancelled or failed
    text: str = "starting"        # the progress message
    fraction: float = 0.0         # progress in [0, 1]
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    version: int = 0              # bumped by each publish and at the end
    results: dict = field(default_factory=dict)  # published so far (partial results)
    result: Any = None            # what fn returned
    error: BaseException | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)  # stop at once
    stop_event: threading.Event = field(default_factory=threading.Event)    # after this step
    changed: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None
    view: Callable[[dict], dict] | None = None  # shapes the snapshot for its page
    interrupt: bool = False       # cancel also inside a forward (core.study.cancellable)

    # -------------------------------------------------------------------- the worker's side

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def cancelled(self) -> bool:
        """True once the work should stop before its next step."""
        return self.cancel_event.is_set() or self.stop_event.is_set()

    def progress(self, fraction: float, text: str | None = None) -> None:
        """Progress: ``fraction`` in [0, 1] (in proportion to time) and what is being done."""
        with self.changed:
            self.fraction = min(max(float(fraction), 0.0), 1.0)
            if text is not None:
                self.text = text
            self.changed.notify_all()

    def publish(self, **results) -> None:
        """New results for the page (merged into ``results``); wakes the page up."""
        with self.changed:
            self.results.update(results)
            self.version += 1
            self.changed.notify_all()

    def append(self, **items) -> None:
        """Append each item to the list ``results[name]`` (a training curve's next point)."""
        with self.changed:
            for name, item in items.items():
                self.results.setdefault(name, []).append(item)
            self.version += 1
            self.changed.notify_all()

    def sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` unless cancelled meanwhile; True once cancelled (a loop's end)."""
        return self.cancel_event.wait(seconds) or self.cancelled

    # -------------------------------------------------------------------- the page's side

    def cancel(self, reason: str | None = None) -> bool:
        """Stop at once (core's loops check the event; an ``interrupt`` job inside every
        forward). False if it has ended already."""
        with self.changed:
            if not self.running:
                return False
            self.reason = reason or self.reason
            self.cancel_event.set()
            self.changed.notify_all()
        return True

    def stop_after_step(self, reason: str) -> None:
        """Stop before the next step (its current one may be reused by newer work)."""
        with self.changed:
            if self.running:
                self.reason = self.reason or reason
                self.stop_event.set()

    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def eta(self) -> float | None:
        """Seconds left, from the progress rate so far (None before any progress)."""
        if self.fraction <= 0 or not self.running:
            return None
        return self.elapsed() * (1.0 - self.fraction) / self.fraction

    def snapshot(self) -> dict:
        """What a page draws: id, kind, label, owner, status, reason, text, fraction, eta,
        elapsed, version, cancel_requested, ``results`` (a copy: lists too, so the worker's
        appends do not reach it) and the ``info`` entries; shaped by the job's ``view``."""
        with self.changed:
            snap = {**self.info, "id": self.id, "kind": self.kind, "label": self.label,
                    "owner": self.owner, "status": self.status, "reason": self.reason,
                    "text": self.text, "fraction": self.fraction, "eta": self.eta(),
                    "elapsed": self.elapsed(), "version": self.version,
                    "cancel_requested": self.cancelled and self.running,
                    "results": {k: list(v) if isinstance(v, list) else v
                                for k, v in self.results.items()}}
        return self.view(snap) if self.view is not None else snap

    def wait(self, version: int, timeout: float | None) -> bool:
        """Until the job publishes past ``version`` or ends (True), or ``timeout`` seconds
        pass (False)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.version > version or not self.running,
                                         timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Until the job has ended (True), or ``timeout`` seconds pass (False)."""
        with self.changed:
            return self.changed.wait_for(lambda: not self.running, timeout)

    def _finish(self, status: str, reason: str | None = None) -> None:
        with self.changed:
            self.status, self.ended = status, time.monotonic()
            self.reason = self.reason or reason if status == "cancelled" else reason
            if status == "done":
                self.fraction = 1.0
            self.version += 1
            self.changed.notify_all()


_LOCK = threading.Lock()
_SLOTS: dict[tuple[str, Hashable], Job] = {}   # the registries: (session, key) → its job
_LIVE: set[Job] = set()                         # started and not yet ended (replaced ones too)
_IDS = itertools.count(1)


def session_id() -> str:
    """This browser session's id (:data:`SERVER` outside a script run)."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else SERVER


def start(kind: str, fn: Callable[[Job], Any], *, session: str | None = None,
          key: Hashable = None, id: str | None = None, label: str = "",
          owner: str | None = None, info: dict | None = None,
          view: Callable[[dict], dict] | None = None, signature: Hashable = None,
          basis: Hashable = None, restart: bool = False,
          reuse: Iterable[str] = ("done", "cancelled"), interrupt: bool = False) -> Job:
    """Run ``fn(job)`` as a job in slot ``(session, key)`` (default: this browser session,
    ``kind``) and return the job at once.

    A job already in the slot with the same (not None) ``signature`` is returned instead if it
    is running, or ended with a status in ``reuse`` (a rerun for another reason computes
    nothing again), unless ``restart``. Otherwise a running one is replaced: cancelled at once,
    or, when it has the same (not None) ``basis`` (the inputs it computes on), after its
    current step (a slider move must not throw away half-computed scores the new work needs
    as well). ``interrupt``: a cancel also stops ``fn`` inside a forward
    (``core.study.cancellable``). ``info``: fixed facts every snapshot carries; ``view``:
    shapes the snapshot for its page."""
    sid = session_id() if session is None else session
    slot = (sid, kind if key is None else key)
    with _LOCK:
        old = _SLOTS.get(slot)
        if old is not None and signature is not None and old.signature == signature \
                and not restart and (old.running or old.status in tuple(reuse)):
            return old
        if old is not None and old.running:
            if basis is not None and old.basis == basis:
                old.stop_after_step("superseded by newer settings")
            else:
                old.cancel("replaced by newer settings")
        job = Job(id or f"{kind}-{next(_IDS)}", kind, sid, slot[1], label, owner, info or {},
                  signature, basis, view=view, interrupt=interrupt)
        _SLOTS[slot] = job
        _LIVE.add(job)
    job.thread = threading.Thread(target=_run, args=(job, [fn], cache.current()), daemon=True,
                                  name=f"prunelens-{kind}")
    if sid != SERVER:
        _attach_script_context(job.thread)
    job.thread.start()
    if sid != SERVER:
        _ensure_watchdog()
    return job


def _attach_script_context(thread: threading.Thread) -> None:
    """Give a session's job the session's script context, so the ``st.cache_*`` functions it
    calls behave as in the page (a job never draws)."""
    from streamlit.runtime.scriptrunner_utils.script_run_context import (
        add_script_run_ctx, get_script_run_ctx)

    ctx = get_script_run_ctx()
    if ctx is not None:
        add_script_run_ctx(thread, ctx)


def _run(job: Job, holder: list, bound: cache.ByteLRU) -> None:
    # ``holder`` is the only reference to fn (and to what it closes over: a model and its
    # data) besides this frame's call: emptied before the job says it ended, so that whoever
    # waits for the end finds nothing of it kept (Thread keeps its args until after this)
    status, reason = "done", None
    try:
        with cache.bound(bound), (study.cancellable(job.cancel_event) if job.interrupt
                                  else nullcontext()):
            job.result = holder.pop()(job)
        if job.cancelled:
            status, reason = "cancelled", "cancelled"
    except Failed as e:
        job.error, status, reason = e, "failed", str(e)
    except Exception as e:  # reported on the page through the job
        if job.cancelled or isinstance(e, study.Cancelled):
            status, reason = "cancelled", str(e) if isinstance(e, study.Cancelled) else "cancelled"
        else:
            if not isinstance(e, EXPECTED_ERRORS):
                log.exception("%s job %s failed", job.kind, job.id)
            job.error, status, reason = e, "failed", f"{type(e).__name__}: {e}"
    finally:
        holder.clear()
        with _LOCK:
            _LIVE.discard(job)
    job._finish(status, reason)


def current(key: Hashable, session: str | None = None) -> Job | None:
    """The job in slot ``(session, key)`` (default: this browser session's)."""
    with _LOCK:
        return _SLOTS.get((session_id() if session is None else session, key))


def find(job_id: str | None) -> Job | None:
    """The registered job with this id, in any slot."""
    with _LOCK:
        return next((j for j in _SLOTS.values() if j.id == job_id), None) if job_id else None


def jobs(kind: str | None = None) -> list[Job]:
    """Every registered job (of ``kind``), all sessions."""
    with _LOCK:
        return [j for j in _SLOTS.values() if kind is None or j.kind == kind]


def forget(job: Job | None) -> None:
    """Take ``job`` out of its slot (a running one goes on, unlisted, until it ends)."""
    if job is None:
        return
    with _LOCK:
        if _SLOTS.get((job.session, job.key)) is job:
            del _SLOTS[(job.session, job.key)]


def follow(job: Job, seen: int = -1, timeout: float = 0.0) -> dict:
    """The one way a page polls: ``job``'s snapshot once it has published past version
    ``seen`` or ended, or after ``timeout`` seconds (at once with the defaults)."""
    job.wait(seen, timeout)
    return job.snapshot()


def describe(snap: dict) -> str:
    """"text · 12 s so far · ≈ 30 s left" for a progress bar."""
    eta = snap["eta"]
    left = "estimating time left" if eta is None else f"≈ {_duration(eta)} left"
    return f"{snap['text']} · {_duration(snap['elapsed'])} so far · {left}"


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


# ---------------------------------------------------------------------------- exit

def stop_all(reason: str = "the server is stopping", join_s: float = EXIT_JOIN_S) -> None:
    """Cancel every running job and join its thread (at most ``join_s`` each). Registered
    with atexit."""
    with _LOCK:
        live = list(_LIVE)
    for job in live:
        job.cancel(reason)
    for job in live:
        if job.thread is not None and job.thread is not threading.current_thread():
            job.thread.join(join_s)


atexit.register(stop_all)


# ---------------------------------------------------------------------------- session end

def session_alive(session: str) -> bool:
    """False once the Streamlit runtime no longer holds ``session`` as active (its websocket
    closed: tab closed or reloaded). True for :data:`SERVER` and without a runtime (AppTest,
    scripts)."""
    from streamlit.runtime import Runtime

    if session == SERVER or not Runtime.exists():
        return True
    return Runtime.instance().is_active_session(session)


_alive: Callable[[str], bool] = session_alive


def sweep_ended_sessions(alive: Callable[[str], bool] | None = None) -> list[Job]:
    """Cancel the running jobs of every session that has ended; forget its ended ones.
    Returns the jobs cancelled."""
    alive = alive or _alive
    stopped = []
    for job in jobs():
        if job.session == SERVER or alive(job.session):
            continue
        if job.cancel("the browser session ended"):
            stopped.append(job)
            log.warning("cancelled the %s job of session %s: its browser session ended",
                        job.kind, job.session)
        elif not job.running:
            forget(job)
    return stopped


def _watch(job: Job) -> None:
    while not job.sleep(WATCH_S):
        try:
            sweep_ended_sessions()
        except Exception:  # noqa: BLE001  the watchdog must outlive one bad sweep
            log.exception("session watchdog failed")


def _ensure_watchdog() -> None:
    watchdog = current("watchdog", SERVER)
    if watchdog is None or not watchdog.running:
        start("watchdog", _watch, session=SERVER)
