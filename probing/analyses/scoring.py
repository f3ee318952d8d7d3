"""P(true) of new statements: from trained probes, and from the model's own answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from probing.store.activations import Activations
from probing.model.loading import LoadedModel
from probing.probes.estimators import Probe

MAX_STATEMENT_CHARS = 2000
ASK_TEMPLATE = "Is the following statement true or false?\nStatement: {statement}\nAnswer:"


def check_statement(text: str) -> str:
    """The statement stripped, or a ValueError saying why it cannot be scored."""
    stripped = (text or "").strip()
    if not stripped:
        raise ValueError("the statement is empty: type a sentence such as 'Paris is in France.'")
    if len(stripped) > MAX_STATEMENT_CHARS:
        raise ValueError(
            f"the statement has {len(stripped):,} characters; probes were trained on single "
            f"sentences, so keep it under {MAX_STATEMENT_CHARS:,}"
        )
    return stripped


def probe_layers(probes: Mapping[tuple[int, str], Probe]) -> list[int]:
    """The layers that have probes, largest index first (the order every table of scores uses)."""
    return sorted({layer for layer, _ in probes}, reverse=True)


def check_probe_width(probe: Probe, layer: int, kind: str, width: int, model_name: str) -> None:
    """A ValueError unless ``probe`` reads hidden states of ``width`` numbers (those of ``model_name``)."""
    if len(probe.mean_) != width:
        raise ValueError(f"the {kind} probe of layer {layer} ({kind}_layer{layer}.pt) reads {len(probe.mean_)} "
                         f"numbers per statement, but {model_name} gives {width}: it was trained on another "
                         "model; score with that model's results folder")


def score_statements(
    activations: Activations, probes: Mapping[tuple[int, str], Probe], texts: Sequence[str]
) -> pd.DataFrame:
    """One row per (statement, layer, probe kind): ``p_true``; probes keyed by (layer, kind)."""
    if not probes:
        raise ValueError("no trained probes yet: train a probe (or run `reproduce`) first")
    texts = [check_statement(t) for t in texts]
    rows = []
    for layer in probe_layers(probes):
        features = activations.layer(texts, layer)
        for (probe_layer, kind), probe in probes.items():
            if probe_layer != layer:
                continue
            check_probe_width(probe, layer, kind, features.shape[1], activations.spec.name)
            for text, p in zip(texts, probe.predict_proba(features)[:, 1]):
                rows.append({"statement": text, "layer": layer, "probe": kind, "p_true": float(p)})
    return pd.DataFrame(rows)


@torch.inference_mode()
def model_says_true(model: LoadedModel, statement: str, template: str = ASK_TEMPLATE) -> dict[str, float]:
    """What the model answers when asked: P(" True") and P(" False"), renormalised over the two."""
    prompt = template.format(statement=check_statement(statement))
    tokenizer = model.tokenizer
    ids = tokenizer(prompt, return_tensors="pt").to(model.input_device)
    answers = {word: tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in ("True", "False")}
    with model.lock:
        logits = model.next_token_logits(ids)[0]
        model.forward_passes += 1
    log_probs = torch.log_softmax(logits, dim=-1)
    pair = torch.stack([log_probs[answers["True"]], log_probs[answers["False"]]])
    p_true, p_false = torch.softmax(pair, dim=0).tolist()
    return {"p_true": p_true, "p_false": p_false,
            "mass": float(pair.exp().sum())}  # how much probability the two answers get at all
