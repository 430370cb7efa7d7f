"""The page list: ``dashboard/app.py`` (the server) serves this script. Navigation only;
pages/ hold the pages, state.py the caches and session, plots.py the figures."""
import os
import sys
from pathlib import Path

import streamlit as st

# `streamlit run` puts only this folder on sys.path; pages import `core` and `dashboard`.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
# Before the pages import torch: OpenMP threads that spin while waiting made a one-image
# vit-tiny forward 100× slower (1.3 s, not 6 ms) on a busy 2-core machine; passive waiting
# costs nothing when idle and keeps 2 threads faster than 1 for batches.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

st.set_page_config(page_title="PruneLens", page_icon=":material/content_cut:", layout="wide")
st.navigation([
    st.Page("pages/prune.py", title="Prune", icon=":material/content_cut:", default=True),
    st.Page("pages/attention.py", title="Attention", icon=":material/grid_view:"),
    st.Page("pages/rollout.py", title="Rollout & attribution", icon=":material/blur_on:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_chart:"),
]).run()
