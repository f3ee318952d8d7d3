"""Activations: PCA of one layer's hidden states, coloured by label (the Geometry of Truth picture)."""

import streamlit as st

from pages._shared import context, extraction_controls, require_ready, show_chart
from probing import charts
from probing.directions import pca_points
from probing.settings import layer_options

ctx = context()
st.title("Activations")
st.caption("Each point is one statement's hidden state, projected on the first two principal components "
           "of that layer. If true (green) and false (orange) separate, a truth direction is visible "
           "even without training anything; shapes show topics (click the legend to highlight one).")

if require_ready(ctx):
    missing = extraction_controls(ctx, key="extract_pca")
    if missing:
        st.info("Extract the activations above to see them.")
    else:
        options = layer_options(ctx.model.n_hidden_states)
        layer = st.select_slider("Layer (counted from the end; -1 = after the final norm)",
                                 options=sorted(options), value=-9 if -9 in options else options[0],
                                 key="pca_layer")
        cache = st.session_state.setdefault("pca", {})
        key = (ctx.key, layer)
        if key not in cache:
            X = ctx.activations.layer(ctx.dataset.statements, layer)
            cache[key] = pca_points(X, ctx.dataset.frame)
        points, explained = cache[key]
        show_chart(charts.pca_chart(points, explained, layer), key="pca_chart")
        st.caption(f"{len(points):,} statements. PC1 and PC2 explain {explained[0]:.0%} and {explained[1]:.0%} "
                   "of the variance. Drag to pan, scroll to zoom.")
