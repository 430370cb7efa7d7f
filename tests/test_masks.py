"""compute_masks (exact counts, scopes, ties), masks on models through training and saving."""
from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from core.models import build_model, load_model, save_model
from core.pruning import (apply_masks, compute_masks, get_masks, mask_sparsity, num_pruned,
                          prunable_parameters, prune, remove_masks)
from _tiny import small_vit as tiny_vit


def reference_masks(scores: dict, sparsity: float) -> dict:
    """Independent global rule: stable sort by (score, flat index), prune the first k."""
    flat = np.concatenate([s.double().reshape(-1).numpy() for s in scores.values()])
    k = num_pruned(sparsity, flat.size)
    keep = np.ones(flat.size, dtype=bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    out, i = {}, 0
    for key, s in scores.items():
        out[key] = torch.from_numpy(keep[i:i + s.numel()].copy()).view(s.shape)
        i += s.numel()
    return out


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.29, 0.5, 0.9, 0.99, 0.999])
@pytest.mark.parametrize("seed", [0, 1])
def test_global_masks_match_stable_sort_with_ties(sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    # integer-valued scores: many ties inside and across layers
    scores = {"a": torch.randint(0, 6, (7, 5), generator=g).float(),
              "b": torch.randint(0, 6, (13,), generator=g).double(),
              "c": torch.randint(-2, 3, (2, 3, 4), generator=g).float()}
    masks = compute_masks(scores, sparsity)
    ref = reference_masks(scores, sparsity)
    n = sum(s.numel() for s in scores.values())
    assert sum(int(m.sum()) for m in masks.values()) == n - math.floor(Fraction(str(sparsity)) * n)
    for k in scores:
        assert masks[k].dtype == torch.bool and masks[k].shape == scores[k].shape
        assert torch.equal(masks[k], ref[k]), k


def test_exact_count_uses_the_printed_decimal():
    assert math.floor(0.29 * 100) == 28  # the float product falls short
    assert num_pruned(0.29, 100) == 29
    m = compute_masks({"w": torch.rand(100)}, 0.29)
    assert int(m["w"].sum()) == 71


def test_ties_pruned_by_index_across_layers():
    scores = {"a": torch.zeros(3), "b": torch.zeros(4)}
    m = compute_masks(scores, 0.5)  # floor(3.5) = 3: all of a, none of b
    assert not m["a"].any() and m["b"].all()
    m = compute_masks({"w": torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])}, 0.6)
    assert m["w"].tolist() == [False, False, True, False, True]
    m = compute_masks({"w": torch.tensor([0.0, -0.0, 0.0])}, 0.5)  # −0 ties with +0
    assert m["w"].tolist() == [False, True, True]


def test_layer_scope_counts_per_layer():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(10, generator=g), "b": torch.rand(3, 7, generator=g),
              "c": torch.zeros(9)}
    m = compute_masks(scores, 0.45, scope="layer")
    for k, s in scores.items():
        assert int(m[k].sum()) == s.numel() - math.floor(0.45 * s.numel())
        assert torch.equal(m[k], reference_masks({k: s}, 0.45)[k])


def test_masks_keep_the_highest_and_handle_inf():
    scores = {"w": torch.tensor([3.0, -math.inf, 1.0, math.inf, 2.0])}
    assert compute_masks(scores, 0.4)["w"].tolist() == [True, False, False, True, True]


def test_compute_masks_errors():
    s = {"w": torch.rand(10)}
    for bad in (-0.1, 1.0, 1.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sparsity"):
            compute_masks(s, bad)
    with pytest.raises(ValueError, match="scope"):
        compute_masks(s, 0.5, scope="block")
    with pytest.raises(ValueError, match="NaN"):
        compute_masks({"w": torch.tensor([1.0, float("nan")])}, 0.5)
    with pytest.raises(ValueError, match="no scores"):
        compute_masks({}, 0.5)


# ---------------------------------------------------------------------------- on the model

def _effective(model, key):
    mname, _, attr = key.rpartition(".")
    return getattr(model.get_submodule(mname), attr)


def test_masks_stay_zero_through_optimizer_steps():
    model = tiny_vit()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 8, 8, generator=g), torch.arange(8) % 3
    r = prune(model, "random", 0.7, seed=0)
    net = r.model.train()
    before = {k: _effective(net, k).detach().clone() for k in r.masks}
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    for k, m in r.masks.items():
        w = _effective(net, k)
        assert bool((w[~m] == 0).all()), k
        assert not torch.equal(w[m], before[k][m]), k  # the kept weights did train
    assert get_masks(net).keys() == r.masks.keys()
    assert all(torch.equal(get_masks(net)[k], m) for k, m in r.masks.items())


def test_masks_stay_zero_through_core_train():
    from core.train import TrainConfig, train
    model = tiny_vit()
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(16, 3, 8, 8, generator=g), torch.arange(16) % 3)
    r = prune(model, "magnitude", 0.8)
    result = train(r.model, data, data, TrainConfig(epochs=1, batch_size=8, lr=1e-2,
                                                    device="cpu"))
    assert result.status == "finished" and result.steps == 2
    for k, m in r.masks.items():
        assert bool((_effective(r.model, k)[~m] == 0).all()), k


def test_apply_update_and_remove_masks():
    model = tiny_vit()
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    m1 = compute_masks({"head.weight": torch.rand(3, 16)}, 0.5)
    apply_masks(model, m1)
    m2 = {"head.weight": ~m1["head.weight"]}
    apply_masks(model, m2)  # replaces the mask, no second parametrization
    assert len(model.head.parametrizations.weight) == 1
    assert torch.equal(get_masks(model)["head.weight"], m2["head.weight"])
    remove_masks(model, bake=False)
    assert torch.equal(model.head.weight, dense["head.weight"])
    apply_masks(model, m1)
    remove_masks(model)
    assert set(model.state_dict()) == set(dense)
    assert bool((model.head.weight[~m1["head.weight"]] == 0).all())
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"head.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no module"):
        apply_masks(model, {"tail.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_removing_masks_from_a_copy_leaves_the_original_working():
    """torch's deepcopy shares the injected Parametrized class: we must not edit it."""
    model = tiny_vit()
    r = prune(model, "magnitude", 0.5)
    x = torch.rand(2, 3, 8, 8)
    out = r.model(x)
    baked = remove_masks(copy.deepcopy(r.model))
    torch.testing.assert_close(baked(x), out)
    torch.testing.assert_close(r.model(x), out)
    assert get_masks(r.model).keys() == r.masks.keys()


def test_pruned_model_saves_to_safetensors(tmp_path):
    model = tiny_vit()
    r = prune(model, "magnitude", 0.6)
    x = torch.rand(2, 3, 8, 8)
    path = save_model(r.model, tmp_path / "pruned.safetensors")
    back = load_model(path)
    torch.testing.assert_close(back(x), r.model(x))
    assert not any("parametrizations" in k for k in back.state_dict())
    n = sum(m.numel() for m in r.masks.values())
    kept = sum(int((_effective(back, k) != 0).sum()) for k in r.masks)
    assert kept == sum(int(m.sum()) for m in r.masks.values()) == n - math.floor(0.6 * n)
    assert math.isclose(mask_sparsity(r.masks), math.floor(0.6 * n) / n)


def test_compute_masks_scales_to_the_paper_model():
    """Not timed here (benchmarks/bench_pruning.py is); checks the exact count at 2.8M."""
    model = build_model("linformer-vit-paper", 38)
    scores = {p.key: torch.rand(p.param.shape) for p in prunable_parameters(model)}
    m = compute_masks(scores, 0.9)
    n = sum(s.numel() for s in scores.values())
    assert n == 2_757_376
    assert sum(int(v.sum()) for v in m.values()) == 275_738
