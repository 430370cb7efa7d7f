"""SNP criteria (Shim, Yun, Choi: "SNP: Structured Neuron-level Pruning to Preserve Attention
Scores", seed 001) and the baselines the paper compares on the same structures.

Every criterion is one small registered class (Torch-Pruning's ``Importance``): options are its fields,
``__call__(model, images) -> StructuredScores`` (``core.pruning.structured``), higher = keep.
:func:`structured_prune` then selects (``structured.select``) and shrinks (``structured.shrink``).

SNP, from the official method figure (``ALGORITHMS.md``):

- **q/k pairs** — head h, LayerNorm-ed calibration input X: ``Q = X W_Q^h``, ``K = X W_K^h``
  (N × d), ``QKᵀ = Σ_i q_i k_iᵀ``, SVD ``QKᵀ = Σ_j σ_j u_j v_jᵀ``, and
  ``ω_i = Σ_{j≤γ} |cos_F(σ_j u_j v_jᵀ, q_i k_iᵀ)|
  = Σ_{j≤γ} |(u_j·q_i)(v_j·k_i)| / (‖q_i‖‖k_i‖)``
  (:func:`qk_pair_scores`). Aggregation over images: the mean of the per-image scores (each
  image's ω is scale-free, in [0, γ], so every image weighs the same). γ (``rank``) is not
  given by the paper; our default is :data:`DEFAULT_RANK` = 4 (see the note there).
  Singular directions with σ_j = 0 have no defined cosine and count 0. Q and K include the
  qkv bias (they are what the attention multiplies). For Linformer the keys are the
  sequence-projected ``E K`` (k × d), since its scores are ``Q (E K)ᵀ``.
- **v channels** — data-free, inter-head redundancy:
  ``ω_{h,i} = Σ_{j=1..H} Σ_{l=1..d_v} (1 − |cos(W_V[h,i], W_V[j,l])|)`` over the block's value
  weight rows (biases not included). As in ``ALGORITHMS.md`` the double sum runs over all
  heads, the neuron's own head and the neuron itself included (the latter contributes 0).
  A zero row has cosine 0 with everything by convention.
- **FFN hidden neurons** — the same redundancy score over the rows of fc1 (one "head").
- **Residual channels** (graph-aware, one index set for the whole stream) — per linked layer
  (patch embedding, every attention out-projection and fc2 as writers; every q/k/v projection,
  fc1 and the head as readers, their columns scaled by the preceding LayerNorm's gain) a
  score per channel, normalised by its sum, averaged over the layers. The paper does not
  document the per-layer score; its figure routes the patch embedding to the redundancy
  criterion, so SNP uses the redundancy score of each layer's channel vectors
  (``residual_score="redundancy"``); ``"l2"`` (what an earlier official script used) is an
  option.
- **Heads** ("SNP + Head") — not public; we score a head by the mean over calibration images
  and tokens of the L2 norm of its contribution to the block's output,
  ``‖softmax(q_h k_hᵀ·scale) v_h W_out[:, h]ᵀ‖`` — exactly what removing it takes away.

Baselines, on exactly the same structures: ``l2-norm`` (row L2 norm; a q/k pair scores
``‖W_Q[h,i]‖ + ‖W_K[h,i]‖``, "combined by filter index" as the paper's Fig. 3 caption says),
``gm`` (FPGM, He et al. 2019: the sum of Euclidean distances of a neuron's weight row to the
other rows of its layer; near the geometric median = redundant = pruned first; q/k pairs sum
the q and k scores), ``random`` (seeded uniform scores) and ``reverse`` (SNP's scores negated,
i.e. SNP's order inverted). Heads: the L2 norm / FPGM distance of the head's whole weight set
(its q, k, v rows and out-projection columns). ``taylor`` and ``activation`` live in
:mod:`core.pruning.baselines`; ``snp-act`` (:class:`SNPActPruner`) is PruneLens's variant of
SNP whose value / FFN redundancy is weighted by the neuron's output size.

Every structured pruner takes ``round_to`` (kept widths multiples of it) and ``ranking``
(``"layer"`` or ``"global"``) besides ``ratios`` / ``heads``; see :class:`StructuredPruner`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.adapter import get_adapter
from .api import PruneResult
from .base import Pruner, check_batch, get_pruner, list_pruners, register_pruner
from .ratios import StructuredRatios, resolve_ratios
from .structured import (RANKINGS, BlockView, StructuredScores, block_views, config_macs,
                         plan_table, record_attention_inputs, residual_links, select, shrink)

# γ of the q/k criterion: how many leading singular directions of QKᵀ a pair is compared with
# (None = all, up to d). The paper gives no value. On the trained vit-tiny (shapes, d = 16),
# q/k pruned 10…90% without fine-tuning (benchmarks/bench_snp_attention.py), mean accuracy /
# last-block CLS cosine: γ=1 0.674/0.959, 2 0.744/0.963, 4 0.735/0.960, 8 0.719/0.959,
# all 0.712/0.958 — a truncated SVD (as the figure's Ũ S̃ Ṽᵀ suggests) helps a little, γ=1
# hurts; 4 is kept as a middle ground that also leaves room for DeiT's d = 64.
DEFAULT_RANK: int | None = 4


# ---------------------------------------------------------------------------- formulas

def qk_pair_scores(q: Tensor, k: Tensor, rank: int | None = DEFAULT_RANK) -> Tensor:
    """SNP importance of each q/k channel pair of one head (batched over leading dims).

    q: (..., N, d), k: (..., M, d) — column i is the N-vector q_i (M-vector k_i). Returns
    (..., d): ``ω_i = Σ_{j≤γ} |(u_j·q_i)(v_j·k_i)| / (‖q_i‖‖k_i‖)``, the sum of absolute
    Frobenius cosines between ``q_i k_iᵀ`` and the γ = ``rank`` leading rank-1 terms
    ``σ_j u_j v_jᵀ`` of the SVD of ``QKᵀ`` (None = all). Computed without any N×N matrix:
    with ``Q = Q_q R_q``, ``K = Q_k R_k`` (QR), ``QKᵀ = Q_q (R_q R_kᵀ) Q_kᵀ``, so the SVD
    ``R_q R_kᵀ = Ũ Σ Ṽᵀ`` gives ``u_j·q_i = (Ũᵀ R_q)_{ji}`` and ``v_j·k_i = (Ṽᵀ R_k)_{ji}``.
    Float64 inside; a pair with a zero column scores 0.
    """
    if q.shape[-1] != k.shape[-1] or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must be (..., N, d) and "
                         "(..., M, d) with the same d")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be a positive int or None, got {rank}")
    q64, k64 = q.detach().double(), k.detach().double()
    _, r_q = torch.linalg.qr(q64)                   # (..., min(N, d), d)
    _, r_k = torch.linalg.qr(k64)
    u, s, vh = torch.linalg.svd(r_q @ r_k.mT)       # (.., a, a), (.., min(a, b)), (.., b, b)
    g = s.shape[-1] if rank is None else min(rank, s.shape[-1])
    uq = (u.mT @ r_q)[..., :g, :]                    # u_j · q_i
    vk = (vh @ r_k)[..., :g, :]                      # v_j · k_i
    live = s[..., :g] > s[..., :1] * (max(q.shape[-2], k.shape[-2]) * 1e-12)
    num = ((uq * vk).abs() * live[..., None]).sum(dim=-2)
    den = q64.norm(dim=-2) * k64.norm(dim=-2)
    out = torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))
    return out.to(q.dtype)


def value_redundancy_scores(w_v: Tensor, num_heads: int) -> Tensor:
    """SNP inter-head redundancy of value neurons; w_v: (H·d_v, C) → (H·d_v,).

    ``ω_{h,i} = Σ_{j=1..H} Σ_{l=1..d_v} (1 − |cos(W_V[h,i], W_V[j,l])|)``: all heads, the
    neuron's own row included (contributes 0). Low = redundant = pruned first. With
    ``num_heads=1`` it is the FFN (fc1 rows) score.
    """
    if w_v.dim() != 2 or w_v.shape[0] % num_heads:
        raise ValueError(f"w_v must be (H·d_v, C) with H = {num_heads} dividing its rows, got "
                         f"{tuple(w_v.shape)}")
    w = F.normalize(w_v.detach().double(), dim=1)
    return (1.0 - (w @ w.T).abs()).sum(dim=1).to(w_v.dtype)


def l2_scores(w: Tensor) -> Tensor:
    """Row L2 norms, (n, fan) → (n,)."""
    return w.detach().norm(dim=1)


def gm_scores(w: Tensor) -> Tensor:
    """FPGM (He et al. 2019): each row's summed Euclidean distance to all rows, (n, fan) →
    (n,). Rows near the geometric median of the layer score low (replaceable, pruned first)."""
    w = w.detach().double()
    return torch.cdist(w, w).sum(dim=1).to(torch.get_default_dtype())


def residual_scores(model: nn.Module, per_layer: Callable[[Tensor], Tensor]) -> Tensor:
    """Graph-aware residual scores (D,): ``per_layer`` on each linked layer's (D, fan) channel
    vectors (:func:`structured.residual_links`), each normalised by its sum, then averaged."""
    total = None
    links = residual_links(model)
    for _, vectors in links:
        s = per_layer(vectors).double()
        s = s / s.sum().clamp(min=1e-300)
        total = s if total is None else total + s
    return (total / len(links)).float()


def _head_weights(b: BlockView) -> Tensor:
    """(H, ·): each head's q, k, v rows and out-projection columns, flattened."""
    H = b.num_heads
    out = b.out_weight.reshape(-1, H, b.v_dim).transpose(0, 1)   # (H, C, d_v)
    return torch.cat([b.q_weight.reshape(H, -1), b.k_weight.reshape(H, -1),
                      b.v_weight.reshape(H, -1), out.reshape(H, -1)], dim=1)


# ---------------------------------------------------------------------------- calibration

@dataclass(frozen=True, eq=False)
class CalibrationStats:
    """Per-block means over the calibration images (float32, CPU), one list entry per block.

    qk: SNP's ω (H, d_qk) (None when not asked for); qk_act: ``(mean_t |q_{t,i}|)·(mean_s
    |k_{s,i}|)`` (H, d_qk), the mean |entry| of pair i's term ``q_i k_iᵀ`` of the attention
    logits; v_act: mean |v| (H, d_v) over the values the probabilities weigh; hidden_act: mean
    |FFN hidden| after the activation (hidden,), the input of fc2; heads: each head's output
    norm (H,) (:meth:`BlockView.head_output_norms`); stream: mean |x| (D,) of the residual
    stream at every pre-norm input (2 per block).
    """

    qk: list[Tensor] | None
    qk_act: list[Tensor]
    v_act: list[Tensor]
    hidden_act: list[Tensor]
    heads: list[Tensor]
    stream: list[Tensor]


@contextmanager
def record_inputs(modules: list[nn.Module]) -> Iterator[list[list[Tensor]]]:
    """During the context, each forward appends the first input of ``modules[j]`` to
    ``records[j]``. Hooks are removed on exit, errors included."""
    records: list[list[Tensor]] = [[] for _ in modules]
    handles = [m.register_forward_pre_hook(lambda _m, args, j=j: records[j].append(args[0]))
               for j, m in enumerate(modules)]
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def calibrate(model: nn.Module, images: Tensor | None, batch_size: int = 16,
              rank: int | None | bool = False, who: str = "this criterion") -> CalibrationStats:
    """One pass over the calibration ``images`` (B, C, H, W) in chunks of ``batch_size``,
    eval mode (restored after), every hook removed. ``rank=False`` skips SNP's ω (its SVDs);
    otherwise γ for :func:`qk_pair_scores` (None = all directions). Per-image quantities are
    averaged over images, so every image weighs the same."""
    if images is None or len(images) == 0:
        raise ValueError(f"{who} needs a calibration batch (images=...): its scores come from "
                         "activations on real inputs")
    views = block_views(model)
    qk = [torch.zeros(b.num_heads, b.qk_dim, dtype=torch.float64) for b in views]
    qk_act = [torch.zeros(b.num_heads, b.qk_dim, dtype=torch.float64) for b in views]
    v_act = [torch.zeros(b.num_heads, b.v_dim, dtype=torch.float64) for b in views]
    hid = [torch.zeros(b.mlp_hidden, dtype=torch.float64) for b in views]
    heads = [torch.zeros(b.num_heads, dtype=torch.float64) for b in views]
    taps = [n for b in views for n in (b.norm1, b.norm2)]
    stream: list[Tensor] = [0.0] * len(taps)  # type: ignore[list-item]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for chunk in images.split(batch_size):
            with record_attention_inputs(model) as xs, record_inputs(
                    [b.fc2 for b in views]) as hs, record_inputs(taps) as rs:
                model(chunk.to(device))
            for i, (b, x) in enumerate(zip(views, xs)):
                q, k, v = b.qkv(x)
                if rank is not False:
                    qk[i] += qk_pair_scores(q, k, rank).double().sum(dim=0).cpu()
                qk_act[i] += (q.abs().mean(dim=2) * k.abs().mean(dim=2)).double().sum(0).cpu()
                v_act[i] += v.abs().mean(dim=2).double().sum(dim=0).cpu()
                hid[i] += hs[i][0].abs().flatten(0, -2).double().mean(dim=0).cpu() * len(x)
                heads[i] += b.head_output_norms(x).double().sum(dim=0).cpu()
            for j, r in enumerate(rs):
                x = r[0].abs().flatten(0, -2).double().mean(dim=0).cpu()
                stream[j] = stream[j] + x * len(r[0])
    finally:
        model.train(was_training)
    n = len(images)

    def mean(ts: list[Tensor]) -> list[Tensor]:
        return [(t / n).float() for t in ts]
    return CalibrationStats(mean(qk) if rank is not False else None, mean(qk_act),
                            mean(v_act), mean(hid), mean(heads), mean(stream))


# ---------------------------------------------------------------------------- base class

def scores_dict(scores: StructuredScores) -> dict[str, Tensor]:
    """Flat ``{name: scores}`` view for reports: ``blocks.i.attn.qk`` (H, d_qk),
    ``blocks.i.attn.v`` (H, d_v), ``blocks.i.attn.heads`` (H,), ``blocks.i.mlp`` (hidden,),
    ``residual`` (D,)."""
    out = {}
    for i in range(len(scores.qk)):
        out |= {f"blocks.{i}.attn.qk": scores.qk[i], f"blocks.{i}.attn.v": scores.v[i],
                f"blocks.{i}.attn.heads": scores.heads[i], f"blocks.{i}.mlp": scores.mlp[i]}
    return out | {"residual": scores.residual}


@dataclass(frozen=True)
class StructuredPruner(Pruner):
    """Base of the structured criteria: one registered class each, whose ``__call__(model,
    images, labels) -> StructuredScores`` scores every q/k pair, v channel, FFN neuron, head
    and residual channel (higher = keep), and whose ``prune_model`` selects and returns a
    physically smaller model (``PruneResult.masks`` None; ``extra`` holds the plan, ratios,
    per-structure scores and MACs before / after).

    ``ratios``: a paper file (path or shipped name such as ``"DeiT_t"``), a paper-format dict,
    a dict of components (``{"qk": 0.5, "v": 0.3, "mlp": 0.2, "residual": 0.1, "heads":
    0.25}``, a number or one per block) or a :class:`StructuredRatios`; when None, the
    ``sparsity`` of ``prune()`` is removed from q/k, v and FFN of every block. ``heads`` adds
    head pruning ("SNP + Head"), with any criterion. ``round_to``: kept widths (q/k and v per
    head, FFN hidden, residual) become multiples of it, rounded to the nearest multiple,
    never 0 (:func:`~core.pruning.structured.rounded_keep`). ``ranking``: ``"layer"`` (the
    ratios per block) or ``"global"`` (the same totals per component, spread over blocks by
    the per-layer normalised scores, :func:`~core.pruning.structured.select`). ``scope`` is
    not used. The prunable-set fields of :class:`Pruner` do not apply (the structures are
    fixed). ``needs_labels``: the criterion reads the calibration labels (``taylor``).
    """

    kind: ClassVar[str] = "structured"
    needs_data: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = False

    ratios: Any = None
    heads: Any = None
    round_to: int = 1
    ranking: str = "layer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) \
                or self.round_to < 1:
            raise ValueError(f"round_to must be a positive int (e.g. 8), got {self.round_to!r}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {RANKINGS}, got {self.ranking!r}")

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        """The criterion itself: scores of every structure, no checks of the batch."""
        raise NotImplementedError

    def structured_scores(self, model: nn.Module, images: Tensor | None = None,
                          labels: Tensor | None = None) -> StructuredScores:
        """The scores after checking the calibration batch (and labels, for criteria that
        read them) against the model."""
        if self.needs_data:
            images, labels = check_batch(model, images, labels,
                                         needs_labels=self.needs_labels)
        return self(model, images, labels)

    def score(self, model: nn.Module, images: Tensor | None = None,
              labels: Tensor | None = None) -> dict[str, Tensor]:
        return scores_dict(self.structured_scores(model, images, labels))

    def prune_model(self, model: nn.Module, sparsity: float | None = None,
                    images: Tensor | None = None, labels: Tensor | None = None,
                    scope: str = "global") -> PruneResult:
        self._ratios(model, sparsity)  # a bad request fails before the (slow) scoring
        return self.prune_scored(model, self.structured_scores(model, images, labels),
                                 sparsity, scope)

    def prune_scored(self, model: nn.Module, scores: StructuredScores,
                     sparsity: float | None = None, scope: str = "global") -> PruneResult:
        """The steps of :meth:`prune_model` after scoring: select from ``scores`` (of
        :meth:`structured_scores` on ``model``) and shrink, so that a curve over sparsities
        scores once (``core.study``)."""
        ratios = self._ratios(model, sparsity)
        plan = select(model, scores, ratios, self.round_to, self.ranking)
        small = shrink(model, plan)
        macs_before, macs_after = config_macs(model.config), config_macs(small.config)
        return PruneResult(
            small, None, scores_dict(scores), plan_table(model.config, small.config),
            float(sparsity or 0.0), self, scope,
            extra={"plan": plan, "ratios": ratios, "structured_scores": scores,
                   "macs_before": macs_before, "macs_after": macs_after})

    def _ratios(self, model: nn.Module, sparsity: float | None) -> StructuredRatios:
        if self.ratios is not None and sparsity not in (None, 0, 0.0):
            raise ValueError(f"give either ratios or a sparsity, not both (sparsity "
                             f"{sparsity}, ratios {self.ratios!r})")
        if self.ratios is None and sparsity is None:
            raise ValueError("give ratios=... or a sparsity")
        return resolve_ratios(self.ratios, get_adapter(model).depth(model),
                              sparsity=None if self.ratios is not None else sparsity,
                              heads=self.heads)


# ---------------------------------------------------------------------------- criteria

_SNP_FORMULA = (r"\omega_i = \sum_{j \le \gamma} \frac{|(u_j \cdot q_i)(v_j \cdot k_i)|}"
                r"{\lVert q_i \rVert \lVert k_i \rVert}, \quad \omega_{h,i} = \sum_{j,l} "
                r"\left(1 - |\cos(W_V[h,i], W_V[j,l])|\right)")


@register_pruner("snp")
@dataclass(frozen=True)
class SNPPruner(StructuredPruner):
    """SNP's scores (module docstring). ``rank`` = γ; ``batch_size`` images per forward;
    ``residual_score``: ``"redundancy"`` (default) or ``"l2"`` per linked layer."""

    needs_data = True
    formula = _SNP_FORMULA
    explanation = (
        "SNP (Structured Neuron-level Pruning) removes whole neurons and makes the model "
        "physically smaller. Query and key channels are pruned in pairs, keeping the pairs "
        "whose rank-1 terms q_i k_iᵀ line up with the dominant singular directions of the "
        "attention scores QKᵀ, so the attention maps survive. Value and FFN neurons that "
        "duplicate others (high |cosine| with the rest of the layer, across heads) go first. "
        "Residual channels are removed at the same indices along the whole residual stream.")

    rank: int | None = DEFAULT_RANK
    residual_score: str = "redundancy"
    batch_size: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.residual_score not in ("redundancy", "l2"):
            raise ValueError(f"residual_score must be 'redundancy' or 'l2', got "
                             f"{self.residual_score!r}")

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        stats = calibrate(model, images, self.batch_size, self.rank, self.name)
        views = block_views(model)
        per_layer = (lambda w: value_redundancy_scores(w, 1)) \
            if self.residual_score == "redundancy" else l2_scores
        v, mlp = self.neuron_scores(views, stats)
        return StructuredScores(qk=stats.qk, v=v, mlp=mlp, heads=stats.heads,
                                residual=residual_scores(model, per_layer).cpu())

    def neuron_scores(self, views: list[BlockView], stats) -> tuple[list[Tensor], list[Tensor]]:
        """v channels (H, d_v) and FFN neurons (hidden,) per block: SNP's redundancy ω."""
        return ([value_redundancy_scores(b.v_weight.flatten(0, 1), b.num_heads)
                 .reshape(b.num_heads, b.v_dim).cpu() for b in views],
                [value_redundancy_scores(b.fc1.weight.detach(), 1).cpu() for b in views])


@register_pruner("reverse")
@dataclass(frozen=True)
class ReversePruner(SNPPruner):
    """SNP's order inverted (the paper's "Reverse"): prunes what SNP would keep."""

    explanation = ("SNP's order inverted: prunes the structures SNP would keep first. The "
                   "paper's sanity check that SNP's ranking, not the structure, keeps accuracy.")

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        return super().__call__(model, images, labels).map(lambda s: -s)


def redundancy_times_output(w: Tensor, num_heads: int, act: Tensor, w_out: Tensor) -> Tensor:
    """The ``snp-act`` score of v channels / FFN neurons, (n,):
    ``ω_i · mean|a_i| · ‖W_out[:, i]‖``.

    w: (n, C) the neurons' weight rows (SNP's redundancy ω over them,
    :func:`value_redundancy_scores` with ``num_heads``); act: (n,) mean |activation| of each
    neuron on the calibration batch; w_out: (C_out, n) the layer that reads them (the
    attention out-projection, fc2). ``mean|a_i|·‖W_out[:, i]‖`` bounds the size of what
    neuron i writes into the residual stream per token."""
    omega = value_redundancy_scores(w, num_heads).double()
    return (omega * act.double().flatten() * w_out.detach().double().norm(dim=0)).float()


@register_pruner("snp-act")
@dataclass(frozen=True)
class SNPActPruner(SNPPruner):
    """SNP whose value / FFN redundancy is weighted by what the neuron writes (a PruneLens
    variant, not the paper's formula; ``snp`` stays the paper's).

    q/k pairs, heads and residual channels: SNP's scores. v channel (h, i) and FFN neuron i:
    ``s_i = ω_i · mean|a_i| · ‖W_out[:, i]‖`` (:func:`redundancy_times_output`): ω_i SNP's
    inter-head redundancy of the weight rows, a_i the neuron's activation on the calibration
    batch (v: the values the attention weighs; FFN: the hidden unit after the activation),
    W_out the layer that reads it (out-projection; fc2).

    Why. ``ω_i = Σ_j (1 − |cos(w_i, w_j)|)`` is lowest for the rows that point along the
    directions most other rows share. In a trained ViT those are the dominant directions of
    the LayerNorm-ed input, so the "most redundant" rows are the ones with the largest
    activations: pruning the lowest ω removes the neurons that matter most, and SNP's order
    inverted beats random on v and FFN (README, ``benchmarks/bench_structured.py --why``).
    The reading of the figure is not the cause (the same sum over all heads' value rows, the
    output-side reading of the vectors does no better), nor the normalisation (ω of one layer
    share one sum, so scaling cannot change its order), and removing a whole group of
    near-duplicates at once is a smaller effect (a greedy removal that re-scores the remaining
    set after each pick helps the FFN a little at low ratios, not v). What was missing is the
    magnitude: a direction shared with others says a neuron *could* be replaced, not that it
    carries little. Multiplying by the neuron's output size ranks by contribution, and ω
    still tilts the order towards removing, among neurons of similar contribution, the one
    whose direction others cover.
    """

    formula = (r"s_i = \omega_i \cdot \overline{|a_i|} \cdot \lVert W_{out}[:, i] \rVert, \quad "
               r"\omega_i = \sum_{j,l} \left(1 - |\cos(w_i, w_{j,l})|\right)")
    explanation = (
        "SNP with a magnitude factor (a PruneLens variant): q/k pairs as SNP; value and FFN "
        "neurons by SNP's redundancy times the size of what the neuron writes (mean |activation| "
        "on the calibration batch times the norm of its output weights). SNP's redundancy alone "
        "ranks the strongest neurons as the most redundant, because they share the input's "
        "dominant directions; the magnitude fixes that.")

    def neuron_scores(self, views: list[BlockView], stats) -> tuple[list[Tensor], list[Tensor]]:
        """ω weighted by what each neuron writes (:func:`redundancy_times_output`)."""
        return ([redundancy_times_output(b.v_weight.flatten(0, 1), b.num_heads, a, b.out_weight)
                 .reshape(b.num_heads, b.v_dim) for b, a in zip(views, stats.v_act)],
                [redundancy_times_output(b.fc1.weight.detach(), 1, a, b.fc2.weight)
                 for b, a in zip(views, stats.hidden_act)])


def _per_row(model: nn.Module, row_fn: Callable[[Tensor], Tensor],
             head_fn: Callable[[Tensor], Tensor]) -> StructuredScores:
    views = block_views(model)

    def rows(w: Tensor, b: BlockView, d: int) -> Tensor:  # (H, d, C) → (H, d) over the layer
        return row_fn(w.flatten(0, 1)).reshape(b.num_heads, d).cpu().float()
    return StructuredScores(
        qk=[rows(b.q_weight, b, b.qk_dim) + rows(b.k_weight, b, b.qk_dim) for b in views],
        v=[rows(b.v_weight, b, b.v_dim) for b in views],
        mlp=[row_fn(b.fc1.weight.detach()).cpu().float() for b in views],
        heads=[head_fn(_head_weights(b)).cpu().float() for b in views],
        residual=residual_scores(model, row_fn).cpu())


@register_pruner("l2-norm")
@dataclass(frozen=True)
class L2NormPruner(StructuredPruner):
    """Magnitude baseline: L2 norm of each structure's weights (q/k pairs: q + k norms)."""

    formula = r"s_i = \lVert W_Q[h,i] \rVert_2 + \lVert W_K[h,i] \rVert_2"
    explanation = ("Structured magnitude baseline: each neuron's weight row L2 norm (q/k "
                   "pairs add the q and k norms); the smallest go, on SNP's structures.")

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        return _per_row(model, l2_scores, l2_scores)


@register_pruner("gm")
@dataclass(frozen=True)
class GeometricMedianPruner(StructuredPruner):
    """FPGM baseline: distance sum to the layer's other rows (q/k pairs: q + k)."""

    formula = r"s_i = \sum_j \lVert w_i - w_j \rVert_2"
    explanation = ("Geometric-median baseline (FPGM): neurons whose weight rows lie near the "
                   "layer's geometric median are the most replaceable and go first.")

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        return _per_row(model, gm_scores, gm_scores)


@register_pruner("structured-random")
@dataclass(frozen=True)
class StructuredRandomPruner(StructuredPruner):
    """Uniform random scores from a seeded generator (the chance baseline)."""

    seeded = True
    formula = r"s_i \sim \mathcal{U}(0, 1)"
    explanation = ("Random neurons, heads and channels on SNP's structures (seeded): the "
                   "baseline a structured criterion has to beat.")

    seed: int = 0

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        g = torch.Generator().manual_seed(self.seed)
        views = block_views(model)

        def r(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=g)
        return StructuredScores(
            qk=[r(b.num_heads, b.qk_dim) for b in views],
            v=[r(b.num_heads, b.v_dim) for b in views],
            mlp=[r(b.mlp_hidden) for b in views], heads=[r(b.num_heads) for b in views],
            residual=r(get_adapter(model).residual_width(model)))


# ``structured_prune``'s short names for the structured criteria
_SHORT = {"random": "structured-random"}


def structured_pruner(criterion: str, **options) -> StructuredPruner:
    """The registered structured pruner ``criterion`` (``snp``, ``l2-norm``, ``gm``,
    ``random`` (= ``structured-random``), ``reverse``, …) with ``options``."""
    name = _SHORT.get(criterion, criterion)
    if name not in list_pruners("structured") or name == "amap":
        known = [n for n in list_pruners("structured") if n != "amap"]
        raise ValueError(f"unknown structured criterion {criterion!r}; known: "
                         f"{', '.join(known)}")
    return get_pruner(name, **options)


def structured_prune(model: nn.Module, criterion: str = "snp", ratios: object = None,
                     images: Tensor | None = None, *, sparsity: float | None = None,
                     heads: object = None, labels: Tensor | None = None,
                     **options) -> PruneResult:
    """Score with ``criterion`` (``snp``, ``snp-act``, ``taylor``, ``activation``, ``l2-norm``,
    ``gm``, ``random``, ``reverse``), select and physically shrink; ``model`` is not modified.
    See :class:`StructuredPruner` for ``ratios`` / ``sparsity`` / ``heads`` / ``round_to`` /
    ``ranking``; ``options`` are the criterion's (``rank``, ``seed``, ...). images: (B, C, H,
    W) in [0, 1], the calibration batch; labels (B,): its classes (``taylor`` needs them)."""
    pruner = structured_pruner(criterion, ratios=ratios, heads=heads, **options)
    return pruner.prune_model(model, sparsity, images, labels)
