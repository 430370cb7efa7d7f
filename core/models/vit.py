"""Vision Transformer / DeiT with per-layer free sizes, so structured pruning can shrink it.

Follows timm's ``VisionTransformer`` layout and state-dict names (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``head``), so timm DeiT/ViT checkpoints load unchanged (Dosovitskiy et al. 2021; Touvron et al.
2021). Unlike timm, every block can have its own number of heads, q/k dim per head, v dim per
head and FFN hidden size, and the residual width (``embed_dim``) is free: a physically pruned
model (SNP, seed 001) is just another configuration of this class.

The attention computes its softmax explicitly and passes the probabilities through
``attn.attn_drop`` (an ``nn.Dropout``), the hook point ``core.attention`` uses.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import torch
from torch import Tensor, nn

from .config_checks import (MAX_DEPTH, check_image, check_input, check_int, check_scale,
                            check_stats, image_size)


@dataclass(frozen=True)
class BlockConfig:
    """Sizes of one transformer block. ``qk_dim``/``v_dim`` are per head."""

    num_heads: int
    qk_dim: int
    v_dim: int
    mlp_hidden: int
    # softmax scale; None → qk_dim ** -0.5. Kept when a pruned model shrinks q/k (SNP folds the
    # change into W_q instead, so a shrunk model keeps the original scale here).
    scale: float | None = None

    def __post_init__(self) -> None:
        for name in ("num_heads", "qk_dim", "v_dim", "mlp_hidden"):
            check_int("BlockConfig", name, getattr(self, name))
        check_scale("BlockConfig", self.scale)


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a :class:`VisionTransformer`. ``blocks`` gives one entry per block."""

    img_size: tuple[int, int] = (32, 32)
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    embed_dim: int = 64
    blocks: tuple[BlockConfig, ...] = field(default_factory=tuple)
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        check_image("ViTConfig", self.img_size, self.patch_size, self.in_chans)
        check_int("ViTConfig", "num_classes", self.num_classes, 2)
        check_int("ViTConfig", "embed_dim", self.embed_dim)
        if not isinstance(self.blocks, tuple) or len(self.blocks) > MAX_DEPTH or not all(
                isinstance(b, BlockConfig) for b in self.blocks):
            raise ValueError(f"ViTConfig.blocks must be a tuple of at most {MAX_DEPTH} "
                             "BlockConfig")
        if not isinstance(self.norm_eps, float) or not 0 < self.norm_eps < 1:
            raise ValueError(f"ViTConfig.norm_eps must be a float in (0, 1), got "
                             f"{self.norm_eps!r}")
        check_stats("ViTConfig", "mean", self.mean, self.in_chans, positive=False)
        check_stats("ViTConfig", "std", self.std, self.in_chans, positive=True)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @staticmethod
    def uniform(*, depth: int, num_heads: int, embed_dim: int, mlp_ratio: float = 4.0,
                **kw) -> "ViTConfig":
        """A plain ViT: ``depth`` identical blocks with ``head_dim = embed_dim // num_heads``."""
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        hd = embed_dim // num_heads
        blk = BlockConfig(num_heads, hd, hd, int(embed_dim * mlp_ratio))
        return ViTConfig(embed_dim=embed_dim, blocks=(blk,) * depth, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict) -> "ViTConfig":
        d = dict(d)
        d["blocks"] = tuple(BlockConfig(**b) for b in d["blocks"])
        for key in ("img_size", "mean", "std"):
            d[key] = tuple(d[key])
        return ViTConfig(**d)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) → patch tokens (B, N, D) with a strided convolution."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, dim: int):
        super().__init__()
        H, W = img_size
        if H % patch_size or W % patch_size:
            raise ValueError(
                f"image size {H}x{W} is not divisible by the patch size {patch_size}")
        self.img_size, self.patch_size = (H, W), patch_size
        self.grid_size = (H // patch_size, W // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k and v head dims.

    ``qkv`` packs ``[q (H·d_qk) | k (H·d_qk) | v (H·d_v)]`` along its output dim — timm's
    layout when ``d_qk == d_v``. Shapes: x (B, N, C) → (B, N, C); probabilities (B, H, N, N).
    """

    def __init__(self, dim: int, num_heads: int, qk_dim: int, v_dim: int,
                 qkv_bias: bool = True, scale: float | None = None):
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.scale = scale if scale is not None else qk_dim ** -0.5
        self.qkv = nn.Linear(dim, num_heads * (2 * qk_dim + v_dim), bias=qkv_bias)
        self.attn_drop = nn.Dropout(0.0)  # hook point: sees the post-softmax probabilities
        self.proj = nn.Linear(num_heads * v_dim, dim)

    def split_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, N, C) → q, k (B, H, N, d_qk) and v (B, H, N, d_v)."""
        B, N, _ = x.shape
        H, dq, dv = self.num_heads, self.qk_dim, self.v_dim
        q, k, v = self.qkv(x).split([H * dq, H * dq, H * dv], dim=-1)
        q = q.reshape(B, N, H, dq).transpose(1, 2)
        k = k.reshape(B, N, H, dq).transpose(1, 2)
        v = v.reshape(B, N, H, dv).transpose(1, 2)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        B, N, _ = x.shape
        q, k, v = self.split_qkv(x)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * self.v_dim)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, cfg: BlockConfig, qkv_bias: bool = True, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, cfg.num_heads, cfg.qk_dim, cfg.v_dim, qkv_bias, cfg.scale)
        self.ls1 = nn.Identity()
        self.drop_path1 = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, cfg.mlp_hidden)
        self.ls2 = nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier. Input (B, C, H, W) in [0, 1]; output logits (B, num_classes).

    Normalisation with the config's mean/std happens inside (non-persistent buffers, so
    state-dict keys stay timm's).
    """

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        if not config.blocks:
            raise ValueError("a ViT needs at least one block")
        D = config.embed_dim
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, D))
        self.blocks = nn.ModuleList(
            Block(D, b, config.qkv_bias, config.norm_eps) for b in config.blocks)
        self.norm = nn.LayerNorm(D, eps=config.norm_eps)
        self.head = nn.Linear(D, config.num_classes)
        self.register_buffer("pixel_mean", torch.tensor(config.mean).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std).view(1, -1, 1, 1),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

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
        """(B, C, H, W) → normalised tokens (B, 1 + N, D)."""
        check_input(x, self.config.in_chans, self.config.img_size)
        x = (x - self.pixel_mean) / self.pixel_std
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x)[:, 0])


def vit_config(*, img_size: int | Sequence[int], patch_size: int, embed_dim: int, depth: int,
               num_heads: int, num_classes: int, mlp_ratio: float = 4.0, **kw) -> ViTConfig:
    """Uniform ViT configuration (what the presets fill)."""
    size = image_size(img_size)
    return ViTConfig.uniform(depth=depth, num_heads=num_heads, embed_dim=embed_dim,
                             mlp_ratio=mlp_ratio, img_size=size, patch_size=patch_size,
                             num_classes=num_classes, **kw)


def with_blocks(config: ViTConfig, blocks: Sequence[BlockConfig], **kw) -> ViTConfig:
    """Copy of ``config`` with new per-block sizes (used by structured pruning)."""
    return replace(config, blocks=tuple(blocks), **kw)
