"""timm ViT/DeiT checkpoints (folders and bare state dicts) → :class:`VisionTransformer`.

Our ViT uses timm's state-dict names, so loading is about telling the architecture: the token
options and sizes are read from the keys and shapes (``cls_token``, ``dist_token`` +
``head_dist``, ``reg_token`` (1, R, D), ``blocks.i.ls1.gamma``, ``fc_norm``, ``qkv.bias``,
``patch_embed.proj.weight`` (D, C, p, p), ``blocks.i.mlp.fc1.weight`` (hidden, D)); whether
``pos_embed`` has entries for the prefix tokens follows from its length and the grid. The head
count is not in any shape: a timm folder's ``model_args`` may give it, else timm's width → heads
table for its ViT/DeiT sizes is used. A timm folder (``push_to_hf_hub`` / ``save_pretrained``
layout) has ``config.json`` with ``architecture``, ``num_classes`` and ``pretrained_cfg``
(``mean``, ``std``, ``input_size``) next to ``model.safetensors``; its eval transform
(``crop_pct``, ``interpolation``, ``crop_mode``) and ``label_names`` are attached as
``model.preprocessing``, ``model.labels`` and ``model.wnids`` (``core.data.preprocess``,
``core.data.labels``).
"""
from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

from torch import Tensor

from core.data.labels import labels_from_timm
from core.data.preprocess import Preprocessing, attach_inputs, fit_to_model, from_timm_cfg

from .checkpoint import SUPPORTED, CheckpointError, _error, one_line, read_weights
from .config_checks import (MAX_CLASSES, MAX_DEPTH, MAX_HEADS, json_bool, json_dict, json_int,
                            json_size, json_stats, json_str, shown, stray_errors)
from .vit import BlockConfig, VisionTransformer, ViTConfig

TIMM_FAMILIES = ("vit_", "deit_", "deit3_")
# timm's ViT/DeiT widths → heads (vit_tiny … vit_gigantic; head dim 64 except huge/giant)
TIMM_HEADS = {192: 3, 256: 4, 320: 5, 384: 6, 512: 8, 640: 10, 768: 12, 1024: 16, 1280: 16,
              1408: 16, 1664: 16}
# architecture-name parts for options that no key or shape shows
UNSUPPORTED_NAMES = {"quickgelu": "QuickGELU activation", "rope": "rotary position embeddings"}
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

_KNOWN = re.compile(
    r"^(cls_token|dist_token|reg_token|pos_embed|patch_embed\.proj\.(weight|bias)"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|blocks\.\d+\.ls[12]\.gamma|(norm|fc_norm|head|head_dist)\.(weight|bias))$")
# what an unknown key means in timm, for the error message
_OPTIONS = (("norm_pre", "pre-norm (CLIP)"), ("q_norm", "qk-norm"), ("k_norm", "qk-norm"),
            ("attn_pool", "attention pooling (SigLIP/MAP)"), ("attn.norm", "scale-norm"),
            ("fc1_g", "SwiGLU MLP"), ("fc1_x", "SwiGLU MLP"), ("rope", "rotary embeddings"),
            ("head.fc", "MLP head"), ("pre_logits", "pre-logits layer"),
            ("lambda", "differential attention"), ("in_proj", "parallel blocks"))


def _describe_unknown(keys: list[str]) -> str:
    named = sorted({what for k in keys for part, what in _OPTIONS
                    if part in k and not _KNOWN.match(k)})
    shown = ", ".join(keys[:6]) + (f" … (+{len(keys) - 6})" if len(keys) > 6 else "")
    return (f"{', '.join(named)} — " if named else "") + f"keys {shown}"


def _square(n: int) -> int | None:
    if n <= 0:
        return None
    r = math.isqrt(n)
    return r if r * r == n else None


def _shape(sd: dict[str, Tensor], key: str, ndim: int, source: str, what: str) -> tuple[int, ...]:
    """The shape of ``sd[key]``, which must have ``ndim`` dimensions, none empty."""
    shape = tuple(sd[key].shape)
    if len(shape) != ndim or not all(shape):
        raise _error(f"{source}: {key} must be a {ndim}-D tensor {what}, got shape {shape}")
    return shape


def _depth(sd: dict[str, Tensor], source: str) -> int:
    """1 + the highest block index of the keys (``blocks.<i>.…``), at most MAX_DEPTH."""
    indices = {k.split(".")[1] for k in sd if k.startswith("blocks.")}
    bad = sorted(i for i in indices if len(i) > 4 or int(i) >= MAX_DEPTH)
    if bad:
        raise _error(f"{source}: keys name block {bad[0][:12]}; PruneLens reads models of "
                     f"at most {MAX_DEPTH} blocks")
    return 1 + max(int(i) for i in indices)


def timm_vit_config(sd: dict[str, Tensor], *, source: str, num_heads: int | None = None,
                    img_size: tuple[int, int] | None = None, num_classes: int | None = None,
                    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
                    std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
                    global_pool: str | None = None,
                    no_embed_class: bool | None = None) -> ViTConfig:
    """Tell a timm ViT/DeiT architecture from its state dict's keys and shapes.

    Raises CheckpointError naming keys of options PruneLens' ViT cannot express, or when the
    head count or image size cannot be told.
    """
    unknown = sorted(k for k in sd if not _KNOWN.match(k))
    if unknown:
        raise _error(f"{source}: timm options PruneLens' ViT cannot express: "
                     f"{_describe_unknown(unknown)}; supported: {SUPPORTED}")
    if "patch_embed.proj.weight" not in sd or "blocks.0.attn.qkv.weight" not in sd:
        raise _error(f"{source}: not a timm ViT/DeiT state dict (no patch_embed.proj.weight / "
                     f"blocks.0.attn.qkv.weight); supported: {SUPPORTED}")
    if "head.weight" not in sd:
        raise _error(f"{source}: no classification head (head.weight): PruneLens needs a "
                     "classifier (timm num_classes > 0)")
    D, C, ph, pw = _shape(sd, "patch_embed.proj.weight", 4, source,
                          "(embed_dim, channels, patch, patch)")
    if ph != pw:
        raise _error(f"{source}: non-square patches {ph}x{pw} are not supported")
    depth = _depth(sd, source)
    guessed = num_heads is None
    if num_heads is not None:
        try:
            num_heads = json_int(source, "num_heads", num_heads, 1, MAX_HEADS, "heads")
        except ValueError as e:
            raise _error(str(e)) from None
    else:
        if D not in TIMM_HEADS:
            raise _error(
                f"{source} carries no PruneLens architecture and its num_heads cannot be told "
                f"from its keys (embed_dim {D} is no timm ViT/DeiT width); build the model "
                "with build_model() and use load_weights(), or call "
                "core.models.timm_format.load_timm_state_dict(path, num_heads=...)")
        num_heads = TIMM_HEADS[D]
    blocks = []
    for i in range(depth):
        qkv, fc1 = sd.get(f"blocks.{i}.attn.qkv.weight"), sd.get(f"blocks.{i}.mlp.fc1.weight")
        if qkv is None or fc1 is None:
            raise _error(f"{source}: block {i} lacks attn.qkv.weight or mlp.fc1.weight")
        _shape(sd, f"blocks.{i}.attn.qkv.weight", 2, source, "(3 × heads × head_dim, embed_dim)")
        _shape(sd, f"blocks.{i}.mlp.fc1.weight", 2, source, "(hidden, embed_dim)")
        if guessed and qkv.shape[0] != 3 * D:  # e.g. a pruned model without its metadata
            raise _error(
                f"{source}: block {i}'s qkv has {qkv.shape[0]} rows where a timm ViT of width "
                f"{D} has {3 * D}, so its head count cannot be told from the table of timm "
                "widths (a PruneLens-pruned model saved without its metadata?); load the file "
                "save_model wrote, or call core.models.timm_format.load_timm_state_dict(path, "
                "num_heads=...)")
        if qkv.shape[0] % (3 * num_heads):
            raise _error(f"{source}: block {i}'s qkv has {qkv.shape[0]} rows, not a multiple of "
                         f"3 × {num_heads} heads")
        hd = qkv.shape[0] // (3 * num_heads)
        blocks.append(BlockConfig(num_heads, hd, hd, fc1.shape[0]))
    class_token, distilled = "cls_token" in sd, "dist_token" in sd
    num_reg = (_shape(sd, "reg_token", 3, source, "(1, registers, embed_dim)")[1]
               if "reg_token" in sd else 0)
    prefix = int(class_token) + int(distilled) + num_reg
    L = (_shape(sd, "pos_embed", 3, source, "(1, tokens, embed_dim)")[1]
         if "pos_embed" in sd else 0)
    _shape(sd, "head.weight", 2, source, "(classes, features)")
    if img_size is not None:
        try:
            img_size = json_size(source, "img_size", img_size)
        except ValueError as e:
            raise _error(str(e)) from None
        grid = (img_size[0] // ph, img_size[1] // ph)
        if no_embed_class is None:
            no_embed_class = L == grid[0] * grid[1]
    else:  # square grid, as every timm ViT/DeiT release
        if no_embed_class is None:
            no_embed_class = bool(_square(L)) and not (prefix and _square(L - prefix))
        side = _square(L if no_embed_class else L - prefix)
        if side is None:
            raise _error(f"{source}: pos_embed has {L} entries, neither a square grid nor a "
                         f"square grid + {prefix} prefix tokens; give the image size")
        img_size = (side * ph, side * ph)
    if global_pool is None:
        global_pool = "avg" if ("fc_norm.weight" in sd or not class_token) else "token"
    gamma = sd.get("blocks.0.ls1.gamma")
    if gamma is not None:
        _shape(sd, "blocks.0.ls1.gamma", 1, source, "(embed_dim,)")
    try:
        config = ViTConfig(
            img_size=tuple(img_size), patch_size=ph, in_chans=C,
            num_classes=int(num_classes if num_classes is not None else sd["head.weight"].shape[0]),
            embed_dim=D, blocks=tuple(blocks), qkv_bias="blocks.0.attn.qkv.bias" in sd,
            mean=tuple(mean), std=tuple(std), class_token=class_token, distilled=distilled,
            dist_head="head_dist.weight" in sd or not distilled,
            num_reg_tokens=num_reg, no_embed_class=no_embed_class,
            init_values=float(gamma.flatten()[0]) if gamma is not None else None,
            global_pool=global_pool, fc_norm="fc_norm.weight" in sd)
        config.check()
    except (ValueError, TypeError) as e:
        raise _error(f"{source}: {one_line(e)}") from None
    return config


def _build(sd: dict[str, Tensor], config: ViTConfig, source: str) -> VisionTransformer:
    try:
        model = VisionTransformer.from_state_dict(config, sd, source=source)
    except CheckpointError:
        raise
    except ValueError as e:
        raise _error(one_line(e)) from None
    model.preset = ""
    return model.eval()


def load_timm_state_dict(sd: dict[str, Tensor] | str | Path, *, source: str = "",
                         num_heads: int | None = None, **options) -> VisionTransformer:
    """A bare timm ViT/DeiT state dict (or a file of one) → model, architecture from its keys.

    Without a config the image mean/std are unknown: ImageNet's (timm's DeiT default) are used
    and a warning says so. ``options`` go to :func:`timm_vit_config` (``img_size``, ``mean``,
    ``std``, ``global_pool``…).
    """
    if not isinstance(sd, dict):
        from .checkpoint import _read_state_dict
        source = source or Path(sd).name
        try:
            sd = _read_state_dict(sd)[0]
        except CheckpointError as e:
            raise _error(one_line(e)) from None
    source = source or "state dict"
    with stray_errors(CheckpointError, source):
        config = timm_vit_config(sd, source=source, num_heads=num_heads, **options)
        if "mean" not in options:
            warnings.warn(f"{source} carries no preprocessing: images are normalised with "
                          "ImageNet's mean/std (timm's DeiT default)", stacklevel=2)
        model = _build(sd, config, source)
    model.source = f"timm state dict ({source})"
    return model


def _name(folder: Path) -> str:
    """How messages name a model folder: its name, never the server path around it."""
    return Path(folder).name or str(folder)


def load_timm_folder(folder: Path, cfg: dict) -> VisionTransformer:
    """A timm model folder (``config.json`` with ``architecture`` + weights) → model.

    ``config.json``'s fields (``architecture``, ``num_classes``, ``model_args``,
    ``pretrained_cfg``) are checked for type and range before the weights are read; every
    problem is a one-line CheckpointError naming the folder (by name) and the field, and
    anything a check missed is still turned into one (:func:`~.config_checks.stray_errors`)."""
    folder = Path(folder)
    with stray_errors(CheckpointError, _name(folder), str(folder)):
        return _load_timm_folder(folder, cfg)


def _timm_fields(cfg: dict, where: str) -> dict:
    """The fields of a timm ``config.json`` PruneLens reads, checked → timm_vit_config's
    keyword arguments (ValueError naming the field)."""
    arch = json_str(where, "architecture", cfg.get("architecture"))
    base = arch.split(".")[0]
    if not base.startswith(TIMM_FAMILIES):
        raise ValueError(f"{where}: unsupported architecture timm {shown(arch)}; PruneLens "
                         f"reads {SUPPORTED}")
    for part, what in UNSUPPORTED_NAMES.items():
        if part in base:
            raise ValueError(f"{where}: timm {arch!r} uses {what}, which PruneLens' ViT cannot "
                             f"express; supported: {SUPPORTED}")
    pre = json_dict(where, "pretrained_cfg", cfg.get("pretrained_cfg"))
    args = json_dict(where, "model_args", cfg.get("model_args"))
    for key, ok in (("pre_norm", False), ("final_norm", True), ("dynamic_img_size", False)):
        if key in args and bool(args[key]) != ok:
            raise ValueError(f"{where}: timm option {key}={shown(args[key])} is not supported; "
                             f"supported: {SUPPORTED}")
    if args.get("act_layer") not in (None, "gelu"):
        raise ValueError(f"{where}: timm act_layer {shown(args['act_layer'])} is not supported "
                         "(PruneLens' ViT uses GELU)")
    img_size = None
    if args.get("img_size") is not None:
        img_size = json_size(where, "model_args.img_size", args["img_size"])
    elif pre.get("input_size") is not None:
        size = pre["input_size"]
        if not (isinstance(size, list) and len(size) == 3):
            raise ValueError(f"{where}: pretrained_cfg.input_size must be [channels, height, "
                             f"width], got {shown(size)}")
        img_size = json_size(where, "pretrained_cfg.input_size", size[1:])
    num_heads = args.get("num_heads")
    if num_heads is not None:
        num_heads = json_int(where, "model_args.num_heads", num_heads, 1, MAX_HEADS, "heads")
    num_classes = cfg.get("num_classes")
    if num_classes is not None:
        num_classes = json_int(where, "num_classes", num_classes, 0,  # 0: headless, said later
                               MAX_CLASSES, "classes")
    pool = args.get("global_pool") or cfg.get("global_pool")
    if pool is not None:
        pool = json_str(where, "global_pool", pool)
    no_embed_class = args.get("no_embed_class")
    if no_embed_class is not None:
        no_embed_class = json_bool(where, "model_args.no_embed_class", no_embed_class)
    mean, std = pre.get("mean", IMAGENET_DEFAULT_MEAN), pre.get("std", IMAGENET_DEFAULT_STD)
    for name, value in (("mean", mean), ("std", std)):
        if not (isinstance(value, (list, tuple)) and 1 <= len(value) <= 64):
            raise ValueError(f"{where}: pretrained_cfg.{name} must be a list of per-channel "
                             f"numbers, got {shown(value)}")
    return dict(num_heads=num_heads, img_size=img_size, num_classes=num_classes,
                mean=json_stats(where, "pretrained_cfg.mean", mean, len(mean), positive=False),
                std=json_stats(where, "pretrained_cfg.std", std, len(std), positive=True),
                global_pool=pool, no_embed_class=no_embed_class)


def timm_inputs(folder: Path, cfg: dict, config: ViTConfig
                ) -> tuple[Preprocessing, tuple[str, ...] | None, tuple[str, ...] | None]:
    """timm's eval transform from ``pretrained_cfg`` (``core.data.preprocess``), fitted to the
    model's input size, and the output names and WordNet ids from ``label_names`` /
    ``label_descriptions`` (``core.data.labels``); CheckpointError naming the field otherwise."""
    where = f"config.json in {_name(folder)}"
    pre = cfg.get("pretrained_cfg") or {}
    try:
        prep = from_timm_cfg(pre, config.img_size, config.in_chans, f"{where}: pretrained_cfg")
        names, wnids = labels_from_timm(
            cfg.get("label_names", pre.get("label_names")),
            cfg.get("label_descriptions", pre.get("label_descriptions")), config.num_classes,
            where)
    except ValueError as e:
        raise _error(str(e)) from None
    return fit_to_model(prep, config.img_size, _name(folder)), names, wnids


def _load_timm_folder(folder: Path, cfg: dict) -> VisionTransformer:
    where = f"config.json in {_name(folder)}"
    try:
        options = _timm_fields(cfg, where)  # before any weights are read
    except ValueError as e:
        raise _error(str(e)) from None
    sd = read_weights(folder)
    config = timm_vit_config(sd, source=_name(folder), **options)
    model = _build(sd, config, _name(folder))
    model.source = f"timm {cfg['architecture']} ({folder})"
    return attach_inputs(model, *timm_inputs(folder, cfg, config))
