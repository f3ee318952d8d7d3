"""Is a difference between two probes beyond noise? Paired tests on the statements both were tested on.

Two cells (a layer and probe kind) of one study, or of two studies of the same statements, classify
the same held-out statements, so their per-statement correctness is paired and far less noisy than
two separate accuracies suggest. Per statement, a cell's correctness is the share of its seeds that
classify it right (``StudyResult.predictions``: predicted true iff score > 0, as the grid counts).
The difference B - A comes with a paired bootstrap interval that resamples statements within each
split and averages the splits, as the grid's mean accuracy does, so the difference is exactly the
difference of the grid's accuracies. The verdict is "beyond noise" when that interval excludes 0.
McNemar's test gives a p-value beside it when each cell has one seed (0/1 correctness).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probing.analyses.intervals import correct
from probing.analyses.uncertainty import mcnemar_test, paired_bootstrap_difference

if TYPE_CHECKING:
    from probing.study.results import StudyResult

BEYOND, WITHIN = "beyond noise", "within noise"
NO_PREDICTIONS = "no per-statement predictions in this folder: re-run reproduce for paired tests"
TEST_COLUMNS = ["statements", "lower", "upper", "p_value", "verdict"]
"""What a paired test adds beside a difference."""


def cell_correctness(predictions: pd.DataFrame, layer: int, probe: str, split: str) -> pd.DataFrame:
    """heldout, row, correct: per statement the ``probe`` at ``layer`` was tested on in the ``split``
    grid, the share of its seeds that classify it right."""
    chosen = predictions[(predictions["layer"] == layer) & (predictions["probe"] == probe)
                         & (predictions["split"] == split)]
    if chosen.empty:
        raise ValueError(f"no predictions of the {probe} probe at layer {layer} in the {split} grid: choose a "
                         f"cell of {sorted(set(zip(predictions['layer'], predictions['probe'])))}")
    shares = chosen.assign(correct=correct(chosen)).groupby(["heldout", "row"], sort=False)["correct"].mean()
    shares = shares.reset_index()
    if not shares["row"].is_unique:
        raise ValueError(f"the {probe} probe at layer {layer} was tested on some statements in two {split} splits: "
                         "a paired test needs each statement once per cell")
    return shares


def paired_difference(a: pd.DataFrame, b: pd.DataFrame, level: float = 0.95, draws: int = 2000,
                      seed: int = 0) -> dict[str, float | int | str]:
    """B minus A on the same statements (:func:`cell_correctness` frames): accuracy_a, accuracy_b,
    difference, statements, lower, upper (paired bootstrap, stratified by A's splits), p_value
    (McNemar's; NaN unless both are 0/1, one seed each) and verdict."""
    paired = a.merge(b, on="row", suffixes=("_a", "_b"))
    if len(paired) != len(a) or len(paired) != len(b):
        raise ValueError(f"the two cells were tested on different statements ({len(a)} and {len(b)}, {len(paired)} "
                         "shared): a paired test needs the same statements, the same split kind and data set")
    first, second = paired["correct_a"].to_numpy(), paired["correct_b"].to_numpy()
    strata = paired["heldout_a"].to_numpy()
    interval = paired_bootstrap_difference(second, first, draws, seed, level, strata=strata)
    binary = np.isin(first, (0.0, 1.0)).all() and np.isin(second, (0.0, 1.0)).all()
    p_value = mcnemar_test(first, second)["p_value"] if binary else np.nan
    accuracy = {name: float(pd.Series(values).groupby(strata, sort=False).mean().mean())
                for name, values in (("accuracy_a", first), ("accuracy_b", second))}
    beyond = interval["lower"] > 0 or interval["upper"] < 0
    return {**accuracy, "difference": interval["difference"], "statements": len(paired), "lower": interval["lower"],
            "upper": interval["upper"], "p_value": float(p_value), "verdict": BEYOND if beyond else WITHIN}


def predictions_of(study: StudyResult) -> pd.DataFrame:
    """The study's per-statement predictions, or a ValueError saying to re-run reproduce (older folders)."""
    if study.predictions.empty:
        raise ValueError(f"{study.folder}: {NO_PREDICTIONS}")
    return study.predictions


def cell_difference(study: StudyResult, cell_a: tuple[int, str], cell_b: tuple[int, str], level: float = 0.95,
                    split: str | None = None) -> dict[str, float | int | str]:
    """Two (layer, probe kind) cells of one study, B minus A, on the statements of its ``split`` grid
    (default: the study's own split kind): :func:`paired_difference`'s numbers."""
    predictions = predictions_of(study)
    split = split or study.config.split
    return paired_difference(cell_correctness(predictions, *cell_a, split),
                             cell_correctness(predictions, *cell_b, split), level)


def study_differences(a: StudyResult, b: StudyResult, pairs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """For each row of ``pairs`` (probe, layer_a, layer_b), the paired test of A's cell against B's:
    ``pairs`` with :data:`TEST_COLUMNS`. A ValueError says why there can be none (no predictions,
    other statements, another split kind)."""
    sha_a, sha_b = (study.meta.get("dataset", {}).get("sha256") for study in (a, b))
    if sha_a != sha_b:
        raise ValueError("the studies read different statements (a paired test needs the same ones)")
    if a.config.split != b.config.split:
        raise ValueError(f"the studies' grids hold out statements differently ({a.config.split} and "
                         f"{b.config.split} splits; a paired test needs the same held-out statements)")
    predictions_a, predictions_b = predictions_of(a), predictions_of(b)
    tests = [paired_difference(cell_correctness(predictions_a, pair.layer_a, pair.probe, a.config.split),
                               cell_correctness(predictions_b, pair.layer_b, pair.probe, b.config.split), level)
             for pair in pairs.itertuples()]
    return pairs.assign(**{column: [test[column] for test in tests] for column in TEST_COLUMNS})
