"""A self-contained HTML report of a comparison: setup, sweep curves, the Fig. 3 grid,
layer sensitivity and tables in one file that opens offline (no script, no stylesheet or
font from a network: every figure is an SVG embedded as a ``data:`` URI), to send to a
colleague or hand out in class.

    html = report.sweep_report(df, setup={"model": "vit-tiny", ...},
                               figures={"Accuracy vs sparsity": fig, ...})
    Path("report.html").write_text(html)
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

from . import figures as _figures

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1b1b1b}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f5f5f5}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:0}
figcaption{font-size:12px;color:#555}code,pre{background:#f5f5f5;padding:2px 4px;
white-space:pre-wrap;word-break:break-all}.muted{color:#666;font-size:12px}
"""


def svg_data_uri(fig: Figure | bytes) -> str:
    """A ``data:image/svg+xml;base64,…`` URI of a figure (or of SVG bytes)."""
    data = fig if isinstance(fig, bytes) else _figures.to_bytes(fig, "svg")
    return "data:image/svg+xml;base64," + base64.b64encode(data).decode("ascii")


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    return df.to_html(index=False, border=0, na_rep="–",
                      float_format=lambda v: floatfmt.format(v), escape=True)


def summary_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Criteria × sparsities of the mean ``metric`` over seeds (the table papers print)."""
    t = df.pivot_table(index="criterion", columns="sparsity", values=metric, aggfunc="mean",
                       sort=False)
    t.columns = ["dense" if c == 0 else f"{c:.0%}" for c in t.columns]
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
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f"<p class='muted'>Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
             "PruneLens. One-shot pruning (no fine-tuning): every number is measured on the "
             "same validation images.</p>", "<h2>Setup</h2><table>"]
    for k, v in setup.items():
        parts.append(f"<tr><th style='text-align:left'>{esc(str(k))}</th>"
                     f"<td style='text-align:left'>{esc(str(v))}</td></tr>")
    parts.append("</table>")
    if command:
        parts.append(f"<p>Reproduce with:</p><pre><code>{esc(command)}</code></pre>")
    parts.append("<h2>Figures</h2>")
    for caption, fig in figures.items():
        parts.append(f"<figure><img alt='{esc(caption)}' src='{svg_data_uri(fig)}'>"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("<h2>Tables</h2>")
    parts.append("<h3>Validation accuracy (mean over seeds)</h3>"
                 + _table(summary_table(df, "accuracy")))
    if df["cls_cosine"].notna().any():
        parts.append("<h3>CLS attention cosine to dense (mean over seeds)</h3>"
                     + _table(summary_table(df, "cls_cosine")))
    for caption, t in (tables or {}).items():
        parts.append(f"<h3>{esc(caption)}</h3>" + _table(t))
    parts.append("<h3>Every point</h3>" + _table(df, "{:.4f}"))
    parts.append("</body></html>")
    return "\n".join(parts)
