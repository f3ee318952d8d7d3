"""Altair charts for the dashboard; each function takes engine output and returns an ``alt.Chart``.

Colours: true statements green, false ones orange-red; accuracy heatmaps run from
chance (0.5, pale) to perfect (1.0, dark blue), so cells are comparable across
charts and models.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from probing.constants import PROBE_KINDS

TRUE_COLOR, FALSE_COLOR = "#2a9d8f", "#e76f51"
LABEL_SCALE = alt.Scale(domain=["true", "false"], range=[TRUE_COLOR, FALSE_COLOR])
SERIES_COLORS = ["#264653", "#e9c46a", "#f4a261", "#2a9d8f", "#e76f51", "#8d99ae", "#6a4c93"]
ACCURACY_SCALE = alt.Scale(scheme="blues", domain=[0.5, 1.0], clamp=True)


def chart_datasets(chart: alt.TopLevelMixin) -> dict[str, pd.DataFrame]:
    """The named datasets of a chart's Vega-Lite spec, as data frames (for tests and downloads)."""
    spec = chart.to_dict()
    return {name: pd.DataFrame(rows) for name, rows in spec.get("datasets", {}).items()}


def chart_rows(chart: alt.TopLevelMixin) -> pd.DataFrame:
    """All rows of all datasets of a chart, concatenated."""
    frames = list(chart_datasets(chart).values())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def probe_order(values) -> list[str]:
    present = list(dict.fromkeys(values))
    return [p for p in PROBE_KINDS if p in present] + [p for p in present if p not in PROBE_KINDS]


# ----------------------------------------------------------------------------- dataset


def label_balance_chart(summary: pd.DataFrame) -> alt.Chart:
    """Rows per topic, split into true and false (from ``StatementSet.summary()``)."""
    long = summary.melt(id_vars=["topic"], value_vars=["true", "false"], var_name="label", value_name="statements")
    return (
        alt.Chart(long, title="Statements per topic")
        .mark_bar()
        .encode(
            y=alt.Y("topic:N", sort=list(summary["topic"]), title=None),
            x=alt.X("statements:Q", stack="zero", title="statements"),
            color=alt.Color("label:N", scale=LABEL_SCALE, legend=alt.Legend(orient="bottom", title=None)),
            order=alt.Order("label:N", sort="descending"),
            tooltip=["topic", "label", "statements"],
        )
        .properties(height=alt.Step(26))
    )


# ----------------------------------------------------------------------------- training


def dynamics_long(history: pd.DataFrame | list[dict]) -> pd.DataFrame:
    """epoch, metric (loss | accuracy), data (train | held-out), value."""
    frame = pd.DataFrame(history)
    rows = []
    for prefix, data in (("train", "train"), ("heldout", "held-out")):
        for metric in ("loss", "accuracy"):
            column = f"{prefix}_{metric}"
            if column in frame:
                rows.append(pd.DataFrame({"epoch": frame["epoch"], "metric": metric,
                                          "data": data, "value": frame[column]}))
    if not rows:
        return pd.DataFrame(columns=["epoch", "metric", "data", "value"])
    return pd.concat(rows, ignore_index=True)


def training_dynamics_chart(history: pd.DataFrame | list[dict], epochs: int | None = None) -> alt.HConcatChart:
    """Loss and accuracy per epoch for training and held-out data (two panels)."""
    long = dynamics_long(history)
    last = int(epochs or (long["epoch"].max() if len(long) else 1))
    x = alt.X("epoch:Q", scale=alt.Scale(domain=[1, max(last, 2)]), axis=alt.Axis(tickMinStep=1), title="epoch")
    color = alt.Color("data:N", scale=alt.Scale(domain=["train", "held-out"], range=["#264653", "#f4a261"]),
                      legend=alt.Legend(orient="bottom", title=None))
    base = alt.Chart(long)

    def panel(metric: str, title: str, y_scale: alt.Scale) -> alt.LayerChart:
        part = base.transform_filter(alt.datum.metric == metric)
        lines = part.mark_line(strokeWidth=2).encode(x=x, y=alt.Y("value:Q", scale=y_scale, title=title),
                                                     color=color)
        points = part.mark_circle(size=40).encode(x=x, y="value:Q", color=color,
                                                  tooltip=["epoch", "data", alt.Tooltip("value:Q", format=".3f")])
        layers = [lines, points] if last <= 60 else [lines.encode(tooltip=["epoch", "data", alt.Tooltip("value:Q", format=".3f")])]
        return alt.layer(*layers).properties(title=title, width=300, height=220)

    return alt.hconcat(
        panel("loss", "Loss (binary cross-entropy)", alt.Scale(zero=False)),
        panel("accuracy", "Accuracy", alt.Scale(domain=[0, 1])),
    )


def topic_accuracy_chart(per_topic: pd.DataFrame, title: str = "Accuracy per topic") -> alt.LayerChart:
    """Bars per topic (colour: held out or trained on), with chance (0.5) as a rule."""
    bars = (
        alt.Chart(per_topic)
        .mark_bar()
        .encode(
            y=alt.Y("topic:N", sort=list(per_topic["topic"]), title=None),
            x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            color=alt.Color("role:N", scale=alt.Scale(domain=["held out", "trained on"],
                                                      range=["#f4a261", "#8d99ae"]),
                            legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["topic", "role", "n", alt.Tooltip("accuracy:Q", format=".3f")],
        )
    )
    text = bars.mark_text(align="left", dx=3).encode(text=alt.Text("accuracy:Q", format=".2f"),
                                                     color=alt.value("#333"))
    chance = alt.Chart(pd.DataFrame({"accuracy": [0.5]})).mark_rule(strokeDash=[4, 3], color="#555").encode(x="accuracy:Q")
    return alt.layer(bars, text, chance).properties(title=title, height=alt.Step(26))


def confusion_chart(confusion: pd.DataFrame) -> alt.LayerChart:
    """2 x 2 counts of actual vs predicted label on the held-out statements."""
    order = ["true", "false"]
    base = alt.Chart(confusion).encode(
        x=alt.X("predicted:N", sort=order, title="probe says", axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("actual:N", sort=order, title="actually"),
    )
    cells = base.mark_rect().encode(color=alt.Color("count:Q", scale=alt.Scale(scheme="oranges"), legend=None),
                                    tooltip=["actual", "predicted", "count"])
    top = float(confusion["count"].max()) if len(confusion) else 0
    text = base.mark_text(fontSize=18, fontWeight="bold").encode(
        text="count:Q",
        color=alt.condition(alt.datum.count > top * 0.6, alt.value("white"), alt.value("#222")))
    return alt.layer(cells, text).properties(title="Confusion matrix (held-out)", width=200, height=160)


def controls_chart(accuracy: float, text_only: float, shuffled: float) -> alt.LayerChart:
    """The probe's held-out accuracy beside its two controls, with chance marked."""
    frame = pd.DataFrame({
        "what": ["probe", "text only (control)", "shuffled labels (control)"],
        "accuracy": [accuracy, text_only, shuffled],
    })
    bars = alt.Chart(frame).mark_bar().encode(
        y=alt.Y("what:N", sort=list(frame["what"]), title=None),
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("what:N", scale=alt.Scale(domain=list(frame["what"]),
                                                  range=["#264653", "#8d99ae", "#c9ccd3"]), legend=None),
        tooltip=["what", alt.Tooltip("accuracy:Q", format=".3f")],
    )
    text = bars.mark_text(align="left", dx=3).encode(text=alt.Text("accuracy:Q", format=".3f"), color=alt.value("#333"))
    chance = alt.Chart(pd.DataFrame({"accuracy": [0.5]})).mark_rule(strokeDash=[4, 3]).encode(x="accuracy:Q")
    return alt.layer(bars, text, chance).properties(title="Probe vs controls (held-out accuracy)",
                                                     height=alt.Step(30))


# ----------------------------------------------------------------------------- grid


def accuracy_heatmap(long: pd.DataFrame, title: str, layers: list[int] | None = None,
                     probes: list[str] | None = None, selection: str | None = None,
                     best: pd.DataFrame | None = None) -> alt.LayerChart:
    """Probe kinds (rows) x layers (columns, -17 .. -1 as in the study) with the accuracy in each cell.

    ``long`` has layer, probe, accuracy (and optionally splits, and accuracy_lower/accuracy_upper:
    its 95 % interval, shown in the tooltip). ``layers``/``probes`` fix the axes so a grid that is
    still filling in keeps its shape; ``selection`` names a point selection on the cells (fields
    layer and probe). ``best`` (``StudyResult.best_layers``) stars each kind's best layer where a paired
    test tells it from the runner-up.
    """
    frame = long.copy()
    frame["layer"] = frame["layer"].astype(int)
    layer_order = sorted(set(layers or []) | set(frame["layer"]))
    kinds = probe_order(list(probes or []) + list(frame["probe"]))
    frame["label"] = frame["accuracy"].map(lambda v: f"{v:.3f}")
    if best is not None:
        starred = {(probe, int(layer)) for probe, layer, shown in
                   zip(best["probe"], best["best_layer"], best["distinguishable"]) if shown}
        frame["label"] = [label + " ★" if (probe, layer) in starred else label
                          for label, probe, layer in zip(frame["label"], frame["probe"], frame["layer"])]
    base = alt.Chart(frame).encode(
        x=alt.X("layer:O", sort=layer_order, scale=alt.Scale(domain=layer_order),
                axis=alt.Axis(labelAngle=0, orient="top"), title="layer (from the end)"),
        y=alt.Y("probe:N", sort=kinds, scale=alt.Scale(domain=kinds), title=None),
    )
    tooltip = ["probe", "layer", alt.Tooltip("accuracy:Q", format=".3f")]
    if "accuracy_lower" in frame:
        frame["interval"] = [f"[{low:.3f}, {high:.3f}]" if np.isfinite(low) else "-"
                             for low, high in zip(frame["accuracy_lower"], frame["accuracy_upper"])]
        tooltip.append(alt.Tooltip("interval:N", title="95 % interval"))
    if "splits" in frame:
        tooltip.append(alt.Tooltip("splits:Q", title="splits done"))
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("accuracy:Q", scale=ACCURACY_SCALE, legend=alt.Legend(title="accuracy", format=".2f")),
        tooltip=tooltip)
    if selection:
        chosen = alt.selection_point(name=selection, fields=["layer", "probe"], on="click", clear="dblclick")
        cells = cells.add_params(chosen).encode(
            strokeWidth=alt.condition(chosen, alt.value(3), alt.value(1)),
            stroke=alt.condition(chosen, alt.value("#222"), alt.value("white")),
            opacity=alt.condition(chosen, alt.value(1.0), alt.value(0.55)),
        )
    text = base.mark_text(fontSize=14).encode(
        text="label:N",
        color=alt.condition(alt.datum.accuracy > 0.8, alt.value("white"), alt.value("#1d1d1d")),
    )
    width = max(180, 70 * len(layer_order))
    return alt.layer(cells, text).properties(title=title, width=width, height=alt.Step(40))


def grid_curves_chart(dynamics: pd.DataFrame, epochs: int | None = None) -> alt.HConcatChart:
    """Held-out loss and accuracy per epoch for one grid cell, one line per held-out topic."""
    frame = dynamics.copy()
    long = pd.concat([
        pd.DataFrame({"epoch": frame["epoch"], "heldout": frame["heldout"], "metric": metric,
                      "value": frame[f"heldout_{metric}"]})
        for metric in ("loss", "accuracy") if f"heldout_{metric}" in frame
    ], ignore_index=True) if len(frame) else pd.DataFrame(columns=["epoch", "heldout", "metric", "value"])
    last = int(epochs or (long["epoch"].max() if len(long) else 1))
    x = alt.X("epoch:Q", scale=alt.Scale(domain=[1, max(last, 2)]), axis=alt.Axis(tickMinStep=1))
    base = alt.Chart(long)

    def panel(metric: str, title: str, scale: alt.Scale):
        return (base.transform_filter(alt.datum.metric == metric)
                .mark_line(point=True)
                .encode(x=x, y=alt.Y("value:Q", scale=scale, title=title),
                        color=alt.Color("heldout:N", title="held-out topic",
                                        scale=alt.Scale(range=SERIES_COLORS)),
                        tooltip=["heldout", "epoch", alt.Tooltip("value:Q", format=".3f")])
                .properties(title=f"Held-out {title.lower()}", width=260, height=200))

    return alt.hconcat(panel("loss", "Loss", alt.Scale(zero=False)), panel("accuracy", "Accuracy", alt.Scale(domain=[0, 1])))


def cell_topics_chart(per_topic: pd.DataFrame, title: str) -> alt.LayerChart:
    """Accuracy on each held-out topic for one grid cell, with the text-only control as ticks."""
    bars = alt.Chart(per_topic).mark_bar(color="#264653").encode(
        y=alt.Y("topic:N", sort=list(per_topic["topic"]), title="held-out topic"),
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
        tooltip=["topic", alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("text_only:Q", format=".3f", title="text-only control"),
                 alt.Tooltip("shuffled:Q", format=".3f", title="shuffled-label control")],
    )
    text = bars.mark_text(align="left", dx=3, color="#333").encode(text=alt.Text("accuracy:Q", format=".2f"))
    ticks = alt.Chart(per_topic).mark_tick(color=FALSE_COLOR, thickness=3, size=20).encode(
        y=alt.Y("topic:N", sort=list(per_topic["topic"])), x="text_only:Q")
    chance = alt.Chart(pd.DataFrame({"accuracy": [0.5]})).mark_rule(strokeDash=[4, 3]).encode(x="accuracy:Q")
    return alt.layer(bars, text, ticks, chance).properties(title=title, height=alt.Step(26), width=320)


def layer_accuracy_chart(intervals: pd.DataFrame, best: pd.DataFrame, title: str) -> alt.LayerChart:
    """Mean accuracy by layer, a line per probe kind with its 95 % interval as error bars; a diamond on
    each kind's best layer where a paired test tells it from the runner-up (``best``: see
    ``StudyResult.best_layers``). ``intervals``: probe, layer, accuracy, accuracy_lower, accuracy_upper."""
    frame = intervals.assign(layer=intervals["layer"].astype(int))
    order = sorted(set(frame["layer"]))
    kinds = probe_order(frame["probe"])
    x = alt.X("layer:O", sort=order, scale=alt.Scale(domain=order), axis=alt.Axis(labelAngle=0),
              title="layer (from the end)")
    color = alt.Color("probe:N", sort=kinds, scale=alt.Scale(domain=kinds, range=SERIES_COLORS),
                      legend=alt.Legend(orient="bottom", title=None))
    tooltip = ["probe", "layer", alt.Tooltip("accuracy:Q", format=".3f"),
               alt.Tooltip("accuracy_lower:Q", format=".3f", title="95 % lower"),
               alt.Tooltip("accuracy_upper:Q", format=".3f", title="95 % upper")]
    base = alt.Chart(frame)
    lines = base.mark_line(point=True, strokeWidth=2).encode(
        x=x, y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), title="mean held-out accuracy"), color=color,
        tooltip=tooltip)
    bars = base.mark_rule(strokeWidth=2).encode(x=x, y="accuracy_lower:Q", y2="accuracy_upper:Q", color=color)
    marked = best[best["distinguishable"].astype(bool)].rename(columns={"best_layer": "layer"})
    diamonds = alt.Chart(marked.assign(layer=marked["layer"].astype(int))).mark_point(
        shape="diamond", size=220, filled=True, opacity=0.9).encode(
        x=x, y="accuracy:Q", color=color,
        tooltip=["probe", alt.Tooltip("layer:O", title="best layer"), alt.Tooltip("runner_up:O", title="runner-up"),
                 alt.Tooltip("difference:Q", format="+.3f"), alt.Tooltip("lower:Q", format="+.3f"),
                 alt.Tooltip("upper:Q", format="+.3f")])
    return alt.layer(bars, lines, *([diamonds] if len(marked) else [])).properties(title=title, height=260)


def reliability_chart(bins: pd.DataFrame, title: str) -> alt.LayerChart:
    """Reliability diagram of one (layer, probe kind): per bin of predicted P(true), the share of true
    statements against the mean prediction (the diagonal is perfect calibration), raw and
    temperature-scaled, each with its ECE in the legend; point size = statements in the bin.
    ``bins``: rows of ``StudyResult.calibration()`` for that layer and kind."""
    frame = bins[bins["n"] > 0].copy()
    frame["series"] = [f"{scaling} (ECE {ece:.3f})" for scaling, ece in zip(frame["scaling"], frame["ece"])]
    series = list(dict.fromkeys(frame["series"]))
    color = alt.Color("series:N", sort=series, scale=alt.Scale(domain=series, range=["#264653", "#f4a261"]),
                      legend=alt.Legend(orient="bottom", title=None))
    unit = alt.Scale(domain=[0, 1])
    points = alt.Chart(frame).mark_line(point=True, strokeWidth=2).encode(
        x=alt.X("mean_predicted:Q", scale=unit, title="mean predicted P(true)"),
        y=alt.Y("fraction_true:Q", scale=unit, title="share of statements true"), color=color,
        tooltip=["series", "bin", "n", alt.Tooltip("mean_predicted:Q", format=".3f"),
                 alt.Tooltip("fraction_true:Q", format=".3f")])
    sized = points.mark_circle().encode(size=alt.Size("n:Q", legend=None))
    diagonal = alt.Chart(pd.DataFrame({"p": [0.0, 1.0]})).mark_line(strokeDash=[4, 3], color="#555").encode(
        x="p:Q", y="p:Q")
    return alt.layer(diagonal, points, sized).properties(title=title, width=320, height=300)


# ----------------------------------------------------------------------------- directions


def direction_matrix_chart(matrices: pd.DataFrame, layer: int, value: str = "cosine",
                           title: str | None = None) -> alt.LayerChart:
    """Split-by-split matrix (cosine or sign_equality) of one layer, the value written in each cell."""
    frame = matrices[matrices["layer"] == layer][["split_a", "split_b", value]].copy()
    frame["text"] = frame[value].map(lambda v: f"{v:.2f}")
    order = list(dict.fromkeys(frame["split_a"]))
    is_cos = value == "cosine"
    scale = alt.Scale(scheme="redblue", domain=[-1, 1]) if is_cos else alt.Scale(scheme="purples", domain=[0.4, 1])
    base = alt.Chart(frame).encode(
        x=alt.X("split_b:N", sort=order, title="held-out topic", axis=alt.Axis(labelAngle=-30)),
        y=alt.Y("split_a:N", sort=order, title="held-out topic"),
    )
    cells = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=scale, legend=alt.Legend(format=".1f")),
                                    tooltip=["split_a", "split_b", alt.Tooltip(f"{value}:Q", format=".3f")])
    threshold = 0.75 if is_cos else 0.85
    text = base.mark_text(fontSize=13).encode(
        text="text:N",
        color=alt.condition(alt.datum[value] > threshold, alt.value("white"), alt.value("#1d1d1d")))
    default = ("Cosine similarity" if is_cos else "Sign equality") + f" of split directions, layer {layer}"
    return alt.layer(cells, text).properties(title=title or default, width=alt.Step(48), height=alt.Step(40))


def directions_long(cosine_summary: pd.DataFrame, sign_summary: pd.DataFrame) -> pd.DataFrame:
    """layer, statistic, series (learned / random / shuffled labels), value, low, high."""
    rows = []
    for statistic, table in (("cosine similarity", cosine_summary), ("sign equality", sign_summary)):
        for row in table.itertuples(index=False):
            rows.append({"layer": row.layer, "statistic": statistic, "series": "learned directions",
                         "value": row.mean, "low": np.nan, "high": np.nan})
            rows.append({"layer": row.layer, "statistic": statistic, "series": "random directions",
                         "value": row.random_baseline, "low": row.random_baseline, "high": row.random_p95})
            if not pd.isna(row.shuffled_labels):
                rows.append({"layer": row.layer, "statistic": statistic, "series": "shuffled labels",
                             "value": row.shuffled_labels, "low": np.nan, "high": np.nan})
    return pd.DataFrame(rows)


def direction_layers_chart(cosine_summary: pd.DataFrame, sign_summary: pd.DataFrame) -> alt.HConcatChart:
    """Mean off-diagonal cosine and sign equality across layers, with the random baseline (band: to its 95th percentile)."""
    long = directions_long(cosine_summary, sign_summary)
    layers = sorted(long["layer"].unique().tolist()) if len(long) else []
    color = alt.Color("series:N", legend=alt.Legend(orient="bottom", title=None),
                      scale=alt.Scale(domain=["learned directions", "random directions", "shuffled labels"],
                                      range=["#264653", "#8d99ae", "#f4a261"]))
    dash = alt.StrokeDash("series:N", legend=None, scale=alt.Scale(
        domain=["learned directions", "random directions", "shuffled labels"],
        range=[[1, 0], [5, 4], [2, 2]]))
    x = alt.X("layer:O", sort=layers, axis=alt.Axis(labelAngle=0), title="layer (from the end)")

    def panel(statistic: str, domain):
        part = alt.Chart(long).transform_filter(alt.datum.statistic == statistic)
        band = part.transform_filter(alt.datum.series == "random directions").mark_area(
            opacity=0.2, color="#8d99ae").encode(x=x, y=alt.Y("low:Q"), y2="high:Q")
        lines = part.mark_line(point=True, strokeWidth=2).encode(
            x=x, y=alt.Y("value:Q", scale=alt.Scale(domain=domain), title=statistic),
            color=color, strokeDash=dash,
            tooltip=["series", "layer", alt.Tooltip("value:Q", format=".3f")])
        return alt.layer(band, lines).properties(title=f"Mean pairwise {statistic}", width=300, height=230)

    return alt.hconcat(panel("cosine similarity", [-0.2, 1]), panel("sign equality", [0.3, 1]))


# ----------------------------------------------------------------------------- statements


def statement_layers_chart(scores: pd.DataFrame, layers: list[int] | None = None) -> alt.LayerChart:
    """P(true) of one statement at each layer, one line per probe kind; 0.5 marked."""
    frame = scores.copy()
    order = sorted(set(layers or []) | set(frame["layer"].astype(int)))
    x = alt.X("layer:O", sort=order, scale=alt.Scale(domain=order), axis=alt.Axis(labelAngle=0),
              title="layer (from the end)")
    lines = alt.Chart(frame).mark_line(point=alt.OverlayMarkDef(size=70), strokeWidth=2).encode(
        x=x, y=alt.Y("p_true:Q", scale=alt.Scale(domain=[0, 1]), title="P(true) from the probe"),
        color=alt.Color("probe:N", sort=probe_order(frame["probe"]), scale=alt.Scale(range=SERIES_COLORS),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["probe", "layer", alt.Tooltip("p_true:Q", format=".3f")])
    half = alt.Chart(pd.DataFrame({"p_true": [0.5]})).mark_rule(strokeDash=[4, 3], color="#555").encode(y="p_true:Q")
    return alt.layer(half, lines).properties(title="What the probes read from the hidden states",
                                             height=260)


def model_answer_chart(answer: dict) -> alt.LayerChart:
    """P(" True") and P(" False") (renormalised over the two) when the model is asked."""
    frame = pd.DataFrame({"answer": ["True", "False"], "probability": [answer["p_true"], answer["p_false"]]})
    bars = alt.Chart(frame).mark_bar().encode(
        x=alt.X("answer:N", sort=["True", "False"], axis=alt.Axis(labelAngle=0), title=None),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("answer:N", scale=alt.Scale(domain=["True", "False"], range=[TRUE_COLOR, FALSE_COLOR]),
                        legend=None),
        tooltip=["answer", alt.Tooltip("probability:Q", format=".3f")])
    text = bars.mark_text(dy=-8).encode(text=alt.Text("probability:Q", format=".2f"), color=alt.value("#333"))
    return alt.layer(bars, text).properties(title="What the model answers", height=260, width=200)


# ----------------------------------------------------------------------------- PCA


# ----------------------------------------------------------------------------- generalization


# ----------------------------------------------------------------------------- steering


# ----------------------------------------------------------------------------- two studies


