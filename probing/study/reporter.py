"""How a study tells its caller what it is doing: one small object instead of a callback per phase.

A :class:`~probing.study.study.Study` announces each phase (merging node folders, extracting,
training, an analysis) with its size, counts progress within it, passes on records as they come
(a grid's result rows, a probe's epoch history) and notes worth a line. The base class ignores
them all; the command line prints bars, the dashboard's ``Job`` updates its page.
"""

from __future__ import annotations

MERGING, EXTRACTING, TRAINING, ANALYSING, STEERING, SAVING = (
    "merging", "extracting", "training", "generalization", "steering", "saving")
"""The phases a study announces (also the command line's labels)."""


class Reporter:
    """Receives a study's progress; override what you show."""

    def set_phase(self, phase: str, total: int = 0, unit: str = "statements") -> None:
        """A new phase of ``total`` ``unit`` (0: not counted) begins."""

    def progress(self, done: int, total: int) -> None:
        """``done`` of ``total`` in the current phase."""

    def add_record(self, record: dict) -> None:
        """A finished grid cell's result row, or a probe's epoch record (the phase says which)."""

    def note(self, text: str) -> None:
        """Something the user should read, one line (a repeated statement kept, a merge's summary)."""


class NoteList(Reporter):
    """Keeps a study's notes to show them later (a page shows them beside its result); ignores the rest."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        self.notes.append(text)
