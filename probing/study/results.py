"""A study's results (:class:`StudyResult`): its tables, saved to and loaded from a results folder
(:mod:`probing.study.folder` says which files it holds). ``reproduce`` writes one, ``score`` and the
dashboard read one.

No pickle: tables are CSV, the config JSON, and probes plain state dicts loaded with
``torch.load(weights_only=True)``. torch is imported only where probes are saved or loaded, so
that ``score`` can refuse a missing or outdated folder (:func:`read_config`) before torch loads.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from probing.study.config import StudyConfig, check_device_name
from probing.constants import NIE_MIN_Z
from probing.formatting import markdown_table
from probing.study.folder import (
    CONFIG_FILE, PROBE_FILE, PROBES_DIR, TABLE_FILES, ResultsError, load_probe, output_files, probe_reads,
    read_config, recorded_files, save_probes, written_here,
)

if TYPE_CHECKING:
    from probing.probes.estimators import Probe

PACKAGES = ("torch", "transformers", "accelerate", "numpy", "pandas", "scikit-learn", "diskcache", "gguf")
MARKDOWN_TABLES = ("directions_cosine", "directions_sign")
TEXT_COLUMNS = ("model", "probe", "split", "heldout", "split_a", "split_b", "analysis", "train", "test", "statement",
                "topic", "polarity", "direction", "layers", "position")
"""Columns read back as text, whatever they look like (a topic may be called "1" or "nan")."""
GRID_KEYS = ("layers", "probes", "seeds", "split", "epochs", "lr", "batch_size", "weight_decay", "linear_solver",
             "C", "controls")
"""The options config.json has recorded under "grid" since the first version (with "device")."""
RECORD_KEYS = ("position", "cache", "grid", "seeds", "study", "files")
"""config.json entries written from the config and the save; the rest of the file is the study's ``meta``."""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def command_line() -> str:
    return " ".join(["python -m probing", *sys.argv[1:]])


def generalization_markdown(generalization: pd.DataFrame, ccs: pd.DataFrame) -> str:
    """The generalization analyses as one Markdown document: per layer and probe, the topic matrix of
    accuracy (rows: trained on, columns: tested on), the text-only control's matrix, the polarity
    transfer and CCS."""
    from probing.analyses.generalization import ccs_summary, matrix, polarity_table

    parts = ["# Generalization\n"]
    topics = generalization[generalization.analysis == "topics"] if not generalization.empty else generalization
    if not topics.empty:
        first = topics.iloc[0]
        control = matrix(topics, first.layer, first.probe, "text_only_accuracy")
        parts += ["## Text-only control (same splits, words only)\n", markdown_table(control.reset_index())]
        for (layer, probe), _ in topics.groupby(["layer", "probe"], sort=False):
            table = matrix(topics, layer, probe).reset_index()
            parts += [f"\n## {probe} probe at layer {layer}: accuracy, trained on (rows) / tested on (columns)\n",
                      markdown_table(table)]
    polarity = polarity_table(generalization) if not generalization.empty else pd.DataFrame()
    if not polarity.empty:
        parts += ["\n## Polarity transfer: accuracy, trained on > tested on (held-out facts)\n", markdown_table(polarity)]
    summary = ccs_summary(ccs)
    if not summary.empty:
        parts += ["\n## CCS (no labels): accuracy over seeds and cosine to the supervised directions\n",
                  markdown_table(summary)]
    return "\n".join(parts)


def read_table(path: Path) -> pd.DataFrame:
    """A CSV written by :meth:`StudyResult.save`, read back exactly (floats round-trip; text stays text)."""
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={column: str for column in TEXT_COLUMNS})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as error:
        raise ResultsError(f"{path} is damaged or not a table written by this tool ({error}). Rerun "
                           f"`python -m probing reproduce --out {path.parent} --overwrite` to rewrite it.") from None
    for column in TEXT_COLUMNS:
        if column in frame:
            frame[column] = frame[column].fillna("")
    return frame


def _config_from_record(record: dict, folder: Path) -> StudyConfig:
    """The StudyConfig of a config.json: its "study" entry or, in folders written before there was
    one, the "grid" entry and the top-level keys. A device this machine lacks (a folder made on a
    GPU, opened on a laptop) becomes None: this machine's default (``meta`` keeps what ran)."""
    if "study" in record:
        options = dict(record["study"]) if isinstance(record["study"], dict) else record["study"]
    else:
        grid = record.get("grid") if isinstance(record.get("grid"), dict) else {}
        device = grid.get("device", "auto")
        options = {**StudyConfig().to_dict(), **{key: grid[key] for key in GRID_KEYS if key in grid},
                   "model": record["model"]["name"], "dtype": record["model"]["dtype"],
                   "device": None if device == "auto" else device,
                   "position": record["position"], "cache": record["cache"]}
        if isinstance(record.get("dataset"), dict) and "source" in record["dataset"]:
            options["dataset"] = record["dataset"]["source"]
    if isinstance(options, dict) and options.get("device") is not None and not _device_here(options["device"]):
        options["device"] = None
    try:
        return StudyConfig.from_dict(options)
    except (ValueError, TypeError) as error:
        raise ResultsError(f"{folder / CONFIG_FILE}: {error}. The folder may have been written by another "
                           "version of this tool, or edited.") from None


def _device_here(device: str) -> bool:
    """Whether this machine has ``device`` (a malformed name is left for StudyConfig to refuse)."""
    from probing.model.devices import check_device

    try:
        check_device_name(device)
    except ValueError:
        return True
    try:
        check_device(device)
    except ValueError:
        return False
    return True


STEERING_COLUMNS = ["direction", "alpha", "shift_true", "shift_false", "flipped", "non_finite", "nie"]
"""The dose-response columns the command line, steering.md and the Steer page show."""


def steering_shown(table: pd.DataFrame) -> pd.DataFrame:
    """The shown columns of a dose-response table, an undefined NIE as "undefined" (a table of an
    earlier version, without ``non_finite``, shows what it has)."""
    shown = table[[column for column in STEERING_COLUMNS if column in table]].copy()
    shown["nie"] = [f"{value:.3f}" if np.isfinite(value) else "undefined" for value in shown["nie"]]
    return shown


def steering_notes(table: pd.DataFrame) -> list[str]:
    """Why NIE is undefined, and how many answers were not finite and left out, where either applies."""
    notes = []
    if "baseline_gap" in table:  # the same for every row: one un-steered measurement
        gap, se = table["baseline_gap"].iloc[0], table["baseline_gap_se"].iloc[0]
        if not gap > NIE_MIN_Z * se:
            notes.append(f"NIE is undefined: without steering, the model's mean P(True) - P(False) of true "
                         f"statements minus that of false ones is {gap:+.4f} (standard error {se:.4f}), not above "
                         f"{NIE_MIN_Z:g} standard errors, so dividing a shift by it would measure noise.")
    if "non_finite" in table and (count := int(table["non_finite"].sum())):
        notes.append(f"{count} steered answer(s) were not finite numbers (the alpha overflowed the residual "
                     "stream): they are left out of every statistic and counted in non_finite.")
    return notes


def steering_markdown(table: pd.DataFrame) -> str:
    """The dose-response table per direction: shifts, flips, non-finite answers and NIE by alpha."""
    parts = [f"# Steering: layers {table['layers'].iloc[0]}, direction from layer {table['layer'].iloc[0]}, "
             f"{table['position'].iloc[0]} tokens, {table['statements'].iloc[0]} held-out statements\n",
             "alpha = 1 moves a statement by the distance between the false and true class means along the "
             "direction. shift: mean change of P(True) - P(False); flipped: share of answers whose sign "
             "changes; non_finite: answers that were not finite numbers, left out of the other columns; nie: "
             "normalised indirect effect (Geometry of Truth).\n", *(f"{note}\n" for note in steering_notes(table)),
             markdown_table(steering_shown(table))]
    return "\n".join(parts)


@dataclass
class StudyResult:
    """Everything a study computed, as one object that saves to and loads from a results folder.

    ``results`` has one row per trained probe (model, layer, probe, split, heldout, seed,
    accuracy, auroc, their intervals, n_train, n_test, temperature and the two controls), ``split``
    telling the category, random and within grids apart; ``dynamics`` one row per history record of
    those probes; ``predictions`` one row per held-out statement of each of them (layer, probe,
    split, heldout, seed, row, label, score: see :data:`~probing.analyses.grid.PREDICTION_COLUMNS`);
    the directions tables come from the category grid. ``probes`` are keyed (layer, kind): for a
    grid, probes trained on every statement, which ``score`` and the statement page use.
    ``meta`` holds JSON values: model, dataset, created, command, packages, seconds.
    """

    config: StudyConfig
    meta: dict[str, Any]
    results: pd.DataFrame
    dynamics: pd.DataFrame = field(default_factory=pd.DataFrame)
    directions_cosine: pd.DataFrame = field(default_factory=pd.DataFrame)
    directions_sign: pd.DataFrame = field(default_factory=pd.DataFrame)
    directions_matrices: pd.DataFrame = field(default_factory=pd.DataFrame)
    generalization: pd.DataFrame = field(default_factory=pd.DataFrame)
    generalization_errors: pd.DataFrame = field(default_factory=pd.DataFrame)
    ccs: pd.DataFrame = field(default_factory=pd.DataFrame)
    statements: pd.DataFrame = field(default_factory=pd.DataFrame)
    steering: pd.DataFrame = field(default_factory=pd.DataFrame)
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)
    probes: dict[tuple[int, str], Probe] = field(default_factory=dict, repr=False)
    folder: Path | None = None
    """Where it was saved to or loaded from."""
    notes: list[str] = field(default_factory=list, repr=False)
    """What loading it found to say (older probe files), one line each."""
    _derived: dict[tuple, pd.DataFrame] = field(default_factory=dict, init=False, repr=False, compare=False)
    """Tables computed from the predictions (bootstraps take seconds), kept for the pages' reruns."""

    def __post_init__(self) -> None:
        # CSV reads numbers back as float64: hold them so from the start, so a loaded copy is equal.
        for name in TABLE_FILES:
            frame = getattr(self, name)
            narrow = frame.select_dtypes("float32").columns
            if len(narrow):
                setattr(self, name, frame.astype({column: "float64" for column in narrow}))

    # ------------------------------------------------------------------ views for pages and exports

    @property
    def splits(self) -> list[str]:
        """Split kinds with results, the study's own split first."""
        present = set(self.results["split"]) if "split" in self.results else set()
        return [kind for kind in (self.config.split, *sorted(present - {self.config.split})) if kind in present]

    def split_results(self, split: str | None = None) -> pd.DataFrame:
        """Result rows of one split kind (default: the study's ``config.split``)."""
        if self.results.empty:
            return self.results
        return self.results[self.results["split"] == (split or self.config.split)]

    def accuracy_table(self, statistic: str = "mean", split: str | None = None) -> pd.DataFrame:
        """Rows = probe kinds, columns = layers (-17 .. -1): the mean or max over splits of one split kind."""
        from probing.analyses.grid import accuracy_table  # beside the grid code, which imports torch

        return accuracy_table(self.split_results(split), statistic)

    def _once(self, key: tuple, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """``compute()``, once per StudyResult (the dashboard keeps a loaded one for its reruns)."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]

    def _shares(self) -> pd.DataFrame:
        from probing.analyses.intervals import statement_shares

        return self._once(("shares",), lambda: statement_shares(self.predictions) if len(self.predictions)
                          else pd.DataFrame())

    def accuracy_intervals(self) -> pd.DataFrame:
        """split, probe, layer, accuracy, splits, accuracy_lower, accuracy_upper: each split kind's mean accuracy
        over splits and seeds with its 95 % bootstrap interval over held-out statements (NaN without predictions:
        see :mod:`probing.analyses.intervals` for what it covers)."""
        from probing.analyses.intervals import accuracy_intervals

        return self._once(("intervals",), lambda: accuracy_intervals(self.results, self._shares()))

    def best_layers(self, split: str | None = None) -> pd.DataFrame:
        """Per probe kind, the best layer of one split kind (default ``config.split``), the runner-up and whether
        a paired bootstrap on the same statements tells them apart (``distinguishable``)."""
        from probing.analyses.intervals import best_layers

        split = split or self.config.split
        return self._once(("best", split), lambda: best_layers(self.results, self._shares(), split))

    def calibration(self) -> pd.DataFrame:
        """Reliability bins and ECE, raw and temperature-scaled, per (split kind, layer, probe kind), pooled over
        splits and seeds (:func:`probing.analyses.intervals.calibration`); empty without predictions."""
        from probing.analyses.intervals import calibration

        return self._once(("calibration",), lambda: calibration(self.results, self.predictions))

    def accuracy_markdown(self, split: str | None = None) -> str:
        """The mean accuracy table of one split kind as Markdown, each cell ``0.553 [0.541, 0.565]`` where there
        are predictions, and the best layer per probe kind."""
        from probing.analyses.intervals import best_layer_lines, interval_table

        split = split or self.config.split
        if self.predictions.empty or split not in set(self.predictions["split"]):
            return markdown_table(self.accuracy_table("mean", split))
        best = best_layer_lines(self.best_layers(split))
        return "\n".join([
            markdown_table(interval_table(self.accuracy_intervals(), split)),
            "Mean over splits and seeds [95 % bootstrap interval over the held-out statements].\n",
            *(["Best layer per probe kind, against the runner-up (difference [95 % paired bootstrap interval]):\n",
               *best, ""] if best else [])])

    def cell_dynamics(self, layer: int, kind: str, heldout: str | None = None,
                      split: str | None = None) -> pd.DataFrame:
        """History records of the (layer, kind) probes of one split kind, or of one held-out split."""
        dynamics = self.dynamics
        if dynamics.empty:
            return dynamics
        chosen = ((dynamics["layer"] == layer) & (dynamics["probe"] == kind)
                  & (dynamics["split"] == (split or self.config.split)))
        if heldout is not None:
            chosen &= dynamics["heldout"] == heldout
        return dynamics[chosen]

    def cell_per_topic(self, layer: int, kind: str, split: str | None = None) -> pd.DataFrame:
        """Per held-out topic: accuracy and the controls (text_only, shuffled), means over seeds."""
        rows = self.split_results(split)
        rows = rows[(rows["layer"] == layer) & (rows["probe"] == kind)]
        columns = {"accuracy": "accuracy", "text_only": "text_only_accuracy", "shuffled": "shuffled_accuracy"}
        means = {name: (column, "mean") for name, column in columns.items() if column in rows}
        return rows.groupby("heldout", sort=False).agg(**means).reset_index().rename(columns={"heldout": "topic"})

    def to_markdown(self, title: str = "") -> str:
        """The accuracy tables (and the directions, where there are some) as one Markdown document."""
        split = self.config.split
        parts = [f"# {title}\n" if title else "",
                 f"## Average accuracy over the {split} splits\n", self.accuracy_markdown(),
                 f"\n## Maximum accuracy over the {split} splits\n", markdown_table(self.accuracy_table("max"))]
        if "random" in self.splits and split != "random":
            parts += ["\n## Random split accuracy\n", self.accuracy_markdown("random")]
        if not self.directions_cosine.empty:
            parts += ["\n## Truth directions: mean pairwise cosine\n", markdown_table(self.directions_cosine),
                      "\n## Truth directions: fractional sign equality\n", markdown_table(self.directions_sign)]
        return "\n".join(part for part in parts if part)

    def to_csv(self) -> str:
        """Every result row (all split kinds, with the ``split`` column) as CSV text."""
        return self.results.to_csv(index=False)

    # ------------------------------------------------------------------ the folder

    def config_record(self) -> dict[str, Any]:
        """What config.json holds: ``meta``, the config under "study", and the keys older readers use."""
        config = self.config
        grid = {key: getattr(config, key) for key in GRID_KEYS}
        grid = {**{k: list(v) if isinstance(v, tuple) else v for k, v in grid.items()},
                "device": config.device or "auto"}
        return {**self.meta, "position": config.position, "cache": config.cache, "grid": grid,
                "seeds": list(range(config.seeds)), "study": config.to_dict()}

    def save(self, folder: str | Path) -> Path:
        """Write the results folder, listing its files in config.json ("files"). Files an earlier save wrote
        there (:func:`written_here`) that this result lacks (a previous run's random-split table, probes of
        other layers) are removed, so the folder is this result alone; no other file is ever removed."""
        folder = Path(folder).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        earlier = written_here(folder)
        written: set[str] = set()

        def write(frame: pd.DataFrame, file: str, markdown: bool = False) -> None:
            if not frame.columns.empty:  # a fast gzip level: the predictions take seconds at the default
                frame.to_csv(folder / file, index=False, compression={"method": "gzip", "compresslevel": 3, "mtime": 0}
                             if file.endswith(".gz") else None)
                written.add(file)
                if markdown:
                    write_markdown(markdown_table(frame), file.split(".")[0])

        def write_markdown(text: str, stem: str) -> None:
            (folder / f"{stem}.md").write_text(text)
            written.add(f"{stem}.md")

        if not self.results.empty:
            write(self.accuracy_table("mean"), "accuracy_mean.csv")
            write_markdown(self.accuracy_markdown(), "accuracy_mean")
            write(self.accuracy_table("max"), "accuracy_max.csv", True)
        if "random" in self.splits and self.config.split != "random":
            write(self.accuracy_table("mean", "random"), "accuracy_random.csv")
            write_markdown(self.accuracy_markdown("random"), "accuracy_random")
        if not self.results.empty and not self.predictions.empty:
            write(self.accuracy_intervals(), "accuracy_intervals.csv")
            write(pd.concat([self.best_layers(kind).assign(split=kind) for kind in self.splits], ignore_index=True),
                  "best_layers.csv")
            write(self.calibration(), "calibration.csv")
        for name, file in TABLE_FILES.items():
            write(getattr(self, name), file, name in MARKDOWN_TABLES)
        if not self.generalization.empty or not self.ccs.empty:
            write_markdown(generalization_markdown(self.generalization, self.ccs), "generalization")
        if not self.steering.empty:
            write_markdown(steering_markdown(self.steering), "steering")
        written |= save_probes(self.probes, folder, probe_reads(self.config, self.meta))
        for stale in earlier - written - {CONFIG_FILE}:
            (folder / stale).unlink(missing_ok=True)
        record = {**self.config_record(), "files": sorted(written)}
        (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> StudyResult:
        """Read a results folder, including those written before the "study" entry and the
        ``split`` column existed (their rows get the config's split)."""
        folder = Path(folder).expanduser()
        record = read_config(folder)
        config = _config_from_record(record, folder)
        owned = recorded_files(record, folder)
        tables = {}
        for name, file in TABLE_FILES.items():
            path = folder / file
            frame = read_table(path) if file in owned and path.is_file() else pd.DataFrame()
            if name in ("results", "dynamics") and not frame.empty and "split" not in frame:
                frame.insert(list(frame.columns).index("probe") + 1, "split", config.split)
            tables[name] = frame
        meta = {key: value for key, value in record.items() if key not in RECORD_KEYS}
        reads = probe_reads(config, meta)
        loaded = [load_probe(folder / name, folder, reads) for name in sorted(owned)
                  if PROBE_FILE.fullmatch(name) and (folder / name).is_file()]
        notes = []
        if not all(recorded for *_, recorded in loaded):
            notes.append(f"the probes in {folder / PROBES_DIR} were saved before probe files recorded the token "
                         f"position and model they read: they are taken to read what {CONFIG_FILE} says")
        if ignored := sorted(set(output_files(folder)) - owned):
            notes.append(f"{', '.join(ignored[:3])}{' ...' if len(ignored) > 3 else ''} in {folder} were not written "
                         f"by this tool (its {CONFIG_FILE} does not list them), so they are not read")
        return cls(config, meta, probes={key: probe for key, probe, _ in loaded}, folder=folder, notes=notes,
                   **tables)

