"""Cost of the two ways to write the sweep charts as PNG and SVG (issue 12's choice):

- matplotlib (``core.figures``): import, draw, ``savefig`` PNG at 300 dpi and SVG;
- plotly static export through Debian's Chromium (kaleido is not installed: it would
  download its own browser): start Chromium with Playwright, load each figure with
  plotly.js inlined, ``Plotly.toImage`` to PNG (1920 × 1200) and SVG.

    python benchmarks/bench_figures.py

Prints seconds (wall and this process's CPU; Chromium's CPU is in its own processes) for the
four sweep charts of a synthetic 6-criterion × 13-sparsity × 3-seed sweep.
"""
from __future__ import annotations

import base64
import os
import resource
import time

import numpy as np
import pandas as pd

SPARSITIES = [0, .1, .2, .3, .4, .5, .6, .7, .8, .9, .95, .98, .99]


def synthetic() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for c in ["random", "magnitude", "snip", "attention-snip", "grasp", "synflow"]:
        for seed in range(3):
            for s in SPARSITIES:
                acc = 0.95 / (1 + np.exp(12 * (s - 0.85))) + rng.normal(0, 0.01)
                rows.append({"criterion": c, "sparsity": s, "seed": seed, "accuracy": acc,
                             "loss": 1 - acc, "macro_f1": acc, "params_kept": 1 - s,
                             "macs_kept": 1 - 0.8 * s, "cls_cosine": 1 - s / 2,
                             "rollout_cosine": 1 - s / 3})
    return pd.DataFrame(rows)


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def children_cpu() -> float:
    """CPU seconds of finished child processes (the Playwright driver and its Chromium)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bench_matplotlib(df: pd.DataFrame) -> None:
    import core.study.sweeps  # noqa: F401  (torch, curve_table's module: not the figure cost)

    t0, c0 = time.perf_counter(), time.process_time()
    from core import figures
    t_imp = time.perf_counter() - t0
    sizes = 0
    t1 = time.perf_counter()
    for x in ("sparsity", "kept", "macs_kept"):
        fig = figures.sweep_curves(df, x)
        sizes += len(figures.to_bytes(fig, "png")) + len(figures.to_bytes(fig, "svg"))
    fig = figures.fidelity_curves(df)
    sizes += len(figures.to_bytes(fig, "png")) + len(figures.to_bytes(fig, "svg"))
    print(f"matplotlib: import {t_imp:.2f} s; 4 charts × (PNG + SVG) "
          f"{time.perf_counter() - t1:.2f} s; total wall {time.perf_counter() - t0:.2f} s, "
          f"CPU {time.process_time() - c0:.2f} s; {sizes / 1e6:.1f} MB")


def bench_plotly_chromium(df: pd.DataFrame) -> None:
    from dashboard import plots_compare
    from dashboard.serve import CHROMIUM, CHROMIUM_ARGS

    t0, c0, k0 = time.perf_counter(), time.process_time(), children_cpu()
    from playwright.sync_api import sync_playwright

    figs = [plots_compare.sweep_curves(df, x) for x in ("sparsity", "kept", "macs_kept")]
    figs.append(plots_compare.fidelity_curves(df))
    sizes = 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        t_start = time.perf_counter() - t0
        page = browser.new_page()
        t1 = time.perf_counter()
        for fig in figs:
            page.set_content(fig.to_html(include_plotlyjs=True, full_html=True,
                                         div_id="fig"), wait_until="load")
            for fmt in ("png", "svg"):
                uri = page.evaluate(
                    "f => Plotly.toImage(document.getElementById('fig'), "
                    "{format: f, width: 640, height: 400, scale: 3})", fmt)
                head, data = uri.split(",", 1)
                sizes += len(base64.b64decode(data)) if "base64" in head else len(data)
        t_figs = time.perf_counter() - t1
        browser.close()
    print(f"plotly + Chromium: browser start {t_start:.2f} s; 4 charts × (PNG + SVG) "
          f"{t_figs:.2f} s; total wall {time.perf_counter() - t0:.2f} s, CPU "
          f"{time.process_time() - c0:.2f} s here + {children_cpu() - k0:.2f} s in the driver "
          f"and Chromium; {sizes / 1e6:.1f} MB")


if __name__ == "__main__":
    df = synthetic()
    print(load())
    bench_matplotlib(df)
    bench_plotly_chromium(df)
    print(load())
