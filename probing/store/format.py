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
``probing cache migrate`` (:mod:`probing.store.migration`) rewrites them once, on request.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import tempfile
from pathlib import Path

import diskcache
from diskcache.core import MODE_PICKLE, UNKNOWN

DATABASE = "cache.db"
VALUE_FILE = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val")


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
        if filename is not None and not VALUE_FILE.fullmatch(filename):
            raise UnsafeEntry(f"a value file outside the cache ({filename!r})")
        data = super().fetch(mode, filename, value, False)
        return json.loads(data) if isinstance(data, str) else data

    def remove(self, file_path):
        if VALUE_FILE.fullmatch(str(file_path)):  # a forged path is never deleted
            super().remove(file_path)


def open_cache(directory: Path) -> diskcache.Cache:
    """The diskcache at ``directory`` with :class:`SafeDisk`, after :func:`verify_database`."""
    verify_database(directory)
    return _diskcache(directory)


def _diskcache(directory: str | Path) -> diskcache.Cache:
    """The store's diskcache settings: no pickle, no size limit, nothing ever evicted."""
    return diskcache.Cache(str(directory), disk=SafeDisk, size_limit=2**50, eviction_policy="none")


@functools.cache
def _expected_schema() -> tuple[frozenset, dict]:
    """The database objects and settings diskcache creates for this store, read from a fresh one."""
    with tempfile.TemporaryDirectory() as folder:
        _diskcache(folder).close()
        reader = sqlite3.connect(Path(folder) / DATABASE)
        try:
            objects = frozenset(reader.execute("SELECT type, name, sql FROM sqlite_master"))
            settings = dict(reader.execute("SELECT key, value FROM Settings"))
        finally:
            reader.close()
    return objects, settings


def verify_database(directory: Path, pickles: bool = False) -> None:
    """Refuse (``UnsafeCache``) a database this store did not write: foreign tables, triggers or
    settings, pickled entries (unless ``pickles``, for ``cache_migration.migrate``), value files outside the
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
                              "reading a pickle can run code, so this cache is not read. If you made it yourself "
                              "with an earlier version of this tool, convert it once with `probing cache migrate "
                              f"{directory}` (it reads the old entries without running anything); otherwise pass "
                              "another --cache.")
        for (filename,) in reader.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL"):
            if not VALUE_FILE.fullmatch(filename):
                raise UnsafeCache(f"{database} points at a value file outside its folder ({filename!r}), so it "
                                  "is not opened: this tool never writes such an entry. Pass another --cache.")
    finally:
        reader.close()


def connect_read_only(directory: Path) -> sqlite3.Connection:
    """A read-only connection to the store's database; a folder this user cannot write (another
    user's, a read-only share) is read as it lies, without the locks SQLite would write beside it."""
    unchanging = "" if os.access(directory, os.W_OK) else "&immutable=1"
    return sqlite3.connect(f"file:{directory / DATABASE}?mode=ro{unchanging}", uri=True)
