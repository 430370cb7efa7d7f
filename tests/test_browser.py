"""The dashboard in a real browser: ``streamlit run dashboard/app.py`` on a free port, driven
with Playwright for Python through Debian's headless Chromium (``.ci/run`` installs it).

Visits every page, changes the criteria and the sparsity, starts and cancels a training run,
and checks that the charts rendered and that no exception or unexpected error shows.
Screenshots go to pytest's tmp dir (printed); ``python benchmarks/screenshots.py`` refreshes
the README's ``assets/screenshots``.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from dashboard.serve import CHROMIUM, IS_BUSY as BUSY, chromium, serve
from dashboard.serve import wait_idle as idle

pytestmark = [pytest.mark.browser, pytest.mark.slow]

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium; .ci/run does)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The server's data root (``PRUNELENS_DATA_ROOTS``), empty until a test fills it."""
    return tmp_path_factory.mktemp("browser_data")


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_root):
    """The dashboard on a free port with its own run store; killed at the end, also when a
    test fails. Yields (url, runs dir)."""
    runs = tmp_path_factory.mktemp("browser_runs")
    log = tmp_path_factory.mktemp("browser_log") / "streamlit.log"
    with serve(runs, timeout=120, log_path=log,
               env={"PRUNELENS_DATA_ROOTS": str(data_root)}) as (url, _proc, _t0):
        yield url, runs, log


@pytest.fixture(scope="module")
def page(server):
    with chromium(1440, 1000) as pg:
        pg.set_default_timeout(240_000)
        yield pg


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {d}")
    return d


def charts(page, n: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {n}")
    assert page.locator(".js-plotly-plot .main-svg").count() >= n


def no_errors(page, allowed: tuple[str, ...] = ()) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    for text in page.locator('[data-testid="stAlertContentError"]').all_inner_texts():
        assert any(a in text for a in allowed), f"unexpected error shown: {text}"


def goto(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.wait_for_timeout(200)
    idle(page)


def test_every_page_in_chromium(server, page, shots):
    url, runs, _log = server
    page.goto(url)
    charts(page, 3)
    idle(page)
    no_errors(page)
    assert page.get_by_role("heading", name="Prune").count() == 1
    page.screenshot(path=str(shots / "prune.png"))

    # another criterion, then a higher sparsity
    box = page.get_by_role("combobox", name="Criteria to compare")
    box.click()
    box.fill("random")
    page.get_by_role("option", name="random", exact=True).click()
    page.keyboard.press("Escape")
    idle(page)
    page.get_by_text("random at 50%", exact=True).wait_for()
    slider = page.get_by_role("slider").first
    slider.focus()
    page.keyboard.press("ArrowRight")
    idle(page)
    page.get_by_text("random at 55%", exact=True).wait_for()
    slider.focus()
    page.keyboard.press("End")  # the slider goes to 99%
    idle(page)
    page.get_by_text("random at 99%", exact=True).wait_for()
    charts(page, 3)
    no_errors(page)
    legend = page.locator('[data-testid="stPlotlyChart"]').first.inner_text()
    assert "magnitude" in legend and "snip" in legend and "random" in legend

    goto(page, "Attention")
    charts(page, 2)
    assert page.locator(".js-plotly-plot image").count() >= 2  # the grid and the heads
    no_errors(page)
    text = page.locator('[data-testid="stPlotlyChart"]').first.inner_text()
    assert "90%" in text and "dense" in text
    page.screenshot(path=str(shots / "attention.png"))

    goto(page, "Rollout & attribution")
    charts(page, 1)
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    assert "integrated gradients" in chart.inner_text()
    no_errors(page)
    page.screenshot(path=str(shots / "rollout.png"))

    goto(page, "Train")
    page.get_by_label("Epochs").fill("20")
    page.get_by_label("Training images").fill("6000")
    page.get_by_role("button", name="Start training").click()
    cancel = page.get_by_role("button", name="Cancel run")
    cancel.wait_for()
    assert "run=" in page.url  # a reload finds the run again
    page.get_by_role("progressbar").first.wait_for()
    cancel.click()
    page.locator('[data-testid="stAlertContentWarning"]', has_text="Cancelled").wait_for()
    idle(page)
    no_errors(page)
    page.screenshot(path=str(shots / "train.png"))

    page.reload()  # a new session: the URL still points at the run
    page.locator('[data-testid="stAlertContentWarning"]', has_text="Cancelled").wait_for()

    goto(page, "Runs")
    page.locator('[data-testid="stDataFrame"]').wait_for()
    idle(page)
    no_errors(page)
    page.screenshot(path=str(shots / "runs.png"))
    from core.runs import RunStore

    assert RunStore(runs).list_runs()["status"].tolist() == ["cancelled"]


# ---------------------------------------------------------------------------- issue 15

@contextmanager
def tab(page, width: int = 1440):
    """Another tab of the module's browser (one Playwright per thread) at ``width`` px."""
    pg = page.context.browser.new_page(viewport={"width": width, "height": 1000})
    pg.set_default_timeout(240_000)
    try:
        yield pg
    finally:
        if not pg.is_closed():
            pg.close()


CLIPPED = """() => {
  const out = [];
  const clipped = e => e.scrollWidth > e.clientWidth + 1;
  document.querySelectorAll('[data-testid="stMetricValue"]').forEach(e => {
    [e, ...e.querySelectorAll('*')].forEach(c => { if (clipped(c)) out.push('metric ' + e.innerText); });
  });
  document.querySelectorAll('.katex-display').forEach(e => {
    const col = e.closest('[data-testid="stColumn"]') || e.closest('[data-testid="stMain"]');
    const r = e.querySelector('.katex-html').getBoundingClientRect(), c = col.getBoundingClientRect();
    if (r.right > c.right + 1 || r.left < c.left - 1) out.push('formula ' + e.innerText.slice(0, 40));
    // .katex-display reports 2 px of scroll from KaTeX's own struts: 4 px is clipping
    for (let a = e; a && a !== col; a = a.parentElement) if (a.scrollWidth > a.clientWidth + 4) { out.push('formula scrolls ' + e.innerText.slice(0, 40)); break; }
  });
  document.querySelectorAll('[data-testid="stPlotlyChart"]').forEach(ch => {
    if (!ch.innerText.includes('mask of')) return;
    const boxes = [...ch.querySelectorAll('g.annotation')].map(g => g.getBoundingClientRect());
    boxes.forEach((a, i) => boxes.slice(i + 1).forEach(b => {
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom)
        out.push('mask captions overlap');
    }));
  });
  return out;
}"""

SIX = ("magnitude", "snip", "random", "grasp", "synflow", "snp")


def choose(page, label: str, names) -> None:
    import re

    box = page.get_by_role("combobox", name=label)
    for name in names:
        box.click()
        box.fill(name)
        page.get_by_role("option", name=re.compile("^" + re.escape(name) + r"( \(|$)")).first.click()
        page.keyboard.press("Escape")
        idle(page)


@pytest.mark.parametrize("width", [1280, 1600])
def test_six_criteria_fit_their_cards(server, page, shots, width):
    """Cards, mask captions and formulas with six criteria: no truncated number, no overlap,
    no clipped formula, at 1280 and 1600 px."""
    url = server[0]
    with tab(page, width) as pg:
        pg.goto(url)
        charts(pg, 3)
        idle(pg)
        choose(pg, "Criteria to compare", [n for n in SIX if n not in ("magnitude", "snip")])
        idle(pg, 1000)
        pg.get_by_text("synflow at 50%", exact=True).wait_for()
        pg.locator('[data-testid="stMetric"]').nth(4 * 6).wait_for()  # dense + 6 cards
        no_errors(pg)
        # one card per criterion, none left over from an earlier (progressive) render
        assert pg.locator('[data-testid="stMetric"]').count() == 4 * 7
        assert pg.get_by_text("Dense model", exact=False).count() == 1
        # 600 images: two slices, the cards drawn twice; none of the first drawing is left
        box = pg.get_by_role("spinbutton", name="Validation images")
        box.fill("600")
        box.press("Enter")
        pg.wait_for_timeout(500)
        idle(pg, 1000)
        assert pg.locator('[data-testid="stMetric"]').count() == 4 * 7
        assert pg.locator(".katex-display").count() >= 6
        assert pg.evaluate(CLIPPED) == []
        height = pg.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
        pg.set_viewport_size({"width": width, "height": int(height) + 40})
        pg.wait_for_timeout(500)
        assert pg.evaluate(CLIPPED) == []
        pg.screenshot(path=str(shots / f"prune_six_{width}.png"))


STALE = """() => {
  const cards = [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
    .map(e => e.innerText).filter(t => t.startsWith('Dense model'));
  const heads = [...document.querySelectorAll('h3')].map(e => e.innerText)
    .filter(t => t.startsWith('Kept fraction per layer'));
  return [cards, heads];
}"""


def test_previous_model_cards_go_while_the_new_model_loads(server, page):
    url = server[0]
    with tab(page, 1280) as pg:
        pg.goto(url)
        charts(pg, 3)
        idle(pg)
        old = pg.evaluate(STALE)[0][0].split("·")[1].strip()
        pg.get_by_role("combobox", name="Model").click()
        pg.get_by_role("option", name="linformer-vit-tiny", exact=True).click()
        seen_new_chart = False
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            cards, heads = pg.evaluate(STALE)
            new_chart = any("linformer" in h for h in heads)
            seen_new_chart |= new_chart
            if new_chart:
                assert not any(old in c and "linformer" not in c for c in cards), cards
            if new_chart and any("linformer" in c for c in cards) and not pg.evaluate(BUSY):
                break
            pg.wait_for_timeout(15)
        assert seen_new_chart
        no_errors(pg)


def test_closing_the_tab_stops_the_prune_work(server, page):
    """A long Prune run (1200 validation images, six criteria) shows progress with a Cancel
    button; closing the tab cancels it on the server (its log says so)."""
    url, _runs, log = server
    with tab(page, 1280) as pg:
        pg.goto(url)
        charts(pg, 3)
        idle(pg)
        box = pg.get_by_role("spinbutton", name="Validation images")
        box.fill("1200")
        box.press("Enter")  # new work: three models on 1200 images
        pg.get_by_role("button", name="Cancel").wait_for()
        bar = pg.get_by_role("progressbar").first
        bar.wait_for()
        assert "left" in pg.locator('[data-testid="stProgress"]').first.inner_text()
        before = Path(log).read_text().count("its browser session ended")
        pg.close()
    # the server's log is another process's file: polled, with a hang guard (the watchdog
    # sweeps every WATCH_S = 1 s; how soon it does is for benchmarks, not this test)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if Path(log).read_text().count("its browser session ended") > before:
            return
        time.sleep(0.25)
    raise AssertionError("the work of the closed tab was not cancelled (300 s hang guard)")


def test_attention_controls_survive_an_upload(server, page):
    """Rollout with discard 50%, then an uploaded picture: the controls keep their values
    and the grid is the rollout of the upload (the browser forgot them before)."""
    import io
    import re

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    with tab(page) as pg:
        pg.goto(server[0])
        charts(pg, 3)
        idle(pg)
        goto(pg, "Attention")
        charts(pg, 2)
        pg.locator("label").filter(has_text=re.compile(r"^rollout$")).click()
        idle(pg)
        slider = pg.get_by_role("slider").first  # the discard ratio
        slider.focus()
        for _ in range(10):
            pg.keyboard.press("ArrowRight")
        idle(pg, 800)
        title = pg.locator('[data-testid="stPlotlyChart"] .gtitle').first
        assert "discard 50%" in title.text_content()
        pg.locator("label").filter(has_text=re.compile(r"^upload$")).first.click()
        idle(pg)
        pg.locator('input[type="file"]').first.set_input_files(
            files=[{"name": "red.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
        idle(pg, 800)
        charts(pg, 2)
        no_errors(pg)
        assert pg.get_by_role("radio", name="rollout").is_checked()
        assert "0.50" in pg.locator('[data-testid="stSliderThumbValue"]').first.inner_text()
        grid = pg.locator('[data-testid="stPlotlyChart"]').first
        assert "rollout (mean, discard 50%)" in grid.locator(".gtitle").text_content()
        assert "input (uploaded)" in grid.inner_text()


def download(page, name: str, path: Path) -> Path:
    """Click the download button ``name`` (its file is built on the server on click)."""
    with page.expect_download(timeout=120_000) as info:
        page.get_by_role("button", name=name).click()
    info.value.save_as(path)
    return path


def test_downloads_and_a_cancelled_scan_in_chromium(server, data_root, page, tmp_path):
    import zipfile

    import numpy as np
    import onnxruntime as ort
    import torch

    from core.models import load_model

    url = server[0]
    page.goto(url)
    charts(page, 3)
    idle(page)

    # the three formats of the pruned model, each built when clicked; they give the same logits
    page.get_by_role("button", name="Download a pruned model").click()
    onnx = download(page, "ONNX (.onnx)", tmp_path / "m.onnx")
    zipped = download(page, "Hugging Face (.zip)", tmp_path / "m.zip")
    own = download(page, "PruneLens (.safetensors)", tmp_path / "m.safetensors")
    page.keyboard.press("Escape")
    with zipfile.ZipFile(zipped) as zf:
        zf.extractall(tmp_path / "hf")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_model(own).eval()(x)
        hf = load_model(tmp_path / "hf" / "model").eval()(x)
    got = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"images": x.numpy()})[0]
    assert want.shape == (2, 6)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    torch.testing.assert_close(hf, want, atol=1e-4, rtol=0)
    no_errors(page)

    # a folder of 10 000 images: its scan shows progress and stops when cancelled
    data = _tiny_png()
    for c in ("a", "b"):
        (data_root / "slow" / c).mkdir(parents=True)
        for i in range(5000):
            (data_root / "slow" / c / f"{i}.png").write_bytes(data)
    box = page.get_by_role("combobox", name="Dataset")
    box.click()
    page.get_by_role("option", name="folder", exact=True).click()
    idle(page)
    box = page.get_by_role("combobox", name="Folder on the server")
    box.click()
    page.get_by_role("option", name=f"{data_root.name}/slow", exact=True).click()
    cancel = page.get_by_role("button", name="Cancel scan")
    cancel.wait_for()
    page.get_by_role("progressbar").first.wait_for()
    cancel.click()
    page.locator('[data-testid="stAlertContentError"]', has_text="cancelled").wait_for()
    page.get_by_role("button", name="Scan again").wait_for()
    idle(page)
    no_errors(page, allowed=("the folder scan was cancelled",))
    assert page.locator(".js-plotly-plot").count() == 0


def _tiny_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()
