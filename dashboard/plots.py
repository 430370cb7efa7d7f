"""Pure plotting functions: data in, plotly ``Figure`` out, no ``st.*`` inside (captum's
``visualize_image_attr`` habit). Pages call ``st.plotly_chart(plots.layer_kept(df))``.

Image grids (the SNP Fig. 3 grid, per-head maps, rollout vs attribution) are composed into one
PNG shown by a single ``go.Image`` trace, with labels as annotations: one trace instead of 40
keeps the browser fast, and an invisible scatter on the cell centres gives each cell a tooltip.
"""
from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.charts import PALETTE, colour  # noqa: F401  (one palette: screen and files)
from dashboard.text import plain

FONT = dict(family="Source Sans Pro, sans-serif", size=13)


def _png_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image_grid(cells: Sequence[Sequence[np.ndarray | None]], row_labels: Sequence[str],
               col_labels: Sequence[str], captions: Sequence[Sequence[str]] | None = None,
               hover: Sequence[Sequence[str]] | None = None, left: np.ndarray | None = None,
               left_label: str = "", title: str = "", bottom_label: str = "",
               max_width: int = 960, max_cell: int = 192, gap: int = 3,
               colorbar: Mapping | None = None) -> go.Figure:
    """A grid of equal-sized uint8 RGB cells (None = blank) composed into one image.

    Layout, left to right: the optional ``left`` picture (the input image, as in SNP's
    Fig. 3) spanning up to two rows, the ``row_labels``, then the cells with ``col_labels``
    above and ``captions`` (e.g. similarities) under each. Cells are resized so the figure is
    at most ``max_width`` pixels wide (and cells at most ``max_cell``). Every label lies inside
    the axes (plotly hides data-anchored annotations outside them), at 1 unit = 1 pixel.
    ``colorbar`` (``cmin``, ``cmax``, ``title``, ``colorscale``) adds a colour bar on the
    right saying what the cells' colours mean.
    """
    rows, cols = len(cells), max(len(r) for r in cells)
    label_w = 14 + 7 * max((len(line) for t in row_labels for line in t.split("<br>")),
                           default=0)
    left_rows = min(rows, 2)
    cap = 16 if captions is not None else 0
    # the cell side c: left picture (left_rows·(c + cap + gap) − gap − cap) + 10 + labels
    # + cols·(c + gap) − gap ≤ max_width
    room = max_width - label_w - cols * gap + gap
    if left is not None:
        room -= 10 + left_rows * (cap + gap) - gap - cap
    c = int(room / (cols + (left_rows if left is not None else 0)))
    native = next(x for r in cells for x in r if x is not None).shape[0]
    c = max(24, min(c, max_cell, 3 * native))
    head = 22 if col_labels else 4
    foot = 22 if (bottom_label or (left is not None and left_label)) else 0
    pitch_y, pitch_x = c + cap + gap, c + gap
    side = left_rows * pitch_y - gap - cap if left is not None else 0
    x_cells = (side + 10 if left is not None else 0) + label_w
    W = x_cells + cols * pitch_x - gap
    H = head + rows * pitch_y - gap + foot
    canvas = np.full((H, W, 3), 255, dtype=np.uint8)
    if left is not None:
        canvas[head:head + side, :side] = _resize(left, side)
    for i, r in enumerate(cells):
        for j, cell in enumerate(r):
            if cell is not None:
                y, x = head + i * pitch_y, x_cells + j * pitch_x
                canvas[y:y + c, x:x + c] = _resize(cell, c)
    ann = [dict(x=x_cells + j * pitch_x + c / 2, y=head - 3, text=f"<b>{t}</b>",
                yanchor="bottom") for j, t in enumerate(col_labels)]
    ann += [dict(x=x_cells - 8, y=head + i * pitch_y + c / 2, text=f"<b>{t}</b>",
                 xanchor="right", align="right") for i, t in enumerate(row_labels)]
    if left is not None and left_label:
        ann.append(dict(x=side / 2, y=head + side + 4, text=left_label, yanchor="top"))
    for i, r in enumerate(captions or ()):
        for j, t in enumerate(r):
            if t:
                ann.append(dict(x=x_cells + j * pitch_x + c / 2, y=head + i * pitch_y + c + 1,
                                text=t, yanchor="top", font=dict(size=11, color="#555")))
    if bottom_label:
        ann.append(dict(x=x_cells + (cols * pitch_x - gap) / 2, y=H - foot + 4,
                        text=bottom_label, yanchor="top"))
    for a in ann:
        a.update(xref="x", yref="y", showarrow=False)
        a.setdefault("font", dict(size=12, color="#222"))
    traces: list = [go.Image(source=_png_uri(canvas), x0=0, y0=0, dx=1, dy=1,
                             hoverinfo="skip")]
    if hover is not None:
        pts = [(x_cells + j * pitch_x + c / 2, head + i * pitch_y + c / 2, t)
               for i, r in enumerate(hover) for j, t in enumerate(r)]
        traces.append(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts],
                                 hovertext=[p[2] for p in pts], mode="markers",
                                 hoverinfo="text", showlegend=False,
                                 marker=dict(size=c * 0.9, symbol="square", opacity=0)))
    bar_w = 0
    if colorbar is not None:
        bar_w = 90
        # a one-point invisible marker trace carries the colour bar (go.Image has none)
        traces.append(go.Scatter(
            x=[0], y=[0], mode="markers", hoverinfo="skip", showlegend=False,
            marker=dict(size=0.1, opacity=0, color=[colorbar["cmin"]],
                        colorscale=colorbar.get("colorscale", "Jet"), cmin=colorbar["cmin"],
                        cmax=colorbar["cmax"], showscale=True,
                        colorbar=dict(title=dict(text=colorbar.get("title", ""),
                                                 font=dict(size=11)),
                                      thickness=12, len=min(1.0, max(0.5, 200 / H)),
                                      x=1.0, xanchor="left", xpad=8,
                                      tickfont=dict(size=10)))))
    top = 30 if title else 0
    fig = go.Figure(traces)
    fig.update_layout(
        width=W + bar_w, height=H + top, margin=dict(l=0, r=bar_w, t=top, b=0),
        annotations=ann,
        title=dict(text=title, x=0, xanchor="left", y=1, yanchor="top", pad=dict(t=6),
                   font=dict(size=15)) if title else None,
        xaxis=dict(visible=False, range=[-0.5, W - 0.5], fixedrange=True),
        yaxis=dict(visible=False, range=[H - 0.5, -0.5], fixedrange=True, scaleanchor="x"),
        plot_bgcolor="white", paper_bgcolor="white", font=FONT, dragmode=False,
        hoverlabel=dict(bgcolor="white"))
    return fig


def _resize(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    if img.shape[0] == side and img.shape[1] == side:
        return img
    return np.asarray(Image.fromarray(img).resize((side, side), Image.BILINEAR))


def _hline(y: float, text: str, line: dict, font: dict | None = None) -> tuple[dict, dict]:
    """A horizontal line across the plot at ``y`` with a label at its right end, as layout
    ``(shape, annotation)`` (``Figure.add_hline`` does the same at ~20× the cost)."""
    shape = dict(type="line", xref="paper", x0=0, x1=1, yref="y", y0=y, y1=y, line=line)
    note = dict(text=text, xref="paper", x=1, xanchor="right", yref="y", y=y,
                yanchor="bottom", showarrow=False, bgcolor="rgba(255,255,255,0.85)",
                font=font or dict(size=11))
    return shape, note


def placeholder(title: str, message: str, height: int = 360) -> go.Figure:
    """An empty chart frame with ``message`` in the middle, shown where a chart will appear."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font=dict(size=14, color="#888"))
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10), font=FONT,
                      title=dict(text=title, x=0, font=dict(size=14)),
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def layer_kept(df: pd.DataFrame, sparsity: float | None = None) -> go.Figure:
    """Grouped bars: kept fraction per layer (x) for each criterion (colour).

    df: long format with columns ``layer``, ``criterion``, ``kept_fraction``.
    """
    layers = list(dict.fromkeys(df["layer"]))
    traces = []
    for i, (crit, g) in enumerate(df.groupby("criterion", sort=False)):
        g = g.set_index("layer").reindex(layers)
        traces.append(go.Bar(x=layers, y=g["kept_fraction"], name=crit, marker_color=colour(i),
                             hovertemplate="%{x}<br>" + crit + ": %{y:.1%} kept<extra></extra>"))
    fig = go.Figure(traces)
    if sparsity is not None:
        shape, note = _hline(1 - sparsity, f"{1 - sparsity:.0%} kept overall",
                             dict(dash="dot", color="#666", width=1))
        fig.update_layout(shapes=[shape], annotations=[note])
    fig.update_layout(barmode="group", height=360, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(title="kept fraction", tickformat=".0%", range=[0, 1.05]),
                      xaxis=dict(tickangle=-45, automargin=True),
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0),
                      font=FONT, bargap=0.15)
    return fig


def score_boxes(stats: pd.DataFrame, cut: float | None, criterion: str) -> go.Figure:
    """Per-layer distribution of log10 |keep-score| as boxes from precomputed statistics
    (``q1, median, q3``, whiskers ``lower``/``upper``) and the global cut as a line.
    Statistics instead of raw scores keep the figure a few kB whatever the model size."""
    layers = stats["layer"].tolist()
    kept = stats["kept_fraction"] if "kept_fraction" in stats else [1.0] * len(layers)
    fig = go.Figure(go.Box(
        x=layers, q1=stats["q1"], median=stats["median"], q3=stats["q3"],
        lowerfence=stats["lower"], upperfence=stats["upper"], name=criterion,
        marker_color=colour(0), fillcolor="rgba(76,120,168,0.35)", boxpoints=False,
        showlegend=False, customdata=list(kept),
        hovertemplate="%{x}<br>median %{median:.2f}<extra></extra>"))
    if cut is not None:
        shape, note = _hline(cut, "global cut (below: pruned)",
                             dict(color="#E45756", dash="dash", width=1.5),
                             dict(size=12, color="#E45756"))
        fig.update_layout(shapes=[shape], annotations=[note])
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=20, b=10), font=FONT,
                      yaxis=dict(title="log₁₀ |keep-score|"),
                      xaxis=dict(tickangle=-50, automargin=True, tickfont=dict(size=10)))
    return fig


def mask_heatmaps(masks: Mapping[str, np.ndarray], layer: str, per_row: int = 3) -> go.Figure:
    """One heat map per criterion of a layer's mask (rows = output units, columns = inputs;
    a block-averaged value is the kept fraction of that block), ``per_row`` to a row with the
    criterion and its kept fraction on two lines above each, so six criteria do not overlap.
    Sent as whole percent in uint8 (1 byte a cell, not 8: the figure is re-sent at every
    slider move)."""
    names = list(masks)
    n = max(len(names), 1)
    cols = min(n, per_row)
    rows = -(-n // cols)
    pad_x, pad_y = 0.06, 0.14 if rows > 1 else 0.0
    width = (1 - pad_x * (cols - 1)) / cols
    height = (1 - pad_y * (rows - 1)) / rows
    traces, layout, notes = [], {}, []
    for i, name in enumerate(names):
        m = masks[name]
        ax = "" if i == 0 else str(i + 1)
        r, c = divmod(i, cols)
        traces.append(go.Heatmap(
            z=np.rint(np.asarray(m, dtype=np.float64) * 100).astype(np.uint8), zmin=0,
            zmax=100, xaxis=f"x{ax}", yaxis=f"y{ax}",
            colorscale=[[0, "#1f1f1f"], [1, "#f2f2f2"]], showscale=i == n - 1,
            colorbar=dict(title="kept", ticksuffix="%", len=0.8, thickness=12),
            hovertemplate=f"{name}<br>out %{{y}}, in %{{x}}: %{{z}}% kept<extra></extra>"))
        x0 = c * (width + pad_x)
        y1 = 1 - r * (height + pad_y)
        layout[f"xaxis{ax}"] = dict(domain=[max(0.0, x0), min(1.0, x0 + width)],
                                    showticklabels=False, constrain="domain")
        layout[f"yaxis{ax}"] = dict(domain=[max(0.0, y1 - height), min(1.0, y1)],
                                    autorange="reversed",
                                    showticklabels=False, scaleanchor=f"x{ax}",
                                    constrain="domain")
        notes.append(dict(text=f"<b>{name}</b><br>{float(m.mean()):.1%} kept",
                          x=x0 + width / 2, y=y1, xref="paper", yref="paper",
                          xanchor="center", yanchor="bottom", showarrow=False,
                          font=dict(size=12)))
    fig = go.Figure(traces)
    fig.update_layout(**layout, annotations=notes, height=60 + 300 * rows,
                      margin=dict(l=10, r=10, t=80, b=10), font=FONT,
                      title=dict(text=f"mask of {layer} (white = kept)", x=0, font=dict(size=14)))
    return fig


def training_curves(steps: pd.DataFrame, history: pd.DataFrame) -> go.Figure:
    """Loss (left) and accuracy (right) against optimizer steps: the running training value
    per step as a line, validation after each epoch as markers."""
    traces = []
    if len(steps):
        traces += [
            go.Scatter(x=steps["step"], y=steps["loss"], name="train loss (running)",
                       line=dict(color=colour(0)), xaxis="x", yaxis="y"),
            go.Scatter(x=steps["step"], y=steps["accuracy"], name="train acc (running)",
                       line=dict(color=colour(0)), xaxis="x2", yaxis="y2", showlegend=False),
        ]
    if len(history) and "step" in history:
        traces += [
            go.Scatter(x=history["step"], y=history["val_loss"], name="validation",
                       mode="lines+markers", line=dict(color=colour(1)), xaxis="x", yaxis="y"),
            go.Scatter(x=history["step"], y=history["val_acc"], name="validation",
                       mode="lines+markers", line=dict(color=colour(1)), xaxis="x2",
                       yaxis="y2", showlegend=False),
        ]
    fig = go.Figure(traces)
    fig.update_layout(
        height=320, margin=dict(l=10, r=10, t=30, b=10), font=FONT,
        xaxis=dict(domain=[0, 0.46], title="step"), yaxis=dict(title="loss"),
        xaxis2=dict(domain=[0.54, 1], title="step"),
        yaxis2=dict(title="accuracy", anchor="x2", tickformat=".0%", range=[0, 1.02]),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


def amap_curves(steps: pd.DataFrame, ratios: pd.DataFrame, budget: float) -> go.Figure:
    """An AMAP run against optimizer steps: the running training loss (left) and the
    attention-MACs ratio of the current channel counts converging to the ``budget`` (right,
    with the expected ratio of the soft gates dotted and the budget as a dashed line).

    steps: ``step, loss``; ratios: ``step, macs_ratio, expected_ratio`` (and ``phase``)."""
    traces = []
    if len(steps):
        traces.append(go.Scatter(x=steps["step"], y=steps["loss"], name="train loss (running)",
                                 line=dict(color=colour(0)), xaxis="x", yaxis="y"))
    if len(ratios):
        traces += [
            go.Scatter(x=ratios["step"], y=ratios["macs_ratio"], name="attention MACs ratio",
                       line=dict(color=colour(1)), xaxis="x2", yaxis="y2"),
            go.Scatter(x=ratios["step"], y=ratios["expected_ratio"], name="expected (gates)",
                       line=dict(color=colour(1), dash="dot"), xaxis="x2", yaxis="y2"),
        ]
    fig = go.Figure(traces)
    fig.add_shape(type="line", xref="x2 domain", yref="y2", x0=0, x1=1, y0=budget, y1=budget,
                  line=dict(color=colour(3), dash="dash"))
    fig.add_annotation(xref="x2 domain", yref="y2", x=1, y=budget, text=f"budget {budget:.0%}",
                       showarrow=False, xanchor="right", yanchor="top")
    fig.update_layout(
        height=320, margin=dict(l=10, r=10, t=30, b=10), font=FONT,
        xaxis=dict(domain=[0, 0.46], title="step"), yaxis=dict(title="loss"),
        xaxis2=dict(domain=[0.54, 1], title="step"),
        yaxis2=dict(title="attention MACs / dense", anchor="x2", tickformat=".0%",
                    range=[min(0.0, budget - 0.05), 1.05]),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


def runs_curves(curves: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Validation accuracy (left) and loss (right) per epoch, one colour per run.

    curves: run label → frame with ``epoch``, ``val_acc``, ``val_loss`` (and optionally
    ``train_loss``, drawn dotted).
    """
    traces = []
    for i, (label, df) in enumerate(curves.items()):
        c, label = colour(i), plain(label)
        if "val_acc" in df:
            traces.append(go.Scatter(x=df["epoch"], y=df["val_acc"], name=label,
                                     mode="lines+markers", line=dict(color=c),
                                     legendgroup=label))
        if "val_loss" in df:
            traces.append(go.Scatter(x=df["epoch"], y=df["val_loss"], name=label,
                                     mode="lines+markers", line=dict(color=c), xaxis="x2",
                                     yaxis="y2", showlegend=False, legendgroup=label))
        if "train_loss" in df:
            traces.append(go.Scatter(x=df["epoch"], y=df["train_loss"], name=f"{label} (train)",
                                     mode="lines", line=dict(color=c, dash="dot"), xaxis="x2",
                                     yaxis="y2", showlegend=False, legendgroup=label))
    fig = go.Figure(traces)
    fig.update_layout(
        height=340, margin=dict(l=10, r=10, t=30, b=10), font=FONT,
        xaxis=dict(domain=[0, 0.46], title="epoch", dtick=1),
        yaxis=dict(title="validation accuracy", tickformat=".0%", range=[0, 1.02]),
        xaxis2=dict(domain=[0.54, 1], title="epoch", dtick=1),
        yaxis2=dict(title="loss (solid: val, dotted: train)", anchor="x2"),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


def merge_curve(df: pd.DataFrame) -> go.Figure:
    """Accuracy against the fraction of dense MACs kept, one marker per ToMe ``r`` (labelled).

    df: ``core.study.merge_curve``'s columns (``r``, ``macs_ratio``, ``accuracy``, …)."""
    fig = go.Figure(go.Scatter(
        x=df["macs_ratio"], y=df["accuracy"], mode="lines+markers+text",
        text=[f"r={r}" for r in df["r"]], textposition="top center", line=dict(color=colour(0)),
        hovertemplate="r=%{text}<br>MACs kept %{x:.1%}<br>accuracy %{y:.1%}<extra></extra>"))
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=30, b=10), font=FONT,
                      xaxis=dict(title="MACs kept (merged / dense)", tickformat=".0%",
                                 autorange="reversed"),
                      yaxis=dict(title="validation accuracy", tickformat=".0%", range=[0, 1.02]),
                      showlegend=False)
    return fig


def picture_grid(cells: Sequence[np.ndarray], captions: Sequence[str], cols: int) -> np.ndarray:
    """The Diff page's gallery and side-by-side: cells (uint8 (px, px, 3), one size) in
    ``cols`` columns, each captioned underneath, as one uint8 (H, W, 3) image: the picture
    shown and the PNG downloaded are the same array (no plotly export needed)."""
    from PIL import Image, ImageDraw

    px, pad = cells[0].shape[0], 16
    rows = (len(cells) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * (px + 4), rows * (px + pad + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (cell, text) in enumerate(zip(cells, captions)):
        x, y = (i % cols) * (px + 4), (i // cols) * (px + pad + 4)
        canvas.paste(Image.fromarray(cell), (x, y))
        draw.text((x + 2, y + px + 2), str(text)[: max(px // 6, 4)], fill="black")
    return np.asarray(canvas)


def png_bytes(picture: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) image as PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return buf.getvalue()
