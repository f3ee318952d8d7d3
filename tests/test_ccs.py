"""CCS on synthetic pairs with a planted truth direction: x+ = base + tau * d + offset,
x- = base - tau * d + another offset, plus noise, where the shared base varies far more than d."""

import numpy as np
import pytest

from probing.probes.ccs import CCSProbe

WIDTH, TRAIN, TEST = 100, 1000, 500


@pytest.fixture(scope="module")
def pairs():
    """The base of each pair lives in a 5-dimensional subspace with about twice the spread of the truth
    signal: the top principal directions are not truth, and only consistency singles out d."""
    rng = np.random.default_rng(0)
    base_directions = rng.normal(size=(5, WIDTH))
    direction = rng.normal(size=WIDTH)
    direction -= np.linalg.lstsq(base_directions.T, direction, rcond=None)[0] @ base_directions  # d is not base
    direction /= np.linalg.norm(direction)
    n = TRAIN + TEST
    y = rng.integers(0, 2, n)  # 1: x+ is true (and x- false)
    tau = 2 * y - 1
    base = rng.normal(size=(n, 5)) @ base_directions + 3 * rng.normal(size=WIDTH)
    offset_pos, offset_neg = rng.normal(size=WIDTH), 2 * rng.normal(size=WIDTH)
    X_pos = base + np.outer(tau, direction) + offset_pos + rng.normal(scale=0.5, size=(n, WIDTH))
    X_neg = base - np.outer(tau, direction) + offset_neg + rng.normal(scale=0.5, size=(n, WIDTH))
    return {"X_pos": X_pos.astype(np.float32), "X_neg": X_neg.astype(np.float32), "y": y, "direction": direction}


@pytest.fixture(scope="module")
def fitted(pairs):
    return CCSProbe().fit(pairs["X_pos"][:TRAIN], pairs["X_neg"][:TRAIN], pairs["y"][:TRAIN])


def held_out(pairs):
    return pairs["X_pos"][TRAIN:], pairs["X_neg"][TRAIN:], pairs["y"][TRAIN:]


def pair_accuracy(probe, X_pos, X_neg, y) -> float:
    return float(((probe.pair_scores(X_pos, X_neg) > 0.5) == y).mean())


def test_finds_the_planted_direction_without_labels(pairs, fitted):
    assert fitted.sign_from_labels_
    assert abs(fitted.direction_ @ pairs["direction"]) > 0.9
    X_pos, X_neg, y = held_out(pairs)
    assert pair_accuracy(fitted, X_pos, X_neg, y) >= 0.95
    # each statement on its own, read with its side's normalisation: x- is true where x+ is false
    assert fitted.score(X_pos, y, negated=False) >= 0.9
    assert fitted.score(X_neg, 1 - y, negated=True) >= 0.9
    # the label fixed the sign: P(true) grows along the planted direction
    assert fitted.direction_ @ pairs["direction"] > 0.9


def test_labels_only_fix_the_sign(pairs, fitted):
    X_pos, X_neg, y = (pairs[name][:TRAIN] for name in ("X_pos", "X_neg", "y"))
    flipped = CCSProbe().fit(X_pos, X_neg, 1 - y)
    unlabelled = CCSProbe().fit(X_pos, X_neg)
    assert unlabelled.sign_from_labels_ is False
    np.testing.assert_allclose(flipped.direction_, -fitted.direction_)
    np.testing.assert_allclose(np.abs(unlabelled.coef_), np.abs(fitted.coef_))
    assert flipped.loss_ == fitted.loss_ == unlabelled.loss_
    X_pos, X_neg, y = held_out(pairs)
    assert pair_accuracy(flipped, X_pos, X_neg, 1 - y) == pair_accuracy(fitted, X_pos, X_neg, y)
    assert flipped.score(X_neg, y, negated=True) == fitted.score(X_neg, 1 - y, negated=True)


def test_restarts_are_independent_and_the_lowest_loss_is_kept(pairs):
    X_pos, X_neg = pairs["X_pos"][:300], pairs["X_neg"][:300]
    probe = CCSProbe(n_restarts=6, epochs=100).fit(X_pos, X_neg)
    assert probe.losses_.shape == (6,) and len(set(probe.losses_.round(6))) == 6
    assert probe.loss_ == probe.losses_.min()
    assert probe.loss(X_pos, X_neg) == pytest.approx(probe.loss_, rel=1e-5)  # the kept weights are the best start's
    # a start depends on the seed and its index only, not on how many starts there are
    first = CCSProbe(n_restarts=1, epochs=100).fit(X_pos, X_neg)
    assert first.loss_ == pytest.approx(probe.losses_[0], rel=1e-4)
    other_seed = CCSProbe(n_restarts=6, epochs=100, seed=1).fit(X_pos, X_neg)
    assert other_seed.losses_[0] != pytest.approx(first.loss_, rel=1e-4)
    again = CCSProbe(n_restarts=6, epochs=100).fit(X_pos, X_neg)
    np.testing.assert_array_equal(again.coef_, probe.coef_)


def test_scores_read_each_statement_with_its_own_side(pairs, fitted):
    X_pos, X_neg, _ = held_out(pairs)
    statements = np.concatenate([X_pos, X_neg])
    negated = np.repeat([False, True], len(X_pos))
    logits = fitted.decision_function(statements, negated)
    np.testing.assert_array_equal(logits[: len(X_pos)], fitted.decision_function(X_pos, False))
    np.testing.assert_array_equal(logits[len(X_pos):], fitted.decision_function(X_neg, True))
    assert not np.allclose(fitted.decision_function(X_neg, False), logits[len(X_pos):])
    probabilities = fitted.predict_proba(statements, negated)
    np.testing.assert_allclose(probabilities.sum(1), 1)
    np.testing.assert_array_equal(fitted.predict(statements, negated), (logits > 0).astype(int))
    p_true = probabilities[:, 1]
    np.testing.assert_allclose(fitted.pair_scores(X_pos, X_neg),
                               0.5 * (p_true[: len(X_pos)] + 1 - p_true[len(X_pos):]))
    assert np.linalg.norm(fitted.direction_) == pytest.approx(1)


def test_bad_input_and_settings_say_what_is_wrong(pairs):
    X_pos, X_neg, y = pairs["X_pos"][:20], pairs["X_neg"][:20], pairs["y"][:20]
    cases = [
        ((X_pos, X_neg[:-1]), "shapes .* differ"),
        ((X_pos, X_neg[:, 1:]), "shapes .* differ"),
        ((X_pos[:1], X_neg[:1]), "at least 2 pairs"),
        ((X_pos, X_neg, y[:-1]), "one per pair"),
        ((X_pos, X_neg, y + 1), "y must be 0/1"),
        ((X_pos[0], X_neg[0]), "must be a matrix"),
    ]
    probe = CCSProbe(epochs=1).fit(X_pos, X_neg)
    before = probe.pair_scores(X_pos, X_neg)
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            probe.fit(*arguments)
    np.testing.assert_array_equal(probe.pair_scores(X_pos, X_neg), before)  # a refused fit keeps the last one
    for settings in ({"epochs": 0}, {"n_restarts": 0}, {"epochs": 2.5}, {"seed": -1}, {"lr": 0},
                     {"lr": float("nan")}, {"weight_decay": -1}):
        with pytest.raises(ValueError, match="must be"):
            CCSProbe(**settings)
    with pytest.raises(RuntimeError, match="not fitted"):
        CCSProbe().decision_function(X_pos, False)
    with pytest.raises(ValueError, match="one bool per row"):
        probe.decision_function(X_pos, np.zeros(len(X_pos) - 1, dtype=bool))
    with pytest.raises(ValueError, match="one bool per row"):
        probe.decision_function(X_pos, np.zeros(len(X_pos)))  # 0/1 floats are not polarities
    with pytest.raises(ValueError, match=f"width {WIDTH - 1}"):
        probe.predict(X_pos[:, 1:], False)
