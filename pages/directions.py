"""Truth directions: do probes trained on different category splits point the same way?"""

from dataclasses import replace

import pandas as pd
import streamlit as st

from pages._shared import context, job_panel, job_running, need_model, start, show_chart
from probing.study.config import StudyConfig
from probing.dashboard.settings import layer_options, study_layers

DIRECTION_KINDS = {"linear": "linear probe weights", "mass_mean": "mass-mean (true mean - false mean)"}

ctx = context()
st.title("Truth directions")
st.caption("Each category split (one topic held out) gives a linear probe, i.e. a direction in activation "
           "space. If the model has one truth direction, the directions learned on different splits "
           "agree: cosine similarity near 1 and most coordinates with the same sign. Random directions "
           "give about 0 and 0.5.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.dashboard import charts  # noqa: E402
from probing.dashboard.workflows import grid_work  # noqa: E402

busy = job_running()
study = ctx.study
has_directions = study is not None and not study.directions_matrices.empty
with st.expander("Train direction probes" if has_directions else "Train direction probes (needed first)",
                 expanded=not has_directions):
    st.caption("Trains a linear and a mass-mean probe per layer on every category split, plus the "
               "shuffled-label controls, and opens them as a results folder. A grid with linear probes "
               "has directions too.")
    if not has_directions:  # nothing to show without a model
        need_model(ctx)
    if not ctx.ready:
        st.info("Training needs a model and a statement set: choose them in the sidebar.")
    else:
        options = layer_options(ctx.model.n_hidden_states)
        layers = st.multiselect("Layers", options, default=study_layers(ctx.model.n_hidden_states),
                                key="dir_layers", disabled=busy)
        epochs = st.number_input("Epochs", 1, 200, StudyConfig().epochs, key="dir_epochs", disabled=busy)

        def launch() -> None:
            state = st.session_state
            config = replace(StudyConfig(), model=ctx.model.spec.name, position=ctx.position,
                             layers=tuple(sorted(int(x) for x in state["dir_layers"])),
                             probes=tuple(DIRECTION_KINDS), epochs=int(state["dir_epochs"]))
            start(ctx, "directions", "Direction probes",
                  grid_work(ctx.activations, ctx.dataset, config, ctx.results_root))

        st.button("Train direction probes", type="primary", key="dir_button",
                  disabled=busy or not layers or len(ctx.dataset.topics) < 2, on_click=launch)
job_panel("directions")

if has_directions and not busy:
    st.caption(f"From the results folder `{study.folder.name}` (in `{study.folder.parent}`).")
    kinds = [k for k in DIRECTION_KINDS if k in set(study.directions_matrices["probe"])]
    kind = st.radio("Direction", kinds, horizontal=True, key="dir_kind", format_func=DIRECTION_KINDS.get)
    matrices = study.directions_matrices[study.directions_matrices["probe"] == kind]
    cosine = study.directions_cosine[study.directions_cosine["probe"] == kind]
    sign = study.directions_sign[study.directions_sign["probe"] == kind]
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
elif study is not None and not busy:
    st.info(f"The open results folder ({study.folder.name}) has no category-split directions: "
            "train direction probes above, or open a folder with linear or mass-mean probes.")
