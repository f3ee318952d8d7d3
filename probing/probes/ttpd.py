"""TTPD: the truth-and-polarity probe of Bürger et al. 2024 ("Truth is Universal").

A probe trained on affirmative statements alone often flips on negated ones: it reads a
direction along which true affirmative and *false* negated statements lie on the same side.
Bürger et al. explain this with a two-dimensional truth subspace: with every group of
statements (a topic at one polarity) centred on its own mean,

    centred activation ≈ tau * t_G + (tau * p) * t_P,   tau = +1 true / -1 false, p = +1 affirmative / -1 negated,

so t_G, the general truth direction, points to "true" at both polarities, and t_P, the
polarity-sensitive one, flips with negation. Both come out of one least-squares fit in closed
form. The probe then learns the polarity direction (logistic regression predicting polarity
from the raw activations) and classifies with a 2-D logistic regression on the projections of
the raw activations on t_G and on that polarity direction.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from probing.constants import POLARITIES
from probing.probes.estimators import LogitClassifier, sigmoid

ROWS_PER_BLOCK = 2048
"""Rows converted to float64 at a time for exact sums (about 80 MB at width 5120)."""


@dataclass
class TTPDProbe(LogitClassifier):
    """Truth and polarity directions, then a logistic classifier on the projections (scikit-learn style).

    ``C``: inverse L2 strength of the logistic regression that finds the polarity direction (on
    standardised activations, scikit-learn's objective), as for the linear probe.
    """

    C: float = 0.1
    t_g_: np.ndarray | None = field(default=None, repr=False)
    t_p_: np.ndarray | None = field(default=None, repr=False)
    polarity_direction_: np.ndarray | None = field(default=None, repr=False)
    classifier_coef_: np.ndarray | None = field(default=None, repr=False)
    classifier_intercept_: float | None = field(default=None, repr=False)
    uses_polarity_: bool | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.C) and self.C > 0):
            raise ValueError(f"C must be finite and > 0 (got {self.C})")

    def fit(self, X, y, polarity, groups) -> TTPDProbe:
        """Fit on activations ``X`` (n, width), labels ``y`` (0/1), ``polarity`` ("affirmative" /
        "negated", or booleans: True = negated) and ``groups`` (one id per row; each group is
        centred on its own mean, e.g. topic x polarity).

        With one polarity only, t_P and the polarity direction cannot be identified: t_G is
        fitted alone, the classifier is 1-D, ``t_p_`` is None and ``uses_polarity_`` False.
        """
        X, y = _check_xy(X, y)
        negated = _negated(polarity, len(X))
        group_ids = _group_ids(groups, len(X))
        tau = 2.0 * y - 1
        uses_polarity = bool(negated.any() and not negated.all())
        design = np.stack([tau, tau * np.where(negated, -1.0, 1.0)], 1) if uses_polarity else tau[:, None]
        directions = _centred_least_squares(X, design, group_ids)
        t_g = directions[0]
        polarity_direction = _polarity_direction(X, negated, self.C) if uses_polarity else None
        axes = _axes(t_g, polarity_direction)
        coef, intercept = _logistic_regression((X @ axes).astype(np.float64), y, C=1.0)
        self.t_g_, self.t_p_ = t_g, directions[1] if uses_polarity else None
        self.polarity_direction_, self.uses_polarity_ = polarity_direction, uses_polarity
        self.classifier_coef_, self.classifier_intercept_ = coef, intercept
        return self

    @property
    def is_fitted(self) -> bool:
        return self.t_g_ is not None

    @property
    def direction_(self) -> np.ndarray:
        """t_G as a unit vector: the general truth direction, for cosines with other probes."""
        self._check_fitted()
        return self.t_g_ / np.linalg.norm(self.t_g_)

    def decision_function(self, X) -> np.ndarray:
        """Logit of P(true) for each row of raw (uncentred) activations."""
        self._check_fitted()
        axes = _axes(self.t_g_, self.polarity_direction_)
        return check_activations(X, len(self.t_g_)) @ axes @ self.classifier_coef_ + self.classifier_intercept_

    def project(self, X, groups=None) -> np.ndarray:
        """(n, 2): each row's projection on the unit t_G and the unit t_P, for a scatter plot.

        With ``groups``, each group is centred on its own mean first (the picture of Bürger et al.);
        without, the raw activations are projected. The second column is 0 where t_P is unknown
        (one polarity in training).
        """
        self._check_fitted()
        X = check_activations(X, len(self.t_g_))
        t_p = self.t_p_ / np.linalg.norm(self.t_p_) if self.uses_polarity_ else None
        projected = (X @ _axes(self.t_g_, t_p)).astype(np.float64)
        if groups is not None:
            ids = _group_ids(groups, len(X))
            sums = np.zeros((ids.max() + 1, projected.shape[1]))
            np.add.at(sums, ids, projected)
            projected = projected - (sums / np.bincount(ids)[:, None])[ids]
        if not self.uses_polarity_:
            projected = np.column_stack([projected[:, 0], np.zeros(len(X))])
        return projected

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this TTPD probe is not fitted yet: call fit(X, y, polarity, groups) first")


def check_activations(X, width: int | None = None) -> np.ndarray:
    """``X`` as a finite float32 matrix (statements, width), else a ValueError that says what is wrong."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"activations must be a matrix (statements, width); got shape {X.shape}")
    if width is not None and X.shape[1] != width:
        raise ValueError(f"activations have width {X.shape[1]}, the probe was fitted on width {width}")
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        raise ValueError(f"{bad.sum()} row(s) of the activations hold NaN or inf (first: row {np.argmax(bad)}); "
                         "recompute them (in float32)")
    return X


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = check_activations(X)
    y = np.asarray(y)
    if y.shape != (len(X),):
        raise ValueError(f"labels must be one per row of the activations ({len(X)}); got shape {y.shape}")
    found = set(np.unique(y).tolist())
    if not found <= {0, 1}:
        raise ValueError(f"labels must be 0 (false) or 1 (true); found {sorted(found, key=str)}")
    if len(found) < 2:
        raise ValueError(f"the training statements are all {'true' if 1 in found else 'false'}: "
                         "TTPD needs true and false ones")
    return X, y.astype(int)


def _axes(t_g: np.ndarray, second: np.ndarray | None) -> np.ndarray:
    """(width, 1 or 2) float32: the unit t_G, and beside it a second unit direction if any (the
    classifier's polarity direction, or the unit t_P for the scatter plot)."""
    units = [t_g / np.linalg.norm(t_g)] + ([second] if second is not None else [])
    return np.stack(units, 1).astype(np.float32)


def _negated(polarity, n: int) -> np.ndarray:
    """Polarity as booleans (True = negated), from strings or booleans."""
    polarity = np.asarray(polarity)
    if polarity.shape != (n,):
        raise ValueError(f"polarity must be one per row of the activations ({n}); got shape {polarity.shape}")
    if polarity.dtype == bool:
        return polarity
    unknown = sorted(set(polarity.tolist()) - set(POLARITIES), key=str)
    if unknown:
        raise ValueError(f"polarity must be one of {POLARITIES} (or booleans: True = negated); found {unknown[:5]}")
    return polarity == "negated"


def _group_ids(groups, n: int) -> np.ndarray:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups must be one id per row of the activations ({n}); got shape {groups.shape}")
    return np.unique(groups, return_inverse=True)[1].reshape(-1)


def _centred_least_squares(X: np.ndarray, design: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Least-squares directions T (k, width) with X - mean of its group ≈ design @ T, in closed form.

    design' (X - M) = design' X - S' means, with S (groups, k) the per-group sums of the design rows,
    so no centred copy of X is made; sums run in float64 a block of rows at a time, as activations
    carry large common offsets that float32 sums would cancel badly.
    """
    counts = np.bincount(group_ids)
    group_sums = torch.zeros(len(counts), X.shape[1], dtype=torch.float64)
    moments = np.zeros((design.shape[1], X.shape[1]))
    for start in range(0, len(X), ROWS_PER_BLOCK):
        block = X[start:start + ROWS_PER_BLOCK].astype(np.float64)
        group_sums.index_add_(0, torch.from_numpy(group_ids[start:start + ROWS_PER_BLOCK]), torch.from_numpy(block))
        moments += design[start:start + ROWS_PER_BLOCK].T @ block
    design_sums = np.zeros((len(counts), design.shape[1]))
    np.add.at(design_sums, group_ids, design)
    moments -= design_sums.T @ (group_sums.numpy() / counts[:, None])
    return np.linalg.solve(design.T @ design, moments)


def _polarity_direction(X: np.ndarray, negated: np.ndarray, C: float) -> np.ndarray:
    """Unit direction in activation space along which statements look negated (L2 logistic regression)."""
    features = shared_tensor(X)
    std, mean = (torch.from_numpy(a) for a in column_std_mean(X))
    scale = torch.where(std > 1e-6, std, torch.ones_like(std)).float()
    target = torch.from_numpy(negated.astype(np.float32))
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], lr=1, max_iter=100, tolerance_grad=1e-6, tolerance_change=1e-9,
                                  history_size=20, line_search_fn="strong_wolfe")
    penalty = 1 / (2 * C * len(X))
    shift = mean.float() / scale

    def closure():
        optimiser.zero_grad()
        raw = w / scale  # standardised features without a standardised copy: (x - mean) / scale @ w
        loss = F.binary_cross_entropy_with_logits(features @ raw - shift @ w + b, target) + penalty * (w * w).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    direction = (w.detach() / scale).double().numpy()
    return direction / np.linalg.norm(direction)


def shared_tensor(X: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``X``'s memory, only read (cached activations may be read-only arrays)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(X)


def column_std_mean(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column std and mean in float64, a block of rows at a time (no float64 copy of a large X)."""
    total, squares = np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for start in range(0, len(X), ROWS_PER_BLOCK):
        block = X[start:start + ROWS_PER_BLOCK].astype(np.float64)
        total += block.sum(0)
        squares += (block * block).sum(0)
    mean = total / len(X)
    return np.sqrt(np.maximum(squares / len(X) - mean * mean, 0)), mean


def _logistic_regression(Z: np.ndarray, y: np.ndarray, C: float, iterations: int = 100) -> tuple[np.ndarray, float]:
    """Newton's method for L2 logistic regression on a few columns (standardised inside; scikit-learn's
    objective); returns (coef, intercept) for the raw columns."""
    centre, spread = Z.mean(0), Z.std(0)
    spread = np.where(spread > 1e-12, spread, 1.0)
    S = np.column_stack([(Z - centre) / spread, np.ones(len(Z))])
    theta = np.zeros(S.shape[1])
    ridge = np.diag([1 / C] * Z.shape[1] + [0.0])
    for _ in range(iterations):
        p = sigmoid(S @ theta)
        gradient = S.T @ (p - y) + ridge @ theta
        hessian = (S * (p * (1 - p))[:, None]).T @ S + ridge + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.abs(step).max() < 1e-10:
            break
    coef = theta[:-1] / spread
    return coef, float(theta[-1] - coef @ centre)
