"""Exports: a transformers ``save_pretrained`` folder and ONNX.

``save_hf`` writes ``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` that
transformers' ``ViTForImageClassification`` (``DeiTForImageClassification[WithTeacher]`` for a
distilled model) ``from_pretrained`` loads with the same logits; transformers is not imported.
Pruning masks are baked in (zeros in the weights). transformers 5 builds every layer from one
set of numbers (its ``pruned_heads``, which let layers differ, is gone): a model whose blocks all
keep the same heads, head size and FFN width is written as such, with ``head_dim`` when heads ×
head size is not the width (a folder only transformers 5 reads). Anything else a pruned model
may be — head counts or FFN widths that differ between blocks, q/k dim ≠ v dim, a changed
softmax scale, register tokens, LayerScale, average pooling — has no place in that config and
raises :class:`CheckpointError` pointing to the formats that keep it ("onnx", "prunelens").
Zero-padding the smaller blocks back to one shape would give the same logits but a file no
smaller than the dense model and extra heads of uniform attention in every attention view.

``save_onnx`` traces a plain copy (masks baked, no parametrizations, so the file holds each
weight once) with torch's TorchScript exporter (``dynamo=False``: the torch.export-based one
needs onnxscript), opset 17, input ``images`` (B, C, H, W) in [0, 1] with a dynamic batch axis,
output ``logits`` (B, num_classes).
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from .hf import to_hf_state_dict
from .adapter import adapter_for_config, get_adapter
from .checkpoint import CheckpointError, _plain_state_dict
from .vit import VisionTransformer, ViTConfig

ONNX_OPSET = 17


def plain_copy(model: nn.Module) -> nn.Module:
    """A fresh model of the same architecture holding ``model``'s parametrized (masked)
    weights as plain tensors, on CPU, in eval mode. ``model`` is not touched."""
    sd = _plain_state_dict(model)
    if isinstance(model, VisionTransformer):
        return VisionTransformer.from_state_dict(model.config, sd).eval()
    copy = adapter_for_config(model.config).build(model.config)
    copy.load_state_dict(sd, strict=True)
    return copy.eval()


def hf_layout(config: ViTConfig) -> tuple[str, dict]:
    """The transformers architecture and ``config.json`` entries for ``config``.

    Raises CheckpointError naming what a transformers ViT/DeiT config cannot express.
    """
    hint = "; save with format='onnx' or format='prunelens' instead"
    why = []
    if not config.class_token or config.global_pool != "token" or config.use_fc_norm:
        why.append("no class-token pooling (global average pooling / fc_norm)")
    if config.num_reg_tokens:
        why.append(f"{config.num_reg_tokens} register tokens")
    if config.init_values is not None:
        why.append("LayerScale")
    if config.no_embed_class:
        why.append("position embeddings without prefix-token entries")
    blocks = config.blocks
    dims = {(b.qk_dim, b.v_dim) for b in blocks}
    if any(q != v for q, v in dims) or len(dims) > 1:
        why.append("per-head q/k or v dims that differ between blocks or from each other "
                   f"({sorted(dims)})")
    if len({b.num_heads for b in blocks}) > 1:
        why.append(f"per-block head counts {[b.num_heads for b in blocks]} (transformers 5 "
                   "has no pruned_heads)")
    if len({b.mlp_hidden for b in blocks}) > 1:
        why.append(f"per-block FFN widths {[b.mlp_hidden for b in blocks]}")
    d, heads = blocks[0].qk_dim, blocks[0].num_heads
    if any(b.scale is not None and abs(b.scale - d ** -0.5) > 1e-7 * d ** -0.5 for b in blocks):
        why.append("a softmax scale other than head_dim ** -0.5")
    if why:
        raise CheckpointError("a transformers ViT/DeiT config cannot express this model: "
                              + ", ".join(why) + hint)
    arch = ("ViTForImageClassification" if not config.distilled
            else "DeiTForImageClassificationWithTeacher" if config.dist_head
            else "DeiTForImageClassification")
    H, W = config.img_size
    C = config.num_classes
    return arch, {
        "architectures": [arch], "model_type": "deit" if config.distilled else "vit",
        "hidden_size": config.embed_dim, "num_hidden_layers": config.depth,
        "num_attention_heads": heads, "intermediate_size": blocks[0].mlp_hidden,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02, "layer_norm_eps": config.norm_eps,
        "image_size": H if H == W else [H, W], "patch_size": config.patch_size,
        "num_channels": config.in_chans, "qkv_bias": config.qkv_bias,
        "encoder_stride": config.patch_size,
        # transformers 5 reads head_dim; transformers 4 sizes heads as width / heads and
        # refuses the weights of such a folder
        **({"head_dim": d} if heads * d != config.embed_dim else {}),
        "id2label": {str(i): f"LABEL_{i}" for i in range(C)},
        "label2id": {f"LABEL_{i}": i for i in range(C)},
        "dtype": "float32",
    }


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def save_hf(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model`` as a transformers ``save_pretrained`` folder; returns the folder."""

    if get_adapter(model).family != "vit":
        raise CheckpointError(f"transformers has no {get_adapter(model).family} model; save with "
                              "format='onnx' or format='prunelens' instead")
    config: ViTConfig = model.config
    arch, hf_config = hf_layout(config)
    if config.dynamic_img_size:
        H, W = config.img_size
        warnings.warn(f"the Hugging Face folder describes {H}x{W} images: dynamic_img_size is "
                      "not part of its config (transformers resizes position embeddings with "
                      "interpolate_pos_encoding=True at call time)", stacklevel=2)
    sd = _plain_state_dict(model)
    hf_sd = {k: v.clone() for k, v in to_hf_state_dict(sd, config, arch).items()}
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        _write_hf(folder, hf_sd, hf_config, config)
    except BaseException:
        if created:  # a full disk, say: leave no half-written folder behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def _write_hf(folder: Path, hf_sd: dict, hf_config: dict, config: ViTConfig) -> None:
    from safetensors.torch import save_file

    H, W = config.img_size
    processor = "DeiTImageProcessor" if config.distilled else "ViTImageProcessor"
    pre = {"image_processor_type": processor, "do_resize": True,
           "size": {"height": H, "width": W}, "resample": 3 if config.distilled else 2,
           "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": list(config.mean), "image_std": list(config.std)}
    if config.distilled:
        pre.update(do_center_crop=False, crop_size={"height": H, "width": W})
    tmp = folder / "model.safetensors.tmp"
    try:
        save_file(hf_sd, str(tmp), metadata={"format": "pt"})  # transformers checks "format"
        tmp.replace(folder / "model.safetensors")
    finally:
        tmp.unlink(missing_ok=True)
    _write_json(folder / "config.json", hf_config)
    _write_json(folder / "preprocessor_config.json", pre)


def save_onnx(model: nn.Module, path: str | Path, opset: int = ONNX_OPSET) -> Path:
    """Export ``model`` (masks baked in) to ONNX; input ``images`` (B, C, H, W) in [0, 1] with a
    dynamic batch axis at ``model.input_shape``, output ``logits`` (B, num_classes)."""
    if opset < 17:
        raise ValueError(f"opset must be at least 17, got {opset}")
    plain = plain_copy(model)
    if getattr(model.config, "dynamic_img_size", False):
        H, W = model.config.img_size
        warnings.warn(f"the ONNX file takes {H}x{W} images only: dynamic_img_size (position "
                      "embeddings resized per input) is not exported", stacklevel=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    images = torch.rand(1, *plain.input_shape)
    try:
        with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes
            warnings.simplefilter("ignore")
            torch.onnx.export(plain, (images,), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
