"""Train: fine-tune the pruned model for a few epochs, or run the training-based pruner AMAP,
in a background thread, live (progress, curves, cancel). A ``?run=`` of another session's run
shows read-only (or, with ``PRUNELENS_RUNS_VISIBILITY=private``, as unknown); only the
session's own runs are offered to follow and cancel."""
import streamlit as st

from core.train import TrainConfig
from dashboard import plots, state
from dashboard.text import md

exp = state.experiment()
state.sidebar_summary(exp)
state.owner_sidebar()
st.title("Train", anchor=False)


def show_run(run_id: str, live: bool, own: bool) -> None:
    """Progress, curves and, for the session's own run, the cancel button of ``run_id`` (a
    fragment while it runs: its reruns happen outside the page's error guard, hence its own)."""
    with state.page_errors():
        _show_run(run_id, live, own)


def _show_run(run_id: str, live: bool, own: bool) -> None:
    job = state.get_job(run_id)
    if job is None:  # not started by this server process: what the store knows
        run = state.run_store().get_run(run_id)
        st.markdown(f"**Run {md(run_id)}** · {md(run['model'])} · {md(run['pruner'])} "
                    f"{(run['sparsity'] or 0):.0%} · status **{run['status']}**")
        if run.get("reason"):
            st.caption(md(run["reason"]))
        m = state.run_store().metrics(run_id)
        if len(m) > 1 or "val_acc" in m:
            st.plotly_chart(plots.runs_curves({run_id: m}), key="train_chart_store")
        return
    snap = state.follow(job)
    if live and snap["status"] != "running":
        st.rerun(scope="app")  # stop polling; the full page shows the final state
    st.markdown(f"**Run {md(run_id)}** · {md(snap['label'])}")
    if snap["kind"] == "amap":
        _show_amap(run_id, snap, own)
        return
    total = max(snap["total_steps"], 1)
    text = (f"epoch {max(snap['epoch'], 1)}/{snap['epochs']} · step {snap['step']}/"
            f"{snap['total_steps'] or '…'} · {snap['elapsed']:.0f} s")
    st.progress(min(snap["step"] / total, 1.0), text=text)
    if snap["status"] == "running":
        if own:
            st.button("Cancel run", key="train_cancel", icon=":material/stop_circle:",
                      disabled=snap["cancel_requested"], on_click=state.cancel_job,
                      args=(run_id,))
        if snap["cancel_requested"]:
            st.caption("Cancelling: the run stops before its next step.")
    elif snap["status"] == "done":
        st.success(f"Finished in {snap['elapsed']:.0f} s; saved in the run store as {md(run_id)}.",
                   icon=":material/check_circle:")
    elif snap["status"] == "cancelled":
        n = len(snap["history"])
        kept = (f"its {n} finished epoch(s) and checkpoint are saved" if n
                else "no epoch finished, so it has metrics but no checkpoint")
        st.warning(f"Cancelled ({md(snap['reason'])}); {kept}.", icon=":material/cancel:")
    else:
        st.error(f"The run failed: {md(snap['reason'])}", icon=":material/error:")
    if len(snap["steps"]) or len(snap["history"]):
        st.plotly_chart(plots.training_curves(snap["steps"], snap["history"]),
                        key="train_chart_live", config={"displayModeBar": False})
    if len(snap["history"]):
        h = snap["history"].iloc[-1]
        c1, c2, c3 = st.columns(3)
        c1.metric("Validation accuracy", f"{h['val_acc']:.1%}")
        c2.metric("Validation loss", f"{h['val_loss']:.3f}")
        c3.metric("Macro F1", f"{h['val_f1']:.3f}")


def _show_amap(run_id: str, snap: dict, own: bool) -> None:
    """An AMAP job: progress with the phase and the MACs ratio, loss and ratio curves, cancel;
    at the end the exported model's numbers."""
    total = max(snap["total_steps"], 1)
    r = snap["ratios"]
    now = (f" · {r['phase'].iloc[-1]} · attention MACs {r['macs_ratio'].iloc[-1]:.1%} "
           f"(budget {snap['budget']:.0%})" if len(r) else "")
    text = f"step {snap['step']}/{snap['total_steps']}{now} · {snap['elapsed']:.0f} s"
    st.progress(min(snap["step"] / total, 1.0), text=text)
    res = snap["result"]
    if snap["status"] == "running":
        if own:
            st.button("Cancel run", key="train_cancel", icon=":material/stop_circle:",
                      disabled=snap["cancel_requested"], on_click=state.cancel_job,
                      args=(run_id,))
        if snap["cancel_requested"]:
            st.caption("Cancelling: the search stops before its next step; the model is then "
                       "fitted to the budget, exported, evaluated and saved.")
        elif snap["step"] >= snap["total_steps"]:
            st.caption("Exporting the smaller model and evaluating it…")
    elif snap["status"] == "done":
        st.success(f"Finished in {snap['elapsed']:.0f} s; the exported model is saved in the "
                   f"run store as {run_id}.", icon=":material/check_circle:")
    elif snap["status"] == "cancelled":
        st.warning(f"Cancelled ({md(snap['reason'])}); the model was still fitted to the budget, "
                   "exported and saved.", icon=":material/cancel:")
    else:
        st.error(f"The run failed: {md(snap['reason'])}", icon=":material/error:")
    if len(snap["steps"]) or len(r):
        st.plotly_chart(plots.amap_curves(snap["steps"], r, snap["budget"]),
                        key="train_chart_amap", config={"displayModeBar": False})
    if res:
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Attention MACs ratio", f"{res['attention_ratio']:.1%}",
                  help=f"Budget {res['budget']:.0%}: attention MACs of the exported model "
                       "over the dense model's.")
        c2.metric("Parameters", f"{res['params'] / 1e6:.3f} M",
                  f"{(res['params_kept'] - 1) * 100:+.1f}%", delta_color="off")
        c3.metric("MACs", f"{res['macs'] / 1e6:.2f} M",
                  f"{(res['macs_kept'] - 1) * 100:+.1f}%", delta_color="off")
        c4.metric("Validation accuracy", f"{res['val_acc']:.1%}",
                  help="On the Prune page's validation subset.")


def _amap_form(s) -> None:
    """Start an AMAP run: budget, steps, batch size, training images."""
    with st.form("amap_form", border=True):
        st.markdown("**AMAP** learns, during a short training run, which query/key and value "
                    "channels of every attention head to remove so that the attention MACs "
                    "end at the budget, then exports a physically smaller model. It starts "
                    "from the experiment's base model (not from a pruned one).")
        a, b, c = st.columns(3)
        budget = a.slider("Budget (attention MACs kept)", 0.5, 1.0, 0.7, 0.05,
                          key="amap_budget", format="%.2f")
        steps = b.number_input("Steps", 1, 10_000, 100, key="amap_steps")
        batch = b.number_input("Batch size", 1, 1024, 32, key="amap_batch")
        n_train = len(state.training_set(s))
        samples = c.number_input("Training images", 64, n_train, min(3000, n_train), step=500,
                                 key="amap_samples")
        start = st.form_submit_button("Start AMAP", type="primary", key="amap_start",
                                      icon=":material/play_arrow:")
    if start:
        with st.spinner("Starting the worker…"):
            new_id = state.start_amap(s, float(budget), int(steps), int(batch), int(samples))
        state.follow_run(new_id)
        st.rerun()


def _finetune_form(s, exp) -> None:
    """Start fine-tuning a copy of the pruned model."""
    with st.form("train_form", border=True):
        st.markdown("Fine-tune a **copy** of the pruned model; its masks stay enforced. "
                    "The run is saved in the run store (Runs page).")
        a, b, c = st.columns(3)
        crit = a.selectbox("Criterion", ["dense (no pruning)", *exp.pruners],
                           index=min(1, len(exp.pruners)), key="train_criterion")
        sparsity = a.slider("Sparsity", 0, 95, int(round(exp.sparsity * 100)), 5,
                            key="train_sparsity", format="%d%%")
        epochs = b.number_input("Epochs", 1, 100, 2, key="train_epochs")
        lr = b.number_input("Learning rate", 1e-6, 1.0, 1e-3, format="%.5f", key="train_lr")
        batch = c.number_input("Batch size", 1, 1024, 128, key="train_batch")
        n_train = len(state.training_set(s))
        samples = c.number_input("Training images", 64, n_train, min(3000, n_train), step=500,
                                 key="train_samples")
        start = st.form_submit_button("Start training", type="primary", key="train_start",
                                      icon=":material/play_arrow:")
    if start:
        pruner = exp.pruners[0] if crit.startswith("dense") and exp.pruners else crit
        key = s.key(pruner, 0.0 if crit.startswith("dense") else sparsity / 100)
        config = TrainConfig(epochs=int(epochs), batch_size=int(batch), lr=float(lr),
                             seed=exp.seed)
        with st.spinner("Pruning and starting the worker…"):
            new_id = state.start_training(s, key, config, int(samples))
        state.follow_run(new_id)
        st.rerun()


MODES = {"finetune": "Fine-tune the pruned model",
         "amap": "AMAP: learn attention channels under a MAC budget"}

with state.page_errors():
    run_id = state.current_run_id()
    if run_id:
        seen = state.run_access(state.run_store(), run_id)
        job = state.get_job(run_id) if seen else None
        running = job is not None and job.status == "running"
        if seen is None:  # unknown, or hidden from this session: the same words either way
            st.info("The run in this page's address is not one you can see: it was deleted, "
                    "or it belongs to another session.", icon=":material/info:")
        elif seen != state.OWN:
            whose = "a shared run" if seen == state.SHARED else "another session's run"
            st.caption(f"Read-only: {whose}. A run you started before a reload stays yours "
                       "only under the name you gave in the sidebar.")
        if seen is not None:
            if running:
                st.fragment(run_every=1.0)(show_run)(run_id, True, seen == state.OWN)
            else:
                show_run(run_id, False, seen == state.OWN)
        if seen != state.OWN or not running:
            st.button("New run", key="train_new", icon=":material/add:",
                      on_click=state.follow_run, args=(None,))
        st.stop()

    s = state.setup_or_stop(exp)
    if not s.base.trained:
        st.info("Training a model pruned at initialisation: expect low accuracy after a few "
                "epochs (that is the point of comparing criteria at init).",
                icon=":material/info:")
    modes = [m for m in MODES if m == "finetune" or m in state.training_pruner_names()]
    mode = st.radio("What to run", modes, format_func=MODES.get, key="train_mode",
                    horizontal=True) if len(modes) > 1 else "finetune"
    if mode == "amap":
        _amap_form(s)
    else:
        _finetune_form(s, exp)

    mine = state.running_jobs()  # this session's only: others' are not offered to follow
    if mine:
        with st.expander(f"{len(mine)} of your runs training on this server",
                         icon=":material/pending:"):
            for j in mine:
                c1, c2 = st.columns([4, 1])
                c1.markdown(f"`{j['run_id']}` {md(j['label'])} · step {j['step']}/{j['total_steps']}")
                c2.button("Follow", key=f"train_follow_{j['run_id']}",
                          on_click=state.follow_run, args=(j["run_id"],))
