"""Runs: the run store as a table, curves of chosen runs overlaid, downloads, deletion.

The session's own runs are its to download and delete; others' are listed read-only or not at
all (``state.owners``: ``PRUNELENS_RUNS_VISIBILITY``)."""
import streamlit as st

from dashboard import plots, state
from dashboard.text import md

st.title("Runs", anchor=False)
state.owner_sidebar()

with state.page_errors():
    store = state.run_store()
    runs = state.visible_runs(store)
    mine = runs.loc[runs["access"] == state.OWN, "id"].tolist()
    st.caption(f"The server's run store · {len(runs)} run(s) shown, {len(mine)} of them yours")
    if runs.empty:
        st.info("No runs yet: start one on the Train page.", icon=":material/info:")
        st.stop()

    runs["pruner"] = runs["pruner"].fillna("dense")
    runs["sparsity"] = runs["sparsity"].fillna(0.0)
    f1, f2, f3, f4 = st.columns(4)
    pick = {
        "model": f1.multiselect("Model", sorted(runs["model"].unique()), key="runs_f_model"),
        "pruner": f2.multiselect("Pruner", sorted(runs["pruner"].unique()), key="runs_f_pruner"),
        "sparsity": f3.multiselect("Sparsity", sorted(runs["sparsity"].unique()),
                                   key="runs_f_sparsity", format_func=lambda v: f"{v:.0%}"),
        "status": f4.multiselect("Status", sorted(runs["status"].unique()), key="runs_f_status"),
    }
    shown = runs
    for col, values in pick.items():
        if values:
            shown = shown[shown[col].isin(values)]
    cols = [c for c in ("id", "created", "access", "model", "dataset", "pruner", "sparsity",
                        "status", "epochs", "val_acc", "val_loss", "train_loss", "reason")
            if c in shown.columns]
    st.dataframe(
        shown[cols], hide_index=True, key="runs_table",
        column_config={
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
            "access": st.column_config.TextColumn(
                "owner", help="yours: started by this browser tab or your name; shared: "
                              "made by the command line or an older PruneLens (read-only); "
                              "another user's runs are read-only."),
            "sparsity": st.column_config.NumberColumn("sparsity", format="percent"),
            "val_acc": st.column_config.ProgressColumn("val. accuracy", format="percent",
                                                       min_value=0, max_value=1),
            "val_loss": st.column_config.NumberColumn("val. loss", format="%.3f"),
            "train_loss": st.column_config.NumberColumn("train loss", format="%.3f"),
        })
    if shown.empty:
        st.info("No run matches the filters.")
        st.stop()

    def label(run_id: str) -> str:
        r = runs.set_index("id").loc[run_id]
        return f"{run_id} · {r['model']} · {r['pruner']} {r['sparsity']:.0%} · {r['status']}"

    ids = shown["id"].tolist()
    st.subheader("Compare", anchor=False)
    chosen = st.multiselect("Runs to overlay", ids, default=ids[:min(3, len(ids))],
                            key="runs_compare", format_func=label)
    curves = {f"{r} ({runs.set_index('id').loc[r, 'pruner']})": store.metrics(r) for r in chosen}
    curves = {k: v for k, v in curves.items() if "val_acc" in v}
    if curves:
        st.plotly_chart(plots.runs_curves(curves), key="runs_chart",
                        config={"displayModeBar": False})
    elif chosen:
        st.info("The chosen runs have no finished epoch yet.")

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Download", anchor=False)
        run_id = st.selectbox("Run", ids, key="runs_download_run", format_func=label)
        if runs.set_index("id").loc[run_id, "access"] == state.OTHER:
            st.caption("Another user's checkpoint is theirs to download; its metrics are "
                       "below.")
        else:
            state.run_downloads(store.checkpoint_path(run_id), f"prunelens_{run_id}")
        st.download_button("Metrics (.csv)", data=store.metrics(run_id).to_csv(index=False),
                           file_name=f"prunelens_{run_id}_metrics.csv", mime="text/csv",
                           key="runs_dl_csv", icon=":material/download:")
    with right:
        st.subheader("Delete", anchor=False)
        own_ids = [r for r in ids if r in mine]
        pending = tuple(r for r in state.pending_delete() if r in mine)
        if not own_ids and not pending:
            st.caption("You can delete the runs you started (in this browser tab, or under "
                       "your name); there are none here.")
        elif not pending:
            doomed = st.multiselect("Runs to delete", own_ids, key="runs_delete_select",
                                    format_func=label)
            st.button("Delete…", key="runs_delete", disabled=not doomed,
                      icon=":material/delete:", on_click=state.set_pending_delete,
                      args=(tuple(doomed),))
        else:
            st.warning(f"Delete {len(pending)} run(s) with their metrics and checkpoints? "
                       "This cannot be undone.", icon=":material/warning:")
            c1, c2 = st.columns(2)
            confirm = c1.button("Confirm delete", key="runs_delete_confirm", type="primary")
            c2.button("Cancel", key="runs_delete_cancel", on_click=state.set_pending_delete,
                      args=((),))
            if confirm:
                errors = []
                for r in pending:
                    try:
                        store.delete_run(r, owner=state.current_owner())
                    except (ValueError, KeyError, PermissionError) as e:
                        errors.append(f"{r}: {e}")
                state.set_pending_delete(())
                if errors:
                    st.error("Not deleted: " + md("; ".join(errors)), icon=":material/error:")
                else:
                    st.rerun()
