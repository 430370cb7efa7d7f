"""Token merging (ToMe, core.tokens): against hand-written matching, exactness at r = 0,
protected tokens, sources, proportional attention, MACs, schedules, copies, devices."""
from __future__ import annotations

import copy
import math
import threading
import warnings

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from core.attention import (attention_rollout, capture_attention, gradient_rollout,
                            record_attention, rollout_row)
from core.models import build_model, count_macs, load_model, token_layout
from core.models.timm_format import load_timm_state_dict
from core.models.vit import BlockConfig, VisionTransformer, ViTConfig
from core.tokens import (bipartite_soft_matching, last_trace, merge_groups, merge_overlay,
                         merge_schedule, merge_tokens, merge_wavg, tokens_per_block,
                         trace_merges)
from tests._tiny import random_linformer, randomise


def vit(seed: int = 0, **kw) -> VisionTransformer:
    """16×16 images, 4×4 patches (16 patches), dim 24, two blocks of different sizes
    (q/k dim ≠ v dim), random weights; ``kw`` replaces config fields (tokens, pooling)."""
    torch.manual_seed(seed)
    base = dict(img_size=(16, 16), patch_size=4, num_classes=5, embed_dim=24,
                blocks=(BlockConfig(3, 8, 6, 40), BlockConfig(2, 5, 7, 32)))
    return randomise(VisionTransformer(ViTConfig(**{**base, **kw})))


def images(n: int = 3, size: int = 16, seed: int = 1) -> Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ---------------------------------------------------------------------------- by hand

def hand_merge(x: Tensor, keys: Tensor, size: list[float], r: int, P: int):
    """One image's ToMe step with loops: x (N, C) tokens, keys (H, N, d), sizes per token.
    Returns the merged tokens (N', C), their sizes, and where each input token went."""
    N = x.shape[0]
    metric = keys.double().mean(dim=0)                       # keys averaged over heads
    A = [t for t in range(P, N) if t % 2 == 0]
    B = [t for t in range(P, N) if t % 2 == 1]

    def cos(i: int, j: int) -> float:
        return float(metric[i] @ metric[j] / (metric[i].norm() * metric[j].norm()))
    best = {}
    for a in A:
        scores = [cos(a, b) for b in B]
        k = max(range(len(B)), key=lambda i: scores[i])       # first best on ties
        best[a] = (scores[k], B[k])
    ranked = sorted(A, key=lambda a: -best[a][0])            # stable: earlier A first on ties
    merged = set(ranked[:r])
    kept = [a for a in A if a not in merged]
    out, sizes, where = [], [], {}
    for t in list(range(P)) + kept:
        where[t] = len(out)
        out.append(x[t].double())
        sizes.append(size[t])
    for b in B:
        members = [b] + [a for a in A if a in merged and best[a][1] == b]
        total = sum(size[t] for t in members)
        for t in members:
            where[t] = len(out)
        out.append(sum(size[t] * x[t].double() for t in members) / total)
        sizes.append(total)
    return torch.stack(out), sizes, where


def hand_forward(model: VisionTransformer, x: Tensor, schedule: list[int]) -> Tensor:
    """The merged model's logits with everything ToMe does written out: explicit attention
    with log(size) added to the logits, hand matching and merging after each attention,
    each input token given back its token's value after the final norm."""
    P = model.num_prefix_tokens
    with torch.no_grad():
        t = model._pos_embed(model.patch_embed((x - model.pixel_mean) / model.pixel_std),
                             model.grid_size)
        Bn, N0, _ = t.shape
        sizes = [[1.0] * N0 for _ in range(Bn)]
        holder = [list(range(N0)) for _ in range(Bn)]          # input token → its token
        for blk, r in zip(model.blocks, schedule):
            h = blk.norm1(t)
            q, k, v = blk.attn.split_qkv(h)
            logits = (q * blk.attn.scale) @ k.transpose(-2, -1)
            logits = logits + torch.tensor(sizes).log()[:, None, None, :]
            o = logits.softmax(-1) @ v
            t = t + blk.attn.proj(o.transpose(1, 2).reshape(Bn, t.shape[1], -1))
            r = min(r, (t.shape[1] - P) // 2)
            if r:
                rows = []
                for b in range(Bn):
                    xb, sizes[b], where = hand_merge(t[b], k[b], sizes[b], r, P)
                    rows.append(xb.float())
                    holder[b] = [where[j] for j in holder[b]]
                t = torch.stack(rows)
            t = t + blk.mlp(blk.norm2(t))
        t = model.norm(t)
        t = torch.stack([t[b, holder[b]] for b in range(Bn)])
        return model.forward_head(t)


def test_one_step_equals_hand_written_bipartite_matching():
    g = torch.Generator().manual_seed(3)
    for P, N in [(1, 17), (2, 18), (3, 12), (0, 9)]:
        x = torch.randn(2, N, 5, generator=g, dtype=torch.float64)
        keys = torch.randn(2, 3, N, 4, generator=g, dtype=torch.float64)
        size = torch.randint(1, 5, (2, N), generator=g).double()
        for r in range(0, (N - P) // 2 + 1):
            m = bipartite_soft_matching(keys.mean(dim=1), r, P)
            got, got_size = merge_wavg(m, x, size)
            pos = m.positions()
            for b in range(2):
                want, want_size, where = hand_merge(x[b], keys[b], size[b].tolist(), r, P)
                torch.testing.assert_close(got[b], want, atol=1e-12, rtol=0)
                assert got_size[b].tolist() == want_size
                assert pos[b].tolist() == [where[t] for t in range(N)]


@pytest.mark.parametrize("kw", [{}, {"global_pool": "avg"},
                                {"distilled": True, "num_reg_tokens": 2}])
def test_merged_model_equals_hand_written_tome(kw):
    model = vit(**kw)
    x = images()
    merged = merge_tokens(model, [4, 3])
    with torch.no_grad():
        got = merged(x)
    torch.testing.assert_close(got, hand_forward(model, x, [4, 3]), atol=1e-5, rtol=0)
    assert not torch.allclose(got, model(x).detach(), atol=1e-3)  # it did merge


# ---------------------------------------------------------------------------- invariants

@pytest.mark.parametrize("kw", [{}, {"global_pool": "avg", "fc_norm": True},
                                {"distilled": True, "num_reg_tokens": 3},
                                {"init_values": 0.1}])
def test_r0_is_the_model_exactly(kw):
    model = vit(**kw)
    merged = merge_tokens(model, 0)
    x = images(4)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), atol=1e-6, rtol=0)
        assert torch.equal(merged.forward_features(x), model.forward_features(x))
    dense_maps, maps = capture_attention(model, x), capture_attention(merged, x)
    for a, b in zip(dense_maps, maps):
        assert torch.equal(a, b)
    assert count_macs(merged) == count_macs(model)


@pytest.mark.parametrize("r", [1, 3, [5, 0], [0, 7], 8])
def test_sizes_sum_to_the_input_tokens_and_sources_are_partitions(r):
    model = vit(distilled=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                            # r = 8 is clipped
        merged = merge_tokens(model, r)
    x = images(3)
    trace = trace_merges(merged, x)
    N0 = tokens_per_block(model)[0]
    counts = tokens_per_block(merged)
    assert len(trace.groups) == len(trace.sizes) == len(counts) == 3
    for layer, (g, s) in enumerate(zip(trace.groups, trace.sizes)):
        assert s.shape == (3, counts[layer]) and g.shape == (3, N0)
        assert torch.equal(s.sum(dim=1), torch.full((3,), float(N0)))
        assert (s >= 1).all() and torch.equal(s, s.round())
        src = trace.source(layer)                                  # (B, N_l, N0)
        assert torch.equal(src.sum(dim=1), torch.ones(3, N0))      # each input token: one token
        assert set(src.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(src.sum(dim=2), s)              # a token holds `size` tokens


def test_protected_tokens_are_never_merged():
    model = vit(distilled=True, num_reg_tokens=2)                  # cls, dist, reg0, reg1
    P = model.num_prefix_tokens
    with pytest.warns(UserWarning, match="clipped"):
        merged = merge_tokens(model, 8)                            # as many as possible
    trace = trace_merges(merged, images(4))
    for g, s in zip(trace.groups, trace.sizes):
        assert torch.equal(g[:, :P], torch.arange(P).expand(4, -1))  # each stays in place…
        assert torch.equal(s[:, :P], torch.ones(4, P))               # …and alone
        assert (g[:, P:] >= P).all()                                 # no patch joins one
    assert trace.sizes[-1].shape[1] == P + 4                       # 16 → 8 → 4 patches left


def test_proportional_attention_adds_log_size_to_the_logits():
    model = vit()
    for prop, grad in ((True, False), (True, True), (False, False)):  # grad: not in place
        merged = merge_tokens(model, [5, 0], prop_attn=prop)
        x = images(2)
        inputs = []
        handle = merged.blocks[1].norm1.register_forward_hook(lambda m, i, o: inputs.append(o))
        with torch.set_grad_enabled(grad), record_attention(merged, raw=True) as probs:
            merged(x)
        assert probs[1].requires_grad == grad
        handle.remove()
        size = last_trace(merged).sizes[1]                         # (B, 11): 5 merged away
        assert size.shape == (2, 12) and (size > 1).any()
        attn = merged.blocks[1].attn
        q, k, _ = attn.split_qkv(inputs[0])
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if prop:
            logits = logits + size.log()[:, None, None, :]
        torch.testing.assert_close(probs[1], logits.softmax(-1), atol=1e-6, rtol=0)


def tome_macs(cfg: ViTConfig, schedule: list[int]) -> int:
    """Closed form: per block, attention on N tokens, the A×B similarity product on d_qk, then
    the FFN on the N − r tokens left; patch embedding and head as the dense model."""
    p = cfg.patch_size
    n = (cfg.img_size[0] // p) * (cfg.img_size[1] // p)
    P, D = cfg.num_prefix_tokens, cfg.embed_dim
    macs = n * D * cfg.in_chans * p * p
    for b, r in zip(cfg.blocks, schedule):
        H, dq, dv = b.num_heads, b.qk_dim, b.v_dim
        N = P + n
        macs += N * D * H * (2 * dq + dv) + H * N * N * (dq + dv) + N * H * dv * D
        r = min(r, n // 2)
        if r:
            macs += len(range(P + P % 2, N, 2)) * len(range(P + 1 - P % 2, N, 2)) * dq
        n -= r
        macs += 2 * (P + n) * D * b.mlp_hidden
    return macs + D * cfg.num_classes * (2 if cfg.distilled and cfg.dist_head else 1)


@pytest.mark.parametrize("kw,r", [({}, 3), ({}, [6, 2]), ({"distilled": True}, [1, 4]),
                                  ({"num_reg_tokens": 1}, 8)])
def test_count_macs_counts_the_merged_model(kw, r):
    model = vit(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = merge_tokens(model, r)
    schedule = [r] * 2 if isinstance(r, int) else r
    assert tome_macs(model.config, [0, 0]) == count_macs(model)
    assert count_macs(merged) == tome_macs(model.config, schedule) < count_macs(model)


def test_per_layer_schedule_and_bad_schedules():
    model = build_model("vit-tiny", 5)                              # 4 blocks, 64 patches
    merged = merge_tokens(model, [10, 0, 5, 2])
    assert merge_schedule(merged) == [10, 0, 5, 2]
    assert tokens_per_block(merged) == [65, 55, 55, 50, 48]
    trace = trace_merges(merged, torch.rand(2, 3, 32, 32))
    assert [s.shape[1] for s in trace.sizes] == [65, 55, 55, 50, 48]
    for bad in ([1, 2, 3], [1, 2, 3, -1], -2, 1.5, [1, 2, 3, True], "4"):
        with pytest.raises(ValueError, match="non-negative integer"):
            merge_tokens(model, bad)
    assert merge_schedule(model) == [0, 0, 0, 0]                   # a dense model merges none


def test_too_large_r_is_clipped_and_said():
    model = vit()                                                   # 16 patches, 2 blocks
    with pytest.warns(UserWarning, match=r"clipped to \[8, 4\]"):
        merged = merge_tokens(model, 100)
    assert merge_schedule(merged) == [8, 4]
    with pytest.warns(UserWarning, match=r"clipped to \[3, 6\]"):
        merge_tokens(model, [3, 100])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        merge_tokens(model, [8, 4])                                 # what fits: no warning
    assert torch.isfinite(merged(images())).all()


def test_the_merged_model_is_a_copy():
    model = vit()
    x = images()
    with torch.no_grad():
        before = model(x).clone()
    hooks = hook_count(model)
    merged = merge_tokens(model, 4)
    with torch.no_grad():
        merged(x)
        assert torch.equal(model(x), before)
    assert hook_count(model) == hooks
    assert all(type(b.token_merge) is torch.nn.Identity for b in model.blocks)
    weight = merged.blocks[0].attn.qkv.weight
    assert weight.data_ptr() != model.blocks[0].attn.qkv.weight.data_ptr()
    # a copy of the merged model has its own state and gives the same numbers
    again = copy.deepcopy(merged)
    with torch.no_grad():
        torch.testing.assert_close(again(x), merged(x), atol=0, rtol=0)
    assert again.blocks[0].token_merge.state is not merged.blocks[0].token_merge.state
    with pytest.raises(ValueError, match="already merges"):
        merge_tokens(merged, 2)


def test_gradients_flow_through_merges():
    merged = merge_tokens(vit(), 4).train()
    loss = merged(images()).logsumexp(-1).sum()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in merged.parameters() if p.requires_grad)
    assert merged.blocks[1].mlp.fc1.weight.grad.abs().sum() > 0


def test_linformer_is_refused_in_one_line():
    with pytest.raises(ValueError, match="fixes the sequence length") as e:
        merge_tokens(random_linformer(), 2)
    assert "\n" not in str(e.value)


class NotOn(TorchFunctionMode):
    """Records every tensor a torch function returns on another device than ``device``."""

    def __init__(self, device: str):
        super().__init__()
        self.device, self.strays = torch.device(device), []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, Tensor) and t.device != self.device:
                self.strays.append(getattr(func, "__name__", str(func)))
        return out


def test_tensors_follow_the_model_device():
    """On the meta device every tensor made on the way (indices, sizes, sources, maps) must
    land on the model's device: any CPU tensor is a stray."""
    merged = merge_tokens(vit(distilled=True), 4).to("meta")
    x = torch.empty(2, 3, 16, 16, device="meta")
    with NotOn("meta") as mode, torch.no_grad():
        out = merged(x)
        maps = capture_attention(merged, x)
        trace = last_trace(merged)
        groups = merge_groups(merged, x[0])
    assert mode.strays == []
    assert out.device.type == maps[0].device.type == groups[0].device.type == "meta"
    assert maps[1].shape == (2, 2, 18, 18) and trace.source(1).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model = vit()
    x = images()
    merged = merge_tokens(model, 4)
    with torch.no_grad():
        want = merged(x)
        got = merged.to("cuda")(x.cuda())
    torch.testing.assert_close(got.cpu(), want, atol=1e-4, rtol=0)


def test_threads_keep_their_own_merge_state():
    merged = merge_tokens(vit(), 5)
    xs = [images(n, seed=n) for n in (1, 2, 3, 4)]
    with torch.no_grad():
        want = [merged(x) for x in xs]
    errors = []

    def run(k: int) -> None:
        try:
            for _ in range(30):
                for i in range(k, k + 4, 2):
                    with torch.no_grad():
                        if not torch.equal(merged(xs[i % 4]), want[i % 4]):
                            errors.append(i)
        except Exception as e:  # a shared state shows up as shape errors too
            errors.append(e)
    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---------------------------------------------------------------------------- maps and views

def test_attention_maps_and_rollout_are_mapped_back_to_the_input_tokens():
    model = vit()
    merged = merge_tokens(model, [6, 3])
    x = images(2)
    with torch.no_grad(), record_attention(merged, raw=True) as raw:
        merged(x)
    trace = last_trace(merged)
    maps = capture_attention(merged, x)
    assert [tuple(a.shape) for a in raw] == [(2, 3, 17, 17), (2, 2, 11, 11)]
    assert [tuple(a.shape) for a in maps] == [(2, 3, 17, 17), (2, 2, 17, 17)]
    torch.testing.assert_close(maps[0], raw[0], atol=0, rtol=0)     # nothing merged yet
    g, s = trace.groups[1], trace.sizes[1]
    for b in range(2):                                               # A0[i, j] by hand
        for i in range(17):
            for j in range(17):
                want = raw[1][b, :, g[b, i], g[b, j]] / s[b, g[b, j]]
                torch.testing.assert_close(maps[1][b, :, i, j], want, atol=1e-7, rtol=0)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(2, 2, 17), atol=1e-5, rtol=0)
    roll = attention_rollout(maps)
    assert roll.shape == (2, 17, 17) and torch.isfinite(roll).all()
    torch.testing.assert_close(rollout_row(maps, token_layout(merged)), roll[:, 0, 1:],
                               atol=1e-5, rtol=0)
    grad = gradient_rollout(merged, x)
    assert grad.shape == (2, 17, 17) and torch.isfinite(grad).all()
    # maps are mapped back as they are recorded: two forwards in one recording are both right
    y = images(1, seed=7)
    with torch.no_grad(), record_attention(merged) as both:
        merged(x)
        merged(y)
    assert len(both) == 4 and all(a.shape[-1] == 17 for a in both)
    torch.testing.assert_close(both[1], maps[1], atol=0, rtol=0)
    torch.testing.assert_close(both[3], capture_attention(merged, y)[1], atol=0, rtol=0)


def test_merge_groups_and_overlay():
    model = build_model("vit-tiny", 5)                              # 8×8 grid of patches
    merged = merge_tokens(model, 12)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    groups = merge_groups(merged, image)
    counts = tokens_per_block(merged)
    assert len(groups) == 4
    for g, n in zip(groups, counts[1:]):
        assert g.shape == (64,) and g.dtype == torch.long
        assert sorted(g.unique().tolist()) == list(range(n - 1))    # ids 0..G-1, all used
    # a group never splits again: blocks only merge
    for earlier, later in zip(groups, groups[1:]):
        for k in earlier.unique():
            assert later[earlier == k].unique().numel() == 1
    trace = trace_merges(merged, image[None])
    assert torch.equal(trace.sizes[-1][0, 1:], torch.bincount(groups[-1]).float())
    batch = merge_groups(merged, image.expand(2, -1, -1, -1))
    assert batch[-1].shape == (2, 64) and torch.equal(batch[-1][1], groups[-1])

    pic = merge_overlay(image, groups[-1], (8, 8), edges=False)
    assert pic.shape == (32, 32, 3) and pic.dtype == np.uint8
    g = groups[-1].reshape(8, 8).repeat_interleave(4, 0).repeat_interleave(4, 1)
    img = image.permute(1, 2, 0).double().numpy()
    for k in (0, int(groups[-1].max())):                            # fill = the group's mean
        want = (img[g.numpy() == k].mean(axis=0) * 255).round()
        assert (pic[g.numpy() == k] == want.astype(np.uint8)).all()
    edged = merge_overlay(image, groups[-1], (8, 8))
    assert (edged[0] != pic[0]).any() and edged.shape == pic.shape
    with pytest.raises(ValueError, match="do not fit"):
        merge_overlay(image, groups[-1][:10], (8, 8))
    with pytest.raises(ValueError, match="does not merge"):
        merge_groups(model, image)


# ---------------------------------------------------------------------------- loaded models

def test_timm_loaded_model_merges_as_the_same_weights():
    torch.manual_seed(0)
    model = randomise(VisionTransformer(ViTConfig.uniform(
        depth=2, num_heads=4, embed_dim=32, img_size=(16, 16), patch_size=4, num_classes=5,
        distilled=True)))
    loaded = load_timm_state_dict(model.state_dict(), mean=(0.5,) * 3, std=(0.5,) * 3,
                                  num_heads=4)
    assert loaded.prefix_tokens == ("cls", "dist")
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(merge_tokens(loaded, 0)(x), model(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(merge_tokens(loaded, 5)(x), merge_tokens(model, 5)(x),
                                   atol=1e-6, rtol=0)
        torch.testing.assert_close(merge_tokens(loaded, 5)(x), hand_forward(model, x, [5, 5]),
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls_name", ["ViTForImageClassification",
                                      "DeiTForImageClassificationWithTeacher"])
def test_hf_folder_from_save_pretrained(tmp_path, cls_name):
    transformers = pytest.importorskip("transformers")
    config_cls = transformers.ViTConfig if cls_name.startswith("ViT") else transformers.DeiTConfig
    torch.manual_seed(0)
    hf = getattr(transformers, cls_name)(config_cls(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=16, patch_size=4, num_labels=5, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.2)
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path)
    x = images()
    with torch.no_grad():
        want = hf((x - 0.5) / 0.5).logits
        torch.testing.assert_close(merge_tokens(model, 0)(x), want, atol=1e-4, rtol=0)
        merged = merge_tokens(model, 4)
        got = merged(x)
    torch.testing.assert_close(got, hand_forward(model, x, [4, 4]), atol=1e-5, rtol=0)
    P = model.num_prefix_tokens
    trace = last_trace(merged)
    assert all(torch.equal(g[:, :P], torch.arange(P).expand(3, -1)) for g in trace.groups)
    assert count_macs(merged) < count_macs(model)
    assert capture_attention(merged, x)[-1].shape == (3, 4, 16 + P, 16 + P)
    assert math.isfinite(float(got.sum()))
