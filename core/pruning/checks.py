"""Argument checks shared by the pruners: sparsity, calibration batch, logits."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def check_sparsity(sparsity: float) -> float:
    """``sparsity`` as a float in [0, 1), else ValueError."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not (math.isfinite(s) and 0.0 <= s < 1.0):
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return s


def check_batch(model: nn.Module, images: Tensor | None, labels: Tensor | None,
                needs_labels: bool = True) -> tuple[Tensor, Tensor | None]:
    """Validate a calibration batch against the model; return it on the model's device.

    images: float (B, C, H, W) matching ``model.input_shape`` when the model has one;
    labels: integer (B,) in ``[0, model.num_classes)``.
    """
    if images is None:
        raise ValueError("this criterion needs a calibration batch: pass images (and labels)")
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise ValueError(f"images must be a float tensor, got {getattr(images, 'dtype', images)!r}")
    shape = getattr(model, "input_shape", None)
    if shape is not None and (images.ndim != 4 or tuple(images.shape[1:]) != tuple(shape)):
        raise ValueError(f"images have shape {tuple(images.shape)}, the model expects "
                         f"(B, {', '.join(map(str, shape))}) (wrong image size?)")
    if images.shape[0] == 0:
        raise ValueError("the calibration batch is empty")
    device = _device(model)
    images = images.to(device)
    if labels is None:
        if needs_labels:
            raise ValueError("this criterion needs labels for the calibration images")
        return images, None
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} "
                         f"of shape {tuple(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    num_classes = getattr(model, "num_classes", None)
    if labels.numel() and (int(labels.min()) < 0 or
                           (num_classes is not None and int(labels.max()) >= num_classes)):
        raise ValueError(f"labels out of range: min {int(labels.min())}, max "
                         f"{int(labels.max())}; the model has {num_classes} classes")
    return images, labels.to(device=device, dtype=torch.long)


def check_logits(logits: Tensor, labels: Tensor) -> None:
    """Labels out of range of a model without ``num_classes`` are caught here."""
    if logits.ndim != 2:
        raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}, "
                         "expected (B, num_classes)")
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"labels out of range: max {int(labels.max())}, "
                         f"the model has {logits.shape[1]} classes")


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
