"""The Compare page's charts in plotly: :func:`figure` renders a chart of ``core.charts``, the
one definition the files to download (``core.figures.draw``: PNG, SVG and the HTML report) are
drawn from too; this module only decides how it looks on screen (fonts, sizes, tooltips)."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from core import charts

from .plots import FONT


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _lines(fig: go.Figure, p: charts.Panel, col: int, legend: bool) -> None:
    for pt in p.points:
        fig.add_trace(go.Scatter(
            x=pt.x, y=pt.y, mode="markers", name=pt.label, legendgroup=pt.group,
            showlegend=legend, line=dict(color=pt.colour),
            marker=dict(color=pt.colour, symbol=pt.marker, size=8, opacity=0.85),
            customdata=pt.sparsity,
            hovertemplate=(f"<b>{pt.group}</b><br>sparsity %{{customdata:.0%}}, ToMe r "
                           f"{pt.r}<br>{p.xlabel.split(' (')[0]} %{{x:.3f}}<br>{p.value} "
                           "%{y:.3f}<extra></extra>")), row=1, col=col)
    if p.step is not None:
        fig.add_trace(go.Scatter(
            x=p.step.x, y=p.step.y, mode="lines", name=p.step.label, showlegend=legend,
            line=dict(color=p.step.colour, shape="hv", width=1.5), hoverinfo="skip"),
            row=1, col=col)
    for ln in p.lines:
        if ln.std is not None:  # the band: upper edge left to right, lower edge back
            xs = list(ln.x) + list(ln.x)[::-1]
            ys = list(ln.y + ln.std) + list(ln.y - ln.std)[::-1]
            fig.add_trace(go.Scatter(x=xs, y=ys, fill="toself", fillcolor=_rgba(ln.colour, 0.18),
                                     line=dict(width=0), hoverinfo="skip", showlegend=False,
                                     legendgroup=ln.group), row=1, col=col)
        std = ln.std if ln.std is not None else [0.0] * len(ln.x)
        fig.add_trace(go.Scatter(
            x=ln.x, y=ln.y, mode="lines+markers", name=ln.label, legendgroup=ln.group,
            showlegend=legend, line=dict(color=ln.colour, dash="dash" if ln.dashed else "solid"),
            customdata=list(zip(ln.sparsity, std, ln.n)),
            hovertemplate=(f"<b>{ln.group}</b><br>sparsity %{{customdata[0]:.0%}}<br>"
                           f"{p.value} %{{y:.3f}} ± %{{customdata[1]:.3f}}"
                           " (%{customdata[2]} seeds)<extra></extra>")), row=1, col=col)
    fig.update_xaxes(type=p.xscale, autorange="reversed" if p.xreversed else True,
                     row=1, col=col)


def _heatmap(fig: go.Figure, c: charts.Chart, p: charts.Panel, col: int) -> None:
    h = p.heatmap
    fig.add_trace(go.Heatmap(
        z=h.z, x=list(h.columns), y=list(h.rows), zmin=h.zmin, zmax=h.zmax,
        colorscale=c.colorscale, showscale=col == 1, colorbar=dict(title=c.colorbar),
        texttemplate="%{z:" + h.fmt + "}",
        hovertemplate="%{y} at %{x}: %{z:.1f} points<extra>" + p.title + "</extra>"),
        row=1, col=col)
    fig.update_yaxes(autorange="reversed", row=1, col=col)


def figure(c: charts.Chart) -> go.Figure:
    """A :class:`core.charts.Chart` as a plotly figure: panels side by side, one legend (the
    first panel's lines), one colour bar for the heat maps."""
    from plotly.subplots import make_subplots

    n = len(c.panels)
    heat = any(p.heatmap is not None for p in c.panels)
    fig = make_subplots(rows=1, cols=n, shared_yaxes=c.sharey,
                        subplot_titles=[p.title for p in c.panels] if n > 1 else None,
                        horizontal_spacing=0.12 if heat else 0.08)
    rows = 1
    for col, p in enumerate(c.panels, start=1):
        if p.heatmap is not None:
            _heatmap(fig, c, p, col)
            rows = max(rows, len(p.heatmap.rows))
        else:
            _lines(fig, p, col, legend=col == 1)
        fig.update_xaxes(title=p.xlabel or None, row=1, col=col)
        fig.update_yaxes(title=p.ylabel or None, row=1, col=col)
    bottom = 10
    if c.xlabel:
        bottom = 40
        fig.add_annotation(text=c.xlabel, xref="paper", yref="paper", x=0.5, y=0,
                           yshift=-30, yanchor="top", showarrow=False)
    height = 160 + 18 * rows + bottom if heat else (420 if n == 1 else 400)
    fig.update_layout(font=FONT, height=height, title=c.title,
                      margin=dict(l=10, r=10, t=40 if n == 1 else 60, b=bottom),
                      legend=dict(orientation="h", y=-0.2 if n == 1 else -0.25))
    return fig


def sweep_curves(df: pd.DataFrame, x: str = "sparsity", metric: str = "accuracy",
                 kinds: Mapping[str, str] | None = None) -> go.Figure:
    """:func:`core.charts.sweep` on screen: ``metric`` vs ``x``, one line per criterion
    (structured dashed), mean ± std band over seeds."""
    return figure(charts.sweep(df, x, metric, kinds))


def fidelity_curves(df: pd.DataFrame, kinds: Mapping[str, str] | None = None) -> go.Figure:
    """:func:`core.charts.fidelity` on screen: CLS→patch cosine and rollout cosine to the
    dense model vs sparsity, side by side."""
    return figure(charts.fidelity(df, kinds=kinds))


def pareto_chart(df: pd.DataFrame, x: str = "macs_kept",
                 kinds: Mapping[str, str] | None = None) -> go.Figure:
    """:func:`core.charts.pareto` on screen: accuracy vs MACs kept (or latency) of every
    criterion × sparsity × r, the Pareto frontier as a step line."""
    return figure(charts.pareto(df, x, kinds=kinds))


def sensitivity_heatmap(df: pd.DataFrame) -> go.Figure:
    """:func:`core.charts.sensitivity` on screen: accuracy drop (points) as layers × ratios,
    one panel per criterion."""
    return figure(charts.sensitivity(df))
