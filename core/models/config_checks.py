"""Checks of architecture fields, shared by the family configurations.

A configuration comes from a preset, a user's keyword, or a checkpoint's metadata (which a
browser user can forge), so every field is checked for type and range before a module is
built: a bad one raises ``ValueError`` naming the field, never ``ZeroDivisionError`` or a
``TypeError`` from deep inside PyTorch. The bounds keep a forged file from making the server
allocate a huge model (a 564-byte file declaring ``mlp_hidden=2000000`` once cost 1.35 GB).
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any, Iterator

MAX_WIDTH = 1 << 16        # channels, heads, hidden sizes, classes
MAX_DEPTH = 256
MAX_IMAGE_SIDE = 8192


def check_int(owner: str, name: str, value: Any, low: int = 1, high: int = MAX_WIDTH) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{owner}.{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{owner}.{name} must be in [{low}, {high}], got {value}")


def check_image(owner: str, img_size: Any, patch_size: Any, in_chans: Any) -> None:
    if not (isinstance(img_size, tuple) and len(img_size) == 2):
        raise ValueError(f"{owner}.img_size must be (height, width) integers, got {img_size!r}")
    for side in img_size:
        check_int(owner, "img_size", side, 1, MAX_IMAGE_SIDE)
    check_int(owner, "patch_size", patch_size, 1, MAX_IMAGE_SIDE)
    check_int(owner, "in_chans", in_chans, 1, 64)
    H, W = img_size
    if H % patch_size or W % patch_size:
        raise ValueError(f"{owner}: image size {H}x{W} is not divisible by the patch size "
                         f"{patch_size}")


def check_stats(owner: str, name: str, value: Any, channels: int, positive: bool) -> None:
    if not (isinstance(value, tuple) and len(value) == channels
            and all(isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v)
                    and (v > 0 or not positive) for v in value)):
        raise ValueError(f"{owner}.{name} must be {channels} finite "
                         f"{'positive ' if positive else ''}numbers, got {value!r}")


def check_scale(owner: str, value: Any, name: str = "scale") -> None:
    if value is not None and not (isinstance(value, Real) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} must be None or a positive number, got {value!r}")


def check_input(x: Any, in_chans: int, img_size: tuple[int, int]) -> None:
    """Images (B, C, H, W) must match the model; say how when they do not."""
    if x.ndim != 4 or x.shape[1] != in_chans or tuple(x.shape[2:]) != tuple(img_size):
        H, W = img_size
        raise ValueError(
            f"images of shape {tuple(x.shape)} do not fit this model, which takes "
            f"(B, {in_chans}, {H}, {W}); resize them to {H}x{W} (e.g. load_dataset(..., "
            f"image_size={H if H == W else (H, W)}))")


def image_size(value: Any) -> tuple[int, int]:
    """An ``img_size`` option (an int, or (height, width)) as a pair; ValueError otherwise."""
    if isinstance(value, Integral) and not isinstance(value, bool):
        return (int(value), int(value))
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, Integral) and not isinstance(v, bool) for v in value)):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"img_size must be an int or (height, width), got {value!r}")


# ---------------------------------------------------------------------------- JSON config files
# A model folder's config.json / preprocessor_config.json is whatever its author wrote: these
# read one field each, check its type (an int is not a bool, a float, a string) and its range,
# and raise ValueError "<where>: <field> must be …, got <value>" (``where`` names the file and
# its folder) before anything is built from it.

def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a hostile field may be megabytes long, or
    an int too long for ``repr``)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints over Python's digit limit; deep nesting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def json_int(where: str, name: str, value: Any, low: int = 1, high: int = MAX_WIDTH) -> int:
    """An integer field in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
        what = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{where}: {name} must be {what} (at most {high}), "
                         f"got {shown(value)}")
    return int(value)


def json_number(where: str, name: str, value: Any, *, positive: bool = False,
                below: float | None = None) -> float:
    """A finite number (int or float, not bool); ``positive``: > 0; ``below``: < below."""
    ok = (isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
          and (value > 0 or not positive) and (below is None or value < below))
    if not ok:
        what = "a finite " + ("positive " if positive else "") + "number" + \
            (f" below {below:g}" if below is not None else "")
        raise ValueError(f"{where}: {name} must be {what}, got {shown(value)}")
    return float(value)


def json_bool(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {name} must be true or false, got {shown(value)}")
    return value


def json_str(where: str, name: str, value: Any, limit: int = 200) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise ValueError(f"{where}: {name} must be a name (a string of at most {limit} "
                         f"characters), got {shown(value)}")
    return value


def json_dict(where: str, name: str, value: Any) -> dict:
    """A JSON object field; absent (None) reads as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {name} must be a JSON object, got {type(value).__name__} "
                         f"{shown(value)}")
    return value


def json_size(where: str, name: str, value: Any, high: int = MAX_IMAGE_SIDE) -> tuple[int, int]:
    """An image or patch size: an int, or [height, width] ints, each in [1, high]."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (json_int(where, name, value[0], 1, high), json_int(where, name, value[1], 1, high))
    if isinstance(value, Integral) and not isinstance(value, bool):
        side = json_int(where, name, value, 1, high)
        return (side, side)
    raise ValueError(f"{where}: {name} must be an int or [height, width], got {shown(value)}")


def json_stats(where: str, name: str, value: Any, channels: int, positive: bool) -> tuple:
    """Per-channel image statistics: one number (for every channel) or ``channels`` numbers,
    finite (``positive``: > 0)."""
    if isinstance(value, (list, tuple)):
        if len(value) != channels:
            raise ValueError(f"{where}: {name} must have {channels} values (one per channel), "
                             f"got {shown(value)}")
        return tuple(json_number(where, name, v, positive=positive) for v in value)
    return (json_number(where, name, value, positive=positive),) * channels


STRAY_ERRORS = (ZeroDivisionError, OverflowError, KeyError, TypeError, AttributeError,
                IndexError, RecursionError, ValueError)
"""What a reader of a hostile file may still raise from deep inside: turned into the reader's
one-line error (the original type named) by :func:`stray_errors`."""


@contextmanager
def stray_errors(error: type[Exception], source: str, path_text: str = "") -> Iterator[None]:
    """The safety net around a model reader: ``error`` passes through (``path_text``, a server
    path in its message, replaced by ``source``); any :data:`STRAY_ERRORS` becomes ``error``
    naming ``source`` and the original type, logged with its traceback (a stray error is a
    check missing in the reader, so it must stay visible)."""
    try:
        yield
    except error as e:
        if path_text and path_text != source and path_text in str(e):
            raise error(str(e).replace(path_text, source)) from None
        raise
    except STRAY_ERRORS as e:
        logging.getLogger("prunelens.models").warning(
            "unexpected %s while reading %s", type(e).__name__, source, exc_info=True)
        message = str(e).replace(path_text, source) if path_text else str(e)
        first = next((ln.strip() for ln in message.splitlines() if ln.strip()), "")
        first = first if len(first) <= 200 else first[:199] + "…"
        raise error(f"{source}: cannot be read as a model ({type(e).__name__}"
                    f"{': ' + first if first else ''})") from e
