"""Compare: criteria the way papers do. A one-shot sweep over criteria × sparsities × seeds
(× ToMe token-merging r: the joint axis) in a background job (progress, cancel): accuracy and
attention fidelity curves with mean ± std bands, accuracy against MACs (and latency) of every
point with the Pareto frontier, optional layer sensitivity, and every chart, the Fig. 3 grid and an HTML report to
download, with the command line that reproduces them."""
import streamlit as st

from core import study
from dashboard import plots_compare, state
from dashboard.text import md
from dashboard.state import compare

X_CHOICES = {"sparsity": "sparsity", "kept": "fraction kept (log axis)",
             "macs_kept": "MACs kept (structured and unstructured together)"}
METRIC_CHOICES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "loss": "loss"}
EXPORTS = {"accuracy_vs_sparsity": "Accuracy vs sparsity",
           "accuracy_vs_kept": "Accuracy vs fraction kept", "accuracy_vs_macs":
           "Accuracy vs MACs kept", "fidelity_vs_sparsity": "Attention fidelity",
           "pareto_macs": "Accuracy vs MACs, Pareto frontier",
           "pareto_latency": "Accuracy vs latency, Pareto frontier",
           "grid": "Fig. 3 grid", "sensitivity": "Layer sensitivity"}
PARETO_CHOICES = {"macs_kept": "MACs kept", "latency_ms": "latency (measured)"}
MIME = {"png": "image/png", "svg": "image/svg+xml", "csv": "text/csv"}

exp = state.experiment()
state.sidebar_summary(exp)
st.title("Compare", anchor=False)


def show(job_id: str, live: bool) -> None:
    """Progress and cancel while the job runs (a fragment: its own error guard); the charts
    and the exports once it is over."""
    with state.page_errors():
        _show(job_id, live)


def _show(job_id: str, live: bool) -> None:
    job = compare.get_sweep(job_id)
    if job is None:
        st.info("That comparison is no longer in the server's memory: run it again.")
        return
    snap = state.follow(job)
    if live and snap["status"] != "running":
        st.rerun(scope="app")  # stop polling; the full page shows the results
    st.markdown(f"**{md(snap['label'])}**")
    if snap["status"] == "running":
        st.progress(min(snap["fraction"], 1.0),
                    text=f"{snap['text']} · {snap['elapsed']:.0f} s")
        st.button("Cancel", key="compare_cancel", icon=":material/stop_circle:",
                  disabled=snap["cancel_requested"], on_click=compare.cancel_sweep,
                  args=(job_id,))
        if snap["cancel_requested"]:
            st.caption("Cancelling: the sweep stops before its next point.")
        return
    if snap["status"] == "done":
        st.success(f"Done in {snap['elapsed']:.0f} s.", icon=":material/check_circle:")
    elif snap["status"] == "cancelled":
        st.warning(f"Cancelled ({md(snap['reason'])}); the points done are shown, no exports.",
                   icon=":material/cancel:")
    else:
        st.error(f"The comparison failed: {md(snap['reason'])}", icon=":material/error:")
    df = snap["df"]
    if df is None or not len(df):
        return
    a, b = st.columns(2)
    x = a.radio("x axis", list(X_CHOICES), format_func=X_CHOICES.get, key="compare_x",
                horizontal=True)
    metric = b.radio("Metric", list(METRIC_CHOICES), format_func=METRIC_CHOICES.get,
                     key="compare_metric", horizontal=True)
    curves = study.at_r(df)  # the curves: the pruned models at the smallest r
    r0 = int(curves["r"].iloc[0])
    if r0 or df["r"].nunique() > 1:
        st.caption(f"Curves at ToMe r = {r0}; every r is in the width × tokens chart below.")
    st.plotly_chart(plots_compare.sweep_curves(curves, x, metric, snap["kinds"]),
                    key="compare_chart_curves")
    if curves["cls_cosine"].notna().any():
        st.plotly_chart(plots_compare.fidelity_curves(curves, snap["kinds"]),
                        key="compare_chart_fidelity")
    timed = df["latency_ms"].notna().any()
    px = st.radio("Width × tokens: cost axis", list(PARETO_CHOICES) if timed
                  else ["macs_kept"], format_func=PARETO_CHOICES.get, key="compare_pareto_x",
                  horizontal=True,
                  help="Latency is the median of a few batch-1 forwards on this server during "
                       "the comparison: noisy, and only comparable within one run.")
    st.plotly_chart(plots_compare.pareto_chart(df, px, snap["kinds"]),
                    key="compare_chart_pareto")
    if snap["sensitivity"] is not None and len(snap["sensitivity"]):
        st.plotly_chart(plots_compare.sensitivity_heatmap(snap["sensitivity"]),
                        key="compare_chart_sensitivity")
    with st.expander("Every point", icon=":material/table:"):
        st.dataframe(df, key="compare_table", hide_index=True)
    _exports(snap)


def _exports(snap: dict) -> None:
    """Download buttons: each chart as PNG, SVG and CSV, the sweep, the HTML report; and the
    command line that computes the same files."""
    files = snap["files"]
    if not files:
        return
    st.subheader("Export", anchor=False)
    st.caption("Figures at publication size (PNG at 300 dpi, SVG with real text); each "
               "chart's numbers as CSV; the report is one HTML file that opens offline.")
    top = st.columns(3)
    top[0].download_button("Report (HTML)", files["report.html"], "report.html", "text/html",
                           key="compare_dl_report", on_click="ignore", type="primary",
                           icon=":material/description:")
    top[1].download_button("All points (CSV)", files["sweep.csv"], "sweep.csv", "text/csv",
                           key="compare_dl_sweep", on_click="ignore",
                           icon=":material/table:")
    for stem, title in EXPORTS.items():
        if f"{stem}.png" not in files:
            continue
        cols = st.columns([3, 1, 1, 1])
        cols[0].markdown(title)
        for col, fmt in zip(cols[1:], ("png", "svg", "csv")):
            col.download_button(fmt.upper(), files[f"{stem}.{fmt}"], f"{stem}.{fmt}",
                                MIME[fmt], key=f"compare_dl_{stem}_{fmt}", on_click="ignore",
                                icon=":material/download:")
    st.markdown("The command that computes the same files:")
    st.code(snap["command"], language="bash")


with state.page_errors():
    s = state.setup_or_stop(exp)
    state.untrained_notice(s, "compare")
    job_id = compare.current_sweep_id()
    job = compare.get_sweep(job_id)
    running = job is not None and job.status == "running"
    with st.form("compare_form", border=True):
        st.markdown("One-shot pruning (no fine-tuning) of every criterion at every sparsity; "
                    "scores are computed once per criterion and seed, only the thresholds "
                    "move along the curve. Model, dataset, scope and calibration size come "
                    "from the Prune page.")
        state.widget_default("compare_criteria", list(exp.pruners))
        criteria = st.multiselect("Criteria", list(state.pruner_names()),
                                  key="compare_criteria", format_func=state.pruner_label)
        state.widget_default("compare_sparsities",
                             ", ".join(f"{x * 100:g}" for x in compare.DEFAULT_SPARSITIES))
        text = st.text_input("Sparsities (%)", key="compare_sparsities",
                             help="Comma-separated percentages of weights removed; 0 is the "
                                  "dense model.")
        a, b, c = st.columns(3)
        seeds = a.number_input("Calibration seeds", 1, 10, 1, key="compare_seeds",
                               help="Seeds 0 … K−1: each draws another calibration batch "
                                    "(and another random mask); curves show mean ± std.")
        val = b.number_input("Validation images", 8, len(s.val_set),
                             min(128, len(s.val_set)), step=64, key="compare_val",
                             help="A fixed class-stratified random subset of the validation "
                                  "split (seed 0): the images the Prune page measures on.")
        sens = c.checkbox("Layer sensitivity", key="compare_sensitivity",
                          help="Also prune one layer at a time at 30, 60 and 90% (structured: "
                               "one block's q/k, v or FFN) and show the accuracy drop.")
        d, e = st.columns([2, 1])
        state.widget_default("compare_r", [0])
        rs = d.multiselect("Token merging r (ToMe)", list(compare.TOME_RS), key="compare_r",
                           help="Each pruned model is measured again merging r tokens per "
                                "block (0: no merging): accuracy against MACs of every "
                                "criterion × sparsity × r, with the Pareto frontier.")
        lat = e.checkbox("Measure latency", key="compare_latency",
                         help="Time a batch-1 forward of every point (median of a few): wall "
                              "time on this server, noisy.")
        start = st.form_submit_button("Run the comparison", type="primary",
                                      key="compare_start", icon=":material/play_arrow:",
                                      disabled=running)
    if start:
        spec = compare.Spec(tuple(criteria), compare.parse_sparsities(text), int(seeds),
                            int(val), exp.calib, exp.scope, bool(sens),
                            tuple(sorted(int(r) for r in rs)), bool(lat))
        compare.follow_sweep(compare.start_sweep(s, spec))
        st.rerun()
    if job is not None:
        if running:
            st.fragment(run_every=1.0)(show)(job_id, True)
        else:
            show(job_id, False)
