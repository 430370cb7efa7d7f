"""What Streamlit, plotly.js and Chromium alone cost on this machine: the floor under the
dashboard's own timings (``python benchmarks/bench_dashboard.py --floor``).

A Streamlit app with the elements of the Prune page at its defaults (sidebar controls, a dense
card and two criteria cards with four metrics each, the kept-fraction chart, the saliency boxes,
two mask heat maps, two formula cards) and of the Attention page (the 4 × 10 grid of 96-pixel
cells plus per-head maps, one image each), drawn by the dashboard's own ``plots`` functions
from synthetic numbers of the same sizes. No PyTorch, no pruning, no evaluation: whatever this
app takes, the dashboard cannot take less.
"""
import numpy as np
import pandas as pd
import streamlit as st

from bench_dashboard import SPARSITY_OPTIONS  # the Prune page's slider stops
from dashboard import plots  # torch-free: plotly, pandas, numpy, pillow

LAYERS = ["patch_embed.proj"] + [f"blocks.{b}.{n}" for b in range(4)
                                 for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")] + ["head"]
CRITERIA = ("magnitude", "snip")
FORMULA = r"s_j = \frac{|g_j|}{\sum_k |g_k|},\quad g_j = \frac{\partial L(c \odot w)}{\partial c_j}"


def prune_like() -> None:
    st.title("Prune", anchor=False)
    with st.sidebar:
        st.header("Setup", divider="gray")
        st.selectbox("Model", ["vit-tiny", "linformer-vit-tiny", "deit-tiny"])
        st.selectbox("Dataset", ["shapes", "digits"])
        st.radio("Weights", ["checkpoint", "init", "upload", "folder"])
        st.multiselect("Criteria to compare", ["magnitude", "snip", "random", "grasp"],
                       default=list(CRITERIA), max_selections=6)
        pct = st.select_slider("Sparsity (% of prunable weights removed)", SPARSITY_OPTIONS,
                               value=50, format_func=lambda v: f"{v}%")
        st.radio("Scope", ["global", "layer"], horizontal=True)
        c1, c2 = st.columns(2)
        c1.number_input("Calibration batch", 1, 256, 64)
        c2.number_input("Seed", 0, 2**31 - 1, 0)
        st.number_input("Validation images", 1, 1200, 128)
    s = pct / 100
    rng = np.random.default_rng(pct)
    st.caption(f"**vit-tiny** · shapes (6 classes) · global scope · calibration 64 images · "
               f"128 validation images · seed 0")
    cols = st.columns(3)
    for col, name in zip(cols, ("dense", *CRITERIA)):
        with col.container(border=True):
            st.markdown(f"**{name}** at {pct}%")
            a, b = st.columns(2)
            a.metric("Accuracy", f"{90 * (1 - s * s):.1f}%", "-3.1 pp")
            b.metric("Loss", f"{0.2 + s:.3f}", "+0.120", delta_color="inverse")
            a.metric("Params kept", f"{1 - s:.1%}")
            b.metric("MACs kept", f"{1 - s:.1%}")
    kept = pd.DataFrame([{"layer": l, "criterion": c, "kept_fraction": float(rng.uniform(0, 1))}
                         for c in CRITERIA for l in LAYERS])
    st.subheader(f"Kept fraction per layer · vit-tiny", anchor=False)
    st.plotly_chart(plots.layer_kept(kept, s), key="kept", config={"displayModeBar": False})
    left, right = st.columns(2, gap="medium")
    with left:
        st.subheader("Saliency distribution", anchor=False)
        st.selectbox("Criterion", CRITERIA)
        med = rng.normal(-3, 1, len(LAYERS))
        stats = pd.DataFrame({"layer": LAYERS, "q1": med - 0.5, "median": med, "q3": med + 0.5,
                              "lower": med - 2, "upper": med + 2,
                              "kept_fraction": rng.uniform(0, 1, len(LAYERS))})
        st.plotly_chart(plots.score_boxes(stats, -3 + s, CRITERIA[0]), key="boxes",
                        config={"displayModeBar": False})
    with right:
        st.subheader("Mask of one layer", anchor=False)
        st.selectbox("Layer", LAYERS, index=1)
        masks = {c: (rng.uniform(size=(192, 64)) > s).astype(np.float32) for c in CRITERIA}
        st.plotly_chart(plots.mask_heatmaps(masks, LAYERS[1]), key="masks",
                        config={"displayModeBar": False})
    st.subheader("What the criteria do", anchor=False)
    fcols = st.columns(2, gap="medium")
    for i, name in enumerate(CRITERIA):
        with fcols[i].container(border=True):
            st.markdown(f"**{name}** · unstructured · data-free")
            st.latex(FORMULA)
            st.markdown("Keeps the weights whose removal would change the loss the most.")


def attention_like() -> None:
    st.title("Attention", anchor=False)
    idx = st.number_input("Sample", 0, 1199, 0)
    rng = np.random.default_rng(int(idx))
    cell = lambda: (rng.uniform(size=(96, 96, 3)) * 255).astype(np.uint8)  # noqa: E731
    ratios = [f"{r}%" for r in range(0, 100, 10)]
    cells = [[cell() for _ in ratios] for _ in range(4)]
    st.plotly_chart(plots.image_grid(cells, ["l2-norm", "snp", "taylor", "random"], ratios,
                                     captions=[["0.95"] * 10] * 4, left=cell(),
                                     colorbar={"cmin": 0, "cmax": 1, "colorscale": "Jet"}),
                    key="grid", config={"displayModeBar": False}, width="content")
    heads = [[cell() for _ in range(3)], [cell() for _ in range(3)]]
    st.plotly_chart(plots.image_grid(heads, ["dense", "pruned"], ["h1", "h2", "h3"],
                                     max_cell=128), key="heads",
                    config={"displayModeBar": False}, width="content")


st.set_page_config(page_title="floor", layout="wide")
st.navigation([st.Page(prune_like, title="Prune", default=True),
               st.Page(attention_like, title="Attention")]).run()
