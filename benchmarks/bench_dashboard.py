"""Time the dashboard in a real browser against its targets (prints, never asserts).

    python benchmarks/bench_dashboard.py [--repeat 3]

Starts ``streamlit run dashboard/app.py`` on a free port (runs in a temporary run store) and
drives Debian's headless Chromium with Playwright for Python. Measures:

1. server start → first page (Prune) fully rendered (target ≤ 5 s on 2 cores);
2. sparsity slider moved (keyboard) to a sparsity not shown before → Prune page re-rendered
   (target ≤ 0.5 s on vit-tiny): masks re-thresholded from cached scores, every criterion
   re-evaluated;
3. Attention page: the 4 × 10 grid rendered, first time (scores cached by the Prune page,
   pruned maps not) and again for another image (target ≤ 5 s).

"Rendered" means the browser saw Streamlit's script run finish (``data-test-script-state``)
with the expected plotly charts in the page. Next to each wall time the server's CPU seconds
are printed: on a shared, busy machine (load average above the core count) wall times stretch,
and the CPU time is what the same work costs on an idle core.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from dashboard.serve import CHROMIUM, IS_BUSY, chromium, serve  # noqa: E402

def wait_idle(page, timeout_ms: float = 120_000, settle_ms: int = 100) -> float:
    """Until the script run is over: Streamlit marks its app ``data-test-script-state``
    "notRunning" (and nothing shows a skeleton) for ``settle_ms`` in a row. Returns the
    ``time.monotonic()`` at which it went quiet."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        busy = page.evaluate(IS_BUSY)
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif (time.monotonic() - quiet_since) * 1000 >= settle_ms:
            return quiet_since
        page.wait_for_timeout(15)
    raise TimeoutError("the page kept running")


WATCH = """() => {
  if (window.__plRuns) return;
  window.__plRuns = [];
  const app = document.querySelector('[data-testid="stApp"]');
  new MutationObserver(() => window.__plRuns.push(
      [app.getAttribute('data-test-script-state'), performance.now()]))
    .observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(page, action, quiet_ms: int = 300, timeout_ms: float = 300_000,
          detail: dict | None = None) -> float:
    """Seconds from ``action()`` until the last script run it caused has finished, measured
    in the browser: a MutationObserver records Streamlit's script-state changes, and the
    end is the last "notRunning" followed by ``quiet_ms`` without a new run. ``detail``
    receives ``start`` (action → first run starts: widget debounce and the round trip)."""
    page.evaluate(WATCH)
    t0 = page.evaluate("performance.now()")
    action()
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        runs = page.evaluate(f"window.__plRuns.filter(r => r[1] >= {t0})")
        now = page.evaluate("performance.now()")
        if runs and runs[-1][0] == "notRunning" and now - runs[-1][1] >= quiet_ms:
            if detail is not None:
                starts = [r[1] for r in runs if r[0] == "running"]
                detail["start"] = ((starts[0] if starts else runs[0][1]) - t0) / 1000
            return (runs[-1][1] - t0) / 1000
        page.wait_for_timeout(20)
    raise TimeoutError("no finished script run after the action")


def wait_charts(page, n: int, timeout_ms: float = 120_000) -> None:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {n}",
                           timeout=timeout_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="slider moves / grid images to time")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    runs = tempfile.mkdtemp(prefix="prunelens_bench_runs_")
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    try:
        with chromium() as page, serve(runs) as (url, proc, t0):
            t_health = time.monotonic() - t0
            page.goto(url)
            wait_charts(page, 3)
            t_first = wait_idle(page) - t0
            cpu = cpu_seconds(proc.pid)
            print(f"server start → health check:            {t_health:6.2f} s")
            print(f"server start → Prune page rendered:     {t_first:6.2f} s wall, "
                  f"{cpu:5.2f} s server CPU   (target ≤ 5 s)")

            def measure(action) -> str:
                c = cpu_seconds(proc.pid)
                d: dict = {}
                wall = timed(page, action, detail=d)
                return f"{wall:.2f} ({cpu_seconds(proc.pid) - c:.2f}, starts {d['start']:.2f})"

            slider = page.get_by_role("slider").first
            times = []
            for i in range(args.repeat):  # 50% → 55% → 60% …: a sparsity not seen before
                slider.focus()
                times.append(measure(lambda: page.keyboard.press("ArrowRight")))
            print("slider move → Prune page re-rendered:  " + ", ".join(times)
                  + " s wall (server CPU, run starts after)   (target ≤ 0.5 s)")

            link = page.get_by_role("link", name="Attention").first
            first = measure(link.click)
            wait_charts(page, 2)
            print(f"Attention page, 4 × 10 grid (first):   {first} s   (target ≤ 5 s)")
            box = page.get_by_role("spinbutton", name="Sample").first
            times = []
            for i in range(args.repeat):
                box.fill(str(i + 1))
                times.append(measure(lambda: box.press("Enter")))
            print("Attention grid, another image:         " + ", ".join(times) + " s")
            print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
