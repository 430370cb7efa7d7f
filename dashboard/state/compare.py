"""The Compare page's background job: ``core.study.sweep`` over criteria × sparsities × seeds,
then the Fig. 3 grid, optional layer sensitivity and every export file
(``core.report.comparison_files``), in a daemon thread with progress and cancel. The registry
is process-wide (a session keeps its job id); a comparison is the same computation as
``python -m core sweep`` with the command line :func:`command` gives."""
from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import pandas as pd
import streamlit as st
from torch.utils.data import Subset

from core import report, study

from .data import base_model, dataset_options
from .keys import Setup, cache_resource
from .work import stop_at_exit

log = logging.getLogger("prunelens.dashboard")

DEFAULT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SENSITIVITY_RATIOS = (0.3, 0.6, 0.9)
JOBS_KEPT = 8  # finished comparisons kept in memory (each holds its export files)
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


@dataclass
class SweepJob:
    """A comparison in a worker thread: written under ``lock``, read through :meth:`snapshot`."""

    job_id: str
    spec: Spec
    label: str
    command: str
    fraction: float = 0.0
    text: str = "starting…"
    status: str = "running"
    reason: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    df: pd.DataFrame | None = None
    sensitivity: pd.DataFrame | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict:
        with self.lock:
            return {"job_id": self.job_id, "spec": self.spec, "label": self.label,
                    "command": self.command, "fraction": self.fraction, "text": self.text,
                    "status": self.status, "reason": self.reason,
                    "cancel_requested": self.cancel.is_set(),
                    "elapsed": (self.ended or time.time()) - self.started,
                    "df": self.df, "sensitivity": self.sensitivity, "kinds": dict(self.kinds),
                    "files": dict(self.files)}


@cache_resource(show_spinner=False)
def _registry() -> dict[str, SweepJob]:
    return {}


_LOCK = threading.Lock()
_IDS = itertools.count(1)


def current_sweep_id() -> str | None:
    """The comparison this session started last (its job id), if any."""
    return st.session_state.get(K_JOB)


def follow_sweep(job_id: str) -> None:
    st.session_state[K_JOB] = job_id


def get_sweep(job_id: str | None) -> SweepJob | None:
    return _registry().get(job_id) if job_id else None


def cancel_sweep(job_id: str) -> None:
    job = get_sweep(job_id)
    if job is not None and job.status == "running":
        job.cancel.set()


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
    """The ``python -m core sweep`` line computing the same numbers (the dashboard's dataset
    options and model source included)."""
    src = s.exp.source
    model, revision = s.exp.preset, None
    if src == "upload":
        from .data import _upload_path
        model = str(_upload_path(s.exp.upload))
    elif src == "hub":
        from .folders import parse_hub_id
        model, revision = parse_hub_id(s.exp.hub_id)
    untrained = src == "init" or (src == "checkpoint" and not s.base.trained)
    return report.sweep_command(
        model, s.exp.dataset, spec.criteria, spec.sparsities, range(spec.seeds),
        min(spec.val, len(s.val_set)), spec.calib, spec.scope, "comparison",
        dataset_options(s.data), untrained and src != "upload",
        s.exp.seed if src == "init" else 0, revision) + (
            " --sensitivity" if spec.sensitivity else "")


def start_sweep(s: Setup, spec: Spec) -> str:
    """Start the comparison in a daemon thread; returns its job id at once."""
    if not spec.criteria:
        raise ValueError("choose at least one criterion")
    job_id = f"cmp{next(_IDS)}-{int(time.time())}"
    label = (f"{s.base.label} · {len(spec.criteria)} criteria × {len(spec.sparsities)} "
             f"sparsities × {spec.seeds} seed(s) · first {min(spec.val, len(s.val_set))} "
             "validation images")
    job = SweepJob(job_id, spec, label, command(s, spec))
    with _LOCK:
        reg = _registry()
        done = [k for k, j in reg.items() if j.status != "running"]
        for k in done[:max(0, len(done) - JOBS_KEPT + 1)]:
            del reg[k]
        reg[job_id] = job
    thread = threading.Thread(target=_work, args=(job, s), name=f"prunelens-{job_id}",
                              daemon=True)
    thread.start()
    stop_at_exit(thread, job.cancel.set)  # stopping the server cancels it first
    return job_id


def _work(job: SweepJob, s: Setup) -> None:
    spec = job.spec

    def progress(lo: float, hi: float):
        def cb(frac: float, text: str) -> None:
            with job.lock:
                job.fraction, job.text = lo + (hi - lo) * frac, text
        return cb

    try:
        model = base_model(s.model_key).model  # shared: sweep and fig3 work on copies
        n = min(spec.val, len(s.val_set))
        val = Subset(s.val_set, list(range(n)))
        seeds = list(range(spec.seeds))
        split = 0.75 if spec.sensitivity else 0.92
        df = study.sweep(model, s.train_set, val, list(spec.criteria), spec.sparsities,
                         calib=spec.calib, seeds=seeds, val_samples=n, scope=spec.scope,
                         progress=progress(0.0, split), cancel=job.cancel)
        kinds = {c: study.criterion_info(c).kind for c in spec.criteria}
        with job.lock:
            job.df, job.kinds = df, kinds
        if df.attrs.get("cancelled"):
            return _end(job, "cancelled", f"after {len(df)} points")
        progress(split, split)(0.0, "Fig. 3 grid")
        fig, sim, _ = report.grid_outputs(model, s.train_set, s.val_set, spec.criteria,
                                          spec.sparsities, 0, spec.calib, spec.scope, 0)
        sens = None
        if spec.sensitivity:
            sens = study.layer_sensitivity(model, s.train_set, val, list(spec.criteria),
                                           SENSITIVITY_RATIOS, calib=spec.calib, seed=0,
                                           val_samples=n, progress=progress(split, 0.95),
                                           cancel=job.cancel)
            with job.lock:
                job.sensitivity = sens
            if sens.attrs.get("cancelled"):
                return _end(job, "cancelled", "during the layer sensitivity")
        progress(0.95, 1.0)(0.0, "rendering the figures and the report")
        setup = {"model": s.base.label, "dataset": s.exp.dataset,
                 "validation images": f"the first {n}", "criteria": ", ".join(spec.criteria),
                 "sparsities": ", ".join(f"{x:g}" for x in spec.sparsities),
                 "calibration": f"{spec.calib} images, seeds {seeds}", "scope": spec.scope}
        files = report.comparison_files(df, kinds, setup, job.command, (fig, sim, 0), sens)
        with job.lock:
            job.files = files
        _end(job, "finished")
    except Exception as e:  # reported on the page through the job
        log.exception("comparison %s failed", job.job_id)
        _end(job, "failed", f"{type(e).__name__}: {e}")


def _end(job: SweepJob, status: str, reason: str | None = None) -> None:
    with job.lock:
        job.status, job.reason, job.ended = status, reason, time.time()
        if status == "finished":
            job.fraction, job.text = 1.0, "done"
