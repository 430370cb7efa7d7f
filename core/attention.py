"""Attention capture, attention rollout, gradient rollout and heat maps.

Capture uses forward hooks on the submodule each attention layer passes its post-softmax
probabilities through (``Attention.attn_drop`` for the ViT family, ``LinformerSelfAttention
.dropout`` for the linformer package); hooks are always removed, also when the forward raises.

Linformer (Wang et al. 2020) never forms an N×N matrix: with ``P̄ = softmax(Q (E K)ᵀ/√d)``
(B, H, N, k) over k projected keys and values ``F V`` (``F = proj_v[:N]``, (N, k)), the output
is ``out_i = Σ_t (P̄ Fᵀ)_{it} v_t``. So the effective token-to-token matrix is ``P̄ Fᵀ``
(N × N, signed, rows not summing to 1); :func:`capture_attention` returns it (``raw=True`` gives
``P̄``).

Rollout (Abnar & Zuidema 2020) works on ``|A|``: for softmax attention that is A itself; for
Linformer's signed effective matrix it is the magnitude of token-to-token mixing, which the
rollout's ``0.5 A + 0.5 I`` and row renormalisation then turn into a proper stochastic matrix.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models.adapter import DEFAULT_LAYOUT, TokenLayout, get_adapter, token_layout
from .tokens import input_token_maps, to_original_tokens

HeadFusion = Literal["mean", "max", "min"]


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The model's attention layers, first to last (asks the family's adapter)."""
    try:
        mods = get_adapter(model).attention_modules(model)
    except TypeError as e:
        raise ValueError(f"{type(model).__name__} has no attention layers PruneLens knows: "
                         f"{e}") from None
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention layers")
    return mods


@contextmanager
def record_attention(model: nn.Module, raw: bool = False) -> Iterator[list[Tensor]]:
    """Context manager: during it, each forward appends one tensor per attention layer.

    Yields a list filled in layer order: (B, H, N, N) probabilities (Linformer: the effective
    ``P̄ Fᵀ``, or ``P̄`` (B, H, N, k) with ``raw=True``). Tensors keep their autograd graph.
    Hooks are removed on exit, also after an exception. A model that merges tokens
    (:mod:`core.tokens`) gives its maps over the input tokens (B, H, N0, N0), mapped back
    through the merges made so far (not with ``raw=True``).
    """
    records: list[Tensor] = []
    adapter = get_adapter(model)
    to_input_tokens = input_token_maps(model)
    handles = []

    def keep(_mod, inputs, _out) -> None:  # the hook point's input: the exact probabilities
        records.append(inputs[0])

    for attn in attention_modules(model):
        if raw:
            hook = keep
        else:
            def hook(_mod, inputs, _out, attn=attn) -> None:
                records.append(to_input_tokens(adapter.to_tokens(attn, inputs[0])))
        handles.append(adapter.hook_point(attn).register_forward_hook(hook))
    try:
        yield records
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture_attention(model: nn.Module, images: Tensor, raw: bool = False) -> list[Tensor]:
    """One forward in eval mode; returns one (B, H, N, N) tensor per block, first to last.

    images: (B, C, H, W) in [0, 1]. See :func:`record_attention` for Linformer and ``raw``.
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    if was_training:
        model.eval()
    try:
        with record_attention(model, raw=raw) as records:
            model(images)
    finally:
        if was_training:
            model.train()
    return records


def _rollout(layers: list[Tensor], discard_ratio: float) -> Tensor:
    """layers: fused (B, N, N) per block, non-negative → R = A_L ⋯ A_1 (B, N, N)."""
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    B, N, _ = layers[0].shape
    eye = torch.eye(N, dtype=layers[0].dtype, device=layers[0].device)
    result = eye.expand(B, N, N)
    for a in layers:
        if discard_ratio > 0:
            flat = a.reshape(B, -1).clone()
            n_drop = int(flat.shape[1] * discard_ratio)
            idx = flat.topk(n_drop, dim=-1, largest=False).indices
            keep_cls = flat[:, 0].clone()  # CLS→CLS is never discarded
            flat.scatter_(1, idx, 0.0)
            flat[:, 0] = keep_cls
            a = flat.view(B, N, N)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)  # keepdim: vit-explain omits it (a known bug)
        result = a @ result
    return result


def _at_least_fp32(a: Tensor) -> Tensor:
    return a.to(torch.promote_types(a.dtype, torch.float32))


def _fuse(a: Tensor, head_fusion: HeadFusion) -> Tensor:
    if head_fusion == "mean":
        return a.mean(dim=1)
    if head_fusion == "max":
        return a.amax(dim=1)
    if head_fusion == "min":
        return a.amin(dim=1)
    raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")


def attention_rollout(attentions: list[Tensor], head_fusion: HeadFusion = "mean",
                      discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of per-block (B, H, N, N) maps → (B, N, N).

    Per block: fuse heads of ``|A|``, optionally zero the lowest ``discard_ratio`` fraction
    (CLS→CLS kept), add the residual ``0.5 A + 0.5 I``, renormalise rows, and multiply from the
    first block to the last. Row 0 (CLS) without column 0 is the usual map.
    """
    if not attentions:
        raise ValueError("no attention maps given")
    return _rollout([_fuse(_at_least_fp32(a.abs()), head_fusion) for a in attentions],
                    discard_ratio)


def rollout_row(attentions: list[Tensor], layout: TokenLayout = DEFAULT_LAYOUT) -> Tensor:
    """The query row of the rollout (mean fusion, nothing discarded) over the patch columns,
    (B, P): equal to ``rollout_map(attention_rollout(attentions), layout)`` but computed as
    vector–matrix products ``v ← v Â_l`` from the last block down (``vᵀ A_L ⋯ A_1``), without
    the (B, N, N) product of the blocks' matrices.

    ``v`` starts as the class token's one-hot row, or, without a class token, the mean over
    the patch rows. With ``Â = (0.5 |A| + 0.5 I) / r`` (r its row sums),
    ``v Â = 0.5 (v / r) |A| + 0.5 (v / r)``: one batched (1 × N)(N × N) product per block.
    """
    if not attentions:
        raise ValueError("no attention maps given")
    first = attentions[0]
    B, _, N, _ = first.shape
    dtype = torch.promote_types(first.dtype, torch.float32)
    p = layout.num_prefix
    v = torch.zeros(B, 1, N, dtype=dtype, device=first.device)
    if layout.cls_index is None:
        v[:, 0, p:] = 1.0 / (N - p)
    else:
        v[:, 0, layout.cls_index] = 1.0
    for a in reversed(attentions):
        fused = a.to(dtype).abs().mean(dim=1)  # (B, N, N)
        w = v / (0.5 * fused.sum(dim=-1) + 0.5).unsqueeze(1)
        v = 0.5 * torch.bmm(w, fused) + 0.5 * w
    return v[:, 0, p:]


def gradient_rollout(model: nn.Module, images: Tensor, target: int | Tensor | None = None,
                     discard_ratio: float = 0.0) -> Tensor:
    """Gradient-weighted rollout (vit-explain's "grad rollout"), (B, N, N).

    Per block ``mean_heads(A ⊙ ∂y_c/∂A)`` with negatives clipped to 0 — each block's gradient
    paired with its own attention — then the rollout steps. ``target``: class index (or one per
    image); default the predicted class. For Linformer the gradient exists for ``P̄`` only, so
    the block's map is ``mean_heads((P̄ ⊙ ∂y/∂P̄) Fᵀ)`` clipped at 0: the grad-weighted
    probabilities carried to tokens exactly as values are.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), record_attention(model, raw=True) as records:
            logits = model(images)
    finally:
        model.train(was_training)
    if target is None:
        target = logits.argmax(dim=-1)
    target = torch.as_tensor(target, device=logits.device).reshape(-1).expand(logits.shape[0])
    y = logits.gather(1, target[:, None]).sum()
    grads = torch.autograd.grad(y, records)
    adapter = get_adapter(model)
    with torch.no_grad():
        weighted = [adapter.to_tokens(attn, (a * g).detach())
                    for attn, a, g in zip(attention_modules(model), records, grads)]
        fused = [_at_least_fp32(w).mean(dim=1).clamp(min=0)
                 for w in to_original_tokens(model, weighted)]
    return _rollout(fused, discard_ratio)


# ---------------------------------------------------------------------------- heat maps

def _query_row(a: Tensor, layout: TokenLayout) -> Tensor:
    """(B, N, N) → (B, P): the class token's row over the patch columns, or, for a model
    without a class token, the mean over the patch queries."""
    p = layout.num_prefix
    if layout.cls_index is None:
        return a[:, p:, p:].mean(dim=1)
    return a[:, layout.cls_index, p:]


def cls_attention(attention: Tensor, head: int | None = None,
                  layout: TokenLayout = DEFAULT_LAYOUT) -> Tensor:
    """CLS → patch row of one block's (B, H, N, N) map: (B, P) over the P patch tokens;
    head None → mean of heads. ``layout`` (:func:`token_layout` of the model) says which
    special tokens to skip; distillation and register tokens are never image cells."""
    if layout.cls_index is not None:  # one row of each head: no need to touch the others
        row = attention[:, :, layout.cls_index, layout.num_prefix:].abs()
        return row.mean(dim=1) if head is None else row[:, head]
    a = attention.abs()
    a = a.mean(dim=1) if head is None else a[:, head]
    return _query_row(a, layout)


def rollout_map(rollout: Tensor, layout: TokenLayout = DEFAULT_LAYOUT) -> Tensor:
    """CLS row of a rollout (B, N, N) over the patch columns: (B, P) (see
    :func:`cls_attention` for ``layout``)."""
    return _query_row(rollout, layout)


def patch_heatmap(row: Tensor, grid_size: tuple[int, int],
                  image_size: tuple[int, int]) -> Tensor:
    """A (B, N-1) CLS→patch row → (B, H, W) heat map in [0, 1]: reshaped to the patch grid,
    divided by its max and upsampled bilinearly onto the image."""
    B = row.shape[0]
    gh, gw = grid_size
    if row.shape[1] != gh * gw:
        raise ValueError(f"row of {row.shape[1]} patches does not fit grid {gh}x{gw}")
    m = row.detach().float().reshape(B, 1, gh, gw).clamp(min=0)
    m = m / m.amax(dim=(2, 3), keepdim=True).clamp(min=1e-12)
    return F.interpolate(m, size=image_size, mode="bilinear", align_corners=False)[:, 0]


@functools.lru_cache(maxsize=8)
def _colormap(name: str):
    """matplotlib's colour map ``name``, built once: ``colormaps[name]`` returns a fresh copy
    whose lookup table is rebuilt at its first call (~2 ms, 40 times for a grid)."""
    from matplotlib import colormaps  # lazy: only pictures need it

    return colormaps[name]


def overlay(image: Tensor, heat: Tensor, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a (3, H, W) image in [0, 1] with a (H, W) heat map → uint8 RGB array (H, W, 3)."""
    colours = _colormap(cmap)(heat.detach().cpu().clamp(0, 1).numpy())[..., :3]
    img = image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    out = (1 - alpha) * img + alpha * colours
    return (out * 255).round().astype(np.uint8)
