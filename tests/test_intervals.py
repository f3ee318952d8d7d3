"""Issue 23: the grid keeps its held-out predictions, every accuracy carries a 95 % interval, the best layer is
tested against the runner-up, and calibration (reliability, ECE raw and temperature-scaled) is reported; all of
it saves to and loads from a results folder, and folders written before still load."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probing.analyses.grid import Cell, make_split, significant, train_cells
from probing.analyses.intervals import CELL, statement_shares
from probing.analyses.uncertainty import (
    apply_temperature, auroc_delong_interval, auroc_interval, expected_calibration_error, paired_bootstrap_difference,
)
from probing.dashboard.charts import accuracy_heatmap, chart_rows, layer_accuracy_chart, reliability_chart
from probing.store.activations import Activations
from probing.study.config import StudyConfig
from probing.study.results import StudyResult, read_table
from probing.study.study import Study
from support import BINORMAL_AUROC, Recorder, assert_same_study, binormal_draws

LEGACY = Path(__file__).resolve().parent / "data" / "results-1b0dd61"


@pytest.fixture(scope="module")
def activations(model, shared_cache):
    return Activations(model=model, cache_dir=shared_cache)


@pytest.fixture(scope="module")
def study(small_saplma, activations):
    config = StudyConfig(layers=(-1, -5, -9), probes=("linear", "tiny", "mass_mean"), seeds=2, epochs=2,
                         with_random=True, dataset="small", cache=str(activations.cache_dir))
    return Study(config, dataset=small_saplma, activations=activations, reporter=Recorder(),
                 command="tests/test_intervals.py").run()


def test_the_predictions_reproduce_every_cell_exactly(study, small_saplma):
    predictions, results = study.predictions, study.results
    assert list(predictions.columns) == ["layer", "probe", "split", "heldout", "seed", "row", "label", "score"]
    assert len(predictions) == results["n_test"].sum()
    correct = ((predictions["score"] > 0).astype(int) == predictions["label"])
    by_cell = predictions.assign(correct=correct).groupby(CELL)["correct"].agg(["mean", "size"])
    rows = results.set_index(CELL)
    assert (by_cell["mean"] == rows.loc[by_cell.index, "accuracy"]).all()  # exactly: the same rule on the same scores
    assert (by_cell["size"] == rows.loc[by_cell.index, "n_test"]).all()
    # row: the statement's place in the dataset; its label is the dataset's, its topic the held-out one
    assert (predictions["label"].to_numpy() == small_saplma.labels[predictions["row"]]).all()
    category = predictions[predictions["split"] == "category"]
    assert (small_saplma.frame["topic"].to_numpy()[category["row"]] == category["heldout"]).all()
    cell = predictions.query("layer == -5 and probe == 'tiny' and heldout == 'animals' and seed == 1")
    assert cell["row"].tolist() == make_split(small_saplma, "animals").test.tolist()


def test_scores_keep_six_significant_digits_and_their_sign():
    values = np.array([0.12345678, -98765.4321, 3.2e-12, -7.77777777e9, 0.0, 1.0], dtype=np.float32)
    rounded = significant(values)
    assert [repr(float(v)) for v in rounded] == ["0.123457", "-98765.4", "3.2e-12", "-7777780000.0", "0.0", "1.0"]
    assert (np.sign(rounded) == np.sign(values)).all()
    assert np.allclose(rounded, values, rtol=5e-6, atol=0)


def test_every_interval_holds_its_estimate_inside_zero_to_one(study):
    rows = study.results
    for value in ("accuracy", "auroc"):
        lower, upper = rows[f"{value}_lower"], rows[f"{value}_upper"]
        assert ((lower <= rows[value]) & (rows[value] <= upper)).all(), value
        assert lower.between(0, 1).all() and upper.between(0, 1).all() and (lower < upper).any(), value
    assert (rows["temperature"] > 0).all()
    intervals = study.accuracy_intervals()
    assert len(intervals) == 3 * 3 * 2 and set(intervals["split"]) == {"category", "random"}
    assert (intervals["accuracy_lower"] <= intervals["accuracy"] + 1e-12).all()
    assert (intervals["accuracy"] <= intervals["accuracy_upper"] + 1e-12).all()
    assert intervals[["accuracy_lower", "accuracy_upper"]].stack().between(0, 1).all()
    # the point estimate is the table's own mean
    table = study.accuracy_table("mean").set_index("probe")
    category = intervals[intervals["split"] == "category"]
    for row in category.itertuples():
        assert row.accuracy == pytest.approx(table.loc[row.probe, str(row.layer)], abs=1e-12)
    # six splits of 40 statements pooled: far narrower than one topic's Wilson interval
    assert (category["accuracy_upper"] - category["accuracy_lower"]).max() < \
        (rows["accuracy_upper"] - rows["accuracy_lower"]).min()


def test_delong_agrees_with_the_bootstrap_on_a_real_cell(study):
    cell = study.predictions.query("layer == -1 and probe == 'linear' and split == 'random' and seed == 0")
    delong = auroc_delong_interval(cell["label"], cell["score"])
    bootstrap = auroc_interval(cell["label"], cell["score"], draws=2000)
    assert delong == pytest.approx(bootstrap, abs=0.03)


def test_delong_covers_the_true_auroc_of_a_known_distribution():
    # 1,000 simulations of 100 + 100 statements (Monte-Carlo error about 0.007).
    intervals = (auroc_delong_interval(labels, scores) for labels, scores in binormal_draws(4, 1000))
    hits = sum(lower <= BINORMAL_AUROC <= upper for lower, upper in intervals)
    assert 0.92 <= hits / 1000 <= 0.975
    assert all(math.isnan(x) for x in auroc_delong_interval([1, 0, 0], [0.3, 0.1, 0.2]))  # one true statement
    assert auroc_delong_interval([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == (1.0, 1.0)


def test_the_best_layer_is_marked_only_where_a_paired_test_tells_it_apart(study):
    best = study.best_layers()
    assert best["probe"].tolist() == ["linear", "tiny", "mass_mean"]
    means = study.accuracy_table("mean").set_index("probe")
    for row in best.itertuples():
        ranked = means.loc[row.probe].sort_values(ascending=False)
        assert str(row.best_layer) == ranked.index[0] and row.accuracy == ranked.iloc[0]
        assert row.difference == pytest.approx(ranked.iloc[0] - ranked.iloc[1], abs=1e-12)
        assert row.lower <= row.difference <= row.upper and row.distinguishable == (row.lower > 0)
    lines = "\n".join(study.accuracy_markdown().splitlines())
    assert re.search(r"\| linear \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", lines)
    assert all(f"- {probe}: layer " in lines for probe in best["probe"])


def test_a_folder_tested_against_itself_shows_no_difference(study, tmp_path):
    loaded = StudyResult.load(study.save(tmp_path / "study"))
    mine, theirs = statement_shares(study.predictions), statement_shares(loaded.predictions)
    pd.testing.assert_frame_equal(mine, theirs)
    for _, cell in mine.groupby(["split", "probe", "layer"]):
        test = paired_bootstrap_difference(cell["correct"], cell["correct"], draws=200, strata=cell["heldout"])
        assert test == {"difference": 0.0, "lower": 0.0, "upper": 0.0}


def test_predictions_and_calibration_round_trip_through_the_folder(study, tmp_path):
    folder = study.save(tmp_path / "study")
    for name in ("predictions.csv.gz", "calibration.csv", "accuracy_intervals.csv", "best_layers.csv"):
        assert (folder / name).is_file(), name
    loaded = StudyResult.load(folder)
    assert_same_study(loaded, study)  # predictions included, to the last digit
    for table, file in ((loaded.calibration(), "calibration.csv"),
                        (loaded.accuracy_intervals(), "accuracy_intervals.csv")):
        pd.testing.assert_frame_equal(table, read_table(folder / file), check_dtype=False)
    pd.testing.assert_frame_equal(loaded.calibration(), study.calibration())
    pd.testing.assert_frame_equal(loaded.accuracy_table("mean"), read_table(folder / "accuracy_mean.csv"))
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", (folder / "accuracy_mean.md").read_text())
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", (folder / "accuracy_random.md").read_text())


def test_calibration_pools_the_held_out_predictions_and_scaling_is_fitted_on_training(study, small_saplma,
                                                                                     activations):
    calibration = study.calibration()
    assert set(calibration["scaling"]) == {"raw", "scaled"} and len(calibration) == 2 * 3 * 3 * 2 * 10
    cell = calibration.query("split == 'category' and layer == -5 and probe == 'tiny'")
    pooled = study.predictions.query("split == 'category' and layer == -5 and probe == 'tiny'")
    raw = cell[cell["scaling"] == "raw"]
    assert raw["n"].sum() == len(pooled)
    assert raw["ece"].iloc[0] == pytest.approx(expected_calibration_error(apply_temperature(pooled["score"], 1.0),
                                                                          pooled["label"]), abs=1e-12)
    temperatures = pooled.merge(study.results, on=CELL)["temperature"].to_numpy()
    scaled = apply_temperature(pooled["score"].to_numpy() / temperatures, 1.0)
    assert cell[cell["scaling"] == "scaled"]["ece"].iloc[0] == pytest.approx(
        expected_calibration_error(scaled, pooled["label"]), abs=1e-12)
    assert calibration["ece"].between(0, 1).all()
    # The temperature minimises the log loss on the training statements (what scaling promises there; ECE is
    # binned, so a lower ECE is not guaranteed), and changes no prediction.
    split = make_split(small_saplma, "animals")
    features = activations.layer(small_saplma.statements, -5)
    config = StudyConfig(epochs=2, controls=False)
    for kind in ("linear", "tiny", "mass_mean"):
        (trained,) = train_cells(features, small_saplma, -5, kind, [Cell(split)], config)
        scores = trained.probe.decision_function(features[split.train]).astype(float)
        labels = small_saplma.labels[split.train]

        def loss(temperature: float) -> float:
            z = scores / temperature
            return float(np.mean(np.logaddexp(0.0, z) - labels * z))

        assert loss(trained.row["temperature"]) <= loss(1.0) + 1e-9, kind
        assert ((apply_temperature(scores, trained.row["temperature"]) > 0.5) == (scores > 0)).all()


def test_an_older_folder_loads_without_predictions(tmp_path):
    study = StudyResult.load(LEGACY)
    assert study.predictions.empty and study.calibration().empty
    intervals = study.accuracy_intervals()
    assert len(intervals) == 2 * 2 and intervals["accuracy_lower"].isna().all()
    best = study.best_layers()
    assert len(best) == 2 and not best["distinguishable"].any() and best["lower"].isna().all()
    assert "[" not in study.accuracy_markdown()  # the plain table, as before
    folder = study.save(tmp_path / "again")
    assert not (folder / "predictions.csv.gz").exists() and not (folder / "calibration.csv").exists()
    assert StudyResult.load(folder).predictions.empty


def test_charts_show_the_intervals_the_best_layer_and_the_reliability(study):
    intervals = study.accuracy_intervals().query("split == 'category'")
    best = study.best_layers()
    heatmap = chart_rows(accuracy_heatmap(intervals, "mean", best=best))
    assert heatmap["interval"].str.fullmatch(r"\[\d\.\d{3}, \d\.\d{3}\]").all()
    assert heatmap["label"].str.endswith("★").sum() == best["distinguishable"].sum()
    told_apart = best.assign(distinguishable=True)  # as if every best layer were told apart: each is starred
    starred = chart_rows(accuracy_heatmap(intervals, "mean", best=told_apart))
    assert sorted(starred.loc[starred["label"].str.endswith("★"), "probe"]) == sorted(best["probe"])
    curves = chart_rows(layer_accuracy_chart(intervals, best, "by layer"))
    assert {"accuracy_lower", "accuracy_upper"} <= set(curves.columns)
    assert (curves["probe"].value_counts() >= 3).all()
    diamonds = curves[curves["runner_up"].notna()] if "runner_up" in curves else curves.iloc[:0]
    assert len(diamonds) == int(best["distinguishable"].sum())
    marked = chart_rows(layer_accuracy_chart(intervals, told_apart, "by layer")).dropna(subset=["runner_up"])
    assert sorted(zip(marked["probe"], marked["layer"])) == sorted(zip(best["probe"], best["best_layer"]))
    bins = study.calibration().query("split == 'category' and layer == -1 and probe == 'linear'")
    reliability = chart_rows(reliability_chart(bins, "reliability")).dropna(subset=["scaling"])  # not the diagonal
    assert set(reliability["scaling"]) == {"raw", "scaled"} and (reliability["n"] > 0).all()
    assert reliability["series"].str.contains(r"ECE \d\.\d{3}").all()
