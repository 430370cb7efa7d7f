"""Start the dashboard on a free port and open it in Debian's headless Chromium.

Shared by the real-browser test, ``benchmarks/bench_dashboard.py`` and
``benchmarks/screenshots.py``; nothing in the app imports it. Playwright's own browser
downloads fail offline, so Chromium is Debian's (``.ci/run`` installs it).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic", "--disable-dev-shm-usage"]
IS_BUSY = ("(() => { const a = document.querySelector('[data-testid=\"stApp\"]');"
           " return !a || a.getAttribute('data-test-script-state') === 'running'"
           " || !!document.querySelector('[data-testid=\"stSkeleton\"]'); })()")


def wait_idle(page, settle_ms: int = 300, timeout_ms: float = 300_000) -> float:
    """Until Streamlit's script run is over: the app marks ``data-test-script-state``
    "notRunning" (and nothing shows a skeleton) for ``settle_ms`` in a row. Returns the
    ``time.monotonic()`` at which it went quiet; TimeoutError if it keeps running."""
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if page.evaluate(IS_BUSY):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif (time.monotonic() - quiet_since) * 1000 >= settle_ms:
            return quiet_since
        page.wait_for_timeout(15)
    raise TimeoutError("the page kept running")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(runs_dir: str | Path, port: int | None = None, timeout: float = 90.0,
          log_path: Path | None = None, env: dict[str, str] | None = None,
          app: Path | None = None) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """Run the dashboard, or another Streamlit ``app`` (``env``: extra environment variables);
    yields (url, process, start time). Killed on exit, also on error."""
    port = port or free_port()
    env = {**os.environ, "PRUNELENS_RUNS_DIR": str(runs_dir), "PYTHONUNBUFFERED": "1",
           **(env or {})}
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app or ROOT / "dashboard" / "app.py"),
         "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc, timeout, log_path)
        yield url, proc, t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if log_path:
            log.close()


def _wait_health(url: str, proc: subprocess.Popen, timeout: float,
                 log_path: Path | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = f":\n{Path(log_path).read_text()[-3000:]}" if log_path else ""
            raise RuntimeError(f"streamlit exited with code {proc.returncode}{tail}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the dashboard did not answer at {url} within {timeout:.0f} s")


@contextmanager
def chromium(width: int = 1440, height: int = 1000):
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            yield page
        finally:
            browser.close()
