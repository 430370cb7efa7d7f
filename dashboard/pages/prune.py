"""Prune: pick a model, data and criteria; compare what each keeps, costs and breaks."""
import re
from dataclasses import replace

import streamlit as st

from dashboard import plots, session
from dashboard.text import md

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
    source = st.radio("Weights", state.weight_sources(), key=state.K_SOURCE,
                      persist_state=PERSIST, format_func=state.SOURCES.get,
                      on_change=state.source_chosen)
    if source == "upload":
        up = st.file_uploader("Checkpoint (.safetensors, or weights-only .pt/.pth)",
                              type=["safetensors", "pt", "pth"], key="prune_upload_file",
                              max_upload_size=state.MAX_MODEL_MB)
        if up is not None:
            try:
                state.accept_model_upload(up.name, up.getvalue(), up.file_id)
            except state.EXPECTED_ERRORS as e:
                st.error(f"Upload rejected: {md(e)}", icon=":material/error:")
        elif state.upload_name():
            st.caption(f"Using {md(state.upload_name())}")
    elif source == "folder":
        st.selectbox("Model folder on the server", state.model_folders(),
                     key=state.K_MODEL_FOLDER, persist_state=PERSIST,
                     format_func=state.folder_label, accept_new_options=True,
                     placeholder="Choose, or type a path",
                     help="A Hugging Face save_pretrained or timm folder (config.json + "
                          "model.safetensors) inside the server's data folders, or a model in "
                          "its Hugging Face cache.")
    elif source == "hub":
        st.text_input("Hugging Face hub id", key=state.K_HUB_ID, persist_state=PERSIST,
                      placeholder="org/name or org/name@revision", max_chars=200,
                      help="A ViT or DeiT image classifier on the Hugging Face hub (transformers "
                           "or timm), e.g. facebook/deit-tiny-patch16-224: downloaded once into "
                           "the server's Hugging Face cache, with a progress bar.")
    model_note = st.empty()  # what was loaded, once the page has set it up
    st.multiselect("Criteria to compare", state.pruner_names(), format_func=state.pruner_label,
                   key=state.K_PRUNERS, persist_state=PERSIST, max_selections=6)
    if state.training_pruner_names():
        st.caption(f"Training-based: {', '.join(state.training_pruner_names())} — run it from "
                   "the Train page (mode “AMAP”), where it shows its progress and can be "
                   "cancelled.")
    st.select_slider("Sparsity (% of prunable weights removed)", state.SPARSITY_OPTIONS,
                     key=state.K_SPARSITY, persist_state=PERSIST, format_func=lambda v: f"{v}%",
                     help="Steps of 5% up to 90%, then of 1%: the region where unstructured "
                          "criteria part ways.")
    st.radio("Scope", ["global", "layer"], key=state.K_SCOPE, persist_state=PERSIST,
             horizontal=True, help="global: one threshold over all layers; layer: the same "
                                   "fraction removed from every layer. Wanda compares within "
                                   "each output row either way.")
    pattern = st.selectbox("Pattern", state.PATTERNS, key=state.K_PATTERN, persist_state=PERSIST,
                           help="N:M sparsity for the unstructured criteria: every group of M "
                                "consecutive inputs of a row keeps its N highest scores, so "
                                "the sparsity is 1 − N/M. GPUs with sparse tensor cores run "
                                "2:4 faster; a CPU runs it no faster than any mask.")
    if pattern != "unstructured":
        st.caption(f"{md(pattern)} fixes the unstructured criteria at "
                   f"{state.pattern_sparsity(pattern):.0%}; the slider and the "
                   "scope apply to structured criteria, which ignore the pattern.")
    c1, c2 = st.columns(2)
    c1.number_input("Calibration batch", 1, state.CALIBRATION_POOL, step=16,
                    key=state.K_CALIB, persist_state=PERSIST,
                    help="Images the data-driven criteria score on.")
    c2.number_input("Seed", 0, 2**31 - 1, key=state.K_SEED, persist_state=PERSIST)
    val_slot = st.empty()  # filled once the validation split's size is known (page())


def validation_input(s: "state.Setup") -> int:
    """The validation-image count, bounded by the split's size (and saying so)."""
    cap = len(s.val_set)
    state.bound_widget(state.K_VAL, cap)
    with val_slot.container():
        n = st.number_input("Validation images", 1, cap, step=64, key=state.K_VAL,
                            persist_state=PERSIST,
                            help="Accuracy and loss are measured on a fixed subset of the "
                                 "validation split, the same on every page and in the command "
                                 "line: each class its share of the N images, drawn at random "
                                 "with seed 0. More images, finer numbers, slower. The page "
                                 "shows numbers on the first few images at once and refines "
                                 "them.")
        st.caption(f"The {md(s.exp.dataset)} validation split has {cap} images (the most "
                   "this can be).")
    return int(n)


def si(x: float, unit: str = "") -> str:
    """1234567 → "1.23 M" (three significant digits, so a number fits its card)."""
    for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {p}{unit}"
    return f"{x:.3g} {unit}".strip()


def pct(x: float) -> str:
    """A fraction as a percentage that fits a card: "93.0%", "100%"."""
    return "100%" if x >= 0.9995 else f"{x:.1%}"


def num(x: float) -> str:
    """A loss with at most five characters before any unit: 0.221, 12.34, 123.4."""
    return f"{x:.3f}" if abs(x) < 10 else f"{x:.2f}" if abs(x) < 100 else f"{x:.4g}"


def at_label(key: "state.PruneKey") -> str:
    """"50%", or "50% · 2:4" under a pattern."""
    return f"{key.sparsity:.0%}" + (f" · {md(key.pattern)}" if key.pattern else "")


def headline(results: dict, ok: list[str], at: dict[str, str], label: str,
             masked: tuple[str, ...] = (), failed: dict | None = None) -> None:
    """One card for the dense model and one per criterion (three to a row): accuracy, loss,
    what is kept (``at``: each criterion's sparsity, and pattern). Criteria still being
    computed get a card that says which step they are at (``masked``: scored and masked,
    being evaluated). ``results``: ``study.PointReport`` per name (``state.point``), None
    for a criterion still being computed."""
    d_eval, d_cost = results["dense"].metrics, results["dense"].cost
    names = ["dense", *ok]
    per_row = min(len(names), 3)
    for start in range(0, len(names), per_row):
        cols = st.columns(per_row)
        for col, name in zip(cols, names[start:start + per_row]):
            with col.container(border=True):
                if name == "dense":
                    st.markdown(f"**Dense model** · {md(label)}")
                    a, b = st.columns(2)
                    a.metric("Accuracy", pct(d_eval["accuracy"]))
                    b.metric("Loss", num(d_eval["loss"]))
                    a.metric("Parameters", si(d_cost["params"]))
                    b.metric("MACs", si(d_cost["macs"]))
                    continue
                r = results[name]
                st.markdown(f"**{md(name)}** at {at[name]}")
                if r is None:
                    st.caption("failed: the reason is above" if name in (failed or {})
                               else "evaluating…" if name in masked else "scoring and masking…")
                    continue
                a, b = st.columns(2)
                a.metric("Accuracy", pct(r.metrics["accuracy"]),
                         f"{(r.metrics['accuracy'] - d_eval['accuracy']) * 100:+.1f} pp")
                b.metric("Loss", num(r.metrics["loss"]),
                         f"{r.metrics['loss'] - d_eval['loss']:+.3f}", delta_color="inverse")
                a.metric("Params kept", pct(r.cost["params_kept"]))
                b.metric("MACs kept", pct(r.cost["macs_kept"]),
                         help="Masked weights count as removed (sparse MACs); structured "
                              "criteria are counted on the smaller model.")
                if r.pattern:
                    st.caption(md(r.nm))
                if r.collapsed:
                    st.warning(f"Layer collapse: {r.collapsed} layer(s) lost ≥ 99% of their "
                               "weights.", icon=":material/warning:")


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
                st.latex(stacked(info["formula"]))
            st.markdown(info["explanation"] or "_No description._")
    return numbers, crit


def stacked(formula: str) -> str:
    """A formula's ``\\quad``-separated parts on lines of their own (one column of a card is
    too narrow for GraSP's, SynFlow's or SNP's on one line)."""
    parts = [p.strip().rstrip(",").strip() for p in re.split(r"\\quad", formula) if p.strip()]
    return parts[0] if len(parts) == 1 else (r"\begin{gathered}" + r" \\ ".join(parts)
                                             + r"\end{gathered}")


def numbers_table(results: dict, keys: dict, ok: list[str], crit: str | None) -> None:
    """Every figure of the cards in one table, built only while its expander is open (a table
    widget costs the browser a new library on first view)."""
    numbers = st.expander("All numbers", icon=":material/table:", key="prune_numbers",
                          on_change="rerun")
    if not numbers.open:
        return
    with numbers:
        rows = [results[n].row() for n in ("dense", *ok)]  # study.PointReport.row
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="prune_table")
        if crit and crit in results and st.toggle(
                "Per-layer scores and saliency shares of " + crit, key="prune_show_layer_table"):
            st.dataframe(state.saliency_table(keys[crit]), hide_index=True,
                         key="prune_layer_table")


def kept_chart(exp: "state.Experiment", tables: dict, ok: list[str], label: str) -> None:
    """Per-layer kept fraction of every criterion, in the slot above the details."""
    long = pd.concat([tables[n].assign(criterion=n) for n in ok])
    with kept_slot.container():
        st.subheader(f"Kept fraction per layer · {md(label)}", anchor=False)
        target = exp.sparsity if exp.scope == "global" and exp.pattern == "unstructured" else None
        st.plotly_chart(plots.layer_kept(long, target),
                        key="prune_chart_kept", config={"displayModeBar": False})


def plural(n: int, word: str) -> str:
    """"1 image", "2 images", "6 classes"."""
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def model_changed(exp: "state.Experiment") -> bool:
    """Whether this run shows another model or dataset than the last one drew cards for."""
    return state.changed_since_last_run(
        "prune_cards_for", (exp.preset, exp.source, exp.dataset, exp.folder, exp.upload,
                            exp.seed if exp.source == "init" else 0))


def page() -> None:
    """Setup, then the work in a background thread (``state.prune_work``): cards as numbers
    arrive (first slice of the validation images, then refined), the charts once every
    criterion is masked, progress with an estimate and a Cancel button meanwhile."""
    global drawn
    exp = state.experiment()
    with head:
        info, progress, problems, cards = (st.container(), st.empty(), st.container(),
                                           st.container())
    # the previous model's cards must not stay beside the new model's chart while it loads
    holder = cards.empty() if model_changed(exp) else None
    with info:
        if exp.dataset == "folder" and not exp.folder.strip():
            st.info("Enter the path of an image folder on the server in the sidebar "
                    "(one sub-folder per class).", icon=":material/folder_open:")
            return
        if not exp.pruners:
            st.info("Choose at least one criterion in the sidebar.", icon=":material/checklist:")
            return
        s = state.setup(exp)
        exp = replace(exp, val_samples=validation_input(s))
        s = replace(s, exp=exp)
        model_note.caption(state.model_note(s))
        st.caption(f"**{md(s.base.label)}** · {md(exp.dataset)} ({plural(len(s.classes), 'class')}) · "
                   f"{exp.scope} scope · "
                   + (f"{md(exp.pattern)} for unstructured criteria · "
                      if exp.pattern != "unstructured" else "")
                   + f"calibration {plural(exp.calib, 'image')} · "
                   f"{state.val_subset_label(exp.val_samples, len(s.val_set))} · "
                   f"calibration seed {exp.seed}")
        capped = {n: s.calib(n) for n in exp.pruners if s.calib(n) < exp.calib}
        if capped:
            st.caption(":material/memory: Calibration batch capped so that scoring fits "
                       f"{state.SCORE_MB:.0f} MB of activations (PRUNELENS_SCORE_MB): "
                       + ", ".join(f"{n} on {plural(c, 'image')}" for n, c in capped.items())
                       + ".")
        ignored = [n for n in exp.pruners if exp.pattern != "unstructured"
                   and state.pruner_info(n)["kind"] != "unstructured"]
        if ignored:
            st.caption(f"{md(exp.pattern)} applies to unstructured criteria: "
                       f"{md(', '.join(ignored))} prune at the slider's sparsity without it.")
        state.untrained_notice(s, "prune")
    work = state.start_prune_work(s, exp, restart=state.take_flag("prune_restart"))
    seen, shown, drawn_details, numbers, crit = 0, -1, False, None, None
    bar = None
    while True:
        snap = state.follow(work, seen, 0.25 if bar is None else 0.5)
        seen = snap["version"]
        if snap["status"] == "running" and bar is None and snap["elapsed"] > 0.3:
            with progress.container():
                bar = st.progress(0.0)
                st.button("Cancel", key="prune_cancel", icon=":material/stop_circle:",
                          on_click=work.cancel, args=("cancelled",))
        if bar is not None and snap["status"] == "running":
            bar.progress(snap["fraction"], text=state.describe_work(snap))
        r = snap["results"]
        if snap["version"] != shown and r.get("upto", {}).get("dense"):
            shown = snap["version"]
            ok = [n for n in r["order"] if n in r["pruned"]]
            # every re-render draws the same elements (a line, a card per criterion):
            # Streamlit keeps those of the same run it does not overwrite
            holder = cards.empty() if holder is None else holder
            with holder.container():
                upto = r["upto"]
                have = [n for n in ok if upto.get(n)]
                m = min(upto[n] for n in ("dense", *have))
                results = {"dense": state.point(s.key(exp.pruners[0], 0.0), exp.val_samples, m)}
                for n in exp.pruners:
                    results[n] = (state.point(s.key(n), exp.val_samples, m) if n in have
                                  else None)
                st.caption(f":material/hourglass_top: Numbers on the first "
                           f"{plural(m, 'validation image')} of {r['n']}; refining…"
                           if m < r["n"] else f"Numbers on all {plural(m, 'validation image')}.")
                headline(results, list(exp.pruners),
                         {n: at_label(s.key(n)) for n in exp.pruners}, s.base.label, tuple(ok),
                         r["failed"])
            if not drawn_details and ok and len(ok) + len(r["failed"]) == len(exp.pruners):
                keys = {n: s.key(n) for n in exp.pruners if n in ok}
                kept_chart(exp, {n: state.layer_kept(k) for n, k in keys.items()}, list(keys),
                           s.base.label)
                drawn = drawn_details = True
                numbers, crit = details(keys, list(keys), exp)
        if snap["status"] != "running":
            break
    r = snap["results"]
    with problems:
        for name, msg in r.get("failed", {}).items():
            st.error(f"{md(name)}: {md(msg)}", icon=":material/error:")
    if snap["status"] == "cancelled":
        with progress.container():
            st.warning(f"Stopped after {snap['elapsed']:.0f} s ({md(snap['reason'])}): the numbers "
                       "below are those computed so far.", icon=":material/stop_circle:")
            st.button("Resume", key="prune_resume", icon=":material/play_arrow:",
                      on_click=state.set_flag, args=("prune_restart",))
        return
    if snap["status"] == "failed":
        raise RuntimeError(snap["reason"])
    ok = [n for n in exp.pruners if n in r.get("pruned", [])]
    progress.caption(f":material/{'error' if r.get('failed') else 'check_circle'}: "
                     f"{len(ok)} of {len(exp.pruners)} criteria at {exp.sparsity:.0%} "
                     "sparsity"
                     + (f" ({md(exp.pattern)}: {state.pattern_sparsity(exp.pattern):.0%} for "
                        "unstructured ones)"
                        if exp.pattern != "unstructured" else "")
                     + f" · {snap['elapsed']:.2f} s")
    if numbers is not None and ok:
        results = {n: state.point(s.key(ok[0], 0.0) if n == "dense" else s.key(n),
                                  exp.val_samples) for n in ("dense", *ok)}
        with numbers:
            numbers_table(results, {n: s.key(n) for n in ok}, ok, crit)
    if ok:
        with cards:
            state.pruned_downloads({n: s.key(n) for n in ok})
    state.PRUNE_PAGE_SHOWN.set()  # the server's warm-up may now prepare the Attention page
    state.prefetch_neighbours(s, exp)  # and, in idle time, the slider's next stops


drawn = False
with state.page_errors():
    try:
        page()
    finally:  # stopped early or failed before the chart: no placeholder left behind
        if not drawn:
            kept_slot.empty()
