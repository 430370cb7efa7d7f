"""The images a study measures on: a fixed validation subset, and the seeded class-balanced
calibration batch ``(B, C, H, W), (B,)`` that data-driven criteria score on."""
from __future__ import annotations

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..data import calibration_batch


def val_subset(val_set: Dataset, n: int) -> Subset:
    """A fixed subset of ``n`` validation samples (the same for every seed and criterion:
    drawn with seed 0, in index order)."""
    n = min(int(n), len(val_set))
    if n < 1:
        raise ValueError(f"need at least one validation sample, got {n}")
    idx = np.sort(np.random.default_rng(0).permutation(len(val_set))[:n])
    return Subset(val_set, idx.tolist())


def calibration(train_set: Dataset | None, size: int, seed: int) -> tuple[Tensor | None,
                                                                         Tensor | None]:
    """The class-balanced calibration batch ``(B, C, H, W), (B,)`` (``size`` capped at the
    training split's length); ``(None, None)`` without a training split (data-free only)."""
    if train_set is None:
        return None, None
    return calibration_batch(train_set, min(int(size), len(train_set)), int(seed))
