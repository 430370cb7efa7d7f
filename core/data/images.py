"""Decoding images without trusting them: size refused from the header, 16-bit scaled, one error.

Every picture PruneLens reads (folder datasets, dashboard uploads) goes through this module:

- ``open_image(fp, max_pixels)`` reads only the header, then refuses an image of more than
  ``max_pixels`` pixels (width x height) *before* any pixel is decoded: a 518 KB PNG that declares
  13000x13000 pixels would otherwise cost ~0.5 GB to decode. PIL's own decompression-bomb warning
  and error become the same :class:`ImageTooLargeError`. Only the formats of
  :data:`ACCEPTED_FORMATS` are tried (PIL decodes some others, ICNS for one, while *opening*
  them, before any size check); an ICO file's embedded images are sized from their own headers
  before PIL opens it (it decodes the largest at once); and a JPEG of more than
  :data:`MAX_JPEG_SCANS` scans is refused (libjpeg decodes every scan over the whole image: a
  655 KB progressive JPEG of 20,000 tiny scans takes half a minute).
- ``to_tensor(image, size)`` turns a PIL image into float32 ``(3, H, W)`` in ``[0, 1]``: EXIF
  rotation applied, grey replicated to 3 channels, 16-bit and 32-bit integer images (modes
  ``I;16*`` and ``I``) divided by 65535 instead of being clipped at 255 by ``convert("RGB")``,
  then a bilinear (anti-aliased when shrinking) resize to ``size`` ignoring the aspect ratio. A
  float image holding NaN or infinity is refused.
- ``check_image(fp, max_pixels)`` is what a folder scan runs on each file, so that every image it
  accepts also decodes later: header and size, PIL's ``verify()`` (for PNG the CRC of every
  chunk), then a decode, since some damage only shows there (a truncated JPEG, a PNG whose
  chunks are intact but whose pixel data is short): JPEG at 1/8 scale through ``Image.draft``
  (every byte is still entropy-decoded, at a fraction of the cost), other formats in full,
  bounded by ``max_pixels``; a float image must hold finite values only.
- ``decode_image(data, size, max_pixels)`` is the one call for an uploaded file's bytes.

Every failure is an :class:`ImageError` (a ``ValueError``) whose message names the problem.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

DEFAULT_MAX_PIXELS = 40_000_000
"""Default cap on width x height for folder images and uploads (40 megapixels: a 7300x5500
photo; decoded as RGB it takes 120 MB)."""

NOT_AN_IMAGE = "not an image Pillow can read (PNG, JPEG, BMP, GIF, TIFF, WebP, ...)"

ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "ICO", "TGA")
"""PIL formats ``open_image`` tries, in this order (the upload widget takes .png .jpg .jpeg .bmp
.webp, sniffing the content; folder scans take any file): what PruneLens has always read by name
(PNG, JPEG with its multi-picture variant MPO, BMP, GIF, TIFF, WebP) and the PBM/PGM/PPM family,
ICO and TGA. Every other format PIL knows (ICNS, EPS, PSD, ...) is refused with its name. TGA
has no signature, so it is tried last (a file of another format that happens to parse as TGA is
read as TGA, a format PIL decodes lazily)."""

MAX_JPEG_SCANS = 100
"""Most scans (SOS markers) a JPEG may hold; a progressive photo has about 10, a baseline one 1.
libjpeg decodes each scan over the whole image, so the cost grows with their number times the
pixels: refused before decoding."""

# What PIL's format plugins raise on damaged or hostile input (found by fuzzing the folder
# scanner, see tests/test_hardening_property.py); anything else is a bug worth a traceback.
PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError,
    ZeroDivisionError,
)

_HIGH_BIT_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0,
                   "I": 65535.0, "F": 1.0}


class ImageError(ValueError):
    """A file or upload that cannot be used as an image; the message says why."""


class ImageTooLargeError(ImageError):
    """An image whose header declares more pixels than the caller's ``max_pixels``."""


def _check_max_pixels(max_pixels: object) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be an int >= 1; got {max_pixels!r}")
    return max_pixels


def too_large_message(width: int, height: int, max_pixels: int) -> str:
    """``"13000x13000 pixels (169.0 megapixels) is over the limit of 40.0 megapixels"``."""
    return (f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is over the limit "
            f"of {max_pixels / 1e6:.1f} megapixels")


@contextmanager
def open_image(fp: BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[Image.Image]:
    """Open ``fp`` with PIL, reading only the header, and refuse it if it is too large.

    Args:
        fp: a binary file object positioned at the start of the image (not closed here).
        max_pixels: largest width x height accepted.

    Yields:
        the lazily decoded PIL image (closed on exit).

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels (also when PIL's own
            decompression-bomb limit refuses it first).
        ImageError: not an image PIL can read, a format outside :data:`ACCEPTED_FORMATS`
            (the message names it), or a JPEG of more than :data:`MAX_JPEG_SCANS` scans.
    """
    max_pixels = _check_max_pixels(max_pixels)
    fp.seek(0)
    prefix = fp.read(16)
    if prefix.startswith(b"\xff\xd8"):  # JPEG (and MPO): decoded scan by scan
        scans = _count_jpeg_scans(fp)
        if scans > MAX_JPEG_SCANS:
            raise ImageError(
                f"JPEG with {scans} scans is over the limit of {MAX_JPEG_SCANS} (a progressive "
                f"photo has about 10; each scan is decoded over the whole image)")
    elif prefix.startswith(b"\0\0\1\0"):  # ICO: PIL decodes its largest image while opening
        _check_ico(fp, max_pixels)
    try:
        with warnings.catch_warnings():
            # we apply our own limit just below; PIL's warning would only repeat it, later
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open_accepted(fp, prefix)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"image of more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels is over the "
            f"limit of {max_pixels / 1e6:.1f} megapixels") from None
    except PIL_ERRORS as err:
        raise ImageError(f"damaged image header ({_describe(err)})") from None
    with im:
        width, height = im.size
        if width * height > max_pixels:
            raise ImageTooLargeError(too_large_message(width, height, max_pixels))
        if width < 1 or height < 1:
            raise ImageError(f"image of {width}x{height} pixels has no pixels")
        yield im


def check_image(fp: BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Check that ``fp`` holds an image that will decode, at a fraction of a full decode's cost.

    See the module docstring for what is checked per format. ``fp`` must be seekable.

    Returns:
        ``(width, height)``.

    Raises:
        ImageTooLargeError, ImageError: as :func:`open_image`, or damaged pixel data.
    """
    with open_image(fp, max_pixels) as im:
        size, fmt = im.size, im.format
        try:
            im.verify()
        except PIL_ERRORS as err:
            raise ImageError(f"damaged {fmt} file ({_describe(err)})") from None
    fp.seek(0)
    with open_image(fp, max_pixels) as im:
        try:
            if fmt in ("JPEG", "MPO"):
                im.draft(None, (1, 1))  # DCT scaled to 1/8: every byte is still decoded
            im.load()
        except PIL_ERRORS as err:
            raise ImageError(f"damaged {fmt} file ({_describe(err)})") from None
        if im.mode == "F":  # the only mode that can hold NaN or infinity
            _check_finite(np.asarray(im))
    return size


def to_tensor(im: Image.Image, size: tuple[int, int] | None = None,
              exif: bool = True) -> Tensor:
    """A PIL image as float32 ``(3, H, W)`` in ``[0, 1]``, resized to ``size = (H, W)`` if given.

    ``exif`` applies the EXIF orientation (phone photos store their rotation there). 16-bit grey
    (``I;16``, ``I``) is divided by 65535, float (``F``) clipped to ``[0, 1]``; everything else
    goes through ``convert("RGB")``. The resize is bilinear, ignores the aspect ratio, and is done
    on the 8-bit RGB image (or the float grey one), as the folder dataset always did.

    Raises:
        ImageError: the pixel data fails to decode, or a float image holds NaN or infinity.
    """
    try:
        if exif:
            im = ImageOps.exif_transpose(im)
        if im.mode in _HIGH_BIT_MODES:
            grey = np.asarray(im, dtype=np.float32) / _HIGH_BIT_MODES[im.mode]
            _check_finite(grey)
            resized = Image.fromarray(np.clip(grey, 0.0, 1.0))  # mode "F"
            if size is not None:
                resized = resized.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.repeat(np.asarray(resized, dtype=np.float32)[:, :, None], 3, axis=2)
            return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()
        rgb = im.convert("RGB")
        if size is not None:
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        pixels = np.asarray(rgb, dtype=np.uint8).copy()  # (H, W, 3)
    except ImageError:
        raise
    except PIL_ERRORS as err:
        raise ImageError(f"damaged {im.format or 'image'} data ({_describe(err)})") from None
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)


def decode_image(data: bytes, size: tuple[int, int] | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, exif: bool = True) -> Tensor:
    """Decode an uploaded image file's bytes into float32 ``(3, H, W)`` in ``[0, 1]``.

    The dashboard's upload path in one call: the size is checked from the header before any
    pixel is decoded, then :func:`to_tensor` (EXIF rotation, 16-bit scaling, bilinear resize to
    ``size = (H, W)`` ignoring the aspect ratio; ``None`` keeps the native size).

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels.
        ImageError: not an image (message: "not an image Pillow can read (PNG, JPEG, ...)"), a
            format outside :data:`ACCEPTED_FORMATS` (named), a JPEG of more than
            :data:`MAX_JPEG_SCANS` scans, damaged, or a float image holding NaN or infinity.
    """
    with opened_upload(data, max_pixels, "decode_image") as im:
        return to_tensor(im, size, exif=exif)


@contextmanager
def opened_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                  who: str = "opened_upload") -> Iterator[Image.Image]:
    """An uploaded file's bytes, opened with :func:`open_image`'s checks and loaded (errors as
    :func:`decode_image`'s; ``who`` names the caller in the TypeError for non-bytes)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{who} takes the file's bytes; got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("empty file: " + NOT_AN_IMAGE)
    with open_image(io.BytesIO(data), max_pixels) as im:
        try:
            im.load()
        except PIL_ERRORS as err:
            raise ImageError(f"damaged {im.format} file ({_describe(err)})") from None
        yield im


def _open_accepted(fp: BinaryIO, prefix: bytes) -> Image.Image:
    """``Image.open`` trying only :data:`ACCEPTED_FORMATS`; a file of another format PIL knows is
    refused with that format's name, anything else as :data:`NOT_AN_IMAGE`."""
    Image.init()  # every plugin registered, so that OPEN lists what this PIL can read
    try:
        return Image.open(fp, formats=[f for f in ACCEPTED_FORMATS if f in Image.OPEN])
    except UnidentifiedImageError:
        pass
    other = _sniff_format(prefix)
    if other is not None:
        raise ImageError(f"{other} images are not supported; PruneLens reads "
                         f"{', '.join(ACCEPTED_FORMATS)}") from None
    raise ImageError(NOT_AN_IMAGE) from None


def _sniff_format(prefix: bytes) -> str | None:
    """The first PIL format outside :data:`ACCEPTED_FORMATS` whose signature matches ``prefix``
    (``"ICNS (Mac OS icns resource)"``), or None. Reads no more than the 16 bytes given."""
    for fmt in Image.ID:
        if fmt in ACCEPTED_FORMATS:
            continue
        factory, accept = Image.OPEN[fmt]
        if accept is None:  # no signature (IM, SPIDER, ...): cannot tell
            continue
        try:
            matched = accept(prefix)
        except Exception:  # noqa: BLE001  a plugin's signature check choking on 16 bytes
            continue
        if matched and not isinstance(matched, str):  # a str: PIL's hint, not a match
            description = getattr(factory, "format_description", None)
            return f"{fmt} ({description})" if description else fmt
    return None


def _count_jpeg_scans(fp: BinaryIO) -> int:
    """Scans (SOS markers ``FF DA``) in the JPEG ``fp``, counted in the raw bytes, then rewound.

    An upper bound: inside entropy-coded data ``FF`` is always followed by ``00`` or an RST
    marker, so every ``FF DA`` there starts a real scan; only metadata segments (EXIF, ICC) can
    hold a stray one.
    """
    fp.seek(0)
    count, tail = 0, b""
    while chunk := fp.read(1 << 20):
        block = tail + chunk
        count += block.count(b"\xff\xda")
        tail = block[-1:]  # a marker split across two reads is counted in the next block
    fp.seek(0)
    return count


def _check_ico(fp: BinaryIO, max_pixels: int) -> None:
    """Refuse an ICO file any of whose images is over ``max_pixels``, sized from their headers.

    PIL decodes an ICO file's largest image while opening it, and sizes that image from the
    icon directory (one byte per side: at most 256), not from the PNG or BMP it points to, which
    may declare 13000x13000 pixels. So each entry's own header is read here first. An entry too
    short to hold a header is left to PIL (which then fails to open the file).
    """
    fp.seek(0)
    header = fp.read(6)
    if len(header) < 6:
        fp.seek(0)
        return
    (count,) = struct.unpack("<H", header[4:6])
    entries = fp.read(16 * count)
    for i in range(len(entries) // 16):
        (offset,) = struct.unpack("<I", entries[16 * i + 12:16 * i + 16])
        fp.seek(offset)
        head = fp.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24:
            width, height = struct.unpack(">II", head[16:24])
        elif len(head) >= 12 and struct.unpack("<I", head[:4])[0] == 12:  # OS/2 BMP header
            width, height = struct.unpack("<HH", head[4:8])
            height //= 2  # the XOR image above the AND mask
        elif len(head) >= 12:  # Windows BMP header: width as PIL reads it, signed height
            width, height = struct.unpack("<Ii", head[4:12])
            height = abs(height) // 2
        else:
            continue
        if width * height > max_pixels:
            fp.seek(0)
            raise ImageTooLargeError(
                "ICO file holding an image of " + too_large_message(width, height, max_pixels))
    fp.seek(0)


def _check_finite(pixels: np.ndarray) -> None:
    """Raise ImageError if a float image holds NaN or infinity (they would reach the model)."""
    finite = np.isfinite(pixels)
    if not finite.all():
        bad = int(pixels.size - np.count_nonzero(finite))
        raise ImageError(f"float image with {bad} of {pixels.size} pixel values not finite "
                         f"(NaN or infinity)")


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
