"""Scores → boolean masks, and masks on a model through ``torch.nn.utils.parametrize``.

``compute_masks`` prunes exactly ``floor(sparsity · n)`` entries, the lowest keep-scores, with
ties broken by position (lower flat index pruned first; global scope flattens the layers in
the dict's order). The threshold is found by selection, not a sort: ``np.partition`` on the
concatenated scores (introselect, ~15 ms for the 2.8M weights of ``linformer-vit-paper`` on a
laptop core, where ``torch.kthvalue`` takes ~120 ms), then the tie group at the threshold is
resolved by index. CUDA scores use ``torch.kthvalue`` on the device.

``sparsity · n`` is read with the decimal value ``sparsity`` prints as (``Fraction(repr(s))``),
so 0.29 of 100 weights prunes 29, not the 28 that ``floor(0.29 * 100)`` in floats gives.

Two finer comparison groups than ``scope``: **per output row** (``rows=True``, Wanda's
per-output comparison: each row of each layer prunes its own lowest scores) and an **N:M
pattern** (``pattern="2:4"``: each group of M consecutive inputs of a row keeps its N highest,
:mod:`core.pruning.nm`). Either is asked for explicitly, or declared by the scores themselves:
a pruner built with ``pattern=`` (or Wanda) returns :class:`GroupedScores`, and
``compute_masks`` honours their declaration whatever ``scope`` it is given — which is how a
sweep or the dashboard, re-thresholding cached scores with ``compute_masks(scores, s, scope)``,
keeps Wanda's rows and the N:M groups.

Masks live on the model as a parametrization (torch.ao.pruning's ``FakeSparsity``): the
forward sees ``mask ⊙ original``, so pruned weights are exactly zero and get zero gradient
through any number of optimizer steps; the dense values stay in ``original`` until
:func:`remove_masks` bakes them in (or drops the masks with ``bake=False``).
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .checks import check_sparsity
from .nm import as_rows, nm_masks, pattern_name, pattern_sparsity

SCOPES = ("global", "layer")


class GroupedScores(dict):
    """Keep-scores ``{key: tensor}`` that say which entries may be compared with each other.

    ``rows``: only within an output row (Wanda's per-output comparison: its ``‖X_j‖`` scale
    differs from layer to layer, and the paper prunes the same fraction of every row);
    ``pattern``: ``"N:M"``, only within each group of M consecutive inputs of a row.
    :func:`compute_masks` follows the declaration whatever ``scope`` it is given. A plain
    ``dict`` in every other respect (copies with ``dict(...)`` drop the declaration: use
    :meth:`like`); pickles and deep-copies with it.
    """

    def __init__(self, scores: Mapping[str, Tensor] | None = None, *, rows: bool = False,
                 pattern: str | None = None):
        super().__init__(scores or {})
        self.rows = bool(rows)
        self.pattern = pattern_name(pattern)

    def like(self, scores: Mapping[str, Tensor]) -> "GroupedScores":
        """Other tensors under the same declaration."""
        return GroupedScores(scores, rows=self.rows, pattern=self.pattern)

    def __repr__(self) -> str:
        return (f"GroupedScores(rows={self.rows}, pattern={self.pattern!r}, "
                f"keys={list(self)})")


def group_scores(scores: Mapping[str, Tensor], rows: bool = False,
                 pattern: str | None = None) -> dict[str, Tensor]:
    """``scores`` declared with ``rows`` / ``pattern`` (:class:`GroupedScores`); a plain dict
    when neither is set, so the criteria without them return what they always did."""
    if rows or pattern_name(pattern):
        return GroupedScores(scores, rows=rows, pattern=pattern)
    return dict(scores)


def same_grouping(template: Mapping[str, Tensor],
                  scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``scores`` under ``template``'s declaration (when it has one)."""
    return template.like(scores) if isinstance(template, GroupedScores) else dict(scores)


def comparison(scores: Mapping[str, Tensor], scope: str) -> str:
    """How ``compute_masks(scores, s, scope)`` compares: ``"2:4"``, ``"row"`` or ``scope``."""
    if isinstance(scores, GroupedScores):
        return scores.pattern or ("row" if scores.rows else scope)
    return scope


def num_pruned(sparsity: float, n: int) -> int:
    """``floor(sparsity · n)`` with ``sparsity`` read as the decimal it prints as."""
    return math.floor(Fraction(repr(float(sparsity))) * n)


def _keep_numpy(flat: np.ndarray, k: int) -> np.ndarray:
    """Keep-mask of a 1-D score array with its ``k`` lowest entries (ties: lower index) off."""
    keep = np.ones(flat.shape, dtype=bool)
    if k == 0:
        return keep
    t = np.partition(flat, k - 1)[k - 1]  # the k-th smallest score
    np.greater(flat, t, out=keep)
    tied = np.flatnonzero(flat == t)
    n_less = flat.size - int(np.count_nonzero(keep)) - tied.size
    keep[tied[k - n_less:]] = True  # the first (k - n_less) tied entries are pruned
    return keep


def _keep_torch(flat: Tensor, k: int) -> Tensor:
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k == 0:
        return keep
    t = flat.kthvalue(k).values
    keep = flat > t
    tied = (flat == t).nonzero().squeeze(1)
    n_less = flat.numel() - int(keep.sum()) - tied.numel()
    keep[tied[k - n_less:]] = True
    return keep


def _keep(flat: Tensor, sparsity: float) -> Tensor:
    k = num_pruned(sparsity, flat.numel())
    if flat.device.type != "cpu":
        return _keep_torch(flat, k)
    return torch.from_numpy(_keep_numpy(flat.numpy(), k))


def _flat(t: Tensor) -> Tensor:
    t = t.detach().reshape(-1)
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def row_keep(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask of one layer compared per output row (Wanda's per-output group).

    ``scores`` is read as ``(out, in)`` (:func:`~core.pruning.nm.as_rows`). Every row prunes
    its ``floor(sparsity · in)`` lowest scores (ties: lower index first); so that the layer
    prunes exactly ``floor(sparsity · out · in)`` like the other scopes, the ``r`` remaining
    entries come one each from the ``r`` rows whose lowest surviving score is lowest (ties:
    lower row first). The paper's code prunes ``int(in · sparsity)`` per row and leaves those
    ``r < out`` entries.
    """
    s = as_rows(_flat(scores).view(scores.shape))
    out, cols = s.shape
    base, extra = divmod(num_pruned(sparsity, out * cols), out)  # base = floor(sparsity · in)
    keep = torch.ones(s.shape, dtype=torch.bool, device=s.device)
    if base:  # a selection per row, not a sort (np.partition: ~9x torch.kthvalue on CPU)
        if s.device.type == "cpu":                                 # each row's base-th lowest
            t = torch.from_numpy(np.partition(s.numpy(), base - 1, axis=1)[:, base - 1:base])
        else:
            t = s.kthvalue(base, dim=1, keepdim=True).values
        less, tied = s < t, s == t
        need = base - less.sum(1, keepdim=True)                   # tied entries to prune
        keep = ~(less | (tied & (tied.cumsum(1) <= need)))        # the first tied ones
    if extra:
        low = s.masked_fill(~keep, math.inf).min(1)               # lowest survivor (first)
        rows = torch.sort(low.values, stable=True).indices[:extra]
        keep[rows, low.indices[rows]] = False
    return keep.view(scores.shape)


def compute_masks(scores: Mapping[str, Tensor], sparsity: float | None,
                  scope: str = "global", *, rows: bool | None = None,
                  pattern: str | None = None) -> dict[str, Tensor]:
    """Boolean masks (True = kept), shaped like the scores, pruning the lowest keep-scores.

    scope ``"global"``: ``floor(sparsity · n)`` over all layers together (n their total size);
    ``"layer"``: the same fraction in every layer. ``rows=True``: compared within each output
    row (:func:`row_keep`; every layer then prunes what ``"layer"`` prunes); ``pattern="N:M"``:
    within each group of M inputs (:func:`~core.pruning.nm.nm_masks`; ``sparsity`` must be
    ``1 − N/M`` or None; layers whose input size is not a multiple of M stay dense). Both
    default to what :class:`GroupedScores` declare (``pattern=""`` turns a declared pattern
    off); a pattern overrides ``rows`` and ``scope``, ``rows`` overrides ``scope``.

    Raises ValueError for ``sparsity`` outside [0, 1) or NaN, a sparsity a pattern does not
    fix, an unknown scope, no scores, or NaN scores.
    """
    declared = isinstance(scores, GroupedScores)
    if pattern is None and declared:
        pattern = scores.pattern
    if rows is None:
        rows = declared and scores.rows
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if pattern_name(pattern):
        pattern_sparsity(pattern, sparsity)
        if not scores:
            raise ValueError("no scores to build masks from")
        return nm_masks(scores, pattern)[0]
    s = check_sparsity(sparsity)
    if not scores:
        raise ValueError("no scores to build masks from")
    keys = list(scores)
    flats = [_flat(scores[k]) for k in keys]
    for key, f in zip(keys, flats):
        if bool(torch.isnan(f).any()):
            raise ValueError(f"scores of {key!r} contain NaN")
    if rows:
        return {k: row_keep(f.view(scores[k].shape), s) for k, f in zip(keys, flats)}
    if scope == "layer":
        return {k: _keep(f, s).view(scores[k].shape) for k, f in zip(keys, flats)}
    if flats[0].device.type == "cpu":
        dtype = np.float64 if any(f.dtype == torch.float64 for f in flats) else np.float32
        flat = np.concatenate([f.numpy() for f in flats]).astype(dtype, copy=False)
        keep = torch.from_numpy(_keep_numpy(flat, num_pruned(s, flat.size)))
    else:
        flat = torch.cat(flats)
        keep = _keep_torch(flat, num_pruned(s, flat.numel()))
    parts = keep.split([f.numel() for f in flats])
    return {k: p.view(scores[k].shape) for k, p in zip(keys, parts)}


def collapsed(kept: int, n: int, threshold: float = 0.99) -> bool:
    """Whether a layer with ``kept`` of ``n`` entries lost at least ``threshold`` of them."""
    return n - kept >= threshold * n - 1e-9 * n


def layer_collapse(masks: Mapping[str, Tensor], threshold: float = 0.99) -> int:
    """Number of layers that lose at least ``threshold`` of their entries (layer collapse)."""
    return sum(collapsed(int(m.count_nonzero()), m.numel(), threshold) for m in masks.values())


def mask_sparsity(masks: Mapping[str, Tensor]) -> float:
    """Fraction of entries pruned over all masks together."""
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0


# ---------------------------------------------------------------------------- on the model

class PruningMask(nn.Module):
    """Parametrization ``x ↦ mask ⊙ x`` (torch.ao.pruning's ``FakeSparsity``).

    ``mask`` is a buffer in the weight's dtype (a float multiply is the cheapest forward).
    """

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask * x


def _split_key(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    mname, _, attr = key.rpartition(".")
    try:
        module = model.get_submodule(mname) if mname else model
    except AttributeError:
        raise ValueError(f"mask key {key!r}: the model has no module {mname!r}") from None
    if not (parametrize.is_parametrized(module, attr)
            or isinstance(getattr(module, attr, None), nn.Parameter)):
        raise ValueError(f"mask key {key!r}: {mname or 'the model'} has no parameter {attr!r}")
    return module, attr


def _mask_of(module: nn.Module, attr: str) -> PruningMask | None:
    if not parametrize.is_parametrized(module, attr):
        return None
    return next((p for p in module.parametrizations[attr] if isinstance(p, PruningMask)), None)


def _private_class(module: nn.Module) -> None:
    """Give a parametrized module a class of its own, one whose deepcopies get their own too.

    ``copy.deepcopy`` of a parametrized module keeps torch's injected ``Parametrized<Cls>``
    class shared with the original, and registering or removing a parametrization edits that
    class (adds / deletes the property): baking the masks of a copy (as ``save_model`` does)
    would strip ``weight`` from the original (torch 2.x behaviour). Called before and after
    every (un)registration here, so any copy of a masked model is safe to edit.
    """
    if parametrize.is_parametrized(module):
        cls = type(module)
        attrs = dict(cls.__dict__)
        attrs["__deepcopy__"] = _deepcopy_own_class
        module.__class__ = type(cls.__name__, cls.__bases__, attrs)


def _deepcopy_own_class(self: nn.Module, memo: dict) -> nn.Module:
    if id(self) in memo:
        return memo[id(self)]
    replica = self.__new__(type(self))
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)
    _private_class(replica)
    return replica


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Register (or replace) a :class:`PruningMask` on each ``key`` in place; returns ``model``.

    Keys are plain names (``"blocks.0.attn.qkv.weight"``), see :mod:`core.pruning.base`.
    """
    for key, mask in masks.items():
        module, attr = _split_key(model, key)
        current = getattr(module, attr)
        if tuple(mask.shape) != tuple(current.shape):
            raise ValueError(f"mask for {key!r} has shape {tuple(mask.shape)}, the parameter "
                             f"has {tuple(current.shape)}")
        value = mask.detach().to(device=current.device, dtype=current.dtype)
        existing = _mask_of(module, attr)
        if existing is not None:
            existing.mask = value
        else:
            _private_class(module)
            parametrize.register_parametrization(module, attr, PruningMask(value))
            _private_class(module)
    return model


def get_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks registered on ``model`` as ``{plain key: bool tensor}``."""
    out = {}
    for mname, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for attr in module.parametrizations:
            m = _mask_of(module, attr)
            if m is not None:
                out[f"{mname}.{attr}" if mname else attr] = m.mask != 0
    return out


def restore_masks(model: nn.Module) -> nn.Module:
    """Mask again, in place, the parameters a loaded PruneLens file says were masked
    (``model.masked_params``, set by ``core.models.load_model``): the mask is the weight's
    non-zeros, which is the saved mask (``save_model`` bakes it in as zeros) unless a kept
    weight was exactly 0.0. Nothing to restore leaves ``model`` as it is. Returns ``model``."""
    keys = getattr(model, "masked_params", ())
    masks = {}
    for key in keys:
        module, attr = _split_key(model, key)
        masks[key] = getattr(module, attr).detach() != 0
    return apply_masks(model, masks)


def remove_masks(model: nn.Module, bake: bool = True) -> nn.Module:
    """Remove every mask in place; ``bake=True`` leaves the pruned zeros in the weights,
    ``bake=False`` restores the dense values. Returns ``model``."""
    for module in list(model.modules()):
        if not parametrize.is_parametrized(module):
            continue
        _private_class(module)
        for attr in list(module.parametrizations.keys()):
            if _mask_of(module, attr) is not None:
                parametrize.remove_parametrizations(module, attr, leave_parametrized=bake)
    return model
