"""dashboard/plots.py (pure figure builders) and the numbers dashboard/state derives,
checked against independent computations on vit-tiny."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.pruning import list_pruners, prune
from dashboard import plots, state

DASH = Path(__file__).resolve().parents[1] / "dashboard"


def _imports(tree: ast.AST) -> set[str]:
    """Top-level package of every import in ``tree``."""
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return {n.split(".")[0] for n in names}


def test_plots_and_pages_respect_the_layering():
    """plots.py never touches Streamlit; pages never touch st.session_state or st.cache_*."""
    assert not any(m.startswith("streamlit")
                   for m in _imports(ast.parse((DASH / "plots.py").read_text())))
    for page in (DASH / "pages").glob("*.py"):
        text = page.read_text()
        assert "session_state" not in text and "cache_resource" not in text \
            and "cache_data" not in text, page.name
    assert "st.navigation" in (DASH / "navigation.py").read_text()
    # the server (app.py) and the page list import no torch/core at module level (only the
    # stdlib-only boot module): the server answers at once and loads them in its warm-up thread
    for name in ("app.py", "navigation.py"):
        tree = ast.parse((DASH / name).read_text())
        top = {n.module if isinstance(n, ast.ImportFrom) and n.module != "core" else
               f"core.{n.names[0].name}" if isinstance(n, ast.ImportFrom) else n.names[0].name
               for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        top.discard("core.boot")
        light = {n.names[0].name for n in tree.body
                 if isinstance(n, ast.ImportFrom) and n.module == "dashboard"}
        assert light <= {"session"}, name
        top.discard("dashboard")  # dashboard.session only: Streamlit and the stdlib
        assert not any(m.startswith(("torch", "core", "dashboard")) for m in top), name
    assert _imports(ast.parse((DASH / "session.py").read_text())) <= {
        "__future__", "threading", "time", "contextlib", "typing", "streamlit"}
    boot = ast.parse((DASH.parent / "core" / "boot.py").read_text())
    top = set().union(*(_imports(n) for n in boot.body if isinstance(n, (ast.Import,
                                                                          ast.ImportFrom))))
    assert top <= {"__future__", "ctypes", "gc", "os", "contextlib", "typing"}


def test_no_dashboard_file_is_over_400_lines():
    """Pages stay thin and the state package stays split by concern."""
    long = {str(f.relative_to(DASH)): n for f in DASH.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 400}
    assert not long, long


def test_image_grid_layout():
    cells = [[np.full((96, 96, 3), 25 * j, np.uint8) for j in range(10)] for _ in range(4)]
    cells[2][3] = None
    fig = plots.image_grid(cells, ["l2-norm", "gm", "reverse", "snp"],
                           [f"{10 * j}%" for j in range(10)],
                           captions=[["0.99"] * 10] * 4, hover=[["h"] * 10] * 4,
                           left=np.zeros((32, 32, 3), np.uint8), left_label="input",
                           title="t", bottom_label="ratio", max_width=960)
    assert fig.layout.width <= 960
    assert [t.type for t in fig.data] == ["image", "scatter"]
    assert len(fig.data[1].x) == 40
    texts = [a.text for a in fig.layout.annotations]
    assert texts.count("0.99") == 40 and "<b>snp</b>" in texts and "<b>90%</b>" in texts
    W, H = fig.layout.xaxis.range[1] + 0.5, fig.layout.yaxis.range[0] + 0.5
    for a in fig.layout.annotations:  # plotly hides data-anchored labels outside the axes
        assert 0 <= a.x <= W and 0 <= a.y <= H, a.text
    assert fig.data[0].source.startswith("data:image/png;base64,")


def test_layer_kept_and_scores():
    df = pd.DataFrame({"layer": ["a", "b", "a", "b"], "criterion": ["x", "x", "y", "y"],
                       "kept_fraction": [0.5, 0.25, 1.0, 0.75]})
    fig = plots.layer_kept(df, sparsity=0.5)
    assert [t.name for t in fig.data] == ["x", "y"]
    assert list(fig.data[1].y) == [1.0, 0.75]
    line = fig.layout.shapes[0]
    assert (line.y0, line.y1, line.x0, line.x1, line.xref) == (0.5, 0.5, 0, 1, "paper")
    assert fig.layout.annotations[0].text == "50% kept overall"
    assert not plots.layer_kept(df, sparsity=None).layout.shapes
    stats = pd.DataFrame({"layer": ["a"], "q1": [-2.0], "median": [-1.5], "q3": [-1.0],
                          "lower": [-3.0], "upper": [0.0], "min": [-4.0], "max": [0.5]})
    fig = plots.score_boxes(stats, cut=-1.2, criterion="x")
    assert fig.data[0].type == "box" and fig.layout.shapes[0].y0 == -1.2
    fig = plots.mask_heatmaps({"x": np.array([[1.0, 0.0, 0.256]]), "y": np.ones((1, 3))},
                              "head")
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert [a.text for a in fig.layout.annotations] == ["<b>x</b><br>41.9% kept",
                                                        "<b>y</b><br>100.0% kept"]
    # six criteria: two rows of three, no two panels overlapping
    six = plots.mask_heatmaps({f"c{i}": np.ones((4, 4)) for i in range(6)}, "head")
    boxes = [(tuple(six.layout[f"xaxis{'' if i == 0 else i + 1}"].domain),
              tuple(six.layout[f"yaxis{'' if i == 0 else i + 1}"].domain)) for i in range(6)]
    assert len({b[1] for b in boxes}) == 2 and len({b[0] for b in boxes}) == 3
    for i, (x, y) in enumerate(boxes):
        for x2, y2 in boxes[i + 1:]:
            assert x[1] <= x2[0] or x2[1] <= x[0] or y[1] <= y2[0] or y2[1] <= y[0]
    assert fig.data[0].z.tolist() == [[100, 0, 26]] and fig.data[0].zmax == 100  # percent


def _points(fig) -> list[tuple]:
    """Each trace as (name, panel's x axis, xs, ys): what the chart draws where."""
    return [(t.name, t.xaxis or "x", list(t.x), list(t.y)) for t in fig.data]


def test_curves_accept_empty_and_partial_data():
    """Every point drawn is a number of the frames given, on the panel its label says (loss
    left and accuracy right for training; accuracy left and losses right for runs)."""
    empty = pd.DataFrame(columns=["step", "loss", "accuracy"])
    assert _points(plots.training_curves(empty, pd.DataFrame())) == []
    steps = pd.DataFrame({"step": [2, 4], "loss": [1.0, 0.8], "accuracy": [0.3, 0.5]})
    hist = pd.DataFrame({"step": [4], "val_loss": [0.7], "val_acc": [0.6]})
    assert _points(plots.training_curves(steps, hist)) == [
        ("train loss (running)", "x", [2, 4], [1.0, 0.8]),
        ("train acc (running)", "x2", [2, 4], [0.3, 0.5]),
        ("validation", "x", [4], [0.7]),
        ("validation", "x2", [4], [0.6])]
    assert _points(plots.training_curves(empty, hist)) == [("validation", "x", [4], [0.7]),
                                                           ("validation", "x2", [4], [0.6])]
    m = pd.DataFrame({"epoch": [1, 2], "val_acc": [0.5, 0.6], "val_loss": [1.0, 0.9],
                      "train_loss": [1.1, 0.95]})
    partial = m[["epoch", "val_acc"]]  # a run without losses: its accuracy only
    assert _points(plots.runs_curves({"r1": m, "r2": partial})) == [
        ("r1", "x", [1, 2], [0.5, 0.6]),
        ("r1", "x2", [1, 2], [1.0, 0.9]),
        ("r1 (train)", "x2", [1, 2], [1.1, 0.95]),
        ("r2", "x", [1, 2], [0.5, 0.6])]
    runs = plots.runs_curves({"r1": m, "r2": partial})
    assert runs.data[0].line.color != runs.data[3].line.color  # one colour per run
    assert runs.data[2].line.dash == "dot"  # train loss dotted, as the axis title says


# ---------------------------------------------------------------------------- state numbers

@pytest.fixture(scope="module")
def setup():
    return state.setup(state.Experiment(calib=32, val_samples=64))


def test_sparse_macs_match_a_hand_count(setup):
    """Masked MACs = dense MACs − Σ pruned weights × uses per image, with the uses of vit-tiny
    written out by hand: 65 tokens for every block linear, 64 patches for the patch conv,
    1 (the CLS token) for the head."""
    key = setup.key("magnitude", 0.5)
    masks = state.pruning.pruned(key).masks
    dense = state.data.dense_cost(key.model)
    params, macs = dense.params, dense.macs
    uses = {"patch_embed.proj.weight": 64, "head.weight": 1}
    removed = sum(int((~m).sum()) * uses.get(k, 65) for k, m in masks.items())
    c = state.pruning.cost(key)
    assert c["macs"] == macs - removed
    assert c["params"] == params - sum(int((~m).sum()) for m in masks.values())
    assert c["macs_kept"] == pytest.approx((macs - removed) / macs)


@pytest.mark.skipif("snp" not in list_pruners(), reason="SNP not in core")
@pytest.mark.parametrize("name", ["snp", "l2-norm"])
def test_structured_from_cached_scores_equals_prune(setup, name):
    key = setup.key(name, 0.4)
    small = state.pruning.pruned(key).small
    images, labels = state.data.calibration(key.data, key.calib, key.seed)
    ref = prune(setup.base.model, name, 0.4, images, labels).model.eval()
    assert small.config == ref.config
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(small(x), ref(x))


def test_attention_of_masked_scratch_equals_a_masked_copy(setup):
    """The grid writes dense ⊙ mask into a scratch model; the maps must equal those of a
    parametrized deep copy, and a later dense request must see dense weights again."""
    from core.attention import capture_attention

    image = setup.val_set[0][0]
    ref = state.keys.ImageRef(index=0)
    key = setup.key("magnitude", 0.7)
    maps = state.attention.attention_maps(key, ref, image)
    expect = capture_attention(state.pruning.pruned_model(key), image[None])
    for got, want in zip(maps, expect):
        np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-5, atol=1e-6)
    dense = state.attention.attention_maps(key.at(0.0), ref, image)
    want = capture_attention(setup.base.model, image[None])
    np.testing.assert_allclose(dense[-1], want[-1][0].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["magnitude", "snip", "l2-norm"])
def test_evaluation_on_the_scratch_model_equals_a_pruned_copy(setup, name):
    """Accuracy and loss from the scratch model (dense ⊙ mask written into its weights, or the
    shrunk model) equal those of core's evaluate on an independent pruned copy; interleaved
    with a dense evaluation, so a stale scratch would show."""
    from core.train import evaluate

    if name not in list_pruners():
        pytest.skip(f"{name} not in core")
    val = state.data.val_subset(setup.data, 64)
    key = setup.key(name, 0.6)
    dense = state.pruning.evaluation(key.at(0.0), 64)
    got = state.pruning.evaluation(key, 64)
    assert got == pytest.approx(evaluate(state.pruning.pruned_model(key), val), abs=1e-6)
    assert dense == pytest.approx(evaluate(setup.base.model, val), abs=1e-6)
    assert got != dense


def test_amap_curves_show_loss_ratio_and_budget():
    steps = pd.DataFrame({"step": [2, 4], "loss": [1.0, 0.8], "accuracy": [0.5, 0.6]})
    ratios = pd.DataFrame({"step": [1, 2, 3, 4], "macs_ratio": [1.0, 0.9, 0.8, 0.7],
                           "expected_ratio": [0.99, 0.9, 0.75, 0.7], "phase": ["search"] * 4})
    fig = plots.amap_curves(steps, ratios, 0.7)
    assert [t.name for t in fig.data] == ["train loss (running)", "attention MACs ratio",
                                          "expected (gates)"]
    assert fig.layout.shapes[0].y0 == 0.7 and "70%" in fig.layout.annotations[0].text
    empty = plots.amap_curves(steps.iloc[:0], ratios.iloc[:0], 0.5)
    assert len(empty.data) == 0


def test_accuracy_axes_stay_within_0_to_100_percent():
    """Plotly's autorange padded the runs chart's accuracy axis to ~150% around one point."""
    runs = {"a": pd.DataFrame({"epoch": [1], "val_acc": [0.93], "val_loss": [0.2]})}
    fig = plots.runs_curves(runs)
    assert tuple(fig.layout.yaxis.range) == (0, 1.02)
    steps = pd.DataFrame({"step": [1], "loss": [1.0], "accuracy": [1.0]})
    assert tuple(plots.training_curves(steps, pd.DataFrame()).layout.yaxis2.range) == (0, 1.02)


def test_download_names_say_which_model_they_came_from():
    from dashboard.state.exports import model_stem
    from dashboard.state.keys import ModelKey
    assert model_stem(ModelKey("vit-tiny", "checkpoint", "shapes", 10)) == (
        "prunelens_vit-tiny_shapes")
    assert model_stem(ModelKey("deit-tiny", "init", "digits", 10)) == (
        "prunelens_deit-tiny_digits")
    assert model_stem(ModelKey("vit-tiny", "folder", "shapes", 10,
                               folder="/data/models/my vit [v2]")) == "prunelens_my-vit-v2"
    hub = "/c/hub/models--facebook--deit-tiny-patch16-224/snapshots/" + "ab12" * 10
    assert model_stem(ModelKey("vit-tiny", "folder", "shapes", 10, folder=hub)) == (
        "prunelens_facebook--deit-tiny-patch16-224")
    assert model_stem(ModelKey("vit-tiny", "upload", "shapes", 10,
                               upload="/tmp/u/tok/model/abc/../../x/pruned.safetensors")) == (
        "prunelens_pruned")


@pytest.mark.parametrize("side", [224, 512, 1024])
def test_generated_data_for_big_models_fits_the_data_budget(side, monkeypatch):
    """A 1024-pixel model got 1200 + 300 shapes images, which the data budget refuses with
    advice a browser user cannot follow: the dashboard asks for what fits."""
    from core.data import load_dataset
    from core.data.common import check_data_budget
    from dashboard.state.data import dataset_options
    from dashboard.state.keys import DataKey

    if side != 224:  # 224 at the default budget: what smaller models always had
        monkeypatch.setenv("PRUNELENS_DATA_MB", "512")
    else:
        monkeypatch.delenv("PRUNELENS_DATA_MB", raising=False)
    opts = dataset_options(DataKey("shapes", "", (side, side)))
    n_train, n_val = opts["num_train"], opts["num_val"]
    check_data_budget(n_train + n_val, (side, side), "shapes", "", 4)   # generated, uint8
    check_data_budget(n_val, (side, side), "validation images", "")     # stacked as float32
    if side == 224:
        assert (n_train, n_val) == (1200, 300)
    if side == 1024:  # and it really generates (the smallest split only, to keep it cheap)
        _, val = load_dataset("shapes", side, seed=0, num_train=1, num_val=n_val)
        assert len(val) == n_val
