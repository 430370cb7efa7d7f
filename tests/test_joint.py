"""The joint axis (issue 25, item 4): criterion × sparsity × ToMe r. A merged point against
``merge_tokens(prune(...).model, r)`` evaluated by hand, MACs by hand, r = 0 rows against the
sweep without merging, the Pareto front against a brute-force check, the command line
(``--tome-r``, old folders resuming) and the Compare page."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from core import charts, report, study
from core.__main__ import main
from core.data import load_dataset
from core.models import build_model, count_macs, save_model
from core.pruning import prune
from core.tokens import merge_tokens
from core.train import evaluate

DATA_OPTS = ["--data-opt", "num_train=60", "--data-opt", "num_val=24"]
RS = (0, 2, 4)


@pytest.fixture(scope="module")
def model():
    """vit-tiny at 16×16 (16 patches + CLS: room to merge), 2 blocks of 2 heads, at init."""
    torch.manual_seed(0)
    return build_model("vit-tiny", 6, img_size=16, patch_size=4, embed_dim=16, depth=2,
                       num_heads=2).eval()


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", 16, seed=0, num_train=60, num_val=24)


@pytest.fixture(scope="module")
def joint(model, data):
    """magnitude (masks) and l2-norm (a shrunk model) at 0 and 50%, r in RS."""
    train_set, val_set = data
    return study.sweep(model, train_set, val_set, ["magnitude", "l2-norm"], [0.0, 0.5],
                       calib=8, val_samples=16, rs=RS)


def test_r0_rows_are_the_sweep_without_merging(joint, model, data):
    train_set, val_set = data
    plain = study.sweep(model, train_set, val_set, ["magnitude", "l2-norm"], [0.0, 0.5],
                        calib=8, val_samples=16)
    assert list(plain.columns) == study.SWEEP_COLUMNS and study.SWEEP_COLUMNS[-2:] == \
        ["r", "latency_ms"]
    assert (plain["r"] == 0).all() and plain["latency_ms"].isna().all()  # latency off
    pd.testing.assert_frame_equal(joint[joint.r == 0].reset_index(drop=True), plain)
    assert len(joint) == 2 * 2 * len(RS)
    per_point = joint.groupby(["criterion", "sparsity"], sort=False)["r"].apply(tuple)
    assert set(per_point) == {RS}  # one row per r, in the order given, after its point


@pytest.mark.parametrize("criterion", ["magnitude", "l2-norm"])
def test_a_merged_point_is_merge_tokens_of_the_pruned_model(joint, model, data, criterion):
    """Masks (magnitude) and a physically shrunk model (l2-norm) both compose with merging."""
    _, val_set = data
    val = study.val_subset(val_set, 16)
    res = prune(model, criterion, 0.5)
    dense_macs = count_macs(model)
    for r in RS[1:]:
        net = merge_tokens(res.model, r)
        ev = evaluate(net, val)
        row = joint[(joint.criterion == criterion) & (joint.sparsity == 0.5)
                    & (joint.r == r)].iloc[0]
        assert row["accuracy"] == pytest.approx(ev["accuracy"])
        assert row["loss"] == pytest.approx(ev["loss"], rel=1e-5)
        if criterion == "l2-norm":  # the shrunk model merged: its own MACs
            assert row["macs_kept"] == pytest.approx(count_macs(net) / dense_macs)
        else:  # the dense model's merged MACs less each removed weight × its merged tokens
            tokens_in = {}  # rows a weight meets: tokens (Linear), output pixels (patch Conv2d)
            hooks = [m.register_forward_hook(
                lambda mod, i, o, n=n: tokens_in.__setitem__(n + ".weight", o[0, 0].numel()
                                                             if o.dim() == 4 else
                                                             o.numel() // o.shape[-1]))
                for n, m in net.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                  torch.nn.Conv2d))]
            with torch.no_grad():
                net(torch.zeros(1, *model.input_shape))
            for h in hooks:
                h.remove()
            removed = sum(int((m == 0).sum()) * tokens_in.get(k, 0) for k, m in res.masks.items())
            assert row["macs_kept"] == pytest.approx((count_macs(net) - removed) / dense_macs)
    dense = joint[(joint.criterion == criterion) & (joint.sparsity == 0.0)]
    assert dense["macs_kept"].tolist() == pytest.approx(
        [count_macs(merge_tokens(model, r)) / dense_macs for r in RS])


def test_macs_fall_with_r_and_params_do_not_move(joint):
    for _, d in joint.groupby(["criterion", "sparsity"]):
        d = d.sort_values("r")
        assert (np.diff(d["macs_kept"].to_numpy()) < 0).all()
        assert d["params_kept"].nunique() == 1


def _brute_force(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n = len(x)
    out = np.zeros(n, bool)
    for i in range(n):
        if np.isnan(x[i]) or np.isnan(y[i]):
            continue
        out[i] = not any(x[j] <= x[i] and y[j] >= y[i] and (x[j] < x[i] or y[j] > y[i])
                         for j in range(n) if not (np.isnan(x[j]) or np.isnan(y[j])))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_pareto_front_is_the_brute_force_one(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    coarse = seed % 2 == 0  # few distinct values: ties in x, in y and whole duplicates
    x = rng.integers(0, 5, n).astype(float) if coarse else rng.random(n)
    y = rng.integers(0, 5, n).astype(float) if coarse else rng.random(n)
    if seed % 3 == 0:
        x[rng.random(n) < 0.1] = np.nan
    df = pd.DataFrame({"macs_kept": x, "accuracy": y, "tag": range(n)})
    got = study.pareto_front(df)
    assert list(got.columns) == ["macs_kept", "accuracy", "tag", "pareto"]
    assert got["pareto"].tolist() == _brute_force(x, y).tolist()
    assert "pareto" not in df.columns  # a copy


def test_latency_is_measured_when_asked(model, data):
    train_set, val_set = data
    df = study.sweep(model, train_set, val_set, ["magnitude"], [0.5], calib=8, val_samples=8,
                     rs=(0, 4), latency=True, attention=False)
    assert (df["latency_ms"] > 0).all() and np.isfinite(df["latency_ms"]).all()
    c = charts.pareto(df, "latency_ms")
    assert c.panels[0].xlabel.startswith("latency") and c.table["pareto"].any()
    with pytest.raises(ValueError, match="distinct integers"):
        study.sweep(model, train_set, val_set, ["magnitude"], [0.5], rs=(4, 4))


def test_pareto_chart_marks_the_front_of_the_means(joint):
    c = charts.pareto(joint, kinds={"l2-norm": "structured"})
    p = c.panels[0]
    assert {(s.group, s.r) for s in p.points} == {(crit, r) for crit in ("magnitude", "l2-norm")
                                                    for r in RS}
    assert len({s.marker for s in p.points}) == len(RS)  # one marker per r
    t = study.pareto_front(joint.groupby(["criterion", "sparsity", "r"], sort=False)[
        ["macs_kept", "accuracy"]].mean().reset_index())
    assert sorted(p.step.x) == sorted(t[t.pareto]["macs_kept"])
    assert (np.diff(p.step.x) >= 0).all()


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("m") / "tiny16.safetensors")


def _cli(model_file, out, *extra):
    return main(["sweep", "--model", str(model_file), "--data", "shapes", *DATA_OPTS,
                 "--criteria", "magnitude", "l2-norm", "--sparsities", "0", "0.5", "--val",
                 "12", "--calib", "8", "--no-attention", "--grid-image", "-1", "--no-progress",
                 "--out", str(out), *extra])


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_cli_tome_r_writes_the_joint_csv_charts_and_report(model_file, tmp_path):
    out = tmp_path / "joint"
    assert _cli(model_file, out, "--tome-r", "0", "4") == 0
    df = pd.read_csv(out / "sweep.csv")
    assert list(df.columns) == study.SWEEP_COLUMNS and len(df) == 2 * 2 * 2
    assert df["r"].tolist() == [0, 4] * 4 and df["latency_ms"].isna().all()
    assert json.loads((out / "sweep.json").read_text())["tome_r"] == [0, 4]
    for ext in ("png", "svg", "csv"):
        assert (out / f"pareto_macs.{ext}").is_file()
    assert not (out / "pareto_latency.png").exists()  # no --latency
    table = pd.read_csv(out / "pareto_macs.csv")
    assert table["pareto"].any() and set(table["r"]) == {0, 4}
    html = (out / "report.html").read_text()
    assert "Pareto frontier" in html and "--tome-r 0 4" in html
    # the curves are the r = 0 rows: the same files as a sweep without merging
    curve = pd.read_csv(out / "accuracy_vs_sparsity.csv")
    assert len(curve) == 2 * 2
    # a resume with the same settings computes nothing; another r is refused
    assert _cli(model_file, out, "--tome-r", "0", "4", "--resume") == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "sweep.csv"), df)
    assert _cli(model_file, out, "--tome-r", "0", "8", "--resume") == 2


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_a_sweep_folder_from_before_the_joint_axis_resumes(model_file, tmp_path):
    """A folder whose sweep.csv lacks ``r`` and ``latency_ms`` and whose sweep.json has no
    tome_r / latency (what the CLI wrote before them) resumes at r = 0."""
    out = tmp_path / "old"
    assert _cli(model_file, out) == 0
    full = pd.read_csv(out / "sweep.csv", float_precision="round_trip")
    settings = json.loads((out / "sweep.json").read_text())
    assert "tome_r" not in settings and "latency" not in settings  # defaults: not recorded
    old = full.drop(columns=["r", "latency_ms"]).iloc[:2]  # killed after two points
    old.to_csv(out / "sweep.csv", index=False)
    assert _cli(model_file, out, "--resume") == 0
    again = pd.read_csv(out / "sweep.csv", float_precision="round_trip")
    pd.testing.assert_frame_equal(again, full)
    with pytest.raises(SystemExit):
        main(["sweep", "--out", str(out), "--tome-r", "-1"])


def test_sweep_command_carries_the_joint_flags():
    line = report.sweep_command("vit-tiny", "shapes", ["magnitude"], [0.5], [0], 8, 4,
                                "global", rs=(0, 8), latency=True)
    assert line.endswith("--tome-r 0 8 --latency --out sweep_out")
    assert "--tome-r" not in report.sweep_command("vit-tiny", "shapes", ["magnitude"], [0.5],
                                                  [0], 8, 4, "global")


@pytest.mark.slow  # a sweep on the page
def test_compare_page_with_r_shows_the_pareto_chart(runs_dir):
    from dashboard.state import compare
    from test_dashboard_compare import chart, compare_page

    at = compare_page()
    assert at.multiselect(key="compare_r").value == [0]
    at.multiselect(key="compare_criteria").set_value(["magnitude"])
    at.text_input(key="compare_sparsities").set_value("0, 50")
    at.number_input(key="compare_val").set_value(16)
    at.multiselect(key="compare_r").set_value([0, 4])
    at.button(key="compare_start").click().run()
    # the job's own join (test_dashboard_compare.wait_for looks for a thread name the Job
    # mechanism no longer gives)
    assert compare.get_sweep(at.session_state["compare_job"]).join(600)
    at.run()
    assert not at.exception and at.success, [e.value for e in at.exception]
    fig = chart(at, "compare_chart_pareto")
    names = [t.get("name") for t in fig["data"]]
    assert "magnitude, r=0" in names and "magnitude, r=4" in names
    assert "Pareto frontier" in names
    step = next(t for t in fig["data"] if t.get("name") == "Pareto frontier")
    assert step["line"]["shape"] == "hv"

    job = compare.get_sweep(at.session_state["compare_job"]).snapshot()
    assert sorted(set(job["df"]["r"])) == [0, 4]
    assert b"r,latency_ms" in job["files"]["sweep.csv"].splitlines()[0]
    assert "--tome-r 0 4" in at.code[0].value
    assert "pareto_macs.png" in job["files"]
    assert math.isnan(job["df"]["latency_ms"].iloc[0])
