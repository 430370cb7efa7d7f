"""Token merging (ToMe) for the Tokens page: ``core.study.merge_view`` and ``merge_curve``
behind the caches. The cached base model is never changed (merge_tokens makes a copy)."""
from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
from PIL import Image
from torch import Tensor

from core import study

from .data import base_model, val_subset
from .keys import CELL_PX, DataKey, ImageRef, ModelKey, cache_data


@cache_data(show_spinner=False, max_entries=32)
def merge_view(model: ModelKey, ref: ImageRef, r: int, _image: Tensor) -> study.MergeView:
    return study.merge_view(base_model(model).model, _image, r, overlay_px=2 * CELL_PX)


@cache_data(show_spinner=False, max_entries=8)
def merge_curve(model: ModelKey, data: DataKey, val_samples: int, rs: tuple[int, ...],
                _progress: Callable[[float, str], None] | None = None):
    with warnings.catch_warnings():  # r past what a block can merge is clipped: the chart
        warnings.simplefilter("ignore", UserWarning)  # labels each point with its r anyway
        return study.merge_curve(base_model(model).model, val_subset(data, val_samples), rs,
                                 progress=_progress)


def max_r(model: ModelKey) -> int:
    """The largest r the first block can merge: half of the patch tokens."""
    gh, gw = base_model(model).model.grid_size
    return max(1, gh * gw // 2)


def overlay_cells(view: study.MergeView, px: int) -> list[np.ndarray]:
    """The view's per-block overlays at ``px``×``px`` (nearest neighbour: group edges stay
    sharp), uint8 (px, px, 3) each."""
    return [np.asarray(Image.fromarray(o).resize((px, px), Image.NEAREST)) for o in view.overlays]
