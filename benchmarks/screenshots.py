"""Refresh the README's dashboard screenshots with headless Chromium.

    python benchmarks/screenshots.py [--out assets/screenshots] [--width 1440]

Starts the dashboard on a free port with a temporary run store and saves, in ``--out``:

- ``prune.png``: vit-tiny (trained on shapes) with six criteria side by side;
- ``attention.png``: the 4 × 10 grid over an uploaded picture, one colour scale shared by
  every cell;
- ``rollout.png``: rollout and attributions of the same uploaded picture;
- ``compare.png``: the six criteria's accuracy and attention-fidelity curves over 13
  sparsities, mean ± std over two calibration seeds (a background sweep: about 3 minutes);
- ``train.png``, ``runs.png``: one short training run to the end, then the run store;
- ``prune_deit.png``: deit-tiny (224×224, untrained: no checkpoint ships) on digits with six
  criteria (slow on a CPU: minutes).

The uploaded picture is drawn here (a red disc and a blue bar on grey), not shipped.
"""
from __future__ import annotations

import argparse
import io
import re
import shutil
import sys
import tempfile
from pathlib import Path

from bench_dashboard import (CHROMIUM, ROOT, chromium, choose, select, serve,  # noqa: E402
                             set_criteria, timed, wait_charts, wait_idle)

SIX = ["random", "grasp", "synflow", "snp"]           # added to the default magnitude, snip
SIX_DEIT = ["magnitude", "random", "snip", "attention-snip", "grasp", "snp"]


def picture() -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (224, 224), (120, 120, 120))
    d = ImageDraw.Draw(im)
    d.ellipse((40, 50, 130, 140), fill=(220, 40, 40))
    d.rectangle((140, 30, 170, 200), fill=(40, 60, 200))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def others_pages(page, save, upload) -> None:
    """prune, attention, rollout, compare, train, runs (vit-tiny trained on shapes)."""
    choose(page, "Criteria to compare", SIX)
    wait_idle(page, timeout_ms=900_000, settle_ms=1000)
    save("prune")

    timed(page, page.get_by_role("link", name="Attention").first.click)
    wait_charts(page, 2, timeout_ms=900_000)
    page.locator("label").filter(has_text=re.compile(r"^shared$")).first.click()
    wait_idle(page, timeout_ms=900_000)
    upload()
    wait_charts(page, 2, timeout_ms=900_000)
    save("attention")

    timed(page, page.get_by_role("link", name="Rollout & attribution").first.click)
    upload()
    wait_charts(page, 1, timeout_ms=900_000)
    save("rollout")

    page.get_by_role("link", name="Compare").first.click()
    wait_idle(page)
    page.get_by_role("spinbutton", name="Calibration seeds").fill("2")
    page.get_by_role("button", name="Run the comparison").click()
    page.wait_for_selector('[data-testid="stAlertContentSuccess"]', timeout=1_800_000)
    wait_charts(page, 2)
    wait_idle(page, settle_ms=1000)
    save("compare")

    page.get_by_role("link", name="Train").first.click()
    wait_idle(page)
    page.get_by_label("Epochs").fill("2")
    page.get_by_label("Training images").fill("1000")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_selector('[data-testid="stAlertContentSuccess"]', timeout=900_000)
    wait_charts(page, 1)
    wait_idle(page)
    save("train")
    page.get_by_role("link", name="Runs").first.click()
    wait_charts(page, 1)
    wait_idle(page)
    save("runs")


def shoot(out: Path, width: int = 1440, deit: bool = True, others: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    runs = tempfile.mkdtemp(prefix="prunelens_shots_runs_")
    try:
        with chromium(width=width, height=1000) as page, serve(runs) as (url, _p, _t):
            page.set_default_timeout(900_000)

            def save(name: str) -> None:
                # Streamlit scrolls inside its main container, so a "full page" screenshot
                # is the viewport: grow the viewport to the content first.
                height = page.evaluate(
                    "document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
                page.set_viewport_size({"width": width, "height": int(height) + 40})
                page.wait_for_timeout(800)
                path = out / f"{name}.png"
                page.screenshot(path=str(path), full_page=True)
                page.set_viewport_size({"width": width, "height": 1000})
                saved.append(path)
                print(path)

            def upload() -> None:
                page.locator("label").filter(has_text=re.compile(r"^upload$")).first.click()
                wait_idle(page, timeout_ms=900_000)
                page.locator('input[type="file"]').first.set_input_files(files=[{
                    "name": "disc_and_bar.png", "mimeType": "image/png", "buffer": picture()}])
                wait_idle(page, timeout_ms=900_000)

            page.goto(url)
            wait_charts(page, 3)
            wait_idle(page)
            if others:
                others_pages(page, save, upload)
            if deit:
                page.get_by_role("link", name="Prune").first.click()
                wait_idle(page, timeout_ms=900_000)
                set_criteria(page, SIX_DEIT)
                select(page, "Dataset", "digits")
                wait_idle(page, timeout_ms=900_000)
                select(page, "Model", "deit-tiny")
                wait_idle(page, timeout_ms=1_800_000, settle_ms=1000)
                save("prune_deit")
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    return saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "assets" / "screenshots")
    ap.add_argument("--width", type=int, default=1440)
    ap.add_argument("--no-deit", action="store_true", help="skip the slow deit-tiny page")
    ap.add_argument("--deit-only", action="store_true", help="only the deit-tiny page")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    shoot(args.out, args.width, deit=not args.no_deit, others=not args.deit_only)


if __name__ == "__main__":
    main()
