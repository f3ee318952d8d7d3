"""Hidden states of statements at every layer, computed once and cached on disk.

Layers use Hugging Face ``hidden_states`` indexing: 0 is the embedding output,
``i`` the output of block ``i``, and the last one (``-1``) the output of the
final norm. So a model with 30 blocks has 31 hidden states; ``-1`` and ``-5``
are what the study's tables call the last and fifth-from-last layer.

Token positions:

- ``last``: the last token of the statement (including its final period);
- ``before_period``: the last token before a final period (what the SAPLMA code reads);
- ``mean``: the mean over the statement's tokens (special tokens such as BOS excluded).
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probing.constants import MAX_TOKENS, POSITIONS
from probing.housekeeping import CacheRepaired
from probing.model.loading import LoadedModel, ModelSpec, load_model
from probing.store.encoding import first_words, statement_key
from probing.store.folders import STORE_FOLDER, node_stores
from probing.store.merge import NamespaceMerge, merge_stores
from probing.store.store import ActivationStore, CorruptEntry, claim_token

Progress = Callable[[int, int], None]
"""Called with (statements done, statements to do)."""


class StatementTooLong(ValueError):
    """A statement with more tokens than the extraction allows."""


@dataclass(frozen=True)
class Batch:
    """Tokenised statements padded on the right, and the token each one is read at."""

    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    read_at: torch.Tensor  # index of the token read (last / before_period)
    content_mask: torch.Tensor  # tokens averaged for "mean"

    def select(self, rows: Sequence[int]) -> Batch:
        """The batch of only these rows, its padding trimmed to their longest statement."""
        rows = list(rows)
        width = int(self.attention_mask[rows].sum(1).max())
        return Batch([self.indices[r] for r in rows], self.input_ids[rows, :width],
                     self.attention_mask[rows, :width], self.read_at[rows], self.content_mask[rows, :width])


def plan_batches(
    tokenizer, texts: Sequence[str], position: str, token_budget: int, max_tokens: int
) -> list[Batch]:
    """Sort statements by length and pack them so each batch holds at most ``token_budget`` tokens."""
    if position not in POSITIONS:
        raise ValueError(f"token position {position!r} is not one of {POSITIONS}")
    encoded = tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        i = too_long[0]
        others = f" (and {len(too_long) - 1} other statement(s))" if len(too_long) > 1 else ""
        raise StatementTooLong(
            f"the statement {first_words(texts[i])!r} has {lengths[i]:,} tokens, more than the "
            f"{max_tokens:,} allowed{others}. Shorten or split it, or raise the limit (--max-tokens on the "
            "command line, max_tokens= in Activations); longer statements need more memory."
        )
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise ValueError(f"statement #{empty[0]} is empty; every statement needs some text")
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > token_budget:
            batches.append(_make_batch(current, encoded, texts, tokenizer.pad_token_id, position))
            current = []
        current.append(i)
    if current:
        batches.append(_make_batch(current, encoded, texts, tokenizer.pad_token_id, position))
    return batches


def _make_batch(indices: list[int], encoded, texts: Sequence[str], pad_id: int, position: str) -> Batch:
    width = max(len(encoded["input_ids"][i]) for i in indices)
    ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    content = torch.zeros((len(indices), width), dtype=torch.bool)
    read_at = torch.zeros(len(indices), dtype=torch.long)
    for row, i in enumerate(indices):
        tokens = encoded["input_ids"][i]
        special = encoded["special_tokens_mask"][i]
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
        content[row, : len(tokens)] = torch.tensor(special) == 0
        read_at[row] = _read_position(texts[i], encoded["offset_mapping"][i], special, position)
    return Batch(indices, ids, mask, read_at, content)


def _read_position(text: str, offsets, special, position: str) -> int:
    """Index of the last content token or, for ``before_period``, of the last one before a final period."""
    content = [k for k, s in enumerate(special) if not s]
    stripped = text.rstrip()
    if position != "before_period" or not stripped.endswith("."):
        return content[-1]
    period_at = len(stripped) - 1
    before = [k for k in content if offsets[k][0] < period_at]
    return before[-1] if before else content[-1]


@torch.inference_mode()
def hidden_states(model: LoadedModel, batch: Batch) -> tuple[torch.Tensor, ...]:
    """Every hidden state (embeddings, each block's output, the final norm's) at every token of
    ``batch``, each (rows, tokens, width) in the model's dtype; the LM head is not run."""
    device = model.input_device
    with model.lock:
        outputs = model.model.base_model(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        model.forward_passes += 1
    return outputs.hidden_states


@torch.inference_mode()
def run_batch(model: LoadedModel, batch: Batch, position: str) -> np.ndarray:
    """(rows, hidden states, width) float32 at the chosen position."""
    states = hidden_states(model, batch)
    device = model.input_device
    rows = torch.arange(len(batch.indices), device=device)
    if position == "mean":
        weights = batch.content_mask.to(device).unsqueeze(-1).float()
        picked = [(h.float() * weights).sum(1) / weights.sum(1) for h in states]
    else:
        read_at = batch.read_at.to(device)
        picked = [h[rows, read_at].float() for h in states]
    return torch.stack(picked, dim=1).cpu().numpy()


def default_token_budget(device: str, interactive: bool = False) -> int:
    """Tokens a batch of the extraction holds: 16,384 on CUDA, 1,024 on a CPU, and
    512 on a CPU when someone watches a progress bar (``interactive``: the dashboard's bar then moves every
    ~30 statements, at the same speed)."""
    if device.startswith("cuda"):
        return 16384
    return 512 if interactive else 1024


class Activations:
    """Activations of one model at one token position, backed by the disk cache.

    The model is loaded only when something is missing from the cache. Several
    processes extracting into one cache share the work through claims (see ``ensure``).
    """

    claim_seconds = 600.0
    """A claim on a batch expires after this long (a process on another host may have died)."""
    poll_seconds = 0.5
    """How often a process waiting for batches claimed by others looks at the cache."""

    def __init__(
        self,
        spec: ModelSpec | str = "embedded",
        position: str = "last",
        cache_dir: str | Path = "cache",
        model: LoadedModel | None = None,
        token_budget: int | None = None,
        max_tokens: int = MAX_TOKENS,
        store_dir: str | Path | None = None,
    ):
        if position not in POSITIONS:
            raise ValueError(f"token position {position!r} is not one of {POSITIONS}")
        self.spec = model.spec if model is not None else (ModelSpec(spec) if isinstance(spec, str) else spec)
        self.position = position
        self.cache_dir = Path(cache_dir)
        self._model = model
        self.token_budget = token_budget or default_token_budget(self.spec.resolved_device)
        self.max_tokens = max_tokens
        self.fingerprint = model.fingerprint if model is not None else self.spec.fingerprint()
        namespace = hashlib.sha256(f"{self.fingerprint}|{position}|v1".encode()).hexdigest()[:24]
        # The activations may be kept outside cache_dir, such as one folder per node of a multi-node
        # extraction; models live in the per-user model cache (probing.model.loading.models_dir).
        self.store = ActivationStore(Path(store_dir) if store_dir else self.cache_dir / STORE_FOLDER, namespace)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            self._model = load_model(self.spec)
        return self._model

    @property
    def model_loaded(self) -> bool:
        return self._model is not None

    @property
    def n_hidden_states(self) -> int:
        meta = self.store.meta
        return meta["layers"] if meta else self.model.n_hidden_states

    def missing(self, texts: Sequence[str]) -> list[int]:
        return self.store.missing(list(dict.fromkeys(texts)))

    def merge_nodes(self, on_progress: Progress | None = None) -> list[NamespaceMerge]:
        """Copy into this store what the node folders of a multi-node extraction (``cache/nodes/node-K``)
        hold and it lacks, checked as ``merge_stores`` checks; [] when there are none. Merging again
        copies nothing, so every job and every ``reproduce`` starts with it."""
        nodes = [path for path in node_stores(self.cache_dir) if path.resolve() != self.store.directory.resolve()]
        return merge_stores(self.store.directory, nodes, on_progress) if nodes else []

    def _write_meta(self) -> None:
        """Describe the namespace (from the model) if it is new or its description was damaged."""
        if self.store.meta is None:
            model = self.model
            self.store.set_meta({"layers": model.n_hidden_states, "width": model.width,
                                 "model": self.spec.name, "dtype": self.spec.resolved_dtype,
                                 "position": self.position})

    def ensure(self, texts: Sequence[str], on_progress: Progress | None = None,
               shard: tuple[int, int] | None = None) -> int:
        """Compute and store whatever is missing; returns how many statements this call computed.

        Every process plans the same length-sorted batches for *all* the statements (the
        batches a single process would run on an empty cache) and computes, per batch, the
        statements that are missing. With ``shard=(rank, world)`` this process takes every
        world-th batch. Without it, a process claims each batch in the cache before computing
        it and skips batches a live other process has claimed; at the end it waits for those
        to appear, taking over any whose process died. So several processes fill one cache
        together, each statement is computed once, and a relaunch completes a killed one.
        """
        unique = list(dict.fromkeys(texts))
        if shard is not None and not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard rank {shard[0]} is not in 0..{shard[1] - 1}")
        report = on_progress or (lambda done, total: None)
        missing = set(self.store.missing(unique))
        if not missing:
            report(0, 0)
            return 0
        model = self.model
        self._write_meta()
        self.store.clean()
        batches = plan_batches(model.tokenizer, unique, self.position, self.token_budget, self.max_tokens)
        if shard is not None:
            batches = batches[shard[0]::shard[1]]
        pending = []  # (batch, its statements, how many of them are missing)
        for batch in batches:
            if count := sum(i in missing for i in batch.indices):
                pending.append((batch, [unique[i] for i in batch.indices], count))
        total, done, computed = sum(count for *_, count in pending), 0, 0
        report(0, total)
        claiming = shard is None
        with claim_token() as token, ChunkWriter(self.store) as writer:
            waiting = []
            for work in pending:
                batch, statements, count = work
                if claiming and not self.store.claim(batch_name(statements), token, self.claim_seconds):
                    waiting.append(work)
                    continue
                computed += self._compute(batch, statements, writer, token if claiming else None)
                done += count
                report(done, total)
            while waiting:  # batches other processes claimed: wait for them, or take them over
                time.sleep(self.poll_seconds)
                stored = self.store.index()
                for work in list(waiting):
                    batch, statements, count = work
                    if any(statement_key(text) not in stored for text in statements):
                        if not self.store.claim(batch_name(statements), token, self.claim_seconds):
                            continue  # still being computed elsewhere
                        computed += self._compute(batch, statements, writer, token)  # its process died or gave up
                    waiting.remove(work)
                    done += count
                    report(done, total)
        return computed

    def _compute(self, batch: Batch, statements: list[str], writer: ChunkWriter, token: str | None) -> int:
        """Run the batch's statements that are still missing and hand them to the writer, which
        stores them and then releases the batch's claim, if any."""
        release = (lambda: self.store.release(batch_name(statements), token)) if token is not None else None
        try:
            stored = self.store.index()
            rows = [row for row, text in enumerate(statements) if statement_key(text) not in stored]
            if rows:
                part = batch if len(rows) == len(statements) else batch.select(rows)
                hidden = run_batch(self.model, part, self.position)
        except BaseException:
            if release is not None:
                release()
            raise
        if not rows:  # another process stored it between our plan and our claim
            if release is not None:
                release()
            return 0
        writer.submit([statements[row] for row in rows], hidden, release)
        return len(rows)

    def layer(self, texts: Sequence[str], layer: int, on_progress: Progress | None = None) -> np.ndarray:
        """float32 (len(texts), width) hidden states at ``layer``, computing what is missing.

        Corrupt entries are dropped and recomputed once (with a ``CacheRepaired`` warning);
        if the recomputed ones fail their checks again, ``CorruptEntry`` says the disk may be failing.
        """
        texts = list(texts)
        repaired: CorruptEntry | None = None
        for _ in range(3):  # at most: not cached yet, corrupt, then corrupt again
            self._write_meta()
            try:
                return self.store.read_layer(texts, layer)
            except KeyError:
                pass  # not cached yet
            except CorruptEntry as error:
                if repaired is not None:
                    raise CorruptEntry(
                        f"entries of layer {layer} recomputed just now failed their checks again when read "
                        f"back ({error}). The disk or filesystem under {self.store.directory} may be failing: "
                        "check free space and the system log (dmesg). Everything else stays cached."
                    ) from error
                warnings.warn(CacheRepaired(str(error)), stacklevel=2)
                repaired = error
            self.ensure(texts, on_progress)
        return self.store.read_layer(texts, layer)


class ChunkWriter:
    """Stores computed batches on a second thread while the next batch runs.

    At most one batch waits while another is being written, so memory stays at two
    batches. A failed write (non-finite values, a full disk) stops the extraction: nothing
    is written after it, and it is raised in the calling thread at the next ``submit`` or on
    leaving the ``with`` block. Leaving the block first finishes the writes already handed
    over, so an interrupted run keeps every batch it computed.
    """

    def __init__(self, store: ActivationStore):
        self._store = store
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="probing-cache-writer", daemon=True)

    def __enter__(self) -> ChunkWriter:
        self._thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self._queue.put(None)
        self._thread.join()
        if kind is None:
            self._raise_failure()

    def submit(self, texts: list[str], hidden: np.ndarray, then: Callable[[], None] | None = None) -> None:
        """Store ``hidden`` (rows, layers, width) for ``texts``; ``then`` runs after the write, even a failed one."""
        self._raise_failure()
        self._queue.put((texts, hidden, then))

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                texts, hidden, then = item
                try:
                    if self._error is None:
                        self._store.write_chunk(texts, hidden)
                except BaseException as error:  # noqa: BLE001 - handed to the extracting thread
                    self._error = error
                finally:
                    if then is not None:
                        then()
        finally:
            self._store.close()  # this thread's SQLite connection: closing it folds its writes into cache.db


def batch_name(texts: Sequence[str]) -> str:
    """What processes claim a batch of these statements by: the same in every process that plans it."""
    return hashlib.sha1("".join(statement_key(text) for text in texts).encode()).hexdigest()
