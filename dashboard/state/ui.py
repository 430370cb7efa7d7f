"""Helpers the pages share for what they draw: the error guard, notices, the sidebar summary,
labels, and the image cells (attention and attribution heat maps over the picture)."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import streamlit as st
import torch
from torch import Tensor

from core import attention as attn
from core.data import photos_are_default
from core.data.photos import DEFAULT_PHOTO, photo_names
from core.models import CheckpointError, get_adapter, token_layout
from core.models.checkpoint import one_line
from dashboard.text import md

from .catalogue import has_checkpoint, pruner_info, pruner_names
from .data import accept_image_upload, dense_cost, model_preprocessing, server_device_line
from .keys import (CELL_PX, EXPECTED_ERRORS, IMAGE_SUFFIXES, MAX_IMAGE_MB, Experiment,
                   ImageRef, Setup)
from .widgets import (set_flag, take_flag, upload_name, use_trained_checkpoint,
                      widget_default, widget_follow)

log = logging.getLogger("prunelens.dashboard")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes torch puts in its messages
# a session's upload, /tmp/prunelens-uploads-…/<session token>/<kind>/<digest>/<file name>
UPLOAD_PATH = re.compile(r"(?:/[^\s'\"/]+)*/prunelens-uploads-[^\s'\"]*")


@contextmanager
def page_errors() -> Iterator[None]:
    """Show any error of the page body as ``st.error`` with its reason, never a traceback
    page. (st.stop / st.rerun are BaseExceptions and pass through.)"""
    try:
        yield
    except EXPECTED_ERRORS as e:
        st.error(md(_reason(e)), icon=":material/error:")
    except Exception as e:
        log.exception("dashboard page failed")
        st.error(f"Unexpected error ({type(e).__name__}): {md(_reason(e))}",
                 icon=":material/error:")


def _reason(e: BaseException) -> str:
    """One readable line: checkpoint errors and torch's unpickling refusal (a coloured essay)
    cut to their first line without ANSI codes; others without ANSI codes."""
    if isinstance(e, CheckpointError) or "Weights only load failed" in str(e):
        return public(one_line(e))
    msg = ANSI.sub("", str(e)).strip() or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing entry {msg}"
    return public(msg)


RUN_STORE = "[run store]"  # what messages say instead of the run store's folder


def public(message: str) -> str:
    """``message`` without the server's paths: a data root becomes its name (as the folder
    choices show it: ``data/flowers``), the run store's folder :data:`RUN_STORE`, a session's
    upload its file name (the temporary folder holds the session's private token)."""
    from core.data.roots import data_roots
    from core.runs import default_root

    runs = default_root()
    names = {str(root): root.name for root in data_roots() if len(root.parts) > 1}
    names.update({str(r): RUN_STORE for r in (runs, runs.absolute(), runs.resolve())
                  if len(r.parts) > 1})
    for path in sorted(names, key=len, reverse=True):
        message = message.replace(path, names[path])
    return UPLOAD_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], message)


def untrained_notice(s: Setup, where: str) -> None:
    """Attention maps of an untrained model are noise: say so, and offer the trained one."""
    if s.base.trained:
        return
    text = (s.base.note or "This model is **untrained** (pruning at initialisation).") + (
        " Attention maps and attributions of an untrained model are noise, not a property of "
        "the criterion.")
    st.warning(text, icon=":material/warning:")
    if has_checkpoint(s.exp.preset, s.exp.dataset) and s.exp.source != "checkpoint":
        st.button(f"Use the trained {md(s.exp.preset)} checkpoint ({md(s.exp.dataset)})",
                  key=f"{where}_use_trained", on_click=use_trained_checkpoint, type="primary")


def sidebar_summary(exp: Experiment) -> None:
    """The experiment in two lines, the way back to change it (pages other than Prune) and
    the device the server computes on."""
    with st.sidebar:
        st.header("Setup", divider="gray")
        src = {"checkpoint": "trained" if has_checkpoint(exp.preset, exp.dataset)
               else "untrained: no checkpoint", "init": "untrained",
               "upload": "uploaded", "folder": "model folder",
               "hub": "Hugging Face hub"}.get(exp.source, exp.source)
        name = {"hub": exp.hub_id, "folder": Path(exp.model_folder.removeprefix("hub:")).name,
                "upload": upload_name()}.get(exp.source) or exp.preset  # the model in use
        st.markdown(f"**{md(name)}** ({md(src)}) on **{md(exp.dataset)}**  \n"
                    f"{md(', '.join(exp.pruners)) or 'no criteria'} · {exp.sparsity:.0%} · "
                    + (f"{exp.pattern} (unstructured) · " if exp.pattern != "unstructured"
                       else "")
                    + f"{exp.scope} scope · seed {exp.seed}")
        st.page_link("pages/prune.py", label="Change on the Prune page", icon=":material/tune:")
        st.caption(md(server_device_line()))


_TOKEN_NAMES = {"cls": "class", "dist": "distillation"}
NO_CLASS_TOKEN = ("This model has no class token (it averages the patch tokens): each “CLS” "
                  "map shows the mean attention over all patch queries.")


def model_note(s: Setup) -> str:
    """What was loaded, in one short paragraph: family, special tokens, input size, mean/std,
    parameters and MACs (one image)."""
    model = s.base.model
    layout = token_layout(model)
    regs = sum(t.startswith("reg") for t in layout.prefix)
    tokens = [_TOKEN_NAMES.get(t, t) for t in layout.prefix if not t.startswith("reg")]
    tokens += [f"{regs} register"] if regs else []
    cost = dense_cost(s.model_key)
    C, H, W = model.input_shape
    cfg = getattr(model, "config", None)
    stats = (f" · mean {_floats(cfg.mean)}, std {_floats(cfg.std)}"
             if hasattr(cfg, "mean") and hasattr(cfg, "std") else "")
    text = (f"{get_adapter(model).family} · tokens: {', '.join(tokens) or 'none'} · "
            f"input {C}×{H}×{W}{stats} · {cost.params / 1e6:.2f} M parameters · "
            f"{cost.macs / 1e6:.1f} M MACs")
    return text + ("  \n" + NO_CLASS_TOKEN if layout.cls_index is None else "")


def no_class_token_note(s: Setup) -> str | None:
    """The one caption line for attention views of a model without a class token."""
    return NO_CLASS_TOKEN if token_layout(s.base.model).cls_index is None else None


def _floats(xs) -> str:
    return "(" + ", ".join(f"{float(x):.3g}" for x in xs) + ")"


def default_grid_criteria(exp: Experiment) -> list[str]:
    """The grid's rows: the criteria chosen on the Prune page (at most six); with none chosen,
    SNP's Fig. 3 rows (l2-norm, GM, reverse, SNP) when those pruners exist, else four fast
    single-shot ones."""
    names = pruner_names()
    chosen = [n for n in exp.pruners if n in names][:6]
    if chosen:
        return chosen
    fig3 = [n for n in ("l2-norm", "gm", "reverse", "snp") if n in names]
    if len(fig3) == 4:
        return fig3
    out: list[str] = []
    for n in ("magnitude", "snip", "attention-snip", "random"):
        if len(out) >= 4:
            break
        if n in names and n not in out:
            out.append(n)
    return out


def pruner_label(name: str) -> str:
    info = pruner_info(name)
    tags = [t for t, on in (("structured", info["kind"] == "structured"),
                            ("iterative", info["iterative"] and info["kind"] != "structured"))
            if on]
    return f"{name} ({', '.join(tags)})" if tags else name


# ---------------------------------------------------------------------------- image cells

def _resized(image: Tensor, px: int) -> Tensor:
    """(3, px, px) on the CPU, whatever device ``image`` is on (cells become numpy)."""
    return torch.nn.functional.interpolate(image.detach().cpu()[None], size=(px, px),
                                           mode="bilinear",
                                           align_corners=False)[0]


def overlay_cell(image: Tensor, row: np.ndarray | Tensor, grid: tuple[int, int],
                 px: int = CELL_PX, vmax: float | None = None) -> np.ndarray:
    """Heat map of a (N-1,) row over the image, both at ``px``×``px`` → uint8 (px, px, 3).
    Colours run from 0 to ``vmax`` (a scale shared by several cells), or to the row's own
    maximum when ``vmax`` is None."""
    row = torch.as_tensor(row, dtype=torch.float32).cpu()
    heat = attn.patch_heatmap(row[None], grid, (px, px))[0]
    if vmax is not None:  # patch_heatmap stretches to the row's own max: undo it
        heat = heat * (float(row.clamp(min=0).max()) / max(float(vmax), 1e-12))
    return attn.overlay(_resized(image, px), heat, alpha=0.5, cmap="jet")


CMAP = "Jet"  # matplotlib's "jet" of the cells, as a plotly colour scale for the colour bar


def colour_bar(vmax: float | None) -> dict:
    """The colour bar of an attention grid: 0 → ``vmax`` (shared scale) or 0 → 1 of each
    cell's own maximum."""
    if vmax is None:
        return {"cmin": 0.0, "cmax": 1.0, "title": "fraction of<br>each cell's max",
                "colorscale": CMAP}
    return {"cmin": 0.0, "cmax": float(vmax), "title": "attention<br>(shared scale)",
            "colorscale": CMAP}


def scale_note(vmax: float | None) -> str:
    """One sentence saying which colour scaling is on."""
    if vmax is None:
        return ("Colours: each cell is scaled to its own maximum (red = that cell's largest "
                "value), so a near-uniform map looks as hot as a peaked one.")
    return (f"Colours: one scale shared by every cell, from 0 to {vmax:.3g} (the largest "
            "attention value shown), so colours compare across cells.")


def image_cell(image: Tensor, px: int = CELL_PX) -> np.ndarray:
    big = _resized(image, px)
    return (big.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def heat_cell(image: Tensor, heat: np.ndarray, px: int = 2 * CELL_PX) -> np.ndarray:
    """A (H, W) heat map in [0, 1] over the image, both at ``px``×``px``."""
    h = torch.nn.functional.interpolate(torch.as_tensor(heat)[None, None], size=(px, px),
                                        mode="bilinear", align_corners=False)[0, 0]
    return attn.overlay(_resized(image, px), h.clamp(0, 1), alpha=0.5, cmap="jet")


# ---------------------------------------------------------------------------- long work

def follow_work(slot: str, signature, basis, fn, what: str, quick_s: float = 0.3):
    """Run ``fn(report)`` (``report(fraction, text)``) as the session's background job for
    ``slot`` and return its result. Past ``quick_s`` seconds the page shows a progress bar with
    an estimate of the time left and a Cancel button; cancelled (or the session gone), the page
    says so, offers to compute again, and stops there."""
    from . import job as jobs

    work = jobs.start(slot, lambda j: fn(j.progress), signature=signature, basis=basis,
                      restart=take_flag(f"{slot}_restart"), interrupt=True)
    box = st.empty()
    snap = jobs.follow(work, 0, quick_s)
    if snap["status"] == "running":
        with box.container():
            bar = st.progress(0.0, text=what)
            st.button("Cancel", key=f"{slot}_cancel", icon=":material/stop_circle:",
                      on_click=work.cancel, args=("cancelled",))
        while snap["status"] == "running":
            snap = jobs.follow(work, snap["version"], 0.5)
            bar.progress(snap["fraction"], text=f"{what} · {jobs.describe(snap)}")
    box.empty()
    if snap["status"] == "done":
        return work.result
    if snap["status"] == "failed":
        raise work.error if work.error is not None else RuntimeError(snap["reason"])
    st.warning(f"{what}: stopped after {snap['elapsed']:.0f} s ({md(snap['reason'])}).",
               icon=":material/stop_circle:")
    st.button("Compute again", key=f"{slot}_resume", icon=":material/play_arrow:",
              on_click=set_flag, args=(f"{slot}_restart",))
    st.stop()


IMAGE_SOURCES = ("validation sample", "photo", "upload")


def default_image_source(s: Setup) -> int:
    """Index in :data:`IMAGE_SOURCES` of the pages' first image: the shipped photos for
    224-pixel models (``core.data.photos_are_default``), else a validation sample."""
    return 1 if photos_are_default(s.data.image_size) else 0


def default_image(s: Setup) -> ImageRef:
    """The image the Attention page shows first (what the warm-up computes)."""
    return ImageRef(photo=DEFAULT_PHOTO) if default_image_source(s) else ImageRef(index=0)


def image_picker(where, s: Setup, prefix: str) -> ImageRef:
    """The image a page explains, chosen in ``where`` (a column): a validation sample by
    index, a shipped photo (the first choice for 224-pixel models) or an uploaded picture
    (widget keys ``{prefix}_image_source``, ``{prefix}_sample``, ``{prefix}_photo``,
    ``{prefix}_upload``)."""
    widget_follow(f"{prefix}_image_source", IMAGE_SOURCES[default_image_source(s)])
    src = where.radio("Image", IMAGE_SOURCES, key=f"{prefix}_image_source", horizontal=True)
    up, idx, photo = None, 0, ""
    if src == "upload":
        up = where.file_uploader("Picture (PNG, JPEG, …)", type=list(IMAGE_SUFFIXES),
                                 key=f"{prefix}_upload", max_upload_size=MAX_IMAGE_MB)
    elif src == "photo":
        widget_default(f"{prefix}_photo", DEFAULT_PHOTO)
        photo = where.selectbox("Photo (public domain, see assets/README.md)", photo_names(),
                                key=f"{prefix}_photo")
    else:
        idx = where.number_input(f"Validation sample (0–{len(s.val_set) - 1})", 0,
                                 len(s.val_set) - 1, value=0, step=1, key=f"{prefix}_sample")
    return chosen_image(s, src, up, idx, photo)


def chosen_image(s: Setup, source: str, upload, index: int, photo: str = "") -> ImageRef:
    """The picture a page explains: the uploaded file (the page stops with a hint until one
    is given), shipped photo ``photo`` or validation sample ``index``."""
    if source == "upload":
        if upload is None:
            st.info("Upload a picture, or switch back to a validation sample.")
            st.stop()
        return accept_image_upload(upload.name, upload.getvalue(), model_preprocessing(s))
    if source == "photo":
        return ImageRef(photo=photo or DEFAULT_PHOTO)
    return ImageRef(index=int(index))


def image_name(s: Setup, ref: ImageRef, label: int | None) -> str:
    """What the picture is, as plain text: its class, the photo's file name, or "uploaded"."""
    if label is not None:
        return s.classes[label]
    return ref.photo or "uploaded"


def top5_text(who: str, rows: list[tuple[str, float]]) -> str:
    """``"Top 5, dense model: **tabby, tabby cat** 62% · **tiger cat** 21% · …"`` as Markdown;
    the names are escaped (they come from the model's files), ``who`` is the caller's."""
    return f"Top 5, {who}: " + " · ".join(f"**{md(n, 80)}** {p:.0%}" for n, p in rows)
