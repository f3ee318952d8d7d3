"""The on-disk activation store: float16 hidden states, one entry per (chunk, layer).

Layout inside a ``diskcache.Cache`` (keys are tuples, all starting with a
*namespace* that fingerprints model, dtype and token position):

- ``(ns, "meta")`` -> ``{"layers": n_hidden_states, "width": d, ...}``
- ``(ns, "chunks")`` -> chunk ids in the order they were written
- ``(ns, "chunk", chunk_id, "texts")`` -> sha1 of each statement of the chunk, in row order
- ``(ns, "chunk", chunk_id, layer)`` -> bytes: a checked header + float16 rows
- ``(ns, "claim", name)`` -> which process is computing the batch ``name`` (expires)

One folder may hold several namespaces (``namespaces`` lists them, ``describe_store``
counts what each holds). ``merge_stores`` copies the chunks of other folders (the
per-node folders of a multi-node extraction) into one, checking that they agree.

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
is dropped for the caller to rewrite. A damaged SQLite file is moved aside and
every row that can still be read is copied into a fresh one. Each repair is
reported with a ``CacheRepaired`` warning saying what was lost and what happens.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import os
import socket
import sqlite3
import struct
import threading
import time
import uuid
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import diskcache
import numpy as np

from probing.housekeeping import CacheRepaired, process_alive
from probing.store.format import DATABASE as _DATABASE
from probing.store.format import CacheError, SafeDisk, connect_read_only, open_cache, verify_database

_HEADER = struct.Struct("<4sIIIQ")  # magic, rows, width, crc32, payload bytes
_MAGIC = b"PRB1"
STORE_FOLDER = "activations"
"""A cache folder's activation store (models live in the per-user model cache, not in a cache folder)."""
NODES_FOLDER = "nodes"
"""A cache folder's ``nodes/node-K``: the stores the nodes of a multi-node extraction write, merged later."""
_DAMAGE_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_ROWID_PROBE = 100_000  # rowids tried when a damaged table cannot say its largest one
_HOST = socket.gethostname()
_LIVE_TOKENS: set[str] = set()  # claim tokens of extractions running in this process
_DAMAGED = object()  # a row that exists but cannot be decoded or has the wrong type


class CorruptEntry(CacheError):
    """Stored chunks failed their checks; they have been removed and will be recomputed."""


class MergeConflict(CacheError):
    """Caches to merge disagree (their description of a namespace, or a statement's values); nothing was merged."""


class NonFiniteActivations(ValueError):
    """Hidden states with NaN or inf, or beyond float16's range: refused, never stored."""


def private_dir(path: str | Path) -> Path:
    """Create ``path`` readable by its owner only (activations can be as private as the statements)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def statement_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def first_words(text: str, words: int = 8, chars: int = 60) -> str:
    """The start of a statement, to name it in a message."""
    head = " ".join(text.split()[:words])[:chars]
    return head if head == " ".join(text.split()) else head + "..."


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
            if not _is_damage(error):
                raise
            damage = error
        self._repair_database(damage)
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as error:
            if not _is_damage(error):
                raise
            raise CacheError(
                f"the activation cache database {self.directory / _DATABASE} is damaged again right after "
                f"being repaired ({error}): the disk under it may be failing. Check free space and the "
                "system log (dmesg), or pass another --cache; the damaged copies are kept beside it."
            ) from error

    return run


class ActivationStore:
    """Hidden states of many statements for one namespace (model x dtype x position)."""

    def __init__(self, directory: str | Path, namespace: str):
        self.directory = private_dir(directory)
        self.namespace = namespace
        self._statements_of: dict[str, list[str]] = {}  # chunk id -> statement keys, read once
        self._lock = threading.Lock()
        try:
            self._cache = self._open_cache()
        except sqlite3.DatabaseError as error:
            if not _is_damage(error):
                raise self._cannot_open(error) from error
            self._repair_database(error)
        except CacheError:
            raise
        except Exception as error:  # noqa: BLE001 - an unreadable folder or file
            raise self._cannot_open(error) from error

    def _open_cache(self) -> diskcache.Cache:
        return open_cache(self.directory)

    def _cannot_open(self, error: Exception) -> CacheError:
        return CacheError(f"cannot open the activation cache at {self.directory} ({_reason(error)}). "
                          "Check that this user may read and write the folder, or pass another --cache.")

    def _replace_cache(self, cache: diskcache.Cache) -> None:
        self._cache = cache
        with self._lock:
            self._statements_of.clear()

    def close(self) -> None:
        self._cache.close()

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

    # -- metadata ---------------------------------------------------------------
    @property
    @_repairing
    def meta(self) -> dict | None:
        """What the namespace holds (layers, width, ...); None when absent or damaged (then dropped)."""
        meta = self._read(self._key("meta"), _is_meta)
        if meta is _DAMAGED:
            self._cache.delete(self._key("meta"))
            _report("the cache's description of this model (layers, width) was damaged; it is written "
                    "again from the model, and no activation is lost")
            return None
        return meta

    @_repairing
    def set_meta(self, meta: dict) -> None:
        self._cache.set(self._key("meta"), meta)

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

    # -- queries ----------------------------------------------------------------
    def _chunk_ids(self) -> list[str]:
        chunks = self._read(self._key("chunks"), _is_key_list)
        if chunks is _DAMAGED:
            return self._rebuild_chunk_list()
        return chunks or []

    def _rebuild_chunk_list(self) -> list[str]:
        """Replace a damaged chunk list by the chunks whose statement lists are in the database."""
        with self._cache.transact():
            found = [key[2] for key in self._readable_keys()
                     if len(key) == 4 and key[:2] == self._key("chunk") and key[3] == "texts"]
            self._cache.set(self._key("chunks"), found)
        _report(f"the list of cached chunks for this model was damaged; it was rebuilt from the {len(found)} "
                "chunk(s) found in the database"
                + ("" if found else ", so this model's activations start afresh (other models' are kept)"))
        return found

    def _readable_keys(self) -> Iterator[tuple]:
        return _readable_keys(self.directory)

    @_repairing
    def index(self) -> dict[str, tuple[str, int]]:
        """sha1(statement) -> (chunk_id, row) for everything stored; later chunks win."""
        chunk_ids = self._chunk_ids()
        damaged = 0
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
                self.drop_chunk(chunk_id)
                damaged += 1
        if damaged:
            _report(f"{damaged} cached chunk(s) had a damaged statement list; they were dropped, "
                    "so their statements count as missing and are recomputed")
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
                block = self._read_chunk(chunk_id, index, meta["width"])
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

    def _read_chunk(self, chunk_id: str, layer: int, width: int) -> np.ndarray:
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
        return payload, _decode(payload, rows, width)

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
        _check_finite(texts, hidden)
        with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
            halves = hidden.astype(np.float16)
        _check_float16_range(texts, hidden, halves)
        chunk_id = uuid.uuid4().hex
        with self._writing():
            for layer in range(layers):
                self._cache.set(self._key("chunk", chunk_id, layer), _encode(halves[:, layer]))
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

    def chunk_keys(self) -> dict[str, list[str]]:
        """Chunk id -> its statement keys, in the order the chunks were written (damaged ones dropped)."""
        self.index()
        with self._lock:
            return {chunk_id: self._statements_of[chunk_id] for chunk_id in self._chunk_ids()
                    if chunk_id in self._statements_of}

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
            payloads.append(payload if rows is None else _encode(block[list(rows)]))
        return payloads

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
            reader = sqlite3.connect(f"file:{self.directory / _DATABASE}?mode=ro", uri=True)
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
        database = self.directory / _DATABASE
        with (self.directory / "repair.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes must not repair it twice; freed if we die
            if hasattr(self, "_cache"):
                self._cache.close()
            if _healthy(database):  # another process has repaired it meanwhile
                self._replace_cache(self._open_cache())
                return
            damaged = database.with_name(f"{_DATABASE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            for suffix in ("", "-wal", "-shm"):
                part = database.with_name(_DATABASE + suffix)
                if part.exists():
                    part.replace(damaged.with_name(damaged.name + suffix))
            self._replace_cache(self._open_cache())
            copied, held = _copy_readable_rows(damaged, self._cache)
            self.clean()
        _report(
            f"the activation cache database {database} was damaged (SQLite: {damage}). {copied} "
            f"{'' if held is None else f'of its {held} '}entries could still be read and were copied into a "
            f"fresh database; the damaged file is kept as {damaged.name}. Statements whose entries were lost "
            "are recomputed when needed."
        )


MERGE_MIN_COSINE = 0.999
"""Two copies of a statement agree when, at every layer, their cosine is at least this ...
(bfloat16 gives a statement slightly different values in different batches: cosine >= 0.9998,
norms within 1 % on SmolLM2-135M; float32 agrees to 1e-6)."""
MERGE_MAX_NORM_GAP = 0.05
"""... and their norms differ by at most this fraction of the larger one."""
DESCRIBED = ("layers", "width", "model", "dtype", "position")
"""The parts of a namespace's description that caches to merge must agree on."""


def store_folder(path: str | Path) -> Path:
    """An activation-store folder (one holding cache.db) as it is, or a cache folder's ``activations/``."""
    path = Path(path)
    return path if (path / _DATABASE).is_file() else path / STORE_FOLDER


def node_store(cache: str | Path, node: int) -> Path:
    """The activation store a node of a multi-node extraction writes."""
    return Path(cache) / NODES_FOLDER / f"node-{node}"


def node_stores(cache: str | Path) -> list[Path]:
    """The node folders of ``cache`` that hold an activation store, by node number."""
    found = [path for path in (Path(cache) / NODES_FOLDER).glob("node-*") if (path / _DATABASE).is_file()]
    return sorted(found, key=lambda path: (len(path.name), path.name))


def namespaces(directory: str | Path) -> list[str]:
    """The namespaces stored in the activation store at ``directory``, in the order first written."""
    directory = Path(directory)
    if not (directory / _DATABASE).is_file():
        return []
    found = {key[0]: None for key in _readable_keys(directory)
             if len(key) == 2 and isinstance(key[0], str) and key[1] in ("meta", "chunks")}
    return list(found)


def size_on_disk(directory: str | Path) -> int:
    """Bytes of every file under ``directory`` (database, its journal, value files)."""
    return sum(path.stat().st_size for path in Path(directory).rglob("*") if path.is_file())


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
    if not (directory / _DATABASE).is_file():
        return []
    disk = SafeDisk(str(directory))
    values: dict[tuple, object] = {}
    with _reading(directory) as reader:
        for blob, raw, mode, filename, value in reader.execute(
                "SELECT key, raw, mode, filename, value FROM Cache ORDER BY rowid"):
            try:
                key = disk.get(blob, raw)
                if len(key) == 2 or key[1:2] == ("chunk",) and key[-1] == "texts":
                    values[key] = disk.fetch(mode, filename, value, False)
            except Exception:  # noqa: BLE001 - a damaged entry is described as missing
                continue
    summaries = []
    for namespace in dict.fromkeys(key[0] for key in values if len(key) == 2 and key[1] in ("meta", "chunks")):
        meta, chunks = values.get((namespace, "meta")), values.get((namespace, "chunks"))
        chunks = chunks if _is_key_list(chunks) else []
        texts = [values.get((namespace, "chunk", chunk_id, "texts")) for chunk_id in chunks]
        held = [keys for keys in texts if _is_key_list(keys)]
        summaries.append(NamespaceSummary(namespace, meta if _is_meta(meta) else None,
                                          len({key for keys in held for key in keys}), len(held)))
    return summaries


def check_readable(directory: str | Path) -> None:
    """Raise ``CacheError`` naming the file unless the store at ``directory`` can be read safely
    (a database this tool wrote, not damaged, readable by this user); changes nothing."""
    with _reading(Path(directory)) as reader:
        reader.execute("SELECT count(*) FROM Cache").fetchone()


@contextmanager
def _reading(directory: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to a verified store; SQLite's and the file system's errors become a
    ``CacheError`` that names the database and what to do."""
    database = directory / _DATABASE
    try:
        verify_database(directory)
        reader = connect_read_only(directory)
        try:
            yield reader
        finally:
            reader.close()
    except (sqlite3.DatabaseError, OSError) as error:
        raise CacheError(
            f"{database} cannot be read as an activation cache ({_reason(error)}); it was left as it is. "
            + ("Check that this user may read the folder and its files, or copy it to a folder you own."
               if _is_permission(error) else
               "If it is damaged, the next extraction into that cache repairs it, keeping what can still be "
               "read (`probing extract --cache ...`); if it is not a cache, pass another folder.")
        ) from error


def _reason(error: Exception) -> str:
    """What went wrong, for a message that names the file itself: an OSError's words without its errno."""
    return error.strerror if isinstance(error, OSError) and error.strerror else str(error)


def _is_permission(error: Exception) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
    code = (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF  # the primary code of an extended one
    return code in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM)


def describe_meta(meta: dict | None) -> str:
    """'embedded, bfloat16, position last, 31 layers x 576' for messages and ``cache info``."""
    if meta is None:
        return "no description (layers, width): damaged or never written"
    return (f"{meta.get('model', '?')}, {meta.get('dtype', '?')}, position {meta.get('position', '?')}, "
            f"{meta['layers']} layers x {meta['width']}")


@dataclass
class NamespaceMerge:
    """What ``merge_stores`` did to one namespace of the destination."""

    namespace: str
    meta: dict
    new: bool
    """The destination held nothing of this namespace before."""
    copied: int = 0
    """Statements copied."""
    chunks: int = 0
    """Chunks written."""
    kept: int = 0
    """Statements a source shares with the destination (or an earlier source): values agree, the first is kept."""
    present: int = 0
    """Statements an earlier merge already copied from the same source."""
    damaged: int = 0
    """Source chunks that failed their checks: not copied; their statements are recomputed when needed."""


@dataclass
class _Piece:
    """The rows of one source chunk whose statements are new to the destination."""

    store: ActivationStore
    chunk_id: str
    keys: list[str]
    rows: list[int]

    def copy_id(self) -> str:
        """The id the copy is stored under: the same in every merge, so a repeated or concurrent one adds nothing."""
        if len(self.rows) == len(self.keys):
            return self.chunk_id
        return hashlib.sha1(f"{self.chunk_id}:{self.rows}".encode()).hexdigest()[:32]


@dataclass
class _NamespacePlan:
    """Where each statement of one namespace will come from, and the copies to compare."""

    destination: ActivationStore
    meta: dict | None
    meta_from: Path
    new: bool
    provider: dict[str, tuple[ActivationStore, str, int]] = field(default_factory=dict)
    pieces: list[_Piece] = field(default_factory=list)
    overlaps: dict[tuple, tuple[list[int], list[int]]] = field(default_factory=dict)
    damaged: set[tuple[int, str]] = field(default_factory=set)
    present: int = 0
    """Statements an earlier merge copied from the same source chunk (not compared again)."""

    @classmethod
    def of(cls, destination: ActivationStore) -> _NamespacePlan:
        meta = destination.meta
        plan = cls(destination, meta, destination.directory, meta is None)
        for chunk_id, keys in destination.chunk_keys().items():
            for row, key in enumerate(keys):
                plan.provider[key] = (destination, chunk_id, row)
        return plan

    def add(self, source: ActivationStore) -> None:
        meta = source.meta
        if meta is None:
            return  # nothing described can be checked; ``merge_stores`` refuses it if it holds chunks
        if self.meta is None:
            self.meta, self.meta_from = meta, source.directory
        elif differing := [name for name in DESCRIBED if meta.get(name) != self.meta.get(name)]:
            raise MergeConflict(
                f"{source.directory} holds namespace {source.namespace} as {describe_meta(meta)}, but "
                f"{self.meta_from} holds it as {describe_meta(self.meta)} ({', '.join(differing)} differ). "
                "These are not activations of the same computation: nothing was merged. Merge only caches "
                "extracted with the same model, dtype and token position."
            )
        for chunk_id, keys in source.chunk_keys().items():
            rows, elsewhere = [], defaultdict(list)  # (store, chunk) -> [(its row, this chunk's row)]
            for row, key in enumerate(keys):
                held = self.provider.get(key)
                if held is None:
                    self.provider[key] = (source, chunk_id, row)
                    rows.append(row)
                elif held[0] is not source:
                    elsewhere[held[:2]].append((held[2], row))
            if rows:
                self.pieces.append(_Piece(source, chunk_id, keys, rows))
            for (store, held_chunk), pairs in elsewhere.items():
                own_rows = [row for _, row in pairs]
                if store is self.destination and held_chunk == _Piece(source, chunk_id, keys, own_rows).copy_id():
                    self.present += len(pairs)  # copied by an earlier merge: the same bytes
                else:  # also in the destination or an earlier source: compared
                    self.overlaps[(store, held_chunk, source, chunk_id)] = ([r for r, _ in pairs], own_rows)

    def compare(self) -> int:
        """Check that statements stored twice agree (see MERGE_MIN_COSINE); returns how many were compared.

        A chunk that fails its checks is not compared and, from a source, not copied.
        """
        if not self.overlaps:
            return 0
        layers, width = self.meta["layers"], self.meta["width"]
        disagree = {pair: np.zeros(len(rows[0]), dtype=bool) for pair, rows in self.overlaps.items()}
        worst = (1.0, 0)
        for layer in range(layers):
            blocks: dict[tuple[int, str], np.ndarray] = {}  # this layer's rows of each chunk, read once
            for (first_store, first_chunk, second_store, second_chunk), (first_rows, second_rows) in self.overlaps.items():
                first = self._block(blocks, first_store, first_chunk, layer, width)
                second = self._block(blocks, second_store, second_chunk, layer, width)
                if first is None or second is None:
                    continue
                cosine, gap = _agreement(first[first_rows], second[second_rows])
                disagree[(first_store, first_chunk, second_store, second_chunk)] |= (
                    (cosine < MERGE_MIN_COSINE) | (gap > MERGE_MAX_NORM_GAP))
                if cosine.min() < worst[0]:
                    worst = (float(cosine.min()), layer)
        conflicts = {pair: int(flags.sum()) for pair, flags in disagree.items() if flags.any()}
        if conflicts:
            first_store, _, second_store, _ = next(iter(conflicts))
            raise MergeConflict(
                f"{sum(conflicts.values())} statement(s) of namespace {self.destination.namespace} "
                f"({describe_meta(self.meta)}) have different values in {first_store.directory} and "
                f"{second_store.directory}, beyond what {self.meta.get('dtype', 'the dtype')} explains (cosine "
                f"< {MERGE_MIN_COSINE} or norms more than {MERGE_MAX_NORM_GAP:.0%} apart at some layer; lowest "
                f"cosine {worst[0]:.4f}, at layer {worst[1]}). Nothing was merged. They were computed differently "
                "(other library versions or hardware) or one disk is damaged: extract that folder again."
            )
        return sum(len(rows[0]) for rows in self.overlaps.values())

    def _block(self, blocks: dict[tuple[int, str], np.ndarray], store: ActivationStore, chunk_id: str,
               layer: int, width: int) -> np.ndarray | None:
        """A chunk's rows at ``layer`` (kept in ``blocks``), or None when it failed its checks."""
        name = (id(store), chunk_id)
        if name not in blocks and name not in self.damaged:
            try:
                blocks[name] = store._read_chunk(chunk_id, layer, width)
            except ValueError:
                self.damaged.add(name)
        return blocks.get(name)

    def write(self, report: NamespaceMerge, advance: Callable[[int], None]) -> None:
        if self.pieces and self.destination.meta is None:
            self.destination.set_meta(self.meta)
        for piece in self.pieces:
            if (id(piece.store), piece.chunk_id) in self.damaged:
                report.damaged += 1
            else:
                rows = None if len(piece.rows) == len(piece.keys) else piece.rows
                try:
                    payloads = piece.store.chunk_payloads(piece.chunk_id, rows)
                except ValueError:
                    report.damaged += 1
                else:
                    keys = [piece.keys[row] for row in piece.rows]
                    if self.destination.add_chunk(piece.copy_id(), keys, payloads):
                        report.copied += len(keys)
                        report.chunks += 1
                    else:  # a merge running beside this one has copied it
                        report.kept += len(keys)
            advance(len(piece.rows))


def merge_stores(destination: str | Path, sources: Sequence[str | Path],
                 on_progress: Callable[[int, int], None] | None = None) -> list[NamespaceMerge]:
    """Copy into the activation store at ``destination`` what the stores at ``sources`` hold (each an
    activation-store folder, or a cache folder whose ``activations/`` is meant).

    Namespaces new to the destination are copied whole. For a namespace both hold, the
    descriptions (layers, width, model, dtype, position) must match, and statements both hold
    must have the same values up to the dtype's noise (``MERGE_MIN_COSINE``); the destination's
    copy is kept. Everything is checked before anything is written: a ``MergeConflict`` leaves
    the destination as it was. Each copied chunk is one transaction, so an interrupted merge
    leaves whole chunks, and merging again copies only what is still missing. Source chunks
    that fail their checks are skipped (counted in ``damaged``). ``on_progress(done, total)``
    counts statements copied.
    """
    destination = Path(destination)
    folders = []
    for source in sources:
        folders.append(store_folder(source))
        if not (folders[-1] / _DATABASE).is_file():
            raise FileNotFoundError(
                f"{source} holds no activation store (neither {Path(source) / _DATABASE} nor "
                f"{Path(source) / STORE_FOLDER / _DATABASE}); pass a cache folder or a node's folder such as "
                "cache/nodes/node-1")
        if folders[-1].resolve() == destination.resolve():
            raise ValueError(f"{source} is the destination of the merge itself; name other folders to merge")
        check_readable(folders[-1])
        if not os.access(folders[-1], os.W_OK):
            raise CacheError(f"{folders[-1]} is read-only to this user, and SQLite writes beside a database it "
                             "reads while others may write it: copy the folder to one you own (cp -r) and merge "
                             "the copy")
    sources = folders
    stores: list[ActivationStore] = []

    def opened(directory: str | Path, namespace: str) -> ActivationStore:
        stores.append(ActivationStore(directory, namespace))
        return stores[-1]

    try:
        plans: dict[str, _NamespacePlan] = {}
        for source in sources:
            for namespace in namespaces(source):
                store = opened(source, namespace)
                if store.meta is None and store.chunk_keys():
                    raise MergeConflict(
                        f"{source} holds chunks of namespace {namespace} without its description (layers, "
                        "width, model, dtype, position), so they cannot be checked: nothing was merged. Run "
                        "extract that node again into an empty folder, or leave this folder out of the merge."
                    )
                if namespace not in plans:
                    plans[namespace] = _NamespacePlan.of(opened(destination, namespace))
                plans[namespace].add(store)
        plans = {namespace: plan for namespace, plan in plans.items() if plan.meta is not None}
        reports = {namespace: NamespaceMerge(namespace, plan.meta, plan.new, kept=plan.compare(),
                                             present=plan.present)
                   for namespace, plan in plans.items()}
        total, done = sum(len(piece.rows) for plan in plans.values() for piece in plan.pieces), 0
        report = on_progress or (lambda done, total: None)
        report(0, total)

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            report(done, total)

        for namespace, plan in plans.items():
            plan.write(reports[namespace], advance)
        return list(reports.values())
    finally:
        for store in stores:
            store.close()


def _agreement(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: cosine of the two vectors, and how far apart their norms are (a fraction of the larger)."""
    first_norm, second_norm = np.linalg.norm(first, axis=1), np.linalg.norm(second, axis=1)
    product, larger = first_norm * second_norm, np.maximum(first_norm, second_norm)
    dot = np.einsum("ij,ij->i", first, second)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(product > 0, dot / product, np.where(larger > 0, 0.0, 1.0))
        gap = np.where(larger > 0, np.abs(first_norm - second_norm) / larger, 0.0)
    return cosine, gap


def _readable_keys(directory: Path) -> Iterator[tuple]:
    """Every key of the database in ``directory`` that can be decoded, in the order first written
    (a damaged one is skipped, not fatal)."""
    disk = SafeDisk(str(directory))
    reader = sqlite3.connect(f"file:{directory / _DATABASE}?mode=ro", uri=True)
    try:
        for blob, raw in reader.execute("SELECT key, raw FROM Cache ORDER BY rowid").fetchall():
            try:
                key = disk.get(blob, raw)
            except Exception:  # noqa: BLE001 - an undecodable key belongs to no chunk we can use
                continue
            if isinstance(key, tuple):
                yield key
    finally:
        reader.close()


def _copy_readable_rows(damaged: Path, target: diskcache.Cache) -> tuple[int, int | None]:
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


def _healthy(database: Path) -> bool:
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


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    return getattr(error, "sqlite_errorcode", None) in _DAMAGE_CODES


def _report(message: str) -> None:
    warnings.warn(CacheRepaired(message), stacklevel=2)


def _is_meta(value: object) -> bool:
    return (isinstance(value, dict) and all(isinstance(value.get(k), int) and value[k] > 0
                                            for k in ("layers", "width")))


def _is_key_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


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


def _check_finite(texts: Sequence[str], hidden: np.ndarray) -> None:
    finite = np.isfinite(hidden)
    if finite.all():
        return
    rows, layers = _failing(finite, hidden.shape[1])
    raise NonFiniteActivations(
        f"the model produced NaN or infinite values at {layers} for {_statements(texts, rows)}. "
        "Nothing of this batch was stored; everything cached before is kept. The model's weights may be "
        "damaged (check or download the model file again), or its dtype may overflow: try --dtype float32."
    )


def _check_float16_range(texts: Sequence[str], hidden: np.ndarray, halves: np.ndarray) -> None:
    finite = np.isfinite(halves)
    if finite.all():
        return
    rows, layers = _failing(finite, hidden.shape[1])
    largest = float(np.abs(hidden).max())
    raise NonFiniteActivations(
        f"the model's values at {layers} reach {largest:.3g} for {_statements(texts, rows)}, beyond float16's "
        f"range (±{_FLOAT16_MAX:,.0f}) in which the cache stores activations. Nothing of this batch was "
        "stored; everything cached before is kept. Values this large usually mean damaged weights: "
        "check or download the model file again."
    )


def _failing(finite: np.ndarray, layers: int) -> tuple[list[int], str]:
    """Rows with a bad value, and the hidden states that have one, described for a message."""
    rows = np.flatnonzero(~finite.all(axis=(1, 2))).tolist()
    bad = np.flatnonzero(~finite.all(axis=(0, 2))).tolist()
    return rows, f"hidden state(s) {_spans(bad)} (of 0..{layers - 1}; -1 = {layers - 1}, 0 = the embeddings)"


def _spans(indices: list[int]) -> str:
    """[3, 4, 5, 9] -> '3..5, 9'."""
    spans, start = [], indices[0]
    for previous, current in zip(indices, [*indices[1:], None]):
        if current != previous + 1:
            spans.append(str(start) if start == previous else f"{start}..{previous}")
            start = current
    return ", ".join(spans)


def _statements(texts: Sequence[str], rows: list[int]) -> str:
    examples = "; ".join(repr(first_words(texts[row])) for row in rows[:3])
    more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
    return f"{len(rows)} of the batch's {len(texts)} statement(s): {examples}{more}"


def _encode(block: np.ndarray) -> bytes:
    data = np.ascontiguousarray(block, dtype=np.float16).tobytes()
    rows, width = block.shape
    return _HEADER.pack(_MAGIC, rows, width, zlib.crc32(data), len(data)) + data


def _decode(payload: object, rows: int, width: int) -> np.ndarray:
    if not isinstance(payload, bytes) or len(payload) < _HEADER.size:
        raise ValueError("missing or truncated entry")
    magic, stored_rows, stored_width, crc, size = _HEADER.unpack_from(payload)
    data = payload[_HEADER.size :]
    if magic != _MAGIC or size != stored_rows * stored_width * 2 or len(data) != size:
        raise ValueError(f"truncated entry ({len(data)} of {size} bytes)")
    if (stored_rows, stored_width) != (rows, width):
        raise ValueError(f"entry of shape {stored_rows}x{stored_width} where {rows}x{width} belongs")
    if zlib.crc32(data) != crc:
        raise ValueError("checksum mismatch")
    return np.frombuffer(data, dtype=np.float16).reshape(rows, width).astype(np.float32)
