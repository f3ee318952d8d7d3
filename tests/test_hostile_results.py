"""Results folders are data, never instructions: a copied folder's config.json opens no cache or statements it
names, `reproduce --out` loses no file of the user's, probes that disagree with their folder's record are
refused, and damaged or foreign files get one error line naming them. Real folders, written by `reproduce`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SAPLMA
from probing.data.builtin import load_builtin
from probing.cli.main import main
from probing.study.results import StudyResult
from probing.study.folder import PROBES_DIR, ResultsError, config_file

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "results-1b0dd61"
SCORE = ["score", "Paris is the capital of France."]


def fresh_cache(folder: Path) -> Path:
    """An empty activation cache."""
    folder.mkdir(parents=True)
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A results folder written by `reproduce` (24 built-in statements a topic, linear probes at -1 and -9),
    its statements and its cache; tests copy it."""
    tmp = tmp_path_factory.mktemp("made")
    data = load_builtin(per_topic=24).to_csv(tmp / "small.csv")
    cache = fresh_cache(tmp / "cache")
    out = tmp / "study"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(out), "--layers", "-1,-9",
                 "--probes", "linear", "--no-controls"]) == 0
    return out, data, cache


@pytest.fixture
def study(made, tmp_path):
    """A copy of the made folder, to edit."""
    return Path(shutil.copytree(made[0], tmp_path / "copy"))


def edit_record(folder: Path, **changes) -> None:
    """Set "study" entries of a folder's config.json and the top-level ones of the same name (position, cache),
    as someone editing it would."""
    record = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        record["study"][key] = value
        if isinstance(record.get(key), str):
            record[key] = value
    (folder / "config.json").write_text(json.dumps(record))


def error_line(capsys) -> str:
    """The one line a failed command printed (no traceback, no torch advice)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_score_and_steer_never_open_the_cache_or_statements_a_folder_names(study, made, tmp_path, capsys,
                                                                            monkeypatch):
    _, data, cache = made
    named, existing = tmp_path / "named-cache", tmp_path / "existing-cache"
    existing.mkdir()
    for recorded in (named, existing):  # a cache that is not there, and one that is
        edit_record(study, cache=str(recorded))
        assert main([*SCORE, "--results", str(study), "--cache", str(cache)]) == 0
        assert (f"note: the results folder recorded the activation cache {recorded}; a results folder's paths are "
                f"not used, so activations are read from and written to {cache}") in capsys.readouterr().err
    assert not named.exists() and list(existing.iterdir()) == []
    monkeypatch.chdir(cache.parent)  # without --cache: ./cache, the user's default
    assert main([*SCORE, "--results", str(study)]) == 0
    assert "read from and written to cache" in capsys.readouterr().err
    assert not named.exists() and list(existing.iterdir()) == []

    edit_record(study, dataset=str(tmp_path / "elsewhere.csv"))
    assert main(["steer", "--results", str(study), "--cache", str(cache)]) == 2
    assert (f"records the statements {tmp_path / 'elsewhere.csv'}, and a results folder's paths are never opened: "
            "pass them with --dataset") in error_line(capsys)
    assert not named.exists() and list(existing.iterdir()) == []


def test_reproduce_out_never_loses_the_input_statements_or_other_files(made, tmp_path, capsys, monkeypatch):
    _, data, _ = made
    cache = tmp_path / "cache"  # refused runs start nothing: no activations appear here
    home = tmp_path / "data"
    home.mkdir()
    statements = shutil.copy(data, home / "statements.csv")
    mine = home / "steering.csv"
    mine.write_text("my own table\n")
    for extra in ([], ["--overwrite"]):  # never over the input, even when told to overwrite
        assert main(["reproduce", "--dataset", str(statements), "--cache", str(cache), "--out", str(home),
                     *extra]) == 2
        assert (f"--out {home} holds the input statements statements.csv, which the results would write over"
                in error_line(capsys))
    monkeypatch.setenv("HOME", str(tmp_path))  # --out=~/data: the shell leaves that ~ to us
    other = shutil.copy(data, home / "other.csv")
    assert main(["reproduce", "--dataset", "~/data/other.csv", "--cache", str(cache), "--out=~/data"]) == 2
    assert f"--out {home} is the folder of the input statements" in error_line(capsys)
    if SAPLMA.is_dir():  # the real data folder, read-only here: refused before anything is read
        assert main(["reproduce", "--dataset", str(SAPLMA), "--cache", str(cache), "--out", str(SAPLMA)]) == 2
        assert f"--out {SAPLMA} is the folder of the input statements" in error_line(capsys)
    assert not cache.exists() and not (Path.cwd() / "~").exists()

    assert main(["reproduce", "--dataset", str(other), "--cache", str(made[2]), "--out", str(home), "--layers", "-9",
                 "--probes", "linear", "--no-controls", "--overwrite"]) == 0
    capsys.readouterr()
    assert mine.read_text() == "my own table\n" and statements.read_bytes() == Path(data).read_bytes()
    files = json.loads((home / "config.json").read_text())["files"]
    assert "probes/linear_layer-9.pt" in files and "per_topic.csv" in files and "steering.csv" not in files


def test_reproduce_out_refuses_another_study_and_files_it_did_not_write(study, made, capsys):
    _, data, cache = made
    args = ["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(study), "--layers", "-9",
            "--probes", "linear", "--no-controls"]
    assert main(args) == 2
    assert f"--out {study} holds another study (its config.json)" in error_line(capsys)
    (study / "notes.txt").write_text("keep me")
    assert main([*args, "--overwrite"]) == 0  # one layer now: the probe of -1 was this tool's, so it goes
    capsys.readouterr()
    assert not (study / PROBES_DIR / "linear_layer-1.pt").exists() and (study / "notes.txt").read_text() == "keep me"

    foreign = study.parent / "foreign"
    foreign.mkdir()
    (foreign / "per_topic.csv").write_text("someone's table\n")
    assert main([*args[:6], str(foreign), *args[7:]]) == 2
    assert f"--out {foreign} holds per_topic.csv, which this tool did not write" in error_line(capsys)
    assert (foreign / "per_topic.csv").read_text() == "someone's table\n"


def test_a_copied_record_cannot_make_a_save_delete_other_files(study, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("outside")
    (study / "statements.csv").write_text("statement,label\nmine,1\n")  # a user's file of a results name
    record = json.loads((study / "config.json").read_text())
    record["files"] += ["../victim.txt", "/etc/hostname", "probes/../../victim.txt"]
    (study / "config.json").write_text(json.dumps(record))
    loaded = StudyResult.load(study)
    assert loaded.statements.empty and "statements.csv in" in loaded.notes[0]  # not the study's: not read
    loaded.save(study)
    assert victim.read_text() == "outside" and (study / "statements.csv").read_text() == "statement,label\nmine,1\n"


def test_probes_that_disagree_with_their_folder_are_refused(study, made, capsys):
    cache = made[2]
    edit_record(study, position="mean")  # the probes read the last token
    assert main([*SCORE, "--results", str(study), "--cache", str(cache)]) == 2
    line = error_line(capsys)
    assert f"{study / PROBES_DIR / 'linear_layer-1.pt'} was trained on activations of position 'last'" in line
    assert "says 'mean'" in line
    edit_record(study, position="last")
    probes = study / PROBES_DIR
    shutil.copy(probes / "linear_layer-1.pt", probes / "linear_layer-9.pt")  # a probe of another layer, renamed
    assert main([*SCORE, "--results", str(study), "--cache", str(cache)]) == 2
    assert f"{probes / 'linear_layer-9.pt'} was trained on activations of layer -1" in error_line(capsys)
    shutil.copy(made[0] / PROBES_DIR / "linear_layer-9.pt", probes / "linear_layer-9.pt")
    shutil.copy(probes / "linear_layer-1.pt", probes / "tiny_layer-1.pt")  # not in config.json's "files": not read
    loaded = StudyResult.load(study)
    assert set(loaded.probes) == {(-1, "linear"), (-9, "linear")} and loaded.notes == [
        f"probes/tiny_layer-1.pt in {study} were not written by this tool (its config.json does not list them), so "
        "they are not read"]
    record = json.loads((study / "config.json").read_text())
    (study / "config.json").write_text(json.dumps({**record, "files": [*record["files"], "probes/tiny_layer-1.pt"]}))
    with pytest.raises(ResultsError, match=r"tiny_layer-1.pt holds a linear probe, not the tiny probe its name"):
        StudyResult.load(study)


def test_folders_written_before_probe_records_still_open_with_a_note(tmp_path):
    study = StudyResult.load(LEGACY)
    assert len(study.probes) == 4 and len(study.notes) == 1
    assert study.notes[0].startswith(f"the probes in {LEGACY / PROBES_DIR} were saved before probe files recorded")
    again = StudyResult.load(study.save(tmp_path / "again"))  # saved today: the probes record what they read
    assert again.notes == [] and again.probes.keys() == study.probes.keys()


def test_foreign_probe_files_and_data_folders_get_one_line_naming_them(study, made, tmp_path, capsys):
    cache = made[2]
    probe = study / PROBES_DIR / "linear_layer-9.pt"
    state = torch.load(probe, weights_only=True)
    good = dict(state)
    width = len(state["mean"])  # the model's hidden size
    state["weights"] = [torch.zeros(7, 1)]
    torch.save(state, probe)
    assert main([*SCORE, "--results", str(study), "--cache", str(cache)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {probe} is damaged or not a probe saved by `reproduce`")
    assert f"layer 1's weights (7, 1) and bias (1,) do not follow its {width} inputs" in line

    torch.save({"config": Path("x"), "mean": np.zeros(3)}, probe)  # Python objects: torch would load them unsafely
    assert main([*SCORE, "--results", str(study), "--cache", str(cache)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {probe} is not a probe file this tool wrote") and "weights_only" not in line
    probe.write_text("statement,label\n")
    assert main([*SCORE, "--results", str(study), "--cache", str(cache)]) == 2
    assert error_line(capsys).startswith(f"error: {probe} is damaged or not a probe saved by `reproduce`")

    narrow = {**good, "mean": torch.zeros(7), "scale": torch.ones(7), "weights": [torch.zeros(7, 1)],
              "reads": {**good["reads"]}}
    torch.save(narrow, probe)  # a whole probe, of a model of width 7
    assert main([*SCORE, "--results", str(study), "--cache", str(cache)]) == 2
    assert (f"the linear probe of layer -9 (linear_layer-9.pt) reads 7 numbers per statement, but embedded gives "
            f"{width}" in error_line(capsys))

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(made[1], data / "cities_true_false.csv")
    for folder, expected in ((data, "is not a results folder (no config.json) but holds CSV files such as "
                                    "cities_true_false.csv: statements are passed with --dataset"),
                             (made[1], "is a file, not a results folder"),
                             (tmp_path / "none", "is not a results folder: there is no such folder")):
        assert main([*SCORE, "--results", str(folder)]) == 2
        assert f"error: {folder} {expected}" in error_line(capsys)
        with pytest.raises(FileNotFoundError, match=expected.split(" (")[0]):
            config_file(folder)  # what the dashboard's sidebar shows


def test_an_operating_system_error_names_the_path_not_just_an_errno(study, made, tmp_path, capsys):
    _, data, cache = made
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(blocker / "out")]) == 2
    assert f"--out {blocker / 'out'} cannot be made: {blocker} is a file" in error_line(capsys)  # before the model
    assert main([*SCORE, "--results", str(study), "--cache", str(blocker / "cache")]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "[Errno" not in line and line.startswith(f"error: {blocker / 'cache'}") and "not a directory" in line


def test_the_dashboard_names_a_data_folder_given_as_results(made, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    cache = fresh_cache(tmp_path / "app-cache")
    for name, value in (("PROBING_CACHE", cache), ("PROBING_RESULTS", cache / "results"),
                        ("PROBING_MODEL", "embedded"), ("PROBING_PER_TOPIC", 4)):
        monkeypatch.setenv(name, str(value))
    data = Path(shutil.copytree(made[0], tmp_path / "copied"))  # a results folder turned into a data folder
    (data / "config.json").unlink()
    shutil.copy(made[1], data / "cities_true_false.csv")
    monkeypatch.setattr("sys.argv", ["app.py", "--data-root", str(tmp_path)])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300).run()
    at.selectbox(key="results_choice").set_value("Other path…").run()
    at.text_input(key="results_path").input(str(data)).run()
    assert not at.exception and at.session_state["ctx"].study is None
    errors = " ".join(error.value for error in at.sidebar.error)
    assert f"{data} is not a results folder (no config.json) but holds CSV files such as" in errors, errors
