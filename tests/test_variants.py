"""Every view on every ViT variant (issue: bring your own ViT): distillation token, register
tokens, LayerScale, no class token with average pooling, no qkv bias. Small random instances;
each view is checked against an explicit computation where one exists."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from core.attention import (attention_rollout, capture_attention, cls_attention,
                            gradient_rollout, patch_heatmap, rollout_map)
from core.attribution import attribution_map
from core.models import BlockConfig, VisionTransformer, ViTConfig, count_macs, token_layout
from core.pruning import list_pruners, prune
from core.pruning.amap import amap_prune
from core.pruning.structured import StructuredRatios, config_macs, masked_model, select, shrink
from core.pruning.snp import StructuredRandomPruner, SNPPruner
from core.train import TrainConfig, train
from test_attention import rollout_by_hand

VARIANTS = {
    "distilled": dict(distilled=True),
    "registers": dict(num_reg_tokens=2, no_embed_class=True),
    "layerscale": dict(init_values=0.5),
    "avgpool": dict(class_token=False, global_pool="avg"),
    "no_qkv_bias": dict(qkv_bias=False),
    "dist_reg_ls": dict(distilled=True, num_reg_tokens=1, init_values=0.3),
}
PREFIX = {"distilled": ("cls", "dist"), "registers": ("cls", "reg0", "reg1"),
          "layerscale": ("cls",), "avgpool": (), "no_qkv_bias": ("cls",),
          "dist_reg_ls": ("cls", "dist", "reg0")}


def make(variant: str, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=(16, 16), patch_size=4, num_classes=4, embed_dim=24,
                    blocks=(BlockConfig(3, 8, 6, 40), BlockConfig(2, 5, 7, 32)),
                    **VARIANTS[variant])
    model = VisionTransformer(cfg)
    with torch.no_grad():  # non-trivial weights, gammas included
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return model.eval()


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param


def test_layout_capture_and_maps(variant):
    model = make(variant)
    layout = token_layout(model)
    assert layout.prefix == PREFIX[variant]
    x = torch.rand(3, 3, 16, 16)
    maps = capture_attention(model, x)
    N = 16 + len(PREFIX[variant])
    assert [tuple(m.shape) for m in maps] == [(3, 3, N, N), (3, 2, N, N)]
    p = layout.num_prefix
    rows = cls_attention(maps[-1], layout=layout)
    if layout.cls_index is None:        # no class token: the mean over patch queries
        want = maps[-1].mean(dim=1)[:, p:, p:].mean(dim=1)
    else:
        want = maps[-1].mean(dim=1)[:, 0, p:]
    torch.testing.assert_close(rows, want)
    roll = attention_rollout(maps)
    r = rollout_map(roll, layout)
    for b in range(3):              # special tokens never become image cells
        R = rollout_by_hand([m[b].double().numpy() for m in maps])
        want = R[layout.cls_index, p:] if layout.cls_index is not None else R[p:, p:].mean(0)
        np.testing.assert_allclose(r[b].numpy(), want, rtol=1e-5, atol=1e-7)
    heat = patch_heatmap(r, model.grid_size, (16, 16))
    assert heat.shape == (3, 16, 16) and float(heat.max()) <= 1.0
    g = rollout_map(gradient_rollout(model, x), layout)
    assert g.shape == (3, 16) and bool(torch.isfinite(g).all())


def test_attributions_and_training(variant):
    model = make(variant)
    x = torch.rand(3, 16, 16)
    for method in ("saliency", "integrated_gradients"):
        m = attribution_map(model, x, target=1, method=method,
                            **({"n_steps": 4} if method != "saliency" else {}))
        assert m.shape == (16, 16) and bool(torch.isfinite(m).all())
    data = TensorDataset(torch.rand(16, 3, 16, 16), torch.randint(0, 4, (16,)))
    res = train(model, data, data, TrainConfig(epochs=1, batch_size=8, precision="fp32"))
    assert res.status == "finished"


@pytest.mark.parametrize("criterion", ["magnitude", "random", "snip", "attention-snip",
                                       "grasp", "synflow", "wanda"])
def test_unstructured_criteria(criterion):
    for variant in ("dist_reg_ls", "avgpool"):
        model = make(variant)
        x, y = torch.rand(8, 3, 16, 16), torch.randint(0, 4, (8,))
        res = prune(model, criterion, 0.6, x, y)
        assert res.actual_sparsity == pytest.approx(0.6, abs=0.01)
        assert bool(torch.isfinite(res.model(x)).all())


def test_snp_shrinks_every_variant_equal_to_its_masked_twin(variant):
    model = make(variant)
    x = torch.rand(4, 3, 16, 16)
    ratios = StructuredRatios.uniform(2, qk=0.4, v=0.3, mlp=0.5, residual=0.25, heads=0.34)
    for scores in (SNPPruner()(model, x), StructuredRandomPruner(seed=1)(model)):
        plan = select(model, scores, ratios)
        small, masked = shrink(model, plan), masked_model(model, plan)
        torch.testing.assert_close(small(x), masked(x), atol=1e-4, rtol=1e-4)
        assert small.config.embed_dim == 18 and small.config.blocks[0].num_heads == 2
        assert count_macs(small) == config_macs(small.config) < config_macs(model.config)
        assert token_layout(small) == token_layout(model)
        assert capture_attention(small, x)[0].shape[-1] == 16 + len(PREFIX[variant])
    res = prune(model, "snp", 0.3, images=x, heads=0.34)
    assert res.model.config.blocks[1].num_heads == 1


def test_amap_and_macs_on_variants():
    for variant in ("distilled", "registers", "avgpool"):
        model = make(variant)
        assert count_macs(model) == config_macs(model.config)
        data = TensorDataset(torch.rand(32, 3, 16, 16), torch.randint(0, 4, (32,)))
        res = amap_prune(model, 0.7, data, steps=6, batch_size=8, calibration_size=8)
        assert res.extra["attention_ratio"] <= 0.7 + 1e-9
        x = torch.rand(2, 3, 16, 16)
        assert bool(torch.isfinite(res.model(x)).all())


def test_every_registered_pruner_is_covered():
    covered = {"magnitude", "random", "snip", "attention-snip", "grasp", "synflow", "wanda",
               "snp", "amap",
               "reverse", "l2-norm", "gm", "structured-random"}
    assert set(list_pruners()) <= covered | {"taylor", "activation", "snp-act"}, \
        set(list_pruners())


def test_pipeline_rows_skip_special_tokens():
    """core.study (what the pages show): rows over the 16 patches, never the extra tokens."""
    from core import study

    model = make("dist_reg_ls")
    x = torch.rand(3, 16, 16)
    g = study.fig3(model, x, ["magnitude"], [0.0, 0.5])
    maps = capture_attention(model, x[None])
    torch.testing.assert_close(torch.from_numpy(g.dense),
                               maps[-1].mean(dim=1)[0, 0, 3:].float())
    data = TensorDataset(torch.rand(4, 3, 16, 16), torch.zeros(4, dtype=torch.long))
    cls_rows, roll_rows = study.attention_rows(model, data)
    assert cls_rows.shape == roll_rows.shape == (4, 16)
    heats = study.explain(model, x)
    assert [tuple(h.shape) for h in heats["heats"].values()] == [(16, 16)] * 4
