"""What a chunk holds on disk: a key per statement, and per layer its rows as float16 behind a
checked header (magic, shape, CRC32). Values float16 cannot hold (NaN, inf, beyond its range) are
refused before anything is written, with a message naming the statements and layers."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence

import numpy as np

_HEADER = struct.Struct("<4sIIIQ")  # magic, rows, width, crc32, payload bytes
_MAGIC = b"PRB1"
_FLOAT16_MAX = float(np.finfo(np.float16).max)


class NonFiniteActivations(ValueError):
    """Hidden states with NaN or inf, or beyond float16's range: refused, never stored."""


def statement_key(text: str) -> str:
    """What a statement is stored under: the sha1 of its text."""
    return hashlib.sha1(text.encode()).hexdigest()


def first_words(text: str, words: int = 8, chars: int = 60) -> str:
    """The start of a statement, to name it in a message."""
    head = " ".join(text.split()[:words])[:chars]
    return head if head == " ".join(text.split()) else head + "..."


def encode(block: np.ndarray) -> bytes:
    """(rows, width) values as a payload: the header, then the rows as float16."""
    data = np.ascontiguousarray(block, dtype=np.float16).tobytes()
    rows, width = block.shape
    return _HEADER.pack(_MAGIC, rows, width, zlib.crc32(data), len(data)) + data


def decode(payload: object, rows: int, width: int) -> np.ndarray:
    """A payload's (rows, width) float32 values; ValueError saying what is wrong when it fails a check."""
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


def to_float16(texts: Sequence[str], hidden: np.ndarray) -> np.ndarray:
    """(rows, layers, width) hidden states of ``texts`` as float16; ``NonFiniteActivations`` when a value
    is NaN or inf, or becomes inf as float16."""
    _check_finite(texts, hidden)
    with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
        halves = hidden.astype(np.float16)
    _check_float16_range(texts, hidden, halves)
    return halves


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
