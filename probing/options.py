"""Declaring options once: a dataclass field made with :func:`option` carries its default, help text,
group, the check of a value and how to read one from text. The configs (``StudyConfig``,
``SteeringConfig``, ``ProbeConfig``) declare their fields with it; the command line builds its flags from
them and the dashboard takes its defaults from them. Importable without torch.

Each check takes a value and returns it normalised, or raises ValueError saying what is wrong (without
the option's name: the caller adds "--lr" or "StudyConfig.lr").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields
from typing import Any

from probing import environment

OPTION_GROUPS = ("model", "dataset", "extraction", "grid", "analysis", "steering")
"""``model``: which model reads the statements and how; ``dataset``: which statements;
``extraction``: limits of the forward pass; ``grid``: what is trained and how; ``analysis``: the
generalization and polarity analyses; ``steering``: a steering experiment (:class:`SteeringConfig`)."""


def nonempty_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty text, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def count(value: Any) -> int:
    """A whole number >= 1 (epochs, seeds, batch size, a token limit)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def count_or_zero(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number >= 0, got {value!r}")
    return value


def real(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number such as 0.001, got {value!r}")
    return float(value)


def positive(value: Any) -> float:
    """A finite number > 0 (learning rate, C): inf or nan would train nothing and report chance."""
    number = real(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"must be a finite number > 0, got {number:g}")
    return number


def non_negative(value: Any) -> float:
    number = real(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"must be a finite number >= 0, got {number:g}")
    return number


def one_of(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return check


def within(check: Callable[[Any], Any], low: float, high: float, why: str) -> Callable[[Any], Any]:
    """``check``, then refuse a value outside ``low``..``high``; ``why`` says what lies beyond."""
    def bounded(value: Any) -> Any:
        value = check(value)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, got {value:g}: {why}" if isinstance(value, float)
                             else f"must be between {low} and {high}, got {value}: {why}")
        return value

    return bounded


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def distinct(value: Any, what: str, example: str) -> tuple:
    """``value`` as a non-empty tuple without repeats (a list from JSON is fine)."""
    items = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not items:
        raise ValueError(f"expected at least one {what}, such as {example}, got {value!r}")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        raise ValueError(f"{what}(s) {repeated} given more than once")
    return items


def names_of(choices: tuple[str, ...], what: str, purpose: str = "") -> Callable[[Any], tuple[str, ...]]:
    """A check of a tuple of distinct names from ``choices`` (``what`` names one; ``purpose`` says what for)."""
    def check(value: Any) -> tuple[str, ...]:
        names = distinct(value, what, ",".join(choices))
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise ValueError(f"unknown {what}(s) {unknown}{purpose}; choose from {','.join(choices)}")
        return names

    return check


def read_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None


def read_float(text: str) -> float:
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
           read: Callable[[str], Any] | None = None, choices: tuple[str, ...] | None = None,
           variable: str | None = None) -> Any:
    """A field of :class:`StudyConfig`: its default, help text, option group, check, for the command
    line how to read it from text (``None``: the text itself) and its choices, and the environment
    variable (see :mod:`probing.environment`) whose value, where set, replaces the default."""
    assert group in OPTION_GROUPS, group
    metadata = {"help": help, "group": group, "check": check, "read": read, "choices": choices, "variable": variable}
    if variable is None:
        return field(default=default, metadata=metadata)
    return field(default_factory=lambda: environment.read(variable) or default, metadata=metadata)


def check_fields(options: Any) -> None:
    """Check and normalise every field of the options dataclass ``options`` with its own check; an error
    names the field (``StudyConfig.lr: must be ...``)."""
    for spec in fields(options):
        if "check" not in spec.metadata:  # not an option: a fitted probe's learned attributes, say
            continue
        try:
            value = spec.metadata["check"](getattr(options, spec.name))
        except ValueError as error:
            raise ValueError(f"{type(options).__name__}.{spec.name}: {error}") from None
        object.__setattr__(options, spec.name, value)


def option_default(spec: Field) -> Any:
    """The default of a StudyConfig field now (its environment variable's value where that is set)."""
    return spec.default_factory() if spec.default is MISSING else spec.default
