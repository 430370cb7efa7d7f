"""Comparing criteria (issue 12): ``python -m core sweep`` / ``grid`` against hand
computations, the exported figures and report, layer sensitivity by hand, sharding and
torchrun, cancel."""
from __future__ import annotations

import copy
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core import figures, report, study
from core.__main__ import main
from core.attention import capture_attention
from core.data import calibration_batch, load_dataset
from core.models import build_model, save_model
from core.pruning import prune
from core.train import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA_OPTS = ["--data-opt", "num_train=120", "--data-opt", "num_val=40"]


@pytest.fixture(scope="module")
def model():
    """vit-tiny shrunk to 8×8 images (4 patches + CLS), 2 blocks of 2 heads, at its init."""
    torch.manual_seed(0)
    return build_model("vit-tiny", 6, img_size=8, patch_size=4, embed_dim=16, depth=2,
                       num_heads=2).eval()


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", 8, seed=0, num_train=120, num_val=40)


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    return save_model(model, tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def swept(model_file, tmp_path_factory):
    """One CLI sweep on the tiny model: (exit code, out dir)."""
    out = tmp_path_factory.mktemp("sweep")
    code = main(["sweep", "--model", str(model_file), "--data", "shapes", *DATA_OPTS,
                 "--criteria", "magnitude", "snip", "l2-norm", "--sparsities", "0", "0.3", "0.6",
                 "--seeds", "2", "--val", "24", "--calib", "16", "--scope", "layer",
                 "--sensitivity", "0.5", "--no-progress", "--out", str(out)])
    return code, out


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_cli_sweep_csv_equals_a_hand_computation(swept, model, data):
    code, out = swept
    assert code == 0
    df = pd.read_csv(out / "sweep.csv")
    assert list(df.columns) == study.SWEEP_COLUMNS
    assert len(df) == 3 * 3 * 2 and sorted(set(df["seed"])) == [0, 1]
    assert not df.drop(columns="latency_ms").isna().any().any()  # every column filled
    assert df["latency_ms"].isna().all() and (df["r"] == 0).all()  # no --latency, no merging

    train_set, val_set = data
    val = study.val_subset(val_set, 24)  # --val 24: the subset every page measures on
    images, labels = calibration_batch(train_set, 16, 1)
    res = prune(model, "snip", 0.6, images, labels, scope="layer")
    ev = evaluate(res.model, val)
    row = df[(df.criterion == "snip") & (df.sparsity == 0.6) & (df.seed == 1)].iloc[0]
    assert row["accuracy"] == pytest.approx(ev["accuracy"])
    assert row["loss"] == pytest.approx(ev["loss"], rel=1e-5)
    assert row["macro_f1"] == pytest.approx(ev["macro_f1"])
    kept = sum(int(m.sum()) for m in res.masks.values())
    total = sum(m.numel() for m in res.masks.values())
    dense_params = sum(p.numel() for p in model.parameters())
    assert row["params_kept"] == pytest.approx(1 - (total - kept) / dense_params)
    dense = df[df.sparsity == 0]
    assert dense["accuracy"].tolist() == pytest.approx([evaluate(model, val)["accuracy"]] * 6)


def _svg_text(path: Path) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", path.read_text()).split())


@pytest.mark.parametrize("stem, title", [
    ("accuracy_vs_sparsity", "validation accuracy vs sparsity"),
    ("accuracy_vs_kept", "validation accuracy vs fraction of weights kept"),
    ("accuracy_vs_macs", "validation accuracy vs MACs kept"),
    ("fidelity_vs_sparsity", "attention fidelity vs sparsity"),
    ("grid", "CLS attention of validation image 0 under pruning"),
    ("sensitivity", "layer sensitivity: accuracy drop when one layer is pruned")])
def test_cli_writes_png_svg_csv_per_chart(swept, stem, title):
    _, out = swept
    assert title in _svg_text(out / f"{stem}.svg")
    with Image.open(out / f"{stem}.png") as im:
        im.load()
        w, h = im.size
    if stem.startswith("accuracy"):
        assert (w, h) == (round(figures.SIZE[0] * figures.DPI),
                          round(figures.SIZE[1] * figures.DPI))
    assert w >= 1000 and h >= 600  # publication size at 300 dpi
    assert len(pd.read_csv(out / f"{stem}.csv")) > 0


def test_curve_numbers_are_mean_and_std_over_seeds(swept):
    _, out = swept
    df = pd.read_csv(out / "sweep.csv")
    t = pd.read_csv(out / "accuracy_vs_sparsity.csv")
    a = df[(df.criterion == "magnitude") & (df.sparsity == 0.6)]["accuracy"].to_numpy()
    r = t[(t.criterion == "magnitude") & (t.sparsity == 0.6)].iloc[0]
    assert r["mean"] == pytest.approx(a.mean()) and r["n"] == 2
    assert r["std"] == pytest.approx(a.std(ddof=1))
    k = pd.read_csv(out / "accuracy_vs_kept.csv")
    assert k["kept"].tolist() == pytest.approx((1 - k["sparsity"]).tolist())


def test_grid_csv_is_the_fig3_similarity(swept, model, data):
    _, out = swept
    train_set, val_set = data
    images, labels = calibration_batch(train_set, 16, 0)
    g = study.fig3(model, val_set[0][0], ["magnitude", "snip", "l2-norm"], [0.0, 0.3, 0.6],
                   images, labels, scope="layer")
    sim = pd.read_csv(out / "grid.csv").set_index("criterion")
    assert list(sim.columns) == ["dense", "30%", "60%"]
    np.testing.assert_allclose(sim.to_numpy(), g.similarity, atol=1e-6)


def test_report_is_self_contained(swept):
    _, out = swept
    html = (out / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from a network
    assert "<script" not in html and "<link" not in html
    imgs = re.findall(r"<img [^>]*src='([^']+)'", html)
    assert len(imgs) == 7 and all(s.startswith("data:image/svg+xml;base64,") for s in imgs)  # + Pareto
    assert "python -m core sweep --model" in html and "--seeds 2" in html
    assert "Every point" in html and "magnitude" in html


def test_usage_errors_are_one_line(model_file, tmp_path, capsys):
    bad = [["--criteria", "nope"], ["--criteria", "amap"], ["--model", "no-such-model"],
           ["--criteria", "magnitude", "magnitude"]]
    for extra in bad:
        code = main(["sweep", "--model", str(model_file), "--data", "shapes", *DATA_OPTS,
                     "--sparsities", "0", "0.5", "--no-progress", "--out", str(tmp_path),
                     *extra])
        err = capsys.readouterr().err
        assert code == 2, extra
        assert err.startswith("python -m core sweep: error: ") and "Traceback" not in err
    for extra in (["--sparsities", "1.5"], ["--seeds", "0"], ["--val", "x"]):
        with pytest.raises(SystemExit) as e:
            main(["sweep", "--out", str(tmp_path), *extra])
        assert e.value.code == 2
        assert "error:" in capsys.readouterr().err
    code = main(["grid", "--model", str(model_file), "--data", "shapes", *DATA_OPTS,
                 "--image", "999", "--out", str(tmp_path), "--no-progress"])
    assert code == 2 and "image index" in capsys.readouterr().err


def test_grid_command_writes_the_figure(model_file, tmp_path):
    code = main(["grid", "--model", str(model_file), "--data", "shapes", *DATA_OPTS,
                 "--criteria", "magnitude", "random", "--ratios", "0", "0.5", "0.9",
                 "--calib", "16", "--out", str(tmp_path)])
    assert code == 0
    assert "under pruning" in _svg_text(tmp_path / "grid.svg")
    sim = pd.read_csv(tmp_path / "grid.csv")
    assert sim["dense"].tolist() == [1.0, 1.0] and sim.shape == (2, 4)


def test_shards_together_are_the_whole_sweep(model, data):
    train_set, val_set = data
    args = dict(calib=8, seeds=(0, 1), val_samples=16)
    crits = ["random", "magnitude", "l2-norm"]
    whole = study.sweep(model, train_set, val_set, crits, [0.0, 0.5], **args)
    parts = [study.sweep(model, train_set, val_set, crits, [0.0, 0.5], shard=(r, 2), **args)
             for r in range(2)]
    assert [len(p) for p in parts] == [6, 6]  # 6 points (seed × criterion): 3 per rank
    joined = study.sort_sweep(pd.concat(parts, ignore_index=True), crits, (0, 1))
    pd.testing.assert_frame_equal(joined, whole)


def test_cancel_stops_the_point_in_progress(model, data):
    """Cancel set as the third point starts: its forward stops, the two rows done stay."""
    train_set, val_set = data
    cancel = threading.Event()
    seen = []

    def progress(frac, text):
        seen.append(text)
        if len(seen) == 4:  # the dense model, then the third point
            cancel.set()
    df = study.sweep(model, train_set, val_set, ["magnitude", "snip"], [0.0, 0.5, 0.9],
                     calib=8, val_samples=8, progress=progress, cancel=cancel)
    assert df.attrs["cancelled"] and len(df) == 2 and seen[0] == "the dense model"
    assert df["sparsity"].tolist() == [0.0, 0.5]
    assert study.sweep(model, train_set, val_set, ["magnitude"], [0.0], val_samples=8,
                       cancel=threading.Event()).attrs["cancelled"] is False


def test_layer_sensitivity_by_hand(model, data):
    train_set, val_set = data
    df = study.layer_sensitivity(model, train_set, val_set, ["magnitude", "l2-norm"], [0.5],
                                 calib=8, val_samples=24)
    val = study.val_subset(val_set, 24)
    dense_acc = evaluate(model, val)["accuracy"]
    # magnitude on blocks.0.mlp.fc1 alone: its half of smallest |w| zeroed, nothing else
    net = copy.deepcopy(model)
    w = net.blocks[0].mlp.fc1.weight.data
    k = w.numel() // 2
    cut = w.abs().flatten().kthvalue(k).values
    w.mul_((w.abs() > cut).float())
    assert int((w == 0).sum()) == k  # no ties at the cut
    row = df[(df.criterion == "magnitude") & (df.layer == "blocks.0.mlp.fc1")].iloc[0]
    acc = evaluate(net, val)["accuracy"]
    assert row["accuracy"] == pytest.approx(acc)
    assert row["accuracy_drop"] == pytest.approx(dense_acc - acc)
    # structured: only block 1's FFN loses half its neurons
    small = prune(model, "l2-norm", None, ratios={"mlp": [0.0, 0.5]}).model
    row = df[(df.criterion == "l2-norm") & (df.layer == "blocks.1.mlp")].iloc[0]
    assert row["accuracy"] == pytest.approx(evaluate(small, val)["accuracy"])
    layers = set(df[df.criterion == "l2-norm"]["layer"])
    assert layers == {f"blocks.{i}.{c}" for i in range(2) for c in ("qk", "v", "mlp")}
    assert len(df[df.criterion == "magnitude"]) == len(list(model.blocks)) * 4 + 2


def test_sensitivity_figure_and_report_without_attention(model, data):
    train_set, val_set = data
    df = study.sweep(model, train_set, val_set, ["magnitude"], [0.0, 0.5], val_samples=8,
                     attention=False)
    html = report.sweep_report(df, {"model": "tiny"},
                               {"acc": figures.sweep_curves(df, "kept")})
    assert "CLS attention cosine" not in html and "http" not in html
    with pytest.raises(ValueError, match="x must be one of"):
        figures.sweep_curves(df, "flops")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.torchrun
def test_torchrun_two_ranks_write_the_single_process_csv(model_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    args = ["-m", "core", "sweep", "--model", str(model_file), "--data", "shapes", *DATA_OPTS,
            "--criteria", "random", "magnitude", "snip", "--sparsities", "0", "0.5", "0.9",
            "--seeds", "2", "--val", "16", "--calib", "8", "--grid-image", "-1",
            "--no-progress"]
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={_free_port()}", *args, "--out",
                          str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    assert two.stdout.count("points →") == 1  # rank 0 writes and reports, rank 1 does not
    a, b = pd.read_csv(tmp_path / "one" / "sweep.csv"), pd.read_csv(tmp_path / "two" / "sweep.csv")
    assert len(a) == 3 * 3 * 2
    pd.testing.assert_frame_equal(a, b, rtol=1e-9, atol=0)


@pytest.mark.slow
def test_sigterm_stops_the_cli_cleanly_with_the_points_done(model_file, tmp_path):
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "sweep", "--model", str(model_file), "--data", "shapes",
         *DATA_OPTS, "--criteria", "random", "magnitude", "snip", "--sparsities",
         *[f"{i / 100:g}" for i in range(99)], "--seeds", "3", "--val", "40",
         "--out", str(tmp_path)], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seen = ""
    while not re.search(r" (\d\d+)/891 ", seen):  # tqdm on stderr: wait for 10 points done
        char = proc.stderr.read(1)
        if not char:  # the process ended (or failed) first: the assertion below says so
            break
        seen += char
    assert proc.poll() is None, "the sweep ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "SIGTERM: stopping before the next point" in err
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert list(df.columns) == study.SWEEP_COLUMNS and 0 < len(df) < 3 * 3 * 99
    assert not (tmp_path / "report.html").exists()


def test_synflow_sweep_rows_equal_prune_at_each_sparsity(model, data):
    """The sweep runs SynFlow's schedules of every sparsity together (``prune_many``); each
    row equals pruning at that sparsity alone and evaluating the same images, attention
    fidelity included (cosine of the CLS rows, by hand)."""
    train_set, val_set = data
    val = study.val_subset(val_set, 16)  # the images the sweep measures on
    df = study.sweep(model, train_set, val_set, ["synflow"], [0.0, 0.5, 0.9], val_samples=16)
    assert df["sparsity"].tolist() == [0.0, 0.5, 0.9]
    assert not df.drop(columns="latency_ms").isna().any().any()
    x = torch.stack([val[i][0] for i in range(16)])
    dense_maps = capture_attention(model, x)
    for s in (0.5, 0.9):
        res = prune(model, "synflow", s)
        ev = evaluate(res.model, val)
        row = df[df.sparsity == s].iloc[0]
        assert row["accuracy"] == pytest.approx(ev["accuracy"])
        assert row["loss"] == pytest.approx(ev["loss"], rel=1e-5)
        maps = capture_attention(res.model, x)
        a, b = maps[-1].mean(1)[:, 0, 1:], dense_maps[-1].mean(1)[:, 0, 1:]
        cos = torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean()
        assert row["cls_cosine"] == pytest.approx(float(cos), rel=1e-5)


def test_cancel_reaches_into_synflow_schedules(model, data):
    """Cancel set while SynFlow's batched schedules run stops them within a forward."""
    train_set, val_set = data
    cancel = threading.Event()

    def progress(frac, text):
        if "together" in text:
            cancel.set()
    df = study.sweep(model, train_set, val_set, ["synflow"], [0.0, 0.5, 0.9], val_samples=8,
                     progress=progress, cancel=cancel)
    assert df.attrs["cancelled"] and len(df) == 0
