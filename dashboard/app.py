"""PruneLens dashboard: ``streamlit run dashboard/app.py``.

This file is the server: an ``st.App`` that serves ``navigation.py`` (the page list) and, at
server start, imports PyTorch, ``core`` and the dashboard's state module in a background
thread, so that the first browser session finds them loaded instead of paying for them.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager

import streamlit as st

from core import boot

boot.configure()  # before anything imports torch

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
    # the collector is off for the whole process during these imports (core.boot says why)
    with boot.frozen_imports():
        try:
            # first what a page needs to draw its placeholder chart, then torch and core
            from dashboard import plots, session  # noqa: F401
            from dashboard import state
            state.warm_up()       # the Prune page's defaults first: the first page shown
            state.warm_up_grid()  # then the Attention page's default grid
        except Exception:  # noqa: BLE001  a failed warm-up only loses time; the page reports
            log.exception("warm-up failed")
    log.info("warm-up done in %.2f s", time.perf_counter() - t0)


@asynccontextmanager
async def _lifespan(_app: st.App):
    threading.Thread(target=_warm_up, name=_WARM_UP, daemon=True).start()
    yield


app = st.App("navigation.py", lifespan=_lifespan)
