"""CCS: Contrast-Consistent Search (Burns et al. 2022), a truth direction found without labels.

Each training example is a pair: a statement x+ and its negation x-, exactly one of them true.
Each side is normalised on its own (its mean subtracted, each coordinate divided by its std),
which removes what merely tells the two sides apart (the word "not"). A linear probe
p(x) = sigmoid(w.x + b) is then trained to be consistent, p(x+) = 1 - p(x-), and confident,
min(p(x+), p(x-)) = 0, averaged over pairs, from several random starts; the start that ends
with the lowest loss is kept. Nothing in that says which end is "true": labels, when given,
only fix the sign afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch

from probing.probes.numerics import check_activations, check_labels, column_mean_scale, shared_tensor, sigmoid

MIN_PAIRS = 2
"""Each side's std needs two statements."""
Sides = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(mean, scale) of the affirmative side, then of the negated side."""


@dataclass
class CCSProbe:
    """An unsupervised truth probe trained on pairs (scikit-learn style: ``fit`` returns self).

    Training: full-batch AdamW (``lr``, ``weight_decay`` on w) for ``epochs`` steps from
    ``n_restarts`` random starts, trained side by side; each start draws its weights from ``seed``
    and its own index only, so a start does not depend on how many there are.

    Learned: each side's ``mean_*_`` and ``scale_*_``; ``coef_`` and ``intercept_`` (w and b on
    normalised activations); ``losses_`` (the final loss of every start) and ``loss_`` (the lowest,
    the start kept; before any sign flip); ``sign_from_labels_`` (False: the sign is arbitrary).
    """

    epochs: int = 400
    lr: float = 1e-2
    weight_decay: float = 0.01
    n_restarts: int = 10
    seed: int = 0
    mean_pos_: np.ndarray | None = field(default=None, repr=False)
    scale_pos_: np.ndarray | None = field(default=None, repr=False)
    mean_neg_: np.ndarray | None = field(default=None, repr=False)
    scale_neg_: np.ndarray | None = field(default=None, repr=False)
    coef_: np.ndarray | None = field(default=None, repr=False)
    intercept_: float | None = field(default=None, repr=False)
    losses_: np.ndarray | None = field(default=None, repr=False)
    loss_: float | None = None
    sign_from_labels_: bool | None = None

    def __post_init__(self) -> None:
        counts = {"epochs": self.epochs, "n_restarts": self.n_restarts, "seed": self.seed}
        if not all(isinstance(v, Integral) and not isinstance(v, bool) for v in counts.values()) or (
                self.epochs < 1 or self.n_restarts < 1 or self.seed < 0):
            raise ValueError(f"epochs and n_restarts must be integers >= 1 and seed an integer >= 0 (got {counts})")
        rates = {"lr": self.lr, "weight_decay": self.weight_decay}
        if not all(isinstance(v, Real) and math.isfinite(v) for v in rates.values()) or not (
                self.lr > 0 and self.weight_decay >= 0):
            raise ValueError(f"lr must be finite and > 0, weight_decay finite and >= 0 (got {rates})")

    def fit(self, X_pos, X_neg, y=None) -> CCSProbe:
        """Train on pairs: row i of ``X_pos`` is a statement, row i of ``X_neg`` its negation.

        ``y`` (optional, 1 where x+ is true) is not used in training: afterwards, if the probe's
        pair predictions agree with it on fewer than half the pairs, w and b are flipped. Without
        it the sign is arbitrary (``sign_from_labels_`` False).
        """
        X_pos, X_neg = check_activations(X_pos), check_activations(X_neg)
        if X_pos.shape != X_neg.shape:
            raise ValueError(f"X_pos and X_neg must be pairs, row for row: shapes {X_pos.shape} and "
                             f"{X_neg.shape} differ")
        if len(X_pos) < MIN_PAIRS:
            raise ValueError(f"CCS needs at least {MIN_PAIRS} pairs to normalise each side; got {len(X_pos)}")
        if y is not None:
            y = check_labels(y, len(X_pos), "y", "pair")
        sides = (column_mean_scale(X_pos), column_mean_scale(X_neg))
        W, b = self._train(X_pos, X_neg, sides)
        pos, neg = _logits(X_pos, X_neg, sides, W, b)
        losses = _ccs_loss(pos, neg)
        best = int(np.argmin(losses))
        sign = 1.0
        if y is not None and ((0.5 * (sigmoid(pos[:, best]) + 1 - sigmoid(neg[:, best])) > 0.5) == y).mean() < 0.5:
            sign = -1.0
        (self.mean_pos_, self.scale_pos_), (self.mean_neg_, self.scale_neg_) = sides
        self.coef_, self.intercept_ = sign * W[:, best].astype(np.float64), sign * float(b[best])
        self.losses_, self.loss_ = losses, float(losses[best])
        self.sign_from_labels_ = y is not None
        return self

    @property
    def is_fitted(self) -> bool:
        return self.coef_ is not None

    @property
    def direction_(self) -> np.ndarray:
        """Unit direction in raw activation space along which P(true) grows: w mapped back through
        each side's scale, the two averaged (they differ only as far as the sides' stds do)."""
        self._check_fitted()
        raw = self.coef_ / self.scale_pos_ + self.coef_ / self.scale_neg_
        return raw / np.linalg.norm(raw)

    def decision_function(self, X, negated) -> np.ndarray:
        """Logit of P(true) for each statement, normalised with its side's statistics: ``negated``
        (one bool, or one per row) says which rows are negations."""
        self._check_fitted()
        X = check_activations(X, len(self.coef_))
        negated = np.broadcast_to(np.asarray(negated), (len(X),)) if np.ndim(negated) == 0 else np.asarray(negated)
        if negated.shape != (len(X),) or negated.dtype != bool:
            raise ValueError(f"negated must be one bool or one bool per row ({len(X)}); got {negated.dtype} "
                             f"of shape {negated.shape}")
        pos, neg = self._fitted_logits(X, X)
        return np.where(negated, neg[:, 0], pos[:, 0])

    def predict_proba(self, X, negated) -> np.ndarray:
        """Columns: P(false), P(true)."""
        p = sigmoid(self.decision_function(X, negated))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X, negated) -> np.ndarray:
        return (self.decision_function(X, negated) > 0).astype(int)

    def score(self, X, y, negated) -> float:
        """Accuracy."""
        return float((self.predict(X, negated) == np.asarray(y)).mean())

    def pair_scores(self, X_pos, X_neg) -> np.ndarray:
        """P(x+ is true) for each pair, Burns et al.'s 0.5 * (p(x+) + 1 - p(x-))."""
        return 0.5 * (self.predict_proba(X_pos, False)[:, 1] + 1 - self.predict_proba(X_neg, True)[:, 1])

    def loss(self, X_pos, X_neg) -> float:
        """The CCS loss (consistency + confidence, averaged over pairs) of the fitted probe on these pairs."""
        self._check_fitted()
        X_pos, X_neg = check_activations(X_pos, len(self.coef_)), check_activations(X_neg, len(self.coef_))
        return float(_ccs_loss(*self._fitted_logits(X_pos, X_neg))[0])

    def _train(self, X_pos: np.ndarray, X_neg: np.ndarray, sides: Sides) -> tuple[np.ndarray, np.ndarray]:
        """All restarts at once: W (width, restarts), b (restarts). Each restart's loss depends on its
        own weights only and AdamW is element-wise, so they train independently."""
        width = X_pos.shape[1]
        starts = np.stack([np.random.default_rng([self.seed, restart]).standard_normal(width)
                           for restart in range(self.n_restarts)])
        # Restarts as rows: (restarts, width) @ X.T and its gradient (restarts, rows) @ X run several
        # times faster than X @ (width, restarts) and X.T @ (rows, restarts) on a CPU.
        W = torch.tensor(starts / math.sqrt(width), dtype=torch.float32, requires_grad=True)
        b = torch.zeros(self.n_restarts, 1, requires_grad=True)
        optimiser = torch.optim.AdamW([{"params": [W], "weight_decay": self.weight_decay},
                                       {"params": [b], "weight_decay": 0.0}], lr=self.lr)
        tensors = [(shared_tensor(X).T, torch.from_numpy(mean).float(), torch.from_numpy(scale).float())
                   for X, (mean, scale) in zip((X_pos, X_neg), sides)]
        for _ in range(self.epochs):
            optimiser.zero_grad()
            logits = []
            for X_t, mean, scale in tensors:
                raw = W / scale  # ((x - mean) / scale) . w without a normalised copy of the activations
                logits.append(raw @ X_t - raw @ mean[:, None] + b)
            _ccs_loss_tensor(logits[0].T, logits[1].T).sum().backward()
            optimiser.step()
        if not (torch.isfinite(W).all() and torch.isfinite(b).all()):
            raise ValueError(f"CCS training diverged (non-finite weights): lower lr (now {self.lr})")
        return W.detach().T.numpy(), b.detach()[:, 0].numpy()

    def _fitted_logits(self, X_pos, X_neg) -> tuple[np.ndarray, np.ndarray]:
        sides = ((self.mean_pos_, self.scale_pos_), (self.mean_neg_, self.scale_neg_))
        return _logits(X_pos, X_neg, sides, self.coef_[:, None], np.array([self.intercept_]))

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise RuntimeError("this CCS probe is not fitted yet: call fit(X_pos, X_neg) first")


def _logits(X_pos, X_neg, sides: Sides, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits (rows, restarts) of X_pos read as affirmative and X_neg as negated statements."""
    return tuple(X @ (W / scale[:, None]).astype(np.float32) - (mean / scale) @ W + b
                 for X, (mean, scale) in zip((X_pos, X_neg), sides))


def _ccs_loss_tensor(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per restart: mean over pairs of (p+ - (1 - p-))^2 + min(p+, p-)^2, from logits (pairs, restarts)."""
    p_pos, p_neg = torch.sigmoid(pos), torch.sigmoid(neg)
    return ((p_pos - (1 - p_neg)) ** 2 + torch.minimum(p_pos, p_neg) ** 2).mean(0)


def _ccs_loss(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    return _ccs_loss_tensor(torch.from_numpy(np.asarray(pos, dtype=np.float64)),
                            torch.from_numpy(np.asarray(neg, dtype=np.float64))).numpy()

