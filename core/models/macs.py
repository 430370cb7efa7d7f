"""Multiply-accumulates of one forward, counted at the ``torch`` function level.

:class:`MacCounter` is a ``TorchFunctionMode`` that adds up the MACs of the calls that carry
them in these models: ``F.linear``, ``F.conv2d``, matrix products (``@``, ``matmul``, ``bmm``,
``mm``), ``einsum`` (the Linformer) and ``F.scaled_dot_product_attention`` (the ViT attention
without gradients). Norms, softmax and activations are not counted, as in fvcore and the
papers. It replaces ``torch.utils.flop_counter.FlopCounterMode``, whose first use imports
``torch._dynamo`` (1–5 s, a third of the dashboard's cold start); tests check it against the
closed form on ViT, DeiT, Linformer-ViT and physically pruned models.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_MATMULS = {"matmul", "__matmul__", "bmm", "mm"}


def _einsum_macs(equation: str, operands) -> int:
    """Product of every index size in the equation's inputs (one MAC per index tuple)."""
    sizes: dict[str, int] = {}
    for term, t in zip(equation.replace(" ", "").split("->")[0].split(","), operands):
        sizes.update(zip(term, t.shape))
    return math.prod(sizes.values())


class MacCounter(TorchFunctionMode):
    """``with MacCounter() as c: model(x)`` → ``c.macs``."""

    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if func is F.linear:                       # x (..., in), W (out, in)
            self.macs += args[0].numel() // args[0].shape[-1] * args[1].numel()
        elif func is F.conv2d:                     # per output element: C_in/groups · k · k
            self.macs += out.numel() * args[1][0].numel()
        elif name in _MATMULS:                     # (..., n, k) @ (..., k, m)
            self.macs += out.numel() * args[0].shape[-1]
        elif name == "__rmatmul__":
            self.macs += out.numel() * args[1].shape[-1]
        elif func is torch.einsum:
            ops = args[1] if isinstance(args[1], (list, tuple)) else args[1:]
            if len(ops) >= 2:
                self.macs += _einsum_macs(args[0], ops)
        elif func is F.scaled_dot_product_attention:
            q, k, v = args[:3]                     # (..., N, d_qk), (..., M, d_qk), (..., M, d_v)
            n, m = q.shape[-2], k.shape[-2]
            batch = q.numel() // (n * q.shape[-1])
            self.macs += batch * n * m * (q.shape[-1] + v.shape[-1])   # Q Kᵀ and A V
        return out


def count_macs(model: torch.nn.Module) -> int:
    """Multiply-accumulates of one forward on one image (what the papers call "FLOPs"), in
    eval mode and without gradients; the model's mode is restored."""
    device = next(model.parameters()).device
    x = torch.zeros(1, *model.input_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), MacCounter() as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.macs


def approx_macs(model: torch.nn.Module) -> int:
    """Parameters × tokens: about the multiply-accumulates of one forward on one image (each
    weight used once per token; the attention products left out), without running one. For
    deciding how to run a forward (:func:`core.boot.threads_for`), not for reporting. A model
    of no known family: :func:`count_macs` when it declares ``input_shape``, else its
    parameter count (a lower bound)."""
    from .adapter import get_adapter

    params = sum(p.numel() for p in model.parameters())
    try:
        return params * get_adapter(model).num_tokens(model)
    except TypeError:
        return count_macs(model) if hasattr(model, "input_shape") else params
