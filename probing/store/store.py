"""The on-disk activation store: float16 hidden states, one entry per (chunk, layer).

Layout inside a ``diskcache.Cache`` (keys are tuples, all starting with a
*namespace* that fingerprints model, dtype and token position):

- ``(ns, "meta")`` -> ``{"layers": n_hidden_states, "width": d, ...}``
- ``(ns, "chunks")`` -> chunk ids in the order they were written
- ``(ns, "chunk", chunk_id, "texts")`` -> sha1 of each statement of the chunk, in row order
- ``(ns, "chunk", chunk_id, layer)`` -> bytes: a checked header + float16 rows (:mod:`probing.store.encoding`)
- ``(ns, "claim", name)`` -> which process is computing the batch ``name`` (expires)

A chunk is the statements of one extraction batch. It is written in one
transaction (all layers, its statement list, then its place in the chunk list),
so a killed run leaves whole chunks or none. Finding where statements are stored
reads the chunk list and each new chunk's statement list (one read per chunk, not
per statement); reading one layer then touches only that layer's entries. Every
payload carries its shape and a CRC32. Non-finite values are refused on writing.

Damage is repaired, never answered with "delete the cache": a payload that fails
its checks is dropped with its chunk (its statements count as missing and get
recomputed); a damaged statement list drops its chunk; a damaged chunk list is
rebuilt from the chunks found in the database; a damaged description (``meta``)
is dropped for the caller to rewrite; a damaged SQLite file is replaced
(:mod:`probing.store.repair`). Each repair is reported with a ``CacheRepaired`` warning.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import socket
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path

import diskcache
import numpy as np

from probing.housekeeping import process_alive
from probing.store.encoding import decode, encode, statement_key, to_float16
from probing.store.folders import private_dir
from probing.store.format import DATABASE, CacheError, open_cache
from probing.store.reading import NamespaceReader, ReadOnlyCache, reason
from probing.store.repair import copy_readable_rows, healthy, is_damage, move_aside, report

_HOST = socket.gethostname()
_LIVE_TOKENS: set[str] = set()  # claim tokens of extractions running in this process


class CorruptEntry(CacheError):
    """Stored chunks failed their checks; they have been removed and will be recomputed."""


@contextmanager
def claim_token() -> Iterator[str]:
    """A token to claim batches with; claims made with it count as live while the block runs."""
    token = uuid.uuid4().hex
    _LIVE_TOKENS.add(token)
    try:
        yield token
    finally:
        _LIVE_TOKENS.discard(token)


def _repairing(method):
    """Run a store method; if SQLite reports a damaged file, repair the database and run it once more."""

    @functools.wraps(method)
    def run(self: ActivationStore, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                raise
            damage = error
        self._repair_database(damage)
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                raise
            raise CacheError(
                f"the activation cache database {self.directory / DATABASE} is damaged again right after "
                f"being repaired ({error}): the disk under it may be failing. Check free space and the "
                "system log (dmesg), or pass another --cache; the damaged copies are kept beside it."
            ) from error

    return run


class ActivationStore(NamespaceReader):
    """Hidden states of many statements for one namespace (model x dtype x position), read and written."""

    def __init__(self, directory: str | Path, namespace: str):
        self.directory = private_dir(directory)
        super().__init__(None, namespace)  # the database is opened just below, repaired first if damaged
        try:
            self._cache = self._open_cache()
        except sqlite3.DatabaseError as error:
            if not is_damage(error):
                raise self._cannot_open(error) from error
            self._repair_database(error)
        except CacheError:
            raise
        except Exception as error:  # noqa: BLE001 - an unreadable folder or file
            raise self._cannot_open(error) from error

    def _open_cache(self) -> diskcache.Cache:
        return open_cache(self.directory)

    def _cannot_open(self, error: Exception) -> CacheError:
        return CacheError(f"cannot open the activation cache at {self.directory} ({reason(error)}). "
                          "Check that this user may read and write the folder, or pass another --cache.")

    def _replace_cache(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        with self._lock:
            self._statements_of.clear()

    def close(self) -> None:
        self._cache.close()

    # -- reading, repairing what is damaged ------------------------------------------
    @property
    @_repairing
    def meta(self) -> dict | None:
        """What the namespace holds (layers, width, ...); None when absent or damaged (then dropped)."""
        return super().meta

    @_repairing
    def set_meta(self, meta: dict) -> None:
        self._cache.set(self._key("meta"), meta)

    @_repairing
    def index(self) -> dict[str, tuple[str, int]]:
        """sha1(statement) -> (chunk_id, row) for everything stored; later chunks win."""
        return super().index()

    def _damaged_meta(self) -> None:
        self._cache.delete(self._key("meta"))
        report("the cache's description of this model (layers, width) was damaged; it is written "
               "again from the model, and no activation is lost")

    def _damaged_chunk_list(self) -> list[str]:
        """Replace a damaged chunk list by the chunks whose statement lists are in the database."""
        with self._cache.transact(), closing(ReadOnlyCache(self.directory)) as database:
            found = [key[2] for key in database.keys()
                     if len(key) == 4 and key[:2] == self._key("chunk") and key[3] == "texts"]
            self._cache.set(self._key("chunks"), found)
        report(f"the list of cached chunks for this model was damaged; it was rebuilt from the {len(found)} "
               "chunk(s) found in the database"
               + ("" if found else ", so this model's activations start afresh (other models' are kept)"))
        return found

    def _damaged_chunks(self, chunk_ids: list[str]) -> None:
        for chunk_id in chunk_ids:
            self.drop_chunk(chunk_id)
        report(f"{len(chunk_ids)} cached chunk(s) had a damaged statement list; they were dropped, "
               "so their statements count as missing and are recomputed")

    def _layer_index(self, layer: int, meta: dict | None) -> int:
        if meta is None:
            raise CacheError("nothing is cached for this model and token position yet")
        count = meta["layers"]
        index = layer + count if layer < 0 else layer
        if not 0 <= index < count:
            raise IndexError(
                f"layer {layer} does not exist: this model has {count} hidden states "
                f"(0 = embeddings .. {count - 1} = after the final norm; or -1 .. -{count})"
            )
        return index

    def missing(self, texts: Sequence[str]) -> list[int]:
        """Indices of the statements that are not cached."""
        return [i for i, where in enumerate(self.locate(texts)) if where is None]

    @_repairing
    def read_layer(self, texts: Sequence[str], layer: int) -> np.ndarray:
        """float32 array (len(texts), width) of one layer; every statement must be cached.

        All chunks are read before anything is dropped, so one call finds every corrupt
        entry the statements need, drops them all and raises one ``CorruptEntry``.
        """
        meta = self.meta
        index = self._layer_index(layer, meta)
        places = self.locate(texts)
        absent = [i for i, where in enumerate(places) if where is None]
        if absent:
            raise KeyError(f"{len(absent)} statement(s) are not cached, e.g. {texts[absent[0]]!r}")
        by_chunk: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for position, (chunk_id, row) in enumerate(places):
            by_chunk[chunk_id].append((position, row))
        out = np.empty((len(texts), meta["width"]), dtype=np.float32)
        problems: dict[str, str] = {}
        for chunk_id, pairs in by_chunk.items():
            try:
                block = self.read_chunk(chunk_id, index, meta["width"])
            except ValueError as problem:
                problems[chunk_id] = str(problem)
                continue
            positions, rows = zip(*pairs)
            out[list(positions)] = block[list(rows)]
        if problems:
            for chunk_id in problems:
                self.drop_chunk(chunk_id)
            statements = sum(len(by_chunk[chunk_id]) for chunk_id in problems)
            raise CorruptEntry(
                f"{len(problems)} cached chunk(s) of layer {layer} failed their checks "
                f"({next(iter(problems.values()))}); they were dropped, so their {statements} statement(s) "
                "count as missing and are recomputed"
            )
        return out

    def read_chunk(self, chunk_id: str, layer: int, width: int) -> np.ndarray:
        """One chunk's rows at one layer; ValueError saying what is wrong when it fails a check."""
        return self._read_payload(chunk_id, layer, width)[1]

    def _read_payload(self, chunk_id: str, layer: int, width: int) -> tuple[bytes, np.ndarray]:
        """One chunk's stored bytes at one layer and its rows; ValueError when it fails a check."""
        try:
            payload = self._cache.get(self._key("chunk", chunk_id, layer))
        except (sqlite3.Error, diskcache.Timeout):
            raise
        except Exception as error:  # noqa: BLE001 - an undecodable value where bytes belong
            raise ValueError(f"unreadable entry: {type(error).__name__}") from error
        with self._lock:
            rows = len(self._statements_of.get(chunk_id, ()))
        return payload, decode(payload, rows, width)

    @_repairing
    def chunk_payloads(self, chunk_id: str, rows: Sequence[int] | None = None) -> list[bytes]:
        """Every layer's payload of a stored chunk, each checked, cut to ``rows`` when given;
        ValueError saying what is wrong when one fails its checks."""
        meta = self.meta
        if meta is None:
            raise ValueError("the namespace has no description (layers, width)")
        payloads = []
        for layer in range(meta["layers"]):
            payload, block = self._read_payload(chunk_id, layer, meta["width"])
            # float16 -> float32 -> float16 is exact, so a cut chunk holds the very same values
            payloads.append(payload if rows is None else encode(block[list(rows)]))
        return payloads

    # -- writes -----------------------------------------------------------------
    @_repairing
    def write_chunk(self, texts: Sequence[str], hidden: np.ndarray) -> str:
        """Store (rows, layers, width) hidden states of ``texts`` as one chunk; returns its id.

        Raises ``NonFiniteActivations`` (storing nothing) when a value is NaN or inf, or
        becomes inf as float16.
        """
        rows, layers, _ = hidden.shape
        if rows != len(texts):
            raise ValueError(f"{rows} rows of hidden states for {len(texts)} statements")
        halves = to_float16(texts, hidden)
        chunk_id = uuid.uuid4().hex
        with self._writing():
            for layer in range(layers):
                self._cache.set(self._key("chunk", chunk_id, layer), encode(halves[:, layer]))
            self._cache.set(self._key("chunk", chunk_id, "texts"), [statement_key(t) for t in texts])
            self._cache.set(self._key("chunks"), [*self._chunk_ids(), chunk_id])
        return chunk_id

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction; a full disk or an unwritable folder becomes a ``CacheError`` saying what is kept."""
        try:
            with self._cache.transact():
                yield
        except (OSError, sqlite3.OperationalError) as error:
            full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (
                getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)
            if full:
                raise CacheError(
                    f"the disk holding {self.directory} is full; everything cached before this "
                    "batch is kept. Free space (or pass another --cache) and run again to resume."
                ) from error
            raise CacheError(f"cannot write to the activation cache {self.directory}: {error}") from error

    @_repairing
    def add_chunk(self, chunk_id: str, keys: list[str], payloads: Sequence[bytes]) -> bool:
        """Store an encoded chunk (statement keys, one checked payload per layer) copied from another
        store, in one transaction; False, writing nothing, when a chunk of that id is already stored."""
        with self._writing():
            chunks = self._chunk_ids()
            if chunk_id in chunks:
                return False
            for layer, payload in enumerate(payloads):
                self._cache.set(self._key("chunk", chunk_id, layer), payload)
            self._cache.set(self._key("chunk", chunk_id, "texts"), keys)
            self._cache.set(self._key("chunks"), [*chunks, chunk_id])
        return True

    @_repairing
    def drop_chunk(self, chunk_id: str) -> None:
        """Remove a chunk: its statements count as missing again."""
        meta = self.meta
        with self._cache.transact():
            chunks = self._chunk_ids()
            self._cache.set(self._key("chunks"), [c for c in chunks if c != chunk_id])
            self._cache.delete(self._key("chunk", chunk_id, "texts"))
            if meta is not None:
                for layer in range(meta["layers"]):
                    self._cache.delete(self._key("chunk", chunk_id, layer))
            else:  # layers are stored 0, 1, ... without gaps
                layer = 0
                while self._cache.delete(self._key("chunk", chunk_id, layer)):
                    layer += 1
        with self._lock:
            self._statements_of.pop(chunk_id, None)

    # -- claims: several processes share the work of one extraction --------------
    @_repairing
    def claim(self, name: str, token: str, seconds: float) -> bool:
        """Claim ``name`` for ``token`` unless a live other holder has it; atomic across processes.

        A claim expires after ``seconds``; one whose process has died (same host) is taken over.
        """
        key = self._key("claim", name)
        with self._cache.transact():
            holder = self._read(key, _is_claim)
            if isinstance(holder, dict) and holder["token"] != token and _holder_alive(holder):
                return False
            self._cache.set(key, {"token": token, "host": _HOST, "pid": os.getpid(), "since": time.time()},
                            expire=seconds)
        return True

    def release(self, name: str, token: str) -> None:
        """Give a claim back (others may then compute the batch if it was not stored)."""
        key = self._key("claim", name)
        try:
            with self._cache.transact():
                holder = self._read(key, _is_claim)
                if isinstance(holder, dict) and holder["token"] == token:
                    self._cache.delete(key)
        except (OSError, sqlite3.Error, diskcache.Timeout):
            pass  # a claim that cannot be removed (full disk, damaged file) expires or is taken over

    # -- housekeeping -----------------------------------------------------------
    @_repairing
    def clean(self) -> int:
        """Remove value files no database row points to; returns how many were removed.

        They are left by a write killed or stopped by a full disk, and by a deleted or
        replaced ``cache.db``; nothing would ever read or remove them otherwise.
        """
        removed = 0
        with self._cache.transact():  # writers wait: no file sits between being written and recorded
            reader = sqlite3.connect(f"file:{self.directory / DATABASE}?mode=ro", uri=True)
            try:
                referenced = {os.path.normpath(name) for (name,) in
                              reader.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
            finally:
                reader.close()
            for path in self.directory.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"):
                if str(path.relative_to(self.directory)) not in referenced:
                    path.unlink(missing_ok=True)
                    removed += 1
            for folder in [*self.directory.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]"),
                           *self.directory.glob("[0-9a-f][0-9a-f]")]:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
        return removed

    def _repair_database(self, damage: sqlite3.DatabaseError) -> None:
        """Move a damaged database aside, copy what can still be read into a fresh one, and use that."""
        database = self.directory / DATABASE
        with (self.directory / "repair.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes must not repair it twice; freed if we die
            if self._cache is not None:  # None when the database was damaged on opening
                self._cache.close()
            if healthy(database):  # another process has repaired it meanwhile
                self._replace_cache(self._open_cache())
                return
            damaged = move_aside(database)
            self._replace_cache(self._open_cache())
            copied, held = copy_readable_rows(damaged, self._cache)
            self.clean()
        report(
            f"the activation cache database {database} was damaged (SQLite: {damage}). {copied} "
            f"{'' if held is None else f'of its {held} '}entries could still be read and were copied into a "
            f"fresh database; the damaged file is kept as {damaged.name}. Statements whose entries were lost "
            "are recomputed when needed."
        )


def _is_claim(value: object) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("token"), str)
            and isinstance(value.get("host"), str) and isinstance(value.get("pid"), int))


def _holder_alive(holder: dict) -> bool:
    """Whether the process holding a claim may still be computing (unknown counts as alive)."""
    if holder["host"] != _HOST or os.name != "posix":
        return True  # cannot look: the claim's expiry decides
    if holder["pid"] == os.getpid():
        return holder["token"] in _LIVE_TOKENS
    return process_alive(holder["pid"])
