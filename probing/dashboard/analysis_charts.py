"""Altair charts of the analyses beyond the grid: the activations' geometry (PCA, the truth subspace),
generalization, steering and two models compared. The colours and scales are :mod:`charts`' own.
Lines carry 95 % intervals as error bars where the table has them (Wilson intervals of accuracies
over their test statements, t intervals of mean answers).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from probing.analyses.uncertainty import wilson_columns
from probing.dashboard.charts import ACCURACY_SCALE, FALSE_COLOR, LABEL_SCALE, SERIES_COLORS, TRUE_COLOR, probe_order

INTERVAL_TOOLTIPS = [alt.Tooltip("lower:Q", format=".3f", title="95 % interval from"),
                     alt.Tooltip("upper:Q", format=".3f", title="95 % interval to")]


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


def generalization_heatmap(results: pd.DataFrame, layer: int, probe: str, value: str = "accuracy",
                           title: str | None = None, selection: str | None = None) -> alt.LayerChart:
    """The topic matrix of one layer and probe: trained on (rows, topics then "all other topics") x
    tested on (columns), the value written in each cell. ``value``: accuracy, auroc or
    text_only_accuracy (the control's matrix, the same for every layer and probe).
    ``selection`` names a click selection on the cells (fields train and test)."""
    from probing.analyses.generalization import ALL_OTHERS

    frame = results[(results.analysis == "topics") & (results.layer == layer) & (results.probe == probe)]
    frame = frame[["train", "test", value, "n_train", "n_test"]].rename(columns={value: "value"})
    interval = value != "auroc"  # an accuracy: a Wilson interval over its test statements
    if interval:
        frame = wilson_columns(frame, "value").rename(columns={"value_lower": "lower", "value_upper": "upper"})
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
                 *(INTERVAL_TOOLTIPS if interval else []),
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
    """Polarity transfer per layer: a line per (trained on > tested on) polarity, dashed per probe; for
    accuracy, error bars of its 95 % Wilson interval over the test statements."""
    chosen = results[results.analysis == "polarity"].copy()
    chosen["transfer"] = chosen["train"] + " > " + chosen["test"]
    chosen["value"] = chosen[value]
    interval = value != "auroc"
    if interval:
        chosen = wilson_columns(chosen, "value").rename(columns={"value_lower": "lower", "value_upper": "upper"})
    order = [f"{a} > {b}" for a in ("affirmative", "negated", "all") for b in ("affirmative", "negated")]
    title = value.replace("_", " ")
    base = alt.Chart(chosen).encode(
        x=alt.X("layer:O", sort=sorted(set(chosen["layer"])), title="layer (from the end)",
                axis=alt.Axis(labelAngle=0)),
        color=alt.Color("transfer:N", sort=order, title="trained on > tested on",
                        scale=alt.Scale(domain=order, range=SERIES_COLORS[:len(order)])),
        detail="probe:N",
    )
    lines = base.mark_line(point=True).encode(
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=title),
        strokeDash=alt.StrokeDash("probe:N", title="probe"),
        tooltip=["probe", "layer", "transfer", alt.Tooltip("value:Q", format=".3f"),
                 *(INTERVAL_TOOLTIPS if interval else []), "n_train", "n_test"],
    )
    chance = alt.Chart(pd.DataFrame({"value": [0.5]})).mark_rule(strokeDash=[4, 3], color="#555").encode(y="value:Q")
    layers = [lines, base.mark_errorbar(ticks=True).encode(y=alt.Y("lower:Q", title=title), y2="upper:Q")] \
        if interval else [lines]
    return alt.layer(*layers, chance).properties(title="Affirmative and negated statements: transfer per layer",
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


def dose_response_chart(table: pd.DataFrame) -> alt.LayerChart:
    """Mean P(" True") - P(" False") of held-out true and false statements against alpha, a line per
    direction (the controls, random and shuffled, dashed), with error bars of the 95 % interval of
    each mean where the table has them (steering.csv files of earlier versions do not)."""
    interval = "margin_true_lower" in table
    long = pd.concat([table[["direction", "alpha"]].assign(
        statements=name, margin=table[column],
        **({"lower": table[f"{column}_lower"], "upper": table[f"{column}_upper"]} if interval else {}))
        for column, name in (("margin_true", "true statements"), ("margin_false", "false statements"))],
        ignore_index=True)
    long["kind"] = np.where(long["direction"].isin(["random", "shuffled"]), "control", "direction")
    order = list(dict.fromkeys(table["direction"]))
    title = 'mean P(" True") - P(" False")'
    base = alt.Chart(long).encode(
        x=alt.X("alpha:Q", title="alpha (1 = the distance between the false and true class means)"),
        color=alt.Color("direction:N", sort=order, scale=alt.Scale(range=SERIES_COLORS)),
        detail="statements:N",
    )
    lines = base.mark_line(point=True).encode(
        y=alt.Y("margin:Q", title=title, scale=alt.Scale(zero=False)),
        strokeDash=alt.StrokeDash("kind:N", scale=alt.Scale(domain=["direction", "control"], range=[[1, 0], [5, 4]]),
                                  title=None),
        shape=alt.Shape("statements:N", title=None),
        tooltip=["direction", "statements", "alpha", alt.Tooltip("margin:Q", format="+.4f"),
                 *(INTERVAL_TOOLTIPS if interval else [])],
    )
    bars = [base.mark_errorbar(ticks=True).encode(y=alt.Y("lower:Q", title=title), y2="upper:Q")] if interval else []
    return alt.layer(lines, *bars).properties(title="Dose-response: the model's answer on held-out statements",
                                              width=560, height=320)


def difference_heatmap(pairs: pd.DataFrame, title: str) -> alt.LayerChart:
    """Accuracy of B minus A per probe (rows) and aligned layer pair (columns, "A layer / B layer"); where
    the pairs carry paired tests, a difference beyond noise is marked * and the tooltip shows the test."""
    frame = pairs.copy()
    frame["layers"] = frame["layer_a"].astype(str) + " / " + frame["layer_b"].astype(str)
    tested = "verdict" in frame
    marks = np.where(frame["verdict"] == "beyond noise", " *", "") if tested else ""
    frame["text"] = frame["difference"].map(lambda v: f"{v:+.3f}") + marks
    order = list(dict.fromkeys(frame.sort_values("depth_a")["layers"]))
    base = alt.Chart(frame).encode(
        x=alt.X("layers:O", sort=order, title="layer of A / layer of B", axis=alt.Axis(labelAngle=0, orient="top")),
        y=alt.Y("probe:N", sort=probe_order(frame["probe"]), title=None))
    cells = base.mark_rect(stroke="white", strokeWidth=2).encode(
        color=alt.Color("difference:Q", scale=alt.Scale(scheme="redblue", domain=[-0.2, 0.2], clamp=True),
                        legend=alt.Legend(title="B - A", format="+.2f")),
        tooltip=["probe", "layer_a", "layer_b", alt.Tooltip("depth_a:Q", format=".2f"),
                 alt.Tooltip("depth_b:Q", format=".2f"), alt.Tooltip("accuracy_a:Q", format=".3f"),
                 alt.Tooltip("accuracy_b:Q", format=".3f"), alt.Tooltip("difference:Q", format="+.3f"),
                 *([*INTERVAL_TOOLTIPS, alt.Tooltip("p_value:Q", format=".3g", title="McNemar's p"), "verdict"]
                   if tested else [])])
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
