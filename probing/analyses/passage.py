"""P(true) of each sentence of a passage: which of its claims does the model internally doubt?

A passage is split into sentences (blank lines end a paragraph; inside one, nupunkt's Punkt model
decides, which knows abbreviations such as "Dr.", "U.S." and "e.g." and decimals such as "3.14"),
and each sentence is scored as a statement of its own: by every probe at one layer
(:func:`~probing.analyses.scoring.score_statements`) and by the model's own True/False answer
(:func:`~probing.analyses.scoring.model_says_true`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import nupunkt
import pandas as pd

from probing.analyses.scoring import check_statement, model_says_true, probe_layers, score_statements
from probing.constants import PROBE_KINDS
from probing.probes.estimators import Probe
from probing.store.activations import Activations
from probing.store.encoding import first_words

MAX_PASSAGE_CHARS = 20_000
"""A longer passage is refused: each sentence costs two forward passes, and the page waits for them."""
MAX_SENTENCES = 100
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n")  # a blank line (maybe holding spaces)
P_TRUE = "_p_true"
MODEL = "model"
"""The model's own answer's name among the scorers (beside the probe kinds); its mass column is ``model_mass``."""


@dataclass(frozen=True)
class Sentence:
    """One sentence: ``passage[start:end]`` as written; ``text``, what is scored, has each run of
    whitespace (a line break inside a wrapped paragraph) made one space."""

    text: str
    start: int
    end: int


def split_sentences(passage: str) -> list[Sentence]:
    """The sentences of ``passage`` in order, with their character offsets in it."""
    sentences = []
    for start, end in _paragraphs(passage):
        paragraph = passage[start:end]
        for a, b in nupunkt.sent_spans(paragraph):
            piece = paragraph[a:b]
            if stripped := piece.strip():
                first = start + a + len(piece) - len(piece.lstrip())
                sentences.append(Sentence(" ".join(stripped.split()), first, first + len(stripped)))
    return sentences


def _paragraphs(passage: str) -> list[tuple[int, int]]:
    """(start, end) of the text between blank lines: no sentence runs across one, with or without a period."""
    bounds, start = [], 0
    for match in PARAGRAPH_BREAK.finditer(passage):
        bounds.append((start, match.start()))
        start = match.end()
    return [*bounds, (start, len(passage))]


def check_passage(passage: str) -> list[Sentence]:
    """The sentences of ``passage``, or a ValueError saying why it cannot be scored (and which sentence)."""
    if not (passage or "").strip():
        raise ValueError("the passage is empty: paste a paragraph such as 'Paris is in France. The Moon is a "
                         "planet.'")
    if len(passage) > MAX_PASSAGE_CHARS:
        raise ValueError(f"the passage has {len(passage):,} characters; score at most {MAX_PASSAGE_CHARS:,} at a "
                         "time (split it into parts)")
    sentences = split_sentences(passage)
    if len(sentences) > MAX_SENTENCES:
        raise ValueError(f"the passage has {len(sentences):,} sentences; score at most {MAX_SENTENCES} at a time "
                         "(split it into parts)")
    for number, sentence in enumerate(sentences, 1):
        try:
            check_statement(sentence.text)
        except ValueError as error:
            raise ValueError(f"sentence {number} ({first_words(sentence.text)!r}): {error}") from None
    return sentences


def read_passage(data: bytes, name: str) -> str:
    """The text of an uploaded or named file (UTF-8, a byte-order mark dropped), or a ValueError saying so."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{name} is not UTF-8 text (byte {error.start:,} is {data[error.start]:#04x}): save it as "
                         "UTF-8 plain text") from None


def default_layer(probes: Mapping[tuple[int, str], Probe]) -> int:
    """The layer with the most probe kinds; on a tie the largest index (the deepest, as layers usually count
    from the end)."""
    layers = probe_layers(probes)
    return max(layers, key=lambda layer: (sum(1 for at, _ in probes if at == layer), layer))


def score_passage(activations: Activations, probes: Mapping[tuple[int, str], Probe], passage: str,
                  layer: int | None = None) -> pd.DataFrame:
    """One row per sentence: ``index`` (from 1), ``sentence``, ``start``, ``end``; with probes, ``layer`` and
    one ``<kind>_p_true`` per probe kind at ``layer`` (default: :func:`default_layer`); then
    ``model_p_true`` and ``model_mass`` (the model's answer, as :func:`model_says_true` gives it).

    Wide rather than long, so that the table reads (and downloads) as the passage does, a sentence a row.
    Without probes only the model answers."""
    sentences = check_passage(passage)
    layer, here = _probes_at(probes, layer)  # before the model is needed: a wrong layer fails at once
    texts = [sentence.text for sentence in sentences]
    _check_tokens(activations, texts)
    table = pd.DataFrame({"index": range(1, len(sentences) + 1), "sentence": texts,
                          "start": [s.start for s in sentences], "end": [s.end for s in sentences]})
    if here:
        table["layer"] = layer
        scores = score_statements(activations, here, texts)
        known = {kind: i for i, kind in enumerate(PROBE_KINDS)}
        for kind in sorted({kind for _, kind in here}, key=lambda kind: (known.get(kind, len(known)), kind)):
            # score_statements keeps the texts' order, repeated sentences included
            table[p_true_column(kind)] = scores.loc[scores["probe"] == kind, "p_true"].to_numpy()
    answers = [model_says_true(activations.model, text) for text in texts]
    table[p_true_column(MODEL)] = [answer["p_true"] for answer in answers]
    table[f"{MODEL}_mass"] = [answer["mass"] for answer in answers]
    return table


def p_true_column(scorer: str) -> str:
    """The column of a passage's table holding ``scorer``'s P(true) (a probe kind, or :data:`MODEL`)."""
    return f"{scorer}{P_TRUE}"


def scorers(table: pd.DataFrame) -> list[str]:
    """Who scored a passage's table, in its column order: the probe kinds, then :data:`MODEL`."""
    return [column.removesuffix(P_TRUE) for column in table.columns if column.endswith(P_TRUE)]


def _probes_at(probes: Mapping[tuple[int, str], Probe], layer: int | None
               ) -> tuple[int | None, dict[tuple[int, str], Probe]]:
    """The layer to score at (default: :func:`default_layer`) and its probes; a ValueError where it has none."""
    if not probes:
        if layer is not None:
            raise ValueError(f"no trained probes, so none at layer {layer}: train a probe (or run `reproduce`) "
                             "first")
        return None, {}
    layer = default_layer(probes) if layer is None else layer
    here = {key: probe for key, probe in probes.items() if key[0] == layer}
    if not here:
        raise ValueError(f"no probe at layer {layer}: the probes are at layers "
                         f"{', '.join(map(str, probe_layers(probes)))}; choose one of those")
    return layer, here


def _check_tokens(activations: Activations, texts: list[str]) -> None:
    """Refuse a sentence with more tokens than the extraction allows, naming it (before any forward pass)."""
    lengths = [len(ids) for ids in activations.model.tokenizer(texts, add_special_tokens=True)["input_ids"]]
    for number, (text, length) in enumerate(zip(texts, lengths), 1):
        if length > activations.max_tokens:
            raise ValueError(f"sentence {number} ({first_words(text)!r}) has {length:,} tokens, more than the "
                             f"{activations.max_tokens:,} allowed: split it into shorter sentences")
