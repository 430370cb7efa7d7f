"""Uploaded files kept per browser session, deleted when the session ends or sits unused.

Every session gets its own folder (named by a random token kept in its ``st.session_state``)
under one private temporary folder of the server process (``mkdtemp``: mode 0700, removed at
exit). A session never sees another's files: lookups go through its own token.

A session's folder is deleted when

- its session object goes away (a ``weakref.finalize`` on a handle stored in the session's
  state: Streamlit drops the state when the session is closed, or when a disconnected
  session's reconnect window ends);
- Streamlit's runtime no longer lists it as active for :data:`GONE_AFTER_S` (a sweep, run at
  every upload and by a server job every :data:`SWEEP_EVERY_S`): the same, should the
  garbage collector be late;
- nothing in it was used for ``idle_s`` (2 h by default).

Across all sessions the folders hold at most ``cap_bytes`` (2 GB by default, environment
variable ``PRUNELENS_UPLOADS_MB``); an upload that would go over is refused with
:class:`UploadsFullError`. A session keeps one checkpoint (the last accepted) and its last
:data:`IMAGES_PER_SESSION` pictures.
"""
from __future__ import annotations

import atexit
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import streamlit as st

from .keys import cache_resource

CAP_ENV = "PRUNELENS_UPLOADS_MB"
DEFAULT_CAP_MB = 2048
IDLE_S = 2 * 3600
GONE_AFTER_S = 5 * 60  # Streamlit keeps a disconnected session resumable for 2 min
SWEEP_EVERY_S = 60
IMAGES_PER_SESSION = 8
KINDS = ("model", "image")
_HANDLE_KEY = "_prunelens_upload_session"


class UploadsFullError(ValueError):
    """The server's upload space (all sessions together) has no room for this file."""


class UploadGoneError(FileNotFoundError):
    """A session's upload was deleted (session ended, unused too long) or never existed."""


@dataclass
class _Session:
    runtime_id: str | None
    last_used: float
    last_alive: float


class SessionUploads:
    """Per-session upload folders under ``root`` with a total cap and an idle limit.

    Args:
        root: folder that holds one sub-folder per session (created).
        cap_bytes: most bytes on disk, all sessions together.
        idle_s: a session's files are deleted after this long unused.
        alive: ``alive(runtime_id)``, is that Streamlit session still there? None: always.
        clock: seconds, monotone enough (``time.time``).
    """

    def __init__(self, root: Path, cap_bytes: int, idle_s: float = IDLE_S,
                 alive: Callable[[str], bool] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.cap_bytes, self.idle_s = int(cap_bytes), float(idle_s)
        self.alive, self.clock = alive, clock
        self._sessions: dict[str, _Session] = {}
        # re-entrant: a finalizer (drop) may run from a garbage collection inside a locked section
        self._lock = threading.RLock()

    # ---- sessions
    def open(self, token: str, runtime_id: str | None = None) -> None:
        """Register session ``token`` (its runtime id, if any, for the liveness check)."""
        now = self.clock()
        with self._lock:
            s = self._sessions.setdefault(token, _Session(runtime_id, now, now))
            s.runtime_id = runtime_id or s.runtime_id

    def drop(self, token: str) -> None:
        """Delete session ``token``'s files (idempotent; safe from any thread)."""
        with self._lock:
            self._sessions.pop(token, None)
            shutil.rmtree(self.root / token, ignore_errors=True)

    def sweep(self) -> list[str]:
        """Delete the folders of sessions that ended or sat unused; returns their tokens."""
        now = self.clock()
        with self._lock:
            items = list(self._sessions.items())
        gone = []
        for token, s in items:
            if s.runtime_id and self.alive is not None:
                if self.alive(s.runtime_id):
                    s.last_alive = now
                elif now - s.last_alive > GONE_AFTER_S:
                    gone.append(token)
                    continue
            if now - s.last_used > self.idle_s:
                gone.append(token)
        for token in gone:
            self.drop(token)
        return gone

    def sessions(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    # ---- files
    def total_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:  # deleted meanwhile by another session's cleanup
                    pass
        return total

    def save(self, token: str, kind: str, name: str, data: bytes) -> Path:
        """Store ``data`` as session ``token``'s upload → its path, ``<digest>/<name>`` (the
        sha256 names the folder, so that messages can name the user's file). A checkpoint
        replaces the session's previous one; beyond :data:`IMAGES_PER_SESSION` pictures the
        oldest goes.

        Raises:
            UploadsFullError: the cap would be exceeded.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        digest = hashlib.sha256(data).hexdigest()[:32]
        self.sweep()
        with self._lock:
            now = self.clock()
            self._sessions.setdefault(token, _Session(None, now, now)).last_used = now
            folder = self.root / token / kind
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / digest / _safe_name(name)
            if path.exists():
                os.utime(path.parent)
                return path
            if path.parent.exists():  # the same bytes under another name: the new name wins
                shutil.rmtree(path.parent, ignore_errors=True)
            keep = 1 if kind == "model" else IMAGES_PER_SESSION
            older = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
            for old in older[:max(0, len(older) - keep + 1)]:
                shutil.rmtree(old, ignore_errors=True)
            used = self.total_bytes()
            if used + len(data) > self.cap_bytes:
                raise UploadsFullError(
                    f"the server's space for uploads is full ({used / 2**20:.0f} MB of "
                    f"{self.cap_bytes / 2**20:.0f} MB in use by all sessions): try again later, "
                    "or ask whoever runs the server to raise PRUNELENS_UPLOADS_MB")
            path.parent.mkdir()
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path

    def path(self, token: str, kind: str, digest: str) -> Path:
        """Session ``token``'s upload ``digest`` (and mark the session used).

        Raises:
            UploadGoneError: not (or no longer) among this session's uploads.
        """
        with self._lock:
            s = self._sessions.get(token)
            if s is not None:
                s.last_used = self.clock()
        found = [p for p in (self.root / token / kind / digest).glob("*")
                 if not p.name.endswith(".tmp")] \
            if s is not None and digest.isalnum() else []
        if not found:
            what = "checkpoint" if kind == "model" else "image"
            raise UploadGoneError(
                f"the uploaded {what} is no longer on the server (uploads are deleted when the "
                f"browser session ends or after {self.idle_s / 3600:g} h unused): upload it again")
        return found[0]


def _safe_name(name: str) -> str:
    """The upload's base name with only ``[A-Za-z0-9._-]`` kept (a browser sends any text)."""
    base = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_"
                   for c in Path(str(name)).name)[-100:].lstrip(".")
    return base or "upload"


# ---------------------------------------------------------------------------- the server's store

def _runtime_alive(runtime_id: str) -> bool:
    from streamlit.runtime import Runtime

    return not Runtime.exists() or Runtime.instance().is_active_session(runtime_id)


def cap_bytes() -> int:
    """``PRUNELENS_UPLOADS_MB`` (default 2048) in bytes."""
    text = os.environ.get(CAP_ENV, "").strip()
    try:
        mb = float(text) if text else DEFAULT_CAP_MB
    except ValueError:
        mb = DEFAULT_CAP_MB
    return int(max(mb, 0) * 2**20)


@cache_resource(show_spinner=False)
def store() -> SessionUploads:
    """The process's upload store, in a private temporary folder removed at exit, swept by a
    server job every :data:`SWEEP_EVERY_S`."""
    from . import job

    root = Path(tempfile.mkdtemp(prefix="prunelens-uploads-"))
    atexit.register(shutil.rmtree, root, True)
    s = SessionUploads(root, cap_bytes(), alive=_runtime_alive)

    def sweep_forever(j: job.Job) -> None:
        while not j.sleep(SWEEP_EVERY_S):
            s.sweep()

    job.start("upload-sweep", sweep_forever, session=job.SERVER,
              key=("upload-sweep", str(root)))
    return s


class _Handle:
    """Lives in one session's ``st.session_state``; its finalizer deletes the session's files
    when Streamlit discards that state."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.runtime_id: str | None = None


def session_token() -> str:
    """This browser session's upload token (created, with its cleanup, on first use)."""
    handle = st.session_state.get(_HANDLE_KEY)
    if not isinstance(handle, _Handle):
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        handle = _Handle(secrets.token_hex(16))
        handle.runtime_id = ctx.session_id if ctx is not None else None
        weakref.finalize(handle, store().drop, handle.token)
        st.session_state[_HANDLE_KEY] = handle
    store().open(handle.token, handle.runtime_id)  # again after a sweep dropped it
    return handle.token


def save(kind: str, name: str, data: bytes) -> Path:
    """Keep ``data`` as this session's upload → its path (see :meth:`SessionUploads.save`)."""
    return store().save(session_token(), kind, name, data)


def path(kind: str, digest: str) -> Path:
    """This session's upload ``digest`` (:class:`UploadGoneError` if it has none such)."""
    return store().path(session_token(), kind, digest)
