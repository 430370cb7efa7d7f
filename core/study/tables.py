"""Per-layer tables of one pruning result: kept fractions, score statistics, the global cut,
and a layer's mask as an ``(out, in)`` picture.

Keys are parameter names (``blocks.0.attn.qkv.weight``); the tables name layers without the
``.weight`` suffix.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..pruning import layer_collapse, layer_saliency
from .points import Pruned


def layer_kept(base: nn.Module, pruned: Pruned) -> pd.DataFrame:
    """Columns ``layer, parameters, kept_fraction, collapsed``: counted from the masks, or for
    a structured criterion from the sizes of same-named weights in the shrunk model."""
    if pruned.masks is not None:
        rows = [{"layer": k, "parameters": m.numel(),
                 "kept_fraction": int(m.count_nonzero()) / m.numel()}
                for k, m in pruned.masks.items()]
    else:
        small = dict((pruned.small or base).named_parameters())
        rows = [{"layer": k, "parameters": v.numel(),
                 "kept_fraction": small[k].numel() / v.numel() if k in small else 0.0}
                for k, v in base.named_parameters() if v.ndim >= 2 and k.endswith("weight")]
    t = pd.DataFrame(rows, columns=["layer", "parameters", "kept_fraction"])
    t["collapsed"] = t["kept_fraction"] <= 0.01
    t["layer"] = t["layer"].str.removesuffix(".weight")
    return t


def saliency_table(pruned: Pruned) -> pd.DataFrame:
    """core's per-layer table (``layer_saliency``: score statistics, saliency shares)."""
    if pruned.table is not None:
        return pruned.table
    if pruned.scores is None:
        return pd.DataFrame()
    return layer_saliency(pruned.scores, pruned.masks)


def collapsed_layers(pruned: Pruned) -> int:
    return layer_collapse(pruned.masks) if pruned.masks is not None else 0


def threshold(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> float | None:
    """The global cut: the largest keep-score that was pruned (None when nothing was)."""
    best = -math.inf
    for k, s in scores.items():
        cut = s[~masks[k]]
        if cut.numel():
            best = max(best, float(cut.max()))
    return best if math.isfinite(best) else None


def score_stats(scores: Mapping[str, Tensor]) -> pd.DataFrame:
    """Per layer, box-plot statistics of log10 |keep-score| over all its entries: ``q1,
    median, q3``, whiskers ``lower, upper`` (1.5 IQR), ``min, max``, and ``signed`` (any
    negative score, e.g. GraSP)."""
    rows = []
    for k, s in scores.items():
        v = np.log10(np.abs(s.detach().double().reshape(-1).cpu().numpy()) + 1e-30)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        iqr = q3 - q1
        rows.append({"layer": k.removesuffix(".weight"), "q1": q1, "median": med, "q3": q3,
                     "lower": float(v[v >= q1 - 1.5 * iqr].min()),
                     "upper": float(v[v <= q3 + 1.5 * iqr].max()),
                     "min": float(v.min()), "max": float(v.max()),
                     "signed": bool((s < 0).any())})
    return pd.DataFrame(rows)


def log_threshold(pruned: Pruned, stats: pd.DataFrame) -> float | None:
    """The global cut on :func:`score_stats`' log10 scale; None for layer scope, signed scores
    or criteria without weight scores."""
    if (pruned.scores is None or pruned.masks is None or pruned.scope != "global"
            or stats.empty or bool(stats["signed"].any())):
        return None
    cut = threshold(pruned.scores, pruned.masks)
    return None if cut is None else float(np.log10(abs(cut) + 1e-30))


def mask_matrix(masks: Mapping[str, Tensor], layer: str, max_side: int = 192) -> np.ndarray | None:
    """The kept/pruned pattern of ``layer`` as a 2-D (out, in) array in [0, 1], block-averaged
    to at most ``max_side`` per side (the value is the kept fraction of the block)."""
    m = masks.get(layer + ".weight", masks.get(layer))
    if m is None:
        return None
    m = m.detach().float().reshape(m.shape[0], -1).cpu()
    fh, fw = math.ceil(m.shape[0] / max_side), math.ceil(m.shape[1] / max_side)
    if fh > 1 or fw > 1:
        m = torch.nn.functional.avg_pool2d(m[None, None], (fh, fw), ceil_mode=True)[0, 0]
    return m.numpy()
