"""PruneLens dashboard: ``streamlit run dashboard/app.py``.

This file is the server: an ``st.App`` that serves ``navigation.py`` (the page list) and, at
server start, imports PyTorch, ``core`` and the dashboard's state module off the event loop,
then fills the default pages' caches in a server job (``state/job.py``), so that the first
browser session finds them loaded and computed instead of paying for them.
"""
from __future__ import annotations

import asyncio
import logging
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
    """Import the heavy modules, then start the warm-up job. Runs on the event loop's executor
    (a thread of asyncio's, not the dashboard's): the Job mechanism is itself part of what is
    imported here."""
    logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context").addFilter(
        _NotFromWarmUp())
    t0 = time.perf_counter()
    # the collector is off for the whole process during these imports (core.boot says why)
    with boot.frozen_imports():
        try:
            # first what a page needs to draw its placeholder chart, then torch and core
            from dashboard import plots, session  # noqa: F401
            from dashboard import state
        except Exception:  # noqa: BLE001  a failed warm-up only loses time; the page reports
            log.exception("warm-up failed")
            return
    log.info("warm-up imports done in %.2f s", time.perf_counter() - t0)
    state.job.start("warm-up", _fill_caches, session=state.job.SERVER, interrupt=True)


def _fill_caches(job) -> None:
    """The warm-up job: the Prune page's defaults first (the first page shown), then the
    Attention page's default grid; stopped at exit like every job."""
    t0 = time.perf_counter()
    from dashboard import state

    with boot.frozen_imports():  # its first calls import more (the colour maps, …)
        state.warm_up()
        state.warm_up_grid(stop=lambda: job.cancelled)
    log.info("warm-up done in %.2f s", time.perf_counter() - t0)


@asynccontextmanager
async def _lifespan(_app: st.App):
    asyncio.get_running_loop().run_in_executor(None, _warm_up)
    yield


app = st.App("navigation.py", lifespan=_lifespan)
