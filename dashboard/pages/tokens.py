"""Tokens: token merging (ToMe), the second axis beside weight pruning. Which patches each
block merged into one token, over the image (the ToMe paper's Fig. 4), and accuracy against
MACs for a range of r."""
import streamlit as st

from dashboard import plots, state
from dashboard.text import md, plain

CURVE_RS = (0, 1, 2, 3, 4, 6, 8, 10, 13, 16)

exp = state.experiment()
state.sidebar_summary(exp)
st.title("Token merging", anchor=False)
st.caption("ToMe (Bolya et al., ICLR 2023) merges the r most similar tokens in every block "
           "(bipartite matching on the attention keys, size-weighted averages, attention "
           "weighted by how many patches a token holds). It removes tokens instead of "
           "weights: no data, no training. Class and distillation tokens are never merged.")

with state.page_errors():
    s = state.setup_or_stop(exp)
    state.untrained_notice(s, "tokens")
    depth = state.num_blocks(s)
    a, c = st.columns([2, 1], gap="medium")
    top = min(32, state.max_r(s.model_key))
    r = a.slider("r: tokens merged in each block", 0, top, min(8, top), key="tok_r")
    ref = state.image_picker(c, s, "tok")
    image, label = state.image_tensor(s, ref)
    v = state.merge_view(s.model_key, ref, int(r), image)

    per_row = 6
    cells = state.overlay_cells(v, 2 * state.CELL_PX)
    rows = [cells[i:i + per_row] for i in range(0, len(cells), per_row)]
    rows[-1] += [None] * (per_row - len(rows[-1]))
    captions = [[f"{n - 1} patch tokens" for n in v.tokens[1 + i:1 + i + per_row]]
                for i in range(0, len(cells), per_row)]
    captions[-1] += [""] * (per_row - len(captions[-1]))
    truth = plain(state.image_name(s, ref, label))
    st.plotly_chart(
        plots.image_grid(rows, [f"blocks {i + 1}–{min(i + per_row, depth)}"
                                for i in range(0, len(cells), per_row)],
                         [f"after block {j + 1}" if len(cells) <= per_row and j < len(cells)
                          else "" for j in range(per_row)],
                         captions=captions, left=state.image_cell(image, 2 * state.CELL_PX),
                         left_label=f"input ({truth})",
                         title=f"r = {r}: patches merged into one token share a colour"),
        key="tok_chart_groups", config={"displayModeBar": False}, width="content")
    top_d, top_m = int(v.probs_dense.argmax()), int(v.probs.argmax())
    m1, m2, m3 = st.columns(3)
    m1.metric("Tokens after the last block", v.tokens[-1], f"{v.tokens[-1] - v.tokens[0]}",
              delta_color="off")
    m2.metric("MACs kept", f"{v.macs_ratio:.1%}", f"{v.macs / 1e6:.1f} M of "
              f"{v.macs_dense / 1e6:.1f} M", delta_color="off", delta_arrow="off")
    m3.metric(f"Prediction (dense: {md(s.classes[top_d])} {v.probs_dense[top_d]:.0%})",
              s.classes[top_m], f"{v.probs[top_m]:.0%} confident", delta_color="off",
              delta_arrow="off")

    st.subheader("Accuracy against MACs", anchor=False)
    rs = tuple(x for x in CURVE_RS if x <= top)
    df = state.follow_work(
        "tokens_curve", (s.model_key, s.data, exp.val_samples, rs), (s.model_key, s.data),
        lambda report: state.merge_curve(s.model_key, s.data, exp.val_samples, rs, report),
        f"ToMe at r = {', '.join(map(str, rs))} on {exp.val_samples} validation images")
    st.plotly_chart(plots.merge_curve(df), key="tok_chart_curve")
    st.download_button("Accuracy against r (.csv)", df.to_csv(index=False), "tome_curve.csv",
                       "text/csv", key="tok_curve_csv", icon=":material/download:")
    st.caption("r larger than a block can merge (half of its patch tokens) is clipped. The "
               "numbers use the fixed validation subset of the Prune page. Speed on a CPU "
               "roughly follows the token count (benchmarks/bench_tokens.py); the details are "
               "in docs/tokens.md.")
