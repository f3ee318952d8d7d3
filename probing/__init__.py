"""Probe what a language model's hidden states know about truth (SAPLMA, Geometry of Truth).

Names are imported from their modules on first use (PEP 562), so ``import probing``
and the command line's option checks do not load torch.
"""

from importlib import import_module

_HOMES = {
    "POSITIONS": "probing.constants",
    "PROBE_KINDS": "probing.constants",
    "StudyConfig": "probing.study.config",
    "Activations": "probing.store.activations",
    "load_dataset": "probing.data.datasets",
    "compare_directions": "probing.analyses.directions",
    "Cell": "probing.analyses.grid",
    "CellResult": "probing.analyses.grid",
    "GridResult": "probing.analyses.grid",
    "category_splits": "probing.analyses.grid",
    "evaluate_probe": "probing.analyses.grid",
    "make_split": "probing.analyses.grid",
    "random_split": "probing.analyses.grid",
    "run_grid": "probing.analyses.grid",
    "train_cells": "probing.analyses.grid",
    "PRESETS": "probing.model.sources",
    "LoadedModel": "probing.model.loading",
    "ModelLoadError": "probing.model.sources",
    "ModelSpec": "probing.model.loading",
    "load_model": "probing.model.loading",
    "Probe": "probing.probes.estimators",
    "ProbeConfig": "probing.probes.params",
    "fit_many": "probing.probes.estimators",
    "make_probe": "probing.probes.estimators",
    "StudyResult": "probing.study.results",
    "model_says_true": "probing.analyses.scoring",
    "score_statements": "probing.analyses.scoring",
    "DatasetError": "probing.data.statements",
    "StatementSet": "probing.data.statements",
    "Study": "probing.study.study",
    "SteeringConfig": "probing.study.config",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> object:
    """Import ``name`` from its module the first time it is asked for, then keep it here."""
    if name not in _HOMES:
        raise AttributeError(f"module 'probing' has no attribute {name!r}")
    value = getattr(import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
