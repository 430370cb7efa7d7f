"""Foresight criteria against independent computations on tiny models; registry; prune()."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from core.attention import attention_modules
from core.models import build_model
from core.pruning import (TABLE_COLUMNS, get_masks, get_pruner, layer_collapse, layer_saliency,
                          list_pruners, prunable_parameters, prune)
from core.pruning.masks import apply_masks, compute_masks
from _tiny import small_vit as tiny_vit

UNSTRUCTURED = ["random", "magnitude", "snip", "attention-snip", "grasp", "synflow"]


def tiny_linformer(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("linformer-vit-tiny", classes, img_size=8, patch_size=4, dim=16, depth=2,
                       heads=2, k=4)


FAMILIES = {"vit": tiny_vit, "linformer": tiny_linformer}


def batch(model: nn.Module, n: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *model.input_shape, generator=g)
    y = torch.arange(n) % model.num_classes
    return x, y


def param_names(model: nn.Module) -> dict[str, str]:
    """plain key → name in named_parameters() of an unmasked model (the same string)."""
    return {p.key: p.key for p in prunable_parameters(model)}


def close(a: dict, b: dict, rtol=1e-4, atol=1e-8) -> None:
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{k}: {m}")


# ---------------------------------------------------------------------------- registry

def test_registry_lists_and_rejects_unknown():
    assert set(UNSTRUCTURED) <= set(list_pruners())
    assert set(UNSTRUCTURED) <= set(list_pruners("unstructured"))
    with pytest.raises(ValueError, match="unknown pruner 'obd'.*snip"):
        get_pruner("obd")
    with pytest.raises(ValueError, match="unknown.*'temperatur'"):
        get_pruner("grasp", temperatur=100)
    for name in UNSTRUCTURED:
        p = get_pruner(name)
        assert p.name == name and p.formula and len(p.explanation) > 100
        assert isinstance(p.needs_data, bool)
        hash(p)  # frozen: usable as a cache key
    assert not get_pruner("synflow").needs_data and get_pruner("snip").needs_data


def test_prunable_set_counts_seed_000():
    model = build_model("linformer-vit-paper", 38)
    params = prunable_parameters(model)
    assert sum(p.param.numel() for p in params) == 2_757_376
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(params) == len(linear)
    no_head = prunable_parameters(model, exclude_head=True)
    assert [p.key for p in no_head] == [p.key for p in params if p.key != "head.weight"]
    no_pe = prunable_parameters(model, exclude_patch_embed=True)
    assert "patch_embed.proj.weight" not in [p.key for p in no_pe]
    proj = prunable_parameters(model, include_linformer_proj=True)
    extra = [p for p in proj if p.attr in ("proj_k", "proj_v")]
    assert len(extra) == 2 * 12 and all(tuple(p.param.shape) == (50, 64) for p in extra)
    ign = prunable_parameters(model, ignored_layers=("transformer.net.layers.0",))
    assert len(ign) == len(params) - 6


def test_vit_prunable_set_includes_conv_patch_embed():
    model = tiny_vit()
    keys = [p.key for p in prunable_parameters(model)]
    assert keys[0] == "patch_embed.proj.weight" and keys[-1] == "head.weight"
    assert len(keys) == 2 + 4 * 2


def test_keys_are_plain_on_masked_models():
    model = tiny_vit()
    x, y = batch(model)
    plain = get_pruner("snip").score(model, x, y)
    apply_masks(model, {k: torch.ones_like(v, dtype=torch.bool) for k, v in plain.items()})
    assert any("parametrizations" in n for n, _ in model.named_parameters())
    masked = get_pruner("snip").score(model, x, y)
    close(plain, masked, rtol=1e-5)


# ---------------------------------------------------------------------------- SNIP

@pytest.mark.parametrize("family", FAMILIES)
def test_snip_equals_mask_gradient(family):
    model = FAMILIES[family]().eval()
    x, y = batch(model)
    names = param_names(model)
    weights = {k: getattr(model.get_submodule(k.rpartition(".")[0]), k.rpartition(".")[2])
               .detach() for k in names}
    c = {k: torch.ones_like(w, requires_grad=True) for k, w in weights.items()}
    logits = functional_call(model, {names[k]: c[k] * weights[k] for k in c}, (x,))
    g = torch.autograd.grad(F.cross_entropy(logits, y), list(c.values()))
    total = sum(gi.abs().sum() for gi in g)
    expected = {k: gi.abs() / total for k, gi in zip(c, g)}
    got = get_pruner("snip").score(model, x, y)
    close(got, expected)
    assert math.isclose(sum(float(s.sum()) for s in got.values()), 1.0, rel_tol=1e-5)


# ---------------------------------------------------------------------------- attention-SNIP

@pytest.mark.parametrize("family", FAMILIES)
def test_attention_snip_reduces_to_snip(family):
    model = FAMILIES[family]()
    x, y = batch(model)
    snip = get_pruner("snip").score(model, x, y)
    zero = get_pruner("attention-snip", attention_weight=0.0, output_weight=0.0).score(model, x, y)
    close(zero, snip, rtol=1e-6)
    full = get_pruner("attention-snip").score(model, x, y)
    diff = sum(float((full[k] - snip[k]).abs().sum()) for k in snip)
    assert diff > 1e-3  # normalised scores sum to 1: this is a real change of the ranking


def _scores_from_loss(model, loss_fn):
    params = prunable_parameters(model)
    leaves = [p.param for p in params]
    g = torch.autograd.grad(loss_fn(), leaves)
    raw = {p.key: (p.param.detach() * gi).abs() for p, gi in zip(params, g)}
    total = sum(s.sum() for s in raw.values())
    return {k: s / total for k, s in raw.items()}


def test_attention_snip_matches_explicit_vit_forward():
    """ViT forward written out block by block: A_j is the attention branch's output."""
    model = tiny_vit().eval()
    x, y = batch(model)
    a_w, o_w = 0.5, 2.0

    def loss():
        h = (x - model.pixel_mean) / model.pixel_std
        h = model.patch_embed(h)
        h = torch.cat([model.cls_token.expand(h.shape[0], -1, -1), h], 1) + model.pos_embed
        attn_sum = 0.0
        for blk in model.blocks:
            a = blk.attn(blk.norm1(h))
            attn_sum = attn_sum + a.sum()
            h = h + a
            h = h + blk.mlp(blk.norm2(h))
        logits = model.head(model.norm(h)[:, 0])
        return F.cross_entropy(logits, y) + a_w * attn_sum + o_w * logits.sum()

    expected = _scores_from_loss(model, loss)
    got = get_pruner("attention-snip", attention_weight=a_w, output_weight=o_w).score(model, x, y)
    close(got, expected)


def test_attention_snip_matches_explicit_hooks_linformer():
    model = tiny_linformer().eval()
    x, y = batch(model)
    outs = []
    mods = [m for m in model.modules() if type(m).__name__ == "LinformerSelfAttention"]
    assert len(mods) == 2
    handles = [m.register_forward_hook(lambda _m, _i, o: outs.append(o)) for m in mods]

    def loss():
        logits = model(x)
        return F.cross_entropy(logits, y) + sum(o.sum() for o in outs) + logits.sum()

    expected = _scores_from_loss(model, loss)
    for h in handles:
        h.remove()
    got = get_pruner("attention-snip").score(model, x, y)
    close(got, expected)


def test_attention_probabilities_would_have_zero_gradient():
    """Why A_j is the layer output: the softmax rows sum to 1, Σ probabilities is constant."""
    from core.attention import record_attention
    model = tiny_vit().eval()
    x, _ = batch(model)
    leaves = [p.param for p in prunable_parameters(model)]
    with record_attention(model) as rec:
        model(x)
    g = torch.autograd.grad(sum(a.sum() for a in rec), leaves, allow_unused=True)
    assert all(gi is None or float(gi.abs().max()) < 1e-5 for gi in g)


# ---------------------------------------------------------------------------- GraSP

def test_grasp_matches_hvp():
    model = tiny_vit().double().eval()
    x, y = batch(model)
    x = x.double()
    names = list(param_names(model))
    ws = tuple(dict(model.named_parameters())[n].detach() for n in names)

    def f(*w):
        logits = functional_call(model, dict(zip(names, w)), (x,))
        return F.cross_entropy(logits / 200.0, y)

    wg = tuple(w.clone().requires_grad_(True) for w in ws)
    g = torch.autograd.grad(f(*wg), wg)
    _, hg = torch.autograd.functional.hvp(f, ws, g)
    S = [-w * h for w, h in zip(ws, hg)]
    norm = abs(sum(float(s.sum()) for s in S)) + 1e-10
    expected = {n: -s / norm for n, s in zip(names, S)}
    got = get_pruner("grasp").score(model, x, y)
    close(got, expected, rtol=1e-7, atol=1e-12)
    # the highest S is removed: the kept set holds the lowest S
    masks = compute_masks(got, 0.5)
    s_flat = torch.cat([-got[n].reshape(-1) for n in names])
    m_flat = torch.cat([masks[n].reshape(-1) for n in names])
    assert s_flat[m_flat].max() <= s_flat[~m_flat].min()


# ---------------------------------------------------------------------------- SynFlow

def test_synflow_two_layer_chain_by_hand():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4, bias=False), nn.Linear(4, 3, bias=False))
    W1, W2 = net[0].weight.detach().clone(), net[1].weight.detach().clone()
    got = get_pruner("synflow").score(net, torch.randn(7, 5))
    # R = 1ᵀ|W2||W1|1: ∂R/∂|W1|_ij = Σ_k |W2|_ki, ∂R/∂|W2|_ki = Σ_j |W1|_ij
    e1 = W1.abs() * W2.abs().sum(0)[:, None]
    e2 = W2.abs() * W1.abs().sum(1)[None, :]
    torch.testing.assert_close(got["0.weight"], e1.double())
    torch.testing.assert_close(got["1.weight"], e2.double())
    assert torch.equal(net[0].weight, W1) and torch.equal(net[1].weight, W2)  # signs kept
    # conservation: every layer carries the whole flow R
    R = float(W2.abs().sum(0) @ W1.abs().sum(1))
    assert math.isclose(float(got["0.weight"].sum()), R, rel_tol=1e-6)
    assert math.isclose(float(got["1.weight"].sum()), R, rel_tol=1e-6)


def synflow_by_hand(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tanaka et al.: ``|θ ⊙ ∂R/∂θ|``, ``R = 1ᵀ f(1; |θ|)``, in float64 and eval mode, with
    every parameter replaced by its absolute value through ``functional_call`` and the image
    normalisation set to identity (mean 0, std 1) so the first layer sees ones."""
    net = copy.deepcopy(model).double().eval()
    net.pixel_mean.zero_()
    net.pixel_std.fill_(1.0)
    theta = {n: p.detach().abs().requires_grad_(True) for n, p in net.named_parameters()}
    R = functional_call(net, theta, (torch.ones(1, *model.input_shape, dtype=torch.float64),))
    keys = [p.key for p in prunable_parameters(model)]
    grads = torch.autograd.grad(R.sum(), [theta[k] for k in keys])
    return {k: (theta[k] * g).abs().detach() for k, g in zip(keys, grads)}


@pytest.mark.parametrize("family", FAMILIES)
def test_synflow_is_the_flow_of_the_positive_network_on_ones(family):
    """One round equals the flow by hand, whatever data is passed (the data is never read)."""
    model = FAMILIES[family]()
    x1, y1 = batch(model, seed=1)
    x2, _ = batch(model, n=3, seed=2)
    p = get_pruner("synflow")
    want = synflow_by_hand(model)
    for got in (p.score(model, x1, y1), p.score(model, x2), p.score(model)):
        assert all(s.dtype == torch.float64 for s in got.values())
        close(got, want, rtol=1e-7, atol=0)


def test_synflow_iterative_schedule():
    model = tiny_vit()
    one = prune(model, "synflow", 0.8, iterations=1)
    assert all(torch.equal(one.masks[k], m)
               for k, m in compute_masks(get_pruner("synflow").score(model), 0.8).items())
    many = prune(model, "synflow", 0.8, iterations=5)
    n = sum(m.numel() for m in many.masks.values())
    assert sum(int(m.sum()) for m in many.masks.values()) == n - math.floor(0.8 * n)
    assert get_masks(many.model).keys() == many.masks.keys()


def test_synflow_keeps_earlier_pruning():
    model = tiny_vit()
    first = prune(model, "magnitude", 0.5)
    second = prune(first.model, "synflow", 0.7, iterations=3)
    for k, m in first.masks.items():
        assert not bool((second.masks[k] & ~m).any())


# ---------------------------------------------------------------------------- random, magnitude

def test_random_is_seeded_and_magnitude_is_abs():
    model = tiny_vit()
    a = get_pruner("random", seed=3).score(model)
    b = get_pruner("random", seed=3).score(model)
    c = get_pruner("random", seed=4).score(model)
    close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    mag = get_pruner("magnitude").score(model)
    for p in prunable_parameters(model):
        assert torch.equal(mag[p.key], p.param.detach().abs())


# ---------------------------------------------------------------------------- state left alone

def _state(model):
    return {
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone()
                  for n, p in model.named_parameters()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
    }


def _same_state(a, b):
    assert a["weights"].keys() == b["weights"].keys()
    assert all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    for n in a["grads"]:
        ga, gb = a["grads"][n], b["grads"][n]
        assert (ga is None) == (gb is None), n
        assert ga is None or torch.equal(ga, gb), n
    assert a["modes"] == b["modes"]
    assert a["requires_grad"] == b["requires_grad"]
    assert a["hooks"] == b["hooks"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", UNSTRUCTURED)
def test_scoring_leaves_model_state(family, name):
    model = FAMILIES[family]()
    x, y = batch(model)
    F.cross_entropy(model(x), y).backward()  # some grads present ...
    model.head.weight.grad = None  # ... some not
    model.train()
    attention_modules(model)[0].eval()  # mixed modes
    next(iter(prunable_parameters(model))).param.requires_grad_(False)  # a frozen layer
    seen = []
    model.register_forward_hook(lambda *a: seen.append(1))  # a user hook
    before = _state(model)
    opts = {"iterations": 2} if name == "synflow" else {}
    scores = get_pruner(name, **opts).score(model, x, y)
    _same_state(before, _state(model))
    params = prunable_parameters(model)
    assert list(scores) == [p.key for p in params]
    assert all(scores[p.key].shape == p.param.shape for p in params)
    result = prune(model, name, 0.5, x, y, **opts)
    _same_state(before, _state(model))  # prune() works on a copy
    assert not any("parametrizations" in n for n, _ in model.named_parameters())
    assert result.model is not model


def test_scoring_cleans_up_hooks_on_error():
    model = tiny_vit()
    x, y = batch(model)
    before = _state(model)

    def boom(*_):
        raise RuntimeError("boom")
    h = model.head.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        get_pruner("attention-snip").score(model, x, y)
    h.remove()
    _same_state(before, _state(model))


# ---------------------------------------------------------------------------- clear errors

@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan"), "half", None])
def test_bad_sparsity(bad):
    model = tiny_vit()
    x, y = batch(model)
    with pytest.raises(ValueError, match="sparsity"):
        prune(model, "snip", bad, x, y)
    with pytest.raises(ValueError, match="sparsity"):
        compute_masks({"w": torch.rand(4)}, bad)


def test_bad_batches():
    model = tiny_vit()
    x, y = batch(model)
    with pytest.raises(ValueError, match="image size"):
        get_pruner("snip").score(model, torch.rand(6, 3, 16, 16), y)
    with pytest.raises(ValueError, match="image size"):
        get_pruner("synflow").score(model, torch.rand(6, 3, 16, 16))
    with pytest.raises(ValueError, match="labels out of range"):
        get_pruner("snip").score(model, x, y + 5)
    with pytest.raises(ValueError, match="labels out of range"):
        get_pruner("grasp").score(model, x, y - 1)
    with pytest.raises(ValueError, match="6 images but 2 labels"):
        get_pruner("attention-snip").score(model, x, y[:2])
    with pytest.raises(ValueError, match="needs a calibration batch"):
        prune(model, "snip", 0.5)
    with pytest.raises(ValueError, match="scope"):
        prune(model, "magnitude", 0.5, scope="block")
    chain = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match="labels out of range"):
        get_pruner("snip").score(chain, torch.rand(2, 4), torch.tensor([0, 3]))


# ---------------------------------------------------------------------------- prune() and table

def test_prune_result_and_table():
    model = tiny_linformer()
    x, y = batch(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = prune(model, "attention-snip", 0.9, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    n = sum(m.numel() for m in r.masks.values())
    assert sum(int(m.sum()) for m in r.masks.values()) == n - math.floor(0.9 * n)
    assert math.isclose(r.actual_sparsity, math.floor(0.9 * n) / n)
    assert r.sparsity == 0.9 and r.pruner.name == "attention-snip" and r.scope == "global"
    for k, m in r.masks.items():  # pruned weights are exactly zero in the copy
        mod, attr = r.model.get_submodule(k.rpartition(".")[0]), k.rpartition(".")[2]
        assert bool((getattr(mod, attr)[~m] == 0).all())
    t = r.table
    assert list(t.columns) == TABLE_COLUMNS and list(t["layer"]) == list(r.masks)
    assert t["parameters"].sum() == n and t["kept"].sum() == n - math.floor(0.9 * n)
    assert math.isclose(t["saliency_share"].sum(), 1.0, rel_tol=1e-9)
    assert (t["score_min"] <= t["score_median"]).all()
    assert (t["score_median"] <= t["score_max"]).all()
    assert t["collapsed"].sum() == layer_collapse(r.masks) == r.layer_collapse
    assert r.model(x).shape == (6, 3)


def test_layer_saliency_by_hand():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([[10.0, 0.0]])}
    masks = {"a": torch.tensor([False, False, True, True]), "b": torch.tensor([[False, False]])}
    t = layer_saliency(scores, masks).set_index("layer")
    assert t.loc["a", "kept"] == 2 and t.loc["a", "kept_fraction"] == 0.5
    assert t.loc["a", "score_median"] == 2.5 and t.loc["b", "score_max"] == 10.0
    assert math.isclose(t.loc["a", "saliency_share"], 0.5)
    assert math.isclose(t.loc["a", "kept_saliency_share"], 7 / 20)
    assert bool(t.loc["b", "collapsed"]) and not bool(t.loc["a", "collapsed"])
    assert layer_collapse(masks) == 1


def test_prune_keeps_existing_masks_and_accepts_pruner_objects():
    model = tiny_vit()
    first = prune(model, "random", 0.6, seed=1)
    second = prune(first.model, get_pruner("magnitude"), 0.7)
    for k, m in first.masks.items():
        assert not bool((second.masks[k] & ~m).any())
    n = sum(m.numel() for m in second.masks.values())
    assert sum(int(m.sum()) for m in second.masks.values()) == n - math.floor(0.7 * n)
    with pytest.raises(ValueError, match="not both"):
        prune(model, get_pruner("random"), 0.5, seed=2)


def test_layer_scope_and_options_through_prune():
    model = tiny_vit()
    r = prune(model, "magnitude", 0.5, scope="layer", exclude_head=True)
    assert "head.weight" not in r.masks
    for m in r.masks.values():
        assert int(m.sum()) == m.numel() - math.floor(0.5 * m.numel())
