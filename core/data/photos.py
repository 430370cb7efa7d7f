"""The photographs shipped in ``assets/photos`` (public domain / CC0, see ``assets/README.md``):
the default pictures of the attention views for models of 224-pixel inputs, whose classes
(ImageNet's) they show: an astronaut, a cat, a cup of coffee, a rocket."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from .labels import ASSETS

PHOTOS_DIR = ASSETS / "photos"
DEFAULT_PHOTO = "chelsea.jpg"
"""The one shown first (a cat: ImageNet has five kinds)."""
PHOTO_SIDE = 224
"""Models whose input is this many pixels a side get the photos as their default images."""


def photo_names() -> list[str]:
    """File names of the shipped photos, sorted."""
    return sorted(p.name for p in PHOTOS_DIR.glob("*.jpg"))


def photo_path(name: str) -> Path:
    """The path of shipped photo ``name`` (one of :func:`photo_names`); ValueError otherwise."""
    if name not in photo_names():
        raise ValueError(f"no shipped photo {name!r}; there are {', '.join(photo_names())}")
    return PHOTOS_DIR / name


def default_photos() -> dict[str, Image.Image]:
    """The shipped photos as RGB PIL images (loaded), by file name."""
    out = {}
    for name in photo_names():
        with Image.open(PHOTOS_DIR / name) as im:
            out[name] = im.convert("RGB")
    return out


def photos_are_default(image_size: tuple[int, int]) -> bool:
    """Are the photos the default images for a model of input ``image_size`` (H, W)?"""
    return tuple(image_size) == (PHOTO_SIDE, PHOTO_SIDE)
