"""A whole study: extract what is missing, train the grids and the final probes, and gather it all in a
:class:`~probing.study.results.StudyResult` (which ``reproduce`` also saves).

The command line runs :func:`reproduce`; the dashboard runs :func:`run_study` in a background job,
and saves a single trained probe with :func:`cell_study`. All of them write the same folder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from probing.store.activations import Activations, Progress
from probing.study.config import StudyConfig
from probing.analyses.directions import DIRECTION_KINDS, compare_directions
from probing.analyses.grid import CellResult, EpochRecord, GridResult, check_splits, make_splits, run_grid
from probing.analyses.generalization import Generalization, run_generalization
from probing.probes.estimators import HIDDEN_SIZES, Probe, Task, fit_many, training_dtype
from probing.study.results import StudyResult, check_results_out, command_line, package_versions
from probing.data.statements import StatementSet


def check_study(dataset: StatementSet, activations: Activations, config: StudyConfig) -> None:
    """Refuse splits no probe can train on and layers the model lacks: before an extraction that may take hours."""
    for kind in config.splits:
        check_splits(dataset, make_splits(dataset, kind), kind)
    config.check_layers(activations.n_hidden_states)


def train_final_probes(dataset: StatementSet, load_layer: Callable[[int], np.ndarray], config: StudyConfig,
                       on_progress: Progress | None = None) -> dict[tuple[int, str], Probe]:
    """One probe per (layer, kind) trained on every statement: what ``score`` uses."""
    task = Task(np.arange(len(dataset)), dataset.labels, seed=0)
    probes = {}
    for layer in config.layers:
        features = load_layer(layer)
        for kind in config.probes:
            (probes[(layer, kind)],) = fit_many(features, [task], config.probe_config(kind),
                                               device=config.resolved_device)
            if on_progress:
                on_progress(len(probes), len(config.layers) * len(config.probes))
    return probes


def as_run(config: StudyConfig, dataset: StatementSet, activations: Activations) -> StudyConfig:
    """``config`` with the model, token position, cache and dataset that ``activations`` and
    ``dataset`` actually are (conflicts dropped, also when the dashboard dropped them), so the folder
    records what ran."""
    spec = activations.spec
    return replace(config, model=spec.name, dtype=spec.dtype, device=spec.device, position=activations.position,
                   cache=str(activations.cache_dir), max_tokens=activations.max_tokens,
                   dataset=dataset.source or dataset.name,
                   drop_conflicts=config.drop_conflicts or bool(dataset.dropped_conflicts))


def study_meta(dataset: StatementSet, activations: Activations, *, extracted: int = 0, seconds: float = 0.0,
               command: str | None = None) -> dict:
    """The model, the dataset and the run, as JSON values."""
    spec = activations.spec
    meta = {
        "command": command or command_line(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": spec.name, "resolved": spec.resolved_name, "revision": spec.revision,
                  "fingerprint": activations.fingerprint, "dtype": spec.resolved_dtype,
                  "device": spec.resolved_device, "hidden_states": activations.n_hidden_states},
        "dataset": {"source": dataset.source, "name": dataset.name, "sha256": dataset.fingerprint(),
                    "statements": len(dataset), "topics": dataset.summary().to_dict("records"),
                    "duplicate_rows": dataset.duplicates.count,
                    "conflicting_rows_dropped": dataset.dropped_conflicts.rows},
        "statements_extracted_this_run": extracted,
        "seconds": round(seconds, 1),
        "packages": package_versions(),
    }
    if activations.model_loaded:  # what loading it takes, for a machine that opens the folder later
        meta["model"]["memory_gb"] = activations.model.describe()["memory_gb"]
    return json.loads(json.dumps(meta, default=str))  # what config.json will hold, so a loaded copy is equal


def finish_study(
    dataset: StatementSet,
    activations: Activations,
    config: StudyConfig,
    grids: Mapping[str, GridResult],
    *,
    final_probes: dict[tuple[int, str], Probe],
    extracted: int = 0,
    seconds: float = 0.0,
    command: str | None = None,
) -> StudyResult:
    """A StudyResult from finished grids, by split kind, the study's own first (``{"category": ...,
    "random": ...}``; the recorded config says so): their rows and dynamics, the directions of the
    category grid, and the final probes (:func:`train_final_probes`)."""
    if not grids:
        raise ValueError("finish_study needs at least one finished grid")
    split = next(iter(grids))
    config = replace(config, split=split, with_random="random" in grids and split != "random")
    cosine, sign, matrices = [], [], []
    if "category" in grids:  # directions are compared across held-out topics
        for kind in (k for k in config.probes if k in DIRECTION_KINDS):
            kind_cosine, kind_sign, kind_matrices = compare_directions(grids["category"], kind)
            cosine.append(kind_cosine)
            sign.append(kind_sign)
            matrices.append(kind_matrices)
    meta = study_meta(dataset, activations, extracted=extracted, seconds=seconds, command=command)
    # bfloat16 MLP training (CPUs with bf16 units) gives other, equally good, probes than float32.
    meta["probe_training_dtypes"] = {kind: str(training_dtype(kind, config.resolved_device)).removeprefix("torch.")
                                     for kind in config.probes if HIDDEN_SIZES.get(kind)}
    return StudyResult(
        config=as_run(config, dataset, activations),
        meta=meta,
        results=_concat([grid.results for grid in grids.values()]),
        dynamics=_concat([grid.dynamics for grid in grids.values()]),
        directions_cosine=_concat(cosine), directions_sign=_concat(sign), directions_matrices=_concat(matrices),
        probes=final_probes,
    )


def cell_study(dataset: StatementSet, activations: Activations, config: StudyConfig, cell: CellResult, *,
               seconds: float = 0.0, command: str | None = None) -> StudyResult:
    """One trained probe as a study: one layer, one kind, the cell's row and dynamics, and its
    probe under ``probes`` (trained on the split's training rows), so ``score`` reads its folder."""
    config = replace(config, layers=(cell.layer,), probes=(cell.kind,), split=cell.cell.split.kind,
                     with_random=False)
    return StudyResult(
        config=as_run(config, dataset, activations),
        meta=study_meta(dataset, activations, seconds=seconds, command=command),
        results=pd.DataFrame([cell.row]), dynamics=cell.dynamics.reset_index(drop=True),
        probes={(cell.layer, cell.kind): cell.probe},
    )


def run_study(
    dataset: StatementSet,
    activations: Activations,
    config: StudyConfig,
    *,
    on_extract: Progress | None = None,
    on_train: Progress | None = None,
    on_result: Callable[[dict], None] | None = None,
    on_epoch: EpochRecord | None = None,
    on_analysis: Progress | None = None,
    command: str | None = None,
) -> StudyResult:
    """Extract missing activations, train the grid of each of ``config.splits`` and the final probes,
    and with ``config.generalization`` the generalization analyses.

    ``on_train`` counts every probe of the grids and then the final ones; ``on_result`` and
    ``on_epoch`` get the grids' rows and history records as they come (tagged with their split);
    ``on_analysis`` counts the layers of the generalization analyses.
    """
    check_study(dataset, activations, config)
    started = time.perf_counter()
    extracted = activations.ensure(dataset.statements, on_progress=on_extract)
    texts = dataset.statements
    load = lambda layer: activations.layer(texts, layer)  # noqa: E731
    per_kind = len(config.layers) * len(config.probes)
    sizes = [per_kind * config.seeds * len(make_splits(dataset, kind)) for kind in config.splits]
    total = sum(sizes) + per_kind
    grids: dict[str, GridResult] = {}
    for kind, offset in zip(config.splits, np.cumsum([0, *sizes]).tolist()):
        grids[kind] = run_grid(dataset, load, replace(config, split=kind), model_name=activations.spec.name,
                               on_result=on_result, on_epoch=on_epoch, on_progress=_shifted(on_train, offset, total))
    final = train_final_probes(dataset, load, config, _shifted(on_train, sum(sizes), total))
    analyses = run_generalization(dataset, load, config, on_analysis) if config.generalization else None
    study = finish_study(dataset, activations, config, grids, final_probes=final, extracted=extracted,
                         seconds=time.perf_counter() - started, command=command)
    return with_generalization(study, analyses, config) if analyses else study


def with_generalization(study: StudyResult, analyses: Generalization, config: StudyConfig) -> StudyResult:
    """``study`` with the generalization analyses' tables (replacing any it had), the options they ran
    with in its config, and their notes in ``meta``."""
    ran = replace(study.config, generalization=True, matrix_probes=config.matrix_probes, ccs_seeds=config.ccs_seeds)
    return replace(study, config=ran, generalization=analyses.results, generalization_errors=analyses.errors,
                   ccs=analyses.ccs, statements=analyses.statements,
                   meta={**study.meta, "generalization_notes": analyses.notes})


def recorded_same_data(record: dict, dataset_sha256: str, activations: Activations) -> bool:
    """Whether a results folder's config.json ``record`` read the statements of hash ``dataset_sha256``
    with this model (weights, dtype) at this token."""
    return (record.get("model", {}).get("fingerprint") == activations.fingerprint
            and record.get("position") == activations.position
            and record.get("dataset", {}).get("sha256") == dataset_sha256)


def same_data(study: StudyResult, dataset: StatementSet, activations: Activations) -> bool:
    """Whether ``study`` read these statements with this model (weights, dtype) at this token."""
    return recorded_same_data(study.config_record(), dataset.fingerprint(), activations)


def analysis_home(dataset: StatementSet, activations: Activations, config: StudyConfig,
                  into: StudyResult | None, command: str | None = None) -> StudyResult:
    """The study an analysis of these statements, model and token joins: ``into`` when it read the same
    (see :func:`same_data`), else a study of its own, without a grid, recorded with ``config``."""
    if into is not None and same_data(into, dataset, activations):
        return into
    return StudyResult(as_run(config, dataset, activations), study_meta(dataset, activations, command=command),
                       pd.DataFrame())


def generalization_study(dataset: StatementSet, activations: Activations, config: StudyConfig, *,
                         into: StudyResult | None = None, on_progress: Progress | None = None,
                         command: str | None = None) -> StudyResult:
    """The generalization analyses of ``config`` (activations extracted first) added to
    :func:`analysis_home`'s study."""
    texts = dataset.statements
    activations.ensure(texts)
    analyses = run_generalization(dataset, lambda layer: activations.layer(texts, layer), config, on_progress)
    return with_generalization(analysis_home(dataset, activations, config, into, command), analyses, config)


def reproduce(
    dataset: StatementSet,
    activations: Activations,
    config: StudyConfig,
    out: str | Path,
    on_extract: Progress | None = None,
    on_train: Progress | None = None,
    on_analysis: Progress | None = None,
    overwrite: bool = False,
) -> StudyResult:
    """:func:`run_study`, saved to ``out``. The folder is checked (:func:`~probing.study.results.check_results_out`:
    ``overwrite`` lets it hold another study or the input statements) and made before the extraction, so a
    folder that would lose files, or cannot be made, fails first."""
    check_study(dataset, activations, config)
    out = check_results_out(out, dataset.source, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    result = run_study(dataset, activations, config, on_extract=on_extract, on_train=on_train,
                       on_analysis=on_analysis)
    result.save(out)
    return result


def _shifted(progress: Progress | None, offset: int, total: int) -> Progress | None:
    """``progress`` for one part of a longer count: (done in this part, _) -> (offset + done, total)."""
    return (lambda done, _part: progress(offset + done, total)) if progress else None


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
