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

One module per concern; every public name is also an attribute of this package
(``study.sweep``, ``from core.study import sweep``):

- ``criteria``: what a registered criterion is, a pruner from its name
- ``calibrate``: the fixed validation subset (class-stratified, seed 0), the seeded
  calibration batch
- ``evaluation``: the one evaluator (counts, metrics, slices, threads) that training, sweeps
  and the dashboard all go through
- ``points``: scores → masks or shrunk model → the model of one point, evaluated
- ``costs``: parameters and MACs, dense and kept
- ``tables``: per-layer tables of one result
- ``views``: attention rows, SNP's Fig. 3 grid, explanation heat maps
- ``sweeps``: criterion × sparsity × seed sweeps and the tables behind their charts
- ``sensitivity``: one layer pruned at a time
- ``diff``: two models on the same images, example by example (``core.diff``)
- ``diff_summary``: agreement, flips by class, calibration of such a comparison
- ``amap``: AMAP's last step (evaluate, cost, log the run)
- ``cancel``: stopping a computation within one module's forward
- ``memory``: bytes a result holds
- ``merging``: token merging (ToMe) on one image, and accuracy/MACs against r
- ``joint``: width × tokens: merged pruned models' MACs, latency, the Pareto frontier
- ``page``: a page's numbers in one call (``prune_page``, ``prune_point``,
  ``attention_page``, ``explain_pair``), assembled by the functions the dashboard's caches
  assemble their pieces with (``point_report``)

A module loads on the first use of one of its names (PEP 562 ``__getattr__``), not on
``import core.study``: ``core.train`` imports the evaluator, and the pruning registry the other
modules import loads ``core.train`` (AMAP trains), so importing them all here would make
``import core.train`` import itself half-way.
"""
from __future__ import annotations

import importlib

_MODULES: dict[str, tuple[str, ...]] = {
    "criteria": ("CriterionInfo", "criterion_info", "make_pruner", "seed_free"),
    "calibrate": ("VAL_DEFINITION", "VAL_SEED", "calibration", "val_indices", "val_subset",
                  "val_subset_label"),
    "evaluation": ("DEVICE_ENV", "EVAL_PRECISIONS", "autocast", "counts_in_threads",
                   "device_label", "eval_counts", "eval_metrics", "evaluate", "macro_f1",
                   "metrics_from_counts", "model_device", "resolve_device", "supports_float64"),
    "points": ("SCOPES", "Pruned", "Scores", "evaluate_counts", "evaluate_pruned",
               "forward_model", "masked_into", "prune_at", "prune_many", "score"),
    "costs": ("DenseCost", "activation_bytes", "cost", "dense_cost", "weight_uses"),
    "tables": ("collapsed_layers", "layer_kept", "log_threshold", "mask_matrix",
               "saliency_table", "score_stats", "threshold"),
    "views": ("METHODS", "AttentionGrid", "AttentionView", "attention_grid", "attention_maps",
              "attention_row", "attention_rows", "cosine", "explain", "fig3", "head_counts",
              "mean_cosine"),
    "sweeps": ("SWEEP_COLUMNS", "Measure", "curve_table", "sort_sweep", "sweep",
               "sweep_points"),
    "sensitivity": ("SENSITIVITY_COLUMNS", "STRUCTURED_UNITS", "layer_sensitivity"),
    "diff": ("DIFF_COLUMNS", "FLIP_KINDS", "FUSED", "UNLABELLED_KINDS", "attention_change",
             "change_columns", "compare_models", "flip_kinds", "layer_change",
             "total_variation"),
    "diff_summary": ("ECE_BINS", "DiffSummary", "expected_calibration_error", "reliability",
                     "summarize"),
    "amap": ("finish_amap",),
    "cancel": ("Cancelled", "cancellable", "current_event", "hook_installed"),
    "memory": ("nbytes",),
    "merging": ("MERGE_COLUMNS", "MergeView", "merge_curve", "merge_view"),
    "joint": ("LATENCY_REPEATS", "at_r", "check_rs", "joint_table", "latency_ms", "merged",
              "merged_macs", "pareto_front"),
    "page": ("NUMBER_COLUMNS", "PageReport", "PointReport", "attention_page",
             "calibration_size", "explain_pair", "explain_point", "point_report", "point_setting",
             "prune_page", "prune_point"),
}

__all__ = [name for names in _MODULES.values() for name in names]

# names study.py had from its imports, which tests patch on this package (to assert the
# dashboard computes nothing again); not part of the API
_IMPORTED = {"compute_masks": "points", "count_macs": "costs"}

_HOME = {**{name: module for module, names in _MODULES.items() for name in names},
         **_IMPORTED}


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
