"""Vision Transformer / DeiT with per-layer free sizes, so structured pruning can shrink it.

Follows timm's ``VisionTransformer`` layout and state-dict names (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``head``), so timm DeiT/ViT checkpoints load unchanged (Dosovitskiy et al. 2021; Touvron et al.
2021). timm's common token and block options are config fields: class token on/off, DeiT's
distillation token (``dist_token``, ``head_dist``), register tokens (``reg_token``, Darcet et al.
2024), LayerScale (``ls1.gamma``/``ls2.gamma``, Touvron et al. 2021, CaiT), global average pooling
with ``fc_norm``, position embeddings without prefix-token entries (``no_embed_class``, DeiT III).
Token order as timm and transformers: ``[cls, dist, reg0 … reg(R-1), patches]``. Unlike timm,
every block can have its own number of heads, q/k dim per head, v dim per head and FFN hidden
size, and the residual width (``embed_dim``) is free: a physically pruned model (SNP, seed 001)
is just another configuration of this class.

The attention computes its softmax explicitly and passes the probabilities through
``attn.attn_drop`` (an ``nn.Dropout``), the hook point ``core.attention`` uses. Token merging
(``core.tokens``) uses three ``nn.Identity`` slots: ``attn.key_point`` (its output is the keys),
``blocks.i.token_merge`` (between attention and FFN) and ``token_unmerge`` (after ``norm``).
"""
from __future__ import annotations

import warnings
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config_checks import (MAX_CLASSES, MAX_DEPTH, MAX_HEADS, MAX_REGISTERS, MAX_WIDTH,
                            check_block, check_image, check_input, check_int, check_scale,
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
        check_int("BlockConfig", "num_heads", self.num_heads, 1, MAX_HEADS, "heads")
        for name in ("qk_dim", "v_dim", "mlp_hidden"):
            check_int("BlockConfig", name, getattr(self, name), 1, MAX_WIDTH, "width")
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
    # timm's token / head options; the defaults are the original ViT/DeiT, so configs saved
    # before these fields existed load unchanged.
    class_token: bool = True
    distilled: bool = False            # DeiT distillation token (needs class_token)
    dist_head: bool = True             # with distilled: head_dist, logits = mean of both heads
    num_reg_tokens: int = 0            # register tokens (timm ``reg_tokens``)
    no_embed_class: bool = False       # pos_embed covers the patches only (DeiT III, reg models)
    init_values: float | None = None   # LayerScale init; None → no LayerScale (Identity)
    global_pool: str = "token"         # "token" (class token) or "avg" (mean of patch tokens)
    fc_norm: bool | None = None        # norm after pooling; None → only with global_pool "avg"
    dynamic_img_size: bool = False     # other input sizes: pos_embed resized per forward

    def __post_init__(self) -> None:
        patches = check_image("ViTConfig", self.img_size, self.patch_size, self.in_chans)
        check_int("ViTConfig", "num_classes", self.num_classes, 2, MAX_CLASSES, "classes")
        check_int("ViTConfig", "embed_dim", self.embed_dim, 1, MAX_WIDTH, "width")
        if not isinstance(self.blocks, tuple) or len(self.blocks) > MAX_DEPTH or not all(
                isinstance(b, BlockConfig) for b in self.blocks):
            raise ValueError(f"ViTConfig.blocks must be a tuple of at most {MAX_DEPTH} "
                             "BlockConfig")
        if not isinstance(self.norm_eps, float) or not 0 < self.norm_eps < 1:
            raise ValueError(f"ViTConfig.norm_eps must be a float in (0, 1), got "
                             f"{self.norm_eps!r}")
        check_stats("ViTConfig", "mean", self.mean, self.in_chans, positive=False)
        check_stats("ViTConfig", "std", self.std, self.in_chans, positive=True)
        check_int("ViTConfig", "num_reg_tokens", self.num_reg_tokens, 0, MAX_REGISTERS,
                  "registers")
        for flag in ("class_token", "distilled", "dist_head", "no_embed_class",
                     "dynamic_img_size", "qkv_bias"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"ViTConfig.{flag} must be true or false, got "
                                 f"{getattr(self, flag)!r}")
        if self.fc_norm is not None and not isinstance(self.fc_norm, bool):
            raise ValueError(f"ViTConfig.fc_norm must be None, true or false, got "
                             f"{self.fc_norm!r}")
        if self.init_values is not None and not (isinstance(self.init_values, (int, float))
                                                 and math.isfinite(self.init_values)):
            raise ValueError(f"ViTConfig.init_values must be None or a finite number, got "
                             f"{self.init_values!r}")
        self.check()
        for i, b in enumerate(self.blocks):
            check_block("ViTConfig", f"block {i}", patches + self.num_prefix_tokens,
                        b.num_heads, b.num_heads * (2 * b.qk_dim + b.v_dim), b.mlp_hidden)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.distilled) + self.num_reg_tokens

    @property
    def prefix_tokens(self) -> tuple[str, ...]:
        """Names of the tokens before the patches, in sequence order."""
        return ((("cls",) if self.class_token else ()) + (("dist",) if self.distilled else ())
                + tuple(f"reg{i}" for i in range(self.num_reg_tokens)))

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool == "avg" if self.fc_norm is None else self.fc_norm

    def check(self) -> None:
        """Raise ValueError for option combinations timm does not build either."""
        if self.global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {self.global_pool!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("global_pool 'token' needs the class token (class_token=True)")
        if self.distilled and not (self.class_token and self.global_pool == "token"):
            raise ValueError("a distillation token needs the class token and global_pool 'token'")
        if self.num_reg_tokens < 0:
            raise ValueError(f"num_reg_tokens must be >= 0, got {self.num_reg_tokens}")

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
        unknown = sorted(set(d) - {f.name for f in fields(ViTConfig)})
        if unknown:
            raise ValueError(f"unknown ViT config fields: {', '.join(unknown)}")
        for key in ("img_size", "mean", "std"):
            d[key] = tuple(d[key])
        return ViTConfig(**d)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) → patch tokens (B, N, D) with a strided convolution."""

    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, dim: int,
                 device: torch.device | str | None = None):
        super().__init__()
        H, W = img_size
        if H % patch_size or W % patch_size:
            raise ValueError(
                f"image size {H}x{W} is not divisible by the patch size {patch_size}")
        self.img_size, self.patch_size = (H, W), patch_size
        self.grid_size = (H // patch_size, W // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size,
                              device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k and v head dims.

    ``qkv`` packs ``[q (H·d_qk) | k (H·d_qk) | v (H·d_v)]`` along its output dim — timm's
    layout when ``d_qk == d_v``. Shapes: x (B, N, C) → (B, N, C); probabilities (B, H, N, N).
    """

    def __init__(self, dim: int, num_heads: int, qk_dim: int, v_dim: int,
                 qkv_bias: bool = True, scale: float | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        self.num_heads, self.qk_dim, self.v_dim = num_heads, qk_dim, v_dim
        self.scale = scale if scale is not None else qk_dim ** -0.5
        self.qkv = nn.Linear(dim, num_heads * (2 * qk_dim + v_dim), bias=qkv_bias, device=device)
        self.attn_drop = nn.Dropout(0.0)  # hook point: sees the post-softmax probabilities
        self.key_point = nn.Identity()    # hook point: its output is the keys (token merging)
        self.proj = nn.Linear(num_heads * v_dim, dim, device=device)

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
        k = self.key_point(k)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(B, N, self.num_heads * self.v_dim)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, device: torch.device | str | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Per-channel scale ``x * gamma`` on a residual branch (CaiT; timm's ``LayerScale``)."""

    def __init__(self, dim: int, init_values: float = 1e-5,
                 device: torch.device | str | None = None):
        super().__init__()
        self.init_values = init_values
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values), device=device))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, cfg: BlockConfig, qkv_bias: bool = True, eps: float = 1e-6,
                 init_values: float | None = None, device: torch.device | str | None = None):
        super().__init__()
        dd = {"device": device}
        self.norm1 = nn.LayerNorm(dim, eps=eps, **dd)
        self.attn = Attention(dim, cfg.num_heads, cfg.qk_dim, cfg.v_dim, qkv_bias, cfg.scale, **dd)
        self.ls1 = LayerScale(dim, init_values, **dd) if init_values is not None else nn.Identity()
        self.drop_path1 = nn.Identity()
        self.token_merge = nn.Identity()  # core.tokens (ToMe) merges here: (B, N, C) → (B, N', C)
        self.norm2 = nn.LayerNorm(dim, eps=eps, **dd)
        self.mlp = Mlp(dim, cfg.mlp_hidden, **dd)
        self.ls2 = LayerScale(dim, init_values, **dd) if init_values is not None else nn.Identity()
        self.drop_path2 = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        x = self.token_merge(x)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


def resample_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                       num_prefix_tokens: int) -> Tensor:
    """Bicubic (antialiased) resize of the patch part of ``pos_embed`` (1, P + h·w, D) from
    ``old_grid`` to ``new_grid``, prefix entries kept — timm's ``resample_abs_pos_embed``."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    D = grid.shape[-1]
    grid = grid.float().reshape(1, *old_grid, D).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, D).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


class VisionTransformer(nn.Module):
    """ViT / DeiT classifier. Input (B, C, H, W) in [0, 1]; output logits (B, num_classes).

    Normalisation with the config's mean/std happens inside (non-persistent buffers, so
    state-dict keys stay timm's). The sequence is ``[cls, dist, reg0 …, patches]`` (B, P + N, D)
    with ``P = num_prefix_tokens``; :attr:`prefix_tokens` names the first P and
    :attr:`cls_index` is 0 (or None without a class token). A distilled model returns the mean
    of ``head`` (class token) and ``head_dist`` (distillation token) in train and eval, as
    transformers' ``DeiTForImageClassificationWithTeacher`` (with ``dist_head=False`` the
    distillation token is only carried along and ``head`` classifies, as
    ``DeiTForImageClassification``). Another input size needs
    :meth:`set_input_size` or ``config.dynamic_img_size`` (position embeddings resized
    bicubically as timm's, with a warning).
    """

    def __init__(self, config: ViTConfig, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        if not config.blocks:
            raise ValueError("a ViT needs at least one block")
        config.check()
        D, dd = config.embed_dim, {"device": device}
        self.num_prefix_tokens: int = config.num_prefix_tokens
        self.prefix_tokens: tuple[str, ...] = config.prefix_tokens
        self.cls_index: int | None = 0 if config.class_token else None
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, D, **dd)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D, **dd)) if config.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D, **dd)) if config.distilled else None
        self.reg_token = (nn.Parameter(torch.zeros(1, config.num_reg_tokens, D, **dd))
                          if config.num_reg_tokens else None)
        embed_len = self.patch_embed.num_patches + (
            0 if config.no_embed_class else self.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, D, **dd))
        self.blocks = nn.ModuleList(
            Block(D, b, config.qkv_bias, config.norm_eps, config.init_values, **dd)
            for b in config.blocks)
        use_fc_norm = config.use_fc_norm
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(D, eps=config.norm_eps, **dd)
        self.fc_norm = nn.LayerNorm(D, eps=config.norm_eps, **dd) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(D, config.num_classes, **dd)
        self.token_unmerge = nn.Identity()  # core.tokens: merged tokens back to one per input
        self.head_dist = (nn.Linear(D, config.num_classes, **dd)
                          if config.distilled and config.dist_head else None)
        self.register_buffer("pixel_mean", torch.tensor(config.mean, **dd).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config.std, **dd).view(1, -1, 1, 1),
                             persistent=False)
        if not any(p.is_meta for p in self.parameters()):  # meta: weights come from a file
            self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.dist_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)  # timm's register init
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.gamma, m.init_values)

    @classmethod
    def empty(cls, config: ViTConfig) -> "VisionTransformer":
        """The architecture on the meta device: shapes and names, no memory, no init."""
        return cls(config, device="meta")

    @classmethod
    def from_state_dict(cls, config: ViTConfig, state_dict: dict[str, Tensor],
                        source: str = "checkpoint",
                        skeleton: "VisionTransformer | None" = None) -> "VisionTransformer":
        """Build ``config`` and take the tensors of ``state_dict`` (timm names) without a
        random init first (meta device, then ``assign``; ``skeleton``: an :meth:`empty` model
        of ``config`` to fill). Raises ValueError naming the missing, unexpected and
        mis-shaped keys before anything is loaded."""
        model = skeleton if skeleton is not None else cls.empty(config)
        problems = state_dict_mismatch(model.state_dict(), state_dict)
        if problems:
            raise ValueError(f"{source} does not fit the configured model: {problems}")
        # keys and shapes are checked above; setting the leaves directly is load_state_dict's
        # assign=True without its per-module Python machinery (a third of a DeiT-S load)
        for key, value in state_dict.items():
            owner, _, leaf = key.rpartition(".")
            module = model.get_submodule(owner)
            value = value.float() if value.is_floating_point() else value
            if leaf in module._parameters:
                setattr(module, leaf, nn.Parameter(value))
            else:
                setattr(module, leaf, value)
        model.pixel_mean = torch.tensor(config.mean).view(1, -1, 1, 1)
        model.pixel_std = torch.tensor(config.std).view(1, -1, 1, 1)
        return model

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.config.in_chans, *self.config.img_size)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.patch_embed.grid_size

    def set_input_size(self, img_size: int | tuple[int, int]) -> None:
        """Resize the position embeddings for ``img_size`` in place, bicubically as timm's
        ``set_input_size`` (with a warning), and record the size in the config."""
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        p = self.config.patch_size
        if size[0] % p or size[1] % p:
            raise ValueError(f"image size {size[0]}x{size[1]} is not divisible by the patch "
                             f"size {p}")
        config = replace(self.config, img_size=size)  # bounds checked before resampling
        new_grid = (size[0] // p, size[1] // p)
        if new_grid != self.grid_size:
            self._warn_resize(new_grid)
            prefix = 0 if self.config.no_embed_class else self.num_prefix_tokens
            with torch.no_grad():
                pos = resample_pos_embed(self.pos_embed, new_grid, self.grid_size, prefix)
            self.pos_embed = nn.Parameter(pos)
        self.config = config
        self.patch_embed.img_size, self.patch_embed.grid_size = size, new_grid
        self.patch_embed.num_patches = new_grid[0] * new_grid[1]

    def _warn_resize(self, grid: tuple[int, int]) -> None:
        warnings.warn(
            f"input grid {grid[0]}x{grid[1]} differs from the checkpoint's "
            f"{self.grid_size[0]}x{self.grid_size[1]} (image size {self.config.img_size}): "
            "position embeddings are bicubically interpolated", stacklevel=3)

    def _pos_embed(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch tokens (B, N, D) → prefix tokens prepended, position embeddings added."""
        pos_embed = self.pos_embed
        if grid != self.grid_size:
            self._warn_resize(grid)
            prefix = 0 if self.config.no_embed_class else self.num_prefix_tokens
            pos_embed = resample_pos_embed(pos_embed, grid, self.grid_size, prefix)
        B = x.shape[0]
        prefix_tokens = [t.expand(B, -1, -1) for t in (self.cls_token, self.dist_token,
                                                       self.reg_token) if t is not None]
        if self.config.no_embed_class:
            return torch.cat(prefix_tokens + [x + pos_embed], dim=1)
        return torch.cat(prefix_tokens + [x], dim=1) + pos_embed

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → tokens (B, P + N, D) after the blocks and ``norm``."""
        H, W = x.shape[-2:]
        p = self.config.patch_size
        if not (self.config.dynamic_img_size and x.ndim == 4
                and x.shape[1] == self.config.in_chans and H % p == 0 and W % p == 0):
            check_input(x, self.config.in_chans, self.config.img_size)
        x = (x - self.pixel_mean) / self.pixel_std
        x = self._pos_embed(self.patch_embed(x), (H // p, W // p))
        for blk in self.blocks:
            x = blk(x)
        return self.token_unmerge(self.norm(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """Tokens (B, P + N, D) → logits (B, num_classes)."""
        if self.head_dist is not None:
            return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2
        if self.config.global_pool == "avg":
            return self.head(self.fc_norm(x[:, self.num_prefix_tokens:].mean(dim=1)))
        return self.head(self.fc_norm(x[:, 0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def state_dict_mismatch(expected: dict[str, Tensor], given: dict[str, Tensor],
                        limit: int = 8) -> str:
    """One line naming missing, unexpected and mis-shaped keys of ``given``; "" if it fits."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
                    for k in set(given) & set(expected) if given[k].shape != expected[k].shape)

    def cut(xs: list[str]) -> str:
        return ", ".join(xs[:limit]) + (f" … (+{len(xs) - limit})" if len(xs) > limit else "")
    parts = [f"{len(missing)} missing keys: {cut(missing)}" if missing else "",
             f"{len(unexpected)} unexpected keys: {cut(unexpected)}" if unexpected else "",
             f"{len(shapes)} mis-shaped (file vs model): {cut(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


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
