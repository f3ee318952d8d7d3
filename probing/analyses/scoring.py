"""P(true) of new statements: from trained probes, and from the model's own answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from probing.store.activations import Activations
from probing.model.loading import LoadedModel, ModelSpec
from probing.probes.estimators import Probe
from probing.study.results import StudyResult

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


def study_model(study: StudyResult) -> tuple[ModelSpec, list[str]]:
    """The study's model as this machine runs it, and notes (one line each) where that differs
    from the machine the study ran on.

    The model runs on the recorded device if this machine has it (a folder made on a GPU opens
    on a laptop: ``StudyResult.load`` leaves the device unset there), else on this machine's
    default device. The recorded dtype is kept on the same device; on another one the config's
    dtype (unset: that device's default). The recorded revision is always asked for.
    """
    config, ran = study.config, study.meta.get("model", {})
    spec = ModelSpec(config.model, device=config.device, dtype=config.dtype, revision=ran.get("revision"))
    if ran.get("device") in (None, spec.resolved_device):
        return replace(spec, dtype=ran.get("dtype") or spec.dtype), []
    return spec, [f"this study ran on {ran['device']} ({ran.get('dtype')}), which this machine lacks: the "
                  f"model runs on {spec.resolved_device} ({spec.resolved_dtype})"]


def model_notes(study: StudyResult, fingerprint: str) -> list[str]:
    """:func:`study_model`'s notes for a model whose fingerprint is ``fingerprint``, and one more when
    it runs as the study's did but its weights differ: the probes then read activations they never saw."""
    spec, notes = study_model(study)
    recorded = study.meta.get("model", {}).get("fingerprint")
    if not notes and recorded and recorded != fingerprint:
        notes.append(f"the model {spec.name} here is not the one this study ran on (fingerprint {fingerprint}, "
                     f"the folder's {recorded}: other weights or revision): its probes may score it wrongly")
    return notes


def study_activations(study: StudyResult, cache: str | Path) -> tuple[Activations, list[str]]:
    """Activations of the study's model (:func:`study_model`) and token position on this machine, kept in
    ``cache`` (the user's, never the one a results folder records: a folder is a record, not an instruction),
    to score new statements, with :func:`model_notes` and a note when the folder recorded another cache."""
    config = study.config
    spec, _ = study_model(study)
    activations = Activations(spec, position=config.position, cache_dir=cache, max_tokens=config.max_tokens)
    notes = model_notes(study, activations.fingerprint)
    if Path(config.cache).expanduser() != Path(cache).expanduser():
        notes.append(f"the results folder recorded the activation cache {config.cache}; a results folder's paths "
                     f"are not used, so activations are read from and written to {cache}")
    return activations, notes


def score_statements(
    activations: Activations, probes: Mapping[tuple[int, str], Probe], texts: Sequence[str]
) -> pd.DataFrame:
    """One row per (statement, layer, probe kind): ``p_true``; probes keyed by (layer, kind)."""
    if not probes:
        raise ValueError("no trained probes yet: train a probe (or run `reproduce`) first")
    texts = [check_statement(t) for t in texts]
    rows = []
    for layer in sorted({layer for layer, _ in probes}, reverse=True):
        features = activations.layer(texts, layer)
        for (probe_layer, kind), probe in probes.items():
            if probe_layer != layer:
                continue
            if len(probe.mean_) != features.shape[1]:
                raise ValueError(f"the {kind} probe of layer {layer} ({kind}_layer{layer}.pt) reads {len(probe.mean_)} "
                                 f"numbers per statement, but {activations.spec.name} gives {features.shape[1]}: it "
                                 "was trained on another model; score with that model's results folder")
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
