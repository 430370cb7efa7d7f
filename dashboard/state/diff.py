"""The Diff page's state: which two models (dense, a pruned point, a run's checkpoint), the
comparison as this session's job (``core.diff.compare_models`` over the validation subset,
then ``core.diff.summarize`` and ``core.report.diff_files``), one example's side-by-side, the
gallery of flipped examples, and the lineage tree of the run store."""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
import torch
from torch import Tensor, nn

from core import attention as attn
from core import report, study
from core.data import labels_of, top_k
from core.diff import attention_change, compare_models, summarize
from core.models import token_layout
from dashboard import plots

from . import job
from .data import val_subset
from .jobs import run_store
from .keys import Setup
from .owners import run_access, visible_runs
from .pruning import pruned_model
from .ui import image_cell, overlay_cell

K_JOB = "diff_job"  # session state: the comparison this session follows
KINDS = {"dense": "dense (the Prune page's model)", "pruned": "pruned (criterion × sparsity)",
         "run": "a run's checkpoint"}
SORTS = {"change": "attention change", "drop": "confidence drop"}
FLIPPED = ("lost", "gained", "changed_wrong", "disagree")
BATCH = 32
_LOCK = threading.Lock()  # the job's two models are hooked by one detail view at a time


@dataclass(frozen=True)
class Side:
    """One model of the pair: ``kind`` of :data:`KINDS`, ``pruner`` and ``sparsity`` for a
    pruned point, ``run_id`` for a run's last checkpoint."""

    kind: str = "dense"
    pruner: str = ""
    sparsity: float = 0.0
    run_id: str = ""

    @property
    def label(self) -> str:
        if self.kind == "pruned":
            return f"{self.pruner} at {self.sparsity:.0%}"
        if self.kind == "run":
            return f"run {self.run_id}"
        return "dense"


def run_choices() -> dict[str, str]:
    """Run id → label, of the runs this session may see that have a checkpoint."""
    store = run_store()
    runs = visible_runs(store)
    out = {}
    for r in runs.itertuples():
        if store.checkpoint_path(r.id).exists():
            what = f"{r.pruner} {r.sparsity:.0%}" if isinstance(r.pruner, str) else "dense"
            out[r.id] = f"{r.name or r.id} · {r.model} · {what} · {r.status}"
    return out


def _checkpoint(side: Side) -> str | None:
    """The checkpoint file of a run side, checked in the page's thread (the session's
    owner decides what it may see); a readable ValueError when the run is gone."""
    if side.kind != "run":
        return None
    store = run_store()
    path = store.checkpoint_path(side.run_id) if side.run_id else None
    if not side.run_id or run_access(store, side.run_id) is None or not path.exists():
        raise ValueError(f"run {side.run_id or '(none)'} is no longer in the run store (deleted, "
                         "or it has no checkpoint): choose another model")
    return str(path)


def load(s: Setup, side: Side, path: str | None = None) -> nn.Module:
    """A private copy of the model ``side`` names (compare_models switches eval/train)."""
    if side.kind == "pruned":
        return pruned_model(s.key(side.pruner, side.sparsity))
    if side.kind == "run":
        from core.models import load_model
        return load_model(path or _checkpoint(side))
    return copy.deepcopy(s.base.model)


def current_id() -> str | None:
    return st.session_state.get(K_JOB)


def get(job_id: str | None) -> job.Job | None:
    found = job.find(job_id)
    return found if found is not None and found.kind == "diff" else None


def cancel(job_id: str) -> None:
    found = get(job_id)
    if found is not None:
        found.cancel()


def _view(snap: dict) -> dict:
    return {**snap, "df": None, "summary": None, "files": {}, "models": None, **snap["results"]}


def start(s: Setup, a: Side, b: Side, n: int) -> str:
    """Start comparing A and B on the first ``n`` validation images (``study.val_subset``) as
    this session's job; returns its id. A run that is gone raises here, in the page."""
    paths = _checkpoint(a), _checkpoint(b)
    n = min(int(n), len(s.val_set))
    label = f"A: {a.label} · B: {b.label} · {study.val_subset_label(n, len(s.val_set))}"
    job_id = job.start("diff", lambda j: _work(j, s, a, b, n, paths), key=K_JOB, label=label,
                       info={"a": a, "b": b, "n": n, "setup": s}, view=_view).id
    st.session_state[K_JOB] = job_id
    return job_id


def _work(j: job.Job, s: Setup, a: Side, b: Side, n: int, paths) -> None:
    j.progress(0.0, "loading the models")
    ma, mb = load(s, a, paths[0]), load(s, b, paths[1])
    df = compare_models(ma, mb, val_subset(s.data, n), batch_size=BATCH,
                        progress=j.progress, cancel=j.cancel_event)
    summary = summarize(df, classes=list(s.classes))
    j.publish(df=df, summary=summary, models=(ma, mb))
    if df.attrs.get("cancelled"):
        raise study.Cancelled(f"after {len(df)} images")
    setup = {"model A": a.label, "model B": b.label, "base model": s.base.label,
             "dataset": s.exp.dataset,
             "validation images": study.val_subset_label(n, len(s.val_set))}
    j.publish(files=report.diff_files(df, summary, setup))
    j.progress(1.0, "done")


# ---------------------------------------------------------------------------- gallery

def gallery(df: pd.DataFrame, kinds: list[str], label: int | None, sort: str) -> pd.DataFrame:
    """The flipped rows of ``df`` of ``kinds`` (and true class ``label``), largest attention
    change or confidence drop (``conf_a − conf_b``) first."""
    rows = df[df["flip"].isin(kinds)]
    if label is not None:
        rows = rows[rows["label"] == label]
    by = rows["rollout_change"] if sort == "change" else rows["conf_a"] - rows["conf_b"]
    return rows.loc[by.sort_values(ascending=False, kind="stable").index]


def image(s: Setup, n: int, index: int) -> Tensor:
    return val_subset(s.data, n)[int(index)][0]


def gallery_cells(s: Setup, n: int, rows: pd.DataFrame) -> tuple[list, list[str]]:
    names = s.classes
    cells = [image_cell(image(s, n, r.index)) for r in rows.itertuples()]
    captions = [f"#{r.index} {names[r.pred_a]}>{names[r.pred_b]}" for r in rows.itertuples()]
    return cells, captions


def _diff_cell(diff: np.ndarray, grid: tuple[int, int], px: int) -> np.ndarray:
    """B − A over the patch grid, blue (A more) to red (B more), 0 white."""
    from matplotlib import colormaps

    top = max(float(np.abs(diff).max()), 1e-12)
    z = torch.as_tensor(diff / top, dtype=torch.float32).reshape(1, 1, *grid)
    z = torch.nn.functional.interpolate(z, size=(px, px), mode="nearest")[0, 0].numpy()
    return (colormaps["RdBu_r"]((z + 1) / 2)[..., :3] * 255).round().astype(np.uint8)


def detail(s: Setup, snap: dict, index: int) -> dict:
    """One example, A against B: ``picture`` (the image, A's and B's last-layer attention
    and rollout, the rollout difference B − A, as one uint8 image), ``change`` (per layer and
    head, ``core.diff.attention_change``; empty when the depths differ), ``top5`` (A's, B's)."""
    ma, mb = snap["models"]
    x = image(s, snap["n"], index)
    rows, tops = {}, []
    with _LOCK, torch.no_grad():
        for who, m in (("A", ma), ("B", mb)):
            m.eval()
            maps = attn.capture_attention(m, x[None])
            layout = token_layout(m)
            rows[who] = (attn.cls_attention(maps[-1], None, layout)[0].float().numpy(),
                         attn.rollout_row(maps, layout)[0].float().numpy())
            tops.append(top_k(m, m(x[None])[0], k=5, names=labels_of(m, s.classes)))
        same_depth = len(attn.attention_modules(ma)) == len(attn.attention_modules(mb))
        change = attention_change(ma, mb, x) if same_depth else pd.DataFrame(
            columns=["layer", "head", "change"])
    grid = tuple(ma.grid_size)
    px = image_cell(x).shape[0]
    cells = [image_cell(x)]
    for who in ("A", "B"):
        cells += [overlay_cell(x, rows[who][0], grid), overlay_cell(x, rows[who][1], grid)]
    ra, rb = (r[1] / max(float(r[1].sum()), 1e-12) for r in (rows["A"], rows["B"]))
    cells.append(_diff_cell(rb - ra, grid, px))
    captions = ["image", "A last layer", "A rollout", "B last layer", "B rollout",
                "rollout B-A"]
    return {"picture": plots.picture_grid(cells, captions, len(cells)), "change": change,
            "top5": tops}


# ---------------------------------------------------------------------------- lineage

def lineage_nodes() -> list[tuple[int, str, Side | None]]:
    """The run store's lineage tree, depth first: (depth, the node's line — its edge's
    operation, accuracy and MACs —, the Side that loads it, None when none does: a run this
    session may not see, or one deleted since)."""
    from core import lineage

    store = run_store()
    seen = set(run_choices())  # the runs this session may see, with a checkpoint
    out = []
    for depth, r in lineage.tree(store.lineage()):
        p, op = r["params"], r["operation"]
        acc = "–" if r["accuracy"] is None or r["accuracy"] != r["accuracy"] \
            else f"{r['accuracy']:.1%}"
        macs = "–" if r["macs"] is None or r["macs"] != r["macs"] else f"{r['macs'] / 1e6:.3g} M"
        side = None
        if r["run_id"] in seen:
            side = Side("run", run_id=r["run_id"])
        elif op == "pruned" and "run" not in p:
            side = Side("pruned", p["criterion"], float(p["sparsity"]))
        elif op == "dense":
            side = Side("dense")
        if r["run_id"] and r["run_id"] not in seen:
            p = {**p, "run": p.get("run", r["run_id"])}
        out.append((depth, f"{lineage.label(op, p)} · accuracy {acc} · MACs {macs}", side))
    return out


def pick(who: str, side: Side) -> None:
    """Set model ``who``'s widgets to ``side`` (a button's callback: before they render)."""
    st.session_state[f"diff_{who}_kind"] = side.kind
    if side.kind == "pruned":
        st.session_state[f"diff_{who}_pruner"] = side.pruner
        st.session_state[f"diff_{who}_sparsity"] = int(round(side.sparsity * 100))
    elif side.kind == "run":
        st.session_state[f"diff_{who}_run"] = side.run_id


def pick_nodes(nodes: list[tuple[int, str, Side | None]]) -> None:
    """The lineage tree's button: the nodes chosen for A and B become the two models."""
    for who in ("a", "b"):
        i = st.session_state.get(f"diff_node_{who}")
        if i is not None and nodes[i][2] is not None:
            pick(who, nodes[i][2])
