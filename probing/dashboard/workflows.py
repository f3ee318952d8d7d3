"""The dashboard's work, run in background jobs: extract, train one probe, run a study's grid.

Each one calls the engine's own recipe (``Activations.ensure``, ``experiments.train_cells``,
``study.run_study``) and saves what it made as a results folder, the same format
``python -m probing reproduce`` writes, so ``score`` and a later session read it.
Nothing here imports streamlit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from probing.store.activations import Activations
from probing.study.config import SteeringConfig, StudyConfig
from probing.analyses.grid import Cell, check_splits, evaluate_probe, make_split, train_cells
from probing.dashboard.jobs import Job
from probing.probes.estimators import Probe
from probing.study.results import StudyResult
from probing.dashboard.settings import new_results_folder
from probing.data.statements import StatementSet
from probing.analyses.steering import run_steering
from probing.store.store import node_stores
from probing.study.study import analysis_home, cell_study, check_study, generalization_study, run_study


def extract_missing(job: Job, activations: Activations, texts: list[str]) -> int:
    """Every job's first phase: merge the node folders of a multi-node extraction (as ``reproduce``
    does), then compute what the cache lacks, with the count shown from the start."""
    if node_stores(activations.cache_dir):
        job.set_phase("Merging the node folders of a multi-node extraction", 0)
        activations.merge_nodes(on_progress=job.progress)
    job.set_phase("Extracting activations", len(activations.missing(texts)))
    return activations.ensure(texts, on_progress=job.progress)


def extract_work(activations: Activations, texts: list[str]) -> Callable[[Job], int]:
    def work(job: Job) -> int:
        computed = extract_missing(job, activations, texts)
        job.set_phase("Done", computed)
        job.progress(computed, computed)
        return computed

    return work


@dataclass
class TrainOutcome:
    """One probe trained on the Train page, with its evaluation, controls and results folder."""

    study: StudyResult  # the probe as a one-cell study, saved to study.folder
    probe: Probe
    history: pd.DataFrame
    per_topic: pd.DataFrame  # topic, role, accuracy, n
    confusion: pd.DataFrame  # actual, predicted, count

    @property
    def row(self) -> dict:
        return self.study.results.iloc[0].to_dict()

    @property
    def layer(self) -> int:
        return int(self.row["layer"])

    @property
    def kind(self) -> str:
        return self.row["probe"]

    @property
    def heldout(self) -> str:
        return self.row["heldout"]

    @property
    def fingerprint(self) -> str:
        """The model (weights, dtype, device kind) whose activations the probe reads."""
        return self.study.meta["model"]["fingerprint"]

    @property
    def position(self) -> str:
        return self.study.config.position


def train_work(activations: Activations, dataset: StatementSet, config: StudyConfig, layer: int, kind: str,
               heldout: str, seed: int, results_root: Path) -> Callable[[Job], TrainOutcome]:
    """Extract what is missing, train the grid's probe for (layer, kind, split, seed) with its
    controls (history records go to ``job.records``), and save it as a results folder."""
    texts = dataset.statements
    split = make_split(dataset, heldout)
    check_splits(dataset, [split], split.kind)  # this split only: another topic's problem is no reason to refuse
    config = replace(config, layers=(layer,), probes=(kind,), split=split.kind, with_random=False)
    config.check_layers(activations.n_hidden_states)

    def work(job: Job) -> TrainOutcome:
        started = time.perf_counter()
        extract_missing(job, activations, texts)
        X = activations.layer(texts, layer)
        stepwise = config.probe_config(kind).trains_in_epochs
        job.set_phase("Training", config.epochs if stepwise else 0, unit="epochs")

        def on_epoch(record: dict) -> None:
            job.add_record(dict(record))
            if job.total:
                job.progress(record["epoch"], job.total)

        (cell,) = train_cells(X, dataset, layer, kind, [Cell(split, seed)], config,
                              model_name=activations.spec.name, on_epoch=on_epoch)
        job.set_phase("Saving", 0)
        study = cell_study(dataset, activations, config, cell, seconds=time.perf_counter() - started,
                           command="dashboard: Train a probe")
        study.save(new_results_folder(results_root, activations.spec.name, dataset.name, f"{kind}-layer{layer}"))
        per_topic, confusion = evaluate_probe(cell.probe, X, dataset, split)
        return TrainOutcome(study=study, probe=cell.probe, history=cell.probe.history_.copy(),
                            per_topic=per_topic, confusion=confusion)

    return work


def grid_work(activations: Activations, dataset: StatementSet, config: StudyConfig,
              results_root: Path, name: str = "") -> Callable[[Job], StudyResult]:
    """The study's grid (and the random-split grid beside it when ``config.with_random``) with
    live result rows in ``job.records``, saved as a results folder."""
    check_study(dataset, activations, config)

    def work(job: Job) -> StudyResult:
        extract_missing(job, activations, dataset.statements)
        job.set_phase("Training probes", 0, unit="probes")
        study = run_study(dataset, activations, config, on_train=job.progress, on_result=job.add_record,
                          command="dashboard: Accuracy grid")
        what = "grid" if config.probes != ("linear", "mass_mean") else "directions"
        study.save(new_results_folder(results_root, activations.spec.name, dataset.name, what, name))
        return study

    return work


def save_beside(study: StudyResult, open_study: StudyResult | None, results_root: Path, activations: Activations,
                dataset: StatementSet, what: str) -> StudyResult:
    """Save ``study`` into the open results folder when it is that study grown by an analysis (it kept
    the folder: :func:`~probing.study.study.analysis_home`), else into a new results folder named after ``what``."""
    if open_study is not None and study.folder == open_study.folder:
        study.save(open_study.folder)
    else:
        study.save(new_results_folder(results_root, activations.spec.name, dataset.name, what))
    return study


def generalization_work(activations: Activations, dataset: StatementSet, config: StudyConfig, results_root: Path,
                        open_study: StudyResult | None = None) -> Callable[[Job], StudyResult]:
    """The generalization analyses, saved into the open results folder when it holds a study of the
    same statements, model and token (they join its grid), else into a new results folder."""

    def work(job: Job) -> StudyResult:
        extract_missing(job, activations, dataset.statements)
        job.set_phase("Training the probes of each layer", len(config.layers), unit="layers")
        study = generalization_study(dataset, activations, config, into=open_study, on_progress=job.progress,
                                     command="dashboard: Generalization")
        job.set_phase("Saving", 0)
        return save_beside(study, open_study, results_root, activations, dataset, "generalization")

    return work


def steering_work(activations: Activations, dataset: StatementSet, config: SteeringConfig, results_root: Path,
                  open_study: StudyResult | None = None) -> Callable[[Job], StudyResult]:
    """The dose-response of ``config``, saved as ``steering.csv`` into the open results folder when it
    holds the same statements, model and token, else into a new results folder."""

    def work(job: Job) -> StudyResult:
        extract_missing(job, activations, dataset.statements)
        job.set_phase("Steering: batched forward passes", 0)
        table = run_steering(dataset, activations, config)
        job.set_phase("Saving", 0)
        home = analysis_home(dataset, activations, replace(StudyConfig(), layers=(config.probe_layer,)), open_study,
                             command="dashboard: Steer")
        study = replace(home, steering=table, meta={**home.meta, "steering": config.to_dict()})
        return save_beside(study, open_study, results_root, activations, dataset, "steering")

    return work


def compare_work(dataset: StatementSet, models: list[str], config: StudyConfig,
                 results_root: Path) -> Callable[[Job], list[StudyResult]]:
    """Both models' studies of ``dataset`` (found under ``results_root`` or computed and saved there),
    each model loaded on its own, not through the dashboard's shared one."""
    from probing.analyses.compare import studies_for_models

    def work(job: Job) -> list[StudyResult]:
        def progress(model: str, done: int, total: int) -> None:
            job.phase = f"{model}"
            job.progress(done, total)

        job.set_phase("Finding or computing each model's study", 0, unit="items")
        return studies_for_models(dataset, models, config, results_root, progress)

    return work


def partial_results(records: list[dict], split: str = "category") -> pd.DataFrame:
    """Result rows a running grid has produced so far."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return pd.DataFrame(columns=["layer", "probe", "split", "heldout", "seed", "accuracy"])
    return frame[frame["split"] == split]
