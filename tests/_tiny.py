"""Tiny seeded data and models shared by the tests (and the training / run-store workers)."""
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


def random_vit(seed: int = 0, num_classes: int = 5, mlp: tuple[int, int] = (40, 32)):
    """A 16×16 ViT with two blocks of different sizes (q/k dim ≠ v dim) and random
    non-trivial weights (N(0, 0.3²)), in eval mode."""
    from core.models.vit import BlockConfig, VisionTransformer, ViTConfig

    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=(16, 16), patch_size=4, num_classes=num_classes, embed_dim=24,
                    blocks=(BlockConfig(3, 8, 6, mlp[0]), BlockConfig(2, 5, 7, mlp[1])))
    return randomise(VisionTransformer(cfg))


def random_linformer(seed: int = 0, num_classes: int = 5):
    """A 16×16 Linformer-ViT (2 layers, 3 heads, k = 6) with random weights N(0, 0.3²)."""
    from core.models.linformer_vit import LinformerViT, linformer_vit_config

    torch.manual_seed(seed)
    cfg = linformer_vit_config(img_size=16, patch_size=4, dim=24, depth=2, heads=3, k=6,
                               num_classes=num_classes)
    return randomise(LinformerViT(cfg))


def randomise(model: nn.Module) -> nn.Module:
    """Every parameter drawn from N(0, 0.3²) in place (non-trivial weights); eval mode."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


def small_vit(seed: int = 0, classes: int = 3) -> nn.Module:
    """vit-tiny shrunk to 8×8 images, dim 16, 2 blocks of 2 heads, at its own init."""
    from core.models import build_model

    torch.manual_seed(seed)
    return build_model("vit-tiny", classes, img_size=8, patch_size=4, embed_dim=16, depth=2,
                       num_heads=2)
