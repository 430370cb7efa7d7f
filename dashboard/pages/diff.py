"""Diff: two models the session knows (dense, any criterion × sparsity, any run's checkpoint),
compared image by image in a background job (``core.diff.compare_models``): the flips, a
gallery of them, one example side by side, and every file to download."""
import streamlit as st

from dashboard import plots, plots_compare, state
from dashboard.state import diff
from dashboard.text import md
from core import charts
from core.diff import FLIP_KINDS

exp = state.experiment()
state.sidebar_summary(exp)
st.title("Diff", anchor=False)
st.markdown("Two models with the same accuracy can disagree on many images: every image "
            "model B newly gets wrong can be paid for by one it newly gets right, so the "
            "accuracy does not move. The flips below are the examples where that happens, "
            "and the attention change says how differently the two models look at them.")
GALLERY = 24


def side(col, who: str, s, runs: dict[str, str]) -> diff.Side:
    """One model's widgets (kind, then criterion and sparsity, or run)."""
    col.subheader(f"Model {who.upper()}", anchor=False)
    state.widget_default(f"diff_{who}_kind", "dense" if who == "a" else "pruned")
    kind = col.radio("Kind", list(diff.KINDS), format_func=diff.KINDS.get,
                     key=f"diff_{who}_kind")
    if kind == "pruned":
        state.widget_default(f"diff_{who}_pruner", exp.pruners[0] if exp.pruners else
                             state.pruner_names()[0])
        pruner = col.selectbox("Criterion", list(state.pruner_names()),
                               format_func=state.pruner_label, key=f"diff_{who}_pruner")
        state.widget_default(f"diff_{who}_sparsity", int(round(exp.sparsity * 100)))
        pct = col.select_slider("Sparsity (%)", state.SPARSITY_OPTIONS,
                                key=f"diff_{who}_sparsity")
        return diff.Side("pruned", pruner, pct / 100)
    if kind == "run":
        if not runs:
            col.info("No run with a checkpoint yet: train one on the Train page.")
            return diff.Side("run")
        run = col.selectbox("Run", list(runs), format_func=runs.get, key=f"diff_{who}_run")
        return diff.Side("run", run_id=run or "")
    return diff.Side("dense")


def show(job_id: str, live: bool) -> None:
    with state.page_errors():
        _show(job_id, live)


def _show(job_id: str, live: bool) -> None:
    job = diff.get(job_id)
    if job is None:
        st.info("That comparison is no longer in the server's memory: run it again.")
        return
    snap = state.follow(job)
    if live and snap["status"] != "running":
        st.rerun(scope="app")
    st.markdown(f"**{md(snap['label'])}**")
    if snap["status"] == "running":
        st.progress(min(snap["fraction"], 1.0), text=f"{snap['text']} · {snap['elapsed']:.0f} s")
        st.button("Cancel", key="diff_cancel", icon=":material/stop_circle:",
                  disabled=snap["cancel_requested"], on_click=diff.cancel, args=(job_id,))
        return
    if snap["status"] == "cancelled":
        st.warning(f"Cancelled ({md(snap['reason'])}); the images done are shown.",
                   icon=":material/cancel:")
    elif snap["status"] == "failed":
        st.error(f"The comparison failed: {md(snap['reason'])}", icon=":material/error:")
    df, summary = snap["df"], snap["summary"]
    if df is None or not len(df):
        return
    _numbers(snap)
    if len(summary.layer_change):
        st.plotly_chart(plots_compare.figure(charts.layer_change(summary.layer_change)),
                        key="diff_chart_layers")
    _gallery(snap)
    _exports(snap)


def _numbers(snap: dict) -> None:
    df = snap["df"]
    m = {k: snap["df"].attrs.get(f"metrics_{k}") or {} for k in ("a", "b")}
    cols = st.columns(4)
    for col, who in zip(cols, ("a", "b")):
        acc = m[who].get("accuracy")
        col.metric(f"Accuracy {who.upper()}", "–" if acc is None else f"{acc:.1%}")
    cols[2].metric("Agreement", f"{(df['pred_a'] == df['pred_b']).mean():.1%}")
    flips = int(df["flip"].isin(diff.FLIPPED).sum())
    cols[3].metric("Flipped images", f"{flips} of {len(df)}")
    counts = df["flip"].value_counts()
    st.caption(" · ".join(f"{k}: {int(counts.get(k, 0))}" for k in FLIP_KINDS))


def _gallery(snap: dict) -> None:
    st.subheader("Flipped images", anchor=False)
    df, classes = snap["df"], list(s.classes)
    a, b, c = st.columns(3)
    kinds = a.multiselect("Flip kind", list(diff.FLIPPED), default=["lost", "gained"],
                          key="diff_kinds")
    label = b.selectbox("True class", [None, *range(len(classes))], key="diff_class",
                        format_func=lambda i: "every class" if i is None else classes[i])
    sort = c.radio("Sort by", list(diff.SORTS), format_func=diff.SORTS.get, horizontal=True,
                   key="diff_sort")
    rows = diff.gallery(df, kinds, label, sort)
    if not len(rows):
        st.info("No flipped image of that kind and class.")
        return
    shown = rows.head(GALLERY)
    cells, captions = diff.gallery_cells(s, snap["n"], shown)
    picture = plots.picture_grid(cells, captions, 8)
    st.image(picture, caption=f"{len(shown)} of {len(rows)} flipped images (#index "
             "A's prediction → B's)")
    st.download_button("Gallery (PNG)", plots.png_bytes(picture), "gallery.png", "image/png",
                       key="diff_dl_gallery", on_click="ignore", icon=":material/download:")
    index = st.selectbox("Example", list(shown["index"]), key="diff_example",
                         format_func=lambda i: f"#{i} · {classes[int(df.loc[i, 'label'])]} · "
                         f"{df.loc[i, 'flip']} · change {df.loc[i, 'rollout_change']:.3f}")
    _example(snap, int(index))


def _example(snap: dict, index: int) -> None:
    d = diff.detail(s, snap, index)
    st.image(d["picture"], caption="The image; A's and B's last-layer attention and rollout; "
             "the rollout difference B − A (red: B attends more, blue: A attends more).")
    st.download_button("Side by side (PNG)", plots.png_bytes(d["picture"]),
                       f"example_{index}.png", "image/png", key="diff_dl_example",
                       on_click="ignore", icon=":material/download:")
    a, b = st.columns(2)
    a.markdown(state.top5_text("A", d["top5"][0]))
    b.markdown(state.top5_text("B", d["top5"][1]))
    if len(d["change"]):
        st.plotly_chart(plots_compare.figure(charts.layer_change(
            d["change"], "this image's attention change by layer and head")),
            key="diff_chart_example")


def _exports(snap: dict) -> None:
    files = snap["files"]
    st.subheader("Export", anchor=False)
    cols = st.columns(3)
    cols[0].download_button("Per-example table (CSV)", snap["df"].to_csv(index=False),
                            "diff.csv", "text/csv", key="diff_dl_csv", on_click="ignore",
                            type="primary", icon=":material/table:")
    if files:
        cols[1].download_button("Report (HTML)", files["report.html"], "report.html",
                                "text/html", key="diff_dl_report", on_click="ignore",
                                icon=":material/description:")
        cols[2].download_button("Summary (JSON)", files["summary.json"], "summary.json",
                                "application/json", key="diff_dl_summary", on_click="ignore",
                                icon=":material/data_object:")
        for ext, mime in (("png", "image/png"), ("svg", "image/svg+xml"), ("csv", "text/csv")):
            name = f"layer_change.{ext}"
            if name in files:
                st.download_button(f"Layer change ({ext.upper()})", files[name], name, mime,
                                   key=f"diff_dl_layers_{ext}", on_click="ignore")


def lineage_tree() -> None:
    """The run store's models as a tree; two of them become A and B."""
    nodes = diff.lineage_nodes()
    with st.expander("Lineage: every model the runs made", icon=":material/account_tree:"):
        if not nodes:
            st.caption("No run has recorded its lineage yet: fine-tune a pruned model on the "
                       "Train page.")
            return
        st.markdown("\n".join(f"{'  ' * d}- {md(text)}" for d, text, _ in nodes))
        options = [i for i, (_, _, side) in enumerate(nodes) if side is not None]
        a, b, c = st.columns([3, 3, 1])
        pa = a.selectbox("Node for A", options, key="diff_node_a",
                         format_func=lambda i: nodes[i][1])
        pb = b.selectbox("Node for B", options, key="diff_node_b",
                         format_func=lambda i: nodes[i][1])
        c.button("Diff these", key="diff_pick", disabled=pa is None or pb is None,
                 on_click=diff.pick_nodes, args=(nodes,))


with state.page_errors():
    s = state.setup_or_stop(exp)
    runs = diff.run_choices()
    lineage_tree()
    left, right = st.columns(2)
    side_a, side_b = side(left, "a", s, runs), side(right, "b", s, runs)
    job_id = diff.current_id()
    job = diff.get(job_id)
    running = job is not None and job.status == "running"
    n = st.number_input("Validation images", 8, len(s.val_set), min(128, len(s.val_set)),
                        step=64, key="diff_val")
    if st.button("Compare A and B", type="primary", key="diff_start", disabled=running,
                 icon=":material/play_arrow:"):
        diff.start(s, side_a, side_b, int(n))
        st.rerun()
    if job is not None:
        if running:
            st.fragment(run_every=1.0)(show)(job_id, True)
        else:
            show(job_id, False)
