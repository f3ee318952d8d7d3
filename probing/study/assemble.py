"""Gathering what a study computed into a :class:`~probing.study.results.StudyResult`: the grids'
rows and directions, the final probes, the analyses, and the record of what ran (model, statements,
packages). :class:`~probing.study.study.Study` runs the work and calls these.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone

import pandas as pd

from probing.store.activations import Activations
from probing.study.config import StudyConfig
from probing.analyses.directions import DIRECTION_KINDS, compare_directions
from probing.analyses.grid import CellResult, GridResult
from probing.analyses.generalization import Generalization
from probing.probes.adam import training_dtype
from probing.probes.estimators import Probe
from probing.probes.params import HIDDEN_SIZES
from probing.study.results import StudyResult, command_line, package_versions
from probing.data.statements import StatementSet


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
    category grid, and the final probes (``GridResult.final_probes``)."""
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
        predictions=_concat([grid.predictions for grid in grids.values()]),
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
        predictions=cell.predictions.reset_index(drop=True),
        probes={(cell.layer, cell.kind): cell.probe},
    )


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


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [frame for frame in frames if not frame.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
