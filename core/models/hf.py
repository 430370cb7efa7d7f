"""Hugging Face model folders and hub-cache ids → :class:`VisionTransformer`, and back.

Reads ``save_pretrained`` folders of transformers' ``ViTForImageClassification``,
``DeiTForImageClassification`` and ``DeiTForImageClassificationWithTeacher`` (``config.json`` +
``model.safetensors``, or ``pytorch_model.bin`` read with ``torch.load(weights_only=True)``)
without importing transformers. Their layers map one to one onto timm's names:

    {p}embeddings.{cls_token, distillation_token}   → cls_token, dist_token
    {p}embeddings.position_embeddings                → pos_embed
    {p}embeddings.patch_embeddings.projection        → patch_embed.proj
    {p}encoder.layer.i.attention.attention.{query, key, value} → blocks.i.attn.qkv ([q | k | v])
    {p}encoder.layer.i.attention.output.dense        → blocks.i.attn.proj
    {p}encoder.layer.i.{layernorm_before, layernorm_after} → blocks.i.{norm1, norm2}
    {p}encoder.layer.i.{intermediate, output}.dense  → blocks.i.mlp.{fc1, fc2}
    {p}layernorm → norm;  classifier (or cls_ / distillation_classifier) → head (/ head_dist)

with ``p`` = ``vit.`` or ``deit.``. Heads removed with transformers' ``prune_heads`` (config
``pruned_heads``) become blocks with fewer heads. The image mean/std come from
``preprocessor_config.json`` (transformers' defaults 0.5/0.5 when absent) and are folded so the
returned model takes images in [0, 1]. A hub id (``org/name``) is looked up in the local cache
only (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ``~/.cache/huggingface/hub``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import SUPPORTED, CheckpointError, _error, one_line, read_json, read_weights
from .vit import BlockConfig, VisionTransformer, ViTConfig, state_dict_mismatch

# architecture → (model_type, weight prefix)
HF_ARCHITECTURES = {
    "ViTForImageClassification": ("vit", "vit."),
    "DeiTForImageClassification": ("deit", "deit."),
    "DeiTForImageClassificationWithTeacher": ("deit", "deit."),
}
# transformers' ImageProcessor defaults for ViT and DeiT (IMAGENET_STANDARD_MEAN/STD)
HF_DEFAULT_MEAN = (0.5, 0.5, 0.5)
HF_DEFAULT_STD = (0.5, 0.5, 0.5)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------------------- hub cache

def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.endswith((".safetensors", ".bin", ".pth",
                                                            ".pt", ".json"))


def hub_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repositories (same rules, no import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache"),
                                             "huggingface")
    return Path(home).expanduser() / "hub"


def hub_snapshot(repo_id: str) -> Path:
    """The cached snapshot folder of ``repo_id`` (``refs/main``'s revision, else the newest);
    nothing is downloaded."""
    cache = hub_cache_dir()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()),
                   key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    ref = repo / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    if found:
        return found[-1]
    raise _error(
        f"{repo_id!r} is not a local path and not in the local Hugging Face cache ({cache}); "
        f"nothing is downloaded. On a machine with internet run `huggingface-cli download "
        f"{repo_id}`, then copy its {repo.name} folder into {cache} here (or point HF_HOME "
        "at a copied cache)")


# ---------------------------------------------------------------------------- conversion

def _architecture(cfg: dict, weights: dict[str, Tensor] | None, where: str) -> str:
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    arch = archs[0] if archs else None
    if model_type not in ("vit", "deit"):
        what = f"model_type {model_type!r}" if model_type else "no model_type"
        named = f" ({arch})" if arch else ""
        raise _error(f"{where}: unsupported architecture: {what}{named}; PruneLens reads "
                     f"{SUPPORTED}")
    if arch is None and weights is not None:  # old configs: tell the head from the keys
        arch = ("DeiTForImageClassificationWithTeacher" if "cls_classifier.weight" in weights
                else "ViTForImageClassification" if model_type == "vit"
                else "DeiTForImageClassification")
    if arch not in HF_ARCHITECTURES or HF_ARCHITECTURES[arch][0] != model_type:
        raise _error(f"{where}: unsupported architecture {arch!r} (model_type {model_type!r}); "
                     f"PruneLens needs an image classifier: {SUPPORTED}")
    return arch


def _pair(v: object, name: str, where: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, int) for a in v):
        return (v[0], v[1])
    raise _error(f"{where}: config {name} must be an int or [height, width], got {v!r}")


def preprocessing(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...], dict]:
    """Mean/std for images in [0, 1] from ``preprocessor_config.json`` (rescale folded in),
    and the file's contents (empty when absent: transformers' defaults)."""
    path = folder / "preprocessor_config.json"
    pre = read_json(path) if path.is_file() else {}
    mean = pre.get("image_mean", HF_DEFAULT_MEAN) if pre.get("do_normalize", True) else 0.0
    std = pre.get("image_std", HF_DEFAULT_STD) if pre.get("do_normalize", True) else 1.0
    # the processor feeds (255·x·rescale − mean)/std, x in [0, 1]
    factor = 255.0 * (float(pre.get("rescale_factor", 1 / 255)) if pre.get("do_rescale", True)
                      else 1.0)
    mean = [mean] * 3 if isinstance(mean, (int, float)) else list(mean)
    std = [std] * 3 if isinstance(std, (int, float)) else list(std)
    return tuple(m / factor for m in mean), tuple(s / factor for s in std), pre


def hf_vit_config(cfg: dict, arch: str, mean: tuple[float, ...], std: tuple[float, ...],
                  where: str = "config.json") -> ViTConfig:
    """A transformers ViT/DeiT ``config.json`` as a PruneLens :class:`ViTConfig`."""
    def need(key: str, default: object = None) -> object:
        if key not in cfg and default is None:
            raise _error(f"{where}: config.json lacks {key!r}")
        return cfg.get(key, default)

    act = need("hidden_act", "gelu")
    if act != "gelu":
        raise _error(f"{where}: hidden_act {act!r} is not supported (PruneLens' ViT uses exact "
                     "GELU, transformers' 'gelu')")
    D, depth, heads = int(need("hidden_size")), int(need("num_hidden_layers")), \
        int(need("num_attention_heads"))
    if D % heads:
        raise _error(f"{where}: hidden_size {D} is not divisible by num_attention_heads {heads}")
    ph, pw = _pair(need("patch_size", 16), "patch_size", where)
    if ph != pw:
        raise _error(f"{where}: non-square patches {ph}x{pw} are not supported")
    model_type = HF_ARCHITECTURES[arch][0]
    num_labels = len(cfg["id2label"]) if cfg.get("id2label") else int(cfg.get("num_labels", 2))
    d = D // heads
    pruned = {int(k): set(v) for k, v in (cfg.get("pruned_heads") or {}).items()}
    bad = [i for i, hs in pruned.items() if not 0 <= i < depth or not hs <= set(range(heads))]
    if bad:
        raise _error(f"{where}: pruned_heads names layers/heads the model does not have: "
                     f"{sorted(bad)}")
    blocks = tuple(BlockConfig(heads - len(pruned.get(i, ())), d, d,
                               int(need("intermediate_size")))
                   for i in range(depth))
    return ViTConfig(
        img_size=_pair(need("image_size", 224), "image_size", where), patch_size=ph,
        in_chans=int(cfg.get("num_channels", 3)), num_classes=num_labels, embed_dim=D,
        blocks=blocks, qkv_bias=bool(cfg.get("qkv_bias", True)),
        norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), mean=mean, std=std,
        distilled=model_type == "deit",
        dist_head=arch == "DeiTForImageClassificationWithTeacher")


_BLOCK_KEYS = (("attn.proj", "attention.output.dense"), ("norm1", "layernorm_before"),
               ("norm2", "layernorm_after"), ("mlp.fc1", "intermediate.dense"),
               ("mlp.fc2", "output.dense"))


def _key_pairs(config: ViTConfig, arch: str) -> list[tuple[str, str]]:
    """(timm name, transformers name) of every tensor that maps one to one (all but the fused
    ``qkv``, which transformers keeps as three linears)."""
    p = HF_ARCHITECTURES[arch][1]
    pairs = [("cls_token", f"{p}embeddings.cls_token"),
             ("pos_embed", f"{p}embeddings.position_embeddings"),
             *((f"patch_embed.proj.{k}", f"{p}embeddings.patch_embeddings.projection.{k}")
               for k in ("weight", "bias"))]
    if config.distilled:
        pairs.append(("dist_token", f"{p}embeddings.distillation_token"))
    for i in range(config.depth):
        pairs += [(f"blocks.{i}.{ours}.{k}", f"{p}encoder.layer.{i}.{theirs}.{k}")
                  for ours, theirs in _BLOCK_KEYS for k in ("weight", "bias")]
    heads = ({"head": "cls_classifier", "head_dist": "distillation_classifier"}
             if config.distilled and config.dist_head else {"head": "classifier"})
    for k in ("weight", "bias"):
        pairs.append((f"norm.{k}", f"{p}layernorm.{k}"))
        pairs += [(f"{ours}.{k}", f"{theirs}.{k}") for ours, theirs in heads.items()]
    return pairs


def _qkv_kinds(config: ViTConfig) -> tuple[str, ...]:
    return ("weight", "bias") if config.qkv_bias else ("weight",)


def to_hf_state_dict(sd: dict[str, Tensor], config: ViTConfig, arch: str) -> dict[str, Tensor]:
    """timm-named tensors of a :class:`VisionTransformer` → transformers' names for ``arch``."""
    p = HF_ARCHITECTURES[arch][1]
    out = {theirs: sd[ours] for ours, theirs in _key_pairs(config, arch)}
    for i, b in enumerate(config.blocks):
        sizes = [b.num_heads * b.qk_dim, b.num_heads * b.qk_dim, b.num_heads * b.v_dim]
        for kind in _qkv_kinds(config):
            for name, t in zip(("query", "key", "value"),
                               sd[f"blocks.{i}.attn.qkv.{kind}"].split(sizes, dim=0)):
                out[f"{p}encoder.layer.{i}.attention.attention.{name}.{kind}"] = t
    return out


def from_hf_state_dict(hf: dict[str, Tensor], config: ViTConfig, arch: str) -> dict[str, Tensor]:
    """Inverse of :func:`to_hf_state_dict` (keys assumed complete)."""
    p = HF_ARCHITECTURES[arch][1]
    out = {ours: hf[theirs] for ours, theirs in _key_pairs(config, arch)}
    for i in range(config.depth):
        for kind in _qkv_kinds(config):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(
                [hf[f"{p}encoder.layer.{i}.attention.attention.{n}.{kind}"]
                 for n in ("query", "key", "value")])
    return out


def load_hf_folder(folder: Path, cfg: dict | None = None) -> VisionTransformer:
    """A transformers ``save_pretrained`` folder → :class:`VisionTransformer` in eval mode."""
    folder = Path(folder)
    cfg = read_json(folder / "config.json") if cfg is None else cfg
    if cfg.get("model_type") not in ("vit", "deit"):
        _architecture(cfg, None, str(folder))  # raises, before any weights are read
    weights = read_weights(folder)
    arch = _architecture(cfg, weights, str(folder))
    mean, std, _ = preprocessing(folder)
    try:
        config = hf_vit_config(cfg, arch, mean, std, where=str(folder))
        skeleton = VisionTransformer.empty(config)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise _error(f"{folder}: config.json describes no model PruneLens can build: "
                     f"{one_line(e)}") from None
    expected = to_hf_state_dict(skeleton.state_dict(), config, arch)
    problems = state_dict_mismatch(expected, weights)
    if problems:
        raise _error(f"{folder}: the weights do not match config.json ({arch}): {problems}")
    model = VisionTransformer.from_state_dict(config, from_hf_state_dict(weights, config, arch),
                                              source=str(folder), skeleton=skeleton)
    model.preset = ""
    model.source = f"Hugging Face {arch} ({folder})"
    return model.eval()


# ---------------------------------------------------------------------------- dispatch

