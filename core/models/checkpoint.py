"""Reading checkpoint files safely: safetensors (header first) or ``torch.load(weights_only=
True)``, never plain pickle; tensors checked (floating point, finite); one-line errors.

Shared by the registry (PruneLens files), the Hugging Face and timm readers and the exporters.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the model."""


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FLOAT_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.float64}
# a safetensors header lists ~100 bytes per tensor plus PruneLens' metadata (a few kB): a
# ViT-H/14 has ~0.05 MB. Bigger headers are refused before they are parsed.
MAX_HEADER_BYTES = 16 * 2**20
MAX_TENSORS = 20_000
# a torch zip checkpoint stores its tensors uncompressed (torch.save): what it unpacks to may
# exceed the file by its small pickle records only, never by a compression ratio
ZIP_SLACK_BYTES = 64 * 2**20


def one_line(message: object, limit: int = 300) -> str:
    """First non-empty line of ``message`` without ANSI colour codes, at most ``limit`` chars
    (torch's weights_only refusal is a coloured, many-line essay)."""
    plain = _ANSI.sub("", str(message))
    lines = [ln.strip() for ln in plain.splitlines() if ln.strip()]
    text = lines[0] if lines else type(message).__name__
    if "Weights only load failed" in text:  # torch words the culprit in several ways
        culprit = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", plain)
        opcode = re.search(r"Unsupported operand (\d+)", plain)
        what = (f"it asks for the Python object {culprit.group(1)}" if culprit else
                "it holds pickle instructions a weights-only load refuses (opcode "
                f"{opcode.group(1)})" if opcode else "it is not a file of plain tensors")
        text = (text[:text.index("Weights only load failed")] + "refused before anything in "
                f"it ran: {what}")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _cut(xs: list[str], n: int = 8) -> str:
    return ", ".join(xs[:n]) + (f" … (+{len(xs) - n})" if len(xs) > n else "")


def _check_tensors(sd: dict[str, torch.Tensor], name: str) -> None:
    """Weights must be floating point and finite: integer (quantised) tensors would be cast
    silently and NaN weights give NaN outputs, so both are refused naming the tensors."""
    bad_dtype = sorted(f"{k} ({v.dtype})".replace("torch.", "") for k, v in sd.items()
                       if v.dtype not in _FLOAT_DTYPES)
    if bad_dtype:
        raise CheckpointError(f"{name}: PruneLens loads floating-point weights; these tensors "
                              f"are not: {_cut(bad_dtype)}")
    bad = sorted(k for k, v in sd.items() if v.numel() and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"{name}: tensors hold NaN or infinite values: {_cut(bad)}")


def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length
    that fits the file, then the header's ``{``. Files are told apart by content, so a
    PruneLens file saved as ``model.pt`` still loads as safetensors; a file named
    ``.safetensors`` is read as one whatever it holds (a pickle is refused by the safetensors
    reader, never unpickled)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return (len(head) == 9 and head[8:9] == b"{"
            and 8 + int.from_bytes(head[:8], "little") <= size)


def _header(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a ``.safetensors`` file, from its header alone (at most
    :data:`MAX_HEADER_BYTES`, :data:`MAX_TENSORS` tensors)."""
    try:
        with open(path, "rb") as f:
            declared = int.from_bytes(f.read(8), "little")
    except OSError as e:
        raise CheckpointError(f"cannot read {path.name}: {one_line(e)}") from None
    if declared > path.stat().st_size - 8:
        raise CheckpointError(f"cannot read {path.name} as safetensors: its header length "
                              f"({declared} bytes) exceeds the file ({path.stat().st_size} "
                              "bytes)")
    if declared > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"cannot read {path.name}: it declares a safetensors header of "
            f"{declared / 2**20:.0f} MB; PruneLens reads headers up to "
            f"{MAX_HEADER_BYTES // 2**20} MB (a ViT-H's is 0.05 MB)")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if len(keys) > MAX_TENSORS:
                raise CheckpointError(f"{path.name} holds {len(keys)} tensors; PruneLens reads "
                                      f"models of up to {MAX_TENSORS}")
            meta = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"cannot read {path.name} as safetensors: {one_line(e)}") from None
    return shapes, meta


def _check_zip(path: Path) -> None:
    """A torch zip checkpoint must unpack to about its own size (``torch.save`` stores tensors
    uncompressed): a compressed record is a decompression bomb, refused before unpacking."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"cannot read {path.name} as a torch checkpoint: "
                              f"{one_line(e)}") from None
    size = path.stat().st_size
    if unpacked > size + ZIP_SLACK_BYTES:
        raise CheckpointError(
            f"{path.name} unpacks to {unpacked / 2**20:.0f} MB from {size / 2**20:.1f} MB: "
            "torch checkpoints store tensors uncompressed, so this is refused unread")


def _check_views(sd: dict[str, torch.Tensor], name: str) -> None:
    """Every tensor must own the bytes it shows: a view whose elements outnumber its storage
    (``expand``: stride 0) makes a few bytes of file look like gigabytes of weights."""
    bad = sorted(f"{k} {tuple(v.shape)} on {v.untyped_storage().nbytes()} bytes"
                 for k, v in sd.items()
                 if v.numel() * v.element_size() > v.untyped_storage().nbytes())
    if bad:
        raise CheckpointError(f"{name}: tensors are broadcast views, not stored weights: "
                              f"{_cut(bad, 3)}")


def _read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a ``.safetensors`` or ``weights_only`` torch checkpoint; never plain pickle.
    Tensors must be floating point and finite (:class:`CheckpointError` otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" if not path.exists()
                              else f"not a checkpoint file: {path}")
    if path.suffix.lower() == ".onnx":
        raise CheckpointError(f"{path.name} is an ONNX file: PruneLens writes ONNX for "
                              "runtimes but reads models back only from safetensors, a "
                              "weights-only torch file or a Hugging Face / timm folder")
    if path.suffix.lower() == ".safetensors" or is_safetensors(path):
        _, meta = _header(path)
        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"cannot read {path.name} as safetensors: "
                                  f"{one_line(e)}") from None
    else:
        meta = {}
        _check_zip(path)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors come in many types
            raise CheckpointError(
                f"cannot read {path.name} as a weights-only torch checkpoint (only tensors are "
                f"accepted, never pickled code): {one_line(e)}") from None
        for key in ("model", "state_dict", "model_state_dict"):  # DeiT / Lightning wrappers
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                for k, v in obj.items()):
            raise CheckpointError(f"{path.name} does not hold a state dict of tensors")
        sd = obj
        _check_views(sd, path.name)
    _check_tensors(sd, path.name)
    return sd, meta


def checkpoint_info(path: str | Path) -> dict[str, str]:
    """The metadata of a readable checkpoint: for PruneLens files ``prunelens_family``,
    ``prunelens_config`` (JSON) and ``prunelens_preset``, so :func:`load_model` can rebuild
    them; empty for plain weights (load those with :func:`load_weights`). The whole file is
    read, so a corrupt or pickled one raises :class:`CheckpointError` here."""
    return dict(_read_state_dict(path)[1])


def _fit_report(name: str, what: str, expected: dict[str, tuple[int, ...]],
                found: dict[str, tuple[int, ...]]) -> str | None:
    """None if ``found`` has exactly ``expected``'s keys and shapes, else what differs."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(f"{k}: checkpoint {found[k]} vs model {expected[k]}"
                    for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{len(missing)} missing keys: {_cut(missing)}" if missing else "",
             f"{len(unexpected)} unexpected keys: {_cut(unexpected)}" if unexpected else "",
             f"{len(shapes)} mis-shaped: {_cut(shapes)}" if shapes else ""]
    return f"{name} does not fit {what}: " + "; ".join(p for p in parts if p)


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with parametrizations (pruning masks) baked in, on CPU, contiguous.

    ``X.parametrizations.weight.original`` (or ``original0``, ``original1`` … of a
    parametrization with several inputs, e.g. ``weight_norm``) becomes ``X.weight`` holding
    the parametrized value (e.g. ``mask * original``); the parametrizations' own buffers are
    dropped. Weights pruned with ``torch.nn.utils.prune`` (``X.weight_orig`` and the buffer
    ``X.weight_mask``) become ``X.weight = weight_orig * weight_mask``. The model itself is not
    touched (a deepcopy + remove_parametrizations would edit the class it shares).
    """
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parametrized = parametrized_key(key)
        if parametrized is not None:
            plain, tail = parametrized
            if tail in ("original", "original0") and plain not in out:
                owner, _, pname = plain.rpartition(".")
                out[plain] = getattr(model.get_submodule(owner), pname)
            continue
        if key.endswith("_orig") and key[:-5] + "_mask" in state:  # torch.nn.utils.prune
            out[key[:-5]] = value * state[key[:-5] + "_mask"]
            continue
        if key.endswith("_mask") and key[:-5] + "_orig" in state:
            continue
        out[key] = value
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def parametrized_key(key: str) -> tuple[str, str] | None:
    """``"X.parametrizations.weight.original"`` → ``("X.weight", "original")`` (the plain name
    and what the key holds of it: ``original``, ``0.mask`` …); None for a plain key."""
    if ".parametrizations." not in key:
        return None
    owner, rest = key.split(".parametrizations.", 1)
    pname, tail = rest.split(".", 1)
    return f"{owner}.{pname}", tail


def masked_keys(model: nn.Module) -> list[str]:
    """Plain names (``"blocks.0.mlp.fc1.weight"``) of the parameters carrying a pruning mask:
    a parametrization with a ``mask`` buffer (``core.pruning``'s) or ``torch.nn.utils.prune``'s
    ``X.weight_mask``."""
    keys = []
    for key in model.state_dict():
        parametrized = parametrized_key(key)
        if parametrized is not None and key.endswith(".mask"):
            keys.append(parametrized[0])
        elif parametrized is None and key.endswith("_mask"):
            keys.append(key[:-5])
    return sorted(set(keys))


# ---------------------------------------------------------------------------- model folders

SUPPORTED = ("Hugging Face ViTForImageClassification, DeiTForImageClassification, "
             "DeiTForImageClassificationWithTeacher; timm vit_*/deit_*/deit3_* "
             "(class/distillation/register tokens, LayerScale, average pooling)")


def _error(message: str) -> Exception:
    return CheckpointError(message)


def read_json(path: Path, limit: int = 4 * 2**20) -> dict:
    """A model folder's JSON file (``config.json``…) as a dict: a regular file of at most
    ``limit`` bytes (a ViT's is ~1 kB, with ImageNet-21k's labels ~1 MB), valid JSON, an object;
    CheckpointError naming the file and its folder (by name only: no server path) otherwise.
    Opened non-blocking, so a FIFO or device put in its place cannot hang the reader."""
    import os
    import stat

    path = Path(path)
    where = f"{path.name} in {path.parent.name or path.parent}"
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise _error(f"cannot read {where}: not a regular file")
            raw = f.read(limit + 1)
        if len(raw) > limit:
            raise _error(f"cannot read {where}: larger than {limit // 2**20} MB (a model "
                         "configuration is a few kB)")
        data = json.loads(raw)  # bytes: UTF-8 (a BOM too), -16 or -32 as JSON allows
    except CheckpointError:
        raise
    except (OSError, ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError,
        # ints over Python's digit limit, nesting deeper than the stack are ValueError/Recursion
        raise _error(f"cannot read {where}: {one_line(e, 200)}") from None
    if not isinstance(data, dict):
        raise _error(f"{where} is not a JSON object")
    return data


def read_weights(folder: Path) -> dict[str, Tensor]:
    """The tensors of a model folder: ``model.safetensors``, else ``pytorch_model.bin`` (weights
    only: a pickle with code in it is refused before anything in it runs)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            try:
                return _read_state_dict(folder / name)[0]
            except CheckpointError as e:
                raise _error(f"{folder}: {one_line(e)}") from None
    if (folder / "model.safetensors.index.json").is_file():
        raise _error(f"{folder} holds a sharded checkpoint (model.safetensors.index.json); "
                     "PruneLens reads single-file weights (model.safetensors)")
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
    raise _error(f"{folder} has no model.safetensors or pytorch_model.bin (found: {present})")
