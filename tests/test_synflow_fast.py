"""SynflowPruner.prune_many: the batched schedules give prune_model's masks, sparsity by sparsity.

prune_model (one target at a time, compute_masks every round) is the oracle; prune_many
stacks one parameter set per target under torch.func.vmap and updates masks among the alive
entries only. Masks must be equal exactly (booleans), scores to float64 rounding.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from core.pruning import compute_masks, criteria, get_masks, get_pruner, prune
from core.pruning.criteria import _prune_lowest
from _tiny import random_linformer, random_vit

SPARSITIES = [0.9, 0.0, 0.5, 0.97, 0.3]  # not sorted: the order must be kept


def _same(many, seq) -> None:
    assert len(many) == len(seq)
    for a, b in zip(many, seq):
        assert a.sparsity == b.sparsity and a.scope == b.scope
        assert list(a.masks) == list(b.masks)
        for k in b.masks:
            assert a.masks[k].dtype == torch.bool and a.masks[k].shape == b.masks[k].shape
            assert torch.equal(a.masks[k], b.masks[k]), (b.sparsity, k)
            assert a.scores[k].dtype == torch.float64
            torch.testing.assert_close(a.scores[k], b.scores[k], rtol=1e-7, atol=1e-300)
        assert get_masks(a.model).keys() == get_masks(b.model).keys()
        for k, m in get_masks(b.model).items():
            assert torch.equal(get_masks(a.model)[k], m)
        assert list(a.table["layer"]) == list(b.table["layer"])
        assert list(a.table["kept"]) == list(b.table["kept"])


@pytest.mark.parametrize("make, options, scope", [
    (random_vit, {}, "global"),
    (random_linformer, {}, "global"),
    (random_linformer, {"include_linformer_proj": True}, "layer"),
    (random_vit, {"layernorm": "affine", "exclude_head": True}, "layer"),
])
def test_prune_many_equals_prune_model(make, options, scope):
    model = make()
    p = get_pruner("synflow", iterations=30, **options)
    many = p.prune_many(model, SPARSITIES, scope=scope)
    seq = [p.prune_model(model, s, scope=scope) for s in SPARSITIES]
    _same(many, seq)
    assert [r.sparsity for r in many] == SPARSITIES
    n = sum(m.numel() for m in many[0].masks.values())
    if scope == "global":
        for r in many:  # the count prune_model's last compute_masks gives
            assert n - sum(int(m.sum()) for m in r.masks.values()) == criteria.num_pruned(
                r.sparsity, n)


def test_prune_many_default_schedule_and_caller_model_untouched():
    model = random_vit(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = get_pruner("synflow")  # iterations=100, as the sweep runs it
    ss = [0.2, 0.8, 0.95]
    _same(p.prune_many(model, ss), [p.prune_model(model, s) for s in ss])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_prune_many_keeps_earlier_pruning():
    first = prune(random_vit(seed=1), "magnitude", 0.5)
    p = get_pruner("synflow", iterations=10)
    ss = [0.3, 0.7]  # 0.3 < 0.5 already pruned: nothing new, the old mask kept
    many = p.prune_many(first.model, ss)
    _same(many, [p.prune_model(first.model, s) for s in ss])
    for r in many:
        for k, m in first.masks.items():
            assert not bool((r.masks[k] & ~m).any())
    assert all(torch.equal(many[0].masks[k], m) for k, m in first.masks.items())


def test_sparsity_zero_and_duplicates():
    model = random_linformer(seed=2)
    p = get_pruner("synflow", iterations=15)
    many = p.prune_many(model, [0.0, 0.6, 0.0, 0.6])
    assert [r.sparsity for r in many] == [0.0, 0.6, 0.0, 0.6]
    assert all(bool(m.all()) for m in many[0].masks.values())
    one_round = p.score(model)  # nothing pruned: every round scores the dense model
    for k, v in one_round.items():
        torch.testing.assert_close(many[0].scores[k], v, rtol=1e-7, atol=1e-300)
    for k in many[1].masks:
        assert torch.equal(many[1].masks[k], many[3].masks[k])
    assert many[1].model is not many[3].model  # each result owns its pruned copy
    key = next(iter(many[1].masks))
    assert many[1].masks[key].data_ptr() != many[3].masks[key].data_ptr()
    _same(many[:2], [p.prune_model(model, 0.0), p.prune_model(model, 0.6)])


def test_groups_bounded_by_memory(monkeypatch):
    """A budget below one set's bytes runs every set alone: same masks."""
    model = random_vit(seed=4)
    p = get_pruner("synflow", iterations=12)
    net = p._abs_copy(model)
    assert p._group_size(net, p.parameters(net), model.input_shape) >= len(SPARSITIES)
    monkeypatch.setattr(criteria, "_BATCH_BYTES", 1)
    assert p._group_size(net, p.parameters(net), model.input_shape) == 1
    calls = []
    real = criteria.SynflowPruner._batched_round

    def spy(self, net, params, shape, theta):
        calls.append(theta.shape[0])
        return real(self, net, params, shape, theta)

    monkeypatch.setattr(criteria.SynflowPruner, "_batched_round", spy)
    many = p.prune_many(model, SPARSITIES)
    assert set(calls) == {1}
    _same(many, [p.prune_model(model, s) for s in SPARSITIES])


class _ItemNet(nn.Module):
    """A model vmap cannot run: it reads a value with ``.item()`` (data-dependent Python)."""

    input_shape = (3, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(48, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x.flatten(1))
        return self.fc2(h * (2.0 if h.sum().item() > 0 else 1.0))


def test_falls_back_to_the_loop_when_vmap_fails(monkeypatch):
    model = _ItemNet()
    p = get_pruner("synflow", iterations=5)
    net = p._abs_copy(model)
    params = p.parameters(net)
    theta = torch.cat([q.param.reshape(-1) for q in params]).expand(2, -1)
    with pytest.raises(criteria._VmapUnsupported):
        p._batched_round(net, params, model.input_shape, theta)
    seen = []
    real = criteria.SynflowPruner.prune_model

    def spy(self, m, s, *a, **kw):
        seen.append(s)
        return real(self, m, s, *a, **kw)

    monkeypatch.setattr(criteria.SynflowPruner, "prune_model", spy)
    many = p.prune_many(model, [0.5, 0.8])
    assert seen == [0.5, 0.8]
    assert [r.sparsity for r in many] == [0.5, 0.8]
    n = sum(m.numel() for m in many[1].masks.values())
    assert n - sum(int(m.sum()) for m in many[1].masks.values()) == math.floor(0.8 * n)


@pytest.mark.parametrize("bad", [[0.5, 1.0], [1.5], [-0.1], [float("nan")], ["x"], [None]])
def test_bad_sparsity_same_error_as_prune_model(bad):
    model = random_vit()
    p = get_pruner("synflow", iterations=2)
    with pytest.raises(ValueError) as want:
        for s in bad:
            p.prune_model(model, s)
    with pytest.raises(ValueError) as got:
        p.prune_many(model, bad)
    assert str(got.value) == str(want.value)


def test_bad_lists_scope_and_images():
    model = random_vit()
    p = get_pruner("synflow", iterations=2)
    with pytest.raises(ValueError, match="sparsities is empty"):
        p.prune_many(model, [])
    with pytest.raises(ValueError, match="list of numbers"):
        p.prune_many(model, 0.5)
    with pytest.raises(ValueError, match="list of numbers"):
        p.prune_many(model, "0.5")
    with pytest.raises(ValueError, match=r"scope must be one of \('global', 'layer'\)"):
        p.prune_many(model, [0.5], scope="row")
    wrong = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError) as want:
        p.prune_model(model, 0.5, wrong)
    with pytest.raises(ValueError) as got:
        p.prune_many(model, [0.5], wrong)
    assert str(got.value) == str(want.value) and "wrong image size" in str(got.value)


# ---------------------------------------------------------------------------- mask update

def _old_update(scores: dict[str, Tensor], masks: dict[str, Tensor], target: float,
                scope: str) -> dict[str, Tensor]:
    """prune_model's round: compute_masks on −∞-filled scores, ANDed with the old masks."""
    ranked = {k: s.masked_fill(~masks[k], -math.inf) for k, s in scores.items()}
    new = compute_masks(ranked, target, scope)
    return {k: new[k] & masks[k] for k in new}


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_alive_only_update_equals_compute_masks_with_ties(scope):
    """Integer scores in 0..4 (thousands of ties, at the threshold too), random old masks."""
    rng = np.random.default_rng(0)
    shapes = {"a": (7, 9), "b": (40,), "c": (3, 5, 2)}
    keys, sizes = list(shapes), [math.prod(s) for s in shapes.values()]
    n = sum(sizes)
    bounds = ([(0, n)] if scope == "global" else
              [(a, a + m) for a, m in zip(np.cumsum([0, *sizes[:-1]]).tolist(), sizes)])
    for trial in range(200):
        scores = {k: torch.from_numpy(rng.integers(0, 5, s).astype(np.float64))
                  for k, s in shapes.items()}
        masks = {k: torch.from_numpy(rng.random(s) > rng.random() * 0.6)
                 for k, s in shapes.items()}
        target = float(rng.choice([0.0, 0.1, 0.29, 0.5, 0.73, 0.9, 0.99]))
        want = _old_update(scores, masks, target, scope)
        flat = torch.cat([scores[k].reshape(-1) for k in keys])
        alive = torch.cat([masks[k].reshape(-1) for k in keys])
        pruned = [(b - a) - int(alive[a:b].sum()) for a, b in bounds]
        before = list(pruned)
        goal = [criteria.num_pruned(target, b - a) for a, b in bounds]
        _prune_lowest(flat, alive, goal, pruned, bounds, keys, sizes)
        got = dict(zip(keys, (m.view(shapes[k]) for k, m in zip(keys, alive.split(sizes)))))
        for k in keys:
            assert torch.equal(got[k], want[k]), (trial, k, target)
        now = [(b - a) - int(alive[a:b].sum()) for a, b in bounds]
        assert pruned == now == [max(g, p0) for g, p0 in zip(goal, before)]


def test_nan_score_raises_compute_masks_error():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([0.5, float("nan")])}
    masks = {"a": torch.ones(3, dtype=torch.bool), "b": torch.ones(2, dtype=torch.bool)}
    with pytest.raises(ValueError) as want:
        _old_update(scores, masks, 0.4, "global")
    alive = torch.ones(5, dtype=torch.bool)
    with pytest.raises(ValueError) as got:
        _prune_lowest(torch.cat(list(scores.values())), alive, [2], [0], [(0, 5)],
                      ["a", "b"], [3, 2])
    assert str(got.value) == str(want.value) == "scores of 'b' contain NaN"
    # a NaN on an already pruned entry is ranked −∞ by prune_model: no error, as there
    alive[4] = False
    _prune_lowest(torch.cat(list(scores.values())), alive, [2], [1], [(0, 5)],
                  ["a", "b"], [3, 2])
    assert alive.tolist() == [True, True, True, False, False]
