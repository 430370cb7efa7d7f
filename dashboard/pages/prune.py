"""Prune: pick a model, data and criteria; compare what each keeps, costs and breaks."""
import time

import streamlit as st

from dashboard import plots, session

st.title("Prune", anchor=False)
head = st.container()   # caption, notices, progress and the headline numbers
kept_slot = st.empty()  # the per-layer chart; a placeholder until its numbers exist
if session.start_charts_once():
    kept_slot.plotly_chart(plots.placeholder("Kept fraction per layer",
                                             "Loading the model and pruning…"),
                           config={"displayModeBar": False, "staticPlot": True})

import pandas as pd  # noqa: E402  (after the placeholder: these load PyTorch and core)

from dashboard import state  # noqa: E402

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
        st.selectbox("Folder on the server", state.dataset_folders(), key=state.K_FOLDER,
                     persist_state=PERSIST, format_func=state.folder_label,
                     accept_new_options=True, placeholder="Choose, or type a path",
                     help="One sub-folder of images per class (ImageFolder layout), inside the "
                          "server's data folders (PRUNELENS_DATA_ROOTS).")
    source = st.radio("Weights", list(state.SOURCES), key=state.K_SOURCE, persist_state=PERSIST,
                      format_func=lambda src: state.source_label(src, preset, dataset))
    if source == "upload":
        up = st.file_uploader("Checkpoint (.safetensors, or weights-only .pt/.pth)",
                              type=["safetensors", "pt", "pth"], key="prune_upload_file",
                              max_upload_size=state.MAX_MODEL_MB)
        if up is not None:
            try:
                state.accept_model_upload(up.name, up.getvalue(), up.file_id)
            except state.EXPECTED_ERRORS as e:
                st.error(f"Upload rejected: {e}", icon=":material/error:")
        elif state.upload_name():
            st.caption(f"Using {state.upload_name()}")
    elif source == "folder":
        st.selectbox("Model folder on the server", state.model_folders(),
                     key=state.K_MODEL_FOLDER, persist_state=PERSIST,
                     format_func=state.folder_label, accept_new_options=True,
                     placeholder="Choose, or type a path",
                     help="A Hugging Face save_pretrained or timm folder (config.json + "
                          "model.safetensors) inside the server's data folders, or a model in "
                          "its Hugging Face cache.")
    model_note = st.empty()  # what was loaded, once the page has set it up
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


def prune_all(s: "state.Setup", exp: "state.Experiment",
              bar) -> tuple[dict, dict, dict[str, str]]:
    """Prune with every criterion (scores cached: a slider move only re-thresholds them).
    Returns the criteria's keys and per-layer kept tables by name, and the failures."""
    keys, tables, failed = {}, {}, {}
    for i, name in enumerate(exp.pruners):
        bar.progress(i / (2 * len(exp.pruners) + 1), text=f"{name}: scoring and masking")
        try:
            key = s.key(name)
            tables[name] = state.layer_kept(key)
            keys[name] = key
        except state.EXPECTED_ERRORS as e:
            failed[name] = str(e)
    return keys, tables, failed


def evaluate_all(s: "state.Setup", exp: "state.Experiment", keys: dict,
                 bar) -> tuple[dict, dict[str, str]]:
    """Accuracy, loss and cost of the dense model and of each pruned one (no fine-tuning)."""
    dense = s.key(exp.pruners[0], 0.0)
    results = {"dense": {"eval": state.evaluation(dense, exp.val_samples),
                         "cost": state.cost(dense)}}
    failed = {}
    n = len(exp.pruners)
    for i, (name, key) in enumerate(keys.items()):
        bar.progress((n + 1 + i) / (2 * n + 1), text=f"{name}: evaluating")
        try:
            results[name] = {"key": key, "eval": state.evaluation(key, exp.val_samples),
                             "cost": state.cost(key)}
        except state.EXPECTED_ERRORS as e:
            failed[name] = str(e)
    return results, failed


def headline(results: dict, ok: list[str], sparsity: float) -> None:
    """One card for the dense model and one per criterion: accuracy, loss, what is kept."""
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
            st.markdown(f"**{name}** at {sparsity:.0%}")
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


def details(keys: dict, ok: list[str], exp: "state.Experiment"):
    """Saliency distribution, one layer's mask and the teaching cards; returns the slot for
    the numbers table (filled once the evaluations are done) and the criterion shown."""
    left, right = st.columns(2, gap="medium")
    with_scores = [n for n in ok if state.pruner_info(n)["kind"] == "unstructured"]
    crit = None
    with left:
        st.subheader("Saliency distribution", anchor=False)
        if with_scores:
            crit = st.selectbox("Criterion", with_scores, key="prune_dist_criterion")
            stats, cut = state.score_distribution(keys[crit])
            st.plotly_chart(plots.score_boxes(stats, cut, crit), key="prune_chart_scores",
                            config={"displayModeBar": False})
            st.caption("Boxes: quartiles of log₁₀ |keep-score| per layer, whiskers 1.5 IQR."
                       + (" Signed scores (GraSP): magnitudes shown, no single cut."
                          if cut is None and exp.scope == "global" else ""))
        else:
            st.info("Structured criteria score heads and channels, not weights.")
    with right:
        st.subheader("Mask of one layer", anchor=False)
        if with_scores:
            layers = state.mask_layers(keys[with_scores[0]])
            layer = st.selectbox("Layer", layers, key="prune_mask_layer",
                                 index=min(1, len(layers) - 1))
            mats = {n: state.mask_matrix(keys[n], layer) for n in with_scores}
            st.plotly_chart(plots.mask_heatmaps({n: m for n, m in mats.items() if m is not None},
                                                layer),
                            key="prune_chart_mask", config={"displayModeBar": False})
        else:
            st.info("Structured criteria remove whole heads and channels: no weight mask.")
    numbers = st.container()

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
    return numbers, crit


def numbers_table(results: dict, ok: list[str], crit: str | None) -> None:
    """Every figure of the cards in one table, built only while its expander is open (a table
    widget costs the browser a new library on first view)."""
    numbers = st.expander("All numbers", icon=":material/table:", key="prune_numbers",
                          on_change="rerun")
    if not numbers.open:
        return
    with numbers:
        d_eval, d_cost = results["dense"]["eval"], results["dense"]["cost"]
        rows = [{"criterion": "dense", **{f"val_{k}": v for k, v in d_eval.items()}, **d_cost}]
        rows += [{"criterion": n, **{f"val_{k}": v for k, v in results[n]["eval"].items()},
                  **results[n]["cost"],
                  "collapsed_layers": state.collapsed_layers(results[n]["key"])}
                 for n in ok]
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="prune_table")
        if crit and crit in results and st.toggle(
                "Per-layer scores and saliency shares of " + crit, key="prune_show_layer_table"):
            st.dataframe(state.saliency_table(results[crit]["key"]), hide_index=True,
                         key="prune_layer_table")


def kept_chart(exp: "state.Experiment", tables: dict, ok: list[str]) -> None:
    """Per-layer kept fraction of every criterion, in the slot above the details."""
    long = pd.concat([tables[n].assign(criterion=n) for n in ok])
    with kept_slot.container():
        st.subheader("Kept fraction per layer", anchor=False)
        st.plotly_chart(plots.layer_kept(long, exp.sparsity if exp.scope == "global" else None),
                        key="prune_chart_kept", config={"displayModeBar": False})


def page() -> None:
    """Masks and charts first, then the evaluations, whose numbers fill the cards above: the
    browser draws the charts while the server evaluates."""
    global drawn
    with head:
        exp = state.experiment()
        if exp.dataset == "folder" and not exp.folder.strip():
            st.info("Enter the path of an image folder on the server in the sidebar "
                    "(one sub-folder per class).", icon=":material/folder_open:")
            return
        if not exp.pruners:
            st.info("Choose at least one criterion in the sidebar.", icon=":material/checklist:")
            return
        s = state.setup(exp)
        model_note.caption(state.model_note(s))
        st.caption(f"**{s.base.label}** · {exp.dataset} ({len(s.classes)} classes) · "
                   f"{exp.scope} scope · calibration {exp.calib} images · seed {exp.seed}")
        state.untrained_notice(s, "prune")
        progress = st.empty()  # a progress bar while working, then one line of what was done
        problems, cards = st.container(), st.container()
    started = time.perf_counter()
    bar = progress.progress(0.0, text="pruning")
    keys, tables, failed = prune_all(s, exp, bar)
    ok = list(keys)
    numbers, crit = None, None
    if ok:
        kept_chart(exp, tables, ok)
        drawn = True
        numbers, crit = details(keys, ok, exp)
    results, eval_failed = evaluate_all(s, exp, keys, bar)
    failed.update(eval_failed)
    ok = [n for n in ok if n in results]
    progress.caption(f":material/{'error' if failed else 'check_circle'}: "
                     f"{len(ok)} of {len(exp.pruners)} criteria at {exp.sparsity:.0%} "
                     f"sparsity · {time.perf_counter() - started:.2f} s")
    with problems:
        for name, msg in failed.items():
            st.error(f"{name}: {msg}", icon=":material/error:")
    if not ok:
        return
    with cards:
        headline(results, ok, exp.sparsity)
        state.pruned_downloads({n: keys[n] for n in ok})
    with numbers:
        numbers_table(results, ok, crit)


drawn = False
with state.page_errors():
    try:
        page()
    finally:  # stopped early or failed before the chart: no placeholder left behind
        if not drawn:
            kept_slot.empty()
