"""A page's numbers in one call each: the Prune page's cards, tables and chart
(:func:`prune_page`, one point: :func:`prune_point`), the Attention page's Fig. 3 grid
(:func:`attention_page`) and the Rollout page's explanations (:func:`explain_pair`,
:func:`explain_point`).

Each is the composition the dashboard shows, from plain inputs (a model, its splits, the
settings), so a notebook gets a page's numbers with the same call. The dashboard caches the
pieces (scores, masks, evaluation counts of validation slices, attention maps) and assembles
them with the same functions used here (:func:`point_report`, ``views.attention_grid``), so
its numbers are these.

    from core import study
    page = study.prune_page(model, train_set, val_set, ["magnitude", "snip"], 0.5,
                            calib=64, seed=0, val_samples=128)
    page.dense.metrics["accuracy"], page.points["snip"].cost["macs_kept"], page.table()
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..models import token_layout
from ..pruning import check_nm, pattern_sparsity
from .calibrate import calibration, val_subset
from .costs import DenseCost, activation_bytes, cost, dense_cost
from .criteria import criterion_info
from .evaluation import metrics_from_counts
from .points import Pruned, Scores, evaluate_counts, forward_model, prune_at, score
from .tables import collapsed_layers, layer_kept
from .views import AttentionGrid, AttentionView, attention_grid, attention_maps, explain

_EVAL_BATCH = 256  # images per forward when a point is evaluated in one go (as ``evaluate``)
NUMBER_COLUMNS = ("criterion", "val_accuracy", "val_loss", "val_macro_f1", "params", "macs",
                  "params_kept", "macs_kept", "collapsed_layers")


def point_setting(criterion: str, sparsity: float, pattern: str | None = None
                  ) -> tuple[float, str]:
    """The sparsity and N:M pattern ``criterion`` prunes at when a page asks for ``sparsity``
    under ``pattern`` (None or ``"unstructured"``: none): an unstructured criterion under
    ``"N:M"`` prunes at ``1 − N/M``; structured criteria ignore the pattern."""
    if pattern and pattern != "unstructured" and criterion_info(criterion).kind == "unstructured":
        return round(pattern_sparsity(pattern), 4), pattern
    return round(float(sparsity), 4), ""


def calibration_size(criterion: str, calib: int, image_bytes: int = 0,
                     score_budget: float | None = None) -> int:
    """The calibration batch ``criterion`` scores on: ``calib``, capped so that its scoring
    activations fit ``score_budget`` bytes (``CriterionInfo.calibration_cap``; None: no cap)
    when one image's forward keeps ``image_bytes`` of module outputs."""
    if score_budget is None:
        return int(calib)
    return criterion_info(criterion).calibration_cap(int(calib), int(image_bytes),
                                                     float(score_budget))


@dataclass(frozen=True, eq=False)
class PointReport:
    """Everything the Prune page shows of one point (a criterion at a sparsity, or the dense
    model): ``metrics`` (accuracy, loss, macro-F1 on ``images`` validation images),
    ``cost`` (params, macs — one image — and their kept fractions), ``layer_table``
    (``layer, parameters, kept_fraction, collapsed``), ``collapsed`` (layers that lost ≥ 99 %
    of their weights) and ``nm`` (the N:M pattern realised, ``""`` without one)."""

    criterion: str
    sparsity: float
    scope: str
    pattern: str
    calib: int
    seed: int
    images: int
    metrics: Mapping[str, float]
    cost: Mapping[str, float]
    layer_table: pd.DataFrame
    collapsed: int
    nm: str = ""

    def row(self) -> dict:
        """The page's "All numbers" row: ``NUMBER_COLUMNS``."""
        return {"criterion": self.criterion,
                **{f"val_{k}": v for k, v in self.metrics.items()}, **self.cost,
                "collapsed_layers": self.collapsed}


def point_report(base: nn.Module, pruned: Pruned, dense: DenseCost,
                 counts: Sequence[tuple[float, int, np.ndarray]], *, calib: int = 0,
                 seed: int = 0, pattern: str = "") -> PointReport:
    """Assemble one point's report from its pruning result and the evaluation counts of
    disjoint validation slices (:func:`~core.study.points.evaluate_counts`; counts add up, so
    slices covering the subset give the numbers of one pass over it)."""
    return PointReport(
        criterion=pruned.criterion, sparsity=pruned.sparsity, scope=pruned.scope,
        pattern=pattern, calib=int(calib), seed=int(seed),
        images=int(sum(c[1] for c in counts)), metrics=metrics_from_counts(counts),
        cost=cost(dense, pruned), layer_table=layer_kept(base, pruned),
        collapsed=collapsed_layers(pruned),
        nm=check_nm(pruned.masks, pattern).summary() if pattern and pruned.masks else "")


def prune_point(model: nn.Module, train_set: Dataset | None, val_set: Dataset,
                criterion: str, sparsity: float, *, calib: int = 64, seed: int = 0,
                scope: str = "global", val_samples: int = 128, pattern: str | None = None,
                scores: Scores | None = None, dense: DenseCost | None = None) -> PointReport:
    """``model`` (left untouched) pruned by ``criterion`` at ``sparsity`` (0: the dense model)
    under ``pattern`` (see :func:`point_setting`), scored on the seeded calibration batch of
    ``calib`` images of ``train_set``, evaluated without fine-tuning on the fixed subset of
    ``val_samples`` images of ``val_set``, with its cost and per-layer table. ``scores`` (of
    :func:`~core.study.points.score` on the same batch) and ``dense`` (its
    :func:`~core.study.costs.dense_cost`) skip recomputing them."""
    s, pat = point_setting(criterion, sparsity, pattern)
    base = model if not model.training else copy.deepcopy(model).eval()
    if s == 0:
        pruned = Pruned("dense", 0.0, "global")
    else:
        images, labels = calibration(train_set, calib, seed)
        pruned = prune_at(base, criterion, s, images, labels, scope, seed, scores,
                          {"pattern": pat} if pat else None)
    val = val_subset(val_set, val_samples)
    counts = evaluate_counts(base, pruned, val, 0, len(val), batch_size=_EVAL_BATCH)
    return point_report(base, pruned, dense or dense_cost(base), [counts],
                        calib=calib if s else 0, seed=seed if s else 0, pattern=pat)


@dataclass(frozen=True, eq=False)
class PageReport:
    """The Prune page: the dense model's report, one per criterion that ran, and the reason
    of each that failed."""

    dense: PointReport
    points: Mapping[str, PointReport]
    failed: Mapping[str, str] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """The "All numbers" table: the dense row, then one per criterion."""
        return pd.DataFrame([self.dense.row(), *(p.row() for p in self.points.values())],
                            columns=list(NUMBER_COLUMNS))

    def layer_tables(self) -> pd.DataFrame:
        """Every criterion's per-layer table, with a ``criterion`` column (the kept chart)."""
        return pd.concat([p.layer_table.assign(criterion=n) for n, p in self.points.items()],
                         ignore_index=True)


def prune_page(model: nn.Module, train_set: Dataset | None, val_set: Dataset,
               criteria: Sequence[str], sparsity: float, *, calib: int = 64, seed: int = 0,
               scope: str = "global", val_samples: int = 128, pattern: str | None = None,
               score_budget: float | None = None,
               expected: tuple[type[BaseException], ...] = (ValueError, RuntimeError)
               ) -> PageReport:
    """The Prune page's numbers: the dense model, and each criterion as :func:`prune_point`
    (its calibration batch capped to ``score_budget`` bytes of scoring activations as the
    page does, see :func:`calibration_size`). A criterion raising one of ``expected`` is
    reported in ``failed`` instead."""
    base = copy.deepcopy(model).eval()
    dense = dense_cost(base)
    image_bytes = activation_bytes(copy.deepcopy(base)) if score_budget is not None else 0
    common = dict(seed=seed, scope=scope, val_samples=val_samples, dense=dense)
    dense_report = prune_point(base, train_set, val_set, criteria[0] if criteria else "dense",
                               0.0, calib=calib, **common)
    points: dict[str, PointReport] = {}
    failed: dict[str, str] = {}
    for name in criteria:
        try:
            points[name] = prune_point(
                base, train_set, val_set, name, sparsity, pattern=pattern,
                calib=calibration_size(name, calib, image_bytes, score_budget), **common)
        except expected as e:
            failed[name] = str(e)
    return PageReport(dense_report, points, failed)


def attention_page(model: nn.Module, train_set: Dataset | None, image: Tensor,
                   criteria: Sequence[str], ratios: Sequence[float],
                   view: AttentionView = AttentionView(), *, calib: int = 64, seed: int = 0,
                   scope: str = "global", score_budget: float | None = None,
                   expected: tuple[type[BaseException], ...] = (ValueError, RuntimeError)
                   ) -> AttentionGrid:
    """The Attention page's Fig. 3 grid (SNP) for one image ``(C, H, W)``: each criterion
    scored once on its calibration batch (as :func:`prune_page`), pruned at each ratio
    (no pattern), its maps captured and read as ``view``; cosine similarity to the dense
    row. A criterion raising one of ``expected`` leaves its row empty (``errors``)."""
    base = copy.deepcopy(model).eval()
    scratch = copy.deepcopy(base)
    view = replace(view, layout=token_layout(base))
    image_bytes = activation_bytes(copy.deepcopy(base)) if score_budget is not None else 0
    scored: dict[str, Scores | None] = {}

    def maps_of(crit: str, ratio: float) -> tuple[np.ndarray, ...]:
        if round(float(ratio), 4) == 0:
            pruned = Pruned("dense", 0.0, "global")
        else:
            images, labels = calibration(
                train_set, calibration_size(crit, calib, image_bytes, score_budget), seed)
            if crit not in scored:
                scored[crit] = score(base, crit, images, labels, seed)
            pruned = prune_at(base, crit, round(float(ratio), 4), images, labels, scope, seed,
                              scored[crit])
        with forward_model(base, pruned, scratch) as net:
            return attention_maps(net, image)

    return attention_grid(maps_of, criteria, ratios, view, expected=expected)


def explain_point(base: nn.Module, pruned: Pruned, image: Tensor, target: int | None = None,
                  fusion: str = "mean", discard: float = 0.0) -> dict[str, dict]:
    """:func:`~core.study.views.explain` (prediction, and one ``(H, W)`` heat map per method)
    of the dense model ``base`` and of ``pruned``, keyed ``"dense"`` and ``"pruned"``; each on
    a private copy (gradients and hooks), ``base`` untouched."""
    return {name: explain(p.model(base).eval(), image, target, fusion, discard)
            for name, p in (("dense", Pruned("dense", 0.0, "global")), ("pruned", pruned))}


def explain_pair(model: nn.Module, train_set: Dataset | None, image: Tensor, criterion: str,
                 sparsity: float, *, calib: int = 64, seed: int = 0, scope: str = "global",
                 target: int | None = None, fusion: str = "mean", discard: float = 0.0,
                 score_budget: float | None = None) -> dict[str, dict]:
    """The Rollout page: :func:`explain_point` of the dense model and of ``criterion`` at
    ``sparsity`` (no pattern), scored on its calibration batch as in :func:`prune_page`."""
    base = copy.deepcopy(model).eval()
    s = round(float(sparsity), 4)
    if s == 0:
        pruned = Pruned("dense", 0.0, "global")
    else:
        image_bytes = activation_bytes(copy.deepcopy(base)) if score_budget is not None else 0
        images, labels = calibration(
            train_set, calibration_size(criterion, calib, image_bytes, score_budget), seed)
        pruned = prune_at(base, criterion, s, images, labels, scope, seed)
    return explain_point(base, pruned, image, target, fusion, discard)
