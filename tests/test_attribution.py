"""Captum input attributions: shapes, range, dense vs pruned, clean state, IG completeness."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.attribution import (attribution_map, compare_attributions, integrated_gradients,
                              saliency, to_map)
from core.models import build_model
from core.pruning import prune


def tiny(family: str = "vit", seed: int = 0):
    torch.manual_seed(seed)
    if family == "vit":
        model = build_model("vit-tiny", 3, img_size=8, patch_size=4, embed_dim=16, depth=2,
                            num_heads=2)
    else:
        model = build_model("linformer-vit-tiny", 3, img_size=8, patch_size=4, dim=16, depth=2,
                            heads=2, k=4)
    with torch.no_grad():  # a livelier function than the 0.02-std init
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    return model


def image(seed: int = 1) -> torch.Tensor:
    return torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _state(model):
    return ([m.training for m in model.modules()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in model.modules()],
            [(p.requires_grad, None if p.grad is None else p.grad.clone())
             for p in model.parameters()])


def map_by_hand(model, x: torch.Tensor, target: int, method: str, n_steps: int = 16):
    """The (H, W) map from autograd directly: saliency ``|∂y/∂x|``; integrated gradients
    ``x ⊙ Σ_i w_i ∂y/∂x(α_i x)`` on Gauss–Legendre nodes α_i, weights w_i of [0, 1] (black
    baseline); then |·| summed over channels, over its max."""
    model.eval()

    def grad(at: torch.Tensor) -> torch.Tensor:
        at = at.clone().requires_grad_(True)
        return torch.autograd.grad(model(at[None])[0, target], at)[0]

    if method == "saliency":
        attr = grad(x)
    else:
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        attr = x * sum(float(w) / 2 * grad(float(a + 1) / 2 * x)
                       for a, w in zip(nodes, weights))
    m = attr.abs().sum(0)
    return m / m.max()


@pytest.mark.parametrize("family", ["vit", "linformer"])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_dense_and_pruned_maps_equal_autograd_by_hand(family, method):
    model = tiny(family)
    pruned = prune(model, "magnitude", 0.9).model
    options = {"n_steps": 16} if method == "integrated_gradients" else {}
    maps = compare_attributions(model, pruned, image(), 1, method, **options)
    for name, net in (("dense", model), ("pruned", pruned)):
        torch.testing.assert_close(maps[name], map_by_hand(net, image(), 1, method),
                                   rtol=1e-4, atol=1e-5)
    assert not torch.allclose(maps["dense"], maps["pruned"], atol=1e-3)


def test_state_left_clean():
    model = tiny()
    model.train()
    model.blocks[0].eval()
    model(image()[None]).sum().backward()
    model.head.weight.grad = None
    model.register_forward_hook(lambda *a: None)
    before = _state(model)
    attribution_map(model, image(), 0, "saliency")
    attribution_map(model, image(), 0, "integrated_gradients", n_steps=8)
    after = _state(model)
    assert before[0] == after[0] and before[1] == after[1]
    for (ra, ga), (rb, gb) in zip(before[2], after[2]):
        assert ra == rb and (ga is None) == (gb is None)
        assert ga is None or torch.equal(ga, gb)


@pytest.mark.parametrize("family", ["vit", "linformer"])
def test_integrated_gradients_completeness(family):
    model = tiny(family).eval()
    x = image()
    base = torch.full_like(x, 0.5)
    attr, delta = integrated_gradients(model, x, 2, baseline=base, n_steps=64)
    with torch.no_grad():
        gap = float(model(x[None])[0, 2] - model(base[None])[0, 2])
    assert abs(gap) > 1e-2
    assert float(attr.sum()) == pytest.approx(gap, rel=0.02, abs=1e-3)
    assert abs(delta) <= 0.02 * abs(gap) + 1e-3


def test_saliency_is_the_input_gradient():
    model = tiny().eval()
    x = image().requires_grad_(True)
    model(x[None])[0, 0].backward()
    torch.testing.assert_close(saliency(model, image(), 0), x.grad.abs())
    torch.testing.assert_close(to_map(x.grad), x.grad.abs().sum(0) / x.grad.abs().sum(0).max())


def test_errors():
    model = tiny()
    with pytest.raises(ValueError, match="out of range"):
        attribution_map(model, image(), 3)
    with pytest.raises(ValueError, match="expected one image"):
        attribution_map(model, torch.rand(3, 16, 16), 0)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribution_map(model, image(), 0, "gradcam")
    assert torch.equal(to_map(torch.zeros(3, 4, 4)), torch.zeros(4, 4))
