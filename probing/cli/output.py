"""What the command line prints while it works: a study's progress as a bar per phase on a terminal or
plain lines in logs and CI (:class:`ConsoleReporter`), notes and warnings as one line each."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from probing.study.reporter import Reporter


def warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a repaired cache, say) as one ``warning: ...`` line, not Python's file:line format."""
    print(f"warning: {message}", file=sys.stderr)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PlainProgress:
    """A (done, total) callback printing plain lines: at the start, every ~10 % or ``every_s``
    seconds, and at the end. For logs and CI, where a redrawn bar shows nothing."""

    def __init__(self, description: str, unit: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = 10.0) -> None:
        self.description, self.unit = description, unit
        self.stream, self.clock, self.every_s = stream, clock, every_s
        self.total: int | None = None
        self.started = self.printed_at = 0.0
        self.printed_done = 0

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if total != self.total:  # the first call, or a new round with a new total
            self.total, self.started = total, now
            self._print(done, now)
        elif done != self.printed_done and (
                done >= total or done - self.printed_done >= total / 10 or now - self.printed_at >= self.every_s):
            self._print(done, now)

    def _print(self, done: int, now: float) -> None:
        self.printed_done, self.printed_at = done, now
        total = self.total
        if not total:
            line = f"{self.description}: nothing to do"
        else:
            line = f"{self.description}: {done}/{total} {self.unit} ({round(100 * done / total)} %)"
            elapsed = now - self.started
            if done and elapsed > 0:
                rate = done / elapsed
                line += f", {rate:.1f}/s, " + (f"took {_duration(elapsed)}" if done >= total
                                               else f"about {_duration((total - done) / rate)} left")
        print(line, file=self.stream or sys.stderr, flush=True)


class ConsoleReporter(Reporter):
    """A study's progress on standard error: each phase a tqdm bar on a terminal, plain lines elsewhere
    (:class:`PlainProgress`); notes as ``note: ...`` lines. ``labels`` renames phases (``extracting
    (shard 1 of 2)``). Use it in a ``with`` block, which closes the last bar."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = labels or {}
        self._current: Callable[[int, int], None] | None = None
        self._bar = None

    def set_phase(self, phase: str, total: int = 0, unit: str = "statements") -> None:
        self.close()
        label = self.labels.get(phase, phase)
        if not sys.stderr.isatty():
            self._current = PlainProgress(label, unit)
            return
        from tqdm import tqdm

        self._bar = bar = tqdm(desc=label, unit=unit, dynamic_ncols=True)

        def update(done: int, total: int) -> None:
            if bar.total != total:
                bar.reset(total=total)
            bar.n = done
            bar.refresh()

        self._current = update

    def progress(self, done: int, total: int) -> None:
        if self._current is not None:
            self._current(done, total)

    def note(self, text: str) -> None:
        print(f"note: {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar = self._current = None

    def __enter__(self) -> ConsoleReporter:
        return self

    def __exit__(self, *_exception) -> None:
        self.close()


def size_text(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")
