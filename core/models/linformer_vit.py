"""Linformer-ViT of seed 000: a ViT whose encoder is the ``linformer`` package's ``Linformer``.

Patches are flattened and embedded by a ``nn.Linear`` (vit-pytorch's efficient ViT), a CLS token
and learned positions are added, the ``Linformer`` encoder (Wang et al. 2020) runs over the
``seq_len = patches + 1`` tokens, and a LayerNorm + Linear head classifies the CLS token. The
paper's preset (224×224, 32×32 patches, dim 128, depth 12, heads 8, k 64) has, with 38 classes,
2,757,376 ``nn.Linear`` weights — the set seed 000 prunes (its 275,738 kept = 10%).

Per-layer sizes (heads, ``dim_head``, FFN hidden) are free so structured pruning can shrink the
model: layers that differ from the package's defaults get their modules replaced by package
modules of the new size (``LinformerSelfAttention`` keeps one ``dim_head`` for q, k and v).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
from linformer import Linformer
from linformer.linformer import FeedForward, LinformerSelfAttention
from torch import Tensor, nn

from .config_checks import (MAX_CLASSES, MAX_DEPTH, MAX_HEADS, MAX_TOKENS, MAX_WIDTH,
                            check_activation, check_image, check_input, check_int, check_scale,
                            check_stats, image_size)


@dataclass(frozen=True)
class LinformerLayerConfig:
    """Sizes of one Linformer layer: heads, per-head dim (q, k and v share it), FFN hidden."""

    heads: int
    dim_head: int
    ff_hidden: int
    # softmax scale; None → the package's dim_head ** -0.5. A shrunk layer folds the change of
    # scale into its ``to_q`` weights instead, so this stays None.
    scale: float | None = None

    def __post_init__(self) -> None:
        check_int("LinformerLayerConfig", "heads", self.heads, 1, MAX_HEADS, "heads")
        for name in ("dim_head", "ff_hidden"):
            check_int("LinformerLayerConfig", name, getattr(self, name), 1, MAX_WIDTH, "width")
        check_scale("LinformerLayerConfig", self.scale)


@dataclass(frozen=True)
class LinformerViTConfig:
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 32
    in_chans: int = 3
    num_classes: int = 38
    dim: int = 128
    k: int = 64
    layers: tuple[LinformerLayerConfig, ...] = field(default_factory=tuple)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        check_image("LinformerViTConfig", self.img_size, self.patch_size, self.in_chans)
        check_int("LinformerViTConfig", "num_classes", self.num_classes, 2, MAX_CLASSES,
                  "classes")
        check_int("LinformerViTConfig", "dim", self.dim, 1, MAX_WIDTH, "width")
        check_int("LinformerViTConfig", "k", self.k, 1, MAX_TOKENS, "tokens")
        if not isinstance(self.layers, tuple) or len(self.layers) > MAX_DEPTH or not all(
                isinstance(b, LinformerLayerConfig) for b in self.layers):
            raise ValueError(f"LinformerViTConfig.layers must be a tuple of at most "
                             f"{MAX_DEPTH} LinformerLayerConfig")
        check_stats("LinformerViTConfig", "mean", self.mean, self.in_chans, positive=False)
        check_stats("LinformerViTConfig", "std", self.std, self.in_chans, positive=True)
        N = self.seq_len
        for i, x in enumerate(self.layers):  # what one image makes in the layer
            check_activation("LinformerViTConfig", f"layer {i}'s attention maps ({x.heads} "
                             f"heads × {N} tokens × k {self.k})", x.heads * N * self.k)
            check_activation("LinformerViTConfig", f"layer {i}'s queries ({N} tokens × "
                             f"{x.heads * x.dim_head})", N * x.heads * x.dim_head)
            check_activation("LinformerViTConfig", f"layer {i}'s feed-forward ({N} tokens × "
                             f"{x.ff_hidden})", N * x.ff_hidden)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def seq_len(self) -> int:
        H, W = self.img_size
        return (H // self.patch_size) * (W // self.patch_size) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "LinformerViTConfig":
        d = dict(d)
        d["layers"] = tuple(LinformerLayerConfig(**x) for x in d["layers"])
        for key in ("img_size", "mean", "std"):
            d[key] = tuple(d[key])
        return LinformerViTConfig(**d)


def linformer_vit_config(*, img_size: int | Sequence[int], patch_size: int, dim: int,
                         depth: int, heads: int, k: int, num_classes: int,
                         ff_mult: int = 4, **kw) -> LinformerViTConfig:
    """Uniform configuration (what the presets fill): ``dim_head = dim // heads``."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not divisible by heads {heads}")
    size = image_size(img_size)
    layer = LinformerLayerConfig(heads, dim // heads, dim * ff_mult)
    return LinformerViTConfig(img_size=size, patch_size=patch_size, num_classes=num_classes,
                              dim=dim, k=k, layers=(layer,) * depth, **kw)


class LinearPatchEmbed(nn.Module):
    """(B, C, H, W) → (B, N, D): non-overlapping p×p patches, flattened as (p1 p2 c), Linear."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, dim: int):
        super().__init__()
        H, W = img_size
        if H % patch_size or W % patch_size:
            raise ValueError(
                f"image size {H}x{W} is not divisible by the patch size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = (H // patch_size, W // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Linear(patch_size * patch_size * in_chans, dim)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        p = self.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return self.proj(x.reshape(B, (H // p) * (W // p), p * p * C))


class LinformerViT(nn.Module):
    """Input (B, C, H, W) in [0, 1] → logits (B, num_classes)."""

    def __init__(self, config: LinformerViTConfig):
        super().__init__()
        if not config.layers:
            raise ValueError("a Linformer-ViT needs at least one layer")
        self.config = config
        D, first = config.dim, config.layers[0]
        self.patch_embed = LinearPatchEmbed(config.img_size, config.patch_size,
                                            config.in_chans, D)
        self.cls_token = nn.Parameter(torch.randn(1, 1, D))
        self.pos_embed = nn.Parameter(torch.randn(1, config.seq_len, D))
        self.transformer = Linformer(dim=D, seq_len=config.seq_len, depth=config.depth,
                                     k=config.k, heads=first.heads, dim_head=first.dim_head)
        for layer, cfg in zip(self.transformer.net.layers, config.layers):
            attn, ff = layer[0], layer[1]
            if (cfg.heads, cfg.dim_head) != (first.heads, first.dim_head):
                attn.fn = LinformerSelfAttention(D, config.seq_len, k=config.k,
                                                 heads=cfg.heads, dim_head=cfg.dim_head)
            if cfg.ff_hidden != ff.fn.w1.out_features:
                ff.fn = FeedForward(D, mult=1)
                ff.fn.w1, ff.fn.w2 = nn.Linear(D, cfg.ff_hidden), nn.Linear(cfg.ff_hidden, D)
            if cfg.scale is not None:
                raise ValueError("a custom softmax scale is not supported by the linformer "
                                 "package; fold it into to_q")
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, config.num_classes)
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, -1, 1, 1),
                             persistent=False)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.config.in_chans, *self.config.img_size)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → normalised tokens (B, seq_len, D)."""
        check_input(x, self.config.in_chans, self.config.img_size)
        x = (x - self.pixel_mean) / self.pixel_std
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.transformer(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x)[:, 0])


def with_layers(config: LinformerViTConfig, layers: Sequence[LinformerLayerConfig],
                **kw) -> LinformerViTConfig:
    """Copy of ``config`` with new per-layer sizes (used by structured pruning)."""
    return replace(config, layers=tuple(layers), **kw)
