"""Unstructured foresight criteria: random, magnitude, SNIP, attention-SNIP (seed 000), GraSP,
SynFlow. Formulas: ``shared/reference/ALGORITHMS.md``, "Unstructured foresight pruning".

Every ``score`` returns keep-scores (higher = kept), one tensor per prunable parameter keyed by
its plain name (see :mod:`core.pruning.base`). Gradients are taken with
``torch.autograd.grad`` in eval mode (dropout off), so ``.grad``, modes, hooks and
``requires_grad`` are as they were after the call; weights are never written (SynFlow works on
a copy). On a masked model, ``w`` below is the masked weight: a pruned entry scores
``|0 · ∂L/∂w| = 0`` (random scores excepted).
"""
from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..attention import attention_modules
from ..boot import threads_for
from ..models import approx_macs
from .base import (Pruner, check_batch, check_logits, check_sparsity, register_pruner,
                   scoring_state)
from .masks import (SCOPES, _keep_numpy, _keep_torch, compute_masks, get_masks, group_scores,
                    num_pruned, remove_masks)
from .nm import nm_masks, parse_pattern, pattern_sparsity
from .result import PruneResult, finish_mask_prune

# one batched SynFlow round (prune_many) stays under this: parameter sets + saved activations
_BATCH_BYTES = 512 * 2**20


def _normalise(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Divide by the total over all layers (a mask-free change: makes scores comparable)."""
    total = sum(float(s.sum()) for s in scores.values())
    if total == 0 or not math.isfinite(total):
        return scores
    return {k: s / total for k, s in scores.items()}


def _grads(leaves: list[nn.Parameter], loss: Tensor, create_graph: bool = False) -> list[Tensor]:
    grads = torch.autograd.grad(loss, leaves, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


@register_pruner("random")
@dataclass(frozen=True)
class RandomPruner(Pruner):
    needs_data = False
    seeded = True
    formula = r"s_j \sim \mathcal{U}(0, 1)"
    explanation = (
        "Random pruning keeps a uniformly random subset of the weights. It is the baseline any "
        "criterion has to beat: at moderate sparsity a randomly pruned network often trains "
        "almost as well as a carefully pruned one, so the gap to random is what a criterion is "
        "worth. The draw is seeded, so the same seed gives the same mask.")

    seed: int = 0

    def keep_scores(self, model, images=None, labels=None):
        gen = torch.Generator().manual_seed(int(self.seed))
        return {p.key: torch.rand(p.param.shape, generator=gen).to(p.param.device)
                for p in self.parameters(model)}


@register_pruner("magnitude")
@dataclass(frozen=True)
class MagnitudePruner(Pruner):
    needs_data = False
    formula = r"s_j = |w_j|"
    explanation = (
        "Magnitude pruning keeps the weights with the largest absolute value. It needs no data "
        "and is the classic criterion for trained networks (Han et al. 2015). At "
        "initialisation the magnitudes are just the random init, so it is close to random "
        "within a layer; globally it favours layers initialised with a larger scale.")

    def keep_scores(self, model, images=None, labels=None):
        with torch.no_grad():
            return {p.key: p.value().detach().abs().clone() for p in self.parameters(model)}


@register_pruner("snip")
@dataclass(frozen=True)
class SnipPruner(Pruner):
    formula = (r"s_j = \frac{|g_j|}{\sum_k |g_k|},\quad g_j = \left.\frac{\partial "
               r"L(c \odot w)}{\partial c_j}\right|_{c=1} = w_j \frac{\partial L}{\partial w_j}")
    explanation = (
        "SNIP (Lee et al. 2019) asks how much the loss on one calibration batch would change "
        "if a weight were removed: put a multiplicative gate c on every weight and take the "
        "gradient of the loss with respect to the gates at c = 1, which is weight times "
        "gradient. Weights whose removal changes the loss the least are pruned, once, at "
        "initialisation, keeping the global top (1 - sparsity).")

    def _loss(self, model: nn.Module, logits: Tensor, labels: Tensor,
              outputs: list[Tensor]) -> Tensor:
        return F.cross_entropy(logits, labels)

    def _hook_modules(self, model: nn.Module) -> list[nn.Module]:
        return []

    def keep_scores(self, model, images=None, labels=None):
        params = self.parameters(model)
        images, labels = check_batch(model, images, labels)
        leaves = [p.param for p in params]
        outputs: list[Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out))
                   for m in self._hook_modules(model)]
        try:
            with scoring_state(model, leaves):
                logits = model(images)
                check_logits(logits, labels)
                grads = _grads(leaves, self._loss(model, logits, labels, outputs))
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            return _normalise({p.key: (p.value() * g).abs() for p, g in zip(params, grads)})


@register_pruner("attention-snip")
@dataclass(frozen=True)
class AttentionSnipPruner(SnipPruner):
    """Seed 000's attention-aware SNIP: ``s = |w ⊙ ∂L'/∂w|``, ``L' = L + α Σ_j A_j + β O``.

    ``A_j`` is the sum of every element of the output (B, N, C) of the j-th module of
    :func:`core.attention.attention_modules` (ViT ``Attention`` after ``proj``, Linformer's
    ``LinformerSelfAttention`` after ``to_out``); ``O`` the sum of the logits; ``α``
    (``attention_weight``) and ``β`` (``output_weight``) are 1 in the paper. One backward of
    L'. ``A_j`` cannot be the sum of the attention *probabilities*: each softmax row sums to 1,
    so that sum is the constant B·H·N whatever the weights, and its gradient is 0 — the term
    would change nothing. Scores are normalised by their total like SNIP's (no mask changes),
    so with ``α = β = 0`` this is exactly ``snip``.
    """

    formula = (r"s_j = \left| w_j \frac{\partial L'}{\partial w_j} \right|,\quad "
               r"L' = L(W) + \sum_{j} A_j + O")
    explanation = (
        "Attention-aware SNIP (seed 000) adds two terms to SNIP's loss before taking weight "
        "times gradient: the sum of every attention layer's output and the sum of the network's "
        "output. Weights that feed the attention layers and the logits strongly then score "
        "higher: at 90% it keeps more of the value and output projections and the patch "
        "embedding than SNIP, but almost none of q and k (0.03% in the seed-000 setup), so the "
        "attention pattern itself goes nearly uniform (docs/results.md). "
        "The attention probabilities themselves cannot serve: every softmax row sums to 1, so "
        "their total never changes and has zero gradient.")

    attention_weight: float = 1.0
    output_weight: float = 1.0

    def _hook_modules(self, model):
        return attention_modules(model) if self.attention_weight != 0 else []

    def _loss(self, model, logits, labels, outputs):
        loss = F.cross_entropy(logits, labels)
        if self.attention_weight != 0:
            loss = loss + self.attention_weight * sum(o.sum() for o in outputs)
        if self.output_weight != 0:
            loss = loss + self.output_weight * logits.sum()
        return loss


@register_pruner("grasp")
@dataclass(frozen=True)
class GraspPruner(Pruner):
    """GraSP (Wang et al. 2020): ``S = −θ ⊙ Hg``, logits divided by ``temperature``.

    ``Hg`` by double backprop: ``g = ∂L/∂θ`` with a graph, ``z = g_stopᵀ g``,
    ``∂z/∂θ = H g_stop`` (one forward, one backward with graph, one double backward; the
    paper's code does two forwards of the same batch). GraSP removes the *highest* S (the
    weights whose removal reduces the gradient norm least, or raises it), so the returned
    keep-score is ``−S / (|ΣS| + 1e-10) = θ ⊙ Hg / (|ΣS| + 1e-10)``: signed, highest kept.
    H and g are taken over the prunable parameters only, as in the paper's code.
    """

    formula = (r"S = -\theta \odot H g,\quad Hg = \frac{\partial}{\partial\theta}\left("
               r"g_{\mathrm{stop}}^\top g(\theta)\right),\quad \text{remove the highest } "
               r"\frac{S}{|\sum S| + \epsilon}")
    explanation = (
        "GraSP (Wang et al. 2020) keeps the weights that preserve gradient flow: it estimates, "
        "with a Hessian-gradient product, how the squared gradient norm would change if each "
        "weight were removed, and removes the weights whose removal reduces it least (or "
        "increases it). Logits are softened by a temperature of 200 so the gradient does not "
        "vanish at a confident initialisation. Scores are signed, unlike SNIP's.")

    # keeps the graph of its gradient for a second backward (measured on deit-tiny: 2.9× the
    # forward's module outputs per image, SNIP 0.85×)
    memory_per_image = 3.0

    temperature: float = 200.0

    def keep_scores(self, model, images=None, labels=None):
        params = self.parameters(model)
        images, labels = check_batch(model, images, labels)
        leaves = [p.param for p in params]
        with scoring_state(model, leaves):
            logits = model(images)
            check_logits(logits, labels)
            loss = F.cross_entropy(logits / self.temperature, labels)
            g = _grads(leaves, loss, create_graph=True)
            # ∂(g_stopᵀ g)/∂θ as one vector-Jacobian product of g with g_stop
            live = [i for i, gi in enumerate(g) if gi.requires_grad]
            hg = [torch.zeros_like(p) for p in leaves]
            if live:
                vjp = torch.autograd.grad([g[i] for i in live], leaves,
                                          grad_outputs=[g[i].detach() for i in live],
                                          allow_unused=True)
                hg = [h if v is None else v for h, v in zip(hg, vjp)]
        with torch.no_grad():
            keep = {p.key: p.value() * h for p, h in zip(params, hg)}  # = −S
            norm = abs(sum(float(s.sum()) for s in keep.values())) + 1e-10
            return {k: s / norm for k, s in keep.items()}


@register_pruner("synflow")
@dataclass(frozen=True)
class SynflowPruner(Pruner):
    """SynFlow (Tanaka et al. 2020), data-free: ``|θ ⊙ ∂R/∂θ|``, ``R = 1ᵀ f_{|θ|}(1)``.

    Works on a float64 deep copy of the model (so the caller's weights, signs included, are
    never touched and "restoring signs" is dropping the copy) in eval mode, masks baked in,
    every parameter (weights, biases, norm affines, CLS and positions) replaced by its
    absolute value. ``images`` only give the input shape (``model.input_shape`` when None);
    their content is never read, and one all-ones image is forwarded.

    What "all-ones input" means for our models: they normalise the image inside,
    ``(x − pixel_mean) / pixel_std``; the copy sets those buffers to 0 and 1 so the first layer
    sees exactly ones, as in the paper (for the default mean = std = 0.5 nothing changes).
    LayerNorms and the attention softmax are kept as they are (``layernorm="keep"``), which is
    what the paper's code does with any model (it abs-es the state dict and switches to eval
    mode): R is then no longer the ℓ1 path norm of a linear/ReLU network but a data-free
    sensitivity of the positive-weight network at a fixed input. The alternative,
    ``layernorm="affine"``, reduces LayerNorm to ``|γ| x + |β|`` (the analogue of the paper's
    BatchNorm in eval mode at init): measured on linformer-vit-tiny, the flow then grows to
    ~1e16 after 4 layers and the softmax saturates to one-hot, so q/k weights get a flow of
    1e-150 or exactly 0. Either way, q/k weights only modulate the mixing and carry no flow
    of their own: with "keep" they score ~1e-3 of the v/out weights, and at 90% sparsity
    (100 rounds) SynFlow empties every q and k projection of vit-tiny (inside the fused
    ``qkv``) and of linformer-vit-tiny (``to_q``/``to_k``: 8 collapsed layers). That is a
    property of the criterion on attention, shown in the layer-collapse count.

    ``score()`` gives one round at the model's current masks; ``prune()`` runs the paper's
    exponential schedule: for k = 1..``iterations`` re-score and keep the global top density
    ``d^{k/n}``, pruned weights staying pruned. Scores are float64 and not normalised
    (R grows like a product of layer norms; float32 would overflow on deep Linformers).
    Float32 is not offered even where nothing overflows: the q/k scores come out of the
    softmax/LayerNorm backward by cancellation (float64 scores of the same model computed two
    ways agree only to ~1e-9), and in float32 thousands of them are exactly 0. Measured after
    100 rounds (``benchmarks/bench_synflow.py --precision``): 31,864 / 11,674 / 0 of 134,528
    mask entries differ on vit-tiny at 50 / 90 / 99% sparsity, 48,660 / 18,588 / 2,966 of
    200,064 on linformer-vit-tiny, 1,545,320 / 740,790 / 99,888 of 5,457,024 on deit-tiny
    (about half of them float32 zeros on weights float64 keeps), for ~2x speed.
    ``prune_many`` runs several target sparsities together (same masks, ~3x faster on vit-tiny).
    """

    needs_data = False
    iterative = True
    schedules_many_sparsities = True
    rounds = 100
    formula = (r"s_j = \left|\theta_j \frac{\partial R}{\partial \theta_j}\right|,\quad "
               r"R = \mathbb{1}^\top f\!\left(\mathbb{1};\, |\theta|\right),\quad "
               r"\text{iterate: keep } d^{k/n},\ k = 1..n")
    explanation = (
        "SynFlow (Tanaka et al. 2020) needs no data: it makes every weight positive, feeds an "
        "all-ones image and measures how much of the total output, the 'synaptic flow', passes "
        "through each weight. Pruning a little at a time and re-scoring (100 rounds, keeping an "
        "exponentially shrinking fraction) lets the remaining weights of a thinned layer gain "
        "score, which protects against layer collapse: whole layers emptied by a global "
        "threshold, after which nothing can flow.")

    iterations: int = rounds
    layernorm: str = "keep"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) \
                or self.iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {self.iterations!r}")
        if self.layernorm not in ("keep", "affine"):
            raise ValueError(f"layernorm must be 'keep' or 'affine', got {self.layernorm!r}")

    def _input_shape(self, model: nn.Module, images: Tensor | None) -> tuple[int, ...]:
        shape = getattr(model, "input_shape", None)
        if images is not None:
            if shape is not None and tuple(images.shape[1:]) != tuple(shape):
                raise ValueError(f"images have shape {tuple(images.shape)}, the model expects "
                                 f"(B, {', '.join(map(str, shape))}) (wrong image size?)")
            return tuple(images.shape[1:])
        if shape is None:
            raise ValueError(f"{type(model).__name__} has no input_shape: pass images to give "
                             "the input shape")
        return tuple(shape)

    def _abs_copy(self, model: nn.Module) -> nn.Module:
        net = remove_masks(copy.deepcopy(model), bake=True)
        for m in net.modules():  # the caller's hooks would see (and may keep) our tensors
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
            m._backward_hooks.clear()
        device = next((p.device for p in net.parameters()), torch.device("cpu"))
        if device.type == "mps":  # no float64 there: score on the CPU, say so once
            warnings.warn("SynFlow scores in float64, which MPS lacks: scoring on the CPU",
                          stacklevel=3)
            net.to("cpu")
        net.to(torch.float64).eval()
        with torch.no_grad():
            for p in net.parameters():
                p.requires_grad_(False)
                p.grad = None
                p.abs_()
            if isinstance(getattr(net, "pixel_mean", None), Tensor):
                net.pixel_mean.zero_()
                net.pixel_std.fill_(1.0)
        if self.layernorm == "affine":
            for name, m in list(net.named_modules()):
                if isinstance(m, nn.LayerNorm):
                    parent, _, child = name.rpartition(".")
                    setattr(net.get_submodule(parent) if parent else net, child,
                            _AffineOnly(m))
        return net

    def _round(self, net: nn.Module, shape: tuple[int, ...]) -> dict[str, Tensor]:
        params = self.parameters(net)
        leaves = [p.param for p in params]
        for p in leaves:
            p.requires_grad_(True)
        try:
            with torch.enable_grad():
                R = net(torch.ones(1, *shape, dtype=torch.float64, device=leaves[0].device)).sum()
                grads = _grads(leaves, R)
        finally:
            for p in leaves:
                p.requires_grad_(False)
        with torch.no_grad():
            return {p.key: (p.param * g).abs() for p, g in zip(params, grads)}

    def keep_scores(self, model, images=None, labels=None):
        shape = self._input_shape(model, images)
        return self._round(self._abs_copy(model), shape)

    def prune_model(self, model, sparsity, images=None, labels=None, scope="global"):
        s = (pattern_sparsity(self.pattern, sparsity) if self.pattern
             else check_sparsity(sparsity))
        shape = self._input_shape(model, images)
        net = self._abs_copy(model)
        params = self.parameters(net)
        dense = [p.param.detach().clone() for p in params]
        masks = {p.key: torch.ones_like(p.param, dtype=torch.bool) for p in params}
        masks.update({k: m for k, m in get_masks(model).items() if k in masks})
        density = 1.0 - s
        scores: dict[str, Tensor] = {}
        with threads_for(approx_macs(model)):  # one image a round: a small model is faster
            for k in range(1, self.iterations + 1):  # on one thread
                with torch.no_grad():
                    for p, w in zip(params, dense):
                        p.param.copy_(w * masks[p.key])
                scores = self._round(net, shape)
                ranked = {key: sc.masked_fill(~masks[key], -math.inf)
                          for key, sc in scores.items()}
                if self.pattern:
                    new = self._pattern_round(ranked, k)
                else:
                    target = s if k == self.iterations else 1.0 - density ** (k / self.iterations)
                    new = compute_masks(ranked, target, scope)
                masks = {key: new[key] & masks[key] for key in new}  # pruned stays pruned
        return finish_mask_prune(self, model, masks, group_scores(scores, pattern=self.pattern),
                                 s, scope)

    def _pattern_round(self, ranked: dict[str, Tensor], k: int) -> dict[str, Tensor]:
        """Round k of the schedule under an N:M pattern: every group of M keeps its
        ``max(N, ceil(M · (N/M)^{k/n}))`` highest (the exponential schedule counted in whole
        weights per group; N in the last round), pruned entries ranking −∞."""
        n, m = parse_pattern(self.pattern)
        keep = max(n, math.ceil(m * (n / m) ** (k / self.iterations) - 1e-9))
        return nm_masks(ranked, (keep, m))[0] if keep < m else {
            key: torch.ones_like(v, dtype=torch.bool) for key, v in ranked.items()}

    def prune_many(self, model: nn.Module, sparsities: Sequence[float],
                   images: Tensor | None = None, labels: Tensor | None = None,
                   scope: str = "global") -> list[PruneResult]:
        """``[prune_model(model, s, images, labels, scope) for s in sparsities]``, faster.

        The schedules of all targets run together: each round is one forward/backward of
        the stacked parameter sets (``torch.func.vmap`` of ``functional_call``; one set per
        target, its masks baked in), in groups bounded by ``_BATCH_BYTES``. Each set's
        ``R_b`` depends on its own parameters only, so the gradient of ``Σ_b R_b`` with
        respect to set b is ``∂R_b/∂θ_b``. The mask update prunes only among the entries
        still alive, which keeps the same set as :func:`compute_masks` on the full ranking
        (pruned entries rank −∞ below all of them; ties: lower flat index pruned first). A set
        whose target count does not grow in a round keeps its mask, so its scores of that
        round are not needed and it sits the round out (sparsity 0: one round instead of
        ``iterations``). A model vmap cannot run falls back to the per-sparsity loop.

        Results are in the order given (duplicates computed once). The batched matmuls round
        differently from the single ones: scores agree to ~1e-9 relative, not bit for bit (the
        LayerNorm and softmax backward cancel), so masks could only differ where two alive
        scores that close straddle a round's threshold; on vit-tiny all 12 sweep sparsities
        gave identical masks (``benchmarks/bench_synflow.py``). Memory: per group, 4 float64
        copies of the prunable weights and the saved activations per set.
        """
        if isinstance(sparsities, (str, bytes)) or not hasattr(sparsities, "__iter__"):
            raise ValueError(f"sparsities must be a list of numbers in [0, 1), got "
                             f"{sparsities!r}")
        targets = [check_sparsity(s) for s in sparsities]
        if not targets:
            raise ValueError("sparsities is empty: give at least one target sparsity")
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if self.pattern:  # one sparsity only (1 − N/M), and its own schedule
            return [self.prune_model(model, s, images, labels, scope) for s in targets]
        shape = self._input_shape(model, images)
        unique = list(dict.fromkeys(targets))
        try:
            found = self._batched_schedules(model, shape, unique, scope)
        except _VmapUnsupported:
            return [self.prune_model(model, s, images, labels, scope) for s in targets]
        results, seen = [], set()
        for s in targets:
            masks, scores = found[s]
            if s in seen:  # a repeated target gets tensors of its own, as from prune_model
                masks = {k: v.clone() for k, v in masks.items()}
                scores = {k: v.clone() for k, v in scores.items()}
            seen.add(s)
            results.append(finish_mask_prune(self, model, masks, scores, s, scope))
        return results

    def _batched_schedules(self, model: nn.Module, shape: tuple[int, ...],
                           targets: list[float], scope: str, dtype: torch.dtype = torch.float64
                           ) -> dict[float, tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """{target: (masks, last round's scores)} of ``targets`` (distinct), run together.

        ``dtype`` other than float64 only for measuring (benchmarks/bench_synflow.py): float32
        changes the masks (catastrophic cancellation in the q/k flows, see the class doc)."""
        net = self._abs_copy(model).to(dtype)
        params = self.parameters(net)
        keys = [p.key for p in params]
        shapes = [tuple(p.param.shape) for p in params]
        sizes = [p.param.numel() for p in params]
        dense = torch.cat([p.param.detach().reshape(-1) for p in params])  # (n,)
        n, B, steps = dense.numel(), len(targets), self.iterations
        existing = get_masks(model)
        alive = torch.cat([existing[k].reshape(-1).to(dense.device) if k in existing
                           else torch.ones(m, dtype=torch.bool, device=dense.device)
                           for k, m in zip(keys, sizes)]).expand(B, n).clone()  # (B, n)
        # global scope: one segment of all n entries; layer scope: one per parameter
        bounds = ([(0, n)] if scope == "global" else
                  [(a, a + m) for a, m in zip([0, *itertools.accumulate(sizes)], sizes)])
        first = [(b - a) - int(alive[0, a:b].sum()) for a, b in bounds]  # pruned so far
        pruned = [list(first) for _ in range(B)]
        group = self._group_size(net, params, shape)
        macs = approx_macs(model)  # one set's round: a small one runs faster on one thread
        final: dict[int, Tensor] = {}
        for k in range(1, steps + 1):
            # counts each segment must reach this round: compute_masks' floor(target · n)
            want = [[num_pruned(s if k == steps else 1.0 - (1.0 - s) ** (k / steps), b - a)
                     for a, b in bounds] for s in targets]
            active = [i for i in range(B)
                      if k == steps or any(w > c for w, c in zip(want[i], pruned[i]))]
            for start in range(0, len(active), group):
                chunk = active[start:start + group]
                with threads_for(len(chunk) * macs):
                    flat = self._batched_round(net, params, shape, dense * alive[chunk])
                for row, i in enumerate(chunk):
                    _prune_lowest(flat[row], alive[i], want[i], pruned[i], bounds, keys, sizes)
                    if k == steps:
                        final[i] = flat[row]
        out = {}
        for i, s in enumerate(targets):
            masks = dict(zip(keys, (m.view(sh) for m, sh in
                                    zip(alive[i].split(sizes), shapes))))
            scores = dict(zip(keys, (v.view(sh) for v, sh in
                                     zip(final[i].split(sizes), shapes))))
            out[s] = (masks, scores)
        return out

    def _batched_round(self, net: nn.Module, params: list, shape: tuple[int, ...],
                       theta: Tensor) -> Tensor:
        """Scores ``|θ_b ⊙ ∂R_b/∂θ_b|`` (b, n) of the b flat parameter sets ``theta`` (b, n)."""
        b = theta.shape[0]
        parts = [t.reshape(b, *p.param.shape) for t, p in
                 zip(theta.split([p.param.numel() for p in params], dim=1), params)]
        leaves = [t.detach().requires_grad_(True) for t in parts]
        x = torch.ones(1, *shape, dtype=theta.dtype, device=theta.device)
        keys = [p.key for p in params]

        def flow(*ps: Tensor) -> Tensor:
            return functional_call(net, dict(zip(keys, ps)), (x,)).sum()

        with torch.enable_grad():
            try:
                R = torch.func.vmap(flow)(*leaves)  # (b,)
            except (RuntimeError, NotImplementedError) as e:
                raise _VmapUnsupported(str(e)) from e
            grads = _grads(leaves, R.sum())
        with torch.no_grad():
            return torch.cat([g.reshape(b, -1) for g in grads], 1).mul_(theta).abs_()

    def _group_size(self, net: nn.Module, params: list, shape: tuple[int, ...]) -> int:
        """Parameter sets per batched round so one round stays under ``_BATCH_BYTES``:
        per set ~4 copies of the prunable weights (θ, ∂R/∂θ, their flat concatenation, the
        alive mask and index) and the activations autograd saves (measured on one plain
        forward: ~76 MB for deit-tiny in float64, so 2 sets a group; vit-tiny: all)."""
        saved = [0]
        leaves = [p.param for p in params]
        weights = {p.data_ptr() for p in leaves}  # saved by reference, counted in the 4 copies

        def pack(t: Tensor) -> Tensor:
            if t.data_ptr() not in weights:
                saved[0] += t.numel() * t.element_size()
            return t

        for p in leaves:
            p.requires_grad_(True)
        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                net(torch.ones(1, *shape, dtype=leaves[0].dtype, device=leaves[0].device))
        finally:
            for p in leaves:
                p.requires_grad_(False)
        per_set = 4 * sum(p.numel() * p.element_size() for p in leaves) + saved[0]
        return max(1, _BATCH_BYTES // per_set)


class _VmapUnsupported(Exception):
    """The model cannot run under ``torch.func.vmap`` (prune_many then loops)."""


def _prune_lowest(scores: Tensor, alive: Tensor, want: list[int], pruned: list[int],
                  bounds: list[tuple[int, int]], keys: list[str], sizes: list[int]) -> None:
    """One round's mask update of one set, in place: in every segment ``bounds[j]`` of the flat
    ``alive`` (n,) prune the ``want[j] − pruned[j]`` lowest ``scores`` (n,) among the alive
    entries, ties to the lower index; ``pruned`` is updated.

    Equal to ``compute_masks`` on the scores with −∞ at the pruned entries, ANDed with the
    old mask (``prune_model``): the −∞ entries are the lowest, so the k-th smallest overall is
    the (k − pruned)-th smallest alive one and its tie group is the same; a segment whose
    count does not grow keeps its mask. Alive NaN scores raise compute_masks' error.
    """
    cpu = scores.device.type == "cpu"
    idx = np.flatnonzero(alive.numpy()) if cpu else alive.nonzero().squeeze(1)
    vals = scores.numpy()[idx] if cpu else scores[idx]
    nan = np.isnan(vals) if cpu else torch.isnan(vals)
    if bool(nan.any()):
        first = int(idx[int(nan.nonzero()[0][0])])
        key = keys[next(j for j, end in enumerate(itertools.accumulate(sizes)) if first < end)]
        raise ValueError(f"scores of {key!r} contain NaN")
    cuts = (np.searchsorted(idx, [a for a, _ in bounds] + [bounds[-1][1]]) if cpu else
            torch.searchsorted(idx, torch.tensor([a for a, _ in bounds] + [bounds[-1][1]],
                                                 device=idx.device)).tolist())
    for j in range(len(bounds)):
        extra = want[j] - pruned[j]
        if extra <= 0:
            continue
        lo, hi = int(cuts[j]), int(cuts[j + 1])
        if cpu:
            gone = idx[lo:hi][~_keep_numpy(vals[lo:hi], extra)]
            alive.numpy()[gone] = False
        else:
            alive[idx[lo:hi][~_keep_torch(vals[lo:hi], extra)]] = False
        pruned[j] = want[j]

class _AffineOnly(nn.Module):
    """LayerNorm without its statistics: ``γ x + β`` (SynFlow's ``layernorm="affine"``)."""

    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias = ln.weight, ln.bias

    def forward(self, x: Tensor) -> Tensor:
        x = x if self.weight is None else x * self.weight
        return x if self.bias is None else x + self.bias
