"""Reading an activation store without changing it.

``NamespaceReader`` reads one namespace: its description (``meta``) and which statements each
chunk holds. It leaves damage as it lies; ``ActivationStore`` builds on it and repairs instead.
Over a ``ReadOnlyCache`` it is what ``cache info`` (``describe_store``) and the checks before a
merge read a folder with: a read-only connection, nothing written, locked or repaired.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import diskcache

from probing.store.encoding import statement_key
from probing.store.format import DATABASE, CacheError, SafeDisk, connect_read_only, verify_database

_DAMAGED = object()
"""What ``NamespaceReader._read`` returns for a row that exists but cannot be decoded or has the wrong type."""


class NamespaceReader:
    """One namespace (model x dtype x position) of a store, read through ``cache.get``.

    Damage is left as it lies: a damaged description reads as None, a damaged chunk list as
    empty, a chunk whose statement list is damaged as absent. ``ActivationStore`` overrides
    the three ``_damaged_*`` methods to repair what they are given.
    """

    def __init__(self, cache: diskcache.Cache | ReadOnlyCache | None, namespace: str):
        self._cache = cache
        self.namespace = namespace
        self._statements_of: dict[str, list[str]] = {}  # chunk id -> statement keys, read once
        self._lock = threading.Lock()

    def _key(self, *parts: object) -> tuple:
        return (self.namespace, *parts)

    def _read(self, key: tuple, valid: Callable[[object], bool]) -> object:
        """The value at ``key``: None when absent, ``_DAMAGED`` when undecodable or of the wrong type."""
        try:
            value = self._cache.get(key)
        except (sqlite3.Error, diskcache.Timeout):
            raise
        except Exception:  # noqa: BLE001 - undecodable JSON, a refused entry or an unreadable file: damage
            return _DAMAGED
        if value is None:
            return None
        return value if valid(value) else _DAMAGED

    @property
    def meta(self) -> dict | None:
        """What the namespace holds (layers, width, ...); None when absent or damaged."""
        meta = self._read(self._key("meta"), _is_meta)
        return self._damaged_meta() if meta is _DAMAGED else meta

    def _chunk_ids(self) -> list[str]:
        chunks = self._read(self._key("chunks"), _is_key_list)
        return self._damaged_chunk_list() if chunks is _DAMAGED else chunks or []

    def index(self) -> dict[str, tuple[str, int]]:
        """sha1(statement) -> (chunk_id, row) for everything stored; later chunks win."""
        chunk_ids = self._chunk_ids()
        damaged = []
        with self._lock:
            for gone in self._statements_of.keys() - set(chunk_ids):
                del self._statements_of[gone]
            unread = [c for c in chunk_ids if c not in self._statements_of]
        for chunk_id in unread:
            keys = self._read(self._key("chunk", chunk_id, "texts"), _is_key_list)
            if isinstance(keys, list):
                with self._lock:
                    self._statements_of[chunk_id] = keys
            elif keys is None and chunk_id not in self._chunk_ids():
                continue  # dropped by another process since we read the list
            else:  # a listed chunk always has its statement list: missing or undecodable means damage
                damaged.append(chunk_id)
        if damaged:
            self._damaged_chunks(damaged)
        where: dict[str, tuple[str, int]] = {}
        with self._lock:
            for chunk_id in chunk_ids:
                for row, key in enumerate(self._statements_of.get(chunk_id, ())):
                    where[key] = (chunk_id, row)
        return where

    def locate(self, texts: Sequence[str]) -> list[tuple[str, int] | None]:
        """Where each statement is stored, or None."""
        where = self.index()
        return [where.get(statement_key(t)) for t in texts]

    def chunk_keys(self) -> dict[str, list[str]]:
        """Chunk id -> its statement keys, in the order the chunks were written (damaged ones left out)."""
        self.index()
        with self._lock:
            return {chunk_id: self._statements_of[chunk_id] for chunk_id in self._chunk_ids()
                    if chunk_id in self._statements_of}

    # -- damage: read-only, it is left as it lies ----------------------------------
    def _damaged_meta(self) -> dict | None:
        return None

    def _damaged_chunk_list(self) -> list[str]:
        return []

    def _damaged_chunks(self, chunk_ids: list[str]) -> None:
        """Listed chunks whose statement list is missing or damaged: they read as absent."""


class ReadOnlyCache:
    """A store's database read as ``diskcache.Cache`` reads it, through a read-only connection."""

    def __init__(self, directory: Path):
        self._disk = SafeDisk(str(directory))
        self._connection = connect_read_only(directory)

    def close(self) -> None:
        self._connection.close()

    def __len__(self) -> int:
        return self._connection.execute("SELECT count(*) FROM Cache").fetchone()[0]

    def get(self, key: tuple) -> object:
        """The value stored at ``key``, or None."""
        row = self._connection.execute(
            "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ? "
            "AND (expire_time IS NULL OR expire_time > ?)", (*self._disk.put(key), time.time())).fetchone()
        return None if row is None else self._disk.fetch(*row, False)

    def keys(self) -> Iterator[tuple]:
        """Every key that can be decoded, in the order first written (a damaged one is skipped, not fatal)."""
        for blob, raw in self._connection.execute("SELECT key, raw FROM Cache ORDER BY rowid").fetchall():
            try:
                key = self._disk.get(blob, raw)
            except Exception:  # noqa: BLE001 - an undecodable key belongs to no chunk we can use
                continue
            if isinstance(key, tuple):
                yield key

    def namespaces(self) -> list[str]:
        """The namespaces stored, in the order first written."""
        found = {key[0]: None for key in self.keys()
                 if len(key) == 2 and isinstance(key[0], str) and key[1] in ("meta", "chunks")}
        return list(found)


def namespaces(directory: str | Path) -> list[str]:
    """The namespaces stored in the activation store at ``directory``, in the order first written."""
    directory = Path(directory)
    if not (directory / DATABASE).is_file():
        return []
    with closing(ReadOnlyCache(directory)) as cache:
        return cache.namespaces()


@dataclass(frozen=True)
class NamespaceSummary:
    """One namespace of a store, for ``cache info``: its description and how much it holds."""

    namespace: str
    meta: dict | None
    statements: int
    chunks: int


def describe_store(directory: str | Path) -> list[NamespaceSummary]:
    """What the activation store at ``directory`` holds, per namespace: read-only, repairing nothing
    (a damaged, foreign or unreadable store raises ``CacheError`` naming its file)."""
    directory = Path(directory)
    if not (directory / DATABASE).is_file():
        return []
    summaries = []
    with _reading(directory) as cache:
        for namespace in cache.namespaces():
            reader = NamespaceReader(cache, namespace)
            held = reader.chunk_keys().values()
            summaries.append(NamespaceSummary(namespace, reader.meta, len({key for keys in held for key in keys}),
                                              len(held)))
    return summaries


def check_readable(directory: str | Path) -> None:
    """Raise ``CacheError`` naming the file unless the store at ``directory`` can be read safely
    (a database this tool wrote, not damaged, readable by this user); changes nothing."""
    with _reading(Path(directory)) as cache:
        len(cache)  # reads the table: a damaged or unreadable one fails here


def describe_meta(meta: dict | None) -> str:
    """'embedded, bfloat16, position last, 31 layers x 576' for messages and ``cache info``."""
    if meta is None:
        return "no description (layers, width): damaged or never written"
    return (f"{meta.get('model', '?')}, {meta.get('dtype', '?')}, position {meta.get('position', '?')}, "
            f"{meta['layers']} layers x {meta['width']}")


def size_on_disk(directory: str | Path) -> int:
    """Bytes of every file under ``directory`` (database, its journal, value files)."""
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


def reason(error: Exception) -> str:
    """What went wrong, for a message that names the file itself: an OSError's words without its errno."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


@contextmanager
def _reading(directory: Path) -> Iterator[ReadOnlyCache]:
    """A verified store read read-only; SQLite's and the file system's errors become a ``CacheError``
    that names the database and what to do."""
    database = directory / DATABASE
    try:
        verify_database(directory)
        with closing(ReadOnlyCache(directory)) as cache:
            yield cache
    except (sqlite3.DatabaseError, OSError) as error:
        raise CacheError(
            f"{database} cannot be read as an activation cache ({reason(error)}); it was left as it is. "
            + ("Check that this user may read the folder and its files, or copy it to a folder you own."
               if _is_permission(error) else
               "If it is damaged, the next extraction into that cache repairs it, keeping what can still be "
               "read (`probing extract --cache ...`); if it is not a cache, pass another folder.")
        ) from error


def _is_permission(error: Exception) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    code = (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF  # the primary code of an extended one
    return code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)


def _is_meta(value: object) -> bool:
    return (isinstance(value, dict) and all(isinstance(value.get(k), int) and value[k] > 0
                                            for k in ("layers", "width")))


def _is_key_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)
