"""Traces: P(true) of real probes at every token and layer of a statement, on the real embedded model."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probing.analyses.scoring import model_says_true, score_statements
from probing.analyses.steering import true_false_margins
from probing.analyses.trace import MODEL_MARGIN, trace_statement
from probing.cli.main import main
from probing.dashboard.charts import chart_rows
from probing.dashboard.trace_charts import trace_chart
from probing.probes.estimators import make_probe
from probing.store.activations import Activations

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "tests" / "data" / "results-1b0dd61"  # linear and mass-mean probes of layers -1 and -5
# Not in any statement set, so the statement page computes its hidden states afresh, as the trace does.
SENTENCE = "The river Danube flows through the city of Vienna before it reaches the Black Sea."


@pytest.fixture(scope="module")
def probes(model, shared_cache, small_saplma):
    """Linear and MLP probes of two layers, trained on real statements."""
    activations = Activations(model=model, cache_dir=shared_cache)
    texts, labels = small_saplma.statements, small_saplma.labels
    return {(layer, kind): make_probe(kind, epochs=20).fit(activations.layer(texts, layer), labels)
            for layer in (-1, -9) for kind in ("linear", "tiny")}


@pytest.mark.parametrize("position", ["last", "before_period"])
def test_the_trained_token_reads_what_the_statement_page_shows(model, probes, tmp_path, position):
    activations = Activations(model=model, cache_dir=tmp_path, position=position)
    trace = trace_statement(activations, probes, SENTENCE)
    tokens = trace.tokens
    assert "".join(tokens["text"]) == SENTENCE  # every character of the statement, in order, once
    assert len(trace.scores) == len(tokens) * len(probes) and trace.scores["p_true"].between(0, 1).all()
    read = tokens.loc[tokens["read"], "text"].tolist()
    assert read == (["."] if position == "last" else [tokens["text"].iloc[-2]]) and tokens["text"].iloc[-1] == "."
    page = score_statements(activations, probes, [SENTENCE])  # the statement page's per-layer scores
    merged = trace.at_read_token().merge(page, on=["layer", "probe"], suffixes=("_trace", "_page"))
    assert len(merged) == len(probes)
    np.testing.assert_allclose(merged["p_true_trace"], merged["p_true_page"], rtol=0, atol=1e-6)
    # The other tokens read other hidden states: the probes' P(true) moves along the sentence.
    assert trace.scores.groupby(["layer", "probe"])["p_true"].std().min() > 0.01


def test_a_mean_study_has_no_trained_token(model, probes, tmp_path):
    trace = trace_statement(Activations(model=model, cache_dir=tmp_path, position="mean"), probes, SENTENCE,
                            model_answer=False)
    assert not trace.tokens["read"].any() and trace.at_read_token().empty
    assert MODEL_MARGIN not in trace.tokens and MODEL_MARGIN not in trace.table()


def test_the_model_answers_about_each_prefix(model, probes, tmp_path):
    trace = trace_statement(Activations(model=model, cache_dir=tmp_path), probes, SENTENCE)
    margins = trace.tokens[MODEL_MARGIN].to_numpy()
    assert np.all(np.abs(margins) <= 1)
    prefixes = [SENTENCE[:end] for end in trace.tokens["end"]]
    # Alone, each prefix gets the answer it got in the batch (up to bfloat16's batch-shape rounding).
    for k in (0, len(prefixes) // 2):
        assert true_false_margins(model, [prefixes[k]])[0, 0] == pytest.approx(margins[k], abs=0.05)
    whole = model_says_true(model, SENTENCE)  # the statement page's answer, for the whole statement
    assert whole["p_true"] - whole["p_false"] == pytest.approx(margins[-1], abs=0.05)


def test_the_chart_draws_every_token_and_outlines_the_trained_one(model, probes, tmp_path):
    trace = trace_statement(Activations(model=model, cache_dir=tmp_path), probes, SENTENCE)
    rows = chart_rows(trace_chart(trace, "tiny"))
    cells = rows.dropna(subset=["p_true"])
    assert len(cells) == len(trace.tokens) * 2  # two layers of tiny probes
    assert cells["label"].nunique() == len(trace.tokens)  # repeated words stay separate columns
    expected = trace.scores.query("probe == 'tiny'").sort_values(["layer", "token"])["p_true"].to_numpy()
    assert np.allclose(cells.sort_values(["layer", "token"])["p_true"].to_numpy(), expected)
    assert cells.loc[cells["read"], "token"].unique().tolist() == [len(trace.tokens) - 1]
    with pytest.raises(ValueError, match="has no medium probe"):
        trace_chart(trace, "medium")


def test_bad_input_is_refused_clearly(model, probes, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path, max_tokens=8)
    with pytest.raises(ValueError, match="no trained probes to trace"):
        trace_statement(activations, {}, SENTENCE)
    with pytest.raises(ValueError, match="the statement is empty"):
        trace_statement(activations, probes, "  ")
    with pytest.raises(ValueError, match="more than the 8 allowed"):
        trace_statement(activations, probes, SENTENCE)
    wrong = {(-1, "linear"): make_probe("linear").fit(np.random.default_rng(0).normal(size=(40, 8)),
                                                      np.arange(40) % 2)}
    with pytest.raises(ValueError, match="reads 8 numbers per statement"):
        trace_statement(Activations(model=model, cache_dir=tmp_path), wrong, SENTENCE)


def test_the_command_line_writes_the_trace(tmp_path, capsys):
    out = tmp_path / "trace.csv"
    assert main(["trace", SENTENCE, "--results", str(FOLDER), "--cache", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["token", "text", "start", "end", "read", "layer", "probe", "p_true", MODEL_MARGIN]
    assert set(table["probe"]) == {"linear", "mass_mean"} and set(table["layer"]) == {-1, -5}
    n_tokens = table["token"].nunique()
    assert len(table) == 4 * n_tokens and table.loc[table["read"], "token"].unique().tolist() == [n_tokens - 1]
    assert main(["trace", SENTENCE, "--results", str(FOLDER), "--cache", str(tmp_path / "cache"),
                 "--no-answers"]) == 0
    printed = capsys.readouterr().out
    assert "P(true) from the mass_mean probe at each token" in printed and "Danube" in printed
    assert "up to each token" not in printed
    assert main(["trace", SENTENCE, "--results", str(FOLDER), "--out", str(tmp_path)]) == 2
    assert "is a folder; pass the CSV file to write" in capsys.readouterr().err
