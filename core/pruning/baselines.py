"""Structured baselines researchers expect, on SNP's structures (q/k pairs, v channels, FFN
neurons, heads, residual channels): first-order Taylor and mean activation.

Both are :class:`~core.pruning.snp.StructuredPruner` criteria (``__call__(model, images,
labels) -> StructuredScores``, higher = keep), so ``ratios``, ``heads``, ``round_to`` and
``ranking`` work with them as with SNP.

**taylor** (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"; the
group form of Torch-Pruning's ``TaylorImportance``). On the calibration batch with its labels,
``L`` the mean cross-entropy, eval mode. A structure's score is ``|Σ w · ∂L/∂w|``, the sum
running over every weight (``nn.Linear`` / ``nn.Conv2d`` weights; biases, norms, tokens and
positions are not weights here) that removing the structure deletes:

- q/k pair (h, i): the q row and the k row of head h, channel i;
- v channel (h, i): its v row and the out-projection column it feeds;
- FFN neuron i: its fc1 row and its fc2 column;
- head h: its q, k, v rows and out-projection columns;
- residual channel d: the d-th output row of every writer (patch embedding, out-projections,
  fc2) and the d-th input column of every reader (q/k/v, fc1, the head) — the layers of
  :func:`~core.pruning.structured.residual_links`, without the LayerNorm gains.

``Σ w·∂L/∂w`` over a structure is the first-order change of the loss when the structure is
zeroed (``L(w − w_S) ≈ L − Σ_S w·∂L/∂w``); the absolute value ranks by how much it changes.

**activation**: mean |activation| of the structure's output on the calibration batch (eval
mode, one pass; :func:`~core.pruning.snp.calibrate`):

- q/k pair: its output is its rank-1 term ``q_i k_iᵀ`` of the attention logits; the mean
  |entry| of it is ``mean_t|q_{t,i}| · mean_s|k_{s,i}|`` (per image, then averaged; the keys
  are the ones the queries meet: Linformer's sequence-projected ``E K``);
- v channel: mean |v| over images and the values the probabilities weigh;
- FFN neuron: mean |hidden| after the activation (what fc2 reads);
- head: the mean over images and tokens of the L2 norm of its contribution to the block
  output (``BlockView.head_output_norms``; SNP's head score);
- residual channel: mean |x_d| of the residual stream at every pre-norm input (two per block),
  each tap normalised by its sum and averaged (as SNP's residual score averages layers).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import register_pruner, scoring_state
from .snp import StructuredPruner, _head_weights, calibrate
from .structured import StructuredScores, block_views, residual_links


def weight_times_gradient(model: nn.Module, images: Tensor, labels: Tensor,
                          batch_size: int = 16) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` / ``nn.Conv2d`` weights hold ``w ⊙ ∂L/∂w``
    (L: mean cross-entropy of the batch, eval mode) and whose other parameters are 1, so that
    the family adapter's views of it (``block_views``, ``residual_links``: LayerNorm gains and
    LayerScale of 1 leave the slices alone) give every structure's ``w·∂L/∂w`` entries.

    images (B, C, H, W), labels (B,). ``model`` is left as found (mode, flags, ``.grad``).
    """
    params = [p for p in model.parameters()]
    grads = [torch.zeros_like(p) for p in params]
    n = len(images)
    with scoring_state(model, params):
        for x, y in zip(images.split(batch_size), labels.split(batch_size)):
            loss = F.cross_entropy(model(x), y, reduction="sum") / n
            for g, d in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                if d is not None:
                    g += d
    out = copy.deepcopy(model)
    weights = {id(m.weight) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))}
    with torch.no_grad():
        for p, q, g in zip(params, out.parameters(), grads):
            q.copy_(p * g if id(p) in weights else torch.ones_like(p))
    return out


@register_pruner("taylor")
@dataclass(frozen=True)
class TaylorPruner(StructuredPruner):
    """First-order Taylor: ``|Σ_{w ∈ S} w·∂L/∂w|`` per structure S (module docstring).
    ``batch_size``: images per forward/backward (the gradient is of the whole batch's mean
    loss either way)."""

    needs_data = True
    needs_labels = True
    formula = r"s_S = \left| \sum_{w \in S} w \, \frac{\partial L}{\partial w} \right|"
    explanation = (
        "First-order Taylor (Molchanov et al. 2019): the loss change predicted when a whole "
        "structure (a q/k pair, a value channel, an FFN neuron, a head, a residual channel) is "
        "zeroed, |Σ w·∂L/∂w| over all its weights, on the labelled calibration batch.")

    batch_size: int = 16

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        if images is None or labels is None or len(images) == 0:
            raise ValueError("taylor needs a calibration batch with labels (images=..., "
                             "labels=...): its scores are gradients of the loss")
        g = weight_times_gradient(model, images, labels, self.batch_size)
        views = block_views(g)

        def out_cols(b, d: int) -> Tensor:  # (H, d): sum of each channel's out-proj column
            return b.out_weight.sum(dim=0).reshape(b.num_heads, d)
        qk = [b.q_weight.sum(-1) + b.k_weight.sum(-1) for b in views]
        v = [b.v_weight.sum(-1) + out_cols(b, b.v_dim) for b in views]
        mlp = [b.fc1.weight.detach().sum(1) + b.fc2.weight.detach().sum(0) for b in views]
        heads = [_head_weights(b).sum(1) for b in views]
        residual = sum(vec.sum(1) for _, vec in residual_links(g))
        return StructuredScores(*[[t.abs().float().cpu() for t in ts] for ts in (qk, v, mlp,
                                                                                 heads)],
                                residual.abs().float().cpu())


@register_pruner("activation")
@dataclass(frozen=True)
class ActivationPruner(StructuredPruner):
    """Mean |activation| of each structure's output on the calibration batch (module
    docstring). ``batch_size``: images per forward."""

    needs_data = True
    formula = r"s_S = \mathbb{E}_{x}\,\overline{|a_S(x)|}"
    explanation = (
        "Activation baseline: each structure scores the mean absolute value of its output on "
        "the calibration batch (value channels, FFN hidden units, q/k pairs through their "
        "term of the attention logits, heads through their output norm, residual channels "
        "through the stream); the quietest go first.")

    batch_size: int = 16

    def __call__(self, model: nn.Module, images: Tensor | None = None,
                 labels: Tensor | None = None) -> StructuredScores:
        stats = calibrate(model, images, self.batch_size, False, self.name)
        taps = [s.double() / s.double().sum().clamp(min=1e-300) for s in stats.stream]
        return StructuredScores(stats.qk_act, stats.v_act, stats.hidden_act, stats.heads,
                                (sum(taps) / len(taps)).float())
