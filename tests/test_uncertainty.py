"""Intervals, paired tests and calibration of probing.analyses.uncertainty, checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from probing.analyses.uncertainty import (
    apply_temperature,
    auroc,
    auroc_interval,
    bootstrap_mean_interval,
    expected_calibration_error,
    fit_temperature,
    mcnemar_test,
    paired_bootstrap_difference,
    reliability_table,
    wilson_interval,
)
from support import BINORMAL_AUROC, binormal_draws


def test_wilson_matches_the_textbook_value_and_stays_inside_0_1():
    lower, upper = wilson_interval(8, 10)
    assert lower == pytest.approx(0.4902, abs=1e-4) and upper == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    narrow, wide = wilson_interval(80, 100, level=0.8), wilson_interval(80, 100, level=0.99)
    assert wide[0] < narrow[0] < 0.8 < narrow[1] < wide[1]


def test_wilson_covers_a_known_accuracy_in_about_95_percent_of_draws():
    # A classifier of accuracy 0.8 on 200 statements, 1,000 times. Binomial Monte-Carlo error of
    # the coverage is about 0.007, so 93-97% is roughly +-3 standard errors around 95%.
    rng = np.random.default_rng(20240601)
    hits = 0
    for _ in range(1000):
        correct = int((rng.random(200) < 0.8).sum())
        lower, upper = wilson_interval(correct, 200)
        hits += lower <= 0.8 <= upper
    assert 0.93 <= hits / 1000 <= 0.97
    # The exact coverage, summing the binomial probabilities of every count whose interval covers.
    exact = sum(stats.binom.pmf(k, 200, 0.8) for k in range(201)
                if wilson_interval(k, 200)[0] <= 0.8 <= wilson_interval(k, 200)[1])
    assert 0.93 <= exact <= 0.97


def test_bootstrap_mean_interval_covers_the_mean_accuracy_over_splits():
    # Three splits of 200 statements each, accuracy 0.8 in every split; 1,000 simulations with
    # 500 bootstrap draws each (for speed). The percentile bootstrap undercovers slightly
    # (about 94% here), and with 1,000 simulations the Monte-Carlo error is about 0.007, so we
    # accept 92-97.5%: it still fails for an interval that is half or twice as wide (~68% / ~99.9%).
    rng = np.random.default_rng(7)
    hits = 0
    for simulation in range(1000):
        splits = [(rng.random(200) < 0.8).astype(int) for _ in range(3)]
        lower, upper = bootstrap_mean_interval(splits, draws=500, seed=simulation)
        hits += lower <= 0.8 <= upper
    assert 0.92 <= hits / 1000 <= 0.975


def test_bootstrap_mean_interval_is_reproducible_and_centred():
    rng = np.random.default_rng(3)
    splits = [rng.random(100) < 0.7 for _ in range(4)]
    first = bootstrap_mean_interval(splits, draws=300, seed=11)
    assert first == bootstrap_mean_interval(splits, draws=300, seed=11)
    assert first != bootstrap_mean_interval(splits, draws=300, seed=12)
    mean = np.mean([split.mean() for split in splits])
    assert first[0] < mean < first[1]
    # A constant vector has no sampling noise.
    assert bootstrap_mean_interval([np.ones(50), np.zeros(50)], draws=50) == (0.5, 0.5)


def test_auroc_matches_a_direct_pairwise_count_with_ties():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 40)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(labels, scores) == pytest.approx(pairwise, abs=1e-12)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert auroc([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5  # a constant score: every pair ties


def test_auroc_interval_covers_the_true_auroc_of_a_known_distribution():
    hits = 0
    for simulation, (labels, scores) in enumerate(binormal_draws(11, 200)):
        lower, upper = auroc_interval(labels, scores, draws=500, seed=simulation)
        assert lower <= auroc(labels, scores) <= upper
        hits += lower <= BINORMAL_AUROC <= upper
    assert hits / 200 >= 0.90


def test_identical_classifiers_show_no_difference():
    correct = np.random.default_rng(1).random(300) < 0.75
    test = mcnemar_test(correct, correct)
    assert (test["b"], test["c"], test["statistic"], test["p_value"]) == (0, 0, 0.0, 1.0)
    assert paired_bootstrap_difference(correct, correct, draws=500, seed=0) == \
        {"difference": 0.0, "lower": 0.0, "upper": 0.0}


def test_clearly_different_classifiers_are_told_apart():
    rng = np.random.default_rng(2)
    truth_draw = rng.random(400)
    a, b = truth_draw < 0.9, truth_draw < 0.7  # A is right wherever B is, and on 20% more
    test = mcnemar_test(a, b)
    assert test["method"] == "chi2" and test["b"] == int((a & ~b).sum()) and test["c"] == 0
    assert test["p_value"] < 1e-10
    difference = paired_bootstrap_difference(a, b, draws=1000, seed=0)
    assert difference["difference"] == pytest.approx(a.mean() - b.mean())
    assert 0 < difference["lower"] < difference["difference"] < difference["upper"]
    assert paired_bootstrap_difference(b, a, draws=1000, seed=0)["upper"] < 0


def test_mcnemar_exact_branch_matches_the_binomial_test():
    a = np.r_[np.ones(9), np.zeros(2), np.ones(30)]
    b = np.r_[np.zeros(9), np.ones(2), np.ones(30)]
    test = mcnemar_test(a, b)
    assert (test["b"], test["c"], test["method"]) == (9, 2, "exact")
    assert test["p_value"] == pytest.approx(stats.binomtest(9, 11, 0.5).pvalue)
    forced = mcnemar_test(a, b, exact_below=0)
    assert forced["statistic"] == pytest.approx((9 - 2 - 1) ** 2 / 11)
    assert forced["p_value"] == pytest.approx(stats.chi2.sf((9 - 2 - 1) ** 2 / 11, 1))


def _calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn as Bernoulli(sigmoid(logit)): a perfectly calibrated score."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    return logits, labels


def test_calibrated_scores_have_small_ece_and_miscalibrated_ones_do_not():
    logits, labels = _calibrated(20_000, seed=0)
    p = 1 / (1 + np.exp(-logits))
    calibrated = expected_calibration_error(p, labels)
    assert calibrated < 0.03
    assert expected_calibration_error(p**3, labels) > calibrated + 0.1
    assert expected_calibration_error(apply_temperature(logits * 3, 1.0), labels) > calibrated + 0.05


def test_reliability_table_is_tidy_and_consistent_with_ece():
    p = np.array([0.05, 0.15, 0.15, 0.95, 1.0, 0.5])
    y = np.array([0, 0, 1, 1, 1, 0])
    table = reliability_table(p, y, bins=10)
    assert isinstance(table, pd.DataFrame) and len(table) == 10
    assert list(table.columns) == ["bin", "lower", "upper", "n", "mean_predicted", "fraction_true"]
    assert table["n"].sum() == 6 and table.loc[9, "n"] == 2 and table.loc[5, "n"] == 1
    assert table.loc[1, "fraction_true"] == 0.5 and table.loc[1, "mean_predicted"] == pytest.approx(0.15)
    assert table.loc[3, "n"] == 0 and np.isnan(table.loc[3, "mean_predicted"])
    expected = (0.05 + 2 * 0.35 + 2 * 0.025 + 0.5) / 6
    assert expected_calibration_error(p, y, bins=10) == pytest.approx(expected)


def test_temperature_scaling_recovers_the_overconfidence_factor():
    logits, labels = _calibrated(20_000, seed=1)
    overconfident = logits * 3
    temperature = fit_temperature(overconfident, labels)
    assert 2.7 < temperature < 3.3
    before = expected_calibration_error(apply_temperature(overconfident, 1.0), labels)
    after = expected_calibration_error(apply_temperature(overconfident, temperature), labels)
    assert after < 0.03 < before
    assert 0.8 < fit_temperature(logits, labels) < 1.2
    # Ranking is untouched.
    assert auroc(labels, apply_temperature(overconfident, temperature)) == pytest.approx(auroc(labels, logits))


def test_edge_cases_give_nan_or_a_clear_error():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    assert math.isnan(auroc([1, 1, 1], [0.2, 0.4, 0.9])) and math.isnan(auroc([], []))
    assert all(math.isnan(x) for x in auroc_interval([0, 0], [0.1, 0.3], draws=10))
    with pytest.raises(ValueError, match="correct <= n"):
        wilson_interval(5, 3)
    with pytest.raises(ValueError, match="level"):
        wilson_interval(1, 3, level=1.5)
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean_interval([])
    with pytest.raises(ValueError, match="empty"):
        bootstrap_mean_interval([np.ones(5), []])
    with pytest.raises(ValueError, match="0/1"):
        bootstrap_mean_interval([[0, 1, 2]])
    with pytest.raises(ValueError, match="empty"):
        mcnemar_test([], [])
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap_difference([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="empty"):
        expected_calibration_error([], [])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability_table([0.5, 1.2], [0, 1])
    with pytest.raises(ValueError, match="scores"):
        auroc([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError, match="both"):
        fit_temperature([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="positive"):
        apply_temperature([1.0], 0.0)
