import numpy as np
import pandas as pd
import pytest

from probing.store.activations import Activations
from probing.study.config import StudyConfig
from probing.model.devices import default_device
from probing.probes.estimators import make_probe
from probing.study.results import StudyResult
from probing.analyses.scoring import check_statement, model_says_true, score_statements
from probing.study.study import Study, model_notes
from support import Recorder


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


def test_scoring_a_study_keeps_its_dtype_on_its_device_and_says_what_differs(tmp_path, monkeypatch):
    here = default_device()
    same = StudyResult(StudyConfig(cache=str(tmp_path), position="mean"),
                       {"model": {"device": here, "dtype": "float16"}}, pd.DataFrame())
    activations, notes = _of_results(same, tmp_path)
    assert notes == [] and activations.spec.resolved_dtype == "float16" and activations.spec.resolved_device == here
    assert activations.position == "mean" and activations.cache_dir == tmp_path

    monkeypatch.chdir(tmp_path)  # the default cache, ./cache, lands here
    elsewhere = StudyResult(StudyConfig(cache="/nonexistent/scratch/cache"),
                            {"model": {"device": "mps:7", "dtype": "float16"}}, pd.DataFrame())
    activations, notes = _of_results(elsewhere, "cache")
    assert activations.spec.resolved_device == here and activations.spec.dtype is None
    assert notes == [f"this study ran on mps:7 (float16), which this machine lacks: the model runs on {here} "
                     f"({activations.spec.resolved_dtype})",
                     "the results folder recorded the activation cache /nonexistent/scratch/cache; a results "
                     "folder's paths are not used, so activations are read from and written to cache"]


def test_a_model_with_other_weights_than_the_studys_gets_a_note(model):
    ran = {"device": model.spec.resolved_device, "dtype": model.spec.resolved_dtype}
    study = StudyResult(StudyConfig(), {"model": {**ran, "fingerprint": model.fingerprint}}, pd.DataFrame())
    assert model_notes(study, model.fingerprint) == []
    other = StudyResult(StudyConfig(), {"model": {**ran, "fingerprint": "0" * 24}}, pd.DataFrame())
    (note,) = model_notes(other, model.fingerprint)
    assert note.startswith("the model embedded here is not the one this study ran on") and "0" * 24 in note


def _of_results(result, cache):
    """The activations and notes of :meth:`Study.of_results`."""
    recorder = Recorder()
    return Study.of_results(result, cache, reporter=recorder).activations, recorder.notes
