"""Where does the truth direction hold? Train on one set of statements, test on another.

Three analyses beside the study's category splits, one layer's activations at a time:

- **topics**, the generalization matrix (Marks & Tegmark 2023): train on topic A, test on topic B,
  for every pair; the diagonal is within-topic accuracy on a group-held-out split (no subject
  or its paired objects on both sides), and the row "all other topics" is the study's category
  split, trained with the grid's own recipe (:func:`probing.analyses.grid.train_cells`).
- **polarity**: train on affirmative statements, on negated ones, or on both, and test on held-out
  facts of each polarity (one group-held-out split, so a fact's affirmative and negated forms
  are never on both sides). A probe that reads affirmation rather than truth flips here.
- **CCS** (Burns et al. 2022): a direction found without labels from pairs of a statement and its
  negation, with its accuracy over seeds and its cosine to the supervised directions.

Every transfer comes with the text-only control of the same split; every analysis reports
accuracy and AUROC. :func:`truth_subspace` gives the (t_G, t_P) picture of Bürger et al. 2024.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from probing.probes.ccs import CCSProbe
from probing.study.config import StudyConfig
from probing.constants import POLARITIES
from probing.analyses.grid import (
    Cell, Split, auroc, category_splits, random_split, text_only_accuracy, train_cells, within_topic_splits,
)
from probing.probes.numerics import sigmoid
from probing.data.statements import DatasetError, StatementSet
from probing.probes.ttpd import TTPDProbe

ALL_OTHERS = "all other topics"
BOTH = "all"
ANALYSES = ("topics", "polarity")
LayerLoader = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class Transfer:
    """One train/test pair: ``train`` and ``test`` name the sets (topics or polarities), ``split`` holds the rows."""

    analysis: str  # "topics" | "polarity"
    train: str
    test: str
    split: Split


def topic_transfers(dataset: StatementSet) -> list[Transfer]:
    """Every (train topic, test topic) pair, then (all other topics, test topic) for each topic."""
    topics = dataset.frame["topic"].to_numpy()
    rows = {topic: np.flatnonzero(topics == topic) for topic in dataset.topics}
    within = {split.name: split for split in within_topic_splits(dataset)}
    transfers = [
        Transfer("topics", a, b, within[a] if a == b else Split(f"{a} > {b}", rows[a], rows[b], "matrix"))
        for a in dataset.topics for b in dataset.topics
    ]
    return transfers + [Transfer("topics", ALL_OTHERS, split.name, split) for split in category_splits(dataset)]


def polarity_transfers(dataset: StatementSet) -> list[Transfer]:
    """(affirmative | negated | all) -> (affirmative | negated) on one group-held-out split; none
    when the set has one polarity."""
    polarity = dataset.frame["polarity"].to_numpy()
    if len(set(polarity)) < 2:
        return []
    split = random_split(dataset)
    transfers = []
    for train in (*POLARITIES, BOTH):
        rows = split.train if train == BOTH else split.train[polarity[split.train] == train]
        for test in POLARITIES:
            held = split.test[polarity[split.test] == test]
            transfers.append(Transfer("polarity", train, test, Split(f"{train} > {test}", rows, held, "polarity")))
    return transfers


def centring_groups(dataset: StatementSet) -> np.ndarray:
    """TTPD centres each (topic, polarity) on its own, as Bürger et al. centre each data set."""
    return (dataset.frame["topic"] + "|" + dataset.frame["polarity"]).to_numpy()


def fit_ttpd(features: np.ndarray, dataset: StatementSet, rows: np.ndarray) -> TTPDProbe:
    frame = dataset.frame
    return TTPDProbe().fit(features[rows], dataset.labels[rows], frame["polarity"].to_numpy()[rows],
                           centring_groups(dataset)[rows])


def transfer_layer(features: np.ndarray, dataset: StatementSet, layer: int, transfers: list[Transfer],
                   config: StudyConfig) -> tuple[list[dict], list[dict]]:
    """Train every probe of ``config.matrix_probes`` on every transfer at one layer: result rows
    (accuracy, AUROC, sizes) and, per misclassified test statement, an error row."""
    labels = dataset.labels
    rows, errors = [], []
    plain = replace(config, controls=False)  # the text-only control is per transfer, added by the caller
    for kind in config.matrix_probes:
        if kind == "ttpd":
            scored = [(transfer, fit_ttpd(features, dataset, transfer.split.train).decision_function(
                features[transfer.split.test])) for transfer in transfers]
        else:
            cells = train_cells(features, dataset, layer, kind, [Cell(t.split) for t in transfers], plain)
            scored = [(transfer, cell.probe.decision_function(features[transfer.split.test]))
                      for transfer, cell in zip(transfers, cells)]
        for transfer, scores in scored:
            test = transfer.split.test
            y = labels[test]
            common = {"analysis": transfer.analysis, "layer": layer, "probe": kind, "train": transfer.train,
                      "test": transfer.test}
            rows.append({**common, "accuracy": float(((scores > 0) == y).mean()) if len(y) else np.nan,
                         "auroc": auroc(y, scores), "n_train": len(transfer.split.train), "n_test": len(test)})
            wrong = (scores > 0) != y
            p_true = sigmoid(scores[wrong])
            errors += [{**common, "row": int(row), "p_true": float(p)} for row, p in zip(test[wrong], p_true)]
    return rows, errors


def ccs_layer(features: np.ndarray, dataset: StatementSet, layer: int, seeds: int) -> list[dict]:
    """CCS on the pairs of the group-held-out split's training facts, ``seeds`` times: accuracy on the
    held-out statements (each read with its own side's normalisation), and the cosine of its direction
    to the linear and mass-mean directions trained with labels on the same statements."""
    pairs = dataset.pairs()
    split = random_split(dataset)
    in_test = np.zeros(len(dataset), dtype=bool)
    in_test[split.test] = True
    train_pairs, test_pairs = pairs[~in_test[pairs[:, 0]]], pairs[in_test[pairs[:, 0]]]
    labels = dataset.labels
    train_rows = train_pairs.ravel()
    supervised = {kind: cell.probe.direction_ for kind in ("linear", "mass_mean") for cell in train_cells(
        features, dataset, layer, kind, [Cell(Split("ccs pairs", train_rows, train_rows, "polarity"))],
        StudyConfig(controls=False))}
    test_rows = test_pairs.T.ravel()  # affirmative ones, then negated ones
    negated = np.repeat([False, True], len(test_pairs))
    result = []
    for seed in range(seeds):
        probe = CCSProbe(seed=seed).fit(features[train_pairs[:, 0]], features[train_pairs[:, 1]],
                                        labels[train_pairs[:, 0]])
        correct = probe.predict(features[test_rows], negated) == labels[test_rows]
        result.append({
            "layer": layer, "seed": seed, "accuracy": float(correct.mean()),
            "accuracy_affirmative": float(correct[~negated].mean()), "accuracy_negated": float(correct[negated].mean()),
            "pair_accuracy": float(((probe.pair_scores(features[test_pairs[:, 0]], features[test_pairs[:, 1]]) > 0.5)
                                    == labels[test_pairs[:, 0]]).mean()),
            "loss": float(probe.loss_), "train_pairs": len(train_pairs), "test_pairs": len(test_pairs),
            **{f"cosine_{kind}": float(probe.direction_ @ direction) for kind, direction in supervised.items()},
        })
    return result


@dataclass
class Generalization:
    """The analyses' tables: ``results`` (analysis, layer, probe, train, test, accuracy, auroc, n_train,
    n_test, text_only_accuracy), ``errors`` (the misclassified test statements of each, by row of
    ``statements``), ``ccs`` (layer, seed, accuracies, loss, cosines) and the statements themselves."""

    results: pd.DataFrame
    errors: pd.DataFrame
    ccs: pd.DataFrame
    statements: pd.DataFrame
    notes: list[str]


def run_generalization(dataset: StatementSet, load_layer: LayerLoader, config: StudyConfig,
                       on_progress: Callable[[int, int], None] | None = None) -> Generalization:
    """The topic matrix at every layer of ``config.layers`` for ``config.matrix_probes``; the polarity
    transfer where the set has both polarities; CCS where it has pairs (``config.ccs_seeds`` > 0).
    ``notes`` say what was left out and why. ``on_progress`` counts (layers done, layers)."""
    notes = []
    transfers = topic_transfers(dataset) if len(dataset.topics) > 1 else []
    if not transfers:
        notes.append(f"{dataset.name} has one topic: no topic matrix (it needs two or more)")
    polarity = polarity_transfers(dataset)
    if not polarity:
        notes.append(f"{dataset.name} has only {dataset.polarities[0]} statements: no polarity transfer "
                     "(the built-in set has negated ones; a CSV can mark them in a polarity column)")
    transfers += polarity
    labels = dataset.labels
    usable = [len(np.unique(labels[t.split.train])) == 2 and len(t.split.test) > 0 for t in transfers]
    unusable = [t for t, ok in zip(transfers, usable) if not ok]
    if unusable:
        notes.append(f"{len(unusable)} transfer(s) left out, their training statements all of one label or no "
                     f"statement to test on: {', '.join(f'{t.train} > {t.test}' for t in unusable[:5])}")
        transfers = [t for t, ok in zip(transfers, usable) if ok]
    ccs_seeds = config.ccs_seeds
    if ccs_seeds:
        try:
            dataset.pairs()
        except DatasetError as error:
            notes.append(f"no CCS: {error}")
            ccs_seeds = 0
    if not transfers and not ccs_seeds:
        raise DatasetError(f"{dataset.name}: nothing to analyse: " + "; ".join(notes))
    text_only = {(t.analysis, t.train, t.test): text_only_accuracy(dataset, t.split) for t in transfers}
    rows, errors, ccs = [], [], []
    for done, layer in enumerate(config.layers):
        features = load_layer(layer)
        if transfers:
            layer_rows, layer_errors = transfer_layer(features, dataset, layer, transfers, config)
            rows += layer_rows
            errors += layer_errors
        if ccs_seeds:
            ccs += ccs_layer(features, dataset, layer, ccs_seeds)
        if on_progress:
            on_progress(done + 1, len(config.layers))
    results = pd.DataFrame(rows)
    if not results.empty:
        results["text_only_accuracy"] = [text_only[key] for key in zip(results.analysis, results.train, results.test)]
    error_columns = ["analysis", "layer", "probe", "train", "test", "row", "p_true"]
    statements = dataset.frame[["statement", "label", "topic", "polarity"]].copy()
    return Generalization(results, pd.DataFrame(errors, columns=error_columns), pd.DataFrame(ccs), statements, notes)


def matrix(results: pd.DataFrame, layer: int, probe: str, value: str = "accuracy") -> pd.DataFrame:
    """The topic matrix of one layer and probe: rows = training set (topics, then all other topics),
    columns = test topic. ``value``: accuracy, auroc or text_only_accuracy."""
    chosen = results[(results.analysis == "topics") & (results.layer == layer) & (results.probe == probe)]
    table = chosen.pivot(index="train", columns="test", values=value)
    topics = list(dict.fromkeys(chosen.test))
    return table.loc[[*topics, ALL_OTHERS], topics]


def matrix_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per layer and probe, the topic matrix in three numbers: mean accuracy within a topic (the
    diagonal), from one topic to another (off the diagonal) and from all other topics (the category
    split); the text-only control's from one topic to another beside them."""
    chosen = results[results.analysis == "topics"] if not results.empty else results
    if chosen.empty:
        return pd.DataFrame()
    kind = np.where(chosen.train == ALL_OTHERS, "all_others", np.where(chosen.train == chosen.test, "within", "across"))
    table = chosen.assign(kind=kind).pivot_table(index=["layer", "probe"], columns="kind", values="accuracy",
                                                 sort=False)
    across = chosen[kind == "across"].groupby(["layer", "probe"], sort=False)["text_only_accuracy"].mean()
    table["text_only_across"] = across
    return table[["within", "across", "all_others", "text_only_across"]].reset_index()


def polarity_table(results: pd.DataFrame, value: str = "accuracy") -> pd.DataFrame:
    """Polarity transfer per layer and probe: a column per (train -> test) polarity pair."""
    chosen = results[results.analysis == "polarity"]
    if chosen.empty:
        return pd.DataFrame()
    chosen = chosen.assign(transfer=chosen.train + " > " + chosen.test)
    table = chosen.pivot_table(index=["layer", "probe"], columns="transfer", values=value, sort=False)
    order = [f"{train} > {test}" for train in (*POLARITIES, BOTH) for test in POLARITIES]
    return table[[c for c in order if c in table.columns]].reset_index()


def ccs_summary(ccs: pd.DataFrame) -> pd.DataFrame:
    """Per layer: CCS accuracy, its spread over seeds, and the mean cosines to the supervised directions."""
    if ccs.empty:
        return pd.DataFrame()
    grouped = ccs.groupby("layer", sort=False)
    return grouped.agg(seeds=("seed", "size"), accuracy=("accuracy", "mean"), accuracy_std=("accuracy", "std"),
                       accuracy_min=("accuracy", "min"), accuracy_max=("accuracy", "max"),
                       cosine_linear=("cosine_linear", "mean"),
                       cosine_mass_mean=("cosine_mass_mean", "mean")).reset_index()


def truth_subspace(features: np.ndarray, dataset: StatementSet,
                   config: StudyConfig = StudyConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """TTPD's picture at one layer: every statement projected on (t_G, t_P), fitted on all of them, and
    the cosine of t_G to the linear and mass-mean directions of each category split."""
    probe = fit_ttpd(features, dataset, np.arange(len(dataset)))
    projected = probe.project(features, centring_groups(dataset))  # as Bürger et al. draw it
    frame = dataset.frame
    points = pd.DataFrame({"t_g": projected[:, 0], "t_p": projected[:, 1],
                           "label": np.where(frame["label"].to_numpy() == 1, "true", "false"),
                           "polarity": frame["polarity"].to_numpy(), "topic": frame["topic"].to_numpy(),
                           "statement": frame["statement"].to_numpy()})
    cosines = []
    if len(dataset.topics) > 1:
        splits = category_splits(dataset)
        for kind in ("linear", "mass_mean"):
            cells = train_cells(features, dataset, 0, kind, [Cell(split) for split in splits],
                                replace(config, controls=False))
            cosines += [{"probe": kind, "heldout": cell.cell.split.name,
                         "cosine": float(cell.probe.direction_ @ probe.direction_)} for cell in cells]
    return points, pd.DataFrame(cosines, columns=["probe", "heldout", "cosine"])
