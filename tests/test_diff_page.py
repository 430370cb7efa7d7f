"""The Diff page under AppTest: dense against magnitude 50%, as a background job; the gallery,
the side-by-side and the downloads appear, and the per-example CSV is compare_models' own."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from test_dashboard import HANG_S

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "navigation.py")
VAL = 32


def diff_page(**session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    for key, value in {"prune_val": 64, "prune_calib": 32, **session}.items():
        at.session_state[key] = value
    at.run()
    at.switch_page("pages/diff.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def finish(at: AppTest) -> AppTest:
    from dashboard.state import diff

    j = diff.get(at.session_state["diff_job"])
    assert j is not None and j.join(HANG_S), "the comparison hangs"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def downloads(at: AppTest) -> dict[str, object]:
    return {b.proto.id: b for b in at.get("download_button")}


def test_page_is_thin():
    assert len((ROOT / "dashboard" / "pages" / "diff.py").read_text().splitlines()) < 400


def test_dense_against_magnitude_half(runs_dir):
    from core.diff import compare_models
    from dashboard import state
    from dashboard.state import diff

    at = diff_page()
    assert "accuracy does not move" in " ".join(m.value for m in at.markdown)
    at.radio(key="diff_a_kind").set_value("dense")
    at.radio(key="diff_b_kind").set_value("pruned").run()
    at.selectbox(key="diff_b_pruner").set_value("magnitude")
    at.select_slider(key="diff_b_sparsity").set_value(50)
    at.number_input(key="diff_val").set_value(VAL)
    at.button(key="diff_start").click().run()
    finish(at)
    assert not at.error, [e.value for e in at.error]
    keys = downloads(at)
    assert any("diff_dl_csv" in k for k in keys)
    assert any("diff_dl_report" in k for k in keys)
    snap = diff.get(at.session_state["diff_job"]).snapshot()
    assert snap["status"] == "done"

    # the page's CSV is compare_models on the same two models and images, called here
    s = snap["setup"]
    ours = compare_models(diff.load(s, diff.Side("dense")),
                          diff.load(s, diff.Side("pruned", "magnitude", 0.5)),
                          state.data.val_subset(s.data, VAL), batch_size=diff.BATCH)
    page = pd.read_csv(io.StringIO(snap["df"].to_csv(index=False)))
    pd.testing.assert_frame_equal(page, pd.read_csv(io.StringIO(ours.to_csv(index=False))))
    assert snap["files"]["diff.csv"] == ours.to_csv(index=False).encode()

    # magnitude 50% of the shipped vit-tiny flips some of the 32 images
    assert snap["df"]["flip"].isin(diff.FLIPPED).any()
    # the gallery, its PNG and the side-by-side appear
    at.multiselect(key="diff_kinds").set_value(list(diff.FLIPPED)).run()
    assert not at.exception
    keys = downloads(at)
    assert any("diff_dl_gallery" in k for k in keys)
    assert any("diff_dl_example" in k for k in keys)
    assert len([e for e in at.main if type(e).__name__ == "Image"]) >= 2


def test_gallery_filters_and_sorts():
    from dashboard.state import diff

    df = pd.DataFrame({"index": [0, 1, 2, 3], "label": [0, 1, 0, 1],
                       "pred_a": [0, 1, 1, 0], "pred_b": [1, 0, 0, 1],
                       "conf_a": [0.9, 0.8, 0.5, 0.6], "conf_b": [0.3, 0.7, 0.9, 0.2],
                       "flip": ["lost", "lost", "gained", "gained"],
                       "rollout_change": [0.1, 0.4, 0.3, 0.2]})
    assert list(diff.gallery(df, ["lost", "gained"], None, "change")["index"]) == [1, 2, 3, 0]
    assert list(diff.gallery(df, ["lost", "gained"], None, "drop")["index"]) == [0, 3, 1, 2]
    assert list(diff.gallery(df, ["gained"], 1, "change")["index"]) == [3]


def test_deleted_run_reads_as_a_message(runs_dir):
    from dashboard.state import diff

    at = diff_page()
    with pytest.raises(ValueError, match="no longer in the run store"):
        diff._checkpoint(diff.Side("run", run_id="20240101-000000-abcdef"))
    del at


def test_lineage_tree_sets_a_and_b(runs_dir):
    from core import lineage
    from core.runs import RunStore

    store = RunStore(runs_dir)
    run_id = store.create_run("vit-tiny", "shapes", "magnitude", 0.5)
    store.add_lineage([lineage.dense("vit-tiny", "shapes", "checkpoint"),
                       lineage.pruned("magnitude", 0.5, 0, "global", 32),
                       lineage.finetuned(run_id, epochs=1, lr=1e-3)], run_id,
                      {0: {"macs": 1.5e6, "accuracy": 0.75}})
    at = diff_page()
    text = " ".join(m.value for m in at.markdown).replace("\\", "")  # md() escapes
    assert "pruned by magnitude at 50% (seed 0)" in text and "accuracy 75.0%" in text
    assert f"fine-tuned by run {run_id}" in text  # no checkpoint: shown, not offered
    assert len(at.selectbox(key="diff_node_a").options) == 2
    at.selectbox(key="diff_node_a").set_value(0)
    at.selectbox(key="diff_node_b").set_value(1)
    at.button(key="diff_pick").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="diff_a_kind").value == "dense"
    assert at.radio(key="diff_b_kind").value == "pruned"
    assert at.selectbox(key="diff_b_pruner").value == "magnitude"
    assert at.select_slider(key="diff_b_sparsity").value == 50
