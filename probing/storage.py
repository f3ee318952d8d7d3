"""The on-disk activation store: float16 hidden states, one entry per (chunk, layer).

Layout inside a ``diskcache.Cache`` (keys are tuples, all starting with a
*namespace* that fingerprints model, dtype and token position):

- ``(ns, "meta")`` -> ``{"layers": n_hidden_states, "width": d, ...}``
- ``(ns, "chunks")`` -> chunk ids in the order they were written
- ``(ns, "chunk", chunk_id, "texts")`` -> sha1 of each statement of the chunk, in row order
- ``(ns, "chunk", chunk_id, layer)`` -> bytes: a checked header + float16 rows

A chunk is the statements of one extraction batch. It is written in one
transaction (all layers, its statement list, then its place in the chunk list),
so a killed run leaves whole chunks or none. Finding where statements are stored
reads the chunk list and each chunk's statement list (one read per chunk, not
per statement); reading one layer then touches only that layer's entries. Every
payload carries its shape and a CRC32; a truncated or corrupt one raises
``CorruptEntry`` and is dropped with its rows, so it gets recomputed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import uuid
import zlib
from collections import defaultdict
from pathlib import Path

import diskcache
import numpy as np

_HEADER = struct.Struct("<4sIIIQ")  # magic, rows, width, crc32, payload bytes
_MAGIC = b"PRB1"
_NO_LIMIT = 2**50


class CacheError(RuntimeError):
    """The activation cache cannot be used (full disk, unwritable folder)."""


class CorruptEntry(CacheError):
    """A stored chunk failed its checks; it has been removed and will be recomputed."""


def private_dir(path: str | Path) -> Path:
    """Create ``path`` readable by its owner only (the cache unpickles what it reads)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def statement_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


class ActivationStore:
    """Hidden states of many statements for one namespace (model x dtype x position)."""

    def __init__(self, directory: str | Path, namespace: str):
        self.directory = private_dir(directory)
        self.namespace = namespace
        try:
            self._cache = diskcache.Cache(
                str(self.directory), size_limit=_NO_LIMIT, eviction_policy="none"
            )
        except Exception as error:  # noqa: BLE001 - a broken SQLite file or folder
            raise CacheError(
                f"cannot open the activation cache at {self.directory} ({error}). "
                "Move the folder away or pass another --cache."
            ) from error

    def close(self) -> None:
        self._cache.close()

    # -- metadata ---------------------------------------------------------------
    @property
    def meta(self) -> dict | None:
        return self._cache.get((self.namespace, "meta"))

    def set_meta(self, meta: dict) -> None:
        self._cache.set((self.namespace, "meta"), meta)

    def _layer_index(self, layer: int) -> int:
        meta = self.meta
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
    def index(self) -> dict[str, tuple[str, int]]:
        """sha1(statement) -> (chunk_id, row) for everything stored; later chunks win."""
        where: dict[str, tuple[str, int]] = {}
        for chunk_id in self._cache.get((self.namespace, "chunks")) or []:
            keys = self._cache.get((self.namespace, "chunk", chunk_id, "texts"))
            if not isinstance(keys, list):
                self.drop_chunk(chunk_id)
                continue
            for row, key in enumerate(keys):
                where[key] = (chunk_id, row)
        return where

    def locate(self, texts: list[str]) -> list[tuple[str, int] | None]:
        """Where each statement is stored, or None."""
        where = self.index()
        return [where.get(statement_key(t)) for t in texts]

    def missing(self, texts: list[str]) -> list[int]:
        """Indices of the statements that are not cached."""
        return [i for i, where in enumerate(self.locate(texts)) if where is None]

    def read_layer(self, texts: list[str], layer: int) -> np.ndarray:
        """float32 array (len(texts), width) of one layer; every statement must be cached."""
        places = self.locate(texts)
        absent = [i for i, where in enumerate(places) if where is None]
        if absent:
            raise KeyError(f"{len(absent)} statement(s) are not cached, e.g. {texts[absent[0]]!r}")
        index = self._layer_index(layer)
        by_chunk: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for position, (chunk_id, row) in enumerate(places):
            by_chunk[chunk_id].append((position, row))
        out = np.empty((len(texts), self.meta["width"]), dtype=np.float32)
        for chunk_id, pairs in by_chunk.items():
            block = self._read_chunk(chunk_id, index)
            positions, rows = zip(*pairs)
            out[list(positions)] = block[list(rows)]
        return out

    def _read_chunk(self, chunk_id: str, layer: int) -> np.ndarray:
        try:
            payload = self._cache.get((self.namespace, "chunk", chunk_id, layer))
            block = _decode(payload)
        except Exception as error:  # noqa: BLE001 - unreadable file, bad pickle, bad CRC
            self.drop_chunk(chunk_id)
            raise CorruptEntry(f"cached chunk {chunk_id} layer {layer}: {error}") from error
        return block

    # -- writes -----------------------------------------------------------------
    def write_chunk(self, texts: list[str], hidden: np.ndarray) -> str:
        """Store (rows, layers, width) hidden states of ``texts`` as one chunk; returns its id."""
        chunk_id = uuid.uuid4().hex
        rows, layers, _ = hidden.shape
        assert rows == len(texts)
        halves = hidden.astype(np.float16)
        try:
            with self._cache.transact():
                for layer in range(layers):
                    self._cache.set((self.namespace, "chunk", chunk_id, layer), _encode(halves[:, layer]))
                self._cache.set((self.namespace, "chunk", chunk_id, "texts"), [statement_key(t) for t in texts])
                chunks = self._cache.get((self.namespace, "chunks")) or []
                self._cache.set((self.namespace, "chunks"), [*chunks, chunk_id])
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"the disk holding {self.directory} is full; everything cached before this "
                    "batch is kept. Free space (or pass another --cache) and run again to resume."
                ) from error
            raise CacheError(f"cannot write to the activation cache {self.directory}: {error}") from error
        return chunk_id

    def drop_chunk(self, chunk_id: str) -> None:
        """Remove a chunk: its statements count as missing again."""
        with self._cache.transact():
            chunks = self._cache.get((self.namespace, "chunks")) or []
            self._cache.set((self.namespace, "chunks"), [c for c in chunks if c != chunk_id])
            layers = (self.meta or {}).get("layers", 0)
            for part in [*range(layers), "texts"]:
                self._cache.delete((self.namespace, "chunk", chunk_id, part))


def _encode(block: np.ndarray) -> bytes:
    data = np.ascontiguousarray(block, dtype=np.float16).tobytes()
    rows, width = block.shape
    return _HEADER.pack(_MAGIC, rows, width, zlib.crc32(data), len(data)) + data


def _decode(payload: object) -> np.ndarray:
    if not isinstance(payload, bytes) or len(payload) < _HEADER.size:
        raise ValueError("missing or truncated entry")
    magic, rows, width, crc, size = _HEADER.unpack_from(payload)
    data = payload[_HEADER.size :]
    if magic != _MAGIC or size != rows * width * 2 or len(data) != size:
        raise ValueError(f"truncated entry ({len(data)} of {size} bytes)")
    if zlib.crc32(data) != crc:
        raise ValueError("checksum mismatch")
    return np.frombuffer(data, dtype=np.float16).reshape(rows, width).astype(np.float32)
