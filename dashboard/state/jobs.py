"""Background jobs: fine-tuning a pruned model and AMAP, each in a daemon thread with live
progress and cancel, recorded in the run store. The registry of jobs is process-wide, so a
page reload (a new session) finds its run again; each job and run belongs to the session (or
name) that started it (``owners.py``), and only that owner lists, follows or cancels it."""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from core import study
from core.pruning import prune
from core.train import Callback, TrainConfig, train

from .data import base_model, calibration, dense_cost, training_set, val_subset
from .keys import PruneKey, Setup, cache_resource
from .owners import current_owner
from .pruning import pruned_model

log = logging.getLogger("prunelens.dashboard")

STEP_LOG_EVERY = 2  # record every 2nd step's loss (reading it costs a sync on CUDA)
JOB_MEMORY_S = 6 * 3600  # finished jobs stay followable this long (the store keeps them)


def run_store():
    """The run store (``PRUNELENS_RUNS_DIR`` or ./runs), one object per process and root."""
    return _run_store(os.environ.get("PRUNELENS_RUNS_DIR", ""))


@cache_resource(show_spinner=False)
def _run_store(root: str):
    from core.runs import RunStore

    return RunStore(root or None)


@dataclass
class Job:
    """A training run in a worker thread. Written by the worker under ``lock``; pages read
    :meth:`snapshot`. Lives in the process-wide registry, so a reload finds it again."""

    run_id: str
    label: str
    epochs: int
    total_steps: int = 0
    step: int = 0
    epoch: int = 0
    status: str = "running"
    reason: str | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    steps: list[tuple[int, float, float]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    owner: str | None = None  # the session's or name's label (owners.py)
    kind: str = "finetune"  # or "amap"
    budget: float | None = None  # AMAP: fraction of attention MACs kept
    ratios: list[tuple[int, float, float, str]] = field(default_factory=list)
    result: dict | None = None  # AMAP: the exported model's numbers, once saved
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def snapshot(self) -> dict:
        with self.lock:
            return {"run_id": self.run_id, "label": self.label, "epochs": self.epochs,
                    "total_steps": self.total_steps, "step": self.step, "epoch": self.epoch,
                    "status": self.status, "reason": self.reason,
                    "cancel_requested": self.cancel.is_set(),
                    "elapsed": (self.ended or time.time()) - self.started,
                    "steps": pd.DataFrame(self.steps, columns=["step", "loss", "accuracy"]),
                    "history": pd.DataFrame(self.history),
                    "kind": self.kind, "budget": self.budget,
                    "ratios": pd.DataFrame(self.ratios, columns=["step", "macs_ratio",
                                                                 "expected_ratio", "phase"]),
                    "result": dict(self.result) if self.result else None}


@cache_resource(show_spinner=False)
def _jobs() -> dict[str, Job]:
    """Process-wide: every session's running and recent jobs, by run id."""
    return {}


_JOBS_LOCK = threading.Lock()


def _forget_old_jobs() -> None:
    now = time.time()
    with _JOBS_LOCK:
        jobs = _jobs()
        for run_id in [r for r, j in jobs.items()
                       if j.ended is not None and now - j.ended > JOB_MEMORY_S]:
            del jobs[run_id]


def get_job(run_id: str | None) -> Job | None:
    return _jobs().get(run_id) if run_id else None


def running_jobs() -> list[dict]:
    """This session's running jobs (others' are not offered to follow)."""
    me = current_owner()
    with _JOBS_LOCK:
        jobs = list(_jobs().values())
    return [j.snapshot() for j in jobs if j.status == "running" and j.owner == me]


def reassign_jobs(owner: str, new_owner: str) -> None:
    """Jobs of ``owner`` now belong to ``new_owner`` (with ``RunStore.reassign_runs``)."""
    with _JOBS_LOCK:
        for job in _jobs().values():
            if job.owner == owner:
                job.owner = new_owner


def start_training(s: Setup, key: PruneKey, config: TrainConfig, train_samples: int) -> str:
    """Create a run in the store and train a private copy of the pruned model in a daemon
    thread. Returns the run id at once."""
    store = run_store()
    model = pruned_model(key)  # our own copy: the cached base is never touched
    train_set = _train_subset(s, train_samples, config.seed)
    run_cfg = {"model": _model_name(s), "source": s.exp.source, "dataset": s.exp.dataset,
               "pruner": key.pruner if key.sparsity else None, "sparsity": key.sparsity,
               "scope": key.scope,
               "calibration": key.calib, "seed": key.seed, "train_samples": len(train_set),
               "epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size}
    owner = current_owner()
    run_id = _create_run(store, run_cfg, owner)
    _forget_old_jobs()
    what = f"{key.pruner} {key.sparsity:.0%}" if key.sparsity else "dense"
    label = f"{s.exp.preset} · {what} · {config.epochs} epoch(s)"
    job = Job(run_id, label, config.epochs, owner=owner)
    val_set = val_subset(s.data, 10**9)

    def work(hooks: list, cancel: threading.Event) -> None:
        from core.runs import RunStoreCallback

        # the store first: when the page sees the job end, the run store already says so
        train(model, train_set, val_set, config,
              callbacks=[RunStoreCallback(store, job.run_id, model), *hooks], cancel=cancel)

    _launch(job, store, work)
    return run_id


def start_amap(s: Setup, budget: float, steps: int, batch_size: int,
               train_samples: int) -> str:
    """Run AMAP (``prune(model, "amap", budget=...)``) on a private copy of the base model in
    the same kind of background job as fine-tuning (progress, cancel). At the end
    ``study.finish_amap`` evaluates the exported, physically smaller model on the page's
    validation subset, saves it as the run's checkpoint and closes the run; the run is stored
    with pruner ``"amap"`` and sparsity ``1 − budget``. Returns the run id at once."""
    from core.pruning.amap import check_budget

    budget = check_budget(float(budget))
    if int(steps) < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    store = run_store()
    model = copy.deepcopy(base_model(s.model_key).model)
    train_set = _train_subset(s, train_samples, s.exp.seed)
    images, _ = calibration(s.data, s.exp.calib, s.exp.seed)
    val_set = val_subset(s.data, s.exp.val_samples)
    sparsity = round(1.0 - budget, 4)
    run_cfg = {"model": _model_name(s), "source": s.exp.source, "dataset": s.exp.dataset,
               "pruner": "amap", "sparsity": sparsity, "budget": budget, "scope": "layer",
               "calibration": s.exp.calib, "seed": s.exp.seed, "train_samples": len(train_set),
               "steps": int(steps), "batch_size": int(batch_size),
               "val_samples": len(val_set)}
    owner = current_owner()
    run_id = _create_run(store, run_cfg, owner)
    _forget_old_jobs()
    label = f"{s.exp.preset} · AMAP to {budget:.0%} of attention MACs · {int(steps)} steps"
    job = Job(run_id, label, 2, total_steps=int(steps), kind="amap", budget=budget,
              owner=owner)
    dense = dense_cost(s.model_key)

    def work(hooks: list, cancel: threading.Event) -> None:
        res = prune(model, "amap", None, images=images, budget=budget, train_set=train_set,
                    steps=int(steps), batch_size=int(batch_size), seed=int(s.exp.seed),
                    callbacks=hooks, cancel=cancel)
        result = study.finish_amap(res, val_set, budget, dense, store, run_id)
        with job.lock:
            job.result = result
            job.status, job.reason = res.extra["status"], res.extra["reason"]
            job.ended = time.time()

    _launch(job, store, work, finish_on_end=False)
    return run_id


def _model_name(s: Setup) -> str:
    """The preset's name, or what was loaded for an uploaded / server-folder model."""
    return s.base.label if s.exp.source in ("upload", "folder", "hub") else s.exp.preset


def _train_subset(s: Setup, n: int, seed: int):
    from torch.utils.data import Subset

    train_set = training_set(s)
    if n < len(train_set):
        order = np.random.default_rng(seed).permutation(len(train_set))
        train_set = Subset(train_set, np.sort(order[:n]).tolist())
    return train_set


def _launch(job: Job, store, work: Callable[[list, threading.Event], None],
            finish_on_end: bool = True) -> None:
    """Register ``job`` and run ``work(callbacks, cancel)`` in a daemon thread; the callbacks
    feed the job's progress (``core.train`` protocol). ``finish_on_end=False``: ``work`` sets
    the final status itself (after its own post-processing), not the ``on_end`` event."""
    with _JOBS_LOCK:
        _jobs()[job.run_id] = job
    job.thread = threading.Thread(target=_worker, args=(job, store, work, finish_on_end),
                                  name=f"prunelens-{job.kind}-{job.run_id}", daemon=True)
    job.thread.start()


def _create_run(store, cfg: dict, owner: str) -> str:
    return store.create_run(model=cfg["model"], dataset=cfg["dataset"], pruner=cfg["pruner"],
                            sparsity=cfg["sparsity"], config=cfg, owner=owner)


class Progress(Callback):
    """core.train callback feeding a :class:`Job` (steps, epochs, end)."""

    def __init__(self, job: Job, finish_on_end: bool = True):
        self.job, self.finish_on_end = job, finish_on_end

    def on_step(self, e) -> None:
        record = e.step % STEP_LOG_EVERY == 0 or e.step == e.total_steps
        loss, acc = (e.running_loss, e.running_accuracy) if record else (None, None)
        ratio = getattr(e, "macs_ratio", None)  # AMAPStepEvent
        with self.job.lock:
            self.job.step, self.job.total_steps, self.job.epoch = e.step, e.total_steps, e.epoch
            if record:
                self.job.steps.append((e.step, loss, acc))
            if ratio is not None:
                self.job.ratios.append((e.step, float(ratio), float(e.expected_ratio),
                                        str(e.phase)))

    def on_epoch_end(self, e) -> None:
        with self.job.lock:
            self.job.history.append({**e.metrics, "step": e.step})

    def on_end(self, result) -> None:
        if not self.finish_on_end:
            return
        with self.job.lock:
            self.job.status, self.job.reason = result.status, result.reason
            self.job.ended = time.time()


def _worker(job: Job, store, work: Callable[[list, threading.Event], None],
            finish_on_end: bool) -> None:
    try:
        work([Progress(job, finish_on_end)], job.cancel)
    except Exception as e:  # reported to the page through the job, and to the store
        log.exception("%s run %s failed", job.kind, job.run_id)
        with job.lock:
            job.status, job.reason = "failed", f"{type(e).__name__}: {e}"
            job.ended = job.ended or time.time()
        try:
            if store.get_run(job.run_id)["status"] == "running":
                store.finish(job.run_id, "failed", job.reason)
        except Exception:  # the store is best effort here; the job already says why
            log.exception("could not mark run %s failed", job.run_id)


def cancel_job(run_id: str) -> bool:
    """Widget callback: ask this session's job ``run_id`` to stop (another's is refused)."""
    job = get_job(run_id)
    if job is None or job.status != "running" or job.owner != current_owner():
        return False
    job.cancel.set()
    return True
