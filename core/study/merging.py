"""Token merging (ToMe, Bolya et al. 2023) as a view: what merging ``r`` tokens a block does to
one image (which patches became one token, block by block, like the paper's Fig. 4) and to
accuracy and MACs over a range of ``r``. Merging itself is :mod:`core.tokens`."""
from __future__ import annotations

import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .. import tokens
from ..models import count_macs
from .cancel import cancellable
from .evaluation import evaluate

MERGE_COLUMNS = ("r", "tokens_last", "macs", "macs_ratio", "accuracy", "loss")


@dataclass(frozen=True)
class MergeView:
    """One image through ``merge_tokens(model, r)``.

    ``tokens``: tokens entering each block, then those left after the last (depth + 1);
    ``groups[l]``: (P,) group id of every patch after block l's merge; ``overlays[l]``: uint8
    (H, W, 3), the image with each group filled with its mean colour and outlined;
    ``probs_dense`` / ``probs``: (num_classes,) softmax of the dense and the merged model."""

    r: int
    tokens: tuple[int, ...]
    groups: tuple[np.ndarray, ...]
    overlays: tuple[np.ndarray, ...]
    macs_dense: int
    macs: int
    probs_dense: np.ndarray
    probs: np.ndarray

    @property
    def macs_ratio(self) -> float:
        return self.macs / self.macs_dense


def merge_view(model: nn.Module, image: Tensor, r: int | Sequence[int],
               overlay_px: int | None = None) -> MergeView:
    """The merge groups of ``image`` (C, H, W) in [0, 1] under ``merge_tokens(model, r)``,
    block by block, with both models' predictions and MACs. ``model`` is not changed.
    ``overlay_px``: draw the overlays on the image resized to that side (a 32-pixel image's
    4-pixel patches are too small for group outlines); None: at the image's size."""
    merged = tokens.merge_tokens(model, r)
    device = next(model.parameters()).device
    x = image.to(device)
    with torch.no_grad():
        groups = [g.cpu().numpy() for g in tokens.merge_groups(merged, x)]
        probs = torch.softmax(merged(x[None]).float(), -1)[0].cpu().numpy()
        probs_dense = torch.softmax(model(x[None]).float(), -1)[0].cpu().numpy()
    grid = model.grid_size
    shown = image if overlay_px is None else torch.nn.functional.interpolate(
        image[None].float(), size=(overlay_px, overlay_px), mode="bilinear",
        align_corners=False)[0].clamp(0, 1)
    overlays = tuple(tokens.merge_overlay(shown, g, grid) for g in groups)
    return MergeView(int(r) if isinstance(r, int) else -1, tuple(tokens.tokens_per_block(merged)),
                     tuple(groups), overlays, count_macs(model), count_macs(merged),
                     probs_dense, probs)


def merge_curve(model: nn.Module, val_set: Dataset, rs: Sequence[int], batch_size: int = 64,
                progress: Callable[[float, str], None] | None = None,
                cancel: threading.Event | None = None) -> pd.DataFrame:
    """Accuracy, loss and MACs of ``merge_tokens(model, r)`` for each ``r`` on ``val_set``
    (through the one evaluator): columns :data:`MERGE_COLUMNS`, one row per r, in order.
    ``macs_ratio`` is merged over dense MACs (r = 0 is the model itself: ratio 1); ``cancel``
    set → :class:`~core.study.cancel.Cancelled` within one module's forward."""
    dense_macs = count_macs(model)
    rows = []
    with cancellable(cancel) if cancel is not None else nullcontext():
        for i, r in enumerate(rs):
            if progress is not None:
                progress(i / len(rs), f"r = {r}")
            merged = tokens.merge_tokens(model, int(r)) if r else model
            m = evaluate(merged, val_set, batch_size=batch_size)
            macs = count_macs(merged)
            rows.append({"r": int(r), "tokens_last": tokens.tokens_per_block(merged)[-1],
                         "macs": macs, "macs_ratio": macs / dense_macs,
                         "accuracy": m["accuracy"], "loss": m["loss"]})
    if progress is not None:
        progress(1.0, "done")
    return pd.DataFrame(rows, columns=list(MERGE_COLUMNS))
