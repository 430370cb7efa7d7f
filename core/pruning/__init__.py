"""Pruning: criteria that score weights, masks that zero them, and ``prune()`` that does both.

Three separate steps (as ``torch.nn.utils.prune`` separates importance scores from masking):

1. ``get_pruner(name, **options).score(model, images, labels) -> {key: scores}``, the registry
   listing ``list_pruners()``: ``random``, ``magnitude``, ``snip``, ``attention-snip`` (seed
   000), ``grasp``, ``synflow``, ``wanda``. Keys are plain parameter names (``"head.weight"``),
   also on a masked model, where ``named_parameters()`` says
   ``"head.parametrizations.weight.original"``.
2. ``compute_masks(scores, sparsity, scope)`` → ``{key: bool tensor}`` (True = kept); scores
   that declare a finer comparison (:class:`GroupedScores`: Wanda's output rows, an N:M
   ``pattern``) are compared that way whatever the scope.
3. ``apply_masks(model, masks)`` / ``remove_masks(model)``: parametrizations that keep pruned
   weights at zero through training; ``core.models.save_model`` bakes them in, and
   ``restore_masks(load_model(path))`` puts them back on a loaded file.

``prune(model, name, sparsity, images, labels, scope, **options)`` runs all three on a copy and
returns a :class:`PruneResult` (pruned model, masks, scores, per-layer table);
``prune(..., pattern="2:4")`` gives any unstructured criterion N:M sparsity, which
``check_nm(model, "2:4")`` verifies group by group (:mod:`.nm_check`).

Structured criteria (a physically smaller model): ``snp``, ``reverse``, ``snp-act``,
``l2-norm``, ``gm``, ``structured-random``, ``taylor``, ``activation`` (:mod:`.snp`,
:mod:`.baselines`), and the training-based ``amap``.

Extension point for structured pruning: subclass :class:`Pruner` with ``kind = "structured"``,
register it with ``@register_pruner("snp")``, and override ``prune_model(model, sparsity,
images, labels, scope) -> PruneResult`` to return the physically smaller model with
``masks=None``; ``prune(model, "snp", ...)`` then dispatches to it by name.

A criterion declares what it needs as class attributes (``needs_data``, ``iterative``,
``seeded``, ``memory_per_image``...: the table in :class:`Pruner`'s docstring); callers read
them through ``core.study.criterion_info``, and ``register_pruner`` refuses a class whose
methods contradict them (an overridden ``prune_model`` not declared ``iterative``, say).
"""
from .api import TABLE_COLUMNS, PruneResult, layer_saliency, prune
from .base import (PrunableParam, Pruner, get_pruner, list_pruners, prunable_parameters,
                   register_pruner)
from .criteria import (AttentionSnipPruner, GraspPruner, MagnitudePruner, RandomPruner,
                       SnipPruner, SynflowPruner)
from .masks import (GroupedScores, PruningMask, apply_masks, compute_masks, get_masks,
                    layer_collapse, mask_sparsity, num_pruned, remove_masks, restore_masks)
from .nm import NMCheck, parse_pattern, pattern_sparsity
from .nm_check import check_nm
from .wanda import WandaPruner
from . import snp  # noqa: E402,F401  (registers the structured pruners: snp, gm, l2-norm, ...)
from . import baselines  # noqa: E402,F401  (registers taylor and activation)
from . import amap  # noqa: E402,F401  (registers the training-based AMAP pruner)

__all__ = ["AttentionSnipPruner", "GraspPruner", "GroupedScores", "MagnitudePruner",
           "NMCheck", "PrunableParam", "PruneResult", "Pruner", "PruningMask", "RandomPruner",
           "SnipPruner", "SynflowPruner", "TABLE_COLUMNS", "WandaPruner", "apply_masks",
           "check_nm", "compute_masks", "get_masks", "get_pruner", "layer_collapse",
           "layer_saliency", "list_pruners", "mask_sparsity", "num_pruned", "parse_pattern",
           "pattern_sparsity", "prunable_parameters", "prune", "register_pruner",
           "remove_masks", "restore_masks"]
