"""Generalization: train on one topic (or polarity), test on another; and CCS, a truth direction found without labels."""

import pandas as pd
import streamlit as st

from pages._shared import context, job_panel, job_running, need_model, show_chart, start
from probing.study.config import StudyConfig
from probing.constants import MATRIX_PROBES
from probing.dashboard.settings import layer_options, study_layers

VALUES = {"accuracy": "Accuracy", "auroc": "AUROC"}

ctx = context()
st.title("Generalization")
st.caption("Does a probe trained on one topic work on another? Rows: what the probe was trained on (one topic, "
           "or all other topics: the study's category split); columns: the topic it is tested on. The diagonal "
           "is within-topic accuracy on held-out facts. One truth direction would make every row high; "
           "topics that share surface features light up in pairs. The text-only control's matrix beside it "
           "shows what the words alone explain.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.dashboard import analysis_charts  # noqa: E402
from probing.analyses.generalization import ALL_OTHERS, ccs_summary, matrix_summary, polarity_table  # noqa: E402
from probing.dashboard.workflows import generalization_work  # noqa: E402

busy = job_running()
study = ctx.study
has_results = study is not None and not (study.generalization.empty and study.ccs.empty)
with st.expander("Run the generalization analyses", expanded=not has_results):
    st.caption("For each layer: the topic matrix for each probe, the affirmative/negated transfer when the "
               "statements have both polarities, and CCS when they come in pairs of a statement and its "
               "negation (the built-in set does). Saved into the open results folder when it holds the same "
               "statements, model and token position, else as a new one.")
    if not has_results:  # nothing to show without a model
        need_model(ctx)
    if not ctx.ready:
        st.info("Running the analyses needs a model and a statement set: choose them in the sidebar. "
                "A results folder opened in the sidebar shows its analyses without either.")
    else:
        defaults = StudyConfig()
        c1, c2, c3 = st.columns([3, 2, 1])
        c1.multiselect("Layers (from the end)", layer_options(ctx.model.n_hidden_states),
                       default=study_layers(ctx.model.n_hidden_states), key="gen_layers", disabled=busy)
        c2.multiselect("Probes", MATRIX_PROBES, default=list(defaults.matrix_probes), key="gen_probes",
                       disabled=busy, help="linear: logistic regression; mass_mean: difference of class means; "
                                           "ttpd: Bürger et al.'s truth-and-polarity probe (2-D)")
        c3.number_input("CCS seeds", 0, 20, defaults.ccs_seeds, key="gen_ccs", disabled=busy,
                        help="CCS probes per layer, each with 10 random restarts; 0: none")

        def launch() -> None:
            """Button callback: the settings as they are at the click."""
            state = st.session_state
            config = StudyConfig(model=ctx.model.spec.name, position=ctx.position, generalization=True,
                                 layers=tuple(sorted(int(x) for x in state["gen_layers"])),
                                 matrix_probes=tuple(state["gen_probes"]), ccs_seeds=int(state["gen_ccs"]))
            start(ctx, "generalization", "Generalization analyses",
                  generalization_work(ctx.activations, ctx.dataset, config, ctx.results_root, ctx.study))

        ready = bool(st.session_state.get("gen_layers")) and bool(st.session_state.get("gen_probes"))
        st.button("Run the analyses", type="primary", key="gen_button", disabled=busy or not ready, on_click=launch)
job_panel("generalization")

if study is None and not busy:
    st.info("No results folder is open: run the analyses above, or open a folder in the sidebar.")
elif study is not None and not has_results and not busy:
    st.info(f"The open results folder ({study.folder.name}) has no generalization analyses: run them above, "
            "or make them with `probing reproduce --generalization`.")
elif has_results and not busy:
    results = study.generalization
    st.caption(f"From the results folder `{study.folder.name}` (in `{study.folder.parent}`).")
    for note in study.meta.get("generalization_notes", []):
        st.caption(f"Note: {note}.")
    topics = results[results.analysis == "topics"] if not results.empty else results
    if not topics.empty:
        layers = sorted(topics["layer"].unique().tolist())
        probes = [p for p in MATRIX_PROBES if p in set(topics["probe"])]
        c1, c2, c3 = st.columns([3, 2, 2])
        layer = c1.select_slider("Layer", layers, value=layers[-1], key="gen_layer")
        probe = c2.radio("Probe", probes, horizontal=True, key="gen_probe")
        value = c3.radio("Show", list(VALUES), horizontal=True, key="gen_value", format_func=VALUES.get)
        left, right = st.columns(2)
        with left:
            event = show_chart(analysis_charts.generalization_heatmap(topics, layer, probe, value, selection="cell"),
                               key="gen_matrix", on_select="rerun", selection_mode="cell", width="content")
            st.caption("Click a cell to list the statements that probe got wrong.")
        with right:
            show_chart(analysis_charts.generalization_heatmap(topics, layer, probe, "text_only_accuracy"), key="gen_text_only",
                       width="content")
            st.caption("The same train/test splits, classified from the words alone. A probe cell that does "
                       "no better than this one may be reading wording, not truth.")
        summary = matrix_summary(topics)
        st.dataframe(summary[summary.probe == probe].round(3), hide_index=True)
        st.caption("Per layer: mean accuracy within a topic (diagonal), from one topic to another (off the "
                   "diagonal), and from all other topics (category split); the text-only control across topics.")

        st.subheader("Errors of one cell")
        picked = (event.selection.get("cell") or []) if event is not None else []
        train_options, test_options = [*dict.fromkeys(topics["test"]), ALL_OTHERS], list(dict.fromkeys(topics["test"]))
        if picked:
            st.session_state["gen_train"], st.session_state["gen_test"] = picked[0]["train"], picked[0]["test"]
        if st.session_state.get("gen_train") not in train_options:
            st.session_state["gen_train"] = ALL_OTHERS
        if st.session_state.get("gen_test") not in test_options:
            st.session_state["gen_test"] = test_options[0]
        s1, s2 = st.columns(2)
        train = s1.selectbox("Trained on", train_options, key="gen_train")
        test = s2.selectbox("Tested on", test_options, key="gen_test")
        errors = study.generalization_errors
        errors = errors[(errors.analysis == "topics") & (errors.layer == layer) & (errors.probe == probe)
                        & (errors.train == train) & (errors.test == test)]
        cell = topics[(topics.layer == layer) & (topics.probe == probe) & (topics.train == train)
                      & (topics.test == test)]
        if not cell.empty:
            row = cell.iloc[0]
            st.caption(f"{probe} at layer {layer}, trained on {train} ({row.n_train:,} statements), tested on "
                       f"{test} ({row.n_test:,}): accuracy {row.accuracy:.3f}, {len(errors):,} wrong.")
        if len(errors) and not study.statements.empty:
            shown = study.statements.iloc[errors["row"].to_numpy()][["statement", "label", "polarity"]].copy()
            shown["label"] = shown["label"].map({1: "true", 0: "false"})
            shown["P(true)"] = errors["p_true"].to_numpy().round(3)
            st.dataframe(shown, hide_index=True, width="stretch")

    polarity = polarity_table(results) if not results.empty else pd.DataFrame()
    st.subheader("Affirmative and negated statements")
    if polarity.empty:
        st.info("These statements have one polarity, so there is no transfer to show. The built-in set has "
                "negated statements ('Paris is not in Japan.'); a CSV can mark them in a polarity column.")
    else:
        show_chart(analysis_charts.polarity_chart(results), key="gen_polarity")
        st.caption("Trained on the affirmative statements of most facts, tested on held-out facts: a probe "
                   "that reads affirmation rather than truth falls below 0.5 on negated statements. TTPD "
                   "trained on both polarities is meant to hold on each. Error bars: 95 % Wilson intervals over "
                   "the held-out statements.")
        st.dataframe(polarity.round(3), hide_index=True)

    st.subheader("CCS: a truth direction without labels")
    summary = ccs_summary(study.ccs)
    if summary.empty:
        st.info("No CCS probes here: they need pairs of a statement and its negation (the built-in set's "
                "pair column), and CCS seeds above 0.")
    else:
        st.dataframe(summary.round(3), hide_index=True)
        st.caption("Contrast-Consistent Search (Burns et al. 2022) trained on held-in pairs without labels (the "
                   "sign fixed afterwards with them), tested on held-out facts; spread over seeds, and cosine "
                   "of its direction to the linear and mass-mean directions trained with labels.")
