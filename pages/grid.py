"""Accuracy grid: layers x probe kinds over all category splits (the study's tables), live or from a results folder."""

from dataclasses import replace

import streamlit as st

from pages._shared import context, job_panel, job_running, need_model, start, show_chart
from probing.study.config import StudyConfig
from probing.dashboard.settings import layer_options, study_layers

ctx = context()
st.title("Accuracy grid")
st.caption("Every layer x probe kind, trained on all topics but one and tested on the held-out topic, "
           "once per topic. Cells show the mean (and max) held-out accuracy over the category splits, "
           "laid out as in the study; 0.5 is chance. The random-split grid beside it tests on statements "
           "of topics the probe has seen.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing import PROBE_KINDS  # noqa: E402
from probing.dashboard import charts  # noqa: E402
from probing.analyses.grid import accuracy_long  # noqa: E402
from probing.analyses.intervals import best_layer_lines  # noqa: E402
from probing.dashboard.workflows import grid_work, partial_results  # noqa: E402

busy = job_running()
with st.expander("Run a new grid", expanded=ctx.study is None):
    if ctx.study is None:  # nothing to show without a model
        need_model(ctx)
    if not ctx.ready:
        st.info("Running a grid needs a model and a statement set: choose them in the sidebar. "
                "A results folder opened in the sidebar shows its grid without either.")
    else:
        defaults = StudyConfig()
        options = layer_options(ctx.model.n_hidden_states)
        c1, c2 = st.columns([3, 2])
        layers = c1.multiselect("Layers (from the end)", options, default=study_layers(ctx.model.n_hidden_states),
                                key="grid_layers", disabled=busy)
        probes = c2.multiselect("Probe kinds", PROBE_KINDS, default=list(defaults.probes), key="grid_probes",
                                disabled=busy)
        c3, c4, c5 = st.columns(3)
        epochs = c3.number_input("Epochs", 1, 200, defaults.epochs, key="grid_epochs", disabled=busy)
        seeds = c4.number_input("Seeds (random inits)", 1, 10, defaults.seeds, key="grid_seeds", disabled=busy)
        with_random = c5.checkbox("Also a random split", True, key="grid_random", disabled=busy)
        st.text_input("Save as (optional)", key="grid_name", disabled=busy,
                      placeholder="e.g. smollm2-saplma-study; default: model, statements and time",
                      help=f"The finished grid is saved as a results folder of this name under `{ctx.results_root}`.")
        n_topics = len(ctx.dataset.topics)
        can_run = bool(layers) and bool(probes) and n_topics >= 2
        if n_topics < 2:
            st.warning("Category splits need at least two topics; this statement set has one.")

        def launch() -> None:
            """Button callback: the settings as they are at the click."""
            state = st.session_state
            config = replace(StudyConfig(), model=ctx.model.spec.name, position=ctx.position,
                             layers=tuple(sorted(int(x) for x in state["grid_layers"])),
                             probes=tuple(state["grid_probes"]), epochs=int(state["grid_epochs"]),
                             seeds=int(state["grid_seeds"]), with_random=bool(state["grid_random"]))
            start(ctx, "grid", "Accuracy grid",
                  grid_work(ctx.activations, ctx.dataset, config, ctx.results_root, state.get("grid_name", "")),
                  {"layers": list(config.layers), "probes": list(config.probes)})

        st.button(f"Run grid ({len(layers) * len(probes) * seeds * (n_topics + with_random)} probes)",
                  type="primary", key="grid_button", disabled=busy or not can_run, on_click=launch)
        st.caption(f"The finished grid is saved as a results folder under `{ctx.results_root}` and opened.")


def live(job):
    done = partial_results(job.records_so_far(), "category")
    if len(done):
        show_chart(charts.accuracy_heatmap(accuracy_long(done), "Mean accuracy so far (category splits)",
                                           layers=job.params["layers"], probes=job.params["probes"]),
                   key="live_grid")
        st.caption("Cells fill in as the probes of each layer and kind finish.")


job_panel("grid", live=live)

study = ctx.study
if study is None and not busy:
    st.info("No results folder is open: run a grid above, or open one in the sidebar.")
elif study is not None and study.results.empty and not busy:
    st.info(f"The open results folder ({study.folder.name}) holds no accuracy grid"
            + (" (it holds generalization analyses: see *Generalization*)" if not study.generalization.empty else "")
            + ": run a grid above, or open another folder in the sidebar.")
elif study is not None and not busy:
    split = study.config.split
    main = study.split_results(split)
    layers_done, probes_done = list(study.config.layers), list(study.config.probes)
    intervals = study.accuracy_intervals()
    best = study.best_layers(split)
    st.caption(f"From the results folder `{study.folder.name}` (in `{study.folder.parent}`).")
    left, right = st.columns(2)
    with left:
        event = show_chart(
            charts.accuracy_heatmap(intervals[intervals["split"] == split], f"Mean accuracy over {split} splits",
                                    layers_done, probes_done, selection="cell", best=best),
            key="grid_mean", on_select="rerun", selection_mode="cell")
        st.caption("Click a cell to see its per-topic accuracy, training curves and calibration below. "
                   "The tooltip gives the 95 % interval over held-out statements; ★ marks a best layer that a "
                   "paired test tells from the runner-up.")
    with right:
        if "random" in study.splits and split != "random":
            show_chart(charts.accuracy_heatmap(intervals[intervals["split"] == "random"], "Random split accuracy",
                                               layers_done, probes_done), key="grid_random_chart")
            st.caption("Same probes on a random 80/20 split: what they reach in distribution.")
    left2, right2 = st.columns(2)
    with left2:
        show_chart(charts.accuracy_heatmap(accuracy_long(main, "max"), f"Max accuracy over {split} splits",
                                           layers_done, probes_done), key="grid_max")
        st.caption("The best held-out topic per cell (the study's appendix table).")
    with right2:
        d1, d2 = st.columns(2)
        d1.download_button("Download CSV", study.to_csv(), "accuracy_grid.csv", "text/csv", key="grid_csv")
        title = f"{study.meta.get('model', {}).get('name', '')}, {study.meta.get('dataset', {}).get('name', '')}"
        d2.download_button("Download Markdown", study.to_markdown(title), "accuracy_grid.md", "text/markdown",
                           key="grid_md")
        if "text_only_accuracy" in main:
            controls = main.groupby("heldout", sort=False)[["text_only_accuracy"]].first()
            st.markdown("**Text-only control per held-out topic** (same split, words only)")
            st.dataframe(controls.T.round(3), hide_index=True)

    st.subheader("Accuracy by layer")
    show_chart(charts.layer_accuracy_chart(intervals[intervals["split"] == split], best,
                                           f"Mean accuracy over {split} splits, 95 % intervals"), key="grid_layers")
    if intervals["accuracy_lower"].isna().all():
        st.caption("This folder was written before predictions were kept: no intervals, no test of the best layer.")
    elif len(best):
        st.markdown("**Best layer per probe kind** (a diamond where a paired bootstrap on the same statements tells "
                    "it from the runner-up; difference [95 % interval]):\n" + "\n".join(best_layer_lines(best)))
    st.caption("Error bars: 95 % bootstrap intervals over the held-out statements (seeds of a split kept together); "
               "they do not cover retraining on other topics or other data.")

    st.subheader("Inspect a cell")
    picked = (event.selection.get("cell") or []) if event is not None else []
    if picked:
        st.session_state["grid_cell_layer"] = int(picked[0]["layer"])
        st.session_state["grid_cell_probe"] = picked[0]["probe"]
    s1, s2 = st.columns(2)
    if st.session_state.get("grid_cell_layer") not in layers_done:
        st.session_state["grid_cell_layer"] = layers_done[-1]
    if st.session_state.get("grid_cell_probe") not in probes_done:
        st.session_state["grid_cell_probe"] = probes_done[0]
    cell_layer = s1.selectbox("Layer", layers_done, key="grid_cell_layer")
    cell_probe = s2.selectbox("Probe", probes_done, key="grid_cell_probe")
    a, b = st.columns([2, 3])
    with a:
        show_chart(charts.cell_topics_chart(study.cell_per_topic(cell_layer, cell_probe),
                                            f"{cell_probe} at layer {cell_layer}: per held-out topic"),
                   key="cell_topics")
        st.caption("Bars: held-out accuracy; red ticks: the text-only control on the same split.")
    with b:
        show_chart(charts.grid_curves_chart(study.cell_dynamics(cell_layer, cell_probe), study.config.epochs),
                   key="cell_curves")
    calibration = study.calibration()
    bins = calibration[(calibration["split"] == split) & (calibration["layer"] == cell_layer)
                       & (calibration["probe"] == cell_probe)]
    if len(bins):
        st.markdown(f"**Calibration of {cell_probe} at layer {cell_layer}** (held-out statements of every {split} "
                    "split and seed)")
        c, m = st.columns([3, 2])
        with c:
            show_chart(charts.reliability_chart(bins, "Reliability: predicted P(true) vs share true"),
                       key="cell_reliability")
        with m:
            ece = bins.groupby("scaling", sort=False)["ece"].first()
            st.metric("ECE, raw P(true)", f"{ece['raw']:.3f}")
            if "scaled" in ece:
                st.metric("ECE, temperature-scaled", f"{ece['scaled']:.3f}", f"{ece['scaled'] - ece['raw']:+.3f}",
                          delta_color="inverse")
            st.caption("P(true) = sigmoid(probe score), as the statement page shows it. Scaled: each probe's score "
                       "divided by a temperature fitted on its own training statements, so both are held-out "
                       "numbers. ECE: the mean gap between predicted and observed share true, weighted by bin size.")
