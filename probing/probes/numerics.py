"""Numerics the probes share: input checks, standardising, and Newton's logistic regression on a few columns."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from probing.probes.estimators import Task

ROWS_PER_BLOCK = 2048
"""Rows converted to float64 at a time for exact sums (about 80 MB at width 5120)."""
MIN_SCALE = 1e-6
"""A column whose std is at most this does not vary: it is scaled by 1, not blown up."""


class ProbeTrainingError(ValueError):
    """Training produced non-finite numbers (diverged, or non-finite features): no probe is returned."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """P(true) of logits, without overflow warnings for large ones."""
    return 1 / (1 + np.exp(-np.clip(logits, -60, 60)))


def as_matrix(X, width: int | None = None) -> np.ndarray:
    """``X`` as a float32 matrix (statements, width), else a ValueError that says what is wrong."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"activations must be a matrix (statements, width); got shape {X.shape}")
    if width is not None and X.shape[1] != width:
        raise ValueError(f"activations have width {X.shape[1]}, the probe was fitted on width {width}")
    return X


def check_activations(X, width: int | None = None) -> np.ndarray:
    """``X`` as a finite float32 matrix (statements, width), else a ValueError that says what is wrong."""
    X = as_matrix(X, width)
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        raise ValueError(f"{bad.sum()} row(s) of the activations hold NaN or inf (first: row {np.argmax(bad)}); "
                         "recompute them (in float32)")
    return X


def check_labels(y, n: int, name: str = "labels", per: str = "row of the activations") -> np.ndarray:
    """``y`` as 0/1 integers, one per ``per`` (``n`` of them), else a ValueError that says what is wrong."""
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must be one per {per} ({n}); got shape {y.shape}")
    found = set(np.unique(y).tolist())
    if not found <= {0, 1}:
        raise ValueError(f"{name} must be 0/1 (0: false, 1: true); found {sorted(found, key=str)[:5]}")
    return y.astype(int)


def check_both_classes(y: np.ndarray, who: str) -> None:
    """A ValueError unless 0/1 labels ``y`` hold both classes: ``who`` cannot learn from one."""
    found = set(np.unique(y).tolist())
    if len(found) < 2:
        raise ValueError(f"the training statements are all {'true' if 1 in found else 'false'}: "
                         f"{who} needs labels of both 0 and 1 (false and true statements)")


def shared_tensor(X: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``X``'s memory, only read (cached activations may be read-only arrays)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(X)


def nonzero_scale(std: torch.Tensor) -> torch.Tensor:
    """``std`` where a column varies, 1 where it does not (see ``MIN_SCALE``)."""
    return torch.where(std > MIN_SCALE, std, torch.ones_like(std))


def mean_scale(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means and scales (population std, see :func:`nonzero_scale`) of ``X``, in float64."""
    std, mean = torch.std_mean(X.double(), 0, unbiased=False)
    return mean, nonzero_scale(std)


def column_mean_scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mean_scale` of a numpy ``X`` a block of rows at a time (no float64 copy of a large X).

    Sums of x and x^2 in float64 rather than two passes: the same to float precision, not bit for bit.
    """
    total, squares = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for start in range(0, len(X), ROWS_PER_BLOCK):
        block = X[start:start + ROWS_PER_BLOCK].astype(np.float64)
        total += block.sum(0)
        squares += (block * block).sum(0)
    mean = total / len(X)
    return mean, nonzero_scale(torch.from_numpy(np.sqrt(np.maximum(squares / len(X) - mean * mean, 0)))).numpy()


def training_set(task: Task) -> bytes:
    """A key equal for tasks that train on the same rows (they share a standardiser)."""
    return np.asarray(task.train).tobytes()


def task_standardisers(X: torch.Tensor, tasks: Sequence[Task]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task float32 mean and scale, fitted on that task's training rows only (once per distinct row set)."""
    fitted: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
    for task in tasks:
        if training_set(task) not in fitted:
            mean, scale = mean_scale(X[torch.as_tensor(task.train, device=X.device)])
            fitted[training_set(task)] = mean.float(), scale.float()
    means, scales = zip(*(fitted[training_set(task)] for task in tasks))
    return torch.stack(means), torch.stack(scales)


def logistic_regression(Z: torch.Tensor, y: torch.Tensor, C: float, iterations: int = 50
                        ) -> tuple[torch.Tensor, float]:
    """Newton's method for L2 logistic regression of 0/1 ``y`` on the few columns of ``Z`` (n, k).

    scikit-learn's objective on the columns standardised inside (summed log-loss + |w|^2 / (2 C)),
    from w = 1 (P(y) rising with every column) and b = 0; returns (coef, intercept) for the raw
    columns. Written column by column so that one column gives the very numbers of the 1-D fit
    the mass-mean probe was calibrated with.
    """
    raw = Z.unbind(1)
    centre = torch.stack([z.mean() for z in raw])
    spread = torch.stack([z.std() for z in raw]).clamp(min=1e-12)
    columns = [(z - m) / s for z, m, s in zip(raw, centre, spread)]
    k, options = len(columns), {"dtype": Z.dtype, "device": Z.device}
    penalty = 1 / C
    w, b = torch.ones(k, **options), torch.tensor(0.0, **options)
    for _ in range(iterations):
        linear = w[0] * columns[0]
        for weight, z in zip(w[1:], columns[1:]):
            linear = linear + weight * z
        p = torch.sigmoid(linear + b)
        residual = p - y
        gradient = (torch.stack([*((residual * z).sum() for z in columns), residual.sum()])
                    + torch.cat([penalty * w, torch.zeros(1, **options)]))
        s = p * (1 - p)
        weighted = [s * z for z in columns]
        rows = [[(sz * z).sum() for z in columns] + [sz.sum()] for sz in weighted]
        for i in range(k):
            rows[i][i] = rows[i][i] + penalty
        rows.append([sz.sum() for sz in weighted] + [s.sum()])
        hessian = torch.stack([torch.stack(row) for row in rows])
        delta = torch.linalg.solve(hessian + 1e-9 * torch.eye(k + 1, **options), gradient)
        w, b = w - delta[:-1], b - delta[-1]
        if delta.abs().max() < 1e-10:
            break
    return w / spread, float(b - (w * centre / spread).sum())
