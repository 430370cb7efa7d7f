"""The cached pruning pipeline of a :class:`PruneKey`: ``core.study`` called through caches.

Scores are computed once per criterion, calibration batch and seed; moving the sparsity
slider only re-thresholds them (``study.prune_at`` with cached scores) and re-evaluates.
Scores and pruned results live in the byte-bounded cache (``cache.BIG``); the small numbers
(evaluation, cost, tables) in ``st.cache_data``.
"""
from __future__ import annotations

import copy
import threading
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from core import study
from core.boot import SMALL_WORK_MACS
from core.pruning.masks import comparison

from .cache import BIG, byte_cached
from .catalogue import pruner_info
from .data import base_model, calibration, dense_cost, image_bytes, val_subset
from .keys import DataKey, ModelKey, PruneKey, cache_data, cache_resource


def _options(pattern: str) -> dict | None:
    return {"pattern": pattern} if pattern else None


@byte_cached()
def scores(model: ModelKey, data: DataKey, pruner: str, calib: int, seed: int,
           pattern: str = "") -> study.Scores | None:
    """Scores of a criterion (None for iterative ones), computed once on a private copy;
    under an N:M ``pattern`` they declare it, and every re-threshold follows it."""
    images, labels = calibration(data, calib, seed)
    return study.score(base_model(model).model, pruner, images, labels, seed, _options(pattern))


@byte_cached(size=lambda p: p.nbytes())
def pruned(key: PruneKey) -> study.Pruned:
    """Masks (or the shrunk model) of ``key``: a re-threshold (or select-and-shrink) of the
    criterion's cached scores; a full ``prune()`` for iterative criteria (SynFlow)."""
    base = base_model(key.model).model
    if key.sparsity == 0:
        return study.Pruned("dense", 0.0, key.scope)
    images, labels = calibration(key.data, key.calib, key.seed)
    sc = scores(key.model, key.data, key.pruner, key.calib, key.seed, key.pattern)
    return study.prune_at(base, key.pruner, key.sparsity, images, labels, key.scope, key.seed,
                          sc, _options(key.pattern))


def pruned_model(key: PruneKey) -> nn.Module:
    """A private copy (free to train or hook) of the model ``key`` describes."""
    return pruned(key).model(base_model(key.model).model)


# Forward hooks on a shared (cached) model would also see other sessions' forwards; the maps and
# evaluations run on a private scratch copy, and this lock keeps those short forwards one at a
# time.
HOOK_LOCK = threading.Lock()


@cache_resource(show_spinner=False, max_entries=8)
def _scratch(model: ModelKey) -> nn.Module:
    """A private copy of the base model, used only under ``HOOK_LOCK``: each masked forward
    writes ``dense ⊙ mask`` into its weights (cheaper than a deep copy per grid cell)."""
    return copy.deepcopy(base_model(model).model).eval()


@contextmanager
def forward_only(key: PruneKey) -> Iterator[nn.Module]:
    """The model ``key`` describes, for forwards without gradients, while holding
    ``HOOK_LOCK``: a structured criterion's shrunk model itself, otherwise the scratch copy
    with ``dense ⊙ mask`` written into its weights (``study.forward_model``: the same outputs
    as :func:`pruned_model`, a test checks)."""
    p = pruned(key)
    with HOOK_LOCK:
        with study.forward_model(base_model(key.model).model, p, _scratch(key.model)) as net:
            yield net


# The first slice of the validation subset is sized so that it costs about this many MACs per
# criterion: numbers after a slider move within a couple of seconds on a 224×224 model, one
# slice (the whole subset at once) on the 32×32 ones.
QUICK_MACS = 6e9
EVAL_MB = 512
MIN_SLICE = 4


def eval_bounds(n: int, macs_per_image: float) -> list[tuple[int, int]]:
    """Slices ``[a, b)`` of the ``n`` validation images, evaluated in order: a first slice of
    about :data:`QUICK_MACS`, then doubling (4, 8, 16, … images on deit-tiny); each slice's
    counts are cached, so a refinement never evaluates an image twice."""
    q = QUICK_MACS / max(float(macs_per_image), 1.0)
    first = max(MIN_SLICE, 2 ** int(np.floor(np.log2(max(q, 1.0)))))
    bounds, a, b = [], 0, min(n, first)
    while a < n:
        bounds.append((a, b))
        a, b = b, min(n, 2 * b)
    return bounds


@byte_cached()
def eval_counts(key: PruneKey, val_samples: int, start: int,
                stop: int) -> tuple[float, int, np.ndarray]:
    """Loss sum, count and confusion counts on validation images ``[start, stop)`` of the
    fixed subset (``study.evaluate_counts``)."""
    data = val_subset(key.data, val_samples)
    p = pruned(key)
    # a batch's activations within EVAL_MB (256 images on the 32×32 models, as core's
    # evaluate; about a dozen on the 224×224 ones)
    batch = int(max(1, min(256, EVAL_MB * 2**20 // max(image_bytes(key.model), 1))))
    # a 224×224 model: batches shared out to threads of one intra-op thread each, which keep
    # their speed while the browser holds a core (study.counts_in_threads); a 32×32 model's
    # one batch is quicker on PyTorch's own threads
    workers = 1 if is_small(key.model) else torch.get_num_threads()
    with HOOK_LOCK:
        return study.evaluate_counts(base_model(key.model).model, p, data, start, stop,
                                     _scratch(key.model), batch_size=batch, workers=workers)


def val_size(key: PruneKey, val_samples: int) -> int:
    return len(val_subset(key.data, val_samples))


def _bounds(key: PruneKey, val_samples: int, upto: int | None) -> tuple[tuple[int, int], ...]:
    """The slices of :func:`eval_bounds` within the first ``upto`` images (default all)."""
    n = val_size(key, val_samples)
    return tuple(ab for ab in eval_bounds(n, dense_cost(key.model).macs)
                 if upto is None or ab[1] <= upto)


@cache_data(show_spinner=False, max_entries=256)
def _point(key: PruneKey, val_samples: int,
           bounds: tuple[tuple[int, int], ...]) -> study.PointReport:
    return study.point_report(base_model(key.model).model, pruned(key), dense_cost(key.model),
                              [eval_counts(key, val_samples, a, b) for a, b in bounds],
                              calib=key.calib, seed=key.seed, pattern=key.pattern)


def point(key: PruneKey, val_samples: int, upto: int | None = None) -> study.PointReport:
    """What the Prune page shows of ``key`` (``study.point_report``: metrics, cost, per-layer
    table, collapsed layers, N:M summary) on the first ``upto`` validation images (a slice
    boundary of :func:`eval_bounds`; default all). On all of them these are the numbers of
    ``study.prune_point`` with the same settings (a test checks): the slices' counts add up."""
    return _point(key, val_samples, _bounds(key, val_samples, upto))


def evaluation(key: PruneKey, val_samples: int, upto: int | None = None) -> dict[str, float]:
    """Accuracy / loss / macro-F1 of :func:`point`."""
    return dict(point(key, val_samples, upto).metrics)


def is_pruned(key: PruneKey) -> bool:
    """Whether :func:`pruned` of ``key`` is cached (a slider move then only evaluates)."""
    return key.sparsity == 0 or pruned.cached(key)


def is_cheap(key: PruneKey) -> bool:
    """Whether :func:`pruned` of ``key`` is cached or only a re-threshold of cached scores
    (a slider move on a single-shot criterion): milliseconds, no forward or backward."""
    return is_pruned(key) or (
        not pruner_info(key.pruner)["iterative"]
        and scores.cached(key.model, key.data, key.pruner, key.calib, key.seed, key.pattern))


def is_small(model: ModelKey) -> bool:
    """Whether one forward of one image is small work (``core.boot.SMALL_WORK_MACS``: the
    32×32 presets), cheap enough to run on PyTorch's own threads and to compute ahead."""
    return dense_cost(model).macs <= SMALL_WORK_MACS


@cache_data(show_spinner=False, max_entries=256)
def cost(key: PruneKey) -> dict[str, float]:
    """Parameters and MACs (one image) kept, absolute and as a fraction of the dense model
    (``study.cost``: masked weights count as removed; structured: the smaller model)."""
    return study.cost(dense_cost(key.model), pruned(key))


@cache_data(show_spinner=False, max_entries=128)
def layer_kept(key: PruneKey) -> pd.DataFrame:
    """Columns ``layer, parameters, kept_fraction, collapsed`` for one criterion (the kept
    chart, drawn once every criterion is masked, before the numbers; :func:`point`'s
    ``layer_table`` once they are)."""
    return study.layer_kept(base_model(key.model).model, pruned(key))


@cache_data(show_spinner=False, max_entries=64)
def saliency_table(key: PruneKey) -> pd.DataFrame:
    """core's per-layer table (``layer_saliency``: score statistics, saliency shares)."""
    return study.saliency_table(pruned(key))


def _score_key(key: PruneKey) -> PruneKey:
    """Scores of single-shot criteria do not depend on sparsity or scope: one cache entry."""
    if pruner_info(key.pruner)["iterative"]:
        return key
    return replace(key, sparsity=-1.0, scope="")


@cache_data(show_spinner=False, max_entries=64)
def _score_stats(skey: PruneKey, _scores: dict) -> pd.DataFrame:
    return study.score_stats(_scores)


def score_distribution(key: PruneKey) -> tuple[pd.DataFrame, float | None]:
    """Per layer: box-plot statistics of log10 |keep-score| (all entries), and the global cut
    on the same scale (None for layer scope, signed scores or structured criteria)."""
    p = pruned(key)
    if p.scores is None:
        return pd.DataFrame(), None
    stats = _score_stats(_score_key(key), p.scores)
    if comparison(p.scores, key.scope) != "global":  # per row or per group: no single cut
        return stats, None
    return stats, study.log_threshold(p, stats)


def mask_layers(key: PruneKey) -> list[str]:
    p = pruned(key)
    return [k.removesuffix(".weight") for k in p.masks] if p.masks is not None else []


@cache_data(show_spinner=False, max_entries=128)
def mask_matrix(key: PruneKey, layer: str, max_side: int = 192) -> np.ndarray | None:
    """The kept/pruned pattern of ``layer`` (``study.mask_matrix``), None without masks."""
    p = pruned(key)
    return None if p.masks is None else study.mask_matrix(p.masks, layer, max_side)


def warm_up(exp=None) -> None:
    """Fill the caches the Prune page reads for ``exp`` (the default experiment): dataset,
    base model, each criterion's scores, masks, accuracy and cost. ``dashboard/app.py`` runs
    it in a background thread at server start, so the first visitor does not wait for it;
    a page that asks for the same entry meanwhile waits for this computation, not a second one.
    """
    from .data import setup
    from .keys import Experiment

    exp = exp or Experiment()
    s = setup(exp)
    for key in (s.key(exp.pruners[0], 0.0), *map(s.key, exp.pruners)):  # dense, then each
        point(key, exp.val_samples)  # also computes the scores and masks
