"""Tiny seeded data and models shared by the training / run-store tests and their workers."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset


class Blobs(Dataset):
    """``n`` images ``(3, 4, 4)``: class ``k`` is a fixed random pattern plus noise.

    Linearly separable with margin, so a small MLP reaches ~100% in a few dozen steps.
    """

    def __init__(self, n: int, num_classes: int = 3, seed: int = 0, split: int = 0,
                 noise: float = 0.5) -> None:
        centres = torch.randn(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed * 1000 + split + 1)
        self.targets = [i % num_classes for i in range(n)]
        labels = torch.tensor(self.targets)
        self.images = centres[labels] + noise * torch.randn(n, 3, 4, 4, generator=g)
        self.classes = [f"c{k}" for k in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], self.targets[i]


class TinyNet(nn.Module):
    """Flatten → Linear(48, hidden) → ReLU → Linear(hidden, C): images (B, 3, 4, 4) → (B, C)."""

    input_shape = (3, 4, 4)

    def __init__(self, num_classes: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(48, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def tiny_data(n_train: int = 96, n_val: int = 48, seed: int = 0) -> tuple[Blobs, Blobs]:
    return Blobs(n_train, seed=seed, split=0), Blobs(n_val, seed=seed, split=1)


def tiny_model(seed: int = 0, num_classes: int = 3) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes)
