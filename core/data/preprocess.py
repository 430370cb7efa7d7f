"""A model's own preprocessing: how a picture becomes its input, as transformers or timm do it.

A :class:`Preprocessing` describes the steps of transformers' slow image processors
(``ViTImageProcessor``, ``DeiTImageProcessor``, and the ``shortest_edge`` ones such as
``BitImageProcessor``) and of timm's eval transform:

1. resize with PIL (``Image.resize`` with the named filter, as both libraries do for PIL
   images): to ``(H, W)`` exactly, or the shorter side to ``S`` keeping the aspect ratio (longer
   side ``int(S * long / short)``, transformers' ``get_resize_output_image_size`` and
   torchvision's ``Resize(S)`` alike);
2. centre crop to ``(H, W)`` (zero padding where the image is smaller): transformers puts the
   crop at ``(h - H) // 2``, torchvision (timm) at ``round((h - H) / 2)``;
3. rescale (``× rescale``, 1/255) and normalise (``(x - mean) / std``).

PruneLens models take images in ``[0, 1]`` and normalise inside (their ``pixel_mean`` /
``pixel_std`` fold the rescale in), so :func:`to_model_input` stops after step 2 and returns
the 8-bit pixels over 255; :func:`pixel_values` goes on through step 3 and equals what the
processor itself returns (within 1e-6; ``tests/test_preprocessing.py`` compares them).

Where a description comes from: ``from_hf_processor`` reads ``preprocessor_config.json``
(``do_resize``/``size``/``resample``/``do_center_crop``/``crop_size``/``do_rescale``/
``rescale_factor``/``do_normalize``/``image_mean``/``image_std``, with the defaults of its
``image_processor_type``); ``from_timm_cfg`` reads timm's ``pretrained_cfg`` (``input_size``,
``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``) and builds timm's
``transforms_imagenet_eval``: ``Resize(floor(size / crop_pct))`` on the shorter side,
``CenterCrop(size)``, ``ToTensor``, ``Normalize``. Model loaders attach it to the model
(:func:`attach_inputs`); :func:`preprocessing_of` reads it back, or, for a model without one
(PruneLens presets, bare state dicts), :func:`default_preprocessing`: a bilinear resize to the
model's input size, ignoring the aspect ratio, which is what ``core.data.images.to_tensor``
has always done.

Differences from the libraries, on purpose: EXIF orientation is applied (phone photos), and
16-bit grey images are scaled by 1/65535 as ``to_tensor`` does; neither changes an ordinary
8-bit RGB file. A resize whose output would exceed ``max_pixels`` (a 20000×10 strip brought to
a shorter side of 256) is refused before it is allocated.
"""
from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from .images import (_check_finite, DEFAULT_MAX_PIXELS, _describe, _HIGH_BIT_MODES, ImageError,
                     ImageTooLargeError, opened_upload, PIL_ERRORS,
                     too_large_message)

FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
           "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}
"""Interpolation names (timm's and torchvision's) → PIL filters."""
HF_RESAMPLE = {int(f): name for name, f in FILTERS.items()}
"""transformers' ``resample`` integers (PIL's enum values) → names."""
MAX_SIDE = 8192
"""Largest resize or crop side a model file may ask for."""

TIMM_DEFAULT_CROP_PCT = 0.875
TIMM_DEFAULT_INTERPOLATION = "bicubic"
TIMM_MEAN = (0.485, 0.456, 0.406)
TIMM_STD = (0.229, 0.224, 0.225)

# transformers' processor families whose int ``size`` means a square (get_size_dict)
_VIT_TYPES = ("ViTImageProcessor", "ViTFeatureExtractor", "ViTImageProcessorFast",
              "ViTImageProcessorPil")
_DEIT_TYPES = ("DeiTImageProcessor", "DeiTFeatureExtractor", "DeiTImageProcessorFast",
               "DeiTImageProcessorPil")


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes a model's input.

    Attributes:
        resize: ``(H, W)``: resize to exactly that; an int ``S``: the shorter side to ``S``,
            aspect ratio kept; None: no resize.
        crop: ``(H, W)`` of the centre crop after the resize, or None.
        interpolation: a key of :data:`FILTERS`.
        crop_rounding: ``"floor"`` (transformers) or ``"round"`` (torchvision, timm): where an
            odd margin puts the crop and the padding.
        rescale: factor from 8-bit values to the values normalised (1/255).
        mean, std: per channel, in the rescaled units (what the processor subtracts/divides).
        source: where this was read, for messages ("preprocessor_config.json
            (DeiTImageProcessor)", "timm pretrained_cfg", "PruneLens default").
    """

    resize: tuple[int, int] | int | None
    crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    crop_rounding: str = "floor"
    rescale: float = 1 / 255
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    source: str = "PruneLens default"

    def __post_init__(self) -> None:
        if self.interpolation not in FILTERS:
            raise ValueError(f"interpolation must be one of {', '.join(FILTERS)}; got "
                             f"{self.interpolation!r}")
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(f"crop_rounding must be 'floor' or 'round'; got "
                             f"{self.crop_rounding!r}")
        sides = ([self.resize] if isinstance(self.resize, int) else list(self.resize or ())) \
            + list(self.crop or ())
        if not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= MAX_SIDE
                   for s in sides):
            raise ValueError(f"resize and crop sides must be ints in [1, {MAX_SIDE}]; got "
                             f"resize={self.resize!r}, crop={self.crop!r}")
        if len(self.mean) != len(self.std) or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need one value per channel, std > 0; got "
                             f"{self.mean!r}, {self.std!r}")

    @property
    def output_size(self) -> tuple[int, int] | None:
        """``(H, W)`` of every output, or None when it depends on the picture."""
        if self.crop is not None:
            return self.crop
        return self.resize if isinstance(self.resize, tuple) else None

    def describe(self) -> str:
        """One line: ``"shorter side 256 (bicubic), centre crop 224x224, mean … std …"``."""
        if isinstance(self.resize, tuple):
            steps = [f"resize to {self.resize[0]}x{self.resize[1]} ({self.interpolation})"]
        elif self.resize is not None:
            steps = [f"shorter side to {self.resize} ({self.interpolation})"]
        else:
            steps = ["no resize"]
        if self.crop is not None:
            steps.append(f"centre crop {self.crop[0]}x{self.crop[1]}")
        stats = ", ".join(f"{m:.3g}/{s:.3g}" for m, s in zip(self.mean, self.std))
        return f"{', '.join(steps)}; mean/std {stats} ({self.source})"


def default_preprocessing(image_size: tuple[int, int],
                          mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                          std: tuple[float, ...] = (0.5, 0.5, 0.5)) -> Preprocessing:
    """A bilinear resize to ``image_size`` ``(H, W)`` ignoring the aspect ratio, no crop:
    ``core.data.images.to_tensor``'s resize, for models that carry no preprocessing."""
    return Preprocessing(resize=(int(image_size[0]), int(image_size[1])), mean=tuple(mean),
                         std=tuple(std))


# ---------------------------------------------------------------------------- reading

def _side(where: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
        raise ValueError(f"{where}: {name} must be an int in [1, {MAX_SIDE}], got "
                         f"{_shown(value)}")
    return value


def _hw(where: str, name: str, value: object, square_int: bool) -> tuple[int, int] | int:
    """transformers' ``size`` / ``crop_size``: {height, width} → (H, W); {shortest_edge} → S;
    an int → (S, S) when ``square_int`` (ViT/DeiT's ``get_size_dict``) else S."""
    if isinstance(value, Mapping):
        keys = set(value)
        if keys == {"height", "width"}:
            return (_side(where, f"{name}.height", value["height"]),
                    _side(where, f"{name}.width", value["width"]))
        if keys == {"shortest_edge"}:
            return _side(where, f"{name}.shortest_edge", value["shortest_edge"])
        raise ValueError(f"{where}: {name} with keys {sorted(map(str, keys))[:4]} is not "
                         "supported (PruneLens reads height/width or shortest_edge)")
    if isinstance(value, list) and len(value) == 2:
        return (_side(where, name, value[0]), _side(where, name, value[1]))
    side = _side(where, name, value)
    return (side, side) if square_int else side


def _flag(where: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: {name} must be true or false, got {_shown(value)}")
    return value


def _stats(where: str, name: str, value: object, channels: int) -> tuple[float, ...]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * channels
    if not (isinstance(value, (list, tuple)) and len(value) == channels and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in value)):
        raise ValueError(f"{where}: {name} must be {channels} finite numbers, got "
                         f"{_shown(value)}")
    return tuple(float(v) for v in value)


def from_hf_processor(pre: Mapping, image_size: tuple[int, int], channels: int = 3,
                      default_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                      default_std: tuple[float, ...] = (0.5, 0.5, 0.5),
                      where: str = "preprocessor_config.json") -> Preprocessing:
    """A transformers ``preprocessor_config.json`` (its parsed dict) → :class:`Preprocessing`.

    Missing (or null) fields take the defaults of its ``image_processor_type`` (or legacy
    ``feature_extractor_type``): ViT 224x224 bilinear, no crop; DeiT 256x256 bicubic then a
    224x224 crop; any other type ViT's. ``do_center_crop: true`` crops whatever the type, as
    transformers 5 does (transformers 4's ``ViTImageProcessor`` ignored it). An empty ``pre``
    (no file) is :func:`default_preprocessing` at ``image_size``.

    Raises:
        ValueError: a field of the wrong type or range, named with ``where``.
    """
    if not pre:
        return default_preprocessing(image_size, default_mean[:channels], default_std[:channels])

    def get(key: str, default: object) -> object:  # transformers 5 writes None for "unset"
        value = pre.get(key)
        return default if value is None else value

    kind = get("image_processor_type", None) or get("feature_extractor_type", "")
    kind = kind if isinstance(kind, str) else ""
    deit = kind in _DEIT_TYPES
    square_int = deit or kind in _VIT_TYPES or not kind
    resize: tuple[int, int] | int | None = None
    if _flag(where, "do_resize", get("do_resize", True)):
        resize = _hw(where, "size", get("size", 256 if deit else 224), square_int)
    resample = get("resample", 3 if deit else 2)
    if resample not in HF_RESAMPLE or isinstance(resample, bool):
        raise ValueError(f"{where}: resample must be one of PIL's filters "
                         f"{sorted(HF_RESAMPLE)}, got {_shown(resample)}")
    crop = None
    if _flag(where, "do_center_crop", get("do_center_crop", deit)):
        crop = _hw(where, "crop_size", get("crop_size", 224), True)
        if isinstance(crop, int):  # {"shortest_edge": S} as a crop size means S x S
            crop = (crop, crop)
    rescale = 1.0
    if _flag(where, "do_rescale", get("do_rescale", True)):
        rescale = get("rescale_factor", 1 / 255)
        if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) \
                or not (math.isfinite(rescale) and rescale > 0):
            raise ValueError(f"{where}: rescale_factor must be a positive number, got "
                             f"{_shown(rescale)}")
    mean, std = (0.0,) * channels, (1.0,) * channels
    if _flag(where, "do_normalize", get("do_normalize", True)):
        mean = _stats(where, "image_mean", get("image_mean", default_mean[:channels]), channels)
        std = _stats(where, "image_std", get("image_std", default_std[:channels]), channels)
    return Preprocessing(resize=resize, crop=crop, interpolation=HF_RESAMPLE[int(resample)],
                         crop_rounding="floor", rescale=float(rescale), mean=mean, std=std,
                         source=f"preprocessor_config.json ({kind or 'no processor type'})")


def from_timm_cfg(cfg: Mapping, image_size: tuple[int, int] | None = None, channels: int = 3,
                  where: str = "pretrained_cfg") -> Preprocessing:
    """timm's ``pretrained_cfg`` → its eval transform (``transforms_imagenet_eval``).

    ``input_size`` [C, H, W] (else ``image_size``), ``interpolation`` (bicubic),
    ``crop_pct`` (0.875), ``crop_mode`` ("center"; "squash" resizes both sides to
    ``floor(size / crop_pct)``; "border", and "center" on a non-square input, are not
    implemented: a warning, then "squash"), ``mean``/``std`` (ImageNet's).

    Raises:
        ValueError: a field of the wrong type or range, named with ``where``.
    """
    size = cfg.get("input_size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 3):
            raise ValueError(f"{where}: input_size must be [channels, height, width], got "
                             f"{_shown(size)}")
        hw = (_side(where, "input_size", size[1]), _side(where, "input_size", size[2]))
    elif image_size is not None:
        hw = (int(image_size[0]), int(image_size[1]))
    else:
        raise ValueError(f"{where}: no input_size")
    interpolation = cfg.get("interpolation") or TIMM_DEFAULT_INTERPOLATION
    if interpolation not in FILTERS:
        raise ValueError(f"{where}: interpolation must be one of {', '.join(FILTERS)}, got "
                         f"{_shown(interpolation)}")
    crop_pct = cfg.get("crop_pct") or TIMM_DEFAULT_CROP_PCT
    if isinstance(crop_pct, bool) or not isinstance(crop_pct, (int, float)) \
            or not 0.05 <= crop_pct <= 4.0:
        raise ValueError(f"{where}: crop_pct must be a number in [0.05, 4], got "
                         f"{_shown(crop_pct)}")
    mode = cfg.get("crop_mode") or "center"
    if mode not in ("center", "squash", "border"):
        raise ValueError(f"{where}: crop_mode must be center, squash or border, got "
                         f"{_shown(mode)}")
    scale = (math.floor(hw[0] / crop_pct), math.floor(hw[1] / crop_pct))
    _side(where, "input_size / crop_pct", max(scale))
    if mode == "center" and scale[0] == scale[1]:
        resize: tuple[int, int] | int = scale[0]
    else:
        if mode != "squash":
            warnings.warn(f"{where}: timm crop_mode {mode!r}"
                          + (" on a non-square input" if mode == "center" else "")
                          + " is not implemented; resizing both sides instead ('squash')",
                          stacklevel=2)
        resize = scale
    mean = _stats(where, "mean", cfg.get("mean", TIMM_MEAN[:channels]), channels)
    std = _stats(where, "std", cfg.get("std", TIMM_STD[:channels]), channels)
    return Preprocessing(resize=resize, crop=hw, interpolation=interpolation,
                         crop_rounding="round", rescale=1 / 255, mean=mean, std=std,
                         source="timm pretrained_cfg")


def fit_to_model(prep: Preprocessing, image_size: tuple[int, int], what: str) -> Preprocessing:
    """``prep`` if its output is the model's ``image_size``; otherwise a warning naming
    ``what`` and both sizes, and :func:`default_preprocessing` with ``prep``'s mean/std (the
    model's position embeddings fit one size only)."""
    size = tuple(int(s) for s in image_size)
    if prep.output_size == size:
        return prep
    got = "x".join(map(str, prep.output_size)) if prep.output_size else "the picture's size"
    warnings.warn(f"{what}: its preprocessing gives {got} images but the model takes "
                  f"{size[0]}x{size[1]}; resizing to {size[0]}x{size[1]} instead", stacklevel=2)
    return Preprocessing(resize=size, interpolation=prep.interpolation, rescale=prep.rescale,
                         mean=prep.mean, std=prep.std, source=f"{prep.source}, resized to fit")


# ---------------------------------------------------------------------------- the model

def attach_inputs(model: nn.Module, preprocessing: Preprocessing | None = None,
                  labels: tuple[str, ...] | None = None,
                  wnids: tuple[str, ...] | None = None) -> nn.Module:
    """Set ``model.preprocessing``, ``model.labels`` (a name per output) and ``model.wnids``
    (a WordNet id per output, or None), as loaders set ``model.source``; returns ``model``."""
    model.preprocessing = preprocessing
    model.labels = None if labels is None else tuple(labels)
    model.wnids = None if wnids is None else tuple(wnids)
    return model


def preprocessing_of(model: nn.Module) -> Preprocessing:
    """The preprocessing a loader attached to ``model``, else :func:`default_preprocessing` at
    its input size with its own mean/std (read from its ``pixel_mean``/``pixel_std`` when
    present)."""
    prep = getattr(model, "preprocessing", None)
    if prep is not None:
        return prep
    _, H, W = model.input_shape
    mean = getattr(model, "pixel_mean", None)
    std = getattr(model, "pixel_std", None)
    if mean is None or std is None:
        return default_preprocessing((H, W))
    return default_preprocessing((H, W), tuple(mean.flatten().tolist()),
                                 tuple(std.flatten().tolist()))


# ---------------------------------------------------------------------------- applying

def resized_size(width: int, height: int, prep: Preprocessing) -> tuple[int, int]:
    """``(H, W)`` after the resize step of ``prep`` for a ``width`` x ``height`` picture."""
    if prep.resize is None:
        return height, width
    if isinstance(prep.resize, tuple):
        return prep.resize
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = prep.resize, int(prep.resize * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def _centre_crop(a: np.ndarray, size: tuple[int, int], rounding: str) -> np.ndarray:
    """Crop ``a`` (H, W, ...) to ``size``, zero-padded first where it is smaller."""
    ch, cw = size
    h, w = a.shape[:2]
    if ch > h or cw > w:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        # transformers pads ceil(margin / 2) before; torchvision floor(margin / 2)
        top, left = ((-(-ph // 2), -(-pw // 2)) if rounding == "floor" else (ph // 2, pw // 2))
        canvas = np.zeros((max(h, ch), max(w, cw), *a.shape[2:]), dtype=a.dtype)
        canvas[top:top + h, left:left + w] = a
        a, (h, w) = canvas, canvas.shape[:2]
    if rounding == "floor":
        top, left = (h - ch) // 2, (w - cw) // 2
    else:
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return a[top:top + ch, left:left + cw]


def _resized_array(im: Image.Image, prep: Preprocessing, max_pixels: int,
                   exif: bool) -> np.ndarray:
    """Steps 1 and 2: uint8 (H, W, 3), or float32 (H, W) in [0, 1] for 16-bit/float grey."""
    try:
        if exif:
            im = ImageOps.exif_transpose(im)
        H, W = resized_size(im.width, im.height, prep)
        if H * W > max_pixels:
            raise ImageTooLargeError(f"resizing a {im.width}x{im.height} picture gives "
                                     + too_large_message(W, H, max_pixels))
        if im.mode in _HIGH_BIT_MODES:
            grey = np.asarray(im, dtype=np.float32) / _HIGH_BIT_MODES[im.mode]
            _check_finite(grey)
            im = Image.fromarray(np.clip(grey, 0.0, 1.0))  # mode "F"
        else:
            im = im.convert("RGB")
        if (H, W) != (im.height, im.width):
            im = im.resize((W, H), FILTERS[prep.interpolation])
        a = np.asarray(im)
    except ImageError:
        raise
    except PIL_ERRORS as err:
        raise ImageError(f"damaged {im.format or 'image'} data ({_describe(err)})") from None
    return _centre_crop(a, prep.crop, prep.crop_rounding) if prep.crop is not None else a


def to_model_input(im: Image.Image, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS,
                   exif: bool = True) -> Tensor:
    """A PIL image as a PruneLens model's input: float32 ``(3, H, W)`` in ``[0, 1]`` (8-bit
    values / 255), resized and cropped as ``prep`` says; the model normalises inside.

    Raises:
        ImageTooLargeError: the resize would make more than ``max_pixels`` pixels.
        ImageError: the pixel data fails to decode, or a float image holds NaN or infinity.
    """
    a = _resized_array(im, prep, max_pixels, exif)
    if a.ndim == 2:  # grey in [0, 1] as float32
        return torch.from_numpy(np.array(a)).unsqueeze(0).expand(3, -1, -1).clone()
    return torch.from_numpy(np.array(a)).permute(2, 0, 1).float().div_(255.0)


def decode_for_model(data: bytes, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS,
                     exif: bool = True) -> Tensor:
    """An uploaded file's bytes → :func:`to_model_input`: ``core.data.images.decode_image``'s
    checks (size from the header before any pixel is decoded, accepted formats, JPEG scans),
    then ``prep``'s resize and crop. Errors as ``decode_image``'s."""
    with opened_upload(data, max_pixels, "decode_for_model") as im:
        return to_model_input(im, prep, max_pixels, exif)


def pixel_values(im: Image.Image, prep: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS,
                 exif: bool = True) -> Tensor:
    """What the processor itself returns: :func:`to_model_input`'s pixels rescaled and
    normalised, ``(x·255·rescale − mean) / std`` in float64, returned as float32 (3, H, W)."""
    x = to_model_input(im, prep, max_pixels, exif).double() * (255.0 * prep.rescale)
    mean = torch.tensor(prep.mean, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float64).view(-1, 1, 1)
    return ((x - mean) / std).float()


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
