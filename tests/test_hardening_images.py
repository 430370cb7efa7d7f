"""Hostile pictures that got past ``core.data.images`` and the folder split (second audit).

Each test reproduces a finding and fails on the code before the fix:

- a 655 KB progressive JPEG whose one small scan is repeated 20,000 times took 21-32 s to decode
  (upload) and held a folder scan past its time bound, deaf to cancel;
- an ICO (or ICNS) file declaring 16x16 but holding a 13000x13000 PNG cost ~650 MB before the
  size refusal: PIL decodes those formats while *opening* them;
- a float TIFF full of NaN came out as an all-NaN tensor;
- a folder whose every class holds one image gave an empty validation split, which the
  dashboard met later as a widget error.

The costly cases assert that PIL never opens (or never decodes) the hostile file, instead of
timing it: robust on a loaded machine, and a regression fails fast instead of eating memory.
"""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import IcnsImagePlugin, IcoImagePlugin, Image

from core.data import load_dataset, scan_folder
from core.data.images import (ACCEPTED_FORMATS, MAX_JPEG_SCANS, ImageError, ImageTooLargeError,
                              check_image, decode_image)

# --------------------------------------------------------------------------- helpers


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def declared_png(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` RGBA with no pixel data behind it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b""))
            + _chunk(b"IEND", b""))


def ico_holding(image: bytes, declared=(16, 16)) -> bytes:
    """An ICO file of one entry that says ``declared`` pixels and points at ``image``."""
    w, h = declared
    entry = struct.pack("<BBBBHHII", w % 256, h % 256, 0, 0, 1, 32, len(image), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + image


def dib_header(width: int, height: int) -> bytes:
    """A BITMAPINFOHEADER as an ICO entry holds it (height doubled: XOR image + AND mask)."""
    return struct.pack("<IiiHHIIiiII", 40, width, 2 * height, 1, 32, 0, 0, 0, 0, 0, 0) + bytes(64)


def many_scan_jpeg(total_scans: int, side: int = 48) -> bytes:
    """A valid progressive JPEG of ``side`` x ``side`` holding ``total_scans`` scans: PIL's own
    scans, then its smallest one repeated (the audit's bomb, at a small size)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((side, side, 3)) * 255).astype(np.uint8)).save(
        buf, "JPEG", progressive=True, quality=90)
    j = buf.getvalue()
    i, segments = 2, []
    while i < len(j):
        marker = j[i + 1]
        if marker == 0xD9:
            break
        end = i + 2 + struct.unpack(">H", j[i + 2:i + 4])[0]
        if marker == 0xDA:  # entropy-coded data up to the next marker that is not RST/stuffed
            while True:
                end = j.index(b"\xff", end)
                if j[end + 1] == 0 or 0xD0 <= j[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((marker, j[i:end]))
        i = end
    scans = [s for m, s in segments if m == 0xDA]
    assert len(scans) <= total_scans and j.count(b"\xff\xda") == len(scans)
    small = min(scans, key=len)
    return (j[:2] + b"".join(s for _, s in segments) + small * (total_scans - len(scans))
            + b"\xff\xd9")


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def two_classes(root: Path, n: int = 3) -> None:
    for name, colour in (("a", (255, 0, 0)), ("b", (0, 0, 255))):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.new("RGB", (12, 10), colour).save(root / name / f"{j}.png")


def scan_warning(root: Path, **kw) -> tuple[list[tuple[str, int]], str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples, _ = scan_folder(root, **kw)
    assert len(caught) == 1, [str(w.message) for w in caught]
    return samples, str(caught[0].message)


@pytest.fixture
def pil_never_opens(monkeypatch):
    """``forbid(predicate)``: ``Image.open`` of a file whose bytes satisfy ``predicate`` fails
    the test (AssertionError is none of the errors the image code turns into a refusal)."""
    real_open = Image.open

    def forbid(predicate):
        def guarded(fp, *args, **kwargs):
            start = fp.tell()
            data = fp.read()
            fp.seek(start)
            assert not predicate(data), "PIL was asked to open the hostile file"
            return real_open(fp, *args, **kwargs)
        monkeypatch.setattr(Image, "open", guarded)
    return forbid


# --------------------------------------------------------------------------- JPEG scans


def test_jpeg_of_thousands_of_scans_is_refused_before_pil_opens_it(pil_never_opens):
    bomb = many_scan_jpeg(2000)
    pil_never_opens(lambda data: data == bomb)
    with pytest.raises(ImageError) as err:
        decode_image(bomb, size=(32, 32))
    assert str(err.value) == (
        f"JPEG with 2000 scans is over the limit of {MAX_JPEG_SCANS} (a progressive photo has "
        f"about 10; each scan is decoded over the whole image)")
    with pytest.raises(ImageError, match="JPEG with 2000 scans"):
        check_image(io.BytesIO(bomb))


def test_jpeg_scan_limit_is_exact_and_real_progressive_jpegs_pass():
    at_limit = many_scan_jpeg(MAX_JPEG_SCANS)
    image = decode_image(at_limit, size=(16, 16))  # repeated scans are legal: it decodes
    assert image.shape == (3, 16, 16) and torch.isfinite(image).all()
    assert check_image(io.BytesIO(at_limit)) == (48, 48)
    with pytest.raises(ImageError, match=rf"JPEG with {MAX_JPEG_SCANS + 1} scans is over"):
        decode_image(many_scan_jpeg(MAX_JPEG_SCANS + 1))
    rgb = Image.fromarray((np.random.default_rng(1).random((40, 30, 3)) * 255).astype(np.uint8))
    for kw in ({}, {"progressive": True}, {"progressive": True, "quality": 100}):
        data = encode(rgb, "JPEG", **kw)
        assert 1 <= data.count(b"\xff\xda") <= 12
        assert decode_image(data).shape == (3, 40, 30)


def test_folder_scan_skips_a_many_scan_jpeg_unopened_and_says_why(tmp_path, pil_never_opens):
    two_classes(tmp_path)
    bomb = many_scan_jpeg(5000)
    (tmp_path / "a" / "slow.jpg").write_bytes(bomb)
    pil_never_opens(lambda data: data == bomb)
    samples, message = scan_warning(tmp_path)  # pil_never_opens: the bomb is never decoded
    assert len(samples) == 6 and not any(p.endswith("slow.jpg") for p, _ in samples)
    assert "skipped 1 unreadable file(s)" in message
    assert f"slow.jpg: JPEG with 5000 scans is over the limit of {MAX_JPEG_SCANS}" in message


# --------------------------------------------------------------------------- formats decoded on open


@pytest.mark.parametrize("entry, size", [
    (declared_png(13000, 13000), "13000x13000"),
    (dib_header(9000, 9000), "9000x9000"),
], ids=["png-entry", "bmp-entry"])
def test_ico_holding_a_huge_image_is_refused_before_pil_opens_it(entry, size, pil_never_opens):
    ico = ico_holding(entry)
    pil_never_opens(lambda data: data == ico)
    with pytest.raises(ImageTooLargeError) as err:
        decode_image(ico)
    assert str(err.value).startswith(f"ICO file holding an image of {size} pixels")
    assert "over the limit of 40.0 megapixels" in str(err.value)


def test_ico_entries_count_against_max_pixels_and_small_icons_still_decode():
    icon = encode(Image.new("RGBA", (32, 32), (9, 99, 199, 255)), "ICO", sizes=[(32, 32)])
    image = decode_image(icon)
    assert image.shape == (3, 32, 32)
    assert torch.allclose(image[:, 0, 0], torch.tensor([9, 99, 199]) / 255.0)
    with pytest.raises(ImageTooLargeError, match="ICO file holding an image of 32x32 pixels"):
        decode_image(icon, max_pixels=1000)


def test_folder_scan_skips_an_ico_bomb_before_pil_decodes_it(tmp_path, monkeypatch):
    def no_ico(self):
        raise AssertionError("PIL opened (and so decoded) the ICO file")
    monkeypatch.setattr(IcoImagePlugin.IcoImageFile, "_open", no_ico)
    two_classes(tmp_path)
    (tmp_path / "a" / "bomb.png").write_bytes(ico_holding(declared_png(13000, 13000)))
    samples, message = scan_warning(tmp_path)
    assert len(samples) == 6 and not any(p.endswith("bomb.png") for p, _ in samples)
    assert "skipped 1 image(s) over max_pixels" in message and "bomb.png" in message


def test_formats_outside_the_accepted_ones_are_named_and_never_opened(monkeypatch):
    def no_icns(self):
        raise AssertionError("PIL's ICNS plugin ran (it decodes while opening)")
    monkeypatch.setattr(IcnsImagePlugin.IcnsImageFile, "_open", no_icns)
    png = declared_png(12000, 12000)
    element = b"ic10" + struct.pack(">I", 8 + len(png)) + png
    icns = b"icns" + struct.pack(">I", 8 + len(element)) + element
    accepted = ", ".join(ACCEPTED_FORMATS)
    with pytest.raises(ImageError) as err:
        decode_image(icns)
    assert str(err.value) == (f"ICNS (Mac OS icns resource) images are not supported; "
                              f"PruneLens reads {accepted}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(ImageError, match=r"^EPS \(Encapsulated Postscript\) images are not "):
        decode_image(eps)
    for junk in (b"hello world\n" * 10, b"<svg/>"):  # no format claims them: as before
        with pytest.raises(ImageError, match=r"^not an image Pillow can read \(PNG, JPEG"):
            decode_image(junk)


def test_every_format_read_before_is_still_read():
    rgb = Image.fromarray((np.random.default_rng(2).random((12, 16, 3)) * 255).astype(np.uint8))
    files = {"PNG": encode(rgb, "PNG"), "JPEG": encode(rgb, "JPEG"), "BMP": encode(rgb, "BMP"),
             "GIF": encode(rgb.convert("P"), "GIF"), "TIFF": encode(rgb, "TIFF"),
             "PPM": encode(rgb, "PPM"), "PGM": encode(rgb.convert("L"), "PPM"),
             "ICO": encode(rgb, "ICO", sizes=[(16, 12)]), "TGA": encode(rgb, "TGA"),
             "MPO": encode(rgb, "MPO", save_all=True, append_images=[rgb])}
    if "WEBP" in Image.registered_extensions().values():
        files["WEBP"] = encode(rgb, "WEBP")
    for name, data in files.items():
        image = decode_image(data, size=(8, 8))
        assert image.shape == (3, 8, 8) and torch.isfinite(image).all(), name
        assert check_image(io.BytesIO(data))[0] in (12, 16), name
    with Image.open(io.BytesIO(files["MPO"])) as im:
        assert im.format == "MPO"  # a camera's multi-picture JPEG: still read


# --------------------------------------------------------------------------- float images


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_float_image_holding_nan_or_infinity_is_refused(value):
    pixels = np.full((20, 20), 0.5, np.float32)
    pixels[3, 4] = value
    tif = encode(Image.fromarray(pixels), "TIFF")
    with pytest.raises(ImageError) as err:
        decode_image(tif, size=(8, 8))
    assert str(err.value) == "float image with 1 of 400 pixel values not finite (NaN or infinity)"
    with pytest.raises(ImageError, match="not finite"):
        check_image(io.BytesIO(tif))


def test_finite_float_image_is_still_clipped_to_unit_range():
    pixels = np.linspace(-1.0, 2.0, 400, dtype=np.float32).reshape(20, 20)
    image = decode_image(encode(Image.fromarray(pixels), "TIFF"))
    expected = torch.from_numpy(np.clip(pixels, 0.0, 1.0))
    assert torch.equal(image, expected.expand(3, 20, 20))


def test_folder_scan_skips_a_nan_image_so_every_sample_is_finite(tmp_path):
    two_classes(tmp_path)
    Image.fromarray(np.full((20, 20), np.nan, np.float32)).save(tmp_path / "b" / "nan.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val = load_dataset("folder", 8, root=tmp_path)
    message = str(caught[0].message)
    assert "nan.tif: float image with 400 of 400 pixel values not finite" in message
    assert len(train) + len(val) == 6
    for ds in (train, val):
        assert all(torch.isfinite(ds[i][0]).all() for i in range(len(ds)))


# --------------------------------------------------------------------------- split


def test_folder_of_single_image_classes_is_refused_at_load(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (20, 20)).save(tmp_path / name / "0.png")
    with pytest.raises(ValueError) as err:
        load_dataset("folder", 8, root=tmp_path)
    assert str(err.value) == (
        f"the validation split of {str(tmp_path)!r} is empty: 3 images in 3 classes, one per "
        f"class; a class gives images to validation only from its second image on, so each "
        f"class needs at least 2 images")


def test_one_class_of_two_images_is_enough_for_a_validation_split(tmp_path):
    for name, n in (("a", 2), ("b", 1)):
        (tmp_path / name).mkdir()
        for j in range(n):
            Image.new("RGB", (20, 20), (j, 0, 0)).save(tmp_path / name / f"{j}.png")
    train, val = load_dataset("folder", 8, root=tmp_path)
    assert (len(train), len(val)) == (2, 1) and val.targets == [0]
