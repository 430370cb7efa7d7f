"""Checks of architecture fields, shared by the family configurations.

A configuration comes from a preset, a user's keyword, or a checkpoint's metadata (which a
browser user can forge), so every field is checked for type and range before a module is
built: a bad one raises ``ValueError`` naming the field, its value and the bound, never
``ZeroDivisionError`` or a ``TypeError`` from deep inside PyTorch. The bounds, all in
:data:`SIZE_LIMITS`, keep a forged file from making the server allocate a huge model (a 564-byte
file declaring ``mlp_hidden=2000000`` once cost 1.35 GB) or huge inputs for it (a 420 KB file
declaring 2048×2048 images had a dataset generated at that size: 70 GiB asked for).
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Any, Iterator

# The most a model may declare, wherever its configuration comes from (a preset, a keyword, a
# PruneLens file's metadata, a Hugging Face or timm config.json), and why. A file's tensors are
# checked against the shapes it declares before they are read, so a size a weight backs costs
# what the file weighs; the input size, and the activations it makes, no weight backs. Each
# bound lets the released models named in its line through with room to spare.
SIZE_LIMITS: dict[str, tuple[int, str]] = {
    "image_side": (1024, "pixels per side; ViT-L runs at 384 or 512, DINOv2 at 518"),
    "tokens": (4096, "patches per image; ViT-B/8 at 512 has 4096, and attention grows as "
                     "its square"),
    "classes": (32_768, "ImageNet-22k has 21,843"),
    "width": (1 << 16, "embedding, head and hidden sizes; ViT-22B's MLP is 24,576 wide"),
    "heads": (256, "ViT-22B has 48"),
    "depth": (256, "ViT-22B has 48 blocks"),
    "channels": (64, "RGB is 3, multispectral tens"),
    "registers": (64, "timm's register models have 4 to 16"),
    "activation": (1 << 28, "1 GiB of float32 for one image in one block; ViT-B/8 at 512's "
                            "attention maps hold 201 M values"),
}
MAX_IMAGE_SIDE = SIZE_LIMITS["image_side"][0]
MAX_TOKENS = SIZE_LIMITS["tokens"][0]
MAX_CLASSES = SIZE_LIMITS["classes"][0]
MAX_WIDTH = SIZE_LIMITS["width"][0]
MAX_HEADS = SIZE_LIMITS["heads"][0]
MAX_DEPTH = SIZE_LIMITS["depth"][0]
MAX_CHANNELS = SIZE_LIMITS["channels"][0]
MAX_REGISTERS = SIZE_LIMITS["registers"][0]
MAX_ACTIVATION = SIZE_LIMITS["activation"][0]


def why(limit: str) -> str:
    """`` (why)``: the reason for bound ``limit`` of :data:`SIZE_LIMITS`, for a message."""
    return f" ({SIZE_LIMITS[limit][1]})"


def check_int(owner: str, name: str, value: Any, low: int = 1, high: int = MAX_WIDTH,
              limit: str = "width") -> None:
    """An int in [low, high]; ``limit``: the :data:`SIZE_LIMITS` entry ``high`` comes from,
    whose reason the message gives."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{owner}.{name} must be an integer, got {shown(value)}")
    if not low <= value <= high:
        raise ValueError(f"{owner}.{name} must be in [{low}, {high}], got {shown(value)}"
                         + (why(limit) if limit else ""))


def check_image(owner: str, img_size: Any, patch_size: Any, in_chans: Any) -> int:
    """Image size, patch size and channels in their bounds, the patch grid too; → the number
    of patches."""
    if not (isinstance(img_size, tuple) and len(img_size) == 2):
        raise ValueError(f"{owner}.img_size must be (height, width) integers, got "
                         f"{shown(img_size)}")
    for side in img_size:
        check_int(owner, "img_size", side, 1, MAX_IMAGE_SIDE, "image_side")
    check_int(owner, "patch_size", patch_size, 1, MAX_IMAGE_SIDE, "image_side")
    check_int(owner, "in_chans", in_chans, 1, MAX_CHANNELS, "channels")
    H, W = img_size
    if H % patch_size or W % patch_size:
        raise ValueError(f"{owner}: image size {H}x{W} is not divisible by the patch size "
                         f"{patch_size}")
    return check_tokens(owner, img_size, patch_size)


def check_tokens(owner: str, img_size: tuple[int, int], patch_size: int) -> int:
    """The patch grid of ``img_size`` (sides already bounded) within :data:`MAX_TOKENS` →
    the number of patches."""
    H, W = img_size
    tokens = (H // patch_size) * (W // patch_size)
    if tokens > MAX_TOKENS:
        raise ValueError(f"{owner}: {H}x{W} images in {patch_size}-pixel patches make "
                         f"{tokens} tokens; at most {MAX_TOKENS}{why('tokens')}")
    return tokens


def check_activation(owner: str, what: str, values: int) -> None:
    """One image's tensor in a block (``values`` entries, described by ``what``) within
    :data:`MAX_ACTIVATION`."""
    if values > MAX_ACTIVATION:
        raise ValueError(f"{owner}: {what} make {values} values per image; at most "
                         f"{MAX_ACTIVATION}{why('activation')}")


def check_block(owner: str, block: str, tokens: int, heads: int, qkv: int, hidden: int) -> None:
    """What one image makes in a ViT block over ``tokens`` tokens, each within
    :data:`MAX_ACTIVATION`: attention maps (heads × tokens²), q/k/v (tokens × ``qkv``) and the
    MLP's hidden layer (tokens × ``hidden``). No weight backs these, so a small file could
    otherwise ask for any amount."""
    N = tokens
    check_activation(owner, f"{block}'s attention maps ({heads} heads × {N} × {N} tokens)",
                     heads * N * N)
    check_activation(owner, f"{block}'s q/k/v ({N} tokens × {qkv})", N * qkv)
    check_activation(owner, f"{block}'s MLP ({N} tokens × {hidden})", N * hidden)


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


def json_int(where: str, name: str, value: Any, low: int = 1, high: int = MAX_WIDTH,
             limit: str = "width") -> int:
    """An integer field in [low, high] (``limit``: the :data:`SIZE_LIMITS` entry of ``high``,
    whose reason the message gives)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
        what = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{where}: {name} must be {what} (at most {high}), "
                         f"got {shown(value)}" + (why(limit) if limit else ""))
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


def json_size(where: str, name: str, value: Any) -> tuple[int, int]:
    """An image or patch size: an int, or [height, width] ints, each in [1, MAX_IMAGE_SIDE]."""
    high = MAX_IMAGE_SIDE
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (json_int(where, name, value[0], 1, high, "image_side"),
                json_int(where, name, value[1], 1, high, "image_side"))
    if isinstance(value, Integral) and not isinstance(value, bool):
        side = json_int(where, name, value, 1, high, "image_side")
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
