"""The trace of a statement (:mod:`probing.analyses.trace`) as a chart: P(true) of one probe kind at
each token (columns, with their text) and layer (rows), the trained token outlined, and below it the
model's own answer for the statement cut after each token."""

from __future__ import annotations

import altair as alt

from probing.analyses.trace import MODEL_MARGIN, Trace
from probing.dashboard.charts import FALSE_COLOR, TRUE_COLOR

P_TRUE_SCALE = alt.Scale(domain=[0, 0.5, 1], range=[FALSE_COLOR, "#f7f7f7", TRUE_COLOR])
"""P(true) from false (orange-red) through undecided (pale) to true (green), as everywhere else."""


def trace_chart(trace: Trace, probe: str) -> alt.VConcatChart:
    """Tokens x layers heatmap of ``probe``'s P(true), the trained token outlined; the model's
    P(" True") - P(" False") per token below, when the trace has it."""
    tokens = trace.tokens.assign(label=trace.labels())
    order = list(tokens["label"])
    frame = trace.scores[trace.scores["probe"] == probe].merge(tokens, on="token")
    if frame.empty:
        raise ValueError(f"the trace has no {probe} probe; it has {', '.join(sorted(set(trace.scores['probe'])))}")
    layers = sorted(set(frame["layer"]), reverse=True)
    x = alt.X("label:N", sort=order, scale=alt.Scale(domain=order), title=None,
              axis=alt.Axis(labelAngle=-45, labelLimit=120, labelOverlap=False))  # every token named
    width = max(320, 40 * len(order))
    base = alt.Chart(frame).encode(x=x, y=alt.Y("layer:O", sort=layers, title="layer (from the end)"))
    cells = base.mark_rect().encode(
        color=alt.Color("p_true:Q", scale=P_TRUE_SCALE, legend=alt.Legend(title="P(true)", format=".1f")),
        tooltip=["text", "token", "layer", alt.Tooltip("p_true:Q", format=".3f"), "read"])
    read = base.transform_filter(alt.datum.read).mark_rect(fill=None, stroke="#111", strokeWidth=2.5)
    heatmap = alt.layer(cells, read).properties(
        width=width, height=alt.Step(28),
        title=f"P(true) from the {probe} probe at each token (outlined: the token it was trained on)")
    if MODEL_MARGIN not in tokens:
        return alt.vconcat(heatmap)
    answers = alt.Chart(tokens).mark_bar().encode(
        x=alt.X("label:N", sort=order, scale=alt.Scale(domain=order), title=None, axis=alt.Axis(labels=False)),
        y=alt.Y(f"{MODEL_MARGIN}:Q", scale=alt.Scale(domain=[-1, 1]), title="P(True) − P(False)"),
        color=alt.condition(alt.datum[MODEL_MARGIN] > 0, alt.value(TRUE_COLOR), alt.value(FALSE_COLOR)),
        tooltip=["text", "token", alt.Tooltip(f"{MODEL_MARGIN}:Q", format="+.3f", title="P(True) − P(False)")],
    ).properties(width=width, height=110, title="What the model answers about the statement up to each token")
    return alt.vconcat(heatmap, answers)
