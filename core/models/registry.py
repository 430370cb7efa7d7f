"""Model registry (timm's ``register_model`` / ``create_model``) and checkpoints.

``build_model(name, num_classes, **overrides)`` builds a preset; ``list_models()`` feeds the
dashboard's select box. Checkpoints are ``.safetensors`` (or ``.pth`` read with
``torch.load(weights_only=True)``); PruneLens' own files carry the architecture in their
metadata, so a physically shrunk model loads back with its new shapes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .linformer_vit import LinformerViT, LinformerViTConfig, linformer_vit_config
from .vit import VisionTransformer, ViTConfig, vit_config

ASSETS = Path(__file__).resolve().parents[2] / "assets"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PRESETS: dict[str, tuple[str, Callable[..., dict]]] = {}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


def register_model(name: str, family: str):
    """Decorator: ``fn() -> dict`` of preset arguments for the family's config builder."""
    def deco(fn: Callable[..., dict]) -> Callable[..., dict]:
        _PRESETS[name] = (family, fn)
        return fn
    return deco


@register_model("vit-tiny", "vit")
def _vit_tiny() -> dict:
    """Fast CPU default: 32×32 input, 4×4 patches (8×8 grid), dim 64, 4 blocks of 4 heads."""
    return dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


@register_model("deit-tiny", "vit")
def _deit_tiny() -> dict:
    return dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3,
                mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model("deit-small", "vit")
def _deit_small() -> dict:
    return dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model("deit-base", "vit")
def _deit_base() -> dict:
    return dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12,
                mean=IMAGENET_MEAN, std=IMAGENET_STD)


@register_model("linformer-vit-paper", "linformer-vit")
def _linformer_paper() -> dict:
    """Seed 000: 224×224 RGB, 32×32 patches, seq_len 50, dim 128, depth 12, heads 8, k 64."""
    return dict(img_size=224, patch_size=32, dim=128, depth=12, heads=8, k=64)


@register_model("linformer-vit-tiny", "linformer-vit")
def _linformer_tiny() -> dict:
    """CPU-sized Linformer-ViT: 32×32 input, 4×4 patches (seq_len 65), dim 64, 4 layers, k 16."""
    return dict(img_size=32, patch_size=4, dim=64, depth=4, heads=4, k=16)


def list_models() -> list[str]:
    return list(_PRESETS)


def _from_config(config: ViTConfig | LinformerViTConfig) -> nn.Module:
    if isinstance(config, ViTConfig):
        return VisionTransformer(config)
    return LinformerViT(config)


def model_family(model: nn.Module) -> str:
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, LinformerViT):
        return "linformer-vit"
    raise TypeError(f"not a PruneLens model: {type(model).__name__}")


def pretrained_path(name: str, dataset: str = "shapes") -> Path:
    """Where the shipped checkpoint of preset ``name`` trained on ``dataset`` lives."""
    return ASSETS / "checkpoints" / f"{name}_{dataset}.safetensors"


def build_model(name: str, num_classes: int, pretrained: bool = False,
                dataset: str = "shapes", **overrides) -> nn.Module:
    """Build preset ``name`` with ``num_classes`` outputs; ``overrides`` replace preset args.

    ``pretrained=True`` loads the checkpoint shipped in ``assets/checkpoints`` for ``dataset``.
    Raises ValueError for an unknown name, fewer than 2 classes, or an image size the patch
    size does not divide.
    """
    if name not in _PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_PRESETS)}")
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    family, preset = _PRESETS[name]
    args = {**preset(), **overrides, "num_classes": int(num_classes)}
    try:
        config = (vit_config(**args) if family == "vit" else linformer_vit_config(**args))
    except TypeError as e:
        raise ValueError(f"bad option for model {name!r}: {e}") from None
    model = _from_config(config)
    model.preset = name
    if pretrained:
        path = pretrained_path(name, dataset)
        if not path.exists():
            raise FileNotFoundError(f"no shipped checkpoint for {name!r} on {dataset!r} "
                                    f"(expected {path}); see assets/README.md to build it")
        load_weights(model, path)
    return model


# ---------------------------------------------------------------------------- checkpoints

def _read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a ``.safetensors`` or ``weights_only`` torch checkpoint; never plain pickle."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path.name} as safetensors: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(f"cannot read {path.name} as a weights-only torch checkpoint "
                              f"(only tensors are accepted, never pickled code): {e}") from None
    for key in ("model", "state_dict", "model_state_dict"):  # DeiT / Lightning wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
    return obj, {}


def checkpoint_info(path: str | Path) -> dict[str, str]:
    """The metadata of a readable checkpoint: for PruneLens files ``prunelens_family``,
    ``prunelens_config`` (JSON) and ``prunelens_preset``, so :func:`load_model` can rebuild
    them; empty for plain weights (load those with :func:`load_weights`). The whole file is
    read, so a corrupt or pickled one raises :class:`CheckpointError` here."""
    return dict(_read_state_dict(path)[1])


def load_weights(model: nn.Module, path: str | Path, exclude: tuple[str, ...] = ()) -> nn.Module:
    """Load timm-format (or PruneLens) weights into ``model`` in place, strictly.

    ``exclude`` lists key prefixes to skip (e.g. ``("head.",)`` to fine-tune on new classes).
    Missing, unexpected or mis-shaped keys raise :class:`CheckpointError` listing them.
    """
    sd, _ = _read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith(exclude)}
    own = {k: v for k, v in _plain_state_dict(model).items() if not k.startswith(exclude)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(sd) & set(own) if sd[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        def cut(xs: list[str]) -> str:
            return ", ".join(xs[:8]) + (f" … (+{len(xs) - 8})" if len(xs) > 8 else "")
        parts = [f"{len(missing)} missing keys: {cut(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected keys: {cut(unexpected)}" if unexpected else "",
                 f"{len(shapes)} mis-shaped: {cut(shapes)}" if shapes else ""]
        raise CheckpointError(f"{Path(path).name} does not fit this "
                              f"{type(model).__name__}: " + "; ".join(p for p in parts if p))
    model.load_state_dict(sd, strict=not exclude)
    return model


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with parametrizations (pruning masks) baked in, on CPU, contiguous.

    ``X.parametrizations.weight.original`` becomes ``X.weight`` holding the parametrized value
    (e.g. ``mask * original``); the parametrization's own buffers are dropped. The model itself
    is not touched (a deepcopy + remove_parametrizations would edit the class it shares).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            path, rest = key.split(".parametrizations.", 1)
            pname, tail = rest.split(".", 1)
            if tail == "original":
                out[f"{path}.{pname}"] = getattr(model.get_submodule(path), pname)
            continue
        out[key] = value
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def save_model(model: nn.Module, path: str | Path, extra: dict[str, str] | None = None, *,
               format: str = "prunelens") -> Path:
    """Save ``model`` as ``format``: ``"prunelens"`` (``.safetensors`` with the architecture in
    its metadata, masks baked in; temporary file, then rename), ``"hf"`` (a transformers
    ``save_pretrained`` folder) or ``"onnx"`` (opset 17, dynamic batch); see
    :mod:`core.models.export`."""
    if format in ("hf", "onnx"):
        from .export import save_hf, save_onnx
        return (save_hf if format == "hf" else save_onnx)(model, path)
    if format != "prunelens":
        raise ValueError(f"unknown format {format!r}; choose 'prunelens', 'hf' or 'onnx'")
    path = Path(path)
    meta = {"prunelens_family": model_family(model),
            "prunelens_config": json.dumps(model.config.to_dict()),
            "prunelens_preset": getattr(model, "preset", "")}
    meta.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(_plain_state_dict(model), str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_model(path: str | Path) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (shrunk shapes included) and load it.

    Also reads a Hugging Face or timm model folder, a Hugging Face hub id from the local cache
    (:mod:`core.models.hf`) and a bare timm ViT/DeiT state dict (:mod:`core.models.timm_format`).
    """
    from .hf import hub_snapshot, is_hub_id, load_folder
    if Path(path).is_dir():
        return load_folder(Path(path))
    if not Path(path).exists() and is_hub_id(str(path)):
        return load_folder(hub_snapshot(str(path)))
    sd, meta = _read_state_dict(path)
    if "prunelens_config" not in meta:
        from .timm_format import load_timm_state_dict
        return load_timm_state_dict(sd, source=Path(path).name)
    cfg = json.loads(meta["prunelens_config"])
    config = (ViTConfig.from_dict(cfg) if meta.get("prunelens_family") == "vit"
              else LinformerViTConfig.from_dict(cfg))
    if isinstance(config, ViTConfig):  # no random init to overwrite
        try:
            model = VisionTransformer.from_state_dict(config, sd, source=Path(path).name)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    else:
        model = _from_config(config)
        model.load_state_dict(sd, strict=True)
    model.preset = meta.get("prunelens_preset", "")
    return model
