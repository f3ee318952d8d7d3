"""How the activation store lies on disk, and why reading a cache from elsewhere runs no code.

diskcache pickles every key and value that is not bytes, text or a number, and unpickling
runs whatever the pickle says. A cache folder from another machine (a node folder to merge,
a colleague's cache) is data, so this store never pickles and never unpickles:

- keys are tuples of text and whole numbers, written as JSON text;
- values are bytes (the checked activation payloads) or JSON text (descriptions, lists);
- a value file must lie inside the cache folder, named as diskcache names them.

Before diskcache opens a folder (it applies the ``sqlite_*`` settings it finds there as
PRAGMAs), :func:`verify_database` checks, read-only, that the database holds only the
tables, indexes and triggers diskcache itself creates, only its settings, no pickled entry
and no value file outside the folder. Caches written before this format held pickles:
:func:`migrate` rewrites them once, on request, reading the pickles with an unpickler that
builds only plain tuples, lists, dicts, text and numbers (nothing in them can run).
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import re
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

import diskcache
from diskcache.core import MODE_PICKLE, UNKNOWN

DATABASE = "cache.db"
_VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")
_PLAIN = (str, int, float, bool, bytes, type(None))
MIGRATE_HINT = ("If you made this cache yourself with an earlier version of this tool, convert it once with "
                "`probing cache migrate {folder}` (it reads the old entries without running anything); "
                "otherwise pass another --cache.")


class CacheError(RuntimeError):
    """The activation cache cannot be used (full disk, unwritable folder, failing disk, unsafe content)."""


class UnsafeCache(CacheError):
    """A cache holds what this tool never writes (pickles, foreign database objects, paths outside it): refused."""


class UnsafeEntry(ValueError):
    """One entry is a pickle or names a file outside the cache: never decoded."""


class SafeDisk(diskcache.Disk):
    """diskcache's serializer without pickle: JSON-text keys, bytes or JSON-text values."""

    def put(self, key):
        if not (isinstance(key, tuple) and all(type(part) in (str, int) for part in key)):
            raise TypeError(f"activation-store keys are tuples of text and whole numbers, not {key!r}")
        return json.dumps(key, separators=(",", ":")), True

    def get(self, key, raw):
        if not raw or not isinstance(key, str):
            raise UnsafeEntry("a pickled key")
        parts = json.loads(key)
        if not isinstance(parts, list):
            raise ValueError("a key that is not a list")
        return tuple(parts)

    def store(self, value, read, key=UNKNOWN):
        if isinstance(value, bytes):
            return super().store(value, read, key)
        if isinstance(value, (dict, list)):
            return super().store(json.dumps(value, separators=(",", ":")), read, key)
        raise TypeError(f"the activation store keeps bytes, lists and dicts, not {type(value).__name__}")

    def fetch(self, mode, filename, value, read):
        if mode == MODE_PICKLE:
            raise UnsafeEntry("a pickled value")
        if filename is not None and not _VALUE_FILE.fullmatch(filename):
            raise UnsafeEntry(f"a value file outside the cache ({filename!r})")
        data = super().fetch(mode, filename, value, False)
        return json.loads(data) if isinstance(data, str) else data

    def remove(self, file_path):
        if _VALUE_FILE.fullmatch(str(file_path)):  # a forged path is never deleted
            super().remove(file_path)


def open_cache(directory: Path) -> diskcache.Cache:
    """The diskcache at ``directory`` with :class:`SafeDisk`, after :func:`verify_database`."""
    verify_database(directory)
    return diskcache.Cache(str(directory), disk=SafeDisk, size_limit=2**50, eviction_policy="none")


@functools.cache
def _expected_schema() -> tuple[frozenset, dict]:
    """The database objects and settings diskcache creates for this store, read from a fresh one."""
    with tempfile.TemporaryDirectory() as folder:
        diskcache.Cache(folder, disk=SafeDisk, size_limit=2**50, eviction_policy="none").close()
        reader = sqlite3.connect(Path(folder) / DATABASE)
        try:
            objects = frozenset(reader.execute("SELECT type, name, sql FROM sqlite_master"))
            settings = dict(reader.execute("SELECT key, value FROM Settings"))
        finally:
            reader.close()
    return objects, settings


def verify_database(directory: Path, pickles: bool = False) -> None:
    """Refuse (``UnsafeCache``) a database this store did not write: foreign tables, triggers or
    settings, pickled entries (unless ``pickles``, for :func:`migrate`), value files outside the
    folder. Absent databases pass; a damaged one raises ``sqlite3.DatabaseError`` for the caller's repair."""
    database = Path(directory) / DATABASE
    if not database.exists():
        return
    objects, settings = _expected_schema()
    reader = connect_read_only(Path(directory))
    try:
        found = set(reader.execute("SELECT type, name, sql FROM sqlite_master"))
        if not found:
            return  # created but not yet set up by diskcache
        foreign = sorted(f"{kind} {name}" for kind, name, _ in found - objects)
        if foreign:
            raise UnsafeCache(f"{database} holds database objects this tool never creates ({', '.join(foreign)}): "
                              "it is not an activation cache written by this tool, so it is not opened. "
                              "Pass another --cache.")
        for key, value in reader.execute("SELECT key, value FROM Settings"):
            if key not in settings or (key.startswith("sqlite_") and value != settings[key]):
                raise UnsafeCache(f"{database} has a setting this tool never writes ({key} = {value!r}), so it "
                                  "is not opened. Pass another --cache.")
        pickled = reader.execute(
            "SELECT count(*) FROM Cache WHERE raw = 0 OR mode = ?", (MODE_PICKLE,)).fetchone()[0]
        if pickled and not pickles:
            raise UnsafeCache(f"{database} holds {pickled:,} pickled entr{'y' if pickled == 1 else 'ies'}; "
                              "reading a pickle can run code, so this cache is not read. "
                              + MIGRATE_HINT.format(folder=Path(directory)))
        for (filename,) in reader.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL"):
            if not _VALUE_FILE.fullmatch(filename):
                raise UnsafeCache(f"{database} points at a value file outside its folder ({filename!r}), so it "
                                  "is not opened: this tool never writes such an entry. Pass another --cache.")
    finally:
        reader.close()


def connect_read_only(directory: Path) -> sqlite3.Connection:
    """A read-only connection to the store's database; a folder this user cannot write (another
    user's, a read-only share) is read as it lies, without the locks SQLite would write beside it."""
    unchanging = "" if os.access(directory, os.W_OK) else "&immutable=1"
    return sqlite3.connect(f"file:{directory / DATABASE}?mode=ro{unchanging}", uri=True)


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
            if not (isinstance(key, tuple) and all(type(part) in (str, int) for part in key)):
                raise pickle.UnpicklingError("a key that is not a tuple of text and numbers")
            if len(key) > 1 and key[1] == "claim":
                connection.execute("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                report.claims += 1
                old_files += [filename] if filename else []
                return
            connection.execute("UPDATE Cache SET key = ?, raw = 1 WHERE rowid = ?", (disk.put(key)[0], rowid))
            report.keys += 1
        if mode == MODE_PICKLE:
            if filename is not None and not _VALUE_FILE.fullmatch(filename):
                raise pickle.UnpicklingError(f"a value file outside the cache ({filename!r})")
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
