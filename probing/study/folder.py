"""The results folder: its layout (``config.json``, the tables, ``probes/<kind>_layer<L>.pt``), where
new ones go, which files a save may replace, and reading a folder's record before anything loads.

A folder is a record, never an instruction: only files of the names listed here are read or
written, and only those its ``config.json`` says this tool wrote are replaced.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probing import environment

if TYPE_CHECKING:
    from probing.probes.estimators import Probe
    from probing.study.config import StudyConfig

PROBES_DIR = "probes"
CONFIG_FILE = "config.json"
CONFIG_KEYS = (("model", "name"), ("model", "device"), ("model", "dtype"), ("position",), ("cache",))
"""What ``score`` reads from a results folder's config.json."""
TABLE_FILES = {"results": "per_topic.csv", "dynamics": "dynamics.csv", "directions_cosine": "directions_cosine.csv",
               "directions_sign": "directions_sign.csv", "directions_matrices": "directions_matrices.csv",
               "generalization": "generalization.csv", "generalization_errors": "generalization_errors.csv.gz",
               "ccs": "ccs.csv", "statements": "statements.csv", "steering": "steering.csv",
               "predictions": "predictions.csv.gz"}
"""StudyResult field -> its file (the errors, one row per misclassified statement and transfer, and the
predictions, one row per held-out statement and probe, compressed)."""
MARKDOWN_FILES = ("accuracy_mean.md", "accuracy_max.md", "accuracy_random.md", "directions_cosine.md",
                  "directions_sign.md", "generalization.md", "steering.md")
ACCURACY_TABLES = ("accuracy_mean", "accuracy_max", "accuracy_random")
SUMMARY_FILES = ("accuracy_intervals.csv", "best_layers.csv", "calibration.csv")
"""Computed from the predictions on saving: the mean accuracies' intervals, the best layers, calibration."""
OUTPUT_FILES = frozenset({*TABLE_FILES.values(), *(f"{stem}.csv" for stem in ACCURACY_TABLES), *MARKDOWN_FILES,
                          *SUMMARY_FILES})
"""Every file a results folder may hold besides config.json and the probes."""
PROBE_FILE = re.compile(rf"{PROBES_DIR}/[a-z_]+_layer-?\d+\.pt")
PROBE_READS = ("layer", "kind", "position", "fingerprint", "dtype")
"""What a probe file records about the activations its probe was trained on (under "reads")."""
RESULTS_ROOT = "results"  # where new results folders go, relative to the working directory
EXAMPLE_STUDY = Path(__file__).resolve().parent / "example"
"""The study that ships with the package (the embedded model on 2,400 built-in statements, in float32), which
the dashboard opens on a first start; rebuilt by `make example-study` (tests/test_example_study.py checks it
matches what that command's `reproduce` writes)."""


class ResultsError(ValueError):
    """A results folder that cannot be used, with what to do about it."""


def probe_path(out: Path, layer: int, kind: str) -> Path:
    return out / PROBES_DIR / f"{kind}_layer{layer}.pt"


def save_probes(probes: dict[tuple[int, str], Probe], out: Path, reads: dict[str, Any]) -> set[str]:
    """Write each probe as ``probes/<kind>_layer<L>.pt`` with what it read (``reads``: token position,
    model fingerprint and dtype; its layer and kind are added) under "reads"; the files' folder-relative names."""
    import torch

    (out / PROBES_DIR).mkdir(parents=True, exist_ok=True)
    for (layer, kind), probe in probes.items():
        torch.save({**probe.to_state(), "reads": {**reads, "layer": layer, "kind": kind}},
                   probe_path(out, layer, kind))
    return {probe_path(out, layer, kind).relative_to(out).as_posix() for layer, kind in probes}


def probe_reads(config: StudyConfig, meta: dict[str, Any]) -> dict[str, Any]:
    """What a study's probes read (``PROBE_READS`` but layer and kind, which each file adds): the token
    position, and the model's fingerprint and dtype as ``meta`` records them (None where it does not)."""
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    return {"position": config.position, "fingerprint": model.get("fingerprint"), "dtype": model.get("dtype")}


def is_output_name(name: str) -> bool:
    """Whether ``name`` (relative to a results folder, with /) is a file a results folder may hold."""
    return name in OUTPUT_FILES or name == CONFIG_FILE or PROBE_FILE.fullmatch(name) is not None


def written_here(folder: Path) -> set[str]:
    """The files of ``folder`` that this tool wrote, by its config.json (:func:`recorded_files`); nothing
    without a readable one."""
    try:
        return recorded_files(json.loads((folder / CONFIG_FILE).read_text()), folder)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return set()


def recorded_files(record: Any, folder: Path) -> set[str]:
    """The files of ``folder`` its config.json ``record`` says this tool wrote: its "files" (only names a results
    folder holds, so a copied record cannot name others) or, in a folder written before the record listed them,
    every file of those names it holds. Nothing for a record of no study."""
    if not isinstance(record, dict):
        return set()
    if isinstance(record.get("files"), list):
        return {name for name in record["files"] if isinstance(name, str) and is_output_name(name)}
    if "study" in record or "grid" in record:  # written before "files": its files of these names are its own
        return set(output_files(folder))
    return set()


def output_files(folder: Path) -> list[str]:
    """The files in ``folder`` whose names a results folder's files have (config.json aside)."""
    names = [path.name for path in folder.iterdir() if path.is_file()] if folder.is_dir() else []
    probes = folder / PROBES_DIR
    if probes.is_dir():
        names += [f"{PROBES_DIR}/{path.name}" for path in probes.iterdir() if path.is_file()]
    return sorted(name for name in names if is_output_name(name) and name != CONFIG_FILE)


def check_results_out(out: str | Path, dataset: str | None, *, overwrite: bool = False) -> Path:
    """``out`` (``~`` expanded) if results may be written there without losing a file: refuses a file, a
    folder holding the input statements, another study's folder, and files of the results' names that this
    tool did not write there (all but the first with ``overwrite``); an input file results would write over,
    always. Checked before anything is extracted or trained."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, but results go into a folder: pass a folder (it is created if "
                         "missing)")
    if not out.is_dir():
        above = next(folder for folder in out.absolute().parents if folder.exists())
        if not above.is_dir():
            raise ValueError(f"--out {out} cannot be made: {above} is a file. Pass a folder outside it")
        return out
    again = "pass a new folder, or add --overwrite to write there anyway (files this tool did not write are kept)"
    source = Path(dataset).expanduser() if dataset and dataset != "builtin" else None  # else none on disk
    if source is not None and source.exists() and (source if source.is_dir() else source.parent).resolve() == \
            out.resolve():
        if source.is_file() and source.name in OUTPUT_FILES:
            raise ValueError(f"--out {out} holds the input statements {source.name}, which the results would write "
                             "over: pass another folder for --out")
        if not overwrite:
            raise ValueError(f"--out {out} is the folder of the input statements ({source}): {again}")
    if overwrite:
        return out
    if (out / CONFIG_FILE).is_file():
        raise ValueError(f"--out {out} holds another study (its {CONFIG_FILE}): {again}, replacing its results")
    foreign = sorted(set(output_files(out)) - written_here(out))
    if foreign:
        raise ValueError(f"--out {out} holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which "
                         f"this tool did not write and the results would replace: {again}")
    return out


def config_file(folder: str | Path) -> Path:
    """``folder``'s config.json, or an error saying what ``folder`` is instead of a results folder."""
    folder = Path(folder).expanduser()
    written = "pass a folder written by `python -m probing reproduce --out DIR` or the dashboard"
    if not folder.exists():
        raise FileNotFoundError(f"{folder} is not a results folder: there is no such folder; {written}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is a file, not a results folder: {written}")
    path = folder / CONFIG_FILE
    if not path.is_file():
        data = sorted(file.name for file in folder.glob("*.csv"))
        if data:
            raise FileNotFoundError(
                f"{folder} is not a results folder (no {CONFIG_FILE}) but holds CSV files such as {data[0]}: "
                f"statements are passed with --dataset; for --results {written}")
        raise FileNotFoundError(f"{folder} is not a results folder (no {CONFIG_FILE}): {written}, or run "
                                "`python -m probing reproduce` first")
    return path


def read_config(folder: str | Path) -> dict:
    """A results folder's ``config.json``, with the entries ``score`` needs (no torch needed)."""
    path = config_file(folder)
    rerun = f"Rerun `python -m probing reproduce --out {path.parent} --overwrite` to rewrite it."
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{path} is not valid JSON ({error}). {rerun}") from None
    for keys in CONFIG_KEYS:
        entry = config
        for depth, key in enumerate(keys):
            if not isinstance(entry, dict) or key not in entry:
                raise ResultsError(
                    f"{path} has no {'.'.join(keys[: depth + 1])!r} entry: the folder may have been "
                    f"written by another version of this tool, or edited. {rerun}"
                )
            entry = entry[key]
    return config


def load_probe(path: Path, folder: Path, record: dict[str, Any]) -> tuple[tuple[int, str], Probe, bool]:
    """The probe of ``path``, its (layer, kind), and whether its file records what it read (older files do
    not); refused where that, or its kind, disagrees with the file's name or ``record`` (from config.json)."""
    import torch

    from probing.probes.estimators import Probe

    retrain = (f"Delete it to score with the other probes, or rerun `python -m probing reproduce --out {folder} "
               "--overwrite` to retrain it.")
    try:
        kind, number = path.stem.rsplit("_layer", 1)
        layer = int(number)
        state = torch.load(path, weights_only=True)
        probe = Probe.from_state(state)
    except torch.serialization.pickle.UnpicklingError:  # torch's advice to load it unsafely is not relayed
        raise ResultsError(f"{path} is not a probe file this tool wrote (it holds Python objects or other data, "
                           f"which are never loaded). {retrain}") from None
    except Exception as error:  # noqa: BLE001 - any damage becomes one message naming the file
        detail = str(error).strip().splitlines()
        reason = f"{type(error).__name__}: {detail[0][:200]}" if detail else type(error).__name__
        raise ResultsError(f"{path} is damaged or not a probe saved by `reproduce` ({reason}). {retrain}") from error
    reads = state.get("reads")
    expected = {**record, "layer": layer, "kind": kind}
    if probe.kind != kind:
        raise ResultsError(f"{path} holds a {probe.kind} probe, not the {kind} probe its name says. {retrain}")
    if not isinstance(reads, dict):
        return (layer, kind), probe, False
    for key in PROBE_READS:
        if expected.get(key) is not None and reads.get(key) != expected[key]:
            raise ResultsError(
                f"{path} was trained on activations of {key} {reads.get(key)!r}, but its name or "
                f"{folder / CONFIG_FILE} says {expected[key]!r}: the probe is from another study, or the record "
                f"was edited. {retrain}")
    return (layer, kind), probe, True


def is_results_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def results_folders(root: Path) -> list[Path]:
    """Results folders in ``root``, newest first; ``root`` itself last if it is one (older versions
    of ``reproduce`` wrote into ``results/`` directly)."""
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if is_results_folder(path)]
    found.sort(key=lambda path: (path / CONFIG_FILE).stat().st_mtime, reverse=True)
    return found + [root] * is_results_folder(root)


def results_root() -> Path:
    """Where the command line finds the newest results folder and puts new ones: ``$PROBING_RESULTS``
    (see :mod:`probing.environment`), else ``results/``."""
    return Path(environment.read("PROBING_RESULTS") or RESULTS_ROOT).expanduser()


def latest_results_folder(root: str | Path = RESULTS_ROOT) -> Path:
    """The newest results folder under ``root`` (``root`` itself if it is one and holds none): what
    ``score`` reads when no ``--results`` is given."""
    found = results_folders(Path(root))
    if not found:
        raise FileNotFoundError(f"no results folder in {root}/: run `probing reproduce` first, "
                                "or pass --results DIR")
    return found[0]


def new_results_folder(root: Path, model: str, dataset: str, what: str, name: str = "") -> Path:
    """A folder under ``root`` that does not exist yet: ``name`` if given, else named after the
    model, the statements, what it holds and the time (a number is added on a clash)."""
    stem = _slug(name) if name.strip() else (
        "-".join(_slug(part) for part in (model, dataset, what)) + datetime.now().strftime("-%Y%m%d-%H%M%S"))
    folder, number = Path(root) / stem, 1
    while folder.exists():
        number += 1
        folder = Path(root) / f"{stem}-{number}"
    return folder


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._" else "-" for c in Path(text).name).strip("-") or "x"
