"""Hostile data-side inputs: data roots, special files, scan bounds, huge/odd/truncated images.

Each test reproduces a finding of the hardening probe (a path outside the data roots answered
differently from a missing one, ``/dev`` hung the scan, a 518 KB PNG cost 1.2 GB, 16-bit PNGs
came out white, a truncated JPEG passed the scan and then killed training) and fails on the code
before the fix. Pixel values are checked against numpy computations on the same arrays.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import sys
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _noblock import no_blocking_special_opens
from core.data import load_dataset, scan_folder
from core.data.folder import FolderScanError, ScanCancelled
from core.data.images import ImageError, ImageTooLargeError, decode_image
from core.data.roots import (REFUSAL, DataPathError, data_roots, list_data_folders,
                             resolve_under_roots)

LINUX = sys.platform.startswith("linux")


# --------------------------------------------------------------------------- helpers

def _png(path: Path, colour: tuple[int, int, int] = (10, 20, 30), size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _jpeg_bytes(seed: int = 0, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A valid black RGB PNG of ``width x height``: a few hundred KB that decode to W*H*3 bytes."""
    packer = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body)
            + _chunk(b"IEND", b""))


def declared_png(width: int, height: int) -> bytes:
    """A 60-byte PNG whose header declares ``width x height`` but holds no pixel data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b""))
            + _chunk(b"IEND", b""))


def two_classes(root: Path, n: int = 3) -> None:
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        for j in range(n):
            _png(root / name / f"{j}.png", colour)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def peak_rss_growth(fn) -> tuple[object, int]:
    """``(fn(), bytes)``: how far the resident set rose above its level before ``fn`` (Linux)."""
    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark VmHWM to the current resident set
    before = status("VmRSS:")
    try:
        result = fn()
    except Exception as e:  # the caller inspects it
        result = e
    return result, status("VmHWM:") - before


# --------------------------------------------------------------------------- data roots

@pytest.fixture
def data_tree(tmp_path: Path, monkeypatch) -> Path:
    """``tmp/data`` (the default root under the working directory) with a dataset and links."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PRUNELENS_DATA_ROOTS", raising=False)
    root = tmp_path / "data"
    two_classes(root / "plants")
    (root / "plants" / "sub").mkdir()
    (root / ".hidden").mkdir(parents=True)
    (root / "escape").symlink_to("/etc")
    (root / "inside").symlink_to(root / "plants")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "secret").mkdir()
    return root


def test_data_roots_default_and_environment(data_tree: Path, tmp_path: Path, monkeypatch):
    assert data_roots() == [data_tree.resolve()]
    other = tmp_path / "other"
    monkeypatch.setenv("PRUNELENS_DATA_ROOTS", os.pathsep.join([str(other), "data", "", "data"]))
    assert data_roots() == [other.resolve(), data_tree.resolve()]
    monkeypatch.setenv("PRUNELENS_DATA_ROOTS", "  ")
    assert data_roots() == [data_tree.resolve()]


def test_paths_inside_the_roots_resolve(data_tree: Path):
    plants = (data_tree / "plants").resolve()
    assert resolve_under_roots("plants") == plants
    assert resolve_under_roots(str(plants)) == plants
    assert resolve_under_roots("plants/sub/..") == plants
    assert resolve_under_roots("inside") == plants  # a symlink that stays inside
    assert resolve_under_roots(".") == data_tree.resolve()
    assert resolve_under_roots("not-yet-there") == data_tree.resolve() / "not-yet-there"


@pytest.mark.parametrize("text", [
    "/etc", "/root", "/nonexistent", "../..", "..", "../secret", "escape", "escape/passwd",
    "dangling", "/", "/proc/self", "/dev", "", "   ", "plants/\0x", "plants/../../secret",
])
def test_every_refusal_is_the_same_message(data_tree: Path, text: str):
    with pytest.raises(DataPathError) as err:
        resolve_under_roots(text)
    assert str(err.value) == REFUSAL
    assert isinstance(err.value, ValueError)


def test_list_data_folders_stays_inside(data_tree: Path):
    folders = list_data_folders()
    root = data_tree.resolve()
    assert folders[0] == root
    assert set(folders) == {root, root / "plants", root / "plants" / "a", root / "plants" / "b",
                            root / "plants" / "sub"}
    assert all(f == root or f.is_relative_to(root) for f in folders)
    assert list_data_folders(max_depth=1) == [root, root / "plants"]
    assert len(list_data_folders(limit=2)) == 2


def test_scan_with_roots_refuses_a_root_outside_and_links_leaving(data_tree: Path, tmp_path):
    two_classes(tmp_path / "secret")
    roots = data_roots()
    with pytest.raises(DataPathError):
        scan_folder(tmp_path / "secret", roots=roots)
    # a class folder linking out of the roots: not followed, its images never opened
    (data_tree / "plants" / "c").symlink_to(tmp_path / "secret" / "a")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, classes = scan_folder(data_tree / "plants", roots=roots)
    assert classes == ["a", "b"]
    assert not any("secret" in p for p, _ in samples)
    assert "did not open 1 special file" in str(caught[0].message)
    # without roots (Python API, CLI) the same link is followed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert scan_folder(data_tree / "plants")[1] == ["a", "b", "c"]


# --------------------------------------------------------------------------- special files

@pytest.mark.skipif(not LINUX, reason="FIFOs, unix sockets and /proc are Linux's")
def test_special_files_are_never_opened(tmp_path: Path):
    two_classes(tmp_path)
    os.mkfifo(tmp_path / "a" / "pipe.png")  # opening it for reading would block for good
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "b" / "sock.png"))
    (tmp_path / "a" / "null.png").symlink_to("/dev/null")
    (tmp_path / "a" / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "b" / "loop1.png").symlink_to(tmp_path / "b" / "loop2.png")
    (tmp_path / "b" / "loop2.png").symlink_to(tmp_path / "b" / "loop1.png")
    (tmp_path / "b" / "up").symlink_to(tmp_path)  # a folder loop
    fds = open_fds()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with no_blocking_special_opens():  # a FIFO opened blocking would hang the scan
                samples, classes = scan_folder(tmp_path)
        assert open_fds() == fds
    finally:
        sock.close()
    assert classes == ["a", "b"]
    names = sorted(Path(p).name for p, _ in samples)
    # b/up leads back to the root, already visited: not entered again
    assert names == ["0.png", "0.png", "1.png", "1.png", "2.png", "2.png"]
    message = str(caught[0].message)
    assert "did not open 6 special file(s)" in message


@pytest.mark.skipif(not LINUX, reason="/dev and /proc are Linux's")
@pytest.mark.parametrize("root", ["/dev", "/proc/self", "/sys", "/"])
def test_system_folders_are_refused_within_the_entry_bound_without_leaks(root: str,
                                                                         monkeypatch):
    """Refused (a kernel filesystem, nothing readable, or a bound) after at most the default
    ``max_files`` entries, no device opened blocking, no thread or descriptor left behind."""
    import core.data.folder as folder

    entries = [0]
    real_tick = folder._Scan.tick

    def tick(self):
        entries[0] += 1
        real_tick(self)

    monkeypatch.setattr(folder._Scan, "tick", tick)
    threads, fds = threading.active_count(), open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as err, no_blocking_special_opens():
            scan_folder(root)
    assert entries[0] <= folder.DEFAULT_MAX_FILES + 1  # the one past the bound stops it
    text = str(err.value)
    assert any(k in text for k in ("kernel filesystem", "no readable images", "max_depth",
                                   "max_files", "max_seconds")), text
    assert threading.active_count() == threads and open_fds() == fds


@pytest.mark.skipif(not LINUX, reason="/dev is Linux's")
def test_dev_without_filesystem_knowledge_still_opens_no_device(monkeypatch):
    """Even where /dev is an ordinary tmpfs (containers), devices are skipped by their type."""
    import core.data.folder as folder

    monkeypatch.setattr(folder, "pseudo_filesystems", lambda: {})
    fds = open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="no readable images|max_depth"), \
                no_blocking_special_opens():
            scan_folder("/dev")
    assert open_fds() == fds


@pytest.mark.skipif(not LINUX, reason="FIFOs are POSIX")
def test_a_file_swapped_for_a_fifo_after_the_scan_is_refused_not_waited_on(tmp_path: Path):
    two_classes(tmp_path)
    train, _ = load_dataset("folder", 8, root=tmp_path)
    path = Path(train.samples[0][0])
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(OSError, match="could not read image .*FIFO"), \
            no_blocking_special_opens():
        train[0]


# --------------------------------------------------------------------------- scan bounds

def test_bounds_name_themselves_and_their_value(tmp_path: Path):
    two_classes(tmp_path, n=5)
    deep = tmp_path / "a" / "x" / "y" / "z"
    _png(deep / "deep.png")
    with pytest.raises(FolderScanError, match="max_files=7"):
        scan_folder(tmp_path, max_files=7)
    with pytest.raises(FolderScanError, match="deeper than max_depth=2") as err:
        scan_folder(tmp_path, max_depth=2)
    assert str(deep) in str(err.value)
    with pytest.raises(FolderScanError, match=r"max_seconds=1e-06"):
        scan_folder(tmp_path, max_seconds=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing to warn about within the bounds
        samples, _ = scan_folder(tmp_path, max_depth=3, max_files=20)
    assert len(samples) == 11
    for bad in ({"max_files": 0}, {"max_depth": -1}, {"max_seconds": 0}, {"max_pixels": 1.5},
                {"cancel": "yes"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            scan_folder(tmp_path, **bad)


class _SetAfter(threading.Event):
    """An event that reads as set from its ``n``-th check on: a cancel in the middle of a scan."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


def test_scan_is_cancellable_between_two_entries(tmp_path: Path):
    two_classes(tmp_path, n=20)
    cancel = _SetAfter(10)
    with pytest.raises(ScanCancelled, match="cancelled"):
        scan_folder(tmp_path, cancel=cancel)
    assert cancel.checks == 10  # stopped at the first check that saw it set

    done = threading.Event()
    done.set()
    with pytest.raises(ScanCancelled):
        load_dataset("folder", 8, root=tmp_path, cancel=done)


# --------------------------------------------------------------------------- images

@pytest.mark.skipif(not LINUX, reason="peak memory read from /proc/self/status")
def test_huge_upload_is_refused_from_its_header():
    data = huge_png(13000, 13000)
    assert len(data) < 600_000
    err, grew = peak_rss_growth(lambda: decode_image(data))
    assert isinstance(err, ImageTooLargeError), err
    assert "13000x13000" in str(err) and "40.0 megapixels" in str(err)
    assert grew < 50 * 2**20  # decoding would take 507 MB


def test_pil_decompression_bomb_limits_become_our_error():
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        decode_image(declared_png(14000, 14000))  # over PIL's own hard limit (179 MP)
    with pytest.raises(ImageTooLargeError, match="10000x10000"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape
            decode_image(declared_png(10000, 10000))  # over PIL's warning limit (89 MP)


def test_max_pixels_is_configurable(tmp_path: Path):
    small = io.BytesIO()
    Image.new("RGB", (100, 60), (1, 2, 3)).save(small, "PNG")
    assert decode_image(small.getvalue(), max_pixels=6000).shape == (3, 60, 100)
    with pytest.raises(ImageTooLargeError, match="100x60"):
        decode_image(small.getvalue(), max_pixels=5999)
    two_classes(tmp_path)
    _png(tmp_path / "a" / "wide.png", size=(200, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, _ = scan_folder(tmp_path, max_pixels=1000)
    assert not any(p.endswith("wide.png") for p, _ in samples)
    assert "skipped 1 image(s) over max_pixels=1000" in str(caught[0].message)


@pytest.mark.skipif(not LINUX, reason="peak memory read from /proc/self/status")
def test_a_144_megapixel_png_in_a_folder_is_skipped_before_decoding(tmp_path: Path):
    two_classes(tmp_path)
    (tmp_path / "a" / "huge.png").write_bytes(huge_png(12000, 12000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (train, val), grew = peak_rss_growth(lambda: load_dataset("folder", 8, root=tmp_path))
    assert grew < 50 * 2**20  # decoding would take 432 MB
    assert len(train) + len(val) == 6
    assert "huge.png" in str(caught[0].message) and "over max_pixels" in str(caught[0].message)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, size=(12, 16), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, "PNG")
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.mode.startswith("I")  # really 16-bit on disk
    expected = torch.from_numpy(grey.astype(np.float64) / 65535).float()
    image = decode_image(buf.getvalue())
    assert image.shape == (3, 12, 16)
    assert torch.allclose(image, expected.expand(3, 12, 16), atol=1e-6)
    assert 0.4 < image.mean() < 0.6  # it used to be 97 % white

    two_classes(tmp_path)
    (tmp_path / "a" / "grey16.png").write_bytes(buf.getvalue())
    train, val = load_dataset("folder", (12, 16), root=tmp_path, val_fraction=0.5)
    ds = train if any(p.endswith("grey16.png") for p, _ in train.samples) else val
    i = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("grey16.png"))
    assert torch.allclose(ds[i][0], expected.expand(3, 12, 16), atol=1e-6)


def test_truncated_jpeg_is_skipped_at_scan_so_every_sample_decodes(tmp_path: Path):
    two_classes(tmp_path)
    good = _jpeg_bytes()
    (tmp_path / "b" / "cut.jpg").write_bytes(good[: len(good) * 2 // 3])
    with Image.open(tmp_path / "b" / "cut.jpg") as im:
        im.verify()  # the damage is invisible to verify(): that is what let it through
    (tmp_path / "b" / "fine.jpg").write_bytes(good)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val = load_dataset("folder", 16, root=tmp_path)
    assert "skipped 1 unreadable file(s)" in str(caught[0].message)
    assert "cut.jpg" in str(caught[0].message)
    paths = [p for p, _ in train.samples + val.samples]
    assert any(p.endswith("fine.jpg") for p in paths) and not any("cut.jpg" in p for p in paths)
    for ds in (train, val):
        for i in range(len(ds)):
            assert ds[i][0].shape == (3, 16, 16)


def test_upload_errors_say_what_is_wrong():
    for junk in (b"hello", b"%PDF-1.4 ...", bytes(range(256)) * 4):
        with pytest.raises(ImageError, match=r"not an image Pillow can read \(PNG, JPEG"):
            decode_image(junk)
    with pytest.raises(ImageError, match="empty file"):
        decode_image(b"")
    good = _jpeg_bytes()
    with pytest.raises(ImageError, match="damaged JPEG file .*truncated"):
        decode_image(good[: len(good) // 2])
    with pytest.raises(TypeError, match="bytes"):
        decode_image("picture.png")  # type: ignore[arg-type]


def test_decode_image_matches_what_the_dashboard_decoded():
    """Same pixels as ``accept_image_upload``'s PIL steps, so the dashboard can switch."""
    rng = np.random.default_rng(1)
    arr = (rng.random((40, 30, 3)) * 255).astype(np.uint8)
    for fmt, mode in (("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("JPEG", "L")):
        buf = io.BytesIO()
        Image.fromarray(arr).convert(mode).save(buf, fmt)
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            im = im.convert("RGB").resize((24, 16), Image.BILINEAR)
            expected = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        got = decode_image(buf.getvalue(), size=(16, 24))
        assert got.shape == (3, 16, 24) and got.dtype == torch.float32
        assert torch.allclose(got, expected, atol=1e-6), (fmt, mode)
