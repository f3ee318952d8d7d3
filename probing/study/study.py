"""One study, built once from a :class:`~probing.study.config.StudyConfig`: the statements, the
activations (node folders of a multi-node extraction merged first), and every piece of work on them
(extract, the grids and final probes, one cell, the generalization analyses, steering, scoring),
each returning a :class:`~probing.study.results.StudyResult` ready to save.

The command line, the dashboard's jobs and ``compare`` all go through :class:`Study`; none of them
builds activations or merges node folders itself. Progress reaches the caller through one
:class:`~probing.study.reporter.Reporter`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from probing.analyses.grid import (
    Cell, CellResult, GridResult, Split, check_splits, make_split, make_splits, run_grid, train_cells,
)
from probing.analyses.generalization import run_generalization
from probing.analyses.scoring import score_statements
from probing.analyses.steering import run_steering
from probing.data.statements import StatementSet
from probing.model.loading import LoadedModel, ModelSpec, check_loadable
from probing.probes.estimators import Probe
from probing.store.activations import Activations
from probing.store.folders import node_stores
from probing.store.merge import NamespaceMerge
from probing.store.reading import describe_meta
from probing.study.assemble import analysis_home, cell_study, finish_study, recorded_same_data, with_generalization
from probing.study.config import SteeringConfig, StudyConfig
from probing.study.folder import check_results_out, new_results_folder, read_config, results_folders
from probing.study.reporter import ANALYSING, EXTRACTING, MERGING, STEERING, TRAINING, Reporter
from probing.study.results import StudyResult

SETTINGS = ("position", "polarity", "split", "epochs", "lr", "batch_size", "weight_decay", "linear_solver", "C",
            "drop_duplicates", "drop_conflicts", "seeds", "controls")
"""Options two studies must share for one found under a results folder to stand in for one to compute."""


def study_activations(config: StudyConfig, *, spec: ModelSpec | None = None, model: LoadedModel | None = None,
                      cache: str | Path | None = None, store_dir: str | Path | None = None,
                      token_budget: int | None = None) -> Activations:
    """The activations a study of ``config`` reads: its model (or ``spec``, or the loaded ``model``), token
    position and token limit, kept in ``cache`` (default: the config's) or ``store_dir``. The one place
    they are built from a config."""
    return Activations(spec or config.model_spec(), position=config.position,
                       cache_dir=config.cache if cache is None else cache, model=model,
                       max_tokens=config.max_tokens, store_dir=store_dir, token_budget=token_budget)


def merge_lines(reports: list[NamespaceMerge], destination: Path, sources: Sequence[Path]) -> list[str]:
    """What a merge of ``sources`` into ``destination`` did, one line per namespace."""
    if not reports:
        return [f"nothing to merge: {', '.join(map(str, sources))} hold no activations"]
    lines = []
    for report in reports:
        skipped = f"; {report.damaged} damaged chunk(s) skipped (recomputed when needed)" if report.damaged else ""
        lines.append(f"{report.namespace} ({describe_meta(report.meta)}){' new' if report.new else ''}: "
                     f"{report.copied} statement(s) copied in {report.chunks} chunk(s), {report.present} copied by "
                     f"an earlier merge, {report.kept} held already (values agree; {destination}'s kept){skipped}")
    return lines


class Study:
    """The statements and activations of one ``config``, and the work a study does on them.

    ``dataset`` and ``activations`` default to what the config names (the dashboard passes the
    activations of the model it holds; tests pass their own); ``store_dir`` keeps the activations in
    a node's own folder. The statements load on first use, so scoring needs none.
    """

    def __init__(self, config: StudyConfig, *, dataset: StatementSet | None = None,
                 activations: Activations | None = None, store_dir: str | Path | None = None,
                 reporter: Reporter | None = None, command: str | None = None) -> None:
        self.config = config
        self.reporter = reporter or Reporter()
        self.command = command
        self.activations = activations or study_activations(config, store_dir=store_dir)
        self._dataset = dataset
        self._merged = store_dir is not None  # a node writes its own folder: nothing to merge into it

    @property
    def dataset(self) -> StatementSet:
        if self._dataset is None:
            self._dataset = self.config.statements(self.reporter)
        return self._dataset

    @classmethod
    def of_results(cls, result: StudyResult, cache: str | Path, *, dataset: StatementSet | None = None,
                   reporter: Reporter | None = None) -> Study:
        """A study of ``result``'s model (as this machine runs it: :func:`study_model`) and token position,
        with activations in ``cache`` (the user's, never the one a results folder records: a folder is a
        record, not an instruction), to score or steer with its probes; :func:`model_notes` and a note when
        the folder recorded another cache go to ``reporter``."""
        study = cls(result.config, dataset=dataset, reporter=reporter,
                    activations=study_activations(result.config, spec=study_model(result)[0], cache=cache))
        notes = model_notes(result, study.activations.fingerprint)
        if Path(result.config.cache).expanduser() != Path(cache).expanduser():
            notes.append(f"the results folder recorded the activation cache {result.config.cache}; a results "
                         f"folder's paths are not used, so activations are read from and written to {cache}")
        for note in notes:
            study.reporter.note(note)
        return study

    # ------------------------------------------------------------------------- activations

    def check(self) -> None:
        """Refuse splits no probe can train on and layers the model lacks: before an extraction that may
        take hours."""
        for kind in self.config.splits:
            check_splits(self.dataset, make_splits(self.dataset, kind), kind)
        self.config.check_layers(self.activations.n_hidden_states)

    def merge_nodes(self) -> list[NamespaceMerge]:
        """Copy what the node folders of a multi-node extraction hold into the cache, once per study (a
        merge copies only what an earlier one did not)."""
        if self._merged:
            return []
        self._merged = True
        nodes = node_stores(self.activations.cache_dir)
        if not nodes:
            return []
        store = self.activations.store.directory
        self.reporter.note(f"merging {len(nodes)} node folder(s) of {nodes[0].parent} into {store} (what an "
                           "earlier merge copied is skipped)")
        self.reporter.set_phase(MERGING, 0)
        reports = self.activations.merge_nodes(self.reporter.progress)
        for line in merge_lines(reports, store, nodes):
            self.reporter.note(line)
        return reports

    def extract(self, texts: Sequence[str] | None = None, shard: tuple[int, int] | None = None) -> int:
        """Merge the node folders (unless this is one shard of several processes: each would merge), then
        compute what the cache lacks of ``texts`` (default: the statements); how many this call computed."""
        texts = self.dataset.statements if texts is None else texts
        if shard is None:
            self.merge_nodes()
        self.reporter.set_phase(EXTRACTING, len(self.activations.missing(texts)))
        return self.activations.ensure(texts, on_progress=self.reporter.progress, shard=shard)

    def layer(self, layer: int) -> np.ndarray:
        """Every statement's hidden state at ``layer`` (extracted already)."""
        return self.activations.layer(self.dataset.statements, layer)

    # ------------------------------------------------------------------------- the study

    def run(self) -> StudyResult:
        """Extract what is missing, train the grid of each of ``config.splits`` and the final probes, and
        with ``config.generalization`` the generalization analyses. The grids' result rows reach the
        reporter as they come."""
        self.check()
        return self._run()

    def _run(self) -> StudyResult:
        config, dataset = self.config, self.dataset
        started = time.perf_counter()
        extracted = self.extract()
        # The final probes (every statement, for ``score``) train in the first grid's stacks.
        per_kind = len(config.layers) * len(config.probes)
        sizes = [per_kind * (config.seeds * len(make_splits(dataset, kind)) + (kind == config.split))
                 for kind in config.splits]
        total = sum(sizes)
        self.reporter.set_phase(TRAINING, total, unit="probes")
        grids: dict[str, GridResult] = {}
        for kind, offset in zip(config.splits, np.cumsum([0, *sizes]).tolist()):
            grids[kind] = run_grid(dataset, self.layer, replace(config, split=kind),
                                   model_name=self.activations.spec.name, on_result=self.reporter.add_record,
                                   on_progress=self._counted_from(offset, total), final=kind == config.split)
        final = grids[config.split].final_probes
        study = finish_study(dataset, self.activations, config, grids, final_probes=final, extracted=extracted,
                             seconds=time.perf_counter() - started, command=self.command)
        return self._with_generalization(study) if config.generalization else study

    def reproduce(self, out: str | Path, overwrite: bool = False) -> StudyResult:
        """:meth:`run`, saved to ``out``. The folder is checked (:func:`~probing.study.folder.check_results_out`:
        ``overwrite`` lets it hold another study or the input statements) and made before the extraction,
        so a folder that would lose files, or cannot be made, fails first."""
        self.check()
        out = check_results_out(out, self.dataset.source, overwrite=overwrite)
        out.mkdir(parents=True, exist_ok=True)
        result = self._run()
        result.save(out)
        return result

    def cell_plan(self, layer: int, kind: str, heldout: str) -> tuple[Split, StudyConfig]:
        """The split holding out ``heldout`` and the config of the one cell (layer, kind) trained on it, refused
        when the split leaves a class out or the model lacks the layer (this split only: another topic's
        problem is no reason to refuse)."""
        split = make_split(self.dataset, heldout)
        check_splits(self.dataset, [split], split.kind)
        config = replace(self.config, layers=(layer,), probes=(kind,), split=split.kind, with_random=False)
        config.check_layers(self.activations.n_hidden_states)
        return split, config

    def train_cell(self, layer: int, kind: str, heldout: str, seed: int) -> tuple[CellResult, StudyResult]:
        """The grid's probe for (layer, kind, the split holding out ``heldout``, seed) with its controls, and
        it as a one-cell study (its probe trained on the split's training rows). Epoch records reach the
        reporter as they come."""
        split, config = self.cell_plan(layer, kind, heldout)
        started = time.perf_counter()
        self.extract()
        stepwise = config.probe_config(kind).trains_in_epochs
        self.reporter.set_phase(TRAINING, config.epochs if stepwise else 0, unit="epochs")

        def on_epoch(record: dict) -> None:
            self.reporter.add_record(dict(record))
            if stepwise:
                self.reporter.progress(record["epoch"], config.epochs)

        (cell,) = train_cells(self.layer(layer), self.dataset, layer, kind, [Cell(split, seed)], config,
                              model_name=self.activations.spec.name, on_epoch=on_epoch)
        return cell, cell_study(self.dataset, self.activations, config, cell, seconds=time.perf_counter() - started,
                                command=self.command)

    def generalization(self, into: StudyResult | None = None) -> StudyResult:
        """The generalization analyses of the config (activations extracted first), joining ``into`` when
        it read the same statements, model and token (:func:`~probing.study.assemble.analysis_home`), else
        a study of their own."""
        self.extract()
        return self._with_generalization(self._home(into))

    def steering_table(self, config: SteeringConfig) -> pd.DataFrame:
        """The dose-response table of ``config`` (activations extracted first)."""
        self.extract()
        self.reporter.set_phase(STEERING, 0)
        return run_steering(self.dataset, self.activations, config)

    def steering(self, config: SteeringConfig, into: StudyResult | None = None) -> StudyResult:
        """:meth:`steering_table` as ``steering`` of the study it joins (``into`` when it read the same
        statements, model and token, as :meth:`generalization`'s), recorded at the probe layer."""
        table = self.steering_table(config)
        home = self._home(into, replace(self.config, layers=(config.probe_layer,)))
        return replace(home, steering=table, meta={**home.meta, "steering": config.to_dict()})

    def score(self, probes: dict[tuple[int, str], Probe], statements: Sequence[str]) -> pd.DataFrame:
        """P(true) of each statement by each probe (see :func:`~probing.analyses.scoring.score_statements`)."""
        return score_statements(self.activations, probes, statements)

    def new_folder(self, root: str | Path, what: str, name: str = "") -> Path:
        """A new results folder under ``root`` named after the model, the statements and ``what``."""
        return new_results_folder(Path(root), self.activations.spec.name, self.dataset.name, what, name)

    # ------------------------------------------------------------------------- helpers

    def _with_generalization(self, study: StudyResult) -> StudyResult:
        self.reporter.set_phase(ANALYSING, len(self.config.layers), unit="layers")
        analyses = run_generalization(self.dataset, self.layer, self.config, self.reporter.progress)
        return with_generalization(study, analyses, self.config)

    def _home(self, into: StudyResult | None, config: StudyConfig | None = None) -> StudyResult:
        return analysis_home(self.dataset, self.activations, config or self.config, into, self.command)

    def _counted_from(self, offset: int, total: int) -> Callable[[int, int], None]:
        """Progress of one part of a longer count: (done in this part, _) -> (offset + done, total)."""
        return lambda done, _part: self.reporter.progress(offset + done, total)


# ----------------------------------------------------------------------------- a study's model elsewhere


def study_model(study: StudyResult) -> tuple[ModelSpec, list[str]]:
    """The study's model as this machine runs it, and notes (one line each) where that differs
    from the machine the study ran on.

    The model runs on the recorded device if this machine has it (a folder made on a GPU opens
    on a laptop: ``StudyResult.load`` leaves the device unset there), else on this machine's
    default device. The recorded dtype is kept on the same device; on another one the config's
    dtype (unset: that device's default). The recorded revision is always asked for.
    """
    config, ran = study.config, study.meta.get("model", {})
    spec = ModelSpec(config.model, device=config.device, dtype=config.dtype, revision=ran.get("revision"))
    if ran.get("device") in (None, spec.resolved_device):
        return replace(spec, dtype=ran.get("dtype") or spec.dtype), []
    return spec, [f"this study ran on {ran['device']} ({ran.get('dtype')}), which this machine lacks: the "
                  f"model runs on {spec.resolved_device} ({spec.resolved_dtype})"]


def model_notes(study: StudyResult, fingerprint: str) -> list[str]:
    """:func:`study_model`'s notes for a model whose fingerprint is ``fingerprint``, and one more when
    it runs as the study's did but its weights differ: the probes then read activations they never saw."""
    spec, notes = study_model(study)
    recorded = study.meta.get("model", {}).get("fingerprint")
    if not notes and recorded and recorded != fingerprint:
        notes.append(f"the model {spec.name} here is not the one this study ran on (fingerprint {fingerprint}, "
                     f"the folder's {recorded}: other weights or revision): its probes may score it wrongly")
    return notes


# ----------------------------------------------------------------------------- several models


def find_study(root: str | Path, study: Study, config: StudyConfig) -> StudyResult | None:
    """A results folder under ``root`` that read ``study``'s statements with its model (fingerprint) at its
    token, with ``config``'s settings and at least its layers and probes; None if there is none."""
    sha256 = study.dataset.fingerprint()
    for folder in results_folders(Path(root)):
        try:  # config.json first: only a folder of these statements, model and token is loaded whole
            if not recorded_same_data(read_config(folder), sha256, study.activations):
                continue
            found = StudyResult.load(folder)
        except (OSError, ValueError):
            continue
        if (not found.results.empty
                and not [name for name in SETTINGS if getattr(found.config, name) != getattr(config, name)]
                and set(config.layers) <= set(found.config.layers) and set(config.probes) <= set(found.config.probes)):
            return found
    return None


def studies_for_models(dataset: StatementSet, models: Sequence[str], config: StudyConfig, root: str | Path,
                       reporter: Reporter | None = None) -> list[StudyResult]:
    """One study per model name on ``dataset`` with ``config``'s settings, the first model at
    ``config.layers`` and the others at the layers of matched relative depth: an existing folder under
    ``root`` where there is one (see :func:`find_study`), else computed and saved there. Every model is
    checked first (:func:`~probing.model.loading.check_loadable`), so a typo in the second name fails
    before the first model's study runs."""
    from probing.analyses.compare import matched_layers

    specs = [ModelSpec(name, device=config.device, dtype=config.dtype) for name in models]
    for spec in specs:
        check_loadable(spec)
    studies, first_depth = [], None
    for name, spec in zip(models, specs):
        study = Study(replace(config, model=name), dataset=dataset, command=f"compare: {name}",
                      reporter=_Labelled(reporter or Reporter(), name), activations=study_activations(config, spec=spec))
        n = study.activations.n_hidden_states
        layers = config.layers if first_depth is None else matched_layers(config.layers, first_depth, n)
        first_depth = first_depth or n
        study.config = replace(study.config, layers=layers)
        found = find_study(root, study, study.config)
        if found is None:
            found = study.run()
            found.save(study.new_folder(root, "study"))
        studies.append(found)
    return studies


class _Labelled(Reporter):
    """``reporter`` with each phase named after what it belongs to (``llama-2-7b: training``)."""

    def __init__(self, reporter: Reporter, label: str) -> None:
        self.reporter, self.label = reporter, label

    def set_phase(self, phase: str, total: int = 0, unit: str = "statements") -> None:
        self.reporter.set_phase(f"{self.label}: {phase}", total, unit)

    def progress(self, done: int, total: int) -> None:
        self.reporter.progress(done, total)

    def add_record(self, record: dict) -> None:
        self.reporter.add_record(record)

    def note(self, text: str) -> None:
        self.reporter.note(text)
