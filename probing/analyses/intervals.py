"""The grid's numbers with their uncertainty, from its held-out predictions (``StudyResult.predictions``):
95 % intervals of the mean accuracy over splits and seeds, the best layer per probe kind tested against
the runner-up, and calibration (reliability bins and ECE, raw and temperature-scaled).

What the intervals cover: which statements happened to be held out (a bootstrap over statements within
each split, the seeds of a split kept together as each statement's share of seeds right). What they do
not: retraining noise beyond the seeds run, the choice of topics, and other models or data. Per-cell
intervals (Wilson for accuracy, DeLong for AUROC) are in the result rows themselves (``train_cells``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probing.analyses.grid import accuracy_long
from probing.analyses.uncertainty import (
    apply_temperature, bootstrap_mean_interval, expected_calibration_error, paired_bootstrap_difference,
    reliability_table,
)
from probing.constants import PROBE_KINDS

CELL = ["layer", "probe", "split", "heldout", "seed"]
DRAWS = 2000
"""Bootstrap draws per interval and per best-layer test."""


def correct(predictions: pd.DataFrame) -> np.ndarray:
    """1.0 where a prediction is right, else 0.0: score > 0 is "true", as the grid's accuracy counts."""
    return ((predictions["score"].to_numpy() > 0).astype(int) == predictions["label"].to_numpy()).astype(float)


def statement_shares(predictions: pd.DataFrame) -> pd.DataFrame:
    """split, probe, layer, heldout, row, correct: per held-out statement of a (split kind, probe, layer),
    the share of its seeds that classified it right (:func:`correct`)."""
    return (predictions.assign(correct=correct(predictions))
            .groupby(["split", "probe", "layer", "heldout", "row"])["correct"].mean().reset_index())


def accuracy_intervals(results: pd.DataFrame, shares: pd.DataFrame, draws: int = DRAWS,
                       seed: int = 0) -> pd.DataFrame:
    """split, probe, layer, accuracy, splits, accuracy_lower, accuracy_upper: the mean accuracy over
    splits and seeds (as :func:`~probing.analyses.grid.accuracy_long`) of each split kind with its
    95 % bootstrap interval from the predictions' :func:`statement_shares` (NaN where they lack the
    cell, as in folders written before predictions were kept)."""
    columns = ["split", "probe", "layer", "accuracy", "splits", "accuracy_lower", "accuracy_upper"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    means = pd.concat([accuracy_long(rows).assign(split=kind) for kind, rows in results.groupby("split", sort=False)],
                      ignore_index=True)
    bounds = {}
    if not shares.empty:
        for (kind, probe, layer), cell in shares.groupby(["split", "probe", "layer"]):
            vectors = [group["correct"].to_numpy() for _, group in cell.groupby("heldout")]
            bounds[kind, probe, layer] = bootstrap_mean_interval(vectors, draws=draws, seed=seed)
    interval = [bounds.get((kind, probe, layer), (np.nan, np.nan))
                for kind, probe, layer in zip(means["split"], means["probe"], means["layer"])]
    lower, upper = zip(*interval)
    return means.assign(accuracy_lower=list(lower), accuracy_upper=list(upper))[columns]


def best_layers(results: pd.DataFrame, shares: pd.DataFrame, split: str, draws: int = DRAWS,
                seed: int = 0) -> pd.DataFrame:
    """Per probe kind with two layers or more in ``split``: the layer of the highest mean accuracy, the
    runner-up, the difference with its 95 % paired bootstrap interval (statements resampled within each
    split, the same for both layers; ``shares``: :func:`statement_shares`) and whether it excludes 0
    (``distinguishable``). Without predictions the interval is NaN and nothing is distinguishable."""
    columns = ["probe", "best_layer", "accuracy", "runner_up", "runner_up_accuracy", "difference", "lower",
               "upper", "distinguishable"]
    rows = results[results["split"] == split] if not results.empty else results
    if rows.empty:
        return pd.DataFrame(columns=columns)
    shares = shares[shares["split"] == split] if not shares.empty else None
    table = []
    for probe, means in accuracy_long(rows).groupby("probe", sort=False):
        if len(means) < 2:
            continue
        best, runner = means.sort_values(["accuracy", "layer"], ascending=False).iloc[:2].itertuples()
        test = {"difference": best.accuracy - runner.accuracy, "lower": np.nan, "upper": np.nan}
        if shares is not None:
            a = shares[(shares["probe"] == probe) & (shares["layer"] == best.layer)]
            b = shares[(shares["probe"] == probe) & (shares["layer"] == runner.layer)]
            if len(a) and a[["heldout", "row"]].to_numpy().tolist() == b[["heldout", "row"]].to_numpy().tolist():
                test = paired_bootstrap_difference(a["correct"].to_numpy(), b["correct"].to_numpy(), draws=draws,
                                                   seed=seed, strata=a["heldout"].to_numpy())
        table.append({"probe": probe, "best_layer": int(best.layer), "accuracy": best.accuracy,
                      "runner_up": int(runner.layer), "runner_up_accuracy": runner.accuracy, **test,
                      "distinguishable": bool(test["lower"] > 0)})
    table = pd.DataFrame(table, columns=columns)
    order = {kind: i for i, kind in enumerate(PROBE_KINDS)}
    return table.sort_values("probe", key=lambda kinds: kinds.map(order), kind="stable").reset_index(drop=True)


def calibration(results: pd.DataFrame, predictions: pd.DataFrame, bins: int = 10) -> pd.DataFrame:
    """split, layer, probe, scaling (raw | scaled), bin, lower, upper, n, mean_predicted, fraction_true, ece:
    the reliability bins of P(true) = sigmoid(score) and the expected calibration error per (split kind,
    layer, probe kind), the held-out predictions pooled over splits and seeds. ``scaled`` divides each
    cell's scores by the temperature fitted on that cell's training statements (``temperature`` in the
    result rows), so it is as held-out as ``raw``."""
    columns = ["split", "layer", "probe", "scaling", "bin", "lower", "upper", "n", "mean_predicted",
               "fraction_true", "ece"]
    if predictions.empty:
        return pd.DataFrame(columns=columns)
    temperatures = results[CELL + ["temperature"]] if "temperature" in results else results[CELL].assign(
        temperature=np.nan)
    merged = predictions.merge(temperatures, on=CELL, how="left", validate="many_to_one")
    tables = []
    for (kind, layer, probe), cell in merged.groupby(["split", "layer", "probe"], sort=False):
        labels, scores = cell["label"].to_numpy(), cell["score"].to_numpy()
        scalings = {"raw": apply_temperature(scores, 1.0)}
        if cell["temperature"].notna().all():
            scalings["scaled"] = apply_temperature(scores / cell["temperature"].to_numpy(), 1.0)
        for scaling, p_true in scalings.items():
            tables.append(reliability_table(p_true, labels, bins).assign(
                split=kind, layer=layer, probe=probe, scaling=scaling,
                ece=expected_calibration_error(p_true, labels, bins)))
    return pd.concat(tables, ignore_index=True)[columns]


def interval_text(accuracy: float, lower: float, upper: float) -> str:
    """``0.553 [0.541, 0.565]``, or ``0.553`` without an interval."""
    return f"{accuracy:.3f}" if np.isnan(lower) else f"{accuracy:.3f} [{lower:.3f}, {upper:.3f}]"


def interval_table(intervals: pd.DataFrame, split: str) -> pd.DataFrame:
    """The study's layout (a row per probe kind, a column per layer) of one split kind's mean accuracy with
    its interval as text, for Markdown."""
    rows = intervals[intervals["split"] == split]
    text = rows.assign(text=[interval_text(*values) for values in
                             zip(rows["accuracy"], rows["accuracy_lower"], rows["accuracy_upper"])])
    table = text.pivot(index="probe", columns="layer", values="text")
    table = table.loc[[p for p in PROBE_KINDS if p in table.index], sorted(table.columns)]
    table.columns = [str(c) for c in table.columns]
    return table.reset_index()


def best_layer_lines(best: pd.DataFrame) -> list[str]:
    """One sentence per probe kind: its best layer and whether the runner-up is distinguishable."""
    lines = []
    for row in best.itertuples():
        gap = (f"{row.difference:+.3f} [{row.lower:+.3f}, {row.upper:+.3f}]" if not np.isnan(row.lower)
               else f"{row.difference:+.3f}, no predictions to test it")
        verdict = "better than" if row.distinguishable else "not distinguishable from"
        lines.append(f"- {row.probe}: layer {row.best_layer} ({row.accuracy:.3f}), {verdict} layer {row.runner_up} "
                     f"({gap})")
    return lines
