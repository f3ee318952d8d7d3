"""Writing a study's results to a folder, and reading its probes back for scoring.

torch is imported only where probes are saved or loaded, so that ``score`` can refuse a
missing or outdated folder (:func:`read_config`) before torch loads.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from probing.probes import Probe

PACKAGES = ("torch", "transformers", "accelerate", "numpy", "pandas", "scikit-learn", "diskcache", "gguf")
PROBES_DIR = "probes"
CONFIG_KEYS = (("model", "name"), ("model", "device"), ("model", "dtype"), ("position",), ("cache",))
"""What ``score`` reads from a results folder's config.json."""


class ResultsError(ValueError):
    """A results folder that cannot be used, with what to do about it."""


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-style Markdown table (numbers rounded to ``digits``)."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "-" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_table(frame: pd.DataFrame, out: Path, stem: str, markdown: bool = False) -> None:
    frame.to_csv(out / f"{stem}.csv", index=False)
    if markdown:
        (out / f"{stem}.md").write_text(markdown_table(frame))


def probe_path(out: Path, layer: int, kind: str) -> Path:
    return out / PROBES_DIR / f"{kind}_layer{layer}.pt"


def save_probes(probes: dict[tuple[int, str], Probe], out: Path) -> None:
    import torch

    (out / PROBES_DIR).mkdir(parents=True, exist_ok=True)
    for (layer, kind), probe in probes.items():
        torch.save(probe.to_state(), probe_path(out, layer, kind))


@dataclass(frozen=True)
class SavedStudy:
    """A results folder: its config and the probes trained on the whole dataset."""

    folder: Path
    config: dict
    probes: dict[tuple[int, str], Probe]


def read_config(folder: str | Path) -> dict:
    """A results folder's ``config.json``, with the entries ``score`` needs (no torch needed)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{folder} is not a results folder (no config.json). Run "
            f"`python -m probing reproduce --out {folder}` first, or pass --results."
        )
    rerun = f"Rerun `python -m probing reproduce --out {folder}` to rewrite it."
    try:
        config = json.loads(config_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{config_file} is not valid JSON ({error}). {rerun}") from None
    for path in CONFIG_KEYS:
        entry = config
        for depth, key in enumerate(path):
            if not isinstance(entry, dict) or key not in entry:
                raise ResultsError(
                    f"{config_file} has no {'.'.join(path[: depth + 1])!r} entry: the folder may have been "
                    f"written by another version of this tool, or edited. {rerun}"
                )
            entry = entry[key]
    return config


def load_study(folder: str | Path) -> SavedStudy:
    """Read ``config.json`` and the saved probes of a ``reproduce`` results folder."""
    folder = Path(folder)
    config = read_config(folder)
    probes = {}
    for path in sorted((folder / PROBES_DIR).glob("*_layer*.pt")):
        key, probe = _load_probe(path, folder)
        probes[key] = probe
    if not probes:
        raise FileNotFoundError(f"{folder / PROBES_DIR} holds no trained probes; rerun `reproduce`")
    return SavedStudy(folder, config, probes)


def _load_probe(path: Path, folder: Path) -> tuple[tuple[int, str], Probe]:
    import torch

    from probing.probes import Probe

    try:
        kind, layer = path.stem.rsplit("_layer", 1)
        return (int(layer), kind), Probe.from_state(torch.load(path, weights_only=True))
    except Exception as error:  # noqa: BLE001 - any damage becomes one message naming the file
        detail = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {detail[0][:200]}" if detail else type(error).__name__
        raise ResultsError(
            f"{path} is damaged or not a probe saved by `reproduce` ({reason}). Delete it to score with "
            f"the other probes, or rerun `python -m probing reproduce --out {folder}` to retrain it."
        ) from error


def command_line() -> str:
    return " ".join(["python -m probing", *sys.argv[1:]])
