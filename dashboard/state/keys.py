"""The keys every cache is addressed by (small frozen dataclasses of plain values), the
experiment the Prune page sets up, the widget keys and the dashboard's fixed settings."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace

import streamlit as st
from torch import nn

from core import study
from core.data import Preprocessing
from core.models import CheckpointError
from core.pruning import pattern_sparsity

MAX_MODEL_MB = 400   # also server.maxUploadSize in dashboard/.streamlit/config.toml
MAX_IMAGE_MB = 10
MAX_IMAGE_PIXELS = 40_000_000  # an uploaded picture's width × height, checked from its header
MODEL_SUFFIXES = (".safetensors", ".pt", ".pth")
IMAGE_SUFFIXES = ("png", "jpg", "jpeg", "bmp", "webp")
# The sparsity slider: steps of 5 % up to 90 %, then of 1 % up to 99 % (core takes 0.99; the
# unstructured criteria part ways between 90 and 99 %).
SPARSITY_OPTIONS = tuple(range(5, 90, 5)) + tuple(range(90, 100))
RATIOS = tuple(round(0.1 * i, 1) for i in range(10))          # the Fig. 3 columns, 0% … 90%
# The Prune page's Pattern box: N:M sparsity for the unstructured criteria (2:4 is what sparse
# tensor cores run; core takes any N:M).
PATTERNS = ("unstructured", "2:4", "4:8")
SOURCES = {"checkpoint": "shipped checkpoint (trained)", "init": "untrained (pruning at init)",
           "upload": "uploaded checkpoint", "folder": "model folder on the server",
           "hub": "Hugging Face hub"}  # "hub": offered where downloads are on (folders.py)
DATASET_SEED = 0  # the shipped checkpoints were trained on seed 0's split; keep its val set
CALIBRATION_POOL = 1024  # shapes training images generated for calibration batches
CELL_PX = 96      # side of one attention-grid cell on screen
# Activation memory a criterion may use to score its calibration batch (one forward and
# backward of the whole batch at once): on a 224×224 model 64 images would take 3 GB (SNIP)
# and 9 GB (GraSP's double backward), so the batch is capped to fit and the page says so.
# What one image takes is the criterion's declaration (``memory_per_image``).
SCORE_MB = float(os.environ.get("PRUNELENS_SCORE_MB", 1024))

# Widget keys of the experiment set up on the Prune page (read by every page).
K_MODEL, K_SOURCE, K_DATASET = "prune_model", "prune_source", "prune_dataset"
K_SOURCE_WANTED = "prune_source_wanted"  # what the user last picked on the Weights radio
K_FOLDER, K_PRUNERS, K_SPARSITY = "prune_folder", "prune_pruners", "prune_sparsity"
K_SCOPE, K_CALIB, K_SEED, K_VAL = "prune_scope", "prune_calib", "prune_seed", "prune_val"
K_PATTERN = "prune_pattern"
K_MODEL_FOLDER = "prune_model_folder"
K_HUB_ID = "prune_hub_id"
K_UPLOAD_DIGEST = "upload_digest"  # not a widget: the accepted upload's sha256
K_UPLOAD_NAME = "upload_name"
K_UPLOAD_FILE_ID = "upload_file_id"  # the uploader's id of the accepted file
K_DELETE_PENDING = "runs_delete_pending"

# What a page reports as a plain reason (``page_errors``) rather than an unexpected failure.
EXPECTED_ERRORS = (ValueError, CheckpointError, FileNotFoundError, NotADirectoryError, OSError,
                   TypeError, KeyError, RuntimeError)


@dataclass(frozen=True)
class Experiment:
    """What the Prune page's sidebar selects; every page reads it through ``experiment()``."""

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
    upload: str = ""        # the accepted upload's sha256 (this session's file)
    model_folder: str = ""  # source "folder": what the user chose (checked on use)
    hub_id: str = ""        # source "hub": org/name[@revision] as typed (checked on use)
    pattern: str = "unstructured"  # or "N:M" for the unstructured criteria (PATTERNS)


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
    """A base model. ``upload``: the path of the session's uploaded checkpoint; ``folder``:
    the resolved model folder (or hub snapshot in the Hugging Face cache) it is loaded
    from."""

    preset: str
    source: str
    dataset: str
    num_classes: int
    seed: int = 0
    upload: str = ""
    folder: str = ""


@dataclass(frozen=True)
class PruneKey:
    """One pruned model: criterion ``pruner`` at ``sparsity`` (0 → the dense base model);
    ``pattern``: ``"N:M"`` for an unstructured criterion under that pattern (its sparsity is
    then ``1 − N/M``), ``""`` otherwise."""

    model: ModelKey
    data: DataKey
    pruner: str
    sparsity: float
    scope: str
    calib: int
    seed: int
    pattern: str = ""

    def at(self, sparsity: float) -> "PruneKey":
        """The same criterion at another sparsity; at 0 the one dense key every criterion
        shares (so the dense model is evaluated and hooked once). A sparsity other than the
        pattern's drops the pattern."""
        s = round(float(sparsity), 4)
        if s == 0:
            return replace(self, pruner="dense", sparsity=0.0, scope="global", calib=0, seed=0,
                           pattern="")
        if self.pattern and abs(s - pattern_sparsity(self.pattern)) > 1e-4:
            return replace(self, sparsity=s, pattern="")
        return replace(self, sparsity=s)

    def using(self, pruner: str) -> "PruneKey":
        return replace(self, pruner=pruner)


@dataclass(frozen=True)
class ImageRef:
    """A validation sample (``index``), an uploaded image (``digest``) or a shipped photo
    (``photo``, a file name of ``core.data.photos``)."""

    index: int = 0
    digest: str = ""
    photo: str = ""


@dataclass(frozen=True)
class LoadedModel:
    model: nn.Module
    trained: bool
    note: str
    label: str


@dataclass(frozen=True)
class Setup:
    """An experiment resolved to objects: data, base model, and the key of each pruner.
    ``train_set`` is the calibration pool (see :class:`DataKey`; ``training_set()`` gives
    the full split)."""

    exp: Experiment
    data: DataKey
    model_key: ModelKey
    base: LoadedModel
    train_set: object
    val_set: object
    classes: tuple[str, ...]
    image_bytes: int = 0  # sum of one image's module outputs in a forward (activation memory)

    def calib(self, pruner: str) -> int:
        """The calibration batch ``pruner`` scores on: the experiment's, capped so that its
        activations fit :data:`SCORE_MB` (``CriterionInfo.calibration_cap``; data-free
        criteria: the experiment's)."""
        return _info(pruner).calibration_cap(self.exp.calib, self.image_bytes, SCORE_MB * 2**20)

    def key(self, pruner: str, sparsity: float | None = None) -> PruneKey:
        """``pruner`` at the experiment's setting (under its pattern, for an unstructured
        criterion), or at ``sparsity`` (no pattern: other pages' own ratios)."""
        if sparsity is None and self.exp.pattern in PATTERNS[1:]:
            s, pattern = study.point_setting(pruner, self.exp.sparsity, self.exp.pattern)
            if pattern:  # the one rule: unstructured criteria take the pattern
                return PruneKey(self.model_key, self.data, pruner, s, self.exp.scope,
                                self.calib(pruner), self.exp.seed, pattern)
        s = self.exp.sparsity if sparsity is None else sparsity
        return PruneKey(self.model_key, self.data, pruner, self.exp.sparsity, self.exp.scope,
                        self.calib(pruner), self.exp.seed).at(s)


@functools.lru_cache(maxsize=None)
def _info(pruner: str) -> study.CriterionInfo:
    return study.criterion_info(pruner)


# Streamlit hashes cache arguments field by field (~0.2 ms for a PruneKey, a few hundred
# lookups a rerun); these keys are frozen dataclasses of plain values, so their repr is exact.
_KEY_HASH = {cls: repr for cls in (DataKey, ModelKey, PruneKey, ImageRef, Preprocessing)}
cache_data = functools.partial(st.cache_data, hash_funcs=_KEY_HASH)
cache_resource = functools.partial(st.cache_resource, hash_funcs=_KEY_HASH)
