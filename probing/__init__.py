"""Probe what a language model's hidden states know about truth (SAPLMA, Geometry of Truth)."""

from probing.activations import POSITIONS, Activations
from probing.directions import compare_directions
from probing.experiments import GridConfig, GridResult, category_splits, random_split, run_grid
from probing.models import PRESETS, LoadedModel, ModelLoadError, ModelSpec, load_model
from probing.probes import PROBE_KINDS, Probe, ProbeConfig, fit_many, make_probe
from probing.scoring import model_says_true, score_statements
from probing.statements import DatasetError, StatementSet, load_dataset

__all__ = [
    "POSITIONS", "PRESETS", "PROBE_KINDS", "Activations", "DatasetError", "GridConfig", "GridResult",
    "LoadedModel", "ModelLoadError", "ModelSpec", "Probe", "ProbeConfig", "StatementSet",
    "category_splits", "compare_directions", "fit_many", "load_dataset", "load_model", "make_probe",
    "model_says_true", "random_split", "run_grid", "score_statements",
]
