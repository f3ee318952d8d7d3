import numpy as np
import pytest

from probing.activations import Activations
from probing.probes import make_probe
from probing.scoring import check_statement, model_says_true, score_statements


def test_probe_scores_new_statements_per_layer(model, shared_cache, small_saplma):
    activations = Activations(model=model, cache_dir=shared_cache)
    texts, labels = small_saplma.statements, small_saplma.labels
    probes = {(layer, "linear"): make_probe("linear").fit(activations.layer(texts, layer), labels)
              for layer in (-1, -9)}
    scores = score_statements(activations, probes, ["The Earth orbits the Sun.", texts[0]])
    assert list(scores.columns) == ["statement", "layer", "probe", "p_true"]
    assert len(scores) == 4 and scores["p_true"].between(0, 1).all()
    seen = scores.query("layer == -9")["p_true"].iloc[1]
    expected = probes[(-9, "linear")].predict_proba(activations.layer(texts[:1], -9))[0, 1]
    assert seen == pytest.approx(expected)


def test_model_answer_is_a_probability_pair(model):
    answer = model_says_true(model, "Paris is the capital of France.")
    assert answer["p_true"] + answer["p_false"] == pytest.approx(1)
    assert 0 < answer["mass"] <= 1
    other = model_says_true(model, "Paris is the capital of Japan.")
    assert not np.isclose(answer["p_true"], other["p_true"])


def test_unusable_statements_get_clear_messages(model, shared_cache):
    with pytest.raises(ValueError, match="the statement is empty"):
        check_statement("   ")
    with pytest.raises(ValueError, match="keep it under 2,000"):
        check_statement("word " * 1000)
    with pytest.raises(ValueError, match="no trained probes yet"):
        score_statements(Activations(model=model, cache_dir=shared_cache), {}, ["Hi."])
