"""Cached attention maps of pruned models, the Fig. 3 grid, per-head maps and explanations
(``core.study`` through caches; the cells drawn by ``ui``)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from core import attention as attn
from core import study
from core.data import labels_of, top_k
from core.models import token_layout
from core.study import AttentionView

from .cache import byte_cached
from .data import base_model, dataset, image_tensor
from .keys import EXPECTED_ERRORS, ImageRef, ModelKey, PruneKey, Setup, cache_data, cache_resource
from .pruning import forward_only, pruned
from .ui import image_cell, overlay_cell


@byte_cached()
def attention_maps(key: PruneKey, ref: ImageRef, _image: Tensor) -> tuple[np.ndarray, ...]:
    """One (H, N, N) float32 array per block for ``_image`` (keyed by ``ref``)."""
    with forward_only(key) as net:
        return study.attention_maps(net, _image)


# Set when a Prune page run has finished: the grid's warm-up waits for it, so that it does not
# compete with the first visitor's first page for the two cores.
PRUNE_PAGE_SHOWN = threading.Event()


def warm_up_grid(exp=None, wait_s: float = 30.0,
                 stop: Callable[[], bool] = lambda: False) -> None:
    """Fill the caches of the default Attention page: the default grid criteria's scores and
    the attention maps of every cell for its first image (``ui.default_image``: validation
    image 0, or a shipped photo for a 224-pixel model). Run by ``dashboard/app.py`` in its
    warm-up job once a Prune page has been shown (or after ``wait_s``), one cell at a time
    whenever no page has run for ``session.QUIET_S``, so that it neither slows the pages a user
    is looking at nor leaves the first visit to the Attention page to compute; a criterion that
    fails is left to the page to report. ``stop()``: give up (the job was cancelled)."""
    from dashboard import session

    from .data import setup
    from .keys import RATIOS, Experiment
    from .ui import default_grid_criteria, default_image

    deadline = time.monotonic() + wait_s
    while not PRUNE_PAGE_SHOWN.wait(0.1) and time.monotonic() < deadline and not stop():
        pass
    if stop():
        return
    exp = exp or Experiment()
    s = setup(exp)
    ref = default_image(s)
    image, _ = image_tensor(s, ref)
    criteria = default_grid_criteria(exp)
    for crit in criteria:
        for r in RATIOS:
            # between cells: never holding a computation a page awaits
            session.wait_quiet(stop=stop)
            if stop():
                return
            try:
                attention_maps(s.key(crit, r), ref, image)
            except EXPECTED_ERRORS:
                break
    # the page's default view once: its first drawing also imports the colour maps
    # (matplotlib, ~0.5 s), which would otherwise fall on the first visit
    last = len(study.head_counts(s.base.model)) - 1
    session.wait_quiet(stop=stop)
    if not stop():
        attention_grid(s, criteria, RATIOS, ref, AttentionView("cls", last, None))


@dataclass
class Grid:
    cells: list[list[np.ndarray | None]]
    similarity: np.ndarray
    image: np.ndarray
    errors: dict[str, str] = field(default_factory=dict)
    vmax: float | None = None  # the shared colour scale's top; None: each cell its own max


def attention_grid(s: Setup, criteria: list[str], ratios: tuple[float, ...], ref: ImageRef,
                   view: AttentionView, shared: bool = False,
                   progress: Callable[[float, str], None] | None = None) -> Grid:
    """Fig. 3 of SNP (``study.attention_grid``): rows = criteria, columns = pruning ratios;
    each cell the attention over the image and its cosine similarity to the dense model's
    map. A criterion that fails (e.g. no calibration data) leaves its row empty and reports
    why in ``errors``. ``shared``: one colour scale for every cell (0 → the largest value in
    the grid) instead of each cell stretched to its own maximum."""
    image, _ = image_tensor(s, ref)
    grid = s.base.model.grid_size
    view = replace(view, layout=token_layout(s.base.model))  # skip dist/register tokens
    g = study.attention_grid(lambda c, r: attention_maps(s.key(c, r), ref, image), criteria,
                             ratios, view, expected=EXPECTED_ERRORS, progress=progress)
    vmax = (max(float(np.max(r)) for rows in g.rows for r in rows if r is not None)
            if shared else None)
    dense_cell = overlay_cell(image, g.dense, grid, vmax=vmax)
    cells = [[None if row is None else dense_cell if row is g.dense
              else overlay_cell(image, row, grid, vmax=vmax) for row in rows] for rows in g.rows]
    return Grid(cells, g.similarity, image_cell(image), g.errors, vmax)


def head_maps(s: Setup, key: PruneKey, ref: ImageRef, layer: int,
              shared: bool = False) -> tuple[list, list, float | None]:
    """Per-head CLS attention of block ``layer``: (dense cells, pruned cells, the shared
    colour scale's top or None when each cell is scaled to its own maximum)."""
    image, _ = image_tensor(s, ref)
    grid, layout = s.base.model.grid_size, token_layout(s.base.model)
    rows = []
    for k in (key.at(0.0), key):
        a = torch.from_numpy(attention_maps(k, ref, image)[layer])[None]
        rows.append([attn.cls_attention(a, h, layout)[0] for h in range(a.shape[1])])
    vmax = max(float(r.max()) for row in rows for r in row) if shared else None
    cells = [[overlay_cell(image, r, grid, vmax=vmax) for r in row] for row in rows]
    return cells[0], cells[1], vmax


@cache_resource(show_spinner=False, max_entries=8)
def _head_counts(model: ModelKey) -> tuple[int, ...]:
    return tuple(study.head_counts(base_model(model).model))


def num_blocks(s: Setup) -> int:
    return len(_head_counts(s.model_key))


def num_heads(s: Setup, layer: int) -> int:
    return _head_counts(s.model_key)[layer]


@cache_data(show_spinner=False, max_entries=64)
def explanations(key: PruneKey, ref: ImageRef, fusion: str, discard: float,
                 target: int | None, _image: Tensor) -> dict:
    """For the dense model and ``key``: prediction, and one (H, W) heat map in [0, 1] per
    method of ``study.METHODS`` (``study.explain_point`` of the cached pruning result: the
    numbers of ``study.explain_pair`` with the same settings)."""
    return study.explain_point(base_model(key.model).model, pruned(key), _image, target,
                               fusion, discard)


@cache_data(show_spinner=False, max_entries=64)
def top5(key: PruneKey, ref: ImageRef, _image: Tensor) -> list[tuple[str, float]]:
    """The 5 most probable classes of ``key``'s model for ``_image`` (keyed by ``ref``) with
    their softmax confidences (``core.data.top_k``), named by the model's own labels
    (``id2label`` / timm's ``label_names``), else by the dataset's classes."""
    names = labels_of(base_model(key.model).model, dataset(key.data)[0].classes)
    with forward_only(key) as net, torch.no_grad():
        return top_k(net, net(_image[None]), k=5, names=names)
