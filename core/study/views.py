"""Attention views: per block an ``(H, N, N)`` map of one image (N tokens with the special
ones), read as a ``(P,)`` CLS→patch row (P patches) or a rollout row; SNP's Fig. 3 grid of
those rows across criteria and ratios; cosine similarity to the dense model; and the
explanation heat maps ``(H, W)`` of one image.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import attention as attn
from .. import boot
from ..models import DEFAULT_LAYOUT, TokenLayout, approx_macs, token_layout
from .evaluation import model_device
from .points import Scores, forward_model, prune_at, score


def attention_maps(model: nn.Module, image: Tensor) -> tuple[np.ndarray, ...]:
    """One (H, N, N) float32 array per block for one image (C, H, W) in [0, 1]."""
    with boot.threads_for(approx_macs(model)):  # one small image: faster on one thread
        maps = attn.capture_attention(model, image[None].to(model_device(model)))
    return tuple(m[0].float().cpu().numpy() for m in maps)


def head_counts(model: nn.Module) -> list[int]:
    """Heads per block, read from the captured (B, H, N, N) maps (any family)."""
    return [int(m.shape[1]) for m in attn.capture_attention(
        model, torch.zeros(1, *model.input_shape, device=model_device(model)))]


@dataclass(frozen=True)
class AttentionView:
    """Which (P,) CLS→patch row a map gives: ``mode`` "cls" (block ``layer``, ``head`` or
    None = mean of heads) or "rollout" (Abnar & Zuidema 2020, ``fusion``, ``discard``).
    ``layout``: the model's special tokens (:func:`core.models.token_layout`); distillation
    and register tokens are skipped, and a model without a class token gives the mean over
    the patch queries."""

    mode: str = "cls"
    layer: int = -1
    head: int | None = None
    fusion: str = "mean"
    discard: float = 0.0
    layout: TokenLayout = DEFAULT_LAYOUT


def attention_row(maps: Sequence[np.ndarray], view: AttentionView) -> np.ndarray:
    """CLS→patch attention (N-1,) of one image's maps (one (H, N, N) per block)."""
    if view.mode == "rollout":
        R = attn.attention_rollout([torch.from_numpy(m)[None] for m in maps], view.fusion,
                                   view.discard)
        return attn.rollout_map(R, view.layout)[0].numpy()
    a = torch.from_numpy(maps[view.layer])[None]
    head = view.head if view.head is None or view.head < a.shape[1] else None
    return attn.cls_attention(a, head, view.layout)[0].numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two maps (0 when either is all zero)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


@dataclass
class AttentionGrid:
    """SNP's Fig. 3: ``rows[i][j]`` the (N-1,) row of criterion i at ratio j (None where the
    criterion failed), ``similarity`` (criteria, ratios) cosine to the dense row (ratio 0 is
    the dense model: 1), ``errors`` the failed criteria's reasons."""

    dense: np.ndarray
    rows: list[list[np.ndarray | None]]
    similarity: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)


def attention_grid(maps_of: Callable[[str, float], Sequence[np.ndarray]],
                   criteria: Sequence[str], ratios: Sequence[float], view: AttentionView,
                   expected: tuple[type[BaseException], ...] = (ValueError, RuntimeError),
                   progress: Callable[[float, str], None] | None = None) -> AttentionGrid:
    """Assemble Fig. 3 from ``maps_of(criterion, ratio)`` (one image's maps; ratio 0 asked
    once, for the dense model). A criterion raising one of ``expected`` leaves its row empty
    and reports why."""
    dense = attention_row(maps_of(criteria[0], 0.0), view)
    rows: list[list[np.ndarray | None]] = []
    sims = np.full((len(criteria), len(ratios)), np.nan)
    errors: dict[str, str] = {}
    total, done = len(criteria) * len(ratios), 0
    for i, crit in enumerate(criteria):
        row: list[np.ndarray | None] = []
        for j, r in enumerate(ratios):
            done += 1
            if progress:
                progress(done / total, f"{crit} at {r:.0%}")
            if crit in errors:
                row.append(None)
            elif r == 0:
                row.append(dense)
                sims[i, j] = 1.0
            else:
                try:
                    a = attention_row(maps_of(crit, r), view)
                except expected as e:
                    errors[crit] = str(e)
                    row.append(None)
                    continue
                sims[i, j] = cosine(a, dense)
                row.append(a)
        rows.append(row)
    return AttentionGrid(dense, rows, sims, errors)


def fig3(model: nn.Module, image: Tensor, criteria: Sequence[str], ratios: Sequence[float],
         images: Tensor | None = None, labels: Tensor | None = None,
         view: AttentionView = AttentionView(), scope: str = "global",
         seed: int = 0) -> AttentionGrid:
    """The Fig. 3 grid for one image (C, H, W) from plain inputs: each criterion scored once
    on the calibration batch ``images``/``labels``, pruned per ratio, its maps captured."""
    base = copy.deepcopy(model).eval()
    scratch = copy.deepcopy(base)
    scored: dict[str, Scores | None] = {}
    view = replace(view, layout=token_layout(model))

    def maps_of(crit: str, ratio: float) -> tuple[np.ndarray, ...]:
        if crit not in scored and ratio:
            scored[crit] = score(base, crit, images, labels, seed)
        p = prune_at(base, crit, ratio, images, labels, scope, seed, scored.get(crit))
        with forward_model(base, p, scratch) as net:
            return attention_maps(net, image)

    return attention_grid(maps_of, criteria, ratios, view)


def attention_rows(model: nn.Module, dataset: Dataset,
                   batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``dataset``: the last block's CLS→patch row (mean of heads) and the
    rollout's CLS row (mean fusion, nothing discarded), each (n, N-1)."""
    cls_rows, roll_rows = [], []
    layout = token_layout(model)
    device = model_device(model)
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        maps = attn.capture_attention(model, x.to(device))
        cls_rows.append(attn.cls_attention(maps[-1], layout=layout).float().cpu().numpy())
        roll_rows.append(attn.rollout_row(maps, layout).float().cpu().numpy())
    return np.concatenate(cls_rows), np.concatenate(roll_rows)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine similarity of ``a[i]`` and ``b[i]`` (n, d), each as
    :func:`cosine` (0 where either row is all zero), in float64."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two (n, d) arrays of one shape, got {a.shape} and {b.shape}")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    cos = np.einsum("ij,ij->i", a, b) / np.where(ok, na * nb, 1.0)
    return float(np.where(ok, cos, 0.0).mean())


# ---------------------------------------------------------------------------- explanations

METHODS = ("attention rollout", "gradient rollout", "saliency", "integrated gradients")


def explain(model: nn.Module, image: Tensor, target: int | None = None, fusion: str = "mean",
            discard: float = 0.0) -> dict:
    """Prediction and one (H, W) heat map in [0, 1] per method of :data:`METHODS` for one
    image (C, H, W): rollout and gradient rollout upsampled from the patch grid, Captum's
    saliency and integrated gradients. ``model`` must be private (gradients and hooks)."""
    from ..attribution import attribution_map

    x = image[None].to(model_device(model))
    image = x[0]
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    t = int(probs.argmax()) if target is None else int(target)
    size, grid, layout = tuple(x.shape[-2:]), model.grid_size, token_layout(model)
    maps = attn.capture_attention(model, x)
    heats = {
        "attention rollout": attn.patch_heatmap(attn.rollout_map(
            attn.attention_rollout(maps, fusion, discard), layout), grid, size)[0],
        "gradient rollout": attn.patch_heatmap(attn.rollout_map(
            attn.gradient_rollout(model, x, t, discard), layout), grid, size)[0],
        "saliency": attribution_map(model, image, t, "saliency"),
        "integrated gradients": attribution_map(model, image, t, "integrated_gradients"),
    }
    return {"pred": int(probs.argmax()), "prob": float(probs.max()), "target": t,
            "target_prob": float(probs[t]),
            "heats": {m: h.detach().float().cpu().numpy() for m, h in heats.items()}}

