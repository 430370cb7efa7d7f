"""Downloads of a model in the three formats ``core.models.save_model`` writes: PruneLens
``.safetensors``, a Hugging Face ``save_pretrained`` folder (zipped) and ONNX.

A format a model cannot be saved in (blocks of different shapes have no transformers 5 config) is
found before any file is written (``hf_layout`` reads the config only) and shown as its reason
instead of a button. Files are built only when the user clicks (a deferred download), in a
temporary folder of their own, removed right after, and refused beyond
:data:`EXPORT_MAX_MB`.
"""
from __future__ import annotations

import functools
import logging
import tempfile
import re
import zipfile
from pathlib import Path
from typing import Callable

import streamlit as st
from torch import nn

from core import lineage as core_lineage
from core.models import CheckpointError, get_adapter, load_model, save_model
from core.models.checkpoint import one_line
from dashboard.text import md

from .data import base_model
from .keys import ModelKey, PruneKey, cache_data, cache_resource
from .pruning import pruned, pruned_model
from .ui import public

log = logging.getLogger("prunelens.dashboard")

FORMATS = {"prunelens": "PruneLens (.safetensors)", "hf": "Hugging Face (.zip)",
           "onnx": "ONNX (.onnx)"}
SUFFIX = {"prunelens": ".safetensors", "hf": ".zip", "onnx": ".onnx"}
EXPORT_MAX_MB = 1024  # DeiT-B is ~350 MB in each format


def export_problems(model: nn.Module) -> dict[str, str | None]:
    """Per format, why ``model`` cannot be saved in it (None: it can). Nothing is written."""
    from core.models.export import hf_layout

    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > EXPORT_MAX_MB * 2**20:
        too_big = (f"the model's weights are {size / 2**20:.0f} MB; downloads are limited to "
                   f"{EXPORT_MAX_MB} MB")
        return dict.fromkeys(FORMATS, too_big)
    hf = None
    family = get_adapter(model).family
    if family != "vit":
        hf = f"transformers has no {family} model; use ONNX or PruneLens"
    else:
        try:
            hf_layout(model.config)
        except CheckpointError as e:
            hf = one_line(e).replace("; save with format='onnx' or format='prunelens' instead",
                                     "; use ONNX or PruneLens")
    return {"prunelens": None, "hf": hf, "onnx": None}


def export_bytes(model: nn.Module, fmt: str, lineage: list | None = None) -> bytes:
    """``model`` saved as ``fmt`` (a zip of the folder for ``"hf"``), built in a temporary
    folder that is removed afterwards. ``lineage``: where the model comes from
    (:mod:`core.lineage` steps); a PruneLens file records it with an "exported" step last.
    ValueError beyond :data:`EXPORT_MAX_MB`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    with tempfile.TemporaryDirectory(prefix="prunelens-export-") as tmp:
        out = Path(tmp) / f"model{SUFFIX[fmt]}"
        if fmt == "hf":
            folder = save_model(model, Path(tmp) / "model", format="hf")
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in sorted(folder.iterdir()):
                    zf.write(f, f"model/{f.name}")
        elif fmt == "prunelens" and lineage:
            save_model(model, out, format=fmt,
                       lineage=[*lineage, core_lineage.exported(fmt, out.name)])
        else:
            save_model(model, out, format=fmt)
        size = out.stat().st_size
        if size > EXPORT_MAX_MB * 2**20:
            raise ValueError(f"the {FORMATS[fmt]} file is {size / 2**20:.0f} MB; downloads are "
                             f"limited to {EXPORT_MAX_MB} MB")
        return out.read_bytes()


def download_buttons(problems: dict[str, str | None], make: Callable[[str], bytes], stem: str,
                     key: str) -> None:
    """One download button per format (its file made by ``make(fmt)`` on click), or the
    reason the model cannot be saved in it."""
    for col, fmt in zip(st.columns(len(FORMATS)), FORMATS):
        if problems.get(fmt):
            col.caption(f"**{FORMATS[fmt]}** not available: {md(problems[fmt])}")
            continue
        col.download_button(FORMATS[fmt], data=functools.partial(_logged, make, fmt),
                            file_name=f"{stem}{SUFFIX[fmt]}", mime="application/octet-stream",
                            key=f"{key}_{fmt}", on_click="ignore", icon=":material/download:")


def _logged(make: Callable[[str], bytes], fmt: str) -> bytes:
    try:
        return make(fmt)
    except Exception:
        log.exception("building the %s download failed", fmt)
        raise


# ---------------------------------------------------------------------------- pruned models

@cache_data(show_spinner=False, max_entries=64)
def pruned_problems(key: PruneKey) -> dict[str, str | None]:
    p = pruned(key)
    return export_problems(p.small if p.small is not None else base_model(key.model).model)


def pruned_lineage(key: PruneKey) -> list:
    """dense → pruned (criterion, sparsity, seed, scope, calibration, pattern) of ``key``."""
    m = key.model
    chain = [core_lineage.dense(model_stem(m).removeprefix("prunelens_"), m.dataset, m.source)]
    if key.sparsity > 0:
        chain.append(core_lineage.pruned(key.pruner, key.sparsity, key.seed, key.scope,
                                         key.calib, key.pattern))
    return chain


def _pruned_bytes(key: PruneKey, fmt: str) -> bytes:
    return export_bytes(pruned_model(key), fmt, pruned_lineage(key))


def model_stem(key: ModelKey) -> str:
    """A file-name stem naming the model a download came from: the preset and its dataset,
    the model folder's (or hub repository's) name, or the uploaded file's name."""
    if key.source in ("folder", "hub") and key.folder:
        name = Path(key.folder).name
        if name and all(c in "0123456789abcdef" for c in name) and len(name) >= 7:
            name = Path(key.folder).parents[1].name.removeprefix("models--")  # hub snapshot
    elif key.source == "upload" and key.upload:
        name = Path(key.upload).stem
    else:
        name = f"{key.preset}_{key.dataset}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[:60] or "model"
    return f"prunelens_{slug}"


def pruned_downloads(keys: dict[str, PruneKey]) -> None:
    """A popover with the three downloads of one pruned model (criterion chosen)."""
    if not keys:
        return
    with st.popover("Download a pruned model", icon=":material/download:"):
        name = st.selectbox("Pruned model to download", list(keys), key="prune_export_criterion")
        key = keys[name]
        st.caption("Masks are baked in (zeros in the weights); structured criteria give the "
                   "smaller model.")
        download_buttons(pruned_problems(key), functools.partial(_pruned_bytes, key),
                         f"{model_stem(key.model)}_{name}_{round(key.sparsity * 100)}"
                         + (f"_{key.pattern.replace(':', 'of')}" if key.pattern else ""),
                         "prune_export")


# ---------------------------------------------------------------------------- runs

@cache_resource(show_spinner=False, max_entries=2)
def _checkpoint_model(path: str, mtime: float) -> nn.Module:
    return load_model(path).eval()


def _checkpoint_bytes(path: Path, fmt: str) -> bytes:
    if fmt == "prunelens":
        size = path.stat().st_size
        if size > EXPORT_MAX_MB * 2**20:
            raise ValueError(f"the checkpoint is {size / 2**20:.0f} MB; downloads are limited "
                             f"to {EXPORT_MAX_MB} MB")
        return path.read_bytes()
    return export_bytes(load_model(path).eval(), fmt)


def run_downloads(path: Path, stem: str) -> None:
    """The three downloads of a run's checkpoint, or why there are none."""
    if not path.exists():
        st.caption("No epoch finished: no checkpoint to download.")
        return
    try:
        problems = export_problems(_checkpoint_model(str(path), path.stat().st_mtime))
    except (CheckpointError, OSError) as e:
        st.caption(f"The checkpoint cannot be read: {md(public(one_line(e)))}")
        return
    download_buttons(problems, functools.partial(_checkpoint_bytes, path), stem, "runs_dl")
