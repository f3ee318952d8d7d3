"""Truth probes with a scikit-learn interface, trained many at a time.

Kinds:

- ``linear``: logistic regression on standardised features. By default it is
  fitted to convergence with L-BFGS and an L2 penalty (scikit-learn's objective,
  ``C=0.1`` as in docs/reference.md's sanity figures; see :mod:`probing.probes.lbfgs`);
  ``solver="adam"`` trains it the SAPLMA way instead (a few epochs of Adam, which
  underfits a linear model);
- ``tiny`` (32), ``small`` (128-64), ``medium`` (256-128-64): ReLU MLPs with a
  sigmoid output, trained with Adam (:mod:`probing.probes.adam`); ``medium`` is
  SAPLMA's probe, tiny and small sit between it and linear;
- ``mass_mean``: the difference of class means (Marks & Tegmark), with a
  1-D logistic calibration of the projection for P(true).

``fit_many`` trains any number of same-kind probes together; a probe trained among
others equals, bit for bit, the same probe trained alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from probing.probes.params import ProbeConfig
from probing.probes.adam import fit_adam, masked_sums, stack_forward, training_dtype
from probing.probes.lbfgs import fit_lbfgs
from probing.probes.numerics import (
    ProbeTrainingError, as_matrix, check_both_classes, check_labels, logistic_regression, sigmoid, task_standardisers,
)


EpochCallback = Callable[[int, dict], None]
"""Called with (member index, one history record) after every epoch."""


@dataclass
class Task:
    """One probe to train: rows of X to train on, their labels, and optional held-out rows."""

    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    seed: int = 0


class LogitClassifier:
    """``predict_proba``, ``predict`` and ``score`` of a classifier whose ``decision_function`` gives the logit of P(true)."""

    def decision_function(self, X) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """Columns: P(false), P(true)."""
        p = sigmoid(self.decision_function(X))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)

    def score(self, X, y) -> float:
        """Accuracy."""
        return float((self.predict(X) == np.asarray(y)).mean())


@dataclass
class Probe(ProbeConfig, LogitClassifier):
    """A fitted or unfitted truth probe (scikit-learn style: the parameters of :class:`ProbeConfig` are the
    constructor's arguments, ``fit`` returns self, learned attributes end in ``_``)."""

    mean_: np.ndarray | None = field(default=None, repr=False)
    scale_: np.ndarray | None = field(default=None, repr=False)
    weights_: list[np.ndarray] = field(default_factory=list, repr=False)
    biases_: list[np.ndarray] = field(default_factory=list, repr=False)
    history_: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def config(self) -> ProbeConfig:
        return ProbeConfig(**self.get_params())

    def fit(self, X, y, X_val=None, y_val=None, on_epoch: Callable[[dict], None] | None = None) -> Probe:
        """Train on (X, y); with (X_val, y_val) the history also tracks held-out loss and accuracy."""
        X = as_matrix(X)
        y = check_labels(y, len(X))
        if X_val is not None:
            X_val = as_matrix(X_val)
            y_val = check_labels(y_val, len(X_val))
            features = np.concatenate([X, X_val])
            test = np.arange(len(X), len(features))
        else:
            features, test = X, None
        task = Task(np.arange(len(X)), y, test, y_val, seed=self.seed)
        callback = (lambda _member, record: on_epoch(record)) if on_epoch else None
        (fitted,) = fit_many(features, [task], self.config, on_epoch=callback)
        self.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
        return self

    @property
    def is_fitted(self) -> bool:
        return self.mean_ is not None

    def decision_function(self, X) -> np.ndarray:
        """Logit of P(true) for each row."""
        if not self.is_fitted:
            raise RuntimeError("this probe is not fitted yet: call fit(X, y) first")
        h = (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_
        for layer, (W, b) in enumerate(zip(self.weights_, self.biases_)):
            h = h @ W + b
            if layer < len(self.weights_) - 1:
                h = np.maximum(h, 0)
        return h[:, 0]

    @property
    def direction_(self) -> np.ndarray:
        """Unit vector in activation space along which P(true) grows (linear and mass_mean)."""
        if self.kind not in ("linear", "mass_mean"):
            raise AttributeError(f"a {self.kind} probe has no single direction")
        if not self.is_fitted:
            raise AttributeError("direction_ exists after fit")
        raw = self.weights_[0][:, 0] / self.scale_
        return raw / np.linalg.norm(raw)

    def to_state(self) -> dict:
        """Plain tensors and numbers, loadable with ``torch.load(weights_only=True)``."""
        return {
            "config": self.get_params(),
            "mean": torch.from_numpy(self.mean_), "scale": torch.from_numpy(self.scale_),
            "weights": [torch.from_numpy(w) for w in self.weights_],
            "biases": [torch.from_numpy(b) for b in self.biases_],
        }

    @classmethod
    def from_state(cls, state: dict) -> Probe:
        """The probe of a :meth:`to_state` dict; a ValueError where its arrays do not make one probe."""
        probe = cls(**state["config"])
        probe.mean_, probe.scale_ = state["mean"].numpy(), state["scale"].numpy()
        probe.weights_ = [w.numpy() for w in state["weights"]]
        probe.biases_ = [b.numpy() for b in state["biases"]]
        probe._check_shapes()
        return probe

    def _check_shapes(self) -> None:
        """Mean and scale: one vector of the input width; then weight matrices and biases that chain to one logit."""
        if self.mean_.ndim != 1 or self.scale_.shape != self.mean_.shape:
            raise ValueError(f"mean and scale have shapes {tuple(self.mean_.shape)} and {tuple(self.scale_.shape)}, "
                             "not one vector each of the input width")
        if not self.weights_ or len(self.weights_) != len(self.biases_):
            raise ValueError(f"{len(self.weights_)} weight matrices and {len(self.biases_)} bias vectors")
        width = len(self.mean_)
        for number, (W, b) in enumerate(zip(self.weights_, self.biases_), 1):
            if W.ndim != 2 or W.shape[0] != width or b.shape != W.shape[1:]:
                raise ValueError(f"layer {number}'s weights {tuple(W.shape)} and bias {tuple(b.shape)} do not "
                                 f"follow its {width} inputs")
            width = W.shape[1]
        if width != 1:
            raise ValueError(f"the last layer gives {width} outputs, not the one logit of P(true)")


def make_probe(kind: str = "linear", **settings) -> Probe:
    """A new probe of ``kind`` with the given training settings (validated)."""
    return Probe(kind=kind, **settings)


def fit_many(
    X: np.ndarray | torch.Tensor,
    tasks: Sequence[Task],
    config: ProbeConfig,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device = "cpu",
    train_dtype: str | None = None,
) -> list[Probe]:
    """Train one probe per task on rows of the shared feature matrix ``X``, stacked (see the module docstring).

    ``train_dtype`` ("float32" or "bfloat16") forces the dtype Adam stacks compute in (see
    :func:`training_dtype`); a probe equals itself trained alone, bit for bit, within one dtype.
    """
    if not tasks:
        return []
    dtype = training_dtype(config.kind, device, train_dtype)
    features = torch.as_tensor(np.asarray(X, dtype=np.float32) if not torch.is_tensor(X) else X,
                               dtype=torch.float32, device=device)
    for task in tasks:
        _check_task(task, len(features))
    _check_finite_features(features, tasks)
    mean, scale = task_standardisers(features, tasks)
    if config.kind == "mass_mean":
        parts = [_fit_mass_mean(features, task, m, s) for task, m, s in zip(tasks, mean, scale)]
    elif config.solver == "lbfgs":
        parts = fit_lbfgs(features, tasks, mean, scale, config, on_epoch)
    else:
        parts = fit_adam(features, tasks, mean, scale, config, on_epoch, dtype)
    probes = []
    for member, (task, (weights, biases, history)) in enumerate(zip(tasks, parts)):
        if not all(torch.isfinite(t).all() for t in (*weights, *biases)):
            raise ProbeTrainingError(
                f"the {config.kind} probe (seed {task.seed}) ended with non-finite weights; "
                f"lower the learning rate (lr={config.lr}) or check the activations")
        probe = Probe(**{**config.get_params(), "seed": task.seed})
        probe.mean_, probe.scale_ = mean[member].cpu().numpy(), scale[member].cpu().numpy()
        # Stacked layers are (out, in); a fitted probe keeps scikit-learn's (in, out).
        probe.weights_ = [w.detach().T.contiguous().cpu().numpy() for w in weights]
        probe.biases_ = [b.detach().reshape(-1).cpu().numpy() for b in biases]
        probe.history_ = pd.DataFrame(history)
        if on_epoch and config.kind == "mass_mean":
            on_epoch(member, history[-1])
        probes.append(probe)
    return probes


def _check_task(task: Task, n: int) -> None:
    check_both_classes(check_labels(task.y_train, len(task.train), "training labels", "training row"), "a probe")
    if np.max(task.train) >= n:
        raise ValueError(f"task rows point outside X ({n} rows)")


def _check_finite_features(X: torch.Tensor, tasks: Sequence[Task]) -> None:
    """Refuse NaN or inf in the rows the tasks use: they would train a probe that silently scores 0.5."""
    used = np.unique(np.concatenate([np.asarray(rows) for task in tasks for rows in (task.train, task.test)
                                     if rows is not None]))
    finite = torch.isfinite(X[torch.as_tensor(used, device=X.device)]).all(1).cpu().numpy()
    if not finite.all():
        bad = used[~finite]
        raise ProbeTrainingError(
            f"{len(bad)} row(s) of the features hold NaN or inf (first: row {bad[0]}); "
            "the activations may come from a damaged model or an overflowing dtype: recompute them "
            "(in float32) before training")


def _fit_mass_mean(X, task: Task, mean, scale):
    """theta = mean(true) - mean(false) in activation space; P(true) = sigmoid(a * theta.x + c)."""
    rows = torch.as_tensor(task.train, device=X.device)
    y = torch.as_tensor(task.y_train, device=X.device).bool()
    raw = X[rows].double()
    theta = raw[y].mean(0) - raw[~y].mean(0)
    projection = raw @ theta
    coef, c = logistic_regression(projection.unsqueeze(1), y.double(), C=1e4)  # all but unpenalised
    a = float(coef[0])
    # Express as a linear layer on standardised features: x = z * scale + mean.
    w = (a * theta * scale.double()).float()
    b = (a * (mean.double() @ theta) + c).float()
    return _single_history(X, task, mean, scale, [w.view(1, 1, -1)], [b.view(1, 1, 1)])


def _history_record(X, task, mean, scale, weights, biases, epoch: int) -> dict:
    with torch.no_grad():
        record = {"epoch": epoch}
        record.update(_evaluate(X, task.train, task.y_train, mean, scale, weights, biases, "train"))
        if task.test is not None and len(task.test):
            record.update(_evaluate(X, task.test, task.y_test, mean, scale, weights, biases, "heldout"))
    return record


def _evaluate(X, rows, labels, mean, scale, weights, biases, prefix) -> dict:
    """Loss and accuracy of a one-member stack on the given rows."""
    h = ((X[torch.as_tensor(rows, device=X.device)] - mean) / scale).unsqueeze(0)
    logits = stack_forward(h, weights, biases)[-1][0, :, 0]
    y = torch.as_tensor(labels, dtype=torch.float32, device=X.device)
    loss, hits = masked_sums(logits, y, torch.ones_like(y))
    return {f"{prefix}_loss": loss.item() / len(y), f"{prefix}_accuracy": hits.item() / len(y)}


def _single_history(X, task, mean, scale, weights, biases):
    """The one history record of a probe fitted in closed form."""
    return [weights[0][0]], [biases[0][0]], [_history_record(X, task, mean, scale, weights, biases, 1)]
