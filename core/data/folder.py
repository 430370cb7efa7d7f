"""Images on disk in the PlantVillage / torchvision ``ImageFolder`` layout: ``root/<class>/**/*``.

Class names are the sorted names of the non-hidden sub-folders of ``root``; every non-hidden file
below a class folder (any depth) is a candidate image. Construction checks each candidate with
PIL (``Image.open(path).verify()``), which reads every file once (for PNG the whole file, CRCs
included; for JPEG little more than the headers): 2000 files of 256x256, half PNG and half JPEG,
took 0.5-0.9 s with a warm page cache, so expect seconds per 10 000 files and more on a cold
disk. Unreadable files are skipped and reported in one warning. Pixels are decoded lazily in
``__getitem__``: EXIF rotation applied, ``convert("RGB")``, then a bilinear (anti-aliased when
shrinking) resize to ``image_size`` that ignores the aspect ratio.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from .common import check_num_classes, stratified_split, validate_image_size, validate_seed

_EXAMPLES_IN_WARNING = 3


class FolderDataset(Dataset):
    """Lazily decoded images from ``samples`` of ``(path, label)``.

    Attributes:
        classes: class folder names, label ``k`` is ``classes[k]``.
        samples: ``(path, label)`` per sample.
        targets: ``(N,)`` label per sample.
        image_size: ``(H, W)``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        image_size: int | tuple[int, int],
    ) -> None:
        self.image_size = validate_image_size(image_size)
        self.classes = list(classes)
        check_num_classes(self.classes, "folder dataset")
        self.samples = [(str(p), int(y)) for p, y in samples]
        self.targets: list[int] = [y for _, y in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Return ``(image (3, H, W) float32 in [0, 1], label)``; ``OSError`` names a bad file."""
        path, label = self.samples[index]
        H, W = self.image_size
        try:
            with Image.open(path) as im:
                # phone photos store their rotation in EXIF; apply it so the image is upright
                upright = ImageOps.exif_transpose(im)
                rgb = upright.convert("RGB").resize((W, H), Image.Resampling.BILINEAR)
        except Exception as err:  # verify() passed, so the file changed since or is truncated
            raise OSError(f"could not read image {path}: {err}") from err
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy())  # (H, W, 3)
        return pixels.permute(2, 0, 1).float().div_(255.0), label


def scan_folder(root: str | os.PathLike[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Find the classes and readable images under ``root``; warn once about unreadable files.

    Returns:
        ``(samples, classes)``: ``(path, label)`` pairs sorted by class then path, and class names.
        Class folders without a readable image are dropped (and named in the warning).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        ValueError: no class sub-folders, no readable image, or fewer than 2 classes.
    """
    root_path = Path(root).expanduser()
    if not root_path.exists():
        raise FileNotFoundError(f"folder dataset root does not exist: {str(root_path)!r}")
    if not root_path.is_dir():
        raise NotADirectoryError(f"folder dataset root is not a directory: {str(root_path)!r}")
    class_dirs = sorted(
        p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not class_dirs:
        raise ValueError(
            f"no class sub-folders in {str(root_path)!r}: expected one sub-folder per class, "
            f"e.g. root/healthy/img1.png, root/rust/img2.png"
        )

    readable: dict[str, list[str]] = {}
    bad: list[str] = []
    for class_dir in class_dirs:
        found = []
        for path in _files_under(class_dir):
            if _is_image(path):
                found.append(path)
            else:
                bad.append(path)
        readable[class_dir.name] = found

    classes = [name for name, paths in readable.items() if paths]
    empty = [name for name, paths in readable.items() if not paths]
    if bad or empty:
        parts = []
        if bad:
            examples = ", ".join(bad[:_EXAMPLES_IN_WARNING])
            more = ", ..." if len(bad) > _EXAMPLES_IN_WARNING else ""
            parts.append(f"skipped {len(bad)} unreadable file(s) (e.g. {examples}{more})")
        if empty:
            parts.append(f"ignored {len(empty)} class folder(s) without images: {empty}")
        warnings.warn(f"folder dataset {str(root_path)!r}: " + "; ".join(parts), stacklevel=3)
    if not classes:
        raise ValueError(
            f"no readable images in the class sub-folders of {str(root_path)!r} "
            f"({len(class_dirs)} folder(s), {len(bad)} unreadable file(s))"
        )
    if len(classes) < 2:
        raise ValueError(
            f"folder dataset needs at least 2 classes with images; {str(root_path)!r} "
            f"has only {classes!r}"
        )
    samples = [(path, k) for k, name in enumerate(classes) for path in readable[name]]
    return samples, classes


def make_folder(
    image_size: tuple[int, int],
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
) -> tuple[FolderDataset, FolderDataset]:
    """Train and val ``FolderDataset`` over ``root``, split stratified by class per ``seed``."""
    if root is None:
        raise ValueError("the folder dataset needs root=<directory with one sub-folder per class>")
    seed = validate_seed(seed)
    samples, classes = scan_folder(root)
    train_idx, val_idx = stratified_split([y for _, y in samples], val_fraction, seed)
    return (
        FolderDataset([samples[i] for i in train_idx], classes, image_size),
        FolderDataset([samples[i] for i in val_idx], classes, image_size),
    )


def _files_under(folder: Path) -> list[str]:
    """Non-hidden files below ``folder`` at any depth, sorted for a stable order."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        paths.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    return sorted(paths)


def _is_image(path: str) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # PIL raises many types here (OSError, SyntaxError, struct.error, ...)
        return False
    return True
