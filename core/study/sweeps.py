"""Sweeps: accuracy, cost and attention fidelity of every criterion × sparsity × seed, and the
tables behind the curve charts.

Each criterion is scored once per seed on a calibration batch ``(B, C, H, W)``; along the
sparsities only the thresholds change. :class:`Measure` takes the validation images
``(n, C, H, W)`` through a model once per chunk, for the metrics and the ``(n, P)`` CLS→patch
and rollout rows together.

    from core import study
    from core.data import load_dataset
    from core.models import build_model

    model = build_model("vit-tiny", 6, pretrained=True, dataset="shapes")
    train_set, val_set = load_dataset("shapes", (32, 32), seed=0)
    df = study.sweep(model, train_set, val_set, ["magnitude", "snip", "snp"],
                     [0.0, 0.3, 0.5, 0.7], calib=64, seeds=(0,), val_samples=128)
"""
from __future__ import annotations

import copy
import math
import threading
from contextlib import nullcontext
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .. import attention as attn
from ..data.common import check_data_budget, image_size_of
from ..models import token_layout
from .calibrate import calibration, val_subset
from .cancel import Cancelled, cancellable
from .joint import check_rs, latency_ms, merged, merged_macs
from .costs import cost, dense_cost
from .criteria import criterion_info, seed_free
from .evaluation import autocast, eval_counts, eval_metrics, model_device
from .points import SCOPES, Pruned, forward_model, prune_at, prune_many, score
from .views import mean_cosine

# ``r`` and ``latency_ms`` came last with the joint axis (criterion × sparsity × r): the
# columns before them keep their order, a CSV from before reads as r = 0 without latency
SWEEP_COLUMNS = ["criterion", "sparsity", "seed", "accuracy", "loss", "macro_f1", "params_kept",
                 "macs_kept", "cls_cosine", "rollout_cosine", "r", "latency_ms"]


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
    maps (blocks × B × H × N × N float32) stay under ``attn_bytes``. The counts are the one
    evaluator's (:func:`~core.study.evaluation.eval_counts`), the attention recorded in the
    same forward. The images live where ``base`` is (the nets measured must be there too);
    ``precision`` is the evaluation's (:func:`~core.study.evaluation.autocast`)."""

    def __init__(self, base: nn.Module, val: Dataset, batch_size: int = 256,
                 attention: bool = True, attn_bytes: int = 256 * 2**20,
                 precision: str = "fp32"):
        check_data_budget(len(val), image_size_of(val), "validation images",
                          "evaluate fewer (val_samples, --val)")
        device = model_device(base)
        self.x = torch.stack([val[i][0] for i in range(len(val))]).to(device)
        self.y = torch.tensor([int(val[i][1]) for i in range(len(val))], device=device)
        self.attention = attention
        self.precision = precision
        autocast(precision, device)  # an unknown precision fails here, before any work
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
        cls_rows, roll_rows = [], []

        def forward(x: Tensor) -> Tensor:  # the logits; the chunk's attention rows kept aside
            with attn.record_attention(net) as maps:
                logits = net(x)
            layout = token_layout(net)
            cls_rows.append(attn.cls_attention(maps[-1], layout=layout).float().cpu().numpy())
            roll_rows.append(attn.rollout_row(maps, layout).float().cpu().numpy())
            return logits

        chunks = ((self.x[i:i + self.chunk], self.y[i:i + self.chunk])
                  for i in range(0, len(self.x), self.chunk))
        was_training = net.training
        net.eval()
        try:
            with autocast(self.precision, self.x.device):
                counts = eval_counts(forward if self.attention else net, chunks, self.x.device)
        finally:
            net.train(was_training)
        ev = eval_metrics(*counts)
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
          batch_size: int = 256, precision: str = "fp32",
          progress: Callable[[float, str], None] | None = None,
          cancel: threading.Event | None = None,
          shard: tuple[int, int] = (0, 1),
          skip: Collection[tuple] = (),
          on_rows: Callable[[list[dict]], None] | None = None,
          rs: Sequence[int] = (0,), latency: bool = False) -> pd.DataFrame:
    """Accuracy, cost and attention similarity of every criterion × sparsity × seed (× token
    merging r).

    Each criterion (a name, or a mapping name → its options) is scored once per seed on a
    ``calib``-image batch of ``train_set`` (seeded; None: data-free criteria only); along the
    sparsities only the thresholds change (iterative criteria such as SynFlow re-prune).
    Sparsity 0 is the dense model. Everything is measured on the same ``val_samples``
    validation images (:func:`val_subset`); ``model`` is not modified. SynFlow's schedules
    of all the sparsities run together (:func:`prune_many`). Everything runs where ``model``
    is; ``precision`` ("fp32", "bf16", "fp16") is the measurement's autocast, scoring stays
    float32.

    ``progress(fraction, text)`` is called before each point; when ``cancel`` is set the
    sweep stops within one module's forward (:func:`cancellable`), drops the point in
    progress and returns the rows done so far, with ``df.attrs["cancelled"] = True``.
    ``shard=(rank, world)`` computes only the :func:`sweep_points` whose index is ``rank``
    modulo ``world`` (a distributed sweep concatenates the ranks' frames and sorts them with
    :func:`sort_sweep`).

    ``rs``: ToMe's r (:func:`core.tokens.merge_tokens`, tokens merged per block) at which each
    pruned model is measured again, merging composing with masks and with shrunk models; one
    row per r, in the order given (default ``(0,)``: no merging). ``macs_kept`` of a merged
    point is :func:`~core.study.joint.merged_macs` over the dense model's. ``latency``: also
    the median ms of a batch-1 forward (:func:`~core.study.joint.latency_ms`, noisy and
    machine-dependent); NaN without.

    ``skip``: points ``(criterion, sparsity, seed)`` or ``(criterion, sparsity, seed, r)``
    measured before (a resumed sweep; three entries mean r = 0): neither computed nor
    returned, and a (criterion, seed) whose every point is skipped is not even scored. ``on_rows(rows)`` gets each point's row as soon as it is measured (several at once
    where a seed-free criterion's rows are copied to another seed), e.g. to write it to disk.

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
    rs = check_rs(rs)
    done_before = {(str(k[0]), round(float(k[1]), 6), int(k[2]), int(k[3]) if len(k) > 3 else 0)
                   for k in skip}

    def left(name: str, s: float, seed: int) -> list[int]:
        return [r for r in rs if (name, s, seed, r) not in done_before]

    units = [(seed, name, opts, [s for s in ratios if left(name, s, seed)])
             for seed, name, opts in sweep_points(criteria, seeds)[rank::world]]
    units = [u for u in units if u[3]]
    total, done = sum(len(u[3]) for u in units), 0
    if not total:
        df = pd.DataFrame([], columns=SWEEP_COLUMNS)
        df.attrs["cancelled"] = False
        return df
    base = copy.deepcopy(model).eval()
    scratch = copy.deepcopy(base)
    measure = Measure(base, val_subset(val_set, val_samples), batch_size, attention,
                      precision=precision)
    dense = dense_cost(base)
    if progress:
        progress(0.0, "the dense model")
    dense_ev, dense_cls, dense_roll = measure(base)
    one = measure.x[:1]  # the latency's batch: one validation image
    rows: list[dict] = []
    cancelled = False
    calib_of: dict[int, tuple[Tensor | None, Tensor | None]] = {}
    # a criterion that reads no data and draws nothing at random (magnitude, SynFlow, L2)
    # gives the same masks for every seed: measured once, its rows copied to the others
    same: dict[tuple, dict[float, dict]] = {}

    def measured(new: list[dict]) -> None:
        rows.extend(new)
        if on_rows is not None:
            on_rows(new)

    def point(p: Pruned, todo_r: Sequence[int]) -> list[dict]:
        """The measured columns of one point, one row per r of ``todo_r``."""
        c = cost(dense, p)
        rows_r = []
        with forward_model(base, p, scratch) if not p.dense else nullcontext(base) as net:
            for r in todo_r:
                out = {"params_kept": c["params_kept"], "macs_kept": c["macs_kept"],
                       "cls_cosine": math.nan, "rollout_cosine": math.nan, "r": r,
                       "latency_ms": math.nan}
                m = merged(net, r)
                if r:
                    out["macs_kept"] = merged_macs(dense, m, p) / dense.macs
                if latency:
                    out["latency_ms"] = latency_ms(m, one)
                if p.dense and not r:
                    rows_r.append({**dense_ev, **out, **(
                        {"cls_cosine": 1.0, "rollout_cosine": 1.0} if attention else {})})
                    continue
                ev, got_cls, got_roll = measure(m)
                if attention:
                    out.update(cls_cosine=mean_cosine(got_cls, dense_cls),
                               rollout_cosine=mean_cosine(got_roll, dense_roll))
                rows_r.append({**ev, **out})
        return rows_r

    try:  # a cancel stops the point in progress too, within one module's forward
        with cancellable(cancel) if cancel is not None else nullcontext():
            for seed, name, opts, todo in units:
                key = (name, tuple(sorted(opts.items())))
                if key in same:
                    measured([{**same[key][(s, r)], "seed": seed}
                              for s in todo for r in left(name, s, seed)])
                    done += len(todo)
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
                    together = dict(zip(todo, prune_many(base, name, todo, images, labels,
                                                         scope, seed, options=opts)))
                for s in todo:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("cancelled")
                    if progress:
                        progress(done / total, f"{name} at {s:.0%}, seed {seed}")
                    done += 1
                    if s and scores is None and not together:
                        scores = score(base, name, images, labels, seed, opts)
                    p = together.get(s) or prune_at(base, name, s, images, labels, scope, seed,
                                                    scores, opts)
                    measured([{"criterion": name, "sparsity": s, "seed": seed, **row}
                              for row in point(p, left(name, s, seed))])
                if seed_free(name) and len(rows) - first == len(ratios) * len(rs):
                    same[key] = {(row["sparsity"], row["r"]): row for row in rows[first:]}
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

