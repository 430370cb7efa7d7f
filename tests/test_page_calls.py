"""Every number a page shows is that of one ``core.study`` call a notebook can make: the Prune
page's cards, numbers table and kept chart (``study.prune_page``), the Attention page's Fig. 3
grid (``study.attention_page``) and the Rollout page's explanations (``study.explain_pair``);
the dashboard only caches their pieces. And nothing in ``dashboard/`` reaches for a private
name of core, and the state facade exports only what a page reads."""
from __future__ import annotations

import ast
import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core import study
from core.data import load_dataset
from core.models import build_model
from dashboard import state
from test_dashboard import figure, make_app, metrics, ok

ROOT = Path(__file__).resolve().parents[1]
CRITERIA = ["magnitude", "snip"]
VAL, CALIB = 64, 32  # test_dashboard's FAST settings


def values(a) -> np.ndarray:
    """A plotly JSON array: a list, or ``{"dtype", "bdata"}`` (base64 bytes)."""
    if isinstance(a, dict):
        return np.frombuffer(base64.b64decode(a["bdata"]), dtype=a["dtype"]).astype(float)
    return np.asarray(a, dtype=float)


def pct(x: float) -> str:  # the Prune page's card format
    return "100%" if x >= 0.9995 else f"{x:.1%}"


@pytest.fixture(scope="module")
def notebook():
    """What a notebook loads: the shipped vit-tiny on shapes, the dashboard's calibration
    pool (``num_train=CALIBRATION_POOL``; the validation split is the same either way)."""
    model = build_model("vit-tiny", 6, pretrained=True, dataset="shapes")
    train_set, val_set = load_dataset("shapes", (32, 32), seed=0,
                                      num_train=state.CALIBRATION_POOL)
    return model, train_set, val_set


@pytest.fixture(scope="module")
def page(notebook):
    model, train_set, val_set = notebook
    return study.prune_page(model, train_set, val_set, CRITERIA, 0.5, calib=CALIB, seed=0,
                            scope="global", val_samples=VAL,
                            score_budget=state.SCORE_MB * 2**20)


def test_prune_page_cards_table_and_chart_are_one_core_call(runs_dir, page):
    at = ok(make_app(prune_pruners=CRITERIA, prune_sparsity=50).run())
    m = metrics(at)
    reports = [page.dense, *(page.points[n] for n in CRITERIA)]
    assert m["Accuracy"] == [pct(r.metrics["accuracy"]) for r in reports]
    assert m["Params kept"] == [pct(page.points[n].cost["params_kept"]) for n in CRITERIA]
    assert m["MACs kept"] == [pct(page.points[n].cost["macs_kept"]) for n in CRITERIA]
    assert not page.failed

    long = page.layer_tables()
    traces = figure(at, "prune_chart_kept")["data"]
    assert [t["name"] for t in traces] == CRITERIA
    for t in traces:
        want = long[long["criterion"] == t["name"]].set_index("layer")["kept_fraction"]
        np.testing.assert_allclose(values(t["y"]), want.reindex(list(t["x"])).to_numpy())

    at.session_state["prune_numbers"] = True  # open "All numbers"
    ok(at.run())
    table = at.dataframe[0].value
    pd.testing.assert_frame_equal(table.reset_index(drop=True)[list(study.NUMBER_COLUMNS)],
                                  page.table(), check_dtype=False, rtol=1e-9)


def test_the_cached_pieces_equal_the_core_call(page):
    """The state's cached pieces (masks, slice counts, cost, tables) add up to the numbers of
    ``study.prune_point``, exactly where the page evaluates in one slice."""
    s = state.setup(state.Experiment(pruners=tuple(CRITERIA), calib=CALIB, val_samples=VAL))
    for name, want in [("dense", page.dense), *page.points.items()]:
        key = s.key(CRITERIA[0], 0.0) if name == "dense" else s.key(name)
        got = state.point(key, VAL)
        assert got.metrics == want.metrics and got.cost == want.cost
        assert (got.collapsed, got.nm, got.images) == (want.collapsed, want.nm, want.images)
        pd.testing.assert_frame_equal(got.layer_table, want.layer_table)
        if name != "dense":
            pd.testing.assert_frame_equal(state.layer_kept(key), want.layer_table)


def test_slices_add_up_to_one_pass(notebook, monkeypatch):
    """On a 224-px model the page evaluates in doubling slices; forced here on vit-tiny, the
    summed counts give the one-pass numbers (accuracy and F1 exactly, the loss to rounding)."""
    from dashboard.state import pruning

    monkeypatch.setattr(pruning, "QUICK_MACS", 1.0)  # first slice MIN_SLICE images
    s = state.setup(state.Experiment(pruners=("magnitude",), calib=CALIB, val_samples=48,
                                     sparsity=0.6))
    key = s.key("magnitude")
    assert len(pruning.eval_bounds(48, pruning.dense_cost(key.model).macs)) > 2
    model, train_set, val_set = notebook
    want = study.prune_point(model, train_set, val_set, "magnitude", 0.6, calib=CALIB,
                             val_samples=48)
    got = state.point(key, 48)
    assert got.images == want.images == 48
    assert got.metrics["accuracy"] == want.metrics["accuracy"]
    assert got.metrics["macro_f1"] == want.metrics["macro_f1"]
    assert got.metrics["loss"] == pytest.approx(want.metrics["loss"], rel=1e-6)
    assert got.cost == want.cost


def test_pattern_point_equals_core(notebook):
    """Under 2:4 the unstructured criterion prunes at 50 % with the pattern (its card's N:M
    line), as ``study.point_setting`` says."""
    s = state.setup(state.Experiment(pruners=("magnitude",), calib=CALIB, val_samples=VAL,
                                     pattern="2:4", sparsity=0.3))
    model, train_set, val_set = notebook
    want = study.prune_point(model, train_set, val_set, "magnitude", 0.3, calib=CALIB,
                             val_samples=VAL, pattern="2:4")
    got = state.point(s.key("magnitude"), VAL)
    assert (want.sparsity, want.pattern) == (0.5, "2:4") and "2:4" in want.nm
    assert got.metrics == want.metrics and got.nm == want.nm and got.cost == want.cost


def test_attention_grid_similarities_are_the_core_call(notebook):
    model, train_set, val_set = notebook
    s = state.setup(state.Experiment(calib=CALIB, val_samples=VAL))
    ratios = (0.0, 0.5, 0.9)
    view = study.AttentionView("cls", 1, None)
    grid = state.attention_grid(s, CRITERIA, ratios, state.keys.ImageRef(3), view)
    want = study.attention_page(model, train_set, val_set[3][0], CRITERIA, ratios, view,
                                calib=CALIB, score_budget=state.SCORE_MB * 2**20)
    assert not grid.errors and not want.errors
    np.testing.assert_allclose(grid.similarity, want.similarity, rtol=1e-6)


def test_rollout_explanations_are_the_core_call(notebook):
    model, train_set, val_set = notebook
    s = state.setup(state.Experiment(calib=CALIB, val_samples=VAL))
    image = val_set[5][0]
    got = state.explanations(s.key("snip", 0.7), state.keys.ImageRef(5), "mean", 0.0, None,
                             image)
    want = study.explain_pair(model, train_set, image, "snip", 0.7, calib=CALIB,
                              score_budget=state.SCORE_MB * 2**20)
    for side in ("dense", "pruned"):
        assert got[side]["pred"] == want[side]["pred"]
        assert got[side]["prob"] == pytest.approx(want[side]["prob"], abs=1e-6)
        for method in study.METHODS:
            np.testing.assert_allclose(got[side]["heats"][method], want[side]["heats"][method],
                                       atol=1e-5)


def _dashboard_modules() -> list[Path]:
    return sorted((ROOT / "dashboard").rglob("*.py"))


def test_no_dashboard_module_imports_a_private_name_of_core():
    bad = []
    for path in _dashboard_modules():
        tree = ast.parse(path.read_text(), str(path))
        core_aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module == "core" or node.module.startswith("core.")):
                private_module = any(p.startswith("_") and p != "__main__"
                                     for p in node.module.split("."))
                for alias in node.names:
                    if private_module or alias.name.startswith("_"):
                        bad.append(f"{path.name}:{node.lineno} {node.module}.{alias.name}")
                    core_aliases.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "core":
                        core_aliases.add((alias.asname or alias.name).split(".")[0])
                        if any(p.startswith("_") for p in alias.name.split(".")):
                            bad.append(f"{path.name}:{node.lineno} {alias.name}")
        for node in ast.walk(tree):  # study._x, core.study._x, attn._x …
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in core_aliases):
                bad.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not bad, bad


def test_the_state_facade_exports_what_pages_read_and_nothing_else():
    pages = [*(ROOT / "dashboard" / "pages").glob("*.py"), ROOT / "dashboard" / "app.py",
             ROOT / "dashboard" / "navigation.py"]
    read = {node.attr for p in pages for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "state"}
    read |= {m for p in pages for m in re.findall(r'"state\.(\w+)"', p.read_text())}  # hints
    submodules = {"job"}  # app.py's warm-up job
    assert read - submodules <= set(state.__all__), read - submodules - set(state.__all__)
    assert set(state.__all__) <= read, set(state.__all__) - read
