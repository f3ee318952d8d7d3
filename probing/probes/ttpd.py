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
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from probing.constants import POLARITIES
from probing.probes.estimators import LogitClassifier
from probing.probes.numerics import (
    ROWS_PER_BLOCK, check_activations, check_both_classes, check_labels, column_mean_scale, logistic_regression,
    shared_tensor,
)


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
        X = check_activations(X)
        y = check_labels(y, len(X))
        check_both_classes(y, "TTPD")
        negated = _negated(polarity, len(X))
        group_ids = _group_ids(groups, len(X))
        tau = 2.0 * y - 1
        uses_polarity = bool(negated.any() and not negated.all())
        design = np.stack([tau, tau * np.where(negated, -1.0, 1.0)], 1) if uses_polarity else tau[:, None]
        directions = _centred_least_squares(X, design, group_ids)
        t_g = directions[0]
        polarity_direction = _polarity_direction(X, negated, self.C) if uses_polarity else None
        axes = _axes(t_g, polarity_direction)
        # C = 1 on columns scaled by their population std, as TTPD has always fitted it: the solver scales
        # by the n-1 std, which C = n / (n-1) undoes.
        coef, intercept = logistic_regression(torch.from_numpy((X @ axes).astype(np.float64)),
                                              torch.from_numpy(y.astype(np.float64)), C=len(y) / (len(y) - 1))
        self.t_g_, self.t_p_ = t_g, directions[1] if uses_polarity else None
        self.polarity_direction_, self.uses_polarity_ = polarity_direction, uses_polarity
        self.classifier_coef_, self.classifier_intercept_ = coef.numpy(), intercept
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
    """Unit direction in activation space along which statements look negated (L2 logistic regression).

    torch's L-BFGS with these tolerances, not the linear probe's lockstep one: that stops elsewhere,
    and the direction would move by about 1e-4 (a solver's precision, but not the same numbers).
    """
    features = shared_tensor(X)
    mean, scale = (torch.from_numpy(a).float() for a in column_mean_scale(X))
    target = torch.from_numpy(negated.astype(np.float32))
    w = torch.zeros(X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], lr=1, max_iter=100, tolerance_grad=1e-6, tolerance_change=1e-9,
                                  history_size=20, line_search_fn="strong_wolfe")
    penalty = 1 / (2 * C * len(X))
    shift = mean / scale

    def closure():
        optimiser.zero_grad()
        raw = w / scale  # standardised features without a standardised copy: (x - mean) / scale @ w
        loss = F.binary_cross_entropy_with_logits(features @ raw - shift @ w + b, target) + penalty * (w * w).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    direction = (w.detach() / scale).double().numpy()
    return direction / np.linalg.norm(direction)

