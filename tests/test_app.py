"""Every dashboard page through Streamlit's AppTest, checked against the engine's own numbers.

The app runs on the embedded model and 48 built-in statements per topic (288 in all), in a
cache folder of its own (so extraction really runs) that links to the shared converted model.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from dataclasses import replace
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from probing import Activations, StudyConfig, load_model, make_probe, model_says_true, run_grid, score_statements
from probing.data.builtin import load_builtin
from probing.dashboard.charts import dynamics_long
from probing.analyses.grid import make_split
from probing.study.results import StudyResult
from probing.study.config import SteeringConfig
from probing.analyses.steering import fit_directions, true_false_margins
from probing.study.study import Study
from probing.dashboard.workflows import train_work
from support import assert_same_study, chart, new_app, no_errors, wait_job
from probing.analyses.directions import pca_points
from probing.dashboard.jobs import Job, start_job
from probing.analyses.grid import accuracy_long, split_seed, text_only_accuracy

ROOT = Path(__file__).resolve().parents[1]
TEST_CACHE = Path(os.environ.get("PROBING_TEST_CACHE", ROOT / "cache" / "tests"))  # as in conftest.py
PER_TOPIC = 48  # 12 facts per topic, each affirmative and negated, true and false


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    """A fresh activation cache (the converted model is shared by all of them)."""
    load_model("embedded")  # converts the GGUF once per machine
    cache = tmp_path_factory.mktemp("app-cache")
    saved = {k: os.environ.get(k) for k in ("PROBING_CACHE", "PROBING_PER_TOPIC", "PROBING_MODEL", "PROBING_RESULTS",
                                            "PROBING_EXAMPLE")}
    os.environ.update(PROBING_CACHE=str(cache), PROBING_PER_TOPIC=str(PER_TOPIC), PROBING_MODEL="embedded",
                      PROBING_RESULTS=str(cache / "results"), PROBING_EXAMPLE="0")  # pages start live
    yield cache
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def dataset():
    return load_builtin(per_topic=PER_TOPIC)


@pytest.fixture(scope="module")
def engine(app_cache, dataset):
    """The engine on the same cache, to recompute what the pages show."""
    model = load_model("embedded")
    return model, Activations(position="last", cache_dir=app_cache, model=model)


def page_with_activations(page: str, extract_key: str, dataset) -> AppTest:
    """A new session on ``page``, with the statements' activations extracted through its own button if missing."""
    at = new_app().run()
    at.switch_page(page).run()
    no_errors(at)
    if at.session_state["ctx"].activations.missing(dataset.statements):
        at.button(key=extract_key).click().run()
        wait_job(at, "extract")
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def progress_texts(at: AppTest) -> list[str]:
    return [el.proto.text for el in at.get("progress")]


# ----------------------------------------------------------------------------- pages


def test_overview_and_extraction(app_cache, dataset, engine):
    at = new_app().run()
    no_errors(at)
    assert at.title[0].value == "Does the model know what is true?"
    shown = metrics(at)
    assert shown["Model"] == "embedded" and shown["Blocks"] == "30" and shown["Width"] == "576"
    assert shown["Device"].startswith("cpu")
    _, balance = chart(at, "balance")
    assert balance["statements"].sum() == len(dataset) == 6 * PER_TOPIC
    assert balance.groupby("topic")["statements"].sum().to_dict() == {t: PER_TOPIC for t in dataset.topics}
    sample = at.dataframe[0].value
    assert len(sample) == 8 and set(sample["statement"]) <= set(dataset.statements)
    assert any(f"0 of {len(dataset)}" in t for t in progress_texts(at))

    at.button(key="extract_overview").click().run()
    no_errors(at)
    job = at.session_state["job"]
    if job.running:  # controls that would clash are locked while it runs
        assert at.button(key="extract_overview").disabled
        assert at.selectbox(key="position").disabled and at.radio(key="dataset_source").disabled
    job = wait_job(at, "extract")
    assert job.result == len(dataset)
    assert any(f"{len(dataset)} of {len(dataset)}" in t for t in progress_texts(at))
    assert at.button(key="extract_overview").disabled  # nothing left to extract
    assert engine[1].missing(dataset.statements) == []


def test_the_extract_button_merges_node_folders_and_computes_only_the_rest(tmp_path, dataset, monkeypatch):
    """A cache with a node folder of a multi-node extraction: the page says so, and its extraction job
    copies that node's statements (bit for bit) instead of computing them."""
    cache = tmp_path / "cache"  # a fresh process-wide model holder on a cache of its own
    cache.mkdir()
    monkeypatch.setenv("PROBING_CACHE", str(cache))
    texts = list(dict.fromkeys(dataset.statements))
    node = Activations(position="last", cache_dir=cache, store_dir=cache / "nodes" / "node-0")
    node.ensure(texts[:100])

    at = new_app().run()
    no_errors(at)
    assert any("1 node folder(s) of a multi-node extraction" in caption.value for caption in at.caption)
    at.button(key="extract_overview").click().run()
    job = wait_job(at, "extract")
    assert job.result == len(texts) - 100
    assert not any("node folder" in caption.value for caption in at.caption)
    merged = at.session_state["ctx"].activations
    np.testing.assert_array_equal(merged.layer(texts[:100], -1), node.layer(texts[:100], -1))


def test_train_page(app_cache, dataset, engine):
    at = new_app().run()
    at.switch_page("pages/train.py").run()
    no_errors(at)
    assert at.number_input(key="train_epochs").value == StudyConfig().epochs  # no folder open: the defaults
    at.selectbox(key="train_layer").set_value(-5)
    at.selectbox(key="train_kind").set_value("tiny")
    at.selectbox(key="train_heldout").set_value("cities")
    at.run()
    at.number_input(key="train_epochs").set_value(6)
    at.number_input(key="train_seed").set_value(1)
    at.button(key="train_button").click().run()
    no_errors(at)
    job = at.session_state["job"]
    if job.running:
        assert at.button(key="train_button").disabled and at.selectbox(key="train_layer").disabled
    job = wait_job(at, "train")
    assert [r["epoch"] for r in job.records] == [1, 2, 3, 4, 5, 6]

    # recompute with the engine: the page trains the grid's probe for this cell and seed
    _, activations = engine
    X = activations.layer(dataset.statements, -5)
    split = make_split(dataset, "cities")
    y = dataset.labels
    grid = run_grid(dataset, lambda layer: activations.layer(dataset.statements, layer),
                    StudyConfig(layers=(-5,), probes=("tiny",), seeds=2, epochs=6, controls=False))
    probe = grid.probes[(-5, "tiny", "cities", 1)]
    accuracy = probe.score(X[split.test], y[split.test])
    np.testing.assert_array_equal(job.result.probe.weights_[0], probe.weights_[0])
    shown = metrics(at)
    assert shown["Held-out accuracy"] == f"{accuracy:.3f}"
    assert shown["Text-only control"] == f"{text_only_accuracy(dataset, split):.3f}"
    assert shown["Trained on"] == f"{len(split.train):,}"

    spec, dynamics = chart(at, "final_dynamics")
    assert "hconcat" in spec and len(dynamics) == 6 * 4
    held = dynamics[(dynamics.metric == "accuracy") & (dynamics.data == "held-out")].sort_values("epoch")
    np.testing.assert_allclose(held["value"], probe.history_["heldout_accuracy"], atol=1e-6)
    _, topics = chart(at, "topic_accuracy")
    bars = topics.dropna(subset=["topic"])
    assert set(bars.topic) == set(dataset.topics)
    assert bars[bars.role == "held out"].set_index("topic")["accuracy"].to_dict() == pytest.approx({"cities": accuracy})
    _, confusion = chart(at, "confusion")
    assert confusion["count"].sum() == len(split.test) == PER_TOPIC
    _, controls = chart(at, "controls")
    assert controls.dropna(subset=["what"]).set_index("what")["accuracy"]["probe"] == pytest.approx(accuracy)

    # a click elsewhere keeps the finished result
    at.number_input(key="train_epochs").set_value(3).run()
    no_errors(at)
    assert metrics(at)["Held-out accuracy"] == f"{accuracy:.3f}"
    assert at.expander and "Probes kept" in at.expander[0].label


def test_live_chart_reads_a_snapshot_of_the_records(app_cache, dataset, engine):
    """The page draws job records while the thread appends: it must get a copy, not the growing list."""
    _, activations = engine
    epochs = 400
    work = train_work(activations, dataset, StudyConfig(epochs=epochs), -5, "tiny", "cities", 0, app_cache / "results")
    job = start_job(Job("train", "live"), work)
    snapshots = []
    while job.running:
        records = job.records_so_far()
        if 0 < len(records) < epochs:
            snapshots.append(records)
            long = dynamics_long(records)  # what the live chart draws
            assert sorted(set(long.epoch)) == list(range(1, len(records) + 1))
        time.sleep(0.005)
    job.wait()
    assert job.error is None, job.params.get("traceback")
    assert len(job.records) == epochs and snapshots, "no snapshot was taken while the job ran"
    for records in snapshots:
        assert len(records) < epochs and records == job.records[:len(records)]


def test_grid_page(app_cache, dataset, engine):
    at = new_app().run()
    at.switch_page("pages/grid.py").run()
    no_errors(at)
    at.multiselect(key="grid_layers").set_value([-1, -5])
    at.multiselect(key="grid_probes").set_value(["linear", "tiny"])
    at.number_input(key="grid_epochs").set_value(2)
    at.text_input(key="grid_name").input("my grid")
    at.run()
    at.button(key="grid_button").click().run()
    job = wait_job(at, "grid")
    study = job.result
    assert at.session_state["ctx"].study.folder == study.folder  # saved, and opened in the sidebar
    assert study.folder == app_cache / "results" / "my-grid"  # the name given, made a folder name
    spec, mean = chart(at, "grid_mean")
    expected = accuracy_long(study.split_results("category"), "mean").set_index(["probe", "layer"])["accuracy"]
    assert len(mean) == 4
    for row in mean.itertuples():
        assert row.accuracy == pytest.approx(expected[(row.probe, row.layer)])
        assert row.label == f"{row.accuracy:.3f}" and row.splits == 6
    assert spec["layer"][0]["encoding"]["x"]["sort"] == [-5, -1]
    # the engine, run directly, gives the same table for the deterministic linear probe
    _, activations = engine
    direct = run_grid(dataset, lambda layer: activations.layer(dataset.statements, layer),
                      StudyConfig(layers=(-5, -1), probes=("linear",), epochs=2, controls=False))
    table = direct.accuracy_table("mean").set_index("probe")
    for layer in (-5, -1):
        assert expected[("linear", layer)] == pytest.approx(table.loc["linear", str(layer)])
    _, best = chart(at, "grid_max")
    assert (best.set_index(["probe", "layer"])["accuracy"] >= mean.set_index(["probe", "layer"])["accuracy"] - 1e-9).all()
    _, random = chart(at, "grid_random_chart")
    assert len(random) == 4 and set(random["splits"]) == {1}
    downloads = at.get("download_button")
    assert len(downloads) == 2
    # the dashboard's grid is a results folder like reproduce's: it loads back exactly, and score reads it
    assert_same_study(StudyResult.load(study.folder), study)
    scored = subprocess.run([sys.executable, "-m", "probing", "score", "Paris is in France.", "--results",
                             str(study.folder), "--cache", study.config.cache], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert scored.returncode == 0, scored.stderr
    assert "P(true) for 'Paris is in France.'" in scored.stdout and "| -5 |" in scored.stdout

    at.selectbox(key="grid_cell_layer").set_value(-1)
    at.selectbox(key="grid_cell_probe").set_value("tiny")
    at.run()
    no_errors(at)
    _, per_topic = chart(at, "cell_topics")
    res = study.split_results("category")
    cell = res[(res.layer == -1) & (res.probe == "tiny")].set_index("heldout")["accuracy"]
    bars = per_topic.dropna(subset=["topic"]).drop_duplicates("topic").set_index("topic")["accuracy"]
    assert bars.to_dict() == pytest.approx(cell.to_dict())
    _, curves = chart(at, "cell_curves")
    assert len(curves) == 6 * 2 * 2  # topics x epochs x (loss, accuracy)


def test_directions_page(app_cache, dataset):
    at = new_app().run()
    at.switch_page("pages/directions.py").run()
    no_errors(at)
    at.multiselect(key="dir_layers").set_value([-1, -9])
    at.button(key="dir_button").click().run()
    job = wait_job(at, "directions")
    assert at.session_state["ctx"].study.folder == job.result.folder
    at.radio(key="dir_kind").set_value("linear").run()
    at.select_slider(key="dir_layer").set_value(-9).run()
    no_errors(at)
    cosine, sign, matrices = (table[table.probe == "linear"] for table in (
        job.result.directions_cosine, job.result.directions_sign, job.result.directions_matrices))
    _, cos = chart(at, "dir_cosine")
    assert len(cos) == 36
    np.testing.assert_allclose(cos[cos.split_a == cos.split_b]["cosine"], 1.0, atol=1e-5)
    want = matrices[matrices.layer == -9].set_index(["split_a", "split_b"])["cosine"]
    got = cos.set_index(["split_a", "split_b"])["cosine"]
    np.testing.assert_allclose(got.sort_index(), want.sort_index(), atol=1e-6)
    _, signs = chart(at, "dir_sign")
    assert signs["sign_equality"].between(0, 1).all()
    _, lines = chart(at, "dir_layers_chart")
    learned = lines[(lines.series == "learned directions") & (lines.statistic == "cosine similarity")]
    assert dict(zip(learned.layer, learned.value)) == pytest.approx(dict(zip(cosine.layer, cosine["mean"])))
    assert set(lines.series) >= {"learned directions", "random directions"}


def test_generalization_page(app_cache, dataset, engine):
    at = new_app().run()
    at.switch_page("pages/generalization.py").run()
    no_errors(at)
    at.multiselect(key="gen_layers").set_value([-1])
    at.multiselect(key="gen_probes").set_value(["linear", "ttpd"])
    at.number_input(key="gen_ccs").set_value(1)
    at.run()
    at.button(key="gen_button").click().run()
    job = wait_job(at, "generalization")
    study = job.result
    assert at.session_state["ctx"].study.folder == study.folder  # saved and opened
    assert_same_study(StudyResult.load(study.folder), study)
    saved = pd.read_csv(study.folder / "generalization.csv")
    at.radio(key="gen_probe").set_value("ttpd").run()
    no_errors(at)
    _, shown = chart(at, "gen_matrix")
    expected = saved[(saved.analysis == "topics") & (saved.layer == -1) & (saved.probe == "ttpd")]
    shown = shown.dropna(subset=["train"]).set_index(["train", "test"])["value"].sort_index()
    assert len(shown) == len(expected) == 6 * 7
    np.testing.assert_allclose(shown, expected.set_index(["train", "test"])["accuracy"].sort_index(), atol=1e-12)
    _, control = chart(at, "gen_text_only")
    control = control.dropna(subset=["train"]).set_index(["train", "test"])["value"].sort_index()
    np.testing.assert_allclose(control, expected.set_index(["train", "test"])["text_only_accuracy"].sort_index())
    _, polarity = chart(at, "gen_polarity")
    assert set(polarity.dropna(subset=["transfer"])["transfer"]) == {
        f"{a} > {b}" for a in ("affirmative", "negated", "all") for b in ("affirmative", "negated")}

    at.selectbox(key="gen_train").set_value("cities")
    at.selectbox(key="gen_test").set_value("animals")
    at.run()
    no_errors(at)
    cell = expected.set_index(["train", "test"]).loc[("cities", "animals")]
    wrong = round(cell.n_test * (1 - cell.accuracy))
    table = next(frame.value for frame in at.dataframe if "P(true)" in frame.value.columns)
    assert len(table) == wrong and set(table["statement"]) <= set(dataset.statements)
    assert any(f"{wrong:,} wrong" in c.value for c in at.caption)

    at.switch_page("pages/grid.py").run()  # the folder holds the analyses only
    no_errors(at)
    assert any("holds no accuracy grid (it holds generalization analyses" in i.value for i in at.info)


def test_generalization_joins_the_open_grid_of_the_same_statements(app_cache):
    at = new_app().run()
    at.switch_page("pages/grid.py").run()
    at.multiselect(key="grid_layers").set_value([-1])
    at.multiselect(key="grid_probes").set_value(["linear"])
    at.checkbox(key="grid_random").uncheck()
    at.run()
    at.button(key="grid_button").click().run()
    grid = wait_job(at, "grid").result
    at.switch_page("pages/generalization.py").run()
    at.multiselect(key="gen_layers").set_value([-1])
    at.multiselect(key="gen_probes").set_value(["mass_mean"])
    at.number_input(key="gen_ccs").set_value(0)
    at.run()
    at.button(key="gen_button").click().run()
    joined = wait_job(at, "generalization").result
    assert joined.folder == grid.folder and at.session_state["ctx"].study.folder == grid.folder
    loaded = StudyResult.load(grid.folder)
    pd.testing.assert_frame_equal(loaded.results, grid.results)  # the grid is still there
    assert set(loaded.generalization.probe) == {"mass_mean"} and loaded.config.generalization
    at.switch_page("pages/grid.py").run()
    no_errors(at)
    assert len(chart(at, "grid_mean")[1]) == 1


def test_steer_page(app_cache, dataset, engine):
    at = page_with_activations("pages/steer.py", "extract_steer", dataset)
    at.radio(key="steer_kind").set_value("mass_mean")
    at.select_slider(key="steer_probe_layer").set_value(-9)
    at.select_slider(key="steer_layers").set_value((-11, -9))
    at.run()
    no_errors(at)
    _, answer = chart(at, "steer_answer")
    margins = answer.dropna(subset=["run"]).set_index("run")["margin"]
    model, activations = engine
    statement = at.text_input(key="steer_text").value
    assert margins["without steering"] == pytest.approx(true_false_margins(model, [statement])[0, 0], abs=1e-6)
    assert margins["alpha = 0"] == margins["without steering"]
    at.slider(key="steer_alpha").set_value(4.0).run()
    no_errors(at)
    direction = fit_directions(activations.layer(dataset.statements, -9), dataset.labels, -9, ["mass_mean"])["mass_mean"]
    expected = true_false_margins(model, [statement], layers=(-11, -10, -9), vector=direction.vector, alphas=[4.0])
    steered = chart(at, "steer_answer")[1].dropna(subset=["run"]).set_index("run")["margin"]["alpha = 4"]
    assert steered == pytest.approx(expected[0, 0], abs=1e-5) and steered != margins["without steering"]

    at.multiselect(key="steer_dose_kinds").set_value(["mass_mean", "random"])
    at.number_input(key="steer_dose_n").set_value(8)
    at.run()
    at.button(key="steer_button").click().run()
    study = wait_job(at, "steering").result
    assert at.session_state["ctx"].study.folder == study.folder
    saved = pd.read_csv(study.folder / "steering.csv")
    _, dose = chart(at, "steer_dose")
    dose = dose.dropna(subset=["direction"])
    assert len(dose) == 2 * len(SteeringConfig().alphas) * 2  # directions x alphas x (true, false statements)
    mass_true = dose[(dose.direction == "mass_mean") & (dose.statements == "true statements")].sort_values("alpha")
    np.testing.assert_allclose(mass_true["margin"], saved[saved.direction == "mass_mean"].sort_values("alpha")["margin_true"])


def test_compare_page(app_cache, dataset, engine):
    _, activations = engine
    config = StudyConfig(layers=(-9, -1), probes=("linear",), controls=False)
    root = app_cache / "results"
    made = [Study(replace(config, epochs=epochs), dataset=dataset, activations=activations).reproduce(root / name)
            for name, epochs in (("compare-a", 5), ("compare-b", 5), ("compare-c", 7))]
    at = new_app().run()
    at.switch_page("pages/compare.py").run()
    no_errors(at)
    at.selectbox(key="compare_a").set_value(str(made[0].folder))
    at.selectbox(key="compare_b").set_value(str(made[1].folder))
    at.run()
    no_errors(at)
    _, grid_a = chart(at, "compare_grid_a")
    table = pd.read_csv(made[0].folder / "accuracy_mean.csv").set_index("probe")
    for row in grid_a.dropna(subset=["probe"]).itertuples():
        assert row.accuracy == pytest.approx(table.loc[row.probe, str(row.layer)], abs=1e-12)
    _, difference = chart(at, "compare_difference")
    assert len(difference.dropna(subset=["probe"])) == 2 and (difference["difference"].dropna() == 0).all()
    _, directions = chart(at, "compare_directions")
    assert set(directions.dropna(subset=["model"])["model"]) == {"embedded (A)", "embedded (B)"}

    at.selectbox(key="compare_b").set_value(str(made[2].folder)).run()
    no_errors(at)
    assert any("not comparable: epochs: 5 vs 7" in e.value for e in at.error)
    at.checkbox(key="compare_anyway").check().run()
    no_errors(at)
    assert any("shown anyway: epochs: 5 vs 7" in w.value for w in at.warning)
    assert len(chart(at, "compare_difference")[1].dropna(subset=["probe"])) == 2

    at.button(key="compare_score").click().run()  # a typed statement, read by both studies' probes
    no_errors(at)
    statement = at.text_input(key="compare_text").value
    for key, study in (("compare_score_a", made[0]), ("compare_score_b", made[2])):
        shown = chart(at, key)[1].dropna(subset=["probe"]).set_index(["layer", "probe"])["p_true"]
        direct = score_statements(activations, study.probes, [statement]).set_index(["layer", "probe"])["p_true"]
        assert shown.to_dict() == pytest.approx(direct.to_dict(), abs=1e-6)


def test_compare_two_models_computes_what_is_missing(app_cache, dataset):
    from test_models import require_gemma

    require_gemma()
    at = new_app().run()
    at.switch_page("pages/compare.py").run()
    at.radio(key="compare_mode").set_value("two models on these statements").run()
    at.selectbox(key="compare_model_a").set_value("embedded")
    at.selectbox(key="compare_model_b").set_value("gemma-3-270m")
    at.multiselect(key="compare_layers").set_value([-9, -1])
    at.multiselect(key="compare_probes").set_value(["linear"])
    at.run()
    at.button(key="compare_models_button").click().run()
    first, second = wait_job(at, "compare").result
    assert (first.config.model, second.config.model) == ("embedded", "gemma-3-270m")
    assert second.config.layers == (-6, -1)  # Gemma's layers at SmolLM2's relative depths
    no_errors(at)
    _, difference = chart(at, "compare_difference")
    pairs = difference.dropna(subset=["probe"])[["layer_a", "layer_b"]].drop_duplicates()
    assert sorted(map(tuple, pairs.values.tolist())) == [(-9, -6), (-1, -1)]


def test_statement_page(app_cache, dataset, engine):
    at = new_app().run()
    at.selectbox(key="position").set_value("mean").run()  # a context with no probes yet
    at.switch_page("pages/statement.py").run()
    no_errors(at)
    assert any("No trained probe yet" in i.value for i in at.info)
    assert any("Type a statement" in i.value for i in at.info)
    at.text_area(key="statement_text").input("x" * 5000).run()
    no_errors(at)
    assert any("characters" in w.value for w in at.warning)
    at.button(key="example_0").click().run()
    no_errors(at)
    statement = at.text_area(key="statement_text").value
    assert statement == "The city of Paris is located in France."
    _, answer = chart(at, "model_answer")
    direct = model_says_true(engine[0], statement)
    probs = answer.dropna(subset=["answer"]).set_index("answer")["probability"]
    assert probs["True"] == pytest.approx(direct["p_true"], abs=1e-4) and probs.sum() == pytest.approx(1)

    # train a probe in this session, then score with it
    at.selectbox(key="position").set_value("last").run()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="train_heldout").set_value("random").run()
    at.button(key="train_button").click().run()
    job = wait_job(at, "train")
    at.switch_page("pages/statement.py").run()
    at.button(key="example_1").click().run()
    no_errors(at)
    _, scores = chart(at, "statement_layers")
    rows = scores.dropna(subset=["probe"])
    probe = job.result.probe
    X = engine[1].layer(["The city of Paris is located in Japan."], job.result.layer)
    assert len(rows) == 1  # no results folder is open: the probe this session trained
    mine = rows[(rows.layer == job.result.layer) & (rows.probe == job.result.kind)]
    assert len(mine) == 1
    assert mine["p_true"].iloc[0] == pytest.approx(float(probe.predict_proba(X)[0, 1]), abs=1e-5)
    assert rows["p_true"].between(0, 1).all()

    # the probe read the last token: at another position it is kept, but not used
    at.selectbox(key="position").set_value("mean").run()
    no_errors(at)
    assert any("No trained probe yet" in i.value for i in at.info)
    assert any("1 probe(s) trained this session read another model or token position" in c.value for c in at.caption)


@pytest.fixture(scope="module")
def saved_study(small_saplma, tmp_path_factory):
    """`reproduce` on 240 real SAPLMA statements, into a folder of its own."""
    activations = Activations(model=load_model("embedded"), cache_dir=TEST_CACHE)
    config = StudyConfig(layers=(-5, -1), probes=("linear", "tiny"), epochs=2)
    return Study(config, dataset=small_saplma, activations=activations).reproduce(
        tmp_path_factory.mktemp("results") / "saplma-small")


def test_a_results_folder_opens_without_a_model_until_a_page_needs_one(saved_study, tmp_path, monkeypatch):
    cache = tmp_path / "cache"  # a fresh process-wide model holder: nothing loaded
    cache.mkdir()
    monkeypatch.setenv("PROBING_CACHE", str(cache))
    monkeypatch.setenv("PROBING_RESULTS", str(saved_study.folder))  # as `streamlit run app.py -- --results DIR`
    folder = saved_study.folder
    at = new_app().run()
    no_errors(at)
    ctx = at.session_state["ctx"]
    assert ctx.study.folder == folder and ctx.model is None

    at.switch_page("pages/grid.py").run()
    no_errors(at)
    _, mean = chart(at, "grid_mean")
    table = pd.read_csv(folder / "accuracy_mean.csv").set_index("probe")
    assert len(mean) == 4
    for row in mean.itertuples():
        assert row.accuracy == pytest.approx(table.loc[row.probe, str(row.layer)], abs=1e-12)

    at.switch_page("pages/directions.py").run()
    at.radio(key="dir_kind").set_value("linear").run()
    at.select_slider(key="dir_layer").set_value(-5).run()
    no_errors(at)
    _, shown = chart(at, "dir_cosine")
    saved = pd.read_csv(folder / "directions_matrices.csv")
    saved = saved[(saved.layer == -5) & (saved.probe == "linear")].set_index(["split_a", "split_b"])["cosine"]
    got = shown.dropna(subset=["split_a"]).set_index(["split_a", "split_b"])["cosine"]
    np.testing.assert_allclose(got.sort_index(), saved.sort_index(), atol=1e-6)

    holder = ctx.holder
    assert holder.current is None  # no model loaded, so no forward pass, before the statement page
    at.switch_page("pages/statement.py").run()
    no_errors(at)
    assert any("reads hidden states of **embedded**" in i.value for i in at.info)
    at.button(key="load_page_model").click().run()
    no_errors(at)
    assert holder.current is not None and holder.current.forward_passes == 0
    at.button(key="example_1").click().run()
    no_errors(at)
    statement = at.text_area(key="statement_text").value
    _, scores = chart(at, "statement_layers")
    shown = scores.dropna(subset=["probe"]).set_index(["layer", "probe"])["p_true"]
    direct = score_statements(holder.activations("last"), saved_study.probes, [statement])
    assert set(shown.index) == set(saved_study.probes)  # the folder's probes, nothing else
    assert shown.to_dict() == pytest.approx(direct.set_index(["layer", "probe"])["p_true"].to_dict(), abs=1e-6)
    assert holder.current.forward_passes > 0
    assert not at.warning  # the model here is the one the folder's probes were trained on

    # a probe trained from here starts from the folder's training settings
    at.switch_page("pages/train.py").run()
    no_errors(at)
    assert at.number_input(key="train_epochs").value == saved_study.config.epochs == 2


def test_a_typed_results_path_must_lie_in_an_allowed_folder(app_cache, tmp_path):
    listed = app_cache / "results"
    copy = listed / "typed" / "old-study"
    shutil.copytree(ROOT / "tests" / "data" / "results-1b0dd61", copy)
    at = new_app().run()
    at.selectbox(key="results_choice").set_value("Other path…").run()
    for outside in ("/etc", str(tmp_path), f"{copy}/../../../../../etc"):
        at.text_input(key="results_path").input(outside).run()
        no_errors(at)
        errors = " ".join(e.value for e in at.sidebar.error)
        assert "is outside the folders this dashboard reads results folders from" in errors, errors
        assert at.session_state["ctx"].study is None
    at.text_input(key="results_path").input(str(copy)).run()
    no_errors(at)
    assert at.session_state["ctx"].study.folder == copy.resolve()


def test_activations_page(app_cache, dataset, engine):
    at = page_with_activations("pages/activations.py", "extract_pca", dataset)
    at.select_slider(key="pca_layer").set_value(-1).run()
    no_errors(at)
    spec, points = chart(at, "pca_chart")
    assert len(points) == len(dataset)
    assert spec["encoding"]["color"]["field"] == "label" and spec["encoding"]["shape"]["field"] == "topic"
    direct, _ = pca_points(engine[1].layer(dataset.statements, -1), dataset.frame)
    np.testing.assert_allclose(np.abs(points["pc1"]), np.abs(direct["pc1"]), rtol=1e-4, atol=1e-4)
    assert "Activations at layer -1" in json.dumps(spec["title"])


def test_the_shared_sidebar_imports_no_torch():
    """What every page runs before its title imports no torch: the first paint waits for no model
    (tests/test_browser.py checks the order in a browser)."""
    code = "import sys, pages._shared\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    finished = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr


# ----------------------------------------------------------------------------- errors


def test_bad_csv_shows_line_numbers(app_cache, tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv"
    bad.write_text("statement,label,topic\nParis is in France.,1,geo\nRome is in Spain.,maybe,geo\n,0,geo\n")
    monkeypatch.setenv("PROBING_DATA_ROOTS", str(tmp_path))
    at = new_app().run()
    at.radio(key="dataset_source").set_value("Folder").run()
    assert str(bad) in at.selectbox(key="dataset_found").options  # found in the allowed folder
    at.selectbox(key="dataset_found").set_value(str(bad)).run()
    no_errors(at)
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "line 3" in errors and "line 4" in errors
    assert metrics(at)["Blocks"] == "30"  # the page still works, on the previous statement set


def test_folder_picker_reads_only_the_allowed_folders(app_cache, saplma):
    at = new_app().run()
    at.radio(key="dataset_source").set_value("Folder").run()
    found = at.selectbox(key="dataset_found").options
    assert saplma.source in found  # ../shared/datasets is allowed: its sets are offered
    at.selectbox(key="dataset_found").set_value(saplma.source).run()
    no_errors(at)
    # Its statements labelled both true and false are refused until the sidebar is told to drop them.
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "15 statement(s) labelled both true and false, on 30 rows" in errors and "Drop conflicting" in errors
    at.checkbox(key="drop_conflicts").check().run()
    no_errors(at)
    assert not at.sidebar.error and any("Dropped: 15 statement(s)" in w.value for w in at.sidebar.warning)
    assert at.session_state["ctx"].dataset.fingerprint() == saplma.fingerprint()

    at.selectbox(key="dataset_found").set_value("Other path…").run()
    for outside in ("/etc/passwd", "/etc", f"{saplma.source}/../../../../etc/passwd"):
        at.text_input(key="dataset_path").input(outside).run()
        no_errors(at)
        errors = " ".join(e.value for e in at.sidebar.error)
        assert "is outside the folders this dashboard reads" in errors and "--data-root" in errors
        assert "root:" not in errors  # nothing of the file is shown
    assert at.session_state["ctx"].dataset.fingerprint() == saplma.fingerprint()  # the previous set stays


def test_a_link_inside_an_allowed_folder_to_a_file_outside_is_refused_not_shown(app_cache, saplma, tmp_path,
                                                                                 monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(Path(saplma.source) / "animals_true_false.csv", data)
    (data / "secrets_true_false.csv").symlink_to("/etc/passwd")
    results = tmp_path / "study"
    results.mkdir()
    (results / "config.json").symlink_to("/etc/passwd")
    monkeypatch.setenv("PROBING_DATA_ROOTS", str(tmp_path))
    at = new_app().run()
    before = at.session_state["ctx"].dataset.fingerprint()
    at.radio(key="dataset_source").set_value("Folder").run()
    at.selectbox(key="dataset_found").set_value(str(data)).run()
    no_errors(at)
    errors = " ".join(e.value for e in at.sidebar.error)
    assert f"{data / 'secrets_true_false.csv'} inside {data} is a link to /etc/passwd" in errors, errors
    shown = " ".join(element.value for element in at.sidebar if isinstance(getattr(element, "value", None), str))
    assert "root:" not in shown and "root:" not in errors  # nothing of the file reaches the browser
    assert at.session_state["ctx"].dataset.fingerprint() == before

    at.selectbox(key="results_choice").set_value("Other path…").run()
    at.text_input(key="results_path").input(str(results)).run()
    no_errors(at)
    errors = " ".join(e.value for e in at.sidebar.error)
    assert "is a link to /etc/passwd" in errors and "root:" not in errors, errors


def test_the_polarity_filter_picks_the_statements(app_cache, dataset, tmp_path, monkeypatch):
    at = new_app().run()
    assert at.session_state["ctx"].dataset.polarities == ["affirmative", "negated"]
    at.radio(key="polarity").set_value("negated").run()
    no_errors(at)
    chosen = at.session_state["ctx"].dataset
    assert chosen.polarities == ["negated"] and len(chosen) == len(dataset)  # statements per topic stay as asked
    assert any("negated statements" in c.value for c in at.sidebar.caption)
    # a CSV of one polarity has nothing to filter: no radio, and a SAPLMA folder with neg_ files has
    monkeypatch.setenv("PROBING_DATA_ROOTS", str(tmp_path))
    both = dataset.subset(per_topic=8)
    both.frame[both.frame.polarity == "affirmative"].to_csv(tmp_path / "cities_true_false.csv", index=False)
    both.frame[both.frame.polarity == "negated"].drop(columns="polarity").to_csv(
        tmp_path / "neg_cities_true_false.csv", index=False)
    at = new_app().run()
    at.radio(key="dataset_source").set_value("Folder").run()
    at.selectbox(key="dataset_found").set_value(str(tmp_path)).run()
    no_errors(at)
    assert at.session_state["ctx"].dataset.polarities == ["affirmative", "negated"]
    at.radio(key="polarity").set_value("affirmative").run()
    assert at.session_state["ctx"].dataset.polarities == ["affirmative"]


def test_failed_model_load_keeps_previous_model(app_cache):
    at = new_app().run()
    at.selectbox(key="model_choice").set_value("Other: hub id, folder or .gguf").run()
    at.text_input(key="model_custom").input("/nonexistent/model.gguf").run()
    at.button(key="load_model").click().run()
    no_errors(at)
    assert any("no such GGUF file" in e.value for e in at.sidebar.error)
    assert metrics(at)["Model"] == "embedded"
    assert at.session_state["ctx"].model.spec.name == "embedded"


def test_two_sessions_train_at_the_same_time(app_cache, dataset, engine):
    sessions = []
    for heldout, kind in (("animals", "tiny"), ("science", "small")):
        at = new_app().run()
        at.switch_page("pages/train.py").run()
        at.selectbox(key="train_kind").set_value(kind)
        at.selectbox(key="train_heldout").set_value(heldout)
        at.run()
        at.number_input(key="train_epochs").set_value(30).run()
        sessions.append((at, heldout, kind))
    for at, _, _ in sessions:
        at.button(key="train_button").click().run()
    jobs = [at.session_state["job"] for at, _, _ in sessions]
    assert jobs[1].started < (jobs[0].finished or float("inf")), "the two trainings should overlap"
    for at, _, _ in sessions:
        wait_job(at, "train")
    # read after the jobs: in bfloat16 a vector depends on the batch it was computed in, so the
    # engine must read the cached vectors the jobs trained on, not extract its own batches
    _, activations = engine
    X = activations.layer(dataset.statements, -9)
    y = dataset.labels
    for (at, heldout, kind), job in zip(sessions, jobs):
        split = make_split(dataset, heldout)
        probe = make_probe(kind, epochs=30, lr=1e-3, seed=split_seed(0, heldout)).fit(
            X[split.train], y[split.train], X[split.test], y[split.test])
        assert job.result.heldout == heldout and job.result.kind == kind
        np.testing.assert_allclose(job.result.history["heldout_loss"], probe.history_["heldout_loss"], rtol=1e-4)
        assert metrics(at)["Held-out accuracy"] == f"{probe.score(X[split.test], y[split.test]):.3f}"
    # each session's probe is saved as a results folder of its own: a later session can open both
    later = new_app().run()
    listed = later.selectbox(key="results_choice").options
    for (_, heldout, kind), job in zip(sessions, jobs):
        folder = str(job.result.study.folder)
        assert job.result.study.folder.name in listed  # shown by name
        later.selectbox(key="results_choice").set_value(folder).run()
        no_errors(later)
        opened = later.session_state["ctx"].study
        assert list(opened.probes) == [(-9, kind)] and opened.results["heldout"].tolist() == [heldout]
        np.testing.assert_array_equal(opened.probes[(-9, kind)].weights_[0], job.result.probe.weights_[0])
