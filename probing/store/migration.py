"""The one place that reads a pickle: rewriting a cache of an earlier version, once, on request.

Caches written before :mod:`probing.store.format` held pickled keys and values. :func:`migrate`
reads them with an unpickler that builds only plain tuples, lists, dicts, text and numbers (every
class or function lookup is refused, so nothing a pickle names can run) and rewrites them as JSON
text; an entry that is anything else is removed unread.
"""

from __future__ import annotations

import io
import pickle
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from diskcache.core import MODE_PICKLE

from probing.store.format import DATABASE, CacheError, SafeDisk, verify_database

_PLAIN = (str, int, float, bool, bytes, type(None))


class _PlainUnpickler(pickle.Unpickler):
    """Builds tuples, lists, dicts, text and numbers only: every class or function lookup is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refused to look up {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refused a persistent reference")


def _plain(value: object) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    if isinstance(value, dict):
        return all(_plain(key) and _plain(item) for key, item in value.items())
    return isinstance(value, _PLAIN)


def _unpickle_plain(data: bytes) -> object:
    value = _PlainUnpickler(io.BytesIO(data)).load()
    if not _plain(value):
        raise pickle.UnpicklingError(f"not plain data ({type(value).__name__})")
    return value


@dataclass
class Migration:
    """What :func:`migrate` did to one database."""

    database: Path
    keys: int = 0
    """Keys rewritten from pickle to JSON text."""
    values: int = 0
    """Values rewritten from pickle to JSON text."""
    claims: int = 0
    """Claims of running extractions dropped (they are not work)."""
    refused: int = 0
    """Entries that were not plain data (a class, a function): removed unread; their statements are recomputed."""


def migrate(directory: str | Path) -> Migration:
    """Rewrite an older cache's pickled keys and values as JSON text, in one transaction.

    Pickles are read with :class:`_PlainUnpickler`, so nothing they contain can run; an entry
    that is not plain data is removed. A cache already in this format is left as it is.
    """
    directory = Path(directory)
    database = directory / DATABASE
    if not database.is_file():
        raise FileNotFoundError(f"{database} does not exist; pass a cache folder's activations/ or a node folder")
    disk = SafeDisk(str(directory))
    report = Migration(database)
    new_files: list[str] = []
    old_files: list[str] = []
    try:
        verify_database(directory, pickles=True)
        connection = sqlite3.connect(database, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            for row in connection.execute("SELECT rowid, key, raw, mode, filename, value FROM Cache "
                                          "WHERE raw = 0 OR mode = ?", (MODE_PICKLE,)).fetchall():
                _migrate_row(connection, disk, directory, row, report, new_files, old_files)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            for name in new_files:
                disk.remove(name)
            raise
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise CacheError(f"{database} cannot be migrated ({error}); it was left as it is. If it is damaged, the "
                         "next extraction into that cache repairs it; if it is not a cache, leave it out.") from error
    for name in old_files:
        disk.remove(name)
    return report


def _migrate_row(connection: sqlite3.Connection, disk: SafeDisk, directory: Path, row: tuple, report: Migration,
                 new_files: list[str], old_files: list[str]) -> None:
    """Rewrite one pickled row as JSON text (or drop it: a claim, or anything but plain data)."""
    rowid, key, raw, mode, filename, value = row
    try:
        if not raw:
            key = _unpickle_plain(bytes(key))
            text = disk.put(key)[0]  # a TypeError unless a tuple of text and whole numbers
            if key[1:2] == ("claim",):
                connection.execute("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                report.claims += 1
                old_files += [filename] if filename else []
                return
            connection.execute("UPDATE Cache SET key = ?, raw = 1 WHERE rowid = ?", (text, rowid))
            report.keys += 1
        if mode == MODE_PICKLE:  # value files outside the folder were refused by verify_database
            data = (directory / filename).read_bytes() if filename else bytes(value)
            size, new_mode, new_file, new_value = disk.store(_unpickle_plain(data), False)
            new_files += [new_file] if new_file else []
            old_files += [filename] if filename else []
            connection.execute("UPDATE Cache SET size = ?, mode = ?, filename = ?, value = ? WHERE rowid = ?",
                               (size, new_mode, new_file, new_value, rowid))
            report.values += 1
    except (pickle.UnpicklingError, TypeError, ValueError, EOFError, OSError, AttributeError, IndexError,
            KeyError):
        connection.execute("DELETE FROM Cache WHERE rowid = ?", (rowid,))
        report.refused += 1
