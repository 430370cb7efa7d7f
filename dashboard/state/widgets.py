"""Session state: the experiment read from the Prune page's widgets, widget defaults, the
upload and deletion flags, and the run a Train page follows (kept in the URL)."""
from __future__ import annotations

import streamlit as st

from .keys import (PATTERNS, SPARSITY_OPTIONS, K_CALIB, K_DATASET, K_DELETE_PENDING, K_FOLDER,
                   K_HUB_ID, K_MODEL, K_MODEL_FOLDER, K_PATTERN, K_PRUNERS, K_SCOPE, K_SEED,
                   K_SOURCE, K_SPARSITY, K_SOURCE_WANTED, K_UPLOAD_DIGEST, K_UPLOAD_NAME, K_VAL,
                   SOURCES,
                   Experiment)


def experiment() -> Experiment:
    """The current session's experiment (defaults for whatever the Prune page never set)."""
    from .catalogue import has_checkpoint, pruner_names

    ss = st.session_state
    d = Experiment()
    pruners = ss.get(K_PRUNERS, list(d.pruners))
    preset, dataset = ss.get(K_MODEL, d.preset), ss.get(K_DATASET, d.dataset)
    source = ss.get(K_SOURCE, d.source)
    if source == "checkpoint" and not has_checkpoint(preset, dataset):
        source = "init"  # what is loaded: there is no checkpoint to ship
    return Experiment(
        preset=preset, source=source, dataset=dataset, folder=ss.get(K_FOLDER, d.folder) or "",
        pruners=tuple(p for p in pruners if p in pruner_names()),
        sparsity=int(ss.get(K_SPARSITY, round(d.sparsity * 100))) / 100,
        scope=ss.get(K_SCOPE, d.scope),
        calib=int(ss.get(K_CALIB, d.calib)), seed=int(ss.get(K_SEED, d.seed)),
        val_samples=int(ss.get(K_VAL, d.val_samples)), upload=ss.get(K_UPLOAD_DIGEST, ""),
        model_folder=ss.get(K_MODEL_FOLDER, d.model_folder) or "",
        hub_id=ss.get(K_HUB_ID, d.hub_id) or "",
        pattern=ss.get(K_PATTERN, d.pattern) if ss.get(K_PATTERN) in PATTERNS else d.pattern)


def widget_default(key: str, value: object) -> None:
    """Seed a widget's value once per session (so pages need no ``value=``/``index=`` args
    that would fight ``persist_state``)."""
    if key not in st.session_state:
        st.session_state[key] = value


def widget_follow(key: str, value: list | str) -> None:
    """Seed a widget from a choice made elsewhere (another page, the model) and seed it again
    whenever that choice changes; the user's own edit of the widget stands until then."""
    marker = f"{key}__follows"
    copy = list(value) if isinstance(value, list) else value
    if key not in st.session_state or st.session_state.get(marker, value) != value:
        st.session_state[key] = copy
    st.session_state[marker] = copy


def seed_experiment_widgets() -> None:
    """Give the Prune page's widgets their defaults once per session."""
    d = Experiment()
    # the folder boxes start empty (None): "" is not one of their options
    for key, value in ((K_MODEL, d.preset), (K_SOURCE, d.source), (K_DATASET, d.dataset),
                       (K_FOLDER, None), (K_MODEL_FOLDER, None), (K_HUB_ID, ""),
                       (K_PRUNERS, list(d.pruners)),
                       (K_SPARSITY, round(d.sparsity * 100)), (K_SCOPE, d.scope),
                       (K_CALIB, d.calib), (K_SEED, d.seed), (K_VAL, d.val_samples),
                       (K_PATTERN, d.pattern)):
        widget_default(key, value)
    st.session_state[K_SPARSITY] = snap_sparsity(st.session_state[K_SPARSITY])


def snap_sparsity(percent: float) -> int:
    """The slider option nearest to ``percent`` (a value set elsewhere, e.g. 7 or 99.5)."""
    return min(SPARSITY_OPTIONS, key=lambda o: abs(o - float(percent)))


def remember_upload(digest: str, name: str) -> None:
    st.session_state[K_UPLOAD_DIGEST] = digest
    st.session_state[K_UPLOAD_NAME] = name


def upload_name() -> str:
    return st.session_state.get(K_UPLOAD_NAME, "")


def use_trained_checkpoint() -> None:
    """Widget callback: switch the experiment to the shipped trained checkpoint."""
    st.session_state[K_SOURCE] = st.session_state[K_SOURCE_WANTED] = "checkpoint"


def source_chosen() -> None:
    """Widget callback of the Weights radio: remember what the user asked for."""
    st.session_state[K_SOURCE_WANTED] = st.session_state.get(K_SOURCE)


def weight_sources() -> list[str]:
    """The Weights radio's choices for the chosen model and dataset: the shipped checkpoint
    only where one exists. A session on "checkpoint" (what it asked for, or the default) is
    moved to the trained checkpoint or to "untrained" as the model and dataset change, so
    the radio never shows a checkpoint that the banner says is not there."""
    from .catalogue import has_checkpoint

    ss = st.session_state
    d = Experiment()
    preset, dataset = ss.get(K_MODEL, d.preset), ss.get(K_DATASET, d.dataset)
    trained = has_checkpoint(preset, dataset)
    wanted = ss.setdefault(K_SOURCE_WANTED, ss.get(K_SOURCE, d.source))
    if ss.get(K_SOURCE, d.source) in ("checkpoint", "init"):
        ss[K_SOURCE] = "checkpoint" if wanted == "checkpoint" and trained else "init"
    from .folders import downloads_allowed  # ("hub" only where downloads are on)

    return [s for s in SOURCES if (s != "checkpoint" or trained)
            and (s != "hub" or downloads_allowed())]


def pending_delete() -> tuple[str, ...]:
    return tuple(st.session_state.get(K_DELETE_PENDING, ()))


def set_pending_delete(run_ids: tuple[str, ...]) -> None:
    st.session_state[K_DELETE_PENDING] = tuple(run_ids)


def current_run_id() -> str | None:
    """The run this session's Train page follows: kept in the URL (``?run=…``) so that a page
    reload, which starts a new session, finds it again; never shared between sessions."""
    return st.query_params.get("run")


def follow_run(run_id: str | None) -> None:
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]


def bound_widget(key: str, top: int) -> None:
    """Lower a number widget's value to ``top`` before it is drawn with that maximum."""
    if st.session_state.get(key, 0) > top:
        st.session_state[key] = top


def changed_since_last_run(key: str, value: object) -> bool:
    """Whether ``value`` differs from the one this session recorded under ``key`` last time
    (and record it)."""
    changed = st.session_state.get(key) != value
    st.session_state[key] = value
    return changed


def set_flag(key: str) -> None:
    """Widget callback: raise a one-shot flag (read by :func:`take_flag`)."""
    st.session_state[key] = True


def take_flag(key: str) -> bool:
    return bool(st.session_state.pop(key, False))
