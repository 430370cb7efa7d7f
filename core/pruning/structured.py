"""Structured pruning that physically shrinks ViT / DeiT and Linformer-ViT (SNP, seed 001).

Three separate steps, as ``torch.nn.utils.prune`` separates scores from masks:

1. a criterion (``core.pruning.snp``) returns :class:`StructuredScores` — one importance per
   q/k channel pair, v channel, FFN neuron, head and residual channel (higher = keep);
2. :func:`select` turns scores and :class:`~core.pruning.ratios.StructuredRatios` into a
   :class:`PruningPlan` of kept indices — per head, the same count in every head, and one set
   of residual channels for the whole stream;
3. :func:`shrink` builds a genuinely smaller model of the same class (its config, and so its
   heads and head dims, updated here); :func:`masked_model` builds the full-width what-if model
   with reversible masks that computes the same function.

The equivalent masked model. Zeroing a structure in a full-width model equals removing it for
q/k pairs, v channels, heads and FFN neurons, but not for residual channels: a LayerNorm's mean
and variance over D channels with some zeroed differ from those over the D' kept channels. So
the masked model replaces every LayerNorm (all of them sit on the residual stream) by a
:class:`MaskedLayerNorm` that normalises over the kept channels only and outputs 0 on the
others; with the writers of the stream (patch embedding, CLS, positions, attention
out-projection, fc2) masked, removed channels stay exactly 0 everywhere, and the masked model
equals the shrunk one up to float rounding.

The softmax scale. A shrunk block keeps the original scale (``1/√d_qk`` of the unpruned head
dim): the factor ``√(d'_qk / d_qk)`` (generally ``scale · √d'_qk``) is folded into the query
rows (weights and bias) and the config's ``scale`` is left at None, so shrinking itself changes
nothing, the model reloads from its config alone, and Linformer (whose package fixes
``dim_head ** -0.5``) works the same way.

Linformer-ViT: the ``linformer`` package's attention has one ``dim_head`` for q, k and v, so
q/k and v must keep the same count per head (the indices of the q/k pairs and of v are chosen
separately); and the package asserts ``dim % heads == 0``, so for Linformer the residual
removal count is rounded up until the kept width is a multiple of every layer's head count.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from linformer.linformer import LinformerSelfAttention
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..models.linformer_vit import (LinformerLayerConfig, LinformerViT, LinformerViTConfig,
                                    with_layers)
from ..models.vit import Attention, BlockConfig, VisionTransformer, ViTConfig, with_blocks
from .masks import apply_masks
from .ratios import StructuredRatios, removal_count

Config = ViTConfig | LinformerViTConfig


# ---------------------------------------------------------------------------- data types

@dataclass(frozen=True, eq=False)
class StructuredScores:
    """Importance of every prunable structure; higher = keep. Lists have one entry per block.

    qk: (H, d_qk) per block, one score per q/k channel pair; v: (H, d_v); mlp: (hidden,);
    heads: (H,); residual: (D,), one score per residual channel for the whole model.
    """

    qk: list[Tensor]
    v: list[Tensor]
    mlp: list[Tensor]
    heads: list[Tensor]
    residual: Tensor

    def map(self, fn) -> "StructuredScores":
        """Apply ``fn`` to every score tensor (e.g. ``lambda s: -s`` to reverse the order)."""
        return StructuredScores([fn(s) for s in self.qk], [fn(s) for s in self.v],
                                [fn(s) for s in self.mlp], [fn(s) for s in self.heads],
                                fn(self.residual))


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """Kept indices of one block, in the original numbering, sorted.

    heads: (H',); qk: (H', d'_qk) and v: (H', d'_v) are channel indices *within* each kept
    head (row h belongs to head ``heads[h]``); mlp: (hidden',).
    """

    heads: Tensor
    qk: Tensor
    v: Tensor
    mlp: Tensor


@dataclass(frozen=True, eq=False)
class PruningPlan:
    """What a structured pruning keeps: one :class:`BlockPlan` per block and the residual
    channels (D',) kept everywhere along the stream."""

    blocks: tuple[BlockPlan, ...]
    residual: Tensor


# ---------------------------------------------------------------------------- block access

@dataclass(eq=False)
class BlockView:
    """Family-independent access to one block's sizes, modules and weights (views, no copies).

    ``q_weight``/``k_weight`` (H, d_qk, C), ``q_bias``/``k_bias`` (H, d_qk) or None,
    ``v_weight`` (H, d_v, C), ``out_weight`` (C, H·d_v), ``fc1``/``fc2`` the FFN linears,
    ``norm1``/``norm2`` the pre-norms; ``attn`` the attention module (its input is the
    LayerNorm-ed block input).
    """

    num_heads: int
    qk_dim: int
    v_dim: int
    mlp_hidden: int
    attn: nn.Module
    norm1: nn.LayerNorm
    norm2: nn.LayerNorm
    fc1: nn.Linear
    fc2: nn.Linear
    q_weight: Tensor
    k_weight: Tensor
    v_weight: Tensor
    q_bias: Tensor | None
    k_bias: Tensor | None
    out_weight: Tensor

    @property
    def scale(self) -> float:
        return self.attn.scale if isinstance(self.attn, Attention) else self.qk_dim ** -0.5

    def qk(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Normed input x (B, N, C) → q (B, H, N, d_qk) and the keys scored against it:
        k (B, H, N, d_qk) for softmax attention, the k sequence-projected keys
        (B, H, k, d_qk) for Linformer (its scores are ``Q (E K)ᵀ``)."""
        return self._qkv(x)[:2]

    def head_output_norms(self, x: Tensor) -> Tensor:
        """(B, H): per head, the mean over tokens of the L2 norm of its contribution to the
        block's output, ``‖softmax(q kᵀ·scale) v W_out[:, h]ᵀ‖``."""
        q, k, v = self._qkv(x)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        o = attn @ v                                                   # (B, H, N, d_v)
        w = self.out_weight.reshape(-1, self.num_heads, self.v_dim)   # (C, H, d_v)
        gram = torch.einsum("chd,che->hde", w, w)                      # W_hᵀ W_h per head
        sq = torch.einsum("bhnd,hde,bhne->bhn", o, gram, o)
        return sq.clamp(min=0).sqrt().mean(dim=-1)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(self.attn, Attention):
            return self.attn.split_qkv(x)
        a: LinformerSelfAttention = self.attn
        B, N, _ = x.shape
        H, d = self.num_heads, self.qk_dim
        proj_v = a.proj_k if a.share_kv else a.proj_v
        q = a.to_q(x).reshape(B, N, H, d).transpose(1, 2)
        k = torch.einsum("bnd,nk->bkd", a.to_k(x), a.proj_k[:N])
        v = torch.einsum("bnd,nk->bkd", a.to_v(x) if not a.share_kv else a.to_k(x),
                         proj_v[:N])
        k = k.reshape(B, -1, H, d).transpose(1, 2)
        v = v.reshape(B, -1, H, d).transpose(1, 2)
        return q, k, v


def block_views(model: nn.Module) -> list[BlockView]:
    """One :class:`BlockView` per block of a ViT / DeiT or Linformer-ViT."""
    views = []
    if isinstance(model, VisionTransformer):
        for blk, cfg in zip(model.blocks, model.config.blocks):
            H, dq, dv, C = cfg.num_heads, cfg.qk_dim, cfg.v_dim, model.config.embed_dim
            w = blk.attn.qkv.weight.detach()
            b = blk.attn.qkv.bias.detach() if blk.attn.qkv.bias is not None else None
            views.append(BlockView(
                H, dq, dv, cfg.mlp_hidden, blk.attn, blk.norm1, blk.norm2, blk.mlp.fc1,
                blk.mlp.fc2,
                q_weight=w[:H * dq].reshape(H, dq, C),
                k_weight=w[H * dq:2 * H * dq].reshape(H, dq, C),
                v_weight=w[2 * H * dq:].reshape(H, dv, C),
                q_bias=b[:H * dq].reshape(H, dq) if b is not None else None,
                k_bias=b[H * dq:2 * H * dq].reshape(H, dq) if b is not None else None,
                out_weight=blk.attn.proj.weight.detach()))
        return views
    if isinstance(model, LinformerViT):
        for layer, cfg in zip(model.transformer.net.layers, model.config.layers):
            attn, ff = layer[0].fn, layer[1].fn
            H, d, C = cfg.heads, cfg.dim_head, model.config.dim
            views.append(BlockView(
                H, d, d, cfg.ff_hidden, attn, layer[0].norm, layer[1].norm, ff.w1, ff.w2,
                q_weight=attn.to_q.weight.detach().reshape(H, d, C),
                k_weight=attn.to_k.weight.detach().reshape(H, d, C),
                v_weight=attn.to_v.weight.detach().reshape(H, d, C),
                q_bias=None, k_bias=None, out_weight=attn.to_out.weight.detach()))
        return views
    raise TypeError(f"structured pruning supports VisionTransformer and LinformerViT, not "
                    f"{type(model).__name__}")


def residual_links(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The layers joined by the residual stream, each as (name, (D, fan) channel vectors).

    Writers (patch embedding, every attention out-projection, every fc2) give their output rows;
    readers (every q/k/v projection, fc1 and the head) their input columns multiplied by the
    gain of the LayerNorm in front of them (the weight that channel effectively meets).
    """
    views = block_views(model)
    pe = model.patch_embed.proj.weight.detach()
    links = [("patch_embed", pe.reshape(pe.shape[0], -1))]
    for i, b in enumerate(views):
        g1, g2 = b.norm1.weight.detach(), b.norm2.weight.detach()
        qkv = torch.cat([b.q_weight.flatten(0, 1), b.k_weight.flatten(0, 1),
                         b.v_weight.flatten(0, 1)])
        links += [(f"blocks.{i}.qkv", (qkv * g1).T), (f"blocks.{i}.proj", b.out_weight),
                  (f"blocks.{i}.fc1", (b.fc1.weight.detach() * g2).T),
                  (f"blocks.{i}.fc2", b.fc2.weight.detach())]
    links.append(("head", (model.head.weight.detach() * model.norm.weight.detach()).T))
    return links


@contextmanager
def record_attention_inputs(model: nn.Module) -> Iterator[list[Tensor]]:
    """During the context, each forward appends every block's LayerNorm-ed attention input
    (B, N, C), first block to last. Hooks are removed on exit, errors included."""
    records: list[Tensor] = []
    handles = [v.attn.register_forward_pre_hook(lambda _m, args: records.append(args[0]))
               for v in block_views(model)]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- selection

def keep_top(scores: Tensor, n_keep: int) -> Tensor:
    """Indices of the ``n_keep`` highest scores along the last dim, sorted ascending.

    Ties keep the lower index (stable sort), so equal scores give a deterministic plan."""
    order = scores.argsort(dim=-1, descending=True, stable=True)[..., :n_keep]
    return order.sort(dim=-1).values


def select(model: nn.Module, scores: StructuredScores, ratios: StructuredRatios) -> PruningPlan:
    """Scores and ratios → :class:`PruningPlan` (remove the lowest scores).

    Per block, first the heads (``removal_count(ratio, H)``, at least one kept), then within
    every kept head the same number of q/k pairs and of v channels, chosen per head; FFN
    neurons; one residual set. Counts follow :func:`~core.pruning.ratios.removal_count`.
    """
    views = block_views(model)
    if ratios.depth != len(views):
        raise ValueError(f"ratios are for {ratios.depth} blocks; this model has {len(views)}")
    blocks = []
    for i, b in enumerate(views):
        heads = keep_top(scores.heads[i].float(), b.num_heads
                         - removal_count(ratios.heads[i], b.num_heads))
        n_qk = b.qk_dim - removal_count(ratios.qk[i], b.qk_dim)
        n_v = b.v_dim - removal_count(ratios.v[i], b.v_dim)
        if isinstance(model, LinformerViT) and n_qk != n_v:
            raise ValueError(
                f"block {i}: Linformer's attention has one dim_head shared by q, k and v; the "
                f"q/k ratio {ratios.qk[i]} keeps {n_qk} and the v ratio {ratios.v[i]} keeps "
                f"{n_v} of {b.qk_dim} per head — give equal q/k and v ratios")
        blocks.append(BlockPlan(
            heads=heads,
            qk=keep_top(scores.qk[i].float()[heads], n_qk),
            v=keep_top(scores.v[i].float()[heads], n_v),
            mlp=keep_top(scores.mlp[i].float(), b.mlp_hidden
                         - removal_count(ratios.mlp[i], b.mlp_hidden))))
    D = scores.residual.numel()
    n_res = D - removal_count(ratios.residual, D)
    if isinstance(model, LinformerViT):
        multiple = math.lcm(*(len(p.heads) for p in blocks))
        n_res -= n_res % multiple
        if n_res == 0:
            raise ValueError(f"residual ratio {ratios.residual} leaves no width divisible by "
                             f"the heads ({multiple}) the linformer package requires")
    return PruningPlan(tuple(blocks), keep_top(scores.residual.float(), n_res))


def full_plan(model: nn.Module) -> PruningPlan:
    """The plan that keeps everything (shrinking with it copies the model)."""
    views = block_views(model)

    def ar(n: int) -> Tensor:
        return torch.arange(n)
    return PruningPlan(
        tuple(BlockPlan(ar(b.num_heads), ar(b.qk_dim).repeat(b.num_heads, 1),
                        ar(b.v_dim).repeat(b.num_heads, 1), ar(b.mlp_hidden)) for b in views),
        ar(model.patch_embed.proj.weight.shape[0]))


def _check_plan(model: nn.Module, plan: PruningPlan) -> None:
    views = block_views(model)
    if len(plan.blocks) != len(views):
        raise ValueError(f"plan has {len(plan.blocks)} blocks; the model has {len(views)}")

    def ok(ix: Tensor, n: int, what: str) -> None:
        if ix.numel() == 0 or ix.min() < 0 or ix.max() >= n:
            raise ValueError(f"{what}: indices must be non-empty and in [0, {n})")
        if ix.dim() == 1 and ix.unique().numel() != ix.numel():
            raise ValueError(f"{what}: repeated indices")
    ok(plan.residual, model.patch_embed.proj.weight.shape[0], "residual")
    for i, (p, b) in enumerate(zip(plan.blocks, views)):
        ok(p.heads, b.num_heads, f"block {i} heads")
        ok(p.mlp, b.mlp_hidden, f"block {i} mlp")
        for name, ix, n in (("qk", p.qk, b.qk_dim), ("v", p.v, b.v_dim)):
            if ix.dim() != 2 or ix.shape[0] != p.heads.numel():
                raise ValueError(f"block {i} {name}: need one row of indices per kept head "
                                 "(the same count in every head)")
            for r in ix:
                ok(r, n, f"block {i} {name}")


# ---------------------------------------------------------------------------- slicing

# state-dict key → kept indices per dim (None = all); the one description from which both the
# shrunk weights (index_select) and the masks (ones at the kept positions) are made
Slices = dict[str, tuple[Tensor | None, ...]]


def _rows(heads: Tensor, within: Tensor, per_head: int) -> Tensor:
    """Flat row indices of channels ``within`` (H', d') of ``heads`` in a (H·per_head) layout."""
    return (heads[:, None] * per_head + within).flatten()


def _slices(model: nn.Module, plan: PruningPlan) -> Slices:
    r = plan.residual
    s: Slices = {"cls_token": (None, None, r), "pos_embed": (None, None, r),
                 "patch_embed.proj.weight": (r,), "patch_embed.proj.bias": (r,),
                 "norm.weight": (r,), "norm.bias": (r,), "head.weight": (None, r)}
    for i, (p, b) in enumerate(zip(plan.blocks, block_views(model))):
        H, dq, dv = b.num_heads, b.qk_dim, b.v_dim
        q_rows = _rows(p.heads, p.qk, dq)
        v_rows = _rows(p.heads, p.v, dv)
        if isinstance(model, VisionTransformer):
            pre = f"blocks.{i}."
            # packed [q (H·d_qk) | k (H·d_qk) | v (H·d_v)]
            qkv = torch.cat([q_rows, q_rows + H * dq, v_rows + 2 * H * dq])
            s |= {pre + "attn.qkv.weight": (qkv, r), pre + "attn.qkv.bias": (qkv,),
                  pre + "attn.proj.weight": (r, v_rows), pre + "attn.proj.bias": (r,)}
            names = {"norm1": "norm1", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
        else:
            pre = f"transformer.net.layers.{i}."
            # separate to_q / to_k / to_v: q and k take the same rows
            s |= {pre + "0.fn.to_q.weight": (q_rows, r), pre + "0.fn.to_k.weight": (q_rows, r),
                  pre + "0.fn.to_v.weight": (v_rows, r),
                  pre + "0.fn.to_out.weight": (r, v_rows), pre + "0.fn.to_out.bias": (r,)}
            names = {"norm1": "0.norm", "norm2": "1.norm", "fc1": "1.fn.w1", "fc2": "1.fn.w2"}
        for norm in ("norm1", "norm2"):
            s |= {f"{pre}{names[norm]}.weight": (r,), f"{pre}{names[norm]}.bias": (r,)}
        s |= {f"{pre}{names['fc1']}.weight": (p.mlp, r), f"{pre}{names['fc1']}.bias": (p.mlp,),
              f"{pre}{names['fc2']}.weight": (r, p.mlp), f"{pre}{names['fc2']}.bias": (r,)}
    return s


def _take(t: Tensor, ix: tuple[Tensor | None, ...]) -> Tensor:
    for dim, i in enumerate(ix):
        if i is not None:
            t = t.index_select(dim, i.to(t.device))
    return t


def plan_masks(model: nn.Module, plan: PruningPlan) -> dict[str, Tensor]:
    """Boolean masks (True = kept), keyed like the state dict, for every tensor the plan cuts."""
    _check_plan(model, plan)
    sd = model.state_dict()
    masks = {}
    for key, ix in _slices(model, plan).items():
        if key not in sd:  # e.g. a qkv without bias
            continue
        m = torch.zeros(sd[key].shape, dtype=torch.bool, device=sd[key].device)
        grids = torch.meshgrid(*[(i if i is not None else torch.arange(n)).to(m.device)
                                 for i, n in zip(ix, m.shape)], indexing="ij")
        m[grids] = True
        masks[key] = m
    return masks


# ---------------------------------------------------------------------------- shrinking

def shrunk_config(model: nn.Module, plan: PruningPlan) -> Config:
    """The config of the model :func:`shrink` builds (scale left at None: folded into W_q)."""
    D = plan.residual.numel()
    if isinstance(model, VisionTransformer):
        blocks = [BlockConfig(p.heads.numel(), p.qk.shape[1], p.v.shape[1], p.mlp.numel())
                  for p in plan.blocks]
        return with_blocks(model.config, blocks, embed_dim=D)
    layers = [LinformerLayerConfig(p.heads.numel(), p.qk.shape[1], p.mlp.numel())
              for p in plan.blocks]
    return with_layers(model.config, layers, dim=D)


@torch.no_grad()
def shrink(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A new, physically smaller model of the same class computing what ``model`` computes
    with the plan's structures removed (see the module docstring). ``model`` is not touched."""
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("shrink a plain model, not one carrying parametrized masks")
    _check_plan(model, plan)
    views = block_views(model)
    sd = model.state_dict()
    slices = _slices(model, plan)
    new_sd = {k: _take(v, slices[k]) if k in slices else v for k, v in sd.items()}
    for i, (p, b) in enumerate(zip(plan.blocks, views)):
        fold = b.scale * math.sqrt(p.qk.shape[1])  # new scale d'^-0.5 · fold = old scale
        n_q = p.qk.numel()
        if isinstance(model, VisionTransformer):
            for key in (f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.qkv.bias"):
                if key in new_sd:
                    new_sd[key] = new_sd[key].clone()
                    new_sd[key][:n_q] *= fold
        else:
            key = f"transformer.net.layers.{i}.0.fn.to_q.weight"
            new_sd[key] = new_sd[key] * fold
    param = next(model.parameters())
    with torch.device("meta"):  # skip the random init: every tensor is overwritten below
        new = type(model)(shrunk_config(model, plan))
    new = new.to_empty(device=param.device).to(dtype=param.dtype)
    new.load_state_dict(new_sd, strict=True)
    old_buffers = dict(model.named_buffers())
    for name, buf in new.named_buffers():  # non-persistent ones (pixel mean / std)
        if name not in new_sd:
            buf.copy_(old_buffers[name])
    new.train(model.training)
    new.preset = getattr(model, "preset", "")
    return new


# ---------------------------------------------------------------------------- masked model

class MaskedLayerNorm(nn.LayerNorm):
    """LayerNorm over the kept channels only; removed channels output 0.

    Input (..., D) → (..., D). Equals ``LayerNorm(D')`` applied to ``x[..., kept]`` and
    scattered back, which is what makes a masked model equal to the shrunk one."""

    def __init__(self, norm: nn.LayerNorm, kept: Tensor):
        super().__init__(norm.normalized_shape, eps=norm.eps,
                         elementwise_affine=norm.elementwise_affine,
                         device=norm.weight.device, dtype=norm.weight.dtype)
        self.load_state_dict(norm.state_dict())
        self.register_buffer("kept", kept.to(norm.weight.device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        k = self.kept
        w = self.weight[k] if self.weight is not None else None
        b = self.bias[k] if self.bias is not None else None
        out = torch.zeros_like(x)
        out[..., k] = F.layer_norm(x[..., k], (k.numel(),), w, b, self.eps)
        return out


def masked_model(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """The full-width model equal to ``shrink(model, plan)``: a copy whose pruned weights are
    masked by reversible parametrizations (``core.pruning.masks.apply_masks``, the masks of
    :func:`plan_masks`) and whose LayerNorms are :class:`MaskedLayerNorm` over the kept
    residual channels. ``model`` is not touched."""
    masks = plan_masks(model, plan)
    out = copy.deepcopy(model)
    for name, mod in list(out.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is nn.LayerNorm:
                setattr(mod, child_name, MaskedLayerNorm(child, plan.residual))
    return apply_masks(out, masks)


# ---------------------------------------------------------------------------- reporting

def config_macs(config: Config) -> int:
    """Closed-form MACs of one image, the quantity ``count_macs`` measures.

    ViT with N = P + 1 tokens (P patches), residual width D, patch size p:
    ``P·D·C_in·p² + Σ_blocks [N·D·H(2d_qk + d_v) + H·N²·(d_qk + d_v) + N·H·d_v·D
    + 2·N·D·hidden] + D·classes``. Linformer with sequence-projection length k: per layer
    ``3·N·D·H·d + 2·N·k·H·d + 2·H·N·k·d + N·H·d·D + 2·N·D·hidden``.
    """
    H0, W0 = config.img_size
    p = config.patch_size
    P = (H0 // p) * (W0 // p)
    N = P + 1
    if isinstance(config, ViTConfig):
        D = config.embed_dim
        macs = P * D * config.in_chans * p * p
        for b in config.blocks:
            H, dq, dv = b.num_heads, b.qk_dim, b.v_dim
            macs += (N * D * H * (2 * dq + dv) + H * N * N * (dq + dv) + N * H * dv * D
                     + 2 * N * D * b.mlp_hidden)
    else:
        D, k = config.dim, config.k
        macs = P * D * config.in_chans * p * p
        for b in config.layers:
            Hd = b.heads * b.dim_head
            macs += 3 * N * D * Hd + 2 * N * k * Hd + 2 * N * k * Hd + N * Hd * D \
                + 2 * N * D * b.ff_hidden
    return macs + D * config.num_classes


def _sizes(config: Config) -> tuple[list[tuple[int, int, int, int]], int]:
    if isinstance(config, ViTConfig):
        return [(b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden) for b in config.blocks], \
            config.embed_dim
    return [(b.heads, b.dim_head, b.dim_head, b.ff_hidden) for b in config.layers], config.dim


def ratios_of(before: Config, after: Config) -> StructuredRatios:
    """The ratios that took ``before`` to ``after`` (fractions removed), read off the configs."""
    sb, Db = _sizes(before)
    sa, Da = _sizes(after)
    if len(sb) != len(sa):
        raise ValueError(f"configs have {len(sb)} and {len(sa)} blocks")
    return StructuredRatios(
        qk=tuple(1 - a[1] / b[1] for a, b in zip(sa, sb)),
        v=tuple(1 - a[2] / b[2] for a, b in zip(sa, sb)),
        mlp=tuple(1 - a[3] / b[3] for a, b in zip(sa, sb)),
        heads=tuple(1 - a[0] / b[0] for a, b in zip(sa, sb)),
        residual=1 - Da / Db)


def plan_table(before: Config, after: Config) -> pd.DataFrame:
    """One row per block and component (and one for the residual): sizes before / after."""
    sb, Db = _sizes(before)
    sa, Da = _sizes(after)
    rows = []
    for i, (b, a) in enumerate(zip(sb, sa)):
        for j, comp in enumerate(("heads", "qk per head", "v per head", "mlp hidden")):
            rows.append({"block": i, "component": comp, "before": b[j], "after": a[j],
                         "removed": 1 - a[j] / b[j]})
    rows.append({"block": -1, "component": "residual", "before": Db, "after": Da,
                 "removed": 1 - Da / Db})
    return pd.DataFrame(rows)
