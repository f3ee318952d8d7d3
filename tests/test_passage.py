"""Passage scoring: the sentence splitter on tricky text, each sentence scored as a statement of its own (by
probes at one layer and by the model), the ``score --file`` command, the coloured HTML and the page."""

import io
import os

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from probing.analyses.passage import (
    MAX_SENTENCES, Sentence, check_passage, default_layer, read_passage, score_passage, split_sentences,
)
from probing.analyses.scoring import model_says_true, score_statements
from probing.cli.main import main
from probing.dashboard.charts import FALSE_COLOR, TRUE_COLOR
from probing.dashboard.passage_view import passage_html, sentence_color
from probing.dashboard.settings import EXAMPLES
from probing.probes.estimators import make_probe
from probing.store.activations import Activations
from probing.study.config import StudyConfig
from probing.study.study import Study

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRICKY = {  # the passages the splitter was chosen on, with the sentences a reader sees
    "Dr. Smith moved to the U.S. in 1990. He climbed Mt. Everest, e.g. the hard way. Then he retired.":
        ["Dr. Smith moved to the U.S. in 1990.", "He climbed Mt. Everest, e.g. the hard way.", "Then he retired."],
    "Pi is about 3.14. The deal was worth $2.5 million. Version 1.2.3 shipped on time.":
        ["Pi is about 3.14.", "The deal was worth $2.5 million.", "Version 1.2.3 shipped on time."],
    "He said 'yes.' Then left. She asked, \"Is it true?\" Nobody answered.":
        ["He said 'yes.'", "Then left.", "She asked, \"Is it true?\"", "Nobody answered."],
    "Wait... this is odd. The sky is green\u2026 Or is it? Yes!":
        ["Wait... this is odd.", "The sky is green\u2026", "Or is it?", "Yes!"],
    "I live in the U.S. The weather is fine. Mr. and Mrs. Brown live on Elm St. near the park.":
        ["I live in the U.S.", "The weather is fine.", "Mr. and Mrs. Brown live on Elm St. near the park."],
    "It costs $3.50. That's cheap. The meeting is at 5 p.m. tomorrow.":
        ["It costs $3.50.", "That's cheap.", "The meeting is at 5 p.m. tomorrow."],
    # a hard-wrapped file: a line break inside a sentence is a space; a blank line ends one, period or not
    "  Paris is the capital\nof France.  \n \nBerlin is in Germany\n\nRome is in Italy":
        ["Paris is the capital of France.", "Berlin is in Germany", "Rome is in Italy"],
}


@pytest.mark.parametrize("passage", list(TRICKY))
def test_splitter_finds_the_sentences_and_where_they_are(passage):
    sentences = split_sentences(passage)
    assert [s.text for s in sentences] == TRICKY[passage]
    for sentence in sentences:  # the offsets point at the sentence as written
        assert " ".join(passage[sentence.start:sentence.end].split()) == sentence.text
    assert split_sentences("Yes. Yes.") == [Sentence("Yes.", 0, 4), Sentence("Yes.", 5, 9)]


def test_unusable_passages_get_clear_messages():
    with pytest.raises(ValueError, match="the passage is empty"):
        check_passage(" \n\n ")
    with pytest.raises(ValueError, match="20,000 at a time"):
        check_passage("Paris is in France. " * 1001)
    with pytest.raises(ValueError, match=f"the passage has {MAX_SENTENCES + 1} sentences; score at most"):
        check_passage("It rains. " * (MAX_SENTENCES + 1))
    with pytest.raises(ValueError, match=r"sentence 2 \('x+\.\.\.'\): the statement has 2,500 characters"):
        check_passage("Paris is in France. " + "x" * 2500)
    with pytest.raises(ValueError, match=r"notes.txt is not UTF-8 text \(byte 3 is 0xe9\): save it as UTF-8"):
        read_passage("Caf\u00e9 au lait.".encode("latin-1"), "notes.txt")
    assert read_passage("\ufeffParis.".encode(), "x.txt") == "Paris."


@pytest.fixture(scope="module")
def probes(model, small_saplma, shared_cache):
    """Probes fitted on real SAPLMA activations: two kinds at layer -1, one at -9."""
    activations = Activations(model=model, cache_dir=shared_cache)
    texts, labels = small_saplma.statements, small_saplma.labels
    return {(layer, kind): make_probe(kind).fit(activations.layer(texts, layer), labels)
            for layer, kind in ((-1, "linear"), (-1, "mass_mean"), (-9, "linear"))}


def test_each_sentence_scores_as_it_does_alone(model, shared_cache, probes):
    activations = Activations(model=model, cache_dir=shared_cache)
    passage = "The city of Paris is located in France.\nThe chemical symbol for gold is Fe. Paris is in France."
    table = score_passage(activations, probes, passage)
    assert default_layer(probes) == -1 and (table["layer"] == -1).all()
    assert list(table.columns) == ["index", "sentence", "start", "end", "layer", "linear_p_true",
                                   "mass_mean_p_true", "model_p_true", "model_mass"]
    assert table["index"].tolist() == [1, 2, 3] and table["start"].tolist() == [0, 40, 76]
    for row in table.itertuples():
        alone = score_statements(activations, {k: p for k, p in probes.items() if k[0] == -1}, [row.sentence])
        for kind, p_true in zip(alone["probe"], alone["p_true"]):
            assert getattr(row, f"{kind}_p_true") == pytest.approx(p_true, abs=1e-6)
        answer = model_says_true(model, row.sentence)
        assert (row.model_p_true, row.model_mass) == pytest.approx((answer["p_true"], answer["mass"]), abs=1e-6)
    assert table["linear_p_true"].iloc[0] != pytest.approx(table["linear_p_true"].iloc[1], abs=1e-3)

    at_9 = score_passage(activations, probes, passage, layer=-9)
    assert [c for c in at_9.columns if c.endswith("_p_true")] == ["linear_p_true", "model_p_true"]
    model_only = score_passage(activations, {}, passage)
    assert list(model_only.columns) == ["index", "sentence", "start", "end", "model_p_true", "model_mass"]
    assert model_only["model_p_true"].tolist() == pytest.approx(table["model_p_true"].tolist(), abs=1e-6)
    with pytest.raises(ValueError, match="no probe at layer -5: the probes are at layers -1, -9"):
        score_passage(activations, probes, passage, layer=-5)
    short = Activations(model=model, cache_dir=shared_cache, max_tokens=6)
    with pytest.raises(ValueError, match=r"sentence 2 \('The chemical symbol for gold is Fe\.'\) has 8 tokens, "
                                         "more than the 6 allowed: split it"):
        score_passage(short, probes, "Paris is in France. The chemical symbol for gold is Fe.")


@pytest.fixture(scope="module")
def results(model, small_saplma, shared_cache, tmp_path_factory):
    """`reproduce` on 240 real SAPLMA statements (activations from the shared cache): probes at -5 and -1."""
    activations = Activations(model=model, cache_dir=shared_cache)
    config = StudyConfig(layers=(-5, -1), probes=("linear", "mass_mean"), controls=False)
    return Study(config, dataset=small_saplma, activations=activations).reproduce(
        tmp_path_factory.mktemp("results") / "saplma-small")


def test_score_file_writes_the_table(results, model, tmp_path, capsys, monkeypatch):
    passage = tmp_path / "passage.txt"
    passage.write_text("Dr. Smith moved to the U.S. in 1990. The Moon is made of cheese.\n")
    cache, out = tmp_path / "cache", tmp_path / "scores.csv"
    common = ["--results", str(results.folder), "--cache", str(cache)]
    assert main(["score", "--file", str(passage), "--layer", "-5", "--out", str(out), *common]) == 0
    assert f"2 sentence(s) of {passage} scored at layer -5; table written to {out}" in capsys.readouterr().out
    written = pd.read_csv(out)
    assert written["sentence"].tolist() == ["Dr. Smith moved to the U.S. in 1990.", "The Moon is made of cheese."]
    direct = score_passage(Activations(model=model, cache_dir=cache), results.probes,
                           passage.read_text(), -5)
    pd.testing.assert_frame_equal(written, direct, check_exact=False, atol=1e-6)

    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(passage.read_bytes())))
    assert main(["score", "--file", "-", "--layer", "-5", "--out", "-", *common]) == 0  # a pipe, both ways
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(capsys.readouterr().out)), written)

    assert main(["score", "--file", str(passage), *common]) == 0  # default layer -1, printed
    printed = capsys.readouterr().out
    assert "by the probes at layer -1" in printed and "| 2 | The Moon is made of cheese. |" in printed

    assert main(["score", "Paris is in France.", "--layer", "-5", *common]) == 2
    assert "--layer and --out go with --file" in capsys.readouterr().err
    assert main(["score", "--file", str(tmp_path / "missing.txt"), *common]) == 2
    assert "missing.txt: no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", "Paris is in France.", "--file", str(passage)])
    assert "argument --file: not allowed with argument statement" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score"])
    assert "one of the arguments statement --file is required" in capsys.readouterr().err


def test_the_passage_html_colours_sentences_and_keeps_markup_as_text():
    passage = "Paris is in France. <script>alert('x')</script> & more.\n\nThe end."
    sentences = split_sentences(passage)
    table = pd.DataFrame({"index": [1, 2, 3], "sentence": [s.text for s in sentences],
                          "start": [s.start for s in sentences], "end": [s.end for s in sentences],
                          "model_p_true": [0.9, 0.0, 0.5], "model_mass": [0.5, 0.5, 0.5]})
    html = passage_html(passage, table, "model")
    assert "<script" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more." in html
    assert html.count("<span") == 3 and "<br><br>The end" not in html and "<br><br><span" in html
    assert f"background-color: {sentence_color(0.0)}" in html and 'title="sentence 1: P(true): model 0.90"' in html
    # white at 0.5; 70 % of the dashboard's true (#2a9d8f) and false (#e76f51) colours at the ends
    assert (sentence_color(0.5), sentence_color(1.0), sentence_color(0.0)) == ("#ffffff", "#6abab1", "#ee9a85")
    assert (TRUE_COLOR, FALSE_COLOR) == ("#2a9d8f", "#e76f51")
    with pytest.raises(ValueError, match="no 'linear' scores in this table; it has model"):
        passage_html(passage, table, "linear")


def test_passage_page(results, model, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBING_CACHE", str(tmp_path))
    monkeypatch.setenv("PROBING_RESULTS", str(tmp_path / "results"))  # none yet
    monkeypatch.setenv("PROBING_MODEL", "embedded")
    monkeypatch.setenv("PROBING_PER_TOPIC", "48")
    monkeypatch.setenv("PROBING_EXAMPLE", "0")  # no example study opened: the pages start live
    at = AppTest.from_file(os.path.join(ROOT, "app.py"), default_timeout=300).run()
    at.switch_page("pages/passage.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("No trained probe yet" in i.value for i in at.info)  # no folder open: the model alone
    at.button(key="passage_example").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = at.dataframe[0].value
    assert shown["sentence"].tolist() == list(EXAMPLES)
    assert list(shown.columns) == ["index", "sentence", "start", "end", "model_p_true", "model_mass"]
    for row in shown.itertuples():
        assert row.model_p_true == pytest.approx(model_says_true(model, row.sentence)["p_true"], abs=1e-4)

    monkeypatch.setenv("PROBING_RESULTS", str(results.folder))  # the folder's probes, at the layer chosen
    at = AppTest.from_file(os.path.join(ROOT, "app.py"), default_timeout=300).run()
    at.switch_page("pages/passage.py").run()
    if any(button.key == "load_page_model" for button in at.button):  # unless this process has it loaded
        at.button(key="load_page_model").click().run()
    at.text_area(key="passage_text").input("Paris is in France. The Moon is a planet. <b>Rome</b> is in Peru.").run()
    at.selectbox(key="passage_layer").set_value(-5).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = at.dataframe[0].value
    activations = at.session_state["ctx"].holder.activations("last")
    direct = score_passage(activations, results.probes, at.text_area(key="passage_text").value, -5)
    assert shown["sentence"].tolist() == ["Paris is in France.", "The Moon is a planet.", "<b>Rome</b> is in Peru."]
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), direct, check_exact=False, atol=1e-5)
    assert not at.warning  # the model here is the one the folder's probes were trained on
    at.radio(key="passage_colour").set_value("model").run()
    (html,) = [element for element in at.get("html")]
    assert "&lt;b&gt;Rome&lt;/b&gt;" in html.proto.body and html.proto.body.count("<span") == 3
