"""``check_nm``: a model's N:M pattern, group by group (its registered masks, or the zeros
of its prunable weights once the masks were baked in). Above :mod:`.base` in the import order;
the group arithmetic is :func:`.nm.check_masks`."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from .base import prunable_parameters
from .masks import get_masks
from .nm import NMCheck, check_masks


def check_nm(model_or_masks: nn.Module | Mapping[str, Tensor],
             pattern: str | tuple[int, int]) -> NMCheck:
    """Check every group of every masked layer against ``pattern``.

    ``model_or_masks``: a model (its registered masks, :func:`~core.pruning.get_masks`; a
    model without masks, e.g. one whose masks were baked in, is read from the zeros of its
    prunable weights) or a ``{key: bool mask}`` mapping."""
    if isinstance(model_or_masks, nn.Module):
        masks = get_masks(model_or_masks)
        if not masks:
            masks = {p.key: p.value().detach() != 0
                     for p in prunable_parameters(model_or_masks)}
    else:
        masks = dict(model_or_masks)
    return check_masks(masks, pattern)
