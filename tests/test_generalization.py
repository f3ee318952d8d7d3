"""The generalization analyses on real activations of the embedded model: the topic matrix, the
polarity transfer and CCS, and how they are saved and printed."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from probing.store.activations import Activations
from probing.data.builtin import load_builtin
from probing.cli.main import main
from probing.study.config import StudyConfig
from probing.analyses.grid import random_split, run_grid, text_only_accuracy, within_topic_splits
from probing.analyses.generalization import (
    ALL_OTHERS, matrix, matrix_summary, polarity_table, polarity_transfers, run_generalization, topic_transfers,
    truth_subspace,
)
from probing.study.results import StudyResult
from probing.study.assemble import same_data
from probing.study.study import Study
from support import assert_same_study

LAYERS = (-9, -1)
CONFIG = StudyConfig(layers=LAYERS, generalization=True, ccs_seeds=2)


@pytest.fixture(scope="module")
def builtin():
    """Both polarities, 12 facts per topic: 48 statements per topic, in pairs."""
    return load_builtin(per_topic=48)


@pytest.fixture(scope="module")
def activations(model, shared_cache, builtin):
    activations = Activations(model=model, cache_dir=shared_cache)
    activations.ensure(builtin.statements)
    return activations


@pytest.fixture(scope="module")
def load(activations, builtin):
    return lambda layer: activations.layer(builtin.statements, layer)


@pytest.fixture(scope="module")
def analyses(builtin, load):
    return run_generalization(builtin, load, CONFIG)


def test_the_all_other_topics_row_is_the_category_split_of_the_grid(builtin, load, analyses):
    grid = run_grid(builtin, load, StudyConfig(layers=LAYERS, probes=("linear", "mass_mean"), controls=False))
    grid_rows = grid.results.set_index(["layer", "probe", "heldout"])[["accuracy", "auroc", "n_train", "n_test"]]
    rows = analyses.results
    others = rows[(rows.analysis == "topics") & (rows.train == ALL_OTHERS) & rows.probe.isin(["linear", "mass_mean"])]
    others = others.set_index(["layer", "probe", "test"])[["accuracy", "auroc", "n_train", "n_test"]]
    others.index.names = grid_rows.index.names
    assert len(others) == len(grid_rows) == 2 * 2 * 6
    pd.testing.assert_frame_equal(others.sort_index(), grid_rows.sort_index(), check_dtype=False)


def test_the_matrix_trains_on_one_topic_and_tests_on_another(builtin, analyses):
    topics = builtin.topics
    rows = analyses.results[analyses.results.analysis == "topics"]
    assert len(rows) == len(LAYERS) * 3 * (len(topics) ** 2 + len(topics))  # linear, mass_mean, ttpd
    sizes = builtin.frame.groupby("topic").size()
    across = rows[(rows.train != rows.test) & (rows.train != ALL_OTHERS)]
    assert (across.n_train == across.train.map(sizes)).all() and (across.n_test == across.test.map(sizes)).all()
    # the diagonal is the within-topic split, whose held-out facts (groups) never reach training
    within = {split.name: split for split in within_topic_splits(builtin)}
    groups = builtin.frame["group"].to_numpy()
    for topic, split in within.items():
        assert not set(groups[split.train]) & set(groups[split.test])
        diagonal = rows[(rows.train == topic) & (rows.test == topic)]
        assert set(diagonal.n_test) == {len(split.test)} and set(diagonal.n_train) == {len(split.train)}
    table = matrix(rows, -1, "linear")
    assert list(table.index) == [*topics, ALL_OTHERS] and list(table.columns) == topics
    assert table.notna().all().all() and ((table >= 0) & (table <= 1)).all().all()
    # the text-only control: one value per train/test pair, the same at every layer and probe
    cell = next(t for t in topic_transfers(builtin) if t.train == "cities" and t.test == "animals")
    control = rows[(rows.train == "cities") & (rows.test == "animals")]["text_only_accuracy"]
    assert set(control) == {text_only_accuracy(builtin, cell.split)}


def test_errors_are_the_misclassified_test_statements(builtin, analyses, load):
    rows, errors = analyses.results, analyses.errors
    for row in rows.sample(12, random_state=0).itertuples():
        mine = errors[(errors.analysis == row.analysis) & (errors.layer == row.layer) & (errors.probe == row.probe)
                      & (errors.train == row.train) & (errors.test == row.test)]
        assert len(mine) == round(row.n_test * (1 - row.accuracy))
        labels = analyses.statements["label"].to_numpy()[mine["row"].to_numpy()]
        assert ((mine["p_true"].to_numpy() > 0.5) != labels).all()  # wrong, each of them
    assert analyses.statements["statement"].tolist() == builtin.statements


def test_polarity_transfer_holds_facts_out_whole(builtin, analyses):
    transfers = polarity_transfers(builtin)
    assert [(t.train, t.test) for t in transfers] == [
        (a, b) for a in ("affirmative", "negated", "all") for b in ("affirmative", "negated")]
    frame = builtin.frame
    held = random_split(builtin)
    for transfer in transfers:
        assert set(frame["pair"].iloc[transfer.split.train]).isdisjoint(frame["pair"].iloc[transfer.split.test])
        assert set(transfer.split.test) <= set(held.test)
        if transfer.train != "all":
            assert set(frame["polarity"].iloc[transfer.split.train]) == {transfer.train}
        assert set(frame["polarity"].iloc[transfer.split.test]) == {transfer.test}
    table = polarity_table(analyses.results)
    assert len(table) == len(LAYERS) * 3 and "affirmative > negated" in table.columns


def test_ccs_finds_a_direction_without_labels(analyses):
    ccs = analyses.ccs
    assert len(ccs) == len(LAYERS) * CONFIG.ccs_seeds
    assert ccs["accuracy"].between(0, 1).all() and ccs["cosine_linear"].between(-1, 1).all()
    assert (ccs["test_pairs"] > 0).all() and (ccs["train_pairs"] > ccs["test_pairs"]).all()
    assert analyses.notes == []


def test_a_set_of_one_polarity_without_pairs_says_what_it_leaves_out(small_saplma, model, shared_cache):
    activations = Activations(model=model, cache_dir=shared_cache)
    activations.ensure(small_saplma.statements)
    analyses = run_generalization(small_saplma, lambda layer: activations.layer(small_saplma.statements, layer),
                                  replace(CONFIG, layers=(-1,), matrix_probes=("mass_mean",)))
    assert set(analyses.results.analysis) == {"topics"} and analyses.ccs.empty
    assert any("only affirmative statements: no polarity transfer" in note for note in analyses.notes)
    assert any(note.startswith("no CCS:") for note in analyses.notes)


def test_the_analyses_join_a_study_of_the_same_data_and_round_trip(builtin, activations, tmp_path):
    study = Study(replace(CONFIG, layers=(-1,), ccs_seeds=1), dataset=builtin, activations=activations).generalization()
    assert study.results.empty and study.config.generalization and same_data(study, builtin, activations)
    folder = study.save(tmp_path / "study")
    for name in ("generalization.csv", "generalization.md", "generalization_errors.csv.gz", "ccs.csv",
                 "statements.csv"):
        assert (folder / name).is_file(), name
    assert not (folder / "accuracy_mean.csv").exists()  # no grid: no empty accuracy table
    assert "## linear probe at layer -1" in (folder / "generalization.md").read_text()
    assert_same_study(StudyResult.load(folder), study)
    other = load_builtin(per_topic=48, polarity="affirmative")
    assert not same_data(study, other, activations)


def test_reproduce_with_generalization_prints_and_writes_them(tmp_path, capsys, builtin):
    data = builtin.to_csv(tmp_path / "both.csv")
    cache = tmp_path / "cache"
    cache.mkdir()
    out = tmp_path / "out"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(out), "--layers", "-1",
                 "--probes", "linear", "--generalization", "--matrix-probes", "linear,ttpd", "--ccs-seeds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "Generalization: mean accuracy within a topic" in printed and "Polarity transfer" in printed
    assert "CCS (no labels)" in printed
    study = StudyResult.load(out)
    assert set(study.generalization.probe) == {"linear", "ttpd"} and len(study.ccs) == 1
    summary = matrix_summary(study.generalization).set_index("probe")
    grid = study.results.set_index("heldout")["accuracy"]
    assert summary.loc["linear", "all_others"] == pytest.approx(grid.mean())  # the same category splits


def test_truth_subspace_projects_every_statement(builtin, load):
    points, cosines = truth_subspace(load(-1), builtin)
    assert len(points) == len(builtin) and set(points.polarity) == {"affirmative", "negated"}
    separation = points.groupby("label")["t_g"].mean()
    assert separation["true"] > separation["false"]  # t_G points from false to true
    assert len(cosines) == 2 * len(builtin.topics) and cosines["cosine"].between(-1, 1).all()
    assert np.isfinite(points[["t_g", "t_p"]].to_numpy()).all()
