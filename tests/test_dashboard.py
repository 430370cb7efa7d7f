"""The dashboard's pages under ``streamlit.testing.v1.AppTest``: main paths, error paths,
two sessions side by side, and the cached base model left untouched.

vit-tiny with small validation subsets and calibration batches keeps this to about a minute
on 2 cores; caches are process-wide, so later tests reuse the models and scores of earlier
ones (as a server would).
"""
from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from core.models import build_model, save_model
from core.pruning import list_pruners
from core.runs import RunStore

# the page list; dashboard/app.py is the server around it (st.App with the warm-up)
APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "navigation.py")
FAST = {"prune_val": 64, "prune_calib": 32}
# A wait on an event (a thread's end, a semaphore) that never comes fails after this instead of
# hanging the suite: a guard against hangs, far above any run's time, never a speed bound.
HANG_S = 600


def make_app(**session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    for key, value in {**FAST, **session}.items():
        at.session_state[key] = value
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown(markdown: str) -> str:
    """What the reader sees of a Markdown source: backslash escapes undone."""
    return re.sub(r"\\([!-/:-@[-`{-~])", r"\1", markdown)


def errors(at: AppTest) -> list[str]:
    return [shown(e.value) for e in at.error]


def metrics(at: AppTest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for m in at.metric:
        out.setdefault(m.label, []).append(m.value)
    return out


def figure(at: AppTest, key: str) -> dict:
    for chart in at.get("plotly_chart"):
        if chart.proto.id.endswith(key) or key in chart.proto.id:
            return json.loads(chart.proto.spec)
    raise AssertionError(f"no chart {key!r}")


def annotations(fig: dict) -> list[str]:
    return [a.get("text", "") for a in fig["layout"].get("annotations", [])]


def join(thread: threading.Thread | None) -> None:
    """Wait for a background thread's end (:data:`HANG_S` at most, as a hang guard)."""
    if thread is not None:
        thread.join(HANG_S)
        assert not thread.is_alive(), f"{thread.name} still running after {HANG_S} s (hangs?)"


def wait_for(at: AppTest, done) -> AppTest:
    """The page once its background jobs (training, AMAP) have ended: their threads joined,
    one rerun, then ``done(at)`` must hold."""
    from dashboard.state import job

    from dashboard.state.jobs import KINDS

    for j in job.jobs():
        if j.kind in KINDS:
            assert j.join(HANG_S), f"the {j.kind} job hangs"
    ok(at.run())
    assert done(at), "the page does not show the end of its job"
    return at


# ---------------------------------------------------------------------------- Prune

def test_prune_page_compares_criteria(runs_dir):
    at = ok(make_app(prune_pruners=["magnitude", "snip"]).run())
    assert not errors(at)
    m = metrics(at)
    assert len(m["Accuracy"]) == 3  # dense + 2 criteria
    assert all(v.endswith("%") for v in m["Params kept"] + m["MACs kept"])
    assert {"Loss", "Parameters", "MACs"} <= set(m)
    assert len(at.get("plotly_chart")) == 3  # kept per layer, saliency, mask
    assert not any("Loading" in t for c in at.get("plotly_chart")
                   for t in annotations(json.loads(c.proto.spec)))  # placeholder replaced
    kept = figure(at, "prune_chart_kept")
    assert [t["name"] for t in kept["data"]] == ["magnitude", "snip"]
    assert len(at.latex) == 2  # each criterion's formula
    assert any("SNIP" in md.value for md in at.markdown)  # its explanation

    before = m["Params kept"]
    at.select_slider(key="prune_sparsity").set_value(80).run()
    ok(at)
    after = metrics(at)["Params kept"]
    assert after != before and float(after[0].rstrip("%")) < float(before[0].rstrip("%"))

    at.multiselect(key="prune_pruners").set_value(["random"]).run()
    ok(at)
    assert [t["name"] for t in figure(at, "prune_chart_kept")["data"]] == ["random"]
    at.radio(key="prune_scope").set_value("layer").run()
    ok(at)
    at.selectbox(key="prune_mask_layer").set_value("head").run()
    ok(at)
    assert "mask of head" in figure(at, "prune_chart_mask")["layout"]["title"]["text"]


def test_prune_page_numbers_table_is_built_only_when_opened(runs_dir):
    at = ok(make_app(prune_pruners=["magnitude", "snip"]).run())
    assert not at.dataframe and [e.label for e in at.expander] == ["All numbers"]
    at.session_state["prune_numbers"] = True  # the expander's open state (its key)
    ok(at.run())
    table = at.dataframe[0].value
    assert table["criterion"].tolist() == ["dense", "magnitude", "snip"]
    cards = [float(v.rstrip("%")) for v in metrics(at)["Accuracy"]]
    assert [round(100 * a, 1) for a in table["val_accuracy"]] == cards
    at.toggle(key="prune_show_layer_table").set_value(True).run()
    ok(at)
    assert len(at.dataframe) == 2 and len(at.dataframe[1].value) > 10  # one row per layer


def test_warm_up_fills_the_default_prune_page(runs_dir, monkeypatch):
    """What dashboard/app.py runs at server start leaves nothing for the first visitor to
    compute: with evaluation and scoring made to fail, the default page still renders."""
    from core import study
    from dashboard import state

    state.warm_up()

    def computed_again(*args, **kwargs):
        raise AssertionError("computed again after the warm-up")

    for name in ("evaluate", "evaluate_counts", "make_pruner", "score", "compute_masks",
                 "count_macs"):
        monkeypatch.setattr(study, name, computed_again)
    at = ok(AppTest.from_file(APP, default_timeout=240).run())
    assert not errors(at)
    assert len(metrics(at)["Accuracy"]) == 1 + len(state.Experiment().pruners)


def test_grid_warm_up_waits_while_a_page_runs(runs_dir, monkeypatch):
    """The server's background warm-up of the Attention grid takes no CPU while a page runs
    (a slider move would share the 2 cores with it): it starts its first cell only once no
    script run has been active for ``QUIET_S``, and then fills every cell."""
    from dashboard import session
    from dashboard.state import attention as att

    monkeypatch.setattr(session, "QUIET_S", 0.3)
    log: list[str] = []  # the warm-up's questions ("busy" / "quiet") and cells, in order
    told_busy = threading.Semaphore(0)
    real_quiet, real_maps = session.quiet_for, att.attention_maps

    def quiet_for(seconds):
        quiet = real_quiet(seconds)
        log.append("quiet" if quiet else "busy")
        if not quiet:
            told_busy.release()
        return quiet

    def attention_maps(*args, **kwargs):
        log.append("cell")
        return real_maps(*args, **kwargs)

    monkeypatch.setattr(session, "quiet_for", quiet_for)
    monkeypatch.setattr(att, "attention_maps", attention_maps)
    with session.script_run():
        warm = threading.Thread(target=att.warm_up_grid, kwargs={"wait_s": 0})
        warm.start()
        for _ in range(3):  # it asked three times while the page ran, and was told to wait
            assert told_busy.acquire(timeout=HANG_S)
        assert "cell" not in log  # a page is running: nothing computed
    join(warm)
    assert log[0] == "busy"
    for i, entry in enumerate(log):  # every cell right after the warm-up was told "quiet"
        if entry == "cell":
            assert [e for e in log[:i] if e != "cell"][-1] == "quiet", log[:i + 1]
    from dashboard.state.keys import RATIOS
    assert log.count("cell") >= len(RATIOS)  # every cell of the default grid (a row per criterion)


def test_quiet_means_no_page_run_for_quiet_s(monkeypatch):
    """``session.quiet_for``: no script run in progress and none started or ended within the
    last ``seconds``, on a clock the test moves by hand."""
    from types import SimpleNamespace

    from dashboard import session

    now = [1000.0]
    monkeypatch.setattr(session, "time", SimpleNamespace(monotonic=lambda: now[0]))
    monkeypatch.setitem(session._runs, "last", 0.0)
    assert session.quiet_for(1.0)
    with session.script_run():
        now[0] += 50.0
        assert not session.quiet_for(1.0)  # a run in progress, however long ago it started
    now[0] += 0.99
    assert not session.quiet_for(1.0)  # ended 0.99 s ago
    now[0] += 0.01
    assert session.quiet_for(1.0)


@pytest.mark.skipif("l2-norm" not in list_pruners(), reason="structured pruners not in core")
def test_prune_page_structured_criterion(runs_dir):
    at = ok(make_app(prune_pruners=["l2-norm", "magnitude"], prune_sparsity=50).run())
    assert not errors(at)
    kept = figure(at, "prune_chart_kept")
    assert [t["name"] for t in kept["data"]] == ["l2-norm", "magnitude"]
    # a physically smaller model: fewer parameters and MACs, counted on the shrunk model
    params = [float(v.rstrip("%")) for v in metrics(at)["Params kept"]]
    macs = [float(v.rstrip("%")) for v in metrics(at)["MACs kept"]]
    assert 0 < params[0] < 100 and 0 < macs[0] < 100


def test_prune_page_rejects_a_corrupt_upload(runs_dir):
    at = ok(make_app(prune_source="upload").run())
    # nothing uploaded yet: the reason, not a traceback, and no placeholder chart left over
    assert any("upload" in e.lower() for e in errors(at))
    assert not at.get("plotly_chart")
    at.file_uploader(key="prune_upload_file").set_value(
        ("model.safetensors", b"definitely not safetensors", "application/octet-stream")).run()
    ok(at)
    assert any(e.startswith("Upload rejected") and "model.safetensors" in e for e in errors(at))


def test_prune_page_accepts_an_uploaded_checkpoint(runs_dir, tmp_path):
    torch.manual_seed(1)
    path = save_model(build_model("vit-tiny", num_classes=6), tmp_path / "mine.safetensors")
    at = ok(make_app(prune_source="upload", prune_pruners=["magnitude"]).run())
    at.file_uploader(key="prune_upload_file").set_value(
        ("mine.safetensors", path.read_bytes(), "application/octet-stream")).run()
    ok(at)
    assert not errors(at)
    assert any("uploaded checkpoint" in c.value for c in at.caption)
    assert len(metrics(at)["Accuracy"]) == 2


def test_prune_page_upload_with_wrong_classes(runs_dir, tmp_path):
    path = save_model(build_model("vit-tiny", num_classes=10), tmp_path / "ten.safetensors")
    at = ok(make_app(prune_source="upload").run())
    at.file_uploader(key="prune_upload_file").set_value(
        ("ten.safetensors", path.read_bytes(), "application/octet-stream")).run()
    ok(at)
    assert any("10 outputs" in e and "6 classes" in e for e in errors(at))


def test_prune_page_folder_paths(runs_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELENS_DATA_ROOTS", str(tmp_path))
    at = ok(make_app(prune_dataset="folder").run())
    assert any("folder" in i.value.lower() for i in at.info)  # asks for a path
    assert not errors(at)
    assert not at.get("plotly_chart")  # the first run's placeholder chart is gone
    empty = tmp_path / "empty"
    empty.mkdir()
    at = ok(make_app(prune_dataset="folder", prune_folder=str(empty)).run())
    assert errors(at), "an empty folder must be reported"
    at = ok(make_app(prune_dataset="folder", prune_folder=str(tmp_path / "missing")).run())
    assert any("does not exist" in e for e in errors(at))


def test_untrained_model_says_so_and_offers_the_trained_one(runs_dir):
    from core.models import pretrained_path

    at = ok(make_app(prune_source="init", prune_pruners=["magnitude"]).run())
    assert any("untrained" in w.value for w in at.warning)
    if pretrained_path("vit-tiny", "shapes").exists():
        at.button(key="prune_use_trained").click().run()
        ok(at)
        assert at.session_state["prune_source"] == "checkpoint"
        assert not any("untrained" in w.value for w in at.warning)


# ---------------------------------------------------------------------------- Attention

def test_attention_page_grid_and_heads(runs_dir):
    at = make_app(prune_pruners=["magnitude"], att_criteria=["magnitude", "random"]).run()
    at.switch_page("pages/attention.py").run()
    ok(at)
    assert not errors(at)
    grid = figure(at, "att_chart_grid")
    texts = annotations(grid)
    assert "<b>magnitude</b>" in texts and "<b>random</b>" in texts
    assert "<b>dense</b>" in texts and "<b>90%</b>" in texts
    sims = [t for t in texts if t.replace(".", "").isdigit()]
    assert len(sims) == 2 * 10 and sims[0] == "1.00"  # ratio 0 is the dense map itself
    assert grid["data"][0]["type"] == "image"
    heads = figure(at, "att_chart_heads")
    assert "<b>head 4</b>" in annotations(heads)  # vit-tiny: 4 heads per block
    # the similarity table is built only once its expander is opened; it holds the captions
    assert not at.dataframe and "Similarity table" in [e.label for e in at.expander]
    at.session_state["att_sim"] = True
    ok(at.run())
    table = at.dataframe[0].value
    shown = table.data if hasattr(table, "data") else table  # a pandas Styler or a frame
    assert shown.index.tolist() == ["magnitude", "random"]
    assert [f"{v:.2f}" for v in shown.loc["magnitude"]] == sims[:10]

    at.radio(key="att_mode").set_value("rollout").run()
    ok(at)
    assert "rollout" in figure(at, "att_chart_grid")["layout"]["title"]["text"]
    at.number_input(key="att_sample").set_value(5).run()
    ok(at)
    assert not errors(at)


def _grid_rows(at: AppTest) -> list[str]:
    names = {f"<b>{n}</b>": n for n in list_pruners()}
    return [names[t] for t in annotations(figure(at, "att_chart_grid")) if t in names]


@pytest.mark.slow  # several page runs (CI runs it)
@pytest.mark.skipif("snp" not in list_pruners(), reason="SNP not in core")
def test_attention_page_rows_follow_the_prune_pages_criteria(runs_dir):
    at = make_app(prune_pruners=["magnitude", "snip", "random"]).run()
    at.switch_page("pages/attention.py").run()
    ok(at)
    assert at.multiselect(key="att_criteria").value == ["magnitude", "snip", "random"]
    assert _grid_rows(at) == ["magnitude", "snip", "random"]
    # the user's own rows stand while the Prune page's choice stays the same
    at.multiselect(key="att_criteria").set_value(["random"]).run()
    ok(at)
    assert _grid_rows(at) == ["random"]
    # a new choice on the Prune page is followed; with none chosen, SNP's Fig. 3 rows
    at.session_state["prune_pruners"] = ["magnitude"]
    ok(at.run())
    assert _grid_rows(at) == ["magnitude"]
    at.session_state["prune_pruners"] = []
    ok(at.run())
    assert _grid_rows(at) == ["l2-norm", "gm", "reverse", "snp"]


def test_attention_page_rejects_a_corrupt_image(runs_dir):
    at = make_app(att_criteria=["magnitude"]).run()
    at.switch_page("pages/attention.py").run()
    at.radio(key="att_image_source").set_value("upload").run()
    ok(at)
    at.file_uploader(key="att_upload").set_value(("cat.png", b"\x89PNG broken", "image/png")).run()
    ok(at)
    assert any(e.startswith("cat.png: ") and "not an image Pillow can read" in e
               for e in errors(at))


def test_attention_page_accepts_an_image(runs_dir):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, format="PNG")
    at = make_app(att_criteria=["magnitude"]).run()
    at.switch_page("pages/attention.py").run()
    at.radio(key="att_image_source").set_value("upload").run()
    at.file_uploader(key="att_upload").set_value(("red.png", buf.getvalue(), "image/png")).run()
    ok(at)
    assert not errors(at)
    assert "input (uploaded)" in annotations(figure(at, "att_chart_grid"))


# ---------------------------------------------------------------------------- Rollout

@pytest.mark.slow  # several page runs (CI runs it)
def test_rollout_page(runs_dir):
    at = make_app(prune_pruners=["magnitude"]).run()
    at.switch_page("pages/rollout.py").run()
    ok(at)
    assert not errors(at)
    fig = figure(at, "ro_chart")
    texts = annotations(fig)
    for method in ("attention rollout", "gradient rollout", "saliency", "integrated gradients"):
        assert f"<b>{method}</b>" in texts
    assert {"True class", "Dense prediction"} <= set(metrics(at))
    at.selectbox(key="ro_fusion").set_value("max").run()
    at.slider(key="ro_discard").set_value(0.5).run()
    at.selectbox(key="ro_target").set_value("circle").run()
    ok(at)
    assert "“circle”" in figure(at, "ro_chart")["layout"]["title"]["text"]


# ---------------------------------------------------------------------------- Train, Runs

def start_run(at: AppTest, epochs: int, samples: int) -> str:
    at.switch_page("pages/train.py").run()
    ok(at)
    at.number_input(key="train_epochs").set_value(epochs)
    at.number_input(key="train_samples").set_value(samples)
    at.number_input(key="train_batch").set_value(64)
    at.button(key="train_start").click().run()
    ok(at)
    run_id = at.query_params["run"]
    return run_id[0] if isinstance(run_id, list) else run_id


def test_train_cancel_is_recorded(runs_dir, monkeypatch):
    from dashboard import state

    # what the store says at the moment the page's job flips to its end state
    seen = []
    page_end = state.jobs.Progress.on_end

    def on_end(self, result):
        seen.append(RunStore(runs_dir).get_run(self.job.id)["status"])
        page_end(self, result)

    monkeypatch.setattr(state.jobs.Progress, "on_end", on_end)
    at = make_app(prune_pruners=["magnitude"]).run()
    run_id = start_run(at, epochs=20, samples=6000)
    at.button(key="train_cancel").click().run()
    ok(at)
    wait_for(at, lambda a: any("Cancelled" in w.value for w in a.warning))
    run = RunStore(runs_dir).get_run(run_id)
    assert run["status"] == "cancelled" and run["pruner"] == "magnitude"
    assert seen == ["cancelled"]  # the store is written before the page hears of the end


@pytest.mark.slow  # several page runs (CI runs it)
def test_train_runs_to_the_end_then_runs_page(runs_dir):
    at = make_app(prune_pruners=["magnitude"], prune_sparsity=60).run()
    run_id = start_run(at, epochs=1, samples=128)
    wait_for(at, lambda a: bool(a.success))
    assert figure(at, "train_chart_live")["data"]
    assert {"Validation accuracy", "Validation loss"} <= set(metrics(at))

    # a reload is a new session: the URL's ?run= finds the run again
    fresh = make_app()
    fresh.query_params["run"] = run_id
    fresh.switch_page("pages/train.py").run()
    ok(fresh)
    assert any(run_id in shown(s.value) for s in fresh.success)

    at.switch_page("pages/runs.py").run()
    ok(at)
    assert len(at.dataframe) == 1
    assert figure(at, "runs_chart")["data"]
    labels = [b.label for b in at.get("download_button")]
    assert {"PruneLens (.safetensors)", "Hugging Face (.zip)", "ONNX (.onnx)",
            "Metrics (.csv)"} <= set(labels)
    store = RunStore(runs_dir)
    assert store.checkpoint_path(run_id).exists()
    assert store.get_run(run_id)["sparsity"] == pytest.approx(0.6)

    at.multiselect(key="runs_f_status").set_value(["finished"]).run()
    at.multiselect(key="runs_f_pruner").set_value(["magnitude"]).run()
    ok(at)
    assert at.dataframe[0].value["id"].tolist() == [run_id]

    # deletion asks first
    at.multiselect(key="runs_delete_select").set_value([run_id]).run()
    at.button(key="runs_delete").click().run()
    ok(at)
    assert any("cannot be undone" in w.value for w in at.warning)
    assert len(store.list_runs()) == 1
    at.button(key="runs_delete_confirm").click().run()
    ok(at)
    assert store.list_runs().empty
    assert any("No runs yet" in i.value for i in at.info)


def test_runs_page_empty_store(runs_dir):
    at = make_app().run()
    at.switch_page("pages/runs.py").run()
    ok(at)
    assert any("No runs yet" in i.value for i in at.info)


# ---------------------------------------------------------------------------- sessions

@pytest.mark.slow  # several page runs (CI runs it)
def test_two_sessions_do_not_mix_and_the_base_model_is_untouched(runs_dir):
    from dashboard import state

    a = ok(make_app(prune_pruners=["magnitude"], prune_sparsity=30).run())
    b = ok(make_app(prune_pruners=["snip"], prune_sparsity=90).run())
    key = state.setup(state.Experiment(calib=32, val_samples=64)).model_key
    base = state.data.base_model(key).model
    snapshot = {k: v.clone() for k, v in base.state_dict().items()}

    a.run()
    assert [t["name"] for t in figure(a, "prune_chart_kept")["data"]] == ["magnitude"]
    assert [t["name"] for t in figure(b, "prune_chart_kept")["data"]] == ["snip"]
    assert a.session_state["prune_sparsity"] == 30 and b.session_state["prune_sparsity"] == 90

    # both train at once; each follows its own run
    id_a = start_run(a, epochs=1, samples=128)
    id_b = start_run(b, epochs=1, samples=128)
    assert id_a != id_b
    wait_for(a, lambda x: bool(x.success))
    wait_for(b, lambda x: bool(x.success))
    assert any("magnitude 30%" in shown(m.value) for m in a.markdown)
    assert any("snip 90%" in shown(m.value) for m in b.markdown)

    for k, v in base.state_dict().items():
        assert torch.equal(v, snapshot[k]), f"{k} of the cached base model changed"
    assert not any(hasattr(m, "parametrizations") for m in base.modules())


def test_settings_follow_the_session_across_pages(runs_dir):
    at = ok(make_app(prune_pruners=["magnitude"]).run())
    at.select_slider(key="prune_sparsity").set_value(70).run()
    at.switch_page("pages/rollout.py").run()
    ok(at)
    assert any("70%" in m.value for m in at.sidebar.markdown)
    at.switch_page("pages/prune.py").run()
    ok(at)
    assert at.select_slider(key="prune_sparsity").value == 70


# ---------------------------------------------------------------------------- AMAP

amap_only = pytest.mark.skipif("amap" not in list_pruners(), reason="amap not in core")


def start_amap(at: AppTest, steps: int, samples: int = 128) -> str:
    at.switch_page("pages/train.py").run()
    ok(at)
    at.radio(key="train_mode").set_value("amap").run()
    ok(at)
    at.number_input(key="amap_steps").set_value(steps)
    at.number_input(key="amap_batch").set_value(16)
    at.number_input(key="amap_samples").set_value(samples)
    at.slider(key="amap_budget").set_value(0.7)
    at.button(key="amap_start").click().run()
    ok(at)
    run_id = at.query_params["run"]
    return run_id[0] if isinstance(run_id, list) else run_id


@amap_only
def test_amap_is_not_run_by_the_prune_page(runs_dir):
    at = ok(make_app(prune_pruners=["magnitude"]).run())
    assert "amap" not in at.multiselect(key="prune_pruners").options
    assert any("Train page" in c.value for c in at.sidebar.caption)


@amap_only
def test_amap_runs_from_the_train_page(runs_dir):
    at = make_app(prune_pruners=["magnitude"]).run()
    run_id = start_amap(at, steps=5)
    wait_for(at, lambda a: bool(a.success) or bool(errors(a)))
    assert not errors(at)
    assert any(run_id in shown(s.value) for s in at.success)
    m = metrics(at)
    assert {"Attention MACs ratio", "Parameters", "MACs", "Validation accuracy"} <= set(m)
    assert float(m["Attention MACs ratio"][0].rstrip("%")) <= 70.0
    assert figure(at, "train_chart_amap")["data"]
    run = RunStore(runs_dir).get_run(run_id)
    assert run["status"] == "finished" and run["pruner"] == "amap"
    assert run["sparsity"] == pytest.approx(0.3)
    store = RunStore(runs_dir)
    assert store.checkpoint_path(run_id).exists()
    assert len(store.metrics(run_id)) == 1


@amap_only
def test_amap_cancel(runs_dir):
    at = make_app(prune_pruners=["magnitude"]).run()
    run_id = start_amap(at, steps=5000, samples=512)
    at.button(key="train_cancel").click().run()
    ok(at)
    wait_for(at, lambda a: any("Cancelled" in w.value for w in a.warning) or bool(errors(a)))
    assert not errors(at)
    run = RunStore(runs_dir).get_run(run_id)
    assert run["status"] == "cancelled" and run["pruner"] == "amap"


# ---------------------------------------------------------------------------- core.study parity

def test_a_notebook_call_gives_the_numbers_the_prune_page_shows(runs_dir):
    """The same settings through ``core.study`` from plain objects (no dashboard import)
    give the cards and the numbers table of the Prune page."""
    from core import study
    from core.data import load_dataset

    at = ok(make_app(prune_pruners=["magnitude", "l2-norm"], prune_sparsity=40,
                     prune_scope="layer", prune_seed=2).run())
    at.session_state["prune_numbers"] = True
    ok(at.run())
    assert not errors(at)
    cards = metrics(at)
    table = at.dataframe[0].value.set_index("criterion")

    model = build_model("vit-tiny", 6, pretrained=True, dataset="shapes")
    # the dashboard generates a 1024-image shapes training split to draw calibration batches
    train_set, val_set = load_dataset("shapes", (32, 32), seed=0, num_train=1024)
    df = study.sweep(model, train_set, val_set, ["magnitude", "l2-norm"], [0.0, 0.4],
                     calib=32, seeds=(2,), val_samples=64, scope="layer", attention=False)
    rows = [df[df.sparsity == 0].iloc[0]] + [
        df[(df.criterion == c) & (df.sparsity == 0.4)].iloc[0] for c in ("magnitude", "l2-norm")]
    assert cards["Accuracy"] == [f"{r['accuracy']:.1%}" for r in rows]
    assert cards["Loss"] == [f"{r['loss']:.3f}" for r in rows]
    assert cards["Params kept"] == [f"{r['params_kept']:.1%}" for r in rows[1:]]
    assert cards["MACs kept"] == [f"{r['macs_kept']:.1%}" for r in rows[1:]]
    for name, r in zip(["dense", "magnitude", "l2-norm"], rows):
        for col, page_col in (("accuracy", "val_accuracy"), ("loss", "val_loss"),
                              ("macro_f1", "val_macro_f1"), ("params_kept", "params_kept"),
                              ("macs_kept", "macs_kept")):
            assert table.loc[name, page_col] == pytest.approx(r[col], rel=1e-9), (name, col)


# ---------------------------------------------------------------------------- byte-bounded caches

def test_byte_cache_evicts_by_bytes_least_recently_used_first():
    import numpy as np

    from dashboard.state.cache import ByteLRU

    c = ByteLRU(budget=1000)
    for k in "abc":
        c.get(k, lambda: np.zeros(100, np.float32))  # 400 bytes each
    assert "a" not in c and len(c) == 2 and c.used == 800  # a third would be 1200 > 1000
    c.get("b", lambda: None)  # a hit: b is now the most recent, its value unchanged
    c.get("d", lambda: np.zeros(50, np.float32))  # 200 more: 1000 fits
    assert set(k for k in "abcd" if k in c) == {"b", "c", "d"} and c.used == 1000
    c.get("e", lambda: np.zeros(10, np.float32))  # 40 more: the oldest (c) goes
    assert "c" not in c and "b" in c and c.used == 640
    big = c.get("huge", lambda: np.zeros(1000, np.float32))  # above the budget: not kept
    assert big.shape == (1000,) and "huge" not in c and c.used == 640


def test_byte_cache_computes_a_key_once_for_concurrent_callers(monkeypatch):
    from types import SimpleNamespace

    from dashboard.state import cache
    from dashboard.state.cache import ByteLRU

    waiting = threading.Semaphore(0)

    class Pending(threading.Event):  # the cache's "being computed" marker, its waits counted
        def wait(self, timeout=None):
            waiting.release()
            return super().wait(timeout)

    monkeypatch.setattr(cache, "threading", SimpleNamespace(Event=Pending, Lock=threading.Lock))
    c, calls, gate = ByteLRU(budget=10**6), [], threading.Event()

    def slow():
        calls.append(1)
        gate.wait(HANG_S)
        return torch.zeros(4)

    threads = [threading.Thread(target=c.get, args=("k", slow)) for _ in range(4)]
    for t in threads:
        t.start()
    for _ in range(3):  # the three others wait for the one computing
        assert waiting.acquire(timeout=HANG_S)
    gate.set()
    for t in threads:
        join(t)
    assert len(calls) == 1 and c.used == 16

    def fails():
        raise ValueError("no")

    with pytest.raises(ValueError):
        c.get("bad", fails)
    assert "bad" not in c and c.get("bad", lambda: torch.zeros(1)).shape == (1,)


def test_attention_maps_are_kept_within_the_byte_budget(runs_dir, monkeypatch):
    """The attention-map cache holds as many images' maps as the budget allows, measured by
    the arrays' bytes (it used to hold 1,024 entries whatever their size)."""
    from dashboard import state
    from dashboard.state import cache, prefetch

    # earlier tests' Prune pages queued neighbouring stops: that idle-time work writes masks
    # into the same store, so it must be over before the store is swapped for a small one
    assert prefetch.wait_done(HANG_S)
    s = state.setup(state.Experiment(calib=32, val_samples=64))
    key = s.key("magnitude", 0.5)
    maps_of = state.attention.attention_maps
    one = sum(m.nbytes for m in maps_of(key, state.keys.ImageRef(0), s.val_set[0][0]))
    small = cache.ByteLRU(budget=int(2.5 * one))
    monkeypatch.setattr(cache, "BIG", small)
    for i in range(5):
        maps_of(key.at(0.0), state.keys.ImageRef(i), s.val_set[i][0])
    # also the dense key's pruned result (0 bytes) lives there; two images' maps fit
    assert small.used <= small.budget and small.used == 2 * one
    assert sum(1 for k in small.keys() if k[0].endswith("attention_maps")) == 2


def test_the_prefetch_writes_only_into_the_cache_it_read_from(runs_dir, monkeypatch):
    """The byte-budget test above used to fail on a loaded machine: a prefetch still running
    from an earlier test wrote into the cache the test had just put in place. A prefetch
    requested before the server's cache is swapped writes its scores, masks and counts into
    the cache it started with; the new one receives nothing from it."""
    from dashboard import session, state
    from dashboard.state import cache, prefetch

    old, new = cache.ByteLRU(cache.budget_bytes()), cache.ByteLRU(cache.budget_bytes())
    monkeypatch.setattr(cache, "BIG", old)
    s = state.setup(state.Experiment(pruners=("magnitude",), calib=32, val_samples=64))
    with session.script_run():  # a page is running: the prefetch waits for idle time
        assert prefetch.request(s, s.exp)
        monkeypatch.setattr(cache, "BIG", new)
    assert prefetch.wait_done(240) and prefetch.current().status == "done"
    assert len(new) == 0
    assert {k[1].sparsity for k in old.keys() if k[0].endswith(".eval_counts")} == {
        0.4, 0.45, 0.55, 0.6}


def test_a_page_job_writes_only_into_the_cache_it_read_from(runs_dir, monkeypatch):
    """The Prune page's job, held before its first mask while the server's cache is swapped,
    computes into the cache it started with, never into the new one."""
    import threading

    from dashboard import state
    from dashboard.state import cache, prune_work

    old, new = cache.ByteLRU(cache.budget_bytes()), cache.ByteLRU(cache.budget_bytes())
    monkeypatch.setattr(cache, "BIG", old)
    reached, go = threading.Event(), threading.Event()
    real = prune_work.layer_kept

    def layer_kept(key):
        reached.set()
        assert go.wait(240)
        return real(key)

    monkeypatch.setattr(prune_work, "layer_kept", layer_kept)
    s = state.setup(state.Experiment(pruners=("magnitude",), calib=32, val_samples=64))
    work = prune_work.start(s, s.exp, restart=True)
    assert reached.wait(240)
    monkeypatch.setattr(cache, "BIG", new)
    go.set()
    assert work.join(240) and work.status == "done", work.reason
    assert len(new) == 0
    assert any(k[0].endswith(".eval_counts") for k in old.keys())


@pytest.mark.slow  # evaluates deit-tiny on the Prune page
def test_weights_radio_offers_only_what_exists_and_agrees_with_the_banner(runs_dir):
    at = ok(make_app(prune_pruners=["magnitude"]).run())
    radio = lambda: at.radio(key="prune_source")  # noqa: E731
    assert radio().value == "checkpoint"
    at.selectbox(key="prune_model").set_value("deit-tiny").run()
    ok(at)
    # no checkpoint for deit-tiny: not offered, and the session is on "untrained"
    assert "checkpoint" not in radio().options and radio().value == "init"
    assert any("untrained" in w.value for w in at.warning)
    at.selectbox(key="prune_model").set_value("vit-tiny").run()
    ok(at)
    assert radio().value == "checkpoint"  # what the user had: trained where it exists
    radio().set_value("init").run()
    at.selectbox(key="prune_dataset").set_value("digits").run()
    ok(at)
    assert radio().value == "init"  # the user's own choice of untrained stands


def test_token_merging_page_shows_groups_metrics_and_the_curve(runs_dir):
    from core import study

    at = make_app().run()
    at.switch_page("pages/tokens.py").run()
    ok(at)
    assert not errors(at)
    m = metrics(at)
    assert m["MACs kept"] and m["Tokens after the last block"]
    at.slider(key="tok_r").set_value(0).run()
    ok(at)
    assert metrics(at)["MACs kept"] == ["100.0%"]  # r = 0 is the model itself
    assert metrics(at)["Tokens after the last block"] == ["65"]  # vit-tiny: 64 patches + CLS
    import base64

    import numpy as np

    def values(v):  # plotly's JSON holds numeric arrays as {"dtype", "bdata"}
        return (np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
                if isinstance(v, dict) else np.asarray(v))

    curve = figure(at, "tok_chart_curve")["data"][0]
    x, y = values(curve["x"]), values(curve["y"])
    assert x[0] == 1.0 and len(x) == len((0, 1, 2, 3, 4, 6, 8, 10, 13, 16))
    assert ((0 <= y) & (y <= 1)).all() and list(curve["text"][:2]) == ["r=0", "r=1"]
    assert study.MERGE_COLUMNS  # the CSV's columns are core's
