"""core.diff: two models on the same images — every number against an independent computation
(a plain forward, the evaluator, the rollout as explicit N×N products, ECE by hand), the
masked / shrunk twins, bad input, cancellation by batch count, and the CLI end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from _tiny import random_linformer, random_vit, small_vit
from core import charts, report
from core.attention import capture_attention, cls_attention
from core.diff import (DIFF_COLUMNS, FLIP_KINDS, attention_change, compare_models,
                       expected_calibration_error, flip_kinds, layer_change, reliability,
                       summarize, total_variation)
from core.models import token_layout
from core.pruning import prune
from core.pruning.structured import masked_model
from core.study import evaluate, hook_installed

ROOT = Path(__file__).resolve().parents[1]


def data(n: int = 20, seed: int = 0, size: int = 16, classes: int = 5) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, size, size, generator=g),
                         torch.randint(0, classes, (n,), generator=g))


class Counting(Dataset):
    """A dataset that counts the examples read and can fail at one index."""

    def __init__(self, base: Dataset, fail_at: int | None = None):
        self.base, self.fail_at, self.reads = base, fail_at, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        if i == self.fail_at:
            raise OSError(f"cannot decode image {i}")
        self.reads += 1
        return self.base[i]


# ---------------------------------------------------------------------------- predictions

def test_predictions_and_confidences_equal_an_independent_evaluation():
    a, b, ds = random_vit(0), random_vit(1), data(23)
    df = compare_models(a, b, ds, batch_size=7)  # 23 = 3 × 7 + 2: a short last batch
    assert list(df.columns[:len(DIFF_COLUMNS)]) == list(DIFF_COLUMNS)
    x, y = ds.tensors
    assert df["index"].tolist() == list(range(23)) and df["label"].tolist() == y.tolist()
    with torch.no_grad():
        for model, s in ((a, "a"), (b, "b")):
            conf, pred = model(x).softmax(-1).max(-1)
            assert df[f"pred_{s}"].tolist() == pred.tolist()
            np.testing.assert_allclose(df[f"conf_{s}"], conf.double(), rtol=1e-6)
            ev = evaluate(model, ds)
            assert df.attrs[f"metrics_{s}"]["accuracy"] == pytest.approx(ev["accuracy"])
            assert df.attrs[f"metrics_{s}"]["loss"] == pytest.approx(ev["loss"], rel=1e-5)
            assert float((df[f"pred_{s}"] == df["label"]).mean()) == pytest.approx(
                ev["accuracy"])
    s = summarize(df)
    assert s.numbers["accuracy_a"] == pytest.approx(evaluate(a, ds)["accuracy"])
    assert s.numbers["macro_f1_b"] == pytest.approx(evaluate(b, ds)["macro_f1"])
    assert s.numbers["agreement"] == pytest.approx(float((df.pred_a == df.pred_b).mean()))
    assert not df.attrs["cancelled"]


def test_hooks_removed_and_modes_restored_also_after_an_error():
    a, b = random_vit(0), random_vit(1)
    b.train()
    compare_models(a, b, data(4))
    bad = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError):
        compare_models(a, b, bad)
    assert not a.training and b.training
    for m in (*a.modules(), *b.modules()):
        assert len(m._forward_hooks) == 0 and len(m._forward_pre_hooks) == 0


# ---------------------------------------------------------------------------- the distance

def test_rollout_change_is_zero_for_a_model_against_itself_and_its_mask_of_ones():
    a, ds = random_vit(0), data(9)
    ones = prune(a, "magnitude", 0.0).model
    assert any(n.endswith("original") for n, _ in ones.named_parameters())  # really masked
    for b in (a, ones):
        df = compare_models(a, b, ds, batch_size=4)
        change = df.filter(like="change")
        assert change.shape[1] == 1 + 2 + 3 + 2  # rollout; layer 0: mean + 3 heads; layer 1
        assert (change.to_numpy() == 0).all()
        assert (df.pred_a == df.pred_b).all() and (df.conf_a == df.conf_b).all()
        assert set(df.flip) <= {"both_right", "both_wrong"}
    lin = random_linformer(0)  # another family: its effective token-to-token maps
    df = compare_models(lin, prune(lin, "magnitude", 0.0).model, ds)
    assert (df.filter(like="change").to_numpy() == 0).all()
    assert (compare_models(lin, random_linformer(1), ds)["rollout_change"] > 0).all()


def test_rollout_change_grows_with_sparsity_on_average():
    a, ds = random_vit(0), data(32, seed=3)
    means = [compare_models(a, prune(a, "magnitude", s).model, ds)["rollout_change"].mean()
             for s in (0.2, 0.5, 0.8)]
    assert 0 < means[0] < means[1] < means[2] <= 1


def _rollout_row_by_hand(maps: list[np.ndarray]) -> np.ndarray:
    """Abnar & Zuidema's rollout as explicit N×N products: per block Â = (½ mean_h|A| + ½ I)
    with rows renormalised, R = Â_L ⋯ Â_1, the class token's row over the patches."""
    N = maps[0].shape[-1]
    R = np.eye(N)
    for m in maps:
        A = 0.5 * np.abs(m).mean(0) + 0.5 * np.eye(N)
        R = (A / A.sum(-1, keepdims=True)) @ R
    return R[0, 1:]


def _tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def test_changes_equal_a_hand_computation():
    a, b, ds = random_vit(0), random_vit(1), data(3)
    df = compare_models(a, b, ds)
    x, _ = ds.tensors
    ma = [m.double().numpy() for m in capture_attention(a, x)]
    mb = [m.double().numpy() for m in capture_attention(b, x)]
    for i in range(3):
        ra = _rollout_row_by_hand([m[i] for m in ma])
        rb = _rollout_row_by_hand([m[i] for m in mb])
        assert df.rollout_change[i] == pytest.approx(_tv(ra, rb), abs=1e-6)
        for l in (0, 1):
            fa, fb = ma[l][i][:, 0, 1:].mean(0), mb[l][i][:, 0, 1:].mean(0)
            assert df[f"change_l{l}"][i] == pytest.approx(_tv(fa, fb), abs=1e-6)
        assert df["change_l1_h1"][i] == pytest.approx(
            _tv(ma[1][i][1, 0, 1:], mb[1][i][1, 0, 1:]), abs=1e-6)
    # a tiny case in full: two patches, TV = ½(|0.75 − 0.25| + |0.25 − 0.75|) = 0.5
    assert float(total_variation(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0]))) == 0.5


def _pooled_vit(seed: int, **options):
    from _tiny import randomise
    from core.models.vit import BlockConfig, VisionTransformer, ViTConfig

    torch.manual_seed(seed)
    return randomise(VisionTransformer(ViTConfig(
        img_size=(16, 16), patch_size=4, num_classes=5, embed_dim=12,
        blocks=(BlockConfig(2, 6, 6, 16),) * 2, **options)))


@pytest.mark.parametrize("options", [dict(class_token=False, global_pool="avg"),
                                     dict(distilled=True, num_reg_tokens=2)],
                         ids=["no class token", "distillation and register tokens"])
def test_special_tokens_follow_the_models_layout(options):
    """Rows as cls_attention reads them: without a class token the mean over the patch
    queries; distillation and register tokens never count as patches."""
    a, b, ds = _pooled_vit(0, **options), _pooled_vit(1, **options), data(3)
    df = compare_models(a, b, ds)
    x, _ = ds.tensors
    layout = token_layout(a)
    ma, mb = capture_attention(a, x), capture_attention(b, x)
    for l in (0, 1):
        for h in (0, 1):
            ra, rb = cls_attention(ma[l], h, layout), cls_attention(mb[l], h, layout)
            assert ra.shape == (3, 16)
            np.testing.assert_allclose(df[f"change_l{l}_h{h}"], total_variation(ra, rb),
                                       rtol=1e-12)


def test_attention_change_of_one_image_equals_its_row():
    a, b, ds = random_vit(0), random_vit(1), data(6)
    df = compare_models(a, b, ds)
    one = attention_change(a, b, ds.tensors[0][4])
    assert list(one.columns) == ["layer", "head", "change"]
    assert one[["layer", "head"]].values.tolist() == [
        [0, -1], [0, 0], [0, 1], [0, 2], [1, -1], [1, 0], [1, 1]]
    pd.testing.assert_frame_equal(one, layer_change(df.iloc[[4]]), rtol=1e-12)
    whole = layer_change(df)
    assert whole["change"].tolist() == pytest.approx(
        [df[f"change_l{l}" + ("" if h < 0 else f"_h{h}")].mean() for l, h in
         whole[["layer", "head"]].values])


def test_shrunk_model_and_its_masked_twin_see_alike():
    """Structured pruning without head removal: the shrunk model and its masked twin compute
    the same maps (up to rounding). With heads removed, the twin keeps them as uniform maps:
    the fused rows differ, the kept heads (paired by head_map) still agree."""
    a, ds = random_vit(0), data(10, seed=1)
    x, y = ds.tensors
    r = prune(a, "snp", 0.4, x[:8], y[:8])
    df = compare_models(masked_model(a, r.extra["plan"]), r.model, ds, batch_size=4)
    assert (df.pred_a == df.pred_b).all()
    assert df.filter(like="change").abs().to_numpy().max() < 1e-6
    r = prune(a, "snp", 0.4, x[:8], y[:8], heads=0.5)
    heads = [b.heads.tolist() for b in r.extra["plan"].blocks]
    assert [len(h) for h in heads] == [1, 1]
    df = compare_models(masked_model(a, r.extra["plan"]), r.model, ds, head_map=heads)
    t = layer_change(df)
    kept = t[t["head"] >= 0]
    assert kept[["layer", "head"]].values.tolist() == [[0, heads[0][0]], [1, heads[1][0]]]
    assert kept["change"].max() < 1e-6 and t[t["head"] < 0]["change"].min() > 1e-3
    # without head_map the layers with fewer heads have no per-head change
    assert compare_models(a, r.model, ds).filter(regex=r"_h\d").shape[1] == 0


def test_a_model_of_another_depth_compares_by_rollout_only():
    a = random_vit(0)
    from core.models.vit import BlockConfig, VisionTransformer, ViTConfig
    from _tiny import randomise

    torch.manual_seed(2)
    b = randomise(VisionTransformer(ViTConfig(img_size=(16, 16), patch_size=4, num_classes=5,
                                              embed_dim=12, blocks=(BlockConfig(2, 6, 6, 16),))))
    df = compare_models(a, b, data(5))
    assert list(df.columns) == list(DIFF_COLUMNS) and (df.rollout_change > 0).all()
    assert layer_change(df).empty and summarize(df).layer_change.empty
    with pytest.raises(ValueError, match="2 blocks and model B 1"):
        attention_change(a, b, data(1).tensors[0][0])


# ---------------------------------------------------------------------------- flips, summary

def test_flip_kinds_against_a_truth_table():
    rows = [  # label, pred_a, pred_b, kind
        (1, 1, 1, "both_right"), (1, 2, 2, "both_wrong"), (1, 1, 2, "lost"),
        (1, 2, 1, "gained"), (1, 2, 3, "changed_wrong"), (0, 0, 0, "both_right"),
        (-1, 4, 4, "agree"), (-1, 4, 0, "disagree")]
    y, pa, pb, kind = zip(*rows)
    assert flip_kinds(np.array(y), np.array(pa), np.array(pb)).tolist() == list(kind)


def test_ece_equals_a_hand_computation():
    conf = np.array([0.95, 0.9, 0.7, 0.4, 0.38, 0.1, 1.0])
    correct = np.array([1, 0, 1, 1, 0, 0, 1])
    # 15 bins of width 1/15: 0.95, 0.9 → bin 14 (14/15, 1]? 0.9 < 14/15 = 0.933 → bin 13;
    # 0.95 and 1.0 → bin 14; 0.7 → bin 10 (0.667, 0.733]; 0.4 = 6/15 → bin 5 (right-closed);
    # 0.38 → bin 5; 0.1 → bin 1 (0.067, 0.133]
    bins = {14: ([0.95, 1.0], [1, 1]), 13: ([0.9], [0]), 10: ([0.7], [1]),
            5: ([0.4, 0.38], [1, 0]), 1: ([0.1], [0])}
    hand = sum(len(c) / 7 * abs(np.mean(k) - np.mean(c)) for c, k in bins.values())
    assert expected_calibration_error(conf, correct) == pytest.approx(hand, abs=1e-12)
    r = reliability(conf, correct)
    assert len(r) == 15 and r["count"].sum() == 7
    assert {i: n for i, n in enumerate(r["count"]) if n} == {i: len(c) for i, (c, _) in
                                                              bins.items()}
    assert np.isnan(expected_calibration_error(np.array([]), np.array([])))


def test_summary_by_hand():
    df = pd.DataFrame({"index": range(6), "label": [0, 0, 1, 1, 2, -1],
                       "pred_a": [0, 1, 1, 2, 0, 1], "pred_b": [0, 0, 2, 1, 1, 2],
                       "conf_a": [0.9, 0.6, 0.8, 0.5, 0.7, 0.9],
                       "conf_b": [0.9, 0.5, 0.6, 0.9, 0.4, 0.8]})
    df["flip"] = flip_kinds(df.label, df.pred_a, df.pred_b)
    df["rollout_change"] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    s = summarize(df, classes=["x", "y", "z"])
    n = s.numbers
    assert (n["examples"], n["labelled"]) == (6, 5)
    assert n["agreement"] == pytest.approx(1 / 6)
    assert (n["accuracy_a"], n["accuracy_b"]) == (pytest.approx(2 / 5), pytest.approx(3 / 5))
    assert n["rollout_change_mean"] == pytest.approx(0.25)
    assert dict(zip(s.flips.kind, s.flips["count"])) == {
        "both_right": 1, "both_wrong": 0, "lost": 1, "gained": 2, "changed_wrong": 1,
        "agree": 0, "disagree": 1}
    assert s.confusion_a.to_numpy().tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 0]]
    assert s.confusion_b.to_numpy().tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 0]]
    assert s.by_class["name"].tolist() == ["x", "y", "z"]
    assert s.by_class["lost"].tolist() == [0, 1, 0] and s.by_class["gained"].tolist() == [
        1, 1, 0]
    assert s.by_class["accuracy_b"].tolist() == [1.0, 0.5, 0.0]
    assert n["ece_a"] == pytest.approx(expected_calibration_error(
        df.conf_a[:5], df.pred_a[:5] == df.label[:5]))
    json.dumps(s.to_json(), allow_nan=False)


# ---------------------------------------------------------------------------- inputs

def test_uploaded_images_without_labels():
    a, b = random_vit(0), random_vit(1)
    x = data(5).tensors[0]
    for images in (x, list(x)):
        df = compare_models(a, b, images)
        assert (df.label == -1).all() and set(df.flip) <= {"agree", "disagree"}
        assert df.attrs["metrics_a"] is None
        assert summarize(df).numbers["labelled"] == 0


def test_bad_input_gives_one_clear_message():
    a = random_vit(0)
    with pytest.raises(ValueError, match=r"model A has 5 classes and model B 3.*join='labels'"):
        compare_models(a, random_vit(1, num_classes=3), data(4))
    with pytest.raises(ValueError, match=r"3×16×16 images and model B 3×8×8"):
        compare_models(a, small_vit(), data(4))
    with pytest.raises(ValueError, match="empty"):
        compare_models(a, a, data(0))
    with pytest.raises(ValueError, match=r"examples 4–7 of the dataset: OSError: cannot decode"):
        compare_models(a, a, Counting(data(10), fail_at=6), batch_size=4)
    with pytest.raises(ValueError, match="3×8×8 images but the models take 3×16×16"):
        compare_models(a, a, data(3, size=8))
    with pytest.raises(ValueError, match="label 7 .* 5 classes"):
        compare_models(a, a, data(3, classes=8))
    with pytest.raises(ValueError, match="5 classes but 2 label names"):
        compare_models(a, a, data(2), labels_a=["x", "y"])
    with pytest.raises(ValueError, match="head_map"):
        compare_models(a, a, data(2), head_map=[[0, 1, 2]])


def test_label_join_maps_b_onto_a_by_name():
    a, ds = random_vit(0), data(12)
    names = ["cat", "dog", "owl", "fox", "emu"]
    b = random_vit(0, num_classes=6)  # A's body; the head's rows in another order, plus one
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("head")},
                      strict=False)
    order = [4, 0, 3, 1, 2]           # B's output j is A's class order[j]; B's output 5 is new
    with torch.no_grad():
        b.head.weight[:5] = a.head.weight[order]
        b.head.bias[:5] = a.head.bias[order]
        b.head.bias[5] = -100.0       # a class A does not know, never predicted
    names_b = [names[k] for k in order] + ["yak"]
    with pytest.raises(ValueError, match="5 classes and model B 6"):
        compare_models(a, b, ds)
    df = compare_models(a, b, ds, join="labels", labels_a=names, labels_b=names_b)
    assert (df.pred_a == df.pred_b).all() and (df.rollout_change == 0).all()
    np.testing.assert_allclose(df.conf_a, df.conf_b, rtol=1e-5)
    with pytest.raises(ValueError, match="1 of model A's 5 classes are not among model B's 6: "
                                         "emu"):
        compare_models(a, b, ds, join="labels", labels_a=names,
                       labels_b=["x"] + names_b[1:])
    with pytest.raises(ValueError, match="needs both models' label names"):
        compare_models(a, b, ds, join="labels", labels_a=names)


# ---------------------------------------------------------------------------- cancel, progress

def test_cancel_stops_within_one_batch():
    a, b = random_vit(0), random_vit(1)
    ds, cancel, seen = Counting(data(40)), threading.Event(), []

    def progress(fraction: float, text: str) -> None:
        seen.append((fraction, text))
        cancel.set()

    df = compare_models(a, b, ds, batch_size=8, progress=progress, cancel=cancel)
    assert df.attrs["cancelled"] and len(df) == 8 and ds.reads == 8
    assert seen == [(0.2, "8/40 images")]
    assert list(df.columns[:len(DIFF_COLUMNS)]) == list(DIFF_COLUMNS)

    # set during model B's forward of the second batch: that batch is dropped, no third read
    ds, cancel, forwards = Counting(data(40)), threading.Event(), []

    def hook(*_):
        forwards.append(1)
        if len(forwards) == 2:
            cancel.set()
    h = b.blocks[0].register_forward_hook(hook)
    try:
        df = compare_models(a, b, ds, batch_size=8, cancel=cancel)
    finally:
        h.remove()
    assert df.attrs["cancelled"] and len(df) == 8 and ds.reads == 16
    # set before: nothing read, an empty frame with the columns
    df = compare_models(a, b, ds, cancel=cancel)
    assert df.empty and list(df.columns) == list(DIFF_COLUMNS) and df.attrs["cancelled"]
    assert not hook_installed()  # the cancellation hook is gone, as are the capture hooks
    assert all(len(m._forward_hooks) == 0 for m in (*a.modules(), *b.modules()))


# ---------------------------------------------------------------------------- out

def test_files_and_report():
    a, b, ds = random_vit(0), random_vit(1), data(8)
    df = compare_models(a, b, ds)
    s = summarize(df)
    files = report.diff_files(df, s, {"model A": "a", "model B": "b"}, "python -m core diff")
    assert set(files) == {"diff.csv", "summary.json", "layer_change.png", "layer_change.svg",
                          "layer_change.csv", "report.html"}
    back = pd.read_csv(__import__("io").BytesIO(files["diff.csv"]))
    assert list(back.columns) == list(df.columns)
    np.testing.assert_allclose(back.rollout_change, df.rollout_change, rtol=1e-15)
    summary = json.loads(files["summary.json"])
    assert summary["numbers"]["agreement"] == pytest.approx(s.numbers["agreement"])
    html = files["report.html"].decode()
    assert "Diff: model A against model B" in html and "data:image/svg+xml;base64," in html
    c = charts.layer_change(s.layer_change)
    h = c.panels[0].heatmap
    assert h.rows == ("layer 0", "layer 1") and h.columns[0] == "mean of heads"
    assert np.isnan(h.z[1, 3])  # layer 1 has two heads, layer 0 three


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "core", "diff", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_cli_end_to_end(tmp_path):
    out = tmp_path / "out"
    r = _cli("vit-tiny", "prune:magnitude:0.5", "--data", "shapes", "--data-opt",
             "num_train=24", "--data-opt", "num_val=12", "--val", "10", "--batch-size", "4",
             "--out", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out / "diff.csv")
    assert list(df.columns[:len(DIFF_COLUMNS)]) == list(DIFF_COLUMNS) and len(df) == 10
    assert [c for c in df.columns[len(DIFF_COLUMNS):]] == [
        f"change_l{l}" + s for l in range(4) for s in ("", "_h0", "_h1", "_h2", "_h3")]
    assert set(df.flip) <= set(FLIP_KINDS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["numbers"]["examples"] == 10 and not summary["cancelled"]
    assert "prune:magnitude:0.5" in (out / "report.html").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_cli_refuses_before_any_work(tmp_path, capsys):
    from core.__main__ import main

    (tmp_path / "taken").write_text("keep me")
    assert main(["diff", "vit-tiny", "vit-tiny", "--out", str(tmp_path / "taken")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "keep me"
    assert main(["diff", "vit-tiny", "prune:nope:0.5", "--out", str(tmp_path / "o")]) == 2
    assert "unknown criteria ['nope']" in capsys.readouterr().err
    assert main(["diff", "vit-tiny", "prune:magnitude:1.5", "--out", str(tmp_path / "o")]) == 2
    assert "not in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
