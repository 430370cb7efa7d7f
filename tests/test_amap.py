"""AMAP (seed 002) against explicit computations: one-channel ablations, the gated model against
the shrunk one, MACs in closed form against the counter, the budget, cancel, checkpoints."""
from __future__ import annotations

import copy
import threading

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.attention import attention_modules, capture_attention
from core.models import count_macs, load_model, save_model
from core.models.linformer_vit import LinformerViT
from core.models.vit import Attention
from core.pruning import get_pruner, list_pruners, prune
from core.pruning.amap import (AMAPPruner, AMAPStepEvent, AttentionIndicator, amap_prune,
                               attention_macs, calibrate, check_budget, export, gated)
from core.pruning.structured import block_views
from _tiny import random_linformer, random_vit


def tiny_vit(seed: int = 0):
    return random_vit(seed, num_classes=3, mlp=(32, 32))


def tiny_linformer(seed: int = 0):
    return random_linformer(seed, num_classes=3)


MODELS = {"vit": tiny_vit, "linformer": tiny_linformer}


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def tiny_data(n: int = 48, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 3, 16, 16, generator=g),
                         torch.randint(0, 3, (n,), generator=g))


def _zero_channel(model: nn.Module, block: int, head: int, c: int, kind: str) -> nn.Module:
    """A copy with q/k channel (or v channel) c of one head zeroed in the weights by hand."""
    m = copy.deepcopy(model)
    attn = attention_modules(m)[block]
    with torch.no_grad():
        if isinstance(attn, Attention):
            H, dq, dv = attn.num_heads, attn.qk_dim, attn.v_dim
            rows = ([head * dq + c, H * dq + head * dq + c] if kind == "qk"
                    else [2 * H * dq + head * dv + c])
            attn.qkv.weight[rows] = 0
            attn.qkv.bias[rows] = 0
        else:
            row = head * attn.dim_head + c
            for lin in ((attn.to_q, attn.to_k) if kind == "qk" else (attn.to_v,)):
                lin.weight[row] = 0
    return m


def _head_outputs(model: nn.Module, x: torch.Tensor, block: int) -> torch.Tensor:
    """The block's attention output before the out-projection, (B, H, N, d_v)."""
    attn = attention_modules(model)[block]
    out_proj = attn.proj if isinstance(attn, Attention) else attn.to_out
    H = attn.num_heads if isinstance(attn, Attention) else attn.heads
    seen = []
    h = out_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    B, N, _ = seen[0].shape
    return seen[0].reshape(B, N, H, -1).transpose(1, 2)


@pytest.mark.parametrize("family", list(MODELS))
def test_initialisation_equals_explicit_one_channel_ablations(family):
    model, x = MODELS[family](), images()
    calib = calibrate(model, x, batch_size=3)  # two chunks: the mean runs over chunks too
    raw = family == "linformer"                # Linformer's attention: the package's P̄ (N×k)
    base = capture_attention(model, x, raw=raw)
    for b, view in enumerate(block_views(model)):
        outs = _head_outputs(model, x, b)
        for h in range(view.num_heads):
            for c in range(view.qk_dim):
                ablated = capture_attention(_zero_channel(model, b, h, c, "qk"), x, raw=raw)[b]
                want = (base[b][:, h] - ablated[:, h]).flatten(1).norm(dim=1).mean()
                torch.testing.assert_close(calib.diff_qk[b][h, c], want, rtol=1e-4, atol=1e-6)
            for c in range(view.v_dim):
                ablated = _head_outputs(_zero_channel(model, b, h, c, "v"), x, b)
                want = (outs[:, h] - ablated[:, h]).flatten(1).norm(dim=1).mean()
                torch.testing.assert_close(calib.diff_v[b][h, c], want, rtol=1e-4, atol=1e-6)


def test_similarity_weights_count_a_duplicate_channel_for_less():
    model = tiny_vit()
    before = calibrate(model, images())
    attn = attention_modules(model)[0]
    with torch.no_grad():  # v channel 1 of head 0 := 2 × v channel 0 + 1: correlation 1
        off = 2 * attn.num_heads * attn.qk_dim
        attn.qkv.weight[off + 1] = 2 * attn.qkv.weight[off]
        attn.qkv.bias[off + 1] = 2 * attn.qkv.bias[off] + 1
    after = calibrate(model, images())
    for w in (*before.sim_qk, *before.sim_v, *after.sim_qk, *after.sim_v):
        assert float(w.min()) >= 0 and float(w.max()) <= 1
    assert (after.sim_v[0][0, :2] < before.sim_v[0][0, :2]).all()
    torch.testing.assert_close(after.sim_v[0][1:], before.sim_v[0][1:])  # other heads alike
    ind = AttentionIndicator(model, after, similarity=1.0, init="uniform")
    plain = AttentionIndicator(model, after, similarity=0.0, init="uniform")
    g, g0 = ind.gates()[0][1][0], plain.gates()[0][1][0]
    assert (g <= g0).all() and (g[:2] < g0[:2]).all()  # same logit, a lower gate


@pytest.mark.parametrize("family", list(MODELS))
def test_export_equals_gated_model_with_binarised_indicator_and_folded_reweights(family):
    model, x = MODELS[family](), images()
    ind = AttentionIndicator(model, calibrate(model, x))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # scramble the learned state so the check is not trivial
        for p in (*ind.logits_qk, *ind.logits_v):
            p.copy_(torch.randn(p.shape, generator=g) * 2)
        for p in (*ind.reweight_qk, *ind.reweight_v):
            p.copy_(0.5 + torch.rand(p.shape, generator=g))
    counts = ind.freeze(0.6)
    with gated(model, ind), torch.no_grad():
        ind.refresh("hard")
        want = model(x)
    assert all(not m._forward_hooks for m in model.modules())  # hooks removed
    small, plan = export(model, ind)
    with torch.no_grad():
        got = small(x)
    assert (got - want).abs().max() <= 1e-4
    # even across heads: one count per block, the model's config says it, Linformer ties q/k, v
    for p, (nq, nv), view in zip(plan.blocks, counts, block_views(small)):
        assert tuple(p.qk.shape) == (view.num_heads, nq) and tuple(p.v.shape) == (
            view.num_heads, nv)
        assert (view.qk_dim, view.v_dim) == (nq, nv)
        if family == "linformer":
            assert nq == nv
    assert attention_macs(small) <= 0.6 * attention_macs(model)


def attention_macs_by_hand(model: nn.Module) -> int:
    """From the config: each kept channel of a head (a q/k pair or a v channel) costs two
    N×D projections plus N² (ViT: its column of QKᵀ or AV) or 2·N·k (Linformer: its E or F
    projection along the sequence and its column of QKᵀ or AV against k keys)."""
    c = model.config
    if isinstance(model, LinformerViT):  # q, k and v share dim_head
        N, D = c.seq_len, c.dim
        return sum(lay.heads * 2 * lay.dim_head * (2 * N * D + 2 * N * c.k) for lay in c.layers)
    N, D = model.patch_embed.num_patches + model.num_prefix_tokens, c.embed_dim
    return sum(b.num_heads * (b.qk_dim + b.v_dim) * (2 * N * D + N * N) for b in c.blocks)


@pytest.mark.parametrize("family", list(MODELS))
def test_attention_macs_closed_form_matches_the_counter(family):
    model = MODELS[family]()
    ind = AttentionIndicator(model, calibrate(model, images()))
    counts = ind.freeze(0.5)
    small, _ = export(model, ind)
    assert attention_macs(model) == attention_macs_by_hand(model)
    assert attention_macs(model, counts) == attention_macs(small) == attention_macs_by_hand(small)
    assert attention_macs(small) < attention_macs(model)
    assert count_macs(model) - count_macs(small) == attention_macs(model) - attention_macs(small)
    assert ind.ratio() == pytest.approx(attention_macs(small) / attention_macs(model))


@pytest.mark.parametrize("family", list(MODELS))
def test_budget_term_drives_the_macs_to_the_target(family):
    model = MODELS[family]()
    res = amap_prune(model, 0.6, tiny_data(), steps=40, search_frac=1.0, batch_size=16,
                     images=images(), indicator_lr=0.2, init="uniform")
    ratios = [r["macs_ratio"] for r in res.extra["history"]]
    assert ratios[0] > 0.9                                    # starts (nearly) full
    tail = ratios[-8:]
    assert max(abs(r - 0.6) for r in tail) <= 0.1, ratios     # searched to the budget
    assert res.extra["attention_ratio"] <= 0.6 + 1e-9         # exported within it
    assert res.extra["attention_ratio"] >= 0.6 - 0.1
    assert res.extra["status"] == "finished" and res.extra["steps"] == 40


@pytest.mark.parametrize("budget", [0, 0.0, -0.1, 1.5, float("nan"), float("inf"), "0.7", True])
def test_budget_outside_0_1_is_a_clear_error(budget):
    with pytest.raises(ValueError, match="budget"):
        check_budget(budget)
    with pytest.raises(ValueError, match="budget"):
        amap_prune(tiny_vit(), budget, tiny_data(), steps=1)


def test_unreachable_budget_and_disagreeing_sparsity_are_errors():
    with pytest.raises(ValueError, match="smallest reachable"):
        amap_prune(tiny_vit(), 0.01, tiny_data(), steps=1)
    with pytest.raises(ValueError, match="disagree"):
        prune(tiny_vit(), "amap", 0.5, budget=0.7, train_set=tiny_data(), steps=1)
    with pytest.raises(ValueError, match="budget"):
        prune(tiny_vit(), "amap", None, train_set=tiny_data(), steps=1)


@pytest.mark.parametrize("family", list(MODELS))
def test_registered_pruner_exports_a_model_that_saves_and_loads(family, tmp_path):
    assert "amap" in list_pruners() and "amap" in list_pruners("structured")
    assert get_pruner("amap").options["budget"] is None
    model, x = MODELS[family](), images()
    res = prune(model, "amap", None, images=x, budget=0.7, train_set=tiny_data(), steps=4,
                batch_size=16)
    assert res.masks is None and res.extra["attention_ratio"] <= 0.7
    assert "train_set" not in res.pruner.options
    small = res.model
    path = save_model(small, tmp_path / "amap.safetensors")
    back = load_model(path)
    assert back.config == small.config
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x))
    # prune() leaves the input alone
    assert block_views(model)[0].qk_dim == block_views(MODELS[family]())[0].qk_dim


def test_sparsity_reads_as_fraction_removed_and_labels_make_a_train_set():
    x = images(16)
    y = torch.arange(16) % 3
    res = prune(tiny_vit(), "amap", 0.3, images=x, labels=y, steps=2, batch_size=8)
    assert res.extra["budget"] == pytest.approx(0.7)
    assert res.extra["attention_ratio"] <= 0.7


def test_cancel_stops_within_one_step_and_callbacks_see_progress():
    cancel = threading.Event()
    events, ends = [], []

    class Stopper:
        def on_step(self, e):
            events.append(e)
            if e.step == 3:
                cancel.set()

        def on_epoch_end(self, e):
            pass

        def on_end(self, r):
            ends.append(r)

    from core.train import Callback

    class Hooks(Callback):
        def __init__(self, s):
            self.s = s

        def on_step(self, e):
            self.s.on_step(e)

        def on_end(self, r):
            self.s.on_end(r)

    res = amap_prune(tiny_vit(), 0.7, tiny_data(), steps=50, batch_size=8, images=images(),
                     callbacks=[Hooks(Stopper())], cancel=cancel)
    assert res.extra["steps"] == 3 and res.extra["status"] == "cancelled"
    assert [e.step for e in events] == [1, 2, 3]
    assert all(isinstance(e, AMAPStepEvent) and 0 < e.macs_ratio <= 1 for e in events)
    assert ends and ends[0].status == "cancelled"
    assert res.extra["attention_ratio"] <= 0.7  # still projected onto the budget


def test_options_are_json_able_and_hooks_gone_after_a_failure():
    p = AMAPPruner(budget=0.8, train_set=tiny_data(), cancel=threading.Event())
    assert set(p.options) >= {"budget", "steps", "similarity"}
    assert not {"train_set", "cancel", "callbacks"} & set(p.options)
    model = tiny_vit()
    ind = AttentionIndicator(model, calibrate(model, images()))
    with pytest.raises(RuntimeError, match="refresh"):
        with gated(model, ind):
            model(images())
    assert all(not m._forward_hooks for m in model.modules())
