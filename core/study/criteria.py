"""What a registered criterion is, and a pruner built from its name with a seed and options.

:func:`criterion_info` is what pages, the CLI and the sweep read before running a criterion:
whether it is structured, iterative (its masks depend on the sparsity), needs a calibration
batch ``(B, C, H, W)`` or a training run, and its teaching text.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from ..pruning import Pruner, get_pruner


@dataclass(frozen=True)
class CriterionInfo:
    """What a registered criterion is: ``kind`` ("unstructured" / "structured"),
    ``iterative`` (its masks depend on the sparsity, so no score is reused: SynFlow, and every
    criterion that overrides ``prune_model`` without offering its scores), ``needs_data``
    (a calibration batch), ``needs_training`` (runs as a training job: AMAP), and the teaching
    text (``formula`` in LaTeX, ``explanation``)."""

    name: str
    kind: str
    iterative: bool
    needs_data: bool
    needs_training: bool
    formula: str
    explanation: str


def criterion_info(name: str) -> CriterionInfo:
    p = get_pruner(name)
    cls = type(p)
    structured = p.kind == "structured"
    iterative = not structured and cls.prune_model is not Pruner.prune_model
    return CriterionInfo(name, "structured" if structured else "unstructured", iterative,
                         bool(getattr(p, "needs_data", True)),
                         bool(getattr(cls, "needs_training", False)),
                         getattr(p, "formula", ""), getattr(p, "explanation", ""))


def seed_free(name: str) -> bool:
    """True when criterion ``name`` reads no calibration data and draws nothing at random:
    its scores, and so its masks, are the same for every seed."""
    info = criterion_info(name)
    return not info.needs_data and "seed" not in {f.name for f in fields(get_pruner(name))}


def make_pruner(name: str, seed: int = 0, options: Mapping[str, Any] | None = None) -> Pruner:
    """Pruner ``name`` with ``options``; criteria that draw at random get ``seed``."""
    opts = dict(options or {})
    if "seed" in {f.name for f in fields(get_pruner(name))}:
        opts.setdefault("seed", int(seed))
    return get_pruner(name, **opts)
