"""Datasets, base models and uploads, and the experiment resolved to them (:func:`setup`).

Cached objects are shared by every browser session, so nothing here hands one out to be
mutated: pruning, training and hooked forwards work on copies.
"""
from __future__ import annotations

import copy
import hashlib
import io
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from torch import Tensor, nn

from core import study
from core.data import load_dataset
from core.models import CheckpointError, build_model, checkpoint_info, load_model, load_weights

from .keys import (CALIBRATION_POOL, DATASET_SEED, MAX_IMAGE_MB, MAX_MODEL_MB, MODEL_SUFFIXES,
                   SOURCES, DataKey, Experiment, ImageRef, LoadedModel, ModelKey, Setup,
                   cache_resource)
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
    return options


@cache_resource(show_spinner="Loading the dataset…", max_entries=6)
def dataset(key: DataKey):
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
    remember_upload(digest, name)
    return digest


@cache_resource(show_spinner=False, max_entries=4)
def _uploaded_architecture(digest: str) -> nn.Module | None:
    """The uploaded model if it carries PruneLens architecture metadata, else None (plain
    weights, to be loaded into the selected preset). Unreadable files raise CheckpointError."""
    path = _upload_path(digest)
    if "prunelens_config" not in checkpoint_info(path):
        return None
    return load_model(path).eval()


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
        except Image.DecompressionBombError:
            raise ValueError(f"{name} has too many pixels to decode safely") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            # PIL's own text names a BytesIO object at some address: no help to the user
            raise ValueError(f"{name} is not an image PIL can read (PNG, JPEG, BMP, WebP, …)"
                             ) from None
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


# ---------------------------------------------------------------------------- models

@cache_resource(show_spinner="Loading the model…", max_entries=8)
def base_model(key: ModelKey) -> LoadedModel:
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


@cache_resource(show_spinner=False, max_entries=8)
def image_bytes(key: ModelKey) -> int:
    """Bytes of every module output in a forward of one image (no gradients): the scale of
    the activation memory scoring needs per calibration image."""
    net = copy.deepcopy(base_model(key).model)  # hooks on a private copy
    total = 0

    def add(_m, _i, out) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(add) for m in net.modules()]
    try:
        with torch.no_grad():
            net(torch.zeros(1, *net.input_shape))
    finally:
        for h in handles:
            h.remove()
    return total


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
    train_set, val_set = dataset(data)
    classes = tuple(train_set.classes)
    mkey = ModelKey(exp.preset, exp.source, exp.dataset, len(classes),
                    exp.seed if exp.source == "init" else 0,
                    exp.upload if exp.source == "upload" else "")
    base = base_model(mkey)
    if base.model.num_classes != len(classes):
        raise ValueError(f"the model has {base.model.num_classes} outputs but {exp.dataset} has "
                         f"{len(classes)} classes")
    return Setup(exp, data, mkey, base, train_set, val_set, classes, image_bytes(mkey))
