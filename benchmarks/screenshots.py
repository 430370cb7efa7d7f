"""Refresh the README's dashboard screenshots (one PNG per page) with headless Chromium.

    python benchmarks/screenshots.py [--out assets/screenshots]

Starts the dashboard on a free port with a temporary run store, visits every page (on the
Train page it runs one short training to the end so the curves show), and saves
``prune.png``, ``attention.png``, ``rollout.png``, ``train.png``, ``runs.png`` in ``--out``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bench_dashboard import (CHROMIUM, ROOT, chromium, serve, timed, wait_charts,  # noqa: E402
                             wait_idle)


def shoot(out: Path, width: int = 1440) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    runs = tempfile.mkdtemp(prefix="prunelens_shots_runs_")
    try:
        with chromium(width=width, height=1000) as page, serve(runs) as (url, _p, _t):
            def save(name: str) -> None:
                # Streamlit scrolls inside its main container, so a "full page" screenshot
                # is the viewport: grow the viewport to the content first.
                height = page.evaluate(
                    "Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"] *')]"
                    ".slice(0, 1).map(e => e.scrollHeight), "
                    "document.querySelector('[data-testid=\"stMain\"]').scrollHeight)")
                page.set_viewport_size({"width": width, "height": int(height) + 40})
                page.wait_for_timeout(500)
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=True)
                page.set_viewport_size({"width": width, "height": 1000})
                saved.append(path)
                print(path)

            page.goto(url)
            wait_charts(page, 3)
            wait_idle(page)
            save("prune")
            for title, name, charts in (("Attention", "attention", 2),
                                        ("Rollout & attribution", "rollout", 1)):
                timed(page, page.get_by_role("link", name=title).first.click)
                wait_charts(page, charts, timeout_ms=300_000)
                save(name)
            page.get_by_role("link", name="Train").first.click()
            wait_idle(page)
            page.get_by_label("Epochs").fill("2")
            page.get_by_label("Training images").fill("1000")
            page.get_by_role("button", name="Start training").click()
            page.wait_for_selector('[data-testid="stAlertContentSuccess"]', timeout=600_000)
            wait_charts(page, 1)
            wait_idle(page)
            save("train")
            page.get_by_role("link", name="Runs").first.click()
            wait_charts(page, 1)
            wait_idle(page)
            save("runs")
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    return saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshots")
    ap.add_argument("--width", type=int, default=1440)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    shoot(args.out, args.width)


if __name__ == "__main__":
    main()
