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

with ``p`` = ``vit.`` or ``deit.``; transformers 5's in-memory names (``{p}layers.i.attention.
{q,k,v,o}_proj``, ``{p}layers.i.mlp.{fc1,fc2}``, written by ``save_pretrained(...,
save_original_format=False)``) are read too. Heads removed with transformers 4's ``prune_heads``
(config ``pruned_heads``) become blocks with fewer heads; transformers 5 ignores that field, and
so does PruneLens where config.json names transformers 5 as its writer. A ``head_dim``
(transformers 5: fewer heads of the same size in every layer) sets the head size; without it a
head is ``hidden_size / num_attention_heads`` wide. The image mean/std come from
``preprocessor_config.json`` (transformers' defaults 0.5/0.5 when absent) and are folded so the
returned model takes images in [0, 1]; the processor's resize / crop and the ``id2label`` names
are attached as ``model.preprocessing``, ``model.labels`` and ``model.wnids``
(``core.data.preprocess``, ``core.data.labels``). A hub id (``org/name``) is found in the
local cache (``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ``~/.cache/huggingface/hub``) here,
and downloaded into it by :mod:`core.models.hub`.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from core.data.labels import labels_from_hf
from core.data.preprocess import Preprocessing, attach_inputs, fit_to_model, from_hf_processor

from .checkpoint import SUPPORTED, CheckpointError, _error, one_line, read_json, read_weights
from .config_checks import (MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH, MAX_HEADS, check_block,
                            check_tokens, json_bool, json_dict, json_int, json_number, json_size,
                            json_stats, shown, stray_errors)
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


_REVISION = re.compile(r"^[\w.-]{1,128}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def is_revision(revision: str) -> bool:
    """A branch, tag or commit name that stays one path inside the cache's ``refs/`` (parts of
    ``[A-Za-z0-9_.-]`` joined by ``/``, none ``.`` or ``..``, at most 128 characters)."""
    parts = revision.split("/") if isinstance(revision, str) and len(revision) <= 128 else [""]
    return all(_REVISION.match(p) and p not in (".", "..") for p in parts)


def hub_snapshot(repo_id: str, revision: str | None = None,
                 reason: str = "nothing is downloaded") -> Path:
    """The cached snapshot folder of ``repo_id`` at ``revision`` (a commit, or a branch or tag
    that ``refs/`` names; by default ``refs/main``'s revision, else the newest); nothing is
    downloaded. ``reason`` says why not, in the message for a repository not in the cache.

    The cache is data, not trusted: a ref must name a plain revision (no ``/``, not ``.`` or
    ``..``), the snapshot must resolve to a folder directly inside the repository's
    ``snapshots/``, and the files read from it (``config.json``, the weights) must resolve
    inside the repository's cache folder (huggingface_hub links them to ``blobs/``); anything
    else is a one-line :class:`CheckpointError`."""
    cache = hub_cache_dir()
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"

    def inside(snap: Path) -> bool:
        real = Path(os.path.realpath(snap))
        return real.parent == Path(os.path.realpath(snapshots)) and real.is_dir()

    if revision is not None and not is_revision(revision):
        raise _error(f"{shown(revision)} is not a revision name (a branch, tag or commit)")
    name = revision or "main"
    ref = repo / "refs" / name
    chosen = None
    if revision is not None and _COMMIT.match(revision):
        chosen = snapshots / revision if inside(snapshots / revision) else None
    elif ref.is_file() and not ref.is_symlink():
        commit = ref.read_text(errors="replace")[:200].strip()
        if not _REVISION.match(commit) or commit in (".", ".."):
            raise _error(f"the cached {repo_id!r} has a refs/{name} that is not a revision "
                         f"({shown(commit)}); delete {repo.name} from the cache and "
                         "download it again")
        if inside(snapshots / commit):
            chosen = snapshots / commit
    if chosen is None and revision is None and snapshots.is_dir():
        found = sorted((p for p in snapshots.iterdir() if inside(p)),
                       key=lambda p: p.stat().st_mtime)
        chosen = found[-1] if found else None
    if chosen is None:
        at = f" at revision {revision!r}" if revision is not None else ""
        raise _error(
            f"{repo_id!r}{at} is not a local path and not in the local Hugging Face cache "
            f"({cache}); {reason}. On a machine with internet run `hf download {repo_id}"
            f"{' --revision ' + revision if revision else ''}`, then copy its {repo.name} "
            f"folder into {cache} here (or point HF_HOME at a copied cache)")
    from core.data.roots import DataPathError, check_files_under_roots
    try:
        check_files_under_roots(chosen, roots=[repo])
    except DataPathError:
        raise _error(f"the cached {repo_id!r} has files linking out of its cache folder "
                     f"({repo.name}); delete it from the cache and download it again") from None
    return chosen


# ---------------------------------------------------------------------------- conversion

def _architecture(cfg: dict, weights: dict[str, Tensor] | None, where: str) -> str:
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures")
    if archs is not None and not (isinstance(archs, list)
                                  and all(isinstance(a, str) and len(a) <= 200 for a in archs)):
        raise _error(f"{where}: architectures must be a list of class names, got "
                     f"{shown(archs)}")
    arch = archs[0] if archs else None
    if model_type not in ("vit", "deit"):
        what = f"model_type {shown(model_type)}" if model_type else "no model_type"
        named = f" ({arch[:100]})" if arch else ""
        raise _error(f"{where}: unsupported architecture: {what}{named}; PruneLens reads "
                     f"{SUPPORTED}")
    if arch is None and weights is not None:  # old configs: tell the head from the keys
        arch = ("DeiTForImageClassificationWithTeacher" if "cls_classifier.weight" in weights
                else "ViTForImageClassification" if model_type == "vit"
                else "DeiTForImageClassification")
    if arch not in HF_ARCHITECTURES or HF_ARCHITECTURES[arch][0] != model_type:
        raise _error(f"{where}: unsupported architecture {shown(arch)} (model_type "
                     f"{model_type!r}); PruneLens needs an image classifier: {SUPPORTED}")
    return arch


def preprocessing(folder: Path, channels: int = 3
                  ) -> tuple[tuple[float, ...], tuple[float, ...], dict]:
    """Mean/std (``channels`` values each) for images in [0, 1] from
    ``preprocessor_config.json`` (rescale folded in), and the file's contents (empty when
    absent: transformers' defaults). CheckpointError naming the field for a value that is not
    a finite number (a positive one for ``image_std`` and ``rescale_factor``)."""
    folder = Path(folder)
    path = folder / "preprocessor_config.json"
    pre = read_json(path) if path.is_file() else {}
    where = f"preprocessor_config.json in {_name(folder)}"
    try:
        normalize = json_bool(where, "do_normalize", pre.get("do_normalize", True))
        rescale = json_bool(where, "do_rescale", pre.get("do_rescale", True))
        mean = json_stats(where, "image_mean", pre.get("image_mean", HF_DEFAULT_MEAN)
                          if normalize else 0.0, channels, positive=False)
        std = json_stats(where, "image_std", pre.get("image_std", HF_DEFAULT_STD)
                         if normalize else 1.0, channels, positive=True)
        # the processor feeds (255·x·rescale − mean)/std, x in [0, 1]
        factor = 255.0 * (json_number(where, "rescale_factor",
                                      pre.get("rescale_factor", 1 / 255), positive=True)
                          if rescale else 1.0)
        mean, std = tuple(m / factor for m in mean), tuple(s / factor for s in std)
        if not all(math.isfinite(v) for v in mean) or not all(
                math.isfinite(v) and v > 0 for v in std):
            raise ValueError(f"{where}: image_mean / image_std over 255 × rescale_factor "
                             f"({factor:g}) are not finite positive numbers")
    except CheckpointError:
        raise
    except ValueError as e:
        raise _error(str(e)) from None
    return mean, std, pre


_VERSION = re.compile(r"^(\d{1,4})\.")


def _written_by_transformers_5(cfg: dict) -> bool:
    """``config.json`` names transformers 5 or later as its writer (absent, as in folders
    PruneLens and hand-written tools made before, counts as 4)."""
    version = cfg.get("transformers_version")
    found = _VERSION.match(version[:20]) if isinstance(version, str) else None
    return found is not None and int(found.group(1)) >= 5


def image_inputs(folder: Path, pre: dict, cfg: dict, fields: dict
                 ) -> tuple[Preprocessing, tuple[str, ...] | None, tuple[str, ...] | None]:
    """The processor's resize / crop / interpolation (``core.data.preprocess``) from
    ``preprocessor_config.json``'s contents ``pre``, fitted to the model's input size, and the
    output names and WordNet ids from ``id2label`` (``core.data.labels``); CheckpointError
    naming the field otherwise."""
    folder = Path(folder)
    try:
        prep = from_hf_processor(pre, fields["img_size"], fields["in_chans"], HF_DEFAULT_MEAN,
                                 HF_DEFAULT_STD, f"preprocessor_config.json in {_name(folder)}")
        names, wnids = labels_from_hf(cfg.get("id2label"), fields["num_classes"],
                                      f"config.json in {_name(folder)}")
    except ValueError as e:
        raise _error(str(e)) from None
    return fit_to_model(prep, fields["img_size"], _name(folder)), names, wnids


def _pruned_heads(cfg: dict, depth: int, heads: int, where: str) -> dict[int, set[int]]:
    """transformers 4's ``pruned_heads`` ({"layer": [head, …]}) checked against the model;
    empty for a config written by transformers 5, whose models ignore the field."""
    if _written_by_transformers_5(cfg):
        return {}
    raw = json_dict(where, "pruned_heads", cfg.get("pruned_heads"))
    pruned: dict[int, set[int]] = {}
    for key, hs in raw.items():
        if not (isinstance(key, str) and key.isdigit() and len(key) <= 4 and int(key) < depth):
            raise ValueError(f"{where}: pruned_heads names layer {shown(key)}; the model has "
                             f"layers 0 to {depth - 1}")
        if not (isinstance(hs, list) and all(
                isinstance(h, int) and not isinstance(h, bool) and 0 <= h < heads for h in hs)):
            raise ValueError(f"{where}: pruned_heads[{key!r}] must be a list of head indices "
                             f"in [0, {heads}), got {shown(hs)}")
        pruned[int(key)] = set(hs)
        if len(pruned[int(key)]) >= heads:
            raise ValueError(f"{where}: pruned_heads[{key!r}] removes all {heads} heads of the "
                             "layer")
    return pruned


def hf_config_fields(cfg: dict, where: str = "config.json") -> dict:
    """Every field of a transformers ViT/DeiT ``config.json`` PruneLens reads, checked for type
    and range (before anything is built: a 10⁸-layer config is refused here, at once) → plain
    values. CheckpointError naming ``where`` and the field otherwise."""
    def need(key: str, default: object = None) -> object:
        if key not in cfg and default is None:
            raise ValueError(f"{where}: lacks {key!r}")
        return cfg.get(key, default)

    try:
        act = need("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"{where}: hidden_act {shown(act)} is not supported (PruneLens' ViT "
                             "uses exact GELU, transformers' 'gelu')")
        f: dict = {
            "embed_dim": json_int(where, "hidden_size", need("hidden_size")),
            "depth": json_int(where, "num_hidden_layers", need("num_hidden_layers"), 1,
                              MAX_DEPTH, "depth"),
            "heads": json_int(where, "num_attention_heads", need("num_attention_heads"), 1,
                              MAX_HEADS, "heads"),
            "mlp_hidden": json_int(where, "intermediate_size", need("intermediate_size")),
            "in_chans": json_int(where, "num_channels", cfg.get("num_channels", 3), 1,
                                 MAX_CHANNELS, "channels"),
            "img_size": json_size(where, "image_size", need("image_size", 224)),
            "patch": json_size(where, "patch_size", need("patch_size", 16)),
            "qkv_bias": json_bool(where, "qkv_bias", cfg.get("qkv_bias", True)),
            "norm_eps": json_number(where, "layer_norm_eps", cfg.get("layer_norm_eps", 1e-12),
                                    positive=True, below=1.0),
        }
        if cfg.get("head_dim") is not None:  # transformers 5: heads × head_dim ≠ width allowed
            f["head_dim"] = json_int(where, "head_dim", cfg["head_dim"])
        elif f["embed_dim"] % f["heads"]:
            raise ValueError(f"{where}: hidden_size {f['embed_dim']} is not divisible by "
                             f"num_attention_heads {f['heads']}")
        else:
            f["head_dim"] = f["embed_dim"] // f["heads"]
        if json_dict(where, "per_layer_config", cfg.get("per_layer_config")):
            raise ValueError(f"{where}: per_layer_config (layers that differ) is not read: "
                             "transformers' ViT and DeiT build every layer alike")
        ph, pw = f["patch"]
        if ph != pw:
            raise ValueError(f"{where}: non-square patches {ph}x{pw} are not supported")
        # cls (+ distillation) token and the patches: what one image makes, before any read
        tokens = 2 + check_tokens(where, f["img_size"], ph)
        check_block(where, "each layer", tokens, f["heads"], 3 * f["embed_dim"],
                    f["mlp_hidden"])
        labels = cfg.get("id2label")
        if labels:
            labels = json_dict(where, "id2label", labels)
            f["num_classes"] = json_int(where, "id2label (number of labels)", len(labels), 2,
                                        MAX_CLASSES, "classes")
        else:
            f["num_classes"] = json_int(where, "num_labels", cfg.get("num_labels", 2), 2,
                                        MAX_CLASSES, "classes")
        f["pruned"] = _pruned_heads(cfg, f["depth"], f["heads"], where)
    except ValueError as e:
        raise _error(str(e)) from None
    return f


def hf_vit_config(cfg: dict, arch: str, mean: tuple[float, ...], std: tuple[float, ...],
                  where: str = "config.json") -> ViTConfig:
    """A transformers ViT/DeiT ``config.json`` as a PruneLens :class:`ViTConfig`."""
    f = hf_config_fields(cfg, where)
    heads, d = f["heads"], f["head_dim"]
    blocks = tuple(BlockConfig(heads - len(f["pruned"].get(i, ())), d, d, f["mlp_hidden"])
                   for i in range(f["depth"]))
    model_type = HF_ARCHITECTURES[arch][0]
    return ViTConfig(
        img_size=f["img_size"], patch_size=f["patch"][0], in_chans=f["in_chans"],
        num_classes=f["num_classes"], embed_dim=f["embed_dim"], blocks=blocks,
        qkv_bias=f["qkv_bias"], norm_eps=f["norm_eps"], mean=tuple(mean), std=tuple(std),
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


# transformers 5's in-memory layer names → the ones save_pretrained writes by default
_V5_NAMES = re.compile(r"^(vit|deit)\.layers\.(\d+)\.(attention\.[qkvo]_proj|mlp\.fc[12]|"
                       r"layernorm_before|layernorm_after)\.")
_V5_TO_SAVED = {"attention.q_proj": "attention.attention.query",
                "attention.k_proj": "attention.attention.key",
                "attention.v_proj": "attention.attention.value",
                "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
                "mlp.fc2": "output.dense", "layernorm_before": "layernorm_before",
                "layernorm_after": "layernorm_after"}


def saved_names(hf: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weights under the names transformers' ``save_pretrained`` writes by default (and
    transformers 4 kept in memory): a folder saved by transformers 5 with
    ``save_original_format=False`` is renamed; one that mixes both layouts is left as it is
    (its keys then do not match, and the error names them)."""
    if any(".encoder.layer." in k for k in hf) or not any(_V5_NAMES.match(k) for k in hf):
        return hf
    return {_V5_NAMES.sub(lambda m: f"{m[1]}.encoder.layer.{m[2]}.{_V5_TO_SAVED[m[3]]}.", k): v
            for k, v in hf.items()}


def _name(folder: Path) -> str:
    """How messages name a model folder: its name, never the server path around it."""
    return Path(folder).name or str(folder)


def load_hf_folder(folder: Path, cfg: dict | None = None) -> VisionTransformer:
    """A transformers ``save_pretrained`` folder → :class:`VisionTransformer` in eval mode.

    Every problem is a one-line CheckpointError naming the folder (by name) and the file and
    field: the configuration is checked before the weights are read, and anything a check
    missed is still turned into one (:func:`~.config_checks.stray_errors`)."""
    folder = Path(folder)
    with stray_errors(CheckpointError, _name(folder), str(folder)):
        return _load_hf_folder(folder, cfg)


def _load_hf_folder(folder: Path, cfg: dict | None) -> VisionTransformer:
    cfg = read_json(folder / "config.json") if cfg is None else cfg
    where = f"config.json in {_name(folder)}"
    _architecture(cfg, {}, where)  # an unsupported one is refused before any weights are read
    fields = hf_config_fields(cfg, where)  # sizes checked before anything is read or built
    mean, std, pre = preprocessing(folder, fields["in_chans"])
    inputs = image_inputs(folder, pre, cfg, fields)
    weights = saved_names(read_weights(folder))
    arch = _architecture(cfg, weights, where)
    try:
        config = hf_vit_config(cfg, arch, mean, std, where=where)
        skeleton = VisionTransformer.empty(config)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise _error(f"{where} describes no model PruneLens can build: "
                     f"{one_line(e)}") from None
    expected = to_hf_state_dict(skeleton.state_dict(), config, arch)
    problems = state_dict_mismatch(expected, weights)
    if problems:
        raise _error(f"{_name(folder)}: the weights do not match config.json ({arch}): "
                     f"{problems}")
    model = VisionTransformer.from_state_dict(config, from_hf_state_dict(weights, config, arch),
                                              source=str(folder), skeleton=skeleton)
    model.preset = ""
    model.source = f"Hugging Face {arch} ({folder})"
    return attach_inputs(model, *inputs).eval()


# ---------------------------------------------------------------------------- dispatch

