"""The whole study in one call: extract what is missing, train the grid, write every table."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from probing.activations import Activations, Progress
from probing.directions import DIRECTION_KINDS, compare_directions
from probing.experiments import GridConfig, GridResult, check_splits, make_splits, run_grid
from probing.probes import Probe, Task, fit_many
from probing.results import command_line, package_versions, save_probes, write_table
from probing.statements import StatementSet


@dataclass
class StudyOutputs:
    """What ``reproduce`` computed and wrote."""

    grid: GridResult
    accuracy_mean: pd.DataFrame
    accuracy_max: pd.DataFrame
    directions_cosine: pd.DataFrame
    directions_sign: pd.DataFrame
    directions_matrices: pd.DataFrame
    computed_statements: int
    final_probes: dict[tuple[int, str], Probe]


def train_final_probes(dataset: StatementSet, activations: Activations, config: GridConfig) -> dict[tuple[int, str], Probe]:
    """One probe per (layer, kind) trained on every statement: what ``score`` uses."""
    task = Task(np.arange(len(dataset)), dataset.labels, seed=0)
    probes = {}
    for layer in config.layers:
        features = activations.layer(dataset.statements, layer)
        for kind in config.probes:
            (probes[(layer, kind)],) = fit_many(features, [task], config.probe_config(kind),
                                               device=config.resolved_device)
    return probes


def reproduce(
    dataset: StatementSet,
    activations: Activations,
    config: GridConfig,
    out: str | Path,
    on_extract: Progress | None = None,
    on_train: Progress | None = None,
) -> StudyOutputs:
    """Extract missing activations, train the grid and final probes, and write ``out``.

    Splits and layers are checked first: a mistake there must not cost an extraction.
    """
    check_splits(dataset, make_splits(dataset, config.split), config.split)
    config.check_layers(activations.n_hidden_states)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    computed = activations.ensure(dataset.statements, on_progress=on_extract)
    texts = dataset.statements
    grid = run_grid(dataset, lambda layer: activations.layer(texts, layer), config,
                    model_name=activations.spec.name, on_progress=on_train)
    accuracy_mean, accuracy_max = grid.accuracy_table("mean"), grid.accuracy_table("max")
    cosine, sign, matrices = [], [], []
    if config.split == "category":  # directions are compared across held-out topics
        for kind in (k for k in config.probes if k in DIRECTION_KINDS):
            kind_cosine, kind_sign, kind_matrices = compare_directions(grid, kind)
            cosine.append(kind_cosine)
            sign.append(kind_sign)
            matrices.append(kind_matrices)
    final = train_final_probes(dataset, activations, config)
    outputs = StudyOutputs(
        grid, accuracy_mean, accuracy_max,
        pd.concat(cosine, ignore_index=True) if cosine else pd.DataFrame(),
        pd.concat(sign, ignore_index=True) if sign else pd.DataFrame(),
        pd.concat(matrices, ignore_index=True) if matrices else pd.DataFrame(),
        computed, final,
    )
    _write(outputs, dataset, activations, config, out, time.perf_counter() - started)
    return outputs


def _write(outputs: StudyOutputs, dataset: StatementSet, activations: Activations,
           config: GridConfig, out: Path, seconds: float) -> None:
    write_table(outputs.accuracy_mean, out, "accuracy_mean", markdown=True)
    write_table(outputs.accuracy_max, out, "accuracy_max", markdown=True)
    write_table(outputs.grid.results, out, "per_topic")
    write_table(outputs.grid.dynamics, out, "dynamics")
    if not outputs.directions_cosine.empty:
        write_table(outputs.directions_cosine, out, "directions_cosine", markdown=True)
        write_table(outputs.directions_sign, out, "directions_sign", markdown=True)
        write_table(outputs.directions_matrices, out, "directions_matrices")
    save_probes(outputs.final_probes, out)
    spec = activations.spec
    record = {
        "command": command_line(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": spec.name, "resolved": spec.resolved_name, "revision": spec.revision,
                  "fingerprint": activations.fingerprint, "dtype": spec.resolved_dtype,
                  "device": spec.resolved_device,
                  "hidden_states": activations.n_hidden_states},
        "dataset": {"source": dataset.source, "name": dataset.name, "sha256": dataset.fingerprint(),
                    "statements": len(dataset), "topics": dataset.summary().to_dict("records"),
                    "duplicate_rows": dataset.duplicates.count},
        "position": activations.position,
        "cache": str(activations.cache_dir),
        "grid": config.to_dict(),
        "seeds": list(range(config.seeds)),
        "statements_extracted_this_run": outputs.computed_statements,
        "seconds": round(seconds, 1),
        "packages": package_versions(),
    }
    (out / "config.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
