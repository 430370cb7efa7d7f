"""Rollout & attribution: attention rollout, gradient rollout and Captum attributions of the
dense and the pruned model, side by side."""
import streamlit as st

from dashboard import plots, state
from dashboard.text import md, plain

exp = state.experiment()
state.sidebar_summary(exp)
st.title("Rollout & attribution", anchor=False)

with state.page_errors():
    s = state.setup_or_stop(exp)
    state.untrained_notice(s, "rollout")

    a, b, c = st.columns(3, gap="medium")
    criteria = list(exp.pruners) or list(state.pruner_names())
    crit = a.selectbox("Criterion", criteria, key="ro_criterion", format_func=state.pruner_label)
    state.widget_default("ro_sparsity", state.snap_sparsity(exp.sparsity * 100))
    sparsity = a.select_slider("Sparsity", state.SPARSITY_OPTIONS, key="ro_sparsity",
                               format_func=lambda v: f"{v}%")
    fusion = b.selectbox("Head fusion (rollout)", ["mean", "max", "min"], key="ro_fusion")
    discard = b.slider("Discard ratio", 0.0, 0.95, 0.0, 0.05, key="ro_discard",
                       help="Rollout drops this fraction of the weakest attention links per "
                            "block before multiplying (CLS→CLS is kept).")
    ref = state.image_picker(c, s, "ro")
    target = c.selectbox("Explain class", ["predicted", *s.classes], key="ro_target")
    image, label = state.image_tensor(s, ref)
    key = s.key(crit, sparsity / 100)
    tgt = None if target == "predicted" else s.classes.index(target)
    ex = state.follow_work(
        "rollout", (key, ref, fusion, float(discard), tgt), (s.model_key, s.data),
        lambda report: state.explanations(key, ref, fusion, float(discard), tgt, image),
        "Rollout, gradient rollout, saliency and integrated gradients for both models")

    def row_label(name: str) -> str:
        e = ex[name]
        who = "dense" if name == "dense" else f"{crit} {sparsity}%"
        return f"{who}<br>{plain(s.classes[e['pred']])} {e['prob']:.0%}"

    truth = plain(state.image_name(s, ref, label))
    rows = [[state.heat_cell(image, ex[n]["heats"][m]) for m in state.METHODS]
            for n in ("dense", "pruned")]
    st.plotly_chart(
        plots.image_grid(rows, [row_label("dense"), row_label("pruned")], list(state.METHODS),
                         left=state.image_cell(image, 2 * state.CELL_PX),
                         left_label=f"input ({truth})", colorbar=state.colour_bar(None),
                         title=f"dense vs {crit} at {sparsity}%: explaining class "
                               f"“{plain(s.classes[ex['dense']['target']])}”"),
        key="ro_chart", config={"displayModeBar": False}, width="content")
    m1, m2, m3 = st.columns(3)
    m1.metric("True class", truth if label is not None else
              "unknown (upload)" if ref.digest else f"unknown ({truth})")
    m2.metric("Dense prediction", s.classes[ex["dense"]["pred"]],
              f"{ex['dense']['prob']:.0%} confident", delta_color="off", delta_arrow="off")
    m3.metric(f"{md(crit)} {sparsity}% prediction", s.classes[ex["pruned"]["pred"]],
              f"{ex['pruned']['prob']:.0%} confident", delta_color="off", delta_arrow="off")
    st.caption(state.top5_text("dense", state.top5(key.at(0.0), ref, image)) + "  \n"
               + state.top5_text(f"{md(crit)} at {sparsity}%", state.top5(key, ref, image)))
    st.caption("Attention rollout (Abnar & Zuidema 2020) multiplies the head-fused attention of "
               "all blocks; gradient rollout weighs each block's attention by the gradient of "
               "the class score. Saliency is |∂score/∂pixel|; integrated gradients integrate it "
               "from a black image (32 steps). Each map is scaled to its own maximum.")
