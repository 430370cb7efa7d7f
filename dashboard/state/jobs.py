"""Fine-tuning a pruned model and AMAP as server jobs (``job.py``) with live progress and
cancel, recorded in the run store. They are server-wide, keyed by run id, so a page reload (a
new session) finds its run again; each job and run belongs to the session (or name) that
started it (``owners.py``), and only that owner lists, follows or cancels it."""
from __future__ import annotations

import copy
import logging
import os
import time
from typing import Callable

import numpy as np
import pandas as pd
import streamlit as st

from core import lineage, study
from core.pruning import prune
from core.train import Callback, TrainConfig, train

from .data import base_model, calibration, dense_cost, training_set, val_subset
from .job import SERVER, Failed, Job, current, forget, jobs, start
from .keys import PruneKey, Setup, cache_resource
from .owners import (K_OWNER_NAME, NAME_MAX, current_owner, name_owner, normalise_name,
                     token_owner, visibility)
from .pruning import cost, pruned_model

log = logging.getLogger("prunelens.dashboard")

STEP_LOG_EVERY = 2  # record every 2nd step's loss (reading it costs a sync on CUDA)
JOB_MEMORY_S = 6 * 3600  # finished jobs stay followable this long (the store keeps them)
KINDS = ("finetune", "amap")


def run_store():
    """The run store (``PRUNELENS_RUNS_DIR`` or ./runs), one object per process and root."""
    return _run_store(os.environ.get("PRUNELENS_RUNS_DIR", ""))


@cache_resource(show_spinner=False)
def _run_store(root: str):
    from core.runs import RunStore

    return RunStore(root or None)


def _view(snap: dict) -> dict:
    """A run's snapshot for the Train page: the generic fields, ``run_id``, ``epochs``,
    ``budget`` (AMAP), ``step``, ``epoch``, ``total_steps``, the curves as DataFrames
    (``steps``: step, loss, accuracy; ``history``: one row per epoch; ``ratios``: AMAP's MACs
    ratio per step) and ``result`` (AMAP: the exported model's numbers, once saved)."""
    r = snap["results"]
    return {**snap, "run_id": snap["id"], "step": r.get("step", 0),
            "epoch": r.get("epoch", 0), "total_steps": r.get("total_steps", snap["total_steps"]),
            "steps": pd.DataFrame(r.get("steps", []), columns=["step", "loss", "accuracy"]),
            "history": pd.DataFrame(r.get("history", [])),
            "ratios": pd.DataFrame(r.get("ratios", []), columns=["step", "macs_ratio",
                                                                "expected_ratio", "phase"]),
            "result": dict(r["result"]) if r.get("result") else None}


def _forget_old_jobs() -> None:
    for j in jobs():
        if j.kind in KINDS and j.ended is not None and time.monotonic() - j.ended > JOB_MEMORY_S:
            forget(j)


def get_job(run_id: str | None) -> Job | None:
    """The training or AMAP job of ``run_id`` started by this server process, if any."""
    found = current(run_id, SERVER) if run_id else None
    return found if found is not None and found.kind in KINDS else None


def running_jobs() -> list[dict]:
    """This session's running jobs (others' are not offered to follow)."""
    me = current_owner()
    return [j.snapshot() for j in jobs() if j.kind in KINDS and j.running and j.owner == me]


def reassign_jobs(owner: str, new_owner: str) -> None:
    """Jobs of ``owner`` now belong to ``new_owner`` (with ``RunStore.reassign_runs``)."""
    for j in jobs():
        if j.kind in KINDS and j.owner == owner:
            j.owner = new_owner


def start_training(s: Setup, key: PruneKey, config: TrainConfig, train_samples: int) -> str:
    """Create a run in the store and train a private copy of the pruned model as a server
    job. Returns the run id at once."""
    store = run_store()
    model = pruned_model(key)  # our own copy: the cached base is never touched
    train_set = _train_subset(s, train_samples, config.seed)
    run_cfg = {"model": _model_name(s), "source": s.exp.source, "dataset": s.exp.dataset,
               "pruner": key.pruner if key.sparsity else None, "sparsity": key.sparsity,
               "scope": key.scope,
               "calibration": key.calib, "seed": key.seed, "train_samples": len(train_set),
               "epochs": config.epochs, "lr": config.lr, "batch_size": config.batch_size}
    owner = current_owner()
    macs = {"macs": cost(key)["macs"]}  # fine-tuning keeps the pruned model's MACs
    run_id = _create_run(store, run_cfg, owner,
                         {0: {"macs": dense_cost(s.model_key).macs}, 1: macs, 2: macs})
    what = f"{key.pruner} {key.sparsity:.0%}" if key.sparsity else "dense"
    label = f"{s.exp.preset} · {what} · {config.epochs} epoch(s)"
    val_set = val_subset(s.data, 10**9)

    def work(j: Job) -> None:
        from core.runs import RunStoreCallback

        # the store first; the job ends after train() returns: when the page sees the end,
        # the run store already says so
        result = train(model, train_set, val_set, config,
                       callbacks=[RunStoreCallback(store, run_id, model), Progress(j)],
                       cancel=j.cancel_event)
        _end_as(result.status, result.reason)

    _launch(store, run_id, label, owner, work, epochs=config.epochs, total_steps=0)
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
    label = f"{s.exp.preset} · AMAP to {budget:.0%} of attention MACs · {int(steps)} steps"
    dense = dense_cost(s.model_key)

    def work(j: Job) -> dict:
        res = prune(model, "amap", None, images=images, budget=budget, train_set=train_set,
                    steps=int(steps), batch_size=int(batch_size), seed=int(s.exp.seed),
                    callbacks=[Progress(j)], cancel=j.cancel_event)
        # cancelled too: the model is fitted to the budget, exported, evaluated and saved
        result = study.finish_amap(res, val_set, budget, dense, store, run_id)
        j.publish(result=result)
        _end_as(res.extra["status"], res.extra["reason"])
        return result

    _launch(store, run_id, label, owner, work, kind="amap", epochs=2,
            total_steps=int(steps), budget=budget)
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


def _launch(store, run_id: str, label: str, owner: str, work: Callable[[Job], object], *,
            kind: str = "finetune", **info) -> Job:
    """Run ``work(job)`` as the server job of ``run_id`` (fixed facts ``info`` for the page:
    ``epochs``, ``total_steps``, ``budget``). A run whose work raises is marked failed in
    ``store`` too, unless the store has its end already."""
    _forget_old_jobs()
    return start(kind, lambda j: _recorded(j, store, work), session=SERVER, key=run_id,
                 id=run_id, label=label, owner=owner, info={"budget": None, **info},
                 view=_view)


def _recorded(j: Job, store, work: Callable[[Job], object]) -> object:
    try:
        return work(j)
    except Exception as e:  # the job says why on the page; the store must say it too
        try:
            if store is not None and store.get_run(j.id)["status"] == "running":
                store.finish(j.id, "failed", f"{type(e).__name__}: {e}")
        except Exception:  # the store is best effort here; the job already says why
            log.exception("could not mark run %s failed", j.id)
        raise


def _end_as(status: str, reason: str | None) -> None:
    """A run that ended as cancelled or failed (the run store has recorded it) ends its job
    the same way."""
    if status == "cancelled":
        raise study.Cancelled(reason or "cancelled")
    if status == "failed":
        raise Failed(reason or "failed")


def _create_run(store, cfg: dict, owner: str, measures: dict | None = None) -> str:
    run_id = store.create_run(model=cfg["model"], dataset=cfg["dataset"], pruner=cfg["pruner"],
                              sparsity=cfg["sparsity"], config=cfg, owner=owner)
    store.add_lineage(_lineage(cfg, run_id), run_id, measures)
    return run_id


def _lineage(cfg: dict, run_id: str) -> list[dict]:
    """dense → pruned (criterion, sparsity, seed) → fine-tuned by this run; AMAP prunes by
    training, so its pruned step is the run's own."""
    chain = [lineage.dense(cfg["model"], cfg["dataset"], cfg["source"])]
    if cfg["pruner"] and study.criterion_info(cfg["pruner"]).needs_training:  # AMAP
        return chain + [lineage.step("pruned", criterion=cfg["pruner"], sparsity=cfg["sparsity"],
                                     seed=cfg["seed"], steps=cfg["steps"], run=run_id)]
    if cfg["pruner"]:
        chain.append(lineage.pruned(cfg["pruner"], cfg["sparsity"], cfg["seed"], cfg["scope"],
                                    cfg["calibration"]))
    return chain + [lineage.finetuned(run_id, epochs=cfg["epochs"], lr=cfg["lr"])]


class Progress(Callback):
    """core.train callback feeding a :class:`Job`: steps (loss and accuracy every
    :data:`STEP_LOG_EVERY`), AMAP's MACs ratio, epochs' metrics."""

    def __init__(self, job: Job):
        self.job = job

    def on_step(self, e) -> None:
        record = e.step % STEP_LOG_EVERY == 0 or e.step == e.total_steps
        ratio = getattr(e, "macs_ratio", None)  # AMAPStepEvent
        self.job.progress(e.step / max(e.total_steps, 1), f"step {e.step}/{e.total_steps}")
        self.job.publish(step=e.step, total_steps=e.total_steps, epoch=e.epoch)
        if record:
            self.job.append(steps=(e.step, e.running_loss, e.running_accuracy))
        if ratio is not None:
            self.job.append(ratios=(e.step, float(ratio), float(e.expected_ratio),
                                    str(e.phase)))

    def on_epoch_end(self, e) -> None:
        self.job.append(history={**e.metrics, "step": e.step})


def cancel_job(run_id: str) -> bool:
    """Widget callback: ask this session's job ``run_id`` to stop (another's is refused)."""
    found = get_job(run_id)
    if found is None or found.owner != current_owner():
        return False
    return found.cancel()


# ---------------------------------------------------------------------------- the name box

def take_name() -> None:
    """Callback of the sidebar's name box: the runs (and jobs) this session started under its
    token move to the name, so they stay its own after a reload."""
    owner = name_owner(st.session_state.get(K_OWNER_NAME) or "")
    if owner is not None:
        run_store().reassign_runs(token_owner(), owner)
        reassign_jobs(token_owner(), owner)


def owner_sidebar() -> None:
    """The sidebar's name box and one line on whose runs this session's are."""
    with st.sidebar:
        st.header("Your runs", divider="gray")
        name = st.text_input(
            "Your name (optional)", key=K_OWNER_NAME, persist_state="session",
            max_chars=NAME_MAX, on_change=take_name,
            help="Runs you start belong to this browser tab; with a name they belong to the "
                 "name, so you find them again after a reload or in another browser. Not a "
                 "password: anyone typing the same name gets the same runs.")
        if normalise_name(name or ""):
            st.text(f"Runs you start are filed under “{name.strip()}”.")  # never Markdown
        else:
            st.caption("Runs you start belong to this browser tab.")
        if visibility() == "private":
            st.caption("Others' runs are not shown on this server.")
        else:
            st.caption("Others' runs are shown read-only.")
