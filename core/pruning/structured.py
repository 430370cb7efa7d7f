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
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..models.adapter import (BlockView, Slices, adapter_for_config, block_views,  # noqa: F401
                              get_adapter)
from ..data.preprocess import attach_inputs
from .masks import apply_masks
from .ratios import StructuredRatios, removal_count

Config = Any  # a family's configuration dataclass (ViTConfig, LinformerViTConfig, ...)


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

def residual_links(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The layers joined by the residual stream, each as (name, (D, fan) channel vectors).

    Writers (patch embedding, every attention out-projection, every fc2) give their output rows;
    readers (every q/k/v projection, fc1 and the head) their input columns multiplied by the
    gain of the LayerNorm in front of them (the weight that channel effectively meets)."""
    return get_adapter(model).residual_links(model)


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


RANKINGS = ("layer", "global")


def rounded_keep(n: int, removed: int, round_to: int = 1) -> int:
    """How many of ``n`` structures to keep when ``removed`` are asked away and kept widths
    should be multiples of ``round_to``: ``n − removed`` rounded to the *nearest* multiple
    (half up), at least ``round_to`` (never 0) and at most ``n`` (a structure narrower than
    ``round_to`` stays whole). Nearest, not up or down, so the MACs of a ratio file move
    both ways and stay closest to the request on average."""
    keep = n - removed
    if round_to <= 1:
        return keep
    keep = math.floor(keep / round_to + 0.5) * round_to
    return min(max(keep, round_to), n)


def normalise_layer(scores: Tensor) -> Tensor:
    """Scores of one layer divided by their mean absolute value (float64), so layers whose
    criteria live on different scales (Taylor magnitudes grow with depth, SNP's ω with the
    layer's width) compete on equal terms in a global ranking: a layer of uniform scores
    becomes all ±1 whatever its size. Dividing by a positive number keeps each layer's order
    (also for negated scores, e.g. ``reverse``)."""
    s = scores.double()
    return s / s.abs().mean().clamp(min=1e-300)


def global_removals(layers: list[Tensor], total: int) -> list[int]:
    """Per layer how many *per-head slots* to remove so that ``total`` slots go in all, the
    lowest normalised scores first (a slot = one channel in every head of the layer).

    layers: one (H_i, n_i) score tensor per layer (H_i = 1 for FFN neurons and heads). A
    layer's r-th slot costs the mean over its heads of the r-th lowest
    :func:`normalise_layer` score; costs rise with r, so the ``total`` cheapest slots over
    all layers form a prefix in every layer. Every layer keeps at least one slot."""
    costs, owners = [], []
    for i, s in enumerate(layers):
        srt = normalise_layer(s).reshape(s.shape[0], -1).sort(dim=-1).values.mean(dim=0)
        costs.append(srt[:-1])                     # the last slot is never removable
        owners.append(torch.full((srt.numel() - 1,), i))
    cost, owner = torch.cat(costs), torch.cat(owners)
    if not 0 <= total <= cost.numel():
        raise ValueError(f"cannot remove {total} of {cost.numel()} removable slots")
    # stable: equal costs go to the earlier layer first, and within a layer in slot order
    chosen = owner[cost.argsort(stable=True)[:total]]
    return torch.bincount(chosen, minlength=len(layers)).tolist()


def select(model: nn.Module, scores: StructuredScores, ratios: StructuredRatios,
           round_to: int = 1, ranking: str = "layer") -> PruningPlan:
    """Scores and ratios → :class:`PruningPlan` (remove the lowest scores).

    Per block, first the heads (``removal_count(ratio, H)``, at least one kept), then within
    every kept head the same number of q/k pairs and of v channels, chosen per head; FFN
    neurons; one residual set. Counts follow :func:`~core.pruning.ratios.removal_count`.

    ``ranking="global"``: per component (heads, q/k pairs, v channels, FFN neurons) the
    total removed over all blocks is what the per-layer ratios would remove, but which
    blocks give it up follows the scores, normalised per layer (:func:`normalise_layer`)
    and ranked across blocks (:func:`global_removals`; q/k and v are counted in per-head
    slots). The residual is one layer either way. For a family whose q/k and v share one
    head dim (Linformer) a slot's cost is the mean of its q/k and v costs and both take
    the same counts.

    ``round_to``: kept q/k and v widths per head, FFN widths and the residual width become
    multiples of it (:func:`rounded_keep`, applied after the ranking, so totals move by
    less than ``round_to`` per structure); head counts are not rounded.
    """
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}")
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int, got {round_to!r}")
    adapter = get_adapter(model)
    views = adapter.blocks(model)
    if ratios.depth != len(views):
        raise ValueError(f"ratios are for {ratios.depth} blocks; this model has {len(views)}")
    rm_heads = [removal_count(ratios.heads[i], b.num_heads) for i, b in enumerate(views)]
    rm_mlp = [removal_count(ratios.mlp[i], b.mlp_hidden) for i, b in enumerate(views)]
    if ranking == "global":
        rm_heads = global_removals([s[None] for s in scores.heads], sum(rm_heads))
        rm_mlp = global_removals([s[None] for s in scores.mlp], sum(rm_mlp))
    kept_heads = [keep_top(scores.heads[i].float(), b.num_heads - rm_heads[i])
                  for i, b in enumerate(views)]
    rm_qk = [removal_count(ratios.qk[i], b.qk_dim) for i, b in enumerate(views)]
    rm_v = [removal_count(ratios.v[i], b.v_dim) for i, b in enumerate(views)]
    for i, b in enumerate(views):
        if adapter.tied_qk_v and rm_qk[i] != rm_v[i]:
            raise ValueError(
                f"block {i}: Linformer's attention has one dim_head shared by q, k and v; the "
                f"q/k ratio {ratios.qk[i]} keeps {b.qk_dim - rm_qk[i]} and the v ratio "
                f"{ratios.v[i]} keeps {b.v_dim - rm_v[i]} of {b.qk_dim} per head — give "
                "equal q/k and v ratios")
    if ranking == "global":
        qk = [scores.qk[i][h] for i, h in enumerate(kept_heads)]
        v = [scores.v[i][h] for i, h in enumerate(kept_heads)]
        if adapter.tied_qk_v:
            both = [(normalise_layer(a) + normalise_layer(b)) / 2 for a, b in zip(qk, v)]
            rm_qk = rm_v = global_removals(both, sum(rm_qk))
        else:
            rm_qk, rm_v = global_removals(qk, sum(rm_qk)), global_removals(v, sum(rm_v))
    blocks = []
    for i, b in enumerate(views):
        heads = kept_heads[i]
        n_qk = rounded_keep(b.qk_dim, rm_qk[i], round_to)
        n_v = rounded_keep(b.v_dim, rm_v[i], round_to)
        blocks.append(BlockPlan(
            heads=heads,
            qk=keep_top(scores.qk[i].float()[heads], n_qk),
            v=keep_top(scores.v[i].float()[heads], n_v),
            mlp=keep_top(scores.mlp[i].float(),
                         rounded_keep(b.mlp_hidden, rm_mlp[i], round_to))))
    D = scores.residual.numel()
    n_res = rounded_keep(D, removal_count(ratios.residual, D), round_to)
    if adapter.heads_divide_width:
        multiple = math.lcm(round_to, *(len(p.heads) for p in blocks))
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
        ar(get_adapter(model).residual_width(model)))


def _check_plan(model: nn.Module, plan: PruningPlan) -> None:
    views = block_views(model)
    if len(plan.blocks) != len(views):
        raise ValueError(f"plan has {len(plan.blocks)} blocks; the model has {len(views)}")

    def ok(ix: Tensor, n: int, what: str) -> None:
        if ix.numel() == 0 or ix.min() < 0 or ix.max() >= n:
            raise ValueError(f"{what}: indices must be non-empty and in [0, {n})")
        if ix.dim() == 1 and ix.unique().numel() != ix.numel():
            raise ValueError(f"{what}: repeated indices")
    ok(plan.residual, get_adapter(model).residual_width(model), "residual")
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

def _slices(model: nn.Module, plan: PruningPlan) -> Slices:
    return get_adapter(model).slices(model, plan)


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
    return get_adapter(model).shrunk_config(model, plan)


@torch.no_grad()
def shrink(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A new, physically smaller model of the same class computing what ``model`` computes
    with the plan's structures removed (see the module docstring). ``model`` is not touched."""
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("shrink a plain model, not one carrying parametrized masks")
    _check_plan(model, plan)
    adapter = get_adapter(model)
    sd = model.state_dict()
    slices = adapter.slices(model, plan)
    # every tensor owned by the new model (``state_dict`` shares the old model's storage)
    new_sd = {k: (_take(v, slices[k]) if k in slices else v).clone(
        memory_format=torch.contiguous_format) for k, v in sd.items()}
    for i, (p, b) in enumerate(zip(plan.blocks, adapter.blocks(model))):
        fold = b.scale * math.sqrt(p.qk.shape[1])  # new scale d'^-0.5 · fold = old scale
        adapter.fold_query_scale(new_sd, i, p.qk.numel(), fold)
    param = next(model.parameters())
    with torch.device("meta"):  # skip the random init: every tensor is overwritten below
        new = adapter.build(adapter.shrunk_config(model, plan))
    # the meta tensors are replaced by ``new_sd``'s (no to_empty: allocating from meta
    # tensors imports torch's symbolic-shape machinery, a second on first use)
    new.load_state_dict(new_sd, strict=True, assign=True)
    old_buffers = dict(model.named_buffers())
    for name, buf in list(new.named_buffers()):  # non-persistent ones (pixel mean / std)
        if name not in new_sd:
            owner, _, attr = name.rpartition(".")
            setattr(new.get_submodule(owner) if owner else new, attr,
                    old_buffers[name].clone())
    new = new.to(device=param.device, dtype=param.dtype)
    new.train(model.training)
    new.preset = getattr(model, "preset", "")
    # what a loader attached: the outputs and the input pipeline are the same after shrinking
    attach_inputs(new, getattr(model, "preprocessing", None), getattr(model, "labels", None),
                  getattr(model, "wnids", None))
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
    """Closed-form MACs of one image, the quantity ``count_macs`` measures (the family
    adapter's ``config_macs`` gives the formula)."""
    return adapter_for_config(config).config_macs(config)


def _sizes(config: Config) -> tuple[list[tuple[int, int, int, int]], int]:
    return adapter_for_config(config).block_sizes(config)


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
