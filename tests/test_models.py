"""Models: presets, shapes, parameter counts, closed-form MACs, checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import erf
from torch import nn

from core.models import (BlockConfig, CheckpointError, LinformerLayerConfig, MacCounter,
                         build_model, checkpoint_info, count_macs, list_models, load_model,
                         load_weights, save_model)
from core.models.linformer_vit import LinformerViT, with_layers
from core.models.vit import VisionTransformer, with_blocks


def vit_macs_closed_form(model: VisionTransformer) -> int:
    """MACs of one image, by hand: patch conv, per block qkv / QKᵀ / AV / proj / MLP, head."""
    c = model.config
    N = model.patch_embed.num_patches
    T = N + 1
    D = c.embed_dim
    macs = N * c.in_chans * c.patch_size ** 2 * D
    for b in c.blocks:
        H, dq, dv, h = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
        macs += T * D * H * (2 * dq + dv)      # qkv
        macs += H * T * T * dq                 # Q Kᵀ
        macs += H * T * T * dv                 # A V
        macs += T * H * dv * D                 # proj
        macs += 2 * T * D * h                  # fc1, fc2
    return macs + D * c.num_classes


def linear_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def test_list_and_unknown_model():
    names = list_models()
    for n in ["vit-tiny", "deit-tiny", "deit-small", "deit-base", "linformer-vit-paper",
              "linformer-vit-tiny"]:
        assert n in names
    with pytest.raises(ValueError, match="unknown model 'resnet'.*vit-tiny"):
        build_model("resnet", 10)


# ---------------------------------------------------------------------------- forward by hand
# numpy in float64, from the state dict and the formulas (ViT: Dosovitskiy et al. 2021;
# Linformer: Wang et al. 2020, keys and values projected along the sequence by E, F)

def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))  # exact GELU


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _patches(model: nn.Module, x: torch.Tensor, order: str) -> np.ndarray:
    """Normalised image → (B, N, C·p·p) patch rows, row-major over the grid; inside a row the
    values in ``order`` "cpp" (a convolution's weight layout) or "ppc" (vit-pytorch's)."""
    B, C, H, W = x.shape
    p = model.config.patch_size
    img = (x.double().numpy() - np.array(model.config.mean)[:, None, None]) \
        / np.array(model.config.std)[:, None, None]
    grid = img.reshape(B, C, H // p, p, W // p, p)
    grid = grid.transpose(0, 2, 4, 1, 3, 5) if order == "cpp" else grid.transpose(0, 2, 4, 3, 5, 1)
    return grid.reshape(B, (H // p) * (W // p), C * p * p)


def vit_by_hand(model: VisionTransformer, x: torch.Tensor) -> np.ndarray:
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    c = model.config
    assert c.class_token and c.global_pool == "token" and not c.distilled \
        and c.init_values is None  # what this hand forward covers
    D = c.embed_dim
    t = _patches(model, x, "cpp") @ sd["patch_embed.proj.weight"].reshape(D, -1).T \
        + sd["patch_embed.proj.bias"]
    cls = np.broadcast_to(sd["cls_token"], (t.shape[0], 1, D))
    t = np.concatenate([cls, t], 1) + sd["pos_embed"]
    for i, b in enumerate(c.blocks):
        w = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = _layer_norm(t, w["norm1.weight"], w["norm1.bias"], c.norm_eps)
        qkv = h @ w["attn.qkv.weight"].T + w["attn.qkv.bias"]
        H, dq, dv = b.num_heads, b.qk_dim, b.v_dim
        heads = []
        for j in range(H):
            q = qkv[..., j * dq:(j + 1) * dq]
            k = qkv[..., H * dq + j * dq:H * dq + (j + 1) * dq]
            v = qkv[..., 2 * H * dq + j * dv:2 * H * dq + (j + 1) * dv]
            heads.append(_softmax(q @ k.transpose(0, 2, 1) / np.sqrt(dq)) @ v)
        t = t + np.concatenate(heads, -1) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
        h = _layer_norm(t, w["norm2.weight"], w["norm2.bias"], c.norm_eps)
        t = t + _gelu(h @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"]) @ w["mlp.fc2.weight"].T \
            + w["mlp.fc2.bias"]
    t = _layer_norm(t, sd["norm.weight"], sd["norm.bias"], c.norm_eps)
    return t[:, 0] @ sd["head.weight"].T + sd["head.bias"]


def linformer_by_hand(model: LinformerViT, x: torch.Tensor) -> np.ndarray:
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    c, eps = model.config, 1e-5  # the linformer package's LayerNorms keep torch's default eps
    t = _patches(model, x, "ppc") @ sd["patch_embed.proj.weight"].T + sd["patch_embed.proj.bias"]
    cls = np.broadcast_to(sd["cls_token"], (t.shape[0], 1, c.dim))
    t = np.concatenate([cls, t], 1) + sd["pos_embed"]
    for i, layer in enumerate(c.layers):
        pre = f"transformer.net.layers.{i}."
        a = {k[len(pre + "0."):]: v for k, v in sd.items() if k.startswith(pre + "0.")}
        f = {k[len(pre + "1."):]: v for k, v in sd.items() if k.startswith(pre + "1.")}
        h = _layer_norm(t, a["norm.weight"], a["norm.bias"], eps)
        q = h @ a["fn.to_q.weight"].T
        k = np.einsum("bnd,nk->bkd", h @ a["fn.to_k.weight"].T, a["fn.proj_k"])  # (B, k, ·)
        v = np.einsum("bnd,nk->bkd", h @ a["fn.to_v.weight"].T, a["fn.proj_v"])
        dh = layer.dim_head
        heads = [_softmax(q[..., j * dh:(j + 1) * dh] @ k[..., j * dh:(j + 1) * dh]
                          .transpose(0, 2, 1) / np.sqrt(dh)) @ v[..., j * dh:(j + 1) * dh]
                 for j in range(layer.heads)]
        t = t + np.concatenate(heads, -1) @ a["fn.to_out.weight"].T + a["fn.to_out.bias"]
        h = _layer_norm(t, f["norm.weight"], f["norm.bias"], eps)
        t = t + _gelu(h @ f["fn.w1.weight"].T + f["fn.w1.bias"]) @ f["fn.w2.weight"].T \
            + f["fn.w2.bias"]
    t = _layer_norm(t, sd["norm.weight"], sd["norm.bias"], eps)
    return t[:, 0] @ sd["head.weight"].T + sd["head.bias"]


@pytest.mark.parametrize("name, by_hand", [("vit-tiny", vit_by_hand),
                                           ("linformer-vit-tiny", linformer_by_hand)])
def test_tiny_presets_forward_equals_a_hand_forward(name, by_hand):
    """The logits are those of the paper's formulas written out in numpy (float64) on the
    model's own weights, randomised first so that no block is close to the identity."""
    torch.manual_seed(0)
    m = build_model(name, num_classes=7).eval()
    assert m.input_shape == (3, 32, 32)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.rand(3, *m.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = m(x)
    want = by_hand(m, x)
    assert want.shape == (3, 7) and want.std() > 0.1  # a lively function, not a constant
    np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-5, atol=2e-5)


def test_linformer_paper_matches_seed_000():
    m = build_model("linformer-vit-paper", num_classes=38)
    assert m.input_shape == (3, 224, 224)
    assert m.config.seq_len == 50
    assert linear_weights(m) == 2_757_376
    attn = m.transformer.net.layers[0][0].fn
    assert (attn.heads, attn.k, attn.seq_len) == (8, 64, 50)
    assert len(m.transformer.net.layers) == 12
    assert m(torch.rand(1, 3, 224, 224)).shape == (1, 38)


@pytest.mark.parametrize("name,dim,heads", [("deit-tiny", 192, 3), ("deit-small", 384, 6)])
def test_deit_presets(name, dim, heads):
    m = build_model(name, num_classes=1000)
    c = m.config
    assert (c.embed_dim, c.depth, c.patch_size, c.img_size) == (dim, 12, 16, (224, 224))
    assert all(b.num_heads == heads and b.mlp_hidden == 4 * dim for b in c.blocks)
    assert m.pos_embed.shape == (1, 197, dim)


def test_macs_closed_form_and_paper_figures():
    m = build_model("vit-tiny", num_classes=6)
    assert count_macs(m) == vit_macs_closed_form(m)
    deit = build_model("deit-tiny", num_classes=1000)
    assert count_macs(deit) == vit_macs_closed_form(deit)
    assert round(count_macs(deit) / 1e9, 2) == 1.25  # the paper's "1.3 GFLOPs"


def test_free_per_layer_sizes():
    base = build_model("vit-tiny", num_classes=5)
    blocks = [BlockConfig(4, 16, 16, 128), BlockConfig(2, 8, 12, 40),
              BlockConfig(3, 5, 16, 64), BlockConfig(1, 16, 3, 10)]
    m = VisionTransformer(with_blocks(base.config, blocks, embed_dim=48))
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert m.blocks[1].attn.qkv.out_features == 2 * (2 * 8 + 12)
    assert count_macs(m) == vit_macs_closed_form(m)
    lin = build_model("linformer-vit-tiny", num_classes=5)
    layers = [LinformerLayerConfig(4, 16, 256), LinformerLayerConfig(4, 8, 100),
              LinformerLayerConfig(2, 8, 256), LinformerLayerConfig(4, 16, 30)]
    lm = LinformerViT(with_layers(lin.config, layers))
    assert lm(torch.rand(2, 3, 32, 32)).shape == (2, 5)
    assert lm.transformer.net.layers[1][0].fn.dim_head == 8
    assert lm.transformer.net.layers[3][1].fn.w1.out_features == 30


def test_mac_counter_counts_each_kind_of_product():
    """MacCounter by hand: linear (tokens × in × out), conv (outputs × C_in·k·k), matmul,
    einsum (product of index sizes) and fused attention (Q Kᵀ plus A V)."""
    import torch.nn.functional as F

    x, w = torch.rand(2, 5, 7), torch.rand(3, 7)
    q, k, v = torch.rand(2, 4, 6, 8), torch.rand(2, 4, 9, 8), torch.rand(2, 4, 9, 5)
    with MacCounter() as c:
        F.linear(x, w)
    assert c.macs == 2 * 5 * 7 * 3
    with MacCounter() as c:
        F.conv2d(torch.rand(1, 3, 8, 8), torch.rand(4, 3, 2, 2), stride=2)
    assert c.macs == 4 * 4 * 4 * 3 * 2 * 2
    with MacCounter() as c:
        q @ k.transpose(-2, -1)
        torch.einsum("bhnd,bhkd->bhnk", q, k)
    assert c.macs == 2 * (2 * 4 * 6 * 9 * 8)
    with MacCounter() as c:
        F.scaled_dot_product_attention(q, k, v)
    assert c.macs == 2 * 4 * 6 * 9 * (8 + 5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="not divisible by the patch size 4"):
        build_model("vit-tiny", num_classes=5, img_size=30)
    with pytest.raises(ValueError, match="not divisible by the patch size 32"):
        build_model("linformer-vit-paper", num_classes=5, img_size=200)
    with pytest.raises(ValueError, match="at least 2"):
        build_model("vit-tiny", num_classes=1)


TIMM_BLOCK_KEYS = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                   "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                   "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]


def test_state_dict_uses_timm_names():
    m = build_model("deit-tiny", num_classes=1000)
    expected = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias", "head.weight", "head.bias"}
    expected |= {f"blocks.{i}.{k}" for i in range(12) for k in TIMM_BLOCK_KEYS}
    assert set(m.state_dict()) == expected
    assert m.state_dict()["blocks.0.attn.qkv.weight"].shape == (576, 192)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_timm_format_weights(tmp_path, suffix):
    torch.manual_seed(0)
    src = build_model("vit-tiny", num_classes=6)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"model": sd}, path)  # DeiT's release wraps the state dict in "model"
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path))
    torch.manual_seed(1)
    dst = build_model("vit-tiny", num_classes=6)
    x = torch.rand(2, 3, 32, 32)
    assert not torch.allclose(src(x), dst(x))
    load_weights(dst, path)
    assert torch.equal(src.eval()(x), dst.eval()(x))


def test_checkpoint_errors(tmp_path):
    tiny = build_model("vit-tiny", num_classes=6)
    other = build_model("vit-tiny", num_classes=6, embed_dim=32, num_heads=2)
    p = save_model(other, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"55 mis-shaped: blocks.0.attn.proj.bias: checkpoint \(32,\) vs model \(64,\)"):
        load_weights(tiny, p)
    lin = save_model(build_model("linformer-vit-tiny", 6), tmp_path / "lin.safetensors")
    with pytest.raises(CheckpointError, match="missing keys.*unexpected keys"):
        load_weights(tiny, lin)
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read corrupt.safetensors"):
        load_weights(tiny, bad)
    pickled = tmp_path / "evil.pth"
    torch.save({"model": tiny.state_dict(), "obj": nn.ReLU()}, pickled)  # a pickled module
    with pytest.raises(CheckpointError, match="weights-only"):
        load_weights(tiny, pickled)
    with pytest.raises(CheckpointError, match="not found"):
        load_weights(tiny, tmp_path / "nope.safetensors")
    # a checkpoint without PruneLens metadata cannot rebuild an architecture
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()},
              str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no PruneLens architecture"):
        load_model(tmp_path / "plain.safetensors")
    assert checkpoint_info(tmp_path / "plain.safetensors") == {}
    info = checkpoint_info(p)
    assert info["prunelens_family"] == "vit" and '"embed_dim": 32' in info["prunelens_config"]
    for unreadable in (bad, pickled):
        with pytest.raises(CheckpointError):
            checkpoint_info(unreadable)
    # exclude the head to fine-tune on another class count
    six = save_model(tiny, tmp_path / "six.safetensors")
    ten = build_model("vit-tiny", num_classes=10)
    load_weights(ten, six, exclude=("head.",))
    assert torch.equal(ten.patch_embed.proj.weight, tiny.patch_embed.proj.weight)


@pytest.mark.parametrize("name", ["vit-tiny", "linformer-vit-tiny"])
def test_save_load_roundtrip_keeps_custom_shapes(tmp_path, name):
    torch.manual_seed(0)
    m = build_model(name, num_classes=4).eval()
    if name == "vit-tiny":
        m = VisionTransformer(with_blocks(m.config, [BlockConfig(2, 6, 10, 33)] * 4,
                                          embed_dim=40)).eval()
    path = save_model(m, tmp_path / "m.safetensors")
    back = load_model(path).eval()
    assert type(back) is type(m) and back.config == m.config
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m(x), back(x))


def test_save_model_bakes_masks_and_leaves_model_intact(tmp_path):
    """A parametrized (masked) model saves mask ⊙ weight under timm's names, and stays usable."""
    from torch.nn.utils import parametrize

    class Mask(nn.Module):
        def __init__(self, mask: torch.Tensor):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return self.mask * w

    torch.manual_seed(0)
    m = build_model("vit-tiny", num_classes=4).eval()
    lin = m.blocks[0].attn.qkv
    mask = torch.rand_like(lin.weight) > 0.5
    parametrize.register_parametrization(lin, "weight", Mask(mask))
    x = torch.rand(2, 3, 32, 32)
    before = m(x)
    path = save_model(m, tmp_path / "masked.safetensors")
    assert torch.equal(m(x), before)                      # the in-memory model still works
    back = load_model(path).eval()
    assert torch.equal(back.blocks[0].attn.qkv.weight, lin.weight)
    assert (back.blocks[0].attn.qkv.weight[~mask] == 0).all()
    torch.testing.assert_close(back(x), before)
