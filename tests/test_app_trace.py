"""The Trace page through Streamlit's AppTest: its heatmap holds the engine's trace of the same statement,
and a probe trained on every token joins it."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from probing.analyses.trace import ALL_TOKENS, MODEL_MARGIN, trace_statement
from probing.study.results import StudyResult
from support import chart, new_app, no_errors, wait_job

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tests" / "data" / "results-1b0dd61"  # linear and mass-mean probes of layers -1 and -5
PER_TOPIC = 8  # 48 built-in statements for the probe trained on every token


@pytest.fixture
def opened(tmp_path, monkeypatch):
    """The app opens a copy of a results folder at start; its own cache; the model loads on a click."""
    folder = tmp_path / "study"
    shutil.copytree(FOLDER, folder)
    for name, value in {"PROBING_CACHE": str(tmp_path / "cache"), "PROBING_RESULTS": str(folder),
                        "PROBING_PER_TOPIC": str(PER_TOPIC), "PROBING_MODEL": "embedded"}.items():
        monkeypatch.setenv(name, value)
    return StudyResult.load(folder)


def test_trace_page_shows_the_engines_trace_and_an_all_tokens_probe(opened):
    at = new_app().run()
    at.switch_page("pages/trace.py").run()
    no_errors(at)
    at.button(key="load_page_model").click().run()  # a folder opened at start loads no model by itself
    no_errors(at)
    statement = at.text_input(key="trace_text").value
    assert statement  # an example is traced at once
    at.selectbox(key="trace_probe").set_value("mass_mean").run()
    spec, rows = chart(at, "trace")
    holder = at.session_state["ctx"].holder
    engine = trace_statement(holder.activations("last"), opened.probes, statement)
    expected = engine.scores.query("probe == 'mass_mean'").sort_values(["layer", "token"])
    cells = rows.dropna(subset=["p_true"]).sort_values(["layer", "token"])
    assert len(cells) == len(expected) == 2 * len(engine.tokens)
    np.testing.assert_allclose(cells["p_true"].to_numpy(), expected["p_true"].to_numpy(), atol=1e-6)
    assert cells.loc[cells["read"].astype(bool), "token"].unique().tolist() == [len(engine.tokens) - 1]
    answers = rows.dropna(subset=[MODEL_MARGIN]).drop_duplicates("token").sort_values("token")[MODEL_MARGIN]
    np.testing.assert_allclose(answers.to_numpy(), engine.tokens[MODEL_MARGIN].to_numpy(), atol=1e-6)
    assert any("extrapolation" in caption.value for caption in at.caption)

    at.selectbox(key="all_tokens_layer").set_value(-5).run()
    at.selectbox(key="all_tokens_kind").set_value("linear").run()
    at.button(key="all_tokens_train").click().run()
    job = wait_job(at, "all_tokens")
    kind = f"linear · {ALL_TOKENS}"
    assert kind in at.selectbox(key="trace_probe").options
    at.selectbox(key="trace_probe").set_value(kind).run()
    no_errors(at)
    _, rows = chart(at, "trace")
    cells = rows.dropna(subset=["p_true"]).sort_values("token")
    assert set(cells["layer"]) == {-5} and len(cells) == len(engine.tokens)
    again = trace_statement(holder.activations("last"), {(-5, kind): job.result}, statement, model_answer=False)
    np.testing.assert_allclose(cells["p_true"].to_numpy(), again.scores["p_true"].to_numpy(), atol=1e-6)


def test_trace_page_picks_a_statement_of_the_set(opened):
    at = new_app().run()
    at.switch_page("pages/trace.py").run()
    at.button(key="load_page_model").click().run()
    at.radio[0].set_value("Pick one of the statements").run()
    no_errors(at)
    assert any("Click a row" in info.value for info in at.info)
    assert not at.get("vega_lite_chart")  # nothing traced until a row is picked
    frame = at.session_state["ctx"].dataset.frame
    assert len(frame) == 6 * PER_TOPIC
    at.session_state["trace_pick"] = {"selection": {"rows": [5], "columns": [], "cells": []}}
    at.run()
    no_errors(at)
    _, rows = chart(at, "trace")
    texts = rows.dropna(subset=["p_true"]).drop_duplicates("token").sort_values("token")["text"]
    assert "".join(texts) == frame["statement"].iloc[5]
