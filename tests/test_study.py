"""core.study (the pipeline behind the pages) against independent computations: prune() and
evaluate() by hand, MACs counted by hand, cosines written out, scores computed once."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from core import study
from core.attention import capture_attention
from core.data import calibration_batch, load_dataset
from core.models import build_model, count_macs
from core.pruning import get_pruner, list_pruners, prune
from core.train import evaluate
from test_attention import rollout_by_hand

structured_only = pytest.mark.skipif("snp" not in list_pruners(), reason="SNP not in core")


@pytest.fixture(scope="module")
def data():
    return load_dataset("shapes", 8, seed=0, num_train=120, num_val=40)


@pytest.fixture(scope="module")
def model():
    """vit-tiny shrunk to 8×8 images (4 patches + CLS), 2 blocks of 2 heads, at its init."""
    torch.manual_seed(0)
    return build_model("vit-tiny", 6, img_size=8, patch_size=4, embed_dim=16, depth=2,
                       num_heads=2).eval()


def cls_rows(net, images):
    """Last block's CLS → patch attention, mean of heads, written out: (B, N-1)."""
    a = capture_attention(net, images)[-1]           # (B, H, N, N)
    return a.abs().mean(dim=1)[:, 0, 1:].numpy()


def mean_cos(a, b):
    return float(np.mean([x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)]))


def test_sweep_point_equals_a_hand_computation(model, data):
    train_set, val_set = data
    df = study.sweep(model, train_set, val_set, ["magnitude", "snip"], [0.0, 0.3, 0.6],
                     calib=16, seeds=(3,), val_samples=24, scope="layer")
    assert list(df.columns) == study.SWEEP_COLUMNS
    assert len(df) == 2 * 3 and set(df["seed"]) == {3}

    val = study.val_subset(val_set, 24)
    images, labels = calibration_batch(train_set, 16, 3)
    x = torch.stack([val[i][0] for i in range(len(val))])
    res = prune(model, "snip", 0.6, images, labels, scope="layer")
    ev = evaluate(res.model, val)
    row = df[(df.criterion == "snip") & (df.sparsity == 0.6)].iloc[0]
    assert row["accuracy"] == pytest.approx(ev["accuracy"])
    assert row["loss"] == pytest.approx(ev["loss"], rel=1e-6)
    assert row["macro_f1"] == pytest.approx(ev["macro_f1"])

    dense_params = sum(p.numel() for p in model.parameters())
    removed = {k: int((~m).sum()) for k, m in res.masks.items()}
    assert row["params_kept"] == pytest.approx(1 - sum(removed.values()) / dense_params)
    # each weight is used once per token: 5 tokens in the blocks, 4 patches for the patch
    # convolution, the CLS token alone for the head
    uses = {"patch_embed.proj.weight": 4, "head.weight": 1}
    macs = count_macs(copy.deepcopy(model))
    hand = macs - sum(n * uses.get(k, 5) for k, n in removed.items())
    assert row["macs_kept"] == pytest.approx(hand / macs)
    assert row["cls_cosine"] == pytest.approx(mean_cos(cls_rows(res.model, x),
                                                       cls_rows(model, x)), rel=1e-5)
    assert 0 < row["rollout_cosine"] <= 1

    dense = df[df.sparsity == 0.0]
    ev0 = evaluate(model, val)
    assert (dense["accuracy"] == ev0["accuracy"]).all() and (dense["cls_cosine"] == 1).all()
    assert (dense["params_kept"] == 1).all() and (dense["macs_kept"] == 1).all()


def test_sweep_scores_once_per_criterion_and_seed(model, data, monkeypatch):
    """Along the curve only the thresholds move: each seed scores each criterion once, and a
    criterion that reads no data and draws nothing at random (magnitude) only once in all."""
    train_set, val_set = data
    calls = []
    for name in ("magnitude", "snip"):
        cls = type(get_pruner(name))
        monkeypatch.setattr(cls, "score", lambda self, *a, real=cls.score, name=name, **k:
                            calls.append(name) or real(self, *a, **k))
    df = study.sweep(model, train_set, val_set, ["magnitude", "snip"], [0.0, 0.2, 0.5, 0.8],
                     calib=8, seeds=(0, 1), val_samples=8, attention=False)
    assert sorted(calls) == ["magnitude", "snip", "snip"]
    m = df[df.criterion == "magnitude"].drop(columns="seed")
    pd.testing.assert_frame_equal(m.iloc[:4].reset_index(drop=True),
                                  m.iloc[4:].reset_index(drop=True))
    snip = df[(df.criterion == "snip") & (df.sparsity == 0.8)]["loss"].to_numpy()
    assert snip[0] != snip[1]  # another calibration batch, another mask
    assert df["cls_cosine"].isna().all()
    kept = df[df.seed == 0].sort_values("sparsity")["params_kept"].tolist()
    assert kept == sorted(kept, reverse=True) and kept[0] == 1.0


@structured_only
@pytest.mark.parametrize("name", ["snp", "l2-norm"])
def test_structured_from_scores_equals_prune(model, data, name):
    train_set, val_set = data
    images, labels = calibration_batch(train_set, 8, 0)
    sc = study.score(model, name, images, labels)
    ref = prune(model, name, 0.5, images, labels).model.eval()
    for p in (study.prune_at(model, name, 0.5, images, labels, scores=sc),
              study.prune_at(model, name, 0.5, images, labels)):
        assert p.small.config == ref.config and p.masks is None
        x = torch.rand(3, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(p.small(x), ref(x))
    c = study.cost(study.dense_cost(model), p)
    assert c["params"] == sum(t.numel() for t in ref.parameters())
    assert c["macs_kept"] == pytest.approx(count_macs(ref) / count_macs(copy.deepcopy(model)))
    kept = study.layer_kept(model, p).set_index("layer")["kept_fraction"]
    w = dict(model.named_parameters())["blocks.0.mlp.fc1.weight"]
    assert kept["blocks.0.mlp.fc1"] == ref.blocks[0].mlp.fc1.weight.numel() / w.numel() < 1


def test_masked_forward_equals_apply_masks(model, data):
    """The scratch model holding dense ⊙ mask gives the outputs of a parametrized copy, and a
    dense request afterwards sees the dense weights again."""
    train_set, _ = data
    images, labels = calibration_batch(train_set, 8, 0)
    p = study.prune_at(model, "magnitude", 0.7, images, labels)
    scratch = copy.deepcopy(model)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad(), study.forward_model(model, p, scratch) as net:
        torch.testing.assert_close(net(x), p.model(model)(x))
    with torch.no_grad(), study.forward_model(model, study.Pruned("dense", 0, "global"),
                                              scratch) as net:
        torch.testing.assert_close(net(x), model(x))


def test_thresholds_and_score_statistics_by_hand():
    scores = {"a.weight": torch.tensor([[1.0, 10.0], [100.0, 1000.0]]),
              "b.weight": torch.tensor([5.0, 50.0])}
    masks = {"a.weight": torch.tensor([[False, True], [True, True]]),
             "b.weight": torch.tensor([False, True])}
    assert study.threshold(scores, masks) == 5.0
    stats = study.score_stats(scores).set_index("layer")
    assert stats.loc["a", "median"] == pytest.approx(np.median([0, 1, 2, 3]))
    assert stats.loc["b", "max"] == pytest.approx(np.log10(50))
    p = study.Pruned("x", 0.5, "global", masks, scores)
    assert study.log_threshold(p, study.score_stats(scores)) == pytest.approx(np.log10(5))
    assert study.log_threshold(study.Pruned("x", 0.5, "layer", masks, scores), stats) is None
    rows = torch.tensor([[True, False, True, True], [False, False, True, True]])
    m = study.mask_matrix({"fc.weight": rows}, "fc", 2)
    np.testing.assert_allclose(m, [[0.5, 1.0], [0.0, 1.0]])  # 2×4 averaged in 1×2 blocks


def test_attention_grid_and_rows(model, data):
    _, val_set = data
    image = val_set[0][0]
    dense = study.attention_maps(model, image)
    assert [m.shape for m in dense] == [(2, 5, 5)] * 2 and study.head_counts(model) == [2, 2]
    g = study.fig3(model, image, ["magnitude", "random"], (0.0, 0.5), view=study.AttentionView())
    assert g.similarity[:, 0].tolist() == [1.0, 1.0]
    want = dense[-1].mean(0)[0, 1:]
    np.testing.assert_allclose(g.dense, want, rtol=1e-6)
    p = study.prune_at(model, "random", 0.5)
    got = capture_attention(p.model(model), image[None])[-1][0].mean(0)[0, 1:].numpy()
    assert g.similarity[1, 1] == pytest.approx(
        got @ want / (np.linalg.norm(got) * np.linalg.norm(want)), rel=1e-5)
    roll = study.attention_row(dense, study.AttentionView("rollout", fusion="max",
                                                          discard=0.5))
    hand = rollout_by_hand([m.astype(np.float64) for m in dense], 0.5, "max")
    np.testing.assert_allclose(roll, hand[0, 1:], rtol=1e-5)  # CLS row, patch columns


def test_bad_inputs_are_named(model, data):
    train_set, val_set = data
    with pytest.raises(ValueError, match="sparsities"):
        study.sweep(model, train_set, val_set, ["magnitude"], [1.2])
    with pytest.raises(ValueError, match="list of names"):
        study.sweep(model, train_set, val_set, "magnitude", [0.5])
    with pytest.raises(ValueError, match="scope"):
        study.prune_at(model, "magnitude", 0.5, scope="everywhere")
    with pytest.raises(ValueError, match="unknown pruner"):
        study.sweep(model, train_set, val_set, ["no-such"], [0.5])
    if "amap" in list_pruners():
        with pytest.raises(ValueError, match="during training"):
            study.sweep(model, train_set, val_set, ["amap"], [0.5])
    with pytest.raises(ValueError, match="scores of 'magnitude'"):
        study.prune_at(model, "random", 0.5, scores=study.score(model, "magnitude"))


def test_nbytes_counts_tensors_arrays_and_modules():
    net = torch.nn.Linear(3, 2)  # 6 weights + 2 biases, float32
    obj = {"m": net, "a": np.zeros((4, 5), np.float32), "t": [torch.zeros(7, dtype=torch.bool)]}
    assert study.nbytes(obj) == 8 * 4 + 20 * 4 + 7
    p = study.Pruned("x", 0.5, "global", {"w": torch.zeros(10, dtype=torch.bool)},
                     {"w": torch.zeros(10)})
    assert p.nbytes() == 10  # the scores belong to the criterion's cache entry


def test_mean_cosine_equals_the_per_row_cosine():
    """The vectorised mean cosine of the sweep equals the loop over rows, zero rows → 0."""
    g = np.random.default_rng(0)
    a, b = g.random((9, 16)).astype(np.float32), g.standard_normal((9, 16)).astype(np.float32)
    a[3] = 0.0
    b[5] = 0.0
    want = np.mean([study.cosine(x.astype(np.float64), y.astype(np.float64))
                    for x, y in zip(a, b)])
    assert study.cosine(a[3], b[3]) == 0.0
    np.testing.assert_allclose(study.mean_cosine(a, b), want, rtol=1e-12)
    with pytest.raises(ValueError, match="one shape"):
        study.mean_cosine(a, b[:4])


def test_evaluation_in_threads_equals_one_thread_and_can_be_cancelled(model, data):
    """``evaluate_counts(workers=2)``: the batches shared out to two threads of one intra-op
    thread each give exactly the sums of one thread going through them; a set cancel event of
    the caller stops the worker threads too."""
    import threading

    _, val_set = data
    p = study.prune_at(model, "magnitude", 0.6)
    one = study.evaluate_counts(model, p, val_set, 3, 40, batch_size=4)
    two = study.evaluate_counts(model, p, val_set, 3, 40, batch_size=4, workers=2)
    three = study.evaluate_counts(model, p, val_set, 3, 40, batch_size=4, workers=3)
    for got in (two, three):
        assert got[0] == one[0] and got[1] == one[1] == 37
        assert np.array_equal(got[2], one[2])
    # by hand: the masked model's summed cross-entropy and confusion over those images
    x = torch.stack([val_set[i][0] for i in range(3, 40)])
    y = torch.tensor([int(val_set[i][1]) for i in range(3, 40)])
    with torch.no_grad():
        logits = p.model(model)(x)
    assert two[0] == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits, y, reduction="sum")), rel=1e-5)
    assert np.trace(two[2]) == int((logits.argmax(-1) == y).sum())

    event = threading.Event()
    event.set()
    with pytest.raises(study.Cancelled):
        with study.cancellable(event):
            study.evaluate_counts(model, p, val_set, 0, 40, batch_size=4, workers=2)
    started = threading.Event()

    class Slow(torch.nn.Module):  # the first forward sets the event; the rest must not run
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            started.set()
            event.set()
            return self.inner(x)

    event.clear()
    slow = Slow(p.model(model)).eval()
    with pytest.raises(study.Cancelled):
        with study.cancellable(event):
            study.counts_in_threads(slow, [(x[:8], y[:8])] * 12, torch.device("cpu"), 2)
    assert started.is_set() and slow.calls <= 3  # each thread stops at its next forward


def plain_counts(net, dataset):
    """Loss sum, count and confusion of ``net`` written out: one image at a time, the
    prediction the argmax of ``net(x)``, the loss ``-log softmax`` of the label in float64."""
    conf, loss = None, 0.0
    with torch.no_grad():
        for i in range(len(dataset)):
            x, y = dataset[i]
            logits = net.eval()(x[None])[0].double()
            if conf is None:
                conf = np.zeros((len(logits), len(logits)), dtype=np.int64)
            conf[int(y), int(logits.argmax())] += 1
            loss -= float(torch.log_softmax(logits, -1)[int(y)])
    return loss, len(dataset), conf


def test_training_sweeps_and_the_dashboard_share_one_evaluator(model, data, monkeypatch):
    """Training's per-epoch validation, the sweep's Measure and the slice counts the
    dashboard's Prune page shows (``study.evaluate_counts``, on one thread and on several)
    all go through ``core.study.evaluation.eval_counts``, and its counts equal a plain loop."""
    import core.train
    from core.study import evaluation, points, sweeps
    from core.train import TrainConfig, train

    real = evaluation.eval_counts
    assert core.train.eval_counts is real and points.eval_counts is real
    assert sweeps.eval_counts is real
    train_set, val_set = data
    calls: dict[str, list] = {"train": [], "sweep": [], "slices": [], "threads": []}

    def spy(caller):
        def counted(*args, **kwargs):
            out = real(*args, **kwargs)
            calls[caller].append(out)
            return out
        return counted

    for module, caller in ((core.train, "train"), (sweeps, "sweep"), (points, "slices"),
                           (evaluation, "threads")):
        monkeypatch.setattr(module, "eval_counts", spy(caller))

    def same(got, net):
        loss, n, conf = plain_counts(net, val_set)
        assert int(got[1]) == n
        np.testing.assert_array_equal(np.asarray(got[2]), conf)
        assert float(got[0]) == pytest.approx(loss, rel=1e-5)

    net = copy.deepcopy(model)
    result = train(net, train_set, val_set, TrainConfig(epochs=1, max_steps=2, batch_size=16,
                                                        device="cpu", precision="fp32"))
    assert result.status == "finished" and len(calls["train"]) == 1
    same(calls["train"][0], net)
    assert result.history[-1]["val_acc"] == plain_counts(net, val_set)[2].trace() / len(val_set)

    df = study.sweep(model, train_set, val_set, ["magnitude"], [0.0, 0.5], calib=16,
                     val_samples=len(val_set))
    pruned = study.prune_at(model, "magnitude", 0.5)
    assert len(calls["sweep"]) == 2  # the dense model, then the point at 50 %
    same(calls["sweep"][0], model)
    same(calls["sweep"][1], pruned.model(model))
    assert df["accuracy"].tolist() == [
        plain_counts(m, val_set)[2].trace() / len(val_set) for m in (model, pruned.model(model))]

    one = study.evaluate_counts(model, pruned, val_set, 0, len(val_set), batch_size=8)
    assert len(calls["slices"]) == 1 and not calls["threads"]
    same(one, pruned.model(model))
    several = study.evaluate_counts(model, pruned, val_set, 0, len(val_set), batch_size=8,
                                    workers=2)
    assert len(calls["threads"]) == -(-len(val_set) // 8)  # one call per batch
    same(several, pruned.model(model))


def test_the_package_exports_every_public_name_of_its_modules():
    """``core.study.__all__`` is exactly the public functions, classes and constants its
    modules define, each reachable as ``study.X`` and ``from core.study import X``."""
    import ast
    from pathlib import Path

    defined = set()
    for path in Path(study.__file__).parent.glob("[!_]*.py"):  # top-level defs, assignments
        for node in ast.parse(path.read_text()).body:
            names = ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                     else [t.id for t in getattr(node, "targets", [getattr(node, "target", 0)])
                           if isinstance(t, ast.Name)])
            defined |= {n for n in names if not n.startswith("_")}
    assert sorted(study.__all__) == sorted(defined)
    for name in study.__all__:  # defined in one of the package's modules, not re-exported
        assert getattr(getattr(study, name), "__module__", "core.study.").startswith(
            "core.study."), name
    ns: dict = {}
    exec("from core.study import *", ns)
    assert set(study.__all__) <= set(ns)


def test_no_module_imports_a_private_name_of_study_or_train():
    """core.study's modules and core.train import no one's private names, and nothing in the
    repository imports theirs."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ours = {root / "core" / "train.py", *(root / "core" / "study").glob("*.py")}
    offenders = []
    for path in [p for d in ("core", "dashboard", "benchmarks", "tests", "assets")
                 for p in (root / d).rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = node.module or ""
            theirs = (module.split(".")[-1] in ("study", "train") or ".study." in f".{module}."
                      or module.startswith("core.study"))
            for alias in node.names:
                if alias.name.startswith("_") and (path in ours or theirs):
                    offenders.append(f"{path.relative_to(root)}:{node.lineno} {alias.name}")
    assert not offenders, offenders
