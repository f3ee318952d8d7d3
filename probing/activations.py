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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from probing.models import LoadedModel, ModelSpec, load_model
from probing.storage import ActivationStore, CorruptEntry

POSITIONS = ("last", "before_period", "mean")
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
        raise StatementTooLong(
            f"{len(too_long)} statement(s) exceed {max_tokens} tokens, e.g. #{i} "
            f"({lengths[i]} tokens: {texts[i][:80]!r}...). Shorten them or raise max_tokens."
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
def run_batch(model: LoadedModel, batch: Batch, position: str) -> np.ndarray:
    """(rows, hidden states, width) float32 at the chosen position; the LM head is not run."""
    device = model.input_device
    with model.lock:
        outputs = model.model.base_model(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            output_hidden_states=True,
            use_cache=False,
        )
        model.forward_passes += 1
    rows = torch.arange(len(batch.indices), device=device)
    if position == "mean":
        weights = batch.content_mask.to(device).unsqueeze(-1).float()
        picked = [(h.float() * weights).sum(1) / weights.sum(1) for h in outputs.hidden_states]
    else:
        read_at = batch.read_at.to(device)
        picked = [h[rows, read_at].float() for h in outputs.hidden_states]
    return torch.stack(picked, dim=1).cpu().numpy()


class Activations:
    """Activations of one model at one token position, backed by the disk cache.

    The model is loaded only when something is missing from the cache.
    """

    def __init__(
        self,
        spec: ModelSpec | str = "embedded",
        position: str = "last",
        cache_dir: str | Path = "cache",
        model: LoadedModel | None = None,
        token_budget: int | None = None,
        max_tokens: int = 512,
    ):
        if position not in POSITIONS:
            raise ValueError(f"token position {position!r} is not one of {POSITIONS}")
        self.spec = model.spec if model is not None else (ModelSpec(spec) if isinstance(spec, str) else spec)
        self.position = position
        self.cache_dir = Path(cache_dir)
        self._model = model
        self.token_budget = token_budget or (16384 if self.spec.resolved_device.startswith("cuda") else 1024)
        self.max_tokens = max_tokens
        self.fingerprint = self.spec.fingerprint()
        namespace = hashlib.sha256(f"{self.fingerprint}|{position}|v1".encode()).hexdigest()[:24]
        self.store = ActivationStore(self.cache_dir / "activations", namespace)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            self._model = load_model(self.spec, cache_dir=self.cache_dir)
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

    def ensure(self, texts: Sequence[str], on_progress: Progress | None = None,
               shard: tuple[int, int] | None = None) -> int:
        """Compute and store whatever is missing; returns how many statements were computed.

        With ``shard=(rank, world)`` this process takes every world-th batch of the plan
        for *all* the statements (the same plan in every process, and the same batches
        a single process would run on an empty cache) and skips batches already stored,
        so several processes fill one cache together and a relaunch completes a killed one.
        """
        unique = list(dict.fromkeys(texts))
        missing = self.store.missing(unique)
        if shard is None:
            todo = [unique[i] for i in missing]
        else:
            rank, world = shard
            if not 0 <= rank < world:
                raise ValueError(f"shard rank {rank} is not in 0..{world - 1}")
            todo = unique if missing else []
        if not todo:
            if on_progress:
                on_progress(0, 0)
            return 0
        model = self.model
        if self.store.meta is None:
            self.store.set_meta({"layers": model.n_hidden_states, "width": model.width,
                                 "model": self.spec.name, "dtype": self.spec.resolved_dtype,
                                 "position": self.position})
        batches = plan_batches(model.tokenizer, todo, self.position, self.token_budget, self.max_tokens)
        if shard is not None:
            missing_texts = {unique[i] for i in missing}
            batches = [b for b in batches[shard[0]::shard[1]]
                       if any(todo[i] in missing_texts for i in b.indices)]
        total, done = sum(len(b.indices) for b in batches), 0
        if on_progress:
            on_progress(0, total)
        for batch in batches:
            hidden = run_batch(model, batch, self.position)
            self.store.write_chunk([todo[i] for i in batch.indices], hidden)
            done += len(batch.indices)
            if on_progress:
                on_progress(done, total)
        return total

    def layer(self, texts: Sequence[str], layer: int, on_progress: Progress | None = None) -> np.ndarray:
        """float32 (len(texts), width) hidden states at ``layer``, computing what is missing."""
        texts = list(texts)
        for _ in range(3):
            try:
                return self.store.read_layer(texts, layer)
            except (KeyError, CorruptEntry):  # not cached yet, or a bad chunk that was just dropped
                self.ensure(texts, on_progress)
        raise CorruptEntry("the activation cache keeps returning corrupt entries; delete it")
