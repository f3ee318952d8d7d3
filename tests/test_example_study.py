"""The example study that ships with the package: it is what its documented command's `reproduce` writes,
and a first start of the dashboard opens it and scores a typed sentence with its probes, no click needed."""

import re
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

from probing.analyses.scoring import score_statements
from probing.cli.main import build_parser
from probing.cli.options import study_config
from probing.study.folder import EXAMPLE_STUDY, TABLE_FILES, recorded_files, read_config
from probing.study.results import StudyResult
from probing.study.study import Study
from support import chart, new_app, no_errors

ROOT = Path(__file__).resolve().parents[1]
STEERING = {"steering.csv", "steering.md"}  # the command's second step, `steer`, adds these


def documented_reproduce() -> list[str]:
    """The arguments of the `reproduce` that `make example-study` runs (the Makefile is the documentation)."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    line = next(line for line in makefile.splitlines() if "-m probing reproduce" in line)
    words = shlex.split(line.split("-m probing ", 1)[1].replace("$(EXAMPLE_STUDY)", str(EXAMPLE_STUDY)))
    return words


@pytest.fixture(scope="module")
def shipped() -> StudyResult:
    return StudyResult.load(EXAMPLE_STUDY)


def test_the_example_study_is_what_its_command_writes(shipped, shared_cache, tmp_path, monkeypatch):
    """The documented `reproduce`, run again here, writes the same files with the same numbers, to the
    arithmetic's rounding: float32 on another CPU, or activations extracted in other batches, differ by 1e-6,
    which leaves linear probes a statement or two apart but moves MLP probes trained on near-chance
    statements (this model is near chance on them) more: measured on one machine with two caches, a medium
    probe's held-out accuracy moved by up to 0.06, its mean over the six splits by up to 0.012."""
    makefile = (ROOT / "Makefile").read_text()
    assert "PROBING_TRAIN_DTYPE=float32" in makefile  # the MLP probes train in float32 on every CPU too
    monkeypatch.setenv("PROBING_TRAIN_DTYPE", "float32")
    config = study_config(build_parser().parse_args(documented_reproduce()))
    assert shipped.config == replace(config, cache=shipped.config.cache)  # the documented options, all of them
    assert shipped.meta["model"]["dtype"] == "float32" and len(shipped.probes) == 20
    again = Study(replace(config, cache=str(shared_cache))).reproduce(tmp_path / "again")

    files = recorded_files(read_config(EXAMPLE_STUDY), EXAMPLE_STUDY)
    assert files - STEERING == recorded_files(read_config(again.folder), again.folder)
    assert STEERING <= files and not shipped.steering.empty  # `steer`, the command's second step
    assert shipped.meta["dataset"]["sha256"] == again.meta["dataset"]["sha256"]  # the same 2,400 statements
    for name in TABLE_FILES:
        assert list(getattr(shipped, name).columns) == list(getattr(again, name).columns) or name == "steering", name

    keys = ["layer", "probe", "split", "heldout", "seed"]
    ours, theirs = shipped.results.set_index(keys), again.results.set_index(keys)
    assert ours.index.equals(theirs.index)
    gap = (ours["accuracy"] - theirs["accuracy"]).abs()
    steady = gap[gap.index.get_level_values("probe").isin(["linear", "tiny"])]
    assert steady.max() <= 0.01 and gap.max() <= 0.1, gap.groupby("probe").max()
    means = shipped.accuracy_table().set_index("probe") - again.accuracy_table().set_index("probe")
    assert means.abs().to_numpy().max() <= 0.025, means
    for name, columns in {"directions_cosine": ["mean", "shuffled_labels"], "directions_sign": ["mean"],
                          "directions_matrices": ["cosine", "sign_equality"], "generalization": ["accuracy", "auroc"],
                          "ccs": ["cosine_linear", "cosine_mass_mean"]}.items():
        ours, theirs = getattr(shipped, name), getattr(again, name)
        assert len(ours) == len(theirs), name
        for column in columns:
            assert (ours[column] - theirs[column]).abs().max() <= 0.02, (name, column)
    cells = ["layer", "probe", "split", "heldout", "seed", "row", "label"]
    assert shipped.predictions[cells].equals(again.predictions[cells])  # the same held-out statements
    linear = shipped.predictions["probe"] == "linear"
    agree = (shipped.predictions["score"] > 0) == (again.predictions["score"] > 0)
    assert agree[linear].mean() >= 0.99

    texts = shipped.statements["statement"].head(200).tolist()
    activations = Study(replace(config, cache=str(shared_cache))).activations
    final = {key: probe for key, probe in shipped.probes.items() if key[1] == "linear"}
    mine = score_statements(activations, final, texts)["p_true"]
    theirs = score_statements(activations, {key: again.probes[key] for key in final}, texts)["p_true"]
    assert (mine - theirs).abs().max() < 0.02


def test_a_first_start_opens_the_example_and_scores_a_typed_sentence(shipped, tmp_path, monkeypatch):
    for name, value in {"PROBING_CACHE": str(tmp_path / "cache"), "PROBING_RESULTS": str(tmp_path / "results"),
                        "PROBING_MODEL": "embedded", "PROBING_PER_TOPIC": "8"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PROBING_EXAMPLE", raising=False)
    at = new_app().run()
    no_errors(at)
    assert at.session_state["results_choice"] == str(EXAMPLE_STUDY)
    at.switch_page("pages/statement.py").run()  # loads the example's model (float32) by itself
    no_errors(at)
    text = "The Danube flows into the Black Sea."
    at.text_area(key="statement_text").input(text).run()
    no_errors(at)
    _, rows = chart(at, "statement_layers")
    shown = rows.dropna(subset=["probe"]).set_index(["layer", "probe"])["p_true"]
    holder = at.session_state["ctx"].holder
    assert holder.current.spec.resolved_dtype == "float32"
    direct = score_statements(holder.activations("last"), shipped.probes, [text]).set_index(["layer", "probe"])
    assert set(shown.index) == set(shipped.probes) and len(shown) == 20
    assert shown.to_dict() == pytest.approx(direct["p_true"].to_dict(), abs=1e-6)
    assert any(re.search(r"20 probe\(s\)", caption.value) for caption in at.caption)


def test_a_start_with_results_or_another_model_does_not_open_the_example(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBING_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PROBING_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PROBING_EXAMPLE", "0")
    at = new_app().run()
    assert at.session_state["results_choice"] == "None: work live"
    assert "Example study (ships with the package)" in at.selectbox(key="results_choice").options  # to open by hand
    monkeypatch.delenv("PROBING_EXAMPLE")
    monkeypatch.setenv("PROBING_MODEL", str(tmp_path / "other.gguf"))  # its probes read another model
    at = new_app().run()
    assert at.session_state["results_choice"] == "None: work live"
