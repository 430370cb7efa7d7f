"""The one piece of session state a page reads before ``dashboard.state`` is imported (that
import brings PyTorch and ``core``: about a second on a cold server). Everything else about
sessions lives in the state package (dashboard/state/widgets.py)."""
from __future__ import annotations

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
