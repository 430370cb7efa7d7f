"""Wanda (Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for Large
Language Models", ICLR 2024): keep-score ``|W_ij| · ‖X_j‖₂``, compared within each output row.

``X_j`` is input feature j of the layer over every calibration token entering it (batch ×
sequence for a Linear on (B, N, C); batch × patch positions for a Conv2d, whose inputs are its
``F.unfold`` columns, so the patch embedding is scored like the Linear it is). The norms come
from one forward of the calibration batch through the model as it is, with forward pre-hooks
that :func:`input_norms` removes afterwards, errors included; no gradient, no labels, no
weight update. Reference page: ``docs/criteria_new.md``.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Pruner, check_batch, register_pruner, scoring_state


def _check_hookable(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or \
                isinstance(module.padding, str):
            raise ValueError(f"wanda scores {name}: a Conv2d with groups=1, zero padding given "
                             "as numbers is needed to read its inputs as unfold columns")
    elif not isinstance(module, nn.Linear):
        raise ValueError(f"wanda scores the inputs of nn.Linear / nn.Conv2d weights; {name} is "
                         f"a {type(module).__name__}")


@contextmanager
def input_norms(modules: Mapping[str, nn.Module]) -> Iterator[dict[str, Tensor]]:
    """``{name: Σ_tokens x_j²}`` (shape ``(in,)``; a Conv2d's ``(C · kh · kw,)``) of the inputs
    each of ``modules`` receives while the block runs, summed over every call; a module never
    called has no entry. The forward pre-hooks are removed on exit, also when the block raises.
    """
    sums: dict[str, Tensor] = {}

    def add(name: str, x2d: Tensor) -> None:
        # half precision squares summed in float32 (they overflow); square().sum(0) is ~10x
        # faster than linalg.vector_norm(dim=0) on CPU (benchmarks/bench_wanda.py's budget)
        x2d = x2d.detach().to(torch.promote_types(x2d.dtype, torch.float32))
        sq = x2d.square().sum(0)
        sums[name] = sq if name not in sums else sums[name] + sq

    def hook_for(name: str, module: nn.Module):
        if isinstance(module, nn.Conv2d):
            def hook(m: nn.Conv2d, args: tuple) -> None:
                cols = F.unfold(args[0], m.kernel_size, m.dilation, m.padding, m.stride)
                add(name, cols.transpose(1, 2).reshape(-1, cols.shape[1]))  # (B·L, C·kh·kw)
        else:
            def hook(m: nn.Module, args: tuple) -> None:
                add(name, args[0].reshape(-1, args[0].shape[-1]))  # (B·N, C)
        return hook

    handles = []
    try:
        for name, module in modules.items():
            _check_hookable(name, module)
            handles.append(module.register_forward_pre_hook(hook_for(name, module)))
        yield sums
    finally:
        for h in handles:
            h.remove()


@register_pruner("wanda")
@dataclass(frozen=True)
class WandaPruner(Pruner):
    """Wanda: ``s_ij = |W_ij| · ‖X_j‖₂``, every output row keeping its top ``1 − sparsity``.

    ``per_output`` (the paper's comparison group, default): the scores are declared row-wise
    (:class:`~core.pruning.masks.GroupedScores`), so masks are made per row whatever ``scope``
    says — every layer then ends at the requested sparsity, as with ``scope="layer"``.
    ``per_output=False`` compares them by ``scope`` instead (the paper's "per-layer"
    ablation with ``"layer"``; ``"global"`` ranks the raw products across layers, whose
    activation scales differ). A pattern (``pattern="2:4"``) groups them by N:M instead, which
    is per-row too. On a masked model ``W`` is the masked weight (pruned entries score 0) and
    the activations are those of the masked model. The paper's code prunes block by block,
    each block's inputs coming from the blocks already pruned; here one forward of the model
    as given scores every layer, so the scores do not depend on the sparsity and a sweep
    re-thresholds them. The Linformer sequence projections (``include_linformer_proj``) are
    not layers with an input and are refused, as are layers whose module never runs in the
    forward (a weight used through ``F.linear`` elsewhere): their inputs are unknown.
    """

    formula = (r"s_{ij} = |W_{ij}| \cdot \lVert X_j \rVert_2,\quad "
               r"\text{keep the top } (1 - s) \text{ of every output row } i")
    explanation = (
        "Wanda (Sun et al. 2023) scores a weight by its magnitude times the size of the input "
        "it multiplies: the L2 norm of input feature j over every calibration token. A small "
        "weight on a feature that is often large can matter more than a large weight on a "
        "feature that is nearly always zero. One forward pass of the calibration batch, no "
        "gradient and no retraining. Scores are compared within each output row (each neuron "
        "keeps the same fraction of its inputs), so the scope setting does not apply. With "
        "equal input norms it is magnitude pruning per row.")

    per_output: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.include_linformer_proj:
            raise ValueError("wanda scores the inputs of nn.Linear / nn.Conv2d layers; the "
                             "Linformer sequence projections have none (include_linformer_proj)")

    @property
    def row_groups(self) -> bool:
        return bool(self.per_output)

    def keep_scores(self, model, images=None, labels=None):
        params = self.parameters(model)
        images, _ = check_batch(model, images, labels, needs_labels=False)
        with input_norms({p.key: p.module for p in params}) as sums:
            with scoring_state(model, []), torch.no_grad():
                model(images)
        idle = [p.key for p in params if p.key not in sums]
        if idle:  # e.g. a weight used through F.linear elsewhere: its inputs are unknown
            raise ValueError(f"wanda: {len(idle)} layer(s) never ran in the forward, so their "
                             f"inputs are unknown: {', '.join(idle[:4])}"
                             f"{' …' if len(idle) > 4 else ''}; leave them out with "
                             "ignored_layers=(...)")
        with torch.no_grad():
            out = {}
            for p in params:
                w = p.value().detach()
                norm = sums[p.key].sqrt().to(w.dtype).view(w.shape[1:])
                out[p.key] = w.abs().mul_(norm)  # (out, in) · (in,): ‖X_j‖ along each row
            return out
