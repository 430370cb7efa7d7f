"""One chart, one definition (``core.charts``), two renderers: the matplotlib figure of the
files and report (``core.figures.draw``) and the plotly figure of the Compare page
(``dashboard.plots_compare.figure``) must draw the same numbers, labels, scales and colours.
Each renderer's output is read back on its own terms (matplotlib Axes lines, collections and
images; plotly traces and layout) and the two readings compared; the definition itself is
checked against a mean and std computed by hand."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from core import charts, figures, report
from dashboard import plots, plots_compare

KINDS = {"magnitude": "unstructured", "l2-norm": "structured", "snip": "unstructured"}


@pytest.fixture(scope="module")
def sweep_df() -> pd.DataFrame:
    """Three criteria: two with two seeds (bands), ``snip`` with one (no band)."""
    rng = np.random.default_rng(0)
    rows = []
    for crit, seeds in (("magnitude", 2), ("l2-norm", 2), ("snip", 1)):
        for seed in range(seeds):
            for s in (0.0, 0.3, 0.6, 0.9):
                acc = 0.9 - s * rng.uniform(0.2, 0.8)
                rows.append({"criterion": crit, "sparsity": s, "seed": seed, "accuracy": acc,
                             "loss": 1 - acc, "macro_f1": acc * 0.9,
                             "params_kept": 1 - 0.9 * s,
                             "macs_kept": 1 - (0.7 if crit == "l2-norm" else 0.0) * s,
                             "cls_cosine": 1 - s * rng.uniform(0, 0.5),
                             "rollout_cosine": 1 - s * rng.uniform(0, 0.3)})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sens_df() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = [{"criterion": c, "layer": f"blocks.{b}.{u}", "ratio": r,
             "accuracy": 0.5, "accuracy_drop": float(rng.uniform(-0.1, 0.6))}
            for c in ("magnitude", "l2-norm") for b in range(2) for u in ("qk", "v", "mlp")
            for r in (0.3, 0.6, 0.9)]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ reading each renderer back

def _band_edges(xs, ys) -> dict[float, tuple[float, float]]:
    """x → (lowest, highest) y of a band's outline."""
    out: dict[float, list[float]] = {}
    for x, y in zip(np.round(np.asarray(xs, float), 12), np.asarray(ys, float)):
        out.setdefault(float(x), []).append(float(y))
    return {x: (min(v), max(v)) for x, v in out.items()}


def read_mpl(fig) -> dict:
    n = sum(1 for ax in fig.axes if ax.get_lines() or ax.get_images())
    axes = fig.axes[:n]
    sup = fig.get_suptitle()
    panels = []
    for ax in axes:
        p = {"title": "" if not sup else ax.get_title(), "xlabel": ax.get_xlabel(),
             "ylabel": ax.get_ylabel()}
        if ax.get_images():
            im = ax.get_images()[0]
            p["heat"] = {"z": np.asarray(im.get_array(), float), "clim": im.get_clim(),
                         "columns": [t.get_text() for t in ax.get_xticklabels()],
                         "rows": [t.get_text() for t in ax.get_yticklabels()],
                         "text": [t.get_text() for t in ax.texts],
                         "low": to_hex(im.cmap(0.0)), "high": to_hex(im.cmap(1.0))}
        else:
            p["xscale"], p["reversed"] = ax.get_xscale(), ax.xaxis_inverted()
            p["lines"] = {ln.get_label(): (np.asarray(ln.get_xdata(), float),
                                           np.asarray(ln.get_ydata(), float),
                                           to_hex(ln.get_color()), ln.get_linestyle() == "--")
                          for ln in ax.get_lines()}
            bands = {}
            for coll in ax.collections:
                v = coll.get_paths()[0].vertices
                bands[to_hex(coll.get_facecolor()[0], keep_alpha=False)] = _band_edges(
                    v[:, 0], v[:, 1])
            p["bands"] = bands
            legend = ax.get_legend()
            p["legend"] = [t.get_text() for t in legend.get_texts()] if legend else []
        panels.append(p)
    bar = fig.axes[n].get_ylabel() if len(fig.axes) > n else ""
    return {"title": sup or axes[0].get_title(), "panels": panels, "colorbar": bar,
            "xlabel": fig.get_supxlabel()}


def _plotly_colour(c: str) -> str:
    if c.startswith("rgb"):
        r, g, b = (int(float(v)) for v in c[c.index("(") + 1:-1].split(",")[:3])
        return f"#{r:02x}{g:02x}{b:02x}"
    return to_hex(c)


def read_plotly(fig) -> dict:
    lay = fig.layout
    axes_of = sorted({t.xaxis or "x" for t in fig.data}, key=lambda a: int(a[1:] or 1))
    titles = sorted((a for a in lay.annotations if a.yanchor == "bottom"), key=lambda a: a.x)
    below = [a.text for a in lay.annotations if a.yanchor == "top"]
    panels, bar = [], ""
    for k, xa in enumerate(axes_of):
        xaxis = lay[f"xaxis{xa[1:]}"]
        yaxis = lay[f"yaxis{xa[1:]}"]
        traces = [t for t in fig.data if (t.xaxis or "x") == xa]
        p = {"title": titles[k].text if titles else "", "xlabel": xaxis.title.text or "",
             "ylabel": yaxis.title.text or ""}
        if traces[0].type == "heatmap":
            t = traces[0]
            scale = t.colorscale  # plotly resolves the name to (stop, colour) pairs
            p["heat"] = {"z": np.asarray(t.z, float), "clim": (t.zmin, t.zmax),
                         "columns": list(t.x), "rows": list(t.y),
                         "text": [format(v, t.texttemplate[4:-1]) for v in np.ravel(t.z)],
                         "low": _plotly_colour(scale[0][1]),
                         "high": _plotly_colour(scale[-1][1]),
                         "reversed": yaxis.autorange == "reversed"}
            if t.showscale:
                bar = t.colorbar.title.text
        else:
            p["xscale"], p["reversed"] = xaxis.type, xaxis.autorange == "reversed"
            p["lines"] = {t.name: (np.asarray(t.x, float), np.asarray(t.y, float),
                                   _plotly_colour(t.line.color), t.line.dash == "dash")
                          for t in traces if t.fill != "toself"}
            p["bands"] = {_plotly_colour(t.fillcolor): _band_edges(t.x, t.y)
                          for t in traces if t.fill == "toself"}
            p["legend"] = [t.name for t in traces if t.fill != "toself" and t.showlegend]
        panels.append(p)
    return {"title": lay.title.text, "panels": panels, "colorbar": bar,
            "xlabel": below[0] if below else ""}


def assert_same_drawing(a: dict, b: dict) -> None:
    assert a["title"] == b["title"] and a["xlabel"] == b["xlabel"]
    assert a["colorbar"] == b["colorbar"]
    assert len(a["panels"]) == len(b["panels"])
    for p, q in zip(a["panels"], b["panels"]):
        assert (p["title"], p["xlabel"], p["ylabel"]) == (q["title"], q["xlabel"], q["ylabel"])
        if "heat" in p:
            h, k = p["heat"], q["heat"]
            np.testing.assert_allclose(h["z"], k["z"])
            assert h["clim"] == pytest.approx(k["clim"])
            assert (h["columns"], h["rows"], h["text"]) == (k["columns"], k["rows"], k["text"])
            assert k["reversed"]  # plotly counts rows upwards: reversed = matplotlib's order
            # one colour scale (ColorBrewer's RdBu reversed) in both: blue below 0, red above
            assert (h["low"], h["high"]) == (k["low"], k["high"]) == ("#053061", "#67001f")
            continue
        assert (p["xscale"], p["reversed"]) == (q["xscale"], q["reversed"])
        assert p["legend"] == q["legend"]
        assert p["lines"].keys() == q["lines"].keys()
        for name, (x, y, c, dashed) in p["lines"].items():
            x2, y2, c2, dashed2 = q["lines"][name]
            np.testing.assert_allclose(x, x2)
            np.testing.assert_allclose(y, y2)
            assert (c, dashed) == (c2, dashed2), name
        assert p["bands"].keys() == q["bands"].keys()
        for colour, edges in p["bands"].items():
            other = q["bands"][colour]
            assert edges.keys() == other.keys()
            for x in edges:
                assert edges[x] == pytest.approx(other[x]), (colour, x)


# ------------------------------------------------------------------ every chart in both stacks

def every_chart(sweep_df: pd.DataFrame, sens_df: pd.DataFrame):
    for x in charts.X_AXES:
        for metric in ("accuracy", "loss", "macro_f1"):
            yield f"sweep {metric} vs {x}", charts.sweep(sweep_df, x, metric, KINDS)
    yield "fidelity", charts.fidelity(sweep_df, kinds=KINDS)
    yield "fidelity vs kept", charts.fidelity(sweep_df, "kept", KINDS)
    yield "sensitivity", charts.sensitivity(sens_df)
    joint = pd.concat([sweep_df.assign(r=0, latency_ms=5.0 - sweep_df.sparsity),
                       sweep_df.assign(r=8, accuracy=sweep_df.accuracy - 0.05,
                                       macs_kept=sweep_df.macs_kept * 0.6,
                                       latency_ms=3.0 - sweep_df.sparsity)])
    yield "pareto vs MACs", charts.pareto(joint, kinds=KINDS)
    yield "pareto vs latency", charts.pareto(joint, "latency_ms", kinds=KINDS)


def test_both_renderers_draw_the_same_numbers(sweep_df, sens_df):
    seen = 0
    for name, c in every_chart(sweep_df, sens_df):
        mpl, ply = read_mpl(figures.draw(c)), read_plotly(plots_compare.figure(c))
        try:
            assert_same_drawing(mpl, ply)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e
        seen += 1
        if c.panels[0].points:  # a marker trace per criterion × r, and the frontier
            p = mpl["panels"][0]
            assert len(p["lines"]) == 3 * 2 + 1 and "Pareto frontier" in p["legend"]
        if c.panels[0].lines:  # the readings hold what was meant, not just the same thing
            p = mpl["panels"][0]
            assert len(p["lines"]) == 3 and len(p["bands"]) == 2  # snip: one seed, no band
            assert p["lines"]["l2-norm (structured)"][3] and not p["lines"]["magnitude"][3]
    assert seen == 4 * 3 + 3 + 2


def test_the_page_and_the_files_call_the_same_definitions(sweep_df, sens_df):
    """The public builders each side calls are the definitions drawn."""
    for mpl, ply in (
            (figures.sweep_curves(sweep_df, "macs_kept", "accuracy", kinds=KINDS),
             plots_compare.sweep_curves(sweep_df, "macs_kept", "accuracy", KINDS)),
            (figures.fidelity_curves(sweep_df, kinds=KINDS),
             plots_compare.fidelity_curves(sweep_df, KINDS)),
            (figures.sensitivity_figure(sens_df), plots_compare.sensitivity_heatmap(sens_df))):
        assert_same_drawing(read_mpl(mpl), read_plotly(ply))
    files = report.sweep_figures(sweep_df, KINDS)
    assert list(files) == [*report.CHARTS, "fidelity_vs_sparsity", "pareto_macs"]
    for stem, (fig, table, _) in files.items():
        x, metric = report.CHARTS.get(stem, ("sparsity", None))[:2]
        c = charts.sweep(sweep_df, x, metric, KINDS) if metric else \
            charts.pareto(sweep_df, kinds=KINDS) if stem == "pareto_macs" else \
            charts.fidelity(sweep_df, kinds=KINDS)
        assert_same_drawing(read_mpl(fig), read_plotly(plots_compare.figure(c)))
        pd.testing.assert_frame_equal(table, c.table)


def test_the_definition_is_the_mean_and_std_over_seeds(sweep_df):
    c = charts.sweep(sweep_df, "kept", "accuracy", KINDS)
    p = c.panels[0]
    assert (p.xscale, p.xreversed) == ("log", True)
    line = next(ln for ln in p.lines if ln.group == "magnitude")
    d = sweep_df[sweep_df.criterion == "magnitude"]
    for x, y, s in zip(line.x, line.y, line.std):
        acc = d[np.isclose(1 - d.sparsity, x)]["accuracy"].to_numpy()
        assert y == pytest.approx(acc.mean()) and s == pytest.approx(acc.std(ddof=1))
    assert next(ln for ln in p.lines if ln.group == "snip").std is None
    assert [ln.colour for ln in p.lines] == list(charts.PALETTE[:3]) \
        and plots.colour(1) == charts.PALETTE[1]
    with pytest.raises(ValueError, match="x must be one of"):
        charts.sweep(sweep_df, "flops")


def test_sensitivity_definition_by_hand(sens_df):
    c = charts.sensitivity(sens_df)
    h = c.panels[1].heatmap
    assert c.panels[1].title == "l2-norm" and h.columns == ("30%", "60%", "90%")
    row = sens_df[(sens_df.criterion == "l2-norm") & (sens_df.layer == "blocks.1.v")]
    np.testing.assert_allclose(h.z[h.rows.index("blocks.1.v")],
                               row.sort_values("ratio")["accuracy_drop"] * 100)
    lim = sens_df["accuracy_drop"].abs().max() * 100
    assert (h.zmin, h.zmax) == pytest.approx((-lim, lim))


def test_fig3_grid_words_are_the_same_on_screen_and_in_the_file():
    """The Fig. 3 grid is drawn differently on purpose (the Attention page overlays each map
    on the picture; the file shows the bare maps), but its column labels and the similarity
    under each cell come from one place."""
    criteria, ratios = ["magnitude", "snip"], [0.0, 0.3, 0.6]
    rng = np.random.default_rng(2)
    rows = [[rng.random(4) for _ in ratios], [rng.random(4), None, rng.random(4)]]
    sim = np.array([[1.0, 0.91234, 0.5], [1.0, np.nan, 0.256]])
    fig = figures.grid_figure(rows, sim, criteria, ratios, (2, 2))
    cols, captions = charts.grid_labels(criteria, ratios, sim)
    assert cols == ["dense", "30%", "60%"] and captions[1] == ["1.00", "", "0.26"]
    axes = np.array(fig.axes[:len(criteria) * len(ratios)]).reshape(len(criteria), -1)
    assert [ax.get_title() for ax in axes[0]] == cols
    assert [[ax.get_xlabel() for ax in r] for r in axes] == captions
    cell = np.full((8, 8, 3), 128, np.uint8)
    screen = plots.image_grid([[cell if r is not None else None for r in row] for row in rows],
                              criteria, cols, captions=captions)
    texts = [a.text for a in screen.layout.annotations]
    assert [f"<b>{c}</b>" for c in cols] == texts[:len(cols)]
    assert sorted(t for t in texts if t[0].isdigit()) == sorted(c for r in captions
                                                                 for c in r if c)


def test_the_definitions_leave_the_dashboard_plots_torch_free():
    """``dashboard.plots`` takes its palette from ``core.charts``; neither may pull in torch
    or matplotlib (the floor benchmark and the server's first paint rely on it)."""
    import subprocess
    import sys

    code = ("import sys; from dashboard import plots; from core import charts; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
