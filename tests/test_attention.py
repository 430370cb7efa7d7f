"""Attention capture, Linformer's effective matrix, rollout and gradient rollout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.attention import (attention_modules, attention_rollout, capture_attention,
                            cls_attention, gradient_rollout, overlay, patch_heatmap,
                            record_attention, rollout_map, rollout_row)
from core.models.adapter import TokenLayout
from core.models import build_model


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return build_model("vit-tiny", num_classes=5)


@pytest.fixture
def lin():
    torch.manual_seed(0)
    return build_model("linformer-vit-tiny", num_classes=5)


def test_capture_equals_explicit_softmax(vit):
    x = torch.rand(2, 3, 32, 32)
    maps = capture_attention(vit, x)
    assert len(maps) == len(attention_modules(vit)) == 4
    # independent: run the blocks by hand and form softmax(q kᵀ / √d) explicitly
    with torch.no_grad():
        t = vit.patch_embed((x - vit.pixel_mean) / vit.pixel_std)
        t = torch.cat([vit.cls_token.expand(2, -1, -1), t], 1) + vit.pos_embed
        for blk, a in zip(vit.blocks, maps):
            h = blk.norm1(t)
            H, d = blk.attn.num_heads, blk.attn.qk_dim
            q, k, _ = blk.attn.qkv(h).split([H * d, H * d, H * blk.attn.v_dim], -1)
            q = q.reshape(2, 65, H, d).permute(0, 2, 1, 3)
            k = k.reshape(2, 65, H, d).permute(0, 2, 1, 3)
            expected = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
            assert a.shape == (2, H, 65, 65)
            torch.testing.assert_close(a, expected, atol=1e-6, rtol=1e-5)
            t = blk(t)


def test_hooks_removed_and_mode_restored(vit):
    vit.train()
    before = hook_count(vit)
    capture_attention(vit, torch.rand(1, 3, 32, 32))
    assert hook_count(vit) == before and vit.training
    with pytest.raises(ValueError, match="do not fit this model"):
        capture_attention(vit, torch.rand(1, 3, 31, 31))  # the forward raises
    assert hook_count(vit) == before and vit.training
    with pytest.raises(ValueError, match="do not fit this model"):
        gradient_rollout(vit, torch.rand(1, 4, 32, 32))
    assert hook_count(vit) == before


def test_linformer_effective_matrix_reproduces_output(lin):
    """out = to_out(concat_h (P̄ Fᵀ)_h V_h) must equal the module's own output."""
    x = torch.rand(2, 3, 32, 32)
    inputs, outputs = [], []

    def keep(_m, i, o) -> None:
        inputs.append(i[0])
        outputs.append(o)

    handles = [m.register_forward_hook(keep) for m in attention_modules(lin)]
    try:
        eff = capture_attention(lin, x)
        raw = capture_attention(lin, x, raw=True)
        inputs, outputs = inputs[:4], outputs[:4]
    finally:
        for h in handles:
            h.remove()
    for attn, e, r, xin, out in zip(attention_modules(lin), eff, raw, inputs, outputs):
        B, N, _ = xin.shape
        H, dh = attn.heads, attn.dim_head
        assert e.shape == (B, H, N, N) and r.shape == (B, H, N, attn.k)
        torch.testing.assert_close(r.sum(-1), torch.ones(B, H, N))  # softmax over k keys
        v = attn.to_v(xin).reshape(B, N, H, dh).transpose(1, 2)       # (B, H, N, dh)
        mixed = (e @ v).transpose(1, 2).reshape(B, N, H * dh)
        torch.testing.assert_close(attn.to_out(mixed), out, atol=1e-5, rtol=1e-4)
    assert (torch.stack(eff) < 0).any()  # signed, unlike softmax attention


def rollout_by_hand(maps: list[np.ndarray], discard: float = 0.0,
                    fusion: str = "mean") -> np.ndarray:
    """Abnar & Zuidema on one image, loops and numpy only. maps: (H, N, N) per layer; heads of
    |A| fused by their ``fusion`` (mean, max or min)."""
    N = maps[0].shape[-1]
    R = np.eye(N)
    for a in maps:
        a = getattr(np.abs(a), fusion)(0)
        if discard:
            flat = a.flatten().copy()
            order = np.argsort(flat, kind="stable")[: int(flat.size * discard)]
            keep = flat[0]
            flat[order] = 0
            flat[0] = keep
            a = flat.reshape(N, N)
        a = 0.5 * a + 0.5 * np.eye(N)
        for i in range(N):
            a[i] = a[i] / a[i].sum()
        R = a @ R
    return R


@pytest.mark.parametrize("discard", [0.0, 0.6])
def test_rollout_matches_hand_computation(discard):
    g = torch.Generator().manual_seed(0)
    maps = [torch.rand(1, 3, 6, 6, generator=g, dtype=torch.float64).softmax(-1)
            for _ in range(3)]
    got = attention_rollout(maps, discard_ratio=discard)[0].numpy()
    np.testing.assert_allclose(got, rollout_by_hand([m[0].numpy() for m in maps], discard),
                               rtol=1e-10)
    np.testing.assert_allclose(got.sum(-1), np.ones(6), rtol=1e-10)


@pytest.mark.parametrize("layout", [TokenLayout(), TokenLayout(("cls", "dist"), 0),
                                    TokenLayout(("reg0", "cls", "reg1"), 1),
                                    TokenLayout((), None), TokenLayout(("reg0",), None)])
def test_rollout_row_equals_the_row_of_the_hand_rollout(layout):
    """The sweep's vector–matrix rollout row is the query row of the full rollout (float64
    by hand), also for signed (Linformer-like) maps and layouts without a class token."""
    g = torch.Generator().manual_seed(1)
    N, p = 7, layout.num_prefix
    for signed in (False, True):
        maps = [torch.randn(2, 3, N, N, generator=g, dtype=torch.float64) if signed else
                torch.rand(2, 3, N, N, generator=g, dtype=torch.float64).softmax(-1)
                for _ in range(3)]
        got = rollout_row(maps, layout).numpy()
        for b in range(2):
            R = rollout_by_hand([np.abs(m[b].numpy()).mean(0)[None] for m in maps], 0.0)
            want = R[layout.cls_index, p:] if layout.cls_index is not None \
                else R[p:, p:].mean(0)
            np.testing.assert_allclose(got[b], want, rtol=1e-10)
        np.testing.assert_allclose(got, rollout_map(attention_rollout(maps), layout).numpy(),
                                   rtol=1e-10)


def test_cls_attention_row_path_equals_full_map(vit, lin):
    x = torch.rand(2, 3, 32, 32)
    for model in (vit, lin):
        a = capture_attention(model, x)[-1]
        for head in (None, 1):
            full = a.abs().mean(1) if head is None else a[:, head].abs()
            torch.testing.assert_close(cls_attention(a, head), full[:, 0, 1:])


def test_rollout_options_and_errors(vit, lin):
    """Every head fusion with 90% discarded, on the models' own maps (Linformer's signed),
    equals the loop by hand image by image (float64 both, so the discard cuts alike)."""
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    for model in (vit, lin):
        maps = [m.double() for m in capture_attention(model, x)]
        for fusion in ("mean", "max", "min"):
            r = attention_rollout(maps, head_fusion=fusion, discard_ratio=0.9)
            for b in range(2):
                want = rollout_by_hand([m[b].numpy() for m in maps], 0.9, fusion)
                np.testing.assert_allclose(r[b].numpy(), want, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(maps, head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        attention_rollout(maps, discard_ratio=1.0)


def test_gradient_rollout_matches_explicit(vit):
    x = torch.rand(2, 3, 32, 32)
    target = torch.tensor([1, 3])
    got = gradient_rollout(vit, x, target=target)
    # independent: keep the probabilities from record_attention, grads by autograd
    vit.eval()
    with record_attention(vit) as maps:
        logits = vit(x)
    grads = torch.autograd.grad(logits[[0, 1], target].sum(), maps)
    fused = [(a * g).mean(1).clamp(min=0).detach().numpy() for a, g in zip(maps, grads)]
    for b in range(2):
        expected = rollout_by_hand([f[b][None] for f in fused])
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in vit.parameters())
    assert gradient_rollout(build_model("linformer-vit-tiny", 5), x).shape == (2, 65, 65)


def bilinear_by_hand(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D bilinear resizing with half-pixel centres (PyTorch's
    ``align_corners=False``): output i samples input ``(i + 0.5) · n_in / n_out − 0.5``,
    clamped at the first pixel."""
    M = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(src)), n_in - 1)
        frac = src - lo
        M[i, lo] += 1 - frac
        M[i, min(lo + 1, n_in - 1)] += frac
    return M


def test_heatmap_and_overlay(vit):
    """The heat map is the CLS row over its max, resized by the explicit bilinear matrices
    (rows and columns); the overlay is 50% image + 50% jet colours in 0..255; the rollout map
    is the CLS row of the hand rollout without its own column."""
    from matplotlib import colormaps

    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    maps = capture_attention(vit, x)
    row = cls_attention(maps[-1])
    heat = patch_heatmap(row, vit.grid_size, (32, 32))
    grid = row[0].double().numpy().reshape(8, 8)
    M = bilinear_by_hand(8, 32)
    np.testing.assert_allclose(heat[0].numpy(), M @ (grid / grid.max()) @ M.T, atol=1e-6)
    roll = rollout_map(attention_rollout(maps))
    want = rollout_by_hand([m[0].double().numpy() for m in maps])[0, 1:]
    np.testing.assert_allclose(roll[0].numpy(), want, rtol=1e-5)
    img = overlay(x[0], heat[0])
    colours = colormaps["jet"](heat[0].numpy())[..., :3]
    blend = 255 * (0.5 * x[0].permute(1, 2, 0).numpy() + 0.5 * colours)
    assert img.dtype == np.uint8
    assert np.abs(img.astype(int) - np.round(blend)).max() <= 1  # float32 vs float64 rounding
    with pytest.raises(ValueError, match="does not fit grid"):
        patch_heatmap(row, (7, 7), (32, 32))
