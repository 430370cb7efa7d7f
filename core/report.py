"""The files of a comparison (charts as PNG, SVG and CSV, the Fig. 3 grid, layer sensitivity)
and its self-contained HTML report: setup, sweep curves, the Fig. 3 grid,
layer sensitivity and tables in one file that opens offline (no script, no stylesheet or
font from a network: every figure is an SVG embedded as a ``data:`` URI), to send to a
colleague or hand out in class. Every chart is a ``core.charts`` definition drawn by
``core.figures``; the report embeds the very SVG files, and the Compare page draws the same
definitions in plotly.

    html = report.sweep_report(df, setup={"model": "vit-tiny", ...},
                               figures={"Accuracy vs sparsity": fig, ...})
    Path("report.html").write_text(html)
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import shlex
from typing import Mapping, Sequence

import pandas as pd
from matplotlib.figure import Figure

from . import charts, figures

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f5f5f5}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:0}
figcaption{font-size:12px;color:#555}code,pre{background:#f5f5f5;padding:2px 4px;
white-space:pre-wrap;word-break:break-all}.muted{color:#666;font-size:12px}
"""


def svg_data_uri(fig: Figure | bytes) -> str:
    """A ``data:image/svg+xml;base64,…`` URI of a figure (or of SVG bytes)."""
    data = fig if isinstance(fig, bytes) else figures.to_bytes(fig, "svg")
    return "data:image/svg+xml;base64," + base64.b64encode(data).decode("ascii")


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    return df.to_html(index=False, border=0, na_rep="–",
                      float_format=lambda v: floatfmt.format(v), escape=True)


def summary_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Criteria × sparsities of the mean ``metric`` over seeds (the table papers print)."""
    t = df.pivot_table(index="criterion", columns="sparsity", values=metric, aggfunc="mean",
                       sort=False)
    t.columns = [charts.ratio_label(c) for c in t.columns]
    return t.reset_index()


def sweep_report(df: pd.DataFrame, setup: Mapping[str, object],
                 figures: Mapping[str, Figure | bytes],
                 tables: Mapping[str, pd.DataFrame] | None = None,
                 command: str | None = None, title: str = "PruneLens: criteria compared") -> str:
    """The report as one HTML string: ``setup`` (what was run, a key → value list),
    ``figures`` (caption → matplotlib figure or SVG bytes, embedded in order), the mean
    accuracy and attention-fidelity tables of the sweep ``df``, extra ``tables`` (caption →
    DataFrame), the full sweep as a table, and the ``command`` that reproduces it."""
    esc = html.escape
    parts = _page(title, "One-shot pruning (no fine-tuning): every number is measured on the "
                  "same validation images.", setup, command)
    parts.append("<h2>Figures</h2>")
    for caption, fig in figures.items():
        parts.append(f"<figure><img alt='{esc(caption)}' src='{svg_data_uri(fig)}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("<h2>Tables</h2>")
    curves = df[df["r"] == df["r"].min()] if "r" in df.columns and len(df) else df
    parts.append("<h3>Validation accuracy (mean over seeds)</h3>"
                 + _table(summary_table(curves, "accuracy")))
    if curves["cls_cosine"].notna().any():
        parts.append("<h3>CLS attention cosine to dense (mean over seeds)</h3>"
                     + _table(summary_table(curves, "cls_cosine")))
    for caption, t in (tables or {}).items():
        parts.append(f"<h3>{esc(caption)}</h3>" + _table(t))
    parts.append("<h3>Every point</h3>" + _table(df, "{:.4f}"))
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------ the files of a comparison

CHARTS = {  # file stem → (x, metric, caption)
    "accuracy_vs_sparsity": ("sparsity", "accuracy", "Validation accuracy vs sparsity"),
    "accuracy_vs_kept": ("kept", "accuracy",
                         "Validation accuracy vs fraction of weights kept (log axis)"),
    "accuracy_vs_macs": ("macs_kept", "accuracy", "Validation accuracy vs MACs kept"),
}


def sweep_command(model: str, data: str, criteria: Sequence[str],
                  sparsities: Sequence[float], seeds: Sequence[int], val: int, calib: int,
                  scope: str, out: str = "sweep_out",
                  data_options: dict | None = None, untrained: bool = False,
                  init_seed: int = 0, revision: str | None = None,
                  rs: Sequence[int] = (0,), latency: bool = False) -> str:
    """The ``python -m core sweep ...`` line that reproduces a sweep (the dashboard shows it)."""
    args = ["python", "-m", "core", "sweep", "--model", model,
            *(["--revision", revision] if revision else []), "--data", data]
    for k, v in (data_options or {}).items():
        args += ["--data-opt", f"{k}={v if isinstance(v, str) else json.dumps(v)}"]
    if untrained:
        args += ["--untrained", "--init-seed", str(init_seed)]
    args += ["--criteria", *criteria, "--sparsities", *[f"{s:g}" for s in sparsities]]
    seeds = [int(s) for s in seeds]
    args += (["--seeds", str(len(seeds))] if seeds == list(range(len(seeds)))
             else ["--seed-list", *map(str, seeds)])
    args += ["--val", str(val), "--calib", str(calib), "--scope", scope]
    if list(rs) != [0]:
        args += ["--tome-r", *map(str, rs)]
    if latency:
        args += ["--latency"]
    return shlex.join(args + ["--out", out])


def sweep_charts(df: pd.DataFrame, kinds: Mapping[str, str]
                 ) -> dict[str, tuple[charts.Chart, str]]:
    """File stem → (chart definition, caption) of every sweep chart: the three accuracy
    curves and attention fidelity when the sweep measured it (at the smallest r of a joint
    sweep), then the joint axis: accuracy vs MACs kept of every criterion × sparsity × r, the
    Pareto frontier marked (``pareto_macs``), and vs latency when measured
    (``pareto_latency``)."""
    from .study import at_r  # torch: only when the charts are made

    curves = at_r(df)
    r0 = int(curves["r"].iloc[0]) if "r" in curves.columns and len(curves) else 0
    at = f" (ToMe r = {r0})" if r0 else ""
    out = {stem: (charts.sweep(curves, x, metric, kinds), caption + at)
           for stem, (x, metric, caption) in CHARTS.items()}
    if curves["cls_cosine"].notna().any():
        out["fidelity_vs_sparsity"] = (charts.fidelity(curves, kinds=kinds),
                                       "Attention fidelity (cosine to the dense model) vs "
                                       "sparsity" + at)
    out["pareto_macs"] = (charts.pareto(df, "macs_kept", kinds=kinds),
                          "Accuracy vs MACs kept, every criterion × sparsity × token-merging "
                          "r (mean over seeds); the step line is the Pareto frontier")
    if "latency_ms" in df.columns and df["latency_ms"].notna().any():
        out["pareto_latency"] = (charts.pareto(df, "latency_ms", kinds=kinds),
                                 "Accuracy vs measured latency (batch 1, median ms on the "
                                 "machine that ran the sweep: noisy); the step line is the "
                                 "Pareto frontier")
    return out


def sweep_figures(df: pd.DataFrame, kinds: Mapping[str, str]
                  ) -> dict[str, tuple[Figure, pd.DataFrame, str]]:
    """File stem → (matplotlib figure, its numbers as a DataFrame, caption) of every sweep
    chart (:func:`sweep_charts` drawn)."""
    return {stem: (figures.draw(c), c.table, caption)
            for stem, (c, caption) in sweep_charts(df, kinds).items()}


def grid_outputs(model, train_set, val_set, criteria: Sequence[str], ratios: Sequence[float],
                 image_index: int, calib: int, scope: str, seed: int = 0, mode: str = "cls"
                 ) -> tuple[Figure, pd.DataFrame, dict[str, str]]:
    """``(figure, similarity table, errors)`` of SNP's Fig. 3 on validation image
    ``image_index`` (``errors``: criterion → why its row is empty)."""
    import numpy as np

    from . import study

    if not 0 <= image_index < len(val_set):
        raise ValueError(f"image index must be in [0, {len(val_set) - 1}], got {image_index}")
    image, _ = val_set[image_index]
    images, labels = study.calibration(train_set, calib, seed)
    g = study.fig3(model, image, list(criteria), list(ratios), images, labels,
                   study.AttentionView(mode), scope, seed)
    cols, _ = charts.grid_labels(criteria, ratios, g.similarity)
    fig = figures.grid_figure(g.rows, g.similarity, criteria, ratios, tuple(model.grid_size),
                              image.permute(1, 2, 0).numpy().clip(0, 1),
                              title=f"{'CLS attention' if mode == 'cls' else 'rollout'} of "
                                    f"validation image {image_index} under pruning")
    table = pd.DataFrame(np.round(g.similarity, 6), index=list(criteria), columns=cols)
    table.index.name = "criterion"
    return fig, table.reset_index(), g.errors


def comparison_files(df: pd.DataFrame, kinds: Mapping[str, str],
                     setup: Mapping[str, object], command: str | None = None,
                     grid: tuple | None = None,
                     sensitivity: pd.DataFrame | None = None) -> dict[str, bytes]:
    """Every file of a comparison by name: ``sweep.csv``; per chart ``<stem>.png``,
    ``.svg`` and ``.csv`` (its numbers); the Fig. 3 ``grid.*`` when ``grid`` = (figure,
    similarity table, image index); ``sensitivity.*`` with a layer-sensitivity frame; and
    ``report.html`` embedding the same SVGs. The CLI writes them, the dashboard serves them."""
    files = {"sweep.csv": df.to_csv(index=False).encode()}
    report_figs: dict[str, bytes] = {}
    tables: dict[str, pd.DataFrame] = {}

    def add(stem: str, fig: Figure, table: pd.DataFrame, caption: str) -> None:
        files[f"{stem}.png"] = figures.to_bytes(fig, "png")
        files[f"{stem}.svg"] = figures.to_bytes(fig, "svg")
        files[f"{stem}.csv"] = table.to_csv(index=False).encode()
        report_figs[caption] = files[f"{stem}.svg"]

    for stem, (fig, table, caption) in sweep_figures(df, kinds).items():
        add(stem, fig, table, caption)
        if stem == "pareto_macs":
            tables["Pareto frontier: accuracy vs MACs kept (mean over seeds)"] = \
                table[table["pareto"]].drop(columns="pareto")
    if grid is not None:
        fig, sim, index = grid
        add("grid", fig, sim, f"Fig. 3: CLS attention of validation image {index} (cosine to "
                              "the dense map under each cell)")
        tables["Fig. 3 cosine similarity to the dense map"] = sim
    if sensitivity is not None and len(sensitivity):
        c = charts.sensitivity(sensitivity)
        add("sensitivity", figures.draw(c), c.table,
            "Layer sensitivity: accuracy drop when one layer alone is pruned")
    files["report.html"] = sweep_report(df, setup, report_figs, tables, command).encode()
    return files


# ------------------------------------------------------------------ two models compared

def _page(title: str, note: str, setup: Mapping[str, object], command: str | None) -> list[str]:
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class='muted'>Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
             f"PruneLens. {esc(note)}</p>", "<h2>Setup</h2><table>"]
    for k, v in setup.items():
        parts.append(f"<tr><th style='text-align:left'>{esc(str(k))}</th>"
                     f"<td style='text-align:left'>{esc(str(v))}</td></tr>")
    parts.append("</table>")
    if command:
        parts.append(f"<p>Reproduce with:</p><pre><code>{esc(command)}</code></pre>")
    return parts


DIFF_NUMBERS = {  # summary number → its row in the report
    "examples": "examples", "labelled": "labelled examples",
    "agreement": "agreement (same prediction)", "accuracy_a": "accuracy A",
    "accuracy_b": "accuracy B", "macro_f1_a": "macro-F1 A", "macro_f1_b": "macro-F1 B",
    "ece_a": "ECE A (15 bins)", "ece_b": "ECE B (15 bins)",
    "rollout_change_mean": "rollout change, mean (total variation)",
    "rollout_change_median": "rollout change, median"}
MAX_CONFUSION_CLASSES = 20  # a wider confusion matrix is in summary.json, not on the page


def diff_section(summary, figures: Mapping[str, bytes | Figure] | None = None) -> str:
    """The Diff section (HTML) of two models compared (``summary``: a
    ``core.diff.DiffSummary``): agreement, accuracy, ECE and rollout change; the flip counts;
    ``figures`` (caption → figure or SVG bytes: the attention change by layer and head);
    calibration bins, flips by class and both confusion matrices."""
    esc = html.escape
    n = summary.numbers
    numbers = pd.DataFrame({"": [DIFF_NUMBERS[k] for k in DIFF_NUMBERS],
                            "value": [n[k] for k in DIFF_NUMBERS]})
    parts = ["<h2>Diff: model A against model B</h2>", _table(numbers, "{:.4f}"),
             "<p class='muted'>Flips: both_right, both_wrong (the same wrong class), lost (A "
             "right, B wrong), gained (A wrong, B right), changed_wrong (both wrong, different "
             "classes). Attention change: total variation distance between the two models' "
             "class-token rollout rows over the patches (0 = the same map, 1 = no patch in "
             "common).</p>", "<h3>Flips</h3>", _table(summary.flips)]
    for caption, fig in (figures or {}).items():
        parts.append(f"<figure><img alt='{esc(caption)}' src='{svg_data_uri(fig)}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    rel = summary.reliability
    parts.append("<h3>Calibration (equal-width confidence bins, empty ones left out)</h3>"
                 + _table(rel[(rel["count_a"] > 0) | (rel["count_b"] > 0)]))
    parts.append("<h3>Flips by class</h3>" + _table(summary.by_class))
    if len(summary.confusion_a) <= MAX_CONFUSION_CLASSES:
        for which, conf in (("A", summary.confusion_a), ("B", summary.confusion_b)):
            parts.append(f"<h3>Confusion of {which} (rows true, columns predicted)</h3>"
                         + conf.to_html(border=0, escape=True))
    return "\n".join(parts)


def diff_report(summary, setup: Mapping[str, object],
                figures: Mapping[str, bytes | Figure] | None = None,
                command: str | None = None,
                title: str = "PruneLens: two models compared") -> str:
    """A self-contained HTML page: ``setup``, the command, and :func:`diff_section`."""
    parts = _page(title, "Both models see the same images; every number is measured on them.",
                  setup, command)
    parts += [diff_section(summary, figures), "</body></html>"]
    return "\n".join(parts)


def diff_files(df: pd.DataFrame, summary, setup: Mapping[str, object],
               command: str | None = None) -> dict[str, bytes]:
    """Every file of two models compared, by name: ``diff.csv`` (``df``, the per-example
    frame of ``core.diff.compare_models``), ``summary.json`` (``setup``, whether the run was
    cancelled, the evaluator's metrics of each model over the rows, and the ``summary``),
    ``layer_change.png/.svg/.csv`` (when the models have the same depth) and ``report.html``
    embedding the same SVG."""
    files = {"diff.csv": df.to_csv(index=False).encode()}
    report_figs: dict[str, bytes] = {}
    if len(summary.layer_change):
        c = charts.layer_change(summary.layer_change)
        fig = figures.draw(c)
        files["layer_change.png"] = figures.to_bytes(fig, "png")
        files["layer_change.svg"] = figures.to_bytes(fig, "svg")
        files["layer_change.csv"] = c.table.to_csv(index=False).encode()
        report_figs["Attention change by layer and head, mean over the examples"] = \
            files["layer_change.svg"]
    data = {"setup": {str(k): str(v) for k, v in setup.items()},
            "cancelled": bool(df.attrs.get("cancelled", False)),
            "evaluator": {"a": df.attrs.get("metrics_a"), "b": df.attrs.get("metrics_b")},
            **summary.to_json()}
    files["summary.json"] = (json.dumps(data, indent=1, allow_nan=False) + "\n").encode()
    files["report.html"] = diff_report(summary, setup, report_figs, command).encode()
    return files
