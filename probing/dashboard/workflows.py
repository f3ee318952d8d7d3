"""The dashboard's work, run in background jobs: extract, train one probe, a study's grid, the
generalization analyses, steering, and two models compared.

Each one builds a :class:`~probing.study.study.Study` around the model the dashboard holds, with the
job as its reporter, and saves what it made as a results folder, the same format
``python -m probing reproduce`` writes, so ``score`` and a later session read it.
Nothing here imports streamlit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from probing.analyses.grid import evaluate_probe
from probing.analyses.trace import fit_all_tokens_probe
from probing.dashboard.jobs import Job
from probing.data.statements import StatementSet
from probing.probes.estimators import Probe
from probing.store.activations import Activations
from probing.study.config import SteeringConfig, StudyConfig
from probing.study.reporter import SAVING
from probing.study.results import StudyResult
from probing.study.study import Study, studies_for_models


def extract_work(activations: Activations, texts: list[str]) -> Callable[[Job], int]:
    """Merge the node folders of a multi-node extraction, then compute what the cache lacks of ``texts``."""
    def work(job: Job) -> int:
        computed = Study(StudyConfig(), activations=activations, reporter=job).extract(texts)
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
    study = Study(config, dataset=dataset, activations=activations, command="dashboard: Train a probe")
    study.cell_plan(layer, kind, heldout)  # on the click, before the job starts

    def work(job: Job) -> TrainOutcome:
        study.reporter = job
        cell, result = study.train_cell(layer, kind, heldout, seed)
        job.set_phase(SAVING, 0)
        result.save(study.new_folder(results_root, f"{kind}-layer{layer}"))
        per_topic, confusion = evaluate_probe(cell.probe, study.layer(layer), dataset, cell.cell.split)
        return TrainOutcome(study=result, probe=cell.probe, history=cell.probe.history_.copy(),
                            per_topic=per_topic, confusion=confusion)

    return work


def all_tokens_work(activations: Activations, dataset: StatementSet, config: StudyConfig, layer: int,
                    kind: str) -> Callable[[Job], Probe]:
    """A ``kind`` probe of ``config``'s training settings trained on every token of ``dataset``'s statements
    at ``layer`` (see :func:`~probing.analyses.trace.fit_all_tokens_probe`), for the Trace page."""
    def work(job: Job) -> Probe:
        return fit_all_tokens_probe(activations, dataset, layer, config.probe_config(kind), job,
                                    config.resolved_device)

    return work


def grid_work(activations: Activations, dataset: StatementSet, config: StudyConfig,
              results_root: Path, name: str = "") -> Callable[[Job], StudyResult]:
    """The study's grid (and the random-split grid beside it when ``config.with_random``) with
    live result rows in ``job.records``, saved as a results folder."""
    study = Study(config, dataset=dataset, activations=activations, command="dashboard: Accuracy grid")
    study.check()  # on the click, before the job starts

    def work(job: Job) -> StudyResult:
        study.reporter = job
        result = study.run()
        what = "grid" if config.probes != ("linear", "mass_mean") else "directions"
        result.save(study.new_folder(results_root, what, name))
        return result

    return work


def save_beside(result: StudyResult, open_study: StudyResult | None, results_root: Path, study: Study,
                what: str) -> StudyResult:
    """Save ``result`` into the open results folder when it is that study grown by an analysis (it kept
    the folder: :func:`~probing.study.assemble.analysis_home`), else into a new results folder named after ``what``."""
    if open_study is not None and result.folder == open_study.folder:
        result.save(open_study.folder)
    else:
        result.save(study.new_folder(results_root, what))
    return result


def generalization_work(activations: Activations, dataset: StatementSet, config: StudyConfig, results_root: Path,
                        open_study: StudyResult | None = None) -> Callable[[Job], StudyResult]:
    """The generalization analyses, saved into the open results folder when it holds a study of the
    same statements, model and token (they join its grid), else into a new results folder."""

    def work(job: Job) -> StudyResult:
        study = Study(config, dataset=dataset, activations=activations, reporter=job,
                      command="dashboard: Generalization")
        result = study.generalization(into=open_study)
        job.set_phase(SAVING, 0)
        return save_beside(result, open_study, results_root, study, "generalization")

    return work


def steering_work(activations: Activations, dataset: StatementSet, config: SteeringConfig, results_root: Path,
                  open_study: StudyResult | None = None) -> Callable[[Job], StudyResult]:
    """The dose-response of ``config``, saved as ``steering.csv`` into the open results folder when it
    holds the same statements, model and token, else into a new results folder."""

    def work(job: Job) -> StudyResult:
        study = Study(StudyConfig(), dataset=dataset, activations=activations, reporter=job,
                      command="dashboard: Steer")
        result = study.steering(config, into=open_study)
        job.set_phase(SAVING, 0)
        return save_beside(result, open_study, results_root, study, "steering")

    return work


def compare_work(dataset: StatementSet, models: list[str], config: StudyConfig,
                 results_root: Path) -> Callable[[Job], list[StudyResult]]:
    """Both models' studies of ``dataset`` (found under ``results_root`` or computed and saved there),
    each model loaded on its own, not through the dashboard's shared one."""
    def work(job: Job) -> list[StudyResult]:
        job.set_phase("Finding or computing each model's study", 0, unit="items")
        return studies_for_models(dataset, models, config, results_root, job)

    return work


def partial_results(records: list[dict], split: str = "category") -> pd.DataFrame:
    """Result rows a running grid has produced so far."""
    frame = pd.DataFrame(records)
    if frame.empty:
        return pd.DataFrame(columns=["layer", "probe", "split", "heldout", "seed", "accuracy"])
    return frame[frame["split"] == split]
