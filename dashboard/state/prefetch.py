"""The Prune page's next slider stops, computed in the server's idle time.

Once a Prune page run has finished, the neighbouring stops of its sparsity slider (two on each
side, nearest first) are masked and evaluated for every criterion of that experiment, in one
server job (``job.py``), one step at a time (a criterion's masks, or one slice of its
evaluation) and only while no page is running (``session.wait_quiet``): a move to a neighbour
then finds its numbers cached, an iterative criterion's schedule (SynFlow's) included. A newer request replaces
an older one between steps (the newer starts once the older's step is over). The results go to
the caches the page read when it asked (the job's), so a page that asks for an entry being
computed waits for it instead of computing it twice.

Only models whose one-image forward is small work (``pruning.is_small``: the 32×32 presets)
are prefetched; on a 224×224 model a step is seconds of CPU a user may never ask for.
``PRUNELENS_PREFETCH=0`` turns it off (a server shared by many users, where idle time is rare).
"""
from __future__ import annotations

import os

from . import job
from .data import dense_cost
from .keys import EXPECTED_ERRORS, SPARSITY_OPTIONS, Experiment, Setup
from .pruning import eval_bounds, eval_counts, is_small, point, pruned, val_size

REACH = 2  # slider stops on each side: arrow-key steps and short drags
SLOT = "prefetch"


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
    if os.environ.get("PRUNELENS_PREFETCH", "1") == "0" or not exp.pruners \
            or not is_small(s.model_key):
        return False
    previous = current()
    job.start(SLOT, lambda j: _prefetch(j, s, exp, previous), session=job.SERVER, basis=SLOT,
              interrupt=True)
    return True


def current() -> job.Job | None:
    """The latest request's job."""
    return job.current(SLOT, job.SERVER)


def wait_done(timeout: float) -> bool:
    """Until the latest request has been prefetched (or given up for a newer one)."""
    latest = current()
    return latest is None or latest.join(timeout)


def _quiet(j: job.Job) -> bool:
    """Wait for the server's idle time; False once a newer request (or the exit) stops it."""
    from dashboard import session

    session.wait_quiet(stop=lambda: j.cancelled)
    return not j.cancelled


def _prefetch(j: job.Job, s: Setup, exp: Experiment, previous: job.Job | None) -> None:
    if previous is not None:
        previous.join()  # one step at a time: the older request ends after its current one
    n = val_size(s.key(exp.pruners[0], 0.0), exp.val_samples)
    bounds = eval_bounds(n, dense_cost(s.model_key).macs)
    for sparsity in neighbours(exp.sparsity):
        for name in exp.pruners:
            if s.key(name).pattern:
                continue  # fixed by its N:M pattern: the slider does not move it
            key = s.key(name, sparsity)
            if not _quiet(j):
                return
            try:
                pruned(key)
                for a, b in bounds:
                    if not _quiet(j):
                        return
                    eval_counts(key, exp.val_samples, a, b)
                point(key, exp.val_samples)  # the page's numbers, assembled from those
            except EXPECTED_ERRORS:
                continue  # the page reports it if the user goes there
