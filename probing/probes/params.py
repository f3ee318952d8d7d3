"""A probe's parameters, declared once (importable without torch).

:class:`ProbeConfig`'s fields are the parameters of every probe: their defaults (SAPLMA's: Adam,
lr 1e-3, batch 32, 5 epochs), help texts and checks. :class:`~probing.probes.estimators.Probe` takes
them as its constructor's arguments (scikit-learn's rule; ``get_params`` reads them), and
:class:`~probing.study.config.StudyConfig` declares the grid's training options (:data:`TRAINING`) as
copies of these fields, so the command line's flags and the dashboard's defaults come from here too.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from probing.constants import PROBE_KINDS
from probing.options import (
    check_fields, count, count_or_zero, non_negative, one_of, option, positive, read_float, read_int, within,
)

HIDDEN_SIZES: dict[str, tuple[int, ...]] = {"linear": (), "tiny": (32,), "small": (128, 64), "medium": (256, 128, 64)}
"""Hidden layer widths of each kind fitted by gradient (mass-mean has none: it is not trained)."""
assert PROBE_KINDS == (*HIDDEN_SIZES, "mass_mean"), "probing.constants.PROBE_KINDS is out of step"
LINEAR_SOLVERS = {"lbfgs": "L-BFGS to convergence", "adam": "Adam epochs (SAPLMA)"}
"""How the linear probe may train, and what the dashboard calls each way."""
SOLVERS = ("auto", *LINEAR_SOLVERS)
TRAINING = ("epochs", "lr", "batch_size", "weight_decay", "C")
"""The parameters a study sets for every probe it trains (kind, solver and seed vary per probe)."""


@dataclass
class ProbeConfig:
    """How a probe is built and trained. ``solver="auto"`` becomes lbfgs for linear, else adam."""

    kind: str = option("linear", f"probe kind, from {','.join(PROBE_KINDS)}", "grid", one_of(PROBE_KINDS),
                       choices=PROBE_KINDS)
    epochs: int = option(5, "training epochs of the Adam-trained probes", "grid",
                         within(count, 1, 1000, "the probes converge within tens of epochs"), read_int)
    lr: float = option(1e-3, "learning rate of the Adam-trained probes", "grid",
                       within(positive, 1e-6, 1.0, "Adam's steps diverge above 1 and barely move below 1e-06"),
                       read_float)
    batch_size: int = option(32, "mini-batch size of the Adam-trained probes", "grid",
                             within(count, 1, 65536, "a batch as large as the training statements already trains "
                                                     "on all of them at once"), read_int)
    weight_decay: float = option(0.0, "Adam's weight decay", "grid",
                                 within(non_negative, 0.0, 1.0, "above 1 the penalty pins the weights at zero"),
                                 read_float)
    solver: str = option("auto", "auto: lbfgs for the linear probe, adam for the others", "grid", one_of(SOLVERS),
                         choices=SOLVERS)
    C: float = option(0.1, "inverse L2 strength of the lbfgs solver", "grid",
                      within(positive, 1e-6, 1e6, "beyond these the fit is all penalty, or unregularised"), read_float)
    seed: int = option(0, "seed of the initial weights and the order of the mini-batches", "grid", count_or_zero,
                       read_int)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.solver == "auto":
            self.solver = "lbfgs" if self.kind == "linear" else "adam"
        if self.solver == "lbfgs" and self.kind != "linear":
            raise ValueError(f"{type(self).__name__}.solver: 'lbfgs' is for the linear probe only, not {self.kind}")

    def get_params(self) -> dict[str, Any]:
        """The parameters (scikit-learn's ``get_params``): every field of :class:`ProbeConfig`."""
        return {spec.name: getattr(self, spec.name) for spec in fields(ProbeConfig)}

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return HIDDEN_SIZES.get(self.kind, ())

    @property
    def trains_in_epochs(self) -> bool:
        """Adam epochs over mini-batches (``epochs`` counts); L-BFGS and mass-mean fit in one go."""
        return self.solver == "adam" and self.kind != "mass_mean"


def training_option(name: str) -> Any:
    """A field declared as ProbeConfig's ``name`` (default, help, check, reading): the grid's option of it."""
    spec = next(spec for spec in fields(ProbeConfig) if spec.name == name)
    return option(spec.default, **{key: spec.metadata[key] for key in ("help", "group", "check", "read", "choices")})
