"""Images on disk in the PlantVillage / torchvision ``ImageFolder`` layout: ``root/<class>/**/*``.

Class names are the sorted names of the non-hidden sub-folders of ``root``; every non-hidden file
below a class folder (any depth up to ``max_depth``) is a candidate image.

The scan touches the disk defensively (see ``core.data.fs``): it lists folders with
``os.scandir``, never opens anything but regular files (FIFOs, sockets, devices and files of
kernel filesystems such as ``/proc`` or ``/sys`` are counted and skipped, unopened), follows a
symlink only to a regular file or folder (and, given ``roots``, only inside them; loops are
visited once), and is bounded: ``max_files`` entries, ``max_depth`` folder levels below a class
folder and ``max_seconds`` of wall time, each a :class:`FolderScanError` naming the bound and its
value; ``cancel`` (a ``threading.Event``) stops it between two entries with
:class:`ScanCancelled`. A root on a kernel filesystem (``/dev``, ``/proc/self``) is refused at
once.

Each candidate is checked by ``core.data.images.check_image``: size read from the header (more
than ``max_pixels`` pixels: skipped before decoding), PIL's ``verify()``, then a decode (JPEG at
1/8 scale), because some damage only shows there (a truncated JPEG passes ``verify()``): every
image the scan accepts decodes later, so training and evaluation never meet a broken file. That
costs about one decode per image, some ten times what ``verify()`` alone cost
(``benchmarks/bench_hostile.py`` prints both for 2000 images). Only the formats of
``core.data.images.ACCEPTED_FORMATS`` are read, and a JPEG of more than ``MAX_JPEG_SCANS`` scans
is skipped unread. Skipped files are reported in one warning (the first few unreadable ones
with the reason). A folder whose every class holds a single image is refused: its validation
split would be empty. Pixels are decoded lazily in
``__getitem__`` by ``core.data.images.to_tensor``: EXIF rotation, 16-bit grey scaled by 1/65535,
``convert("RGB")`` otherwise, bilinear (anti-aliased when shrinking) resize to ``image_size``
ignoring the aspect ratio.
"""

from __future__ import annotations

import os
import stat
import threading
import time
import warnings
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor, nn
from torch.utils.data import Dataset

from .common import (check_data_budget, check_num_classes, stratified_split,
                     validate_image_size, validate_seed)
from .fs import NotARegularFileError, file_kind, open_regular, pseudo_filesystems
from .images import (DEFAULT_MAX_PIXELS, ImageError, ImageTooLargeError, check_image,
                     open_image, to_tensor)
from .imagenet import LabelMatcher
from .labels import labels_of, wnids_of
from .preprocess import Preprocessing, preprocessing_of, to_model_input
from .roots import DataPathError, is_under

_EXAMPLES_IN_WARNING = 3

DEFAULT_MAX_FILES = 200_000
"""Entries (files, folders, special files) a scan visits at most."""
DEFAULT_MAX_DEPTH = 8
"""Folder levels allowed below a class folder (``root/cls/a/b/img.png`` is depth 2)."""
DEFAULT_MAX_SECONDS = 120.0
"""Wall time a scan may take, checks of the images included."""


class FolderScanError(ValueError):
    """A folder scan stopped at one of its bounds (files, depth, time); the message names it."""


class ScanCancelled(Exception):
    """A folder scan stopped because its ``cancel`` event was set."""


class FolderDataset(Dataset):
    """Lazily decoded images from ``samples`` of ``(path, label)``.

    Paths and labels are kept in numpy arrays, not a list of tuples: ``DataLoader`` workers
    forked from this process then share them, where Python objects would be copied page by
    page into every worker as their reference counts are touched.

    Attributes:
        classes: class names, label ``k`` is ``classes[k]`` (the folder names, or a model's
            label names when the folders were matched onto them).
        targets: ``(N,)`` label per sample.
        samples: ``(path, label)`` per sample (a list built on access).
        image_size: ``(H, W)``.
        max_pixels: images over this many pixels are refused before decoding.
        preprocessing: how a picture becomes an image (``core.data.preprocess``); None:
            ``to_tensor``'s bilinear resize to ``image_size``.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        image_size: int | tuple[int, int],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        preprocessing: Preprocessing | None = None,
    ) -> None:
        self.image_size = validate_image_size(image_size)
        if preprocessing is not None and preprocessing.output_size != self.image_size:
            raise ValueError(f"the preprocessing gives {preprocessing.output_size} images, not "
                             f"image_size {self.image_size}: {preprocessing.describe()}")
        self.preprocessing = preprocessing
        # images are decoded and resized on access, one at a time: each must fit
        check_data_budget(1, self.image_size, "folder dataset", "")
        self.classes = list(classes)
        check_num_classes(self.classes, "folder dataset")
        self._paths = np.array([os.fsencode(str(p)) for p, _ in samples], dtype=np.bytes_)
        self._labels = np.array([int(y) for _, y in samples], dtype=np.int64)
        self.targets: list[int] = self._labels.tolist()
        self.max_pixels = _positive_int(max_pixels, "max_pixels")
        self._pseudo = pseudo_filesystems()  # once, not per item

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [(os.fsdecode(p), int(y)) for p, y in zip(self._paths, self._labels)]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        """Return ``(image (3, H, W) float32 in [0, 1], label)``; ``OSError`` names a bad file."""
        path, label = os.fsdecode(self._paths[index]), int(self._labels[index])
        try:
            with open_regular(path, self._pseudo) as f, open_image(f, self.max_pixels) as im:
                if self.preprocessing is None:
                    return to_tensor(im, self.image_size), label
                return to_model_input(im, self.preprocessing, self.max_pixels), label
        except (OSError, ImageError) as err:  # the scan passed it, so the file changed since
            raise OSError(f"could not read image {path}: {err}") from err


@dataclass
class _Scan:
    """State of one scan: bounds, counters and what was skipped."""

    root: Path
    max_files: int
    max_depth: int
    max_seconds: float
    roots: list[Path] | None
    cancel: threading.Event | None
    pseudo: dict[int, str]
    started: float = field(default_factory=time.monotonic)
    entries: int = 0
    seen_dirs: set[tuple[int, int]] = field(default_factory=set)
    special: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def tick(self) -> None:
        """Count one entry; raise if a bound is hit or the scan was cancelled."""
        self.entries += 1
        self.check()

    def check(self) -> None:
        """Raise if the entries or time bound is hit or the scan was cancelled."""
        if self.cancel is not None and self.cancel.is_set():
            raise ScanCancelled(f"folder scan of {str(self.root)!r} cancelled after "
                                f"{self.entries} entries")
        if self.entries > self.max_files:
            raise FolderScanError(
                f"folder scan of {str(self.root)!r} stopped: more than max_files="
                f"{self.max_files} files and folders (pass a larger max_files if this really "
                f"is one dataset)")
        elapsed = time.monotonic() - self.started
        if elapsed > self.max_seconds:
            raise FolderScanError(
                f"folder scan of {str(self.root)!r} stopped after {elapsed:.1f} s: over "
                f"max_seconds={self.max_seconds:g} ({self.entries} files and folders seen; "
                f"pass a larger max_seconds if this really is one dataset)")

    def target(self, entry: os.DirEntry) -> os.stat_result | None:
        """``stat`` of what ``entry`` stands for, or None (recorded as special) to skip it.

        Never opens anything. A symlink counts only if its target is a regular file or folder,
        inside ``roots`` when given; a folder only if it is not on a kernel filesystem and not
        already visited (symlink loops).
        """
        try:
            st = entry.stat(follow_symlinks=True)
        except OSError:  # dangling link, link loop, vanished, no permission
            self.special.append(entry.path)
            return None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or st.st_dev in self.pseudo:
            self.special.append(entry.path)
            return None
        if entry.is_symlink() and self.roots is not None:
            if not is_under(Path(os.path.realpath(entry.path)), self.roots):
                self.special.append(entry.path)
                return None
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in self.seen_dirs:
                return None
            self.seen_dirs.add(key)
        return st

    def files_under(self, class_dir: str) -> list[str]:
        """Regular files below ``class_dir`` (visited already), depth-first, sorted."""
        files: list[str] = []
        stack: list[tuple[str, int]] = [(class_dir, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                entries = self.listdir(folder)
            except OSError:
                self.unreadable.append(folder)
                continue
            subdirs = []
            for entry in entries:
                st = self.target(entry)
                if st is None:
                    continue
                if stat.S_ISREG(st.st_mode):
                    files.append(entry.path)
                elif depth + 1 > self.max_depth:
                    raise FolderScanError(
                        f"folder scan of {str(self.root)!r} stopped: {entry.path!r} is "
                        f"{depth + 1} folders below its class folder, deeper than max_depth="
                        f"{self.max_depth}")
                else:
                    subdirs.append(entry.path)
            stack.extend((d, depth + 1) for d in reversed(subdirs))
        return sorted(files)

    def listdir(self, folder: str) -> list[os.DirEntry]:
        """Non-hidden entries of ``folder`` sorted by name, counted against the bounds."""
        entries = []
        with os.scandir(folder) as it:
            for entry in it:
                self.tick()
                if entry.name.startswith("."):
                    continue
                entries.append(entry)
        return sorted(entries, key=lambda e: e.name)


def scan_folder(
    root: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_files: int = DEFAULT_MAX_FILES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    roots: Sequence[str | os.PathLike[str]] | None = None,
    cancel: threading.Event | None = None,
    select: Callable[[list[str]], Collection[str]] | None = None,
    min_classes: int = 2,
) -> tuple[list[tuple[str, int]], list[str]]:
    """Find the classes and readable images under ``root``; warn once about skipped files.

    Args:
        root: folder with one sub-folder per class.
        max_pixels: images of more pixels (width x height, from the header) are skipped.
        max_files: most files and folders visited.
        max_depth: most folder levels below a class folder.
        max_seconds: most wall time, image checks included.
        roots: if given, ``root`` and every symlink followed must resolve inside one of these
            (the dashboard passes ``core.data.roots.data_roots()``).
        cancel: set it (from another thread) to stop the scan within one entry.
        select: given the class folder names (sorted), returns those to scan; the others are
            not entered (``core.data.imagenet`` matches them to a model's labels here).
        min_classes: fewer class folders with readable images is a ValueError.

    Returns:
        ``(samples, classes)``: ``(path, label)`` pairs sorted by class then path, and class names.
        Class folders without a readable image are dropped (and named in the warning).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is a file.
        PermissionError: ``root`` cannot be listed.
        DataPathError: ``roots`` given and ``root`` is not inside them.
        FolderScanError: a bound was hit (the message names it and its value).
        ScanCancelled: ``cancel`` was set.
        ValueError: ``root`` on a kernel filesystem, no class sub-folders, no readable image, or
            fewer than 2 classes.
    """
    max_pixels = _positive_int(max_pixels, "max_pixels")
    max_files = _positive_int(max_files, "max_files")
    max_depth = _positive_int(max_depth, "max_depth", minimum=0)
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) \
            or not max_seconds > 0:
        raise ValueError(f"max_seconds must be a number > 0; got {max_seconds!r}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise ValueError(f"cancel must be a threading.Event or None; got {cancel!r}")
    root_path = Path(root).expanduser()
    resolved_roots = None
    if roots is not None:
        resolved_roots = [Path(os.path.realpath(r)) for r in roots]
        if not is_under(Path(os.path.realpath(root_path)), resolved_roots):
            raise DataPathError()
    try:
        root_stat = os.stat(root_path)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"folder dataset root does not exist: {str(root_path)!r}") from None
    if not stat.S_ISDIR(root_stat.st_mode):
        raise NotADirectoryError(f"folder dataset root is not a directory: {str(root_path)!r} "
                                 f"is a {file_kind(root_stat.st_mode)}")
    pseudo = pseudo_filesystems()
    if root_stat.st_dev in pseudo:
        raise ValueError(f"{str(root_path)!r} is on the {pseudo[root_stat.st_dev]} kernel "
                         "filesystem, not a folder of images")

    scan = _Scan(root_path, max_files, max_depth, float(max_seconds), resolved_roots, cancel,
                 pseudo)
    scan.seen_dirs.add((root_stat.st_dev, root_stat.st_ino))
    try:
        top = scan.listdir(str(root_path))
    except PermissionError:
        raise PermissionError(f"folder dataset root cannot be read: {str(root_path)!r}") from None
    class_dirs = [e for e in top if (st := scan.target(e)) is not None
                  and stat.S_ISDIR(st.st_mode)]
    if not class_dirs:
        raise ValueError(
            f"no class sub-folders in {str(root_path)!r}: expected one sub-folder per class, "
            f"e.g. root/healthy/img1.png, root/rust/img2.png")
    if select is not None:
        chosen = set(select([e.name for e in class_dirs]))
        class_dirs = [e for e in class_dirs if e.name in chosen]

    readable: dict[str, list[str]] = {}
    bad: list[str] = []
    reasons: dict[str, str] = {}  # why an image was refused, shown for the warning's examples
    too_large: list[str] = []
    for class_dir in class_dirs:
        found = []
        for path in scan.files_under(class_dir.path):
            scan.check()
            try:
                with open_regular(path, pseudo) as f:
                    check_image(f, max_pixels)
            except ImageTooLargeError:
                too_large.append(path)
            except NotARegularFileError:
                scan.special.append(path)
            except (OSError, ImageError) as err:
                bad.append(path)
                reasons[path] = str(err)
            else:
                found.append(path)
        readable[class_dir.name] = found

    bad.extend(scan.unreadable)
    classes = [name for name, paths in readable.items() if paths]
    empty = [name for name, paths in readable.items() if not paths]
    parts = []
    if bad:
        parts.append(f"skipped {len(bad)} unreadable file(s) ({_examples(bad, reasons)})")
    if too_large:
        parts.append(f"skipped {len(too_large)} image(s) over max_pixels={max_pixels} "
                     f"({_examples(too_large)})")
    if scan.special:
        parts.append(f"did not open {len(scan.special)} special file(s): pipes, sockets, "
                     f"devices, kernel files or links that are broken or leave the allowed "
                     f"folders ({_examples(scan.special)})")
    if empty:
        parts.append(f"ignored {len(empty)} class folder(s) without images: {empty}")
    if parts:
        warnings.warn(f"folder dataset {str(root_path)!r}: " + "; ".join(parts), stacklevel=3)
    if not classes:
        raise ValueError(
            f"no readable images in the class sub-folders of {str(root_path)!r} "
            f"({len(class_dirs)} folder(s), {len(bad)} unreadable file(s), {len(too_large)} "
            f"too large, {len(scan.special)} special file(s))")
    if len(classes) < min_classes:
        raise ValueError(
            f"folder dataset needs at least {min_classes} classes with images; "
            f"{str(root_path)!r} has only {classes!r}")
    samples = [(path, k) for k, name in enumerate(classes) for path in readable[name]]
    return samples, classes


def make_folder(
    image_size: tuple[int, int],
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_files: int = DEFAULT_MAX_FILES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    roots: Sequence[str | os.PathLike[str]] | None = None,
    cancel: threading.Event | None = None,
    model: nn.Module | None = None,
    labels: Sequence[str] | None = None,
    wnids: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> tuple[FolderDataset, FolderDataset]:
    """Train and val ``FolderDataset`` over ``root``, split stratified by class per ``seed``.

    The scan options are :func:`scan_folder`'s; ``max_pixels`` also bounds every later decode.

    Matching a model (ImageNet-style folders, ``core.data.imagenet``): given ``labels`` (a
    name per model output; ``model=`` gives its own), the class folders are matched onto them
    by WordNet id (through ``wnids``) or name, a subset of classes is fine, and labels are the
    model's output ids (``classes`` is ``labels``). ``preprocessing`` (``model=`` gives its
    own) replaces the plain bilinear resize: its output size must be ``image_size``.
    ``val_fraction=1.0`` makes every image a validation image; the training split is then the
    same images (a calibration batch for data-driven criteria is drawn from them).

    Raises:
        ValueError: as :func:`scan_folder`, the validation split would be empty (every class
            has a single image, which stays in train), or (:class:`NoMatchingClassError`) no
            class folder matches ``labels``.
    """
    if root is None:
        raise ValueError("the folder dataset needs root=<directory with one sub-folder per class>")
    seed = validate_seed(seed)
    size = validate_image_size(image_size)
    check_data_budget(1, size, "folder dataset", "")  # before the scan
    if not isinstance(val_fraction, (int, float)) or not 0.0 < float(val_fraction) <= 1.0:
        raise ValueError(f"val_fraction must be a number in (0, 1]; got {val_fraction!r}")
    if model is not None:
        preprocessing = preprocessing or preprocessing_of(model)
        if labels is None and getattr(model, "labels", None):
            labels, wnids = labels_of(model), wnids_of(model)
    if preprocessing is not None and preprocessing.output_size != size:
        raise ValueError(f"the model's preprocessing gives {preprocessing.output_size} images, "
                         f"not image_size {size}: {preprocessing.describe()}")
    scan = dict(max_pixels=max_pixels, max_files=max_files, max_depth=max_depth,
                max_seconds=max_seconds, roots=roots, cancel=cancel)
    if labels is not None:
        matcher = LabelMatcher(str(root), labels, wnids)
        found, folders = scan_folder(root, select=matcher, min_classes=1, **scan)
        samples = [(path, matcher.matched[folders[k]]) for path, k in found]
        classes = list(labels)
    else:
        samples, classes = scan_folder(root, **scan)
    if float(val_fraction) == 1.0:
        every = FolderDataset(samples, classes, size, max_pixels, preprocessing)
        return every, every
    train_idx, val_idx = stratified_split([y for _, y in samples], val_fraction, seed)
    if len(val_idx) == 0:  # every class has a single image: it stays in train
        raise ValueError(
            f"the validation split of {str(root)!r} is empty: {len(samples)} images in "
            f"{len(set(y for _, y in samples))} classes, one per class; a class gives images to "
            f"validation only from its second image on, so each class needs at least 2 images")
    return (
        FolderDataset([samples[i] for i in train_idx], classes, size, max_pixels, preprocessing),
        FolderDataset([samples[i] for i in val_idx], classes, size, max_pixels, preprocessing),
    )


def _examples(paths: list[str], reasons: dict[str, str] | None = None) -> str:
    """``"e.g. a.png, b.png, ..."``; with ``reasons``, each path followed by ``": why"``."""
    more = ", ..." if len(paths) > _EXAMPLES_IN_WARNING else ""
    shown = [f"{p}: {reasons[p]}" if reasons and reasons.get(p) else p
             for p in paths[:_EXAMPLES_IN_WARNING]]
    return "e.g. " + ", ".join(shown) + more


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value
