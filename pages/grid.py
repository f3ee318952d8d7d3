"""Accuracy grid: layers x probe kinds over all category splits (the study's tables), live."""

import streamlit as st

from pages._shared import context, job_panel, job_running, require_ready, results, start, show_chart
from probing import PROBE_KINDS, charts
from probing.dashboard import (
    cell_dynamics, cell_per_topic, grid_csv, grid_markdown, grid_work, layer_options, partial_results, study_layers,
)
from probing.experiments import GridConfig, accuracy_long

ctx = context()
st.title("Accuracy grid")
st.caption("Every layer x probe kind, trained on all topics but one and tested on the held-out topic, "
           "once per topic. Cells show the mean (and max) held-out accuracy over the category splits, "
           "laid out as in the study; 0.5 is chance. The random-split grid beside it tests on statements "
           "of topics the probe has seen.")

if require_ready(ctx):
    busy = job_running()
    options = layer_options(ctx.model.n_hidden_states)
    c1, c2 = st.columns([3, 2])
    layers = c1.multiselect("Layers (from the end)", options, default=study_layers(ctx.model.n_hidden_states),
                            key="grid_layers", disabled=busy)
    probes = c2.multiselect("Probe kinds", PROBE_KINDS, default=list(GridConfig().probes), key="grid_probes",
                            disabled=busy)
    c3, c4, c5 = st.columns(3)
    epochs = c3.number_input("Epochs", 1, 200, 5, key="grid_epochs", disabled=busy)
    seeds = c4.number_input("Seeds (random inits)", 1, 10, 1, key="grid_seeds", disabled=busy)
    with_random = c5.checkbox("Also a random split", True, key="grid_random", disabled=busy)
    n_topics = len(ctx.dataset.topics)
    can_run = bool(layers) and bool(probes) and n_topics >= 2
    if n_topics < 2:
        st.warning("Category splits need at least two topics; this statement set has one.")
    def launch() -> None:
        """Button callback: the settings as they are at the click."""
        state = st.session_state
        chosen_layers = [int(x) for x in state["grid_layers"]]
        start(ctx, "grid", "Accuracy grid",
              grid_work(ctx.activations, ctx.dataset, chosen_layers, list(state["grid_probes"]),
                        int(state["grid_epochs"]), int(state["grid_seeds"]), bool(state["grid_random"]),
                        model_name=ctx.model.spec.name),
              {"layers": chosen_layers, "probes": list(state["grid_probes"])})

    st.button(f"Run grid ({len(layers) * len(probes) * seeds * (n_topics + with_random)} probes)",
              type="primary", key="grid_button", disabled=busy or not can_run, on_click=launch)

    def live(job):
        done = partial_results(job.records_so_far(), "category")
        if len(done):
            show_chart(charts.accuracy_heatmap(accuracy_long(done), "Mean accuracy so far (category splits)",
                                               layers=job.params["layers"], probes=job.params["probes"]),
                       key="live_grid")
            st.caption("Cells fill in as the probes of each layer and kind finish.")

    job_panel("grid", live=live)

    outcome = results(ctx)["grid"]
    if outcome is not None and not busy:
        cat = outcome.category.results
        layers_done, probes_done = list(outcome.config["layers"]), list(outcome.config["probes"])
        left, right = st.columns(2)
        with left:
            event = show_chart(
                charts.accuracy_heatmap(accuracy_long(cat, "mean"), "Mean accuracy over category splits",
                                        layers_done, probes_done, selection="cell"),
                key="grid_mean", on_select="rerun", selection_mode="cell")
            st.caption("Click a cell to see its per-topic accuracy and training curves below.")
        with right:
            if outcome.random is not None:
                show_chart(charts.accuracy_heatmap(accuracy_long(outcome.random.results), "Random split accuracy",
                                                   layers_done, probes_done), key="grid_random_chart")
                st.caption("Same probes on a random 80/20 split: what they reach in distribution.")
        left2, right2 = st.columns(2)
        with left2:
            show_chart(charts.accuracy_heatmap(accuracy_long(cat, "max"), "Max accuracy over category splits",
                                               layers_done, probes_done), key="grid_max")
            st.caption("The best held-out topic per cell (the study's appendix table).")
        with right2:
            d1, d2 = st.columns(2)
            d1.download_button("Download CSV", grid_csv(outcome), "accuracy_grid.csv", "text/csv",
                               key="grid_csv")
            d2.download_button("Download Markdown", grid_markdown(outcome, f"{ctx.model.spec.name}, {ctx.dataset.name}"),
                               "accuracy_grid.md", "text/markdown", key="grid_md")
            controls = cat.groupby("heldout", sort=False)[["text_only_accuracy"]].first()
            st.markdown("**Text-only control per held-out topic** (same split, words only)")
            st.dataframe(controls.T.round(3), hide_index=True)

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
            show_chart(charts.cell_topics_chart(cell_per_topic(outcome, cell_layer, cell_probe),
                                                f"{cell_probe} at layer {cell_layer}: per held-out topic"),
                       key="cell_topics")
            st.caption("Bars: held-out accuracy; red ticks: the text-only control on the same split.")
        with b:
            show_chart(charts.grid_curves_chart(cell_dynamics(outcome, cell_layer, cell_probe),
                                                outcome.config["epochs"]), key="cell_curves")
