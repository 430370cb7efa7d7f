"""Attention: SNP's Fig. 3 grid (criteria × pruning ratios over one image) and per-head maps."""
import pandas as pd
import streamlit as st

from core import charts
from dashboard import plots, state
from dashboard.text import md, plain

KEEP = "session"  # controls keep their values across page switches and uploads
SCALES = {"cell": "per cell", "shared": "shared"}

exp = state.experiment()
state.sidebar_summary(exp)
st.title("Attention", anchor=False)

with state.page_errors():
    s = state.setup_or_stop(exp)
    state.untrained_notice(s, "attention")
    if note := state.no_class_token_note(s):
        st.caption(note)
    depth = state.num_blocks(s)

    # ---- image and view: every control is drawn before anything can stop the page, so an
    # upload in progress never resets them (Streamlit forgets widgets a run did not draw)
    c_img, c_view = st.columns([1, 2], gap="medium")
    with c_img:
        state.widget_follow("att_image_source",
                            state.IMAGE_SOURCES[state.default_image_source(s)])
        src = st.radio("Image", state.IMAGE_SOURCES, key="att_image_source", horizontal=True,
                       persist_state=KEEP)
        up, idx, photo = None, 0, ""
        if src == "upload":
            up = st.file_uploader("Picture (PNG, JPEG, …)", type=list(state.IMAGE_SUFFIXES),
                                  key="att_upload", max_upload_size=state.MAX_IMAGE_MB)
        elif src == "photo":
            state.widget_default("att_photo", state.DEFAULT_PHOTO)
            photo = st.selectbox("Photo (public domain, see assets/README.md)",
                                 state.photo_names(), key="att_photo", persist_state=KEEP)
        else:
            idx = st.number_input(f"Sample (0–{len(s.val_set) - 1})", 0, len(s.val_set) - 1,
                                  value=0, step=1, key="att_sample", persist_state=KEEP)
    with c_view:
        mode = st.radio("Map", ["CLS attention", "rollout"], key="att_mode", horizontal=True,
                        persist_state=KEEP,
                        help="CLS attention: the CLS token's row of one block. Rollout: "
                             "attention multiplied through all blocks (Abnar & Zuidema 2020).")
        a, b, c = st.columns(3)
        if mode == "CLS attention":
            layer = a.selectbox("Block shown in the grid", list(range(depth)), index=depth - 1,
                                key="att_layer", persist_state=KEEP,
                                format_func=lambda i: f"block {i + 1} of {depth}")
            heads = state.num_heads(s, layer)
            head = b.selectbox("Head", ["mean of heads", *range(heads)], key="att_head",
                               persist_state=KEEP,
                               format_func=lambda h: h if isinstance(h, str) else f"head {h + 1}")
            view = state.AttentionView("cls", int(layer),
                                       None if isinstance(head, str) else int(head))
        else:
            fusion = a.selectbox("Head fusion", ["mean", "max", "min"], key="att_fusion",
                                 persist_state=KEEP)
            discard = b.slider("Discard ratio", 0.0, 0.95, 0.0, 0.05, key="att_discard",
                               persist_state=KEEP)
            view = state.AttentionView("rollout", fusion=fusion, discard=float(discard))
        scale = c.radio("Colour scale", list(SCALES), key="att_scale", persist_state=KEEP,
                        format_func=SCALES.get,
                        help="Per cell: each map stretched to its own maximum (a near-uniform "
                             "map then looks as hot as a peaked one). Shared: one scale for "
                             "the whole grid, so colours compare across cells.")
        crit_options = list(state.pruner_names())
        state.widget_follow("att_criteria", state.default_grid_criteria(exp))
        criteria = st.multiselect("Rows: criteria", crit_options, key="att_criteria",
                                  format_func=state.pruner_label, max_selections=6,
                                  persist_state=KEEP)
    ref = state.chosen_image(s, src, up, idx, photo)
    image, label = state.image_tensor(s, ref)
    if not criteria:
        st.info("Choose at least one criterion for the rows.")
        st.stop()
    shared = scale == "shared"

    # ---- the grid (cached per model, criterion, ratio and image)
    grid = state.follow_work(
        "attention_grid",
        (tuple(s.key(c, 0.5) for c in criteria), ref, view, shared, state.RATIOS),
        (s.model_key, s.data),
        lambda report: state.attention_grid(s, criteria, state.RATIOS, ref, view,
                                            shared=shared, progress=report),
        "Pruning and capturing attention")
    for crit, msg in grid.errors.items():
        st.error(f"{md(crit)}: {md(msg)}", icon=":material/error:")
    cols, captions = charts.grid_labels(criteria, state.RATIOS, grid.similarity)
    hover = [[f"{c} at {col}: cosine similarity to dense {cap or 'n/a'}"
              for col, cap in zip(cols, caps)] for c, caps in zip(criteria, captions)]
    what = (f"block {view.layer + 1}, " + ("mean of heads" if view.head is None
                                           else f"head {view.head + 1}")
            if view.mode == "cls" else f"rollout ({view.fusion}, discard {view.discard:.0%})")
    who = plain(state.image_name(s, ref, label))
    st.plotly_chart(
        plots.image_grid(grid.cells, criteria, cols, captions=captions, hover=hover,
                         left=grid.image, left_label=f"input ({who})",
                         bottom_label="pruning ratio →",
                         title=f"CLS attention over the image: {what}",
                         colorbar=state.colour_bar(grid.vmax)),
        key="att_chart_grid", config={"displayModeBar": False}, width="content")
    st.caption(state.scale_note(grid.vmax) + " Under each cell: cosine similarity of its "
               "CLS→patch map to the dense model's (1.00 = the same map). Unstructured criteria "
               "mask weights; structured ones remove heads and channels.")
    st.caption(state.top5_text("dense model", state.top5(s.key(criteria[0], 0.0), ref, image)))
    sim = pd.DataFrame(grid.similarity, index=criteria, columns=cols)

    # ---- per-head maps of one block, before vs after
    st.subheader("Per-head maps, dense vs pruned", anchor=False)
    a, b, c = st.columns(3)
    h_crit = a.selectbox("Criterion", criteria, key="att_head_criterion",
                         format_func=state.pruner_label)
    h_ratio = b.select_slider("Pruning ratio", options=list(state.RATIOS[1:]),
                              value=0.5, key="att_head_ratio", format_func=lambda r: f"{r:.0%}")
    h_layer = c.selectbox("Block of the per-head maps", list(range(depth)), index=depth - 1,
                          key="att_head_layer", format_func=lambda i: f"block {i + 1}")
    if h_crit in grid.errors:
        st.stop()
    with st.spinner("Capturing per-head attention…"):
        before, after, h_vmax = state.head_maps(s, s.key(h_crit, h_ratio), ref, int(h_layer),
                                                shared=shared)
    n = max(len(before), len(after))
    rows = [before + [None] * (n - len(before)), after + [None] * (n - len(after))]
    st.plotly_chart(
        plots.image_grid(rows, ["dense", f"{h_crit} {h_ratio:.0%}"],
                         [f"head {h + 1}" for h in range(n)], max_cell=128,
                         colorbar=state.colour_bar(h_vmax)),
        key="att_chart_heads", config={"displayModeBar": False}, width="content")
    st.caption(state.scale_note(h_vmax))
    # built only while open: a table costs the browser a new library on its first view
    table = st.expander("Similarity table", icon=":material/table:", key="att_sim",
                        on_change="rerun")
    if table.open:
        with table:
            st.dataframe(sim.style.format("{:.3f}", na_rep="–"), key="att_sim_table")
