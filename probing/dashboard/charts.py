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


def _probe_order(values) -> list[str]:
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
                     probes: list[str] | None = None, selection: str | None = None) -> alt.LayerChart:
    """Probe kinds (rows) x layers (columns, -17 .. -1 as in the study) with the accuracy in each cell.

    ``long`` has layer, probe, accuracy (and optionally splits). ``layers``/``probes`` fix the
    axes so a grid that is still filling in keeps its shape; ``selection`` names a point
    selection on the cells (fields layer and probe).
    """
    frame = long.copy()
    frame["layer"] = frame["layer"].astype(int)
    layer_order = sorted(set(layers or []) | set(frame["layer"]))
    probe_order = _probe_order(list(probes or []) + list(frame["probe"]))
    frame["label"] = frame["accuracy"].map(lambda v: f"{v:.3f}")
    base = alt.Chart(frame).encode(
        x=alt.X("layer:O", sort=layer_order, scale=alt.Scale(domain=layer_order),
                axis=alt.Axis(labelAngle=0, orient="top"), title="layer (from the end)"),
        y=alt.Y("probe:N", sort=probe_order, scale=alt.Scale(domain=probe_order), title=None),
    )
    tooltip = ["probe", "layer", alt.Tooltip("accuracy:Q", format=".3f")]
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
        color=alt.Color("probe:N", sort=_probe_order(frame["probe"]), scale=alt.Scale(range=SERIES_COLORS),
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


def pca_chart(points: pd.DataFrame, explained=None, layer: int | None = None) -> alt.Chart:
    """First two principal components; colour = label, shape = topic."""
    ex = list(explained) if explained is not None else [np.nan, np.nan]
    title_x = f"PC1 ({ex[0]:.0%} of variance)" if not np.isnan(ex[0]) else "PC1"
    title_y = f"PC2 ({ex[1]:.0%} of variance)" if not np.isnan(ex[1]) else "PC2"
    selection = alt.selection_point(fields=["topic"], bind="legend", name="topic_pick")
    return (
        alt.Chart(points, title=f"Activations at layer {layer}" if layer is not None else "Activations")
        .mark_point(filled=True, size=45)
        .encode(
            x=alt.X("pc1:Q", title=title_x), y=alt.Y("pc2:Q", title=title_y),
            color=alt.Color("label:N", scale=LABEL_SCALE, legend=alt.Legend(title="label")),
            shape=alt.Shape("topic:N", legend=alt.Legend(title="topic (click to highlight)")),
            opacity=alt.condition(selection, alt.value(0.85), alt.value(0.08)),
            tooltip=["statement", "label", "topic"],
        )
        .add_params(selection)
        .properties(height=480)
        .interactive()
    )


# ----------------------------------------------------------------------------- generalization


def generalization_heatmap(results: pd.DataFrame, layer: int, probe: str, value: str = "accuracy",
                           title: str | None = None, selection: str | None = None) -> alt.LayerChart:
    """The topic matrix of one layer and probe: trained on (rows, topics then "all other topics") x
    tested on (columns), the value written in each cell. ``value``: accuracy, auroc or
    text_only_accuracy (the control's matrix, the same for every layer and probe).
    ``selection`` names a click selection on the cells (fields train and test)."""
    from probing.analyses.generalization import ALL_OTHERS

    frame = results[(results.analysis == "topics") & (results.layer == layer) & (results.probe == probe)]
    frame = frame[["train", "test", value, "n_train", "n_test"]].rename(columns={value: "value"})
    frame["text"] = frame["value"].map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    tests = list(dict.fromkeys(frame["test"]))
    trains = [*tests, ALL_OTHERS]
    base = alt.Chart(frame).encode(
        x=alt.X("test:N", sort=tests, title="tested on", axis=alt.Axis(labelAngle=-30, orient="top")),
        y=alt.Y("train:N", sort=trains, title="trained on"),
    )
    names = {"accuracy": "accuracy", "auroc": "AUROC", "text_only_accuracy": "text-only accuracy"}
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("value:Q", scale=ACCURACY_SCALE, legend=alt.Legend(title=names[value], format=".2f")),
        tooltip=["train", "test", alt.Tooltip("value:Q", format=".3f", title=names[value]),
                 alt.Tooltip("n_train:Q", title="trained on"), alt.Tooltip("n_test:Q", title="tested on")])
    if selection:
        chosen = alt.selection_point(name=selection, fields=["train", "test"], on="click", clear="dblclick")
        cells = cells.add_params(chosen).encode(  # only a clicked cell is outlined
            stroke=alt.condition(chosen, alt.value("#222"), alt.value("white"), empty=False),
            strokeWidth=alt.condition(chosen, alt.value(3), alt.value(2), empty=False))
    text = base.mark_text(fontSize=12).encode(
        text="text:N", color=alt.condition(alt.datum.value > 0.8, alt.value("white"), alt.value("#1d1d1d")))
    default = f"{probe} probe at layer {layer}: {names[value]}" if value != "text_only_accuracy" else (
        "Text-only control: accuracy from the words alone")
    return alt.layer(cells, text).properties(title=title or default, width=alt.Step(50), height=alt.Step(32))


def polarity_chart(results: pd.DataFrame, value: str = "accuracy") -> alt.LayerChart:
    """Polarity transfer per layer: a line per (trained on > tested on) polarity, dashed per probe."""
    chosen = results[results.analysis == "polarity"].copy()
    chosen["transfer"] = chosen["train"] + " > " + chosen["test"]
    chosen["value"] = chosen[value]
    order = [f"{a} > {b}" for a in ("affirmative", "negated", "all") for b in ("affirmative", "negated")]
    lines = alt.Chart(chosen).mark_line(point=True).encode(
        x=alt.X("layer:O", sort=sorted(set(chosen["layer"])), title="layer (from the end)",
                axis=alt.Axis(labelAngle=0)),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=value.replace("_", " ")),
        color=alt.Color("transfer:N", sort=order, title="trained on > tested on",
                        scale=alt.Scale(domain=order, range=SERIES_COLORS[:len(order)])),
        strokeDash=alt.StrokeDash("probe:N", title="probe"),
        tooltip=["probe", "layer", "transfer", alt.Tooltip("value:Q", format=".3f"), "n_train", "n_test"],
    )
    chance = alt.Chart(pd.DataFrame({"value": [0.5]})).mark_rule(strokeDash=[4, 3], color="#555").encode(y="value:Q")
    return alt.layer(lines, chance).properties(title="Affirmative and negated statements: transfer per layer",
                                               width=520, height=300)


def truth_subspace_chart(points: pd.DataFrame, layer: int | None = None) -> alt.Chart:
    """Statements projected on the general truth direction t_G and the polarity-sensitive t_P
    (Bürger et al. 2024): colour = label, shape = polarity."""
    return (
        alt.Chart(points, title=f"Truth subspace at layer {layer}" if layer is not None else "Truth subspace")
        .mark_point(filled=True, size=45)
        .encode(
            x=alt.X("t_g:Q", title="projection on t_G (general truth)"),
            y=alt.Y("t_p:Q", title="projection on t_P (polarity-sensitive truth)"),
            color=alt.Color("label:N", scale=LABEL_SCALE, legend=alt.Legend(title="label")),
            shape=alt.Shape("polarity:N", scale=alt.Scale(domain=["affirmative", "negated"],
                                                          range=["circle", "triangle-up"]),
                            legend=alt.Legend(title="polarity")),
            opacity=alt.value(0.75),
            tooltip=["statement", "label", "polarity", "topic"],
        )
        .properties(height=480)
        .interactive()
    )


# ----------------------------------------------------------------------------- steering


def steered_answer_chart(margins: dict[str, float]) -> alt.LayerChart:
    """P(" True") - P(" False") without and with steering (``{"without": m0, "with alpha = 2": m1}``)."""
    frame = pd.DataFrame({"run": list(margins), "margin": list(margins.values())})
    frame["text"] = frame["margin"].map(lambda v: f"{v:+.3f}")
    bars = alt.Chart(frame).mark_bar().encode(
        y=alt.Y("run:N", sort=list(margins), title=None),
        x=alt.X("margin:Q", scale=alt.Scale(domain=[-1, 1]), title='P(" True") - P(" False")'),
        color=alt.condition(alt.datum.margin > 0, alt.value(TRUE_COLOR), alt.value(FALSE_COLOR)),
        tooltip=["run", alt.Tooltip("margin:Q", format="+.4f")],
    )
    text = bars.mark_text(align="left", dx=4, color="#333").encode(text="text:N")
    zero = alt.Chart(pd.DataFrame({"margin": [0.0]})).mark_rule(color="#555").encode(x="margin:Q")
    return alt.layer(bars, text, zero).properties(title="What the model answers", height=alt.Step(34))


def dose_response_chart(table: pd.DataFrame) -> alt.Chart:
    """Mean P(" True") - P(" False") of held-out true and false statements against alpha, a line per
    direction (the controls, random and shuffled, dashed)."""
    long = table.melt(id_vars=["direction", "alpha"], value_vars=["margin_true", "margin_false"],
                      var_name="statements", value_name="margin")
    long["statements"] = long["statements"].map({"margin_true": "true statements", "margin_false": "false statements"})
    long["kind"] = np.where(long["direction"].isin(["random", "shuffled"]), "control", "direction")
    order = list(dict.fromkeys(table["direction"]))
    return alt.Chart(long, title="Dose-response: the model's answer on held-out statements").mark_line(point=True).encode(
        x=alt.X("alpha:Q", title="alpha (1 = the distance between the false and true class means)"),
        y=alt.Y("margin:Q", title='mean P(" True") - P(" False")', scale=alt.Scale(zero=False)),
        color=alt.Color("direction:N", sort=order, scale=alt.Scale(range=SERIES_COLORS)),
        strokeDash=alt.StrokeDash("kind:N", scale=alt.Scale(domain=["direction", "control"], range=[[1, 0], [5, 4]]),
                                  title=None),
        shape=alt.Shape("statements:N", title=None),
        detail="statements:N",
        tooltip=["direction", "statements", "alpha", alt.Tooltip("margin:Q", format="+.4f")],
    ).properties(width=560, height=320)


# ----------------------------------------------------------------------------- two studies


def difference_heatmap(pairs: pd.DataFrame, title: str) -> alt.LayerChart:
    """Accuracy of B minus A per probe (rows) and aligned layer pair (columns, "A layer / B layer")."""
    frame = pairs.copy()
    frame["layers"] = frame["layer_a"].astype(str) + " / " + frame["layer_b"].astype(str)
    frame["text"] = frame["difference"].map(lambda v: f"{v:+.3f}")
    order = list(dict.fromkeys(frame.sort_values("depth_a")["layers"]))
    base = alt.Chart(frame).encode(
        x=alt.X("layers:O", sort=order, title="layer of A / layer of B", axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("probe:N", sort=_probe_order(frame["probe"]), title=None))
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("difference:Q", scale=alt.Scale(scheme="redblue", domain=[-0.2, 0.2], clamp=True),
                        legend=alt.Legend(title="B - A", format="+.2f")),
        tooltip=["probe", "layer_a", "layer_b", alt.Tooltip("depth_a:Q", format=".2f"),
                 alt.Tooltip("depth_b:Q", format=".2f"), alt.Tooltip("accuracy_a:Q", format=".3f"),
                 alt.Tooltip("accuracy_b:Q", format=".3f"), alt.Tooltip("difference:Q", format="+.3f")])
    text = base.mark_text(fontSize=13).encode(text="text:N")
    return alt.layer(cells, text).properties(title=title, width=max(180, 80 * len(order)), height=alt.Step(40))


def depth_directions_chart(directions: pd.DataFrame) -> alt.HConcatChart:
    """Direction cosine and sign equality of both models against relative depth (0 = embeddings, 1 = last block)."""
    long = directions.melt(id_vars=["model", "probe", "layer", "depth"], value_vars=["cosine", "sign_equality"],
                           var_name="statistic", value_name="value")
    base = alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("depth:Q", scale=alt.Scale(domain=[0, 1]), title="relative depth"),
        y=alt.Y("value:Q", scale=alt.Scale(zero=False)),
        color=alt.Color("model:N", scale=alt.Scale(range=SERIES_COLORS)),
        strokeDash=alt.StrokeDash("probe:N"),
        tooltip=["model", "probe", "layer", alt.Tooltip("depth:Q", format=".2f"), alt.Tooltip("value:Q", format=".3f")])
    return alt.hconcat(
        base.transform_filter(alt.datum.statistic == "cosine").properties(title="Split directions: mean cosine",
                                                                          width=300, height=220),
        base.transform_filter(alt.datum.statistic == "sign_equality").properties(
            title="Split directions: sign equality", width=300, height=220))
