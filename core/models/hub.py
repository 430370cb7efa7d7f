"""Hugging Face hub ids (``org/name``) → a model folder in the standard cache.

:func:`download` fetches what :func:`~core.models.registry.load_folder` reads and nothing
else, through ``huggingface_hub`` (its cache layout, locks and resume; its tqdm bars on a
terminal): ``config.json``, checked to describe a ViT/DeiT image classifier before any weights
are fetched; ``preprocessor_config.json`` where the repository has one; ``model.safetensors``,
or ``pytorch_model.bin`` only where there is no safetensors file (read with
``torch.load(weights_only=True)``). Their sizes, from the hub's file list, are checked against
:func:`max_bytes` before anything is downloaded, and every file comes from the one commit the
revision named when the list was read.

The environment is read at each call (so a server or a test can change it):

- ``HF_ENDPOINT`` (default https://huggingface.co), ``HF_TOKEN`` (sent to that endpoint only),
  ``HF_HUB_CACHE`` / ``HF_HOME`` (where the cache is, huggingface_hub's rules);
- ``HF_HUB_OFFLINE=1``: the cache only, nothing is asked of the network;
- ``PRUNELENS_HUB_DOWNLOADS=0``: the cache only (an operator's switch; the dashboard turns
  downloads off by default when it listens beyond loopback and passes ``allow_download``);
- ``PRUNELENS_HUB_MAX_MB``: the most a model's files may weigh (default 2048).

Every failure is a one-line :class:`CheckpointError` that says what to do: an unknown repo or
revision, a gated or private one without a token (name ``HF_TOKEN``), a hub that cannot be
reached (fails at the first refused connection, or after :data:`TIMEOUT_S` without an answer;
says how to work offline), a repository over the limit, an interrupted download (the next call
resumes it: huggingface_hub keeps the partial file beside the cache's blobs, never in a
snapshot).
"""
from __future__ import annotations

import http.client
import inspect
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .checkpoint import SUPPORTED, CheckpointError, one_line, read_json
from .config_checks import stray_errors
from .hf import hub_cache_dir, hub_snapshot, is_hub_id, is_revision

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_MAX_MB = 2048
# seconds to connect to the hub, or to wait for its next bytes: an address that drops packets
# fails after this, one that refuses connections at once
TIMEOUT_S = 5.0
CONFIG = "config.json"
OPTIONAL = ("preprocessor_config.json",)
WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # in order of preference
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

Progress = Callable[[int, int], Any]
"""``progress(done_bytes, total_bytes)``, called as the files arrive."""


# ---------------------------------------------------------------------------- settings

def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in _TRUE | _FALSE:
        return value in _TRUE
    raise ValueError(f"{name} must be 1 or 0, got {value[:20]!r}")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set (huggingface_hub's reading of it)."""
    return _flag("HF_HUB_OFFLINE", False)


def downloads_allowed(default: bool = True) -> bool:
    """``PRUNELENS_HUB_DOWNLOADS`` (1 or 0) where set, else ``default``."""
    return _flag("PRUNELENS_HUB_DOWNLOADS", default)


def max_bytes() -> int:
    """The most the files of one model may weigh: ``PRUNELENS_HUB_MAX_MB`` (default 2048) MB."""
    text = os.environ.get("PRUNELENS_HUB_MAX_MB", "").strip()
    try:
        mb = float(text) if text else DEFAULT_MAX_MB
    except ValueError:
        mb = -1.0
    if not 0 < mb < 2**40:
        raise ValueError(f"PRUNELENS_HUB_MAX_MB must be a positive number of MB, got "
                         f"{text[:20]!r}")
    return int(mb * 2**20)


def check_id(repo_id: str, revision: str | None = None) -> None:
    """``repo_id`` must be ``org/name`` as the hub allows it (each part at most 96 of
    ``[A-Za-z0-9_.-]``, no ``--`` or ``..``, not starting or ending with ``-`` or ``.``) and
    ``revision`` a branch, tag or commit name; :class:`CheckpointError` otherwise."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if not (is_hub_id(str(repo_id)) and len(parts) == 2 and all(
            len(p) <= 96 and "--" not in p and ".." not in p and p[0] not in "-." and
            p[-1] not in "-." for p in parts)):
        raise CheckpointError(f"{str(repo_id)[:100]!r} is not a Hugging Face hub id "
                              "(org/name, e.g. facebook/deit-tiny-patch16-224)")
    if revision is not None and not is_revision(revision):
        raise CheckpointError(f"{str(revision)[:60]!r} is not a revision name (a branch, tag "
                              "or commit of letters, digits, '_', '.', '-' and '/')")


# ---------------------------------------------------------------------------- download

def download(repo_id: str, revision: str | None = None, progress: Progress | type | None = None,
             allow_download: bool | None = None) -> Path:
    """The snapshot folder of hub repository ``repo_id`` at ``revision`` (default: its main
    branch), downloaded into the Hugging Face cache unless already there.

    ``progress``: None for huggingface_hub's own tqdm bars; a callable ``(done_bytes,
    total_bytes)``; or a tqdm class for the bars (where the installed huggingface_hub takes
    one; older ones report once per file). ``allow_download``: False reads the cache only;
    None follows ``PRUNELENS_HUB_DOWNLOADS`` (default on). ``HF_HUB_OFFLINE`` reads the cache
    only whatever this says."""
    check_id(repo_id, revision)
    try:  # every setting read before the network is asked anything
        allowed = downloads_allowed() if allow_download is None else bool(allow_download)
        is_offline, limit = offline(), max_bytes()
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if is_offline:
        return cached(repo_id, revision, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    if not allowed:
        return cached(repo_id, revision, "downloads are turned off here "
                      "(PRUNELENS_HUB_DOWNLOADS=0, or a dashboard serving beyond this machine)")
    return _fetch(repo_id, revision, progress, limit)


def cached(repo_id: str, revision: str | None = None,
           reason: str = "nothing is downloaded") -> Path:
    """The snapshot of ``repo_id`` in the cache, with its configuration and weights (a
    download that stopped before the weights leaves a snapshot without them)."""
    snap = hub_snapshot(repo_id, revision, reason)
    missing = CONFIG if not (snap / CONFIG).is_file() else \
        None if any((snap / w).is_file() for w in WEIGHTS) else "weights"
    if missing:
        raise CheckpointError(f"the cached {repo_id} has no {missing} (its download stopped "
                              f"before them, or its config.json was refused; {reason}): "
                              "download it again with the network on")
    return snap


def _client():
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError("downloading hub ids needs huggingface_hub (pip install "
                              "huggingface_hub); or give a model folder") from None
    return huggingface_hub


def _fetch(repo_id: str, revision: str | None, progress, limit: int) -> Path:
    hub = _client()
    url, token = endpoint(), os.environ.get("HF_TOKEN") or None
    api = hub.HfApi(endpoint=url, token=token)

    def listing(rev: str | None) -> tuple[str | None, dict[str, int]]:
        with hub_errors(repo_id, rev, "list"):
            info = api.model_info(repo_id, revision=rev, files_metadata=True, timeout=TIMEOUT_S)
        sizes = {s.rfilename: s.size for s in info.siblings or ()}
        return info.sha, needed_files(repo_id, sizes, limit)

    sha, files = listing(revision)
    report = _Report(progress, sum(files.values()))
    get = dict(repo_id=repo_id, cache_dir=hub_cache_dir(), endpoint=url, token=token,
               etag_timeout=TIMEOUT_S, **report.kwargs())
    with hub_errors(repo_id, revision, "download", CONFIG):
        # the branch or tag itself, so that the cache records what it points to (refs/)
        config = Path(hub.hf_hub_download(filename=CONFIG, revision=revision, **get))
    report.file_done(files[CONFIG])
    commit = config.parent.name
    if sha and commit != sha:  # the branch moved between the two requests: list that commit
        sha, files = listing(commit)
    where = f"config.json of {repo_id}"
    with stray_errors(CheckpointError, where):
        check_config(read_json(config), where)
    for name in files:
        if name != CONFIG:
            with hub_errors(repo_id, revision, "download", name):
                hub.hf_hub_download(filename=name, revision=commit, **get)
            report.file_done(files[name])
    # the same checks as a cache read: the snapshot and its files stay inside the repository's
    # cache folder (a link planted there earlier is not followed out)
    return hub_snapshot(repo_id, commit)


def needed_files(repo_id: str, sizes: dict[str, int | None], limit: int) -> dict[str, int]:
    """The files of a repository (name → size in bytes) that PruneLens reads, their sum
    checked against ``limit`` bytes: the configuration, the preprocessing, one weights
    file."""
    if CONFIG not in sizes:
        listed = ", ".join(sorted(sizes)[:6]) or "no files"
        raise CheckpointError(f"{repo_id} has no config.json, so it is no Hugging Face or timm "
                              f"model (it holds {listed}); PruneLens reads {SUPPORTED}")
    weights = next((w for w in WEIGHTS if w in sizes), None)
    if weights is None:
        sharded = any(n.endswith(".index.json") for n in sizes)
        raise CheckpointError(
            f"{repo_id} holds " + ("a sharded checkpoint (*.index.json); PruneLens reads "
                                   "single-file weights" if sharded else
                                   "no model.safetensors or pytorch_model.bin"))
    names = [CONFIG, *(n for n in OPTIONAL if n in sizes), weights]
    unknown = [n for n in names if not isinstance(sizes[n], int) or sizes[n] < 0]
    if unknown:
        raise CheckpointError(f"{endpoint()} does not say how large {', '.join(unknown)} of "
                              f"{repo_id} is, so its size cannot be checked before downloading")
    files = {n: int(sizes[n]) for n in names}
    total = sum(files.values())
    if total > limit:
        raise CheckpointError(
            f"{repo_id} is too large: {weights} and its configuration are "
            f"{total / 2**20:,.0f} MB, over the limit of {limit / 2**20:,.0f} MB "
            "(PRUNELENS_HUB_MAX_MB); nothing was downloaded")
    return files


def check_config(cfg: dict, where: str) -> None:
    """A Hugging Face (``model_type``) or timm (``architecture``) ``config.json`` must describe
    a model PruneLens reads: the checks of the folder readers, before any weights are read."""
    if "architecture" in cfg:
        from .timm_format import _timm_fields
        try:
            _timm_fields(cfg, where)
        except ValueError as e:
            raise CheckpointError(one_line(e)) from None
        return
    from .hf import _architecture, hf_config_fields
    _architecture(cfg, {}, where)
    hf_config_fields(cfg, where)


class _Report:
    """Bytes done over every file, for a ``progress(done, total)`` callable: live through a
    tqdm class where huggingface_hub takes one (``tqdm_class``), else once per file."""

    def __init__(self, progress, total: int) -> None:
        self.progress, self.total, self.done = progress, total, 0
        if callable(progress) and not isinstance(progress, type):
            progress(0, total)

    def kwargs(self) -> dict:
        from huggingface_hub import hf_hub_download
        if self.progress is None or "tqdm_class" not in inspect.signature(
                hf_hub_download).parameters:
            return {}
        return {"tqdm_class": self.progress if isinstance(self.progress, type) else self._bar()}

    def file_done(self, size: int) -> None:
        self.done += size
        if callable(self.progress) and not isinstance(self.progress, type):
            self.progress(min(self.done, self.total), self.total)

    def _bar(self) -> type:
        from tqdm.auto import tqdm
        report = self

        class Bar(tqdm):
            """Counts the bytes of one file and reports them; draws nothing."""

            def __init__(self, *args, name: str | None = None, **kwargs) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)
                self.seen = int(kwargs.get("initial") or 0)

            def update(self, n: float | None = 1) -> None:
                self.seen += int(n or 0)
                report.progress(min(report.done + self.seen, report.total), report.total)

        return Bar


# ---------------------------------------------------------------------------- errors

def _is_network_error(e: BaseException) -> bool:
    """A refused, reset or timed-out connection: requests' errors are OSError (huggingface_hub
    < 1); those of httpx / httpx2 and their httpcore (1.x, 2.x) are not, and are told by the
    package that raises them."""
    package = type(e).__module__.split(".")[0].rstrip("0123456789")
    return isinstance(e, OSError) or package in ("httpx", "httpcore", "h11", "h2", "urllib3",
                                                 "requests")


@contextmanager
def hub_errors(repo_id: str, revision: str | None, step: str, filename: str = "") -> Iterator[None]:
    """huggingface_hub's errors while listing (``step`` "list") or downloading ``filename`` →
    one-line :class:`CheckpointError` saying what to do."""
    from huggingface_hub import errors

    url, token = endpoint(), bool(os.environ.get("HF_TOKEN"))
    offline_hint = ("or work offline: HF_HUB_OFFLINE=1 with the model already in the Hugging "
                    "Face cache (HF_HUB_CACHE or HF_HOME)")
    try:
        yield
    except CheckpointError:
        raise
    except errors.GatedRepoError:
        raise CheckpointError(
            f"{repo_id} is a gated repository: " +
            ("the token in HF_TOKEN has not been granted access; accept its conditions on "
             f"{url}/{repo_id} with that account" if token else
             f"accept its conditions on {url}/{repo_id}, then set HF_TOKEN to an access token "
             "of that account")) from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(
            f"{repo_id!r} is not a local path, and {url} has no model repository of that name" +
            (" that the token in HF_TOKEN can read" if token else
             " (if it is private, set HF_TOKEN to an access token that can read it)")) from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r} on {url} (a branch, tag "
                              "or commit)") from None
    except errors.LocalEntryNotFoundError as e:  # huggingface_hub's "cannot reach the hub"
        raise CheckpointError(f"cannot reach {url} to download {filename or repo_id} of "
                              f"{repo_id} ({_cause(e)}); check the network, "
                              f"{offline_hint}") from None
    except errors.OfflineModeIsEnabled:
        raise CheckpointError(f"huggingface_hub was started offline (HF_HUB_OFFLINE), so "
                              f"{repo_id} cannot be downloaded; use a model in the cache") from None
    except errors.HFValidationError as e:  # what check_id let through
        raise CheckpointError(f"{repo_id!r}: {one_line(e, 200)}") from None
    except errors.EntryNotFoundError:
        raise CheckpointError(f"{repo_id}: {filename} is listed but {url} does not serve "
                              "it") from None
    except errors.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "an error")
        raise CheckpointError(f"{url} answered HTTP {status} for {repo_id}"
                              f"{' ' + filename if filename else ''}: {one_line(e, 160)}") from None
    except Exception as e:  # noqa: BLE001  (re-raised unless it is the network's)
        if not _is_network_error(e):
            raise
        if step == "list":
            raise CheckpointError(f"cannot reach the Hugging Face hub at {url} ({_cause(e)}); "
                                  f"check the network (HF_ENDPOINT, proxy), "
                                  f"{offline_hint}") from None
        raise CheckpointError(f"the download of {filename} of {repo_id} from {url} was "
                              f"interrupted ({_cause(e)}); run the same command again to resume "
                              "it") from None


def _cause(e: BaseException) -> str:
    """The innermost reason of a chain of network errors, in a few words."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(seen):
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError,
                            http.client.IncompleteRead)) or type(err).__name__ in (
                                "RemoteProtocolError", "ReadError"):  # httpx's words
            return "the connection was closed"
        if isinstance(err, socket.gaierror):
            return "host name not found"
        if isinstance(err, TimeoutError) or "timeout" in type(err).__name__.lower():
            return f"no answer within {TIMEOUT_S:g} s"
    return type(seen[-1]).__name__
