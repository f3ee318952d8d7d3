"""Where, inside a statement, the probes' reading changes: P(true) of each trained probe at every
token of the statement and every layer it has probes for, from one forward pass, with the model's
own answer for the statement cut after each token beside it.

Probes are trained on one token position (the study's ``position``); reading them at other tokens is
an extrapolation, which the ``read`` column and the pages say: only that token's numbers are what
the study measured. :func:`fit_all_tokens_probe` trains the comparison that is not one: a probe
on the hidden states of every token of every statement, each labelled with its statement's label.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from probing.analyses.scoring import check_probe_width, check_statement, probe_layers
from probing.analyses.steering import true_false_margins
from probing.data.statements import StatementSet
from probing.probes.estimators import Probe, Task, fit_many
from probing.probes.params import ProbeConfig
from probing.store.activations import Activations, hidden_states, plan_batches
from probing.store.encoding import to_float16
from probing.study.reporter import EXTRACTING, TRAINING, Reporter

MODEL_MARGIN = "model_margin"
"""Column of P(" True") - P(" False") the model gives when asked about the statement up to a token."""
ALL_TOKENS = "all tokens"
"""What names a probe trained on every token (``"linear · all tokens"``)."""


@dataclass
class Trace:
    """A traced statement: its tokens and the probes' P(true) at each (token, layer, probe kind)."""

    statement: str
    position: str
    """The token position the probes were trained on (``last``, ``before_period`` or ``mean``)."""
    tokens: pd.DataFrame
    """One row per token of the statement: token (0, 1, ...), text, start, end (character offsets),
    read (the token the probes were trained at; none for ``mean``) and, when asked for, model_margin."""
    scores: pd.DataFrame
    """One row per (token, layer, probe): p_true."""

    def table(self) -> pd.DataFrame:
        """The scores with each token's columns: what ``probing trace --out`` writes."""
        return self.scores.merge(self.tokens, on="token", how="left")[
            ["token", "text", "start", "end", "read", "layer", "probe", "p_true",
             *([MODEL_MARGIN] if MODEL_MARGIN in self.tokens else [])]]

    def labels(self) -> list[str]:
        """A name per token, unique even where words repeat ("3 Paris"), in the statement's order."""
        return [f"{i} {text.strip() or repr(text)}" for i, text in zip(self.tokens["token"], self.tokens["text"])]

    def at_read_token(self) -> pd.DataFrame:
        """layer, probe, p_true at the trained token: what the statement page shows for the statement."""
        read = self.tokens.loc[self.tokens["read"], "token"]
        return self.scores[self.scores["token"].isin(read)][["layer", "probe", "p_true"]].reset_index(drop=True)


def as_stored(texts: Sequence[str], hidden: torch.Tensor) -> np.ndarray:
    """(tokens, width) hidden states rounded through float16 as the activation store keeps them, as float32:
    so a token reads what the probes were trained on, and the trained token what the statement page reads."""
    return to_float16(texts, hidden.float().cpu().numpy()[:, None, :])[:, 0].astype(np.float32)


def trace_statement(activations: Activations, probes: Mapping[tuple[int, str], Probe], text: str,
                    model_answer: bool = True) -> Trace:
    """Trace ``text`` with ``probes`` (keyed by (layer, kind)) through the model ``activations`` reads,
    at its token position and token limit; ``model_answer`` adds the model's own answer after each token
    (one more batched forward pass of the question prompt per token)."""
    if not probes:
        raise ValueError("no trained probes to trace with: train a probe (or run `reproduce`) first")
    statement = check_statement(text)
    model = activations.model
    position = activations.position
    # One statement, so one batch, tokenised exactly as the extraction does (the trained token too).
    batch = plan_batches(model.tokenizer, [statement], "last" if position == "mean" else position,
                         activations.token_budget, activations.max_tokens)[0]
    offsets = model.tokenizer(statement, add_special_tokens=True, return_offsets_mapping=True)["offset_mapping"]
    content = np.flatnonzero(batch.content_mask[0].numpy())
    states = hidden_states(model, batch)
    tokens = pd.DataFrame({
        "token": np.arange(len(content)),
        "text": [statement[offsets[k][0]:offsets[k][1]] for k in content],
        "start": [offsets[k][0] for k in content], "end": [offsets[k][1] for k in content],
        "read": (content == int(batch.read_at[0])) & (position != "mean"),
    })
    rows = []
    for layer in probe_layers(probes):
        features = as_stored([statement] * len(content), states[layer][0, content])
        for (probe_layer, kind), probe in probes.items():
            if probe_layer == layer:
                check_probe_width(probe, layer, kind, features.shape[1], activations.spec.name)
                p_true = probe.predict_proba(features)[:, 1]
                rows += [{"token": t, "layer": layer, "probe": kind, "p_true": float(p)} for t, p in enumerate(p_true)]
    if model_answer:
        prefixes = [statement[:end] for end in tokens["end"]]
        tokens[MODEL_MARGIN] = true_false_margins(model, prefixes)[:, 0]
    return Trace(statement, position, tokens, pd.DataFrame(rows))


def token_features(activations: Activations, texts: Sequence[str], layer: int,
                   on_progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Hidden state ``layer`` of every token of each statement (special tokens left out), float32 (rows,
    width), and the index in ``texts`` of the statement each row belongs to. Computed, not cached: the
    activation cache holds one position per statement."""
    model = activations.model
    batches = plan_batches(model.tokenizer, texts, "last", activations.token_budget, activations.max_tokens)
    features, owners, done = [], [], 0
    for batch in batches:
        states = hidden_states(model, batch)[layer]
        for row, index in enumerate(batch.indices):
            content = batch.content_mask[row].to(states.device)
            features.append(as_stored([texts[index]] * int(content.sum()), states[row, content]))
            owners.append(np.full(int(content.sum()), index))
        done += len(batch.indices)
        if on_progress:
            on_progress(done, len(texts))
    return np.concatenate(features), np.concatenate(owners)


def fit_all_tokens_probe(activations: Activations, dataset: StatementSet, layer: int, config: ProbeConfig,
                         reporter: Reporter | None = None, device: str = "cpu") -> Probe:
    """A ``config`` probe trained on the hidden states of every token of every statement of ``dataset`` at
    ``layer``, each token labelled with its statement's label (seed 0, nothing held out), to hold beside
    a probe trained at one token in a trace. ``reporter`` hears the extraction's and the training's phases."""
    reporter = reporter or Reporter()
    reporter.set_phase(EXTRACTING, len(dataset))
    features, owners = token_features(activations, dataset.statements, layer, reporter.progress)
    reporter.set_phase(TRAINING)
    task = Task(np.arange(len(features)), dataset.labels[owners], seed=0)
    return fit_many(features, [task], config, device=device)[0]
