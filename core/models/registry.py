"""Model registry (timm's ``register_model`` / ``create_model``) and checkpoints.

``build_model(name, num_classes, **overrides)`` builds a preset; ``list_models()`` feeds the
dashboard's select box. Checkpoints are safetensors (or ``.pth`` read with
``torch.load(weights_only=True)``, told apart by content); PruneLens' own files carry the architecture in their
metadata, so a physically shrunk model loads back with its new shapes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file
from torch import nn

from . import linformer_adapter, vit_adapter  # noqa: F401  (register the families)
from .adapter import adapter_for_config, adapter_for_family, get_adapter
from .checkpoint import (CheckpointError, _error, _fit_report, _header,  # noqa: F401
                         _plain_state_dict, _read_state_dict, checkpoint_info, is_safetensors,
                         masked_keys, one_line, parametrized_key, read_json)
from .linformer_vit import linformer_vit_config
from .vit import vit_config

ASSETS = Path(__file__).resolve().parents[2] / "assets"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PRESETS: dict[str, tuple[str, Callable[..., dict]]] = {}


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


def _from_config(config) -> nn.Module:
    return adapter_for_config(config).build(config)


def model_family(model: nn.Module) -> str:
    """The family name stored in checkpoints (``"vit"``, ``"linformer-vit"``)."""
    return get_adapter(model).family


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

def load_weights(model: nn.Module, path: str | Path, exclude: tuple[str, ...] = ()) -> nn.Module:
    """Load timm-format (or PruneLens) weights into ``model`` in place, strictly.

    ``exclude`` lists key prefixes to skip (e.g. ``("head.",)`` to fine-tune on new classes).
    Missing, unexpected or mis-shaped keys raise :class:`CheckpointError` listing them.
    """
    sd, _ = _read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith(exclude)}
    own = {k: v for k, v in _plain_state_dict(model).items() if not k.startswith(exclude)}
    report = _fit_report(Path(path).name, f"this {type(model).__name__}",
                         {k: tuple(v.shape) for k, v in own.items()},
                         {k: tuple(v.shape) for k, v in sd.items()})
    if report:
        raise CheckpointError(report)
    # a masked (parametrized) weight X.weight lives at X.parametrizations.weight.original:
    # the file's values go there and the mask stays, so a re-masked model keeps its zeros
    where = {}
    for key in model.state_dict():
        parametrized = parametrized_key(key)
        if parametrized is not None and parametrized[1] == "original":
            where[parametrized[0]] = key
    if not where:
        model.load_state_dict(sd, strict=not exclude)
        return model
    result = model.load_state_dict({where.get(k, k): v for k, v in sd.items()}, strict=False)
    missing = [k for k in result.missing_keys if ".parametrizations." not in k
               and not k.startswith(exclude)]
    if missing or result.unexpected_keys:  # the fit report above makes this unreachable
        raise CheckpointError(f"{Path(path).name} does not fit this {type(model).__name__}: "
                              f"missing {missing}, unexpected {result.unexpected_keys}")
    return model


def save_model(model: nn.Module, path: str | Path, extra: dict[str, str] | None = None, *,
               format: str = "prunelens", lineage=None) -> Path:
    """Save ``model`` as ``format``: ``"prunelens"`` (``.safetensors`` with the architecture in
    its metadata, masks baked in; temporary file, then rename), ``"hf"`` (a transformers
    ``save_pretrained`` folder) or ``"onnx"`` (opset 17, dynamic batch); see
    :mod:`core.models.export`. ``extra``: more metadata (strings) for a PruneLens file; the
    ``prunelens_*`` entries are save_model's own. A ``.onnx`` name with the default format, a
    folder given for a file or a file for a folder raise before anything is written."""
    if format not in ("prunelens", "hf", "onnx"):
        raise ValueError(f"unknown format {format!r}; choose 'prunelens', 'hf' or 'onnx'")
    try:
        get_adapter(model)
    except TypeError:
        raise CheckpointError(f"{type(model).__name__} is not a PruneLens model (build_model or "
                              "load_model makes one): save_model writes PruneLens ViTs only"
                              ) from None
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CheckpointError(f"cannot write {path.name}: {parent} is a file, not a "
                                      "folder")
            break
    state = _plain_state_dict(model)  # the weights as written (masks baked in), made once
    _require_finite(state)
    if format != "hf" and path.is_dir():
        raise CheckpointError(f"{path} is a folder: give a file name (format {format!r} writes "
                              "one file)")
    if format == "hf" and path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is a file: format 'hf' writes a folder")
    if format in ("hf", "onnx"):
        from .export import save_hf, save_onnx
        return (save_hf if format == "hf" else save_onnx)(model, path)
    if path.suffix.lower() == ".onnx":
        raise ValueError(f"{path.name} ends in .onnx but format is 'prunelens' (safetensors): "
                         "pass format='onnx' to write ONNX, or name the file .safetensors")
    reserved = sorted(k for k in (extra or {}) if str(k).startswith("prunelens_"))
    if reserved:
        raise ValueError(f"extra metadata cannot set {', '.join(reserved)}: the prunelens_* "
                         "entries describe the architecture and are written by save_model")
    bad = sorted(str(k) for k, v in (extra or {}).items()
                 if not isinstance(k, str) or not isinstance(v, str))
    if bad:
        raise ValueError(f"extra metadata must map strings to strings; not so: {', '.join(bad)}")
    meta = {"prunelens_family": model_family(model),
            "prunelens_config": json.dumps(model.config.to_dict()),
            "prunelens_preset": getattr(model, "preset", ""), **(extra or {})}
    inputs = _inputs_meta(model)
    if inputs is not None:  # load_model gives back labels, WordNet ids and preprocessing
        meta["prunelens_inputs"] = inputs
    if lineage:  # where the model comes from (core.lineage; read back by read_lineage)
        from ..lineage import META_KEY, to_json
        meta[META_KEY] = to_json(lineage)
    masked = masked_keys(model)
    if masked:  # load_model gives them back as model.masked_params
        meta["prunelens_masked"] = json.dumps(masked)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata=meta)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _require_finite(state: dict[str, torch.Tensor]) -> None:
    """Refuse to save NaN or infinite weights (load_model refuses them; a file that cannot
    be read back would be lost work): CheckpointError naming the first such tensor."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"not saved: {name} holds {bad} NaN or infinite value(s) "
                                  "(a diverged run?); nothing was written")


def _meta_json(meta: dict[str, str], field: str, name: str) -> object:
    """The JSON value of a metadata ``field`` of file ``name`` (:class:`CheckpointError` naming
    the field if it does not parse, nests deeper than Python's stack or holds huge ints)."""
    try:
        return json.loads(meta[field])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{name}: {field} is not valid JSON ({e.msg} at character "
                              f"{e.pos})") from None
    except (RecursionError, ValueError) as e:
        raise CheckpointError(f"{name}: {field} is not a readable JSON value "
                              f"({one_line(e, 120)})") from None


MAX_INPUTS_CHARS = 4 * 2**20  # prunelens_inputs: 1000 labels of 200 characters fit easily
MAX_LABEL_CHARS = 1000


def _inputs_meta(model: nn.Module) -> str | None:
    """``prunelens_inputs``: the JSON of the model's ``labels``, ``wnids`` and
    ``preprocessing`` (what HF / timm loaders attach), or None when it has none of them."""
    from dataclasses import asdict

    prep = getattr(model, "preprocessing", None)
    labels, wnids = getattr(model, "labels", None), getattr(model, "wnids", None)
    if prep is None and labels is None and wnids is None:
        return None
    return json.dumps({"labels": None if labels is None else list(labels),
                       "wnids": None if wnids is None else list(wnids),
                       "preprocessing": None if prep is None else asdict(prep)})


def _inputs(meta: dict[str, str], name: str, num_classes: int):
    """``(preprocessing, labels, wnids)`` of ``prunelens_inputs``, every field checked: a
    bounded size, a name (and WordNet id) per output as strings, a valid preprocessing
    (:class:`CheckpointError` naming the field)."""
    from core.data.preprocess import Preprocessing

    field = "prunelens_inputs"
    if len(meta[field]) > MAX_INPUTS_CHARS:
        raise CheckpointError(f"{name}: {field} is {len(meta[field])} characters; at most "
                              f"{MAX_INPUTS_CHARS}")
    value = _meta_json(meta, field, name)
    if not isinstance(value, dict) or set(value) - {"labels", "wnids", "preprocessing"}:
        raise CheckpointError(f"{name}: {field} must be a JSON object with labels, wnids and "
                              "preprocessing")
    names = {}
    for key in ("labels", "wnids"):
        got = value.get(key)
        if got is not None and not (isinstance(got, list) and len(got) == num_classes and all(
                isinstance(t, str) and len(t) <= MAX_LABEL_CHARS for t in got)):
            raise CheckpointError(f"{name}: {field}.{key} must be null or {num_classes} strings "
                                  f"(one per output) of at most {MAX_LABEL_CHARS} characters")
        names[key] = None if got is None else tuple(got)
    prep = value.get("preprocessing")
    if prep is not None:
        try:
            if not isinstance(prep, dict):
                raise TypeError(f"a JSON object, got {type(prep).__name__}")
            prep = {k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()}
            prep = Preprocessing(**prep)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{name}: {field}.preprocessing: {one_line(e, 200)}") from None
    return prep, names["labels"], names["wnids"]


def _architecture(meta: dict[str, str], name: str):
    """The family adapter and configuration a PruneLens file declares, every field checked
    (:class:`CheckpointError` naming the field)."""
    family = meta.get("prunelens_family", "vit")
    try:
        adapter = adapter_for_family(family)
    except ValueError as e:
        raise CheckpointError(f"{name}: prunelens_family: {e}") from None
    cfg = _meta_json(meta, "prunelens_config", name)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{name}: prunelens_config must be a JSON object, got "
                              f"{type(cfg).__name__}")
    try:
        config = adapter.config_from_dict(cfg)
    except KeyError as e:
        raise CheckpointError(f"{name}: prunelens_config lacks the field {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{name}: prunelens_config: {one_line(e)}") from None
    return adapter, config


def load_model(path: str | Path, revision: str | None = None, *, progress=None,
               allow_download: bool | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_model` (shrunk shapes included) and load it.

    Also reads a Hugging Face or timm model folder, a Hugging Face hub id (``org/name`` that
    is not a local path; ``revision``: a branch, tag or commit) from the cache or downloaded
    into it (:mod:`core.models.hub`: ``progress`` and ``allow_download`` go to
    :func:`~core.models.hub.download`), and a bare timm ViT/DeiT state dict
    (:mod:`core.models.timm_format`).
    For a PruneLens file the declared architecture is checked against the tensor shapes in the
    file's header before any weight is read or any module allocated, so a forged file costs
    what its size says; every problem is a one-line :class:`CheckpointError` naming the field
    or tensors. Files are told safetensors or torch by their content, not their name. The
    model comes back in eval mode (as transformers' ``from_pretrained``). Pruning masks were
    baked into zeros by :func:`save_model`; a PruneLens file also lists the masked parameters,
    given back as ``model.masked_params``, and ``core.pruning.restore_masks(model)`` puts the
    masks back before training (else the pruned weights would move)."""
    from .hf import is_hub_id
    path = Path(path)
    if not path.exists() and is_hub_id(str(path)):
        from .hub import download
        folder = download(str(path), revision, progress=progress, allow_download=allow_download)
        return load_folder(folder)
    if revision is not None:
        raise ValueError(f"revision= is for Hugging Face hub ids; {path.name} is a local "
                         f"{'folder' if path.is_dir() else 'file'}")
    if path.is_dir():
        return load_folder(path)
    if path.is_file() and (path.suffix.lower() == ".safetensors" or is_safetensors(path)):
        shapes, meta = _header(path)
        if "prunelens_config" in meta:
            adapter, config = _architecture(meta, path.name)
            with torch.device("meta"):  # shapes only: no memory, no initialisation
                skeleton = adapter.build(config)
            report = _fit_report(path.name, f"the {adapter.family} architecture in its metadata",
                                 {k: tuple(v.shape) for k, v in skeleton.state_dict().items()},
                                 shapes)
            if report:
                raise CheckpointError(report)
    sd, meta = _read_state_dict(path)
    if "prunelens_config" not in meta:
        from .timm_format import load_timm_state_dict
        _not_a_bare_timm_dict(sd, path.name)
        return load_timm_state_dict(sd, source=path.name).eval()
    adapter, config = _architecture(meta, path.name)
    try:
        model = adapter.from_state_dict(config, sd)  # no random init to overwrite
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path.name}: {one_line(e)}") from None
    model.preset = meta.get("prunelens_preset", "")
    model.masked_params = _masked_params(meta, sd, path.name)
    if "prunelens_inputs" in meta:
        from core.data.preprocess import attach_inputs
        attach_inputs(model, *_inputs(meta, path.name, model.num_classes))
    return model.eval()


def _not_a_bare_timm_dict(sd: dict[str, torch.Tensor], name: str) -> None:
    """Name the two look-alikes of a bare timm state dict: Hugging Face weights without
    their config.json, and a wrapper's checkpoint (Lightning, DDP) whose keys carry a prefix."""
    keys = list(sd)
    if keys and all(k.startswith(("vit.", "deit.", "classifier.", "cls_classifier.",
                                  "distillation_classifier.")) for k in keys):
        raise CheckpointError(f"{name} holds bare Hugging Face ViT/DeiT weights: they need their "
                              "config.json; load the save_pretrained folder (config.json + "
                              "model.safetensors) instead of the file")
    prefix = keys[0].split(".", 1)[0] + "." if keys and "." in keys[0] else ""
    if prefix and all(k.startswith(prefix) for k in keys) and any(
            k == f"{prefix}patch_embed.proj.weight" for k in keys):
        hint = {"model.": " (a PyTorch Lightning checkpoint?)",
                "module.": " (saved from a DistributedDataParallel wrapper?)"}.get(prefix, "")
        raise CheckpointError(f"{name}: every key starts with {prefix!r}{hint}: save the inner "
                              f"model's state_dict() (keys without {prefix!r}) and load that")


def _masked_params(meta: dict[str, str], sd: dict[str, torch.Tensor],
                   name: str) -> tuple[str, ...]:
    """The parameters a PruneLens file says were masked when saved (``prunelens_masked``, a
    JSON list of tensor names in the file); ``()`` when it says nothing."""
    if "prunelens_masked" not in meta:
        return ()
    keys = _meta_json(meta, "prunelens_masked", name)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CheckpointError(f"{name}: prunelens_masked must be a JSON list of tensor names")
    unknown = sorted(set(keys) - set(sd))
    if unknown:
        raise CheckpointError(f"{name}: prunelens_masked names tensors the file does not hold: "
                              f"{', '.join(unknown[:8])}")
    return tuple(keys)


def load_folder(folder: Path) -> nn.Module:
    """A Hugging Face (``model_type``) or timm (``architecture``) model folder."""
    folder = Path(folder)
    config = folder / "config.json"
    if os.path.lexists(config) and not config.is_file():
        kind = ("a folder" if config.is_dir() else "a FIFO" if config.is_fifo()
                else "a device" if config.is_char_device() or config.is_block_device()
                else "a broken link" if config.is_symlink() and not config.exists()
                else "not a regular file")
        raise _error(f"{folder.name}: its config.json is {kind}, not a file: expected a "
                     "Hugging Face or timm model folder (config.json + model.safetensors)")
    if not config.is_file():
        raise _error(f"{folder} has no config.json: expected a Hugging Face or timm model "
                     "folder (config.json + model.safetensors)")
    cfg = read_json(folder / "config.json")
    if "architecture" in cfg:
        from .timm_format import load_timm_folder
        return load_timm_folder(folder, cfg)
    return _hf().load_hf_folder(folder, cfg)


def _hf():
    from . import hf
    return hf
