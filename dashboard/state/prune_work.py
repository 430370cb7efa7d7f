"""The Prune page's computation as a background job (``job.py``): every criterion scored and
masked, then evaluated progressively — a small first slice of the validation images for every
criterion (numbers within seconds), then doubling slices until the whole subset — so the page
shows numbers early, refines them, can be cancelled, and stops when its session ends.

Criteria whose masks are cached or cheap (a slider move: only a re-threshold of cached scores)
go first and are all masked before any of them is evaluated (on a model evaluated in slices,
right after the first criterion's first numbers): the page draws its charts (they need the
masks, not the numbers) while the evaluations run, and their numbers come back at once while
a new criterion is still scoring.
"""
from __future__ import annotations

from .catalogue import pruner_info
from .data import dense_cost
from .keys import EXPECTED_ERRORS, Experiment, Setup
from .job import Job, start as start_job
from .pruning import eval_bounds, eval_counts, is_cheap, layer_kept, pruned, val_size

SLOT = "prune"


def start(s: Setup, exp: Experiment, restart: bool = False) -> Job:
    """This session's Prune page job for ``exp``: the running or finished one computing the
    same numbers, else a new one (older work is cancelled at once when the model, data or
    calibration changed, after its current step otherwise); ``restart``: compute again after
    a cancel. Cancel stops it inside a forward."""
    return start_job(SLOT, prune_and_evaluate(s, exp), key=SLOT, signature=signature(s, exp),
                     basis=basis(s, exp), restart=restart, interrupt=True)


def signature(s: Setup, exp: Experiment) -> tuple:
    """What the numbers depend on; ``basis``: what the scores depend on (a change there
    cancels running work at once)."""
    return (s.model_key, s.data, exp.pruners, exp.sparsity, exp.scope, exp.calib, exp.seed,
            exp.val_samples, exp.pattern)


def basis(s: Setup, exp: Experiment) -> tuple:
    return (s.model_key, s.data, exp.calib, exp.seed)


def _score_units(name: str, calib: int, cached: bool) -> float:
    """Rough cost of scoring + masking in image-forwards (progress units; the estimate of time
    left comes from the measured rate, so only proportions matter)."""
    if cached:
        return 0.05
    info = pruner_info(name)
    if not (info["needs_data"] or info["iterative"]):
        return 0.5  # no forward: weights or a random draw
    # a forward and a backward of each image a round (data-free: of one synthetic input)
    return 3.0 * info["rounds"] * (calib if info["needs_data"] else 1)


def prune_and_evaluate(s: Setup, exp: Experiment):
    """``fn(job)`` for :func:`start`: publishes ``order`` (criteria in computing order),
    ``pruned`` (names done), ``failed`` (name → reason), ``upto`` (name → images evaluated)
    and ``n`` (validation images); numbers are read from the caches by the page."""
    def fn(w: Job) -> None:
        n = val_size(s.key(exp.pruners[0], 0.0), exp.val_samples)
        bounds = eval_bounds(n, dense_cost(s.model_key).macs)
        ready = [p for p in exp.pruners if is_cheap(s.key(p))]
        order = ready + [p for p in exp.pruners if p not in ready]
        units = {p: _score_units(p, exp.calib, p in ready) for p in order}
        total = sum(units.values()) + n * (len(order) + 1)
        done_units = 0.0
        done: list[str] = []
        failed: dict[str, str] = {}
        upto = {"dense": 0}
        w.publish(order=order, pruned=[], failed={}, upto=dict(upto), n=n, bounds=bounds)

        def evaluate(name: str, a: int, b: int) -> None:
            nonlocal done_units
            key = s.key(exp.pruners[0], 0.0) if name == "dense" else s.key(name)
            w.progress(done_units / total, f"{name}: images {a + 1}–{b} of {n}")
            eval_counts(key, exp.val_samples, a, b)
            done_units += b - a
            upto[name] = b

        def checked(name: str, a: int, b: int) -> None:
            try:
                evaluate(name, a, b)
            except EXPECTED_ERRORS as e:
                if name == "dense":
                    raise
                failed[name] = str(e)
                done.remove(name)

        def mask(name: str) -> bool:
            nonlocal done_units
            w.progress(done_units / total,
                       f"{name}: {'masking' if name in ready else 'scoring and masking'}")
            try:
                pruned(s.key(name))  # the masks (or the shrunk model)
                layer_kept(s.key(name))  # the kept chart's table, drawn before the numbers
            except EXPECTED_ERRORS as e:
                failed[name] = str(e)
                w.publish(failed=dict(failed))
                return False
            done_units += units[name]
            done.append(name)
            w.publish(pruned=list(done))
            return True

        def mask_all(names: list[str]) -> bool:
            for name in names:
                if w.cancelled:
                    return False
                mask(name)
            return True

        # re-thresholds first, so that every chart can be drawn while the numbers are computed;
        # on a model evaluated in several slices, after the first criterion's first numbers
        progressive = len(bounds) > 1
        if not mask_all(ready[:1] if progressive else ready):
            return
        evaluate("dense", *bounds[0])
        w.publish(upto=dict(upto))
        for i, name in enumerate(order):
            if w.cancelled:
                return
            if name not in done and name not in failed and not mask(name):
                continue
            if name in done:
                checked(name, *bounds[0])
                w.publish(upto=dict(upto), failed=dict(failed), pruned=list(done))
            if i == 0 and progressive and not mask_all(ready[1:]):
                return
        for a, b in bounds[1:]:
            for name in ("dense", *done):
                if w.cancelled:
                    return
                checked(name, a, b)
            w.publish(upto=dict(upto), failed=dict(failed), pruned=list(done))
        w.progress(1.0, "done")

    return fn
