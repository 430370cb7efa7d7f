"""Datasets, base models and uploads, and the experiment resolved to them (:func:`setup`).

Uploads are this session's only (:mod:`.uploads`); server folders are those inside the data
roots (:mod:`.folders`).

Cached objects are shared by every browser session, so nothing here hands one out to be
mutated: pruning, training and hooked forwards work on copies.
"""
from __future__ import annotations

import copy
import os
import shutil
from dataclasses import replace
from pathlib import Path

import streamlit as st
import torch
from PIL import Image
from torch import Tensor, nn

from core import study
from core.data import ImageError, Preprocessing, load_dataset, preprocessing_of
from core.data.common import data_budget_bytes
from core.data.photos import photo_path
from core.data.preprocess import decode_for_model, to_model_input
from core.models import CheckpointError, build_model, checkpoint_info, load_model, load_weights
from core.models.checkpoint import one_line
from core.models.registry import load_folder
from core.study.evaluation import DEVICE_ENV, device_label

from . import folders, uploads
from .keys import (CALIBRATION_POOL, DATASET_SEED, K_UPLOAD_DIGEST, K_UPLOAD_FILE_ID,
                   MAX_IMAGE_MB, MAX_IMAGE_PIXELS, MAX_MODEL_MB, MODEL_SUFFIXES, SOURCES, DataKey,
                   Experiment, ImageRef, LoadedModel, ModelKey, Setup, cache_resource)
from .widgets import remember_upload


@cache_resource(show_spinner=False)
def preset_input_shape(preset: str) -> tuple[int, int, int]:
    """(C, H, W) a preset expects (core exposes it only on a built model)."""
    return tuple(build_model(preset, num_classes=2).input_shape)


def dataset_options(key: DataKey) -> dict:
    """The ``load_dataset`` options behind ``dataset(key)`` (also in the command line that
    reproduces a comparison)."""
    options: dict = {}
    if key.name == "folder":
        return {"root": key.root}
    if key.name == "shapes" and max(key.image_size) > 64:
        # 6000 images of 224×224 would be 900 MB; a dashboard needs far fewer, and at the
        # largest sizes fewer still: what the data budget holds (uint8 images and masks, 4
        # bytes a pixel; the validation images once more as float32, 12 bytes, when a sweep
        # stacks them), with room to spare
        px = key.image_size[0] * key.image_size[1]
        budget = data_budget_bytes() // 2
        num_val = max(12, min(300, budget // (px * (4 + 12)) // 4))
        num_train = max(12, min(1200, (budget - num_val * px * 16) // (px * 4)))
        options.update(num_train=int(num_train), num_val=int(num_val))
    elif key.name == "shapes" and not key.full:
        options.update(num_train=CALIBRATION_POOL)
    return options


@cache_resource(show_spinner="Loading the dataset…", max_entries=6)
def dataset(key: DataKey):
    if key.name == "folder":
        # key.root was resolved inside the data roots by setup(); the scan is bounded there
        return folders.folder_dataset(key)
    return load_dataset(key.name, key.image_size, seed=DATASET_SEED, **dataset_options(key))


def training_set(s: Setup):
    """The full training split (the Train page)."""
    return dataset(replace(s.data, full=True))[0]


@cache_resource(show_spinner=False, max_entries=16)
def val_subset(key: DataKey, n: int):
    return study.val_subset(dataset(key)[1], n)


@cache_resource(show_spinner=False, max_entries=16)
def calibration(key: DataKey, size: int, seed: int) -> tuple[Tensor, Tensor]:
    return study.calibration(dataset(key)[0], size, seed)


# ---------------------------------------------------------------------------- uploads

def accept_model_upload(name: str, data: bytes, file_id: str = "") -> str:
    """Check an uploaded checkpoint (size, suffix, readable as safetensors / weights-only),
    keep it in this session's upload folder and remember it in the session. Returns its
    sha256. ``file_id``: the uploader's id of the file; the same file is not checked twice.

    Raises ValueError / CheckpointError with the reason; nothing is remembered then.
    """
    if file_id and file_id == st.session_state.get(K_UPLOAD_FILE_ID):
        try:
            uploads.path("model", st.session_state.get(K_UPLOAD_DIGEST, ""))
            return st.session_state[K_UPLOAD_DIGEST]
        except uploads.UploadGoneError:
            pass  # deleted after sitting unused: keep it again
    suffix = Path(name).suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        raise ValueError(f"{name}: only .safetensors or weights-only PyTorch checkpoints "
                         f"(.pt, .pth) are accepted")
    if len(data) > MAX_MODEL_MB * 2**20:
        raise ValueError(f"{name} is {len(data) / 2**20:.0f} MB; the limit is {MAX_MODEL_MB} MB")
    if not data:
        raise ValueError(f"{name} is empty")
    path = uploads.save("model", name, data)
    try:
        _uploaded_architecture(str(path))  # reads it: a corrupt file fails here, with the reason
    except CheckpointError as e:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise CheckpointError(one_line(e)) from None
    except Exception:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    digest = path.parent.name
    remember_upload(digest, name)
    st.session_state[K_UPLOAD_FILE_ID] = file_id
    return digest


@cache_resource(show_spinner=False, max_entries=4)
def _uploaded_architecture(path: str) -> nn.Module | None:
    """The uploaded model if it carries PruneLens architecture metadata, else None (plain
    weights, to be loaded into the selected preset). Unreadable files raise CheckpointError."""
    if "prunelens_config" not in checkpoint_info(path):
        return None
    return load_model(path).eval()


@cache_resource(show_spinner="Loading the model folder…", max_entries=4)
def _folder_model(path: str) -> nn.Module:
    """A Hugging Face / timm model folder (or PruneLens file) already resolved inside the data
    roots, or a cached hub snapshot. CheckpointError with the reason otherwise."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no model folder at {folders.label(path)}")
    model = load_folder(p) if p.is_dir() else load_model(p)
    return model.eval()


def accept_image_upload(name: str, data: bytes, prep: Preprocessing) -> ImageRef:
    """Keep an uploaded picture in this session's upload folder and decode it (resized and
    cropped as the model's own preprocessing ``prep`` says) → its reference. A file that is
    not an image, or one over :data:`MAX_IMAGE_PIXELS`, raises ValueError with the reason
    (checked from its header)."""
    if len(data) > MAX_IMAGE_MB * 2**20:
        raise ValueError(f"{name} is {len(data) / 2**20:.1f} MB; the limit for images is "
                         f"{MAX_IMAGE_MB} MB")
    path = uploads.save("image", name, data)
    try:
        _image_file(str(path), prep)  # cached: reruns do not decode again
    except ImageError as e:
        shutil.rmtree(path.parent, ignore_errors=True)  # a bad file is not kept
        raise ImageError(f"{name}: {e}") from None
    return ImageRef(digest=path.parent.name)


@cache_resource(show_spinner=False, max_entries=32)
def _image_file(path: str, prep: Preprocessing) -> Tensor:
    """(3, H, W) in [0, 1]; pixel count checked from the header before decoding."""
    return decode_for_model(Path(path).read_bytes(), prep, max_pixels=MAX_IMAGE_PIXELS)


@cache_resource(show_spinner=False, max_entries=32)
def _photo(name: str, prep: Preprocessing) -> Tensor:
    """A shipped photo as the model's input (3, H, W) in [0, 1]."""
    with Image.open(photo_path(name)) as im:
        return to_model_input(im, prep)


def model_preprocessing(s: Setup) -> Preprocessing:
    """How the base model turns a picture into its input (``core.data.preprocessing_of``)."""
    return preprocessing_of(s.base.model)


def image_tensor(s: Setup, ref: ImageRef) -> tuple[Tensor, int | None]:
    """(3, H, W) in [0, 1] and its label (None for uploads, this session's only, and for the
    shipped photos)."""
    if ref.digest:
        return _image_file(str(uploads.path("image", ref.digest)), model_preprocessing(s)), None
    if ref.photo:
        return _photo(ref.photo, model_preprocessing(s)), None
    if not 0 <= ref.index < len(s.val_set):
        raise ValueError(f"sample index must be in [0, {len(s.val_set) - 1}]")
    img, label = s.val_set[ref.index]
    return img, int(label)


# ---------------------------------------------------------------------------- models

def server_device() -> torch.device:
    """The device this server computes on: ``$PRUNELENS_DEVICE`` (default auto: CUDA where
    there is one, else MPS, else the CPU). One that is not there is a one-line ValueError."""
    return study.resolve_device("auto", hint=f"set {DEVICE_ENV}=cpu (or unset it) and "
                                             "restart the dashboard")


def server_device_line() -> str:
    """``"Computing on: cpu"`` / ``"Computing on: cuda:0 (NVIDIA …)"``, or why not."""
    try:
        return f"Computing on: {device_label(server_device())}"
    except ValueError:
        return f"Computing on: nothing ({DEVICE_ENV}={os.environ.get(DEVICE_ENV)} is not here)"


def base_model(key: ModelKey) -> LoadedModel:
    """The base model of ``key`` on :func:`server_device` (shared by every session: never
    mutated; pages prune and hook copies, which stay on its device)."""
    return _base_model(key, str(server_device()))


@cache_resource(show_spinner="Loading the model…", max_entries=8)
def _base_model(key: ModelKey, device: str) -> LoadedModel:
    loaded = _load_base(key)
    return replace(loaded, model=loaded.model.to(device))


def _load_base(key: ModelKey) -> LoadedModel:
    label = f"{key.preset} · {SOURCES[key.source]}"
    if key.source == "upload":
        arch = _uploaded_architecture(key.upload)
        if arch is not None:
            model = copy.deepcopy(arch)
        else:
            model = build_model(key.preset, key.num_classes)
            load_weights(model, key.upload)
        name = model.preset or key.preset
        return LoadedModel(model.eval(), True, "", f"uploaded checkpoint ({name})")
    if key.source in ("folder", "hub"):
        model = copy.deepcopy(_folder_model(key.folder))
        return LoadedModel(model, True, "", folders.model_label(key.folder))
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


@cache_resource(show_spinner=False, max_entries=8)
def image_bytes(key: ModelKey) -> int:
    """``study.activation_bytes`` of the base model (hooks on a private copy: the cached model
    is shared by every session)."""
    return study.activation_bytes(copy.deepcopy(base_model(key).model))


@cache_resource(show_spinner=False, max_entries=8)
def dense_cost(model: ModelKey) -> study.DenseCost:
    return study.dense_cost(base_model(model).model)


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
    upload = folder = ""
    if exp.source == "upload":
        if not exp.upload:
            raise ValueError("upload a .safetensors (or weights-only .pt) checkpoint in the "
                             "sidebar of the Prune page first")
        upload = str(uploads.path("model", exp.upload))
        arch = _uploaded_architecture(upload)
        shape = tuple(arch.input_shape) if arch is not None else preset_input_shape(exp.preset)
    elif exp.source in ("folder", "hub"):
        folder = str(folders.resolve_model(exp.model_folder) if exp.source == "folder"
                     else folders.hub_model(exp.hub_id))
        shape = tuple(_folder_model(folder).input_shape)
    else:
        shape = preset_input_shape(exp.preset)
    root = str(folders.resolve_folder(exp.folder)) if exp.dataset == "folder" else ""
    data = DataKey(exp.dataset, root, (int(shape[1]), int(shape[2])))
    if data.name == "folder":
        folders.wait_for_scan(data)
    train_set, val_set = dataset(data)
    classes = tuple(train_set.classes)
    mkey = ModelKey(exp.preset, exp.source, exp.dataset, len(classes),
                    exp.seed if exp.source == "init" else 0, upload, folder)
    base = base_model(mkey)
    if base.model.num_classes != len(classes):
        raise ValueError(f"the model has {base.model.num_classes} outputs but {exp.dataset} has "
                         f"{len(classes)} classes")
    return Setup(exp, data, mkey, base, train_set, val_set, classes, image_bytes(mkey))
