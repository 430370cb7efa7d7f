"""Structured baselines (taylor, activation), the snp-act variant, round_to, global ranking and
labels reaching the criteria: each against a computation by hand on a tiny model."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from core import study
from core.pruning import get_pruner, list_pruners, prune
from core.pruning.snp import redundancy_times_output, structured_prune
from core.pruning.structured import (global_removals, masked_model, normalise_layer,
                                     rounded_keep, select, shrink)
from core.pruning.ratios import StructuredRatios, removal_count
from _tiny import random_linformer, random_vit

CRITERIA = ["snp", "snp-act", "reverse", "l2-norm", "gm", "structured-random", "taylor",
            "activation"]
TOL = 1e-4


def batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def grads_by_hand(model, x, y) -> dict[str, torch.Tensor]:
    """{parameter name: w ⊙ ∂L/∂w} with L the mean cross-entropy of the whole batch."""
    m = copy.deepcopy(model).eval()
    loss = F.cross_entropy(m(x), y)
    names, params = zip(*m.named_parameters())
    return {n: p.detach() * g for n, p, g in zip(names, params,
                                                  torch.autograd.grad(loss, params))}


def test_registered_and_listed():
    names = list_pruners("structured")
    assert set(CRITERIA) <= set(names)
    assert get_pruner("taylor").needs_labels and not get_pruner("activation").needs_labels
    assert study.criterion_info("taylor").kind == "structured"
    with pytest.raises(ValueError, match="round_to"):
        get_pruner("taylor", round_to=0)
    with pytest.raises(ValueError, match="ranking"):
        get_pruner("l2-norm", ranking="everywhere")


def test_taylor_equals_hand_computation_vit():
    model = random_vit()
    x, y = batch()
    G = grads_by_hand(model, x, y)
    s = get_pruner("taylor", batch_size=4)(model, x, y)   # two chunks: same mean-loss gradient
    for i, (H, dq, dv) in enumerate([(3, 8, 6), (2, 5, 7)]):
        qkv = G[f"blocks.{i}.attn.qkv.weight"]
        proj = G[f"blocks.{i}.attn.proj.weight"]
        q, k, v = qkv[:H * dq], qkv[H * dq:2 * H * dq], qkv[2 * H * dq:]
        want_qk = (q.sum(1) + k.sum(1)).abs().reshape(H, dq)
        want_v = (v.sum(1) + proj.sum(0)).abs().reshape(H, dv)
        want_mlp = (G[f"blocks.{i}.mlp.fc1.weight"].sum(1)
                    + G[f"blocks.{i}.mlp.fc2.weight"].sum(0)).abs()
        want_heads = torch.stack([
            q[h * dq:(h + 1) * dq].sum() + k[h * dq:(h + 1) * dq].sum()
            + v[h * dv:(h + 1) * dv].sum() + proj[:, h * dv:(h + 1) * dv].sum()
            for h in range(H)]).abs()
        torch.testing.assert_close(s.qk[i], want_qk, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s.v[i], want_v, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s.mlp[i], want_mlp, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s.heads[i], want_heads, rtol=1e-4, atol=1e-7)
    # residual channel d: writers' rows and readers' columns (no LayerNorm gains)
    res = G["patch_embed.proj.weight"].flatten(1).sum(1) + G["head.weight"].sum(0)
    for i in range(2):
        res = res + G[f"blocks.{i}.attn.qkv.weight"].sum(0) \
            + G[f"blocks.{i}.attn.proj.weight"].sum(1) \
            + G[f"blocks.{i}.mlp.fc1.weight"].sum(0) + G[f"blocks.{i}.mlp.fc2.weight"].sum(1)
    torch.testing.assert_close(s.residual, res.abs(), rtol=1e-4, atol=1e-7)
    # the model is left as found: no .grad, flags and mode unchanged
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training


def test_taylor_equals_hand_computation_linformer():
    model = random_linformer()
    x, y = batch()
    G = grads_by_hand(model, x, y)
    s = get_pruner("taylor")(model, x, y)
    for i in range(2):
        pre = f"transformer.net.layers.{i}."
        q, k = G[pre + "0.fn.to_q.weight"], G[pre + "0.fn.to_k.weight"]
        v, out = G[pre + "0.fn.to_v.weight"], G[pre + "0.fn.to_out.weight"]
        torch.testing.assert_close(s.qk[i], (q.sum(1) + k.sum(1)).abs().reshape(3, 8),
                                   rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s.v[i], (v.sum(1) + out.sum(0)).abs().reshape(3, 8),
                                   rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s.mlp[i], (G[pre + "1.fn.w1.weight"].sum(1)
                                              + G[pre + "1.fn.w2.weight"].sum(0)).abs(),
                                   rtol=1e-4, atol=1e-7)


def record(model, modules, x, post: bool):
    """Outputs (post) or first inputs of ``modules`` on one forward of ``x``."""
    got = []
    hooks = [m.register_forward_hook(lambda _m, i, o: got.append(o)) if post else
             m.register_forward_pre_hook(lambda _m, i: got.append(i[0])) for m in modules]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


def test_activation_equals_hand_computation_vit():
    model = random_vit()
    x, _ = batch()
    s = get_pruner("activation", batch_size=4)(model, x)
    normed = record(model, [m for b in model.blocks for m in (b.norm1, b.norm2)], x, True)
    stream = record(model, [m for b in model.blocks for m in (b.norm1, b.norm2)], x, False)
    for i, (H, dq, dv) in enumerate([(3, 8, 6), (2, 5, 7)]):
        blk = model.blocks[i]
        n1, n2 = normed[2 * i], normed[2 * i + 1]
        qkv = F.linear(n1, blk.attn.qkv.weight, blk.attn.qkv.bias).detach()  # (B, N, ·)
        q, k = qkv[..., :H * dq], qkv[..., H * dq:2 * H * dq]
        v = qkv[..., 2 * H * dq:]
        # pair i of head h: mean_t|q| · mean_s|k| per image, then the mean over images
        want_qk = (q.abs().mean(1) * k.abs().mean(1)).mean(0).reshape(H, dq)
        torch.testing.assert_close(s.qk[i], want_qk, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(s.v[i], v.abs().mean((0, 1)).reshape(H, dv), rtol=1e-4,
                                   atol=1e-7)
        hidden = F.gelu(F.linear(n2, blk.mlp.fc1.weight, blk.mlp.fc1.bias)).detach()
        torch.testing.assert_close(s.mlp[i], hidden.abs().mean((0, 1)), rtol=1e-4, atol=1e-7)
        # head h: mean over images and tokens of ‖softmax(q kᵀ/√d) v W_out[:, h]ᵀ‖
        qh = q.reshape(6, -1, H, dq).transpose(1, 2)
        kh = k.reshape(6, -1, H, dq).transpose(1, 2)
        vh = v.reshape(6, -1, H, dv).transpose(1, 2)
        o = ((qh @ kh.transpose(-1, -2)) * dq ** -0.5).softmax(-1) @ vh
        w = blk.attn.proj.weight.detach().reshape(-1, H, dv)
        want_heads = torch.einsum("bhnd,chd->bhnc", o, w).norm(dim=-1).mean((0, 2))
        torch.testing.assert_close(s.heads[i], want_heads, rtol=1e-4, atol=1e-6)
    taps = [t.detach().abs().mean((0, 1)) for t in stream]
    want = sum(t / t.sum() for t in taps) / len(taps)
    torch.testing.assert_close(s.residual, want, rtol=1e-4, atol=1e-7)
    assert all(len(m._forward_pre_hooks) == 0 and len(m._forward_hooks) == 0
               for m in model.modules())


def test_activation_linformer_uses_projected_keys_and_values():
    model = random_linformer()
    x, _ = batch(4)
    s = get_pruner("activation")(model, x)
    attn = model.transformer.net.layers[1][0].fn
    (n,) = record(model, [attn], x, False)
    N = n.shape[1]
    q = attn.to_q(n).detach()                                                # (B, N, H·d)
    k = torch.einsum("bnd,nk->bkd", attn.to_k(n), attn.proj_k[:N]).detach()  # (B, k, H·d)
    v = torch.einsum("bnd,nk->bkd", attn.to_v(n), attn.proj_v[:N]).detach()
    torch.testing.assert_close(s.qk[1], (q.abs().mean(1) * k.abs().mean(1)).mean(0)
                               .reshape(3, 8), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(s.v[1], v.abs().mean((0, 1)).reshape(3, 8), rtol=1e-4,
                               atol=1e-7)


def test_snp_act_scores_equal_the_documented_formula():
    model = random_vit()
    x, _ = batch()
    s = get_pruner("snp-act", rank=2)(model, x)
    snp = get_pruner("snp", rank=2)(model, x)
    normed = record(model, [m for b in model.blocks for m in (b.norm1, b.norm2)], x, True)
    for i, (H, dq, dv) in enumerate([(3, 8, 6), (2, 5, 7)]):
        blk = model.blocks[i]
        wv = blk.attn.qkv.weight.detach()[2 * H * dq:]
        # ω_i = Σ_j (1 − |cos(w_i, w_j)|) over all heads' value rows, by a double loop
        omega = torch.tensor([[sum(1 - abs(F.cosine_similarity(a, b, dim=0)).item()
                                   for b in wv)] for a in wv]).squeeze(1)
        v = F.linear(normed[2 * i], blk.attn.qkv.weight, blk.attn.qkv.bias).detach()
        act = v[..., 2 * H * dq:].abs().mean((0, 1))
        want = omega * act * blk.attn.proj.weight.detach().norm(dim=0)
        torch.testing.assert_close(s.v[i].flatten(), want.float(), rtol=1e-4, atol=1e-6)
        w1 = blk.mlp.fc1.weight.detach()
        c = F.normalize(w1, dim=1)
        hidden = F.gelu(F.linear(normed[2 * i + 1], w1, blk.mlp.fc1.bias)).detach()
        want = (1 - (c @ c.T).abs()).sum(1) * hidden.abs().mean((0, 1)) \
            * blk.mlp.fc2.weight.detach().norm(dim=0)
        torch.testing.assert_close(s.mlp[i], want, rtol=1e-4, atol=1e-6)
        # q/k pairs and heads are SNP's
        torch.testing.assert_close(s.qk[i], snp.qk[i])
        torch.testing.assert_close(s.heads[i], snp.heads[i])
    torch.testing.assert_close(s.residual, snp.residual)
    with pytest.raises(ValueError, match="H = 4 dividing"):
        redundancy_times_output(torch.randn(6, 3), 4, torch.ones(6), torch.ones(2, 6))


def test_rounded_keep():
    assert rounded_keep(64, 45, 8) == 16            # 19 → 16 (the nearest multiple)
    assert rounded_keep(64, 43, 8) == 24            # 21 → 24
    assert rounded_keep(64, 44, 8) == 24            # 20 → 24 (half up)
    assert rounded_keep(64, 46, 8) == 16            # 18 → 16
    assert rounded_keep(64, 63, 8) == 8             # never 0
    assert rounded_keep(5, 0, 8) == 5               # narrower than round_to: stays whole
    assert rounded_keep(64, 1, 8) == 64             # 63 → 64 (capped at the width)
    assert rounded_keep(10, 3, 1) == 7


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family", ["vit", "linformer"])
def test_round_to_widths_are_multiples_and_shrunk_equals_masked(criterion, family):
    model = random_vit(mlp=(40, 48)) if family == "vit" else random_linformer()
    x, y = batch()
    ratios = {"qk": 0.3, "v": 0.3, "mlp": 0.45, "residual": 0.4}
    res = prune(model, criterion, 0.0, images=x, labels=y, ratios=ratios, heads=0.34,
                round_to=4)
    plan = res.extra["plan"]
    for p in plan.blocks:
        # tiny heads are 5–8 wide: a width below 4 is impossible, so all are multiples of 4
        assert p.qk.shape[1] % 4 == 0 and p.v.shape[1] % 4 == 0 and p.mlp.numel() % 4 == 0
        assert p.qk.shape[1] >= 4 and p.heads.numel() >= 1
    assert plan.residual.numel() % 4 == 0
    small, masked = res.model, masked_model(model, plan)
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= TOL
    assert res.extra["macs_after"] < res.extra["macs_before"]


@pytest.mark.parametrize("criterion", ["taylor", "activation", "snp-act", "l2-norm"])
def test_heads_with_every_criterion(criterion):
    model = random_vit()
    x, y = batch()
    res = prune(model, criterion, 0.0, images=x, labels=y, ratios={"qk": 0.25}, heads=0.34)
    assert [b.num_heads for b in res.model.config.blocks] == [2, 1]
    kept = res.extra["plan"].blocks[0].heads
    scores = res.extra["structured_scores"].heads[0]
    assert set(kept.tolist()) == set(scores.argsort(descending=True)[:2].tolist())
    with torch.no_grad():
        assert (res.model(x) - masked_model(model, res.extra["plan"])(x)).abs().max() <= TOL


def test_global_removals_by_hand():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])        # mean 2.5 → 0.4, 0.8, 1.2, (1.6)
    b = torch.tensor([[10.0, 10.0, 40.0]])          # mean 20 → 0.5, 0.5, (2.0)
    assert global_removals([a, b], 0) == [0, 0]
    assert global_removals([a, b], 1) == [1, 0]
    assert global_removals([a, b], 3) == [1, 2]     # 0.4, 0.5, 0.5
    assert global_removals([a, b], 5) == [3, 2]     # everything but the last slot of each
    with pytest.raises(ValueError, match="cannot remove 6"):
        global_removals([a, b], 6)
    by_hand = torch.tensor([[0.4, 0.8, 1.2, 1.6]], dtype=torch.float64)  # a / mean |a|
    torch.testing.assert_close(normalise_layer(a), by_hand)
    torch.testing.assert_close(normalise_layer(-a), -by_hand)
    # per-head slots: the r-th slot costs the mean over heads of the r-th lowest score;
    # two / mean|two| = [[.25, 2.25, 1.25], [.75, .75, .75]] → slot costs .5, 1.0, (1.5)
    two = torch.tensor([[1.0, 9.0, 5.0], [3.0, 3.0, 3.0]])
    other = torch.tensor([[0.9, 1.1]])                # → .9, (1.1)
    assert global_removals([two, other], 1) == [1, 0]
    assert global_removals([two, other], 2) == [1, 1]
    assert global_removals([two, other], 3) == [2, 1]


@pytest.mark.parametrize("criterion", ["taylor", "activation", "snp", "structured-random"])
@pytest.mark.parametrize("family", ["vit", "linformer"])
def test_global_ranking_keeps_exactly_the_requested_total(criterion, family):
    model = random_vit() if family == "vit" else random_linformer()
    x, y = batch()
    ratios = StructuredRatios.uniform(2, qk=0.5, v=0.5, mlp=0.6, heads=0.34)
    scores = get_pruner(criterion).structured_scores(model, x, y)
    layer = select(model, scores, ratios)
    glob = select(model, scores, ratios, ranking="global")

    def total(plan, what):
        return sum(getattr(p, what).shape[-1] for p in plan.blocks)
    for what in ("heads", "qk", "v", "mlp"):
        assert total(glob, what) == total(layer, what), what
        assert all(getattr(p, what).numel() >= 1 for p in glob.blocks)
    sizes = [(3, 8, 6, 40), (2, 5, 7, 32)] if family == "vit" else [(3, 8, 8, 96)] * 2
    assert total(glob, "mlp") == sum(n - removal_count(0.6, n) for *_, n in sizes)
    if family == "linformer":   # q/k and v share one head dim
        assert all(p.qk.shape == p.v.shape for p in glob.blocks)
    small = shrink(model, glob)
    with torch.no_grad():
        assert (small(x) - masked_model(model, glob)(x)).abs().max() <= TOL


def test_global_ranking_follows_the_scores():
    model = random_vit()
    s = get_pruner("structured-random", seed=0)(model)
    # make block 1's FFN neurons all worse than block 0's after normalisation
    s.mlp[0].copy_(torch.linspace(1.0, 1.1, 40))
    s.mlp[1].copy_(torch.linspace(0.1, 10.0, 32))
    plan = select(model, s, StructuredRatios.uniform(2, mlp=0.25), ranking="global")
    # 10 + 8 = 18 to remove; block 1's lowest normalised scores are far below block 0's
    assert plan.blocks[0].mlp.numel() + plan.blocks[1].mlp.numel() == 72 - 18
    assert plan.blocks[1].mlp.numel() < 32 - 8


def test_labels_reach_the_criterion_through_every_entry_point():
    model = random_vit()
    x, y = batch()
    with pytest.raises(ValueError, match="needs labels"):
        prune(model, "taylor", 0.3, images=x)
    by_prune = prune(model, "taylor", 0.3, images=x, labels=y).extra["structured_scores"]
    by_call = get_pruner("taylor")(model, x, y)
    by_fn = structured_prune(model, "taylor", images=x, labels=y, sparsity=0.3)
    sc = study.score(model, "taylor", x, y)
    for other in (by_call, by_fn.extra["structured_scores"], sc.structured):
        torch.testing.assert_close(other.mlp[0], by_prune.mlp[0])
    pruned = study.prune_at(model, "taylor", 0.5, x, y, scores=sc)
    assert pruned.small is not None
    # criteria without labels still take the old two-argument call
    get_pruner("activation")(model, x)
    get_pruner("l2-norm").structured_scores(model, x)


@pytest.mark.parametrize("variant", ["distilled", "registers", "layerscale", "avgpool",
                                     "no_qkv_bias", "dist_reg_ls"])
def test_new_criteria_on_every_vit_variant(variant):
    from test_variants import make

    model = make(variant)
    x = torch.rand(4, 3, 16, 16)
    y = torch.randint(0, 4, (4,))
    ratios = {"qk": 0.4, "v": 0.3, "mlp": 0.5, "residual": 0.25}
    for criterion in ("taylor", "activation", "snp-act"):
        for ranking in ("layer", "global"):
            res = prune(model, criterion, 0.0, images=x, labels=y, ratios=ratios, heads=0.34,
                        round_to=2, ranking=ranking)
            plan = res.extra["plan"]
            assert all(torch.isfinite(t).all() for t in res.scores.values())
            assert plan.residual.numel() == 18
            with torch.no_grad():
                assert (res.model(x) - masked_model(model, plan)(x)).abs().max() <= TOL
