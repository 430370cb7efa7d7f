"""Everything the pages share: every ``st.cache_*`` (through :data:`cache_data` and
:data:`cache_resource`, which hash the key dataclasses by their repr) and ``st.session_state``
access (but the one flag in session.py, read before this module is imported), the process-wide
registry of training jobs, and the two page helpers (error guard, untrained notice).

Data flows one way (STYLE.md): dataset → base model → scores → masks or shrunk model →
attention, metrics. Each step is a cached function keyed by small frozen dataclasses
(:class:`ModelKey`, :class:`DataKey`, :class:`PruneKey`), so moving the sparsity slider only
re-thresholds cached scores (``compute_masks``) and re-evaluates.

Cached objects are shared by every browser session (``st.cache_resource`` hands out the same
object), so nothing here mutates one: pruning, training, gradient maps and hooked forwards work
on deep copies (:func:`pruned_model` always returns a private copy).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import io
import logging
import math
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import Tensor, nn

from core import attention as attn
from core.data import calibration_batch, list_datasets, load_dataset
from core.models import (CheckpointError, build_model, checkpoint_info, count_macs, list_models,
                         load_model, load_weights, pretrained_path)
from core.pruning import (Pruner, apply_masks, compute_masks, get_pruner, layer_collapse,
                          layer_saliency, list_pruners, prune)
from core import boot
from core.train import TrainConfig, evaluate, train

log = logging.getLogger("prunelens.dashboard")

boot.configure()  # the server did it already; AppTest and scripts may not have
boot.apply_torch_threads()

MAX_MODEL_MB = 400   # also server.maxUploadSize in .streamlit/config.toml
MAX_IMAGE_MB = 10
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth")
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "webp")
RATIOS = tuple(round(0.1 * i, 1) for i in range(10))          # the Fig. 3 columns, 0% … 90%
SOURCES = {"checkpoint": "shipped checkpoint (trained)", "init": "untrained (pruning at init)",
           "upload": "uploaded checkpoint"}
DATASET_SEED = 0  # the shipped checkpoints were trained on seed 0's split; keep its val set
CALIBRATION_POOL = 1024  # shapes training images generated for calibration batches
CELL_PX = 96      # side of one attention-grid cell on screen

# Widget keys of the experiment set up on the Prune page (read by every page).
K_MODEL, K_SOURCE, K_DATASET = "prune_model", "prune_source", "prune_dataset"
K_FOLDER, K_PRUNERS, K_SPARSITY = "prune_folder", "prune_pruners", "prune_sparsity"
K_SCOPE, K_CALIB, K_SEED, K_VAL = "prune_scope", "prune_calib", "prune_seed", "prune_val"
K_UPLOAD_DIGEST = "upload_digest"  # not a widget: the accepted upload's sha256
K_UPLOAD_NAME = "upload_name"
K_DELETE_PENDING = "runs_delete_pending"

EXPECTED_ERRORS = (ValueError, CheckpointError, FileNotFoundError, NotADirectoryError, OSError,
                   TypeError, KeyError, RuntimeError)


# ---------------------------------------------------------------------------- keys

@dataclass(frozen=True)
class Experiment:
    """What the Prune page's sidebar selects; every page reads it through :func:`experiment`."""

    preset: str = "vit-tiny"
    source: str = "checkpoint"
    dataset: str = "shapes"
    folder: str = ""
    pruners: tuple[str, ...] = ("magnitude", "snip")
    sparsity: float = 0.5
    scope: str = "global"
    calib: int = 64
    seed: int = 0
    val_samples: int = 128
    upload: str = ""


@dataclass(frozen=True)
class DataKey:
    """A dataset source. ``full=False`` lets shapes generate only the calibration pool of its
    training split (the validation split is the same either way): the Prune, Attention and
    Rollout pages never need 6000 training images, the Train page asks for them."""

    name: str
    root: str
    image_size: tuple[int, int]
    full: bool = False


@dataclass(frozen=True)
class ModelKey:
    preset: str
    source: str
    dataset: str
    num_classes: int
    seed: int = 0
    upload: str = ""


@dataclass(frozen=True)
class PruneKey:
    """One pruned model: criterion ``pruner`` at ``sparsity`` (0 → the dense base model)."""

    model: ModelKey
    data: DataKey
    pruner: str
    sparsity: float
    scope: str
    calib: int
    seed: int

    def at(self, sparsity: float) -> "PruneKey":
        """The same criterion at another sparsity; at 0 the one dense key every criterion
        shares (so the dense model is evaluated and hooked once)."""
        s = round(float(sparsity), 4)
        if s == 0:
            return replace(self, pruner="dense", sparsity=0.0, scope="global", calib=0, seed=0)
        return replace(self, sparsity=s)

    def using(self, pruner: str) -> "PruneKey":
        return replace(self, pruner=pruner)


@dataclass(frozen=True)
class ImageRef:
    """A validation sample (``index``) or an uploaded image (``digest``)."""

    index: int = 0
    digest: str = ""


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    trained: bool
    note: str
    label: str


@dataclass(frozen=True)
class Setup:
    """An experiment resolved to objects: data, base model, and the key of each pruner.
    ``train_set`` is the calibration pool (see :class:`DataKey`; :func:`training_set` gives
    the full split)."""

    exp: Experiment
    data: DataKey
    model_key: ModelKey
    base: LoadedModel
    train_set: object
    val_set: object
    classes: tuple[str, ...]

    def key(self, pruner: str, sparsity: float | None = None) -> PruneKey:
        s = self.exp.sparsity if sparsity is None else sparsity
        return PruneKey(self.model_key, self.data, pruner, self.exp.sparsity, self.exp.scope,
                        self.exp.calib, self.exp.seed).at(s)


# Streamlit hashes cache arguments field by field (~0.2 ms for a PruneKey, a few hundred
# lookups a rerun); these keys are frozen dataclasses of plain values, so their repr is exact.
_KEY_HASH = {cls: repr for cls in (DataKey, ModelKey, PruneKey, ImageRef)}
cache_data = functools.partial(st.cache_data, hash_funcs=_KEY_HASH)
cache_resource = functools.partial(st.cache_resource, hash_funcs=_KEY_HASH)


# ---------------------------------------------------------------------------- session

def experiment() -> Experiment:
    """The current session's experiment (defaults for whatever the Prune page never set)."""
    ss = st.session_state
    d = Experiment()
    pruners = ss.get(K_PRUNERS, list(d.pruners))
    return Experiment(
        preset=ss.get(K_MODEL, d.preset), source=ss.get(K_SOURCE, d.source),
        dataset=ss.get(K_DATASET, d.dataset), folder=ss.get(K_FOLDER, d.folder) or "",
        pruners=tuple(p for p in pruners if p in pruner_names()),
        sparsity=int(ss.get(K_SPARSITY, round(d.sparsity * 100))) / 100,
        scope=ss.get(K_SCOPE, d.scope),
        calib=int(ss.get(K_CALIB, d.calib)), seed=int(ss.get(K_SEED, d.seed)),
        val_samples=int(ss.get(K_VAL, d.val_samples)), upload=ss.get(K_UPLOAD_DIGEST, ""))


def widget_default(key: str, value: object) -> None:
    """Seed a widget's value once per session (so pages need no ``value=``/``index=`` args
    that would fight ``persist_state``)."""
    if key not in st.session_state:
        st.session_state[key] = value


def seed_experiment_widgets() -> None:
    """Give the Prune page's widgets their defaults once per session."""
    d = Experiment()
    for key, value in ((K_MODEL, d.preset), (K_SOURCE, d.source), (K_DATASET, d.dataset),
                       (K_FOLDER, d.folder), (K_PRUNERS, list(d.pruners)),
                       (K_SPARSITY, round(d.sparsity * 100)), (K_SCOPE, d.scope),
                       (K_CALIB, d.calib), (K_SEED, d.seed), (K_VAL, d.val_samples)):
        widget_default(key, value)


def upload_name() -> str:
    return st.session_state.get(K_UPLOAD_NAME, "")


def use_trained_checkpoint() -> None:
    """Widget callback: switch the experiment to the shipped trained checkpoint."""
    st.session_state[K_SOURCE] = "checkpoint"


def pending_delete() -> tuple[str, ...]:
    return tuple(st.session_state.get(K_DELETE_PENDING, ()))


def set_pending_delete(run_ids: tuple[str, ...]) -> None:
    st.session_state[K_DELETE_PENDING] = tuple(run_ids)


def current_run_id() -> str | None:
    """The run this session's Train page follows: kept in the URL (``?run=…``) so that a page
    reload, which starts a new session, finds it again; never shared between sessions."""
    return st.query_params.get("run")


def follow_run(run_id: str | None) -> None:
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]


# ---------------------------------------------------------------------------- catalogue

def model_names() -> list[str]:
    return list_models()


def dataset_names() -> list[str]:
    return list_datasets()


@cache_resource(show_spinner=False)
def pruner_names() -> tuple[str, ...]:
    """The criteria the pages run inside a rerun: every registered pruner except the
    training-based ones (``needs_training``, e.g. AMAP), which only run as background jobs
    from the Train page (:func:`start_amap`)."""
    return tuple(n for n in list_pruners() if not _needs_training(n))


@cache_resource(show_spinner=False)
def training_pruner_names() -> tuple[str, ...]:
    """Training-based pruners (run from the Train page, never inside a page rerun)."""
    return tuple(n for n in list_pruners() if _needs_training(n))


def _needs_training(name: str) -> bool:
    return bool(getattr(type(get_pruner(name)), "needs_training", False))


@cache_resource(show_spinner=False)
def pruner_info(name: str) -> dict:
    """Teaching text of a criterion: ``formula`` (LaTeX), ``explanation``, ``kind``,
    ``needs_data``, and ``iterative`` (re-scores for every sparsity: no score cache)."""
    p = get_pruner(name)
    cls = type(p)
    structured = getattr(p, "kind", "") == "structured" or getattr(p, "structured", False)
    iterative = structured or (isinstance(p, Pruner) and cls.prune_model is not Pruner.prune_model)
    return {"formula": getattr(p, "formula", ""), "explanation": getattr(p, "explanation", ""),
            "kind": "structured" if structured else "unstructured",
            "needs_data": bool(getattr(p, "needs_data", True)), "iterative": iterative}


def pruner_label(name: str) -> str:
    info = pruner_info(name)
    tags = [t for t, on in (("structured", info["kind"] == "structured"),
                            ("iterative", info["iterative"] and info["kind"] != "structured"))
            if on]
    return f"{name} ({', '.join(tags)})" if tags else name


def has_checkpoint(preset: str, dataset: str) -> bool:
    return pretrained_path(preset, dataset).exists()


def source_label(source: str, preset: str, dataset: str) -> str:
    if source == "checkpoint" and not has_checkpoint(preset, dataset):
        return f"shipped checkpoint (none for {preset} on {dataset})"
    return SOURCES[source]


# ---------------------------------------------------------------------------- data & models

@cache_resource(show_spinner=False)
def preset_input_shape(preset: str) -> tuple[int, int, int]:
    """(C, H, W) a preset expects (core exposes it only on a built model)."""
    return tuple(build_model(preset, num_classes=2).input_shape)


@cache_resource(show_spinner="Loading the dataset…", max_entries=6)
def _dataset(key: DataKey):
    options: dict = {}
    if key.name == "folder":
        if not key.root:
            raise ValueError("enter the server-side path of a folder with one sub-folder of "
                             "images per class")
        root = Path(key.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"folder not found on the server: {root}")
        options["root"] = str(root)
    elif key.name == "shapes" and max(key.image_size) > 64:
        # 6000 images of 224×224 would be 900 MB; a dashboard needs far fewer
        options.update(num_train=1200, num_val=300)
    elif key.name == "shapes" and not key.full:
        options.update(num_train=CALIBRATION_POOL)
    return load_dataset(key.name, key.image_size, seed=DATASET_SEED, **options)


def training_set(s: "Setup"):
    """The full training split (the Train page)."""
    return _dataset(replace(s.data, full=True))[0]


@cache_resource(show_spinner=False, max_entries=16)
def _val_subset(key: DataKey, n: int):
    from torch.utils.data import Subset

    _, val = _dataset(key)
    n = min(int(n), len(val))
    idx = np.sort(np.random.default_rng(0).permutation(len(val))[:n])
    return Subset(val, idx.tolist())


@cache_resource(show_spinner=False, max_entries=16)
def _calibration(key: DataKey, size: int, seed: int) -> tuple[Tensor, Tensor]:
    train_set, _ = _dataset(key)
    return calibration_batch(train_set, min(int(size), len(train_set)), seed)


def _upload_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "prunelens_uploads"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _upload_path(digest: str) -> Path:
    found = sorted(_upload_dir().glob(f"{digest}.*"))
    if not found:
        raise FileNotFoundError("the uploaded checkpoint is gone from the server; upload it again")
    return found[0]


def accept_model_upload(name: str, data: bytes) -> str:
    """Check an uploaded checkpoint (size, suffix, readable as safetensors / weights-only),
    store it server-side and remember it in the session. Returns its sha256.

    Raises ValueError / CheckpointError with the reason; nothing is remembered then.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ValueError(f"{name}: only .safetensors or weights-only PyTorch checkpoints "
                         f"(.pt, .pth) are accepted")
    if len(data) > MAX_MODEL_MB * 2**20:
        raise ValueError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_MODEL_MB} MB")
    if not data:
        raise ValueError(f"{name} is empty")
    digest = hashlib.sha256(data).hexdigest()[:32]
    path = _upload_dir() / f"{digest}{suffix}"
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    try:
        _uploaded_architecture(digest)  # reads it: a corrupt file fails here, with the reason
    except CheckpointError as e:
        path.unlink(missing_ok=True)
        raise CheckpointError(str(e).replace(path.name, name)) from None
    except Exception:
        path.unlink(missing_ok=True)
        raise
    st.session_state[K_UPLOAD_DIGEST] = digest
    st.session_state[K_UPLOAD_NAME] = name
    return digest


@cache_resource(show_spinner=False, max_entries=4)
def _uploaded_architecture(digest: str) -> nn.Module | None:
    """The uploaded model if it carries PruneLens architecture metadata, else None (plain
    weights, to be loaded into the selected preset). Unreadable files raise CheckpointError."""
    path = _upload_path(digest)
    if "prunelens_config" not in checkpoint_info(path):
        return None
    return load_model(path).eval()


@cache_resource(show_spinner="Loading the model…", max_entries=8)
def _base_model(key: ModelKey) -> LoadedModel:
    label = f"{key.preset} · {SOURCES[key.source]}"
    if key.source == "upload":
        if not key.upload:
            raise ValueError("upload a .safetensors (or weights-only .pt) checkpoint first")
        arch = _uploaded_architecture(key.upload)
        if arch is not None:
            model = copy.deepcopy(arch)
        else:
            model = build_model(key.preset, key.num_classes)
            load_weights(model, _upload_path(key.upload))
        name = model.preset or key.preset
        return LoadedModel(model.eval(), True, "", f"uploaded checkpoint ({name})")
    note = ""
    trained = False
    if key.source == "checkpoint":
        try:
            model = build_model(key.preset, key.num_classes, pretrained=True, dataset=key.dataset)
            trained = True
            label = f"{key.preset} trained on {key.dataset}"
        except FileNotFoundError:
            note = (f"No shipped checkpoint for {key.preset} on {key.dataset}: this is an "
                    "**untrained** model.")
    if not trained:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(key.seed)
            model = build_model(key.preset, key.num_classes)
        label = f"{key.preset} (untrained, seed {key.seed})"
    return LoadedModel(model.eval(), trained, note, label)


def setup_or_stop(exp: Experiment) -> Setup:
    """``setup(exp)``; on a folder dataset with no path yet, a hint to enter one on the Prune
    page instead, and the page stops there."""
    if exp.dataset == "folder" and not exp.folder.strip():
        st.info("Choose a dataset (or enter a folder) on the Prune page first.")
        st.stop()
    return setup(exp)


def setup(exp: Experiment) -> Setup:
    """Resolve the experiment: dataset and base model, checked against each other.

    Raises ValueError / CheckpointError / FileNotFoundError with a message for the user.
    """
    if exp.source == "upload":
        if not exp.upload:
            raise ValueError("upload a .safetensors (or weights-only .pt) checkpoint in the "
                             "sidebar of the Prune page first")
        arch = _uploaded_architecture(exp.upload)
        shape = tuple(arch.input_shape) if arch is not None else preset_input_shape(exp.preset)
    else:
        shape = preset_input_shape(exp.preset)
    data = DataKey(exp.dataset, exp.folder.strip() if exp.dataset == "folder" else "",
                   (int(shape[1]), int(shape[2])))
    train_set, val_set = _dataset(data)
    classes = tuple(train_set.classes)
    mkey = ModelKey(exp.preset, exp.source, exp.dataset, len(classes),
                    exp.seed if exp.source == "init" else 0,
                    exp.upload if exp.source == "upload" else "")
    base = _base_model(mkey)
    if base.model.num_classes != len(classes):
        raise ValueError(f"the model has {base.model.num_classes} outputs but {exp.dataset} has "
                         f"{len(classes)} classes")
    return Setup(exp, data, mkey, base, train_set, val_set, classes)


def warm_up(exp: Experiment | None = None) -> None:
    """Fill the caches the Prune page reads for ``exp`` (the default experiment): dataset,
    base model, each criterion's scores, masks, accuracy and cost. ``dashboard/app.py`` runs
    it in a background thread at server start, so the first visitor does not wait for it;
    a page that asks for the same entry meanwhile waits for this computation, not a second one.
    """
    exp = exp or Experiment()
    s = setup(exp)
    for key in (s.key(exp.pruners[0], 0.0), *map(s.key, exp.pruners)):  # dense, then each
        evaluation(key, exp.val_samples)  # also computes the scores and masks
        cost(key)


# ---------------------------------------------------------------------------- pruning

def _pruner(name: str, seed: int):
    p = get_pruner(name)
    if "seed" in {f.name for f in fields(p)}:  # random criteria draw with the experiment's seed
        return get_pruner(name, seed=int(seed))
    return p


@cache_resource(show_spinner=False, max_entries=32)
def _scores(model: ModelKey, data: DataKey, pruner: str, calib: int,
            seed: int) -> dict[str, Tensor]:
    """Keep-scores of a single-shot criterion, computed once on a private copy."""
    base = _base_model(model).model
    images, labels = _calibration(data, calib, seed)
    return _pruner(pruner, seed).score(copy.deepcopy(base), images, labels)


@dataclass(frozen=True)
class Outcome:
    """A pruning result without the model: ``masks`` (unstructured) or ``small`` (the shrunk
    model of a structured criterion), the scores and core's per-layer table (None until
    :func:`outcome` computes it)."""

    masks: dict | None
    scores: dict | None
    small: nn.Module | None
    table: pd.DataFrame | None = None
    threshold: float | None = None


@cache_resource(show_spinner=False, max_entries=32)
def _structured_scores(model: ModelKey, data: DataKey, pruner: str, calib: int, seed: int):
    """Per-structure scores of a structured criterion (independent of the ratio)."""
    base = _base_model(model).model
    images, _ = _calibration(data, calib, seed)
    return _pruner(pruner, seed).structured_scores(copy.deepcopy(base), images)


def _shrink(key: PruneKey) -> nn.Module | None:
    """Structured pruning from cached scores: select + shrink at ``key.sparsity``, the steps
    of ``StructuredPruner.prune_model`` after scoring (SNP scores once, not once per ratio).
    None when core does not offer the pieces (then the caller runs ``prune()``)."""
    try:
        from core.pruning.ratios import resolve_ratios
        from core.pruning.structured import select, shrink
    except ImportError:
        return None
    p = _pruner(key.pruner, key.seed)
    if not hasattr(p, "structured_scores") or getattr(p, "ratios", None) is not None:
        return None
    base = _base_model(key.model).model
    scores = _structured_scores(key.model, key.data, key.pruner, key.calib, key.seed)
    ratios = resolve_ratios(None, base.config.depth, sparsity=key.sparsity,
                            heads=getattr(p, "heads", None))
    return shrink(base, select(base, scores, ratios)).eval()


@cache_resource(show_spinner=False, max_entries=128)
def _pruned(key: PruneKey) -> Outcome:
    """Masks (or the shrunk model) of ``key``: a re-threshold of cached scores for single-shot
    criteria, select + shrink of cached scores for structured ones, a full ``prune()`` for
    iterative ones (SynFlow)."""
    info = pruner_info(key.pruner)
    if not info["iterative"]:
        scores = _scores(key.model, key.data, key.pruner, key.calib, key.seed)
        return Outcome(compute_masks(scores, key.sparsity, key.scope), scores, None)
    if info["kind"] == "structured":
        small = _shrink(key)
        if small is not None:
            return Outcome(None, None, small)
    base = _base_model(key.model).model
    images, labels = _calibration(key.data, key.calib, key.seed)
    res = prune(base, _pruner(key.pruner, key.seed), key.sparsity, images, labels,
                scope=key.scope)
    if res.masks is not None:
        return Outcome(res.masks, res.scores, None, res.table)
    return Outcome(None, None, res.model.eval(), getattr(res, "table", None))


@cache_resource(show_spinner=False, max_entries=64)
def outcome(key: PruneKey) -> Outcome:
    """:func:`_pruned` plus core's per-layer table and the global threshold (Prune page)."""
    out = _pruned(key)
    if out.masks is None:
        return out
    table = out.table if out.table is not None else layer_saliency(out.scores, out.masks)
    cut = _threshold(out.scores, out.masks) if key.scope == "global" else None
    return replace(out, table=table, threshold=cut)


def _threshold(scores: dict, masks: dict) -> float | None:
    """The global cut: the largest keep-score that was pruned (None when nothing was)."""
    best = -math.inf
    for k, s in scores.items():
        pruned = s[~masks[k]]
        if pruned.numel():
            best = max(best, float(pruned.max()))
    return best if math.isfinite(best) else None


def pruned_model(key: PruneKey) -> nn.Module:
    """A private copy (free to train or hook) of the model ``key`` describes."""
    base = _base_model(key.model).model
    if key.sparsity == 0:
        return copy.deepcopy(base)
    out = _pruned(key)
    if out.small is not None:
        return copy.deepcopy(out.small)
    return apply_masks(copy.deepcopy(base), out.masks)


# Forward hooks on a shared (cached) model would also see other sessions' forwards; the maps and
# evaluations run on a private scratch copy, and this lock keeps those short forwards one at a
# time.
_HOOK_LOCK = threading.Lock()


@cache_resource(show_spinner=False, max_entries=8)
def _scratch(model: ModelKey) -> nn.Module:
    """A private copy of the base model, used only under ``_HOOK_LOCK``: each masked forward
    writes ``dense ⊙ mask`` into its weights (cheaper than a deep copy per grid cell)."""
    return copy.deepcopy(_base_model(model).model).eval()


@contextmanager
def _forward_only(key: PruneKey) -> Iterator[nn.Module]:
    """The model ``key`` describes, for forwards without gradients, while holding
    ``_HOOK_LOCK``: a structured criterion's shrunk model itself, otherwise the scratch copy
    with ``dense ⊙ mask`` written into its weights (no deep copy, no parametrization: the
    same outputs as :func:`pruned_model`, a test checks)."""
    out = _pruned(key) if key.sparsity else None
    with _HOOK_LOCK:
        if out is not None and out.small is not None:
            yield out.small
            return
        net = _scratch(key.model)
        dense = dict(_base_model(key.model).model.named_parameters())
        masks = out.masks if out is not None else {}
        with torch.no_grad():
            for name, p in net.named_parameters():
                w = dense[name]
                p.copy_(w * masks[name] if name in masks else w)
        yield net


@cache_data(show_spinner=False, max_entries=256)
def evaluation(key: PruneKey, val_samples: int) -> dict[str, float]:
    """Accuracy / loss / macro-F1 on a fixed validation subset, no fine-tuning."""
    data = _val_subset(key.data, val_samples)
    with _forward_only(key) as net:
        return evaluate(net, data, batch_size=256)


@cache_resource(show_spinner=False, max_entries=8)
def _layer_uses(model: ModelKey) -> dict[str, int]:
    """Per Linear/Conv2d module: how often each weight is used in one forward (tokens,
    output pixels), so that masked MACs are ``Σ kept weights × uses``."""
    base = copy.deepcopy(_base_model(model).model)
    uses: dict[str, int] = {}
    handles = []
    for name, mod in base.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            def hook(m, _i, out, name=name):
                width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                uses[name] = out.numel() // width
            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            base(torch.zeros(1, *base.input_shape))
    finally:
        for h in handles:
            h.remove()
    return uses


@cache_resource(show_spinner=False, max_entries=8)
def _dense_cost(model: ModelKey) -> tuple[int, int]:
    base = _base_model(model).model
    return sum(p.numel() for p in base.parameters()), count_macs(copy.deepcopy(base))


@cache_data(show_spinner=False, max_entries=256)
def cost(key: PruneKey) -> dict[str, float]:
    """Parameters and MACs (one image) kept, absolute and as a fraction of the dense model.

    Masked models: pruned weights count as removed from both (the sparse cost the papers
    report); structured models: counted on the smaller model.
    """
    params, macs = _dense_cost(key.model)
    if key.sparsity == 0:
        return {"params": params, "macs": macs, "params_kept": 1.0, "macs_kept": 1.0}
    out = _pruned(key)
    if out.small is not None:
        p = sum(t.numel() for t in out.small.parameters())
        m = count_macs(copy.deepcopy(out.small))
    else:
        uses = _layer_uses(key.model)
        pruned = {k: int(v.numel() - v.count_nonzero()) for k, v in out.masks.items()}
        p = params - sum(pruned.values())
        m = macs - sum(n * uses.get(k.rpartition(".")[0], 0) for k, n in pruned.items())
    return {"params": p, "macs": m, "params_kept": p / params, "macs_kept": m / macs}


def layer_kept(key: PruneKey) -> pd.DataFrame:
    """Columns ``layer, parameters, kept_fraction, collapsed`` for one criterion: counted
    from the masks, or for a structured criterion from the sizes of same-named weights."""
    out = _pruned(key)
    if out.masks is not None:
        rows = [{"layer": k, "parameters": m.numel(),
                 "kept_fraction": int(m.count_nonzero()) / m.numel()}
                for k, m in out.masks.items()]
    else:
        base = dict(_base_model(key.model).model.named_parameters())
        small = dict(out.small.named_parameters())
        rows = [{"layer": k, "parameters": v.numel(),
                 "kept_fraction": small[k].numel() / v.numel() if k in small else 0.0}
                for k, v in base.items() if v.ndim >= 2 and k.endswith("weight")]
    t = pd.DataFrame(rows)
    t["collapsed"] = t["kept_fraction"] <= 0.01
    t["layer"] = t["layer"].str.removesuffix(".weight")
    return t


def saliency_table(key: PruneKey) -> pd.DataFrame:
    """core's per-layer table (``layer_saliency``: score statistics, saliency shares)."""
    out = outcome(key)
    return out.table if out.table is not None else pd.DataFrame()


def collapsed_layers(key: PruneKey) -> int:
    out = _pruned(key)
    return layer_collapse(out.masks) if out.masks is not None else 0


def _score_key(key: PruneKey) -> PruneKey:
    """Scores of single-shot criteria do not depend on sparsity or scope: one cache entry."""
    if pruner_info(key.pruner)["iterative"]:
        return key
    return replace(key, sparsity=-1.0, scope="")


@cache_data(show_spinner=False, max_entries=64)
def _score_stats(skey: PruneKey, _scores: dict) -> pd.DataFrame:
    rows = []
    for k, s in _scores.items():
        v = np.log10(np.abs(s.detach().double().reshape(-1).cpu().numpy()) + 1e-30)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        iqr = q3 - q1
        rows.append({"layer": k.removesuffix(".weight"), "q1": q1, "median": med, "q3": q3,
                     "lower": float(v[v >= q1 - 1.5 * iqr].min()),
                     "upper": float(v[v <= q3 + 1.5 * iqr].max()),
                     "min": float(v.min()), "max": float(v.max()),
                     "signed": bool((s < 0).any())})
    return pd.DataFrame(rows)


def score_distribution(key: PruneKey) -> tuple[pd.DataFrame, float | None]:
    """Per layer: box-plot statistics of log10 |keep-score| (all entries), and the global cut
    on the same scale (None for layer scope, signed scores or structured criteria)."""
    out = _pruned(key)
    if out.scores is None or not isinstance(out.scores, dict):
        return pd.DataFrame(), None
    stats = _score_stats(_score_key(key), out.scores)
    if key.scope != "global" or bool(stats["signed"].any()):
        return stats, None
    cut = _threshold(out.scores, out.masks)
    return stats, None if cut is None else float(np.log10(abs(cut) + 1e-30))


def mask_layers(key: PruneKey) -> list[str]:
    out = _pruned(key)
    return [k.removesuffix(".weight") for k in out.masks] if out.masks is not None else []


@cache_data(show_spinner=False, max_entries=128)
def mask_matrix(key: PruneKey, layer: str, max_side: int = 192) -> np.ndarray | None:
    """The kept/pruned pattern of ``layer`` as a 2-D (out, in) array in [0, 1], block-averaged
    to at most ``max_side`` per side (so the value is the kept fraction of the block)."""
    out = _pruned(key)
    if out.masks is None:
        return None
    m = out.masks.get(layer + ".weight", out.masks.get(layer))
    if m is None:
        return None
    m = m.detach().float().reshape(m.shape[0], -1).cpu()
    fh, fw = math.ceil(m.shape[0] / max_side), math.ceil(m.shape[1] / max_side)
    if fh > 1 or fw > 1:
        m = torch.nn.functional.avg_pool2d(m[None, None], (fh, fw), ceil_mode=True)[0, 0]
    return m.numpy()


# ---------------------------------------------------------------------------- images

MAX_IMAGES_KEPT = 64


@cache_resource(show_spinner=False)
def _uploaded_images() -> dict[str, Tensor]:
    """Decoded uploads by digest (process-wide, oldest dropped beyond MAX_IMAGES_KEPT)."""
    return {}


def accept_image_upload(name: str, data: bytes, image_size: tuple[int, int]) -> ImageRef:
    """Decode an uploaded picture (resized to the model's input) → its reference.
    A file that is not an image raises ValueError with the reason."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_MB * 2**20:
        raise ValueError(f"{name} is {len(data) / 2**20:.1f} MB; the limit for images is "
                         f"{MAX_IMAGE_MB} MB")
    digest = hashlib.sha256(data).hexdigest()[:32] + f"-{image_size[0]}x{image_size[1]}"
    store = _uploaded_images()
    if digest not in store:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("RGB").resize((image_size[1], image_size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{name} is not a readable image: {e}") from None
        store[digest] = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
        while len(store) > MAX_IMAGES_KEPT:
            store.pop(next(iter(store)))
    return ImageRef(digest=digest)


def image_tensor(s: Setup, ref: ImageRef) -> tuple[Tensor, int | None]:
    """(3, H, W) in [0, 1] and its label (None for uploads)."""
    if ref.digest:
        img = _uploaded_images().get(ref.digest)
        if img is None:
            raise ValueError("the uploaded image is no longer on the server; upload it again")
        return img, None
    if not 0 <= ref.index < len(s.val_set):
        raise ValueError(f"sample index must be in [0, {len(s.val_set) - 1}]")
    img, label = s.val_set[ref.index]
    return img, int(label)


# ---------------------------------------------------------------------------- attention

@cache_resource(show_spinner=False, max_entries=1024)
def _attention_maps(key: PruneKey, ref: ImageRef, _image: Tensor) -> tuple[np.ndarray, ...]:
    """One (H, N, N) float32 array per block for ``_image`` (keyed by ``ref``)."""
    with _forward_only(key) as net:
        maps = attn.capture_attention(net, _image[None])
    return tuple(m[0].float().numpy() for m in maps)


@dataclass(frozen=True)
class AttentionView:
    """What each grid cell shows: ``mode`` "cls" (CLS row of block ``layer``, ``head`` or
    None = mean of heads) or "rollout" (``fusion``, ``discard``)."""

    mode: str = "cls"
    layer: int = -1
    head: int | None = None
    fusion: str = "mean"
    discard: float = 0.0


def attention_row(maps: tuple[np.ndarray, ...], view: AttentionView) -> np.ndarray:
    """CLS→patch attention (N-1,) of one model for the chosen view."""
    if view.mode == "rollout":
        R = attn.attention_rollout([torch.from_numpy(m)[None] for m in maps], view.fusion,
                                   view.discard)
        return attn.rollout_map(R)[0].numpy()
    a = torch.from_numpy(maps[view.layer])[None]
    head = view.head if view.head is None or view.head < a.shape[1] else None
    return attn.cls_attention(a, head)[0].numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def overlay_cell(image: Tensor, row: np.ndarray | Tensor, grid: tuple[int, int],
                 px: int = CELL_PX) -> np.ndarray:
    """Heat map of a (N-1,) row over the image, both at ``px``×``px`` → uint8 (px, px, 3)."""
    big = torch.nn.functional.interpolate(image[None], size=(px, px), mode="bilinear",
                                          align_corners=False)[0]
    heat = attn.patch_heatmap(torch.as_tensor(row)[None], grid, (px, px))[0]
    return attn.overlay(big, heat, alpha=0.5, cmap="jet")


def image_cell(image: Tensor, px: int = CELL_PX) -> np.ndarray:
    big = torch.nn.functional.interpolate(image[None], size=(px, px), mode="bilinear",
                                          align_corners=False)[0]
    return (big.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@dataclass
class Grid:
    cells: list[list[np.ndarray | None]]
    similarity: np.ndarray
    image: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)


def attention_grid(s: Setup, criteria: list[str], ratios: tuple[float, ...], ref: ImageRef,
                   view: AttentionView,
                   progress: Callable[[float, str], None] | None = None) -> Grid:
    """Fig. 3 of SNP: rows = criteria, columns = pruning ratios; each cell the attention over
    the image and its cosine similarity to the dense model's map. A criterion that fails
    (e.g. no calibration data) leaves its row empty and reports why in ``errors``."""
    image, _ = image_tensor(s, ref)
    grid = s.base.model.grid_size
    dense_row = attention_row(_attention_maps(s.key(criteria[0], 0.0), ref, image), view)
    dense_cell = overlay_cell(image, dense_row, grid)
    cells: list[list[np.ndarray | None]] = []
    sims = np.full((len(criteria), len(ratios)), np.nan)
    errors: dict[str, str] = {}
    total, done = len(criteria) * len(ratios), 0
    for i, crit in enumerate(criteria):
        row_cells: list[np.ndarray | None] = []
        for j, r in enumerate(ratios):
            done += 1
            if progress:
                progress(done / total, f"{crit} at {r:.0%}")
            if crit in errors:
                row_cells.append(None)
                continue
            if r == 0:
                row_cells.append(dense_cell)
                sims[i, j] = 1.0
                continue
            try:
                maps = _attention_maps(s.key(crit, r), ref, image)
            except EXPECTED_ERRORS as e:
                errors[crit] = str(e)
                row_cells.append(None)
                continue
            a_row = attention_row(maps, view)
            sims[i, j] = _cosine(a_row, dense_row)
            row_cells.append(overlay_cell(image, a_row, grid))
        cells.append(row_cells)
    return Grid(cells, sims, image_cell(image), errors)


def head_maps(s: Setup, key: PruneKey, ref: ImageRef, layer: int) -> tuple[list, list]:
    """Per-head CLS attention of block ``layer``: (dense cells, pruned cells)."""
    image, _ = image_tensor(s, ref)
    grid = s.base.model.grid_size
    out = []
    for k in (key.at(0.0), key):
        maps = _attention_maps(k, ref, image)
        a = torch.from_numpy(maps[layer])[None]
        out.append([overlay_cell(image, attn.cls_attention(a, h)[0], grid)
                    for h in range(a.shape[1])])
    return out[0], out[1]


def num_blocks(s: Setup) -> int:
    return len(attn.attention_modules(s.base.model))


def num_heads(s: Setup, layer: int) -> int:
    mods = attn.attention_modules(s.base.model)
    m = mods[layer]
    return int(getattr(m, "num_heads", getattr(m, "heads", 1)))


# ---------------------------------------------------------------------------- explanations

METHODS = ("attention rollout", "gradient rollout", "saliency", "integrated gradients")


def _attribution(model: nn.Module, x: Tensor, target: int, method: str) -> Tensor:
    """(H, W) Captum attribution map in [0, 1] of ``target`` for one image x (1, 3, H, W)."""
    from core.attribution import attribution_map

    name = {"saliency": "saliency", "integrated gradients": "integrated_gradients"}[method]
    return attribution_map(model, x[0], target, name)


@cache_data(show_spinner=False, max_entries=64)
def explanations(key: PruneKey, ref: ImageRef, fusion: str, discard: float,
                 target: int | None, _image: Tensor) -> dict:
    """For the dense model (``key.at(0)``) and ``key``: prediction, and one (H, W) heat map in
    [0, 1] per method of :data:`METHODS` (attention maps upsampled from the patch grid)."""
    out = {}
    for name, k in (("dense", key.at(0.0)), ("pruned", key)):
        model = pruned_model(k).eval()  # private copy: gradients and hooks are ours alone
        x = _image[None]
        with torch.no_grad():
            probs = model(x).softmax(-1)[0]
        t = int(probs.argmax()) if target is None else int(target)
        size = tuple(x.shape[-2:])
        grid = model.grid_size
        maps = attn.capture_attention(model, x)
        heats = {
            "attention rollout": attn.patch_heatmap(
                attn.rollout_map(attn.attention_rollout(maps, fusion, discard)), grid, size)[0],
            "gradient rollout": attn.patch_heatmap(
                attn.rollout_map(attn.gradient_rollout(model, x, t, discard)), grid, size)[0],
        }
        for method in ("saliency", "integrated gradients"):
            heats[method] = _attribution(model, x, t, method)
        out[name] = {"pred": int(probs.argmax()), "prob": float(probs.max()),
                     "target": t, "target_prob": float(probs[t]),
                     "heats": {m: h.detach().float().numpy() for m, h in heats.items()}}
    return out


def heat_cell(image: Tensor, heat: np.ndarray, px: int = 2 * CELL_PX) -> np.ndarray:
    big = torch.nn.functional.interpolate(image[None], size=(px, px), mode="bilinear",
                                          align_corners=False)[0]
    h = torch.nn.functional.interpolate(torch.as_tensor(heat)[None, None], size=(px, px),
                                        mode="bilinear", align_corners=False)[0, 0]
    return attn.overlay(big, h.clamp(0, 1), alpha=0.5, cmap="jet")


# ---------------------------------------------------------------------------- run store

def run_store():
    """The run store (``PRUNELENS_RUNS_DIR`` or ./runs), one object per process and root."""
    return _run_store(os.environ.get("PRUNELENS_RUNS_DIR", ""))


@cache_resource(show_spinner=False)
def _run_store(root: str):
    from core.runs import RunStore

    return RunStore(root or None)


# ---------------------------------------------------------------------------- training jobs

@dataclass
class Job:
    """A training run in a worker thread. Written by the worker under ``lock``; pages read
    :meth:`snapshot`. Lives in the process-wide registry, so a reload finds it again."""

    run_id: str
    label: str
    epochs: int
    total_steps: int = 0
    step: int = 0
    epoch: int = 0
    status: str = "running"
    reason: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    steps: list[tuple[int, float, float]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    kind: str = "finetune"  # or "amap"
    budget: float | None = None  # AMAP: fraction of attention MACs kept
    ratios: list[tuple[int, float, float, str]] = field(default_factory=list)
    result: dict | None = None  # AMAP: the exported model's numbers, once saved
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def snapshot(self) -> dict:
        with self.lock:
            return {"run_id": self.run_id, "label": self.label, "epochs": self.epochs,
                    "total_steps": self.total_steps, "step": self.step, "epoch": self.epoch,
                    "status": self.status, "reason": self.reason,
                    "cancel_requested": self.cancel.is_set(),
                    "elapsed": (self.ended or time.time()) - self.started,
                    "steps": pd.DataFrame(self.steps, columns=["step", "loss", "accuracy"]),
                    "history": pd.DataFrame(self.history),
                    "kind": self.kind, "budget": self.budget,
                    "ratios": pd.DataFrame(self.ratios, columns=["step", "macs_ratio",
                                                                 "expected_ratio", "phase"]),
                    "result": dict(self.result) if self.result else None}


@cache_resource(show_spinner=False)
def _jobs() -> dict[str, Job]:
    """Process-wide: every session's running and recent jobs, by run id."""
    return {}


_JOBS_LOCK = threading.Lock()
STEP_LOG_EVERY = 2  # record every 2nd step's loss (reading it costs a sync on CUDA)


JOB_MEMORY_S = 6 * 3600  # finished jobs stay followable this long (the store keeps them)


def _forget_old_jobs() -> None:
    now = time.time()
    with _JOBS_LOCK:
        jobs = _jobs()
        for run_id in [r for r, j in jobs.items()
                       if j.ended is not None and now - j.ended > JOB_MEMORY_S]:
            del jobs[run_id]


def get_job(run_id: str | None) -> Job | None:
    return _jobs().get(run_id) if run_id else None


def running_jobs() -> list[dict]:
    with _JOBS_LOCK:
        jobs = list(_jobs().values())
    return [j.snapshot() for j in jobs if j.status == "running"]


def start_training(s: Setup, key: PruneKey, config: TrainConfig, train_samples: int) -> str:
    """Create a run in the store and train a private copy of the pruned model in a daemon
    thread. Returns the run id at once."""
    store = run_store()
    model = pruned_model(key)  # our own copy: the cached base is never touched
    train_set = _train_subset(s, train_samples, config.seed)
    run_cfg = {"model": s.exp.preset, "source": s.exp.source, "dataset": s.exp.dataset,
               "pruner": key.pruner if key.sparsity else None, "sparsity": key.sparsity,
               "scope": key.scope,
               "calibration": key.calib, "seed": key.seed, "train_samples": len(train_set),
               "epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size}
    run_id = _create_run(store, run_cfg)
    _forget_old_jobs()
    what = f"{key.pruner} {key.sparsity:.0%}" if key.sparsity else "dense"
    label = f"{s.exp.preset} · {what} · {config.epochs} epoch(s)"
    job = Job(run_id, label, config.epochs)
    val_set = _val_subset(s.data, 10**9)

    def work(hooks: list, cancel: threading.Event) -> None:
        from core.runs import RunStoreCallback

        # the store first: when the page sees the job end, the run store already says so
        train(model, train_set, val_set, config,
              callbacks=[RunStoreCallback(store, job.run_id, model), *hooks], cancel=cancel)

    _launch(job, store, work)
    return run_id


def start_amap(s: Setup, budget: float, steps: int, batch_size: int,
               train_samples: int) -> str:
    """Run AMAP (``prune(model, "amap", budget=...)``) on a private copy of the base model in
    the same kind of background job as fine-tuning (progress, cancel). At the end the
    exported, physically smaller model is evaluated on the page's validation subset and saved
    as the run's checkpoint; the run is stored with pruner ``"amap"`` and sparsity
    ``1 − budget``. Returns the run id at once."""
    from core.pruning.amap import check_budget

    budget = check_budget(float(budget))
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    store = run_store()
    model = copy.deepcopy(_base_model(s.model_key).model)
    train_set = _train_subset(s, train_samples, s.exp.seed)
    images, _ = _calibration(s.data, s.exp.calib, s.exp.seed)
    val_set = _val_subset(s.data, s.exp.val_samples)
    sparsity = round(1.0 - budget, 4)
    run_cfg = {"model": s.exp.preset, "source": s.exp.source, "dataset": s.exp.dataset,
               "pruner": "amap", "sparsity": sparsity, "budget": budget, "scope": "layer",
               "calibration": s.exp.calib, "seed": s.exp.seed, "train_samples": len(train_set),
               "steps": int(steps), "batch_size": int(batch_size),
               "val_samples": len(val_set)}
    run_id = _create_run(store, run_cfg)
    _forget_old_jobs()
    label = f"{s.exp.preset} · AMAP to {budget:.0%} of attention MACs · {int(steps)} steps"
    job = Job(run_id, label, 2, total_steps=int(steps), kind="amap", budget=budget)
    dense_params, dense_macs = _dense_cost(s.model_key)

    def work(hooks: list, cancel: threading.Event) -> None:
        res = prune(model, "amap", None, images=images, budget=budget, train_set=train_set,
                    steps=int(steps), batch_size=int(batch_size), seed=int(s.exp.seed),
                    callbacks=hooks, cancel=cancel)
        small = res.model.eval()
        ev = evaluate(small, val_set, batch_size=256)
        params = sum(p.numel() for p in small.parameters())
        macs = count_macs(copy.deepcopy(small))
        status, reason = res.extra["status"], res.extra["reason"]
        result = {"attention_ratio": res.extra["attention_ratio"], "budget": budget,
                  "params": params, "macs": macs, "params_kept": params / dense_params,
                  "macs_kept": macs / dense_macs, "val_acc": ev["accuracy"],
                  "val_loss": ev["loss"], "val_f1": ev["macro_f1"], "steps": res.extra["steps"]}
        store.log_epoch(run_id, 1, {"val_acc": ev["accuracy"], "val_loss": ev["loss"],
                                    "val_f1": ev["macro_f1"],
                                    "attention_macs_ratio": result["attention_ratio"],
                                    "params": params, "macs": macs,
                                    "steps": res.extra["steps"]})
        store.save_checkpoint(run_id, small, "last",
                              metadata={"pruner": "amap", "budget": str(budget),
                                        "steps": str(res.extra["steps"])})
        store.finish(run_id, status, reason)
        with job.lock:
            job.result = result
            job.status, job.reason, job.ended = status, reason, time.time()

    _launch(job, store, work, finish_on_end=False)
    return run_id


def _train_subset(s: Setup, n: int, seed: int):
    from torch.utils.data import Subset

    train_set = training_set(s)
    if n < len(train_set):
        order = np.random.default_rng(seed).permutation(len(train_set))
        train_set = Subset(train_set, np.sort(order[:n]).tolist())
    return train_set


def _launch(job: Job, store, work: Callable[[list, threading.Event], None],
            finish_on_end: bool = True) -> None:
    """Register ``job`` and run ``work(callbacks, cancel)`` in a daemon thread; the callbacks
    feed the job's progress (``core.train`` protocol). ``finish_on_end=False``: ``work`` sets
    the final status itself (after its own post-processing), not the ``on_end`` event."""
    with _JOBS_LOCK:
        _jobs()[job.run_id] = job
    job.thread = threading.Thread(target=_worker, args=(job, store, work, finish_on_end),
                                  name=f"prunelens-{job.kind}-{job.run_id}", daemon=True)
    job.thread.start()


def _create_run(store, cfg: dict) -> str:
    run = store.create_run(model=cfg["model"], dataset=cfg["dataset"], pruner=cfg["pruner"],
                           sparsity=cfg["sparsity"], config=cfg)
    return run if isinstance(run, str) else getattr(run, "run_id", getattr(run, "id", str(run)))


class _Progress:
    """core.train callback feeding a :class:`Job` (steps, epochs, end)."""

    def __init__(self, job: Job, finish_on_end: bool = True):
        self.job, self.finish_on_end = job, finish_on_end

    def on_step(self, e) -> None:
        record = e.step % STEP_LOG_EVERY == 0 or e.step == e.total_steps
        loss, acc = (e.running_loss, e.running_accuracy) if record else (None, None)
        ratio = getattr(e, "macs_ratio", None)  # AMAPStepEvent
        with self.job.lock:
            self.job.step, self.job.total_steps, self.job.epoch = e.step, e.total_steps, e.epoch
            if record:
                self.job.steps.append((e.step, loss, acc))
            if ratio is not None:
                self.job.ratios.append((e.step, float(ratio), float(e.expected_ratio),
                                        str(e.phase)))

    def on_epoch_end(self, e) -> None:
        with self.job.lock:
            self.job.history.append({**e.metrics, "step": e.step})

    def on_end(self, result) -> None:
        if not self.finish_on_end:
            return
        with self.job.lock:
            self.job.status, self.job.reason = result.status, result.reason
            self.job.ended = time.time()


def _worker(job: Job, store, work: Callable[[list, threading.Event], None],
            finish_on_end: bool) -> None:
    from core.train import Callback

    class Hooks(Callback):  # bound methods of _Progress, typed as a core Callback
        def __init__(self, p: _Progress):
            self.p = p

        def on_step(self, e):
            self.p.on_step(e)

        def on_epoch_end(self, e):
            self.p.on_epoch_end(e)

        def on_end(self, r):
            self.p.on_end(r)

    try:
        work([Hooks(_Progress(job, finish_on_end))], job.cancel)
    except Exception as e:  # reported to the page through the job, and to the store
        log.exception("%s run %s failed", job.kind, job.run_id)
        with job.lock:
            job.status, job.reason = "failed", f"{type(e).__name__}: {e}"
            job.ended = job.ended or time.time()
        try:
            if store.get_run(job.run_id)["status"] == "running":
                store.finish(job.run_id, "failed", job.reason)
        except Exception:  # the store is best effort here; the job already says why
            log.exception("could not mark run %s failed", job.run_id)


def cancel_job(run_id: str) -> bool:
    job = get_job(run_id)
    if job is None or job.status != "running":
        return False
    job.cancel.set()
    return True


# ---------------------------------------------------------------------------- page helpers

@contextmanager
def page_errors() -> Iterator[None]:
    """Show any error of the page body as ``st.error`` with its reason, never a traceback
    page. (st.stop / st.rerun are BaseExceptions and pass through.)"""
    try:
        yield
    except EXPECTED_ERRORS as e:
        st.error(f"{_reason(e)}", icon=":material/error:")
    except Exception as e:
        log.exception("dashboard page failed")
        st.error(f"Unexpected error ({type(e).__name__}): {e}", icon=":material/error:")


def _reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing entry {msg}"
    return msg


def untrained_notice(s: Setup, where: str) -> None:
    """Attention maps of an untrained model are noise: say so, and offer the trained one."""
    if s.base.trained:
        return
    text = (s.base.note or "This model is **untrained** (pruning at initialisation).") + (
        " Attention maps and attributions of an untrained model are noise, not a property of "
        "the criterion.")
    st.warning(text, icon=":material/warning:")
    if has_checkpoint(s.exp.preset, s.exp.dataset) and s.exp.source != "checkpoint":
        st.button(f"Use the trained {s.exp.preset} checkpoint ({s.exp.dataset})",
                  key=f"{where}_use_trained", on_click=use_trained_checkpoint, type="primary")


def sidebar_summary(exp: Experiment) -> None:
    """The experiment in two lines, and the way back to change it (pages other than Prune)."""
    with st.sidebar:
        st.header("Setup", divider="gray")
        src = {"checkpoint": "trained" if has_checkpoint(exp.preset, exp.dataset)
               else "untrained: no checkpoint", "init": "untrained",
               "upload": "uploaded"}[exp.source]
        st.markdown(f"**{exp.preset}** ({src}) on **{exp.dataset}**  \n"
                    f"{', '.join(exp.pruners) or 'no criteria'} · {exp.sparsity:.0%} · "
                    f"{exp.scope} scope · seed {exp.seed}")
        st.page_link("pages/prune.py", label="Change on the Prune page", icon=":material/tune:")


def default_grid_criteria(exp: Experiment) -> list[str]:
    """SNP's Fig. 3 rows (l2-norm, GM, reverse, SNP) when those pruners exist, else the
    experiment's criteria topped up to four with fast single-shot ones."""
    names = pruner_names()
    fig3 = [n for n in ("l2-norm", "gm", "reverse", "snp") if n in names]
    if len(fig3) == 4:
        return fig3
    out = list(exp.pruners[:4])
    for n in ("magnitude", "snip", "attention-snip", "random"):
        if len(out) >= 4:
            break
        if n in names and n not in out:
            out.append(n)
    return out
