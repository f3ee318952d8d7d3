"""Streamlit pieces every page uses: the sidebar, the shared context, job panels and results.

Computation lives in ``probing/``; this module only wires widgets to it. What the session
shows lives in ``st.session_state``: the open study (a results folder), the probes trained
on the Train page, and the job. Nothing here imports torch: the navigation, sidebar and page
title are drawn first, and the model is loaded after them, by the pages that need it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from pages._statement_sets import APP_ROOT, OTHER_PATH, dataset_from_sidebar
from probing import POSITIONS, StatementSet
from probing.dashboard.jobs import Job, ModelBusy, ModelHolder, same_model, start_job
from probing.study.results import StudyResult
from probing.formatting import error_text
from probing.study.folder import ResultsError, config_file
from probing.dashboard.settings import (
    MODEL_CHOICES, app_arguments, data_roots, default_cache_dir, default_model_name, example_on_start, fits_in_memory,
    model_choices, path_under_roots, results_location,
)
from probing.study.folder import EXAMPLE_STUDY, RESULTS_ROOT, is_results_folder, results_folders
from probing.store.folders import node_stores

if TYPE_CHECKING:
    from probing.store.activations import Activations
    from probing.model.loading import LoadedModel, ModelSpec

NO_RESULTS = "None: work live"
EXAMPLE_LABEL = "Example study (ships with the package)"
FOLDERS = "two results folders"  # the Compare page's first mode

POSITION_HELP = {
    "last": "last token of the statement, its final period included",
    "before_period": "last token before the final period (what the SAPLMA code reads)",
    "mean": "mean over the statement's tokens",
}


@st.cache_resource(show_spinner=False)
def model_holder(cache_dir: str) -> ModelHolder:
    """One model per process, shared by every page and browser session."""
    return ModelHolder(cache_dir)


@st.cache_resource(show_spinner=False, max_entries=16)
def _study(folder: str, written: float) -> StudyResult:
    """A results folder, read once per version of its config.json (``written``: its mtime)."""
    return StudyResult.load(folder)


def load_study(folder: str | Path) -> StudyResult:
    """A results folder, read once per version of its config.json."""
    path = config_file(Path(folder).resolve())  # a clear error where it is no results folder
    return _study(str(path.parent), path.stat().st_mtime)


@dataclass
class Context:
    """What the sidebar chose, shared with the page being shown."""

    holder: ModelHolder
    model: LoadedModel | None
    dataset: StatementSet | None
    position: str
    cache_dir: Path
    results_root: Path  # where finished grids and trainings are saved, and listed from
    study: StudyResult | None  # the open results folder
    autoload: bool  # a page that needs a model loads the default one (not when a folder was opened at start)

    @property
    def ready(self) -> bool:
        return self.model is not None and self.dataset is not None

    @property
    def activations(self) -> Activations:
        return self.holder.activations(self.position)

    @property
    def key(self) -> tuple[str, str, str]:
        """What computed views depend on, by content: model fingerprint, token position, statements."""
        return self.model.fingerprint, self.position, self.dataset.fingerprint()


def trained_probes() -> dict:
    """(model fingerprint, token position, layer, kind) -> TrainOutcome: the probes this session
    trained on the Train page (a later one replaces an earlier one of the same key)."""
    return st.session_state.setdefault("trained", {})


# ----------------------------------------------------------------------------- jobs


def current_job() -> Job | None:
    return st.session_state.get("job")


def job_running() -> bool:
    job = current_job()
    return job is not None and job.running


def start(ctx: Context, kind: str, label: str, work, params: dict | None = None) -> None:
    """Start a background job for this session (one at a time).

    Used as a button's ``on_click`` callback, so the run that follows already sees the job
    running and draws every clashing control disabled.
    """
    if job_running():
        return
    st.session_state["job"] = start_job(Job(kind=kind, label=label, params=params or {}), work, holder=ctx.holder)


def collect_finished_job() -> None:
    """Take a finished job's result into the session once: a trained probe joins the session's
    probes; a grid (already saved as a results folder by the job) becomes the open study."""
    job = current_job()
    if job is None or job.running or st.session_state.get("collected_job") is job:
        return
    st.session_state["collected_job"] = job
    st.session_state["job_seen_running"] = False
    if job.error or job.result is None:
        return
    if job.kind == "train":
        outcome = job.result
        trained_probes()[(outcome.fingerprint, outcome.position, outcome.layer, outcome.kind)] = outcome
        st.session_state["last_train"] = outcome
    elif job.kind in ("grid", "directions", "generalization", "steering"):
        st.session_state["results_choice"] = str(job.result.folder)  # the sidebar opens it
    elif job.kind == "all_tokens":  # the Trace page shows it beside the probes trained at one token
        key = tuple(job.params[name] for name in ("fingerprint", "layer", "kind"))
        st.session_state.setdefault("all_tokens", {})[key] = job.result
    elif job.kind == "compare":  # the Compare page shows the two folders
        st.session_state["compare_mode"] = FOLDERS
        st.session_state["compare_a"], st.session_state["compare_b"] = (str(study.folder) for study in job.result)


def job_panel(kind: str, live=None) -> None:
    """Progress bar, rate and time left of this session's ``kind`` job, redrawn twice a second while it runs.

    ``live(job)`` draws whatever the job has produced so far (a chart filling in).
    """
    job = current_job()
    if job is None or job.kind != kind:
        return
    if job.running:
        st.session_state["job_seen_running"] = True

    @st.fragment(run_every=0.5 if job.running else None)
    def panel() -> None:
        current = current_job()
        if current is None or current is not job:
            return
        for warning in current.warnings:
            st.warning(warning)
        if current.error:
            st.error(f"{current.label} failed: {current.error}")
        elif current.running:
            st.progress(current.fraction, text=f"**{current.label}** · {current.status_line()}")
            if live is not None:
                live(current)
        if not current.running and st.session_state.get("job_seen_running"):
            st.session_state["job_seen_running"] = False
            st.rerun()  # the whole page: show the finished results, unlock the controls

    panel()


# ----------------------------------------------------------------------------- sidebar


def _study_from_sidebar(root: Path, busy: bool) -> StudyResult | None:
    """The open results folder: one listed under ``root`` (newest first), or a typed path inside
    ``root``, ``results/``, the data roots or the folder given at start."""
    st.sidebar.subheader("Results")
    example = str(EXAMPLE_STUDY)
    folders = [str(path) for path in results_folders(root)] + ([example] if is_results_folder(EXAMPLE_STUDY) else [])
    chosen = st.session_state.get("results_choice")
    if chosen and chosen not in (NO_RESULTS, OTHER_PATH, *folders):
        folders.insert(0, chosen)  # opened from elsewhere (--results, a typed path)

    def label(choice: str) -> str:
        return EXAMPLE_LABEL if choice == example else Path(choice).name if choice in folders else choice

    choice = st.sidebar.selectbox("Open a results folder", [NO_RESULTS, *folders, OTHER_PATH], key="results_choice",
                                  disabled=busy, format_func=label,
                                  help=f"Folders written by `probing reproduce` or by this dashboard, in {root}. "
                                       "With one open, the grid, directions and statement pages show it.")
    if choice == NO_RESULTS:
        return None
    folder, roots = choice, results_roots(root)
    if choice == OTHER_PATH:
        folder = st.sidebar.text_input("Results folder path", key="results_path", disabled=busy).strip()
        st.sidebar.caption("Readable folders: " + ", ".join(f"`{r}`" for r in roots)
                           + ". Start the app with `-- --results DIR` to open a folder elsewhere.")
        if not folder:
            return None
    try:
        if folder != example:  # the package's own folder; any other lies under the readable roots
            folder = str(path_under_roots(folder, roots, what="results folders"))  # links inside it checked too
        study = load_study(folder)
    except (OSError, ResultsError, ValueError) as error:
        st.sidebar.error(f"Cannot open {folder}: {error_text(error)}")
        return None
    model, dataset = study.meta.get("model", {}), study.meta.get("dataset", {})
    st.sidebar.caption(f"{model.get('name', '?')} · {dataset.get('name', '?')} "
                       f"({dataset.get('statements', '?')} statements) · {study.config.position} token · "
                       f"{study.meta.get('created', '')}")
    for note in study.notes:
        st.sidebar.warning(f"Note: {note}.")
    return study


def results_roots(root: Path) -> list[Path]:
    """Folders a typed results path may lie in: where results are listed, ``results/``, the data
    roots, and the folder holding the one given at start."""
    arguments = app_arguments(sys.argv[1:])
    _, opened = results_location(arguments.results)
    candidates = [root, Path(RESULTS_ROOT).resolve(), *data_roots(APP_ROOT, arguments.data_root)]
    return list(dict.fromkeys([*candidates, *([opened.parent] if opened else [])]))


def _model_from_sidebar(holder: ModelHolder, busy: bool, autoload: bool) -> LoadedModel | None:
    """The model picker; loads nothing unless its button is clicked (pages load the default one)."""
    st.sidebar.subheader("Model")
    default = default_model_name()
    labels = model_choices(default)
    choice = st.sidebar.selectbox("Model", labels, key="model_choice", disabled=busy,
                                  help="Presets need the weights in the local Hugging Face cache "
                                       "(or network access); a folder or .gguf file works offline.")
    name = MODEL_CHOICES[choice]
    if not name:
        name = st.sidebar.text_input("Hub id, folder or .gguf path", key="model_custom", disabled=busy,
                                     placeholder="meta-llama/Llama-2-7b-hf or /models/x.gguf").strip()
    loaded = holder.current
    same = loaded is not None and loaded.spec.name == name
    if not same and name:
        if st.sidebar.button(f"Load {name}", key="load_model", disabled=busy or holder.busy,
                             type="primary", width="stretch"):
            with st.spinner(f"Loading {name}…"):
                try:
                    holder.ensure(name)
                except ModelBusy as error:
                    st.sidebar.warning(str(error))
            if holder.current is loaded and holder.error:
                st.session_state["model_error"] = holder.error
            else:
                st.session_state.pop("model_error", None)
            loaded = holder.current
        if holder.busy and not busy:
            st.sidebar.caption("Another session's job is using the model; switch when it has finished.")
    if st.session_state.get("model_error"):
        st.sidebar.error(st.session_state["model_error"])
        if loaded is not None:
            st.sidebar.caption(f"Still using {loaded.spec.name}.")
    if loaded is None:
        if holder.error:
            st.sidebar.error(holder.error)
        elif autoload and not st.session_state.get("model_first_try"):
            st.sidebar.info(f"**{default}** loads when a page needs it: tables and charts of a results "
                            "folder need no model.")
        else:
            st.sidebar.info("No model is loaded: tables and charts of a results folder need none.")
        return None
    info = loaded.describe()
    st.sidebar.caption(f"Loaded: **{info['model']}** · {info['blocks']} blocks · width {info['width']} · "
                       f"{info['device']} · {info['dtype']}")
    return loaded


def sidebar() -> Context:
    """Model, statements and token position, shared by all pages."""
    cache_dir = default_cache_dir()
    holder = model_holder(str(cache_dir))
    busy = job_running()
    root, opened_at_start = results_location(app_arguments(sys.argv[1:]).results)
    if "results_choice" not in st.session_state:
        if opened_at_start is not None:
            st.session_state["results_choice"] = str(opened_at_start)
        elif example_on_start() and not results_folders(root) and is_results_folder(EXAMPLE_STUDY):
            st.session_state["results_choice"] = str(EXAMPLE_STUDY)  # a first start shows a whole study
    study = _study_from_sidebar(root, busy)
    # A folder given at start is for looking at: no model is loaded until a page asks for it.
    autoload = opened_at_start is None
    model = _model_from_sidebar(holder, busy, autoload)
    dataset = dataset_from_sidebar(busy)
    st.sidebar.subheader("Token position")
    position = st.sidebar.selectbox("Read the hidden state at", POSITIONS, key="position", disabled=busy,
                                    format_func=lambda p: f"{p} — {POSITION_HELP[p]}")
    job = current_job()
    if job is not None and job.running:
        st.sidebar.info(f"⏳ {job.label}: {job.status_line()}")
    ctx = Context(holder=holder, model=model, dataset=dataset, position=position, cache_dir=cache_dir,
                  results_root=root, study=study, autoload=autoload)
    st.session_state["ctx"] = ctx
    return ctx


def context() -> Context:
    """The sidebar's choices; draws the sidebar if a page script runs on its own."""
    if "ctx" not in st.session_state:
        collect_finished_job()
        sidebar()
    return st.session_state["ctx"]


def need_model(ctx: Context, spec: ModelSpec | None = None) -> None:
    """Load ``spec`` (default: the default model) the first time a page of this session needs a model,
    below the page's title (already drawn, like the sidebar), then run the page again with it."""
    if ctx.model is not None or not ctx.autoload or st.session_state.get("model_first_try"):
        return
    st.session_state["model_first_try"] = True
    wanted = spec or default_model_name()
    with st.spinner(f"Loading {getattr(wanted, 'name', wanted)}… (the first start converts the embedded model "
                    "once, ~10 s)", show_time=True):
        try:
            ctx.holder.ensure(wanted)
        except ModelBusy:
            pass
    st.rerun()  # the sidebar shows the model (or why it failed) and the page uses it


def require_ready(ctx: Context) -> bool:
    """Load the default model if needed; say what is missing instead of failing; True when model
    and statements are there."""
    need_model(ctx)
    if ctx.model is None:
        st.error("No model is loaded. Choose one in the sidebar.")
        return False
    if ctx.dataset is None:
        st.info("Choose a statement set in the sidebar.")
        return False
    return True


def model_for(ctx: Context, spec: ModelSpec | None, study: StudyResult | None) -> LoadedModel | None:
    """The model of ``spec`` when it is loaded; else say which model the page needs (from the open
    results folder) and offer to load it where it fits in memory."""
    if spec is None:
        need_model(ctx)
        st.error("No model is loaded. Choose one in the sidebar.")
        return None
    need_model(ctx, spec)  # a page's first need loads the open folder's model as its probes read it
    if ctx.model is not None and same_model(ctx.model.spec, spec):
        return ctx.model
    meta = study.meta.get("model", {}) if study is not None else {}
    size = meta.get("memory_gb")
    name = spec.name
    runs = f" (in {spec.resolved_dtype} on {spec.resolved_device}, as the probes were trained)" if study else ""
    need = f" It takes about {size:.2f} GB." if size else ""
    if fits_in_memory(size) is False:
        st.warning(f"This page reads hidden states of **{name}**{runs}.{need} That is more than this machine "
                   "has free: the tables and charts of this folder work, scoring needs a bigger machine.")
        return None
    st.info(f"This page reads hidden states of **{name}**{runs}.{need} Load it to score statements.")
    holder = ctx.holder
    if st.button(f"Load {name}", key="load_page_model", type="primary", disabled=job_running() or holder.busy):
        with st.spinner(f"Loading {name}…"):
            try:
                holder.ensure(spec)
            except ModelBusy as error:
                st.warning(str(error))
                return None
        if holder.current is not None and same_model(holder.current.spec, spec):
            st.rerun()
        st.error(holder.error or f"{name} could not be loaded.")
    return None


def extraction_controls(ctx: Context, key: str) -> int:
    """Cached-count line and an *Extract activations* button; returns how many are missing."""
    from probing.dashboard.workflows import (  # imports torch: not at the top, which runs before the first paint
        extract_work,
    )

    texts = ctx.dataset.statements
    unique = len(dict.fromkeys(texts))
    missing = len(ctx.activations.missing(texts))
    cached = unique - missing
    st.progress(cached / unique if unique else 1.0,
                text=f"**{cached:,} of {unique:,}** statements cached for this model and token position")
    nodes = node_stores(ctx.activations.cache_dir)
    if nodes and missing:
        st.caption(f"{len(nodes)} node folder(s) of a multi-node extraction are in `{nodes[0].parent}`: "
                   "extracting merges them into this cache first and computes only what they lack.")

    def launch() -> None:
        """Button callback: the work is built at the click, for the model loaded then."""
        start(ctx, "extract", f"Extracting {missing:,} statements", extract_work(ctx.activations, texts))

    st.button("Extract activations" if cached == 0 else "Extract the missing activations",
              key=key, type="primary", disabled=missing == 0 or job_running(), on_click=launch)
    job_panel("extract")
    return missing


def show_chart(chart, key: str, **kwargs):
    """``st.altair_chart`` with the key also written into the spec's ``name`` (tests find charts by it)."""
    return st.altair_chart(chart.properties(name=key), key=key, **kwargs)
