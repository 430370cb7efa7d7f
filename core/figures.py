"""Static figures for files and papers, as matplotlib figures (pure functions: data in,
figure out) saved as PNG and SVG at publication size: :func:`draw` renders a chart of
``core.charts`` (sweep curves, attention fidelity, layer sensitivity: the same definitions the
dashboard's plotly charts draw), and :func:`grid_figure` SNP's Fig. 3 grid. The CLI, the HTML
report and the dashboard's export buttons all draw their files here.

Why matplotlib and not plotly's static export: plotly writes PNG/SVG only through kaleido,
which drives a Chromium (and tries to download one, impossible offline); driving Debian's
Chromium ourselves works but starts a browser per export session and loads plotly.js into
it. ``benchmarks/bench_figures.py`` measures both for the same four sweep charts (figures in
docs/speed.md): matplotlib took less than half the wall time for no more CPU, and needs no
browser on the machine (a server or a torchrun node has none), which decided it. SVG text
stays text (``svg.fonttype: none``) so titles can be searched and edited in a drawing program.

    from core import figures, study
    df = study.sweep(...)
    fig = figures.sweep_curves(df, x="macs_kept")  # = figures.draw(charts.sweep(df, ...))
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

from . import charts  # noqa: E402
from .charts import METRICS, X_AXES, grid_labels  # noqa: E402,F401  (public names)

DPI = 300
SIZE = (6.4, 4.0)  # inches: one column of a two-column paper at full page width / 2 + margin
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10,
         "axes.spines.top": False, "axes.spines.right": False, "legend.fontsize": 8,
         "legend.frameon": False, "svg.hashsalt": "prunelens"}


def _figure(size: tuple[float, float] = SIZE, **kw) -> Figure:
    with plt.rc_context(STYLE):
        return Figure(figsize=size, dpi=DPI, layout="constrained", **kw)


# charts.MARKERS in matplotlib's names
_MARKERS = {"circle": "o", "square": "s", "triangle-up": "^", "diamond": "D",
            "triangle-down": "v", "cross": "P", "x": "X", "star": "*"}


def _draw_lines(ax, p: charts.Panel) -> None:
    for pt in p.points:  # lines of markers only, so a reader finds them with the curves
        ax.plot(pt.x, pt.y, ls="none", marker=_MARKERS[pt.marker], ms=4, color=pt.colour,
                label=pt.label, alpha=0.85)
    if p.step is not None:
        ax.plot(p.step.x, p.step.y, "-", drawstyle="steps-post", lw=1.2, color=p.step.colour,
                label=p.step.label)
    for ln in p.lines:
        ax.plot(ln.x, ln.y, "--" if ln.dashed else "-", marker="o", ms=3, lw=1.4,
                color=ln.colour, label=ln.label)
        if ln.std is not None:
            ax.fill_between(ln.x, ln.y - ln.std, ln.y + ln.std, color=ln.colour, alpha=0.18,
                            lw=0)
    ax.set_xscale(p.xscale)
    if p.xreversed:
        ax.invert_xaxis()
    ax.grid(alpha=0.3, lw=0.5)


def _draw_heatmap(ax, h: charts.Heatmap, cmap: str):
    im = ax.imshow(h.z, cmap=cmap, vmin=h.zmin, vmax=h.zmax, aspect="auto")
    ax.set_xticks(range(len(h.columns)), h.columns)
    ax.set_yticks(range(len(h.rows)), h.rows, fontsize=6)
    ax.tick_params(axis="x", labelsize=7)
    for (a, b), v in np.ndenumerate(h.z):
        ax.text(b, a, format(v, h.fmt), ha="center", va="center", fontsize=5)
    return im


def _size(c: charts.Chart) -> tuple[float, float]:
    n = len(c.panels)
    heat = [p.heatmap for p in c.panels if p.heatmap is not None]
    if not heat:
        return SIZE if n == 1 else (SIZE[0] * 0.75 * n, SIZE[1])
    rows = max(len(h.rows) for h in heat)
    cols = max(len(h.columns) for h in heat)
    return 1.2 + n * (1.6 + 0.35 * cols), 1.4 + 0.2 * rows


def draw(c: charts.Chart) -> Figure:
    """A :class:`core.charts.Chart` as a matplotlib figure: panels side by side, the legend
    in the first, one colour bar for the heat maps; one panel carries the chart's title,
    several share it above them."""
    fig = _figure(_size(c))
    with plt.rc_context(STYLE):
        axes = fig.subplots(1, len(c.panels), squeeze=False, sharey=c.sharey)[0]
        im = None
        for ax, p in zip(axes, c.panels):
            if p.heatmap is not None:
                im = _draw_heatmap(ax, p.heatmap, c.colorscale)
            else:
                _draw_lines(ax, p)
            ax.set_title(p.title)
            ax.set_xlabel(p.xlabel)
            ax.set_ylabel(p.ylabel)
        if any(p.lines or p.points for p in c.panels):
            axes[0].legend(loc="best")
        if im is not None:
            fig.colorbar(im, ax=list(axes), shrink=0.8).set_label(c.colorbar)
        if c.xlabel:
            fig.supxlabel(c.xlabel, fontsize=8)
        if len(c.panels) == 1 and not c.panels[0].title:
            axes[0].set_title(c.title)
        else:
            fig.suptitle(c.title)
    return fig


def sweep_curves(df: pd.DataFrame, x: str = "sparsity", metric: str = "accuracy",
                 title: str | None = None, kinds: Mapping[str, str] | None = None) -> Figure:
    """:func:`core.charts.sweep` drawn: ``metric`` against ``x``, one line per criterion
    with a mean ± std band over seeds, structured criteria (``kinds``) dashed."""
    return draw(charts.sweep(df, x, metric, kinds, title))


def fidelity_curves(df: pd.DataFrame, x: str = "sparsity", title: str | None = None,
                    kinds: Mapping[str, str] | None = None) -> Figure:
    """:func:`core.charts.fidelity` drawn: CLS→patch cosine (left) and rollout cosine
    (right) to the dense model against ``x``, mean ± std over seeds."""
    return draw(charts.fidelity(df, x, kinds, title))


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
    columns, captions = grid_labels(criteria, ratios, similarity)
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
                    ax.set_title(columns[c], fontsize=8)
                if c == 0:
                    ax.set_ylabel(criteria[i], fontsize=8, rotation=0, ha="right", va="center")
                if row is None:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", fontsize=7,
                            transform=ax.transAxes)
                    continue
                m = np.asarray(row, dtype=float).reshape(gh, gw)
                peak = float(np.abs(m).max()) or 1.0
                last = ax.imshow(m / peak, cmap="viridis", vmin=0, vmax=1)
                ax.set_xlabel(captions[i][c], fontsize=7, labelpad=1)
        if last is not None:
            cb = fig.colorbar(last, ax=axes, shrink=0.8, pad=0.02)
            cb.set_label("attention (÷ its max)")
        fig.suptitle(title or "CLS attention under pruning (cosine to dense below each map)")
        fig.supxlabel("pruning ratio →", fontsize=8)
    return fig


def sensitivity_figure(df: pd.DataFrame, title: str | None = None) -> Figure:
    """:func:`core.charts.sensitivity` drawn: per criterion a layers × ratios heat map of the
    accuracy drop (dense − pruned, in points), one shared colour bar."""
    return draw(charts.sensitivity(df, title))


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
