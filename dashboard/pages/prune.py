"""Prune: pick a model, data and criteria; compare what each keeps, costs and breaks."""
import time

import pandas as pd
import streamlit as st

from dashboard import plots, state

state.seed_experiment_widgets()
PERSIST = "session"  # the other pages read this setup, and it survives page switches

with st.sidebar:
    st.header("Setup", divider="gray")
    preset = st.selectbox("Model", state.model_names(), key=state.K_MODEL,
                          persist_state=PERSIST,
                          help="vit-tiny and linformer-vit-tiny are 32×32 CPU models with "
                               "shipped checkpoints; the 224×224 presets are slow on a CPU.")
    dataset = st.selectbox("Dataset", state.dataset_names(), key=state.K_DATASET,
                           persist_state=PERSIST)
    if dataset == "folder":
        st.text_input("Folder on the server", key=state.K_FOLDER, persist_state=PERSIST,
                      placeholder="/data/plantvillage/train",
                      help="One sub-folder of images per class (torchvision ImageFolder layout).")
    source = st.radio("Weights", list(state.SOURCES), key=state.K_SOURCE, persist_state=PERSIST,
                      format_func=lambda src: state.source_label(src, preset, dataset))
    if source == "upload":
        up = st.file_uploader("Checkpoint (.safetensors, or weights-only .pt/.pth)",
                              type=["safetensors", "pt", "pth"], key="prune_upload_file",
                              max_upload_size=state.MAX_MODEL_MB)
        if up is not None:
            try:
                state.accept_model_upload(up.name, up.getvalue())
            except state.EXPECTED_ERRORS as e:
                st.error(f"Upload rejected: {e}", icon=":material/error:")
        elif state.upload_name():
            st.caption(f"Using {state.upload_name()}")
    st.multiselect("Criteria to compare", state.pruner_names(), format_func=state.pruner_label,
                   key=state.K_PRUNERS, persist_state=PERSIST, max_selections=6)
    if state.training_pruner_names():
        st.caption(f"Training-based: {', '.join(state.training_pruner_names())} — run it from "
                   "the Train page (mode “AMAP”), where it shows its progress and can be "
                   "cancelled.")
    st.slider("Sparsity (% of prunable weights removed)", 5, 95, step=5, key=state.K_SPARSITY,
              persist_state=PERSIST, format="%d%%")
    st.radio("Scope", ["global", "layer"], key=state.K_SCOPE, persist_state=PERSIST,
             horizontal=True, help="global: one threshold over all layers; layer: the same "
                                   "fraction removed from every layer.")
    c1, c2 = st.columns(2)
    c1.number_input("Calibration batch", 1, state.CALIBRATION_POOL, step=16,
                    key=state.K_CALIB, persist_state=PERSIST,
                    help="Images the data-driven criteria score on.")
    c2.number_input("Seed", 0, 2**31 - 1, key=state.K_SEED, persist_state=PERSIST)
    st.number_input("Validation images", 16, 100_000, step=64, key=state.K_VAL,
                    persist_state=PERSIST, help="Accuracy and loss are measured on a fixed "
                    "subset of the validation split: more images, finer numbers, slower "
                    "re-renders (each criterion evaluates them at every slider move).")

st.title("Prune", anchor=False)

with state.page_errors():
    exp = state.experiment()
    if exp.dataset == "folder" and not exp.folder.strip():
        st.info("Enter the path of an image folder on the server in the sidebar "
                "(one sub-folder per class).", icon=":material/folder_open:")
        st.stop()
    if not exp.pruners:
        st.info("Choose at least one criterion in the sidebar.", icon=":material/checklist:")
        st.stop()
    s = state.setup(exp)
    st.caption(f"**{s.base.label}** · {exp.dataset} ({len(s.classes)} classes) · "
               f"{exp.scope} scope · calibration {exp.calib} images · seed {exp.seed}")
    state.untrained_notice(s, "prune")

    # ---- prune with every criterion (cached: a slider move only re-thresholds)
    started = time.perf_counter()
    status = st.status("Pruning…", expanded=False)
    bar = status.progress(0.0)
    dense = s.key(exp.pruners[0], 0.0)
    results, failed = {}, {}
    steps = len(exp.pruners) + 1
    with status:
        bar.progress(0.0, text="dense model")
        results["dense"] = {"eval": state.evaluation(dense, exp.val_samples),
                            "cost": state.cost(dense)}
        for i, name in enumerate(exp.pruners, start=1):
            bar.progress(i / steps, text=f"{name}: scoring, masking, evaluating")
            key = s.key(name)
            try:
                results[name] = {"key": key, "eval": state.evaluation(key, exp.val_samples),
                                 "cost": state.cost(key)}
            except state.EXPECTED_ERRORS as e:
                failed[name] = str(e)
        bar.progress(1.0, text="done")
    status.update(label=f"{len(results) - 1} criteria at {exp.sparsity:.0%} sparsity · "
                        f"{time.perf_counter() - started:.2f} s",
                  state="error" if failed else "complete")
    for name, msg in failed.items():
        st.error(f"{name}: {msg}", icon=":material/error:")
    ok = [n for n in exp.pruners if n in results]

    # ---- headline numbers
    d_eval, d_cost = results["dense"]["eval"], results["dense"]["cost"]
    cards = st.columns(min(len(ok) + 1, 4))
    with cards[0].container(border=True):
        st.markdown("**Dense model**")
        a, b = st.columns(2)
        a.metric("Accuracy", f"{d_eval['accuracy']:.1%}")
        b.metric("Loss", f"{d_eval['loss']:.3f}")
        a.metric("Parameters", f"{d_cost['params'] / 1e6:.3f} M")
        b.metric("MACs", f"{d_cost['macs'] / 1e6:.2f} M")
    for i, name in enumerate(ok, start=1):
        r = results[name]
        with cards[i % len(cards)].container(border=True):
            st.markdown(f"**{name}** at {exp.sparsity:.0%}")
            a, b = st.columns(2)
            a.metric("Accuracy", f"{r['eval']['accuracy']:.1%}",
                     f"{(r['eval']['accuracy'] - d_eval['accuracy']) * 100:+.1f} pp")
            b.metric("Loss", f"{r['eval']['loss']:.3f}",
                     f"{r['eval']['loss'] - d_eval['loss']:+.3f}", delta_color="inverse")
            a.metric("Params kept", f"{r['cost']['params_kept']:.1%}")
            b.metric("MACs kept", f"{r['cost']['macs_kept']:.1%}",
                     help="Masked weights count as removed (sparse MACs); structured "
                          "criteria are counted on the smaller model.")
            collapsed = state.collapsed_layers(r["key"])
            if collapsed:
                st.warning(f"Layer collapse: {collapsed} layer(s) lost ≥ 99% of their weights.",
                           icon=":material/warning:")
    if not ok:
        st.stop()

    # ---- per-layer kept fraction, all criteria side by side
    st.subheader("Kept fraction per layer", anchor=False)
    long = pd.concat([state.layer_kept(results[n]["key"]).assign(criterion=n) for n in ok])
    st.plotly_chart(plots.layer_kept(long, exp.sparsity if exp.scope == "global" else None),
                    key="prune_chart_kept", config={"displayModeBar": False})

    left, right = st.columns(2, gap="medium")
    with left:
        st.subheader("Saliency distribution", anchor=False)
        with_scores = [n for n in ok if state.pruner_info(n)["kind"] == "unstructured"]
        if with_scores:
            crit = st.selectbox("Criterion", with_scores, key="prune_dist_criterion")
            stats, cut = state.score_distribution(results[crit]["key"])
            st.plotly_chart(plots.score_boxes(stats, cut, crit), key="prune_chart_scores",
                            config={"displayModeBar": False})
            st.caption("Boxes: quartiles of log₁₀ |keep-score| per layer, whiskers 1.5 IQR."
                       + (" Signed scores (GraSP): magnitudes shown, no single cut."
                          if cut is None and exp.scope == "global" else ""))
        else:
            st.info("Structured criteria score heads and channels, not weights.")
    with right:
        st.subheader("Mask of one layer", anchor=False)
        masked = [n for n in ok if state.pruner_info(n)["kind"] == "unstructured"]
        if masked:
            layers = state.mask_layers(results[masked[0]]["key"])
            layer = st.selectbox("Layer", layers, key="prune_mask_layer",
                                 index=min(1, len(layers) - 1))
            mats = {n: state.mask_matrix(results[n]["key"], layer) for n in masked}
            st.plotly_chart(plots.mask_heatmaps({n: m for n, m in mats.items() if m is not None},
                                                layer),
                            key="prune_chart_mask", config={"displayModeBar": False})
        else:
            st.info("Structured criteria remove whole heads and channels: no weight mask.")

    with st.expander("All numbers", icon=":material/table:"):
        rows = [{"criterion": "dense", **{f"val_{k}": v for k, v in d_eval.items()},
                 **d_cost}]
        rows += [{"criterion": n, **{f"val_{k}": v for k, v in results[n]["eval"].items()},
                  **results[n]["cost"],
                  "collapsed_layers": state.collapsed_layers(results[n]["key"])}
                 for n in ok]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="prune_table")
        if with_scores and st.toggle("Per-layer scores and saliency shares of " + crit,
                                     key="prune_show_layer_table"):
            st.dataframe(state.saliency_table(results[crit]["key"]), hide_index=True,
                         key="prune_layer_table")

    # ---- teaching
    st.subheader("What the criteria do", anchor=False)
    cols = st.columns(2, gap="medium")
    for i, n in enumerate(exp.pruners):
        info = state.pruner_info(n)
        with cols[i % 2].container(border=True):
            st.markdown(f"**{n}** · {info['kind']} · "
                        + ("needs calibration data" if info["needs_data"] else "data-free"))
            if info["formula"]:
                st.latex(info["formula"])
            st.markdown(info["explanation"] or "_No description._")
