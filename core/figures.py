"""Static figures for files and papers: the sweep curves, SNP's Fig. 3 grid and the layer
sensitivity heat map, as matplotlib figures (pure functions: data in, figure out) saved as
PNG and SVG at publication size. The CLI, the HTML report and the dashboard's export buttons
all draw their files here; the dashboard's on-screen charts are plotly.

Why matplotlib and not plotly's static export: plotly writes PNG/SVG only through kaleido,
which drives a Chromium (and tries to download one, impossible offline); driving Debian's
Chromium ourselves works but starts a browser per export session and loads plotly.js into
it. ``benchmarks/bench_figures.py`` measures both for the same four sweep charts (figures in
the README): matplotlib took less than half the wall time for no more CPU, and needs no
browser on the machine (a server or a torchrun node has none), which decided it. SVG text stays text (``svg.fonttype: none``) so
titles can be searched and edited in a drawing program.

    from core import figures, study
    df = study.sweep(...)
    fig = figures.sweep_curves(df, x="macs_kept")
    figures.save(fig, "out/accuracy_vs_macs")     # → .png and .svg
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: never a GUI backend (servers, torchrun nodes)

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .study import curve_table  # noqa: E402

DPI = 300
SIZE = (6.4, 4.0)  # inches: one column of a two-column paper at full page width / 2 + margin
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
         "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8,
         "legend.frameon": False, "svg.hashsalt": "prunelens"}

X_AXES = {
    "sparsity": ("sparsity (fraction of weights removed)", "linear"),
    "kept": ("fraction of weights kept (log)", "log"),
    "macs_kept": ("MACs kept (fraction of the dense model)", "linear"),
    "params_kept": ("parameters kept (fraction of the dense model)", "linear"),
}
METRICS = {"accuracy": "validation accuracy", "loss": "validation loss",
           "macro_f1": "macro-F1", "cls_cosine": "CLS attention cosine to dense",
           "rollout_cosine": "rollout cosine to dense"}


def _figure(size: tuple[float, float] = SIZE, **kw) -> Figure:
    with plt.rc_context(STYLE):
        return Figure(figsize=size, dpi=DPI, layout="constrained", **kw)


def _draw_curves(ax, df: pd.DataFrame, x: str, metric: str,
                 kinds: Mapping[str, str] | None) -> None:
    t = curve_table(df, x, metric)
    xcol = x
    for i, (crit, d) in enumerate(t.groupby("criterion", sort=False)):
        d = d.sort_values(xcol)
        color = f"C{i % 10}"
        ls = "--" if kinds and kinds.get(crit) == "structured" else "-"
        label = f"{crit} (structured)" if ls == "--" else crit
        ax.plot(d[xcol], d["mean"], ls, marker="o", ms=3, lw=1.4, color=color, label=label)
        if (d["n"] > 1).any():
            ax.fill_between(d[xcol], d["mean"] - d["std"], d["mean"] + d["std"],
                            color=color, alpha=0.18, lw=0)
    label, scale = X_AXES[x]
    ax.set_xscale(scale)
    if x == "kept":
        ax.invert_xaxis()  # ShrinkBench: compression grows to the right
    ax.set_xlabel(label)
    ax.set_ylabel(METRICS.get(metric, metric))
    ax.grid(alpha=0.3, lw=0.5)


def sweep_curves(df: pd.DataFrame, x: str = "sparsity", metric: str = "accuracy",
                 title: str | None = None, kinds: Mapping[str, str] | None = None) -> Figure:
    """``metric`` against ``x`` (``sparsity``, ``kept`` = fraction kept on a log axis as in
    ShrinkBench, ``macs_kept`` or ``params_kept``), one line per criterion with a mean ± std
    band over seeds. ``kinds`` (criterion → "structured"/"unstructured") dashes the
    structured ones; by MACs kept both kinds share the axes."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {list(X_AXES)}, got {x!r}")
    fig = _figure()
    ax = fig.add_subplot()
    with plt.rc_context(STYLE):
        _draw_curves(ax, df, x, metric, kinds)
        ax.set_title(title or f"{METRICS.get(metric, metric)} vs "
                              f"{X_AXES[x][0].split(' (')[0]}")
        ax.legend(loc="best")
    return fig


def fidelity_curves(df: pd.DataFrame, x: str = "sparsity", title: str | None = None,
                    kinds: Mapping[str, str] | None = None) -> Figure:
    """Attention fidelity: CLS→patch cosine (left) and rollout cosine (right) to the dense
    model against ``x``, mean ± std over seeds."""
    fig = _figure((SIZE[0] * 1.5, SIZE[1]))
    axes = fig.subplots(1, 2, sharey=True)
    with plt.rc_context(STYLE):
        for ax, metric in zip(axes, ("cls_cosine", "rollout_cosine")):
            _draw_curves(ax, df, x, metric, kinds)
            ax.set_title(METRICS[metric])
        axes[1].set_ylabel("")
        axes[0].legend(loc="best")
        fig.suptitle(title or "attention fidelity vs sparsity")
    return fig


def grid_figure(rows: Sequence[Sequence[np.ndarray | None]], similarity: np.ndarray,
                criteria: Sequence[str], ratios: Sequence[float], grid_size: tuple[int, int],
                image: np.ndarray | None = None, title: str | None = None) -> Figure:
    """SNP's Fig. 3 as one figure: ``rows[i][j]`` the (N-1,) CLS→patch row of criterion i at
    ratio j shown on the (gh, gw) patch grid, each cell's cosine similarity to the dense map
    under it, criteria as row labels, ratios as column labels, one colour bar (each map
    normalised to its maximum, as the dashboard shows them). ``image`` (H, W, 3) in [0, 1]
    adds the input at the left."""
    gh, gw = grid_size
    nr, nc = len(criteria), len(ratios)
    extra = 1 if image is not None else 0
    cell = 0.9
    fig = _figure((cell * (nc + extra) + 1.6, cell * nr + 0.9))
    with plt.rc_context(STYLE):
        axes = np.atleast_2d(fig.subplots(nr, nc + extra, squeeze=False))
        last = None
        for i in range(nr):
            for j in range(nc + extra):
                ax = axes[i, j]
                ax.set_xticks([])
                ax.set_yticks([])
                for sp in ax.spines.values():
                    sp.set_visible(False)
                if extra and j == 0:
                    if i == 0:
                        ax.imshow(image)
                        ax.set_title("input", fontsize=8)
                    else:
                        ax.axis("off")
                    continue
                c = j - extra
                row = rows[i][c]
                if i == 0:
                    ax.set_title("dense" if ratios[c] == 0 else f"{ratios[c]:.0%}", fontsize=8)
                if c == 0:
                    ax.set_ylabel(criteria[i], fontsize=8, rotation=0, ha="right", va="center")
                if row is None:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7,
                            transform=ax.transAxes)
                    continue
                m = np.asarray(row, dtype=float).reshape(gh, gw)
                peak = float(np.abs(m).max()) or 1.0
                last = ax.imshow(m / peak, cmap="viridis", vmin=0, vmax=1)
                sim = similarity[i, c]
                ax.set_xlabel("" if np.isnan(sim) else f"{sim:.2f}", fontsize=7, labelpad=1)
        if last is not None:
            cb = fig.colorbar(last, ax=axes, shrink=0.8, pad=0.02)
            cb.set_label("attention (÷ its max)")
        fig.suptitle(title or "CLS attention under pruning (cosine to dense below each map)")
        fig.supxlabel("pruning ratio →", fontsize=8)
    return fig


def sensitivity_figure(df: pd.DataFrame, title: str | None = None) -> Figure:
    """Layer sensitivity (``core.study.layer_sensitivity``): per criterion a layers × ratios
    heat map of the accuracy drop (dense − pruned, in points), one shared colour bar."""
    crits = list(dict.fromkeys(df["criterion"]))
    n_layers = max(df.groupby("criterion")["layer"].nunique().max(), 1)
    n_ratios = df["ratio"].nunique()
    fig = _figure((1.2 + len(crits) * (1.6 + 0.35 * n_ratios), 1.4 + 0.2 * n_layers))
    lim = max(float(df["accuracy_drop"].abs().max()) * 100, 1e-6)
    with plt.rc_context(STYLE):
        axes = fig.subplots(1, len(crits), squeeze=False)[0]
        im = None
        for ax, crit in zip(axes, crits):
            d = df[df.criterion == crit]
            t = d.pivot_table(index="layer", columns="ratio", values="accuracy_drop",
                              sort=False) * 100
            im = ax.imshow(t.to_numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(t.shape[1]), [f"{r:.0%}" for r in t.columns])
            ax.set_yticks(range(t.shape[0]), list(t.index), fontsize=6)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(crit)
            for (a, b), v in np.ndenumerate(t.to_numpy()):
                ax.text(b, a, f"{v:.0f}", ha="center", va="center", fontsize=5)
        if im is not None:
            fig.colorbar(im, ax=list(axes), shrink=0.8).set_label("accuracy drop (points)")
        fig.supxlabel("fraction of the one layer pruned", fontsize=8)
        fig.suptitle(title or "layer sensitivity: accuracy drop when one layer is pruned")
    return fig


def to_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as ``png`` (at :data:`DPI`) or ``svg`` bytes."""
    if fmt not in ("png", "svg"):
        raise ValueError(f"format must be png or svg, got {fmt!r}")
    buf = io.BytesIO()
    with plt.rc_context(STYLE):
        fig.savefig(buf, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


def save(fig: Figure, stem: str | Path) -> tuple[Path, Path]:
    """Write ``stem.png`` and ``stem.svg``; returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for fmt in ("png", "svg"):
        path = stem.with_suffix(f".{fmt}")
        path.write_bytes(to_bytes(fig, fmt))
        out.append(path)
    return out[0], out[1]
