"""Parameters and MACs of one image's forward, dense and kept by a pruning result.

Masked MACs are ``Σ kept weights × uses``, a weight's uses being how often one forward of an
image ``(1, C, H, W)`` applies it (tokens for a Linear on ``(B, N, C)``, output pixels for a
Conv2d).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..models import count_macs
from .points import Pruned


@dataclass(frozen=True)
class DenseCost:
    """Parameters and MACs (one image) of the dense model, and per Linear/Conv2d weight how
    often it is used in one forward (tokens, output pixels): masked MACs are
    ``Σ kept weights × uses``."""

    params: int
    macs: int
    uses: dict[str, int] = field(default_factory=dict)


def activation_bytes(model: nn.Module) -> int:
    """Bytes of every module output in a forward of one image (no gradients): the scale of
    the activation memory scoring needs per calibration image. Hooks are removed after."""
    total = 0

    def add(_m, _i, out) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(add) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *model.input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


def weight_uses(model: nn.Module) -> dict[str, int]:
    """Per Linear/Conv2d weight (``name.weight``), how often one forward of an image
    ``(1, C, H, W)`` applies it: tokens through a Linear, output pixels of a Conv2d (fewer
    when tokens are merged). Hooks removed and the mode restored after; not on a copy: a
    merged model's copies would not share its merge state."""
    net, was_training = model, model.training
    net.eval()
    uses: dict[str, int] = {}
    handles = []
    for name, mod in net.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            def hook(m, _i, out, name=name):
                width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                uses[name + ".weight"] = out.numel() // width
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(torch.zeros(1, *net.input_shape, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    return uses


def dense_cost(model: nn.Module) -> DenseCost:
    net = copy.deepcopy(model).eval()  # mode changes on a private copy
    return DenseCost(sum(p.numel() for p in net.parameters()), count_macs(net),
                     weight_uses(net))


def cost(dense: DenseCost, pruned: Pruned) -> dict[str, float]:
    """Parameters and MACs (one image) kept, absolute and as fractions of the dense model.

    Masked models: pruned weights count as removed from both (the sparse cost the papers
    report; attention's own products stay); structured models: counted on the smaller model.
    """
    if pruned.small is not None:
        p = sum(t.numel() for t in pruned.small.parameters())
        m = count_macs(copy.deepcopy(pruned.small))
    elif pruned.masks is not None:
        removed = {k: int(v.numel() - v.count_nonzero()) for k, v in pruned.masks.items()}
        p = dense.params - sum(removed.values())
        m = dense.macs - sum(n * dense.uses.get(k, 0) for k, n in removed.items())
    else:
        p, m = dense.params, dense.macs
    return {"params": p, "macs": m, "params_kept": p / dense.params,
            "macs_kept": m / dense.macs}
