"""The page list: ``dashboard/app.py`` (the server) serves this script. Navigation only;
pages/ hold the pages, state.py the caches and session, plots.py the figures."""

import streamlit as st

from core import boot

boot.configure()  # before the pages import torch (a no-op when app.py already did it)

from dashboard import session  # noqa: E402  (light: no PyTorch)

st.set_page_config(page_title="PruneLens", page_icon=":material/content_cut:", layout="wide")
pages = st.navigation([
    st.Page("pages/prune.py", title="Prune", icon=":material/content_cut:", default=True),
    st.Page("pages/attention.py", title="Attention", icon=":material/grid_view:"),
    st.Page("pages/rollout.py", title="Rollout & attribution", icon=":material/blur_on:"),
    st.Page("pages/tokens.py", title="Token merging", icon=":material/join_inner:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/query_stats:"),
    st.Page("pages/diff.py", title="Diff", icon=":material/difference:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_chart:"),
])
with session.script_run():  # the server's warm-up waits while pages run
    pages.run()
