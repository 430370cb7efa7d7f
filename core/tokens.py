"""Token merging (ToMe; Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT
But Faster", ICLR 2023): no data, no training.

:func:`merge_tokens` returns a copy of a model whose every block merges ``r`` tokens between its
attention and its FFN. Per block, with N tokens of which the first P are special (class,
distillation, register tokens — never merged):

- the patch tokens at even sequence positions form set A, those at odd positions set B (ToMe's
  alternation; the special tokens are in neither set);
- similarity = cosine of the block's keys averaged over heads, ``k̄ = mean_h k_h`` (B, N, d_qk);
- each A token picks its most similar B token; the ``r`` A tokens with the highest similarity
  merge into their picks, several possibly into one;
- a merged token is the size-weighted mean of its members and its size the sum of theirs
  (sizes start at 1); the next blocks' attention adds ``log size`` to the logits of every key
  (proportional attention), so a token standing for s patches draws the attention s would;
- the new sequence is ``[special tokens, kept A tokens in order, B tokens in order]``: the
  layout of ToMe's reference code for models with a class token (and a distillation token).

A block merges at most half of its patch tokens (``r`` is clipped, as ToMe's code does).
After the final norm each input token gets back the value of the token it was merged into, so
``forward_features`` keeps its (B, N, C) shape and average pooling weighs merged tokens by size.

The merge *source* of a forward is kept per thread: ``groups[l]`` (B, N0) says which token held
each input token when block l's attention ran (:class:`MergeTrace`). Through it the attention
maps of a merged model are mapped back to the input tokens, ``A0[i, j] = A[g(i), g(j)] /
size(g(j))`` (a merged key's attention shared equally by its members; rows still sum to 1):
:func:`core.attention.capture_attention` and the rollouts return (B, H, N0, N0) maps as for the
dense model. :func:`merge_groups` and :func:`merge_overlay` draw the groups on the image per
block, like the paper's figures.
"""
from __future__ import annotations

import copy
import threading
import warnings
from dataclasses import dataclass
from numbers import Integral
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .models.adapter import get_adapter

__all__ = ["Matching", "MergeTrace", "TokenMerge", "TokenUnmerge", "bipartite_soft_matching",
           "expand_attention", "input_token_maps", "last_trace", "merge_groups",
           "merge_overlay", "merge_schedule", "merge_tokens", "merge_wavg",
           "to_original_tokens", "tokens_per_block", "trace_merges"]


# ---------------------------------------------------------------------------- one block's merge

@dataclass(frozen=True)
class Matching:
    """One block's bipartite matching over a sequence of ``num_tokens`` tokens whose first
    ``num_prefix`` are protected. A = patch tokens at even sequence positions, B = at odd ones.
    ``src`` (B, r): the A tokens (indices into A) merged into the B tokens ``dst`` (B, r);
    ``unm`` (B, |A| − r): the A tokens kept, in sequence order."""

    num_prefix: int
    num_tokens: int
    unm: Tensor
    src: Tensor
    dst: Tensor

    @property
    def a(self) -> slice:
        P = self.num_prefix
        return slice(P + P % 2, None, 2)

    @property
    def b(self) -> slice:
        P = self.num_prefix
        return slice(P + 1 - P % 2, None, 2)

    @property
    def r(self) -> int:
        return self.src.shape[1]

    def positions(self) -> Tensor:
        """(B, N) long: where each token of the input sequence is in the merged one."""
        B, r = self.src.shape
        P, N, n_unm = self.num_prefix, self.num_tokens, self.unm.shape[1]
        dev = self.src.device
        pos_a = torch.empty(B, n_unm + r, dtype=torch.long, device=dev)
        pos_a.scatter_(1, self.unm, (P + torch.arange(n_unm, device=dev)).expand(B, -1))
        pos_a.scatter_(1, self.src, P + n_unm + self.dst)
        pos = torch.empty(B, N, dtype=torch.long, device=dev)
        pos[:, :P] = torch.arange(P, device=dev)
        pos[:, self.a] = pos_a
        n_b = len(range(N)[self.b])
        pos[:, self.b] = P + n_unm + torch.arange(n_b, device=dev)
        return pos


def bipartite_soft_matching(metric: Tensor, r: int, num_prefix: int = 1) -> Matching:
    """ToMe's matching of one block: ``metric`` (B, N, d) (the keys averaged over heads),
    ``r`` tokens to remove (0 ≤ r ≤ (N − num_prefix) // 2), the first ``num_prefix`` tokens
    protected. Cosine similarity between A and B; each A token's best B token; the ``r`` A
    tokens with the highest best-similarity merge (ties: the earlier A token first)."""
    B, N, _ = metric.shape
    P = num_prefix
    if not 0 <= r <= (N - P) // 2:
        raise ValueError(f"r={r}: a block of {N - P} patch tokens merges 0 to "
                         f"{(N - P) // 2} of them")
    a, b = slice(P + P % 2, None, 2), slice(P + 1 - P % 2, None, 2)
    with torch.no_grad():
        m = F.normalize(metric.to(torch.promote_types(metric.dtype, torch.float32)), dim=-1)
        scores = m[:, a] @ m[:, b].transpose(-1, -2)            # (B, |A|, |B|) cosines
        best, pick = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)
        src = order[:, :r]
        return Matching(P, N, order[:, r:].sort(dim=-1).values, src, pick.gather(1, src))


def _rows(t: Tensor, idx: Tensor) -> Tensor:
    """t (B, n, C), idx (B, k) → t's rows idx (B, k, C)."""
    return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))


def merge_wavg(m: Matching, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Merge tokens x (B, N, C) of sizes ``size`` (B, N) (None: all 1) by ``m``: each B token
    becomes the size-weighted mean of itself and the A tokens merged into it, and its size
    their sum. Returns x (B, N − r, C) and size (B, N − r). Tokens that take part in no merge
    keep their values exactly."""
    B, N, C = x.shape
    P = m.num_prefix
    if size is None:
        size = x.new_ones(B, N)
    xa, xb = x[:, m.a], x[:, m.b]
    sa, sb = size[:, m.a], size[:, m.b]
    s_src = sa.gather(1, m.src)                                   # (B, r)
    total = sb.scatter_add(1, m.dst, s_src)                       # (B, |B|)
    # xb + Σ s (x_src − xb) / total  ==  (sb·xb + Σ s·x_src) / total, exact where nothing merges
    pull = (_rows(xa, m.src) - _rows(xb, m.dst)) * s_src[..., None]
    xb = xb + torch.zeros_like(xb).scatter_add(
        1, m.dst[..., None].expand(-1, -1, C), pull) / total[..., None]
    x = torch.cat([x[:, :P], _rows(xa, m.unm), xb], dim=1)
    size = torch.cat([size[:, :P], sa.gather(1, m.unm), total], dim=1)
    return x, size


# ---------------------------------------------------------------------------- the merged model

class _MergeState(threading.local):
    """The forward in flight, per thread (a cached model may serve several sessions):
    ``keys`` of the current block, ``size`` (B, N) or None (all 1), ``group`` (B, N0) the
    position of each input token's token or None (identity), and ``trace``: (group, size) at
    each block's attention, then after the last block. A copy of the model gets a fresh one."""

    def __init__(self) -> None:
        self.reset()

    def reset(self, shape: tuple[int, int] = (0, 0),
              device: torch.device | None = None) -> None:
        self.shape, self.device = shape, device   # (B, N0) of the forward, its device
        self.keys: Tensor | None = None
        self.size: Tensor | None = None
        self.group: Tensor | None = None
        self.trace: list[tuple[Tensor | None, Tensor | None]] = []

    def __deepcopy__(self, memo: dict) -> "_MergeState":
        return _MergeState()

    def __reduce__(self):
        return (_MergeState, ())


class TokenMerge(nn.Module):
    """Block ``index``'s ToMe step, (B, N, C) → (B, N − r', C) with r' = min(r, patches // 2).

    Sits between the block's attention and its FFN; two hooks feed it: a forward hook on the
    attention's key point (keys (B, H, N, d_qk); block 0's resets the forward's state) and a
    forward pre-hook on its probabilities (proportional attention: ``softmax(l + log s)`` =
    ``p·s / Σ p·s``, applied to the probabilities the hook point already carries)."""

    def __init__(self, r: int, index: int, num_prefix: int, prop_attn: bool,
                 state: _MergeState) -> None:
        super().__init__()
        self.r, self.index, self.num_prefix, self.prop_attn = r, index, num_prefix, prop_attn
        self.state = state

    def extra_repr(self) -> str:
        return f"r={self.r}, num_prefix={self.num_prefix}, prop_attn={self.prop_attn}"

    def take_keys(self, _module: nn.Module, _inputs, keys: Tensor) -> None:
        st = self.state
        if self.index == 0:
            st.reset((keys.shape[0], keys.shape[2]), keys.device)
        st.keys = keys
        st.trace.append((st.group, st.size))

    def proportional(self, _module: nn.Module, args: tuple) -> tuple | None:
        size = self.state.size
        if not self.prop_attn or size is None:
            return None
        p, w = args[0], size[:, None, None, :].to(args[0].dtype)
        if p.requires_grad and torch.is_grad_enabled():
            p = p * w
            return (p / p.sum(dim=-1, keepdim=True), *args[1:])
        p.mul_(w)  # a fresh softmax output nothing else holds: in place saves two (B, H, N, N)
        p.div_(p.sum(dim=-1, keepdim=True))
        return None

    def forward(self, x: Tensor) -> Tensor:
        st = self.state
        keys, st.keys = st.keys, None
        r = min(self.r, (x.shape[1] - self.num_prefix) // 2)
        if r <= 0:
            return x
        m = bipartite_soft_matching(keys.mean(dim=1), r, self.num_prefix)
        x, st.size = merge_wavg(m, x, st.size)
        pos = m.positions()
        st.group = pos if st.group is None else pos.gather(1, st.group)
        return x


class TokenUnmerge(nn.Module):
    """After the final norm: (B, N', C) → (B, N0, C), each input token given the value of the
    token that holds it (the identity when nothing merged)."""

    def __init__(self, state: _MergeState) -> None:
        super().__init__()
        self.state = state

    def forward(self, x: Tensor) -> Tensor:
        st = self.state
        st.trace.append((st.group, st.size))
        return x if st.group is None else _rows(x, st.group)


def _merges(model: nn.Module) -> list[TokenMerge]:
    return sorted((m for m in model.modules() if isinstance(m, TokenMerge)),
                  key=lambda m: m.index)


def _schedule(r: int | Sequence[int], depth: int) -> list[int]:
    if isinstance(r, Integral):
        rs = [r] * depth
    elif isinstance(r, (Sequence, np.ndarray)) and not isinstance(r, (str, bytes)):
        rs = list(r)
    else:
        rs = []
    if len(rs) != depth or not all(isinstance(v, Integral) and not isinstance(v, bool)
                                   and v >= 0 for v in rs):
        raise ValueError(f"r must be a non-negative integer or a list of {depth} (one per "
                         f"block), got {r!r}")
    return [int(v) for v in rs]


def merge_tokens(model: nn.Module, r: int | Sequence[int], *,
                 prop_attn: bool = True) -> nn.Module:
    """A copy of ``model`` whose block i merges ``r`` (or ``r[i]``) tokens (ToMe).

    ``r = 0`` gives the model's exact outputs. More than a block can merge (half of its patch
    tokens) is clipped, with a warning naming the schedule that runs at the model's input size
    (:func:`merge_schedule`); other input sizes clip silently. ``prop_attn``: proportional
    attention (ToMe's default for models trained without merging). The input model is not
    changed. Merging is no weight: a saved merged model loads back dense. Raises ValueError
    for a family whose attention fixes the sequence length (Linformer) or a model that
    already merges tokens, TypeError for a model PruneLens does not know."""
    adapter = get_adapter(model)
    if not adapter.merges_tokens:
        raise ValueError(f"{adapter.family} models cannot merge tokens: their attention fixes "
                         "the sequence length (Linformer projects keys and values along it)")
    if _merges(model):
        raise ValueError("this model already merges tokens; merge the original model instead")
    schedule = _schedule(r, adapter.depth(model))
    merged = copy.deepcopy(model)
    num_prefix = adapter.token_layout(merged).num_prefix
    state = _MergeState()
    merges = [TokenMerge(ri, i, num_prefix, prop_attn, state) for i, ri in enumerate(schedule)]
    for merge, attn in zip(merges, adapter.attention_modules(merged), strict=True):
        adapter.key_point(attn).register_forward_hook(merge.take_keys)
        adapter.hook_point(attn).register_forward_pre_hook(merge.proportional)
    adapter.set_token_merging(merged, merges, TokenUnmerge(state))
    runs = merge_schedule(merged)
    if runs != schedule:
        warnings.warn(f"merge_tokens: r clipped to {runs}: a block merges at most half of the "
                      f"patch tokens it gets ({adapter.num_tokens(model) - num_prefix} enter "
                      "the first)", stacklevel=2)
    return merged


def tokens_per_block(model: nn.Module) -> list[int]:
    """Tokens (special ones included) entering each block at the model's input size, then the
    number left after the last block: depth + 1 counts."""
    adapter = get_adapter(model)
    P = adapter.token_layout(model).num_prefix
    n = adapter.num_tokens(model)
    merges = _merges(model)
    counts = [n]
    for i in range(adapter.depth(model)):
        n -= min(merges[i].r, (n - P) // 2) if merges else 0
        counts.append(n)
    return counts


def merge_schedule(model: nn.Module) -> list[int]:
    """The r each block merges at the model's input size (zeros for a model without
    merging)."""
    n = tokens_per_block(model)
    return [a - b for a, b in zip(n, n[1:])]


# ---------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class MergeTrace:
    """The merges of one forward. ``groups[l]`` (B, N0) long: the position of the token
    holding each input token when block l's attention ran (``l = depth``: after the last
    block); ``sizes[l]`` (B, N_l): how many input tokens each of those tokens holds."""

    groups: list[Tensor]
    sizes: list[Tensor]
    num_prefix: int

    def source(self, layer: int) -> Tensor:
        """ToMe's source matrix at ``layer``: (B, N_l, N0), 1 where token n holds input
        token j; every column has exactly one 1."""
        g = self.groups[layer]
        return F.one_hot(g, self.sizes[layer].shape[1]).transpose(1, 2).float()


def last_trace(model: nn.Module) -> MergeTrace | None:
    """The merges of this thread's last forward of ``model`` (None: the model does not merge
    tokens or has not run in this thread)."""
    merges = _merges(model)
    if not merges or not merges[0].state.trace:
        return None
    st = merges[0].state
    B, N0 = st.shape
    ident = torch.arange(N0, device=st.device).expand(B, -1)
    ones = torch.ones(B, N0, device=st.device)
    return MergeTrace([ident if g is None else g for g, _ in st.trace],
                      [ones if s is None else s for _, s in st.trace], merges[0].num_prefix)


@torch.no_grad()
def trace_merges(model: nn.Module, images: Tensor) -> MergeTrace:
    """One eval-mode forward of ``images`` (B, C, H, W) in [0, 1] through a model made by
    :func:`merge_tokens` → its :class:`MergeTrace`. The model's mode is restored."""
    if not _merges(model):
        raise ValueError("this model does not merge tokens: trace merge_tokens(model, r)")
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        model.train(was_training)
    return last_trace(model)


def expand_attention(attn: Tensor, group: Tensor, size: Tensor) -> Tensor:
    """A merged block's map (B, H, N, N) → (B, H, N0, N0) over the input tokens:
    ``A0[i, j] = A[g(i), g(j)] / size(g(j))`` with ``g = group`` (B, N0), ``size`` (B, N)."""
    B, H, N, _ = attn.shape
    N0 = group.shape[1]
    rows = attn.gather(2, group[:, None, :, None].expand(B, H, N0, N))
    out = rows.gather(3, group[:, None, None, :].expand(B, H, N0, N0))
    return out / size.gather(1, group)[:, None, None, :].to(out.dtype)


def input_token_maps(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """For hooks during a forward of ``model``: the current block's map (B, H, N, N) → (B, H,
    N0, N0) through the merges made so far in this thread (:func:`expand_attention`); the
    identity for a model without merging."""
    merges = _merges(model)
    if not merges:
        return lambda a: a
    st = merges[0].state

    def expand(a: Tensor) -> Tensor:
        return a if st.group is None else expand_attention(a, st.group, st.size)
    return expand


def to_original_tokens(model: nn.Module, maps: list[Tensor]) -> list[Tensor]:
    """Per-block maps (B, H, N_l, N_l) of this thread's last forward of ``model``, first block
    first, → (B, H, N0, N0) over the input tokens (:func:`expand_attention`). Unchanged for a
    model without merging, and for the blocks before the first merge."""
    merges = _merges(model)
    if not merges:
        return maps
    trace = merges[0].state.trace
    if len(maps) > len(trace):
        raise ValueError(f"{len(maps)} maps for a forward of {len(trace) - 1} blocks")
    return [a if g is None else expand_attention(a, g, s) for a, (g, s) in zip(maps, trace)]


@torch.no_grad()
def merge_groups(model: nn.Module, images: Tensor) -> list[Tensor]:
    """Per block, the group of every image patch after the block's merge: (B, P) long ids in
    [0, G_l) (G_l patch tokens left), or (P,) for one image (C, H, W). Patches with the same id
    were merged into one token; ids follow the merged sequence's order."""
    single = images.ndim == 3
    trace = trace_merges(model, images[None] if single else images)
    P = trace.num_prefix
    out = [g[:, P:] - P for g in trace.groups[1:]]
    return [g[0] for g in out] if single else out


# ---------------------------------------------------------------------------- picture

def merge_overlay(image: Tensor, groups: Tensor | np.ndarray, grid_size: tuple[int, int],
                  edges: bool = True, seed: int = 0) -> np.ndarray:
    """The paper's figure for one block: a (3, H, W) image in [0, 1] and the (P,) group ids of
    its patches on a ``grid_size`` grid → uint8 RGB (H, W, 3), each group filled with its mean
    colour and, with ``edges``, outlined in a colour of its own (seeded)."""
    img = image.detach().cpu().permute(1, 2, 0).clamp(0, 1).double().numpy()
    H, W, _ = img.shape
    gh, gw = grid_size
    g = np.asarray(groups.detach().cpu() if isinstance(groups, Tensor) else groups)
    if g.size != gh * gw:
        raise ValueError(f"{g.size} group ids do not fit grid {gh}x{gw}")
    g = g.reshape(gh, gw).astype(np.int64)
    pix = g[(np.arange(H) * gh // H)[:, None], (np.arange(W) * gw // W)[None, :]]  # (H, W)
    n = int(pix.max()) + 1
    flat = pix.ravel()
    count = np.maximum(np.bincount(flat, minlength=n), 1)
    mean = np.stack([np.bincount(flat, weights=img[..., c].ravel(), minlength=n) / count
                     for c in range(3)], axis=1)
    out = mean[pix]
    if edges:
        edge = np.zeros((H, W), dtype=bool)
        edge[:, :-1] |= pix[:, :-1] != pix[:, 1:]
        edge[:, 1:] |= pix[:, :-1] != pix[:, 1:]
        edge[:-1] |= pix[:-1] != pix[1:]
        edge[1:] |= pix[:-1] != pix[1:]
        edge[[0, -1], :] = edge[:, [0, -1]] = True
        out[edge] = np.random.default_rng(seed).random((n, 3))[pix[edge]]
    return (out * 255).round().astype(np.uint8)
