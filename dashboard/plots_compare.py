"""Pure plotting functions of the Compare page: a sweep's frame in, plotly ``Figure`` out
(the files to download are ``core.figures``' matplotlib versions of the same charts)."""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from core.figures import METRICS, X_AXES
from core.study import curve_table

from .plots import FONT, colour


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _curves(fig: go.Figure, df: pd.DataFrame, x: str, metric: str,
            kinds: Mapping[str, str] | None, row: int | None = None, col: int | None = None,
            legend: bool = True) -> None:
    t = curve_table(df, x, metric)
    where = {"row": row, "col": col} if row else {}
    for i, (crit, d) in enumerate(t.groupby("criterion", sort=False)):
        d = d.sort_values(x)
        c = colour(i)
        structured = bool(kinds) and kinds.get(crit) == "structured"
        name = f"{crit} (structured)" if structured else crit
        if (d["n"] > 1).any():
            xs = list(d[x]) + list(d[x])[::-1]
            ys = list(d["mean"] + d["std"]) + list(d["mean"] - d["std"])[::-1]
            fig.add_trace(go.Scatter(x=xs, y=ys, fill="toself", fillcolor=_rgba(c, 0.18),
                                     line=dict(width=0), hoverinfo="skip", showlegend=False,
                                     legendgroup=crit), **where)
        fig.add_trace(go.Scatter(
            x=d[x], y=d["mean"], mode="lines+markers", name=name, legendgroup=crit,
            showlegend=legend, line=dict(color=c, dash="dash" if structured else "solid"),
            customdata=list(zip(d["sparsity"], d["std"], d["n"])),
            hovertemplate=(f"<b>{crit}</b><br>sparsity %{{customdata[0]:.0%}}<br>"
                           f"{METRICS.get(metric, metric)} %{{y:.3f}} ± %{{customdata[1]:.3f}}"
                           " (%{customdata[2]} seeds)<extra></extra>")), **where)


def sweep_curves(df: pd.DataFrame, x: str = "sparsity", metric: str = "accuracy",
                 kinds: Mapping[str, str] | None = None) -> go.Figure:
    """``metric`` vs ``x`` (``sparsity``, ``kept`` on a log axis, ``macs_kept``,
    ``params_kept``), one line per criterion (structured dashed), mean ± std band over seeds."""
    fig = go.Figure()
    _curves(fig, df, x, metric, kinds)
    label, scale = X_AXES[x]
    fig.update_xaxes(title=label, type=scale,
                     autorange="reversed" if x == "kept" else True)
    fig.update_yaxes(title=METRICS.get(metric, metric))
    fig.update_layout(font=FONT, height=420, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"{METRICS.get(metric, metric)} vs {label.split(' (')[0]}",
                      legend=dict(orientation="h", y=-0.2))
    return fig


def fidelity_curves(df: pd.DataFrame, kinds: Mapping[str, str] | None = None) -> go.Figure:
    """CLS→patch cosine and rollout cosine to the dense model vs sparsity, side by side."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, shared_yaxes=True,
                        subplot_titles=(METRICS["cls_cosine"], METRICS["rollout_cosine"]))
    _curves(fig, df, "sparsity", "cls_cosine", kinds, 1, 1)
    _curves(fig, df, "sparsity", "rollout_cosine", kinds, 1, 2, legend=False)
    fig.update_xaxes(title=X_AXES["sparsity"][0])
    fig.update_yaxes(title="cosine to dense", row=1, col=1)
    fig.update_layout(font=FONT, height=400, margin=dict(l=10, r=10, t=60, b=10),
                      title="attention fidelity vs sparsity",
                      legend=dict(orientation="h", y=-0.25))
    return fig


def sensitivity_heatmap(df: pd.DataFrame) -> go.Figure:
    """Layer sensitivity: accuracy drop (points) as layers × ratios, one panel per criterion."""
    from plotly.subplots import make_subplots

    crits = list(dict.fromkeys(df["criterion"]))
    fig = make_subplots(rows=1, cols=len(crits), subplot_titles=crits, horizontal_spacing=0.12)
    lim = max(float(df["accuracy_drop"].abs().max()) * 100, 1e-6)
    n_layers = 1
    for i, crit in enumerate(crits, start=1):
        t = df[df.criterion == crit].pivot_table(index="layer", columns="ratio",
                                                 values="accuracy_drop", sort=False) * 100
        n_layers = max(n_layers, len(t))
        fig.add_trace(go.Heatmap(
            z=t.to_numpy(), x=[f"{r:.0%}" for r in t.columns], y=list(t.index),
            zmin=-lim, zmax=lim, colorscale="RdBu_r", showscale=i == 1,
            colorbar=dict(title="accuracy drop (points)"), texttemplate="%{z:.0f}",
            hovertemplate="%{y} at %{x}: %{z:.1f} points<extra>" + crit + "</extra>"),
            row=1, col=i)
        fig.update_yaxes(autorange="reversed", row=1, col=i)
    fig.update_layout(font=FONT, height=160 + 18 * n_layers, margin=dict(l=10, r=10, t=60, b=10),
                      title="layer sensitivity: accuracy drop when one layer alone is pruned")
    return fig
