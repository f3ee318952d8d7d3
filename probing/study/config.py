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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from probing.constants import (
    DEVICE_KINDS, DTYPE_NAMES, EMBEDDED, MATRIX_PROBES, MAX_TOKENS, POLARITY_CHOICES, POSITIONS, PROBE_KINDS,
    SPLIT_KINDS, STEER_DIRECTIONS, STEER_POSITIONS,
)

if TYPE_CHECKING:
    from probing.model.loading import ModelSpec
    from probing.probes.estimators import ProbeConfig

LINEAR_SOLVERS = ("lbfgs", "adam")
OPTION_GROUPS = ("model", "dataset", "extraction", "grid", "analysis")
"""``model``: which model reads the statements and how; ``dataset``: which statements;
``extraction``: limits of the forward pass; ``grid``: what is trained and how; ``analysis``: the
generalization and polarity analyses."""
ADDED_LATER = ("polarity", "generalization", "matrix_probes", "ccs_seeds", "drop_conflicts")
"""Options newer than the first recorded configs: a config.json without them gets their defaults."""
_DEVICE = re.compile(rf"({'|'.join(DEVICE_KINDS)})(:\d+)?")


# ----------------------------------------------------------------------------- checks of one value
# Each takes a value and returns it normalised, or raises ValueError saying what is wrong (without
# the option's name: the caller adds "--lr" or "StudyConfig.lr").


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty text, got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _count(value: Any) -> int:
    """A whole number >= 1 (epochs, seeds, batch size, a token limit)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _count_or_zero(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number such as 0.001, got {value!r}")
    return float(value)


def _positive(value: Any) -> float:
    """A finite number > 0 (learning rate, C): inf or nan would train nothing and report chance."""
    number = _number(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a finite number > 0, got {number:g}")
    return number


def _non_negative(value: Any) -> float:
    number = _number(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"must be a finite number >= 0, got {number:g}")
    return number


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def _within(check: Callable[[Any], Any], low: float, high: float, why: str) -> Callable[[Any], Any]:
    """``check``, then refuse a value outside ``low``..``high``; ``why`` says what lies beyond."""
    def bounded(value: Any) -> Any:
        value = check(value)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value:g}: {why}" if isinstance(value, float)
                             else f"must be between {low} and {high}, got {value}: {why}")
        return value

    return bounded


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def check_device_name(value: Any) -> str:
    """The syntax of a device; whether this machine has it is checked with torch (see ``__post_init__``)."""
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError(f"{value!r} is not a device: use {', '.join(DEVICE_KINDS)} or cuda:N (N = the GPU's index)")
    return value


def _distinct(value: Any, what: str, example: str) -> tuple:
    """``value`` as a non-empty tuple without repeats (a list from JSON is fine)."""
    items = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not items:
        raise ValueError(f"expected at least one {what}, such as {example}, got {value!r}")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{what}(s) {repeated} given more than once")
    return items


def _layers(value: Any) -> tuple[int, ...]:
    layers = _distinct(value, "layer", "-1,-5,-9")
    if any(isinstance(layer, bool) or not isinstance(layer, int) for layer in layers):
        raise ValueError(f"layers are whole numbers such as -1,-5,-9, got {value!r}")
    return layers


def _kinds(value: Any) -> tuple[str, ...]:
    kinds = _distinct(value, "probe kind", ",".join(PROBE_KINDS))
    unknown = [kind for kind in kinds if kind not in PROBE_KINDS]
    if unknown:
        raise ValueError(f"unknown probe kind(s) {unknown}; choose from {','.join(PROBE_KINDS)}")
    return kinds


def _matrix_probes(value: Any) -> tuple[str, ...]:
    kinds = _distinct(value, "probe kind", ",".join(MATRIX_PROBES))
    unknown = [kind for kind in kinds if kind not in MATRIX_PROBES]
    if unknown:
        raise ValueError(f"unknown probe kind(s) {unknown} for the generalization analyses; choose from "
                         f"{','.join(MATRIX_PROBES)}")
    return kinds


# ----------------------------------------------------------------------------- reading a value from text


def _read_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def _read_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number such as 0.001, got {text!r}") from None


def read_ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers such as -1,-5,-9, got {text!r}") from None


def read_floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated numbers such as -2,-1,0,1,2, got {text!r}") from None


def read_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def option(default: Any, help: str, group: str, check: Callable[[Any], Any],
           read: Callable[[str], Any] | None = None, choices: tuple[str, ...] | None = None) -> Any:
    """A field of :class:`StudyConfig`: its default, help text, option group, check, and for the
    command line how to read it from text (``None``: the text itself) and its choices."""
    assert group in OPTION_GROUPS, group
    return field(default=default, metadata={"help": help, "group": group, "check": check, "read": read,
                                            "choices": choices})


@dataclass(frozen=True)
class StudyConfig:
    """A study: which model reads which statements, and the layer x probe x split x seed grid trained on them."""

    model: str = option(EMBEDDED, "'embedded' (SmolLM2-135M), llama-2-7b, llama-2-13b, a hub id, a folder or a "
                                  ".gguf file", "model", _text)
    dtype: str | None = option(None, "the model's dtype (default: chosen for the device)", "model",
                               _optional(_one_of(DTYPE_NAMES)), choices=DTYPE_NAMES)
    device: str | None = option(None, "where the model runs and probes train: cpu, cuda, cuda:1 ... "
                                      "(default: cuda if available)", "model", _optional(check_device_name))
    position: str = option("last", "token whose hidden state is read", "model", _one_of(POSITIONS), choices=POSITIONS)
    cache: str = option("cache", "activation cache folder", "model", _text)
    dataset: str = option("builtin", "'builtin', a folder of <topic>_true_false.csv files, or one CSV",
                          "dataset", _text)
    drop_duplicates: bool = option(False, "drop repeated statements", "dataset", _flag)
    drop_conflicts: bool = option(False, "remove every row of a statement that rows label both true and false "
                                         "(without it such a statement is an error)", "dataset", _flag)
    polarity: str = option("all", "which statements: all, affirmative or negated ('Paris is not in Japan.'); a "
                                  "CSV says so in a polarity column, a SAPLMA folder with neg_<topic> files",
                           "dataset", _one_of(POLARITY_CHOICES), choices=POLARITY_CHOICES)
    max_tokens: int = option(MAX_TOKENS, "refuse statements longer than this many tokens", "extraction",
                             _count, _read_int)
    layers: tuple[int, ...] = option((-1, -5, -9, -13, -17), "hidden-state indices, negative = from the end",
                                     "grid", _layers, read_ints)
    probes: tuple[str, ...] = option(("linear", "tiny", "small", "medium"),
                                     f"probe kinds, comma-separated, from {','.join(PROBE_KINDS)}", "grid",
                                     _kinds, read_names)
    seeds: int = option(1, "seeds per probe and split", "grid",
                        _within(_count, 1, 100, "each seed trains the whole grid again"), _read_int)
    split: str = option("category", "category: hold one topic out; random: one stratified 80/20 split; "
                                    "within: per topic, train and test inside the topic", "grid",
                        _one_of(SPLIT_KINDS), choices=SPLIT_KINDS)
    with_random: bool = option(False, "also train the grid on the random split, beside the category splits",
                               "grid", _flag)
    epochs: int = option(5, "training epochs of the Adam-trained probes", "grid",
                         _within(_count, 1, 1000, "the probes converge within tens of epochs"), _read_int)
    lr: float = option(1e-3, "learning rate of the Adam-trained probes", "grid",
                       _within(_positive, 1e-6, 1.0, "Adam's steps diverge above 1 and barely move below 1e-06"),
                       _read_float)
    batch_size: int = option(32, "mini-batch size of the Adam-trained probes", "grid",
                             _within(_count, 1, 65536, "a batch as large as the training statements already "
                                                       "trains on all of them at once"), _read_int)
    weight_decay: float = option(0.0, "Adam's weight decay", "grid",
                                 _within(_non_negative, 0.0, 1.0, "above 1 the penalty pins the weights at zero"),
                                 _read_float)
    linear_solver: str = option("lbfgs", "lbfgs: L2-regularised logistic regression fitted to convergence, as "
                                         "scikit-learn does (see C); adam: the SAPLMA training loop", "grid",
                                _one_of(LINEAR_SOLVERS), choices=LINEAR_SOLVERS)
    C: float = option(0.1, "inverse L2 strength of the lbfgs solver", "grid",
                      _within(_positive, 1e-6, 1e6, "beyond these the fit is all penalty, or unregularised"),
                      _read_float)
    controls: bool = option(True, "the text-only and shuffled-label controls beside every probe", "grid",
                            _flag)
    generalization: bool = option(False, "also the generalization analyses: train-on-one-topic, test-on-another "
                                         "matrices, affirmative/negated transfer, TTPD and CCS", "analysis", _flag)
    matrix_probes: tuple[str, ...] = option(MATRIX_PROBES, "probes of the generalization matrices and the polarity "
                                                           f"transfer, from {','.join(MATRIX_PROBES)}", "analysis",
                                            _matrix_probes, read_names)
    ccs_seeds: int = option(5, "CCS probes (seeds) per layer, trained without labels on pairs of a statement and "
                               "its negation; 0: none", "analysis",
                            _within(_count_or_zero, 0, 100, "each seed trains CCS at every layer again"), _read_int)

    def __post_init__(self) -> None:
        for spec in fields(self):
            try:
                value = spec.metadata["check"](getattr(self, spec.name))
            except ValueError as error:
                raise ValueError(f"StudyConfig.{spec.name}: {error}") from None
            object.__setattr__(self, spec.name, value)
        if self.device is not None:
            from probing.model.loading import check_device  # torch: only when a device is asked for

            check_device(self.device)

    @property
    def resolved_device(self) -> str:
        """Where probes train: the given device, else CUDA when there is one."""
        if self.device is not None:
            return self.device
        from probing.model.loading import default_device

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
        """The training settings of a ``kind`` probe: the fields ProbeConfig shares with this one, by name."""
        from probing.probes.estimators import ProbeConfig

        shared = {spec.name for spec in fields(ProbeConfig)} & {spec.name for spec in fields(self)}
        solver = self.linear_solver if kind == "linear" else "adam"
        return ProbeConfig(kind=kind, solver=solver, **{name: getattr(self, name) for name in shared})

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


@dataclass(frozen=True)
class SteeringConfig:
    """A steering experiment: the direction read at ``probe_layer``, added at ``layers`` (default: that
    layer and the two before it) at ``position`` tokens, for each of ``alphas`` and ``directions``,
    measured on ``statements`` held-out statements. The command line and the Steer page take their
    defaults from here."""

    probe_layer: int = -9
    layers: tuple[int, ...] | None = None
    alphas: tuple[float, ...] = (-4.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0)
    directions: tuple[str, ...] = ("mass_mean", "linear", "random", "shuffled")
    statements: int = 200
    position: str = "statement"

    def __post_init__(self) -> None:
        try:
            _layers((self.probe_layer,))
            if self.layers is not None:
                object.__setattr__(self, "layers", _layers(self.layers))
            alphas = _distinct(self.alphas, "alpha", "-2,-1,0,1,2")
            object.__setattr__(self, "alphas", tuple(_non_finite_refused(a) for a in alphas))
            directions = _distinct(self.directions, "direction", ",".join(STEER_DIRECTIONS))
            unknown = [d for d in directions if d not in STEER_DIRECTIONS]
            if unknown:
                raise ValueError(f"unknown direction(s) {unknown}; choose from {','.join(STEER_DIRECTIONS)}")
            _count(self.statements)
            if self.statements < 2:
                raise ValueError(f"statements must be >= 2 (one true, one false), got {self.statements}")
            _one_of(STEER_POSITIONS)(self.position)
        except ValueError as error:
            raise ValueError(f"SteeringConfig: {error}") from None

    @property
    def steered_layers(self) -> tuple[int, ...]:
        return self.layers or (self.probe_layer - 2, self.probe_layer - 1, self.probe_layer)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, with the layers actually steered."""
        return {"probe_layer": self.probe_layer, "layers": list(self.steered_layers), "alphas": list(self.alphas),
                "directions": list(self.directions), "statements": self.statements, "position": self.position}


def _non_finite_refused(value: Any) -> float:
    number = _number(value)
    if not math.isfinite(number):
        raise ValueError(f"alphas must be finite numbers, got {number}")
    return number
