import json

import pandas as pd
import pytest

import probing.activations
from probing.cli import main

ARGS = ["--layers", "-1,-5", "--probes", "linear,tiny,mass_mean", "--epochs", "2"]


@pytest.fixture
def workspace(tmp_path, small_saplma, shared_cache):
    """A small SAPLMA CSV, and a fresh activation cache that reuses the converted model."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(shared_cache / "models", target_is_directory=True)
    return small_saplma.to_csv(tmp_path / "small.csv"), cache, tmp_path


def test_reproduce_writes_every_table_and_second_run_uses_only_the_cache(workspace, monkeypatch, capsys, small_saplma):
    data, cache, tmp = workspace
    unique = len(set(small_saplma.statements))
    out = tmp / "results"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(out), *ARGS]) == 0
    first_print = capsys.readouterr().out
    for name in ["accuracy_mean.csv", "accuracy_mean.md", "accuracy_max.csv", "accuracy_max.md", "per_topic.csv",
                 "directions_cosine.csv", "directions_sign.csv", "directions_matrices.csv", "dynamics.csv",
                 "config.json", "probes/linear_layer-1.pt", "probes/tiny_layer-5.pt"]:
        assert (out / name).is_file(), name
    mean = pd.read_csv(out / "accuracy_mean.csv")
    assert list(mean.columns) == ["probe", "-5", "-1"] and mean["probe"].tolist() == ["linear", "tiny", "mass_mean"]
    per_topic = pd.read_csv(out / "per_topic.csv")
    assert {"layer", "probe", "heldout", "seed", "accuracy", "auroc", "text_only_accuracy",
            "shuffled_accuracy"} <= set(per_topic.columns)
    cosine = pd.read_csv(out / "directions_cosine.csv")
    assert list(cosine.columns[:1]) == ["layer"] and {"mean", "random_baseline"} <= set(cosine.columns)
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["statements"] == 240 and len(config["dataset"]["sha256"]) == 64
    assert config["position"] == "last" and config["grid"]["layers"] == [-1, -5]
    assert config["statements_extracted_this_run"] == unique and "torch" in config["packages"]

    def no_model(*args, **kwargs):
        raise AssertionError("the second run loaded the model")

    monkeypatch.setattr(probing.activations, "load_model", no_model)
    again = tmp / "again"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(again), *ARGS]) == 0
    second_print = capsys.readouterr().out
    for name in ["accuracy_mean.csv", "accuracy_max.csv", "directions_cosine.csv", "per_topic.csv"]:
        assert (out / name).read_text() == (again / name).read_text(), name
    tables = lambda printed: printed.split("statements extracted")[1].split("results written")[0]  # noqa: E731
    assert "Mean accuracy over the category splits" in tables(first_print)
    assert tables(second_print) == tables(first_print)
    assert json.loads((again / "config.json").read_text())["statements_extracted_this_run"] == 0


def test_extract_then_score_and_data(workspace, capsys, small_saplma):
    data, cache, tmp = workspace
    unique = len(set(small_saplma.statements))
    assert main(["extract", "--dataset", str(data), "--cache", str(cache)]) == 0
    assert f"{unique} statement(s) computed, 0 already cached" in capsys.readouterr().out
    assert main(["extract", "--dataset", str(data), "--cache", str(cache)]) == 0
    assert f"0 statement(s) computed, {unique} already cached" in capsys.readouterr().out

    out = tmp / "results"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(out),
                 "--layers", "-1,-9", "--probes", "linear", "--no-controls"]) == 0
    capsys.readouterr()
    assert main(["score", "Paris is the capital of France.", "--results", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "P(true) for 'Paris is the capital of France.'" in printed
    values = [float(line.split("|")[2]) for line in printed.splitlines() if line.startswith("| -")]
    assert len(values) == 2 and all(0 <= v <= 1 for v in values)

    target = tmp / "builtin.csv"
    assert main(["data", "--dataset", "builtin", "--out", str(target)]) == 0
    written = pd.read_csv(target)
    assert list(written.columns[:3]) == ["statement", "label", "topic"] and len(written) >= 5000


def test_bad_inputs_exit_with_a_message_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("statement,label\nParis is in France.,yes\n")
    assert main(["extract", "--dataset", str(bad), "--cache", str(tmp_path)]) == 2
    assert "line 2: label 'yes' is not 0, 1, true or false" in capsys.readouterr().err
    assert main(["extract", "--dataset", "builtin", "--model", "./missing-folder", "--cache", str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["score", "Hello.", "--results", str(tmp_path / "none")]) == 2
    assert "not a results folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "--probes", "linear,giant"])
    assert "unknown probe kind(s) ['giant']" in capsys.readouterr().err
