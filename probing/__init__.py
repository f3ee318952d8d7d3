"""Probe what a language model's hidden states know about truth (SAPLMA, Geometry of Truth).

Names are imported from their modules on first use (PEP 562), so ``import probing``
and the command line's option checks do not load torch.
"""

from importlib import import_module

_HOMES = {
    "POSITIONS": "probing.constants",
    "PROBE_KINDS": "probing.constants",
    "StudyConfig": "probing.config",
    "Activations": "probing.activations",
    "load_dataset": "probing.datasets",
    "compare_directions": "probing.directions",
    "Cell": "probing.experiments",
    "CellResult": "probing.experiments",
    "GridResult": "probing.experiments",
    "category_splits": "probing.experiments",
    "evaluate_probe": "probing.experiments",
    "make_split": "probing.experiments",
    "random_split": "probing.experiments",
    "run_grid": "probing.experiments",
    "train_cells": "probing.experiments",
    "PRESETS": "probing.models",
    "LoadedModel": "probing.models",
    "ModelLoadError": "probing.models",
    "ModelSpec": "probing.models",
    "load_model": "probing.models",
    "Probe": "probing.probes",
    "ProbeConfig": "probing.probes",
    "fit_many": "probing.probes",
    "make_probe": "probing.probes",
    "StudyResult": "probing.results",
    "model_says_true": "probing.scoring",
    "score_statements": "probing.scoring",
    "DatasetError": "probing.statements",
    "StatementSet": "probing.statements",
    "reproduce": "probing.study",
    "run_study": "probing.study",
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
