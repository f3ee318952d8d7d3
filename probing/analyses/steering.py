"""Is the truth direction used? Add it to the residual stream and measure what the model then says.

A probe shows that the information is there; an intervention shows whether the model uses it
(Marks & Tegmark 2023, Geometry of Truth: adding the mass-mean direction at the layers around the
probe's flips Llama-2-13B's True/False answer). :func:`steer` adds ``alpha * vector`` to the output
of chosen decoder blocks at chosen token positions, through the model's hooks
(:func:`probing.model.layout.adding`), which are always removed.

Units: a :class:`SteeringDirection` is the unit direction ``d`` times the distance between the
false and the true class means along it, ``(mean_true - mean_false) . d``, measured on the
statements it was fitted on. So ``alpha = 1`` moves a statement by that distance, whatever the
model and layer: from the false mean to the true mean, on average.

The measurement (:func:`dose_response`) asks the model the statement page's question about
held-out statements and reads P(" True") - P(" False") with and without steering, for many
statements and alphas in batched forward passes. Answers an absurd alpha makes non-finite are
left out and counted; NIE is reported only where the model's own true/false gap is above its
noise (``NIE_MIN_Z`` standard errors).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from probing.study.config import SteeringConfig
from probing.analyses.generalization import centring_groups
from probing.constants import NIE_MIN_Z
from probing.constants import STEER_DIRECTIONS as DIRECTION_KINDS
from probing.constants import STEER_POSITIONS as POSITIONS
from probing.model.layout import adding
from probing.model.loading import LoadedModel
from probing.analyses.scoring import ASK_TEMPLATE, check_statement
from probing.analyses.uncertainty import t_mean_interval


@dataclass(frozen=True)
class SteeringDirection:
    """A direction in one layer's activation space, scaled so that ``alpha = 1`` moves a statement by the
    distance between the false and true class means along it."""

    kind: str
    layer: int  # the hidden-state index it was read at (negative: from the end)
    unit: np.ndarray  # unit vector
    scale: float  # (mean_true - mean_false) . unit on the fitting statements (for the controls: mass-mean's)

    @property
    def vector(self) -> np.ndarray:
        return self.unit * self.scale


def class_mean_gap(features: np.ndarray, labels: np.ndarray, unit: np.ndarray) -> float:
    """(mean of true rows - mean of false rows) . unit."""
    features = np.asarray(features, dtype=np.float64)
    return float((features[labels == 1].mean(0) - features[labels == 0].mean(0)) @ unit)


def fit_directions(features: np.ndarray, labels: np.ndarray, layer: int, kinds: Sequence[str] = DIRECTION_KINDS,
                   polarity: np.ndarray | None = None, groups: np.ndarray | None = None,
                   seed: int = 0) -> dict[str, SteeringDirection]:
    """Directions of ``kinds`` fitted on one layer's ``features`` and ``labels``. ``ttpd`` needs
    ``polarity`` and ``groups`` (see :class:`~probing.probes.ttpd.TTPDProbe`); ``random`` and ``shuffled``
    are scaled to mass-mean's length, so a control moves a statement as far as the real direction."""
    from probing.probes.estimators import make_probe
    from probing.probes.ttpd import TTPDProbe

    unknown = [kind for kind in kinds if kind not in DIRECTION_KINDS]
    if unknown:
        raise ValueError(f"unknown direction kind(s) {unknown}; choose from {', '.join(DIRECTION_KINDS)}")
    features = np.asarray(features, dtype=np.float32)
    gap = features[labels == 1].mean(0) - features[labels == 0].mean(0)
    mass_mean = gap / np.linalg.norm(gap)
    length = class_mean_gap(features, labels, mass_mean)
    rng = np.random.default_rng(seed)
    directions = {}
    for kind in kinds:
        if kind == "mass_mean":
            unit = mass_mean
        elif kind == "linear":
            unit = make_probe("linear").fit(features, labels).direction_
        elif kind == "ttpd":
            if polarity is None or groups is None:
                raise ValueError("the ttpd direction needs each statement's polarity and group")
            unit = TTPDProbe().fit(features, labels, polarity, groups).direction_
        elif kind == "random":
            unit = rng.standard_normal(features.shape[1])
        else:  # shuffled
            shuffled = rng.permutation(labels)
            unit = features[shuffled == 1].mean(0) - features[shuffled == 0].mean(0)
        unit = np.asarray(unit, dtype=np.float64)
        unit = unit / np.linalg.norm(unit)
        scale = class_mean_gap(features, labels, unit) if kind in ("linear", "ttpd") else length
        directions[kind] = SteeringDirection(kind, layer, unit.astype(np.float32), float(scale))
    return directions


@contextmanager
def steer(model: LoadedModel, layers: Sequence[int], vector: np.ndarray | torch.Tensor, alpha: float,
          mask: torch.Tensor | None = None) -> Iterator[None]:
    """Add ``alpha * vector`` to hidden states ``layers`` (the outputs of their blocks) inside the ``with`` block.

    ``mask`` (batch, sequence): the positions to steer in the first forward pass (None: every
    position); later passes of a generation (one new token each, with a cache) are steered only when
    ``mask`` is None. The hooks are removed when the block exits, also when it raises.
    """
    blocks = {model.block_of(layer) for layer in layers}  # -1 and n_blocks name one block: steered once
    shift = (alpha * torch.as_tensor(np.asarray(vector, dtype=np.float32), device=model.input_device)).to(model.dtype)
    with adding(model, dict.fromkeys(sorted(blocks), shift), mask):
        yield


def ask_batch(model: LoadedModel, statements: Sequence[str], position: str = "statement",
              template: str = ASK_TEMPLATE) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """The statement page's question for each statement, tokenised with right padding: the inputs, the
    index of each row's last token, and the mask of the positions ``position`` names."""
    if position not in POSITIONS:
        raise ValueError(f"position {position!r} is not one of {', '.join(POSITIONS)}")
    tokenizer = model.tokenizer
    prefix = template.split("{statement}")[0]
    statements = [check_statement(s) for s in statements]
    encoded = [tokenizer(template.format(statement=s), return_offsets_mapping=True) for s in statements]
    length = max(len(e["input_ids"]) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), length), pad, dtype=torch.long)
    attention = torch.zeros((len(encoded), length), dtype=torch.long)
    mask = torch.zeros((len(encoded), length), dtype=torch.bool)
    for row, (tokens, statement) in enumerate(zip(encoded, statements)):
        n = len(tokens["input_ids"])
        ids[row, :n] = torch.tensor(tokens["input_ids"])
        attention[row, :n] = 1
        if position == "statement":  # tokens whose characters overlap the statement's
            begin, end = len(prefix), len(prefix) + len(statement)
            for index, (start, stop) in enumerate(tokens["offset_mapping"]):
                mask[row, index] = stop > begin and start < end
        elif position == "last":
            mask[row, n - 1] = True
        else:
            mask[row, :n] = True
    last = attention.sum(1) - 1
    return {"input_ids": ids, "attention_mask": attention}, last, mask


def _answer_token_ids(model: LoadedModel) -> tuple[int, int]:
    tokenizer = model.tokenizer
    return tuple(tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in ("True", "False"))


@torch.inference_mode()
def true_false_margins(model: LoadedModel, statements: Sequence[str], *, layers: Sequence[int] = (),
                       vector: np.ndarray | None = None, alphas: Sequence[float] = (0.0,),
                       position: str = "statement", batch_size: int = 64) -> np.ndarray:
    """P(" True") - P(" False") (renormalised over the two, as the statement page shows them) for each
    statement (rows) and alpha (columns), steering ``layers`` along ``vector``; without ``vector``,
    the un-steered answer in one column. Batches hold ``batch_size`` statements at one alpha, the same
    statements in the same order at every alpha: in bfloat16 a row's numbers depend on the batch it is
    in, so equal batches leave the steering as the only difference between columns."""
    true_id, false_id = _answer_token_ids(model)
    alphas = list(alphas) if vector is not None else [0.0]
    inputs, last, mask = ask_batch(model, statements, position)
    margins = np.zeros((len(statements), len(alphas)))
    for column, alpha in enumerate(alphas):
        for begin in range(0, len(statements), batch_size):
            index = torch.arange(begin, min(begin + batch_size, len(statements)))
            batch = {name: value[index].to(model.input_device) for name, value in inputs.items()}
            with model.lock:
                if vector is None:
                    final = model.next_token_logits(batch, last[index])
                else:
                    with steer(model, layers, vector, alpha, mask[index]):
                        final = model.next_token_logits(batch, last[index])
                model.forward_passes += 1
            pair = torch.softmax(final[:, [true_id, false_id]], dim=-1).cpu().numpy()
            margins[index.numpy(), column] = pair[:, 0] - pair[:, 1]
    return margins


@torch.inference_mode()
def continuation(model: LoadedModel, prompt: str, *, layers: Sequence[int] = (), vector: np.ndarray | None = None,
                 alpha: float = 0.0, max_new_tokens: int = 12) -> str:
    """A greedy continuation of ``prompt``, steered at every position (generated ones too) when ``vector`` is given."""
    tokenizer = model.tokenizer
    inputs = tokenizer(prompt, return_tensors="pt").to(model.input_device)
    settings = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    with model.lock:
        if vector is None or alpha == 0:
            output = model.model.generate(**inputs, **settings)
        else:
            with steer(model, layers, vector, alpha):
                output = model.model.generate(**inputs, **settings)
        model.forward_passes += 1
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def baseline_gap(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The gap between the mean answer of true and of false statements, and its standard error
    (Welch's: sqrt(var_true / n_true + var_false / n_false)); NaN where a class has under two."""
    true, false = margins[labels == 1], margins[labels == 0]
    if len(true) < 2 or len(false) < 2:
        return math.nan, math.nan
    return float(true.mean() - false.mean()), math.sqrt(true.var(ddof=1) / len(true) + false.var(ddof=1) / len(false))


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan


def dose_response(model: LoadedModel, statements: Sequence[str], labels: np.ndarray,
                  directions: dict[str, SteeringDirection], layers: Sequence[int], alphas: Sequence[float],
                  position: str = "statement", batch_size: int = 64) -> pd.DataFrame:
    """For each direction and alpha: the mean shift of P(" True") - P(" False") for true and for false
    statements, the share of answers whose sign flips, and Geometry of Truth's normalised indirect
    effect (NIE: for alpha > 0 on false statements, (steered - false baseline) / (true baseline - false
    baseline); for alpha < 0 on true statements, the mirror image; 1 = as far as the other class).
    ``margin_true_lower`` / ``_upper`` (and ``margin_false_...``) bound the 95 % t interval of the mean
    answer over the statements, the error bars of the dose-response chart.

    Answers that are not finite (an absurd alpha overflows the residual stream) are left out of every
    statistic and counted in ``non_finite``. NIE is NaN (undefined) unless the un-steered gap
    ``baseline_gap`` exceeds ``NIE_MIN_Z`` times its standard error ``baseline_gap_se``: a gap within
    its noise would turn any shift, a random direction's too, into an arbitrarily large NIE."""
    labels = np.asarray(labels)
    base = true_false_margins(model, statements, position=position, batch_size=batch_size)[:, 0]
    usable = np.isfinite(base)
    gap, gap_se = baseline_gap(base[usable], labels[usable])
    nie_defined = gap > NIE_MIN_Z * gap_se
    true_base, false_base = _mean(base[usable & (labels == 1)]), _mean(base[usable & (labels == 0)])
    rows = []
    for kind, direction in directions.items():
        steered = true_false_margins(model, statements, layers=layers, vector=direction.vector, alphas=alphas,
                                     position=position, batch_size=batch_size)
        for j, alpha in enumerate(alphas):
            finite = usable & np.isfinite(steered[:, j])
            true, false = finite & (labels == 1), finite & (labels == 0)
            shift = steered[:, j] - base
            if not nie_defined:
                nie = math.nan
            elif alpha > 0:
                nie = (_mean(steered[false, j]) - false_base) / gap
            elif alpha < 0:
                nie = (_mean(steered[true, j]) - true_base) / -gap
            else:
                nie = 0.0
            (true_lower, true_upper), (false_lower, false_upper) = (t_mean_interval(steered[side, j])
                                                                    for side in (true, false))
            rows.append({
                "direction": kind, "layer": direction.layer, "layers": ",".join(map(str, layers)),
                "position": position, "alpha": float(alpha),
                "margin_true": _mean(steered[true, j]), "margin_false": _mean(steered[false, j]),
                "margin_true_lower": true_lower, "margin_true_upper": true_upper,
                "margin_false_lower": false_lower, "margin_false_upper": false_upper,
                "shift_true": _mean(shift[true]), "shift_false": _mean(shift[false]),
                "flipped": _mean(np.sign(steered[finite, j]) != np.sign(base[finite])),
                "non_finite": int((~finite).sum()), "nie": float(nie), "statements": len(statements),
                "scale": direction.scale, "baseline_gap": gap, "baseline_gap_se": gap_se,
            })
    return pd.DataFrame(rows)


@dataclass
class SteeringSetup:
    """Directions fitted on the training facts of a group-held-out split at ``layer``, and held-out
    statements (never used to fit them) to measure on, half true and half false."""

    directions: dict[str, SteeringDirection]
    statements: list[str]
    labels: np.ndarray


def steering_setup(dataset, activations, layer: int, kinds: Sequence[str] = DIRECTION_KINDS,
                   statements: int = 200, seed: int = 0) -> SteeringSetup:
    """Fit ``kinds`` at ``layer`` on the training side of the dataset's random (group-held-out) split and
    draw up to ``statements`` held-out ones, balanced by label. ``ttpd`` is left out where the set has
    one polarity."""
    from probing.analyses.grid import random_split

    split = random_split(dataset)
    frame, labels = dataset.frame, dataset.labels
    features = activations.layer(dataset.statements, layer)
    if len(dataset.polarities) < 2:
        kinds = [kind for kind in kinds if kind != "ttpd"]
    groups = centring_groups(dataset)
    directions = fit_directions(features[split.train], labels[split.train], layer, kinds,
                                frame["polarity"].to_numpy()[split.train], groups[split.train], seed=seed)
    rng = np.random.default_rng(seed)
    per_label = statements // 2
    chosen = np.concatenate([rng.permutation(split.test[labels[split.test] == label])[:per_label] for label in (1, 0)])
    chosen = np.sort(chosen)
    texts = dataset.statements
    return SteeringSetup(directions, [texts[i] for i in chosen], labels[chosen])


def run_steering(dataset, activations, config: SteeringConfig = SteeringConfig(), batch_size: int = 64) -> pd.DataFrame:
    """The dose-response table of ``config`` on ``dataset``: directions fitted at ``config.probe_layer``
    (:func:`steering_setup`), added at ``config.steered_layers`` of ``activations``' model."""
    model = activations.model
    for layer in (config.probe_layer, *config.steered_layers):
        model.block_of(layer)  # a layer the model lacks fails before anything runs
    setup = steering_setup(dataset, activations, config.probe_layer, config.directions, config.statements)
    return dose_response(model, setup.statements, setup.labels, setup.directions, config.steered_layers,
                         config.alphas, config.position, batch_size)
