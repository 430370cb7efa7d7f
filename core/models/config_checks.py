"""Checks of architecture fields, shared by the family configurations.

A configuration comes from a preset, a user's keyword, or a checkpoint's metadata (which a
browser user can forge), so every field is checked for type and range before a module is
built: a bad one raises ``ValueError`` naming the field, never ``ZeroDivisionError`` or a
``TypeError`` from deep inside PyTorch. The bounds keep a forged file from making the server
allocate a huge model (a 564-byte file declaring ``mlp_hidden=2000000`` once cost 1.35 GB).
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

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
