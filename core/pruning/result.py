"""What a pruning returns (:class:`PruneResult`), its per-layer table, and the default
score → masks → apply path every unstructured pruner shares (:func:`mask_prune`)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .checks import check_sparsity
from .masks import (apply_masks, collapsed, comparison, compute_masks, get_masks, layer_collapse,
                    mask_sparsity, same_grouping)
from .nm import check_masks, pattern_sparsity

TABLE_COLUMNS = ["layer", "parameters", "kept", "kept_fraction", "score_mean", "score_median",
                 "score_min", "score_max", "saliency_share", "kept_saliency_share", "collapsed"]


@dataclass
class PruneResult:
    """A pruned deep copy and what the dashboard shows about it.

    ``masks`` / ``scores``: ``{plain key: tensor}`` (None for structured pruners);
    ``table``: :func:`layer_saliency`'s per-layer frame; ``sparsity``: the requested value
    (``1 − N/M`` with a pattern). Unstructured results say in ``extra["comparison"]`` how the
    scores were compared (``"global"``, ``"layer"``, ``"row"`` or the pattern, e.g. ``"2:4"``)
    and, with a pattern, hold :func:`~core.pruning.nm.check_masks`'s verdict in ``extra["nm"]``
    (layers too narrow for the pattern stay dense: ``extra["nm"].skipped``).
    """

    model: nn.Module
    masks: dict[str, Tensor] | None
    scores: dict[str, Tensor] | None
    table: pd.DataFrame
    sparsity: float
    pruner: Any  # the Pruner that made it
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


def mask_prune(pruner: Any, model: nn.Module, sparsity: float, images: Tensor | None,
               labels: Tensor | None, scope: str) -> PruneResult:
    """The default ``prune_model``: one round of scoring, masks, apply to a copy."""
    s = (pattern_sparsity(pruner.pattern, sparsity) if getattr(pruner, "pattern", None)
         else check_sparsity(sparsity))
    scores = pruner.score(model, images, labels)
    existing = {k: m for k, m in get_masks(model).items() if k in scores}
    ranked = same_grouping(scores, {k: v.masked_fill(~existing[k], -math.inf)
                                    if k in existing else v for k, v in scores.items()})
    masks = compute_masks(ranked, s, scope)
    masks = {k: m & existing[k] if k in existing else m for k, m in masks.items()}
    return finish_mask_prune(pruner, model, masks, scores, s, scope)


def finish_mask_prune(pruner: Any, model: nn.Module, masks: dict[str, Tensor],
                      scores: dict[str, Tensor], sparsity: float, scope: str) -> PruneResult:
    pruned = apply_masks(copy.deepcopy(model), masks)
    how = comparison(scores, scope)
    extra: dict = {"comparison": how}
    if getattr(pruner, "pattern", None):
        extra["nm"] = check_masks(masks, pruner.pattern)
    return PruneResult(pruned, masks, scores, layer_saliency(scores, masks), sparsity, pruner,
                       scope, extra)


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
