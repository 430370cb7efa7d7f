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
(its q, k, v rows and out-projection columns).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.adapter import get_adapter
from .api import PruneResult
from .base import Pruner, check_batch, get_pruner, list_pruners, register_pruner
from .ratios import StructuredRatios, resolve_ratios
from .structured import (BlockView, StructuredScores, block_views, config_macs, plan_table,
                         record_attention_inputs, residual_links, select, shrink)

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
    images) -> StructuredScores`` scores every q/k pair, v channel, FFN neuron, head and
    residual channel (higher = keep), and whose ``prune_model`` selects and returns a
    physically smaller model (``PruneResult.masks`` None; ``extra`` holds the plan, ratios,
    per-structure scores and MACs before / after).

    ``ratios``: a paper file (path or shipped name such as ``"DeiT_t"``), a paper-format dict,
    a dict of components (``{"qk": 0.5, "v": 0.3, "mlp": 0.2, "residual": 0.1, "heads":
    0.25}``, a number or one per block) or a :class:`StructuredRatios`; when None, the
    ``sparsity`` of ``prune()`` is removed from q/k, v and FFN of every block. ``heads`` adds
    head pruning ("SNP + Head"). ``scope`` is not used: structured ratios are per layer.
    The prunable-set fields of :class:`Pruner` do not apply (the structures are fixed).
    """

    kind: ClassVar[str] = "structured"
    needs_data: ClassVar[bool] = False

    ratios: Any = None
    heads: Any = None

    def __call__(self, model: nn.Module, images: Tensor | None = None) -> StructuredScores:
        """The criterion itself: scores of every structure, no checks of the batch."""
        raise NotImplementedError

    def structured_scores(self, model: nn.Module,
                          images: Tensor | None = None) -> StructuredScores:
        """The scores after checking the calibration batch against the model."""
        if self.needs_data:
            images, _ = check_batch(model, images, None, needs_labels=False)
        return self(model, images)

    def score(self, model: nn.Module, images: Tensor | None = None,
              labels: Tensor | None = None) -> dict[str, Tensor]:
        return scores_dict(self.structured_scores(model, images))

    def prune_model(self, model: nn.Module, sparsity: float | None = None,
                    images: Tensor | None = None, labels: Tensor | None = None,
                    scope: str = "global") -> PruneResult:
        self._ratios(model, sparsity)  # a bad request fails before the (slow) scoring
        return self.prune_scored(model, self.structured_scores(model, images), sparsity, scope)

    def prune_scored(self, model: nn.Module, scores: StructuredScores,
                     sparsity: float | None = None, scope: str = "global") -> PruneResult:
        """The steps of :meth:`prune_model` after scoring: select from ``scores`` (of
        :meth:`structured_scores` on ``model``) and shrink, so that a curve over sparsities
        scores once (``core.study``)."""
        ratios = self._ratios(model, sparsity)
        plan = select(model, scores, ratios)
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

    @torch.no_grad()
    def __call__(self, model: nn.Module, images: Tensor | None = None) -> StructuredScores:
        if images is None or len(images) == 0:
            raise ValueError("snp needs a calibration batch (images=...): its q/k and head "
                             "scores come from the attention on real inputs")
        views = block_views(model)
        qk = [torch.zeros(b.num_heads, b.qk_dim, dtype=torch.float64) for b in views]
        heads = [torch.zeros(b.num_heads, dtype=torch.float64) for b in views]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            for chunk in images.split(self.batch_size):
                with record_attention_inputs(model) as xs:
                    model(chunk.to(device))
                for i, (b, x) in enumerate(zip(views, xs)):
                    q, k = b.qk(x)
                    qk[i] += qk_pair_scores(q, k, self.rank).double().sum(dim=0).cpu()
                    heads[i] += b.head_output_norms(x).double().sum(dim=0).cpu()
        finally:
            model.train(was_training)
        n = len(images)
        per_layer = (lambda w: value_redundancy_scores(w, 1)) \
            if self.residual_score == "redundancy" else l2_scores
        return StructuredScores(
            qk=[(s / n).float() for s in qk],
            v=[value_redundancy_scores(b.v_weight.flatten(0, 1), b.num_heads)
               .reshape(b.num_heads, b.v_dim).cpu() for b in views],
            mlp=[value_redundancy_scores(b.fc1.weight.detach(), 1).cpu() for b in views],
            heads=[(s / n).float() for s in heads],
            residual=residual_scores(model, per_layer).cpu())


@register_pruner("reverse")
@dataclass(frozen=True)
class ReversePruner(SNPPruner):
    """SNP's order inverted (the paper's "Reverse"): prunes what SNP would keep."""

    explanation = ("SNP's order inverted: prunes the structures SNP would keep first. The "
                   "paper's sanity check that SNP's ranking, not the structure, keeps accuracy.")

    def __call__(self, model: nn.Module, images: Tensor | None = None) -> StructuredScores:
        return super().__call__(model, images).map(lambda s: -s)


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

    def __call__(self, model: nn.Module, images: Tensor | None = None) -> StructuredScores:
        return _per_row(model, l2_scores, l2_scores)


@register_pruner("gm")
@dataclass(frozen=True)
class GeometricMedianPruner(StructuredPruner):
    """FPGM baseline: distance sum to the layer's other rows (q/k pairs: q + k)."""

    formula = r"s_i = \sum_j \lVert w_i - w_j \rVert_2"
    explanation = ("Geometric-median baseline (FPGM): neurons whose weight rows lie near the "
                   "layer's geometric median are the most replaceable and go first.")

    def __call__(self, model: nn.Module, images: Tensor | None = None) -> StructuredScores:
        return _per_row(model, gm_scores, gm_scores)


@register_pruner("structured-random")
@dataclass(frozen=True)
class StructuredRandomPruner(StructuredPruner):
    """Uniform random scores from a seeded generator (the chance baseline)."""

    formula = r"s_i \sim \mathcal{U}(0, 1)"
    explanation = ("Random neurons, heads and channels on SNP's structures (seeded): the "
                   "baseline a structured criterion has to beat.")

    seed: int = 0

    def __call__(self, model: nn.Module, images: Tensor | None = None) -> StructuredScores:
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
                     heads: object = None, **options) -> PruneResult:
    """Score with ``criterion`` (``snp``, ``l2-norm``, ``gm``, ``random``, ``reverse``), select
    and physically shrink; ``model`` is not modified. See :class:`StructuredPruner` for
    ``ratios`` / ``sparsity`` / ``heads``; ``options`` are the criterion's (``rank``,
    ``seed``, ...). images: (B, C, H, W) in [0, 1], the calibration batch."""
    pruner = structured_pruner(criterion, ratios=ratios, heads=heads, **options)
    return pruner.prune_model(model, sparsity, images)
