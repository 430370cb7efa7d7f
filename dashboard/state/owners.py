"""Who owns a run, and who may see it.

A run started from the dashboard belongs to the browser session that started it (a random
token in its ``st.session_state``), or, once the user types a name in the sidebar, to that
name (stored as a hash of its normalised form), so that a reload, which starts a new session,
finds the runs again. Runs without an owner (the CLI's, and those of a store older than run
owners) are shared.

``PRUNELENS_RUNS_VISIBILITY``, read on every call (like ``PRUNELENS_UPLOADS_MB``):

- ``readonly`` (the default): others' runs and shared runs are listed read-only: table,
  curves and their metrics CSV; no checkpoint downloads, no delete, no cancel, no follow;
- ``private``: the Runs and Train pages show the session's own runs only (shared ones are
  hidden too: who made them cannot be told), and a ``?run=`` URL of any other run reads as
  an unknown one.

Any other value reads as ``private``: a typo must not open what it meant to close.

This is class-room separation, not authentication: anyone who types the same name is the same
owner, and the server's operator reads everything.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import unicodedata

import pandas as pd
import streamlit as st

log = logging.getLogger("prunelens.dashboard")

VISIBILITY_ENV = "PRUNELENS_RUNS_VISIBILITY"
VISIBILITIES = ("readonly", "private")
NAME_MAX = 64
K_OWNER_NAME = "runs_owner_name"    # the sidebar's text box (persists across pages)
K_OWNER_TOKEN = "runs_owner_token"  # not a widget: the session's random token
OWN, SHARED, OTHER = "yours", "shared", "another user"
_warned: set[str] = set()


def visibility() -> str:
    """``readonly`` or ``private`` (see the module docstring)."""
    text = os.environ.get(VISIBILITY_ENV, "").strip().lower()
    if not text:
        return "readonly"
    if text not in VISIBILITIES:
        if text not in _warned:
            _warned.add(text)
            log.warning("%s=%r is not one of %s: treated as 'private'", VISIBILITY_ENV, text,
                        VISIBILITIES)
        return "private"
    return text


def normalise_name(name: str) -> str:
    """The name as it is compared: NFKC, case-folded, inner spaces collapsed, trimmed."""
    text = unicodedata.normalize("NFKC", str(name or ""))
    return re.sub(r"\s+", " ", text).strip().casefold()[:NAME_MAX]


def name_owner(name: str) -> str | None:
    """The owner label of a typed name (None for a blank one)."""
    norm = normalise_name(name)
    if not norm:
        return None
    return "name:" + hashlib.sha256(norm.encode()).hexdigest()[:32]


def token_owner() -> str:
    token = st.session_state.get(K_OWNER_TOKEN)
    if not isinstance(token, str):
        token = st.session_state[K_OWNER_TOKEN] = secrets.token_hex(16)
    return "tab:" + token


def current_owner() -> str:
    """This browser session's owner label: its name's, or its own token's."""
    return name_owner(st.session_state.get(K_OWNER_NAME) or "") or token_owner()


def access(run_owner: str | None) -> str:
    """How this session relates to a run of ``run_owner``: :data:`OWN`, :data:`SHARED` (no
    owner) or :data:`OTHER`."""
    if run_owner is None or (isinstance(run_owner, float) and pd.isna(run_owner)):
        return SHARED
    return OWN if run_owner == current_owner() else OTHER


def may_see(run_owner: str | None) -> bool:
    return access(run_owner) == OWN or visibility() == "readonly"


def visible_runs(store) -> pd.DataFrame:
    """``store.list_runs()`` as this session may see it, with an ``access`` column in place of
    ``owner`` (the page never holds another session's label)."""
    runs = store.list_runs(owner=current_owner()) if visibility() == "private" \
        else store.list_runs()
    runs = runs.assign(access=runs["owner"].map(access) if len(runs) else pd.Series(dtype=str))
    return runs.drop(columns=["owner"])


def run_access(store, run_id: str | None) -> str | None:
    """:func:`access` of run ``run_id``, or None when it is unknown or hidden from this
    session (the two read the same)."""
    if not run_id:
        return None
    try:
        owner = store.get_run(run_id)["owner"]
    except (KeyError, ValueError):
        return None
    return access(owner) if may_see(owner) else None
