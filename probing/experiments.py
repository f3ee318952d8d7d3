"""Category splits, the layer x probe x split x seed grid, and the two controls.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline, make_union

from probing.constants import PROBE_KINDS, SPLIT_KINDS
from probing.models import check_device, default_device
from probing.probes import Probe, ProbeConfig, Task, fit_many
from probing.statements import StatementSet, require_topics

RANDOM_SPLIT = "random"
LayerLoader = Callable[[int], np.ndarray]
"""Returns the (statements, width) activations of one layer for the dataset."""


@dataclass(frozen=True)
class Split:
    """Rows to train on and rows to test on; ``name`` is the held-out topic or 'random'."""

    name: str
    train: np.ndarray
    test: np.ndarray


def category_splits(dataset: StatementSet) -> list[Split]:
    """Leave one topic out, for each topic."""
    require_topics(dataset)
    topics = dataset.frame["topic"].to_numpy()
    return [
        Split(topic, np.flatnonzero(topics != topic), np.flatnonzero(topics == topic))
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
        splits.append(Split(topic, rows[~is_test], rows[is_test]))
    return splits


def random_split(dataset: StatementSet, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """An in-distribution split: the union of the within-topic splits (stratified, groups kept whole)."""
    parts = within_topic_splits(dataset, test_fraction, seed)
    train = np.sort(np.concatenate([part.train for part in parts]))
    test = np.sort(np.concatenate([part.test for part in parts]))
    return Split(RANDOM_SPLIT, train, test)


@dataclass(frozen=True)
class GridConfig:
    """What to train: layers (negative = from the end) x probe kinds x splits x seeds."""

    layers: tuple[int, ...] = (-1, -5, -9, -13, -17)
    probes: tuple[str, ...] = ("linear", "tiny", "small", "medium")
    seeds: int = 1
    split: str = "category"  # "category" | "random" | "within"
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    linear_solver: str = "lbfgs"
    C: float = 0.1
    controls: bool = True
    device: str = "auto"  # where probes train: "auto" (cuda if available), "cpu", "cuda", "cuda:1" ...

    def __post_init__(self) -> None:
        if self.device != "auto":
            check_device(self.device)
        if not self.layers:
            raise ValueError("choose at least one layer")
        unknown = [p for p in self.probes if p not in PROBE_KINDS]
        if unknown or not self.probes:
            raise ValueError(f"unknown probe kind(s) {unknown}; choose from {PROBE_KINDS}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.split not in SPLIT_KINDS:
            raise ValueError(f"split must be one of {SPLIT_KINDS}, got {self.split!r}")
        self.probe_config("linear")  # validates the training settings

    @property
    def resolved_device(self) -> str:
        return default_device() if self.device == "auto" else self.device

    def check_layers(self, n_hidden_states: int) -> None:
        """Refuse layers the model does not have, before an extraction that may take hours."""
        outside = [layer for layer in self.layers if not -n_hidden_states <= layer < n_hidden_states]
        if outside:
            raise ValueError(
                f"layer(s) {outside} do not exist: this model has {n_hidden_states} hidden states (the "
                f"embeddings and {n_hidden_states - 1} blocks), so layers run from {-n_hidden_states} to "
                f"{n_hidden_states - 1} (negative = counted from the end). Fix --layers."
            )

    def probe_config(self, kind: str) -> ProbeConfig:
        solver = self.linear_solver if kind == "linear" else "adam"
        return ProbeConfig(kind=kind, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                           weight_decay=self.weight_decay, solver=solver, C=self.C)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class GridResult:
    """Tidy results of a grid: one row per probe, histories, and the fitted probes."""

    results: pd.DataFrame
    dynamics: pd.DataFrame
    probes: dict[tuple[int, str, str, int], Probe] = field(default_factory=dict, repr=False)
    shuffled_probes: dict[tuple[int, str, str, int], Probe] = field(default_factory=dict, repr=False)

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
    if kind == "category":
        return category_splits(dataset)
    if kind == "within":
        return within_topic_splits(dataset)
    return [random_split(dataset)]


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


def run_grid(
    dataset: StatementSet,
    load_layer: LayerLoader,
    config: GridConfig = GridConfig(),
    model_name: str = "",
    on_result: Callable[[dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> GridResult:
    """Train every (layer, probe kind, split, seed); per layer and kind all splits x seeds train together.

    ``on_result`` gets each finished result row, ``on_epoch`` each history record
    (with layer, probe, heldout and seed), ``on_progress`` (done, total) probe counts.
    """
    splits = make_splits(dataset, config.split)
    check_splits(dataset, splits, config.split)
    labels = dataset.labels
    text_only = {s.name: text_only_accuracy(dataset, s) for s in splits} if config.controls else {}
    members = [(split, seed) for split in splits for seed in range(config.seeds)]
    total, done = len(config.layers) * len(config.probes) * len(members), 0
    rows, dynamics = [], []
    probes, shuffled_probes = {}, {}
    for layer in config.layers:
        features = load_layer(layer)
        for kind in config.probes:
            tasks = [Task(s.train, labels[s.train], s.test, labels[s.test], split_seed(seed, s.name))
                     for s, seed in members]

            def record_epoch(member: int, record: dict, layer=layer, kind=kind) -> None:
                split, seed = members[member]
                tagged = {"layer": layer, "probe": kind, "heldout": split.name, "seed": seed, **record}
                dynamics.append(tagged)
                if on_epoch:
                    on_epoch(tagged)

            fitted = fit_many(features, tasks, config.probe_config(kind), on_epoch=record_epoch,
                              device=config.resolved_device)
            shuffled = (_shuffled_controls(features, tasks, config.probe_config(kind), config.resolved_device)
                        if config.controls else None)
            for index, ((split, seed), probe) in enumerate(zip(members, fitted)):
                key = (layer, kind, split.name, seed)
                probes[key] = probe
                X_test, y_test = features[split.test], labels[split.test]
                scores = probe.decision_function(X_test)  # once: accuracy is (score > 0), as in predict
                row = {
                    "model": model_name, "layer": layer, "probe": kind, "heldout": split.name,
                    "seed": seed, "accuracy": float(((scores > 0).astype(int) == y_test).mean()),
                    "auroc": _auroc(y_test, scores),
                    "n_train": len(split.train), "n_test": len(split.test),
                }
                if shuffled is not None:
                    shuffled_probes[key] = shuffled[index]
                    row["text_only_accuracy"] = text_only[split.name]
                    row["shuffled_accuracy"] = shuffled[index].score(X_test, y_test)
                rows.append(row)
                if on_result:
                    on_result(row)
                done += 1
                if on_progress:
                    on_progress(done, total)
    return GridResult(pd.DataFrame(rows), pd.DataFrame(dynamics), probes, shuffled_probes)


def shuffled_label_task(task: Task) -> Task:
    """The shuffled-label control of ``task``: its training rows with permuted labels, and a seed of its own."""
    seed = task.seed + 7
    return Task(task.train, np.random.default_rng(seed).permutation(task.y_train), seed=seed)


def _shuffled_controls(features: np.ndarray, tasks: Sequence[Task], config: ProbeConfig, device: str) -> list[Probe]:
    return fit_many(features, [shuffled_label_task(task) for task in tasks], config, device=device)


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve from average ranks (Mann-Whitney U); NaN with one class."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
