"""How sure a probe's numbers are: intervals, paired tests and calibration.

Accuracies here are means of 0/1 "correct" vectors over held-out statements, so their noise is
binomial; the intervals treat statements as exchangeable draws from a larger pool of similar ones.
Bootstraps use a seeded :class:`numpy.random.Generator`, so a given ``seed`` gives the same answer
every time. Conventions: an empty input raises ``ValueError`` (nothing to describe is an upstream
bug); a statistic that is undefined on valid data (no statements in ``wilson_interval``, one class
for AUROC) is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

_CHUNK = 256  # bootstrap draws computed at once, to bound memory on long vectors


def _level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    return level


def _binary(values: ArrayLike, name: str, allow_empty: bool = False) -> np.ndarray:
    """A 1-D 0/1 float array, or a ValueError naming ``name``."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not allow_empty and array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name} must contain only 0/1 (or booleans)")
    return array


def _scores(values: ArrayLike, name: str, size: int) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size != size:
        raise ValueError(f"{name} must be one-dimensional with {size} values, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _shares(values: ArrayLike, name: str) -> np.ndarray:
    """A non-empty 1-D float array of values in [0, 1] (0/1 correctness, or a share of seeds right)."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not ((array >= 0) & (array <= 1)).all():
        raise ValueError(f"{name} must lie in [0, 1] (whether, or how often, each statement was classified right)")
    return array


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lower, upper = np.percentile(samples, [tail, 100 - tail])
    return float(lower), float(upper)


def wilson_interval(correct: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (e.g. accuracy: ``correct`` of ``n``).

    It inverts the score test, so unlike the Wald interval it stays inside [0, 1] and keeps close
    to nominal coverage for small n or accuracies near 0 or 1. Assumes independent statements
    with one common probability of being right. ``n == 0`` gives ``(nan, nan)``.
    """
    _level(level)
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(1 - (1 - level) / 2)
    p = correct / n
    denominator = 1 + z**2 / n
    centre = (p + z**2 / (2 * n)) / denominator
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
    # At 0 or n correct the bound is exactly 0 or 1; rounding would leave 1e-16 off.
    lower = 0.0 if correct == 0 else max(0.0, centre - half)
    upper = 1.0 if correct == n else min(1.0, centre + half)
    return float(lower), float(upper)


def bootstrap_mean_interval(
    correct: Sequence[ArrayLike], level: float = 0.95, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for the mean accuracy over splits/seeds.

    ``correct`` holds one vector per split: whether each held-out statement was classified right
    (0/1) or, for several seeds, the share of them that were. Each draw resamples every split's
    statements with replacement, recomputes each split's accuracy and averages them (unweighted,
    as a mean over splits is reported). A draw picks each distinct value a multinomial number of
    times: the same distribution as resampling statements, at a cost that does not grow with
    them (a grid of hundreds of cells of thousands of statements takes a fraction of a second).
    It measures statement-sampling noise only and treats splits as independent: seeds given as
    separate vectors of one split share its statements and make the interval too narrow (give
    their shares instead), and the spread caused by retraining is not part of it.
    """
    _level(level)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    vectors = [_shares(vector, f"correct[{i}] (0/1, or shares of seeds right)") for i, vector in enumerate(correct)]
    if not vectors:
        raise ValueError("correct is empty: give one 0/1 vector per split")
    rng = np.random.default_rng(seed)
    means = np.zeros(draws)
    for vector in vectors:
        values, counts = np.unique(vector, return_counts=True)
        means += rng.multinomial(vector.size, counts / vector.size, size=draws) @ values / vector.size
    return _percentiles(means / len(vectors), level)


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve via average ranks (the Mann-Whitney U statistic over n1 * n0).

    It is the probability that a random true statement scores above a random false one, ties
    counting one half. NaN when only one class is present (or the input is empty).
    """
    y = _binary(labels, "labels", allow_empty=True)
    s = _scores(scores, "scores", y.size)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def auroc_interval(
    labels: ArrayLike, scores: ArrayLike, level: float = 0.95, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval for AUROC, resampling within each class (stratified).

    Stratifying keeps both classes at their observed sizes in every draw, so no draw is
    undefined. Assumes statements are independent; with few statements of one class the
    percentile interval can be too narrow. One class gives ``(nan, nan)``.
    """
    _level(level)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    y = _binary(labels, "labels", allow_empty=True)
    s = _scores(scores, "scores", y.size)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    areas = np.empty(draws)
    for start in range(0, draws, _CHUNK):
        count = min(_CHUNK, draws - start)
        sample = np.concatenate(
            [pos[rng.integers(0, pos.size, (count, pos.size))], neg[rng.integers(0, neg.size, (count, neg.size))]],
            axis=1,
        )
        ranks = stats.rankdata(sample, axis=1)
        u = ranks[:, :pos.size].sum(axis=1) - pos.size * (pos.size + 1) / 2
        areas[start:start + count] = u / (pos.size * neg.size)
    return _percentiles(areas, level)


def auroc_delong_interval(labels: ArrayLike, scores: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """DeLong's interval for AUROC: the normal approximation with DeLong's variance, clipped to [0, 1].

    Each statement's placement (the share of the other class it outranks, ties one half) gives the
    variance, var(placements of true) / n_true + var(placements of false) / n_false, in O(n log n):
    what a grid of hundreds of cells affords, where :func:`auroc_interval`'s bootstrap takes about a
    third of a second per cell of 2,000 statements. Assumes independent statements; like the
    bootstrap it collapses to a point at an AUROC of 0 or 1. NaN where a class has under two statements.
    """
    _level(level)
    y = _binary(labels, "labels", allow_empty=True)
    s = _scores(scores, "scores", y.size)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size < 2 or neg.size < 2:
        return float("nan"), float("nan")
    ranks = stats.rankdata(s)
    outranked = (ranks[y == 1] - stats.rankdata(pos)) / neg.size  # per true statement: share of false ones below
    outranking = 1 - (ranks[y == 0] - stats.rankdata(neg)) / pos.size  # per false one: share of true ones above
    area = float(outranked.mean())
    half = stats.norm.ppf(1 - (1 - level) / 2) * np.sqrt(outranked.var(ddof=1) / pos.size
                                                         + outranking.var(ddof=1) / neg.size)
    return max(0.0, float(area - half)), min(1.0, float(area + half))


def _paired(correct_a: ArrayLike, correct_b: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _binary(correct_a, "correct_a"), _binary(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"paired vectors differ in length: {a.size} and {b.size} statements")
    return a, b


def mcnemar_test(correct_a: ArrayLike, correct_b: ArrayLike, exact_below: int = 25) -> dict[str, float | int | str]:
    """McNemar's test: do two classifiers scored on the same statements differ in accuracy?

    Only discordant statements carry information: ``b`` = A right and B wrong, ``c`` = A wrong and
    B right; under no difference each is Binomial(b + c, 1/2). With ``b + c < exact_below`` the
    two-sided exact binomial test is used (``statistic`` = min(b, c)); otherwise the chi-square
    test with continuity correction, ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom.
    Assumes statements are independent.
    """
    a, other = _paired(correct_a, correct_b)
    b = int(((a == 1) & (other == 0)).sum())
    c = int(((a == 0) & (other == 1)).sum())
    discordant = b + c
    if discordant < exact_below:
        statistic = float(min(b, c))
        p_value = min(1.0, 2 * stats.binom.cdf(min(b, c), discordant, 0.5)) if discordant else 1.0
        method = "exact"
    else:
        statistic = max(abs(b - c) - 1, 0) ** 2 / discordant
        p_value = stats.chi2.sf(statistic, df=1)
        method = "chi2"
    return {"b": b, "c": c, "statistic": float(statistic), "p_value": float(p_value), "method": method}


def paired_bootstrap_difference(
    correct_a: ArrayLike, correct_b: ArrayLike, draws: int = 2000, seed: int = 0, level: float = 0.95,
    strata: ArrayLike | None = None,
) -> dict[str, float]:
    """Accuracy of A minus accuracy of B on the same statements, with a paired bootstrap interval.

    ``correct_a`` and ``correct_b`` hold, per statement, whether each classifier was right (0/1)
    or the share of its seeds that were. Each draw resamples statement indices once and applies
    them to both vectors, so the correlation between the two classifiers is kept and the interval
    is narrower than two separate ones would suggest. With ``strata`` (a split per statement) the
    statements are resampled within each split and the splits' differences averaged unweighted,
    as a grid's mean over splits is. An interval excluding 0 means the difference is beyond
    statement-sampling noise (at ``level``); identical vectors give exactly [0, 0].
    """
    _level(level)
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    a, b = _shares(correct_a, "correct_a"), _shares(correct_b, "correct_b")
    if a.size != b.size:
        raise ValueError(f"paired vectors differ in length: {a.size} and {b.size} statements")
    delta = a - b
    if strata is None:
        groups = [delta]
    else:
        codes = np.asarray(strata)
        if codes.shape != delta.shape:
            raise ValueError(f"strata must name one split per statement ({delta.size}), got shape {codes.shape}")
        groups = [delta[codes == stratum] for stratum in pd.unique(codes)]
    rng = np.random.default_rng(seed)
    samples = np.zeros(draws)
    for group in groups:
        for start in range(0, draws, _CHUNK):
            count = min(_CHUNK, draws - start)
            samples[start:start + count] += group[rng.integers(0, group.size, (count, group.size))].mean(axis=1)
    lower, upper = _percentiles(samples / len(groups), level)
    return {"difference": float(np.mean([group.mean() for group in groups])), "lower": lower, "upper": upper}


def t_mean_interval(values: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of ``values`` (e.g. the model's answers to many statements):
    mean +- t * sd / sqrt(n). Assumes independent values; ``(nan, nan)`` with fewer than two."""
    _level(level)
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {array.shape}")
    if array.size < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(1 - (1 - level) / 2, array.size - 1) * array.std(ddof=1) / np.sqrt(array.size)
    return float(array.mean() - half), float(array.mean() + half)


def wilson_columns(frame: pd.DataFrame, value: str = "accuracy", n: str = "n_test",
                   level: float = 0.95) -> pd.DataFrame:
    """``frame`` with ``{value}_lower`` and ``{value}_upper``: the Wilson interval of each row's
    accuracy over its ``n`` test statements (the count right is accuracy x n, rounded)."""
    bounds = [wilson_interval(int(round(accuracy * count)), int(count), level)
              if np.isfinite(accuracy) and np.isfinite(count) else (np.nan, np.nan)
              for accuracy, count in zip(frame[value].astype(float), frame[n].astype(float))]
    lower, upper = zip(*bounds) if bounds else ((), ())
    return frame.assign(**{f"{value}_lower": list(lower), f"{value}_upper": list(upper)})


def _probabilities(p_true: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _binary(labels, "labels")
    p = _scores(p_true, "p_true", y.size)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p_true must lie in [0, 1]")
    return p, y


def reliability_table(p_true: ArrayLike, labels: ArrayLike, bins: int = 10) -> pd.DataFrame:
    """One row per equal-width bin of predicted P(true): its edges, count, mean prediction, fraction true.

    A calibrated probe has ``fraction_true`` close to ``mean_predicted`` in every bin. Bins are
    [lower, upper), the last one closed; empty bins have n = 0 and NaN means.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    p, y = _probabilities(p_true, labels)
    index = np.clip(np.floor(p * bins).astype(int), 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=p, minlength=bins) / counts
        fraction_true = np.bincount(index, weights=y, minlength=bins) / counts
    edges = np.linspace(0.0, 1.0, bins + 1)
    return pd.DataFrame({
        "bin": np.arange(bins), "lower": edges[:-1], "upper": edges[1:], "n": counts,
        "mean_predicted": mean_predicted, "fraction_true": fraction_true,
    })


def expected_calibration_error(p_true: ArrayLike, labels: ArrayLike, bins: int = 10) -> float:
    """ECE: the mean over equal-width bins of |fraction true - mean prediction|, weighted by bin counts.

    It is 0 for a perfectly calibrated probe up to binning and sampling noise (which is positive:
    ECE is biased upward on few statements per bin), and ignores how well the probe ranks.
    """
    table = reliability_table(p_true, labels, bins)
    filled = table[table["n"] > 0]
    gaps = (filled["fraction_true"] - filled["mean_predicted"]).abs()
    return float((gaps * filled["n"]).sum() / filled["n"].sum())


def _log_loss(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))


def fit_temperature(
    logits: ArrayLike, labels: ArrayLike, bounds: tuple[float, float] = (1e-2, 1e2)
) -> float:
    """The temperature T > 0 minimising the mean log loss of sigmoid(logits / T) on ``labels``.

    Temperature scaling rescales confidence without changing any ranking (accuracy and AUROC
    stay the same). The loss is convex in 1/T, hence unimodal in log T, and is minimised by
    bounded Brent search on log T within ``bounds``; a separable set drives T to the lower bound.
    Fit on held-out statements, not on the probe's training ones. Needs both classes.
    """
    y = _binary(labels, "labels")
    z = _scores(logits, "logits", y.size)
    if y.min() == y.max():
        raise ValueError("fit_temperature needs both true and false statements")
    low, high = bounds
    if not 0 < low < high:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    result = optimize.minimize_scalar(
        lambda log_t: _log_loss(z, y, np.exp(log_t)), bounds=(np.log(low), np.log(high)),
        method="bounded", options={"xatol": 1e-6},
    )
    return float(np.exp(result.x))


def apply_temperature(logits: ArrayLike, temperature: float) -> np.ndarray:
    """Calibrated P(true) = sigmoid(logits / temperature)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return special.expit(np.asarray(logits, dtype=float) / temperature)
