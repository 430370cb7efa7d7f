"""Bring your own ViT: Hugging Face folders, hub-cache ids, timm folders and state dicts.

Oracles: transformers 5's own ViT/DeiT models (random tiny configs, eager attention) for the
Hugging Face formats; for a folder transformers 4 wrote after ``prune_heads``, which
transformers 5 no longer reads, the logits transformers 4.57 computed when it wrote the fixture
(tests/fixtures/make_hf4_pruned_vit.py); and a functional re-implementation of timm's forward
written here (its
``qkv.reshape(B, N, 3, H, d)`` layout, its token and position-embedding order) for the timm
options transformers has no model for.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

transformers = pytest.importorskip("transformers")

from core.attention import capture_attention  # noqa: E402
from core.models import CheckpointError, load_model, save_model  # noqa: E402
from core.models.timm_format import load_timm_state_dict  # noqa: E402

HF_CLASSES = ["ViTForImageClassification", "DeiTForImageClassification",
              "DeiTForImageClassificationWithTeacher"]


def hf_model(cls_name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny random transformers classifier (16×16 images, 4×4 patches, eager attention)."""
    config_cls = transformers.ViTConfig if cls_name.startswith("ViT") else transformers.DeiTConfig
    args = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, image_size=16, patch_size=4, num_labels=5,
                attn_implementation="eager")
    args.update(overrides)
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config_cls(**args)).eval()
    with torch.no_grad():  # non-trivial weights: transformers' init zeroes biases, ones norms
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def hf_logits(model: torch.nn.Module, x: Tensor, mean=(0.5,) * 3, std=(0.5,) * 3) -> Tensor:
    """transformers' logits for images ``x`` in [0, 1], normalised as its image processor."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - m) / s).logits


def images(n: int = 3, size: int = 16, seed: int = 1) -> Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def saved_state_dict(model: torch.nn.Module, folder: Path) -> dict[str, Tensor]:
    """``model`` saved with ``save_pretrained`` into ``folder``; the tensors as written there
    (transformers 5 keeps other names in memory and writes transformers 4's)."""
    model.save_pretrained(folder)
    return load_file(str(folder / "model.safetensors"))


def bin_folder(model: torch.nn.Module, folder: Path) -> Path:
    """A folder as transformers 4 saved with ``safe_serialization=False`` (transformers 5 only
    writes safetensors): the same tensors in ``pytorch_model.bin``."""
    sd = saved_state_dict(model, folder)
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    return folder


FIXTURES = Path(__file__).parent / "fixtures"


# ---------------------------------------------------------------------------- Hugging Face

@pytest.mark.parametrize("cls_name", HF_CLASSES)
def test_hf_folder_matches_transformers_logits_and_attention(tmp_path, cls_name):
    hf = hf_model(cls_name)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    x = images()
    with torch.no_grad():
        out = hf((x - 0.5) / 0.5, output_attentions=True)
        logits = ours(x)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
    maps = capture_attention(ours, x)
    assert len(maps) == len(out.attentions) == 2
    for a, b in zip(maps, out.attentions):
        assert a.shape == b.shape  # (B, H, P + N, P + N)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    distilled = cls_name.endswith("WithTeacher")
    assert ours.prefix_tokens == (("cls", "dist") if cls_name.startswith("DeiT") else ("cls",))
    assert ours.num_prefix_tokens == len(ours.prefix_tokens) and ours.cls_index == 0
    # DeiTForImageClassification has a distillation token but classifies from the class token
    assert (ours.head_dist is not None) == distilled
    assert not ours.training and cls_name in ours.source


def test_hf_distilled_logits_are_the_mean_of_both_heads_in_training_too(tmp_path):
    hf = hf_model("DeiTForImageClassificationWithTeacher")
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path).train()
    x = images()
    with torch.no_grad():
        out = hf((x - 0.5) / 0.5)
        torch.testing.assert_close(ours(x), (out.cls_logits + out.distillation_logits) / 2,
                                   atol=1e-5, rtol=0)


def test_hf_bin_weights_no_qkv_bias_and_preprocessor(tmp_path):
    hf = hf_model("ViTForImageClassification", qkv_bias=False, layer_norm_eps=1e-6)
    bin_folder(hf, tmp_path)
    assert (tmp_path / "pytorch_model.bin").exists()
    assert not (tmp_path / "model.safetensors").exists()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    transformers.ViTImageProcessor(image_mean=list(mean), image_std=list(std),
                                   size={"height": 16, "width": 16}).save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert not ours.config.qkv_bias and ours.config.norm_eps == 1e-6
    torch.testing.assert_close(ours.config.mean, mean)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf_logits(hf, x, mean, std), atol=1e-5, rtol=0)
    # the processor itself (uint8 image → rescale 1/255 → normalise) agrees with ours
    img = (x[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    proc = transformers.ViTImageProcessor.from_pretrained(tmp_path)
    pixel = torch.from_numpy(proc(img, return_tensors="np", do_resize=False)["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(ours(torch.from_numpy(img).permute(2, 0, 1)[None] / 255),
                                   hf(pixel).logits, atol=1e-5, rtol=0)


def test_hf4_pruned_heads_folder_loads_with_transformers_4_logits(tmp_path):
    """A folder transformers 4.57 saved after prune_heads({0: [0, 2], 1: [1]}): PruneLens
    builds the smaller blocks from config.pruned_heads and gives the logits transformers 4.57
    gave; transformers 5 builds full-size layers and refuses the weights."""
    folder = FIXTURES / "hf4_pruned_vit"
    assert json.loads((folder / "config.json").read_text())["transformers_version"] == "4.57.6"
    expected = load_file(str(folder / "expected.safetensors"))
    ours = load_model(folder)
    assert [b.num_heads for b in ours.config.blocks] == [1, 2]
    assert [b.qk_dim for b in ours.config.blocks] == [4, 4]
    with torch.no_grad():
        torch.testing.assert_close(ours(expected["images"]), expected["logits"], atol=1e-5,
                                   rtol=0)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        transformers.ViTForImageClassification.from_pretrained(folder)
    # its per-layer head counts have no transformers 5 config: PruneLens or ONNX keep them
    with pytest.raises(CheckpointError, match=r"per-block head counts \[1, 2\]"):
        save_model(ours, tmp_path / "hf", format="hf")
    back = load_model(save_model(ours, tmp_path / "m.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(back(expected["images"]), expected["logits"], atol=1e-5,
                                   rtol=0)


def test_hf5_ignores_pruned_heads_and_so_do_we(tmp_path):
    """transformers 5 keeps an old pruned_heads entry in config.json but builds (and saves)
    full-size layers; a folder it wrote loads as it computes, not as transformers 4 would."""
    hf = hf_model("ViTForImageClassification", pruned_heads={"0": [1, 3]})
    assert hf.vit.layers[0].attention.q_proj.out_features == 32  # nothing pruned
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["pruned_heads"] == {"0": [1, 3]} and cfg["transformers_version"].startswith("5.")
    ours = load_model(tmp_path)
    assert [b.num_heads for b in ours.config.blocks] == [4, 4]
    x = images()
    torch.testing.assert_close(ours(x).detach(), hf_logits(hf, x), atol=1e-5, rtol=0)


def test_hf5_head_dim_and_in_memory_names(tmp_path):
    """transformers 5 folders: ``head_dim`` (2 heads of 8 in a width-32 model) and
    ``save_original_format=False`` (its in-memory names: layers.i.attention.q_proj, …)."""
    hf = hf_model("DeiTForImageClassificationWithTeacher", num_attention_heads=2, head_dim=8)
    assert hf.deit.layers[0].attention.q_proj.out_features == 16
    hf.save_pretrained(tmp_path / "original")
    hf.save_pretrained(tmp_path / "v5", save_original_format=False)
    keys = load_file(str(tmp_path / "v5" / "model.safetensors")).keys()
    assert "deit.layers.0.attention.q_proj.weight" in keys
    assert not any(".encoder.layer." in k for k in keys)
    x = images()
    with torch.no_grad():
        out = hf((x - 0.5) / 0.5, output_attentions=True)
    for name in ("original", "v5"):
        ours = load_model(tmp_path / name)
        assert [(b.num_heads, b.qk_dim, b.v_dim) for b in ours.config.blocks] == [(2, 8, 8)] * 2
        with torch.no_grad():
            torch.testing.assert_close(ours(x), (out.cls_logits + out.distillation_logits) / 2,
                                       atol=1e-5, rtol=0)
        for a, b in zip(capture_attention(ours, x), out.attentions, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_hub_id_read_from_the_local_cache_when_offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE: the cache only (downloads: test_hub.py)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(CheckpointError) as err:
        load_model("facebook/deit-tiny-patch16-224")
    msg = str(err.value)
    assert "\n" not in msg and "not in the local Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE is set, so nothing is downloaded" in msg
    assert "hf download facebook/deit-tiny-patch16-224" in msg
    assert str(tmp_path / "hf" / "hub") in msg
    # the cache layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<rev>}
    repo = tmp_path / "hf" / "hub" / "models--org--tiny-vit"
    hf = hf_model("DeiTForImageClassificationWithTeacher")
    hf.save_pretrained(repo / "snapshots" / "abc123")
    hf_model("ViTForImageClassification").save_pretrained(repo / "snapshots" / "old")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    ours = load_model("org/tiny-vit")
    x = images()
    torch.testing.assert_close(ours(x).detach(), hf_logits(hf, x), atol=1e-5, rtol=0)


def test_hub_cache_revisions_and_links_stay_inside_the_cache(tmp_path, monkeypatch):
    """A hostile cache entry cannot make load_model open a folder or file outside it."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    outside = tmp_path / "hf"  # = snapshots/../../.. : a readable model folder lies there
    hf_model("ViTForImageClassification").save_pretrained(outside)
    repo = outside / "hub" / "models--org--evil"
    (repo / "snapshots").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("../../..")
    with pytest.raises(CheckpointError, match="refs/main that is not a revision") as err:
        load_model("org/evil")
    assert "\n" not in str(err.value)
    # a snapshot that is a link to a folder elsewhere is not a snapshot
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").symlink_to(outside, target_is_directory=True)
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache"):
        load_model("org/evil")
    # a real snapshot folder whose config.json links out of the repository's cache folder
    (repo / "snapshots" / "abc123").unlink()
    snap = repo / "snapshots" / "abc123"
    snap.mkdir()
    (snap / "config.json").symlink_to(outside / "config.json")
    (snap / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(CheckpointError, match="files linking out of its cache folder"):
        load_model("org/evil")
    # the layout huggingface_hub writes (files linking to ../../blobs) still loads
    blobs = repo / "blobs"
    blobs.mkdir()
    for name in ("config.json", "model.safetensors"):
        (blobs / name).write_bytes((outside / name).read_bytes())
        (snap / name).unlink()
        (snap / name).symlink_to(Path("../../blobs") / name)
    assert load_model("org/evil") is not None


# ---------------------------------------------------------------------------- bad input

def test_bad_folders_give_one_line_errors(tmp_path):
    def fails(path, pattern: str) -> None:
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        msg = str(err.value)
        assert "\n" not in msg and "\x1b" not in msg, msg
        assert re.search(pattern, msg), msg

    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty, "has no config.json")
    hf = hf_model("ViTForImageClassification")
    good = tmp_path / "good"
    hf.save_pretrained(good)
    cfg = json.loads((good / "config.json").read_text())

    def folder(name: str, **changes) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "model.safetensors").write_bytes((good / "model.safetensors").read_bytes())
        (d / "config.json").write_text(json.dumps({**cfg, **changes}))
        return d

    fails(folder("deeper", num_hidden_layers=3),
          r"weights do not match config.json.*missing keys: vit\.encoder\.layer\.2\.")
    fails(folder("wider", intermediate_size=40),
          r"mis-shaped.*vit\.encoder\.layer\.\d\.intermediate\.dense\.weight \(37, 32\) vs "
          r"\(40, 32\)")
    fails(folder("swin", model_type="swin", architectures=["SwinForImageClassification"]),
          r"unsupported architecture: model_type 'swin' \(SwinForImageClassification\).*"
          r"ViTForImageClassification")
    fails(folder("mystery", model_type="mystery", architectures=None), "model_type 'mystery'")
    fails(folder("backbone", architectures=["ViTModel"]), "unsupported architecture 'ViTModel'")
    fails(folder("act", hidden_act="gelu_new"), "hidden_act 'gelu_new' is not supported")
    fails(folder("head_dim_str", head_dim="8"), "head_dim must be a positive int.*'8'")
    fails(folder("head_dim_zero", head_dim=0), "head_dim must be a positive int")
    fails(folder("head_dim_wrong", head_dim=16),
          r"mis-shaped.*attention\.query\.weight \(32, 32\) vs \(64, 32\)")
    fails(folder("per_layer", per_layer_config={"0": {"num_attention_heads": 2}}),
          "per_layer_config .* not read")
    fails(folder("per_layer_list", per_layer_config=[1]), "per_layer_config must be a JSON object")
    nowt = tmp_path / "noweights"
    nowt.mkdir()
    (nowt / "config.json").write_text(json.dumps(cfg))
    fails(nowt, "no model.safetensors or pytorch_model.bin")
    broken = folder("broken")
    (broken / "config.json").write_text("{not json")
    fails(broken, "cannot read config.json")
    resnet = tmp_path / "resnet"
    resnet.mkdir()
    (resnet / "config.json").write_text(json.dumps(
        {"model_type": "resnet", "architectures": ["ResNetForImageClassification"]}))
    fails(resnet, "unsupported architecture: model_type 'resnet'")


class _Payload:
    """Unpickling this would create a marker file: weights_only must refuse it first."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_code_in_bin_is_refused_and_never_run(tmp_path):
    bin_folder(hf_model("ViTForImageClassification"), tmp_path)
    marker = tmp_path / "pwned"
    sd = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    torch.save({**sd, "evil": _Payload(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):  # what torch itself says: many lines
        torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg and len(msg) <= 400, msg
    assert "weights-only" in msg or "weights_only" in msg.lower()
    assert not marker.exists()


# ---------------------------------------------------------------------------- timm

def hf_to_timm(hf_sd: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """transformers ViT/DeiT keys → timm keys, written independently of core.models.hf."""
    p = "vit." if any(k.startswith("vit.") for k in hf_sd) else "deit."
    e = f"{p}embeddings."
    out = {"cls_token": hf_sd[e + "cls_token"], "pos_embed": hf_sd[e + "position_embeddings"],
           "patch_embed.proj.weight": hf_sd[e + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": hf_sd[e + "patch_embeddings.projection.bias"],
           "norm.weight": hf_sd[p + "layernorm.weight"], "norm.bias": hf_sd[p + "layernorm.bias"]}
    if e + "distillation_token" in hf_sd:
        out["dist_token"] = hf_sd[e + "distillation_token"]
    heads = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}
    for k, v in hf_sd.items():
        name = k.split(".")[0]
        if name in heads:
            out[f"{heads[name]}.{k.split('.')[-1]}"] = v
    for i in range(depth):
        L = f"{p}encoder.layer.{i}."
        for t in ("weight", "bias"):
            a = L + "attention.attention."
            out[f"blocks.{i}.attn.qkv.{t}"] = torch.cat(
                [hf_sd[a + "query." + t], hf_sd[a + "key." + t], hf_sd[a + "value." + t]])
            out[f"blocks.{i}.attn.proj.{t}"] = hf_sd[L + "attention.output.dense." + t]
            out[f"blocks.{i}.norm1.{t}"] = hf_sd[L + "layernorm_before." + t]
            out[f"blocks.{i}.norm2.{t}"] = hf_sd[L + "layernorm_after." + t]
            out[f"blocks.{i}.mlp.fc1.{t}"] = hf_sd[L + "intermediate.dense." + t]
            out[f"blocks.{i}.mlp.fc2.{t}"] = hf_sd[L + "output.dense." + t]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def timm_folder(path: Path, sd: dict[str, Tensor], arch: str, num_classes: int,
                img: int, mean=(0.5,) * 3, std=(0.5,) * 3, **model_args) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({
        "architecture": arch, "num_classes": num_classes, "num_features": 32,
        "model_args": model_args,
        "pretrained_cfg": {"input_size": [3, img, img], "mean": list(mean), "std": list(std),
                           "num_classes": num_classes}}))
    return path


@pytest.mark.parametrize("cls_name", ["ViTForImageClassification",
                                      "DeiTForImageClassificationWithTeacher"])
def test_timm_files_from_the_same_weights_give_the_same_numbers(tmp_path, cls_name):
    hf = hf_model(cls_name, layer_norm_eps=1e-6)  # timm's LayerNorm eps
    x = images()
    want = hf_logits(hf, x)
    sd = hf_to_timm(saved_state_dict(hf, tmp_path / "hf"), depth=2)
    arch = "deit_tiny_distilled_patch4_16" if "Teacher" in cls_name else "vit_tiny_patch4_16"
    folder = timm_folder(tmp_path / "timm", sd, arch, 5, 16, num_heads=4)
    ours = load_model(folder)
    torch.testing.assert_close(ours(x).detach(), want, atol=1e-4, rtol=0)
    with torch.no_grad():
        out = hf((x - 0.5) / 0.5, output_attentions=True)
    for a, b in zip(capture_attention(ours, x), out.attentions):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # bare state dicts: num_heads given, or timm's width → heads table
    save_file(sd, str(tmp_path / "bare.safetensors"))
    with pytest.warns(UserWarning, match="ImageNet's mean/std"):
        bare = load_timm_state_dict(tmp_path / "bare.safetensors", num_heads=4)
    bare.pixel_mean.fill_(0.5), bare.pixel_std.fill_(0.5)
    torch.testing.assert_close(bare(x).detach(), want, atol=1e-4, rtol=0)
    torch.save({"model": sd}, tmp_path / "bare.pth")  # DeiT's release layout
    bare = load_timm_state_dict(tmp_path / "bare.pth", num_heads=4, mean=(0.5,) * 3,
                                std=(0.5,) * 3)
    torch.testing.assert_close(bare(x).detach(), want, atol=1e-4, rtol=0)
    with pytest.raises(CheckpointError, match="num_heads cannot be told"):
        load_model(tmp_path / "bare.safetensors")  # width 32 is no timm ViT width


# A random timm state dict and timm's forward, re-implemented functionally.

def random_timm_sd(*, dim: int = 32, depth: int = 2, heads: int = 4, mlp: int = 48,
                   patch: int = 4, grid: int = 4, classes: int = 5, cls: bool = True,
                   dist: bool = False, reg: int = 0, ls: bool = False, fc_norm: bool = False,
                   norm: bool = True, qkv_bias: bool = True, no_embed_class: bool = False,
                   seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, std: float = 0.2) -> Tensor:
        return torch.randn(*shape, generator=g) * std

    prefix = int(cls) + int(dist) + reg
    sd = {"patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
          "pos_embed": r(1, grid * grid + (0 if no_embed_class else prefix), dim),
          "head.weight": r(classes, dim), "head.bias": r(classes)}
    if cls:
        sd["cls_token"] = r(1, 1, dim)
    if dist:
        sd["dist_token"], sd["head_dist.weight"], sd["head_dist.bias"] = \
            r(1, 1, dim), r(classes, dim), r(classes)
    if reg:
        sd["reg_token"] = r(1, reg, dim)
    for name, on in (("norm", norm), ("fc_norm", fc_norm)):
        if on:
            sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + r(dim), r(dim)
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(dim), b + "norm1.bias": r(dim),
                   b + "attn.qkv.weight": r(3 * dim, dim), b + "attn.proj.weight": r(dim, dim),
                   b + "attn.proj.bias": r(dim), b + "norm2.weight": 1 + r(dim),
                   b + "norm2.bias": r(dim), b + "mlp.fc1.weight": r(mlp, dim),
                   b + "mlp.fc1.bias": r(mlp), b + "mlp.fc2.weight": r(dim, mlp),
                   b + "mlp.fc2.bias": r(dim)})
        if qkv_bias:
            sd[b + "attn.qkv.bias"] = r(3 * dim)
        if ls:
            sd[b + "ls1.gamma"], sd[b + "ls2.gamma"] = r(dim), r(dim)
    return sd


def timm_forward(sd: dict[str, Tensor], x: Tensor, heads: int, pool: str, mean, std,
                 no_embed_class: bool, eps: float = 1e-6) -> Tensor:
    """timm VisionTransformer(.Distilled).forward on images x in [0, 1]."""
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    p = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p)
    x = x.flatten(2).transpose(1, 2)
    B, _, D = x.shape
    prefix = [sd[k].expand(B, -1, -1) for k in ("cls_token", "dist_token", "reg_token")
              if k in sd]
    x = (torch.cat(prefix + [x + sd["pos_embed"]], 1) if no_embed_class
         else torch.cat(prefix + [x], 1) + sd["pos_embed"])
    N, P, hd = x.shape[1], sum(t.shape[1] for t in prefix), D // heads

    def ln(t: Tensor, name: str) -> Tensor:
        return F.layer_norm(t, (D,), sd[name + ".weight"], sd[name + ".bias"], eps)

    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        qkv = F.linear(ln(x, b + "norm1"), sd[b + "attn.qkv.weight"], sd.get(b + "attn.qkv.bias"))
        q, k, v = qkv.reshape(B, N, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        a = (q @ k.transpose(-2, -1) * hd ** -0.5).softmax(-1)
        y = F.linear((a @ v).transpose(1, 2).reshape(B, N, D), sd[b + "attn.proj.weight"],
                     sd[b + "attn.proj.bias"])
        x = x + y * sd.get(b + "ls1.gamma", torch.ones(()))
        y = F.linear(F.gelu(F.linear(ln(x, b + "norm2"), sd[b + "mlp.fc1.weight"],
                                     sd[b + "mlp.fc1.bias"])),
                     sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        x = x + y * sd.get(b + "ls2.gamma", torch.ones(()))
        i += 1
    if "norm.weight" in sd:
        x = ln(x, "norm")
    if "dist_token" in sd:
        return (F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])
                + F.linear(x[:, 1], sd["head_dist.weight"], sd["head_dist.bias"])) / 2
    f = x[:, P:].mean(1) if pool == "avg" else x[:, 0]
    if "fc_norm.weight" in sd:
        f = ln(f, "fc_norm")
    return F.linear(f, sd["head.weight"], sd["head.bias"])


TIMM_VARIANTS = {  # name → (random_timm_sd options, global_pool, expected prefix tokens)
    "vit": (dict(), "token", ("cls",)),
    "deit_distilled": (dict(dist=True), "token", ("cls", "dist")),
    "vit_reg4_gap": (dict(cls=False, reg=4, fc_norm=True, norm=False, no_embed_class=True),
                     "avg", ("reg0", "reg1", "reg2", "reg3")),
    "vit_reg2_cls": (dict(reg=2), "token", ("cls", "reg0", "reg1")),
    "deit3_layerscale": (dict(ls=True, no_embed_class=True), "token", ("cls",)),
    "vit_no_qkv_bias": (dict(qkv_bias=False), "token", ("cls",)),
    "vit_gap_no_cls": (dict(cls=False, fc_norm=True, norm=False), "avg", ()),
    "vit_cls_avg_norm": (dict(), "avg", ("cls",)),
}


@pytest.mark.parametrize("variant", list(TIMM_VARIANTS))
def test_timm_variants_match_timms_forward(tmp_path, variant):
    opts, pool, prefix = TIMM_VARIANTS[variant]
    sd = random_timm_sd(**opts)
    mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
    kw = {"global_pool": pool} if variant == "vit_cls_avg_norm" else {}
    folder = timm_folder(tmp_path / variant, sd, f"vit_{variant}", 5, 16, mean, std,
                         num_heads=4, **kw)
    ours = load_model(folder)
    assert ours.prefix_tokens == prefix and ours.num_prefix_tokens == len(prefix)
    assert ours.cls_index == (0 if "cls_token" in sd else None)
    assert ours.config.global_pool == pool
    x = images()
    want = timm_forward(sd, x, 4, pool, mean, std, opts.get("no_embed_class", False))
    torch.testing.assert_close(ours(x).detach(), want, atol=1e-5, rtol=0)
    maps = capture_attention(ours, x)
    assert maps[0].shape == (3, 4, 16 + len(prefix), 16 + len(prefix))
    # the options survive PruneLens' own format
    back = load_model(save_model(ours, tmp_path / "m.safetensors"))
    assert back.config == ours.config
    torch.testing.assert_close(back(x).detach(), want, atol=1e-5, rtol=0)
    # and the architecture is told from the keys alone as well (bare file)
    save_file(sd, str(tmp_path / "bare.safetensors"))
    bare = load_timm_state_dict(tmp_path / "bare.safetensors", num_heads=4, mean=mean, std=std,
                                **({"global_pool": pool} if kw else {}))
    assert bare.config == ours.config
    torch.testing.assert_close(bare(x).detach(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("patch", [8, 14, 16, 32])
def test_timm_patch_sizes(tmp_path, patch):
    sd = random_timm_sd(dim=192, heads=3, depth=1, patch=patch, grid=2, mlp=64)
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.warns(UserWarning, match="ImageNet"):
        ours = load_model(tmp_path / "w.safetensors")  # heads from timm's width table
    assert ours.config.patch_size == patch and ours.config.img_size == (2 * patch, 2 * patch)
    assert ours.config.blocks[0].num_heads == 3
    x = images(2, 2 * patch)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    torch.testing.assert_close(ours(x).detach(), timm_forward(sd, x, 3, "token", mean, std, False),
                               atol=1e-5, rtol=0)


def test_other_input_size_interpolates_position_embeddings(tmp_path):
    sd = random_timm_sd(reg=1, grid=4)
    folder = timm_folder(tmp_path / "t", sd, "vit_test", 5, 16, num_heads=4)
    ours = load_model(folder)
    x = images(2, 24)
    with pytest.raises(ValueError, match="do not fit this model, which takes .B, 3, 16, 16."):
        ours(x)
    # timm's resample_abs_pos_embed: prefix entries kept, the 4×4 grid resized bicubically
    prefix, grid = sd["pos_embed"][:, :2], sd["pos_embed"][:, 2:]
    grid = F.interpolate(grid.reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(6, 6),
                         mode="bicubic", antialias=True).permute(0, 2, 3, 1).reshape(1, 36, 32)
    want = timm_forward({**sd, "pos_embed": torch.cat([prefix, grid], 1)}, x, 4, "token",
                        (0.5,) * 3, (0.5,) * 3, False)
    with pytest.warns(UserWarning, match="bicubically interpolated"):
        ours.set_input_size(24)
    assert ours.config.img_size == (24, 24) and ours.grid_size == (6, 6)
    torch.testing.assert_close(ours(x).detach(), want, atol=1e-5, rtol=0)
    # per forward, without changing the model
    from dataclasses import replace
    dyn = load_model(folder)
    dyn.config = replace(dyn.config, dynamic_img_size=True)
    with pytest.warns(UserWarning, match="grid 6x6 differs"):
        torch.testing.assert_close(dyn(x).detach(), want, atol=1e-5, rtol=0)


def test_timm_bad_input(tmp_path):
    def fails(path, pattern: str) -> None:
        with pytest.raises(CheckpointError) as err:
            load_model(path)
        assert "\n" not in str(err.value) and re.search(pattern, str(err.value)), err.value

    sd = random_timm_sd()
    fails(timm_folder(tmp_path / "swin", sd, "swin_tiny_patch4_window7_224", 5, 16),
          r"unsupported architecture timm 'swin_tiny_patch4_window7_224'.*vit_")
    fails(timm_folder(tmp_path / "quick", sd, "vit_base_patch16_clip_quickgelu_224", 5, 16),
          "QuickGELU")
    clip = {**sd, "norm_pre.weight": torch.ones(32), "norm_pre.bias": torch.zeros(32)}
    fails(timm_folder(tmp_path / "clip", clip, "vit_base_patch16_clip_224", 5, 16,
                      num_heads=4), r"cannot express: pre-norm \(CLIP\) — keys norm_pre\.bias")
    pool = {**sd, "attn_pool.latent": torch.zeros(1, 1, 32)}
    save_file(pool, str(tmp_path / "siglip.safetensors"))
    fails(tmp_path / "siglip.safetensors", "attention pooling")
    fails(timm_folder(tmp_path / "classes", sd, "vit_x", 7, 16, num_heads=4),
          r"mis-shaped.*head\.weight")
    headless = {k: v for k, v in sd.items() if not k.startswith("head.")}
    save_file(headless, str(tmp_path / "headless.safetensors"))
    fails(tmp_path / "headless.safetensors", "no classification head")
    fails(timm_folder(tmp_path / "pool", sd, "vit_x", 5, 16, num_heads=4, global_pool="map"),
          "global_pool must be 'token' or 'avg'")
