"""The summary of two models compared (:func:`core.study.diff.compare_models`' frame, or any
selection of its rows): agreement, accuracy and macro-F1 of each model, flips overall and by
class, both confusion matrices, calibration, and the mean attention change by layer and head.

Calibration: expected calibration error over 15 equal-width confidence bins (Guo et al. 2017,
"On Calibration of Modern Neural Networks"): bin m holds the examples with confidence in
((m−1)/15, m/15], and ``ECE = Σ_m |B_m| / n · |acc(B_m) − conf(B_m)|``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .diff import DIFF_COLUMNS, FLIP_KINDS, UNLABELLED_KINDS, layer_change
from .evaluation import macro_f1

ECE_BINS = 15


def reliability(confidence: np.ndarray, correct: np.ndarray,
                bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-width confidence bin (bin m: ``lower < confidence ≤ upper``, the first bin
    also holding 0): ``bin, lower, upper, count, confidence`` (mean), ``accuracy`` (NaN where
    empty)."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.digitize(conf, edges[1:-1], right=True)  # edges[m] < c ≤ edges[m + 1]
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, minlength=bins) / count
        acc = np.bincount(which, ok, minlength=bins) / count
    return pd.DataFrame({"bin": np.arange(bins), "lower": edges[:-1], "upper": edges[1:],
                         "count": count, "confidence": mean_conf, "accuracy": acc})


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): ``Σ_m |B_m| / n · |acc(B_m) − conf(B_m)|`` over ``bins``
    equal-width bins of the confidence (see :func:`reliability`); NaN for no examples."""
    r = reliability(confidence, correct, bins)
    n = int(r["count"].sum())
    if n == 0:
        return float("nan")
    used = r[r["count"] > 0]
    return float((used["count"] * (used["accuracy"] - used["confidence"]).abs()).sum() / n)


@dataclass(frozen=True, eq=False)
class DiffSummary:
    """What :func:`summarize` finds in a :func:`compare_models` frame.

    ``numbers``: ``examples``, ``labelled``, ``agreement`` (share of examples where the two
    predictions agree), ``accuracy_a``/``accuracy_b`` and ``macro_f1_a``/``macro_f1_b`` (over
    the labelled rows), ``ece_a``/``ece_b`` (15 bins), ``rollout_change_mean``/``_median``;
    ``flips``: ``kind, count, fraction`` (every kind of :data:`FLIP_KINDS`, then the
    unlabelled kinds if any row is unlabelled); ``by_class``: per true class ``label, name,
    examples, accuracy_a, accuracy_b`` and one count column per flip kind; ``confusion_a``/
    ``confusion_b``: (C, C) counts, rows true class, columns predicted, indexed by the names;
    ``reliability``: the calibration bins of both models (``count_a, confidence_a,
    accuracy_a``, same for b); ``layer_change``: :func:`layer_change`."""

    numbers: dict[str, float]
    flips: pd.DataFrame
    by_class: pd.DataFrame
    confusion_a: pd.DataFrame
    confusion_b: pd.DataFrame
    reliability: pd.DataFrame
    layer_change: pd.DataFrame

    def to_json(self) -> dict:
        """Plain JSON-able data (NaN as None): ``numbers`` and every table as records,
        confusions as lists of rows with their ``classes``."""
        def clean(v: object) -> object:
            if isinstance(v, float) and not np.isfinite(v):
                return None
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (np.floating,)):
                return clean(float(v))
            return v

        def records(t: pd.DataFrame) -> list[dict]:
            return [{k: clean(v) for k, v in r.items()} for r in t.to_dict("records")]
        return {"numbers": {k: clean(v) for k, v in self.numbers.items()},
                "flips": records(self.flips), "by_class": records(self.by_class),
                "classes": [str(c) for c in self.confusion_a.index],
                "confusion_a": self.confusion_a.to_numpy().tolist(),
                "confusion_b": self.confusion_b.to_numpy().tolist(),
                "reliability": records(self.reliability),
                "layer_change": records(self.layer_change)}


def _confusion(y: np.ndarray, pred: np.ndarray, names: list[str]) -> pd.DataFrame:
    C = len(names)
    m = np.bincount(y * C + pred, minlength=C * C).reshape(C, C)
    return pd.DataFrame(m, index=pd.Index(names, name="true"),
                        columns=pd.Index(names, name="predicted"))


def summarize(df: pd.DataFrame, classes: Sequence[str] | None = None,
              bins: int = ECE_BINS) -> DiffSummary:
    """Agreement, accuracy, flips (overall and by class), confusion matrices and calibration
    of both models, and the mean attention change by layer and head, of a
    :func:`compare_models` frame or any selection of its rows. ``classes``: class names
    (default the frame's ``attrs["classes"]``, else ``class 0``, ``class 1`` …)."""
    missing = [c for c in DIFF_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"not a compare_models frame: no column {', '.join(missing)}")
    C = int(df.attrs.get("num_classes") or 0)
    C = max(C, int(df[["label", "pred_a", "pred_b"]].to_numpy().max(initial=-1)) + 1, 1)
    names = list(classes if classes is not None else df.attrs.get("classes") or
                 [f"class {k}" for k in range(C)])
    if len(names) != C:
        raise ValueError(f"{len(names)} class names for {C} classes")
    lab = df[df["label"] >= 0]
    y, pa, pb = (lab[c].to_numpy(np.int64) for c in ("label", "pred_a", "pred_b"))
    ok_a, ok_b = pa == y, pb == y
    conf_a, conf_b = _confusion(y, pa, names), _confusion(y, pb, names)
    nan = float("nan")
    numbers = {
        "examples": int(len(df)), "labelled": int(len(lab)),
        "agreement": float((df["pred_a"] == df["pred_b"]).mean()) if len(df) else nan,
        "accuracy_a": float(ok_a.mean()) if len(lab) else nan,
        "accuracy_b": float(ok_b.mean()) if len(lab) else nan,
        "macro_f1_a": float(macro_f1(torch.tensor(conf_a.to_numpy()))) if len(lab) else nan,
        "macro_f1_b": float(macro_f1(torch.tensor(conf_b.to_numpy()))) if len(lab) else nan,
        "ece_a": expected_calibration_error(lab["conf_a"], ok_a, bins),
        "ece_b": expected_calibration_error(lab["conf_b"], ok_b, bins),
        "rollout_change_mean": float(df["rollout_change"].mean()) if len(df) else nan,
        "rollout_change_median": float(df["rollout_change"].median()) if len(df) else nan,
    }
    kinds = list(FLIP_KINDS) + (list(UNLABELLED_KINDS) if len(lab) < len(df) else [])
    counts = df["flip"].value_counts().reindex(kinds, fill_value=0).astype(np.int64)
    flips = pd.DataFrame({"kind": kinds, "count": counts.to_numpy(),
                          "fraction": counts.to_numpy() / max(len(df), 1)})
    per = pd.DataFrame({k: np.bincount(y[lab["flip"].to_numpy() == k], minlength=C)
                        for k in FLIP_KINDS})
    n_class = np.bincount(y, minlength=C)
    with np.errstate(invalid="ignore", divide="ignore"):
        by_class = pd.DataFrame({
            "label": np.arange(C), "name": names, "examples": n_class,
            "accuracy_a": np.bincount(y, ok_a.astype(float), minlength=C) / n_class,
            "accuracy_b": np.bincount(y, ok_b.astype(float), minlength=C) / n_class,
            **{k: per[k].to_numpy(np.int64) for k in FLIP_KINDS}})
    ra, rb = reliability(lab["conf_a"], ok_a, bins), reliability(lab["conf_b"], ok_b, bins)
    rel = ra[["bin", "lower", "upper"]].copy()
    for suffix, r in (("a", ra), ("b", rb)):
        for c in ("count", "confidence", "accuracy"):
            rel[f"{c}_{suffix}"] = r[c]
    return DiffSummary(numbers, flips, by_class, conf_a, conf_b, rel, layer_change(df))
