"""Each chart of a comparison defined once, as data: a pure function from a sweep (or a layer
sensitivity) frame to a :class:`Chart` that says everything drawn (every line's x and y, its
mean ± std band, colour and dash; every heat map's cells and colour range; titles, axis labels
and scales) and holds the numbers as a table (the chart's CSV file).

Two thin renderers draw a :class:`Chart` and decide nothing about its content:
``core.figures.draw`` (matplotlib: the PNG and SVG files, and the HTML report, which embeds
those SVGs) and ``dashboard.plots_compare.figure`` (plotly: the Compare page).
``tests/test_charts.py`` checks that both draw the same numbers, labels and scales.

Why a spec and two renderers rather than one plotly figure everywhere: plotly writes PNG/SVG
only through kaleido, which drives a Chromium browser, and the CLI writes these files on
servers and torchrun nodes that have none (``benchmarks/bench_figures.py`` measured both ways).

    from core import charts, figures
    c = charts.sweep(df, x="macs_kept", kinds={"l2-norm": "structured"})
    figures.save(figures.draw(c), "out/accuracy_vs_macs"); c.table.to_csv(...)

Imports no torch and no plotting library: the dashboard's torch-free plots import it too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

# one palette for the screen and the files (Tableau 10), so a criterion has one colour
PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6",
           "#9D755D", "#BAB0AC", "#EECA3B")

X_AXES = {  # x → (axis label, scale)
    "sparsity": ("sparsity (fraction of weights removed)", "linear"),
    "kept": ("fraction of weights kept (log)", "log"),
    "macs_kept": ("MACs kept (fraction of the dense model)", "linear"),
    "params_kept": ("parameters kept (fraction of the dense model)", "linear"),
}
PARETO_AXES = {  # x of the joint-axis charts → axis label (cost: lower is better)
    "macs_kept": "MACs kept (fraction of the dense model)",
    "latency_ms": "latency (ms per image, batch 1, this machine)",
}
# one marker per token-merging r, in the order the r values come (shape names as plotly's;
# core.figures maps them to matplotlib's)
MARKERS = ("circle", "square", "triangle-up", "diamond", "triangle-down", "cross", "x", "star")
METRICS = {"accuracy": "validation accuracy", "loss": "validation loss",
           "macro_f1": "macro-F1", "cls_cosine": "CLS attention cosine to dense",
           "rollout_cosine": "rollout cosine to dense"}
FIDELITY = ("cls_cosine", "rollout_cosine")


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def ratio_label(r: float) -> str:
    """A pruning ratio as a column label: ``dense`` for 0, else a whole percent."""
    return "dense" if r == 0 else f"{r:.0%}"


def similarity_caption(v: float) -> str:
    """A Fig. 3 cell's cosine similarity to the dense map as shown under it ('' when none)."""
    return "" if np.isnan(v) else f"{v:.2f}"


@dataclass(frozen=True, eq=False)
class Line:
    """One criterion's curve: ``y`` (the mean over seeds, one value per sparsity) against
    ``x``, with a ``y ± std`` band when some point has several seeds (``std`` None when none
    has). ``sparsity`` and ``n`` (seeds per point) go into the tooltips."""

    label: str
    group: str
    x: np.ndarray
    y: np.ndarray
    std: np.ndarray | None
    sparsity: np.ndarray
    n: np.ndarray
    colour: str
    dashed: bool


@dataclass(frozen=True, eq=False)
class Scatter:
    """Points without a line: one criterion at one token-merging ``r``, a point per sparsity
    (``sparsity`` for the tooltips), coloured by criterion, shaped by r (``marker``, a name of
    :data:`MARKERS`)."""

    label: str
    group: str
    x: np.ndarray
    y: np.ndarray
    sparsity: np.ndarray
    r: int
    colour: str
    marker: str


@dataclass(frozen=True, eq=False)
class Step:
    """A frontier through ``x``, ``y`` (ascending x) drawn as steps: from each point the line
    runs flat to the next x, then up (matplotlib ``steps-post``, plotly ``hv``)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    colour: str = "#333333"


@dataclass(frozen=True, eq=False)
class Heatmap:
    """``z`` (rows, columns) with ``rows`` and ``columns`` labels, coloured from ``zmin`` to
    ``zmax``, each cell's value written with the format spec ``fmt`` (Python's and d3's)."""

    z: np.ndarray
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    zmin: float
    zmax: float
    fmt: str = ".0f"


@dataclass(frozen=True, eq=False)
class Panel:
    """One set of axes: lines or a heat map. ``value`` names the y quantity in tooltips."""

    title: str
    xlabel: str
    ylabel: str
    value: str = ""
    xscale: str = "linear"
    xreversed: bool = False
    lines: tuple[Line, ...] = ()
    heatmap: Heatmap | None = None
    points: tuple[Scatter, ...] = ()
    step: Step | None = None


@dataclass(frozen=True, eq=False)
class Chart:
    """Panels side by side under one ``title``; ``table`` the numbers drawn (the CSV file).
    ``xlabel`` is one label under all panels; ``colorbar``/``colorscale`` those of the heat
    maps (one colour bar for all)."""

    title: str
    panels: tuple[Panel, ...]
    table: pd.DataFrame
    sharey: bool = False
    xlabel: str = ""
    colorbar: str = ""
    colorscale: str = ""


def _lines(df: pd.DataFrame, x: str, metric: str,
           kinds: Mapping[str, str] | None) -> tuple[tuple[Line, ...], pd.DataFrame]:
    from .study import curve_table  # torch: only when a chart is made

    t = curve_table(df, x, metric)
    lines = []
    for i, (crit, d) in enumerate(t.groupby("criterion", sort=False)):
        d = d.sort_values(x)
        structured = bool(kinds) and kinds.get(crit) == "structured"
        band = (d["n"] > 1).any()
        lines.append(Line(
            label=f"{crit} (structured)" if structured else crit, group=crit,
            x=d[x].to_numpy(float), y=d["mean"].to_numpy(float),
            std=d["std"].to_numpy(float) if band else None,
            sparsity=d["sparsity"].to_numpy(float), n=d["n"].to_numpy(int),
            colour=colour(i), dashed=structured))
    return tuple(lines), t


def _check_x(x: str) -> None:
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}, got {x!r}")


def sweep(df: pd.DataFrame, x: str = "sparsity", metric: str = "accuracy",
          kinds: Mapping[str, str] | None = None, title: str | None = None) -> Chart:
    """``metric`` against ``x`` (``sparsity``; ``kept`` = fraction kept on a reversed log axis
    as in ShrinkBench, compression growing to the right; ``macs_kept``; ``params_kept``), one
    line per criterion with a mean ± std band over seeds. ``kinds`` (criterion →
    "structured"/"unstructured") dashes the structured ones; by MACs kept both kinds share the
    axes. ``df``: ``core.study.sweep``'s frame."""
    _check_x(x)
    label, scale = X_AXES[x]
    name = METRICS.get(metric, metric)
    lines, table = _lines(df, x, metric, kinds)
    return Chart(title or f"{name} vs {label.split(' (')[0]}",
                 (Panel("", label, name, name, scale, x == "kept", lines),), table)


def fidelity(df: pd.DataFrame, x: str = "sparsity", kinds: Mapping[str, str] | None = None,
             title: str | None = None) -> Chart:
    """Attention fidelity: CLS→patch cosine (left) and rollout cosine (right) to the dense
    model against ``x``, mean ± std over seeds, one y axis. ``table``: both curves' numbers
    (columns suffixed ``_cls`` and ``_rollout``)."""
    _check_x(x)
    label, scale = X_AXES[x]
    panels, tables = [], []
    for k, metric in enumerate(FIDELITY):
        lines, t = _lines(df, x, metric, kinds)
        panels.append(Panel(METRICS[metric], label, "cosine to dense" if k == 0 else "",
                            METRICS[metric], scale, x == "kept", lines))
        tables.append(t)
    keys = ["criterion", "sparsity"] + ([x] if x != "sparsity" else [])
    table = tables[0].merge(tables[1], on=keys, suffixes=("_cls", "_rollout"))
    return Chart(title or f"attention fidelity vs {label.split(' (')[0]}", tuple(panels),
                 table, sharey=True)


def pareto(df: pd.DataFrame, x: str = "macs_kept", metric: str = "accuracy",
           kinds: Mapping[str, str] | None = None, title: str | None = None) -> Chart:
    """The joint axis (width × tokens): ``metric`` against a cost ``x`` (``macs_kept``, or
    ``latency_ms`` where the sweep measured it) of every criterion × sparsity × token-merging
    r, each the mean over seeds; colour by criterion, marker by r; the Pareto frontier over
    all of them (no other point as cheap and as good, :func:`core.study.pareto_front`) as a
    step line. ``table``: the points with ``pareto`` marked (the chart's CSV)."""
    from .study import joint_table  # torch: only when a chart is made

    if x not in PARETO_AXES:
        raise ValueError(f"x must be one of {list(PARETO_AXES)}, got {x!r}")
    t = joint_table(df, x, metric)
    crit_colour = {c: colour(i) for i, c in enumerate(dict.fromkeys(df["criterion"]))}
    rs = list(dict.fromkeys(int(r) for r in t["r"]))
    points = []
    for (crit, r), d in t.groupby(["criterion", "r"], sort=False):
        structured = bool(kinds) and kinds.get(crit) == "structured"
        name = f"{crit} (structured)" if structured else crit
        d = d.sort_values(x)
        points.append(Scatter(f"{name}, r={int(r)}", crit, d[x].to_numpy(float),
                              d[metric].to_numpy(float), d["sparsity"].to_numpy(float),
                              int(r), crit_colour[crit],
                              MARKERS[rs.index(int(r)) % len(MARKERS)]))
    f = t[t["pareto"]].sort_values([x, metric], ascending=[True, False])
    step = Step("Pareto frontier", f[x].to_numpy(float), f[metric].to_numpy(float))
    name = METRICS.get(metric, metric)
    label = PARETO_AXES[x]
    return Chart(title or f"{name} vs {label.split(' (')[0]}: width × tokens",
                 (Panel("", label, name, name, points=tuple(points), step=step),), t)


def sensitivity(df: pd.DataFrame, title: str | None = None) -> Chart:
    """Layer sensitivity (``core.study.layer_sensitivity``'s frame): per criterion a
    layers × ratios heat map of the accuracy drop (dense − pruned, in points), on one colour
    scale symmetric about 0."""
    lim = max(float(df["accuracy_drop"].abs().max()) * 100, 1e-6)
    panels = []
    for crit in dict.fromkeys(df["criterion"]):
        t = df[df.criterion == crit].pivot_table(index="layer", columns="ratio",
                                                 values="accuracy_drop", sort=False) * 100
        panels.append(Panel(crit, "", "", "accuracy drop (points)", heatmap=Heatmap(
            t.to_numpy(float), tuple(map(str, t.index)),
            tuple(f"{r:.0%}" for r in t.columns), -lim, lim)))
    return Chart(title or "layer sensitivity: accuracy drop when one layer is pruned",
                 tuple(panels), df,
                 xlabel="fraction of the one layer pruned", colorbar="accuracy drop (points)",
                 colorscale="RdBu_r")


def grid_labels(criteria: Sequence[str], ratios: Sequence[float], similarity: np.ndarray
                ) -> tuple[list[str], list[list[str]]]:
    """SNP's Fig. 3 grid, its words: the column labels (one per ratio) and the caption under
    each cell (its cosine similarity to the dense map), rows in ``criteria`` order. The
    grid file (``core.figures.grid_figure``), its CSV and the Attention page use these."""
    sim = np.asarray(similarity, dtype=float).reshape(len(criteria), len(ratios))
    return ([ratio_label(r) for r in ratios],
            [[similarity_caption(v) for v in row] for row in sim])


def layer_change(table: pd.DataFrame, title: str | None = None) -> Chart:
    """Attention change between two models by layer and head (``core.diff.layer_change``'s
    ``layer, head, change`` frame; head -1 the mean of the layer's heads): one heat map,
    layers as rows, the fused map then each head as columns, empty where a layer has no such
    head pair, coloured from 0 (no change) to the largest change."""
    t = table.pivot_table(index="layer", columns="head", values="change", sort=True,
                          dropna=False)
    cols = tuple("mean of heads" if h == -1 else f"head {h}" for h in t.columns)
    z = t.to_numpy(float)
    top = float(np.nanmax(z)) if np.isfinite(z).any() else 0.0
    return Chart(title or "attention change by layer and head (total variation)",
                 (Panel("", "", "", "change", heatmap=Heatmap(
                     z, tuple(f"layer {i}" for i in t.index), cols, 0.0, max(top, 1e-6),
                     ".3f")),),
                 table, colorbar="total variation", colorscale="viridis")
