"""Compare two studies: grids side by side on one scale, their difference with layers aligned by relative
depth (or by index), and both models' truth-direction statistics on one chart."""

from pathlib import Path

import streamlit as st

from pages._shared import context, load_study, show_chart
from probing import charts
from probing.compare import compare_studies
from probing.experiments import accuracy_long
from probing.results import ResultsError
from probing.settings import results_folders

ctx = context()
st.title("Compare studies")
st.caption("The study compares Llama-2-7B with 13B: is truth more linear in the bigger model, and at which depth? "
           "Pick two results folders made on the same statements with the same settings (two models, say). "
           "Models differ in depth, so layers are aligned by relative depth (0 = the embeddings, 1 = the last "
           "block) as well as by index from the end.")

folders = [str(folder) for folder in results_folders(ctx.results_root)]
if ctx.study is not None and str(ctx.study.folder) not in folders:
    folders.insert(0, str(ctx.study.folder))
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
        st.error(f"Cannot compare: {error}")
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
        st.caption("Mean accuracy over the category splits; both on the same colour scale (0.5 = chance).")
        pairs = comparison.by_depth if align == "relative depth" else comparison.by_index
        shared = set(a.config.probes) & set(b.config.probes)
        if not shared:
            st.info("The two studies have no probe kind in common: there is no difference to show.")
        elif pairs.empty:
            st.info("No layer index is in both studies: align by relative depth.")
        else:
            show_chart(charts.difference_heatmap(pairs, f"B - A, layers aligned by {align}"), key="compare_difference")
            st.dataframe(pairs.round(3), hide_index=True)
        if not comparison.directions.empty:
            show_chart(charts.depth_directions_chart(comparison.directions), key="compare_directions")
            st.caption("Do the directions learned on different category splits agree? Both models against "
                       "relative depth.")
