"""AMAP: automatic channel pruning of multi-head (linear) attention under a MAC budget.

Seed 002 (Lee & Hwang, "AMAP: Automatic Multihead Attention Pruning by Similarity-Based Pruning
Indicator", TNNLS 2025). Only the abstract is public; it names five components. Each is
implemented here as follows (the choices the abstract leaves open are ours):

1. **Learnable indicator, trained toward the budget with a penalty.** Every q/k channel pair
   and every v channel of every head has a logit ``s``; its gate is ``m = σ(s + γ·log w)``
   (``w``: component 2). The expected attention MACs are linear in the gates,
   ``E[MACs] = Σ_b a_b · Σ_{h,c} (m^qk_{b,h,c} + m^v_{b,h,c})`` (``a_b`` below), and the loss
   is ``CE + λ·(E[MACs] / (budget · MACs_full) − 1)²``. Why a two-sided penalty, not a hard
   schedule: it lets the training decide *where* the MACs go (layers whose channels the task
   loss defends keep more), it pulls back up when the indicator undershoots, and it needs no
   rule to distribute a scheduled total. It does not land exactly on the budget (the task
   loss pushes back), so at the end of the search an exact greedy projection (:meth:`
   AttentionIndicator.fit_budget`) sets the counts to the largest allocation with
   attention MACs ≤ budget, removing/adding the slot of lowest/highest indicator value per
   MAC. The forward always uses the *binarised* gates (straight-through: forward 0/1, backward
   through ``m``), so what is trained is exactly what gets exported.
2. **Similarity weights folded into the indicator.** From the calibration batch, per head:
   a q/k pair's contribution to the attention logits is the rank-1 ``q_c k_cᵀ``, and
   ``cos_F(q_c k_cᵀ, q_c' k_c'ᵀ) = cos(q_c, q_c')·cos(k_c, k_c')`` (token vectors); a v
   channel's is its token vector ``v_c``. The token vectors are centred first (so the cosines
   are correlations: a shared offset, e.g. from the bias, does not make channels look alike).
   ``w_c = 1 − mean_{c'≠c} |cos|`` (mean over images), in [0, 1]: 1 = uncorrelated with every
   other channel of its head, 0 = every other channel duplicates it. It enters the gate
   as ``m = σ(s + γ·log w)`` — the indicator's odds are multiplied by ``w^γ`` — so a channel
   similar to others in its head counts for less both in the expected MACs and in the ranking
   that decides which channels a head keeps. ``w`` is computed once, before training
   (``similarity=γ``, 0 switches it off).
3. **Even removal across heads.** The kept count of a layer is the head-average of the
   expected count, ``n_b = clamp(round(Σ_{h,c} m_{b,h,c} / H), 1, d)``, and every head keeps
   its own top-``n_b`` channels by gate. So every head of a layer keeps the same number, the
   result is a plain smaller head dim, and it shrinks through SNP's path
   (``structured.shrink``) with no channel mismatch. Linformer's module has one ``dim_head``
   for q, k and v, so there one count serves both (``n_b = round((E^qk + E^v) / 2)``; the
   indices of q/k pairs and of v are still chosen separately). A q/k slot and a v slot cost
   the same MACs in both families (``a_b`` below), so tying them changes no MAC count.
4. **Reweight module.** A learnable scale ``r`` (init 1) on every channel, applied with the
   gate (``q_c ← r_c·m_c·q_c``, ``v_c ← r_c·m_c·v_c``), trained with its own learning rate,
   so the kept channels can take over from the removed ones. At export it is folded into the
   rows of W_q (and b_q) and W_v (and b_v) — exact, since attention is linear in each.
5. **Initialisation from attention differences.** On the calibration batch, per block, head
   and channel: q/k pair c, ``Δ_c = mean_images ‖A − A_(without c)‖_F`` where ``A`` is the
   head's attention probabilities (ViT: ``softmax(q kᵀ·scale)``, N×N; Linformer: the
   package's ``softmax(q (E k)ᵀ/√d)``, N×k) and ``A_(without c)`` the same with channel c of q
   and k zeroed (the softmax scale unchanged); v channel c, ``Δ_c = mean_images ‖A V −
   (A V)_(without c)‖_F = ‖A v_c‖`` (the head's attention output; Linformer: ``v`` = the
   sequence-projected ``F v``). The logits start at ``s = s0 + spread·ẑ`` with ``ẑ`` the
   standardised ``log Δ`` over all channels of that kind in the model (clipped to ±3): every
   gate starts open (σ(s0) = σ(5) ≈ 0.99) and the channels whose removal changes the attention
   least close first.

**Attention MACs** — per block: the q/k/v projections, the attention products and the output
projection, which is everything that depends on the per-head channel counts: ViT
``N·D·H·(2 d_qk + d_v) + H·N²·(d_qk + d_v) + N·H·d_v·D = H·(2ND + N²)·(d_qk + d_v)``;
Linformer ``3·N·D·H·d + 2·N·k·H·d (E K, F V) + 2·H·N·k·d (QKᵀ, AV) + N·H·d·D =
H·(2ND + 2Nk)·(2d)``. So with ``a_b = 2ND + N²`` (ViT) or ``2ND + 2Nk`` (Linformer) the MACs are
``Σ_b a_b · H_b · (n^qk_b + n^v_b)`` (:func:`attention_macs`); they are the terms of
``structured.config_macs`` that shrink, so ``count_macs(full) − count_macs(exported)`` equals
the change of attention MACs (tested). Biases, softmax and the scale are not counted, as in
``count_macs``.

The run: ``steps`` optimizer steps in all, the first ``search_frac`` of them searching (weights,
logits and reweights trained together), then the counts are projected onto the budget and
frozen and the remaining steps fine-tune weights and reweights under the fixed masks; then the
reweights are folded and the model is shrunk. The loop is ``core.train.train`` plus the
indicator: a callback switches the phase and refreshes the gates before each step, the budget
penalty is ``train``'s ``extra_loss``, and the logits and reweights are its
``extra_param_groups`` at constant rates (weights: AdamW with the warmup + cosine schedule).
Progress goes to ``core.train``-style callbacks (:class:`AMAPStepEvent` adds the MACs ratio),
and a ``cancel`` event stops the run before the next step (the model is still projected onto
the budget and exported, status ``"cancelled"``).
"""
from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from ..models.adapter import get_adapter
from ..train import (Callback, EpochEvent, StepEvent, TrainConfig, TrainResult, lr_at,
                     seed_everything, split_callbacks, train)
from .api import PruneResult
from .base import Pruner, check_batch, register_pruner
from .structured import (BlockPlan, PruningPlan, block_views, config_macs, plan_table,
                         record_attention_inputs, shrink)

# logit offset and spread of the initialisation (component 5): σ(5) ≈ 0.993, so every gate
# starts open and the count of every layer starts full
INIT_LOGIT = 5.0
INIT_SPREAD = 1.0


# ---------------------------------------------------------------------------- budget checks

def check_budget(budget: object) -> float:
    """``budget`` (fraction of attention MACs kept) as a float in (0, 1], else ValueError."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"budget must be a number in (0, 1] (the fraction of attention MACs "
                         f"kept; 0.7 = 30% fewer), got {budget!r}")
    b = float(budget)
    if not (math.isfinite(b) and 0.0 < b <= 1.0):
        raise ValueError(f"budget must be in (0, 1] (the fraction of attention MACs kept; "
                         f"0.7 = 30% fewer), got {budget!r}")
    return b


# ---------------------------------------------------------------------------- attention MACs

def _check_family(model: nn.Module) -> None:
    try:
        adapter = get_adapter(model)
    except TypeError as e:
        raise TypeError(f"amap: {e}") from None
    adapter.check_channel_gating(model)


def slot_costs(model: nn.Module) -> list[int]:
    """Per block ``a_b``: attention MACs of one channel (a q/k pair or a v channel) in one
    head — ``2ND + N²`` (ViT) or ``2ND + 2Nk`` (Linformer); see the module docstring."""
    return get_adapter(model).attention_slot_costs(model)


def attention_macs(model: nn.Module, counts: Sequence[tuple[int, int]] | None = None) -> int:
    """Attention MACs of one image: ``Σ_b a_b · H_b · (n^qk_b + n^v_b)``.

    ``counts``: per block the kept (q/k, v) channels per head; None = the model's own sizes
    (then this is the attention part of ``structured.config_macs(model.config)``)."""
    views = block_views(model)
    if counts is None:
        counts = [(v.qk_dim, v.v_dim) for v in views]
    return sum(a * v.num_heads * (nq + nv)
               for a, v, (nq, nv) in zip(slot_costs(model), views, counts))


# ---------------------------------------------------------------------------- calibration

def _one_minus_mean_abs_cos(cos: Tensor) -> Tensor:
    """(B, H, d, d) cosines → (H, d): ``1 − mean_{c'≠c} |cos|``, averaged over images."""
    d = cos.shape[-1]
    if d == 1:
        return torch.ones(cos.shape[1], 1, dtype=cos.dtype)
    s = cos.abs().mean(dim=0)
    off = s.sum(dim=-1) - s.diagonal(dim1=-2, dim2=-1)
    return (1.0 - off / (d - 1)).clamp(0.0, 1.0)


@dataclass(frozen=True, eq=False)
class Calibration:
    """Per block: attention differences ``diff_qk`` (H, d_qk), ``diff_v`` (H, d_v)
    (component 5) and similarity weights ``sim_qk``, ``sim_v`` in [0, 1] (component 2)."""

    diff_qk: list[Tensor]
    diff_v: list[Tensor]
    sim_qk: list[Tensor]
    sim_v: list[Tensor]


@torch.no_grad()
def calibrate(model: nn.Module, images: Tensor, batch_size: int = 16) -> Calibration:
    """Attention differences and similarity weights on a calibration batch (B, C, H, W).

    ``diff_qk[b][h, c] = mean_i ‖A_{b,h}(x_i) − A_{b,h}^(−c)(x_i)‖_F`` with q/k channel c
    zeroed; ``diff_v[b][h, c] = mean_i ‖A_{b,h} v_c‖`` (the head output's change when v
    channel c is zeroed). See the module docstring for the similarity weights."""
    _check_family(model)
    views = block_views(model)
    dq = [torch.zeros(v.num_heads, v.qk_dim, dtype=torch.float64) for v in views]
    dv = [torch.zeros(v.num_heads, v.v_dim, dtype=torch.float64) for v in views]
    sq = [torch.zeros_like(t) for t in dq]
    sv = [torch.zeros_like(t) for t in dv]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for chunk in images.split(batch_size):
            with record_attention_inputs(model) as xs:
                model(chunk.to(device))
            for i, (view, x) in enumerate(zip(views, xs)):
                q, k, v = view.qkv(x)
                scale = view.scale
                logits = (q * scale) @ k.transpose(-2, -1)           # (B, H, N, M)
                attn = logits.softmax(dim=-1)
                for c in range(q.shape[-1]):
                    without = logits - scale * q[..., c:c + 1] * k[..., c].unsqueeze(-2)
                    diff = (attn - without.softmax(dim=-1)).flatten(-2).norm(dim=-1)
                    dq[i][:, c] += diff.double().sum(dim=0).cpu()
                dv[i] += (attn @ v).norm(dim=-2).double().sum(dim=0).cpu()
                qn, kn, vn = (F.normalize(t.double() - t.double().mean(dim=-2, keepdim=True),
                                          dim=-2) for t in (q, k, v))
                cos_qk = (qn.transpose(-2, -1) @ qn) * (kn.transpose(-2, -1) @ kn)
                sq[i] += _one_minus_mean_abs_cos(cos_qk).cpu() * len(chunk)
                sv[i] += _one_minus_mean_abs_cos(vn.transpose(-2, -1) @ vn).cpu() * len(chunk)
    finally:
        model.train(was_training)
    n = len(images)
    return Calibration([(t / n).float() for t in dq], [(t / n).float() for t in dv],
                       [(t / n).float() for t in sq], [(t / n).float() for t in sv])


def initial_logits(diffs: Sequence[Tensor], offset: float = INIT_LOGIT,
                   spread: float = INIT_SPREAD) -> list[Tensor]:
    """``s0 + spread·clip(standardised log Δ, ±3)``, standardised over all the given blocks
    (one kind — q/k or v — at a time, so layers compete on the same scale)."""
    flat = torch.cat([d.flatten() for d in diffs]).double()
    eps = 1e-6 * float(flat.mean()) + 1e-30           # dead channels (Δ = 0) get the floor
    logs = [torch.log(d.double() + eps) for d in diffs]
    allv = torch.cat([t.flatten() for t in logs])
    mu, sd = allv.mean(), allv.std(unbiased=False)
    sd = sd if float(sd) > 0 else torch.ones_like(sd)
    return [(offset + spread * ((t - mu) / sd).clamp(-3, 3)).float() for t in logs]


# ---------------------------------------------------------------------------- the indicator

def _top_mask(score: Tensor, n: int) -> Tensor:
    """(H, d) → bool (H, d): per row the ``n`` highest (ties: lower index, stable)."""
    order = score.argsort(dim=-1, descending=True, stable=True)[:, :n]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)


class AttentionIndicator(nn.Module):
    """AMAP's pruning indicator of one model (components 1–4).

    Per block ``i``: ``logits_qk[i]`` (H, d_qk), ``logits_v[i]`` (H, d_v) (learned),
    ``reweight_qk[i]``, ``reweight_v[i]`` (learned scales, init 1), and fixed similarity
    weights (buffers ``log_sim_qk_i``, ``log_sim_v_i``, times γ). :meth:`multipliers` gives the
    per-channel factors the gated forward applies; :func:`gated` installs them.
    """

    def __init__(self, model: nn.Module, calibration: Calibration | None = None,
                 similarity: float = 1.0, init: str = "attention"):
        super().__init__()
        _check_family(model)
        if init not in ("attention", "uniform"):
            raise ValueError(f"init must be 'attention' or 'uniform', got {init!r}")
        if similarity < 0:
            raise ValueError(f"similarity (the exponent γ of the weights) must be >= 0, got "
                             f"{similarity}")
        views = block_views(model)
        self.tied = get_adapter(model).tied_qk_v
        self.sizes = [(v.num_heads, v.qk_dim, v.v_dim) for v in views]
        self.costs = slot_costs(model)
        self.full_macs = attention_macs(model)
        if calibration is None and (init == "attention" or similarity > 0):
            raise ValueError("the attention init and the similarity weights need a "
                             "calibration (core.pruning.amap.calibrate)")
        if init == "attention":
            s_qk = initial_logits(calibration.diff_qk)
            s_v = initial_logits(calibration.diff_v)
        else:
            s_qk = [torch.full((H, dq), INIT_LOGIT) for H, dq, _ in self.sizes]
            s_v = [torch.full((H, dv), INIT_LOGIT) for H, _, dv in self.sizes]
        self.logits_qk = nn.ParameterList(nn.Parameter(t.clone()) for t in s_qk)
        self.logits_v = nn.ParameterList(nn.Parameter(t.clone()) for t in s_v)
        self.reweight_qk = nn.ParameterList(nn.Parameter(torch.ones_like(t)) for t in s_qk)
        self.reweight_v = nn.ParameterList(nn.Parameter(torch.ones_like(t)) for t in s_v)
        for i, (H, dq, dv) in enumerate(self.sizes):
            lq = lv = None
            if similarity > 0:
                lq = similarity * calibration.sim_qk[i].clamp(min=1e-3).log()
                lv = similarity * calibration.sim_v[i].clamp(min=1e-3).log()
            self.register_buffer(f"log_sim_qk_{i}", lq if lq is not None else torch.zeros(H, dq))
            self.register_buffer(f"log_sim_v_{i}", lv if lv is not None else torch.zeros(H, dv))
        self.frozen: list[tuple[int, int]] | None = None   # counts fixed by freeze()
        self.current: list[tuple[Tensor, Tensor]] | None = None  # set by refresh()
        device = next(model.parameters()).device
        self.to(device)

    # -- gates and counts

    def gates(self) -> list[tuple[Tensor, Tensor]]:
        """Per block (m_qk (H, d_qk), m_v (H, d_v)) = σ(s + γ·log w), with autograd."""
        return [(torch.sigmoid(self.logits_qk[i] + getattr(self, f"log_sim_qk_{i}")),
                 torch.sigmoid(self.logits_v[i] + getattr(self, f"log_sim_v_{i}")))
                for i in range(len(self.sizes))]

    def expected_ratio(self, gates: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """E[attention MACs] / full attention MACs (differentiable), a 0-dim tensor."""
        gates = self.gates() if gates is None else gates
        total = sum(a * (mq.sum() + mv.sum()) for a, (mq, mv) in zip(self.costs, gates))
        return total / self.full_macs

    def counts(self, gates: list[tuple[Tensor, Tensor]] | None = None) -> list[tuple[int, int]]:
        """Per block the kept (q/k, v) channels per head: the frozen counts, else the
        head-averaged expected counts rounded (Linformer: one count for both)."""
        if self.frozen is not None:
            return list(self.frozen)
        gates = self.gates() if gates is None else gates
        out = []
        for (H, dq, dv), (mq, mv) in zip(self.sizes, gates):
            eq, ev = float(mq.detach().sum()) / H, float(mv.detach().sum()) / H
            if self.tied:
                n = min(max(round((eq + ev) / 2), 1), dq)
                out.append((n, n))
            else:
                out.append((min(max(round(eq), 1), dq), min(max(round(ev), 1), dv)))
        return out

    def ratio(self, counts: Sequence[tuple[int, int]] | None = None) -> float:
        """Attention MACs of ``counts`` (default: the current ones) / full attention MACs."""
        counts = self.counts() if counts is None else counts
        return sum(a * H * (nq + nv) for a, (H, _, _), (nq, nv)
                   in zip(self.costs, self.sizes, counts)) / self.full_macs

    def min_ratio(self) -> float:
        """The smallest reachable ratio: one q/k and one v channel per head everywhere."""
        return self.ratio([(1, 1)] * len(self.sizes))

    @torch.no_grad()
    def masks(self, counts: Sequence[tuple[int, int]] | None = None
              ) -> list[tuple[Tensor, Tensor]]:
        """Per block bool (keep_qk (H, d_qk), keep_v (H, d_v)): every head its top-n gates."""
        gates = self.gates()
        counts = self.counts(gates) if counts is None else counts
        return [(_top_mask(mq, nq), _top_mask(mv, nv))
                for (mq, mv), (nq, nv) in zip(gates, counts)]

    def refresh(self, mode: str = "hard") -> None:
        """Set :attr:`current`, the per-channel factors of the gated forward.

        ``"search"``: binarised gates with straight-through gradients times the reweights;
        ``"hard"``: binarised gates times the reweights (gradients to the reweights only);
        ``"off"``: everything kept, no reweighting (the original model)."""
        if mode == "off":
            self.current = [(torch.ones_like(q), torch.ones_like(v))
                            for q, v in zip(self.logits_qk, self.logits_v)]
            return
        if mode not in ("search", "hard"):
            raise ValueError(f"mode must be 'search', 'hard' or 'off', got {mode!r}")
        gates = self.gates()
        masks = self.masks(self.counts(gates))
        out = []
        for i, ((mq, mv), (kq, kv)) in enumerate(zip(gates, masks)):
            fq, fv = kq.to(mq.dtype), kv.to(mv.dtype)
            if mode == "search":
                fq, fv = fq + (mq - mq.detach()), fv + (mv - mv.detach())
            out.append((fq * self.reweight_qk[i], fv * self.reweight_v[i]))
        self.current = out

    # -- the budget

    @torch.no_grad()
    def fit_budget(self, budget: float) -> list[tuple[int, int]]:
        """The counts with attention MACs ≤ ``budget`` nearest the learned ones.

        Greedy from the current counts: while over budget, drop the layer slot (one channel
        in every head) whose gate value per MAC is lowest; then add back the best dropped slot
        while one still fits. A slot's value is the head-mean of the n-th highest gate
        (Linformer: q/k and v together)."""
        gates = [(mq.detach(), mv.detach()) for mq, mv in self.gates()]
        ranked = [(mq.sort(dim=-1, descending=True).values.mean(0),
                   mv.sort(dim=-1, descending=True).values.mean(0)) for mq, mv in gates]
        counts = [list(c) for c in self.counts(gates)]
        limit = budget * self.full_macs * (1 + 1e-12)

        def macs() -> float:
            return self.ratio([tuple(c) for c in counts]) * self.full_macs

        # a slot group: (block, kinds that move together); Linformer moves q/k and v at once
        groups = ([(i, (0, 1)) for i in range(len(self.sizes))] if self.tied else
                  [(i, (k,)) for i in range(len(self.sizes)) for k in (0, 1)])

        def value(i: int, kinds: tuple[int, ...], pos: int) -> float:
            v = sum(float(ranked[i][k][pos]) for k in kinds)
            return v / (self.costs[i] * self.sizes[i][0] * len(kinds))

        full = [(dq, dv) for _, dq, dv in self.sizes]
        while macs() > limit:
            cands = [(value(i, ks, counts[i][ks[0]] - 1), i, ks) for i, ks in groups
                     if counts[i][ks[0]] > 1]
            if not cands:
                raise ValueError(f"budget {budget} is below the smallest reachable ratio "
                                 f"{self.min_ratio():.4f} (one channel per head)")
            _, i, ks = min(cands)
            for k in ks:
                counts[i][k] -= 1
        while True:
            cands = []
            for i, ks in groups:
                if counts[i][ks[0]] < full[i][ks[0]]:
                    extra = self.costs[i] * self.sizes[i][0] * len(ks)
                    if macs() + extra <= limit:
                        cands.append((value(i, ks, counts[i][ks[0]]), i, ks))
            if not cands:
                break
            _, i, ks = max(cands)
            for k in ks:
                counts[i][k] += 1
        return [tuple(c) for c in counts]

    def freeze(self, budget: float) -> list[tuple[int, int]]:
        """Fix the counts at :meth:`fit_budget` (the search is over); returns them."""
        self.frozen = None
        self.frozen = self.fit_budget(budget)
        for p in (*self.logits_qk, *self.logits_v):
            p.requires_grad_(False)
        return list(self.frozen)

    def scores(self) -> list[tuple[Tensor, Tensor]]:
        """Per block the gates (H, d_qk), (H, d_v), detached, on CPU (for reports)."""
        return [(mq.detach().cpu(), mv.detach().cpu()) for mq, mv in self.gates()]


@contextmanager
def gated(model: nn.Module, indicator: AttentionIndicator) -> Iterator[AttentionIndicator]:
    """During the context the model's attention channels are multiplied by
    ``indicator.current`` (call :meth:`AttentionIndicator.refresh` first): forward hooks on
    ``attn.qkv`` (ViT: the q and v parts) or ``to_q`` / ``to_v`` (Linformer). Gating q gates
    the pair's term ``q_c k_cᵀ``; the hooks are removed on exit, errors included."""
    adapter = get_adapter(model)
    handles = []

    def factor(i: int, kind: int, out: Tensor) -> Tensor:
        if indicator.current is None:
            raise RuntimeError("call indicator.refresh() before a gated forward")
        return indicator.current[i][kind].flatten().to(out.dtype)

    try:
        for i, view in enumerate(adapter.blocks(model)):
            handles += adapter.gate_channels(view, lambda kind, out, i=i: factor(i, kind, out))
        yield indicator
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------------------- export

def amap_plan(model: nn.Module, masks: Sequence[tuple[Tensor, Tensor]]) -> PruningPlan:
    """Kept channels → a :class:`~core.pruning.structured.PruningPlan` that keeps every head,
    FFN neuron and residual channel (AMAP prunes attention channels only)."""
    views = block_views(model)
    blocks = []
    for v, (kq, kv) in zip(views, masks):
        def rows(keep: Tensor) -> Tensor:
            n = int(keep[0].sum())
            if not bool((keep.sum(dim=1) == n).all()):
                raise ValueError("every head must keep the same number of channels")
            return keep.nonzero()[:, 1].reshape(keep.shape[0], n).cpu()
        blocks.append(BlockPlan(torch.arange(v.num_heads), rows(kq), rows(kv),
                                torch.arange(v.mlp_hidden)))
    return PruningPlan(tuple(blocks), torch.arange(get_adapter(model).residual_width(model)))


@torch.no_grad()
def fold_reweights(model: nn.Module, indicator: AttentionIndicator) -> nn.Module:
    """A copy of ``model`` with the reweights folded into the q and v rows (weights and
    biases): the ungated copy computes what the gated model computes with all gates 1."""
    out = copy.deepcopy(model)
    adapter = get_adapter(out)
    for i, view in enumerate(adapter.blocks(out)):
        adapter.scale_qv_rows(view, indicator.reweight_qk[i].detach().flatten(),
                              indicator.reweight_v[i].detach().flatten())
    return out


def export(model: nn.Module, indicator: AttentionIndicator,
           counts: Sequence[tuple[int, int]] | None = None) -> tuple[nn.Module, PruningPlan]:
    """The physically smaller model the gated model (binarised, reweighted) computes:
    reweights folded, then ``structured.shrink`` (which folds the softmax-scale change into
    W_q). ``counts`` default: the frozen / current ones. ``model`` is not touched."""
    plan = amap_plan(model, indicator.masks(counts))
    return shrink(fold_reweights(model, indicator), plan), plan


# ---------------------------------------------------------------------------- the run

@dataclass(frozen=True)
class AMAPStepEvent(StepEvent):
    """A :class:`core.train.StepEvent` plus the indicator's state after the step:
    ``phase`` (``"search"`` or ``"finetune"``), ``macs_ratio`` (attention MACs of the current
    counts / full), ``expected_ratio`` (of the sigmoid gates) and the ``budget``."""

    phase: str = "search"
    macs_ratio: float = 1.0
    expected_ratio: float = 1.0
    budget: float = 1.0


def _calibration_images(train_set: Dataset, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(train_set), generator=g)[:n].tolist()
    return torch.stack([train_set[i][0] for i in idx])


class _AMAPRun(Callback):
    """AMAP's part of the training loop (:func:`core.train.train` runs it): before each step,
    the phase switch (freeze the counts at the budget after the search) and the indicator's
    gates for the next forward; the budget penalty as the extra loss; per step the
    :class:`AMAPStepEvent` and history row, per phase one :class:`EpochEvent`. The user's
    callbacks are called from here, so they see AMAP's events and phases."""

    def __init__(self, ind: "AttentionIndicator", budget: float, steps: int, search_frac: float,
                 penalty: float, lr: float, warmup_frac: float, start: float, log_every: int,
                 callbacks: Sequence[Callback | Callable]) -> None:
        self.ind, self.budget, self.steps, self.penalty_weight = ind, budget, steps, penalty
        self.lr, self.warmup_frac, self.start, self.log_every = lr, warmup_frac, start, log_every
        self.search_steps = max(1, round(search_frac * steps))
        self.user_step, self.user_epoch, self.user_end = split_callbacks(callbacks)
        self.phase = "search"
        self.history: list[dict] = []
        self.epochs: list[dict] = []
        self.step = 0
        self.expected = torch.zeros(())
        self.last_penalty = 0.0
        self._reset()

    def _reset(self) -> None:
        self.loss_sum, self.correct_sum, self.seen = 0.0, 0, 0

    def _end_phase(self) -> None:
        row = {"epoch": len(self.epochs) + 1, "phase": self.phase,
               "train_loss": self.loss_sum / max(self.seen, 1),
               "train_acc": self.correct_sum / max(self.seen, 1),
               "val_loss": math.nan, "val_acc": math.nan, "val_f1": math.nan,
               "lr": lr_at(max(self.step - 1, 0), self.steps, self.lr, self.warmup_frac),
               "macs_ratio": self.ind.ratio(), "seconds": time.perf_counter() - self.start}
        self.epochs.append(row)
        for fn in self.user_epoch:
            fn(EpochEvent(row["epoch"], 2, self.step, self.steps, row))
        self._reset()

    def on_step_begin(self, step: int) -> None:
        if self.phase == "search" and step - 1 >= self.search_steps:
            self._end_phase()
            self.ind.freeze(self.budget)
            self.phase = "finetune"
        self.ind.refresh("search" if self.phase == "search" else "hard")

    def penalty(self) -> Tensor:
        """λ (E[MACs] / (budget · MACs) − 1)² during the search, 0 after."""
        self.expected = self.ind.expected_ratio()
        if self.phase != "search":
            self.last_penalty = 0.0
            return self.expected.new_zeros(())
        term = self.penalty_weight * (self.expected / self.budget - 1.0) ** 2
        self.last_penalty = float(term.detach())
        return term

    def on_step(self, event: StepEvent) -> None:
        self.step = event.step
        ce = event.loss
        if not math.isfinite(ce):  # train() stops at its next check; record nothing further
            return
        n = event._count
        self.loss_sum += ce * n
        self.correct_sum += int(event._correct)
        self.seen += n
        ratio, expected = self.ind.ratio(), float(self.expected.detach())
        row = {"step": event.step, "phase": self.phase, "loss": ce,
               "penalty": self.last_penalty, "macs_ratio": ratio, "expected_ratio": expected}
        self.history.append(row)
        if self.log_every and (event.step % self.log_every == 0 or event.step == self.steps):
            print(f"  amap step {event.step:4d} [{self.phase}] loss {ce:.4f} "
                  f"macs {ratio:.4f} expected {expected:.4f}", flush=True)
        if self.user_step:
            ev = AMAPStepEvent(event.step, self.steps, event.epoch, event._loss, event._correct,
                               n, torch.tensor(self.loss_sum), torch.tensor(self.correct_sum),
                               self.seen, self.phase, ratio, expected, self.budget)
            for fn in self.user_step:
                fn(ev)

    def on_end(self, result: TrainResult) -> None:
        if result.status == "failed" or result.status == "cancelled" and result.reason and \
                result.reason.startswith("interrupted"):
            self.finish(result)  # an error: train() re-raises after this

    def finish(self, result: TrainResult) -> None:
        """Close the last phase and tell the user's ``on_end`` (once)."""
        if getattr(self, "_finished", False):
            return
        self._finished = True
        if self.seen and result.status != "failed":
            self._end_phase()
        out = TrainResult(result.status, self.epochs, result.reason, result.steps,
                          time.perf_counter() - self.start)
        for fn in self.user_end:
            fn(out)


def amap_prune(model: nn.Module, budget: float, train_set: Dataset, steps: int = 100,
               images: Tensor | None = None, *, search_frac: float = 0.6,
               batch_size: int = 32, lr: float = 5e-4, weight_decay: float = 0.05,
               warmup_frac: float = 0.1, indicator_lr: float = 0.1,
               reweight_lr: float = 0.01, penalty: float = 5.0, similarity: float = 1.0,
               init: str = "attention", reweight: bool = True, calibration_size: int = 32,
               seed: int = 0, callbacks: Sequence[Callback | Callable] = (),
               cancel: threading.Event | None = None, pruner: Pruner | None = None,
               log_every: int = 0) -> PruneResult:
    """AMAP on a copy of ``model``: search, freeze at ``budget``, fine-tune, export.

    Args:
        budget: fraction of attention MACs kept, in (0, 1] (0.7 = 30% fewer).
        train_set: ``(image (C, H, W), label)`` pairs the run trains on.
        steps: optimizer steps in all; the first ``round(search_frac·steps)`` learn the
            indicator, the rest fine-tune under the frozen masks.
        images: calibration batch (B, C, H, W) in [0, 1] for the init and the similarity
            weights; None draws ``calibration_size`` images from ``train_set``.
        lr, weight_decay, warmup_frac: the weights' AdamW and warmup + cosine schedule
            (``core.train.lr_at``); ``indicator_lr``: Adam on the logits (constant);
            ``reweight_lr``: Adam on the reweights; ``penalty``: λ of the budget term.
        similarity: γ, the exponent of the similarity weights (0 = off); ``init``:
            ``"attention"`` (attention differences) or ``"uniform"``; ``reweight``: learn
            the reweights (False keeps them at 1).
        callbacks, cancel: as in ``core.train.train`` (:class:`AMAPStepEvent` per step,
            one :class:`EpochEvent` per phase, ``on_end`` with a ``TrainResult``).

    Raises:
        ValueError for a budget outside (0, 1] or below one channel per head, bad steps or
        search_frac, an empty train_set; FloatingPointError for a non-finite training loss
        (callbacks see ``on_end`` with status ``"failed"`` first).

    Returns:
        :class:`PruneResult`: the shrunk model (eval mode), ``masks=None``, ``scores`` the
        final gates per block (``blocks.i.attn.qk`` / ``.v``), the size table, and ``extra``
        with ``plan``, ``counts``, ``history`` (one dict per step), ``status``/``reason``,
        ``attention_macs_before``/``_after``, ``macs_before``/``_after``, ``calibration``.
    """
    budget = check_budget(budget)
    _check_family(model)
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not 0.0 < search_frac <= 1.0:
        raise ValueError(f"search_frac must be in (0, 1], got {search_frac!r}")
    if train_set is None or len(train_set) == 0:
        raise ValueError("amap trains: give a non-empty train_set (or images and labels)")
    start = time.perf_counter()
    seed_everything(seed)
    device = next(model.parameters()).device
    net = copy.deepcopy(model).to(device)
    if images is None:
        images = _calibration_images(train_set, min(calibration_size, len(train_set)), seed)
    images, _ = check_batch(net, images, None, needs_labels=False)
    calib = calibrate(net, images)
    ind = AttentionIndicator(net, calib, similarity, init)
    if budget < ind.min_ratio():
        raise ValueError(f"budget {budget} is below the smallest reachable attention-MACs "
                         f"ratio {ind.min_ratio():.4f} (one q/k and one v channel per head)")

    run = _AMAPRun(ind, budget, steps, search_frac, penalty, lr, warmup_frac, start,
                   log_every, callbacks)
    reweights = list(ind.reweight_qk) + list(ind.reweight_v)
    for p in reweights:
        p.requires_grad_(reweight)
    # β1 = 0.5 for the logits: less momentum, less overshoot of the budget (the penalty flips
    # sign there); with weight decay 0, AdamW's update is Adam's
    groups = [{"params": list(ind.logits_qk) + list(ind.logits_v), "lr": indicator_lr,
               "betas": (0.5, 0.999)}]
    if reweight:
        groups.append({"params": reweights, "lr": reweight_lr})
    per_epoch = (len(train_set) // batch_size if len(train_set) > batch_size else 1)
    config = TrainConfig(epochs=math.ceil(steps / per_epoch), max_steps=steps,
                         batch_size=min(batch_size, len(train_set)), lr=lr,
                         weight_decay=weight_decay, warmup_frac=warmup_frac, seed=seed,
                         precision="fp32", drop_last=True, device=str(device))
    with gated(net, ind):
        result = train(net, train_set, None, config, [run], cancel, extra_loss=run.penalty,
                       extra_param_groups=groups)
    if result.status == "failed":
        raise FloatingPointError(f"amap: {result.reason}")
    try:
        if ind.frozen is None:  # stopped during the search, or search_frac = 1
            ind.freeze(budget)
        net.eval()
        small, plan = export(net, ind)
        small.eval()
    except BaseException as exc:
        run.finish(TrainResult("failed", [], f"{type(exc).__name__}: {exc}", result.steps, 0.0))
        raise
    status, reason = result.status, result.reason
    run.finish(result)
    history, epochs_done, step = run.history, run.epochs, result.steps
    scores = {}
    for i, (mq, mv) in enumerate(ind.scores()):
        scores[f"blocks.{i}.attn.qk"], scores[f"blocks.{i}.attn.v"] = mq, mv
    before, after = attention_macs(model), attention_macs(small)
    return PruneResult(
        small, None, scores, plan_table(model.config, small.config), 1.0 - budget,
        pruner if pruner is not None else AMAPPruner(budget=budget, steps=steps), "layer",
        extra={"plan": plan, "counts": ind.counts(), "history": history, "status": status,
               "reason": reason, "steps": step, "budget": budget,
               "attention_macs_before": before, "attention_macs_after": after,
               "attention_ratio": after / before, "macs_before": config_macs(model.config),
               "macs_after": config_macs(small.config), "calibration": calib,
               "indicator": ind, "epochs": epochs_done})


# ---------------------------------------------------------------------------- the pruner

_RUNTIME = ("train_set", "callbacks", "cancel")


@register_pruner("amap")
@dataclass(frozen=True)
class AMAPPruner(Pruner):
    """AMAP as a registered structured pruner: ``prune(model, "amap", None, budget=0.7,
    train_set=..., steps=..., images=...)``, or ``prune(model, "amap", 0.3, ...)`` with the
    sparsity read as the fraction of attention MACs removed (budget = 1 − sparsity).

    Training-based (``needs_training``): ``train_set`` is required, except that a call with
    calibration ``images`` and ``labels`` and no ``train_set`` trains on that batch.
    ``callbacks`` / ``cancel`` as in ``core.train.train``. The prunable-set fields of
    :class:`Pruner` do not apply. Fields after ``seed`` are runtime objects, left out of
    :attr:`options` and of equality.
    """

    kind: ClassVar[str] = "structured"
    needs_data: ClassVar[bool] = True
    needs_training: ClassVar[bool] = True
    seeded: ClassVar[bool] = True
    formula: ClassVar[str] = (
        r"m_{h,c} = \sigma\!\left(s_{h,c} + \gamma \log w_{h,c}\right),\quad "
        r"\mathcal{L} = \mathrm{CE} + \lambda\left(\frac{\sum_b a_b \sum_{h,c} m_{b,h,c}}"
        r"{\beta\,\mathrm{MACs}_{\mathrm{attn}}} - 1\right)^2,\quad "
        r"s^{(0)}_{h,c} \propto \log \lVert A - A_{\setminus c} \rVert_F")
    explanation: ClassVar[str] = (
        "AMAP learns during a short training run which query/key and value channels of "
        "every attention head to remove so that the attention's multiply-accumulates end at "
        "the budget. Each channel has a learnable gate, started from how much removing that "
        "channel alone changes the attention maps, and weighed down when the channel "
        "duplicates others in its head. A penalty pulls the expected MACs to the budget; "
        "every head of a layer keeps the same number of channels, and learned scales on the "
        "kept channels make up for the removed ones before the model is physically shrunk.")

    budget: float | None = None
    steps: int = 100
    search_frac: float = 0.6
    batch_size: int = 32
    lr: float = 5e-4
    indicator_lr: float = 0.1
    reweight_lr: float = 0.01
    penalty: float = 5.0
    similarity: float = 1.0
    init: str = "attention"
    reweight: bool = True
    seed: int = 0
    train_set: Any = field(default=None, compare=False, repr=False)
    callbacks: tuple = field(default=(), compare=False, repr=False)
    cancel: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget is not None:
            check_budget(self.budget)
        object.__setattr__(self, "callbacks", tuple(self.callbacks or ()))

    @property
    def options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _RUNTIME}

    def resolve_budget(self, sparsity: float | None) -> float:
        """The budget from ``budget`` and/or ``sparsity`` (= 1 − budget); ValueError if
        neither, or if they disagree."""
        given = sparsity not in (None, 0, 0.0)
        if self.budget is None and not given:
            raise ValueError("amap needs a budget=... in (0, 1] (fraction of attention MACs "
                             "kept) or a sparsity (fraction removed)")
        if self.budget is None:
            if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
                    or not 0.0 <= float(sparsity) < 1.0:
                raise ValueError(f"sparsity must be in [0, 1) (the fraction of attention MACs "
                                 f"removed), got {sparsity!r}")
            return check_budget(1.0 - float(sparsity))
        budget = check_budget(self.budget)
        if given and abs((1.0 - float(sparsity)) - budget) > 1e-9:
            raise ValueError(f"sparsity {sparsity} and budget {budget} disagree (budget = "
                             "1 − sparsity); give one of them")
        return budget

    def score(self, model: nn.Module, images: Tensor | None = None,
              labels: Tensor | None = None) -> dict[str, Tensor]:
        """The initial indicator's inputs without training: attention differences
        ``blocks.i.attn.qk`` (H, d_qk) and ``blocks.i.attn.v`` (H, d_v) (higher = keep)."""
        images, _ = check_batch(model, images, None, needs_labels=False)
        calib = calibrate(model, images)
        out = {}
        for i, (q, v) in enumerate(zip(calib.diff_qk, calib.diff_v)):
            out[f"blocks.{i}.attn.qk"], out[f"blocks.{i}.attn.v"] = q, v
        return out

    def prune_model(self, model: nn.Module, sparsity: float | None = None,
                    images: Tensor | None = None, labels: Tensor | None = None,
                    scope: str = "layer") -> PruneResult:
        budget = self.resolve_budget(sparsity)
        train_set = self.train_set
        if train_set is None:
            if images is None or labels is None:
                raise ValueError("amap is trained: pass train_set=... (or calibration images "
                                 "and labels to train on)")
            images, labels = check_batch(model, images, labels)
            train_set = TensorDataset(images.cpu(), labels.cpu())
        return amap_prune(
            model, budget, train_set, self.steps, images, search_frac=self.search_frac,
            batch_size=self.batch_size, lr=self.lr, indicator_lr=self.indicator_lr,
            reweight_lr=self.reweight_lr, penalty=self.penalty, similarity=self.similarity,
            init=self.init, reweight=self.reweight, seed=self.seed, callbacks=self.callbacks,
            cancel=self.cancel, pruner=self)
