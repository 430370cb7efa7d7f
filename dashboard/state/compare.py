"""The Compare page's background job (``job.py``): ``core.study.sweep`` over criteria ×
sparsities × seeds, then the Fig. 3 grid, optional layer sensitivity and every export file
(``core.report.comparison_files``), with progress and cancel. One comparison per browser session
(it ends with the session; the session keeps its job id); a comparison is the same computation
as ``python -m core sweep`` with the command line :func:`command` gives."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core import report, study

from . import job
from .data import base_model, dataset_options
from .folders import HUB
from .keys import Setup

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SENSITIVITY_RATIOS = (0.3, 0.6, 0.9)
TOME_RS = (0, 2, 4, 8, 13, 16)  # the r multiselect's choices (tokens merged per block)
K_JOB = "compare_job"  # session state: the comparison this session follows


@dataclass(frozen=True)
class Spec:
    """What a comparison runs (the form's values)."""

    criteria: tuple[str, ...]
    sparsities: tuple[float, ...]
    seeds: int
    val: int
    calib: int
    scope: str
    sensitivity: bool = False
    rs: tuple[int, ...] = (0,)  # ToMe r per pruned point: the joint axis
    latency: bool = False


def _view(snap: dict) -> dict:
    """A comparison's snapshot for its page: the generic fields, ``spec`` and ``command``,
    and ``df``, ``sensitivity``, ``kinds``, ``files`` (empty until computed)."""
    return {**snap, "df": None, "sensitivity": None, "kinds": {}, "files": {},
            **snap["results"]}


def current_sweep_id() -> str | None:
    """The comparison this session started last (its job id), if any."""
    return st.session_state.get(K_JOB)


def follow_sweep(job_id: str) -> None:
    st.session_state[K_JOB] = job_id


def get_sweep(job_id: str | None) -> job.Job | None:
    found = job.find(job_id)
    return found if found is not None and found.kind == "compare" else None


def cancel_sweep(job_id: str) -> None:
    sweep = get_sweep(job_id)
    if sweep is not None:
        sweep.cancel()


def parse_sparsities(text: str) -> tuple[float, ...]:
    """``"0, 10, 50, 99"`` (percent) → (0.0, 0.1, 0.5, 0.99); ValueError naming the bad entry."""
    out = []
    for part in text.replace(";", ",").split(","):
        part = part.strip().rstrip("%").strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise ValueError(f"sparsity {part!r} is not a number (write percentages: "
                             "0, 10, 50, 99)") from None
        if not 0 <= v < 100:
            raise ValueError(f"sparsity {part}% is not in [0, 100)")
        out.append(round(v / 100, 6))
    if not out:
        raise ValueError("enter at least one sparsity")
    return tuple(sorted(set(out)))


def command(s: Setup, spec: Spec) -> str:
    """The ``python -m core sweep`` line computing the same numbers, on the model actually
    used: the preset (``--untrained`` where it ran at its initialisation), the model folder as
    loaded (a hub id as its id), or for an upload, which lives in the session's private folder,
    the file's name after a ``#`` line saying what to pass."""
    src, key = s.exp.source, s.model_key
    model, note, revision = s.exp.preset, "", None
    if src == "hub":
        from .folders import parse_hub_id
        model, revision = parse_hub_id(s.exp.hub_id)
    elif src == "folder":
        hub = s.exp.model_folder.strip()
        model = hub[len(HUB):] if hub.startswith(HUB) else key.folder
    elif src == "upload":
        from .data import _uploaded_architecture

        model = Path(key.upload).name
        if _uploaded_architecture(key.upload) is not None:
            note = f"# the model was uploaded ({model}): give your copy of that file to --model\n"
        else:
            model = "MODEL.safetensors"
            note = (f"# the model was uploaded ({Path(key.upload).name}: weights for "
                    f"{s.exp.preset}, which the command line cannot read as they are): save it "
                    "first as a PruneLens file (core.models.save_model) and pass that file "
                    "to --model\n")
    untrained = src == "init" or (src == "checkpoint" and not s.base.trained)
    return note + report.sweep_command(
        model, s.exp.dataset, spec.criteria, spec.sparsities, range(spec.seeds),
        min(spec.val, len(s.val_set)), spec.calib, spec.scope, "comparison",
        dataset_options(s.data), untrained and src != "upload",
        s.exp.seed if src == "init" else 0, revision, spec.rs, spec.latency) + (
            " --sensitivity" if spec.sensitivity else "")


def job_label(s: Setup, spec: Spec) -> str:
    """What the page says a comparison measures (the model, its size, the validation images)."""
    merging = f" × {len(spec.rs)} ToMe r" if spec.rs != (0,) else ""
    return (f"{s.base.label} · {len(spec.criteria)} criteria × {len(spec.sparsities)} "
            f"sparsities{merging} × {spec.seeds} seed(s) · "
            f"{study.val_subset_label(spec.val, len(s.val_set))}")


def start_sweep(s: Setup, spec: Spec) -> str:
    """Start the comparison as this session's job; returns its job id at once."""
    if not spec.criteria:
        raise ValueError("choose at least one criterion")
    if not spec.rs:
        raise ValueError("choose at least one token-merging r (0: no merging)")
    cmd = command(s, spec)
    return job.start("compare", lambda j: _work(j, s, spec, cmd), key=K_JOB,
                     label=job_label(s, spec), info={"spec": spec, "command": cmd},
                     view=_view).id


def _work(j: job.Job, s: Setup, spec: Spec, cmd: str) -> None:
    def progress(lo: float, hi: float):
        return lambda frac, text: j.progress(lo + (hi - lo) * frac, text)

    model = base_model(s.model_key).model  # shared: sweep and fig3 work on copies
    n = min(spec.val, len(s.val_set))
    seeds = list(range(spec.seeds))
    split = 0.75 if spec.sensitivity else 0.92
    df = study.sweep(model, s.train_set, s.val_set, list(spec.criteria), spec.sparsities,
                     calib=spec.calib, seeds=seeds, val_samples=n, scope=spec.scope,
                     progress=progress(0.0, split), cancel=j.cancel_event, rs=spec.rs,
                     latency=spec.latency)
    kinds = {c: study.criterion_info(c).kind for c in spec.criteria}
    j.publish(df=df, kinds=kinds)
    if df.attrs.get("cancelled"):
        raise study.Cancelled(f"after {len(df)} points")
    progress(split, split)(0.0, "Fig. 3 grid")
    fig, sim, _ = report.grid_outputs(model, s.train_set, s.val_set, spec.criteria,
                                      spec.sparsities, 0, spec.calib, spec.scope, 0)
    sens = None
    if spec.sensitivity:
        sens = study.layer_sensitivity(model, s.train_set, s.val_set, list(spec.criteria),
                                       SENSITIVITY_RATIOS, calib=spec.calib, seed=0,
                                       val_samples=n, progress=progress(split, 0.95),
                                       cancel=j.cancel_event)
        j.publish(sensitivity=sens)
        if sens.attrs.get("cancelled"):
            raise study.Cancelled("during the layer sensitivity")
    progress(0.95, 1.0)(0.0, "rendering the figures and the report")
    setup = {"model": s.base.label, "dataset": s.exp.dataset,
             "validation images": study.val_subset_label(n, len(s.val_set)),
             "criteria": ", ".join(spec.criteria),
             "sparsities": ", ".join(f"{x:g}" for x in spec.sparsities),
             "calibration": f"{spec.calib} images, seeds {seeds}", "scope": spec.scope}
    if spec.rs != (0,):
        setup["token merging (ToMe r)"] = ", ".join(map(str, spec.rs))
    if spec.latency:
        setup["latency"] = (f"median of {study.LATENCY_REPEATS} batch-1 forwards on the "
                            "server, during the comparison: noisy")
    j.publish(files=report.comparison_files(df, kinds, setup, cmd, (fig, sim, 0), sens))
    j.progress(1.0, "done")
