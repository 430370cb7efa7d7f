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

from torch import Tensor, nn

from dataclasses import replace

from .base import Pruner, get_pruner
from .checks import check_sparsity
from .masks import SCOPES
from .nm import pattern_name, pattern_sparsity
from .result import (TABLE_COLUMNS, PruneResult, finish_mask_prune,  # noqa: F401 (re-exported)
                     layer_saliency, mask_prune)


def prune(model: nn.Module, name: str | Pruner, sparsity: float | None = None,
          images: Tensor | None = None,
          labels: Tensor | None = None, scope: str = "global", pattern: str | None = None,
          **options) -> PruneResult:
    """Prune a deep copy of ``model`` with criterion ``name`` to ``sparsity``; ``model`` is
    left untouched.

    images (B, C, H, W) in [0, 1] and labels (B,): the calibration batch (data-free criteria
    accept None). ``scope``: ``"global"`` or ``"layer"`` (see ``compute_masks``; Wanda compares
    within output rows whatever the scope). ``pattern``: ``"N:M"`` (e.g. ``"2:4"``) for any
    unstructured criterion: every group of M consecutive inputs of a row keeps its N highest
    scores; the sparsity is then ``1 − N/M`` (``sparsity`` None takes it; another value is
    refused), and layers whose input size is not a multiple of M stay dense
    (``result.extra["nm"]`` says which). ``options`` are the pruner's fields (e.g. ``seed``,
    ``exclude_head``, ``iterations``). ``name`` may also be a pruner object, then without
    ``options``. Structured pruners validate ``sparsity`` themselves (they may take
    ``ratios`` instead and ignore ``scope``) and refuse a pattern.
    """
    if isinstance(name, Pruner):
        if options:
            raise ValueError("pass options either in the pruner object or as keywords, not both")
        pruner = name
        if pattern is not None and pattern_name(pattern) != pruner.pattern:
            if pruner.pattern:
                raise ValueError(f"the pruner has pattern {pruner.pattern}; got "
                                 f"pattern={pattern!r}")
            pruner = replace(pruner, pattern=pattern)
    else:
        if pattern is not None:
            options["pattern"] = pattern
        pruner = get_pruner(name, **options)
    if pruner.kind == "unstructured":
        if pruner.pattern:
            sparsity = pattern_sparsity(pruner.pattern, sparsity)
        check_sparsity(sparsity)
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    return pruner.prune_model(model, sparsity, images, labels, scope=scope)
