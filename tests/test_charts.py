"""probing/dashboard/charts.py on real engine output: the data behind each chart is the engine's numbers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path
from types import SimpleNamespace

import altair as alt
import numpy as np
import pandas as pd
import pytest

from probing import (
    Activations, ModelSpec, StudyConfig, compare_directions, load_model, make_probe, model_says_true, run_grid,
    score_statements,
)
from probing.dashboard import analysis_charts, charts
from probing.data.builtin import load_builtin
from probing.analyses.directions import pca_points
from probing.analyses.grid import accuracy_long, accuracy_table, evaluate_probe, make_split
from probing.study.assemble import finish_study
from probing.formatting import markdown_table

# Shared with tests/test_app.py and tests/test_browser.py: the embedded model is converted once.
ROOT = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("PROBING_TEST_CACHE", ROOT / "cache" / "tests"))  # as in conftest.py
PER_TOPIC = 30


@pytest.fixture(scope="module")
def engine():
    model = load_model(ModelSpec("embedded"))
    dataset = load_builtin(per_topic=PER_TOPIC)
    activations = Activations(position="last", cache_dir=TEST_CACHE, model=model)
    activations.ensure(dataset.statements)
    return model, dataset, activations


@pytest.fixture(scope="module")
def grid(engine):
    _, dataset, activations = engine
    load = lambda layer: activations.layer(dataset.statements, layer)  # noqa: E731
    config = dict(layers=(-5, -1), probes=("linear", "tiny"), epochs=3)
    category = run_grid(dataset, load, StudyConfig(split="category", **config), final=True)
    random = run_grid(dataset, load, StudyConfig(split="random", **config))
    study_config = StudyConfig(with_random=True, **config)
    study = finish_study(dataset, activations, study_config, {"category": category, "random": random},
                         final_probes=category.final_probes)
    return SimpleNamespace(category=category, random=random, study=study)


def rows(chart) -> pd.DataFrame:
    out = charts.chart_rows(chart)
    assert len(out), "chart has no data"
    return out


def test_label_balance_matches_summary(engine):
    _, dataset, _ = engine
    chart = charts.label_balance_chart(dataset.summary())
    data = rows(chart)
    assert data["statements"].sum() == len(dataset)
    for topic, group in data.groupby("topic"):
        counts = dict(zip(group["label"], group["statements"]))
        frame = dataset.frame[dataset.frame.topic == topic]
        assert counts == {"true": int(frame.label.sum()), "false": int((1 - frame.label).sum())}


def test_training_dynamics_is_the_probe_history(engine):
    _, dataset, activations = engine
    X = activations.layer(dataset.statements, -5)
    split = make_split(dataset, "cities")
    y = dataset.labels
    probe = make_probe("linear", epochs=4, solver="adam").fit(X[split.train], y[split.train], X[split.test], y[split.test])
    chart = charts.training_dynamics_chart(probe.history_, epochs=4)
    assert isinstance(chart, alt.HConcatChart)
    data = rows(chart)
    assert len(data) == 4 * 4  # epochs x (train, held-out) x (loss, accuracy)
    heldout_acc = data[(data.metric == "accuracy") & (data.data == "held-out")].sort_values("epoch")["value"]
    np.testing.assert_allclose(heldout_acc, probe.history_["heldout_accuracy"])
    assert heldout_acc.iloc[-1] == pytest.approx(probe.score(X[split.test], y[split.test]))
    spec = chart.to_dict()
    assert spec["hconcat"][0]["title"].startswith("Loss")


def test_per_topic_and_confusion(engine):
    _, dataset, activations = engine
    X = activations.layer(dataset.statements, -5)
    split = make_split(dataset, "elements")
    y = dataset.labels
    probe = make_probe("linear", epochs=3).fit(X[split.train], y[split.train])
    per_topic, confusion = evaluate_probe(probe, X, dataset, split)
    data = rows(charts.topic_accuracy_chart(per_topic))
    bars = data.dropna(subset=["topic"])
    held = bars[bars.role == "held out"]
    assert held["topic"].tolist() == ["elements"]
    assert held["accuracy"].iloc[0] == pytest.approx(probe.score(X[split.test], y[split.test]))
    assert set(bars.topic) == set(dataset.topics)
    cm = rows(charts.confusion_chart(confusion))
    assert cm["count"].sum() == len(split.test)
    correct = cm[cm.actual == cm.predicted]["count"].sum()
    assert correct / len(split.test) == pytest.approx(probe.score(X[split.test], y[split.test]))
    controls = rows(charts.controls_chart(0.7, 0.5, 0.45)).dropna(subset=["what"])
    assert controls.set_index("what")["accuracy"].to_dict() == {
        "probe": 0.7, "text only (control)": 0.5, "shuffled labels (control)": 0.45}


def test_accuracy_heatmap_is_the_study_table(grid):
    for statistic in ("mean", "max"):
        long = accuracy_long(grid.category.results, statistic)
        chart = charts.accuracy_heatmap(long, "t", [-5, -1], ["linear", "tiny"], selection="cell")
        data = rows(chart)
        table = grid.category.accuracy_table(statistic).set_index("probe")
        for row in data.itertuples():
            assert row.accuracy == pytest.approx(table.loc[row.probe, str(row.layer)])
            assert row.label == f"{row.accuracy:.3f}"
        assert row.splits == len(grid.category.results.heldout.unique())
    spec = chart.to_dict()
    params = spec.get("params", []) + spec["layer"][0].get("params", [])
    assert [p["name"] for p in params] == ["cell"]
    cells = spec["layer"][0]
    assert cells["encoding"]["x"]["sort"] == [-5, -1]  # deepest layer first, as in the study
    assert cells["encoding"]["y"]["sort"] == ["linear", "tiny"]
    # study layout: probe rows, layer columns ascending
    wide = accuracy_table(grid.category.results)
    assert list(wide.columns) == ["probe", "-5", "-1"] and list(wide.probe) == ["linear", "tiny"]
    md = grid.study.to_markdown()
    assert "| probe | -5 | -1 |" in md and f"{wide.iloc[0, 1]:.3f}" in md
    assert "Random split" in md


def test_markdown_table_format():
    table = pd.DataFrame({"probe": ["linear"], "-5": [0.7777], "-1": [np.nan]})
    assert markdown_table(table) == "| probe | -5 | -1 |\n|---|---|---|\n| linear | 0.778 | - |\n"


def test_grid_cell_charts(grid, engine):
    _, dataset, _ = engine
    per_topic = grid.study.cell_per_topic(-5, "linear")
    data = rows(charts.cell_topics_chart(per_topic, "cell")).dropna(subset=["topic"])
    res = grid.category.results
    expected = res[(res.layer == -5) & (res.probe == "linear")].set_index("heldout")["accuracy"]
    for row in data.drop_duplicates("topic").itertuples():
        assert row.accuracy == pytest.approx(expected[row.topic])
    curves = rows(charts.grid_curves_chart(grid.study.cell_dynamics(-5, "tiny"), epochs=3))
    assert set(curves.heldout) == set(dataset.topics)
    assert len(curves) == len(dataset.topics) * 3 * 2  # topics x epochs x (loss, accuracy)
    dyn = grid.study.cell_dynamics(-5, "tiny").set_index(["heldout", "epoch"])["heldout_accuracy"]
    acc = curves[curves.metric == "accuracy"].set_index(["heldout", "epoch"])["value"]
    assert acc.to_dict() == pytest.approx(dyn.to_dict())


def test_direction_charts(grid, engine):
    _, dataset, _ = engine
    cosine, sign, matrices = compare_directions(grid.category, kind="linear")
    n = len(dataset.topics)
    data = rows(charts.direction_matrix_chart(matrices, -5, "cosine"))
    assert len(data) == n * n
    diagonal = data[data.split_a == data.split_b]["cosine"]
    np.testing.assert_allclose(diagonal, 1.0, atol=1e-5)
    assert data["text"].iloc[0] == f"{data['cosine'].iloc[0]:.2f}"
    signs = rows(charts.direction_matrix_chart(matrices, -1, "sign_equality"))
    assert signs["sign_equality"].between(0, 1).all() and len(signs) == n * n
    lines = rows(charts.direction_layers_chart(cosine, sign))
    learned = lines[(lines.series == "learned directions") & (lines.statistic == "cosine similarity")]
    assert dict(zip(learned.layer, learned.value)) == pytest.approx(dict(zip(cosine.layer, cosine["mean"])))
    baseline = lines[(lines.series == "random directions") & (lines.statistic == "sign equality")]
    assert dict(zip(baseline.layer, baseline.value)) == pytest.approx(dict(zip(sign.layer, sign.random_baseline)))
    assert (baseline.high >= baseline.low).all()


def test_statement_charts(grid, engine):
    model, _, activations = engine
    probes = {(layer, kind): p for (layer, kind, split, seed), p in grid.random.probes.items()}
    scores = score_statements(activations, probes, ["The city of Paris is located in France."])
    data = rows(charts.statement_layers_chart(scores)).dropna(subset=["probe"])
    assert len(data) == 4
    assert data.set_index(["layer", "probe"])["p_true"].to_dict() == pytest.approx(
        scores.set_index(["layer", "probe"])["p_true"].to_dict())
    answer = model_says_true(model, "The city of Paris is located in France.")
    bars = rows(charts.model_answer_chart(answer)).set_index("answer")["probability"]
    assert bars["True"] == pytest.approx(answer["p_true"]) and bars.sum() == pytest.approx(1.0)


def test_pca_chart(engine):
    _, dataset, activations = engine
    X = activations.layer(dataset.statements, -9)
    points, explained = pca_points(X, dataset.frame)
    data = rows(analysis_charts.pca_chart(points, explained, -9))
    assert len(data) == len(dataset)
    assert set(data.label) == {"true", "false"} and set(data.topic) == set(dataset.topics)
    assert explained[0] >= explained[1] > 0
    # PC1 is the direction of largest variance of the standardised activations
    assert np.var(data.pc1) >= np.var(data.pc2)
    spec = analysis_charts.pca_chart(points, explained, -9).to_dict()
    assert spec["encoding"]["color"]["field"] == "label" and spec["encoding"]["shape"]["field"] == "topic"
