"""The images a study measures on: the fixed validation subset every page, the sweeps and the
CLI use (:func:`val_subset`, named by :func:`val_subset_label`), and the seeded
class-balanced calibration batch ``(B, C, H, W), (B,)`` that data-driven criteria score on."""
from __future__ import annotations

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..data import calibration_batch
from ..data.common import targets_of

VAL_SEED = 0  # the one draw of the validation subset; never a user's seed
VAL_DEFINITION = f"a class-stratified random subset (seed {VAL_SEED})"


def val_indices(targets: np.ndarray, n: int, seed: int = VAL_SEED) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of ``n`` of the samples labelled
    ``targets`` ``(N,)``: each class gets its share ``n · N_c / N`` rounded by largest
    remainder (ties broken in a seeded order), drawn without replacement with ``seed``.

    Stratified, so that a subset's class mix is the split's (a plain random draw of 128 from 6
    balanced classes gives some class 14 images and another 19); random within a class, so
    that it is not whatever order the split happens to list its samples in."""
    targets = np.asarray(targets, dtype=np.int64)
    total = len(targets)
    n = min(int(n), total)
    if n < 1:
        raise ValueError(f"need at least one validation sample, got {n}")
    if n == total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    classes, sizes = np.unique(targets, return_counts=True)
    share = sizes * n / total
    take = np.floor(share).astype(np.int64)
    order = np.lexsort((rng.permutation(len(classes)), -(share - take)))
    take[order[:n - int(take.sum())]] += 1
    chosen = [rng.choice(np.flatnonzero(targets == c), k, replace=False)
              for c, k in zip(classes, take) if k]
    return np.sort(np.concatenate(chosen))


def val_subset(val_set: Dataset, n: int) -> Subset:
    """The fixed subset of ``n`` validation samples every study measures on (the same for
    every seed, criterion and page): :func:`val_indices` of the split's targets, in index
    order; all of them when ``n`` reaches the split's size."""
    return Subset(val_set, val_indices(np.asarray(targets_of(val_set)), n).tolist())


def val_subset_label(n: int, total: int) -> str:
    """How pages, reports and the CLI name the images of ``val_subset(val_set, n)`` of a
    split of ``total``."""
    n = min(int(n), int(total))
    if n >= total:
        return f"all {total} validation images"
    return f"{n} of the {total} validation images: {VAL_DEFINITION}"


def calibration(train_set: Dataset | None, size: int, seed: int) -> tuple[Tensor | None,
                                                                         Tensor | None]:
    """The class-balanced calibration batch ``(B, C, H, W), (B,)`` (``size`` capped at the
    training split's length); ``(None, None)`` without a training split (data-free only)."""
    if train_set is None:
        return None, None
    return calibration_batch(train_set, min(int(size), len(train_set)), int(seed))
