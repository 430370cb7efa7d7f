"""The joint axis: width (pruning) × tokens (ToMe merging, :mod:`core.tokens`). A sweep point
pruned at some sparsity is measured again with ``merge_tokens(pruned, r)`` for each ``r``
(:func:`core.study.sweep` with ``rs=``); this module holds what that needs besides the sweep
itself: the MACs of a merged pruned model, a batch-1 latency, and the Pareto frontier.

    df = study.sweep(model, train_set, val_set, ["magnitude", "l2-norm"], [0, 0.3, 0.6],
                     rs=(0, 4, 8), latency=True)
    front = study.pareto_front(study.joint_table(df))      # mean over seeds, ``pareto`` marked

Latency is the median wall time of a few batch-1 forwards in the sweeping process: noisy and
specific to the machine, its threads and whatever else runs there. It orders points measured in
one run; it is not a number to compare across machines (MACs are).
"""
from __future__ import annotations

import time
import warnings
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import tokens
from ..models import count_macs
from .costs import DenseCost, weight_uses
from .points import Pruned

LATENCY_REPEATS = 5  # forwards timed per model after one warm-up; the median is kept


def check_rs(rs: Sequence[int]) -> list[int]:
    """The ``r`` values of a joint sweep: distinct integers ≥ 0, in the order given."""
    out = [int(r) for r in rs]
    if not out or any(r < 0 for r in out) or len(set(out)) != len(out):
        raise ValueError(f"token merging r must be distinct integers >= 0, got {list(rs)}")
    return out


def merged(net: nn.Module, r: int) -> nn.Module:
    """``merge_tokens(net, r)`` (a copy; ``net`` itself for r = 0), the clipping warning left
    out: a sweep runs the same r at many points (:func:`core.tokens.merge_schedule` says what
    runs)."""
    if not r:
        return net
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tokens.merge_tokens(net, int(r))


def merged_macs(dense: DenseCost, net: nn.Module, pruned: Pruned) -> int:
    """MACs of one image through ``net`` = ``merge_tokens(pruned model, r)``, counted as
    :func:`~core.study.costs.cost` counts the unmerged one: a shrunk model's own MACs; a masked
    one's MACs less ``Σ removed weights × uses``, the uses (tokens through each Linear) counted
    on the merged model, so fewer tokens and fewer weights compose."""
    macs = count_macs(net)
    if pruned.small is not None or pruned.masks is None:
        return macs
    uses = weight_uses(net)
    return macs - sum(int(m.numel() - m.count_nonzero()) * uses.get(k, 0)
                      for k, m in pruned.masks.items())


@torch.inference_mode()
def latency_ms(net: nn.Module, x: Tensor, repeats: int = LATENCY_REPEATS) -> float:
    """Median milliseconds of ``net(x)`` over ``repeats`` forwards after one warm-up (``x``
    (B, C, H, W), batch 1 in the sweep). Wall time on this machine now: noisy, see the module
    docstring."""
    was_training = net.training
    net.eval()
    try:
        net(x)
        times = []
        for _ in range(repeats):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            t0 = time.perf_counter()
            net(x)
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        net.train(was_training)
    return float(np.median(times))


def pareto_front(df: pd.DataFrame, x: str = "macs_kept", y: str = "accuracy") -> pd.DataFrame:
    """``df`` with a bool column ``pareto``: the points no other point dominates (lower or
    equal ``x`` and higher or equal ``y``, one of them strictly). Equal points are all on the
    front; a point with NaN in ``x`` or ``y`` is not. O(n log n): sorted by x, a point is on
    the front when its y beats every y at a smaller x and is the best at its own x."""
    out = df.copy()
    xs, ys = out[x].to_numpy(float), out[y].to_numpy(float)
    ok = ~(np.isnan(xs) | np.isnan(ys))
    front = np.zeros(len(out), dtype=bool)
    idx = np.flatnonzero(ok)
    order = idx[np.lexsort((-ys[idx], xs[idx]))]  # x ascending, y descending
    best = -np.inf
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and xs[order[j]] == xs[order[i]]:
            j += 1
        top = ys[order[i]]
        if top > best:
            front[order[i:j]] = ys[order[i:j]] == top
            best = top
        i = j
    out["pareto"] = front
    return out


def joint_table(df: pd.DataFrame, x: str = "macs_kept", metric: str = "accuracy"
                ) -> pd.DataFrame:
    """One row per criterion × sparsity × r: the mean over seeds of ``x`` and ``metric``
    (and ``n`` seeds), with the Pareto front over all of them marked (:func:`pareto_front`).
    A frame without an ``r`` column (a sweep from before the joint axis) is r = 0."""
    if "r" not in df.columns:
        df = df.assign(r=0)
    g = df.groupby(["criterion", "sparsity", "r"], sort=False)
    t = g[[x, metric]].mean()
    t["n"] = g[metric].count()
    t = t.reset_index()
    t = t[t[x].notna() & t[metric].notna()].reset_index(drop=True)
    return pareto_front(t, x, metric)


def at_r(df: pd.DataFrame, r: int | None = None) -> pd.DataFrame:
    """The rows of one ``r`` (default: the smallest present; r = 0 is the pruned model
    without merging), for the per-sparsity curves and tables. A frame without an ``r``
    column is returned as it is."""
    if "r" not in df.columns or not len(df):
        return df
    r = int(df["r"].min()) if r is None else int(r)
    return df[df["r"] == r].reset_index(drop=True)
