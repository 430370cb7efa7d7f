"""N:M semi-structured sparsity: in every row of a weight, each group of M consecutive input
weights keeps its N highest keep-scores (2:4 is what NVIDIA's sparse tensor cores run).

A weight is read as a matrix ``(out, in)``: a Linear's ``(out_features, in_features)``, a
Conv2d's ``(out_channels, in_channels · kh · kw)`` (its flattened kernel, the order
``F.unfold`` uses). Groups are ``[0, M), [M, 2M), …`` along ``in``. A layer whose ``in`` is not
a multiple of M cannot hold the pattern: it is left dense and named as skipped (by
:func:`nm_masks` and :func:`check_nm`), never padded or refused, so one odd layer does not stop
a model from being pruned.

With a pattern the sparsity is fixed at ``1 − N/M`` over the layers that hold it; a different
requested sparsity is refused (:func:`pattern_sparsity`). Ties inside a group: the lower index
is pruned first, as everywhere in :mod:`core.pruning.masks`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor, nn

# sparsities round-trip through 6 decimals (core.study rounds them): 1 − 1/3 → 0.666667
_TOLERANCE = 1e-6


def parse_pattern(pattern: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"2:4"`` → ``(2, 4)``; None, ``""`` and ``"unstructured"`` → None (no pattern).

    Raises ValueError unless N and M are integers with ``0 < N < M``."""
    if pattern is None or pattern == "" or pattern == "unstructured":
        return None
    if isinstance(pattern, tuple) and len(pattern) == 2:
        n, m = pattern
    else:
        text = str(pattern).strip()
        left, sep, right = text.partition(":")
        try:
            n, m = int(left), int(right)
        except ValueError:
            n = m = None
        if not sep or n is None:
            raise ValueError(f"pattern must be 'N:M' with 0 < N < M, e.g. '2:4'; got "
                             f"{pattern!r}")
    if isinstance(n, bool) or isinstance(m, bool) or not (0 < int(n) < int(m)):
        raise ValueError(f"pattern must be 'N:M' with 0 < N < M, e.g. '2:4'; got {pattern!r}")
    return int(n), int(m)


def pattern_name(pattern: str | tuple[int, int] | None) -> str | None:
    """The canonical ``"N:M"`` string of ``pattern`` (None without one)."""
    nm = parse_pattern(pattern)
    return None if nm is None else f"{nm[0]}:{nm[1]}"


def pattern_sparsity(pattern: str | tuple[int, int], sparsity: float | None = None) -> float:
    """The sparsity ``1 − N/M`` that ``pattern`` fixes. ``sparsity`` None takes it; another
    value must equal it (to 1e-6), else ValueError in one line."""
    n, m = parse_pattern(pattern)
    fixed = 1.0 - n / m
    if sparsity is not None:
        try:
            s = float(sparsity)
        except (TypeError, ValueError):
            raise ValueError(f"sparsity must be a number, got {sparsity!r}") from None
        if not abs(s - fixed) <= _TOLERANCE:
            raise ValueError(f"pattern {n}:{m} fixes the sparsity at {fixed:.6g} (1 - N/M); "
                             f"got sparsity={sparsity!r}: leave it out or pass {fixed:.6g}")
    return fixed


def as_rows(t: Tensor) -> Tensor:
    """A weight-shaped tensor as ``(out, in)`` (a view: Conv2d kernels flattened)."""
    return t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(1, -1)


def holds_pattern(shape: torch.Size | tuple[int, ...], m: int) -> bool:
    """Whether a weight of ``shape`` can hold groups of ``m`` along its inputs."""
    cols = math.prod(shape[1:]) if len(shape) >= 2 else math.prod(shape)
    return cols % m == 0


def nm_keep(scores: Tensor, n: int, m: int) -> Tensor | None:
    """Keep-mask (True = kept) shaped like ``scores`` with the ``n`` highest of every group of
    ``m`` consecutive inputs of each row (ties: lower index pruned first); None when the
    layer's input size is not a multiple of ``m``. NaN scores raise ValueError."""
    if not holds_pattern(scores.shape, m):
        return None
    s = as_rows(scores.detach())
    if not s.is_floating_point():
        s = s.float()
    if bool(torch.isnan(s).any()):
        raise ValueError("scores contain NaN")
    groups = s.reshape(s.shape[0], -1, m)                       # (out, in/m, m)
    order = torch.sort(groups, dim=-1, stable=True).indices     # ascending, ties by index
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :m - n], False)                # prune the m − n lowest
    return keep.reshape(scores.shape)


def nm_masks(scores: Mapping[str, Tensor], pattern: str | tuple[int, int]
             ) -> tuple[dict[str, Tensor], list[str]]:
    """``({key: keep-mask}, skipped keys)``: :func:`nm_keep` per tensor; a layer that cannot
    hold the pattern gets an all-True mask and is listed in ``skipped``."""
    n, m = parse_pattern(pattern)
    masks, skipped = {}, []
    for key, s in scores.items():
        try:
            keep = nm_keep(s, n, m)
        except ValueError:
            raise ValueError(f"scores of {key!r} contain NaN") from None
        if keep is None:
            skipped.append(key)
            keep = torch.ones(s.shape, dtype=torch.bool, device=s.device)
        masks[key] = keep
    return masks, skipped


@dataclass(frozen=True)
class NMCheck:
    """What :func:`check_masks` (and ``check_nm``) found. ``layers``: the masked layers checked, in order;
    ``realised``: those where every group of M keeps at most N (what the sparse kernels need);
    ``exact``: those where every group keeps exactly N; ``skipped``: input size not a
    multiple of M; ``violations``: key → number of groups keeping more than N."""

    pattern: str
    layers: tuple[str, ...]
    realised: tuple[str, ...]
    exact: tuple[str, ...]
    skipped: tuple[str, ...]
    violations: dict

    @property
    def ok(self) -> bool:
        """Every layer that can hold the pattern holds it (skipped layers aside)."""
        return not self.violations and len(self.realised) == len(self.layers) - len(self.skipped)

    def summary(self) -> str:
        """``"2:4 realised in 49 of 50 layers (1 skipped: input size not a multiple of 4)"``."""
        text = f"{self.pattern} realised in {len(self.realised)} of {len(self.layers)} layers"
        notes = []
        if self.skipped:
            notes.append(f"{len(self.skipped)} skipped: input size not a multiple of "
                         f"{self.pattern.split(':')[1]}")
        if self.violations:
            notes.append(f"{len(self.violations)} with groups keeping more than "
                         f"{self.pattern.split(':')[0]}")
        return text + (f" ({'; '.join(notes)})" if notes else "")

    def __str__(self) -> str:
        return self.summary()


def check_masks(masks: Mapping[str, Tensor], pattern: str | tuple[int, int]) -> NMCheck:
    """Check every group of every ``{key: mask}`` against ``pattern`` (a model's masks:
    :func:`~core.pruning.nm_check.check_nm`)."""
    n, m = parse_pattern(pattern)
    realised, exact, skipped, bad = [], [], [], {}
    for key, mask in masks.items():
        if not holds_pattern(mask.shape, m):
            skipped.append(key)
            continue
        kept = as_rows(mask != 0).reshape(mask.shape[0], -1, m).sum(-1)  # (out, in/m)
        over = int((kept > n).sum())
        if over:
            bad[key] = over
            continue
        realised.append(key)
        if bool((kept == n).all()):
            exact.append(key)
    return NMCheck(f"{n}:{m}", tuple(masks), tuple(realised), tuple(exact), tuple(skipped), bad)
