"""The Compare page under AppTest: a sweep as a background job, its charts and export
buttons, cancel, and the command it shows computing the same CSV from the command line."""
from __future__ import annotations

import io
import json
import shlex
import threading
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.__main__ import main
from test_dashboard import HANG_S, join, shown

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "navigation.py")


def compare_page(**session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=240)
    for key, value in {"prune_val": 64, "prune_calib": 32, **session}.items():
        at.session_state[key] = value
    at.run()
    at.switch_page("pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def wait_for(at: AppTest, done) -> AppTest:
    """The page once its comparison has ended (the sweep's thread joined; ``HANG_S`` at most,
    as a hang guard), after one rerun; then ``done(at)`` must hold."""
    from dashboard.state import job

    j = job.find(at.session_state["compare_job"])
    assert j is None or j.join(HANG_S), "the comparison hangs"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert done(at), "the page does not show the end of its comparison"
    return at


def chart(at: AppTest, key: str) -> dict:
    for c in at.get("plotly_chart"):
        if key in c.proto.id:
            return json.loads(c.proto.spec)
    raise AssertionError(f"no chart {key!r}")


@pytest.mark.slow  # a sweep on the page and on the command line
def test_compare_page_sweeps_exports_and_its_command_reproduces_it(runs_dir, tmp_path):
    at = compare_page()
    at.multiselect(key="compare_criteria").set_value(["magnitude", "l2-norm"])
    at.text_input(key="compare_sparsities").set_value("0, 50, 90")
    at.number_input(key="compare_seeds").set_value(2)
    at.number_input(key="compare_val").set_value(32)
    at.button(key="compare_start").click().run()
    wait_for(at, lambda a: bool(a.success))
    assert not at.error
    fig = chart(at, "compare_chart_curves")
    names = {t.get("name") for t in fig["data"]}
    assert {"magnitude", "l2-norm (structured)"} <= names
    assert chart(at, "compare_chart_fidelity")["data"]
    # one download button per chart and format, the sweep and the report
    keys = {b.proto.id for b in at.get("download_button")}
    for stem in ("accuracy_vs_sparsity", "accuracy_vs_macs", "fidelity_vs_sparsity", "grid"):
        for fmt in ("png", "svg", "csv"):
            assert any(f"compare_dl_{stem}_{fmt}" in k for k in keys), (stem, fmt)
    assert any("compare_dl_report" in k for k in keys)

    from dashboard.state import compare

    job = compare.get_sweep(at.session_state["compare_job"]).snapshot()
    page_df = job["df"]
    assert len(page_df) == 2 * 3 * 2
    command = at.code[0].value
    assert command == job["command"] and command.startswith("python -m core sweep ")
    argv = shlex.split(command)[3:]
    out = tmp_path / "cli"
    argv[argv.index("--out") + 1] = str(out)
    assert main([*argv, "--no-progress"]) == 0
    cli = pd.read_csv(out / "sweep.csv")
    page = pd.read_csv(io.BytesIO(job["files"]["sweep.csv"]))
    pd.testing.assert_frame_equal(cli, page, rtol=1e-6)
    assert (out / "grid.csv").read_bytes() == job["files"]["grid.csv"]


def test_compare_page_cancel_and_bad_sparsities(runs_dir):
    at = compare_page()
    at.text_input(key="compare_sparsities").set_value("0, 50, 120")
    at.button(key="compare_start").click().run()
    assert any("120% is not in [0, 100)" in shown(e.value) for e in at.error)

    at.multiselect(key="compare_criteria").set_value(["magnitude", "snip", "grasp"])
    at.text_input(key="compare_sparsities").set_value(", ".join(str(i) for i in range(99)))
    at.number_input(key="compare_seeds").set_value(3)
    at.button(key="compare_start").click().run()
    at.button(key="compare_cancel").click().run()
    wait_for(at, lambda a: any("Cancelled" in w.value for w in a.warning))
    from dashboard.state import compare

    job = compare.get_sweep(at.session_state["compare_job"]).snapshot()
    assert job["status"] == "cancelled" and not job["files"]
    assert len(job["df"]) < 3 * 3 * 99
