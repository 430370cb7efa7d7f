"""Helpers shared by every dataset source: argument checks, stratified splits, calibration batches,
the memory budget.

Every dataset in ``core.data`` is a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs with
``image`` a float32 tensor ``(3, H, W)`` in ``[0, 1]`` and ``label`` a python ``int``, plus the
attributes ``classes: list[str]``, ``targets: list[int]`` and ``image_size: tuple[int, int]``.

The image size is usually the model's, and a model file declares it: whatever holds images in
memory (a generated dataset, a calibration batch, stacked validation images) asks
:func:`check_data_budget` first, which refuses more than ``PRUNELENS_DATA_MB`` (default
:data:`DEFAULT_DATA_MB`) before anything is allocated.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import math
import os

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

MIN_IMAGE_SIDE = 8
DATA_MB_ENV = "PRUNELENS_DATA_MB"
DEFAULT_DATA_MB = 2048
"""Images one dataset or batch may hold, in MB (``PRUNELENS_DATA_MB`` changes it): room for
shapes' default 6000 + 1200 images at 224×224, or 256 validation images at 512×512 as float32."""
FLOAT_RGB = 12
"""Bytes per pixel of a float32 (3, H, W) image."""


class DataBudgetError(ValueError):
    """Images that would take more memory than ``PRUNELENS_DATA_MB`` allows; the message says
    how many, how much, the budget and how to ask for less."""


def data_budget_bytes() -> int:
    """``PRUNELENS_DATA_MB`` in bytes (read at every call); unset, or not a positive number:
    :data:`DEFAULT_DATA_MB`."""
    text = os.environ.get(DATA_MB_ENV, "").strip()
    try:
        mb = float(text) if text else DEFAULT_DATA_MB
    except ValueError:
        mb = DEFAULT_DATA_MB
    if not (math.isfinite(mb) and mb > 0):
        mb = DEFAULT_DATA_MB
    return int(mb * 2**20)


def check_data_budget(count: int, image_size: tuple[int, int], what: str, fewer: str,
                      bytes_per_pixel: int = FLOAT_RGB) -> int:
    """Bytes ``count`` images of ``image_size`` (H, W) take at ``bytes_per_pixel`` (12: float32
    RGB) → returned, or :class:`DataBudgetError` over :func:`data_budget_bytes`, raised before
    anything is allocated. ``what`` names the images, ``fewer`` says how to ask for fewer."""
    H, W = image_size
    need = int(count) * H * W * int(bytes_per_pixel)
    budget = data_budget_bytes()
    if need > budget:
        fit = budget // (H * W * int(bytes_per_pixel))
        images = "1 image" if count == 1 else f"{count} images"
        raise DataBudgetError(
            f"{what}: {images} of {H}x{W} would take {need / 2**20:,.0f} MB, over the "
            f"{budget / 2**20:,.0f} MB data budget ({DATA_MB_ENV}); "
            + (f"{fit} fit: {fewer}, or use a smaller image size" if fit else
               "use a smaller image size") + f", or raise {DATA_MB_ENV}")
    return need


def image_size_of(dataset: Dataset) -> tuple[int, int]:
    """``(H, W)`` of ``dataset``'s images: ``.image_size`` if present, through ``Subset`` too;
    else the first image's (one image read)."""
    if hasattr(dataset, "image_size"):
        return tuple(dataset.image_size)  # type: ignore[return-value]
    if isinstance(dataset, Subset):
        return image_size_of(dataset.dataset)
    return tuple(dataset[0][0].shape[-2:])  # type: ignore[index]


def validate_image_size(image_size: object) -> tuple[int, int]:
    """Return ``image_size`` as ``(H, W)``; an int ``s`` means ``(s, s)``.

    Raises:
        ValueError: not an int or a pair of ints, or a side below ``MIN_IMAGE_SIDE`` (8).
    """
    if _is_int(image_size):
        sides = (int(image_size), int(image_size))  # type: ignore[call-overload]
    elif (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(_is_int(s) for s in image_size)
    ):
        sides = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(
            f"image_size must be an int or an (H, W) pair of ints, each >= {MIN_IMAGE_SIDE}; "
            f"got {image_size!r}"
        )
    if min(sides) < MIN_IMAGE_SIDE:
        raise ValueError(f"image_size sides must be >= {MIN_IMAGE_SIDE}; got {image_size!r}")
    return sides


def validate_seed(seed: object) -> int:
    """Return ``seed`` as an int >= 0, or raise ``ValueError`` naming it."""
    if not _is_int(seed) or int(seed) < 0:  # type: ignore[call-overload]
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return int(seed)  # type: ignore[call-overload]


def check_num_classes(classes: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` unless there are at least 2 classes (a classifier needs a choice)."""
    if len(classes) < 2:
        raise ValueError(
            f"{what} needs at least 2 classes, found {len(classes)}: {list(classes)!r}"
        )


def stratified_split(
    targets: Sequence[int] | np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into train and val, class by class, deterministically per ``seed``.

    Each class with ``n >= 2`` samples sends ``round(n * val_fraction)`` of them to val, clamped to
    ``[1, n - 1]`` so that both sides see every class; a class with one sample stays in train.
    (sklearn's ``train_test_split(stratify=...)`` refuses classes of one sample, which real
    folders have.)

    Args:
        targets: ``(N,)`` class index per sample.
        val_fraction: share of each class sent to val, in ``(0, 1)``.
        seed: seeds the shuffle inside each class.

    Returns:
        ``(train_idx, val_idx)``: sorted int64 arrays, disjoint, together ``arange(N)``.
    """
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1); got {val_fraction!r}")
    targets = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        n = len(idx)
        n_val = 0 if n < 2 else min(max(int(round(n * val_fraction)), 1), n - 1)
        val_parts.append(idx[:n_val])
        train_parts.append(idx[n_val:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(val_parts))


def targets_of(dataset: Dataset) -> list[int]:
    """Class index per sample of ``dataset``: ``.targets`` if present, through ``Subset`` too.

    Falls back to reading every sample (slow for lazily loaded datasets).
    """
    if hasattr(dataset, "targets"):
        return [int(t) for t in dataset.targets]
    if isinstance(dataset, Subset):
        base = targets_of(dataset.dataset)
        return [base[i] for i in dataset.indices]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def balanced_counts(sizes: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Share ``total`` draws among classes as evenly as their ``sizes`` allow (max-min fair).

    Classes too small for an equal share give all they have and the rest is spread over the
    others; leftover draws (fewer than the classes still open) go one each to classes picked
    in a random order drawn from ``rng``.

    Args:
        sizes: ``(C,)`` samples available per class.
        total: draws to share; ``0 <= total <= sizes.sum()``.

    Returns:
        ``(C,)`` int64 counts with ``counts <= sizes`` and ``counts.sum() == total``.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if total > sizes.sum():
        raise ValueError(f"cannot draw {total} samples from {int(sizes.sum())}")
    priority = rng.permutation(len(sizes))
    counts = np.zeros_like(sizes)
    remaining = total
    while remaining > 0:
        open_ = np.flatnonzero(counts < sizes)
        share = remaining // len(open_)
        if share == 0:
            for c in priority:
                if remaining == 0:
                    break
                if counts[c] < sizes[c]:
                    counts[c] += 1
                    remaining -= 1
            break
        add = np.minimum(share, sizes[open_] - counts[open_])
        counts[open_] += add
        remaining -= int(add.sum())
    return counts


def calibration_batch(dataset: Dataset, batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A class-balanced batch for data-driven pruning criteria, deterministic per ``seed``.

    Classes get as equal a number of samples as their sizes allow (see ``balanced_counts``); with
    ``batch_size`` below the number of classes, ``batch_size`` classes chosen by ``seed`` give one
    sample each. Samples are drawn without replacement and the batch is shuffled.

    Args:
        dataset: any ``core.data`` dataset (or a ``Subset`` of one); needs >= 2 classes.
        batch_size: ``B``, between 1 and ``len(dataset)``.
        seed: seeds both the class shares and the samples drawn.

    Returns:
        ``(images, labels)``: float32 ``(B, 3, H, W)`` and int64 ``(B,)``.
    """
    if not _is_int(batch_size) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    targets = np.asarray(targets_of(dataset), dtype=np.int64)
    if batch_size > len(targets):
        raise ValueError(
            f"batch_size {batch_size} is larger than the dataset ({len(targets)} samples)"
        )
    present = np.unique(targets)
    if len(present) < 2:
        raise ValueError(
            f"calibration_batch needs a dataset with at least 2 classes; "
            f"its targets hold {len(present)}"
        )
    check_data_budget(int(batch_size), image_size_of(dataset), "calibration batch",
                      "draw fewer calibration images")
    rng = np.random.default_rng(validate_seed(seed))
    members = [np.flatnonzero(targets == c) for c in present]
    counts = balanced_counts(np.array([len(m) for m in members]), int(batch_size), rng)
    chosen = np.concatenate(
        [rng.choice(m, size=k, replace=False) for m, k in zip(members, counts) if k > 0]
    )
    chosen = rng.permutation(chosen)
    images, labels = [], []
    for i in chosen:
        image, label = dataset[int(i)]
        images.append(image)
        labels.append(int(label))
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _is_int(x: object) -> bool:
    return isinstance(x, Integral) and not isinstance(x, bool)
