"""Compare two studies: grids side by side on one scale, their difference with layers aligned by relative
depth (or by index), and both models' truth-direction statistics on one chart."""

import math
from pathlib import Path

import streamlit as st

from pages._shared import FOLDERS, context, job_panel, job_running, load_study, show_chart, start
from probing.study.results import StudyResult
from probing.formatting import error_text
from probing.study.folder import ResultsError
from probing.study.config import StudyConfig
from probing.constants import PROBE_KINDS
from probing.dashboard.settings import EXAMPLES, MODEL_CHOICES, fits_in_memory
from probing.study.folder import results_folders


MODELS = "two models on these statements"


@st.cache_resource(show_spinner=False, max_entries=2)
def _scorer(folder: str, written: float, cache: str):
    """The study whose probes score (its model loaded on first use, activations kept in the dashboard's
    ``cache``) and its notes, kept per folder version."""
    notes = NoteList()
    return Study.of_results(load_study(folder), cache, reporter=notes), notes.notes


def score_with(study: StudyResult, text: str):
    """The study's probes on ``text``, or None (and a message) where its model cannot run here."""
    size = study.meta.get("model", {}).get("memory_gb")
    if fits_in_memory(size) is False:
        st.warning(f"{study.config.model} needs about {size:.1f} GB: more than this machine has free.")
        return None
    if not study.probes:
        st.info(f"{study.folder.name} has no probes trained on all statements to score with.")
        return None
    scorer, notes = _scorer(str(study.folder), (study.folder / "config.json").stat().st_mtime, str(ctx.cache_dir))
    for note in notes:
        st.caption(f"Note: {note}.")
    return scorer.score(study.probes, [text])

ctx = context()
st.title("Compare studies")
st.caption("The study compares Llama-2-7B with 13B: is truth more linear in the bigger model, and at which depth? "
           "Pick two results folders made on the same statements with the same settings (two models, say). "
           "Models differ in depth, so layers are aligned by relative depth (0 = the embeddings, 1 = the last "
           "block) as well as by index from the end.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.dashboard import analysis_charts, charts  # noqa: E402
from probing.analyses.compare import compare_studies  # noqa: E402
from probing.analyses.differences import cell_difference  # noqa: E402
from probing.analyses.grid import accuracy_long  # noqa: E402
from probing.study.reporter import NoteList  # noqa: E402
from probing.study.study import Study  # noqa: E402
from probing.dashboard.workflows import compare_work  # noqa: E402

busy = job_running()
mode = st.radio("Compare", [FOLDERS, MODELS], horizontal=True, key="compare_mode", disabled=busy)
if mode == MODELS:
    st.caption("Each model's study of the sidebar's statements at the sidebar's token: a results folder that "
               "matches (same statements, model, token, settings) is used, the rest computed and saved. B is read "
               "at the layers of A's relative depths. Each model is loaded on its own for this.")
    names = [name for name in MODEL_CHOICES.values() if name]
    m1, m2 = st.columns(2)
    m1.selectbox("Model A", names, key="compare_model_a", disabled=busy)
    m2.selectbox("Model B", names, index=min(1, len(names) - 1), key="compare_model_b", disabled=busy)
    layers = st.multiselect("Layers of A (from the end)", list(range(-1, -25, -1)), default=list(StudyConfig().layers),
                            key="compare_layers", disabled=busy)
    probes = st.multiselect("Probe kinds", PROBE_KINDS, default=["linear", "mass_mean"], key="compare_probes",
                            disabled=busy)

    def launch() -> None:
        state = st.session_state
        config = StudyConfig(position=ctx.position, cache=str(ctx.cache_dir),
                             layers=tuple(sorted(int(x) for x in state["compare_layers"])),
                             probes=tuple(state["compare_probes"]))
        start(ctx, "compare", "Two models' studies",
              compare_work(ctx.dataset, [state["compare_model_a"], state["compare_model_b"]], config,
                           ctx.results_root))

    st.button("Compute what is missing and compare", key="compare_models_button", type="primary",
              disabled=busy or ctx.dataset is None or not layers or not probes, on_click=launch)
    job_panel("compare")
    st.stop()

folders = [str(folder) for folder in results_folders(ctx.results_root)]
if ctx.study is not None and str(ctx.study.folder) not in folders:
    folders.insert(0, str(ctx.study.folder))
for chosen in (st.session_state.get("compare_a"), st.session_state.get("compare_b")):
    if chosen and chosen not in folders:
        folders.append(chosen)
if len(folders) < 2:
    st.info(f"Comparing needs two results folders in `{ctx.results_root}` (found {len(folders)}): run "
            "`probing reproduce --model ...` once per model, or a grid per model on the Accuracy grid page.")
else:
    c1, c2, c3 = st.columns([3, 3, 2])
    name = lambda folder: Path(folder).name  # noqa: E731
    first = c1.selectbox("Study A", folders, key="compare_a", format_func=name)
    second = c2.selectbox("Study B", folders, index=1 if folders[1] != first else 0, key="compare_b",
                          format_func=name)
    anyway = c3.checkbox("Show even if they differ", key="compare_anyway",
                         help="Studies of other statements or settings are refused; this shows them with a warning.")
    align = c3.radio("Align layers by", ["relative depth", "index from the end"], key="compare_align")
    try:
        a, b = (load_study(folder) for folder in (first, second))
        comparison = compare_studies(a, b, allow_mismatch=anyway)
    except (OSError, ResultsError, ValueError) as error:
        st.error(f"Cannot compare: {error_text(error)}")
        comparison = None
    if comparison is not None:
        for warning in comparison.warnings:
            st.warning(f"Not comparable, shown anyway: {warning}")
        name_a, name_b = comparison.names
        left, right = st.columns(2)
        for column, study, label, key in ((left, a, name_a, "compare_grid_a"), (right, b, name_b, "compare_grid_b")):
            with column:
                long = accuracy_long(study.split_results(), "mean")
                show_chart(charts.accuracy_heatmap(long, f"A: {label}" if key.endswith("a") else f"B: {label}"),
                           key=key)
        st.caption(f"Mean accuracy over the {comparison.split} splits; both on the same colour scale "
                   "(0.5 = chance).")
        pairs = comparison.by_depth if align == "relative depth" else comparison.by_index
        shared = set(a.config.probes) & set(b.config.probes)
        if not shared:
            st.info("The two studies have no probe kind in common: there is no difference to show.")
        elif pairs.empty:
            st.info("No layer index is in both studies: align by relative depth.")
        else:
            show_chart(analysis_charts.difference_heatmap(pairs, f"B - A, layers aligned by {align}"), key="compare_difference")
            st.dataframe(pairs.round(4), hide_index=True)
            if "verdict" in pairs:
                st.caption("Paired tests on the same held-out statements: lower and upper bound the 95 % interval "
                           "of B - A (paired bootstrap over statements), p_value is McNemar's (one seed per probe); "
                           "a difference is beyond noise where its interval excludes 0.")
        for note in comparison.notes:
            st.info(f"No paired tests: {note}.")
        if not comparison.directions.empty:
            show_chart(analysis_charts.depth_directions_chart(comparison.directions), key="compare_directions")
            st.caption("Do the directions learned on different category splits agree? Both models against "
                       "relative depth.")

        st.subheader("Two cells of one study")
        study = ctx.study or a
        cells = study.split_results()[["layer", "probe"]].drop_duplicates()
        layers, kinds = sorted(set(cells["layer"])), list(dict.fromkeys(cells["probe"]))
        st.caption(f"Is one probe better than another in `{study.folder.name}` (the open study, else A), beyond "
                   "the noise of which statements were held out? B - A on the same statements.")
        if layers:
            p1, p2, p3, p4 = st.columns(4)
            cell_a = (p1.selectbox("Layer of A", layers, key="cell_layer_a"), p2.selectbox("Kind of A", kinds,
                                                                                           key="cell_kind_a"))
            cell_b = (p3.selectbox("Layer of B", layers, index=len(layers) - 1, key="cell_layer_b"),
                      p4.selectbox("Kind of B", kinds, index=len(kinds) - 1, key="cell_kind_b"))
            try:
                test = cell_difference(study, cell_a, cell_b)
            except ValueError as error:
                st.info(f"No paired test: {error_text(error)}")
            else:
                st.metric(f"B - A: {test['verdict']}", f"{test['difference']:+.3f}",
                          help=f"accuracy {test['accuracy_a']:.3f} (A) and {test['accuracy_b']:.3f} (B)")
                p_value = "" if math.isnan(test["p_value"]) else f", McNemar's p = {test['p_value']:.3g}"
                st.caption(f"95 % interval [{test['lower']:+.3f}, {test['upper']:+.3f}] over {test['statements']:,} "
                           f"held-out statements{p_value}.")

        st.subheader("One statement, both models")
        text = st.text_input("Statement", EXAMPLES[1], key="compare_text")
        if st.button("Score with both models", key="compare_score", help="Loads each study's model (once) "
                     "and reads the statement with each folder's probes."):
            columns = st.columns(2)
            for column, study, label, key in ((columns[0], a, name_a, "compare_score_a"),
                                              (columns[1], b, name_b, "compare_score_b")):
                with column, st.spinner(f"Reading the hidden states of {label}…"):
                    try:
                        scores = score_with(study, text)
                    except ValueError as error:
                        st.warning(f"Cannot score this with {label}: {error}")
                        scores = None
                    if scores is not None:
                        show_chart(charts.statement_layers_chart(scores).properties(title=label), key=key)
