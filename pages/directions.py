"""Truth directions: do probes trained on different category splits point the same way?"""

import pandas as pd
import streamlit as st

from pages._shared import context, job_panel, job_running, require_ready, results, start, show_chart
from probing import charts, compare_directions
from probing.dashboard import grid_work, layer_options, study_layers

ctx = context()
st.title("Truth directions")
st.caption("Each category split (one topic held out) gives a linear probe, i.e. a direction in activation "
           "space. If the model has one truth direction, the directions learned on different splits "
           "agree: cosine similarity near 1 and most coordinates with the same sign. Random directions "
           "give about 0 and 0.5.")

if require_ready(ctx):
    busy = job_running()
    bucket = results(ctx)
    sources = {}
    grid = bucket["grid"]
    if grid is not None and any(k[1] in ("linear", "mass_mean") for k in grid.category.probes):
        sources["Accuracy grid"] = grid
    if bucket["directions"] is not None:
        sources["Direction probes (this page)"] = bucket["directions"]

    with st.expander("Train direction probes" if sources else "Train direction probes (needed first)",
                     expanded=not sources):
        st.caption("Trains a linear and a mass-mean probe per layer on every category split, plus the "
                   "shuffled-label controls. The accuracy grid's linear probes work too.")
        options = layer_options(ctx.model.n_hidden_states)
        layers = st.multiselect("Layers", options, default=study_layers(ctx.model.n_hidden_states),
                                key="dir_layers", disabled=busy)
        epochs = st.number_input("Epochs", 1, 200, 5, key="dir_epochs", disabled=busy)
        def launch() -> None:
            state = st.session_state
            start(ctx, "directions", "Direction probes",
                  grid_work(ctx.activations, ctx.dataset, [int(x) for x in state["dir_layers"]],
                            ["linear", "mass_mean"], int(state["dir_epochs"]), 1, with_random=False,
                            model_name=ctx.model.spec.name))

        st.button("Train direction probes", type="primary", key="dir_button",
                  disabled=busy or not layers or len(ctx.dataset.topics) < 2, on_click=launch)
    job_panel("directions")

    if sources and not busy:
        c1, c2 = st.columns(2)
        source = c1.radio("Probes from", list(sources), horizontal=True, key="dir_source")
        outcome = sources[source]
        kinds = [k for k in ("linear", "mass_mean") if any(key[1] == k for key in outcome.category.probes)]
        kind = c2.radio("Direction", kinds, horizontal=True, key="dir_kind",
                        format_func=lambda k: {"linear": "linear probe weights",
                                               "mass_mean": "mass-mean (true mean - false mean)"}[k])
        cache = st.session_state.setdefault("directions_cache", {})
        cache_key = (ctx.key, source, id(outcome), kind)
        if cache_key not in cache:
            cache[cache_key] = compare_directions(outcome.category, kind=kind)
        cosine, sign, matrices = cache[cache_key]
        if matrices.empty:
            st.info("Directions need at least two category splits per layer.")
        else:
            layers_done = sorted(matrices["layer"].unique().tolist())
            layer = st.select_slider("Layer", layers_done, value=layers_done[-1], key="dir_layer")
            a, b = st.columns(2)
            with a:
                show_chart(charts.direction_matrix_chart(matrices, layer, "cosine"), key="dir_cosine")
                st.caption("Cosine similarity between the directions learned with each topic held out "
                           "(1 = same direction, 0 = unrelated).")
            with b:
                show_chart(charts.direction_matrix_chart(matrices, layer, "sign_equality"), key="dir_sign")
                st.caption("Share of coordinates whose signs agree (0.5 = chance).")
            show_chart(charts.direction_layers_chart(cosine, sign), key="dir_layers_chart")
            st.caption("Mean off-diagonal value per layer. Grey dashed: random directions pushed through the "
                       "same feature scaling (band up to their 95th percentile); orange dotted: probes "
                       "trained on shuffled labels. The study found 0.79-0.84 cosine for Llama-2-7B.")
            table = pd.DataFrame({"layer": cosine["layer"], "cosine": cosine["mean"],
                                  "cosine (random)": cosine["random_baseline"],
                                  "sign equality": sign["mean"], "sign (random)": sign["random_baseline"]})
            st.dataframe(table.round(3), hide_index=True)
