"""One point of a curve: a criterion's scores on a calibration batch ``(B, C, H, W)``, the
masks (True = kept, each the shape of its weight) or shrunk model at one sparsity, and the
model that point describes, evaluated.

Masked what-if models are evaluated by writing ``dense ⊙ mask`` into a scratch copy of the
model (:func:`masked_into`): the same outputs as ``apply_masks`` on a deep copy, without one
deep copy per point of a curve.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..pruning import PruneResult, apply_masks, compute_masks, prune
from .criteria import criterion_info, make_pruner
from .evaluation import counts_in_threads, eval_counts, evaluate
from .memory import nbytes

SCOPES = ("global", "layer")


@dataclass(frozen=True, eq=False)
class Scores:
    """Scores of one criterion on one calibration batch: ``weights`` ``{param key: keep-score
    tensor}`` for unstructured criteria, ``structured`` (the pruner's per-structure scores)
    for structured ones. Thresholds along a sparsity curve reuse them."""

    criterion: str
    seed: int
    weights: dict[str, Tensor] | None = None
    structured: Any = None
    options: tuple = ()


def score(model: nn.Module, criterion: str, images: Tensor | None = None,
          labels: Tensor | None = None, seed: int = 0,
          options: Mapping[str, Any] | None = None) -> Scores | None:
    """Score ``model`` (left untouched: scored on a deep copy) once. None for iterative
    criteria, whose scores depend on the sparsity."""
    info = criterion_info(criterion)
    if info.needs_training:
        raise ValueError(f"{criterion} learns its masks during training: run "
                         f"prune(model, {criterion!r}, ..., train_set=...) instead")
    if info.iterative:
        return None
    p = make_pruner(criterion, seed, options)
    opts = tuple(sorted((options or {}).items()))
    if info.kind == "structured":
        return Scores(criterion, seed, structured=p.structured_scores(
            copy.deepcopy(model), images, labels), options=opts)
    return Scores(criterion, seed, weights=p.score(copy.deepcopy(model), images, labels),
                  options=opts)


@dataclass(frozen=True, eq=False)
class Pruned:
    """One pruning result without a model copy: ``masks`` (unstructured, True = kept) or
    ``small`` (a structured criterion's shrunk model), or neither (the dense model);
    ``scores`` the keep-scores behind the masks, ``table`` core's per-layer table when the
    pruner made one."""

    criterion: str
    sparsity: float
    scope: str
    masks: dict[str, Tensor] | None = None
    scores: dict[str, Tensor] | None = None
    small: nn.Module | None = None
    table: pd.DataFrame | None = None

    @classmethod
    def from_result(cls, criterion: str, sparsity: float, scope: str,
                    res: PruneResult) -> Pruned:
        """The masks (or the shrunk model, in eval mode) of core's ``PruneResult``."""
        if res.masks is not None:
            return cls(criterion, sparsity, scope, res.masks, res.scores, table=res.table)
        return cls(criterion, sparsity, scope, small=res.model.eval(), table=res.table)

    @property
    def dense(self) -> bool:
        return self.masks is None and self.small is None

    def model(self, base: nn.Module) -> nn.Module:
        """A private copy (free to train or hook) of this model, ``base`` the dense one."""
        if self.small is not None:
            return copy.deepcopy(self.small)
        net = copy.deepcopy(base)
        return apply_masks(net, self.masks) if self.masks is not None else net

    def nbytes(self) -> int:
        """Memory this result owns (the masks, the shrunk model; scores are the criterion's)."""
        return nbytes(self.masks) + nbytes(self.small)


def prune_at(model: nn.Module, criterion: str, sparsity: float, images: Tensor | None = None,
             labels: Tensor | None = None, scope: str = "global", seed: int = 0,
             scores: Scores | None = None,
             options: Mapping[str, Any] | None = None) -> Pruned:
    """``model`` pruned by ``criterion`` at ``sparsity`` (0 → the dense model). With
    ``scores`` (of :func:`score` on the same model) only the threshold step runs: masks from
    the keep-scores, or select-and-shrink of a structured criterion."""
    s = round(float(sparsity), 6)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if s == 0:
        return Pruned(criterion, 0.0, scope)
    if scores is None:
        scores = score(model, criterion, images, labels, seed, options)
    if scores is not None and scores.criterion != criterion:
        raise ValueError(f"scores of {scores.criterion!r} given for criterion {criterion!r}")
    if scores is not None and scores.weights is not None:
        return Pruned(criterion, s, scope, compute_masks(scores.weights, s, scope),
                      scores.weights)
    pruner = make_pruner(criterion, seed, options)
    if scores is not None:
        res = pruner.prune_scored(model, scores.structured, s, scope)
    else:
        res = prune(model, pruner, s, images, labels, scope=scope)
    return Pruned.from_result(criterion, s, scope, res)


def prune_many(model: nn.Module, criterion: str, sparsities: Sequence[float],
               images: Tensor | None = None, labels: Tensor | None = None,
               scope: str = "global", seed: int = 0, scores: Scores | None = None,
               options: Mapping[str, Any] | None = None) -> list[Pruned]:
    """``[prune_at(model, criterion, s, …) for s in sparsities]``. A criterion that declares
    ``schedules_many_sparsities`` (SynFlow: every target's schedule in one batched
    forward/backward per round) runs its targets together; the others re-threshold one
    set of scores."""
    ratios = [round(float(s), 6) for s in sparsities]
    info = criterion_info(criterion)
    pruner = make_pruner(criterion, seed, options)
    todo = sorted({s for s in ratios if s})
    if not (info.schedules_many_sparsities and len(todo) > 1):
        if scores is None and todo and not info.iterative:
            scores = score(model, criterion, images, labels, seed, options)
        return [prune_at(model, criterion, s, images, labels, scope, seed, scores, options)
                for s in ratios]
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    done = dict(zip(todo, pruner.prune_many(model, todo, images, labels, scope)))
    return [Pruned.from_result(criterion, s, scope, done[s]) if s
            else Pruned(criterion, 0.0, scope) for s in ratios]


def masked_into(net: nn.Module, base: nn.Module, masks: Mapping[str, Tensor] | None) -> nn.Module:
    """Write ``base``'s weights ⊙ ``masks`` (none: the dense weights) into ``net``, a plain
    (unparametrized) copy of ``base``: a what-if model for forwards without gradients."""
    masks = masks or {}
    dense = dict(base.named_parameters())
    with torch.no_grad():
        for name, p in net.named_parameters():
            w = dense[name]
            p.copy_(w * masks[name] if name in masks else w)
    return net


@contextmanager
def forward_model(base: nn.Module, pruned: Pruned,
                  scratch: nn.Module | None = None) -> Iterator[nn.Module]:
    """The model ``pruned`` describes, for forwards without gradients: the shrunk model, or
    ``scratch`` (default: a fresh copy of ``base``) holding ``dense ⊙ mask``. Callers sharing
    ``scratch`` between threads hold a lock around this."""
    if pruned.small is not None:
        yield pruned.small
        return
    net = scratch if scratch is not None else copy.deepcopy(base)
    yield masked_into(net.eval(), base, pruned.masks)


def evaluate_pruned(base: nn.Module, pruned: Pruned, val_set: Dataset,
                    scratch: nn.Module | None = None, batch_size: int = 256) -> dict[str, float]:
    """:func:`~core.study.evaluation.evaluate` (accuracy, loss, macro-F1) of the pruned
    model, no fine-tuning."""
    with forward_model(base, pruned, scratch) as net:
        return evaluate(net, val_set, batch_size=batch_size)


def evaluate_counts(base: nn.Module, pruned: Pruned, val_set: Dataset, start: int, stop: int,
                    scratch: nn.Module | None = None, batch_size: int = 64,
                    workers: int = 1) -> tuple[float, int, np.ndarray]:
    """Sum of cross-entropy, sample count and ``(C, C)`` confusion counts of the pruned model on
    ``val_set[start:stop]``. Counts of disjoint slices add up, so a page can show numbers on
    the first few images at once and refine them slice by slice (:func:`metrics_from_counts`
    of the summed counts equals :func:`evaluate_pruned` on the whole set).

    ``workers`` > 1: the batches are shared out to that many threads of one intra-op thread
    each (:func:`counts_in_threads`), for a machine whose cores other programs also use."""
    if not 0 <= start < stop <= len(val_set):
        raise ValueError(f"slice [{start}, {stop}) is outside the {len(val_set)} validation "
                         "samples")
    part = Subset(val_set, list(range(start, stop)))
    with forward_model(base, pruned, scratch) as net:
        dev = next(net.parameters()).device
        loader = DataLoader(part, batch_size=batch_size, shuffle=False)
        with torch.no_grad():
            if workers > 1 and len(loader) > 1:
                loss_sum, count, conf = counts_in_threads(net.eval(), list(loader), dev,
                                                          workers)
            else:
                loss_sum, count, conf = eval_counts(net.eval(), loader, dev, None)
    return float(loss_sum), int(count), conf.cpu().numpy()
