import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import probing.store.activations
from probing.store.activations import Activations
from probing.cli.main import build_parser, main
from probing.cli.options import study_config
from probing.cli.output import PlainProgress
from probing.options import OPTION_GROUPS
from probing.study.config import StudyConfig

ARGS = ["--layers", "-1,-5", "--probes", "linear,tiny,mass_mean", "--epochs", "2"]


@pytest.fixture
def workspace(tmp_path, small_saplma):
    """A small SAPLMA CSV, and a fresh activation cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
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
    assert StudyConfig.from_dict(config["study"]) == StudyConfig(
        dataset=str(data), cache=str(cache), layers=(-1, -5), probes=("linear", "tiny", "mass_mean"), epochs=2)
    assert config["statements_extracted_this_run"] == unique and "torch" in config["packages"]

    def no_model(*args, **kwargs):
        raise AssertionError("the second run loaded the model")

    monkeypatch.setattr(probing.store.activations, "load_model", no_model)
    again = tmp / "again"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(again), *ARGS]) == 0
    second_print = capsys.readouterr().out
    for name in ["accuracy_mean.csv", "accuracy_max.csv", "directions_cosine.csv", "per_topic.csv"]:
        assert (out / name).read_text() == (again / name).read_text(), name
    tables = lambda printed: printed.split("statements extracted")[1].split("results written")[0]  # noqa: E731
    assert "Mean accuracy over the category splits" in tables(first_print)
    assert tables(second_print) == tables(first_print)
    assert json.loads((again / "config.json").read_text())["statements_extracted_this_run"] == 0


def test_extract_then_score_and_data(workspace, capsys, small_saplma, monkeypatch):
    data, cache, tmp = workspace
    unique = len(set(small_saplma.statements))
    assert main(["extract", "--dataset", str(data), "--cache", str(cache)]) == 0
    assert f"{unique} statement(s) computed here, 0 already cached" in capsys.readouterr().out
    assert main(["extract", "--dataset", str(data), "--cache", str(cache)]) == 0
    assert f"0 statement(s) computed here, {unique} already cached" in capsys.readouterr().out

    monkeypatch.chdir(tmp)  # without --out, a new folder under ./results; score reads the newest
    (tmp / "results").mkdir()
    (tmp / "results" / "older").mkdir()
    (tmp / "results" / "older" / "config.json").write_text("{}")
    for _ in range(2):
        assert main(["reproduce", "--dataset", str(data), "--cache", str(cache),
                     "--layers", "-1,-9", "--probes", "linear", "--no-controls", "--with-random"]) == 0
    captured = capsys.readouterr()
    assert "Accuracy on the random split\n\n| probe | -9 | -1 |" in captured.out
    made = sorted(path for path in (tmp / "results").iterdir() if path.name != "older")
    assert len(made) == 2 and all(re.fullmatch(r"embedded-small-study-\d{8}-\d{6}(-2)?", p.name) for p in made)
    out = max(made, key=lambda path: (path / "config.json").stat().st_mtime)
    assert f"results go to {out.relative_to(tmp)}/" in captured.err
    assert pd.read_csv(out / "accuracy_random.csv")["probe"].tolist() == ["linear"]
    assert main(["score", "Paris is the capital of France.", "--cache", str(cache)]) == 0
    assert f"note: probes of {out.relative_to(tmp)} (the newest results folder)" in capsys.readouterr().err
    assert main(["score", "Paris is the capital of France.", "--results", str(out), "--cache", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert "P(true) for 'Paris is the capital of France.'" in printed
    values = [float(line.split("|")[2]) for line in printed.splitlines() if line.startswith("| -")]
    assert len(values) == 2 and all(0 <= v <= 1 for v in values)

    probe = out / "probes" / "linear_layer-9.pt"
    probe.write_bytes(probe.read_bytes()[: probe.stat().st_size // 2])  # a truncated copy, as after a full disk
    assert main(["score", "Paris is the capital of France.", "--results", str(out), "--cache", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {probe} is damaged or not a probe saved by `reproduce`") and "Delete it" in err
    probe.unlink()
    # the other probe
    assert main(["score", "Paris is the capital of France.", "--results", str(out), "--cache", str(cache)]) == 0
    assert "| -1 |" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    del config["model"]["dtype"]
    (out / "config.json").write_text(json.dumps(config))
    assert main(["score", "Paris is the capital of France.", "--results", str(out), "--cache", str(cache)]) == 2
    assert ("has no 'model.dtype' entry: the folder may have been written by another version of this tool"
            in capsys.readouterr().err)

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


def test_options_are_the_study_configs_fields():
    """One source: every option's default is StudyConfig's, and each command has its groups of fields."""
    def parsed(*argv: str) -> dict:
        return vars(build_parser().parse_args(list(argv)))

    fields_of = {group: {name for name, spec in StudyConfig.__dataclass_fields__.items()
                         if spec.metadata["group"] == group} for group in OPTION_GROUPS}
    assert set(parsed("reproduce")) - {"command", "out", "overwrite"} == set().union(*fields_of.values())
    extract = fields_of["model"] | fields_of["dataset"] | fields_of["extraction"]
    assert set(parsed("extract")) - {"command", "shard", "node"} == extract
    assert set(parsed("data", "--out", "x.csv")) - {"command", "out"} == fields_of["dataset"]
    assert study_config(build_parser().parse_args(["reproduce"])) == StudyConfig()
    args = build_parser().parse_args(["reproduce", "--layers=-1,-3", "--probes", "tiny,mass_mean", "--no-controls",
                                      "--with-random", "--weight-decay", "0.01", "--C", "2", "--dtype", "float32"])
    assert study_config(args) == StudyConfig(layers=(-1, -3), probes=("tiny", "mass_mean"), controls=False,
                                             with_random=True, weight_decay=0.01, C=2.0, dtype="float32")


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m probing ARGS`` in a fresh process: (the finished process, seconds of wall time)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "probing", *args], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=300)
    return finished, time.perf_counter() - started


@pytest.fixture
def tiny_csv(tmp_path, small_saplma):
    """24 real statements (2 true and 2 false per topic)."""
    return small_saplma.subset(per_topic=4, seed=0).to_csv(tmp_path / "tiny.csv")


def write_csv(path: Path, rows: list[tuple[str, int, str]]) -> Path:
    pd.DataFrame(rows, columns=["statement", "label", "topic"]).to_csv(path, index=False)
    return path


FAST_FAILURES = {
    "missing dataset": (["data", "--dataset", "missing.csv", "--out", "{tmp}/x.csv"], {}, "missing.csv: no such file"),
    "data --out a folder": (["data", "--dataset", "builtin", "--out", "{tmp}"], {}, "is a folder; pass the CSV file"),
    "--cache a file": (["extract", "--dataset", "{csv}", "--cache", "README.md"], {}, "--cache README.md is a file"),
    "--out a file": (["reproduce", "--dataset", "{csv}", "--out", "README.md"], {}, "--out README.md is a file"),
    "--device foo": (["extract", "--dataset", "{csv}", "--device", "foo"], {}, "'foo' is not a device"),
    "--lr inf": (["reproduce", "--lr", "inf"], {}, "argument --lr: must be a finite number > 0, got inf"),
    "--lr nan": (["reproduce", "--lr", "nan"], {}, "argument --lr: must be a finite number > 0"),
    "--epochs 0": (["reproduce", "--epochs", "0"], {}, "argument --epochs: must be >= 1, got 0"),
    "--C -1": (["reproduce", "--C", "-1"], {}, "argument --C: must be a finite number > 0, got -1"),
    "--weight-decay -1": (["reproduce", "--weight-decay", "-1"], {},
                          "argument --weight-decay: must be a finite number >= 0"),
    "--probes twice": (["reproduce", "--probes", "tiny,tiny"], {},
                       "argument --probes: probe kind(s) ['tiny'] given more"),
    "--seeds 0": (["reproduce", "--seeds", "0"], {}, "argument --seeds: must be >= 1"),
    "--batch-size 0": (["reproduce", "--batch-size", "0"], {}, "argument --batch-size: must be >= 1"),
    "--max-tokens 0": (["extract", "--max-tokens", "0"], {}, "argument --max-tokens: must be >= 1"),
    "--layers twice": (["reproduce", "--layers", "-1,-1"], {}, "layer(s) [-1] given more than once"),
    "RANK=abc": (["extract", "--dataset", "{csv}", "--cache", "{tmp}/cache"], {"RANK": "abc", "WORLD_SIZE": "2"},
                 "environment variable RANK='abc' is not an integer"),
    "LOCAL_RANK=x": (["extract", "--dataset", "{csv}", "--cache", "{tmp}/cache"],
                     {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK='x' is not an integer"),
    "RANK beyond WORLD_SIZE": (["extract", "--dataset", "{csv}", "--cache", "{tmp}/cache"],
                               {"RANK": "2", "WORLD_SIZE": "2"}, "the rank must be in 0..WORLD_SIZE-1"),
    "no results folder": (["score", "Hello.", "--results", "{tmp}/none"], {}, "is not a results folder"),
}


@pytest.mark.parametrize("case", FAST_FAILURES)
def test_bad_options_and_paths_fail_fast_with_one_error_line(case, tmp_path, tiny_csv):
    """Checked before torch is imported: the message arrives in well under a second (2 s bound:
    the machine is shared), names the problem, and is no traceback."""
    args, env, expected = FAST_FAILURES[case]
    args = [a.format(tmp=tmp_path, csv=tiny_csv) for a in args]
    finished, seconds = run_cli(*args, env=env)
    assert finished.returncode == 2, finished.stderr
    assert expected in finished.stderr and "Traceback" not in finished.stderr, finished.stderr
    assert "error: " in finished.stderr.strip().splitlines()[-1]
    assert seconds < 2, f"{case}: {seconds:.2f} s"
    assert not (tmp_path / "cache" / "activations").exists()  # nothing was started


def test_importing_the_package_and_the_command_line_loads_no_torch():
    code = ("import sys, probing, probing.cli.main\n"
            "from probing import POSITIONS, PROBE_KINDS\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "from probing import Activations\n"
            "from probing.dashboard import charts\n"
            "assert 'torch' in sys.modules and Activations.__name__ == 'Activations'\n"
            "assert [n for n in probing.__all__ if not hasattr(probing, n)] == []\n")
    finished = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr


def test_main_sets_tokenizers_parallelism_on_every_path(monkeypatch, tmp_path, tiny_csv):
    """``python -m probing`` runs __main__.py, never cli.py's own module code: main() sets it."""
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    assert main(["data", "--dataset", str(tiny_csv), "--out", str(tmp_path / "copy.csv")]) == 0
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"


def test_layers_the_model_lacks_are_refused_before_extraction(workspace, capsys, tiny_csv):
    _, cache, tmp = workspace
    texts = pd.read_csv(tiny_csv)["statement"].tolist()
    assert main(["reproduce", "--dataset", str(tiny_csv), "--cache", str(cache), "--out", str(tmp / "out"),
                 "--layers", "-1,99,-32"]) == 2
    assert ("layer(s) [99, -32] do not exist: this model has 31 hidden states (the embeddings and 30 blocks), "
            "so layers run from -31 to 30") in capsys.readouterr().err
    assert len(Activations("embedded", cache_dir=cache).missing(texts)) == len(set(texts))
    assert not (tmp / "out").exists()


def test_one_class_data_and_a_one_statement_topic_are_refused_before_extraction(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the splits were checked")

    monkeypatch.setattr(probing.store.activations, "load_model", no_model)
    cache = tmp_path / "cache"
    true_only = write_csv(tmp_path / "true.csv", [(f"Statement {i} is true.", 1, "ab"[i % 2]) for i in range(20)])
    assert main(["reproduce", "--dataset", str(true_only), "--cache", str(cache), "--out", str(tmp_path / "a")]) == 2
    assert "true: all 20 statements are true (label 1)" in capsys.readouterr().err

    rows = [(f"Paris is in country number {i}.", i % 2, "cities") for i in range(20)] + [("Owls hoot.", 1, "animals")]
    lonely = write_csv(tmp_path / "lonely.csv", rows)
    for split, where in (("category", "holding out topic 'cities' leaves 1 statement(s) to train on, all true"),
                         ("within", "topic 'animals' (--split within) leaves no statements to train on")):
        assert main(["reproduce", "--dataset", str(lonely), "--cache", str(cache), "--out", str(tmp_path / "b"),
                     "--split", split]) == 2
        err = capsys.readouterr().err
        assert where in err and "(true/false per topic: animals 1/0, cities 10/10)" in err, err
        assert "Traceback" not in err and "vocabulary" not in err and "at least 2 classes" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_max_tokens_reaches_the_extraction(workspace, capsys, tiny_csv):
    _, cache, _ = workspace
    assert main(["extract", "--dataset", str(tiny_csv), "--cache", str(cache), "--max-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "--max-tokens" in err and "Traceback" not in err, err


def test_device_that_is_not_here_is_refused(tmp_path, capsys, tiny_csv):
    assert main(["extract", "--dataset", str(tiny_csv), "--cache", str(tmp_path / "cache"), "--device", "cuda:99"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "cuda:99" in err and "Traceback" not in err, err


def test_progress_is_printed_as_plain_lines_when_stderr_is_not_a_terminal(workspace, tiny_csv):
    _, cache, _ = workspace
    unique = len(set(pd.read_csv(tiny_csv)["statement"]))
    finished, _ = run_cli("extract", "--dataset", str(tiny_csv), "--cache", str(cache))
    assert finished.returncode == 0, finished.stderr
    lines = [line for line in finished.stderr.splitlines() if line.startswith("extracting: ")]
    assert lines[0] == f"extracting: 0/{unique} statements (0 %)"
    assert re.fullmatch(rf"extracting: {unique}/{unique} statements \(100 %\), [0-9.]+/s, took \d+ s", lines[-1])
    again, _ = run_cli("extract", "--dataset", str(tiny_csv), "--cache", str(cache))
    assert "extracting: nothing to do" in again.stderr


def test_plain_progress_prints_every_tenth_or_every_ten_seconds():
    now = [0.0]
    stream = io.StringIO()
    progress = PlainProgress("training", "probes", stream=stream, clock=lambda: now[0])
    for done in range(1001):
        # 100 probes/s, then 2/s in the second half: there a line every 10 s comes before every 10 %.
        now[0] = done * 0.01 if done < 500 else 5 + (done - 500) * 0.5
        progress(done, 1000)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "training: 0/1000 probes (0 %)"
    assert lines[1] == "training: 100/1000 probes (10 %), 100.0/s, about 9 s left"
    assert lines[-1].startswith("training: 1000/1000 probes (100 %)") and lines[-1].endswith("took 4 min")
    done_at = [int(line.split()[1].split("/")[0]) for line in lines]
    assert done_at[:6] == [0, 100, 200, 300, 400, 500] and done_at[6:9] == [520, 540, 560]  # every 10 s
    assert len(lines) == len(set(done_at))  # no line twice


def test_a_repaired_cache_is_one_warning_line(workspace, capsys, small_saplma):
    data, cache, _ = workspace
    assert main(["extract", "--dataset", str(data), "--cache", str(cache)]) == 0
    capsys.readouterr()
    store = Activations("embedded", cache_dir=cache).store
    store._cache.set((store.namespace, "chunks"), {"not": "a list"})  # damage the chunk list
    store.close()
    assert main(["extract", "--dataset", str(data), "--cache", str(cache)]) == 0
    captured = capsys.readouterr()
    assert "\nwarning: the list of cached chunks for this model was damaged; it was rebuilt" in captured.err
    assert "UserWarning" not in captured.err and "0 statement(s) computed here" in captured.out

