"""Differences beyond noise (paired tests on the same held-out statements) and the 95 % intervals that the
dose-response and generalization charts draw, on real activations of the embedded model."""

import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from probing.analyses.compare import compare_studies, comparison_markdown
from probing.analyses.differences import (
    BEYOND, NO_PREDICTIONS, WITHIN, cell_correctness, cell_difference, paired_difference,
)
from probing.analyses.generalization import run_generalization
from probing.analyses.steering import dose_response, steering_setup, true_false_margins
from probing.analyses.uncertainty import wilson_interval
from probing.cli.main import main
from probing.dashboard import analysis_charts
from probing.dashboard.charts import chart_rows
from probing.data.builtin import load_builtin
from probing.data.statements import StatementSet
from probing.store.activations import Activations
from probing.study.config import StudyConfig
from probing.study.results import StudyResult
from probing.study.study import Study


@pytest.fixture(scope="module")
def activations(model, shared_cache):
    return Activations(model=model, cache_dir=shared_cache)


@pytest.fixture(scope="module")
def leak(saplma, activations, tmp_path_factory) -> StudyResult:
    """A study of SAPLMA's 400 "operates in the industry of" statements, whose capitalisation gives the label
    away: a late layer reads it (accuracy near 1), the embeddings of the last token cannot (0.5 exactly)."""
    frame = saplma.frame
    industry = StatementSet(frame[frame["statement"].str.contains("operates in the industry of")].copy(), "leak")
    config = StudyConfig(split="random", layers=(-31, -9), probes=("linear", "mass_mean"), controls=False)
    return Study(config, dataset=industry, activations=activations).reproduce(
        tmp_path_factory.mktemp("differences") / "leak")


def test_a_folder_compared_with_itself_differs_within_noise(leak, tmp_path, capsys):
    again = StudyResult.load(leak.folder)
    comparison = compare_studies(leak, again)
    assert comparison.notes == []
    for table in (comparison.by_depth, comparison.by_index):
        assert len(table) == 2 * 2 and (table["statements"] == 80).all()
        assert (table[["difference", "lower", "upper"]] == 0).all().all()
        assert (table["p_value"] == 1).all() and (table["verdict"] == WITHIN).all()
    assert "| within noise |" in comparison_markdown(comparison)
    assert comparison.split == "random" and "## Mean accuracy over the random splits" in comparison_markdown(comparison)
    assert main(["compare", str(leak.folder), str(leak.folder), "--out", str(tmp_path / "same")]) == 0
    printed = capsys.readouterr().out
    assert "| within noise |" in printed and f"| {BEYOND} |" not in printed
    saved = pd.read_csv(tmp_path / "same" / "compare_depth.csv")
    assert (saved["verdict"] == WITHIN).all() and (saved["p_value"] == 1).all()


def test_a_late_layer_is_beyond_noise_of_the_embeddings_and_a_cell_of_itself_is_not(leak):
    accuracy = leak.split_results().groupby(["layer", "probe"])["accuracy"].mean()
    assert accuracy[(-31, "linear")] == 0.5 and accuracy[(-9, "linear")] > 0.9
    test = cell_difference(leak, (-31, "linear"), (-9, "linear"))
    assert test["verdict"] == BEYOND and 0 < test["lower"] < test["difference"] <= test["upper"]
    assert test["difference"] == pytest.approx(accuracy[(-9, "linear")] - 0.5, abs=1e-12)  # the grid's own numbers
    assert test["p_value"] < 1e-6 and test["statements"] == 80
    reverse = cell_difference(leak, (-9, "linear"), (-31, "linear"))
    assert reverse["verdict"] == BEYOND and reverse["upper"] < 0
    same = cell_difference(leak, (-9, "mass_mean"), (-9, "mass_mean"))
    assert (same["difference"], same["lower"], same["upper"], same["p_value"], same["verdict"]) == (0, 0, 0, 1, WITHIN)
    with pytest.raises(ValueError, match=r"no predictions of the tiny probe at layer -9 in the random grid"):
        cell_difference(leak, (-9, "linear"), (-9, "tiny"))


def test_several_seeds_are_averaged_per_statement_and_leave_mcnemar_out(leak):
    """A second seed that answers every statement the other way makes each statement half right."""
    predictions = leak.predictions
    flipped = predictions.assign(seed=1, score=-predictions["score"])
    both = pd.concat([predictions, flipped], ignore_index=True)
    late = cell_correctness(both, -9, "linear", "random")
    assert len(late) == 80 and (late["correct"] == 0.5).all()
    test = paired_difference(cell_correctness(both, -31, "linear", "random"), late)
    assert test["difference"] == 0 and np.isnan(test["p_value"]) and test["verdict"] == WITHIN


def test_a_folder_without_predictions_says_to_rerun_reproduce(leak, tmp_path, capsys):
    old = replace(leak, predictions=pd.DataFrame())
    with pytest.raises(ValueError, match=NO_PREDICTIONS):
        cell_difference(old, (-31, "linear"), (-9, "linear"))
    comparison = compare_studies(leak, old)
    assert comparison.notes == [f"{leak.folder}: {NO_PREDICTIONS}"]
    assert "verdict" not in comparison.by_depth and (comparison.by_depth["difference"] == 0).all()
    assert f"**No paired tests:** {leak.folder}: {NO_PREDICTIONS}" in comparison_markdown(comparison)
    copy = tmp_path / "old"
    shutil.copytree(leak.folder, copy)
    (copy / "predictions.csv.gz").unlink()  # as a folder of an earlier version has none
    assert StudyResult.load(copy).predictions.empty
    assert main(["compare", str(copy), str(leak.folder), "--out", str(tmp_path / "cmp")]) == 0
    assert f"note: no paired tests: {copy}: {NO_PREDICTIONS}" in capsys.readouterr().err


def test_dose_response_intervals_hold_the_means_and_the_chart_draws_them(model, activations):
    dataset = load_builtin(per_topic=48)
    activations.ensure(dataset.statements)
    setup = steering_setup(dataset, activations, -9, kinds=["mass_mean"], statements=12)
    alphas, layers = (-2.0, 2.0), (-10, -9)
    table = dose_response(model, setup.statements, setup.labels, setup.directions, layers, alphas)
    margins = true_false_margins(model, setup.statements, layers=layers, vector=setup.directions["mass_mean"].vector,
                                 alphas=alphas)
    for row, column in zip(table.itertuples(), margins.T):
        for side, label in (("true", 1), ("false", 0)):
            values = column[setup.labels == label]
            half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
            mean, lower, upper = (getattr(row, f"margin_{side}{end}") for end in ("", "_lower", "_upper"))
            assert lower < mean < upper
            assert (lower, upper) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-6)
    chart = analysis_charts.dose_response_chart(table)
    assert "errorbar" in str(chart.to_dict())
    rows = chart_rows(chart).set_index(["statements", "alpha"])
    assert rows.loc[("true statements", 2.0), "lower"] == table.set_index("alpha").loc[2.0, "margin_true_lower"]
    assert (rows["lower"] <= rows["margin"]).all() and (rows["margin"] <= rows["upper"]).all()
    old = table.drop(columns=[c for c in table if c.endswith(("_lower", "_upper"))])  # a steering.csv of before
    old_chart = analysis_charts.dose_response_chart(old)
    assert "errorbar" not in str(old_chart.to_dict()) and len(chart_rows(old_chart)) == len(rows)


def test_generalization_charts_carry_wilson_intervals(activations):
    dataset = load_builtin(per_topic=48)
    activations.ensure(dataset.statements)
    results = run_generalization(dataset, lambda layer: activations.layer(dataset.statements, layer),
                                 StudyConfig(layers=(-9,), matrix_probes=("linear",), ccs_seeds=0)).results
    polarity = analysis_charts.polarity_chart(results)
    assert "errorbar" in str(polarity.to_dict())
    rows = chart_rows(polarity).dropna(subset=["transfer"])
    assert len(rows) == len(results[results.analysis == "polarity"])
    for row in rows.itertuples():
        assert (row.lower, row.upper) == wilson_interval(round(row.value * row.n_test), row.n_test)
        assert row.lower <= row.value <= row.upper
    assert "errorbar" not in str(analysis_charts.polarity_chart(results, "auroc").to_dict())
    cells = chart_rows(analysis_charts.generalization_heatmap(results, -9, "linear")).dropna(subset=["train"])
    assert (cells["lower"] <= cells["value"]).all() and (cells["value"] <= cells["upper"]).all()
    assert "lower" not in chart_rows(analysis_charts.generalization_heatmap(results, -9, "linear", "auroc"))


def test_the_compare_page_shows_the_verdicts_and_tests_two_cells_of_a_study(leak, tmp_path, monkeypatch):
    from support import chart, new_app, no_errors

    root = tmp_path / "results"
    for name in ("a", "b"):
        shutil.copytree(leak.folder, root / name)
    monkeypatch.setenv("PROBING_RESULTS", str(root))
    monkeypatch.setenv("PROBING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROBING_EXAMPLE", "0")
    at = new_app().run()
    at.switch_page("pages/compare.py").run()
    no_errors(at)
    at.selectbox(key="compare_a").set_value(str(root / "a"))
    at.selectbox(key="compare_b").set_value(str(root / "b")).run()
    no_errors(at)
    shown = chart(at, "compare_difference")[1].dropna(subset=["probe"])
    assert len(shown) == 4 and set(shown["verdict"]) == {WITHIN} and (shown["upper"] == 0).all()
    for key, value in (("cell_layer_a", -31), ("cell_kind_a", "linear"), ("cell_layer_b", -9),
                       ("cell_kind_b", "linear")):
        at.selectbox(key=key).set_value(value)
    at.run()
    no_errors(at)
    expected = cell_difference(leak, (-31, "linear"), (-9, "linear"))
    (metric,) = at.metric
    assert metric.label == f"B - A: {BEYOND}" and metric.value == f"{expected['difference']:+.3f}"
