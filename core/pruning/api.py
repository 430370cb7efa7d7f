"""``prune()``: one call from a model and a criterion name to a pruned copy plus its report.

``prune(model, name, sparsity, images, labels, scope, **options)`` builds the registered pruner
``name`` with ``options`` and calls its ``prune_model``. For the unstructured criteria that is
score → :func:`~core.pruning.masks.compute_masks` → deep copy → :func:`apply_masks`; SynFlow
overrides it with its iterative schedule. A structured pruner (SNP, AMAP) overrides
``prune_model`` to return a physically smaller model: it fills :class:`PruneResult` with
``masks=None`` (and ``scores=None`` or its own per-group scores) and a per-layer ``table`` of
its own. If the input model already carries masks, the pruned entries stay pruned: they rank
below every score, and the new masks are ANDed with them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .base import Pruner, check_sparsity, get_pruner
from .masks import (SCOPES, apply_masks, collapsed, compute_masks, get_masks, layer_collapse,
                    mask_sparsity)

TABLE_COLUMNS = ["layer", "parameters", "kept", "kept_fraction", "score_mean", "score_median",
                 "score_min", "score_max", "saliency_share", "kept_saliency_share", "collapsed"]


@dataclass
class PruneResult:
    """A pruned deep copy and what the dashboard shows about it.

    ``masks`` / ``scores``: ``{plain key: tensor}`` (None for structured pruners);
    ``table``: :func:`layer_saliency`'s per-layer frame; ``sparsity``: the requested value.
    """

    model: nn.Module
    masks: dict[str, Tensor] | None
    scores: dict[str, Tensor] | None
    table: pd.DataFrame
    sparsity: float
    pruner: Pruner
    scope: str = "global"
    extra: dict = field(default_factory=dict)

    @property
    def actual_sparsity(self) -> float:
        """Fraction of the prunable entries that are zeroed by the masks."""
        return mask_sparsity(self.masks) if self.masks is not None else math.nan

    @property
    def layer_collapse(self) -> int:
        """Layers that lost at least 99% of their weights."""
        return layer_collapse(self.masks) if self.masks is not None else 0


def prune(model: nn.Module, name: str | Pruner, sparsity: float | None = None,
          images: Tensor | None = None,
          labels: Tensor | None = None, scope: str = "global", **options) -> PruneResult:
    """Prune a deep copy of ``model`` with criterion ``name`` to ``sparsity``; ``model`` is
    left untouched.

    images (B, C, H, W) in [0, 1] and labels (B,): the calibration batch (data-free criteria
    accept None). ``scope``: ``"global"`` or ``"layer"`` (see ``compute_masks``). ``options``
    are the pruner's fields (e.g. ``seed``, ``exclude_head``, ``iterations``). ``name`` may also
    be a pruner object, then without ``options``. Structured pruners validate ``sparsity``
    themselves (they may take ``ratios`` instead and ignore ``scope``).
    """
    if isinstance(name, Pruner):
        if options:
            raise ValueError("pass options either in the pruner object or as keywords, not both")
        pruner = name
    else:
        pruner = get_pruner(name, **options)
    if pruner.kind == "unstructured":
        check_sparsity(sparsity)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    return pruner.prune_model(model, sparsity, images, labels, scope=scope)


def mask_prune(pruner: Pruner, model: nn.Module, sparsity: float, images: Tensor | None,
               labels: Tensor | None, scope: str) -> PruneResult:
    """The default ``prune_model``: one round of scoring, masks, apply to a copy."""
    s = check_sparsity(sparsity)
    scores = pruner.score(model, images, labels)
    existing = {k: m for k, m in get_masks(model).items() if k in scores}
    ranked = {k: v.masked_fill(~existing[k], -math.inf) if k in existing else v
              for k, v in scores.items()}
    masks = compute_masks(ranked, s, scope)
    masks = {k: m & existing[k] if k in existing else m for k, m in masks.items()}
    return finish_mask_prune(pruner, model, masks, scores, s, scope)


def finish_mask_prune(pruner: Pruner, model: nn.Module, masks: dict[str, Tensor],
                      scores: dict[str, Tensor], sparsity: float, scope: str) -> PruneResult:
    pruned = apply_masks(copy.deepcopy(model), masks)
    return PruneResult(pruned, masks, scores, layer_saliency(scores, masks), sparsity, pruner,
                       scope)


def layer_saliency(scores: Mapping[str, Tensor],
                   masks: Mapping[str, Tensor] | None = None) -> pd.DataFrame:
    """One row per layer (in the scores' order) with the columns of ``TABLE_COLUMNS``.

    ``saliency_share`` is the layer's share of the total ``|score|`` (absolute values, so signed
    GraSP scores add up too), ``kept_saliency_share`` the share of the total held by the layer's
    kept entries; ``collapsed`` marks layers that lose ≥ 99% of their entries. Without masks,
    everything counts as kept.
    """
    totals = {k: float(s.detach().double().abs().sum()) for k, s in scores.items()}
    grand = sum(totals.values()) or 1.0
    rows = []
    for key, s in scores.items():
        flat = s.detach().double().reshape(-1).cpu()
        m = (masks[key].reshape(-1).cpu() if masks is not None and key in masks
             else torch.ones_like(flat, dtype=torch.bool))
        n, kept = flat.numel(), int(m.count_nonzero())
        arr = flat.numpy()
        rows.append({"layer": key, "parameters": n, "kept": kept, "kept_fraction": kept / n,
                     "score_mean": float(arr.mean()), "score_median": float(np.median(arr)),
                     "score_min": float(arr.min()), "score_max": float(arr.max()),
                     "saliency_share": totals[key] / grand,
                     "kept_saliency_share": float(flat[m].abs().sum()) / grand,
                     "collapsed": collapsed(kept, n)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)
