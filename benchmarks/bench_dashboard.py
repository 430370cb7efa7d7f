"""Time the dashboard in a real browser against its targets (prints, never asserts).

    python benchmarks/bench_dashboard.py [--repeat 3]

Starts ``streamlit run dashboard/app.py`` on a free port (runs in a temporary run store) and
drives Debian's headless Chromium with Playwright for Python. Measures:

1. server start → first page (Prune): its title shown, its first numbers shown, and fully
   rendered (target ≤ 2.5 s on an idle 2-core machine);
2. sparsity slider moved (keyboard) to a sparsity not shown before → Prune page re-rendered,
   2 criteria on vit-tiny (target 0.26–0.35 s idle): masks re-thresholded from cached
   scores, every criterion re-evaluated;
3. Attention page: the 4 × 10 grid rendered, first time (scores cached by the Prune page,
   pruned maps not; target ≤ 1.0 s idle) and again for another image;
4. six criteria on vit-tiny: slider moves (target ≤ 0.6 s): first criterion's numbers, all
   criteria's numbers, the run's end;
5. deit-tiny (224×224, untrained), digits, six criteria, 128 validation images: first
   numbers (≤ 20 s), all numbers, every slice evaluated (≤ 60 s), the server's peak memory
   (≤ 3 GB), and slider moves (numbers within 2 s). ``--no-deit`` skips it.

``--floor`` first times steps 1–3 on ``benchmarks/floor_app.py`` (the same page elements from
synthetic numbers, no PyTorch): what Streamlit, plotly.js and Chromium alone cost here.
``--think S`` waits S seconds between slider moves, as a user reading the numbers would (the
server prefetches the next stops meanwhile).

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
from dashboard.serve import CHROMIUM, IS_BUSY, chromium, serve, wait_idle  # noqa: E402


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


def server_quiet(pid: int, quiet_s: float = 1.0, timeout_s: float = 30.0) -> float:
    """Wait until the server has used no CPU for ``quiet_s``; returns the seconds waited."""
    t0 = time.monotonic()
    last, since = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now - last > 0.02:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return time.monotonic() - t0


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


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}"


def peak_rss_gb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak_rss(pid: int) -> bool:
    """Start a new peak-memory window for the server (Linux: ``clear_refs`` 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# the Prune page's slider (dashboard.state.keys.SPARSITY_OPTIONS; importing the state package
# here would start Streamlit's caches outside a server)
SPARSITY_OPTIONS = tuple(range(5, 90, 5)) + tuple(range(90, 100))
CARDS_WITH_NUMBERS = """([pct, model]) => [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
  .some(e => e.innerText.startsWith('Dense model') && e.innerText.includes(model)) &&
  [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
  .filter(e => e.innerText.endsWith(' at ' + pct + '%'))
  .filter(e => { const card = e.closest('[data-testid="stVerticalBlock"]');
                 return card && card.querySelector('[data-testid="stMetricValue"]'); }).length"""


def choose(page, label: str, names) -> None:
    import re

    box = page.get_by_role("combobox", name=label)
    for name in names:
        box.click()
        box.fill(name)
        page.get_by_role("option",
                         name=re.compile("^" + re.escape(name) + r"( \(|$)")).first.click()
        page.keyboard.press("Escape")
        wait_idle(page, timeout_ms=900_000)


def set_criteria(page, names) -> None:
    """The Prune page's criteria become ``names``: the six slots emptied (one rerun each),
    then ``names`` chosen."""
    box = page.get_by_role("combobox", name="Criteria to compare")
    for _ in range(6):
        box.click()
        box.press("Backspace")
        wait_idle(page, timeout_ms=900_000)
    choose(page, "Criteria to compare", names)


def select(page, label: str, option: str) -> None:
    wait_idle(page, timeout_ms=900_000)  # a rerun in progress can swallow the click
    box = page.get_by_role("combobox", name=label)
    box.click()
    box.fill(option)  # filters the list to the option
    page.get_by_role("option", name=option, exact=True).click()


def until_numbers(page, pct: int, n: int, t0: float, timeout: float = 900,
                  model: str = "") -> float:
    """Seconds from ``t0`` until ``n`` criteria cards at ``pct``% show numbers (beside a
    dense card naming ``model``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if page.evaluate(CARDS_WITH_NUMBERS, [pct, model]) >= n:
            return time.monotonic() - t0
        page.wait_for_timeout(20)
    raise TimeoutError(f"{n} cards at {pct}% never showed numbers")


def slider_moves(page, proc, repeat: int, n_criteria: int, start_pct: int,
                 think: float = 0.0) -> list[str]:
    """Move the sparsity slider right ``repeat`` times, ``think`` seconds after the page went
    quiet (a user reading it); per move: first criterion's numbers, all criteria's numbers,
    the run's end (wall s), server CPU s and the load."""
    out, pct = [], start_pct
    slider = page.get_by_role("slider").first
    for _ in range(repeat):
        time.sleep(think)
        pct = SPARSITY_OPTIONS[SPARSITY_OPTIONS.index(pct) + 1]
        slider.focus()
        c, t0 = cpu_seconds(proc.pid), time.monotonic()
        page.keyboard.press("ArrowRight")
        first = until_numbers(page, pct, 1, t0)
        every = until_numbers(page, pct, n_criteria, t0)
        wait_idle(page, timeout_ms=900_000)
        end = time.monotonic() - t0
        out.append(f"first {first:.2f} / all {every:.2f} / run end {end:.2f} s "
                   f"(CPU {cpu_seconds(proc.pid) - c:.2f} s, {load()})")
    return out


FLOOR_APP = ROOT / "benchmarks" / "floor_app.py"
FIRST_METRIC = "document.querySelectorAll('[data-testid=\"stMetricValue\"]').length > 0"
TARGETS = {"server start → health check": "", "server start → page title shown": "",
           "server start → first numbers shown": "",
           "server start → Prune page rendered": "target ≤ 2.5 s idle",
           "slider move, 2 criteria, vit-tiny": "target 0.26–0.35 s idle",
           "Attention page, 4 × 10 grid (first)": "target ≤ 1.0 s idle",
           "Attention grid, another image": ""}


def basic(page, proc, t0: float, url: str, args) -> dict[str, str]:
    """Start → first page, slider moves with the default two criteria, the Attention page's
    grid: the figures the floor app is compared on."""
    out = {"server start → health check": f"{time.monotonic() - t0:.2f} s"}
    page.goto(url)
    page.get_by_role("heading", name="Prune").first.wait_for(timeout=120_000)
    t_title = time.monotonic() - t0
    page.wait_for_function(FIRST_METRIC, timeout=120_000)
    t_numbers = time.monotonic() - t0
    wait_charts(page, 3)
    t_first = wait_idle(page) - t0
    out["server start → page title shown"] = f"{t_title:.2f} s"
    out["server start → first numbers shown"] = f"{t_numbers:.2f} s"
    out["server start → Prune page rendered"] = (
        f"{t_first:.2f} s (CPU {cpu_seconds(proc.pid):.2f} s, {load()})")

    def measure(action) -> str:
        c = cpu_seconds(proc.pid)
        d: dict = {}
        wall = timed(page, action, detail=d)
        return (f"{wall:.2f} (CPU {cpu_seconds(proc.pid) - c:.2f}, starts "
                f"{d['start']:.2f}, {load()})")

    slider = page.get_by_role("slider").first
    times = []
    for i in range(args.repeat):  # 50% → 55% → 60% …: a sparsity not seen before
        time.sleep(args.think)
        slider.focus()
        times.append(measure(lambda: page.keyboard.press("ArrowRight")))
    out["slider move, 2 criteria, vit-tiny"] = "; ".join(times)

    link = page.get_by_role("link", name="Attention").first
    if args.pause:  # a user who reads the page first: the server's warm-up finishes
        waited = server_quiet(proc.pid)
    first = measure(link.click)
    wait_charts(page, 2)
    out["Attention page, 4 × 10 grid (first)"] = first + (
        f"; clicked once the server was quiet ({waited:.1f} s after the last slider move)"
        if args.pause else "; clicked right after the slider moves")
    box = page.get_by_role("spinbutton", name="Sample").first
    times = []
    for i in range(args.repeat):
        box.fill(str(i + 1))
        times.append(measure(lambda: box.press("Enter")))
    out["Attention grid, another image"] = "; ".join(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="slider moves / grid images to time")
    ap.add_argument("--no-deit", action="store_true", help="skip the deit-tiny part")
    ap.add_argument("--deit-only", action="store_true", help="only the deit-tiny part")
    ap.add_argument("--floor", action="store_true",
                    help="first time the same steps on benchmarks/floor_app.py: Streamlit, "
                         "plotly.js and Chromium alone, the floor under every figure")
    ap.add_argument("--basic", action="store_true",
                    help="only start → first page, the 2-criteria slider and the grid")
    ap.add_argument("--think", type=float, default=0.0,
                    help="seconds between a slider move's end and the next move (a user reading "
                         "the numbers; the server prefetches the next stops meanwhile); "
                         "default 0: moves back to back")
    ap.add_argument("--pause", action="store_true",
                    help="open the Attention page once the server is quiet, as a user who "
                         "reads the Prune page first (default: right after the slider moves)")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    runs = tempfile.mkdtemp(prefix="prunelens_bench_runs_")
    print(f"cores: {os.cpu_count()}, {load()} at the start; every figure: wall s "
          "(server CPU s, load average)")
    try:
        if args.floor:
            with chromium(width=1440) as page, serve(runs, app=FLOOR_APP) as (url, proc, t0):
                floor = basic(page, proc, t0, url, args)
            print("floor (benchmarks/floor_app.py: the same elements drawn from synthetic "
                  "numbers, no PyTorch):")
            for k, v in floor.items():
                print(f"  {k:<38} {v}")
            print("the dashboard:")
        with chromium(width=1440) as page, serve(runs) as (url, proc, t0):
            if args.deit_only:
                page.goto(url)
                wait_charts(page, 3)
                wait_idle(page)
                deit(page, proc, args.repeat, start_pct=50)
                return
            for k, v in basic(page, proc, t0, url, args).items():
                print(f"  {k:<38} {v}" + (f"   ({TARGETS[k]})" if TARGETS[k] else ""))
            if args.basic:
                return
            page.get_by_role("link", name="Prune").first.click()
            wait_idle(page, timeout_ms=900_000)
            six = ["random", "grasp", "synflow", "snp"]
            choose(page, "Criteria to compare", six)
            pct = 50 + 5 * args.repeat
            print("slider move, 6 criteria, vit-tiny (magnitude snip random grasp synflow "
                  "snp):\n  " + "\n  ".join(slider_moves(page, proc, args.repeat, 6, pct,
                                                         args.think))
                  + "\n  (target ≤ 0.6 s; SynFlow re-prunes at every sparsity)")
            if not args.no_deit:
                deit(page, proc, args.repeat)
            print(f"{load()} at the end")
    finally:
        shutil.rmtree(runs, ignore_errors=True)


DEIT_CRITERIA = ["magnitude", "random", "snip", "attention-snip", "grasp", "snp"]


def deit(page, proc, repeat: int, start_pct: int | None = None) -> None:
    """deit-tiny (224×224, untrained), digits, six criteria, 128 validation images: first
    numbers, all numbers, peak server memory, then slider moves."""
    set_criteria(page, DEIT_CRITERIA)
    select(page, "Dataset", "digits")
    wait_idle(page, timeout_ms=900_000)
    box = page.get_by_role("spinbutton", name="Validation images")
    box.fill("128")
    box.press("Enter")
    wait_idle(page, timeout_ms=900_000)
    pct = 50 + 5 * 2 * repeat if start_pct is None else start_pct  # after vit-tiny's moves
    had_reset = reset_peak_rss(proc.pid)
    c, t0 = cpu_seconds(proc.pid), time.monotonic()
    select(page, "Model", "deit-tiny")
    first = until_numbers(page, pct, 1, t0, model="deit-tiny")
    every = until_numbers(page, pct, len(DEIT_CRITERIA), t0, model="deit-tiny")
    wait_idle(page, timeout_ms=1_800_000)
    end = time.monotonic() - t0
    print(f"deit-tiny, 6 criteria ({' '.join(DEIT_CRITERIA)}), digits, 128 validation images:")
    print(f"  first criterion's numbers {first:.1f} s (target ≤ 20), all criteria's numbers "
          f"{every:.1f} s, every slice evaluated {end:.1f} s (target ≤ 60) "
          f"(CPU {cpu_seconds(proc.pid) - c:.1f} s, {load()})")
    print(f"  server peak memory {peak_rss_gb(proc.pid):.2f} GB"
          + ("" if had_reset else " (whole server life: clear_refs not writable)")
          + "   (target ≤ 3 GB)")
    print("  slider moves:\n    " + "\n    ".join(
        slider_moves(page, proc, repeat, len(DEIT_CRITERIA), pct))
        + "\n    (target: numbers within 2 s)")


if __name__ == "__main__":
    main()
