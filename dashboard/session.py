"""What a page reads before ``dashboard.state`` is imported (that import brings PyTorch and
``core``: about a second on a cold server): the one piece of session state it needs then, and
the server's page-run activity, which background work (the grid warm-up, the slider prefetch)
yields to. Everything else about sessions lives in the state package
(dashboard/state/widgets.py)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import streamlit as st

_CHARTS_STARTED = "charts_started"


def start_charts_once() -> bool:
    """True on the first call of a browser session, False afterwards.

    A page that gets True draws a placeholder chart before its heavy imports, so the browser
    fetches and compiles its chart library (plotly.js, ~1 s on 2 cores) while the server loads
    the model, instead of after it. Reruns must not redraw it: the real chart would flicker.
    """
    if st.session_state.get(_CHARTS_STARTED):
        return False
    st.session_state[_CHARTS_STARTED] = True
    return True


# Script runs in progress and when the last one started or ended, over every browser session:
# the server's background work yields to them (state/attention.py's grid warm-up,
# state/prefetch.py).
_RUNS_LOCK = threading.Lock()
_runs = {"active": 0, "last": 0.0}
QUIET_S = 1.0  # no page has run for this long: the browser has drawn what the last one sent


@contextmanager
def script_run() -> Iterator[None]:
    """Around one script run (``navigation.py``): counts it as activity."""
    with _RUNS_LOCK:
        _runs["active"] += 1
        _runs["last"] = time.monotonic()
    try:
        yield
    finally:
        with _RUNS_LOCK:
            _runs["active"] -= 1
            _runs["last"] = time.monotonic()


def quiet_for(seconds: float) -> bool:
    """Whether no script run is in progress and none started or ended in the last
    ``seconds`` (after a run ends, the browser is still drawing what it sent)."""
    with _RUNS_LOCK:
        return _runs["active"] == 0 and time.monotonic() - _runs["last"] >= seconds


def wait_quiet(seconds: float | None = None, stop: Callable[[], bool] = lambda: False) -> None:
    """Until :func:`quiet_for` ``seconds`` (default :data:`QUIET_S`) or ``stop()``: background
    work that should take the server's spare time only, never a user's."""
    while not quiet_for(QUIET_S if seconds is None else seconds) and not stop():
        time.sleep(0.05)
