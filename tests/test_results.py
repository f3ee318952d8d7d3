"""StudyResult: one object for a study, saved to and loaded from a results folder exactly; folders of the
committed format still load; a folder from a GPU machine scores here; no pickle anywhere."""

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from probing.store.activations import Activations
from probing.cli.main import main
from probing.study.config import StudyConfig
from probing.analyses.grid import Cell, make_split, train_cells
from probing.model.devices import default_device
from probing.probes.adam import training_dtype
from probing.study.results import StudyResult, read_table
from probing.study.folder import ResultsError
from probing.study.assemble import cell_study
from probing.study.study import Study
from support import Recorder, assert_same_study

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "data" / "results-1b0dd61"
"""Written by `python -m probing reproduce` at commit 1b0dd61 (before the "study" entry and the split column):
24 SAPLMA statements, layers -1,-5, probes linear,mass_mean."""


@pytest.fixture(scope="module")
def activations(model, shared_cache):
    return Activations(model=model, cache_dir=shared_cache)


@pytest.fixture(scope="module")
def study(small_saplma, activations):
    config = StudyConfig(layers=(-1, -5), probes=("linear", "tiny", "mass_mean"), epochs=2, with_random=True,
                         dataset="small", cache=str(activations.cache_dir))
    recorder = Recorder()
    result = Study(config, dataset=small_saplma, activations=activations, reporter=recorder,
                   command="tests/test_results.py").run()
    # 2 layers x 3 kinds x (6 topics + the random split), then 2 x 3 final probes: one count throughout
    assert recorder.counted("training") == [(done, 48) for done in range(1, 49)]
    assert pd.DataFrame(recorder.records).equals(result.results)
    return result


def test_a_study_round_trips_through_its_folder_exactly(study, tmp_path, small_saplma):
    assert study.splits == ["category", "random"]
    assert len(study.split_results("category")) == 2 * 3 * 6 and len(study.split_results("random")) == 2 * 3
    assert set(study.dynamics["split"]) == {"category", "random"} and set(study.probes) == {
        (layer, kind) for layer in (-1, -5) for kind in ("linear", "tiny", "mass_mean")}
    assert study.config.dataset == small_saplma.source and study.meta["dataset"]["statements"] == 240
    tiny_dtype = str(training_dtype("tiny")).removeprefix("torch.")  # the choice itself: test_probe_speed_paths
    assert study.meta["probe_training_dtypes"] == {"tiny": tiny_dtype}  # linear (L-BFGS), mass-mean: float32
    folder = study.save(tmp_path / "study")
    for name in ["accuracy_mean.csv", "accuracy_max.md", "accuracy_random.csv", "per_topic.csv", "dynamics.csv",
                 "directions_cosine.csv", "directions_sign.md", "directions_matrices.csv", "config.json",
                 "probes/tiny_layer-5.pt"]:
        assert (folder / name).is_file(), name
    record = json.loads((folder / "config.json").read_text())
    assert record["study"] == study.config.to_dict() and record["grid"]["layers"] == [-1, -5]
    assert record["position"] == "last" and record["model"]["name"] == "embedded"  # what older readers use

    loaded = StudyResult.load(folder)
    assert loaded.folder == folder
    assert_same_study(loaded, study)
    pd.testing.assert_frame_equal(loaded.accuracy_table("mean"), read_table(folder / "accuracy_mean.csv"))
    pd.testing.assert_frame_equal(loaded.accuracy_table("mean", "random"), read_table(folder / "accuracy_random.csv"))


def test_saving_again_leaves_nothing_of_the_previous_result(study, tmp_path):
    folder = study.save(tmp_path / "study")
    smaller = StudyResult(StudyConfig(layers=(-1,), probes=("linear",)), study.meta,
                          study.split_results("category").query("layer == -1 and probe == 'linear'"),
                          probes={(-1, "linear"): study.probes[-1, "linear"]})
    smaller.save(folder)
    assert sorted(path.name for path in (folder / "probes").iterdir()) == ["linear_layer-1.pt"]
    assert not (folder / "accuracy_random.csv").exists() and not (folder / "directions_cosine.csv").exists()
    loaded = StudyResult.load(folder)
    assert loaded.dynamics.empty and loaded.directions_matrices.empty
    assert loaded.results.equals(smaller.results.reset_index(drop=True))


def test_views_for_the_pages(study):
    tiny = study.cell_dynamics(-5, "tiny")
    assert set(tiny["heldout"]) == set(study.split_results()["heldout"]) and sorted(set(tiny["epoch"])) == [1, 2]
    assert set(study.cell_dynamics(-5, "tiny", split="random")["heldout"]) == {"random"}
    assert len(study.cell_dynamics(-5, "tiny", heldout="animals")) == 2
    per_topic = study.cell_per_topic(-1, "linear")
    assert list(per_topic.columns) == ["topic", "accuracy", "text_only", "shuffled"] and len(per_topic) == 6
    rows = study.split_results().query("layer == -1 and probe == 'linear'").set_index("heldout")
    assert per_topic.set_index("topic")["accuracy"].to_dict() == rows["accuracy"].to_dict()
    text = study.to_markdown("SAPLMA, embedded")
    assert text.startswith("# SAPLMA, embedded\n") and "## Random split accuracy" in text
    assert "## Truth directions: mean pairwise cosine" in text and "| tiny |" in text
    csv = pd.read_csv(pd.io.common.StringIO(study.to_csv()))
    assert len(csv) == len(study.results) and set(csv["split"]) == {"category", "random"}


def test_a_folder_written_by_the_committed_code_still_loads(tmp_path):
    study = StudyResult.load(LEGACY)
    assert study.config == StudyConfig(model="embedded", dtype="bfloat16", cache="cache", dataset="tiny.csv",
                                       layers=(-1, -5), probes=("linear", "mass_mean"))
    assert list(study.results.columns[:5]) == ["model", "layer", "probe", "split", "heldout"]
    assert (study.results["split"] == "category").all() and (study.dynamics["split"] == "category").all()
    assert len(study.results) == 2 * 2 * 6 and set(study.probes) == {(-1, "linear"), (-5, "linear"),
                                                                      (-1, "mass_mean"), (-5, "mass_mean")}
    for statistic in ("mean", "max"):
        pd.testing.assert_frame_equal(study.accuracy_table(statistic), read_table(LEGACY / f"accuracy_{statistic}.csv"))
    assert study.meta["model"]["fingerprint"] == "68d95fb937f80cf419c7c2a4" and "grid" not in study.meta
    assert len(study.directions_matrices) == 2 * 2 * 36
    assert_same_study(StudyResult.load(study.save(tmp_path / "again")), study)  # and it saves in today's format


def test_damaged_or_foreign_folders_are_refused_with_the_file_named(tmp_path):
    folder = shutil.copytree(LEGACY, tmp_path / "copy")
    record = json.loads((folder / "config.json").read_text())
    record["study"] = {**StudyConfig().to_dict(), "colour": "blue"}
    (folder / "config.json").write_text(json.dumps(record))
    with pytest.raises(ResultsError, match=r"config.json: study config: unknown option\(s\) \['colour'\]"):
        StudyResult.load(folder)
    del record["study"]
    (folder / "config.json").write_text(json.dumps(record))
    (folder / "per_topic.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ResultsError, match=r"per_topic.csv is damaged or not a table written by this tool"):
        StudyResult.load(folder)


def test_a_folder_from_a_gpu_machine_scores_on_this_one(study, tmp_path, capsys):
    folder = study.save(tmp_path / "gpu")
    record = json.loads((folder / "config.json").read_text())
    record["study"]["device"] = record["model"]["device"] = "cuda:99"  # no machine here has 100 GPUs
    (folder / "config.json").write_text(json.dumps(record))
    loaded = StudyResult.load(folder)
    assert loaded.config.device is None and loaded.meta["model"]["device"] == "cuda:99"
    recorder = Recorder()
    Study.of_results(loaded, loaded.config.cache, reporter=recorder)
    notes = recorder.notes
    assert len(notes) == 1 and notes[0].startswith(
        f"this study ran on cuda:99 ({record['model']['dtype']}), which this machine lacks: the model runs on "
        f"{default_device()} (")
    assert main(["score", "Paris is the capital of France.", "--results", str(folder),
                 "--cache", loaded.config.cache]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith("note: this study ran on cuda:99") and "| -5 |" in captured.out


def test_one_trained_probe_is_a_study_that_score_reads(small_saplma, activations, tmp_path, capsys):
    config = StudyConfig(epochs=2, cache=str(activations.cache_dir))
    features = activations.layer(small_saplma.statements, -5)
    (cell,) = train_cells(features, small_saplma, -5, "small", [Cell(make_split(small_saplma, "random"), seed=3)],
                          config, model_name="embedded")
    single = cell_study(small_saplma, activations, config, cell)
    assert single.config.layers == (-5,) and single.config.probes == ("small",) and single.config.split == "random"
    assert single.splits == ["random"] and single.accuracy_table().set_index("probe").loc["small", "-5"] == \
        cell.row["accuracy"]
    folder = single.save(tmp_path / "one")
    assert_same_study(StudyResult.load(folder), single)
    assert main(["score", "Water boils at 100 degrees Celsius at sea level.", "--results", str(folder),
                 "--cache", config.cache]) == 0
    assert "| -5 |" in capsys.readouterr().out


def test_no_pickle_in_the_package_or_the_pages():
    """Loading a pickle runs code from a file: results are CSV, JSON and weights-only state dicts."""
    imports = re.compile(r"^\s*(import|from)\s+(pickle|_pickle|cPickle|dill|joblib|shelve|cloudpickle)\b", re.M)
    unsafe_load = re.compile(r"torch\.load\((?![^)]*weights_only=True)")
    sources = [path for folder in ("probing", "pages") for path in sorted((ROOT / folder).rglob("*.py"))]
    found = [str(path.relative_to(ROOT)) for path in sources
             if imports.search(text := path.read_text()) or unsafe_load.search(text) or "pickle.load" in text]
    # The one exception: `cache migrate` reads old caches with an unpickler that refuses every lookup.
    assert found == ["probing/store/migration.py"]
    migration = (ROOT / found[0]).read_text()
    assert "Unpickler.load" not in migration and migration.count(".load()") == 1
    assert "def find_class(self, module, name):\n        raise pickle.UnpicklingError" in migration
