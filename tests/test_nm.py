"""N:M sparsity for every unstructured criterion: every group of M consecutive inputs of a row
keeps exactly N, its N highest scores (checked against a loop over the groups); layers too
narrow stay dense and are named; the sparsity a pattern fixes; check_nm; the pattern kept
through save_model / load_model / restore_masks; the pipeline (core.study) and the CLI."""
from __future__ import annotations

import pytest
import torch

from core import study
from core.models import load_model, save_model
from core.pruning import (check_nm, compute_masks, get_masks, get_pruner, list_pruners,
                          parse_pattern, pattern_sparsity, prune, restore_masks)
from _tiny import random_vit

ONE_SHOT = [n for n in list_pruners("unstructured") if not study.criterion_info(n).iterative]


def batch(model, n: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.input_shape, generator=g), torch.arange(n) % model.num_classes


def groups_by_loop(scores: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """Keep-mask from a loop over rows and groups: the n highest of each group of m, ties
    (equal scores) pruned from the lower index first; None if the row length is not a
    multiple of m."""
    s = scores.reshape(scores.shape[0], -1)
    rows, cols = s.shape
    if cols % m:
        return None
    keep = torch.zeros(rows, cols, dtype=torch.bool)
    for i in range(rows):
        for g in range(0, cols, m):
            order = sorted(range(g, g + m), key=lambda j: (float(s[i, j]), j))
            for j in order[m - n:]:
                keep[i, j] = True
    return keep.reshape(scores.shape)


@pytest.fixture(scope="module")
def vit():
    """qkv/fc/head inputs 24, 40, 32, patches 48; proj inputs 18 and 14 (not multiples of 4)."""
    return random_vit()


def test_patterns_parse_and_fix_the_sparsity():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(" 4:8 ") == (4, 8)
    assert parse_pattern(None) is parse_pattern("") is parse_pattern("unstructured") is None
    for bad in ("4:2", "2:2", "0:4", "a:b", "2-4", "2:4:8", "1.5:4"):
        with pytest.raises(ValueError, match="N:M"):
            parse_pattern(bad)
    assert pattern_sparsity("2:4") == 0.5 and pattern_sparsity("1:4", 0.75) == 0.75
    assert pattern_sparsity("1:3", 0.666667) == pytest.approx(2 / 3)  # 6 decimals, as study
    with pytest.raises(ValueError, match="fixes the sparsity at 0.5") as e:
        pattern_sparsity("2:4", 0.3)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("name", ONE_SHOT)
def test_every_group_keeps_its_top_n(vit, name, pattern):
    n, m = parse_pattern(pattern)
    x, y = batch(vit)
    res = prune(vit, name, None, x, y, pattern=pattern)
    assert res.sparsity == 1 - n / m and res.extra["comparison"] == pattern
    skipped = []
    for key, mask in res.masks.items():
        want = groups_by_loop(res.scores[key], n, m)
        if want is None:
            skipped.append(key)
            assert bool(mask.all()), key  # too narrow for the pattern: left dense
            continue
        assert torch.equal(mask, want), key
        kept = mask.reshape(mask.shape[0], -1, m).sum(-1)
        assert bool((kept == n).all())
    assert skipped == list(res.extra["nm"].skipped)
    assert "blocks.0.attn.proj.weight" in skipped  # 18 inputs: no multiple of 4 or 8
    assert res.extra["nm"].ok and len(res.extra["nm"].exact) == len(res.masks) - len(skipped)


def test_synflow_schedule_ends_on_the_pattern(vit):
    x, _ = batch(vit)
    res = prune(vit, "synflow", 0.5, x, pattern="2:4", iterations=5)
    for key, mask in res.masks.items():
        if key in res.extra["nm"].skipped:
            assert bool(mask.all())
            continue
        g = mask.reshape(mask.shape[0], -1, 4)
        s = res.scores[key].reshape(g.shape)
        assert bool((g.sum(-1) == 2).all())
        low_kept = s.masked_fill(~g, float("inf")).min(-1).values
        high_pruned = s.masked_fill(g, float("-inf")).max(-1).values
        assert bool((low_kept >= high_pruned).all()), key  # the kept ones are the top 2


def test_compute_masks_takes_a_pattern_for_any_scores(vit):
    x, y = batch(vit)
    plain = get_pruner("magnitude").score(vit)
    assert type(plain) is dict
    masks = compute_masks(plain, None, pattern="2:4")
    res = prune(vit, "magnitude", 0.5, pattern="2:4")
    assert all(torch.equal(masks[k], res.masks[k]) for k in masks)
    grouped = get_pruner("magnitude", pattern="2:4").score(vit)
    off = compute_masks(grouped, 0.5, "global", pattern="")  # the declaration switched off
    assert all(torch.equal(off[k], v) for k, v in compute_masks(plain, 0.5).items())
    with pytest.raises(ValueError, match="fixes the sparsity"):
        compute_masks(grouped, 0.4)


def test_check_nm_reads_models_masks_and_weights(vit):
    x, y = batch(vit)
    res = prune(vit, "snip", None, x, y, pattern="2:4")
    check = check_nm(res.model, "2:4")
    assert check.ok and check.layers == tuple(res.masks)
    assert check.summary() == ("2:4 realised in 8 of 10 layers (2 skipped: input size not a "
                               "multiple of 4)")
    assert not check_nm(res.model, "1:4").ok  # 2 kept of 4 breaks 1:4
    tampered = dict(res.masks)
    key = "blocks.1.mlp.fc1.weight"
    tampered[key] = tampered[key].clone()
    tampered[key][3, :4] = True
    bad = check_nm(tampered, "2:4")
    assert bad.violations == {key: 1} and not bad.ok and key not in bad.realised
    assert len(check_nm(vit, "2:4").realised) == 0  # dense weights: no group holds it


def test_saved_and_reloaded_models_keep_the_pattern(vit, tmp_path):
    x, y = batch(vit)
    res = prune(vit, "wanda", None, x, y, pattern="2:4")
    path = save_model(res.model, tmp_path / "nm.safetensors")
    baked = load_model(path)
    assert check_nm(baked, "2:4").ok  # masks baked in as zeros
    restored = restore_masks(load_model(path))
    back = get_masks(restored)
    assert list(back) == list(res.masks)
    assert all(torch.equal(back[k].cpu(), res.masks[k]) for k in back)
    assert check_nm(restored, "2:4").summary() == check_nm(res.model, "2:4").summary()
    torch.testing.assert_close(restored(x), res.model(x))


def test_the_pipeline_passes_the_pattern_as_an_option(vit):
    x, y = batch(vit)
    opts = {"pattern": "2:4"}
    sc = study.score(vit, "grasp", x, y, options=opts)
    p = study.prune_at(vit, "grasp", 0.5, x, y, scores=sc, options=opts)
    assert check_nm(p.masks, "2:4").ok
    with pytest.raises(ValueError, match="fixes the sparsity"):
        study.prune_at(vit, "grasp", 0.3, x, y, scores=sc, options=opts)
    syn = study.prune_many(vit, "synflow", [0.0, 0.5], x, y, options={**opts, "iterations": 3})
    assert syn[0].dense and check_nm(syn[1].masks, "2:4").ok


def test_structured_criteria_refuse_a_pattern(vit):
    structured = list_pruners("structured")
    if not structured:
        pytest.skip("no structured pruners in core")
    with pytest.raises(ValueError, match="applies to unstructured criteria"):
        get_pruner(structured[0], pattern="2:4")
    with pytest.raises(ValueError, match="applies to unstructured criteria"):
        prune(vit, structured[0], 0.3, *batch(vit), pattern="2:4")
    with pytest.raises(ValueError, match="the pruner has pattern 2:4"):
        prune(vit, get_pruner("magnitude", pattern="2:4"), None, pattern="4:8")


@pytest.mark.skipif(not (torch.cuda.is_available()
                         and torch.cuda.get_device_capability() >= (8, 0)),
                    reason="semi-structured sparse kernels need CUDA with capability >= 8.0")
def test_a_2_4_mask_converts_to_torch_semi_structured():
    from torch.sparse import to_sparse_semi_structured

    lin = torch.nn.Linear(128, 64).half().cuda()
    scores = {"weight": lin.weight.detach().abs().float()}
    mask = compute_masks(scores, None, pattern="2:4")["weight"]
    w = lin.weight.detach() * mask
    sparse = to_sparse_semi_structured(w)
    x = torch.randn(32, 128, dtype=torch.half, device="cuda")
    torch.testing.assert_close(torch.nn.functional.linear(x, sparse),
                               torch.nn.functional.linear(x, w), rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------------------- command line

DATA_OPTS = ["--data-opt", "num_train=120", "--data-opt", "num_val=40"]


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    from core.models import build_model

    torch.manual_seed(0)
    model = build_model("vit-tiny", 6, img_size=8, patch_size=4, embed_dim=16, depth=2,
                        num_heads=2).eval()
    return model, save_model(model, tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.mark.slow  # the whole CLI end to end (CI runs it)
def test_cli_sweep_with_a_pattern_equals_prune_by_hand(cli_model, tmp_path, capsys):
    import pandas as pd

    from core.__main__ import main
    from core.data import calibration_batch, load_dataset
    from core.train import evaluate

    model, path = cli_model
    code = main(["sweep", "--model", str(path), "--data", "shapes", *DATA_OPTS,
                 "--criteria", "wanda", "magnitude", "--pattern", "2:4", "--val", "16",
                 "--calib", "8", "--no-attention", "--no-progress", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    df = pd.read_csv(tmp_path / "sweep.csv")
    assert df["sparsity"].tolist() == [0.0, 0.5, 0.0, 0.5]  # 0 and 1 − N/M by default
    train_set, val_set = load_dataset("shapes", 8, seed=0, num_train=120, num_val=40)
    images, labels = calibration_batch(train_set, 8, 0)
    res = prune(model, "wanda", None, images, labels, pattern="2:4")
    assert check_nm(res.model, "2:4").ok
    from core.study import val_subset
    ev = evaluate(res.model, val_subset(val_set, 16))  # the subset every page and the CLI use
    row = df[(df.criterion == "wanda") & (df.sparsity == 0.5)].iloc[0]
    assert row["loss"] == pytest.approx(ev["loss"], rel=1e-5)
    html = (tmp_path / "report.html").read_text()
    assert "--pattern 2:4" in html and not (tmp_path / "grid.png").exists()
    assert "in the 10 of 10 prunable layers" in html


def test_cli_pattern_usage_errors_are_one_line(cli_model, tmp_path, capsys):
    from core.__main__ import main

    _, path = cli_model
    for extra, what in ((["--sparsities", "0", "0.3"], "fixes the sparsity at 0.5"),
                        (["--sensitivity"], "not with --pattern")):
        code = main(["sweep", "--model", str(path), "--data", "shapes", *DATA_OPTS,
                     "--criteria", "magnitude", "--pattern", "2:4", "--no-progress",
                     "--out", str(tmp_path), *extra])
        err = capsys.readouterr().err
        assert code == 2 and what in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--pattern", "4:2", "--out", str(tmp_path)])
    assert e.value.code == 2 and "N:M" in capsys.readouterr().err


# ---------------------------------------------------------------------------- dashboard

def test_prune_page_pattern_box(runs_dir):
    """The Pattern box on the Prune page: unstructured criteria at 2:4 with the check shown,
    a structured one noted and left at the slider's sparsity; Wanda listed with its text."""
    import re
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    app = str(Path(__file__).resolve().parents[1] / "dashboard" / "navigation.py")
    at = AppTest.from_file(app, default_timeout=240)
    crits = ["wanda", "magnitude"] + (["l2-norm"] if "l2-norm" in list_pruners() else [])
    for key, value in {"prune_val": 32, "prune_calib": 16, "prune_pruners": crits,
                       "prune_sparsity": 30}.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="prune_pattern").options == ["unstructured", "2:4", "4:8"]
    assert any("Wanda" in m.value for m in at.markdown)  # its teaching text

    at.selectbox(key="prune_pattern").set_value("2:4").run()
    assert not at.exception, [e.value for e in at.exception]
    text = [re.sub(r"\\(.)", r"\1", e.value) for e in (*at.markdown, *at.caption)]
    assert any(t.startswith("**wanda** at 50% · 2:4") for t in text)
    assert any(t.startswith("**magnitude** at 50% · 2:4") for t in text)
    assert sum("2:4 realised in 18 of 18 layers" == t for t in text) == 2  # vit-tiny
    if "l2-norm" in crits:
        assert any(t.startswith("**l2-norm** at 30%") for t in text)
        assert any("prune at the slider's sparsity without it" in t for t in text)
