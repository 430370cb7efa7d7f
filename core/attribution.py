"""Input attributions with Captum, as image-sized maps to show beside the attention maps.

Two methods on the logit of a chosen class ``target`` for one image (C, H, W) in [0, 1]:

- ``"saliency"`` (Simonyan et al. 2014): ``|∂y_target/∂x|``, one backward.
- ``"integrated_gradients"`` (Sundararajan et al. 2017):
  ``(x − x₀) ⊙ ∫₀¹ ∂y/∂x(x₀ + α(x − x₀)) dα`` with a black baseline ``x₀ = 0`` by default,
  Gauss–Legendre with ``n_steps`` points. Completeness: the attributions sum to
  ``y(x) − y(x₀)`` up to the quadrature error, which :func:`integrated_gradients` returns as
  ``delta``.

A map is ``|attribution|`` summed over channels and divided by its maximum: (H, W) in [0, 1]
(all zeros if the attribution is). Works on dense and masked (pruned) models alike. The model
runs in eval mode and gets its per-module modes back; Captum takes gradients with
``torch.autograd.grad`` with respect to the input only, so parameter ``.grad`` and hooks are
left as they were.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from captum.attr import IntegratedGradients, Saliency
from torch import Tensor, nn

METHODS = ("saliency", "integrated_gradients")


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, t in modes:
            m.training = t


def _prepare(model: nn.Module, image: Tensor, target: int) -> tuple[Tensor, int]:
    """image (C, H, W) or (1, C, H, W) → (1, C, H, W) on the model's device; target checked."""
    if not isinstance(image, Tensor) or not image.is_floating_point():
        raise ValueError("image must be a float tensor (C, H, W) in [0, 1]")
    x = image.unsqueeze(0) if image.ndim == 3 else image
    shape = getattr(model, "input_shape", None)
    if x.ndim != 4 or x.shape[0] != 1 or (shape is not None and tuple(x.shape[1:]) != tuple(shape)):
        raise ValueError(f"image has shape {tuple(image.shape)}; expected one image "
                         f"{tuple(shape) if shape else '(C, H, W)'}")
    num_classes = getattr(model, "num_classes", None)
    t = int(target)
    if t < 0 or (num_classes is not None and t >= num_classes):
        raise ValueError(f"target class {t} out of range for {num_classes} classes")
    p = next(model.parameters(), None)
    return x.to(p.device if p is not None else x.device).detach(), t


def to_map(attribution: Tensor) -> Tensor:
    """(C, H, W) or (1, C, H, W) attribution → (H, W) map: |·| summed over C, / max."""
    a = attribution.detach().float()
    a = a[0] if a.ndim == 4 else a
    m = a.abs().sum(0)
    peak = m.max()
    return m / peak if peak > 0 else torch.zeros_like(m)


def saliency(model: nn.Module, image: Tensor, target: int) -> Tensor:
    """``|∂y_target/∂x|`` (C, H, W)."""
    x, t = _prepare(model, image, target)
    with _eval(model):
        attr = Saliency(model).attribute(x.requires_grad_(True), target=t, abs=True)
    return attr[0].detach()


def integrated_gradients(model: nn.Module, image: Tensor, target: int,
                         baseline: Tensor | None = None, n_steps: int = 32,
                         internal_batch_size: int | None = None) -> tuple[Tensor, float]:
    """IG attributions (C, H, W), signed, and the completeness gap
    ``delta = Σ attributions − (y(x) − y(x₀))``. ``baseline`` (C, H, W), default black."""
    x, t = _prepare(model, image, target)
    b = torch.zeros_like(x) if baseline is None else _prepare(model, baseline, t)[0]
    with _eval(model):
        attr, delta = IntegratedGradients(model).attribute(
            x, baselines=b, target=t, n_steps=n_steps, internal_batch_size=internal_batch_size,
            return_convergence_delta=True)
    return attr[0].detach(), float(delta.reshape(-1)[0])


def attribution_map(model: nn.Module, image: Tensor, target: int, method: str = "saliency",
                    **options) -> Tensor:
    """(H, W) map in [0, 1] for ``method`` in :data:`METHODS`; options go to the method
    (``baseline``, ``n_steps``, ``internal_batch_size`` for integrated gradients)."""
    if method == "saliency":
        if options:
            raise ValueError(f"saliency takes no options, got {sorted(options)}")
        return to_map(saliency(model, image, target))
    if method == "integrated_gradients":
        return to_map(integrated_gradients(model, image, target, **options)[0])
    raise ValueError(f"unknown attribution method {method!r}; known: {', '.join(METHODS)}")


def compare_attributions(dense: nn.Module, pruned: nn.Module, image: Tensor, target: int,
                         method: str = "saliency", **options) -> dict[str, Tensor]:
    """``{"dense": (H, W), "pruned": (H, W)}`` maps of the same image and class."""
    return {"dense": attribution_map(dense, image, target, method, **options),
            "pruned": attribution_map(pruned, image, target, method, **options)}
