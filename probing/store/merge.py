"""Merging activation stores: copying into one store what others hold (the per-node folders of a
multi-node extraction, or any cache folder), after checking that they agree.

One folder may hold several namespaces; each is merged on its own. Everything is checked before
anything is written, so a ``MergeConflict`` leaves the destination as it was.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from probing.store.folders import STORE_FOLDER, store_folder
from probing.store.format import DATABASE, CacheError
from probing.store.reading import check_readable, describe_meta, namespaces
from probing.store.store import ActivationStore


class MergeConflict(CacheError):
    """Caches to merge disagree (their description of a namespace, or a statement's values); nothing was merged."""


MERGE_MIN_COSINE = 0.999
"""Two copies of a statement agree when, at every layer, their cosine is at least this ...
(bfloat16 gives a statement slightly different values in different batches: cosine >= 0.9998,
norms within 1 % on SmolLM2-135M; float32 agrees to 1e-6)."""
MERGE_MAX_NORM_GAP = 0.05
"""... and their norms differ by at most this fraction of the larger one."""
DESCRIBED = ("layers", "width", "model", "dtype", "position")
"""The parts of a namespace's description that caches to merge must agree on."""


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
                blocks[name] = store.read_chunk(chunk_id, layer, width)
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
        if not (folders[-1] / DATABASE).is_file():
            raise FileNotFoundError(
                f"{source} holds no activation store (neither {Path(source) / DATABASE} nor "
                f"{Path(source) / STORE_FOLDER / DATABASE}); pass a cache folder or a node's folder such as "
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
