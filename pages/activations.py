"""Activations: one layer's hidden states in two dimensions, coloured by label: PCA (the Geometry of Truth
picture) or the truth subspace (t_G, t_P) of TTPD."""

import streamlit as st

from pages._shared import context, extraction_controls, require_ready, show_chart
from probing.dashboard.settings import layer_options

ctx = context()
st.title("Activations")
st.caption("Each point is one statement's hidden state at one layer, projected on two directions: the first "
           "two principal components (found without labels: if true, green, and false, orange, separate, a "
           "truth direction is visible without training anything; shapes show topics, click the legend to "
           "highlight one), or TTPD's truth subspace.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.dashboard import analysis_charts  # noqa: E402
from probing.analyses.directions import pca_points  # noqa: E402
from probing.analyses.generalization import truth_subspace  # noqa: E402

if require_ready(ctx):
    missing = extraction_controls(ctx, key="extract_pca")
    if missing:
        st.info("Extract the activations above to see them.")
    else:
        options = layer_options(ctx.model.n_hidden_states)
        layer = st.select_slider("Layer (counted from the end; -1 = after the final norm)",
                                 options=sorted(options), value=-9 if -9 in options else options[0],
                                 key="pca_layer")
        view = st.radio("View", ["PCA", "Truth subspace (t_G, t_P)"], horizontal=True, key="activation_view",
                        help="PCA: the two directions of largest variance, found without labels. Truth "
                             "subspace: TTPD's general truth direction t_G and polarity-sensitive t_P "
                             "(Bürger et al. 2024), fitted with the labels on these statements.")
        cache = st.session_state.setdefault("activation_views", {})
        key = (ctx.key, layer, view)
        if key not in cache:
            X = ctx.activations.layer(ctx.dataset.statements, layer)
            cache[key] = pca_points(X, ctx.dataset.frame) if view == "PCA" else truth_subspace(X, ctx.dataset)
        if view == "PCA":
            points, explained = cache[key]
            show_chart(analysis_charts.pca_chart(points, explained, layer), key="pca_chart")
            st.caption(f"{len(points):,} statements. PC1 and PC2 explain {explained[0]:.0%} and {explained[1]:.0%} "
                       "of the variance. Drag to pan, scroll to zoom.")
        else:
            points, cosines = cache[key]
            show_chart(analysis_charts.truth_subspace_chart(points, layer), key="subspace_chart")
            if len(ctx.dataset.polarities) < 2:
                st.info("These statements have one polarity: t_P, the direction that flips with negation, needs "
                        "negated statements too (the built-in set has them: choose polarity 'all').")
            st.caption(f"{len(points):,} statements projected on t_G and t_P, fitted on all of them (centred per "
                       "topic and polarity). Circles: affirmative; triangles: negated. If t_G is a general truth "
                       "direction, true and false separate along the x axis for both shapes.")
            if not cosines.empty:
                table = cosines.pivot(index="heldout", columns="probe", values="cosine").reset_index()
                st.markdown("**Cosine of t_G to the category-split directions** (a probe per held-out topic)")
                st.dataframe(table.round(3), hide_index=True)
