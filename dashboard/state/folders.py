"""Server folders a browser user may use, and folder scans with progress and cancel.

Everything a browser user names on the server goes through ``core.data.roots``: a dataset or
model folder must resolve (symlinks and ``..`` included) inside the data roots
(``PRUNELENS_DATA_ROOTS``, default ``./data``); anything else gets the one refusal message,
whatever is or is not there. The select boxes offer the folders that exist
(``list_data_folders``); a typed path is checked the same way. Models may also come from the
local Hugging Face cache (``hub:<org>/<name>``, only ids found there) and, where downloads are
on, from the Hugging Face hub (:func:`hub_model`, the "Hugging Face hub" source): on by
default when the server listens on loopback only, off beyond it, and
``PRUNELENS_HUB_DOWNLOADS`` (1 or 0) decides either way.

A folder dataset is scanned in a job of the browser session (``job.py``), bounded
(:data:`SCAN_SECONDS`, :data:`SCAN_MAX_FILES`, :data:`SCAN_MAX_DEPTH`, symlinks kept inside the
roots), while the page shows the time used and a cancel button. One scan per browser session at
a time; a failed or cancelled one is remembered (and reported) until the user asks to scan again
or picks another folder, so a slider move does not restart a 20-second scan.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import streamlit as st
from streamlit.errors import StreamlitDuplicateElementKey

from core.data import (DataPathError, ScanCancelled, data_roots, list_data_folders,
                       load_dataset, resolve_under_roots)
from core.data.roots import check_files_under_roots

from core.models import CheckpointError
from dashboard.text import md

from . import job
from .keys import DATASET_SEED, K_FOLDER, K_MODEL_FOLDER, SOURCES, DataKey, cache_resource
from .uploads import session_token

SCAN_SECONDS = 20.0
SCAN_MAX_FILES = 100_000
SCAN_MAX_DEPTH = 4
HUB = "hub:"
DATASETS_KEPT = 6


# ---------------------------------------------------------------------------- choices

def label(option: str) -> str:
    """How a folder option reads: ``<root name>/<path inside it>``, or the hub id (also for
    a snapshot folder in the Hugging Face cache: the server's paths are not shown)."""
    if option.startswith(HUB):
        return f"{option[len(HUB):]} (Hugging Face cache)"
    path = Path(option)
    repo = _cached_repo(path)
    if repo:
        return f"{repo} (Hugging Face hub)"
    for root in data_roots():
        if path == root or path.is_relative_to(root):
            return str(Path(root.name) / path.relative_to(root))
    return option


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _has_subfolder(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(not e.name.startswith(".") and e.is_dir() for e in it)
    except OSError:
        return False


def _with_current(options: list[str], key: str) -> list[str]:
    """``options`` and, if the user typed one that is not among them, that one (checked on
    use like any other)."""
    current = st.session_state.get(key)
    return options + [current] if isinstance(current, str) and current and \
        current not in options else options


def dataset_folders() -> list[str]:
    """Folders inside the data roots that could hold a dataset: with sub-folders (classes),
    not model folders; and the path the user typed, if any."""
    return _with_current([str(p) for p in list_data_folders()
                          if not _is_model_folder(p) and _has_subfolder(p)], K_FOLDER)


def hub_ids() -> list[str]:
    """``org/name`` of the models in the local Hugging Face cache (nothing is downloaded)."""
    from core.models.hf import hub_cache_dir

    cache = hub_cache_dir()
    try:
        names = sorted(e.name for e in os.scandir(cache)
                       if e.name.startswith("models--") and e.is_dir())
    except OSError:
        return []
    return [n[len("models--"):].replace("--", "/", 1) for n in names]


def _cached_repo(path: Path) -> str:
    """``org/name`` if ``path`` is a snapshot folder in the Hugging Face cache, else ""."""
    from core.models.hf import hub_cache_dir

    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--") \
            and path.parents[2] == hub_cache_dir():
        return parts[-3][len("models--"):].replace("--", "/", 1)
    return ""


def model_label(path: str) -> str:
    """How the loaded model's source reads: the hub id, or the folder (in its root)."""
    text = label(path)
    return text if _cached_repo(Path(path)) else f"{text} (model folder)"


def model_folders() -> list[str]:
    """Model folders (``config.json`` inside) in the data roots, then ``hub:<id>`` entries;
    and the path the user typed, if any."""
    return _with_current([str(p) for p in list_data_folders(max_depth=3) if _is_model_folder(p)]
                         + [HUB + i for i in hub_ids()], K_MODEL_FOLDER)


def resolve_folder(text: str) -> Path:
    """A dataset folder the user chose or typed → its resolved path inside the data roots.
    :class:`DataPathError` (one fixed message) otherwise."""
    return resolve_under_roots(text)


def resolve_model(text: str) -> Path:
    """A model source the user chose or typed → a path to load: a cached hub snapshot for
    ``hub:<id>`` (only ids the cache lists), else a folder or file inside the data roots
    whose files (``config.json``, the weights…) do not lead out of them either
    (:class:`DataPathError`, the one refusal, otherwise)."""
    text = (text or "").strip()
    if not text:
        raise ValueError("choose a model folder (Hugging Face save_pretrained or timm layout) "
                         "from the list in the sidebar")
    if text.startswith(HUB):
        repo = text[len(HUB):]
        if repo not in hub_ids():
            raise DataPathError()
        from core.models.hf import hub_snapshot

        return hub_snapshot(repo)
    path = resolve_under_roots(text)
    if path.is_dir():  # its config.json / weights must not be links out of the roots either
        check_files_under_roots(path)
    return path


# ---------------------------------------------------------------------------- hub downloads

def listens_on_loopback() -> bool:
    """Whether the server listens on this machine only (``server.address`` a loopback
    address; unset means every interface)."""
    import ipaddress

    address = str(st.get_option("server.address") or "").strip("[]")
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def downloads_allowed() -> bool:
    """Whether a browser user may make the server download from the Hugging Face hub:
    ``PRUNELENS_HUB_DOWNLOADS`` (1 or 0) where set, else only when the server listens on
    loopback (a classroom server downloads nothing unless its operator says so)."""
    from core.models.hub import downloads_allowed as allowed

    try:
        return allowed(default=listens_on_loopback())
    except ValueError:  # a mistyped setting: the safe side
        return False


def model_sources() -> list[str]:
    """The model sources the Prune page offers: "hub" only where downloads are on."""
    return [s for s in SOURCES if s != "hub" or downloads_allowed()]


def parse_hub_id(text: str) -> tuple[str, str | None]:
    """``org/name`` or ``org/name@revision`` (a ``hub:`` prefix allowed) → (id, revision);
    ValueError saying what an id looks like otherwise."""
    from core.models.hub import check_id

    text = (text or "").strip().removeprefix(HUB)
    if not text:
        raise ValueError("enter a Hugging Face hub id in the sidebar (org/name, e.g. "
                         "facebook/deit-tiny-patch16-224, or org/name@revision)")
    repo, _, revision = text.partition("@")
    check_id(repo, revision or None)
    return repo, revision or None


def hub_model(text: str) -> Path:
    """The snapshot folder of the hub id the user typed: from the cache if it is there (no
    request to the hub on every rerun), else downloaded with a progress bar where downloads
    are on. CheckpointError / ValueError with the reason otherwise (no server path in it)."""
    from core.models.hub import cached, download

    repo, revision = parse_hub_id(text)
    try:
        return cached(repo, revision)
    except CheckpointError:
        pass
    if not downloads_allowed():
        raise CheckpointError(f"{repo} is not in this server's Hugging Face cache, and "
                              "downloads are off here (the server's operator can turn them on "
                              "with PRUNELENS_HUB_DOWNLOADS=1)")
    what = repo + (f" at {revision}" if revision else "")
    bar = st.progress(0.0, text=f"Downloading {md(what)} from the Hugging Face hub…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / total, 1.0) if total else 0.0,
                     text=f"Downloading {md(what)}: {done / 2**20:.1f} of "
                          f"{total / 2**20:.1f} MB…")

    try:
        return download(repo, revision, progress=progress, allow_download=True)
    finally:
        bar.empty()


# ---------------------------------------------------------------------------- scans

SCAN = "folder-scan"  # the job's kind and slot
CANCELLED = ("the folder scan was cancelled: press “Scan again”, or choose another folder")


@cache_resource(show_spinner=False)
def _datasets() -> tuple[OrderedDict, threading.Lock]:
    """Process-wide: finished folder datasets by key (least recently used first), a lock."""
    return OrderedDict(), threading.Lock()


def _load(key: DataKey, cancel: threading.Event | None) -> tuple:
    return load_dataset("folder", key.image_size, seed=DATASET_SEED, root=key.root,
                        roots=data_roots(), max_seconds=SCAN_SECONDS,
                        max_files=SCAN_MAX_FILES, max_depth=SCAN_MAX_DEPTH, cancel=cancel)


def _keep(datasets: tuple[OrderedDict, threading.Lock], key: DataKey, result: tuple) -> None:
    done, lock = datasets
    with lock:
        done[key] = result
        done.move_to_end(key)
        while len(done) > DATASETS_KEPT:
            done.popitem(last=False)


def _scan(j: job.Job, key: DataKey, datasets: tuple[OrderedDict, threading.Lock]) -> None:
    """The scan job: its dataset goes to ``datasets``, the store it was started with."""
    _keep(datasets, key, _load(key, j.cancel_event))


def folder_dataset(key: DataKey) -> tuple:
    """(train, val) of a folder dataset: the finished scan's, else scanned here (bounded, no
    progress: only after the dataset fell out of the cache)."""
    key = replace(key, full=False)  # the whole folder is scanned either way
    datasets = _datasets()
    done, lock = datasets
    with lock:
        if key in done:
            done.move_to_end(key)
            return done[key]
    result = _load(key, None)
    _keep(datasets, key, result)
    return result


def start_scan(key: DataKey) -> job.Job:
    """This session's scan of ``key``: the running one, or the failed or cancelled one (kept
    until "Scan again"), else a new one (a scan of another folder still running is
    cancelled)."""
    key = replace(key, full=False)
    datasets = _datasets()
    return job.start(SCAN, lambda j: _scan(j, key, datasets), signature=key,
                     reuse=("failed", "cancelled"))


def cancel_scan() -> None:
    """Button callback: cancel this session's running scan."""
    scan = job.current(SCAN)
    if scan is not None:
        scan.cancel()


def forget_scan() -> None:
    """Button callback: forget this session's failed scan, so that the next run scans again."""
    job.forget(job.current(SCAN))


def wait_for_scan(key: DataKey) -> None:
    """Scan folder ``key`` unless a scan already gave its dataset: a progress bar (time used
    of :data:`SCAN_SECONDS`) and a cancel button meanwhile. Raises the scan's error (a
    readable ``ValueError`` / ``OSError``) under a “Scan again” button."""
    key = replace(key, full=False)
    done, lock = _datasets()
    with lock:
        if key in done:
            return
    scan = start_scan(key)
    snap = job.follow(scan)
    if snap["status"] == "running":
        slot = st.empty()
        with slot.container():
            bar = st.progress(0.0, text=f"Scanning {label(key.root)}…")
            _button("Cancel scan", "scan_cancel", cancel_scan, ":material/cancel:")
        while snap["status"] == "running":
            snap = job.follow(scan, snap["version"], 0.25)
            used = snap["elapsed"]
            bar.progress(min(used / SCAN_SECONDS, 1.0),
                         text=f"Scanning {label(key.root)}: {used:.0f} s (at most "
                              f"{SCAN_SECONDS:.0f} s)…")
        slot.empty()
    if snap["status"] == "done":
        return
    _button("Scan again", "scan_again", forget_scan, ":material/refresh:")
    if snap["status"] == "cancelled" or scan.error is None:
        raise ValueError(CANCELLED)
    raise scan.error.with_traceback(None)


def _button(text: str, key: str, on_click, icon: str) -> None:
    """A button once per page run (a page that sets up twice gets it the first time)."""
    try:
        st.button(text, key=key, on_click=on_click, icon=icon)
    except StreamlitDuplicateElementKey:
        pass
