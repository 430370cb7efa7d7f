"""Property-based tests (hypothesis) of the folder scanner and the upload decoder.

Random trees of files: random bytes, empty files, valid tiny images of many formats and modes,
the same truncated or with a byte changed, PNG/JPEG headers declaring huge sizes, nested folders,
symlinks (to files, to folders above: loops, out of the tree, to devices, dangling, to
themselves) and FIFOs. Whatever the tree, the scan must answer with a result whose every sample
decodes, or raise one of its documented error types; never another exception, never open a
FIFO or device blocking (tests/_noblock.py fails such an open at once instead of letting it
wait for good), and never grow the resident set beyond a small multiple of the bytes on disk
plus a fixed allowance. 1000 trees and 1000 uploads, derandomized so CI is reproducible, with
no per-example deadline (the work is bounded by the example count and the scan's max_files):
property scans, so marked slow.
"""
from __future__ import annotations

import io
import os
import struct
import sys
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from _noblock import no_blocking_special_opens
from core.data.folder import FolderDataset, FolderScanError, scan_folder
from core.data.images import ImageError, decode_image
from core.data.roots import DataPathError

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="FIFOs, /proc/self/status peak memory")]

MAX_PIXELS = 250_000
ALLOWANCE = 24 * 2**20  # interpreter noise, PIL's codec state, one decoded image of MAX_PIXELS
SCAN_ERRORS = (FileNotFoundError, NotADirectoryError, PermissionError, DataPathError,
               FolderScanError, ValueError)
PROPERTY = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr)
    if mode is not None:
        im = im.convert(mode)
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _pool() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    grey16 = rng.integers(0, 65536, size=(9, 7), dtype=np.uint16)
    images = [_encode(rgb, "PNG"), _encode(rgb, "PNG", "RGBA"), _encode(rgb, "PNG", "P"),
              _encode(rgb, "PNG", "L"), _encode(grey16, "PNG"), _encode(rgb, "JPEG", quality=80),
              _encode(rgb, "JPEG", "L"), _encode(rgb, "JPEG", progressive=True),
              _encode(rgb, "GIF", "P"), _encode(rgb, "BMP"), _encode(rgb, "TIFF"),
              _encode(rgb, "TIFF", compression="tiff_deflate"), _encode(rgb, "PPM"),
              _encode(rgb, "ICO"), _encode(rgb, "TGA")]
    if "WEBP" in Image.registered_extensions().values():
        images.append(_encode(rgb, "WEBP"))
    return images


POOL = _pool()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _declared(fmt: str, width: int, height: int) -> bytes:
    """A header declaring ``width x height`` with (almost) no pixel data behind it."""
    if fmt == "png":
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
    jpeg = bytearray(POOL[5])
    sof = jpeg.find(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
    return bytes(jpeg)


# one file's content, or a special entry
contents = st.one_of(
    st.tuples(st.just("bytes"), st.binary(max_size=300)),
    st.tuples(st.just("image"), st.integers(0, len(POOL) - 1)),
    st.tuples(st.just("truncated"), st.integers(0, len(POOL) - 1), st.floats(0.0, 0.999)),
    st.tuples(st.just("flipped"), st.integers(0, len(POOL) - 1), st.floats(0.0, 0.999),
              st.integers(1, 255)),
    st.tuples(st.just("declared"), st.sampled_from(["png", "jpeg"]), st.integers(1, 70000),
              st.integers(1, 70000)),
    st.tuples(st.just("fifo")),
    st.tuples(st.just("folder")),
    st.tuples(st.just("link"), st.sampled_from(["sibling", "parent", "root", "outside-file",
                                                "outside-dir", "device", "dangling", "self"])),
)
paths = st.tuples(st.sampled_from(["a", "b", "c", ".hidden", "loose.png"]),
                  st.lists(st.sampled_from(["x", "y"]), max_size=4),
                  st.sampled_from(["1.png", "2.jpg", "3", ".4.png", "x"]))
trees = st.lists(st.tuples(paths, contents), min_size=1, max_size=14)


def _bytes_of(content: tuple) -> bytes:
    kind = content[0]
    if kind == "bytes":
        return content[1]
    if kind == "image":
        return POOL[content[1]]
    if kind == "truncated":
        data = POOL[content[1]]
        return data[: int(len(data) * content[2])]
    if kind == "flipped":
        data = bytearray(POOL[content[1]])
        i = int(len(data) * content[2])
        data[i] ^= content[3]
        return bytes(data)
    return _declared(content[1], content[2], content[3])


def _folder_inside(root: Path, parts: tuple[str, ...]) -> Path | None:
    """Create the folders ``root/parts...`` without ever going through a symlink (an earlier
    entry may have made ``a/x`` a link to /etc: writing through it would write into /etc).
    None if a part is a link or a file."""
    folder = root
    for part in parts:
        folder = folder / part
        if os.path.islink(folder) or (os.path.lexists(folder) and not folder.is_dir()):
            return None
        folder.mkdir(exist_ok=True)
    return folder


def _build(root: Path, tree: list) -> int:
    """Create ``tree`` under ``root``; returns the bytes written. Colliding entries are dropped."""
    written = 0
    real_root = os.path.realpath(root)
    for (top, middle, name), content in tree:
        parts = (top, *middle) if top != "loose.png" else ()
        folder = _folder_inside(root, parts)
        if folder is None:
            continue
        path = folder / (name if parts else top)
        assert os.path.realpath(folder).startswith(real_root)  # never outside the tree
        try:
            if os.path.lexists(path):
                continue
            kind = content[0]
            if kind == "fifo":
                os.mkfifo(path)
            elif kind == "folder":
                path.mkdir()
            elif kind == "link":
                target = {"sibling": path.parent / "1.png", "parent": path.parent.parent,
                          "root": root, "outside-file": Path("/etc/hostname"),
                          "outside-dir": Path("/etc"), "device": Path("/dev/zero"),
                          "dangling": root / "nowhere", "self": path}[content[1]]
                path.symlink_to(target)
            else:
                data = _bytes_of(content)
                path.write_bytes(data)
                written += len(data)
        except FileExistsError:
            continue
    return written


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.fixture(scope="module", autouse=True)
def _warm_up():
    """Load PIL's codecs once, so that their libraries do not count as a case's memory."""
    for data in POOL:
        decode_image(data)


@PROPERTY
@given(tree=trees)
def test_scan_of_any_tree_is_a_valid_result_or_a_documented_error(tree):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        on_disk = _build(root, tree)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status("VmRSS:")
        try:
            with warnings.catch_warnings(), no_blocking_special_opens():
                warnings.simplefilter("ignore")
                samples, classes = scan_folder(root, max_pixels=MAX_PIXELS, max_depth=3,
                                               max_files=200, max_seconds=15, roots=[root])
                dataset = FolderDataset(samples, classes, 8, max_pixels=MAX_PIXELS)
                images = [dataset[i][0] for i in range(len(dataset))]
        except SCAN_ERRORS as err:
            assert str(err), type(err)
            samples = None
        grew = _status("VmHWM:") - before
        assert grew <= 4 * on_disk + ALLOWANCE, (grew, on_disk)
        if samples is None:
            return
        assert len(classes) >= 2 and sorted(classes) == classes
        real_root = os.path.realpath(root)
        for (path, label), image in zip(samples, images):
            assert os.path.realpath(path).startswith(real_root + os.sep)
            assert Path(path).relative_to(root).parts[0] == classes[label]
            assert image.shape == (3, 8, 8) and image.dtype == torch.float32
            assert torch.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


uploads = st.one_of(
    st.binary(max_size=400),
    st.builds(lambda c: _bytes_of(("image", c)), st.integers(0, len(POOL) - 1)),
    st.builds(lambda c, f: _bytes_of(("truncated", c, f)), st.integers(0, len(POOL) - 1),
              st.floats(0.0, 0.999)),
    st.builds(lambda c, f, x: _bytes_of(("flipped", c, f, x)), st.integers(0, len(POOL) - 1),
              st.floats(0.0, 0.999), st.integers(1, 255)),
    st.builds(_declared, st.sampled_from(["png", "jpeg"]), st.integers(1, 70000),
              st.integers(1, 70000)),
)


@PROPERTY
@given(data=uploads)
def test_decode_image_of_any_bytes_is_a_tensor_or_an_image_error(data):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS:")
    try:
        image = decode_image(data, size=(8, 8), max_pixels=MAX_PIXELS)
    except ImageError as err:
        assert str(err)
        image = None
    grew = _status("VmHWM:") - before
    assert grew <= 4 * len(data) + ALLOWANCE, (grew, len(data))
    if image is not None:
        assert image.shape == (3, 8, 8) and torch.isfinite(image).all()
        assert image.min() >= 0 and image.max() <= 1
