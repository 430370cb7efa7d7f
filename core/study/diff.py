"""Two models on the same images: per example the label, each model's prediction and
confidence, the kind of flip and how far the attention moved; and a summary (agreement,
flips by class, calibration before/after, attention change by layer and head).

Any two models of the families PruneLens knows compare, as long as they take the same input
and see it on the same patch grid (each keeps its own special tokens, depth and heads): dense,
masked, physically shrunk, fine-tuned, loaded from HF or timm files. Each model runs on its
own device (a batch goes to each model's device); one forward per model per batch, its
attention recorded in that same forward (:func:`core.attention.record_attention`), its counts
taken by the one evaluator (:func:`core.study.evaluation.eval_counts`).

The attention distance. A model's attention over the image is the class token's rollout row
over the P patch columns (Abnar & Zuidema 2020; :func:`core.attention.rollout_row`: mean of
heads, residual ``0.5 A + 0.5 I``, nothing discarded), normalised to sum 1. The change between
two models is the total variation distance of those distributions,

    TV(p, q) = ½ Σ_i |p_i − q_i|  ∈ [0, 1],

0 exactly when the maps are equal (the same model, a mask of ones), 1 when they share no
patch: "the share of the attention that moved". Per layer the same distance between the
layers' class-token rows over the patches (:func:`core.attention.cls_attention`, ``|A|``),
fused over each model's own heads by the mean (a model that lost heads averages over the ones
it kept), and per head between head ``h`` of A and the head of B it corresponds to: the same
index when the layer has as many heads in both, or ``head_map`` (for each layer, B's heads as
indices of A's: ``PruningPlan.blocks[l].heads`` of a structured pruning); a layer without
such a pairing has no per-head change. Layers are compared by index only when both models
have the same depth. A masked copy keeps its pruned heads, as uniform maps over the tokens:
its fused maps differ from the shrunk model's, which has none; without head removal masked
and shrunk twins give the same maps.

The summary of a comparison (agreement, flips by class, calibration) is ``diff_summary``.
"""
from __future__ import annotations

import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import attention as attn
from ..models import block_views, token_layout
from .cancel import Cancelled, cancellable, current_event
from .evaluation import eval_counts, eval_metrics

DIFF_COLUMNS = ("index", "label", "pred_a", "pred_b", "conf_a", "conf_b", "flip",
                "rollout_change")
FLIP_KINDS = ("both_right", "both_wrong", "lost", "gained", "changed_wrong")
UNLABELLED_KINDS = ("agree", "disagree")
FUSED = -1  # the ``head`` of a layer's mean-of-heads row in change tables

_CHANGE = re.compile(r"change_l(\d+)(?:_h(\d+))?$")


# ---------------------------------------------------------------------------- small pieces

def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """Total variation distance ``½ Σ |p̂ − q̂|`` over the last dim of two non-negative
    (..., P) tensors, each normalised to sum 1 first (an all-zero row counts as all zeros):
    (...,) float64 in [0, 1]."""
    tiny = torch.finfo(torch.float64).tiny
    p, q = p.double(), q.double()
    p = p / p.sum(-1, keepdim=True).clamp_min(tiny)
    q = q / q.sum(-1, keepdim=True).clamp_min(tiny)
    return 0.5 * (p - q).abs().sum(-1)


def flip_kinds(label: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> np.ndarray:
    """Per example one of :data:`FLIP_KINDS`: ``both_right``; ``both_wrong`` (the same wrong
    class); ``lost`` (A right, B wrong); ``gained`` (A wrong, B right); ``changed_wrong`` (both
    wrong, different classes). Unlabelled examples (label < 0): ``agree`` or ``disagree``."""
    y, a, b = (np.asarray(v) for v in (label, pred_a, pred_b))
    ra, rb, same = a == y, b == y, a == b
    return np.select([(y < 0) & same, y < 0, ra & rb, ra & ~rb, ~ra & rb, same],
                     ["agree", "disagree", "both_right", "lost", "gained", "both_wrong"],
                     "changed_wrong").astype(object)


class _Images(Dataset):
    """Unlabelled images (uploads): a (n, C, H, W) tensor or a sequence of (C, H, W) ones,
    each yielded with label -1."""

    def __init__(self, images: Tensor | Sequence[Tensor]):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], -1


def _shape(s: Sequence[int]) -> str:
    return "×".join(str(int(v)) for v in s)


def _check_pair(model_a: nn.Module, model_b: nn.Module) -> None:
    """The two models take the same input on the same patch grid, or ValueError naming both."""
    sa, sb = tuple(model_a.input_shape), tuple(model_b.input_shape)
    if sa != sb:
        raise ValueError(f"model A takes {_shape(sa)} images and model B {_shape(sb)}: compare "
                         "models of one input size (one dataset feeds both, and resizing for "
                         "one of them would change what it sees)")
    ga, gb = tuple(model_a.grid_size), tuple(model_b.grid_size)
    if ga != gb:
        raise ValueError(f"model A sees a {_shape(ga)} patch grid and model B {_shape(gb)}: "
                         "attention over different patches cannot be compared")


def _label_join(n_a: int, n_b: int, join: str, labels_a: Sequence[str] | None,
                labels_b: Sequence[str] | None) -> Tensor | None:
    """None (B's outputs are A's classes, index by index) or, for ``join="labels"``, the
    column of B's logits for each of A's classes (names matched case- and space-blind)."""
    if join == "index":
        if n_a != n_b:
            hint = ("pass join='labels' to map B's classes onto A's by name"
                    if labels_a is not None and labels_b is not None else
                    "with both models' label names, join='labels' (labels_a=, labels_b=) "
                    "maps B's classes onto A's by name")
            raise ValueError(f"model A has {n_a} classes and model B {n_b}: compare models of "
                             f"one label space, or {hint}")
        return None
    if join != "labels":
        raise ValueError(f"join must be 'index' or 'labels', got {join!r}")
    if labels_a is None or labels_b is None:
        raise ValueError("join='labels' needs both models' label names (labels_a=, labels_b=)")
    for which, names, n in (("A", labels_a, n_a), ("B", labels_b, n_b)):
        if len(names) != n:
            raise ValueError(f"model {which} has {n} classes but {len(names)} label names")

    def key(name: object) -> str:
        return " ".join(str(name).split()).lower()
    where = {key(name): j for j, name in enumerate(labels_b)}
    if len(where) != n_b:
        raise ValueError("join='labels': model B's label names are not distinct")
    missing = [str(name) for name in labels_a if key(name) not in where]
    if missing:
        raise ValueError(f"join='labels': {len(missing)} of model A's {n_a} classes are not "
                         f"among model B's {n_b}: {', '.join(missing[:5])}"
                         f"{' …' if len(missing) > 5 else ''}")
    return torch.tensor([where[key(name)] for name in labels_a])


def _head_pairs(heads_a: list[int], heads_b: list[int],
                head_map: Sequence[Sequence[int]] | None) -> list[list[tuple[int, int]]]:
    """Per layer the (head of A, head of B) pairs compared one by one (see the module doc)."""
    if head_map is None:
        return [[(h, h) for h in range(ha)] if ha == hb else []
                for ha, hb in zip(heads_a, heads_b)]
    if len(head_map) != len(heads_a):
        raise ValueError(f"head_map has {len(head_map)} layers; the models have "
                         f"{len(heads_a)}")
    pairs = []
    for l, (row, ha, hb) in enumerate(zip(head_map, heads_a, heads_b)):
        row = [int(h) for h in row]
        if len(row) != hb or len(set(row)) != hb or not all(0 <= h < ha for h in row):
            raise ValueError(f"head_map[{l}] must name {hb} distinct heads of A's {ha} "
                             f"(one per head of B), got {row}")
        pairs.append(sorted((h, j) for j, h in enumerate(row)))
    return pairs


# ---------------------------------------------------------------------------- one forward

@dataclass(frozen=True, eq=False)
class _Seen:
    """One model on one batch of B images: ``logits`` (B, C) in A's label space, ``rollout``
    (B, P) and per layer the class token's row of each head ``heads[l]`` (B, H_l, P), all
    float32 on the CPU; ``counts`` of :func:`eval_counts` (None for unlabelled batches)."""

    logits: Tensor
    rollout: Tensor
    heads: list[Tensor]
    counts: tuple[Tensor, Tensor, Tensor] | None


def _head_rows(m: Tensor, layout) -> Tensor:
    """(B, H, N, N) → (B, H, P): ``cls_attention(m, h, layout)`` of every head h, in one
    slice when there is a class token (a call per head is four small tensor ops each: on a
    small model at 2 threads, the largest share of compare_models' overhead)."""
    if layout.cls_index is not None:
        return m[:, :, layout.cls_index, layout.num_prefix:].abs()
    return torch.stack([attn.cls_attention(m, h, layout) for h in range(m.shape[1])], 1)


def _see(model: nn.Module, x: Tensor, y: Tensor | None, num_classes: int,
         take: Tensor | None = None) -> _Seen:
    """One forward of ``model`` (on its own device) recording attention in the same forward."""
    device = next(iter(model.parameters())).device
    layout = token_layout(model)
    out: dict[str, object] = {}

    def forward(images: Tensor) -> Tensor:
        with attn.record_attention(model) as maps:
            logits = model(images)
        out["maps"] = maps
        out["logits"] = logits if take is None else logits[:, take.to(logits.device)]
        return out["logits"]

    with torch.no_grad():
        if y is None:
            forward(x.to(device))
            counts = None
        else:
            counts = eval_counts(forward, [(x, y)], device, num_classes)
        maps = out["maps"]
        rollout = attn.rollout_row(maps, layout).float().cpu()
        heads = [_head_rows(m, layout).float().cpu() for m in maps]
    return _Seen(out["logits"].float().cpu(), rollout, heads, counts)


def _changes(a: _Seen, b: _Seen, pairs: list[list[tuple[int, int]]] | None
             ) -> tuple[list[str], Tensor]:
    """Column names and the (B, columns) float64 distances: ``rollout_change`` and, when the
    depths match (``pairs`` not None), ``change_l{l}`` (mean of heads) and ``change_l{l}_h{h}``
    (head h of A against its pair). Every comparison is over the same P patches, so all go
    through one :func:`total_variation` (a dozen tensor ops per batch, not a dozen per
    column)."""
    names, ps, qs = ["rollout_change"], [a.rollout[:, None]], [b.rollout[:, None]]
    for l, pl in enumerate(pairs or []):
        ra, rb = a.heads[l], b.heads[l]
        names.append(f"change_l{l}")
        ps.append(ra.mean(1, keepdim=True))
        qs.append(rb.mean(1, keepdim=True))
        if pl:
            names += [f"change_l{l}_h{h}" for h, _ in pl]
            ps.append(ra[:, [h for h, _ in pl]])
            qs.append(rb[:, [j for _, j in pl]])
    return names, total_variation(torch.cat(ps, 1), torch.cat(qs, 1))


def _heads(model: nn.Module) -> list[int]:
    return [b.num_heads for b in block_views(model)]


# ---------------------------------------------------------------------------- the API

def compare_models(model_a: nn.Module, model_b: nn.Module,
                   dataset: Dataset | Tensor | Sequence[Tensor], *, batch_size: int = 32,
                   join: Literal["index", "labels"] = "index",
                   labels_a: Sequence[str] | None = None, labels_b: Sequence[str] | None = None,
                   head_map: Sequence[Sequence[int]] | None = None, num_workers: int = 0,
                   progress: Callable[[float, str], None] | None = None,
                   cancel: threading.Event | None = None) -> pd.DataFrame:
    """Model A against model B on every example of ``dataset``, one row each.

    Args:
        model_a, model_b: classifiers of images (B, C, H, W) in [0, 1], of one input size and
            patch grid; each runs where its parameters are, in eval mode for the call (modes
            restored after). May be the same object.
        dataset: ``(image, label)`` pairs (labels index A's classes; a label < 0 means
            unlabelled), or unlabelled images: a (n, C, H, W) tensor or a list of (C, H, W).
        join: ``"index"``: B's output j is A's class j (the same number of classes);
            ``"labels"``: B's outputs are matched to A's classes by name (``labels_a``,
            default the dataset's ``classes``, and ``labels_b``; every class of A must be
            one of B's) and B's prediction and confidence are its softmax restricted to
            those classes, as ImageNet-A/R score 1000-class models on a 200-class subset.
        head_map: for each layer, the index in A of each of B's heads (e.g. ``[b.heads.tolist()
            for b in plan.blocks]`` of a structured pruning that removed heads); default:
            heads paired by index in layers with as many heads in both.
        progress: called as ``progress(fraction, text)`` after each batch.
        cancel: once set, no further batch starts (a forward under way stops at its next
            module); default the caller's :func:`~core.study.cancel.cancellable` event.

    Returns:
        A DataFrame, one row per example in dataset order, columns :data:`DIFF_COLUMNS`:
        ``index`` (position in ``dataset``), ``label`` (-1 unlabelled), ``pred_a``/``pred_b``
        (class indices of A), ``conf_a``/``conf_b`` (the softmax probability of the
        prediction), ``flip`` (:func:`flip_kinds`), ``rollout_change`` (the total variation
        distance between the two rollout rows over the patches, see the module doc); then,
        when both models have the same depth, ``change_l{l}`` and ``change_l{l}_h{h}``
        (:func:`layer_change` reads them). ``attrs``: ``cancelled`` (rows are the batches
        done), ``num_classes``, ``classes`` (A's names or None), ``join``, and
        ``metrics_a``/``metrics_b``: the evaluator's accuracy, loss and macro-F1 of each model
        over the rows (None when some row is unlabelled).

    Raises:
        ValueError: models of different input sizes, patch grids or label counts (without a
            label join), an empty dataset, images of another size, labels outside A's classes,
            or a dataset that fails to read (the examples and the cause named).
    """
    _check_pair(model_a, model_b)
    data = dataset if isinstance(dataset, Dataset) else _Images(dataset)
    n = len(data)
    if n == 0:
        raise ValueError("compare_models: the dataset is empty")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    classes = getattr(dataset, "classes", None)
    if labels_a is None and join == "labels":
        labels_a = classes
    n_a, n_b = int(model_a.num_classes), int(model_b.num_classes)
    if labels_a is not None and len(labels_a) != n_a:
        raise ValueError(f"model A has {n_a} classes but {len(labels_a)} label names")
    take = _label_join(n_a, n_b, join, labels_a, labels_b)
    names = list(labels_a) if labels_a is not None else (
        list(classes) if classes is not None and len(classes) == n_a else None)
    heads_a, heads_b = _heads(model_a), _heads(model_b)
    pairs = _head_pairs(heads_a, heads_b, head_map) if len(heads_a) == len(heads_b) else None
    if head_map is not None and pairs is None:
        raise ValueError(f"head_map given but model A has {len(heads_a)} blocks and model B "
                         f"{len(heads_b)}")
    event = cancel if cancel is not None else current_event()
    modes = [(m, m.training) for m in (model_a, model_b)]
    cols: dict[str, list[np.ndarray]] = {}
    totals: dict[str, list[Tensor] | None] = {"a": None, "b": None}
    labelled, cancelled, done = True, False, 0
    loader = iter(DataLoader(data, batch_size=batch_size, shuffle=False,
                             num_workers=num_workers))
    try:
        for m, _ in modes:
            m.eval()
        with cancellable(event) if event is not None else nullcontext():
            while done < n:
                if event is not None and event.is_set():
                    raise Cancelled("cancelled")
                x, y = _next_batch(loader, done, min(done + batch_size, n))
                _check_batch(x, y, model_a.input_shape, n_a, done)
                has_labels = bool((y >= 0).all())
                labelled = labelled and has_labels
                a = _see(model_a, x, y if has_labels else None, n_a)
                b = _see(model_b, x, y if has_labels else None, n_a, take)
                for key, seen in (("a", a), ("b", b)):
                    if seen.counts is not None:
                        c = [t.cpu() for t in seen.counts]
                        totals[key] = c if totals[key] is None else [
                            s + t for s, t in zip(totals[key], c)]
                _add_rows(cols, done, y.numpy(), a, b, pairs)
                done += len(y)
                if progress is not None:
                    progress(done / n, f"{done}/{n} images")
    except Cancelled:
        cancelled = True
    finally:
        for m, mode in modes:
            m.train(mode)
    df = _frame(cols)
    df.attrs.update({
        "cancelled": cancelled, "num_classes": n_a, "classes": names, "join": join,
        **{f"metrics_{k}": eval_metrics(*t) if labelled and t is not None else None
           for k, t in totals.items()}})
    return df


def _next_batch(loader, start: int, stop: int) -> tuple[Tensor, Tensor]:
    try:
        batch = next(loader)
    except StopIteration:
        raise ValueError(f"the dataset ended after {start} examples; its length says more") \
            from None
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"could not read examples {start}–{stop - 1} of the dataset: "
                         f"{type(e).__name__}: {e}") from e
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ValueError(f"the dataset must yield (image, label) pairs; examples {start}–"
                         f"{stop - 1} are not")
    x, y = batch
    return x, torch.as_tensor(y, dtype=torch.int64)


def _check_batch(x: Tensor, y: Tensor, shape: Sequence[int], num_classes: int,
                 start: int) -> None:
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"the dataset gives {_shape(x.shape[1:])} images but the models take "
                         f"{_shape(shape)} (example {start} on)")
    if int(y.max()) >= num_classes:
        raise ValueError(f"label {int(y.max())} in examples {start}–{start + len(y) - 1}, but "
                         f"model A has {num_classes} classes")


def _add_rows(cols: dict[str, list[np.ndarray]], start: int, y: np.ndarray, a: _Seen,
              b: _Seen, pairs: list[list[tuple[int, int]]] | None) -> None:
    conf_a, pred_a = a.logits.softmax(-1).max(-1)
    conf_b, pred_b = b.logits.softmax(-1).max(-1)
    row = {"index": np.arange(start, start + len(y)), "label": y,
           "pred_a": pred_a.numpy(), "pred_b": pred_b.numpy(),
           "conf_a": conf_a.double().numpy(), "conf_b": conf_b.double().numpy()}
    row["flip"] = flip_kinds(y, row["pred_a"], row["pred_b"])
    names, tv = _changes(a, b, pairs)
    row.update(zip(names, tv.numpy().T))
    for k, v in row.items():
        cols.setdefault(k, []).append(v)


def _frame(cols: dict[str, list[np.ndarray]]) -> pd.DataFrame:
    if not cols:  # cancelled before the first batch
        return pd.DataFrame({c: pd.Series(dtype=str if c == "flip" else
                                          np.int64 if c in ("index", "label", "pred_a", "pred_b")
                                          else np.float64) for c in DIFF_COLUMNS})
    return pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})


def attention_change(model_a: nn.Module, model_b: nn.Module, image: Tensor, *,
                     head_map: Sequence[Sequence[int]] | None = None) -> pd.DataFrame:
    """Per layer and head how far one image's attention moved from A to B: a DataFrame
    ``layer, head, change`` (``head`` :data:`FUSED` = -1 for the mean of the layer's heads,
    then A's head indices paired as in :func:`compare_models`), ``change`` the total
    variation distance of the class-token rows over the patches. ``image``: (C, H, W) in
    [0, 1]. The same numbers as :func:`layer_change` of that image's row of
    :func:`compare_models`. ValueError when the models differ in depth."""
    _check_pair(model_a, model_b)
    heads_a, heads_b = _heads(model_a), _heads(model_b)
    if len(heads_a) != len(heads_b):
        raise ValueError(f"model A has {len(heads_a)} blocks and model B {len(heads_b)}: "
                         "layers can only be compared one to one")
    pairs = _head_pairs(heads_a, heads_b, head_map)
    if tuple(image.shape) != tuple(model_a.input_shape):
        raise ValueError(f"the image is {_shape(image.shape)} but the models take "
                         f"{_shape(model_a.input_shape)}")
    modes = [(m, m.training) for m in (model_a, model_b)]
    try:
        for m, _ in modes:
            m.eval()
        a = _see(model_a, image[None], None, int(model_a.num_classes))
        b = _see(model_b, image[None], None, int(model_b.num_classes))
    finally:
        for m, mode in modes:
            m.train(mode)
    names, tv = _changes(a, b, pairs)
    return layer_change(pd.DataFrame(tv.numpy(), columns=names))


def change_columns(df: pd.DataFrame) -> list[tuple[str, int, int]]:
    """``(column, layer, head)`` of every per-layer change column of a
    :func:`compare_models` frame, in order (``head`` :data:`FUSED` for ``change_l{l}``)."""
    out = []
    for c in df.columns:
        m = _CHANGE.fullmatch(str(c))
        if m:
            out.append((c, int(m[1]), FUSED if m[2] is None else int(m[2])))
    return out


def layer_change(df: pd.DataFrame) -> pd.DataFrame:
    """Mean attention change over the rows of a :func:`compare_models` frame (all of them,
    a filter of them, or one: ``df.iloc[[i]]``), by layer and head: ``layer, head, change``
    sorted by layer, the fused row (head -1) first. Empty when the models differ in depth."""
    cols = change_columns(df)
    t = pd.DataFrame({"layer": [l for _, l, _ in cols], "head": [h for _, _, h in cols],
                      "change": [float(df[c].mean()) if len(df) else float("nan")
                                 for c, _, _ in cols]})
    return t.sort_values(["layer", "head"], kind="stable").reset_index(drop=True).astype(
        {"layer": np.int64, "head": np.int64, "change": np.float64})
