"""TTPD on a synthetic world with a planted truth subspace: t_G (truth at both polarities) and a
stronger t_P (truth that flips with negation), per-group offsets and a common negation offset."""

import numpy as np
import pytest

from probing.probes.estimators import make_probe
from probing.probes.ttpd import TTPDProbe

WIDTH, TOPICS, PER_GROUP = 200, 8, 150
TRAIN_TOPICS = 6


def unit(v):
    return v / np.linalg.norm(v)


def cosine(a, b):
    return float(unit(a) @ unit(b))


@pytest.fixture(scope="module")
def world():
    """Rows: topic x polarity groups of PER_GROUP statements, half true.

    activation = topic offset (+ negation offset) + tau * t_G + tau * p * t_P + noise, with |t_P| = 2 |t_G|:
    on affirmative statements alone, truth looks like t_G + t_P, which points the wrong way on negated ones.
    """
    rng = np.random.default_rng(0)
    t_g, t_p = unit(rng.normal(size=WIDTH)), 2 * unit(rng.normal(size=WIDTH))
    negation = 3 * unit(rng.normal(size=WIDTH)) + 0.8 * t_g  # "not" also shifts along t_G
    X, y, polarity, topic = [], [], [], []
    for t in range(TOPICS):
        topic_offset = 5 + rng.normal(scale=0.3, size=WIDTH)
        for negated in (False, True):
            labels = rng.permutation(np.arange(PER_GROUP) % 2)
            tau = 2 * labels - 1
            p = -1 if negated else 1
            X.append(topic_offset + (negation if negated else 0) + np.outer(tau, t_g) + np.outer(tau * p, t_p)
                     + rng.normal(scale=0.5, size=(PER_GROUP, WIDTH)))
            y.append(labels)
            polarity += ["negated" if negated else "affirmative"] * PER_GROUP
            topic += [t] * PER_GROUP
    polarity, topic = np.array(polarity), np.array(topic)
    return {"X": np.concatenate(X).astype(np.float32), "y": np.concatenate(y), "polarity": polarity,
            "groups": np.char.add(topic.astype(str), polarity), "topic": topic, "t_g": t_g, "t_p": t_p}


def rows(world, train: bool, polarity: str | None = None):
    chosen = (world["topic"] < TRAIN_TOPICS) == train
    return chosen & (world["polarity"] == polarity) if polarity else chosen


def fit(world, chosen) -> TTPDProbe:
    return TTPDProbe().fit(world["X"][chosen], world["y"][chosen], world["polarity"][chosen], world["groups"][chosen])


def test_recovers_the_planted_directions(world):
    probe = fit(world, rows(world, train=True))
    assert probe.uses_polarity_
    assert cosine(probe.t_g_, world["t_g"]) > 0.95
    assert cosine(probe.t_p_, world["t_p"]) > 0.95
    # least squares recovers the sizes too, not only the directions
    np.testing.assert_allclose([np.linalg.norm(probe.t_g_), np.linalg.norm(probe.t_p_)], [1, 2], rtol=0.1)
    np.testing.assert_allclose(probe.direction_, unit(probe.t_g_))


def test_generalises_to_new_topics_and_negations_where_affirmative_probes_flip(world):
    X, y = world["X"], world["y"]
    ttpd = fit(world, rows(world, train=True))
    affirmative = rows(world, True, "affirmative")
    for polarity in ("affirmative", "negated"):
        held_out = rows(world, False, polarity)
        assert ttpd.score(X[held_out], y[held_out]) >= 0.9, polarity
    # The paper's point: probes trained on affirmative statements read t_G + t_P, and flip on negations.
    for kind in ("linear", "mass_mean"):
        probe = make_probe(kind).fit(X[affirmative], y[affirmative])
        assert probe.score(X[rows(world, False, "affirmative")], y[rows(world, False, "affirmative")]) >= 0.95
        assert probe.score(X[rows(world, False, "negated")], y[rows(world, False, "negated")]) <= 0.1, kind


def test_probabilities_predictions_and_projections_agree(world):
    X, y, groups = world["X"], world["y"], world["groups"]
    probe = TTPDProbe()
    assert probe.fit(X, y, world["polarity"], groups) is probe
    logits = probe.decision_function(X)
    probabilities = probe.predict_proba(X)
    np.testing.assert_allclose(probabilities.sum(1), 1)
    np.testing.assert_array_equal(probabilities[:, 1] > 0.5, logits > 0)
    np.testing.assert_array_equal(probe.predict(X), (logits > 0).astype(int))
    assert probe.score(X, y) == pytest.approx((probe.predict(X) == y).mean())
    assert probe.classifier_coef_.shape == (2,)
    assert abs(np.linalg.norm(probe.polarity_direction_) - 1) < 1e-9
    projected = probe.project(X)
    np.testing.assert_allclose(projected, X @ np.stack([unit(probe.t_g_), unit(probe.t_p_)], 1), rtol=1e-4, atol=1e-3)
    centred = probe.project(X, groups)
    for group in np.unique(groups)[:3]:
        np.testing.assert_allclose(centred[groups == group].mean(0), 0, atol=1e-6)
    # centred on their groups, true and false sit on either side of 0 along t_G at both polarities
    assert ((centred[:, 0] > 0) == y).mean() > 0.95


def test_polarity_as_booleans_is_the_same_fit(world):
    X, y, groups = world["X"], world["y"], world["groups"]
    by_name = TTPDProbe().fit(X, y, world["polarity"], groups)
    by_flag = TTPDProbe().fit(X, y, world["polarity"] == "negated", groups)
    np.testing.assert_array_equal(by_name.t_g_, by_flag.t_g_)
    np.testing.assert_array_equal(by_name.decision_function(X), by_flag.decision_function(X))


def test_one_polarity_fits_t_g_alone(world):
    X, y = world["X"], world["y"]
    probe = fit(world, rows(world, True, "affirmative"))
    assert probe.uses_polarity_ is False
    assert probe.t_p_ is None and probe.polarity_direction_ is None
    assert probe.classifier_coef_.shape == (1,)
    # Without negations t_G and t_P cannot be told apart: what is found is their sum.
    assert cosine(probe.t_g_, world["t_g"] + world["t_p"]) > 0.95
    held_out = rows(world, False, "affirmative")
    assert probe.score(X[held_out], y[held_out]) >= 0.95
    projected = probe.project(X[held_out])
    np.testing.assert_array_equal(projected[:, 1], 0)
    np.testing.assert_allclose(projected[:, 0], X[held_out] @ probe.direction_, rtol=1e-4, atol=1e-3)


def test_same_data_same_probe(world):
    a, b = (fit(world, rows(world, train=True)) for _ in range(2))
    for name in ("t_g_", "t_p_", "polarity_direction_", "classifier_coef_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.classifier_intercept_ == b.classifier_intercept_


def test_bad_input_says_what_is_wrong(world):
    some = np.r_[0:20, PER_GROUP:PER_GROUP + 20]  # both polarities
    X, y, polarity, groups = (world[name][some] for name in ("X", "y", "polarity", "groups"))
    cases = [
        ((X, y[:-1], polarity, groups), "labels must be one per row"),
        ((X, y, polarity[:-1], groups), "polarity must be one per row"),
        ((X, y, polarity, groups[:-1]), "groups must be one id per row"),
        ((X, np.ones_like(y), polarity, groups), "all true"),
        ((X, y * 2, polarity, groups), "labels must be 0"),
        ((X, y, np.where(polarity == "negated", "negative", polarity), groups), "polarity must be one of"),
        ((X[0], y, polarity, groups), "must be a matrix"),
        ((np.where(np.arange(40)[:, None] == 7, np.nan, X), y, polarity, groups), "row 7"),
    ]
    fitted = TTPDProbe().fit(X, y, polarity, groups)
    before = fitted.decision_function(X)
    for arguments, message in cases:
        with pytest.raises(ValueError, match=message):
            fitted.fit(*arguments)
    np.testing.assert_array_equal(fitted.decision_function(X), before)  # a refused fit keeps the last one
    with pytest.raises(RuntimeError, match="not fitted"):
        TTPDProbe().decision_function(X)
    with pytest.raises(ValueError, match="width 199"):
        TTPDProbe().fit(X, y, polarity, groups).predict(X[:, 1:])
    with pytest.raises(ValueError, match="C must be"):
        TTPDProbe(C=0)
