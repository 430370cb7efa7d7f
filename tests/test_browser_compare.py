"""The Compare page in a real browser (Debian's headless Chromium via Playwright, the
dashboard served by ``dashboard/serve.py``): run a tiny sweep, press the export buttons (the
files land as downloads), and open the downloaded HTML report offline with its charts drawn.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.serve import CHROMIUM, chromium, serve
from dashboard.serve import wait_idle as idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does)",
                allow_module_level=True)


def download(page, key: str, folder: Path) -> Path:
    with page.expect_download() as info:
        page.locator(f".st-key-{key} button").click()
    d = info.value
    path = folder / d.suggested_filename
    d.save_as(path)
    return path


def test_compare_page_exports_and_report_offline(tmp_path):
    from PIL import Image

    runs = tmp_path / "runs"
    with serve(runs, timeout=120, log_path=tmp_path / "streamlit.log") as (url, _p, _t), \
            chromium(1440, 1000) as page:
        page.set_default_timeout(240_000)
        page.goto(url)
        idle(page)
        page.get_by_role("link", name="Compare").first.click()
        page.wait_for_timeout(200)
        idle(page)
        assert page.get_by_role("heading", name="Compare").count() == 1
        box = page.get_by_label("Sparsities (%)", exact=True).and_(page.get_by_role("textbox"))
        box.fill("0, 50, 90")
        page.get_by_role("spinbutton", name="Validation images").fill("32")
        page.get_by_role("button", name="Run the comparison").click()
        page.locator('[data-testid="stAlertContentSuccess"]', has_text="Done in").wait_for()
        idle(page)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2")
        assert page.locator('[data-testid="stException"]').count() == 0
        assert "python -m core sweep" in page.locator('[data-testid="stCode"]').inner_text()

        got = {key: download(page, key, tmp_path) for key in (
            "compare_dl_report", "compare_dl_sweep", "compare_dl_accuracy_vs_sparsity_png",
            "compare_dl_accuracy_vs_sparsity_svg", "compare_dl_accuracy_vs_macs_csv",
            "compare_dl_grid_png")}
        assert got["compare_dl_report"].name == "report.html"
        with Image.open(got["compare_dl_accuracy_vs_sparsity_png"]) as im:
            assert im.size == (1920, 1200)
        with Image.open(got["compare_dl_grid_png"]) as im:
            assert min(im.size) > 500
        assert "validation accuracy vs sparsity" in got[
            "compare_dl_accuracy_vs_sparsity_svg"].read_text()
        assert got["compare_dl_sweep"].read_text().startswith(
            "criterion,sparsity,seed,accuracy,loss,macro_f1,params_kept,macs_kept,cls_cosine,"
            "rollout_cosine")
        assert got["compare_dl_accuracy_vs_macs_csv"].read_text().startswith(
            "criterion,sparsity,macs_kept,mean,std,n")

        # the report, offline: any request leaving the file is refused and counted
        report = page
        asked = []
        report.route("**/*", lambda route: (asked.append(route.request.url), route.abort())
                     if not route.request.url.startswith(("file:", "data:"))
                     else route.continue_())
        report.goto(got["compare_dl_report"].as_uri())
        report.wait_for_function("Array.from(document.images).every(i => i.complete)")
        drawn = report.evaluate("Array.from(document.images).map(i => i.naturalWidth)")
        assert len(drawn) >= 5 and all(w > 0 for w in drawn), drawn
        assert asked == []
        assert report.get_by_text("Every point").count() == 1
