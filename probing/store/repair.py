"""Damage to a store's SQLite file: how SQLite reports it, and what replaces the file. The damaged
file is moved aside (kept, never deleted) and every row that can still be read is copied into a
fresh database; each repair is reported with a ``CacheRepaired`` warning saying what was lost."""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from pathlib import Path

import diskcache

from probing.housekeeping import CacheRepaired
from probing.store.format import SafeDisk

_DAMAGE_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_ROWID_PROBE = 100_000  # rowids tried when a damaged table cannot say its largest one


def is_damage(error: sqlite3.DatabaseError) -> bool:
    """Whether SQLite's error says the file is damaged (not locked, full or unwritable)."""
    return getattr(error, "sqlite_errorcode", None) in _DAMAGE_CODES


def report(message: str) -> None:
    """Tell the caller what a repair lost and what happens to it."""
    warnings.warn(CacheRepaired(message), stacklevel=2)


def healthy(database: Path) -> bool:
    """True when ``database`` is absent or passes SQLite's quick check."""
    if not database.exists():
        return True
    try:
        reader = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            return reader.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        finally:
            reader.close()
    except sqlite3.DatabaseError:
        return False


def move_aside(database: Path) -> Path:
    """Rename ``database`` (with its journal files) to ``<name>.damaged-<time>-<this pid>``; returns the new path."""
    damaged = database.with_name(f"{database.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    for suffix in ("", "-wal", "-shm"):
        part = database.with_name(database.name + suffix)
        if part.exists():
            part.replace(damaged.with_name(damaged.name + suffix))
    return damaged


def copy_readable_rows(damaged: Path, target: diskcache.Cache) -> tuple[int, int | None]:
    """Copy every row of a damaged diskcache database that can still be read.

    Returns (rows copied, rows the database says it held, or None if that is unreadable).
    Rows are looked up one rowid at a time, so a damaged page loses only the rows on it.
    A copied row's value file is removed once its copy is written (no doubled disk use).
    """
    disk = SafeDisk(str(damaged.parent))
    source = sqlite3.connect(damaged)
    try:
        try:
            source.execute("PRAGMA writable_schema=ON")  # read a file shorter than its header says
        except sqlite3.DatabaseError:
            return 0, None  # not a database any more
        held = _first_value(source, "SELECT value FROM Settings WHERE key = 'count'")
        last = _first_value(source, "SELECT max(rowid) FROM Cache")
        if last is None and held is None:
            return 0, None  # neither the table nor the settings can be read
        copied = 0
        select = "SELECT key, raw, mode, filename, value FROM Cache WHERE rowid = ?"
        for rowid in range(1, (last or _ROWID_PROBE) + 1):
            try:
                row = source.execute(select, (rowid,)).fetchone()
                if row is None:
                    continue
                blob, raw, mode, filename, value = row
                key, data = disk.get(blob, raw), disk.fetch(mode, filename, value, False)
            except Exception:  # noqa: BLE001 - a damaged page or file, or a refused pickle: this row is lost
                continue
            if not (isinstance(key, tuple) and len(key) > 1 and key[1] == "claim"):  # claims are not work
                target.set(key, data)
            if filename:
                (damaged.parent / filename).unlink(missing_ok=True)
            copied += 1
        return copied, held
    finally:
        source.close()


def _first_value(connection: sqlite3.Connection, query: str) -> int | None:
    try:
        row = connection.execute(query).fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row and isinstance(row[0], int) else None
