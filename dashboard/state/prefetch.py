"""The Prune page's next slider stops, computed in the server's idle time.

Once a Prune page run has finished, the neighbouring stops of its sparsity slider (two on each
side, nearest first) are masked and evaluated for every criterion of that experiment, in one
background thread, one step at a time (a criterion's masks, or one slice of its evaluation)
and only while no page is running (``session.wait_quiet``): a move to a neighbour then finds
its numbers cached, an iterative criterion's schedule (SynFlow's) included. A newer request
replaces an older one between steps. The results go to the same caches the page reads, so a
page that asks for an entry being computed waits for it instead of computing it twice.

Only models whose one-image forward is small work (``pruning.is_small``: the 32×32 presets)
are prefetched; on a 224×224 model a step is seconds of CPU a user may never ask for.
``PRUNELENS_PREFETCH=0`` turns it off (a server shared by many users, where idle time is rare).
"""
from __future__ import annotations

import logging
import os
import threading

from .data import dense_cost
from .keys import EXPECTED_ERRORS, SPARSITY_OPTIONS, Experiment, Setup
from .pruning import cost, eval_bounds, eval_counts, is_small, pruned, val_size
from .work import stop_at_exit

log = logging.getLogger("prunelens.dashboard")
REACH = 2  # slider stops on each side: arrow-key steps and short drags

_cond = threading.Condition()
_request: dict = {"seq": 0, "job": None, "done": 0}
_thread: threading.Thread | None = None


def neighbours(sparsity: float, reach: int | None = None) -> list[float]:
    """The slider stops up to ``reach`` (default :data:`REACH`) steps from ``sparsity``,
    nearest first, the one above before the one below: 0.5 → [0.55, 0.45, 0.6, 0.4]."""
    pct = round(sparsity * 100)
    if pct not in SPARSITY_OPTIONS:
        return []
    i = SPARSITY_OPTIONS.index(pct)
    steps = [j for d in range(1, (REACH if reach is None else reach) + 1) for j in (i + d, i - d)]
    return [SPARSITY_OPTIONS[j] / 100 for j in steps if 0 <= j < len(SPARSITY_OPTIONS)]


def request(s: Setup, exp: Experiment) -> bool:
    """Prefetch the neighbours of ``exp.sparsity`` (``exp.val_samples`` images) in idle time,
    replacing any earlier request. False (nothing queued) for a model that is not small."""
    global _thread
    if os.environ.get("PRUNELENS_PREFETCH", "1") == "0" or not exp.pruners \
            or not is_small(s.model_key):
        return False
    with _cond:
        _request["seq"] += 1
        _request["job"] = (s, exp)
        _cond.notify()
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="prunelens-prefetch", daemon=True)
            _thread.start()
            stop_at_exit(_thread, _drop_requests)
    return True


def _drop_requests() -> None:
    """Forget any request: the thread ends after its current step (at most one mask or one
    evaluation slice). Called at interpreter exit (``work.stop_at_exit``)."""
    with _cond:
        _request["seq"] += 1
        _request["job"] = None
        _cond.notify_all()


def _loop() -> None:
    seq = 0
    while True:
        with _cond:
            _cond.wait_for(lambda: _request["seq"] != seq)
            seq, job = _request["seq"], _request["job"]
            if job is None:  # _drop_requests()
                _request["done"] = seq
                _cond.notify_all()
                return
        try:
            _prefetch(seq, *job)
        except Exception:  # noqa: BLE001  idle-time work only: the page computes and reports
            log.exception("prefetch of the neighbouring sparsities failed")
        job = None  # noqa: F841  (nothing of it kept while waiting for the next request)
        with _cond:
            _request["done"] = seq
            if _request["seq"] == seq:
                _request["job"] = None  # holds a model and its data: not beyond its use
            _cond.notify_all()


def wait_done(timeout: float) -> bool:
    """Until the latest request has been prefetched (or given up for a newer one)."""
    with _cond:
        return _cond.wait_for(lambda: _request["done"] == _request["seq"], timeout)


def _current(seq: int) -> bool:
    """Wait for the server's idle time; False once a newer request has come."""
    from dashboard import session

    session.wait_quiet(stop=lambda: _request["seq"] != seq)
    return _request["seq"] == seq


def _prefetch(seq: int, s: Setup, exp: Experiment) -> None:
    n = val_size(s.key(exp.pruners[0], 0.0), exp.val_samples)
    bounds = eval_bounds(n, dense_cost(s.model_key).macs)
    for sparsity in neighbours(exp.sparsity):
        for name in exp.pruners:
            if s.key(name).pattern:
                continue  # fixed by its N:M pattern: the slider does not move it
            key = s.key(name, sparsity)
            if not _current(seq):
                return
            try:
                pruned(key)
                cost(key)
                for a, b in bounds:
                    if not _current(seq):
                        return
                    eval_counts(key, exp.val_samples, a, b)
            except EXPECTED_ERRORS:
                continue  # the page reports it if the user goes there
