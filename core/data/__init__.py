"""Offline datasets for PruneLens: one factory, ``load_dataset(name, image_size, seed, **options)``.

Sources (``list_datasets()``):

- ``shapes``: procedural coloured shapes with object masks (default; options ``classes``,
  ``num_train=6000``, ``num_val=1200``).
- ``digits``: scikit-learn's bundled 8x8 handwritten digits (option ``val_fraction=0.2``).
- ``folder``: one sub-folder per class on disk (options ``root``, ``val_fraction=0.2``, and the
  scan's bounds ``max_pixels``, ``max_files``, ``max_depth``, ``max_seconds``, ``roots``,
  ``cancel``; see ``core.data.folder``). With ``model=`` (or ``labels=``/``wnids=``/
  ``preprocessing=``) it is an ImageNet-style folder: class folders named by WordNet id or
  label name are matched onto the model's outputs and images are preprocessed as the model's
  own processor does (``core.data.imagenet``, ``core.data.preprocess``).

A model's own preprocessing and labels: ``preprocessing_of(model)``, ``to_model_input``,
``labels_of(model)``, ``top_k(model, logits)`` (``core.data.preprocess``, ``core.data.labels``);
``default_photos()`` are the shipped photographs; ``iterate_batches`` streams a dataset from
disk through a ``DataLoader`` (``core.data.stream``).

Every dataset yields ``(image, label)`` with ``image`` float32 ``(3, H, W)`` in ``[0, 1]`` (no
normalisation: models do their own) and has ``classes``, ``targets`` and ``image_size``.
``calibration_batch`` draws a class-balanced batch for data-driven pruning criteria.

Memory: images are made at the size asked for, usually a model's, which a model file declares.
Whatever holds images (a generated dataset, a calibration batch, a lazy dataset's one image at
a time) is checked against ``PRUNELENS_DATA_MB`` (default 2048) first by ``check_data_budget``:
over it, a :class:`DataBudgetError` (a ``ValueError``) says how much, the budget and how to ask
for less.

Untrusted input: ``core.data.images.decode_image`` decodes an uploaded file (size refused from
the header first, only the formats of ``core.data.images.ACCEPTED_FORMATS``, a JPEG of more
than ``MAX_JPEG_SCANS`` scans refused unread); ``core.data.roots`` says which server folders a
browser user may read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch.utils.data import Dataset

from .common import (DataBudgetError, calibration_batch, check_data_budget,
                     validate_image_size, validate_seed)
from .digits import DigitsDataset, make_digits
from .folder import FolderDataset, FolderScanError, ScanCancelled, make_folder, scan_folder
from .images import ImageError, ImageTooLargeError, decode_image
from .imagenet import NoMatchingClassError
from .labels import imagenet_classes, labels_of, match_class_folders, top_k, wnids_of
from .photos import default_photos, photos_are_default
from .preprocess import Preprocessing, pixel_values, preprocessing_of, to_model_input
from .roots import DataPathError, data_roots, list_data_folders, resolve_under_roots
from .shapes import SHAPE_CLASSES, ShapesDataset, make_shapes
from .stream import iterate_batches

__all__ = [
    "SHAPE_CLASSES",
    "DataBudgetError",
    "DataPathError",
    "DigitsDataset",
    "FolderDataset",
    "FolderScanError",
    "ImageError",
    "ImageTooLargeError",
    "NoMatchingClassError",
    "Preprocessing",
    "ScanCancelled",
    "ShapesDataset",
    "calibration_batch",
    "check_data_budget",
    "data_roots",
    "decode_image",
    "default_photos",
    "imagenet_classes",
    "iterate_batches",
    "labels_of",
    "list_data_folders",
    "list_datasets",
    "load_dataset",
    "match_class_folders",
    "photos_are_default",
    "pixel_values",
    "preprocessing_of",
    "resolve_under_roots",
    "scan_folder",
    "to_model_input",
    "top_k",
    "wnids_of",
]

_BUILDERS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {
    "shapes": make_shapes,
    "digits": make_digits,
    "folder": make_folder,
}


def list_datasets() -> list[str]:
    """Names accepted by ``load_dataset``, the default (``shapes``) first."""
    return list(_BUILDERS)


def load_dataset(
    name: str, image_size: int | tuple[int, int], seed: int = 0, **options: object
) -> tuple[Dataset, Dataset]:
    """Build the ``(train, val)`` datasets of source ``name``.

    Args:
        name: one of ``list_datasets()``.
        image_size: ``S`` or ``(H, W)``, every side an int >= 8; images come out ``(3, H, W)``.
        seed: makes generation (``shapes``) and the train/val split deterministic.
        **options: source-specific keywords, see each ``make_*`` function.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones), bad ``image_size`` or
            ``seed``, or a source-specific problem.
        TypeError: an option the source does not take.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(_BUILDERS)}")
    size = validate_image_size(image_size)
    seed = validate_seed(seed)
    builder = _BUILDERS[name]
    accepted = [p for p in inspect.signature(builder).parameters if p not in ("image_size", "seed")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"dataset {name!r} takes options {accepted}; got unknown {unknown}")
    return builder(image_size=size, seed=seed, **options)
