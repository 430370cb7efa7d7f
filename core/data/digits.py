"""Real handwritten digits, offline: scikit-learn's bundled ``load_digits`` (UCI optdigits, test).

1797 grayscale 8x8 images of the digits 0-9 with values 0..16, scaled to ``[0, 1]``, upsampled
bilinearly (``F.interpolate``, ``align_corners=False``) to ``image_size`` on access and replicated
to 3 channels. Only the 8x8 sources are kept in memory (~0.5 MB), so any ``image_size`` is cheap.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .common import check_data_budget, stratified_split, validate_image_size, validate_seed

DIGIT_CLASSES: list[str] = [str(d) for d in range(10)]


@lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float32 in [0, 1], targets (1797,) int64)``, read-only."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    targets = bunch.target.astype(np.int64)
    images.setflags(write=False)  # shared by every call through the cache
    targets.setflags(write=False)
    return images, targets


class DigitsDataset(Dataset):
    """A subset of sklearn's digits, resized on access.

    Attributes:
        classes: ``["0", ..., "9"]``.
        targets: ``(N,)`` digit per sample.
        indices: ``(N,)`` position of each sample in ``sklearn.datasets.load_digits()``.
        image_size: ``(H, W)``.
    """

    def __init__(self, indices: np.ndarray, image_size: int | tuple[int, int]) -> None:
        self.image_size = validate_image_size(image_size)
        # images are made on access, one at a time: each must fit
        check_data_budget(1, self.image_size, "digits dataset", "")
        images, targets = _sklearn_digits()
        self.indices: list[int] = [int(i) for i in indices]
        self._images = torch.tensor(images[self.indices])  # (N, 8, 8), a private copy
        self.targets: list[int] = [int(t) for t in targets[self.indices]]
        self.classes = list(DIGIT_CLASSES)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Return ``(image (3, H, W) float32 in [0, 1], digit)``."""
        small = self._images[index][None, None]  # (1, 1, 8, 8)
        big = F.interpolate(small, size=self.image_size, mode="bilinear", align_corners=False)
        # bilinear weights sum to 1 only up to rounding: keep the promised [0, 1] exactly
        return big[0].expand(3, -1, -1).clamp(0.0, 1.0), self.targets[index]


def make_digits(
    image_size: tuple[int, int], seed: int = 0, val_fraction: float = 0.2
) -> tuple[DigitsDataset, DigitsDataset]:
    """Train and val ``DigitsDataset``, split stratified by digit, deterministic per ``seed``."""
    _, targets = _sklearn_digits()
    train_idx, val_idx = stratified_split(targets, val_fraction, validate_seed(seed))
    return DigitsDataset(train_idx, image_size), DigitsDataset(val_idx, image_size)
