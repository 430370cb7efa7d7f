"""What a registered criterion is, and a pruner built from its name with a seed and options.

:func:`criterion_info` is what pages, the CLI and the sweep read before running a criterion:
whether it is structured, iterative (its masks depend on the sparsity), needs a calibration
batch ``(B, C, H, W)`` or a training run, draws at random, how much memory its scoring takes
per image, and its teaching text. It reads what the criterion's class declares, nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..pruning import Pruner, get_pruner


@dataclass(frozen=True)
class CriterionInfo:
    """What a registered criterion is, as its class declares it (the table in
    :class:`~core.pruning.Pruner`'s docstring): ``kind`` ("unstructured" / "structured"),
    ``iterative`` (its masks depend on the sparsity, so no score is reused: SynFlow),
    ``needs_data`` (a calibration batch), ``needs_training`` (runs as a training job: AMAP),
    ``seeded`` (draws at random: takes a ``seed``), ``schedules_many_sparsities`` (runs
    several target sparsities together), ``rounds`` (scoring passes of one prune at the
    default options), ``memory_per_image`` (scoring activation memory per calibration image,
    in units of one forward's module outputs), and the teaching text (``formula`` in LaTeX,
    ``explanation``)."""

    name: str
    kind: str
    iterative: bool
    needs_data: bool
    needs_training: bool
    formula: str
    explanation: str
    seeded: bool
    schedules_many_sparsities: bool
    rounds: int
    memory_per_image: float

    def calibration_cap(self, calib: int, image_bytes: int, budget_bytes: float) -> int:
        """The calibration batch this criterion scores on when ``calib`` images were asked
        for and its activations must fit ``budget_bytes``, one image's forward keeping
        ``image_bytes`` of module outputs: ``calib`` for a data-free criterion or an unknown
        ``image_bytes`` (0), else at least 1."""
        if not image_bytes or not self.needs_data:
            return calib
        return max(1, min(calib, int(budget_bytes // (image_bytes * self.memory_per_image))))


def criterion_info(name: str) -> CriterionInfo:
    """The declarations of registered criterion ``name`` (ValueError for an unknown one)."""
    p = get_pruner(name)
    return CriterionInfo(name, p.kind, p.iterative, p.needs_data, p.needs_training, p.formula,
                         p.explanation, p.seeded, p.schedules_many_sparsities, p.rounds,
                         p.memory_per_image)


def seed_free(name: str) -> bool:
    """True when criterion ``name`` reads no calibration data and draws nothing at random:
    its scores, and so its masks, are the same for every seed."""
    info = criterion_info(name)
    return not info.needs_data and not info.seeded


def make_pruner(name: str, seed: int = 0, options: Mapping[str, Any] | None = None) -> Pruner:
    """Pruner ``name`` with ``options``; criteria that draw at random get ``seed``."""
    opts = dict(options or {})
    if criterion_info(name).seeded:
        opts.setdefault("seed", int(seed))
    return get_pruner(name, **opts)
