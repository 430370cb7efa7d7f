"""PruneLens dashboard: ``streamlit run dashboard/app.py``.

This file is the server: an ``st.App`` that serves ``navigation.py`` (the page list) and, at
server start, imports PyTorch, ``core`` and the dashboard's state module in a background
thread, so that the first browser session finds them loaded instead of paying for them.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path

import streamlit as st

# `streamlit run` puts only this folder on sys.path; pages import `core` and `dashboard`.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
# Before anything imports torch: OpenMP threads that spin while waiting made a one-image
# vit-tiny forward 100× slower (1.3 s, not 6 ms) on a busy 2-core machine; passive waiting
# costs nothing when idle and keeps 2 threads faster than 1 for batches.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

log = logging.getLogger("prunelens.dashboard")
_WARM_UP = "prunelens-warm-up"


class _NotFromWarmUp(logging.Filter):
    """Streamlit warns about every cache call made outside a browser session; the warm-up
    makes such calls on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.threadName != _WARM_UP


def _warm_up() -> None:
    """Import the heavy modules and fill the caches of the default Prune page."""
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(
        _NotFromWarmUp())
    t0 = time.perf_counter()
    # Importing torch creates millions of long-lived objects; collecting them over and over
    # while they are created costs a third of the import. So the collector is off (for the
    # whole process, the ~2 s this takes), then they are frozen: they live as long as the
    # server, and later collections skip them.
    gc.disable()
    try:
        # first what a page needs to draw its placeholder chart, then torch and core
        from dashboard import plots, session  # noqa: F401
        from dashboard import state
        state.warm_up()
    except Exception:  # noqa: BLE001  a failed warm-up only loses time; the page reports
        log.exception("warm-up failed")
    finally:
        gc.freeze()
        gc.enable()
    log.info("warm-up done in %.2f s", time.perf_counter() - t0)


@asynccontextmanager
async def _lifespan(_app: st.App):
    threading.Thread(target=_warm_up, name=_WARM_UP, daemon=True).start()
    yield


app = st.App("navigation.py", lifespan=_lifespan)
