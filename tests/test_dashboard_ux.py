"""The dashboard as a new user meets it (issue 15): controls that match the picture, honest
colour scales, bounded inputs with their bounds said, plain error messages, and long work
that shows progress, can be cancelled and stops when its session ends.

AppTest with widgets addressed by key; the layout checks that only a browser can make
(clipped numbers and formulas, stale cards) are in ``test_browser.py``.
"""
from __future__ import annotations

import io
import os
import json
import threading

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from test_dashboard import HANG_S, errors, join, make_app, ok  # the shared AppTest helpers


def figure(at: AppTest, key: str) -> dict:
    for chart in at.get("plotly_chart"):
        if key in chart.proto.id:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no chart {key!r}")


def png(colour=(200, 30, 30), size=(64, 48)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def colour_bars(fig: dict) -> list[dict]:
    return [t["marker"] for t in fig["data"]
            if t.get("marker", {}).get("showscale") or t.get("showscale")]


# ---------------------------------------------------------------------------- Attention

def test_attention_controls_survive_an_upload_and_the_grid_follows_them(runs_dir):
    at = make_app(prune_pruners=["magnitude"], att_criteria=["magnitude", "random"]).run()
    at.switch_page("pages/attention.py").run()
    at.radio(key="att_mode").set_value("rollout").run()
    at.slider(key="att_discard").set_value(0.5).run()
    ok(at)
    at.radio(key="att_image_source").set_value("upload").run()  # nothing uploaded yet
    ok(at)
    at.file_uploader(key="att_upload").set_value(("red.png", png(), "image/png")).run()
    ok(at)
    assert not errors(at)
    assert at.radio(key="att_mode").value == "rollout"
    assert at.slider(key="att_discard").value == 0.5
    assert at.multiselect(key="att_criteria").value == ["magnitude", "random"]
    grid = figure(at, "att_chart_grid")
    assert "rollout (mean, discard 50%)" in grid["layout"]["title"]["text"]
    texts = [a["text"] for a in grid["layout"]["annotations"]]
    assert "<b>magnitude</b>" in texts and "<b>random</b>" in texts
    assert "input (uploaded)" in texts
    # back to CLS attention: the grid says so
    at.radio(key="att_mode").set_value("CLS attention").run()
    ok(at)
    assert "block" in figure(at, "att_chart_grid")["layout"]["title"]["text"]


def test_attention_colour_scale_is_said_and_has_a_bar(runs_dir):
    at = make_app(prune_pruners=["magnitude"], att_criteria=["magnitude"]).run()
    at.switch_page("pages/attention.py").run()
    ok(at)
    for key in ("att_chart_grid", "att_chart_heads"):
        bars = colour_bars(figure(at, key))
        assert len(bars) == 1 and bars[0]["cmin"] == 0 and bars[0]["cmax"] == 1
        assert "each cell's max" in bars[0]["colorbar"]["title"]["text"]
    assert any("scaled to its own maximum" in c.value for c in at.caption)
    at.radio(key="att_scale").set_value("shared").run()
    ok(at)
    bar = colour_bars(figure(at, "att_chart_grid"))[0]
    assert "shared" in bar["colorbar"]["title"]["text"]
    assert 0 < bar["cmax"] < 1  # attention probabilities: the largest value in the grid
    assert any(f"from 0 to {bar['cmax']:.3g}" in c.value for c in at.caption)


def test_shared_scale_cell_colours_match_the_value_over_the_shared_max():
    """A uniform map at a quarter of the shared maximum is drawn in jet(0.25) (blended with
    the picture), not stretched to red as with its own maximum."""
    from matplotlib import colormaps

    from dashboard import state

    image = torch.zeros(3, 8, 8)  # black: the overlay is 0.5 · colour
    row = np.full(4, 0.1, dtype=np.float32)
    own = state.ui.overlay_cell(image, row, (2, 2), px=8)
    shared = state.ui.overlay_cell(image, row, (2, 2), px=8, vmax=0.4)
    expect = lambda v: np.round(0.5 * np.asarray(colormaps["jet"](v)[:3]) * 255)  # noqa: E731
    assert np.abs(own[4, 4] - expect(1.0)).max() <= 1
    assert np.abs(shared[4, 4] - expect(0.25)).max() <= 1


@pytest.mark.slow  # several page runs (CI runs it)
def test_widget_labels_are_unique_on_each_page(runs_dir):
    at = make_app(prune_pruners=["magnitude", "snip"], att_criteria=["magnitude"]).run()
    for page in ("pages/prune.py", "pages/attention.py", "pages/rollout.py", "pages/train.py"):
        at.switch_page(page).run()
        ok(at)
        labels = [w.label for kind in ("selectbox", "slider", "select_slider", "radio",
                                       "number_input", "multiselect", "text_input", "toggle")
                  for w in at.get(kind)]
        assert len(labels) == len(set(labels)), (page, sorted(labels))


def test_non_image_upload_says_what_is_wrong(runs_dir):
    at = make_app(att_criteria=["magnitude"]).run()
    at.switch_page("pages/attention.py").run()
    at.radio(key="att_image_source").set_value("upload").run()
    at.file_uploader(key="att_upload").set_value(("notes.png", b"just text", "image/png")).run()
    ok(at)
    (msg,) = errors(at)
    assert msg.startswith("notes.png: not an image Pillow can read (PNG, JPEG, BMP")
    assert "BytesIO" not in msg and "0x" not in msg


# ---------------------------------------------------------------------------- Rollout

def test_rollout_page_explains_an_uploaded_image(runs_dir):
    at = make_app(prune_pruners=["magnitude"]).run()
    at.switch_page("pages/rollout.py").run()
    at.radio(key="ro_image_source").set_value("upload").run()
    ok(at)
    assert any("Upload a picture" in i.value for i in at.info)
    at.file_uploader(key="ro_upload").set_value(("red.png", png(), "image/png")).run()
    ok(at)
    assert not errors(at)
    fig = figure(at, "ro_chart")
    assert "input (uploaded)" in [a["text"] for a in fig["layout"]["annotations"]]
    assert len(colour_bars(fig)) == 1
    assert {m.label: m.value for m in at.metric}["True class"] == "unknown (upload)"


# ---------------------------------------------------------------------------- Prune

def metrics(at: AppTest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in at.metric:
        out.setdefault(m.label, []).append(m.value)
    return out


def test_sparsity_slider_reaches_99_in_steps_of_one_near_the_top(runs_dir):
    at = ok(make_app(prune_pruners=["magnitude"]).run())
    slider = at.select_slider(key="prune_sparsity")
    assert {"85%", "90%", "91%", "95%", "98%", "99%"} <= set(slider.options)
    assert "92.5%" not in slider.options and "96%" in slider.options
    kept = {}
    for pct in (95, 99):
        at.select_slider(key="prune_sparsity").set_value(pct).run()
        ok(at)
        assert any(f"magnitude** at {pct}%" in m.value for m in at.markdown)
        kept[pct] = float(metrics(at)["Params kept"][0].rstrip("%"))
    # 4 more percent of the prunable weights gone (the unprunable ones stay)
    assert 3.0 < kept[95] - kept[99] < 4.0


@pytest.mark.slow  # several page runs (CI runs it)
def test_validation_count_is_bounded_and_the_bound_is_said(runs_dir):
    from dashboard import state

    at = ok(make_app(prune_pruners=["magnitude"], prune_val=100_000, prune_calib=1).run())
    assert not errors(at)
    n_val = len(state.setup(state.Experiment(calib=1)).val_set)
    box = at.number_input(key="prune_val")
    assert box.value == n_val and box.max == n_val
    assert any(f"validation split has {n_val} images" in c.value for c in at.caption)
    caption = next(c.value for c in at.caption if "calibration" in c.value)
    assert "calibration 1 image ·" in caption and f"{n_val} validation images" in caption
    assert "1 images" not in caption


def test_progressive_numbers_equal_the_whole_evaluation():
    """Counts of slices add up to the evaluation of the whole subset (what the cards refine
    to), and a first slice gives the numbers of those images alone."""
    from core import study
    from core.data import load_dataset
    from core.models import build_model
    from core.train import evaluate

    torch.manual_seed(0)
    model = build_model("vit-tiny", 6).eval()
    _, val_set = load_dataset("shapes", (32, 32), seed=0, num_train=64, num_val=60)
    p = study.prune_at(model, "magnitude", 0.7)
    parts = [study.evaluate_counts(model, p, val_set, a, b) for a, b in ((0, 7), (7, 30),
                                                                          (30, 60))]
    whole = study.evaluate_pruned(model, p, val_set)
    got = study.metrics_from_counts(parts)
    assert got["accuracy"] == whole["accuracy"] and got["macro_f1"] == whole["macro_f1"]
    # float32 forwards of other batch sizes: round-off only
    assert got["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    first = study.metrics_from_counts(parts[:1])
    masked = p.model(model)
    assert first == pytest.approx(evaluate(masked, torch.utils.data.Subset(val_set, range(7))),
                                  rel=1e-5)


def test_eval_slices_start_small_on_a_224_model_and_cover_the_subset():
    from dashboard.state.pruning import eval_bounds

    deit = eval_bounds(128, 1.26e9)  # deit-tiny's MACs per image
    assert deit[0] == (0, 4) and deit[-1][1] == 128
    assert all(a == b for (_, a), (b, _) in zip(deit, deit[1:]))  # contiguous
    assert eval_bounds(128, 1.1e7) == [(0, 128)]  # vit-tiny: one slice, as before


@pytest.mark.slow  # builds a deit-tiny setup
def test_scoring_memory_caps_the_calibration_batch_and_says_so(runs_dir):
    from dashboard import state

    s = state.setup(state.Experiment(preset="deit-tiny", source="init", calib=64))
    # GraSP keeps about three forwards' activations per image: the smallest cap
    assert s.calib("magnitude") == 64  # data-free: whatever the batch
    assert 1 <= s.calib("grasp") < s.calib("snip") <= 64
    assert s.calib("grasp") * s.image_bytes * 3 <= state.SCORE_MB * 2**20


# ---------------------------------------------------------------------------- long work

@pytest.fixture
def tiny():
    from core.models import build_model

    return build_model("vit-tiny", 6).eval()


def test_prune_page_cancelled_then_resumed(runs_dir, monkeypatch):
    """A Prune page whose evaluation hangs: cancelled (as by its Cancel button), it says so
    and keeps what it had; Resume computes the rest."""
    from dashboard.state import job, prune_work

    release, hanging = threading.Event(), threading.Event()
    real = prune_work.eval_counts

    def slow(key, n, a, b):
        if key.pruner == "snip":
            hanging.set()
            while not release.wait(0.01):  # until resumed, a forward every 10 ms
                with torch.no_grad():  # a forward: the cancellation point
                    torch.nn.Linear(2, 2)(torch.zeros(1, 2))
        return real(key, n, a, b)

    monkeypatch.setattr(prune_work, "eval_counts", slow)

    def cancel_soon():
        assert hanging.wait(HANG_S)
        for j in job.jobs(kind="prune"):
            j.cancel("cancelled")

    threading.Thread(target=cancel_soon, daemon=True).start()
    at = ok(make_app(prune_pruners=["magnitude", "snip"]).run())
    assert any("Stopped after" in w.value for w in at.warning)
    assert len(metrics(at)["Accuracy"]) == 2  # dense and magnitude, computed before
    release.set()
    at.button(key="prune_resume").click().run()
    ok(at)
    assert not at.warning
    assert len(metrics(at)["Accuracy"]) == 3


def test_a_slow_prune_page_shows_progress_and_a_cancel_button(runs_dir, monkeypatch):
    """While the work runs past a moment, the page draws a progress bar with an estimate and a
    Cancel button (checked in the messages the page sent, as the browser would see them).
    Each evaluation of the page's work waits until the page has drawn its progress once more,
    so the work outlasts the page's "moment" however fast the machine is, and the bar is
    redrawn after the first evaluation has given it a rate to estimate from."""
    from dashboard.state import prune_work

    real = prune_work.eval_counts
    drawn = threading.Condition()
    draws = [0]

    def slow(key, n, a, b):
        if threading.current_thread().name.startswith("prunelens-prune"):  # not the page
            with drawn:
                before = draws[0]
                assert drawn.wait_for(lambda: draws[0] > before, HANG_S)
        return real(key, n, a, b)

    monkeypatch.setattr(prune_work, "eval_counts", slow)
    seen: list[str] = []
    import streamlit as st
    import streamlit.elements.progress as progress_mod

    real_button, real_progress = st.button, progress_mod.ProgressMixin.progress

    def button(label, *a, **k):
        seen.append(f"button:{label}:{k.get('key')}")
        return real_button(label, *a, **k)

    def progress(self, value, text=None):
        seen.append(f"progress:{text}")
        with drawn:
            draws[0] += 1
            drawn.notify_all()
        return real_progress(self, value, text)

    monkeypatch.setattr(st, "button", button)
    monkeypatch.setattr(progress_mod.ProgressMixin, "progress", progress)
    ok(make_app(prune_pruners=["magnitude", "random"], prune_sparsity=35).run())
    assert "button:Cancel:prune_cancel" in seen
    texts = [t for t in seen if t.startswith("progress:") and "so far" in t]
    assert texts and any("≈" in t and "s left" in t for t in texts)


def test_cancellable_stops_a_forward_and_leaves_no_hook(tiny):
    from core import study

    event = threading.Event()
    calls = []
    x = torch.zeros(1, *tiny.input_shape)
    others = study.hook_installed()  # another thread's block (a test's leftover worker)
    with study.cancellable(event):
        tiny(x)  # runs
        event.set()
        with pytest.raises(study.Cancelled):
            tiny(x)
            calls.append("finished")
    assert calls == []
    if not others:
        assert not torch.nn.modules.module._global_forward_pre_hooks
    tiny(x)  # outside the block: no check


def test_a_slider_move_masks_every_criterion_before_evaluating_any(runs_dir, monkeypatch):
    """Scores cached, a new sparsity is only a re-threshold: the work masks every criterion
    first (the page draws its charts from the masks) and evaluates afterwards; a criterion that
    still needs scoring is not held back by this."""
    from dashboard.state import prune_work

    at = ok(make_app(prune_pruners=["magnitude", "snip"], prune_sparsity=50).run())
    calls: list[tuple[str, str, float]] = []
    real_pruned, real_eval = prune_work.pruned, prune_work.eval_counts

    def pruned(key):
        calls.append(("mask", key.pruner, key.sparsity))
        return real_pruned(key)

    def eval_counts(key, n, a, b):
        calls.append(("eval", key.pruner, key.sparsity))
        return real_eval(key, n, a, b)

    monkeypatch.setattr(prune_work, "pruned", pruned)
    monkeypatch.setattr(prune_work, "eval_counts", eval_counts)
    at.select_slider(key="prune_sparsity").set_value(55).run()
    ok(at)
    moved = [c for c in calls if c[2] == 0.55]
    assert [c[0] for c in moved] == ["mask", "mask", "eval", "eval"], moved
    assert {c[1] for c in moved if c[0] == "eval"} == {"magnitude", "snip"}
    # a criterion added: the cheap ones (cached scores) are masked and evaluated first, one
    # that needs scoring after them (random's scores may be cached by an earlier test here)
    cheap: dict[str, bool] = {}
    real_cheap = prune_work.is_cheap

    def is_cheap(key):
        cheap[key.pruner] = real_cheap(key)
        return cheap[key.pruner]

    monkeypatch.setattr(prune_work, "is_cheap", is_cheap)
    calls.clear()
    at.multiselect(key="prune_pruners").set_value(["magnitude", "snip", "random"]).run()
    ok(at)
    order = [(c[0], c[1]) for c in calls if c[2] == 0.55]
    assert cheap["magnitude"] and cheap["snip"]
    first_eval = min(i for i, c in enumerate(order) if c[0] == "eval")
    for name in ("magnitude", "snip", "random"):
        if cheap[name]:
            assert order.index(("mask", name)) < first_eval, order
        else:
            assert order.index(("mask", name)) > order.index(("eval", "snip")), order
        assert order.index(("eval", name)) > order.index(("mask", name))
    assert len(metrics(at)["Accuracy"]) == 4
    # a model evaluated in slices (here: 4 images first): the first criterion's first numbers
    # come before the other masks, the charts' masks before the other numbers
    from dashboard.state import pruning

    monkeypatch.setattr(pruning, "QUICK_MACS", 1.0)
    calls.clear()
    at.select_slider(key="prune_sparsity").set_value(60).run()
    ok(at)
    moved = [c[:2] for c in calls if c[2] == 0.6]
    assert moved[:6] == [("mask", "magnitude"), ("eval", "magnitude"), ("mask", "snip"),
                         ("mask", "random"), ("eval", "snip"), ("eval", "random")], moved
    assert len(moved) > 6  # then the refinements, slice by slice


def test_neighbouring_slider_stops():
    from dashboard.state.prefetch import neighbours

    assert neighbours(0.5) == [0.55, 0.45, 0.6, 0.4]
    assert neighbours(0.9, 1) == [0.91, 0.85] and neighbours(0.85, 1) == [0.9, 0.8]
    assert neighbours(0.9) == [0.91, 0.85, 0.92, 0.8]
    assert neighbours(0.05) == [0.1, 0.15] and neighbours(0.99) == [0.98, 0.97]
    assert neighbours(0.333) == []  # not a slider stop


@pytest.mark.slow  # prefetches SynFlow's schedules
def test_the_next_slider_stops_are_ready_before_the_user_moves(runs_dir, monkeypatch):
    """After a Prune page run, the server's idle time masks and evaluates the neighbouring
    stops of every criterion (SynFlow's schedule included): a move there computes nothing.
    While a page runs, the prefetch waits."""
    from core import study
    from dashboard import session
    from dashboard.state import prefetch

    monkeypatch.setattr(session, "QUIET_S", 0.2)
    log: list[str] = []  # the prefetch's questions ("busy" / "quiet") and evaluations, in order
    told_busy = threading.Semaphore(0)
    real_quiet, real_eval = session.quiet_for, prefetch.eval_counts

    def quiet_for(seconds):
        quiet = real_quiet(seconds)
        if threading.current_thread().name == "prunelens-prefetch":
            log.append("quiet" if quiet else "busy")
            if not quiet:
                told_busy.release()
        return quiet

    def eval_counts(*args):
        log.append("eval")
        return real_eval(*args)

    monkeypatch.setattr(session, "quiet_for", quiet_for)
    monkeypatch.setattr(prefetch, "eval_counts", eval_counts)
    with session.script_run():  # as if another page were running meanwhile
        at = ok(make_app(prune_pruners=["magnitude", "synflow"], prune_sparsity=50).run())
        for _ in range(3):  # it asked three times while a page ran, and was told to wait
            assert told_busy.acquire(timeout=HANG_S)
        assert "eval" not in log  # a page is running: nothing prefetched yet
    assert prefetch.wait_done(HANG_S)
    assert log[0] == "busy" and "eval" in log
    for i, entry in enumerate(log):  # every step right after the prefetch was told "quiet"
        if entry == "eval":
            assert [e for e in log[:i] if e != "eval"][-1] == "quiet", log[:i + 1]

    def computed_again(*args, **kwargs):
        raise AssertionError("computed again after the prefetch")

    for name in ("evaluate", "evaluate_counts", "make_pruner", "score", "compute_masks",
                 "prune_at", "count_macs"):
        monkeypatch.setattr(study, name, computed_again)
    for pct in (55, 45, 60, 40):
        at.select_slider(key="prune_sparsity").set_value(pct).run()
        ok(at)
        assert not errors(at)
        assert len(metrics(at)["Accuracy"]) == 3


def test_the_prefetch_keeps_no_model_once_done(runs_dir):
    """The prefetch thread lets go of the experiment it worked on (a model and its data)."""
    import gc
    import weakref

    from dashboard import state
    from dashboard.state import prefetch

    s = state.setup(state.Experiment(pruners=("magnitude",), val_samples=32))
    probe = weakref.ref(s)
    assert prefetch.request(s, s.exp)
    assert prefetch.wait_done(HANG_S)
    del s
    gc.collect()
    assert probe() is None


EXIT_SCRIPTS = {
    "work": """
        from dashboard.state import job
        inside = threading.Event()
        def fn(w):  # forwards until cancelled (core.study.cancellable checks each module)
            m = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])
            x = torch.randn(256, 512)
            while True:
                inside.set()
                m(x)
        w = job.start("exit-test", fn, session="s", interrupt=True)
        assert inside.wait(HANG_S)
        assert w.running
    """,
    "compare": """
        from core import study
        from dashboard import state
        from dashboard.state import compare
        progressed, real_sweep = threading.Event(), study.sweep
        def sweep(*args, progress, **kwargs):  # tells when the sweep has reported progress
            def reported(frac, text):
                progressed.set()
                progress(frac, text)
            return real_sweep(*args, progress=reported, **kwargs)
        study.sweep = sweep
        s = state.setup(state.Experiment(pruners=("magnitude",), val_samples=64))
        spec = compare.Spec(("synflow", "magnitude"), (0.0, 0.5, 0.9, 0.99), 2, 64,
                            s.exp.calib, s.exp.scope, False)
        job = compare.get_sweep(compare.start_sweep(s, spec))
        assert progressed.wait(HANG_S)
        assert job.status == "running"
    """,
}


@pytest.mark.slow  # a fresh interpreter each
@pytest.mark.parametrize("kind", sorted(EXIT_SCRIPTS))
def test_background_work_is_cancelled_before_the_interpreter_exits(tmp_path, kind):
    """A page's work and a comparison still running when the server stops are cancelled by
    an atexit hook and their threads joined: the process ends with status 0, not the abort a
    daemon thread inside a PyTorch op causes at shutdown."""
    import subprocess
    import sys
    import textwrap

    script = ("from core import boot\nboot.configure()\nimport threading, torch\n"
              f"HANG_S = {HANG_S}\n"
              + textwrap.dedent(EXIT_SCRIPTS[kind]) + "print('exiting', flush=True)\n")
    env = {**os.environ, "PRUNELENS_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert "exiting" in done.stdout, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow  # a fresh interpreter
def test_the_prefetch_stops_before_the_interpreter_exits(tmp_path):
    """A daemon thread still inside a PyTorch op at interpreter shutdown aborts the process
    ("terminate called without an active exception", exit status 134): the prefetch is
    stopped by an atexit hook, after its current step. A process that exits while it works
    ends with status 0."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        from core import boot
        boot.configure()
        import threading
        from dashboard import session, state
        from dashboard.state import prefetch
        session.QUIET_S = 0.0
        inside, real_pruned = threading.Event(), prefetch.pruned
        def pruned(key):  # SynFlow comes first: its 100-round schedule
            inside.set()
            return real_pruned(key)
        prefetch.pruned = pruned
        s = state.setup(state.Experiment(pruners=("synflow", "magnitude"), val_samples=64))
        assert prefetch.request(s, s.exp)
        assert inside.wait(%d)   # the thread is inside SynFlow's schedule
        assert prefetch.current().running
        print("exiting", flush=True)
    """) % HANG_S
    env = {**os.environ, "PRUNELENS_RUNS_DIR": str(tmp_path / "runs")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert "exiting" in done.stdout, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
