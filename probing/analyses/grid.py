"""Category splits, the layer x probe x split x seed grid, and the two controls.

One recipe trains probes: :func:`train_cells` trains the (split, seed) cells of one
(layer, probe kind) together (one ``fit_many``), with their controls and result rows. :func:`run_grid`
calls it per (layer, kind); the dashboard's Train page calls it with one cell.

Every probe result comes with two controls, because accuracy above chance
alone says little:

- ``text_only_accuracy``: a classifier on the statement text alone (word and
  character n-grams) trained on the same split; high values expose surface
  leaks in the data (SAPLMA's companies file is one);
- ``shuffled_accuracy``: the same probe trained on the same activations with the
  training labels shuffled; it should sit near 0.5.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union

from probing.analyses.uncertainty import auroc, auroc_delong_interval, fit_temperature, wilson_interval
from probing.study.config import StudyConfig
from probing.constants import PROBE_KINDS, SPLIT_KINDS
from probing.probes.estimators import Probe, Task, fit_many
from probing.data.statements import StatementSet, require_topics

RANDOM_SPLIT = "random"
LayerLoader = Callable[[int], np.ndarray]
"""Returns the (statements, width) activations of one layer for the dataset."""
EpochRecord = Callable[[dict], None]
"""Called with each history record, tagged with layer, probe, split, heldout and seed."""


@dataclass(frozen=True)
class Split:
    """Rows to train on and rows to test on; ``name`` is the held-out (or, for ``within``, the
    only) topic, or 'random'; ``kind`` is one of ``SPLIT_KINDS``."""

    name: str
    train: np.ndarray
    test: np.ndarray
    kind: str


def category_splits(dataset: StatementSet) -> list[Split]:
    """Leave one topic out, for each topic."""
    require_topics(dataset)
    topics = dataset.frame["topic"].to_numpy()
    return [
        Split(topic, np.flatnonzero(topics != topic), np.flatnonzero(topics == topic), "category")
        for topic in dataset.topics
    ]


def within_topic_splits(dataset: StatementSet, test_fraction: float = 0.2, seed: int = 0) -> list[Split]:
    """Per topic, train and test on that topic alone (the in-distribution reference for category splits).

    Stratified by label. Where the set has a ``group`` column (the built-in set:
    statements that share subjects and objects), whole groups go to one side, so
    no fact is on both.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    frame = dataset.frame
    splits = []
    for topic in dataset.topics:
        rows = np.flatnonzero(frame["topic"].to_numpy() == topic)
        if "group" in frame:
            groups = rng.permutation(frame["group"].iloc[rows].unique())
            held = set(groups[: max(1, round(len(groups) * test_fraction))].tolist())
            is_test = frame["group"].iloc[rows].isin(held).to_numpy()
        else:
            is_test = np.zeros(len(rows), dtype=bool)
            for label in (0, 1):
                members = np.flatnonzero(frame["label"].iloc[rows].to_numpy() == label)
                is_test[rng.permutation(members)[: max(1, round(len(members) * test_fraction))]] = True
        splits.append(Split(topic, rows[~is_test], rows[is_test], "within"))
    return splits


def random_split(dataset: StatementSet, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """An in-distribution split: the union of the within-topic splits (stratified, groups kept whole)."""
    parts = within_topic_splits(dataset, test_fraction, seed)
    train = np.sort(np.concatenate([part.train for part in parts]))
    test = np.sort(np.concatenate([part.test for part in parts]))
    return Split(RANDOM_SPLIT, train, test, RANDOM_SPLIT)


@dataclass
class GridResult:
    """Tidy results of a grid: one row per probe, histories, held-out predictions, and the fitted probes."""

    results: pd.DataFrame
    dynamics: pd.DataFrame
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    """One row per held-out statement per probe (:data:`PREDICTION_COLUMNS`)."""
    probes: dict[tuple[int, str, str, int], Probe] = field(default_factory=dict, repr=False)
    shuffled_probes: dict[tuple[int, str, str, int], Probe] = field(default_factory=dict, repr=False)
    final_probes: dict[tuple[int, str], Probe] = field(default_factory=dict, repr=False)
    """With ``run_grid(final=True)``: per (layer, kind), the probe trained on every statement."""

    def accuracy_table(self, statistic: str = "mean") -> pd.DataFrame:
        """Rows = probe kinds, columns = layers (as in docs/reference.md), over splits and seeds."""
        return accuracy_table(self.results, statistic)


def accuracy_long(results: pd.DataFrame, statistic: str = "mean") -> pd.DataFrame:
    """probe, layer, accuracy, splits: the ``statistic`` (mean or max) over splits of the
    per-split accuracy (itself the mean over seeds), and how many splits are in. Works on a
    partial grid, too.
    """
    if results.empty:
        return pd.DataFrame(columns=["probe", "layer", "accuracy", "splits"])
    per_split = results.groupby(["probe", "layer", "heldout"], sort=False)["accuracy"].mean()
    grouped = per_split.groupby(["probe", "layer"], sort=False)
    return grouped.agg(statistic).rename("accuracy").to_frame().assign(splits=grouped.size()).reset_index()


def accuracy_table(results: pd.DataFrame, statistic: str = "mean") -> pd.DataFrame:
    """The study's layout of :func:`accuracy_long`: a row per probe kind, a column per layer
    from the deepest (-17) to -1."""
    if results.empty:
        return pd.DataFrame(columns=["probe"])
    table = accuracy_long(results, statistic).pivot(index="probe", columns="layer", values="accuracy")
    table = table.loc[[p for p in PROBE_KINDS if p in table.index], sorted(table.columns)]
    table.columns = [str(c) for c in table.columns]
    return table.reset_index()


def make_splits(dataset: StatementSet, kind: str) -> list[Split]:
    """``category``: leave one topic out; ``random``: one stratified split; ``within``: per-topic splits."""
    if kind not in SPLIT_KINDS:
        raise ValueError(f"split kind {kind!r} is not one of {', '.join(SPLIT_KINDS)}")
    if kind == "category":
        return category_splits(dataset)
    if kind == "within":
        return within_topic_splits(dataset)
    return [random_split(dataset)]


def make_split(dataset: StatementSet, name: str, kind: str | None = None) -> Split:
    """The split the grid trains as ``name`` (a topic, or 'random'); ``kind`` defaults to
    ``random`` for 'random' and ``category`` (that topic held out) otherwise."""
    kind = kind or (RANDOM_SPLIT if name == RANDOM_SPLIT else "category")
    splits = make_splits(dataset, kind)
    for split in splits:
        if split.name == name:
            return split
    raise ValueError(f"{kind} split {name!r} is not in {dataset.name}: choose from {[s.name for s in splits]}")


def check_splits(dataset: StatementSet, splits: Sequence[Split], kind: str) -> None:
    """Refuse splits no probe can be trained or tested on, before anything is extracted or fitted.

    Every training set needs true and false statements and every test set some; otherwise
    scikit-learn and the probes fail deep inside with messages that name no split or topic.
    """
    labels = dataset.labels
    if len(np.unique(labels)) < 2:
        only = "true (label 1)" if labels[0] == 1 else "false (label 0)"
        raise ValueError(f"{dataset.name}: all {len(dataset)} statements are {only}, but probes learn to tell "
                         "true from false statements. Check the label column, or add statements of the other label.")
    for split in splits:
        trained_on = np.unique(labels[split.train])
        if len(trained_on) == 2 and len(split.test):
            continue
        if not len(split.train):
            problem = "leaves no statements to train on"
        elif len(trained_on) < 2:
            problem = (f"leaves {len(split.train)} statement(s) to train on, all "
                       f"{'true' if trained_on[0] == 1 else 'false'}")
        else:
            problem = "leaves no statements to test on"
        where = {"category": f"holding out topic {split.name!r}", "within": f"topic {split.name!r} (--split within)",
                 RANDOM_SPLIT: "the random split"}[kind]
        advice = ("Add statements, or drop or merge the small topics" if kind == "category" else
                  "Each topic needs at least 2 true and 2 false statements here: add statements, "
                  "or use --split category")
        raise ValueError(f"{where} {problem}, but a probe needs true and false statements to train on and some to "
                         f"test on. {advice} (true/false per topic: {_label_counts(dataset)}).")


def _label_counts(dataset: StatementSet, shown: int = 6) -> str:
    """The smallest topics' true/false counts, e.g. ``tiny 1/0, animals 20/20``."""
    counts = dataset.frame.groupby("topic")["label"].agg(["sum", "size"]).sort_values("size", kind="stable")
    parts = [f"{topic} {true}/{size - true}" for topic, true, size in counts.head(shown).itertuples()]
    return ", ".join(parts) + (f", ... {len(counts) - shown} more" if len(counts) > shown else "")


def split_seed(seed: int, split: str) -> int:
    """Each split and seed gets its own stream, the same whatever else is trained."""
    return seed * 1_000_003 + zlib.crc32(split.encode())


def text_only_accuracy(dataset: StatementSet, split: Split) -> float:
    """Accuracy of word+character n-gram logistic regression on the statement text alone."""
    texts = np.array(dataset.statements, dtype=object)
    labels = dataset.labels
    model = make_pipeline(
        make_union(
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), lowercase=False, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), lowercase=False, min_df=2),
        ),
        LogisticRegression(C=1.0, max_iter=2000),
    )
    model.fit(texts[split.train], labels[split.train])
    return float((model.predict(texts[split.test]) == labels[split.test]).mean())


PREDICTION_COLUMNS = ("layer", "probe", "split", "heldout", "seed", "row", "label", "score")
"""A held-out prediction: the cell, the statement (``row``: its index in the dataset), its label and the
probe's decision function (P(true) = sigmoid(score); predicted true iff score > 0, as ``accuracy``)."""
SCORE_DIGITS = 6
TEMPERATURE_STATEMENTS = 2000


def significant(values: np.ndarray, digits: int = SCORE_DIGITS) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits as float64 (each the double nearest its
    decimal, so it is written and read back exactly; a sign is never lost)."""
    values = np.asarray(values, dtype=np.float64)
    magnitude = np.floor(np.log10(np.abs(np.where(values == 0, 1.0, values))))
    scale = 10.0 ** np.abs(digits - 1 - magnitude)  # an exact power of ten, so one division rounds correctly
    return np.where(digits - 1 - magnitude >= 0, np.round(values * scale) / scale, np.round(values / scale) * scale)


@dataclass(frozen=True)
class Cell:
    """One probe of a grid within its (layer, kind): a split and a seed."""

    split: Split
    seed: int = 0


@dataclass
class CellResult:
    """A trained cell: its probe, its shuffled-label control, its result row, its training history and its
    held-out predictions (:data:`PREDICTION_COLUMNS`)."""

    layer: int
    kind: str
    cell: Cell
    probe: Probe
    shuffled: Probe | None
    row: dict
    dynamics: pd.DataFrame  # the history records, tagged with layer, probe, split, heldout, seed
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def key(self) -> tuple[int, str, str, int]:
        """(layer, kind, split name, seed): how a grid's probes are keyed."""
        return self.layer, self.kind, self.cell.split.name, self.cell.seed


def cell_task(cell: Cell, labels: np.ndarray) -> Task:
    """The training task of ``cell``, with its seed from :func:`split_seed`."""
    split = cell.split
    return Task(split.train, labels[split.train], split.test, labels[split.test], split_seed(cell.seed, split.name))


def train_cells(
    features: np.ndarray,
    dataset: StatementSet,
    layer: int,
    kind: str,
    cells: Sequence[Cell],
    config: StudyConfig,
    *,
    model_name: str = "",
    on_epoch: EpochRecord | None = None,
    text_only: Mapping[tuple[str, str], float] | None = None,
    final: list[Probe] | None = None,
) -> list[CellResult]:
    """Train the ``kind`` probes of ``cells`` on one layer's ``features`` together, with their controls.

    The one recipe for a probe of a study: the grid calls it per (layer, kind), the dashboard's
    Train page with one cell; a probe is the same, bit for bit, in a stack or alone. Result rows
    carry model, layer, probe, split, heldout, seed, accuracy with its 95 % Wilson interval
    (accuracy_lower, accuracy_upper), auroc with DeLong's (auroc_lower, auroc_upper), n_train, n_test,
    the temperature that calibrates the probe on its training statements (for calibration.csv) and, with
    ``config.controls``, text_only_accuracy and shuffled_accuracy. ``text_only`` holds
    text-only accuracies already computed, by (split kind, split name); the rest are computed here.
    Given a list as ``final``, the study's final probe of (layer, kind), trained on every statement
    (:func:`final_task`), joins the stack and is appended to it.
    """
    labels = dataset.labels
    tasks = [cell_task(cell, labels) for cell in cells]
    records: list[list[dict]] = [[] for _ in cells]

    def record_epoch(member: int, record: dict) -> None:
        if member == len(cells):  # the final probe: no cell, no history
            return
        split, seed = cells[member].split, cells[member].seed
        tagged = {"layer": layer, "probe": kind, "split": split.kind, "heldout": split.name, "seed": seed, **record}
        records[member].append(tagged)
        if on_epoch:
            on_epoch(tagged)

    probe_config = config.probe_config(kind)
    stack = tasks if final is None else [*tasks, final_task(dataset)]
    fitted = fit_many(features, stack, probe_config, on_epoch=record_epoch, device=config.resolved_device)
    if final is not None:
        final.append(fitted.pop())
    shuffled: list[Probe | None] = (
        fit_many(features, [shuffled_label_task(task) for task in tasks], probe_config, device=config.resolved_device)
        if config.controls else [None] * len(cells))
    text_only = dict(text_only or {})
    results = []
    for cell, probe, control, history in zip(cells, fitted, shuffled, records):
        split = cell.split
        X_test, y_test = features[split.test], labels[split.test]
        scores = probe.decision_function(X_test)  # once: accuracy is (score > 0), as in predict
        correct = int(((scores > 0).astype(int) == y_test).sum())
        lower, upper = wilson_interval(correct, len(y_test))
        auroc_lower, auroc_upper = auroc_delong_interval(y_test, scores)
        row = {
            "model": model_name, "layer": layer, "probe": kind, "split": split.kind, "heldout": split.name,
            "seed": cell.seed, "accuracy": correct / len(y_test), "accuracy_lower": lower, "accuracy_upper": upper,
            "auroc": auroc(y_test, scores), "auroc_lower": auroc_lower, "auroc_upper": auroc_upper,
            "n_train": len(split.train), "n_test": len(split.test),
            "temperature": cell_temperature(probe, features, labels, cell),
        }
        predictions = pd.DataFrame(dict(zip(PREDICTION_COLUMNS, (
            np.full(len(y_test), layer, dtype=np.int64), kind, split.kind, split.name,
            np.full(len(y_test), cell.seed, dtype=np.int64), split.test.astype(np.int64), y_test.astype(np.int64),
            significant(scores)))))
        if control is not None:
            if (split.kind, split.name) not in text_only:
                text_only[split.kind, split.name] = text_only_accuracy(dataset, split)
            row["text_only_accuracy"] = text_only[split.kind, split.name]
            row["shuffled_accuracy"] = control.score(X_test, y_test)
        results.append(CellResult(layer, kind, cell, probe, control, row, pd.DataFrame(history), predictions))
    return results


def cell_temperature(probe: Probe, features: np.ndarray, labels: np.ndarray, cell: Cell,
                     most: int = TEMPERATURE_STATEMENTS) -> float:
    """The temperature calibrating ``probe``'s P(true) on its training statements (``fit_temperature``), from
    at most ``most`` of them drawn with the cell's seed: one number needs no more, and the forward pass over
    every training statement would cost more than the rest of a cell's statistics."""
    train = cell.split.train
    if len(train) > most:
        rng = np.random.default_rng(split_seed(cell.seed, cell.split.name))
        train = np.sort(rng.choice(train, most, replace=False))
    return fit_temperature(probe.decision_function(features[train]), labels[train])


def final_task(dataset: StatementSet) -> Task:
    """The task of a study's final probes: every statement, seed 0, nothing held out (what ``score`` uses)."""
    return Task(np.arange(len(dataset)), dataset.labels, seed=0)


def run_grid(
    dataset: StatementSet,
    load_layer: LayerLoader,
    config: StudyConfig = StudyConfig(),
    model_name: str = "",
    on_result: Callable[[dict], None] | None = None,
    on_epoch: EpochRecord | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    final: bool = False,
) -> GridResult:
    """Train every (layer, probe kind, split, seed) of ``config.split``: per layer and kind, all
    splits x seeds train together (:func:`train_cells`), and with ``final`` the study's final probe
    of that (layer, kind) in the same stack (``GridResult.final_probes``; one more count each).

    ``on_result`` gets each finished result row, ``on_epoch`` each history record
    (with layer, probe, split, heldout and seed), ``on_progress`` (done, total) probe counts.
    """
    splits = make_splits(dataset, config.split)
    check_splits(dataset, splits, config.split)
    text_only = {(s.kind, s.name): text_only_accuracy(dataset, s) for s in splits} if config.controls else None
    cells = [Cell(split, seed) for split in splits for seed in range(config.seeds)]
    total = len(config.layers) * len(config.probes) * (len(cells) + final)
    trained: list[CellResult] = []
    finals: dict[tuple[int, str], Probe] = {}
    for layer in config.layers:
        features = load_layer(layer)
        for kind in config.probes:
            stacked: list[Probe] | None = [] if final else None
            for result in train_cells(features, dataset, layer, kind, cells, config, model_name=model_name,
                                      on_epoch=on_epoch, text_only=text_only, final=stacked):
                trained.append(result)
                if on_result:
                    on_result(result.row)
                if on_progress:
                    on_progress(len(trained) + len(finals), total)
            if stacked:
                finals[(layer, kind)] = stacked[0]
                if on_progress:
                    on_progress(len(trained) + len(finals), total)
    dynamics = [result.dynamics for result in trained if not result.dynamics.empty]
    return GridResult(
        pd.DataFrame([result.row for result in trained]),
        pd.concat(dynamics, ignore_index=True) if dynamics else pd.DataFrame(),
        pd.concat([result.predictions for result in trained], ignore_index=True) if trained else pd.DataFrame(),
        {result.key: result.probe for result in trained},
        {result.key: result.shuffled for result in trained if result.shuffled is not None},
        finals,
    )


def evaluate_probe(probe: Probe, X: np.ndarray, dataset: StatementSet,
                   split: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-topic accuracy (held-out rows where a topic has them, else training rows) and the test confusion matrix.

    ``X``: the activations of every statement of ``dataset``. Frames: (topic, role, n, accuracy)
    and (actual, predicted, count).
    """
    labels = dataset.labels
    topics = dataset.frame["topic"].to_numpy()
    predicted = probe.predict(X)
    test = np.zeros(len(labels), dtype=bool)
    test[split.test] = True
    rows = []
    for topic in dataset.topics:
        in_topic = topics == topic
        role, chosen = ("held out", in_topic & test) if (in_topic & test).any() else ("trained on", in_topic & ~test)
        if chosen.any():
            rows.append({"topic": topic, "role": role, "n": int(chosen.sum()),
                         "accuracy": float((predicted[chosen] == labels[chosen]).mean())})
    names = {1: "true", 0: "false"}
    confusion = [
        {"actual": names[a], "predicted": names[p],
         "count": int(((labels[split.test] == a) & (predicted[split.test] == p)).sum())}
        for a in (1, 0) for p in (1, 0)
    ]
    return pd.DataFrame(rows), pd.DataFrame(confusion)


def shuffled_label_task(task: Task) -> Task:
    """The shuffled-label control of ``task``: its training rows with permuted labels, and a seed of its own."""
    seed = task.seed + 7
    return Task(task.train, np.random.default_rng(seed).permutation(task.y_train), seed=seed)
