"""Physical shrinking (SNP, seed 001): shrunk = masked model, sizes, MACs, ratios, checkpoints."""
from __future__ import annotations

import json
import math

import pytest
import torch

from core.attention import attention_rollout, capture_attention
from core.models import build_model, count_macs, load_model, save_model
from core.models.linformer_vit import LinformerViT
from core.models.vit import VisionTransformer
from core.pruning import get_masks, prune
from core.pruning.ratios import (RATIO_DIR, StructuredRatios, list_ratio_files, paper_keys,
                                 removal_count, resolve_ratios)
from core.pruning.snp import StructuredRandomPruner
from core.pruning.structured import (MaskedLayerNorm, config_macs, full_plan, masked_model,
                                     plan_masks, ratios_of, select, shrink, shrunk_config)
from _tiny import randomise
from _tiny import random_linformer as tiny_linformer
from _tiny import random_vit as tiny_vit

TOL = 1e-4


def plan_for(model, images=None, seed=0, **ratios):
    """A plan from random scores (indices differ per head) for the given component ratios."""
    r = resolve_ratios(ratios, model.config.depth)
    return select(model, StructuredRandomPruner(seed=seed)(model, images), r)


VIT_CASES = {"qk": dict(qk=0.5), "v": dict(v=0.5), "mlp": dict(mlp=0.4),
             "heads": dict(heads=0.4), "residual": dict(residual=0.3),
             "combined": dict(qk=0.4, v=0.3, mlp=0.5, heads=0.4, residual=0.25)}


@pytest.mark.parametrize("case", list(VIT_CASES))
def test_vit_shrunk_equals_masked(case):
    model = tiny_vit()
    x = torch.rand(3, 3, 16, 16)
    plan = plan_for(model, **VIT_CASES[case])
    small, masked = shrink(model, plan), masked_model(model, plan)
    with torch.no_grad():
        out_small, out_masked, out_full = small(x), masked(x), model(x)
    assert (out_small - out_masked).abs().max() <= TOL
    assert (out_small - out_full).abs().max() > 1e-3  # something was really removed
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("make", [tiny_vit, tiny_linformer])
def test_shrunk_model_owns_its_tensors(make):
    """Training the shrunk model never writes into the dense one: no storage is shared, no
    tensor is left on the meta device, buffers included, and gradients flow."""
    model = make()
    plan = plan_for(model, mlp=0.4)
    small = shrink(model, plan)
    old = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    for name, t in [*small.named_parameters(), *small.named_buffers()]:
        assert not t.is_meta, name
        assert t.untyped_storage().data_ptr() not in old, name
    assert all(p.requires_grad for p in small.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small(torch.rand(2, 3, 16, 16)).sum().backward()
    with torch.no_grad():
        for p in small.parameters():
            p.add_(1.0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("case", ["qkv", "mlp", "heads", "residual", "combined"])
def test_linformer_shrunk_equals_masked(case):
    model = tiny_linformer()
    x = torch.rand(3, 3, 16, 16)
    ratios = {"qkv": dict(qk=0.5, v=0.5), "mlp": dict(mlp=0.4), "heads": dict(heads=0.34),
              "residual": dict(residual=0.25),
              "combined": dict(qk=0.25, v=0.25, mlp=0.5, heads=0.34, residual=0.25)}[case]
    plan = plan_for(model, **ratios)
    small, masked = shrink(model, plan), masked_model(model, plan)
    assert isinstance(small, LinformerViT)
    with torch.no_grad():
        assert (small(x) - masked(x)).abs().max() <= TOL
        assert (small(x) - model(x)).abs().max() > 1e-3


def test_linformer_constraints():
    model = tiny_linformer()
    with pytest.raises(ValueError, match="one dim_head shared"):
        plan_for(model, qk=0.5, v=0.25)
    # the package asserts dim % heads == 0: 24 − round(0.1·24) = 22 → 21 (3 heads)
    plan = plan_for(model, residual=0.1)
    assert plan.residual.numel() == 21
    assert shrink(model, plan).config.dim == 21


def test_full_plan_changes_nothing_and_scale_is_kept():
    model = tiny_vit()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(shrink(model, full_plan(model))(x), model(x), atol=1e-6)
    plan = plan_for(model, qk=0.5)
    small = shrink(model, plan)
    # the config keeps scale None (d'^-0.5) and W_q carries √(d'/d): same logits as zeroing
    assert all(b.scale is None for b in small.config.blocks)
    assert small.blocks[0].attn.scale == pytest.approx(4 ** -0.5)
    q_small = small.blocks[0].attn.qkv.weight[:3 * 4]
    rows = (plan.blocks[0].heads[:, None] * 8 + plan.blocks[0].qk).flatten()
    torch.testing.assert_close(q_small, model.blocks[0].attn.qkv.weight[rows] * math.sqrt(4 / 8))


def test_equal_counts_per_head_indices_chosen_per_head():
    model = tiny_vit()
    plan = plan_for(model, qk=0.5, v=0.5, heads=0.0)
    for p, (H, dq, dv) in zip(plan.blocks, [(3, 8, 6), (2, 5, 7)]):
        assert p.qk.shape == (H, dq - removal_count(0.5, dq))
        assert p.v.shape == (H, dv - removal_count(0.5, dv))
    assert not all(torch.equal(r, plan.blocks[0].qk[0]) for r in plan.blocks[0].qk)
    small = shrink(model, plan)
    assert [(b.num_heads, b.qk_dim, b.v_dim) for b in small.config.blocks] == [(3, 4, 3),
                                                                             (2, 2, 3)]


def test_residual_indices_identical_across_linked_layers():
    model = tiny_vit()
    plan = plan_for(model, residual=0.25, qk=0.25)
    r = plan.residual
    small = shrink(model, plan)
    big, sm = model.state_dict(), small.state_dict()
    assert sm["cls_token"].shape[-1] == 18
    torch.testing.assert_close(sm["cls_token"], big["cls_token"][..., r])
    torch.testing.assert_close(sm["pos_embed"], big["pos_embed"][..., r])
    torch.testing.assert_close(sm["patch_embed.proj.weight"], big["patch_embed.proj.weight"][r])
    for i, p in enumerate(plan.blocks):
        pre = f"blocks.{i}."
        for n in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.proj.bias",
                  "mlp.fc2.bias"):
            torch.testing.assert_close(sm[pre + n], big[pre + n][r])
        torch.testing.assert_close(sm[pre + "attn.proj.weight"],
                                   big[pre + "attn.proj.weight"][r])
        torch.testing.assert_close(sm[pre + "mlp.fc2.weight"], big[pre + "mlp.fc2.weight"][r])
        torch.testing.assert_close(sm[pre + "mlp.fc1.weight"], big[pre + "mlp.fc1.weight"][:, r])
        # the v rows of qkv are not rescaled: they read the same residual columns
        H, dq = model.config.blocks[i].num_heads, model.config.blocks[i].qk_dim
        torch.testing.assert_close(sm[pre + "attn.qkv.weight"][-small.config.blocks[i].num_heads
                                                               * small.config.blocks[i].v_dim:],
                                   big[pre + "attn.qkv.weight"][2 * H * dq:][:, r])
    torch.testing.assert_close(sm["norm.weight"], big["norm.weight"][r])
    torch.testing.assert_close(sm["head.weight"], big["head.weight"][:, r])


def test_masked_model_masks_and_layernorm():
    model = tiny_vit()
    plan = plan_for(model, qk=0.5, residual=0.25)
    masked = masked_model(model, plan)
    masks = get_masks(masked)
    want = plan_masks(model, plan)
    assert set(masks) == set(want) and all(torch.equal(masks[k], want[k]) for k in want)
    assert all(isinstance(m, MaskedLayerNorm) for m in (masked.norm, masked.blocks[0].norm1))
    x = torch.randn(2, 5, 24)
    ln = masked.norm
    out = ln(x)
    r = plan.residual
    removed = torch.ones(24, dtype=torch.bool)
    removed[r] = False
    assert torch.all(out[..., removed] == 0)
    ref = torch.nn.functional.layer_norm(x[..., r], (18,), ln.weight[r], ln.bias[r], ln.eps)
    torch.testing.assert_close(out[..., r], ref)
    assert isinstance(model.norm, torch.nn.LayerNorm) and not get_masks(model)


def closed_form_macs(model: VisionTransformer) -> int:
    """By hand: patch conv + per block (qkv, QKᵀ, AV, proj, fc1, fc2) + head."""
    c = model.config
    P = model.patch_embed.num_patches
    N, D = P + 1, c.embed_dim
    total = P * D * c.in_chans * c.patch_size ** 2
    for b in c.blocks:
        H, dq, dv, h = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
        total += N * D * H * dq * 2 + N * D * H * dv   # q, k, v
        total += H * N * N * dq + H * N * N * dv        # QKᵀ, attn · V
        total += N * H * dv * D + N * D * h + N * h * D  # proj, fc1, fc2
    return total + D * c.num_classes


def test_count_macs_equals_closed_form():
    model = tiny_vit()
    small = shrink(model, plan_for(model, qk=0.4, v=0.3, mlp=0.5, heads=0.4, residual=0.25))
    assert count_macs(small) == closed_form_macs(small) == config_macs(small.config)
    lin = tiny_linformer()
    small = shrink(lin, plan_for(lin, qk=0.25, v=0.25, mlp=0.5, residual=0.25))
    assert count_macs(small) == config_macs(small.config)
    assert count_macs(lin) == config_macs(lin.config)


def meta_model(name: str):
    with torch.device("meta"):  # no weights: MACs depend on shapes only
        return build_model(name, 1000)


@pytest.mark.parametrize("preset, file, before, after", [
    ("deit-tiny", "DeiT_t", 1.25, 0.64), ("deit-small", "DeiT_s", 4.60, 2.04),
    ("deit-small", "DeiT_s_small", 4.60, 1.27), ("deit-base", "DeiT_b", 17.56, 6.32)])
def test_paper_ratio_files_give_the_papers_gmacs(preset, file, before, after):
    model = meta_model(preset)
    plan = select(model, StructuredRandomPruner()(model), StructuredRatios.from_paper(file, 12))
    cfg = shrunk_config(model, plan)
    with torch.device("meta"):
        small = VisionTransformer(cfg)
    assert round(count_macs(model) / 1e9, 2) == before
    assert round(count_macs(small) / 1e9, 2) == after
    assert config_macs(cfg) == count_macs(small)
    # round trip: the per-layer ratios read back from the shapes are the file's, within
    # rounding (half a channel of the structure each ratio is about)
    file_ratios = json.loads((RATIO_DIR / f"{file}.json").read_text())
    back = ratios_of(model.config, cfg).to_paper()
    assert list(back) == paper_keys(12) and set(back) == set(file_ratios)
    D, hidden = model.config.embed_dim, model.config.blocks[0].mlp_hidden
    for key, r in file_ratios.items():
        n = D if key.startswith("add") else hidden if key.startswith("blocks") else 64
        assert abs(back[key] - r) <= 0.5 / n + 1e-12, key
        assert removal_count(back[key], n) == removal_count(r, n)
    assert StructuredRatios.from_paper(back, 12).to_paper() == back


def test_round_trip_on_a_real_prune(tmp_path):
    model = randomise(build_model("deit-tiny", 10, img_size=32))  # DeiT-T's blocks, 5 tokens
    images = torch.rand(2, 3, 32, 32)
    res = prune(model, "snp", 0.0, images=images, ratios="DeiT_t", rank=8)
    file_ratios = json.loads((RATIO_DIR / "DeiT_t.json").read_text())
    back = ratios_of(model.config, res.model.config).to_paper()
    assert back == pytest.approx(file_ratios, abs=1e-12)  # DeiT-T's ratios are whole channels
    assert res.extra["macs_after"] == count_macs(res.model)


def test_removal_count_rounding():
    assert removal_count(0.7, 64) == 45            # 44.8
    assert removal_count(0.3, 3072) == 922         # 921.6
    assert removal_count(0.20052083333333334, 768) == 154
    assert removal_count(0.5, 3) == 2              # half up
    assert removal_count(0.15, 10) == 2            # 1.4999999999999998 read as 1.5
    assert removal_count(0.99, 8) == 7             # never the whole structure
    assert removal_count(0.0, 8) == 0


def test_bad_ratios_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        StructuredRatios.uniform(2, qk=1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        StructuredRatios.uniform(2, residual=-0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        StructuredRatios.uniform(2, v=float("nan"))
    with pytest.raises(ValueError, match="must be a number"):
        resolve_ratios({"qk": "half"}, 2)
    with pytest.raises(ValueError, match="unknown ratio keys"):
        resolve_ratios({"qk": 0.5, "query": 0.2}, 2)
    with pytest.raises(ValueError, match="has 3 entries"):
        resolve_ratios({"qk": [0.1, 0.2, 0.3]}, 2)
    good = StructuredRatios.uniform(2, qk=0.5).to_paper()
    with pytest.raises(ValueError, match="unknown keys.*matmul_99"):
        StructuredRatios.from_paper(good | {"matmul_99": 0.1}, 2)
    with pytest.raises(ValueError, match="missing keys.*matmul_3"):
        StructuredRatios.from_paper({k: v for k, v in good.items() if k != "matmul_3"}, 2)
    with pytest.raises(ValueError, match="matmul_1 must be in"):
        StructuredRatios.from_paper(good | {"matmul_1": 1.5}, 2)
    with pytest.raises(ValueError, match="12-block model; this model has 2"):
        resolve_ratios("DeiT_t", 2)
    with pytest.raises(ValueError, match="12-block model; this model has 4"):
        tiny = build_model("vit-tiny", 6)
        prune(tiny, "l2-norm", 0.0, ratios="DeiT_s")
    with pytest.raises(ValueError, match="no SNP ratio file 'DeiT_x'.*DeiT_b"):
        resolve_ratios("DeiT_x", 12)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_ratios(bad, 12)
    with pytest.raises(ValueError, match="ratios are for 12 blocks"):
        resolve_ratios(StructuredRatios.uniform(12), 2)
    assert list_ratio_files() == ["DeiT_b", "DeiT_s", "DeiT_s_small", "DeiT_t"]


def test_save_load_and_attention_on_the_shrunk_model(tmp_path):
    model = tiny_vit()
    x = torch.rand(2, 3, 16, 16)
    small = shrink(model, plan_for(model, qk=0.4, v=0.3, mlp=0.5, heads=0.4, residual=0.25))
    path = save_model(small, tmp_path / "small.safetensors")
    back = load_model(path)
    assert back.config == small.config
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x))
    maps = capture_attention(back, x)
    assert [a.shape for a in maps] == [(2, 2, 17, 17), (2, 1, 17, 17)]
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 17))
    roll = attention_rollout(maps)
    assert roll.shape == (2, 17, 17)
    torch.testing.assert_close(roll.sum(-1), torch.ones(2, 17))


def test_attention_of_kept_heads_is_unchanged_by_shrinking():
    model = tiny_vit()
    x = torch.rand(2, 3, 16, 16)
    plan = plan_for(model, qk=0.5, heads=0.4)
    small_maps = capture_attention(shrink(model, plan), x)
    masked_maps = capture_attention(masked_model(model, plan), x)
    for p, a, b in zip(plan.blocks, small_maps, masked_maps):
        torch.testing.assert_close(a, b[:, p.heads], atol=1e-5, rtol=1e-4)


def test_bad_plans():
    model = tiny_vit()
    plan = plan_for(model, qk=0.5)
    bad = type(plan)(plan.blocks, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="repeated"):
        shrink(model, bad)
    with pytest.raises(ValueError, match="plan has 3 blocks; the model has 2"):
        shrink(tiny_linformer(), type(plan)(plan.blocks[:1] * 3, plan.residual))
