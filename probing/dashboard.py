"""Non-streamlit helpers for the dashboard: the shared model, background jobs, result shapes.

Nothing here imports streamlit. The app keeps one :class:`ModelHolder` per process
(via ``st.cache_resource``), one :class:`Job` at a time per browser session, and
finished results in session state *and* on disk (:class:`ResultStore`), so a rerun,
a click elsewhere or a reopened browser tab never loses finished work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from probing.activations import Activations
from probing.experiments import (
    RANDOM_SPLIT, GridConfig, GridResult, Split, accuracy_table, make_splits, run_grid, shuffled_label_task,
    split_seed, text_only_accuracy,
)
from probing.models import EMBEDDED, PRESETS, LoadedModel, ModelLoadError, ModelSpec, load_model
from probing.probes import Probe, Task, make_probe
from probing.results import markdown_table
from probing.statements import SAPLMA_SUFFIX, DatasetError, StatementSet
from probing.storage import private_dir

EXAMPLES = (
    "The city of Paris is located in France.",
    "The city of Paris is located in Japan.",
    "The chemical symbol for gold is Au.",
    "The chemical symbol for gold is Fe.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The capital of Australia is Vienna.",
)
MODEL_CHOICES = {
    "Embedded SmolLM2-135M (CPU)": EMBEDDED,
    "Llama-2-7B": "llama-2-7b",
    "Llama-2-13B": "llama-2-13b",
    "Other: hub id, folder or .gguf": "",
}


# ----------------------------------------------------------------------------- settings


def default_cache_dir() -> Path:
    """``$PROBING_CACHE`` or ``./cache``: activations, converted models and dashboard results."""
    return Path(os.environ.get("PROBING_CACHE", "cache"))


def data_roots(app_root: Path, extra: Sequence[str | Path] = ()) -> list[Path]:
    """Folders the dashboard may read statement sets from, resolved, those that exist.

    The project's ``data/``, the shared datasets beside the project (``../shared/datasets``),
    ``$PROBING_DATA_ROOTS`` (separated by ``os.pathsep``) and ``extra`` (the app's ``--data-root``).
    A browser user types paths on the server: anything else on it stays out of reach.
    """
    candidates = [app_root / "data", app_root.parent / "shared" / "datasets", *extra]
    candidates += [Path(p) for p in os.environ.get("PROBING_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    roots = [Path(c).expanduser().resolve() for c in candidates]
    return list(dict.fromkeys(root for root in roots if root.is_dir()))


def path_under_roots(path: str | Path, roots: Sequence[Path]) -> Path:
    """``path`` resolved (links followed), if it lies inside one of ``roots``; else a DatasetError."""
    resolved = Path(path).expanduser().resolve()
    if any(resolved.is_relative_to(root) for root in roots):
        return resolved
    allowed = ", ".join(map(str, roots)) or "none (no data/ folder and no ../shared/datasets)"
    raise DatasetError(
        f"{path} is outside the folders this dashboard reads statement sets from ({allowed}). "
        "Put the data in one of them, or allow another folder when starting the app: "
        "`streamlit run app.py -- --data-root DIR` or PROBING_DATA_ROOTS=DIR."
    )


def statement_sets_under(roots: Sequence[Path], depth: int = 2) -> list[Path]:
    """Folders of ``<topic>_true_false.csv`` files and single CSV files found in ``roots`` (sorted)."""
    found: set[Path] = set()
    for root in roots:
        if any(root.glob(f"*{SAPLMA_SUFFIX}")):
            found.add(root)
        for level in range(depth + 1):
            for path in root.glob("/".join(["*"] * (level + 1))):
                if path.is_dir() and any(path.glob(f"*{SAPLMA_SUFFIX}")):
                    found.add(path)
                elif path.suffix == ".csv" and not path.name.endswith(SAPLMA_SUFFIX):
                    found.add(path)
    return sorted(found)


def app_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The app's own options, given after ``--``: ``streamlit run app.py -- --data-root DIR``."""
    parser = argparse.ArgumentParser(prog="streamlit run app.py --", add_help=False)
    parser.add_argument("--data-root", action="append", default=[],
                        help="a folder the sidebar may read statement sets from (repeatable)")
    known, _ = parser.parse_known_args(list(argv))
    return known


def llama_7b_available() -> bool:
    """Llama-2-7B's config is in the local Hugging Face cache (no network is touched)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(PRESETS["llama-2-7b"], "config.json"), str)
    except Exception:  # noqa: BLE001
        return False


def default_model_name() -> str:
    """``$PROBING_MODEL``, else Llama-2-7B on a CUDA machine that has it locally, else the embedded model."""
    if os.environ.get("PROBING_MODEL"):
        return os.environ["PROBING_MODEL"]
    import torch

    if torch.cuda.is_available() and llama_7b_available():
        return "llama-2-7b"
    return EMBEDDED


def model_choices(default: str) -> list[str]:
    """Sidebar labels, the default model first."""
    labels = list(MODEL_CHOICES)
    first = next((label for label, name in MODEL_CHOICES.items() if name == default), None)
    if first:
        labels.remove(first)
        labels.insert(0, first)
    return labels


def default_per_topic() -> int | None:
    """Built-in statements per topic the sidebar starts with (small on CPU; ``$PROBING_PER_TOPIC``)."""
    if os.environ.get("PROBING_PER_TOPIC"):
        value = int(os.environ["PROBING_PER_TOPIC"])
        return value or None
    import torch

    return None if torch.cuda.is_available() else 100


# ----------------------------------------------------------------------------- the shared model


class ModelBusy(RuntimeError):
    """The model cannot be switched while a job uses it."""


class ModelHolder:
    """One loaded model per process, shared by all sessions; switching frees the old one.

    A failed load leaves the previous model in place and keeps the error in ``error``.
    Jobs bracket their use with :meth:`using`, and switching waits for none of them:
    it refuses (``ModelBusy``) while any job runs.
    """

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self.current: LoadedModel | None = None
        self.error: str | None = None
        self._lock = threading.RLock()
        self._users = 0
        self._activations: dict[str, Activations] = {}

    @property
    def busy(self) -> bool:
        return self._users > 0

    @contextmanager
    def using(self):
        with self._lock:
            self._users += 1
        try:
            yield self.current
        finally:
            with self._lock:
                self._users -= 1

    def ensure(self, name: str, device: str | None = None, dtype: str | None = None) -> LoadedModel | None:
        """Load ``name`` unless it is what is loaded; returns the model now loaded (maybe the old one)."""
        name = name.strip()
        with self._lock:
            if self.current is not None and _same_spec(self.current.spec, name, device, dtype):
                return self.current
            if self.busy:
                raise ModelBusy("a job is using the current model; switch when it has finished")
            try:
                spec = ModelSpec(name, device=device or None, dtype=dtype or None)
                loaded = load_model(spec, cache_dir=self.cache_dir)
            except (ModelLoadError, ValueError) as error:
                self.error = str(error)
                return self.current
            old, self.current, self.error = self.current, loaded, None
            self._activations.clear()
            if old is not None:
                old.unload()
            return loaded

    def activations(self, position: str) -> Activations:
        """The cached activations of the current model at ``position`` (one object per position)."""
        with self._lock:
            if self.current is None:
                raise ModelLoadError("no model is loaded")
            if position not in self._activations:
                # Small batches on CPU: the progress bar moves every ~30 statements, at the same speed.
                budget = None if self.current.spec.resolved_device.startswith("cuda") else 512
                self._activations[position] = Activations(
                    position=position, cache_dir=self.cache_dir, model=self.current, token_budget=budget)
            return self._activations[position]


def _same_spec(spec: ModelSpec, name: str, device: str | None, dtype: str | None) -> bool:
    return (spec.name == name and (device or None) == spec.device and (dtype or None) == spec.dtype)


# ----------------------------------------------------------------------------- background jobs


@dataclass
class Job:
    """Work running in a background thread; the page polls it.

    The thread writes progress, records, result and error; the page only marks ``params``.
    The page reads ``records`` through ``records_so_far()``: a copy taken under a lock, since
    building a DataFrame from a list that grows meanwhile fails (length mismatch).
    """

    kind: str  # "extract" | "train" | "grid" | "directions"
    label: str
    phase: str = "starting"
    done: int = 0
    total: int = 0
    phase_started: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    records: list = field(default_factory=list)  # epoch records (train) or result rows (grid)
    result: object = None
    error: str | None = None
    params: dict = field(default_factory=dict)
    unit: str = "statements"
    thread: threading.Thread | None = field(default=None, repr=False)
    _records_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_record(self, record: dict) -> None:
        with self._records_lock:
            self.records.append(record)

    def records_so_far(self) -> list[dict]:
        with self._records_lock:
            return list(self.records)

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def ok(self) -> bool:
        return self.finished is not None and self.error is None

    def set_phase(self, phase: str, total: int = 0, unit: str = "statements") -> None:
        self.phase, self.done, self.total, self.phase_started = phase, 0, total, time.monotonic()
        self.unit = unit

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else (0.0 if self.running else 1.0)

    @property
    def rate(self) -> float:
        """Items per second in the current phase."""
        elapsed = time.monotonic() - self.phase_started
        return self.done / elapsed if elapsed > 0 and self.done else 0.0

    @property
    def seconds_left(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate else None

    def status_line(self, unit: str | None = None) -> str:
        unit = unit or self.unit
        if self.error:
            return f"Failed: {self.error}"
        if not self.running:
            return f"Finished in {self.finished - self.started:.1f} s"
        text = f"{self.phase}: {self.done:,} / {self.total:,}" if self.total else f"{self.phase}…"
        if self.rate and self.total:
            left = self.seconds_left
            text += f" · {self.rate:.1f} {unit}/s"
            if left is not None:
                text += f" · about {_duration(left)} left"
        return text

    def wait(self, timeout: float | None = None) -> Job:
        if self.thread is not None:
            self.thread.join(timeout)
        return self


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def start_job(job: Job, work: Callable[[Job], object], holder: ModelHolder | None = None) -> Job:
    """Run ``work(job)`` in a daemon thread; its return value becomes ``job.result``."""

    def target() -> None:
        try:
            if holder is not None:
                with holder.using():
                    job.result = work(job)
            else:
                job.result = work(job)
        except Exception as error:  # noqa: BLE001 - shown in the page
            job.error = f"{type(error).__name__}: {error}"
            job.params["traceback"] = traceback.format_exc()
        finally:
            job.finished = time.monotonic()

    job.thread = threading.Thread(target=target, name=f"probing-{job.kind}", daemon=True)
    job.thread.start()
    return job


# ----------------------------------------------------------------------------- contexts and storage


TRAINED_PREFIX = "trained_"


def context_key(model_fingerprint: str, position: str, dataset: StatementSet) -> str:
    """Results belong to one model, token position and statement set."""
    raw = f"{model_fingerprint}|{position}|{dataset.fingerprint()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:20]


class ResultStore:
    """Finished trainings and grids of one context, pickled under ``cache/dashboard/<context>``.

    Pickles run code when loaded, so the folders are the owner's alone (0700, files 0600).
    Each trained probe is a file of its own, written atomically: sessions that train at the
    same time add files and never overwrite each other's.
    """

    def __init__(self, cache_dir: str | Path, context: str):
        self.folder = Path(cache_dir) / "dashboard" / context

    def save(self, name: str, value: object) -> None:
        private_dir(self.folder.parent)
        private_dir(self.folder)
        partial = self.folder / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            pickle.dump(value, handle)
        partial.replace(self.folder / f"{name}.pkl")

    def save_trained(self, outcome: TrainOutcome) -> None:
        self.save(f"{TRAINED_PREFIX}{outcome.kind}_layer{outcome.layer}", outcome)

    def load_trained(self) -> dict[tuple[int, str], TrainOutcome]:
        """(layer, kind) -> the last probe trained for it, by any session."""
        outcomes = (self.load(path.stem) for path in sorted(self.folder.glob(f"{TRAINED_PREFIX}*.pkl")))
        return {(o.layer, o.kind): o for o in outcomes if isinstance(o, TrainOutcome)}

    def load(self, name: str, default=None):
        path = self.folder / f"{name}.pkl"
        try:
            with path.open("rb") as handle:
                return pickle.load(handle)
        except FileNotFoundError:
            return default
        except Exception:  # noqa: BLE001 - a stale or broken file is just not shown
            return default


# ----------------------------------------------------------------------------- layers


def layer_options(n_hidden_states: int) -> list[int]:
    """Layers counted from the end, -1 (after the final norm) to -n (the embeddings)."""
    return list(range(-1, -n_hidden_states - 1, -1))


def study_layers(n_hidden_states: int) -> list[int]:
    """The study's layers (the grid's defaults, -17 ... -1) that this model has, deepest first."""
    return sorted(layer for layer in GridConfig().layers if -layer <= n_hidden_states)


# ----------------------------------------------------------------------------- extraction


def extract_missing(job: Job, activations: Activations, texts: list[str]) -> int:
    """Every job's first phase: compute what the cache lacks, with the count shown from the start."""
    job.set_phase("Extracting activations", len(activations.missing(texts)))
    return activations.ensure(texts, on_progress=job.progress)


def extract_work(activations: Activations, texts: list[str]) -> Callable[[Job], int]:
    def work(job: Job) -> int:
        computed = extract_missing(job, activations, texts)
        job.set_phase("Done", computed)
        job.progress(computed, computed)
        return computed

    return work


# ----------------------------------------------------------------------------- one probe


@dataclass
class TrainOutcome:
    """One trained probe with its evaluation and controls."""

    layer: int
    kind: str
    heldout: str  # a topic, or "random"
    settings: dict
    probe: Probe
    accuracy: float
    history: pd.DataFrame
    per_topic: pd.DataFrame  # topic, role, accuracy, n
    confusion: pd.DataFrame  # actual, predicted, count
    text_only: float
    shuffled: float
    n_train: int
    n_test: int


def make_split(dataset: StatementSet, heldout: str) -> Split:
    """The split the grid trains for ``heldout``: a topic held out, or the random split."""
    for split in make_splits(dataset, "random" if heldout == RANDOM_SPLIT else "category"):
        if split.name == heldout:
            return split
    raise ValueError(f"topic {heldout!r} is not in this statement set ({dataset.topics})")


def evaluate_probe(probe: Probe, X: np.ndarray, dataset: StatementSet, split: Split) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-topic accuracy (held-out rows where a topic has them, else training rows) and the test confusion matrix."""
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


def train_work(activations: Activations, dataset: StatementSet, layer: int, kind: str, heldout: str,
               epochs: int, lr: float, seed: int, batch_size: int = 32,
               solver: str = "auto") -> Callable[[Job], TrainOutcome]:
    """Extract what is missing, train one probe (history records go to ``job.records``), run the controls.

    ``solver`` is for the linear probe: "lbfgs" fits to convergence (one record per round of
    L-BFGS iterations), "adam" trains ``epochs`` epochs the SAPLMA way.
    """
    texts = dataset.statements
    settings = {"epochs": epochs, "lr": lr, "seed": seed, "batch_size": batch_size}
    if kind == "linear" and solver != "auto":
        settings["solver"] = solver

    def work(job: Job) -> TrainOutcome:
        extract_missing(job, activations, texts)
        X = activations.layer(texts, layer)
        split = make_split(dataset, heldout)
        y = dataset.labels
        # The seed rule of the grid, so this probe is the grid's probe for the same cell and seed.
        task = Task(np.arange(len(split.train)), y[split.train], seed=split_seed(seed, split.name))
        probe = make_probe(kind, **{**settings, "seed": task.seed})
        stepwise = probe.config.solver == "adam" and kind != "mass_mean"
        job.set_phase("Training", epochs if stepwise else 0, unit="epochs")

        def on_epoch(record: dict) -> None:
            job.add_record(dict(record))
            if job.total:
                job.progress(record["epoch"], job.total)

        probe.fit(X[split.train], y[split.train], X[split.test], y[split.test], on_epoch=on_epoch)
        job.set_phase("Controls: text-only and shuffled labels", 2, unit="controls")
        text_only = text_only_accuracy(dataset, split)
        job.progress(1, 2)
        control = shuffled_label_task(task)
        shuffled = make_probe(kind, **{**settings, "seed": control.seed}).fit(X[split.train], control.y_train)
        job.progress(2, 2)
        per_topic, confusion = evaluate_probe(probe, X, dataset, split)
        return TrainOutcome(
            layer=layer, kind=kind, heldout=heldout, settings=settings, probe=probe,
            accuracy=probe.score(X[split.test], y[split.test]), history=probe.history_.copy(),
            per_topic=per_topic, confusion=confusion, text_only=text_only,
            shuffled=shuffled.score(X[split.test], y[split.test]),
            n_train=len(split.train), n_test=len(split.test),
        )

    return work


# ----------------------------------------------------------------------------- grids


@dataclass
class GridOutcome:
    """A category-split grid and, beside it, the same grid on a random split."""

    config: dict
    category: GridResult
    random: GridResult | None


def grid_work(activations: Activations, dataset: StatementSet, layers: list[int], probes: list[str],
              epochs: int = 5, seeds: int = 1, with_random: bool = True,
              model_name: str = "") -> Callable[[Job], GridOutcome]:
    texts = dataset.statements
    layers = sorted(layers)

    def work(job: Job) -> GridOutcome:
        extract_missing(job, activations, texts)
        load = lambda layer: activations.layer(texts, layer)  # noqa: E731
        common = dict(layers=tuple(layers), probes=tuple(probes), seeds=seeds, epochs=epochs)
        n_splits = len(dataset.topics)
        total = len(layers) * len(probes) * seeds * (n_splits + (1 if with_random else 0))
        job.set_phase("Training probes", total, unit="probes")
        offset = [0]

        def on_result(row: dict) -> None:
            job.add_record({**row, "split": "category" if row["heldout"] != RANDOM_SPLIT else "random"})

        def on_progress(done: int, _total: int) -> None:
            job.progress(offset[0] + done, total)

        category = run_grid(dataset, load, GridConfig(split="category", **common), model_name=model_name,
                            on_result=on_result, on_progress=on_progress)
        random = None
        if with_random:
            offset[0] = len(category.results)
            random = run_grid(dataset, load, GridConfig(split="random", **common), model_name=model_name,
                              on_result=on_result, on_progress=on_progress)
        return GridOutcome(config={**common, "with_random": with_random}, category=category, random=random)

    return work


def partial_results(records: list[dict], split: str = "category") -> pd.DataFrame:
    """Result rows a running grid has produced so far."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return pd.DataFrame(columns=["layer", "probe", "heldout", "seed", "accuracy", "split"])
    return frame[frame["split"] == split]


def grid_markdown(outcome: GridOutcome, title: str = "") -> str:
    parts = [f"# {title}\n" if title else ""]
    parts += ["## Average accuracy over the category splits\n", markdown_table(accuracy_table(outcome.category.results)),
              "\n## Maximum accuracy over the category splits\n",
              markdown_table(accuracy_table(outcome.category.results, "max"))]
    if outcome.random is not None:
        parts += ["\n## Random split accuracy\n", markdown_table(accuracy_table(outcome.random.results))]
    return "\n".join(p for p in parts if p)


def grid_csv(outcome: GridOutcome) -> str:
    frames = [outcome.category.results.assign(split="category")]
    if outcome.random is not None:
        frames.append(outcome.random.results.assign(split="random"))
    return pd.concat(frames, ignore_index=True).to_csv(index=False)


def cell_dynamics(outcome: GridOutcome, layer: int, probe: str) -> pd.DataFrame:
    dyn = outcome.category.dynamics
    if dyn.empty:
        return dyn
    return dyn[(dyn["layer"] == layer) & (dyn["probe"] == probe)]


def cell_per_topic(outcome: GridOutcome, layer: int, probe: str) -> pd.DataFrame:
    res = outcome.category.results
    chosen = res[(res["layer"] == layer) & (res["probe"] == probe)]
    return (chosen.groupby("heldout", sort=False)
            .agg(accuracy=("accuracy", "mean"), text_only=("text_only_accuracy", "mean"),
                 shuffled=("shuffled_accuracy", "mean"))
            .reset_index().rename(columns={"heldout": "topic"}))


# ----------------------------------------------------------------------------- statements


def probes_for_scoring(trained: dict, grid: GridOutcome | None) -> dict[tuple[int, str], Probe]:
    """(layer, kind) -> probe: the Train page's probes first, then the grid's random-split probes,
    then its category-split probes (first held-out topic)."""
    chosen: dict[tuple[int, str], Probe] = {}
    if grid is not None:
        for result in (grid.category, grid.random):
            if result is None:
                continue
            for (layer, kind, _split, seed), probe in result.probes.items():
                if seed == 0:
                    chosen[(layer, kind)] = probe  # random (later) overrides category
    for (layer, kind), outcome in trained.items():
        chosen[(layer, kind)] = outcome.probe
    return chosen


# ----------------------------------------------------------------------------- PCA


def pca_points(X: np.ndarray, frame: pd.DataFrame, components: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    """The first principal components of standardised activations, with statement, label and topic."""
    Z = X - X.mean(0)
    scale = Z.std(0)
    Z = Z / np.where(scale > 1e-6, scale, 1)
    _, singular, vt = np.linalg.svd(Z, full_matrices=False)
    coords = Z @ vt[:components].T
    explained = singular**2 / (singular**2).sum()
    points = pd.DataFrame({"pc1": coords[:, 0], "pc2": coords[:, 1],
                           "label": np.where(frame["label"].to_numpy() == 1, "true", "false"),
                           "topic": frame["topic"].to_numpy(), "statement": frame["statement"].to_numpy()})
    return points, explained[:components]
