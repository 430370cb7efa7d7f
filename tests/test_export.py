"""save_model(format="hf" | "onnx"): transformers and onnxruntime compute the same logits."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

transformers = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from core.models import CheckpointError, build_model, load_model, save_model  # noqa: E402
from core.models.vit import BlockConfig, VisionTransformer, ViTConfig  # noqa: E402
from core.pruning import prune  # noqa: E402
from tests._tiny import random_vit, randomise  # noqa: E402


class Mask(nn.Module):
    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mask * w


def tiny(seed: int = 0, **kw) -> VisionTransformer:
    """16×16 ViT, 4×4 patches, width 32, 2 blocks of 4 heads, random N(0, 0.3²) weights."""
    torch.manual_seed(seed)
    args = dict(img_size=(16, 16), patch_size=4, num_classes=5, embed_dim=32,
                blocks=(BlockConfig(4, 8, 8, 48),) * 2, mean=(0.4, 0.5, 0.6),
                std=(0.2, 0.3, 0.25))
    args.update(kw)
    return randomise(VisionTransformer(ViTConfig(**args)))


def masked(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for lin in (model.blocks[0].attn.qkv, model.blocks[1].mlp.fc1):
        parametrize.register_parametrization(
            lin, "weight", Mask((torch.rand(lin.weight.shape, generator=g) > 0.5).float()))
    return model


def hf_logits_of(folder, x: torch.Tensor, **kw) -> torch.Tensor:
    """Load ``folder`` with transformers' Auto classes (its defaults: sdpa attention, the
    config's dtype); logits for images x in [0, 1], with the folder's own image processor
    settings. ``output_attentions=True``: (logits, attentions), loaded with eager attention."""
    attn = {"attn_implementation": "eager"} if kw.get("output_attentions") else {}
    hf = transformers.AutoModelForImageClassification.from_pretrained(folder, **attn).eval()
    assert next(hf.parameters()).dtype == torch.float32
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    m = torch.tensor(pre["image_mean"]).view(1, -1, 1, 1)
    s = torch.tensor(pre["image_std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        out = hf((x * 255 * pre["rescale_factor"] - m) / s, **kw)
    return (out.logits, out.attentions) if kw.get("output_attentions") else out.logits


def test_the_oracle_is_transformers_5():
    """The Hugging Face tests check against the transformers of requirements.txt: 5.x."""
    assert int(transformers.__version__.split(".")[0]) >= 5, transformers.__version__


def x16(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("variant", ["dense", "masked", "distilled", "deit", "no-qkv-bias"])
def test_hf_export_loads_in_transformers_with_the_same_logits(tmp_path, variant):
    model = {"dense": lambda: tiny(), "masked": lambda: masked(tiny()),
             "distilled": lambda: tiny(distilled=True),
             "deit": lambda: tiny(distilled=True, dist_head=False),
             "no-qkv-bias": lambda: tiny(qkv_bias=False, norm_eps=1e-12)}[variant]()
    folder = save_model(model, tmp_path / "hf", format="hf")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == [{"distilled": "DeiTForImageClassificationWithTeacher",
                                     "deit": "DeiTForImageClassification"}.get(
                                         variant, "ViTForImageClassification")]
    _, info = transformers.AutoModelForImageClassification.from_pretrained(
        folder, output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    x = x16()
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(hf_logits_of(folder, x), want, atol=1e-5, rtol=0)
    assert "pruned_heads" not in cfg and "head_dim" not in cfg  # transformers 4 reads it too
    if variant == "masked":  # zeros baked in, and the model itself still masked
        assert parametrize.is_parametrized(model.blocks[0].attn.qkv)
    back = load_model(folder)  # and our own reader agrees
    torch.testing.assert_close(back(x).detach(), want, atol=1e-5, rtol=0)


def keep_heads(dense: VisionTransformer, keep: dict[int, list[int]]
               ) -> tuple[VisionTransformer, VisionTransformer]:
    """(``dense`` shrunk to heads ``keep[i]`` of block i by copying their weights, ``dense``
    with the other heads' outputs masked to zero): the same function, computed two ways."""
    d, C = 8, dense.config.embed_dim
    small = VisionTransformer(ViTConfig(**{**dense.config.to_dict(), "blocks": tuple(
        BlockConfig(len(keep[i]), d, d, b.mlp_hidden) for i, b in enumerate(dense.config.blocks)),
        "img_size": dense.config.img_size, "mean": dense.config.mean,
        "std": dense.config.std})).eval()
    sd = dense.state_dict()
    alive = torch.zeros(len(keep), C)
    for i, heads in keep.items():
        rows = torch.cat([torch.arange(h * d, h * d + d) for h in heads])
        qkv_rows = torch.cat([rows, rows + C, rows + 2 * C])
        sd[f"blocks.{i}.attn.qkv.weight"] = sd[f"blocks.{i}.attn.qkv.weight"][qkv_rows]
        sd[f"blocks.{i}.attn.qkv.bias"] = sd[f"blocks.{i}.attn.qkv.bias"][qkv_rows]
        sd[f"blocks.{i}.attn.proj.weight"] = sd[f"blocks.{i}.attn.proj.weight"][:, rows]
        alive[i, rows] = 1
    small.load_state_dict(sd)
    for i in keep:
        parametrize.register_parametrization(dense.blocks[i].attn.proj, "weight",
                                             Mask(alive[i].expand(C, C).clone()))
    return small, dense.eval()


@pytest.mark.parametrize("distilled", [False, True])
def test_same_heads_in_every_block_export_with_head_dim(tmp_path, distilled):
    """Keep heads {0, 2} of block 0 and {1, 3} of block 1: transformers 5 builds 2 heads of 8
    in a width-32 model from config.head_dim, with the logits and attention maps of the masked
    dense model, and the file holds only the kept heads."""
    small, masked_dense = keep_heads(tiny(distilled=distilled), {0: [0, 2], 1: [1, 3]})
    x = x16()
    with torch.no_grad():
        want = masked_dense(x)
        torch.testing.assert_close(small(x), want, atol=1e-5, rtol=0)
    folder = save_model(small, tmp_path / "hf", format="hf")
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["head_dim"], cfg["hidden_size"]) == (2, 8, 32)
    assert "pruned_heads" not in cfg
    hf = transformers.AutoModelForImageClassification.from_pretrained(folder)
    assert type(hf).__name__ == ("DeiTForImageClassificationWithTeacher" if distilled
                                 else "ViTForImageClassification")
    encoder = hf.deit if distilled else hf.vit
    assert [layer.attention.q_proj.out_features for layer in encoder.layers] == [16, 16]
    logits, maps = hf_logits_of(folder, x, output_attentions=True)
    torch.testing.assert_close(logits, want, atol=1e-5, rtol=0)
    from core.attention import capture_attention
    n = 16 + 1 + distilled  # patches + class (+ distillation) token
    for a, b in zip(capture_attention(small, x), maps, strict=True):
        assert a.shape == b.shape == (3, 2, n, n)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    back = load_model(folder)
    assert [b.num_heads for b in back.config.blocks] == [2, 2]
    torch.testing.assert_close(back(x).detach(), want, atol=1e-5, rtol=0)
    dense_file = save_model(tiny(distilled=distilled), tmp_path / "dense",
                            format="hf") / "model.safetensors"
    assert (folder / "model.safetensors").stat().st_size < dense_file.stat().st_size


def test_per_block_head_counts_are_refused_as_transformers_5_cannot_build_them(tmp_path):
    """Blocks with 2 and 3 heads: transformers 4 expressed that with pruned_heads; transformers
    5 ignores that field and its per-layer overrides do not reach ViT's layers, so format="hf"
    refuses (nothing written) and points to the formats that keep the model."""
    small, masked_dense = keep_heads(tiny(), {0: [0, 2], 1: [1, 2, 3]})
    with pytest.raises(CheckpointError, match=r"per-block head counts \[2, 3\] \(transformers 5 "
                                              r"has no pruned_heads\); save with format='onnx' "
                                              r"or format='prunelens' instead"):
        save_model(small, tmp_path / "hf", format="hf")
    assert not (tmp_path / "hf").exists()
    # transformers 5 itself: pruned_heads builds full-size layers; per-layer head counts are
    # refused when the model is built
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=48, image_size=16, patch_size=4,
                                    pruned_heads={"0": [1, 3], "1": [0]})
    full = transformers.ViTForImageClassification(config)
    assert [layer.attention.q_proj.out_features for layer in full.vit.layers] == [32, 32]
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=48, image_size=16, patch_size=4,
                                    per_layer_config={0: {"num_attention_heads": 2}})
    with pytest.raises(Exception, match="per-layer attribute"):
        transformers.ViTForImageClassification(config)
    # the formats that keep it
    x = x16()
    with torch.no_grad():
        want = masked_dense(x)
    back = load_model(save_model(small, tmp_path / "small.safetensors"))
    torch.testing.assert_close(back(x).detach(), want, atol=1e-5, rtol=0)
    onnx_file = save_model(small, tmp_path / "small.onnx", format="onnx")
    np.testing.assert_allclose(run_onnx(onnx_file, x), want.numpy(), atol=1e-4, rtol=0)


def test_snp_exports_to_hf_while_every_block_keeps_one_shape(tmp_path):
    torch.manual_seed(0)
    model = build_model("vit-tiny", 5).eval()
    images = torch.rand(4, 3, 32, 32)
    heads_only = prune(model, "snp", 0.0, images=images, heads=0.5).model.eval()
    assert {b.num_heads for b in heads_only.config.blocks} == {2}
    x = torch.rand(2, 3, 32, 32)
    folder = save_model(heads_only, tmp_path / "heads", format="hf")
    assert json.loads((folder / "config.json").read_text())["num_attention_heads"] == 2
    with torch.no_grad():
        torch.testing.assert_close(hf_logits_of(folder, x), heads_only(x), atol=1e-5, rtol=0)
    # SNP shrinks every block alike here (4 heads of 11, FFN 90): head_dim expresses it
    shrunk = prune(model, "snp", 0.3, images=images).model.eval()
    assert {(b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden)
            for b in shrunk.config.blocks} == {(4, 11, 11, 90)}
    folder = save_model(shrunk, tmp_path / "shrunk", format="hf")
    cfg = json.loads((folder / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["head_dim"], cfg["intermediate_size"]) == (4, 11, 90)
    with torch.no_grad():
        torch.testing.assert_close(hf_logits_of(folder, x), shrunk(x), atol=1e-5, rtol=0)
    # blocks of different shapes (3 heads of 8/6 and 2 of 5/7, FFN 40 and 32) are refused
    with pytest.raises(CheckpointError, match=r"cannot express.*q/k or v dims.*per-block head "
                                              r"counts \[3, 2\].*per-block FFN widths \[40, 32\]"
                                              r".*format='onnx' or format='prunelens'"):
        save_model(random_vit(), tmp_path / "x", format="hf")
    assert not (tmp_path / "x").exists()  # nothing half-written
    for other in (tiny(num_reg_tokens=2), tiny(init_values=0.1),
                  tiny(class_token=False, global_pool="avg")):
        with pytest.raises(CheckpointError, match="cannot express"):
            save_model(other, tmp_path / "x", format="hf")
    with pytest.raises(CheckpointError, match="transformers has no linformer-vit model"):
        save_model(build_model("linformer-vit-tiny", 5), tmp_path / "x", format="hf")
    with pytest.raises(ValueError, match="unknown format 'tflite'"):
        save_model(model, tmp_path / "x", format="tflite")


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x.numpy()})[0]


@pytest.mark.parametrize("variant", ["dense", "masked", "shrunk", "registers+layerscale",
                                     "distilled", "linformer"])
def test_onnx_export_matches_pytorch(tmp_path, variant):
    model = {"dense": lambda: tiny(), "masked": lambda: masked(tiny()),
             "shrunk": lambda: random_vit(),
             "registers+layerscale": lambda: tiny(num_reg_tokens=2, init_values=0.5,
                                                  class_token=False, global_pool="avg"),
             "distilled": lambda: tiny(distilled=True),
             "linformer": lambda: randomise(build_model("linformer-vit-tiny", 5,
                                                        img_size=16))}[variant]()
    path = save_model(model, tmp_path / "m.onnx", format="onnx")
    proto = onnx.load(str(path))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for n in (1, 5):  # dynamic batch axis
        x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(n))
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(run_onnx(path, x), want, atol=1e-4, rtol=0)


def test_onnx_of_a_shrunk_or_masked_model_holds_each_weight_once(tmp_path):
    torch.manual_seed(0)
    dense = build_model("vit-tiny", 5).eval()
    shrunk = prune(dense, "snp", 0.5, images=torch.rand(4, 3, 32, 32)).model.eval()
    sizes = {name: save_model(m, tmp_path / f"{name}.onnx", format="onnx").stat().st_size
             for name, m in (("dense", dense), ("shrunk", shrunk), ("masked", masked(dense)))}
    n_dense = sum(p.numel() for p in dense.parameters())
    n_shrunk = sum(p.numel() for p in shrunk.parameters())
    assert sizes["shrunk"] < sizes["dense"] * (n_shrunk / n_dense) + 64_000
    assert sizes["shrunk"] < sizes["dense"]
    assert abs(sizes["masked"] - sizes["dense"]) < 2_000  # masks baked in, not stored


README_SNIPPET = """
import torch
from core.models import load_model, save_model
from core.pruning import prune

model = load_model("my-hf-vit")            # transformers save_pretrained folder (or a hub id
timm_model = load_model("my-timm-vit")     # in the local cache); timm folder
images = torch.rand(8, *model.input_shape)  # calibration batch, values in [0, 1]

masked = prune(model, "magnitude", 0.5).model          # unstructured: masks
small = prune(model, "snp", 0.3, images=images).model  # structured: a smaller model

save_model(masked, "masked-hf", format="hf")   # transformers from_pretrained
save_model(small, "small.safetensors")         # PruneLens (any shape)
save_model(small, "small.onnx", format="onnx") # onnxruntime
"""


def test_readme_snippet(tmp_path):
    """The README's bring-your-own-model lines, run as written (folders made here first)."""
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=32, patch_size=8, num_labels=3)).eval()
    hf.save_pretrained(tmp_path / "my-hf-vit")
    save_model(tiny(img_size=(32, 32)), tmp_path / "ours.safetensors")  # → a timm folder
    from safetensors.torch import load_file
    (tmp_path / "my-timm-vit").mkdir()
    from safetensors.torch import save_file
    save_file(load_file(tmp_path / "ours.safetensors"),
              str(tmp_path / "my-timm-vit" / "model.safetensors"))
    (tmp_path / "my-timm-vit" / "config.json").write_text(json.dumps(
        {"architecture": "vit_tiny_patch4_32", "num_classes": 5, "model_args": {"num_heads": 4},
         "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}}))
    cwd, ns = os.getcwd(), {}
    os.chdir(tmp_path)
    try:
        exec(README_SNIPPET, ns)
    finally:
        os.chdir(cwd)
    masked, small, timm_model = ns["masked"], ns["small"], ns["timm_model"]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(hf_logits_of(tmp_path / "masked-hf", x), masked(x),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(load_model(tmp_path / "small.safetensors")(x), small(x))
        np.testing.assert_allclose(run_onnx(tmp_path / "small.onnx", x), small(x).numpy(),
                                   atol=1e-4, rtol=0)
        assert timm_model.config.blocks[0].num_heads == 4
        sparsity = [(m.weight == 0).float().mean().item() for m in masked.modules()
                    if isinstance(m, nn.Linear) and m is not masked.head]
        assert min(sparsity) > 0.1


def test_exports_say_when_dynamic_image_size_is_dropped(tmp_path):
    """ONNX and the Hugging Face config fix the input size: a model built with
    dynamic_img_size is exported with a warning that names it, and still matches at its size."""
    model = tiny(dynamic_img_size=True)
    with pytest.warns(UserWarning, match="dynamic_img_size"):
        save_model(model, tmp_path / "m.onnx", format="onnx")
    with pytest.warns(UserWarning, match="dynamic_img_size"):
        save_model(model, tmp_path / "hf", format="hf")
    import onnxruntime as ort
    x = torch.rand(2, 3, 16, 16)
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(out - model.eval()(x).numpy()).max() < 1e-4
