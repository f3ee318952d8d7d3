"""Every option of a study in one dataclass, :class:`StudyConfig`, importable without torch.

It is the single source of the options: the command line builds its flags (defaults, help,
types, choices and checks) from the fields, the dashboard takes its widget defaults from
``StudyConfig()``, and a results folder records ``to_dict()`` in ``config.json``. Each field's
metadata holds its help text, its option group and how to check a value (and, for the command
line, how to read one from text).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from probing.constants import (
    DEVICE_KINDS, DTYPE_NAMES, EMBEDDED, MATRIX_PROBES, MAX_TOKENS, POLARITY_CHOICES, POSITIONS, PROBE_KINDS,
    SPLIT_KINDS, STEER_DIRECTIONS, STEER_POSITIONS,
)

from probing.probes.params import LINEAR_SOLVERS, TRAINING, ProbeConfig, training_option
from probing.options import (
    boolean, check_fields, count, count_or_zero, distinct, names_of, nonempty_text, one_of, option, optional,
    read_floats, read_int, read_ints, read_names, real, within,
)

if TYPE_CHECKING:
    from probing.data.statements import StatementSet
    from probing.model.loading import ModelSpec
    from probing.study.reporter import Reporter

ADDED_LATER = ("polarity", "generalization", "matrix_probes", "ccs_seeds", "drop_conflicts", "per_topic")
"""Options newer than the first recorded configs: a config.json without them gets their defaults."""
_DEVICE = re.compile(rf"({'|'.join(DEVICE_KINDS)})(:\d+)?")


# ----------------------------------------------------------------------------- checks of one value
# Each takes a value and returns it normalised, or raises ValueError saying what is wrong (without
# the option's name: the caller adds "--lr" or "StudyConfig.lr").


def check_device_name(value: Any) -> str:
    """The syntax of a device; whether this machine has it is checked with torch (see ``__post_init__``)."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError(f"{value!r} is not a device: use {', '.join(DEVICE_KINDS)} or cuda:N (N = the GPU's index)")
    return value


def _layers(value: Any) -> tuple[int, ...]:
    layers = distinct(value, "layer", "-1,-5,-9")
    if any(isinstance(layer, bool) or not isinstance(layer, int) for layer in layers):
        raise ValueError(f"layers are whole numbers such as -1,-5,-9, got {value!r}")
    return layers


@dataclass(frozen=True)
class StudyConfig:
    """A study: which model reads which statements, and the layer x probe x split x seed grid trained on them."""

    model: str = option(EMBEDDED, "'embedded' (SmolLM2-135M), llama-2-7b, llama-2-13b, a hub id, a folder or a "
                                  ".gguf file", "model", nonempty_text, variable="PROBING_MODEL")
    dtype: str | None = option(None, "the model's dtype (default: chosen for the device)", "model",
                               optional(one_of(DTYPE_NAMES)), choices=DTYPE_NAMES)
    device: str | None = option(None, "where the model runs and probes train: cpu, cuda, cuda:1 ... "
                                      "(default: cuda if available)", "model", optional(check_device_name))
    position: str = option("last", "token whose hidden state is read", "model", one_of(POSITIONS), choices=POSITIONS)
    cache: str = option("cache", "activation cache folder", "model", nonempty_text, variable="PROBING_CACHE")
    dataset: str = option("builtin", "'builtin', a folder of <topic>_true_false.csv files, or one CSV",
                          "dataset", nonempty_text)
    drop_duplicates: bool = option(False, "drop repeated statements", "dataset", boolean)
    drop_conflicts: bool = option(False, "remove every row of a statement that rows label both true and false "
                                         "(without it such a statement is an error)", "dataset", boolean)
    polarity: str = option("all", "which statements: all, affirmative or negated ('Paris is not in Japan.'); a "
                                  "CSV says so in a polarity column, a SAPLMA folder with neg_<topic> files",
                           "dataset", one_of(POLARITY_CHOICES), choices=POLARITY_CHOICES)
    per_topic: int | None = option(None, "keep about this many statements of each topic (the built-in set keeps "
                                         "whole facts: true and false, affirmative and negated; a file's rows are "
                                         "sampled per polarity and label with seed 0); default: all", "dataset",
                                   optional(count), read_int)
    max_tokens: int = option(MAX_TOKENS, "refuse statements longer than this many tokens", "extraction",
                             count, read_int)
    layers: tuple[int, ...] = option((-1, -5, -9, -13, -17), "hidden-state indices, negative = from the end",
                                     "grid", _layers, read_ints)
    probes: tuple[str, ...] = option(("linear", "tiny", "small", "medium"),
                                     f"probe kinds, comma-separated, from {','.join(PROBE_KINDS)}", "grid",
                                     names_of(PROBE_KINDS, "probe kind"), read_names)
    seeds: int = option(1, "seeds per probe and split", "grid",
                        within(count, 1, 100, "each seed trains the whole grid again"), read_int)
    split: str = option("category", "category: hold one topic out; random: one stratified 80/20 split; "
                                    "within: per topic, train and test inside the topic", "grid",
                        one_of(SPLIT_KINDS), choices=SPLIT_KINDS)
    with_random: bool = option(False, "also train the grid on the random split, beside the category splits",
                               "grid", boolean)
    epochs: int = training_option("epochs")
    lr: float = training_option("lr")
    batch_size: int = training_option("batch_size")
    weight_decay: float = training_option("weight_decay")
    linear_solver: str = option("lbfgs", "lbfgs: L2-regularised logistic regression fitted to convergence, as "
                                         "scikit-learn does (see C); adam: the SAPLMA training loop", "grid",
                                one_of(tuple(LINEAR_SOLVERS)), choices=tuple(LINEAR_SOLVERS))
    C: float = training_option("C")
    controls: bool = option(True, "the text-only and shuffled-label controls beside every probe", "grid",
                            boolean)
    generalization: bool = option(False, "also the generalization analyses: train-on-one-topic, test-on-another "
                                         "matrices, affirmative/negated transfer, TTPD and CCS", "analysis", boolean)
    matrix_probes: tuple[str, ...] = option(MATRIX_PROBES, "probes of the generalization matrices and the polarity "
                                                           f"transfer, from {','.join(MATRIX_PROBES)}", "analysis",
                                            names_of(MATRIX_PROBES, "probe kind", " for the generalization analyses"),
                                            read_names)
    ccs_seeds: int = option(5, "CCS probes (seeds) per layer, trained without labels on pairs of a statement and "
                               "its negation; 0: none", "analysis",
                            within(count_or_zero, 0, 100, "each seed trains CCS at every layer again"), read_int)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.device is not None:
            from probing.model.devices import check_device  # torch: only when a device is asked for

            check_device(self.device)

    @property
    def resolved_device(self) -> str:
        """Where probes train: the given device, else CUDA when there is one."""
        if self.device is not None:
            return self.device
        from probing.model.devices import default_device

        return default_device()

    @property
    def splits(self) -> tuple[str, ...]:
        """The split kinds a study trains: ``split``, and ``random`` beside it with ``with_random``."""
        return (self.split, "random") if self.with_random and self.split != "random" else (self.split,)

    def check_layers(self, n_hidden_states: int) -> None:
        """Refuse layers the model does not have, before an extraction that may take hours."""
        outside = [layer for layer in self.layers if not -n_hidden_states <= layer < n_hidden_states]
        if outside:
            raise ValueError(
                f"layer(s) {outside} do not exist: this model has {n_hidden_states} hidden states (the "
                f"embeddings and {n_hidden_states - 1} blocks), so layers run from {-n_hidden_states} to "
                f"{n_hidden_states - 1} (negative = counted from the end). Fix --layers."
            )

    def probe_config(self, kind: str) -> ProbeConfig:
        """The training settings of a ``kind`` probe: the study's :data:`~probing.probes.params.TRAINING`
        options, and its linear solver for the linear probe."""
        solver = self.linear_solver if kind == "linear" else "adam"
        return ProbeConfig(kind=kind, solver=solver, **{name: getattr(self, name) for name in TRAINING})

    def statements(self, reporter: Reporter | None = None) -> StatementSet:
        """The statements this config names (dataset, polarity, duplicates and conflicts as it says); kept
        repeated statements get a note. No torch is imported, so a missing file fails at once."""
        from probing.data.datasets import load_dataset

        dataset = load_dataset(self.dataset, drop_duplicates=self.drop_duplicates, polarity=self.polarity,
                               drop_conflicts=self.drop_conflicts, per_topic=self.per_topic)
        if dataset.duplicates.count and not self.drop_duplicates and reporter is not None:
            example, lines = next(iter(dataset.duplicates.where.items()))
            reporter.note(f"{dataset.duplicates.count} repeated statement(s) kept, e.g. {example!r} on lines "
                          f"{lines}; --drop-duplicates removes them")
        return dataset

    def model_spec(self) -> ModelSpec:
        from probing.model.loading import ModelSpec

        return ModelSpec(self.model, device=self.device, dtype=self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples become lists)."""
        return {spec.name: list(value) if isinstance(value := getattr(self, spec.name), tuple) else value
                for spec in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudyConfig:
        """The config of ``to_dict()``: every field (those of ``ADDED_LATER`` may be missing: their defaults), nothing else."""
        if not isinstance(data, dict):
            raise ValueError(f"a study config is a mapping of option names to values, got {type(data).__name__}")
        names = [spec.name for spec in fields(cls)]
        unknown = [key for key in data if key not in names]
        missing = [name for name in names if name not in data and name not in ADDED_LATER]
        if unknown or missing:
            problems = ([f"unknown option(s) {unknown}"] if unknown else []) + (
                [f"missing option(s) {missing}"] if missing else [])
            known = f" (the options are {', '.join(names)})" if unknown else ""
            raise ValueError(f"study config: {'; '.join(problems)}{known}")
        return cls(**data)


def _layer(value: Any) -> int:
    return _layers((value,))[0]


def _alphas(value: Any) -> tuple[float, ...]:
    return tuple(_finite_alpha(alpha) for alpha in distinct(value, "alpha", "-2,-1,0,1,2"))


def _finite_alpha(value: Any) -> float:
    number = real(value)
    if not math.isfinite(number):
        raise ValueError(f"alphas must be finite numbers, got {number}")
    return number


def _statement_count(value: Any) -> int:
    if count(value) < 2:
        raise ValueError(f"statements must be >= 2 (one true, one false), got {value}")
    return value


@dataclass(frozen=True)
class SteeringConfig:
    """A steering experiment: the direction read at ``probe_layer``, added at ``layers`` (default: that
    layer and the two before it) at ``position`` tokens, for each of ``alphas`` and ``directions``,
    measured on ``statements`` held-out statements. The ``steer`` command's flags and the Steer page's
    defaults come from these fields, as a study's come from :class:`StudyConfig`'s."""

    probe_layer: int = option(-9, "layer the directions are fitted at", "steering", _layer, read_int)
    layers: tuple[int, ...] | None = option(None, "layers whose blocks get the vector (default: the probe layer and "
                                                  "the two before it)", "steering", optional(_layers), read_ints)
    alphas: tuple[float, ...] = option((-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0),
                                       "multiples of the class-mean distance to add", "steering", _alphas,
                                       read_floats)
    directions: tuple[str, ...] = option(("mass_mean", "linear", "random", "shuffled"),
                                         f"from {','.join(STEER_DIRECTIONS)}; random and shuffled are the controls",
                                         "steering", names_of(STEER_DIRECTIONS, "direction"), read_names)
    statements: int = option(200, "held-out statements to measure on", "steering", _statement_count, read_int)
    position: str = option("statement", "tokens that get the vector: the statement's, the prompt's last, or all",
                           "steering", one_of(STEER_POSITIONS), choices=STEER_POSITIONS)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def steered_layers(self) -> tuple[int, ...]:
        return self.layers or (self.probe_layer - 2, self.probe_layer - 1, self.probe_layer)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, with the layers actually steered."""
        return {"probe_layer": self.probe_layer, "layers": list(self.steered_layers), "alphas": list(self.alphas),
                "directions": list(self.directions), "statements": self.statements, "position": self.position}
