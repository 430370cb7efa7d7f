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

from .base import Pruner, get_pruner
from .checks import check_sparsity
from .masks import SCOPES
from .result import (TABLE_COLUMNS, PruneResult, finish_mask_prune,  # noqa: F401 (re-exported)
                     layer_saliency, mask_prune)


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
