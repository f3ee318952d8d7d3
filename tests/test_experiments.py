import numpy as np
import pandas as pd
import pytest
import torch

from probing.store.activations import Activations
from probing.study.config import StudyConfig
from probing.analyses.directions import (
    compare_directions, cosine_matrix, off_diagonal_mean, random_baseline, sign_matrix,
)
from probing.data.statements import StatementSet
from probing.analyses.grid import (
    Cell, category_splits, check_splits, evaluate_probe, final_task, make_split, make_splits, random_split, run_grid,
    text_only_accuracy, train_cells,
)
from probing.probes.estimators import fit_many


SMALL_GRID = StudyConfig(layers=(-1, -9), probes=("linear", "tiny", "mass_mean"), seeds=2, epochs=2)


@pytest.fixture(scope="module")
def small_grid(small_saplma, model, shared_cache):
    activations = Activations(model=model, cache_dir=shared_cache)
    texts = small_saplma.statements
    finished, epochs = [], []
    result = run_grid(small_saplma, lambda layer: activations.layer(texts, layer), SMALL_GRID,
                      model_name="embedded", on_result=finished.append, on_epoch=epochs.append, final=True)
    return result, finished, epochs


def test_the_final_probes_trained_in_the_grid_s_stacks_equal_those_trained_alone(small_grid, small_saplma, model,
                                                                                 shared_cache):
    """Each (layer, kind) stack also trains the probe on every statement that ``score`` uses; a probe is the
    same in a stack as alone, so the final probes are those a separate fit on every statement gives."""
    result, finished, _ = small_grid
    assert sorted(result.final_probes) == sorted((layer, kind) for layer in SMALL_GRID.layers
                                                 for kind in SMALL_GRID.probes)
    assert len(finished) == len(result.results)  # no result row for a final probe
    features = Activations(model=model, cache_dir=shared_cache).layer(small_saplma.statements, -9)
    for kind in SMALL_GRID.probes:
        (alone,) = fit_many(features, [final_task(small_saplma)], SMALL_GRID.probe_config(kind))
        stacked = result.final_probes[(-9, kind)]
        for mine, theirs in zip([stacked.mean_, stacked.scale_, *stacked.weights_, *stacked.biases_],
                                [alone.mean_, alone.scale_, *alone.weights_, *alone.biases_], strict=True):
            np.testing.assert_array_equal(mine, theirs)


def test_category_splits_hold_each_topic_out(saplma):
    splits = category_splits(saplma)
    assert [s.name for s in splits] == saplma.topics
    for split in splits:
        assert set(saplma.frame["topic"].iloc[split.test]) == {split.name}
        assert split.name not in set(saplma.frame["topic"].iloc[split.train])
        assert len(split.train) + len(split.test) == len(saplma)


def test_random_split_is_stratified_by_topic_and_label(saplma):
    split = random_split(saplma, test_fraction=0.2, seed=1)
    test = saplma.frame.iloc[split.test]
    assert abs(len(split.test) / len(saplma) - 0.2) < 0.01
    assert set(test["topic"]) == set(saplma.topics)
    assert abs(test["label"].mean() - saplma.frame["label"].mean()) < 0.02
    assert not set(split.train) & set(split.test)


def test_grid_returns_tidy_rows_with_controls(small_grid, small_saplma):
    result, finished, epochs = small_grid
    rows = result.results
    assert len(rows) == 2 * 3 * 6 * 2 == len(finished)
    assert list(rows.columns) == ["model", "layer", "probe", "split", "heldout", "seed", "accuracy", "accuracy_lower",
                                  "accuracy_upper", "auroc", "auroc_lower", "auroc_upper", "n_train", "n_test",
                                  "temperature", "text_only_accuracy", "shuffled_accuracy"]
    assert (rows["split"] == "category").all() and (result.dynamics["split"] == "category").all()
    assert rows["accuracy"].between(0, 1).all() and rows["auroc"].between(0, 1).all()
    assert rows["shuffled_accuracy"].mean() == pytest.approx(0.5, abs=0.08)
    # Adam-trained kinds report every epoch; linear (L-BFGS) reports rounds until converged.
    tiny = result.dynamics.query("probe == 'tiny'")
    assert sorted(tiny["epoch"].unique()) == [1, 2] and len(epochs) == len(result.dynamics)
    table = result.accuracy_table("mean")
    assert list(table.columns) == ["probe", "-9", "-1"]
    assert table["probe"].tolist() == ["linear", "tiny", "mass_mean"]
    by_hand = rows.query("probe == 'tiny' and layer == -9").groupby("heldout")["accuracy"].mean().mean()
    assert table.set_index("probe").loc["tiny", "-9"] == pytest.approx(by_hand)


def test_text_only_control_exposes_the_companies_capitalisation_leak(saplma):
    frame = saplma.frame
    industry = StatementSet(frame[frame["statement"].str.contains("operates in the industry of")].copy(), "leak")
    assert len(industry) == 400
    # Capitalised industry names are false, lower-case ones true: the text alone gives it away.
    assert text_only_accuracy(industry, random_split(industry, seed=0)) > 0.9
    animals = saplma.subset(topics=["animals"])
    assert text_only_accuracy(animals, random_split(animals, seed=0)) < 0.6


def test_direction_matrices_and_baselines(small_grid):
    result, _, _ = small_grid
    cosine, sign, matrices = compare_directions(result, "linear")
    assert cosine["layer"].tolist() == [-9, -1] and (cosine["splits"] == 6).all()
    assert len(matrices) == 2 * 36
    diagonal = matrices.query("split_a == split_b")
    assert np.allclose(diagonal["cosine"], 1) and np.allclose(diagonal["sign_equality"], 1)
    assert (cosine["random_baseline"].abs() < 0.02).all()
    assert (sign["random_baseline"] - 0.5).abs().max() < 0.01
    assert (cosine["random_p95"] > cosine["random_baseline"]).all()
    with pytest.raises(ValueError, match="directions exist for"):
        compare_directions(result, "tiny")


def test_matrix_helpers_on_known_vectors():
    directions = np.array([[1.0, 0, 0, 0], [1.0, 1, 0, 0], [-1.0, 0, 0, 0]])
    cos = cosine_matrix(directions)
    assert cos[0, 1] == pytest.approx(2 ** -0.5) and cos[0, 2] == pytest.approx(-1)
    assert sign_matrix(directions)[0, 2] == pytest.approx(0.75)  # zeros agree on 3 of 4 coordinates
    assert off_diagonal_mean(np.array([[1, 0.2], [0.4, 1]])) == pytest.approx(0.3)
    chance = random_baseline(np.ones((6, 576)), draws=200)
    assert abs(chance["cosine"]) < 0.01 and chance["cosine_p95"] < 0.05


def test_within_topic_splits_stay_inside_their_topic_and_keep_groups_whole(saplma):
    from probing.data.builtin import load_builtin
    from probing.analyses.grid import within_topic_splits

    for dataset in (saplma, load_builtin(per_topic=100)):
        splits = within_topic_splits(dataset)
        assert [s.name for s in splits] == dataset.topics
        for split in splits:
            rows = dataset.frame.iloc[np.concatenate([split.train, split.test])]
            assert set(rows["topic"]) == {split.name} and not set(split.train) & set(split.test)
            assert 0.1 < len(split.test) / len(rows) < 0.35
            if "group" in dataset.frame:
                train_groups = set(dataset.frame["group"].iloc[split.train])
                assert not train_groups & set(dataset.frame["group"].iloc[split.test])


def test_auroc_matches_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score

    from probing.analyses.uncertainty import auroc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # many ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auroc(np.ones(4, dtype=int), scores[:4]))


def test_grid_config_checks_the_device_and_resolves_auto():
    with pytest.raises(ValueError, match="StudyConfig.device: 'gpu9' is not a device"):
        StudyConfig(device="gpu9")
    with pytest.raises(ValueError, match="device 'cuda:99'"):  # no machine here has 100 GPUs
        StudyConfig(device="cuda:99")
    assert StudyConfig(device="cpu").resolved_device == "cpu"
    assert StudyConfig().resolved_device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_splits_without_both_labels_are_refused_before_any_layer_is_loaded(small_saplma):
    def no_layer(layer):
        raise AssertionError("a layer was loaded before the splits were checked")

    frame = small_saplma.frame
    true_only = StatementSet(frame[frame["label"] == 1].copy(), "true-only")
    with pytest.raises(ValueError, match=r"true-only: all 120 statements are true \(label 1\)"):
        run_grid(true_only, no_layer, StudyConfig(layers=(-1,), probes=("linear",)))

    # One animal statement left: beside one other topic, holding that out trains on the animal
    # alone; within the topic there is nothing to train on.
    one_animal = frame[(frame["topic"] == "animals") & (frame["label"] == 1)].head(1)
    pair = StatementSet(pd.concat([frame[frame["topic"] == "capitals"], one_animal]), "pair")
    with pytest.raises(ValueError, match=r"holding out topic 'capitals' leaves 1 statement\(s\) to train on, all true"):
        run_grid(pair, no_layer, StudyConfig(layers=(-1,), probes=("linear",)))
    lonely = StatementSet(pd.concat([frame[frame["topic"] != "animals"], one_animal]), "lonely")
    with pytest.raises(ValueError, match=r"topic 'animals' \(--split within\) leaves no statements to train on"
                                         r".*add statements, or use --split category \(true/false per topic: "
                                         r"animals 1/0, capitals 20/20"):
        run_grid(lonely, no_layer, StudyConfig(layers=(-1,), probes=("linear",), split="within"))
    check_splits(small_saplma, make_splits(small_saplma, "within"), "within")  # the full subset is fine


def test_layers_are_checked_against_the_model():
    StudyConfig(layers=(-31, 0, 30)).check_layers(31)
    with pytest.raises(ValueError, match=r"layer\(s\) \[31, -32\] do not exist: this model has 31 hidden states "
                                         r"\(the embeddings and 30 blocks\), so layers run from -31 to 30"):
        StudyConfig(layers=(-1, 31, -32)).check_layers(31)


def test_one_cell_trained_alone_is_the_grids_probe_bit_for_bit(small_grid, small_saplma, model, shared_cache):
    """The Train page trains one cell through train_cells; the grid trained it in a stack of twelve."""
    result, _, _ = small_grid
    features = Activations(model=model, cache_dir=shared_cache).layer(small_saplma.statements, -9)
    for kind in ("tiny", "linear", "mass_mean"):
        (alone,) = train_cells(features, small_saplma, -9, kind, [Cell(make_split(small_saplma, "capitals"), seed=1)],
                               SMALL_GRID, model_name="embedded")
        key = (-9, kind, "capitals", 1)
        assert alone.key == key
        for mine, grids in ((alone.probe, result.probes[key]), (alone.shuffled, result.shuffled_probes[key])):
            arrays = lambda p: [p.mean_, p.scale_, *p.weights_, *p.biases_]  # noqa: E731
            assert all(np.array_equal(a, b) for a, b in zip(arrays(mine), arrays(grids), strict=True)), kind
        grid_row = result.results.set_index(["layer", "probe", "heldout", "seed"]).loc[key]
        assert alone.row == {"layer": -9, "probe": kind, "heldout": "capitals", "seed": 1, **grid_row.to_dict()}
        grid_dynamics = result.dynamics.query("layer == -9 and probe == @kind and heldout == 'capitals' and seed == 1")
        pd.testing.assert_frame_equal(alone.dynamics, grid_dynamics.reset_index(drop=True).dropna(axis=1, how="all"))


def test_make_split_and_evaluate_probe(small_saplma, model, shared_cache):
    held = make_split(small_saplma, "animals")
    assert held.kind == "category" and set(small_saplma.frame["topic"].iloc[held.test]) == {"animals"}
    assert make_split(small_saplma, "random").kind == "random"
    assert make_split(small_saplma, "animals", "within").kind == "within"
    with pytest.raises(ValueError, match=r"category split 'plants' is not in .*choose from \['animals', "):
        make_split(small_saplma, "plants")
    with pytest.raises(ValueError, match="split kind 'diagonal' is not one of category, random, within"):
        make_splits(small_saplma, "diagonal")

    X = Activations(model=model, cache_dir=shared_cache).layer(small_saplma.statements, -5)
    (cell,) = train_cells(X, small_saplma, -5, "linear", [Cell(held)], StudyConfig(controls=False))
    per_topic, confusion = evaluate_probe(cell.probe, X, small_saplma, held)
    assert per_topic.set_index("topic")["role"].to_dict() == {
        topic: "held out" if topic == "animals" else "trained on" for topic in small_saplma.topics}
    assert per_topic.set_index("topic").loc["animals", "accuracy"] == pytest.approx(cell.row["accuracy"])
    assert confusion["count"].sum() == cell.row["n_test"] == 40
    hits = confusion.query("actual == predicted")["count"].sum()
    assert hits / 40 == pytest.approx(cell.row["accuracy"])
