"""The analysis pipeline the dashboard's pages show, callable from a notebook or the CLI with
the same numbers.

Data flows one way: dataset → model → scores (once per criterion and seed) → masks or shrunk
model per sparsity → evaluation, cost, per-layer tables, attention. Plain objects in,
dataclasses or pandas DataFrames out; nothing here caches (the dashboard's state wraps these
functions in its caches) and nothing mutates the model it is given.

    from core import study
    from core.data import load_dataset
    from core.models import build_model

    model = build_model("vit-tiny", 6, pretrained=True, dataset="shapes")
    train_set, val_set = load_dataset("shapes", (32, 32), seed=0)
    df = study.sweep(model, train_set, val_set, ["magnitude", "snip", "snp"],
                     [0.0, 0.3, 0.5, 0.7], calib=64, seeds=(0,), val_samples=128)

Masked what-if models are evaluated by writing ``dense ⊙ mask`` into a scratch copy of the
model (:func:`masked_into`): the same outputs as ``apply_masks`` on a deep copy, without one
deep copy per point of a curve.
"""
from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import attention as attn
from . import boot
from .data import calibration_batch
from .data.common import check_data_budget, image_size_of
from .models import (DEFAULT_LAYOUT, TokenLayout, approx_macs, count_macs, get_adapter,
                     token_layout)
from .pruning import (Pruner, PruneResult, apply_masks, compute_masks, get_pruner,
                      layer_collapse, layer_saliency, prune)
from .train import _eval_counts, _metrics_from_counts, evaluate

SWEEP_COLUMNS = ["criterion", "sparsity", "seed", "accuracy", "loss", "macro_f1", "params_kept",
                 "macs_kept", "cls_cosine", "rollout_cosine"]
SCOPES = ("global", "layer")


# ---------------------------------------------------------------------------- criteria

@dataclass(frozen=True)
class CriterionInfo:
    """What a registered criterion is: ``kind`` ("unstructured" / "structured"),
    ``iterative`` (its masks depend on the sparsity, so no score is reused: SynFlow, and every
    criterion that overrides ``prune_model`` without offering its scores), ``needs_data``
    (a calibration batch), ``needs_training`` (runs as a training job: AMAP), and the teaching
    text (``formula`` in LaTeX, ``explanation``)."""

    name: str
    kind: str
    iterative: bool
    needs_data: bool
    needs_training: bool
    formula: str
    explanation: str


def criterion_info(name: str) -> CriterionInfo:
    p = get_pruner(name)
    cls = type(p)
    structured = p.kind == "structured"
    iterative = not structured and cls.prune_model is not Pruner.prune_model
    return CriterionInfo(name, "structured" if structured else "unstructured", iterative,
                         bool(getattr(p, "needs_data", True)),
                         bool(getattr(cls, "needs_training", False)),
                         getattr(p, "formula", ""), getattr(p, "explanation", ""))


def seed_free(name: str) -> bool:
    """True when criterion ``name`` reads no calibration data and draws nothing at random:
    its scores, and so its masks, are the same for every seed."""
    info = criterion_info(name)
    return not info.needs_data and "seed" not in {f.name for f in fields(get_pruner(name))}


def make_pruner(name: str, seed: int = 0, options: Mapping[str, Any] | None = None) -> Pruner:
    """Pruner ``name`` with ``options``; criteria that draw at random get ``seed``."""
    opts = dict(options or {})
    if "seed" in {f.name for f in fields(get_pruner(name))}:
        opts.setdefault("seed", int(seed))
    return get_pruner(name, **opts)


# ---------------------------------------------------------------------------- data

def val_subset(val_set: Dataset, n: int) -> Subset:
    """A fixed subset of ``n`` validation samples (the same for every seed and criterion:
    drawn with seed 0, in index order)."""
    n = min(int(n), len(val_set))
    if n < 1:
        raise ValueError(f"need at least one validation sample, got {n}")
    idx = np.sort(np.random.default_rng(0).permutation(len(val_set))[:n])
    return Subset(val_set, idx.tolist())


def calibration(train_set: Dataset | None, size: int, seed: int) -> tuple[Tensor | None,
                                                                         Tensor | None]:
    """The class-balanced calibration batch ``(B, C, H, W), (B,)`` (``size`` capped at the
    training split's length); ``(None, None)`` without a training split (data-free only)."""
    if train_set is None:
        return None, None
    return calibration_batch(train_set, min(int(size), len(train_set)), int(seed))


# ---------------------------------------------------------------------------- scores, pruning

@dataclass(frozen=True, eq=False)
class Scores:
    """Scores of one criterion on one calibration batch: ``weights`` ``{param key: keep-score
    tensor}`` for unstructured criteria, ``structured`` (the pruner's per-structure scores)
    for structured ones. Thresholds along a sparsity curve reuse them."""

    criterion: str
    seed: int
    weights: dict[str, Tensor] | None = None
    structured: Any = None
    options: tuple = ()


def score(model: nn.Module, criterion: str, images: Tensor | None = None,
          labels: Tensor | None = None, seed: int = 0,
          options: Mapping[str, Any] | None = None) -> Scores | None:
    """Score ``model`` (left untouched: scored on a deep copy) once. None for iterative
    criteria, whose scores depend on the sparsity."""
    info = criterion_info(criterion)
    if info.needs_training:
        raise ValueError(f"{criterion} learns its masks during training: run "
                         f"prune(model, {criterion!r}, ..., train_set=...) instead")
    if info.iterative:
        return None
    p = make_pruner(criterion, seed, options)
    opts = tuple(sorted((options or {}).items()))
    if info.kind == "structured":
        return Scores(criterion, seed, structured=p.structured_scores(
            copy.deepcopy(model), images, labels), options=opts)
    return Scores(criterion, seed, weights=p.score(copy.deepcopy(model), images, labels),
                  options=opts)


@dataclass(frozen=True, eq=False)
class Pruned:
    """One pruning result without a model copy: ``masks`` (unstructured, True = kept) or
    ``small`` (a structured criterion's shrunk model), or neither (the dense model);
    ``scores`` the keep-scores behind the masks, ``table`` core's per-layer table when the
    pruner made one."""

    criterion: str
    sparsity: float
    scope: str
    masks: dict[str, Tensor] | None = None
    scores: dict[str, Tensor] | None = None
    small: nn.Module | None = None
    table: pd.DataFrame | None = None

    @property
    def dense(self) -> bool:
        return self.masks is None and self.small is None

    def model(self, base: nn.Module) -> nn.Module:
        """A private copy (free to train or hook) of this model, ``base`` the dense one."""
        if self.small is not None:
            return copy.deepcopy(self.small)
        net = copy.deepcopy(base)
        return apply_masks(net, self.masks) if self.masks is not None else net

    def nbytes(self) -> int:
        """Memory this result owns (the masks, the shrunk model; scores are the criterion's)."""
        return nbytes(self.masks) + nbytes(self.small)


def prune_at(model: nn.Module, criterion: str, sparsity: float, images: Tensor | None = None,
             labels: Tensor | None = None, scope: str = "global", seed: int = 0,
             scores: Scores | None = None,
             options: Mapping[str, Any] | None = None) -> Pruned:
    """``model`` pruned by ``criterion`` at ``sparsity`` (0 → the dense model). With
    ``scores`` (of :func:`score` on the same model) only the threshold step runs: masks from
    the keep-scores, or select-and-shrink of a structured criterion."""
    s = round(float(sparsity), 6)
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if s == 0:
        return Pruned(criterion, 0.0, scope)
    if scores is None:
        scores = score(model, criterion, images, labels, seed, options)
    if scores is not None and scores.criterion != criterion:
        raise ValueError(f"scores of {scores.criterion!r} given for criterion {criterion!r}")
    if scores is not None and scores.weights is not None:
        return Pruned(criterion, s, scope, compute_masks(scores.weights, s, scope),
                      scores.weights)
    pruner = make_pruner(criterion, seed, options)
    if scores is not None:
        res = pruner.prune_scored(model, scores.structured, s, scope)
    else:
        res = prune(model, pruner, s, images, labels, scope=scope)
    return _from_result(criterion, s, scope, res)


def prune_many(model: nn.Module, criterion: str, sparsities: Sequence[float],
               images: Tensor | None = None, labels: Tensor | None = None,
               scope: str = "global", seed: int = 0, scores: Scores | None = None,
               options: Mapping[str, Any] | None = None) -> list[Pruned]:
    """``[prune_at(model, criterion, s, …) for s in sparsities]``. An iterative criterion
    whose pruner offers ``prune_many`` (SynFlow: every target's schedule in one batched
    forward/backward per round) runs its targets together; the others re-threshold one
    set of scores."""
    ratios = [round(float(s), 6) for s in sparsities]
    info = criterion_info(criterion)
    pruner = make_pruner(criterion, seed, options)
    todo = sorted({s for s in ratios if s})
    if not (info.iterative and hasattr(pruner, "prune_many") and len(todo) > 1):
        if scores is None and todo and not info.iterative:
            scores = score(model, criterion, images, labels, seed, options)
        return [prune_at(model, criterion, s, images, labels, scope, seed, scores, options)
                for s in ratios]
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    done = dict(zip(todo, pruner.prune_many(model, todo, images, labels, scope)))
    return [_from_result(criterion, s, scope, done[s]) if s else Pruned(criterion, 0.0, scope)
            for s in ratios]


def _from_result(criterion: str, sparsity: float, scope: str, res: PruneResult) -> Pruned:
    if res.masks is not None:
        return Pruned(criterion, sparsity, scope, res.masks, res.scores, table=res.table)
    return Pruned(criterion, sparsity, scope, small=res.model.eval(), table=res.table)


def masked_into(net: nn.Module, base: nn.Module, masks: Mapping[str, Tensor] | None) -> nn.Module:
    """Write ``base``'s weights ⊙ ``masks`` (none: the dense weights) into ``net``, a plain
    (unparametrized) copy of ``base``: a what-if model for forwards without gradients."""
    masks = masks or {}
    dense = dict(base.named_parameters())
    with torch.no_grad():
        for name, p in net.named_parameters():
            w = dense[name]
            p.copy_(w * masks[name] if name in masks else w)
    return net


@contextmanager
def forward_model(base: nn.Module, pruned: Pruned,
                  scratch: nn.Module | None = None) -> Iterator[nn.Module]:
    """The model ``pruned`` describes, for forwards without gradients: the shrunk model, or
    ``scratch`` (default: a fresh copy of ``base``) holding ``dense ⊙ mask``. Callers sharing
    ``scratch`` between threads hold a lock around this."""
    if pruned.small is not None:
        yield pruned.small
        return
    net = scratch if scratch is not None else copy.deepcopy(base)
    yield masked_into(net.eval(), base, pruned.masks)


# ---------------------------------------------------------------------------- evaluation, cost

def evaluate_pruned(base: nn.Module, pruned: Pruned, val_set: Dataset,
                    scratch: nn.Module | None = None, batch_size: int = 256) -> dict[str, float]:
    """``core.train.evaluate`` (accuracy, loss, macro-F1) of the pruned model, no fine-tuning."""
    with forward_model(base, pruned, scratch) as net:
        return evaluate(net, val_set, batch_size=batch_size)


def evaluate_counts(base: nn.Module, pruned: Pruned, val_set: Dataset, start: int, stop: int,
                    scratch: nn.Module | None = None, batch_size: int = 64,
                    workers: int = 1) -> tuple[float, int, np.ndarray]:
    """Sum of cross-entropy, sample count and ``(C, C)`` confusion counts of the pruned model on
    ``val_set[start:stop]``. Counts of disjoint slices add up, so a page can show numbers on
    the first few images at once and refine them slice by slice (:func:`metrics_from_counts`
    of the summed counts equals :func:`evaluate_pruned` on the whole set).

    ``workers`` > 1: the batches are shared out to that many threads of one intra-op thread
    each (:func:`_counts_in_threads`), for a machine whose cores other programs also use."""
    if not 0 <= start < stop <= len(val_set):
        raise ValueError(f"slice [{start}, {stop}) is outside the {len(val_set)} validation "
                         "samples")
    part = Subset(val_set, list(range(start, stop)))
    with forward_model(base, pruned, scratch) as net:
        dev = next(net.parameters()).device
        loader = DataLoader(part, batch_size=batch_size, shuffle=False)
        with torch.no_grad():
            if workers > 1 and len(loader) > 1:
                loss_sum, count, conf = _counts_in_threads(net.eval(), list(loader), dev,
                                                           workers)
            else:
                loss_sum, count, conf = _eval_counts(net.eval(), loader, dev, None)
    return float(loss_sum), int(count), conf.cpu().numpy()


def _counts_in_threads(net: nn.Module, batches: list, device: torch.device,
                       workers: int) -> tuple[Tensor, Tensor, Tensor]:
    """``_eval_counts`` over ``batches`` by ``workers`` threads taking batches in turn, each
    forward on one intra-op thread, the caller's cancel event carried over. Per-batch counts
    are summed in batch order: the same sums as one thread going through them.

    Why: two intra-op threads split every matrix multiply and wait for each other at its end,
    so when another program holds one of two cores (the browser drawing a page) a 2-thread
    forward takes 1.7× as long as a 1-thread one (deit-tiny, 12 images: 0.90 s vs 0.52 s;
    0.25 s on an idle machine). Threads that each run whole forwards never wait for each other.
    """
    out: list[tuple[Tensor, Tensor, Tensor] | None] = [None] * len(batches)
    todo = iter(range(len(batches)))
    lock = threading.Lock()
    failed: list[BaseException] = []
    event = getattr(_CANCEL, "event", None)

    def work() -> None:
        try:
            with (cancellable(event) if event is not None else nullcontext()), \
                    boot.one_thread(), torch.no_grad():
                while not failed:
                    with lock:
                        i = next(todo, None)
                    if i is None:
                        return
                    out[i] = _eval_counts(net, batches[i:i + 1], device, None)
        except BaseException as e:  # noqa: BLE001  re-raised in the caller's thread
            failed.append(e)

    threads = [threading.Thread(target=work, name=f"prunelens-eval-{k}", daemon=True)
               for k in range(min(workers, len(batches)))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if failed:
        raise failed[0]
    loss_sum, count, conf = out[0]
    for loss, n, c in out[1:]:
        loss_sum, count, conf = loss_sum + loss, count + n, conf + c
    return loss_sum, count, conf


def metrics_from_counts(counts: Sequence[tuple[float, int, np.ndarray]]) -> dict[str, float]:
    """Accuracy, mean loss and macro-F1 from the summed counts of :func:`evaluate_counts`."""
    if not counts:
        raise ValueError("no evaluation counts to combine")
    loss = sum(c[0] for c in counts)
    n = sum(c[1] for c in counts)
    conf = sum(np.asarray(c[2], dtype=np.int64) for c in counts)
    return _metrics_from_counts(torch.tensor(loss, dtype=torch.float64), torch.tensor(n),
                                torch.from_numpy(conf))


@dataclass(frozen=True)
class DenseCost:
    """Parameters and MACs (one image) of the dense model, and per Linear/Conv2d weight how
    often it is used in one forward (tokens, output pixels): masked MACs are
    ``Σ kept weights × uses``."""

    params: int
    macs: int
    uses: dict[str, int] = field(default_factory=dict)


def activation_bytes(model: nn.Module) -> int:
    """Bytes of every module output in a forward of one image (no gradients): the scale of
    the activation memory scoring needs per calibration image. Hooks are removed after."""
    total = 0

    def add(_m, _i, out) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(add) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, *model.input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


def dense_cost(model: nn.Module) -> DenseCost:
    net = copy.deepcopy(model).eval()  # hooks and mode changes on a private copy
    uses: dict[str, int] = {}
    handles = []
    for name, mod in net.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            def hook(m, _i, out, name=name):
                width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                uses[name + ".weight"] = out.numel() // width
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(torch.zeros(1, *net.input_shape))
    finally:
        for h in handles:
            h.remove()
    return DenseCost(sum(p.numel() for p in net.parameters()), count_macs(net), uses)


def cost(dense: DenseCost, pruned: Pruned) -> dict[str, float]:
    """Parameters and MACs (one image) kept, absolute and as fractions of the dense model.

    Masked models: pruned weights count as removed from both (the sparse cost the papers
    report; attention's own products stay); structured models: counted on the smaller model.
    """
    if pruned.small is not None:
        p = sum(t.numel() for t in pruned.small.parameters())
        m = count_macs(copy.deepcopy(pruned.small))
    elif pruned.masks is not None:
        removed = {k: int(v.numel() - v.count_nonzero()) for k, v in pruned.masks.items()}
        p = dense.params - sum(removed.values())
        m = dense.macs - sum(n * dense.uses.get(k, 0) for k, n in removed.items())
    else:
        p, m = dense.params, dense.macs
    return {"params": p, "macs": m, "params_kept": p / dense.params,
            "macs_kept": m / dense.macs}


# ---------------------------------------------------------------------------- per-layer tables

def layer_kept(base: nn.Module, pruned: Pruned) -> pd.DataFrame:
    """Columns ``layer, parameters, kept_fraction, collapsed``: counted from the masks, or for
    a structured criterion from the sizes of same-named weights in the shrunk model."""
    if pruned.masks is not None:
        rows = [{"layer": k, "parameters": m.numel(),
                 "kept_fraction": int(m.count_nonzero()) / m.numel()}
                for k, m in pruned.masks.items()]
    else:
        small = dict((pruned.small or base).named_parameters())
        rows = [{"layer": k, "parameters": v.numel(),
                 "kept_fraction": small[k].numel() / v.numel() if k in small else 0.0}
                for k, v in base.named_parameters() if v.ndim >= 2 and k.endswith("weight")]
    t = pd.DataFrame(rows, columns=["layer", "parameters", "kept_fraction"])
    t["collapsed"] = t["kept_fraction"] <= 0.01
    t["layer"] = t["layer"].str.removesuffix(".weight")
    return t


def saliency_table(pruned: Pruned) -> pd.DataFrame:
    """core's per-layer table (``layer_saliency``: score statistics, saliency shares)."""
    if pruned.table is not None:
        return pruned.table
    if pruned.scores is None:
        return pd.DataFrame()
    return layer_saliency(pruned.scores, pruned.masks)


def collapsed_layers(pruned: Pruned) -> int:
    return layer_collapse(pruned.masks) if pruned.masks is not None else 0


def threshold(scores: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> float | None:
    """The global cut: the largest keep-score that was pruned (None when nothing was)."""
    best = -math.inf
    for k, s in scores.items():
        cut = s[~masks[k]]
        if cut.numel():
            best = max(best, float(cut.max()))
    return best if math.isfinite(best) else None


def score_stats(scores: Mapping[str, Tensor]) -> pd.DataFrame:
    """Per layer, box-plot statistics of log10 |keep-score| over all its entries: ``q1,
    median, q3``, whiskers ``lower, upper`` (1.5 IQR), ``min, max``, and ``signed`` (any
    negative score, e.g. GraSP)."""
    rows = []
    for k, s in scores.items():
        v = np.log10(np.abs(s.detach().double().reshape(-1).cpu().numpy()) + 1e-30)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        iqr = q3 - q1
        rows.append({"layer": k.removesuffix(".weight"), "q1": q1, "median": med, "q3": q3,
                     "lower": float(v[v >= q1 - 1.5 * iqr].min()),
                     "upper": float(v[v <= q3 + 1.5 * iqr].max()),
                     "min": float(v.min()), "max": float(v.max()),
                     "signed": bool((s < 0).any())})
    return pd.DataFrame(rows)


def log_threshold(pruned: Pruned, stats: pd.DataFrame) -> float | None:
    """The global cut on :func:`score_stats`' log10 scale; None for layer scope, signed scores
    or criteria without weight scores."""
    if (pruned.scores is None or pruned.masks is None or pruned.scope != "global"
            or stats.empty or bool(stats["signed"].any())):
        return None
    cut = threshold(pruned.scores, pruned.masks)
    return None if cut is None else float(np.log10(abs(cut) + 1e-30))


def mask_matrix(masks: Mapping[str, Tensor], layer: str, max_side: int = 192) -> np.ndarray | None:
    """The kept/pruned pattern of ``layer`` as a 2-D (out, in) array in [0, 1], block-averaged
    to at most ``max_side`` per side (the value is the kept fraction of the block)."""
    m = masks.get(layer + ".weight", masks.get(layer))
    if m is None:
        return None
    m = m.detach().float().reshape(m.shape[0], -1).cpu()
    fh, fw = math.ceil(m.shape[0] / max_side), math.ceil(m.shape[1] / max_side)
    if fh > 1 or fw > 1:
        m = torch.nn.functional.avg_pool2d(m[None, None], (fh, fw), ceil_mode=True)[0, 0]
    return m.numpy()


# ---------------------------------------------------------------------------- attention

def attention_maps(model: nn.Module, image: Tensor) -> tuple[np.ndarray, ...]:
    """One (H, N, N) float32 array per block for one image (C, H, W) in [0, 1]."""
    with boot.threads_for(approx_macs(model)):  # one small image: faster on one thread
        maps = attn.capture_attention(model, image[None])
    return tuple(m[0].float().numpy() for m in maps)


def head_counts(model: nn.Module) -> list[int]:
    """Heads per block, read from the captured (B, H, N, N) maps (any family)."""
    return [int(m.shape[1]) for m in attn.capture_attention(
        model, torch.zeros(1, *model.input_shape))]


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
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        maps = attn.capture_attention(model, x)
        cls_rows.append(attn.cls_attention(maps[-1], layout=layout).float().numpy())
        roll_rows.append(attn.rollout_row(maps, layout).float().numpy())
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
    from .attribution import attribution_map

    x = image[None]
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
            "heats": {m: h.detach().float().numpy() for m, h in heats.items()}}


# ---------------------------------------------------------------------------- sweep

def _criteria(criteria: Sequence[str] | Mapping[str, Mapping[str, Any]]
              ) -> list[tuple[str, dict]]:
    if isinstance(criteria, str):
        raise ValueError("criteria must be a list of names (or a mapping name → options), "
                         f"got the string {criteria!r}")
    if isinstance(criteria, Mapping):
        return [(n, dict(o or {})) for n, o in criteria.items()]
    return [(n, {}) for n in criteria]


class Measure:
    """Accuracy, loss, macro-F1 and the attention rows of the sweep's validation images in
    one forward per chunk (``evaluate`` and :func:`attention_rows` would take two).

    The images are stacked once, (n, C, H, W), within the data budget
    (:func:`~core.data.common.check_data_budget`); chunks are sized so one chunk's attention
    maps (blocks × B × H × N × N float32) stay under ``attn_bytes``. Metrics are computed as
    ``core.train.evaluate`` does (summed float64 cross-entropy, confusion → macro-F1)."""

    def __init__(self, base: nn.Module, val: Dataset, batch_size: int = 256,
                 attention: bool = True, attn_bytes: int = 256 * 2**20):
        check_data_budget(len(val), image_size_of(val), "validation images",
                          "evaluate fewer (val_samples, --val)")
        self.x = torch.stack([val[i][0] for i in range(len(val))])
        self.y = torch.tensor([int(val[i][1]) for i in range(len(val))])
        self.attention = attention
        chunk = int(batch_size)
        if attention:
            maps = attn.capture_attention(base, self.x[:1])
            per_image = sum(m[0].numel() for m in maps) * 4
            chunk = max(1, min(chunk, attn_bytes // max(per_image, 1)))
        self.chunk = chunk

    @torch.inference_mode()
    def __call__(self, net: nn.Module) -> tuple[dict[str, float], np.ndarray | None,
                                                 np.ndarray | None]:
        """``({"accuracy", "loss", "macro_f1"}, cls rows (n, N-1), rollout rows (n, N-1))``
        of ``net`` (rows None without attention)."""
        from .train import macro_f1

        was_training = net.training
        net.eval()
        loss = torch.zeros((), dtype=torch.float64)
        conf = None
        cls_rows, roll_rows = [], []
        try:
            for i in range(0, len(self.x), self.chunk):
                x, y = self.x[i:i + self.chunk], self.y[i:i + self.chunk]
                if self.attention:
                    with attn.record_attention(net) as maps:
                        logits = net(x)
                    layout = token_layout(net)
                    cls_rows.append(attn.cls_attention(maps[-1], layout=layout).float().numpy())
                    roll_rows.append(attn.rollout_row(maps, layout).float().numpy())
                    del maps
                else:
                    logits = net(x)
                C = logits.shape[-1]
                if conf is None:
                    conf = torch.zeros(C, C, dtype=torch.int64)
                loss += torch.nn.functional.cross_entropy(logits.float(), y,
                                                          reduction="sum").double()
                conf += torch.bincount(y * C + logits.argmax(-1), minlength=C * C).view(C, C)
        finally:
            net.train(was_training)
        n = len(self.y)
        ev = {"accuracy": float(conf.diagonal().sum()) / n, "loss": float(loss) / n,
              "macro_f1": float(macro_f1(conf))}
        if not self.attention:
            return ev, None, None
        return ev, np.concatenate(cls_rows), np.concatenate(roll_rows)


def sweep_points(criteria: Sequence[str] | Mapping[str, Mapping[str, Any]],
                 seeds: Sequence[int]) -> list[tuple[int, str, dict]]:
    """The units a sweep is split into, in its row order: ``(seed, criterion, options)``,
    each scored once (a rank of a distributed sweep takes every ``world``-th one)."""
    return [(int(seed), name, opts) for seed in seeds for name, opts in _criteria(criteria)]


def sweep(model: nn.Module, train_set: Dataset | None, val_set: Dataset,
          criteria: Sequence[str] | Mapping[str, Mapping[str, Any]],
          sparsities: Sequence[float], *, calib: int = 64, seeds: Sequence[int] = (0,),
          val_samples: int = 128, scope: str = "global", attention: bool = True,
          batch_size: int = 256,
          progress: Callable[[float, str], None] | None = None,
          cancel: threading.Event | None = None,
          shard: tuple[int, int] = (0, 1)) -> pd.DataFrame:
    """Accuracy, cost and attention similarity of every criterion × sparsity × seed.

    Each criterion (a name, or a mapping name → its options) is scored once per seed on a
    ``calib``-image batch of ``train_set`` (seeded; None: data-free criteria only); along the
    sparsities only the thresholds change (iterative criteria such as SynFlow re-prune).
    Sparsity 0 is the dense model. Everything is measured on the same ``val_samples``
    validation images (:func:`val_subset`); ``model`` is not modified. SynFlow's schedules
    of all the sparsities run together (:func:`prune_many`).

    ``progress(fraction, text)`` is called before each point; when ``cancel`` is set the
    sweep stops within one module's forward (:func:`cancellable`), drops the point in
    progress and returns the rows done so far, with ``df.attrs["cancelled"] = True``.
    ``shard=(rank, world)`` computes only the :func:`sweep_points` whose index is ``rank``
    modulo ``world`` (a distributed sweep concatenates the ranks' frames and sorts them with
    :func:`sort_sweep`).

    Returns one row per point with the columns of :data:`SWEEP_COLUMNS`: ``cls_cosine`` is
    the cosine of the last block's CLS→patch map (mean of heads) to the dense model's,
    ``rollout_cosine`` the same for the rollout's CLS row, both averaged over the validation
    images (NaN with ``attention=False``).
    """
    crits = _criteria(criteria)
    ratios = [round(float(s), 6) for s in sparsities]
    bad = [s for s in ratios if not 0.0 <= s < 1.0]
    if bad or not ratios or not crits:
        raise ValueError(f"need criteria and sparsities in [0, 1); got {len(crits)} criteria "
                         f"and sparsities {list(sparsities)}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if not seeds:
        raise ValueError("need at least one seed")
    rank, world = int(shard[0]), int(shard[1])
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    for name, _ in crits:
        if criterion_info(name).needs_training:
            raise ValueError(f"{name} learns its masks during training and has no one-shot "
                             "sweep; leave it out")
    points = sweep_points(criteria, seeds)[rank::world]
    base = copy.deepcopy(model).eval()
    scratch = copy.deepcopy(base)
    measure = Measure(base, val_subset(val_set, val_samples), batch_size, attention)
    dense = dense_cost(base)
    if progress:
        progress(0.0, "the dense model")
    dense_ev, dense_cls, dense_roll = measure(base)
    rows: list[dict] = []
    total, done = len(points) * len(ratios), 0
    cancelled = False
    calib_of: dict[int, tuple[Tensor | None, Tensor | None]] = {}
    # a criterion that reads no data and draws nothing at random (magnitude, SynFlow, L2)
    # gives the same masks for every seed: measured once, its rows copied to the others
    same: dict[tuple, list[dict]] = {}

    def point(p: Pruned) -> dict:
        """The measured columns of one point."""
        c = cost(dense, p)
        out = {"params_kept": c["params_kept"], "macs_kept": c["macs_kept"],
               "cls_cosine": math.nan, "rollout_cosine": math.nan}
        if p.dense:
            return {**dense_ev, **out, **({"cls_cosine": 1.0, "rollout_cosine": 1.0}
                                          if attention else {})}
        with forward_model(base, p, scratch) as net:
            ev, got_cls, got_roll = measure(net)
        if attention:
            out.update(cls_cosine=mean_cosine(got_cls, dense_cls),
                       rollout_cosine=mean_cosine(got_roll, dense_roll))
        return {**ev, **out}

    try:  # a cancel stops the point in progress too, within one module's forward
        with cancellable(cancel) if cancel is not None else nullcontext():
            for seed, name, opts in points:
                key = (name, tuple(sorted(opts.items())))
                if key in same:
                    rows += [{**row, "seed": seed} for row in same[key]]
                    done += len(same[key])
                    continue
                first = len(rows)
                if seed not in calib_of:
                    calib_of = {seed: calibration(train_set, calib, seed)}
                images, labels = calib_of[seed]
                scores, together = None, {}
                if criterion_info(name).iterative:
                    # SynFlow: the schedules of all sparsities together, one batched pass a round
                    if progress:
                        progress(done / total, f"{name} at every sparsity together, seed {seed}")
                    together = dict(zip(ratios, prune_many(base, name, ratios, images, labels,
                                                           scope, seed, options=opts)))
                for s in ratios:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("cancelled")
                    if progress:
                        progress(done / total, f"{name} at {s:.0%}, seed {seed}")
                    done += 1
                    if s and scores is None and not together:
                        scores = score(base, name, images, labels, seed, opts)
                    p = together.get(s) or prune_at(base, name, s, images, labels, scope, seed,
                                                    scores, opts)
                    rows.append({"criterion": name, "sparsity": s, "seed": seed, **point(p)})
                if seed_free(name):
                    same[key] = rows[first:]
    except Cancelled:  # the point in progress is dropped; the rows done are kept
        cancelled = True
    if progress and not cancelled:
        progress(1.0, "done")
    df = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    df.attrs["cancelled"] = cancelled
    return df


def sort_sweep(df: pd.DataFrame, criteria: Sequence[str], seeds: Sequence[int]) -> pd.DataFrame:
    """Rows in :func:`sweep`'s order (seed, then criterion as given, then sparsity as run),
    e.g. after concatenating the ranks of a distributed sweep."""
    seed_rank = {int(s): i for i, s in enumerate(seeds)}
    crit_rank = {c: i for i, c in enumerate(criteria)}
    key = pd.DataFrame({"s": df["seed"].map(seed_rank), "c": df["criterion"].map(crit_rank),
                        "o": df.groupby(["seed", "criterion"]).cumcount()})
    order = key.sort_values(["s", "c", "o"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


def curve_table(df: pd.DataFrame, x: str = "sparsity", metric: str = "accuracy") -> pd.DataFrame:
    """The numbers behind one curve chart: per criterion and x, the mean and std of ``metric``
    over seeds (``x="kept"`` is 1 − sparsity; ``macs_kept`` / ``params_kept`` averaged per
    sparsity). Columns ``criterion, sparsity, x, mean, std, n``."""
    g = df.groupby(["criterion", "sparsity"], sort=False)
    out = g[metric].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out["std"] = out["std"].fillna(0.0)
    if x == "kept":
        out.insert(0, x, 1.0 - out.index.get_level_values("sparsity").to_numpy())
    elif x != "sparsity":
        out.insert(0, x, g[x].mean())
    out = out.reset_index()
    order = {c: i for i, c in enumerate(dict.fromkeys(df["criterion"]))}
    return (out.assign(_o=out["criterion"].map(order))
            .sort_values(["_o", "sparsity"], kind="stable").drop(columns="_o")
            .reset_index(drop=True))


# ---------------------------------------------------------------------------- layer sensitivity

SENSITIVITY_COLUMNS = ["criterion", "layer", "ratio", "accuracy", "accuracy_drop"]
STRUCTURED_UNITS = ("qk", "v", "mlp")


def layer_sensitivity(model: nn.Module, train_set: Dataset | None, val_set: Dataset,
                      criteria: Sequence[str], ratios: Sequence[float] = (0.3, 0.6, 0.9), *,
                      calib: int = 64, seed: int = 0, val_samples: int = 128,
                      batch_size: int = 256,
                      progress: Callable[[float, str], None] | None = None,
                      cancel: threading.Event | None = None) -> pd.DataFrame:
    """Prune one layer at a time (NNI's sensitivity analysis): for an unstructured criterion
    each scored weight matrix alone at each ratio (its lowest keep-scores removed, every other
    layer dense); for a structured one each block's q/k pairs, v channels or FFN neurons alone
    (layers named ``blocks.<i>.qk`` / ``.v`` / ``.mlp``). Scores once per criterion.

    Returns the columns of :data:`SENSITIVITY_COLUMNS`, ``accuracy_drop`` = dense accuracy −
    accuracy (positive: worse), on the :func:`val_subset` of ``val_samples`` images. A
    ``cancel`` set stops before the next evaluation (``df.attrs["cancelled"]``)."""
    from .pruning.ratios import StructuredRatios

    ratios = [round(float(r), 6) for r in ratios]
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ValueError(f"need ratios in (0, 1), got {list(ratios)}")
    base = copy.deepcopy(model).eval()
    scratch = copy.deepcopy(base)
    measure = Measure(base, val_subset(val_set, val_samples), batch_size, attention=False)
    dense_acc = measure(base)[0]["accuracy"]
    images, labels = calibration(train_set, calib, seed)
    plans: list[tuple[str, str, list[tuple[str, Callable[[float], Pruned]]]]] = []
    for name in criteria:
        info = criterion_info(name)
        if info.needs_training:
            raise ValueError(f"{name} learns its masks during training: no sensitivity")
        sc = score(base, name, images, labels, seed)
        units: list[tuple[str, Callable[[float], Pruned]]] = []
        if info.kind == "structured":
            depth = get_adapter(base).depth(base)
            for i in range(depth):
                for comp in STRUCTURED_UNITS:
                    def one(r: float, i=i, comp=comp, sc=sc, name=name) -> Pruned:
                        per = {c: tuple(r if (c == comp and j == i) else 0.0
                                        for j in range(depth)) for c in STRUCTURED_UNITS}
                        rat = StructuredRatios(per["qk"], per["v"], per["mlp"], (0.0,) * depth)
                        pr = make_pruner(name, seed, {"ratios": rat})
                        if sc is not None:
                            res = pr.prune_scored(base, sc.structured, None)
                        else:
                            res = prune(base, pr, None, images, labels)
                        return _from_result(name, r, "layer", res)
                    units.append((f"blocks.{i}.{comp}", one))
        else:
            weights = sc.weights if sc is not None else make_pruner(name, seed).score(
                copy.deepcopy(base), images, labels)
            for key in weights:
                def one(r: float, key=key, w=weights, name=name) -> Pruned:
                    masks = {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}
                    masks.update(compute_masks({key: w[key]}, r, "layer"))
                    return Pruned(name, r, "layer", masks, w)
                units.append((key.removesuffix(".weight"), one))
        plans.append((name, info.kind, units))
    total = sum(len(u) for _, _, u in plans) * len(ratios)
    done, rows, cancelled = 0, [], False
    for name, _, units in plans:
        for layer, make in units:
            for r in ratios:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                if progress:
                    progress(done / total, f"{name}: {layer} at {r:.0%}")
                done += 1
                with forward_model(base, make(r), scratch) as net:
                    acc = measure(net)[0]["accuracy"]
                rows.append({"criterion": name, "layer": layer, "ratio": r, "accuracy": acc,
                             "accuracy_drop": dense_acc - acc})
            if cancelled:
                break
        if cancelled:
            break
    if progress and not cancelled:
        progress(1.0, "done")
    df = pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)
    df.attrs["cancelled"] = cancelled
    df.attrs["dense_accuracy"] = dense_acc
    return df


# ---------------------------------------------------------------------------- AMAP's last step

def finish_amap(result: PruneResult, val_set: Dataset, budget: float, dense: DenseCost,
                store=None, run_id: str | None = None, batch_size: int = 256) -> dict:
    """AMAP's exported model (``prune(model, "amap", ...)``'s result) evaluated on
    ``val_set`` and costed against the dense model; with a run ``store`` the numbers are
    logged as epoch 1 of ``run_id``, the model saved as its checkpoint and the run closed with
    AMAP's status. Returns ``attention_ratio, budget, params, macs, params_kept, macs_kept,
    val_acc, val_loss, val_f1, steps``."""
    small = result.model.eval()
    ev = evaluate(small, val_set, batch_size=batch_size)
    c = cost(dense, Pruned("amap", 1.0 - budget, "layer", small=small))
    extra = result.extra
    out = {"attention_ratio": extra["attention_ratio"], "budget": budget, **c,
           "val_acc": ev["accuracy"], "val_loss": ev["loss"], "val_f1": ev["macro_f1"],
           "steps": extra["steps"]}
    if store is not None:
        store.log_epoch(run_id, 1, {"val_acc": ev["accuracy"], "val_loss": ev["loss"],
                                    "val_f1": ev["macro_f1"],
                                    "attention_macs_ratio": extra["attention_ratio"],
                                    "params": c["params"], "macs": c["macs"],
                                    "steps": extra["steps"]})
        store.save_checkpoint(run_id, small, "last",
                              metadata={"pruner": "amap", "budget": str(budget),
                                        "steps": str(extra["steps"])})
        store.finish(run_id, extra["status"], extra["reason"])
    return out


# ---------------------------------------------------------------------------- memory

def nbytes(obj: object) -> int:
    """Bytes of the tensors and arrays in ``obj`` (modules: parameters and buffers; nested
    dicts, lists, tuples and dataclasses followed), for caches bounded by memory."""
    if obj is None:
        return 0
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, nn.Module):
        return sum(nbytes(t) for t in (*obj.parameters(), *obj.buffers()))
    if isinstance(obj, pd.DataFrame):
        return int(obj.memory_usage(deep=False).sum())
    if isinstance(obj, Mapping):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if hasattr(obj, "__dataclass_fields__"):
        return sum(nbytes(getattr(obj, f.name)) for f in fields(obj))
    return 0


# ---------------------------------------------------------------------------- cancellation

class Cancelled(Exception):
    """Raised inside a computation run under :func:`cancellable` once its event is set."""


_CANCEL = threading.local()
_CANCEL_HOOK: list = []  # [handle, number of active blocks]
_CANCEL_HOOK_LOCK = threading.Lock()


def _check_cancel(_module: nn.Module, _inputs: tuple) -> None:
    event = getattr(_CANCEL, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("cancelled")


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Within this block, in this thread, every module forward first checks ``event`` and
    raises :class:`Cancelled` once it is set: scoring, pruning and evaluation stop within one
    layer's forward, without each criterion having to poll. (A global forward pre-hook that
    looks at a thread-local event, installed while any such block is active: other threads
    pay one attribute lookup per module forward meanwhile, nothing otherwise.)"""
    with _CANCEL_HOOK_LOCK:
        if not _CANCEL_HOOK:
            _CANCEL_HOOK[:] = [
                torch.nn.modules.module.register_module_forward_pre_hook(_check_cancel), 0]
        _CANCEL_HOOK[1] += 1
    previous = getattr(_CANCEL, "event", None)
    _CANCEL.event = event
    try:
        if event.is_set():
            raise Cancelled("cancelled")
        yield
    finally:
        _CANCEL.event = previous
        with _CANCEL_HOOK_LOCK:
            _CANCEL_HOOK[1] -= 1
            if _CANCEL_HOOK[1] == 0:
                _CANCEL_HOOK[0].remove()
                _CANCEL_HOOK.clear()
