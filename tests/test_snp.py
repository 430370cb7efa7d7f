"""SNP criteria (seed 001) against explicit computations, and the baselines' contracts."""
from __future__ import annotations

import pytest
import torch

from core.models.vit import VisionTransformer
from core.pruning import get_pruner, list_pruners, prune
from core.pruning.snp import (GeometricMedianPruner as GeometricMedian, L2NormPruner as L2Norm,
                              ReversePruner as Reverse, SNPPruner as SNP, StructuredRandomPruner,
                              gm_scores, l2_scores, qk_pair_scores, residual_scores,
                              value_redundancy_scores)
from core.pruning.structured import block_views, residual_links
from _tiny import random_vit as tiny_vit


def explicit_qk_scores(q: torch.Tensor, k: torch.Tensor, rank: int) -> torch.Tensor:
    """ω_i = Σ_{j≤γ} |cos_F(σ_j u_j v_jᵀ, q_i k_iᵀ)| with every N×N matrix built."""
    q, k = q.double(), k.double()
    u, s, vh = torch.linalg.svd(q @ k.T)
    out = torch.zeros(q.shape[1], dtype=torch.float64)
    for i in range(q.shape[1]):
        pair = torch.outer(q[:, i], k[:, i])
        for j in range(min(rank, len(s))):
            comp = s[j] * torch.outer(u[:, j], vh[j])
            out[i] += (comp * pair).sum().abs() / (comp.norm() * pair.norm())
    return out


@pytest.mark.parametrize("n, m, d, rank", [(12, 12, 5, 1), (12, 12, 5, 3), (12, 12, 5, 5),
                                           (9, 7, 4, 4), (10, 10, 6, 100)])
def test_qk_pair_scores_equal_explicit_cosines(n, m, d, rank):
    g = torch.Generator().manual_seed(n * 100 + d)
    q, k = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
    got = qk_pair_scores(q, k, rank)
    assert got.shape == (d,)
    torch.testing.assert_close(got.double(), explicit_qk_scores(q, k, rank), rtol=1e-5,
                               atol=1e-6)


def test_qk_pair_scores_batched_fewer_tokens_than_dims_and_dead_pair():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 5, 8, generator=g)
    got = qk_pair_scores(q, k, 3)
    assert got.shape == (2, 3, 8)
    for b in range(2):
        for h in range(3):  # rank of QKᵀ is 5 < d: γ = 3 directions, all with σ > 0
            torch.testing.assert_close(got[b, h].double(), explicit_qk_scores(q[b, h], k[b, h], 3),
                                       rtol=1e-5, atol=1e-6)
    q[0, 0, :, 2] = 0  # a dead query channel: no defined cosine → 0
    assert qk_pair_scores(q, k, 3)[0, 0, 2] == 0
    with pytest.raises(ValueError, match="rank"):
        qk_pair_scores(q, k, 0)
    with pytest.raises(ValueError, match="same d"):
        qk_pair_scores(q, k[..., :4], 2)


def test_qk_pair_scores_keep_the_pair_carrying_the_attention():
    g = torch.Generator().manual_seed(2)
    q, k = 0.1 * torch.randn(20, 4, generator=g), 0.1 * torch.randn(20, 4, generator=g)
    q[:, 1] += 3 * torch.randn(20, generator=g)  # pair 1 dominates QKᵀ
    k[:, 1] += 3 * torch.randn(20, generator=g)
    assert qk_pair_scores(q, k, 1).argmax() == 1


def test_value_redundancy_scores_equal_the_double_loop():
    g = torch.Generator().manual_seed(3)
    H, dv, C = 3, 4, 10
    w = torch.randn(H * dv, C, generator=g)
    w[5] = -2.5 * w[1]  # the same direction in another head
    explicit = torch.zeros(H * dv, dtype=torch.float64)
    for h in range(H):
        for i in range(dv):
            a = w[h * dv + i].double()
            for j in range(H):  # all heads, the neuron's own included (its self-term is 0)
                for l in range(dv):
                    b = w[j * dv + l].double()
                    explicit[h * dv + i] += 1 - abs(a @ b / (a.norm() * b.norm()))
    got = value_redundancy_scores(w, H)
    torch.testing.assert_close(got.double(), explicit, rtol=1e-6, atol=1e-6)
    assert torch.isclose(got[1], got[5])  # |cos| ignores scale and sign
    with pytest.raises(ValueError, match="H = 5"):
        value_redundancy_scores(w, 5)


def test_l2_and_gm_rows():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(l2_scores(w), torch.tensor([5.0, 0.0, 1.0]))
    d = torch.cdist(w, w)
    torch.testing.assert_close(gm_scores(w), d.sum(1))


def test_residual_scores_normalise_each_layer_then_average():
    model = tiny_vit()
    links = residual_links(model)
    # patch embed, per block qkv / proj / fc1 / fc2, head
    assert [n for n, _ in links] == ["patch_embed", "blocks.0.qkv", "blocks.0.proj",
                                     "blocks.0.fc1", "blocks.0.fc2", "blocks.1.qkv",
                                     "blocks.1.proj", "blocks.1.fc1", "blocks.1.fc2", "head"]
    assert all(v.shape[0] == 24 for _, v in links)
    by_hand = sum(v.norm(dim=1) / v.norm(dim=1).sum() for _, v in links) / len(links)
    torch.testing.assert_close(residual_scores(model, l2_scores), by_hand.float())
    # readers carry their LayerNorm's gain
    b0 = model.blocks[0]
    torch.testing.assert_close(links[3][1], (b0.mlp.fc1.weight * b0.norm2.weight).T.detach())


def test_snp_scores_shapes_and_hooks_removed():
    model = tiny_vit()
    images = torch.rand(6, 3, 16, 16)
    s = SNP(rank=2, batch_size=4)(model, images)
    assert [t.shape for t in s.qk] == [(3, 8), (2, 5)]
    assert [t.shape for t in s.v] == [(3, 6), (2, 7)]
    assert [t.shape for t in s.mlp] == [(40,), (32,)]
    assert [t.shape for t in s.heads] == [(3,), (2,)]
    assert s.residual.shape == (24,)
    assert all(len(m._forward_pre_hooks) == 0 and len(m._forward_hooks) == 0
               for m in model.modules())
    # value scores are the block's value rows through the formula
    v0 = block_views(model)[0].v_weight.flatten(0, 1)
    torch.testing.assert_close(s.v[0].flatten(), value_redundancy_scores(v0, 3))
    # images are aggregated by the mean of per-image scores
    one = [SNP(rank=2)(model, images[i:i + 1]).qk[1] for i in range(6)]
    torch.testing.assert_close(s.qk[1], torch.stack(one).mean(0))


def test_snp_q_k_come_from_the_layernormed_input():
    model = tiny_vit()
    images = torch.rand(3, 3, 16, 16)
    x = {}
    h = model.blocks[1].norm1.register_forward_hook(lambda m, i, o: x.setdefault("n", o))
    with torch.no_grad():
        model(images)
    h.remove()
    q, k, _ = model.blocks[1].attn.split_qkv(x["n"])
    want = qk_pair_scores(q, k, 3).mean(0)
    torch.testing.assert_close(SNP(rank=3)(model, images).qk[1], want)


def test_snp_hooks_removed_on_error():
    model = tiny_vit()
    with pytest.raises(ValueError, match="do not fit this model"):
        SNP()(model, torch.rand(2, 3, 8, 8))  # wrong image size
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())


def test_snp_head_score_is_the_heads_output_norm():
    model = tiny_vit()
    images = torch.rand(4, 3, 16, 16)
    xs = []
    h = model.blocks[0].norm1.register_forward_hook(lambda m, i, o: xs.append(o))
    with torch.no_grad():
        model(images)
    h.remove()
    attn = model.blocks[0].attn
    q, k, v = attn.split_qkv(xs[0])
    o = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1) @ v   # (B, H, N, dv)
    w = attn.proj.weight.reshape(24, 3, 6)
    contrib = torch.einsum("bhnd,chd->bhnc", o, w)
    want = contrib.norm(dim=-1).mean(dim=(0, 2))
    torch.testing.assert_close(SNP()(model, images).heads[0], want, rtol=1e-4, atol=1e-6)


def test_baselines_and_reverse():
    model = tiny_vit()
    images = torch.rand(4, 3, 16, 16)
    snp, rev = SNP(rank=2)(model, images), Reverse(rank=2)(model, images)
    for a, b in zip(snp.qk + snp.v + snp.mlp + snp.heads, rev.qk + rev.v + rev.mlp + rev.heads):
        torch.testing.assert_close(b, -a)
    l2 = L2Norm()(model)
    b0 = block_views(model)[0]
    torch.testing.assert_close(l2.qk[0], b0.q_weight.norm(dim=-1) + b0.k_weight.norm(dim=-1))
    gm = GeometricMedian()(model)
    want = gm_scores(b0.q_weight.flatten(0, 1)) + gm_scores(b0.k_weight.flatten(0, 1))
    torch.testing.assert_close(gm.qk[0].flatten(), want)
    r1, r2, r3 = StructuredRandomPruner(seed=1)(model), StructuredRandomPruner(seed=1)(model), \
        StructuredRandomPruner(seed=2)(model)
    assert torch.equal(r1.residual, r2.residual) and not torch.equal(r1.residual, r3.residual)


def test_registry_and_errors():
    assert {"snp", "l2-norm", "gm", "structured-random", "reverse"} <= set(
        list_pruners("structured"))
    assert get_pruner("snp", rank=4).rank == 4
    assert get_pruner("structured-random", seed=3).seed == 3
    with pytest.raises(ValueError, match="unknown"):
        get_pruner("snp", seed=3)
    model = tiny_vit()
    with pytest.raises(ValueError, match="calibration batch"):
        prune(model, "snp", 0.3)
    with pytest.raises(ValueError, match="either ratios or a sparsity"):
        prune(model, "snp", 0.3, images=torch.rand(2, 3, 16, 16), ratios={"qk": 0.5})
    with pytest.raises(ValueError, match="residual_score"):
        prune(model, "snp", 0.3, images=torch.rand(2, 3, 16, 16), residual_score="bogus")


def test_prune_returns_a_smaller_model_and_leaves_the_input_alone():
    model = tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(4, 3, 16, 16)
    res = prune(model, "snp", 0.0, images=images,
                ratios={"qk": 0.5, "v": 0.5, "mlp": 0.25, "residual": 0.25}, heads=0.34)
    assert res.masks is None and isinstance(res.model, VisionTransformer)
    assert res.model.config.embed_dim == 18
    assert [b.num_heads for b in res.model.config.blocks] == [2, 1]
    assert [(b.qk_dim, b.v_dim, b.mlp_hidden) for b in res.model.config.blocks] == \
        [(4, 3, 30), (2, 3, 24)]
    assert res.extra["macs_after"] < res.extra["macs_before"]
    assert sum(p.numel() for p in res.model.parameters()) < \
        sum(p.numel() for p in model.parameters())
    assert set(res.table.component) == {"heads", "qk per head", "v per head", "mlp hidden",
                                        "residual"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # plain sparsity: q/k, v and FFN of every block
    res = prune(model, "l2-norm", 0.5)
    assert [(b.qk_dim, b.v_dim, b.mlp_hidden) for b in res.model.config.blocks] == \
        [(4, 3, 20), (2, 3, 16)]
    assert res.model.config.embed_dim == 24



def test_snp_on_linformer_scores_q_against_the_projected_keys():
    from core.models.linformer_vit import LinformerViT, linformer_vit_config
    torch.manual_seed(0)
    model = LinformerViT(linformer_vit_config(img_size=16, patch_size=4, dim=24, depth=2,
                                              heads=3, k=6, num_classes=5)).eval()
    images = torch.rand(3, 3, 16, 16)
    xs = []
    attn = model.transformer.net.layers[1][0].fn
    h = attn.register_forward_pre_hook(lambda m, a: xs.append(a[0]))
    with torch.no_grad():
        model(images)
    h.remove()
    x = xs[0]
    B, N, _ = x.shape
    q = attn.to_q(x).reshape(B, N, 3, 8).transpose(1, 2)
    k = torch.einsum("bnd,nk->bkd", attn.to_k(x), attn.proj_k[:N]).reshape(B, 6, 3, 8)
    want = qk_pair_scores(q, k.transpose(1, 2), 4).mean(0)
    s = SNP(rank=4)(model, images)
    torch.testing.assert_close(s.qk[1], want)
    assert [t.shape for t in s.heads] == [(3,), (3,)]
    res = prune(model, "snp", 0.0, images=images, ratios={"qk": 0.25, "v": 0.25, "heads": 0.34})
    assert [(c.heads, c.dim_head) for c in res.model.config.layers] == [(2, 6), (2, 6)]
