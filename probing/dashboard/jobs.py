"""Background work for the dashboard: one model shared by every session, and jobs in threads.

The app keeps one :class:`ModelHolder` per process (``st.cache_resource``) and one
:class:`Job` at a time per browser session; a page polls its job for progress. Nothing
here imports streamlit, nor torch until a model is loaded: the dashboard draws its first page
before that.
"""

from __future__ import annotations

import threading
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from probing.study import reporter

if TYPE_CHECKING:
    from probing.store.activations import Activations
    from probing.model.loading import LoadedModel, ModelSpec


class ModelBusy(RuntimeError):
    """The model cannot be switched while a job uses it."""


class ModelHolder:
    """One loaded model per process, shared by all sessions; switching frees the old one.

    A failed load leaves the previous model in place and keeps the error in ``error``.
    Jobs bracket their use with :meth:`using`, and switching waits for none of them:
    it refuses (``ModelBusy``) while any job runs.
    """

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self.current: LoadedModel | None = None
        self.error: str | None = None
        self._lock = threading.RLock()
        self._users = 0
        self._activations: dict[str, Activations] = {}

    @property
    def busy(self) -> bool:
        return self._users > 0

    @contextmanager
    def using(self):
        with self._lock:
            self._users += 1
        try:
            yield self.current
        finally:
            with self._lock:
                self._users -= 1

    def ensure(self, model: str | ModelSpec, device: str | None = None, dtype: str | None = None) -> LoadedModel | None:
        """Load ``model`` (a name with ``device`` and ``dtype``, or a whole spec) unless it is what is
        loaded; returns the model now loaded (maybe the old one)."""
        from probing.model.loading import ModelSpec, load_model
        from probing.model.sources import ModelLoadError

        with self._lock:
            try:
                spec = model if isinstance(model, ModelSpec) else ModelSpec(model.strip(), device or None, dtype or None)
            except ValueError as error:
                self.error = str(error)
                return self.current
            if self.current is not None and same_model(self.current.spec, spec):
                return self.current
            if self.busy:
                raise ModelBusy("a job is using the current model; switch when it has finished")
            try:
                loaded = load_model(spec)
            except (ModelLoadError, ValueError) as error:
                self.error = str(error)
                return self.current
            old, self.current, self.error = self.current, loaded, None
            self._activations.clear()
            if old is not None:
                old.unload()
            return loaded

    def activations(self, position: str) -> Activations:
        """The cached activations of the current model at ``position`` (one object per position)."""
        from probing.model.sources import ModelLoadError
        from probing.study.config import StudyConfig
        from probing.store.activations import default_token_budget
        from probing.study.study import study_activations

        with self._lock:
            if self.current is None:
                raise ModelLoadError("no model is loaded")
            if position not in self._activations:
                budget = default_token_budget(self.current.spec.resolved_device, interactive=True)
                self._activations[position] = study_activations(
                    StudyConfig(position=position), model=self.current, cache=self.cache_dir, token_budget=budget)
            return self._activations[position]


def same_model(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two specs load the same weights the same way (an unset dtype or device equals the one it resolves to)."""
    return ((a.name, a.revision, a.resolved_device, a.resolved_dtype)
            == (b.name, b.revision, b.resolved_device, b.resolved_dtype))


# ----------------------------------------------------------------------------- background jobs


PHASE_LABELS = {reporter.MERGING: "Merging the node folders of a multi-node extraction",
                reporter.EXTRACTING: "Extracting activations", reporter.TRAINING: "Training probes",
                reporter.ANALYSING: "Training the probes of each layer",
                reporter.STEERING: "Steering: batched forward passes", reporter.SAVING: "Saving"}
"""What the page shows for each phase a study announces."""


@dataclass
class Job(reporter.Reporter):
    """Work running in a background thread; the page polls it; the study it runs reports to it.

    The thread writes progress, records, result and error; the page only marks ``params``.
    The page reads ``records`` through ``records_so_far()``: a copy taken under a lock, since
    building a DataFrame from a list that grows meanwhile fails (length mismatch).
    """

    kind: str  # "extract" | "train" | "grid" | "directions"
    label: str
    phase: str = "starting"
    done: int = 0
    total: int = 0
    phase_started: float = field(default_factory=time.monotonic)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    records: list = field(default_factory=list)  # epoch records (train) or result rows (grid)
    result: object = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # warnings raised by the work, e.g. a repaired cache
    params: dict = field(default_factory=dict)
    unit: str = "statements"
    thread: threading.Thread | None = field(default=None, repr=False)
    _records_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_record(self, record: dict) -> None:
        with self._records_lock:
            self.records.append(record)

    def records_so_far(self) -> list[dict]:
        with self._records_lock:
            return list(self.records)

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def ok(self) -> bool:
        return self.finished is not None and self.error is None

    def set_phase(self, phase: str, total: int = 0, unit: str = "statements") -> None:
        self.phase, self.done, self.total, self.phase_started = PHASE_LABELS.get(phase, phase), 0, total, time.monotonic()
        self.unit = unit

    def progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else (0.0 if self.running else 1.0)

    @property
    def rate(self) -> float:
        """Items per second in the current phase."""
        elapsed = time.monotonic() - self.phase_started
        return self.done / elapsed if elapsed > 0 and self.done else 0.0

    @property
    def seconds_left(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) / rate if rate else None

    def status_line(self, unit: str | None = None) -> str:
        unit = unit or self.unit
        if self.error:
            return f"Failed: {self.error}"
        if not self.running:
            return f"Finished in {self.finished - self.started:.1f} s"
        text = f"{self.phase}: {self.done:,} / {self.total:,}" if self.total else f"{self.phase}…"
        if self.rate and self.total:
            left = self.seconds_left
            text += f" · {self.rate:.1f} {unit}/s"
            if left is not None:
                text += f" · about {_duration(left)} left"
        return text

    def wait(self, timeout: float | None = None) -> Job:
        if self.thread is not None:
            self.thread.join(timeout)
        return self


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


_running = threading.local()  # the job a worker thread runs, for warnings raised inside it
_show_elsewhere = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings raised in a job's thread go to ``job.warnings`` (the page shows them), others as usual."""
    job = getattr(_running, "job", None)
    if job is None:
        _show_elsewhere(message, category, filename, lineno, file, line)
    else:
        job.warnings.append(str(message))


def start_job(job: Job, work: Callable[[Job], object], holder: ModelHolder | None = None) -> Job:
    """Run ``work(job)`` in a daemon thread; its return value becomes ``job.result``.

    The model is leased before the thread starts, so no other session can switch it
    between the click and the job's first use of it.
    """
    warnings.showwarning = _show_warning
    lease = ExitStack()
    if holder is not None:
        lease.enter_context(holder.using())

    def target() -> None:
        _running.job = job
        try:
            with lease:
                job.result = work(job)
        except Exception as error:  # noqa: BLE001 - shown in the page
            job.error = f"{type(error).__name__}: {error}"
            job.params["traceback"] = traceback.format_exc()
        finally:
            _running.job = None
            job.finished = time.monotonic()

    job.thread = threading.Thread(target=target, name=f"probing-{job.kind}", daemon=True)
    job.thread.start()
    return job
