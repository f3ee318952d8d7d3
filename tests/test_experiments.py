import numpy as np
import pandas as pd
import pytest
import torch

from probing.activations import Activations
from probing.directions import compare_directions, cosine_matrix, off_diagonal_mean, random_baseline, sign_matrix
from probing.statements import StatementSet
from probing.experiments import (
    GridConfig, category_splits, check_splits, make_splits, random_split, run_grid, text_only_accuracy,
)


@pytest.fixture(scope="module")
def small_grid(small_saplma, model, shared_cache):
    activations = Activations(model=model, cache_dir=shared_cache)
    texts = small_saplma.statements
    config = GridConfig(layers=(-1, -9), probes=("linear", "tiny", "mass_mean"), seeds=2, epochs=2)
    finished, epochs = [], []
    result = run_grid(small_saplma, lambda layer: activations.layer(texts, layer), config,
                      model_name="embedded", on_result=finished.append, on_epoch=epochs.append)
    return result, finished, epochs


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
    assert {"model", "layer", "probe", "heldout", "seed", "accuracy", "auroc",
            "text_only_accuracy", "shuffled_accuracy"} <= set(rows.columns)
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
    from probing.builtin import load_builtin
    from probing.experiments import within_topic_splits

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

    from probing.experiments import _auroc

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + labels, 1)  # many ties
    assert _auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(_auroc(np.ones(4, dtype=int), scores[:4]))


def test_grid_config_checks_the_device_and_resolves_auto():
    with pytest.raises(ValueError, match="device 'gpu9'"):
        GridConfig(device="gpu9")
    with pytest.raises(ValueError, match="device 'cuda:99'"):  # no machine here has 100 GPUs
        GridConfig(device="cuda:99")
    assert GridConfig(device="cpu").resolved_device == "cpu"
    assert GridConfig().resolved_device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_splits_without_both_labels_are_refused_before_any_layer_is_loaded(small_saplma):
    def no_layer(layer):
        raise AssertionError("a layer was loaded before the splits were checked")

    frame = small_saplma.frame
    true_only = StatementSet(frame[frame["label"] == 1].copy(), "true-only")
    with pytest.raises(ValueError, match=r"true-only: all 120 statements are true \(label 1\)"):
        run_grid(true_only, no_layer, GridConfig(layers=(-1,), probes=("linear",)))

    # One animal statement left: beside one other topic, holding that out trains on the animal
    # alone; within the topic there is nothing to train on.
    one_animal = frame[(frame["topic"] == "animals") & (frame["label"] == 1)].head(1)
    pair = StatementSet(pd.concat([frame[frame["topic"] == "capitals"], one_animal]), "pair")
    with pytest.raises(ValueError, match=r"holding out topic 'capitals' leaves 1 statement\(s\) to train on, all true"):
        run_grid(pair, no_layer, GridConfig(layers=(-1,), probes=("linear",)))
    lonely = StatementSet(pd.concat([frame[frame["topic"] != "animals"], one_animal]), "lonely")
    with pytest.raises(ValueError, match=r"topic 'animals' \(--split within\) leaves no statements to train on"
                                         r".*add statements, or use --split category \(true/false per topic: "
                                         r"animals 1/0, capitals 20/20"):
        run_grid(lonely, no_layer, GridConfig(layers=(-1,), probes=("linear",), split="within"))
    check_splits(small_saplma, make_splits(small_saplma, "within"), "within")  # the full subset is fine


def test_layers_are_checked_against_the_model():
    GridConfig(layers=(-31, 0, 30)).check_layers(31)
    with pytest.raises(ValueError, match=r"layer\(s\) \[31, -32\] do not exist: this model has 31 hidden states "
                                         r"\(the embeddings and 30 blocks\), so layers run from -31 to 30"):
        GridConfig(layers=(-1, 31, -32)).check_layers(31)
