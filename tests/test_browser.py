"""The dashboard in a real browser: ``streamlit run dashboard/app.py`` on a free port, driven
with Playwright for Python through Debian's headless Chromium (``.ci/run`` installs it).

Visits every page, changes the criteria and the sparsity, starts and cancels a training run,
and checks that the charts rendered and that no exception or unexpected error shows.
Screenshots go to pytest's tmp dir (printed); ``python benchmarks/screenshots.py`` refreshes
the README's ``assets/screenshots``.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from dashboard.serve import CHROMIUM, IS_BUSY as BUSY, chromium, serve

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
        yield url, runs


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


def idle(page, settle_ms: int = 300) -> None:
    """Wait until Streamlit's script run is over (and stays over for ``settle_ms``)."""
    quiet = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if page.evaluate(BUSY):
            quiet = None
        elif quiet is None:
            quiet = time.monotonic()
        elif (time.monotonic() - quiet) * 1000 >= settle_ms:
            return
        page.wait_for_timeout(25)
    raise AssertionError("the page kept running")


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
    url, runs = server
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

    url, _ = server
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
