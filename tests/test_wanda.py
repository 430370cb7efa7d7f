"""Wanda (|W_ij| · ‖X_j‖₂, compared per output row) against an explicit computation from hooks
written here, against magnitude when every input has the same norm, and its hygiene: hooks
removed (errors included), modes restored, tensors on the model's device, the registry and
the pipeline (core.study) picking it up."""
from __future__ import annotations

import copy
import math
import pickle
from fractions import Fraction

import pytest
import torch
from torch import nn

from core import study
from core.pruning import (GroupedScores, WandaPruner, compute_masks, get_pruner, list_pruners,
                          prunable_parameters, prune)
from _tiny import random_linformer, random_vit


def batch(model: nn.Module, n: int = 5, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *model.input_shape, generator=g), torch.arange(n) % model.num_classes


def hand_scores(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """|W| · ‖X_j‖ from the inputs each Linear / Conv2d receives, read with hooks written here;
    a Conv2d with stride = kernel (the patch embedding) as the Linear on its patches; norms
    summed token by token in float64."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            handles.append(mod.register_forward_hook(
                lambda m, args, out, name=name: seen.setdefault(name, []).append(args[0])))
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, mod in model.named_modules():
        if name not in seen:
            continue
        tokens = []
        for x in seen[name]:
            if isinstance(mod, nn.Conv2d):
                assert mod.stride == mod.kernel_size and mod.padding == (0, 0)
                kh, kw = mod.kernel_size
                B, C, H, W = x.shape
                patches = x.reshape(B, C, H // kh, kh, W // kw, kw).permute(0, 2, 4, 1, 3, 5)
                tokens.append(patches.reshape(-1, C * kh * kw))   # (c, u, v) order of the kernel
            else:
                tokens.append(x.reshape(-1, x.shape[-1]))
        X = torch.cat(tokens).double()                             # (tokens, in)
        norm = torch.tensor([math.sqrt(sum(float(v) ** 2 for v in X[:, j]))
                             for j in range(X.shape[1])], dtype=torch.float64)
        w = mod.weight.detach().double()
        out[f"{name}.weight"] = w.reshape(w.shape[0], -1).abs() * norm[None, :]
    return out


def per_row_by_loops(scores2d: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Each row prunes floor(s·in) lowest (ties: lower index); the layer's remaining
    floor(s·out·in) − out·floor(s·in) entries come one each from the rows whose lowest
    survivor is lowest (ties: lower row)."""
    rows, cols = scores2d.shape
    s = Fraction(repr(sparsity))
    k = math.floor(s * cols)
    extra = math.floor(s * rows * cols) - rows * k
    keep = torch.ones(rows, cols, dtype=torch.bool)
    survivors = []
    for i in range(rows):
        order = sorted(range(cols), key=lambda j: (float(scores2d[i, j]), j))
        for j in order[:k]:
            keep[i, j] = False
        survivors.append((float(scores2d[i, order[k]]), i, order[k]))
    for _, i, j in sorted(survivors)[:extra]:
        keep[i, j] = False
    return keep


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_masks_equal_an_explicit_computation_from_hooks(sparsity):
    model = random_vit()
    x, y = batch(model)
    res = prune(model, "wanda", sparsity, x, y)
    want = hand_scores(model, x)
    keys = [p.key for p in prunable_parameters(model)]
    assert list(res.scores) == keys == list(want)
    for key in keys:
        got = res.scores[key]
        torch.testing.assert_close(got.reshape(got.shape[0], -1).double(), want[key],
                                   rtol=1e-5, atol=1e-7)
        assert torch.equal(res.masks[key].reshape(got.shape[0], -1),
                           per_row_by_loops(want[key], sparsity)), key
        assert int((~res.masks[key]).sum()) == math.floor(Fraction(repr(sparsity))
                                                          * got.numel())  # as scope="layer"
    assert res.extra["comparison"] == "row"


@pytest.mark.parametrize("sparsity", [0.25, 0.3, 0.5, 0.9])
def test_row_masks_break_ties_like_the_loops(sparsity):
    g = torch.Generator().manual_seed(7)
    scores = torch.randint(0, 3, (7, 12), generator=g).float()  # many ties
    scores[2, :5] = -math.inf                                   # a row already pruned
    masks = compute_masks({"w": scores}, sparsity, rows=True)
    assert torch.equal(masks["w"], per_row_by_loops(scores, sparsity))


def test_each_row_keeps_its_top_fraction_whatever_the_scope():
    model = random_vit(seed=2)
    x, y = batch(model)
    glob = prune(model, "wanda", 0.6, x, y, scope="global")
    layer = prune(model, "wanda", 0.6, x, y, scope="layer")
    for key, m in glob.masks.items():
        assert torch.equal(m, layer.masks[key])
        cols = m.reshape(m.shape[0], -1).shape[1]
        pruned = (~m).reshape(m.shape[0], -1).sum(1)
        assert set(pruned.tolist()) <= {math.floor(0.6 * cols), math.floor(0.6 * cols) + 1}
        assert int((~m).sum()) == math.floor(Fraction("0.6") * m.numel())  # per layer, exact


def test_per_output_false_follows_the_scope():
    model = random_vit(seed=3)
    x, y = batch(model)
    raw = get_pruner("wanda", per_output=False).score(model, x)
    assert type(raw) is dict  # nothing declared: compared as the scope says
    for scope in ("global", "layer"):
        res = prune(model, "wanda", 0.7, x, y, scope=scope, per_output=False)
        want = compute_masks(raw, 0.7, scope)
        assert all(torch.equal(res.masks[k], want[k]) for k in want)
        assert res.extra["comparison"] == scope


class Parallel(nn.Module):
    """Two Linears reading the same input (B, N, 8); no input_shape (any float batch)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 6), nn.Linear(8, 5)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], -1).mean(1)


@pytest.mark.parametrize("sparsity", [0.5, 0.3, 0.9])
def test_equal_input_norms_reduce_to_magnitude_per_row(sparsity):
    torch.manual_seed(0)
    model = Parallel()
    x = torch.randint(0, 2, (4, 3, 8)).float() * 2 - 1   # ±1: every ‖X_j‖ = √12
    res = prune(model, "wanda", sparsity, x)
    magnitude = get_pruner("magnitude").score(model)      # an independent criterion
    want = compute_masks(magnitude, sparsity, rows=True)
    for key in ("a.weight", "b.weight"):
        assert torch.equal(res.masks[key], want[key])
        torch.testing.assert_close(res.scores[key], magnitude[key] * math.sqrt(12))
        if sparsity == 0.5:  # no remainder: each row's top 4 of |W|, by topk
            top = magnitude[key].topk(4, dim=1).indices
            expect = torch.zeros_like(res.masks[key]).scatter_(1, top, True)
            assert torch.equal(res.masks[key], expect)


def hooks(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]


class Boom(nn.Module):
    input_shape = None

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        self.fc(x)
        raise RuntimeError("boom in forward")


def test_hooks_removed_and_modes_restored_also_on_error():
    model = random_vit().train()
    x, _ = batch(model)
    get_pruner("wanda").score(model, x)
    assert all(h == (0, 0) for h in hooks(model))
    assert all(m.training for m in model.modules())
    boom = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        get_pruner("wanda").score(boom, torch.rand(3, 4))
    assert all(h == (0, 0) for h in hooks(boom)) and all(m.training for m in boom.modules())
    bad = nn.Sequential(nn.Linear(4, 4), nn.Conv2d(1, 1, 3, padding="same"))
    with pytest.raises(ValueError, match="Conv2d"):  # refused once the first hook was in
        get_pruner("wanda").score(bad, torch.rand(2, 4))
    assert all(h == (0, 0) for h in hooks(bad))


def test_scores_follow_the_model_device():
    model = random_vit()
    x, _ = batch(model)
    meta = copy.deepcopy(model).to("meta")  # shapes only: no data, but every device rule
    scores = get_pruner("wanda").score(meta, x)
    assert {s.device.type for s in scores.values()} == {"meta"}
    if torch.cuda.is_available():
        cuda = copy.deepcopy(model).cuda()
        res = prune(cuda, "wanda", 0.5, x)
        cpu = prune(model, "wanda", 0.5, x)
        assert {m.device.type for m in res.masks.values()} == {"cuda"}
        agree = sum(int((res.masks[k].cpu() == cpu.masks[k]).sum()) for k in cpu.masks)
        assert agree >= 0.999 * sum(m.numel() for m in cpu.masks.values())


def test_a_masked_model_keeps_its_pruned_weights_pruned():
    model = random_vit(seed=4)
    x, y = batch(model)
    first = prune(model, "magnitude", 0.5, x, y).model
    second = prune(first, "wanda", 0.7, x, y)
    for key, m in second.masks.items():
        old = first.get_submodule(key.rpartition(".")[0]).parametrizations.weight[0].mask != 0
        assert not bool((m & ~old).any())
        assert second.scores[key][~old].abs().max() == 0  # the masked weight scores 0


def test_registered_declared_and_refusals():
    assert "wanda" in list_pruners("unstructured")
    p = get_pruner("wanda")
    assert isinstance(p, WandaPruner) and p.needs_data and p.row_groups
    assert p.formula and len(p.explanation) > 100 and "scope" in p.explanation
    hash(p)
    info = study.criterion_info("wanda")
    assert (info.kind, info.iterative, info.needs_data) == ("unstructured", False, True)
    with pytest.raises(ValueError, match="Linformer sequence projections"):
        get_pruner("wanda", include_linformer_proj=True)
    with pytest.raises(ValueError, match="calibration batch"):
        get_pruner("wanda").score(random_vit())
    idle = Parallel()
    idle.c = nn.Linear(8, 3)  # never called by forward
    with pytest.raises(ValueError, match="never ran in the forward.*c.weight.*ignored_layers"):
        get_pruner("wanda").score(idle, torch.rand(2, 3, 8))
    assert get_pruner("wanda", ignored_layers=("c",)).score(idle, torch.rand(2, 3, 8))
    model = random_linformer()
    x, y = batch(model)
    res = prune(model, "wanda", 0.5, x, y)  # Linformer-ViT's nn.Linear patch embedding too
    assert res.actual_sparsity == pytest.approx(0.5, abs=1e-3)


def test_grouped_scores_survive_copies_and_the_pipeline():
    model = random_vit(seed=5)
    x, y = batch(model)
    scores = get_pruner("wanda").score(model, x)
    assert isinstance(scores, GroupedScores) and scores.rows
    for other in (copy.deepcopy(scores), pickle.loads(pickle.dumps(scores))):
        assert isinstance(other, GroupedScores) and other.rows and list(other) == list(scores)
    # the pipeline re-thresholds cached scores with compute_masks(scores, s, scope): rows kept
    sc = study.score(model, "wanda", x, y)
    for s in (0.3, 0.8):
        p = study.prune_at(model, "wanda", s, x, y, "global", scores=sc)
        want = prune(model, "wanda", s, x, y).masks
        assert all(torch.equal(p.masks[k], want[k]) for k in want)


def test_sweep_runs_wanda_next_to_magnitude():
    from core.data import load_dataset

    train_set, val_set = load_dataset("shapes", 8, seed=0, num_train=60, num_val=16)
    torch.manual_seed(0)
    from core.models import build_model
    model = build_model("vit-tiny", 6, img_size=8, patch_size=4, embed_dim=16, depth=2,
                        num_heads=2).eval()
    df = study.sweep(model, train_set, val_set, ["wanda", "magnitude"], [0.0, 0.5],
                     calib=8, val_samples=8, attention=False)
    assert list(df["criterion"]) == ["wanda", "wanda", "magnitude", "magnitude"]
    assert df["params_kept"].iloc[1] < 1.0 and df["accuracy"].notna().all()
