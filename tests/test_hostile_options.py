"""Absurd values of options: steering alphas whose answers overflow, an NIE divided by noise, grid options
far out of range, an allocation that fails, and a second model of `compare --models` that does not exist."""

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from probing.data.builtin import load_builtin
from probing.cli.commands import out_of_memory_is_an_error
from probing.cli.main import main
from probing.study.config import StudyConfig
from probing.constants import NIE_MIN_Z
from probing.probes.estimators import make_probe
from probing.analyses.steering import SteeringDirection, baseline_gap, dose_response, true_false_margins
from test_steering import answer_direction

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path):
    """24 built-in statements per topic as a CSV, and a fresh activation cache."""
    cache = tmp_path / "cache"
    cache.mkdir()
    return load_builtin(per_topic=24).to_csv(tmp_path / "small.csv"), cache, tmp_path


def test_overflowing_answers_are_left_out_and_counted_and_a_noisy_nie_is_undefined(workspace, capsys):
    data, cache, tmp = workspace
    out = tmp / "study"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(out), "--layers", "-9",
                 "--probes", "linear", "--no-controls"]) == 0
    capsys.readouterr()
    assert main(["steer", "--results", str(out), "--dataset", str(data), "--cache", str(cache), "--layers", "-9",
                 "--alphas", "-2,0,2,1e39", "--directions", "mass_mean,random", "--statements", "24"]) == 0
    printed = capsys.readouterr()
    assert "warning: --alphas 1e+39: beyond +-100 class-mean distances" in printed.err
    table = pd.read_csv(out / "steering.csv")
    absurd, sane = table[table.alpha == 1e39], table[table.alpha != 1e39]
    assert (absurd.non_finite == 24).all() and (sane.non_finite == 0).all()
    assert absurd[["flipped", "shift_true", "shift_false", "margin_true", "margin_false"]].isna().all().all()
    assert sane[["flipped", "shift_true", "shift_false"]].notna().all().all()
    # the embedded model hardly tells true from false statements: its gap is within NIE_MIN_Z standard errors
    gap, se = table.baseline_gap.iloc[0], table.baseline_gap_se.iloc[0]
    assert not gap > NIE_MIN_Z * se and table.nie.isna().all()
    markdown = (out / "steering.md").read_text()
    assert "| undefined |" in markdown and "NIE is undefined: without steering" in markdown
    assert "48 steered answer(s) were not finite numbers" in markdown  # 24 per direction at alpha 1e39
    assert "| flipped | non_finite | nie |" in markdown
    assert "note: NIE is undefined" in printed.err and "| undefined |" in printed.out


def test_nie_is_defined_where_the_models_answers_separate_the_labels(model):
    """Label the statements by the model's own answer (the upper half true): the gap is then far above its
    noise, and a planted direction that raises P(" True") moves false statements part of the way."""
    statements = load_builtin(per_topic=4).statements[:24]
    base = true_false_margins(model, statements)[:, 0]
    labels = (base > np.median(base)).astype(int)
    gap, se = baseline_gap(base, labels)
    true, false = base[labels == 1], base[labels == 0]
    assert gap == pytest.approx(true.mean() - false.mean())
    assert se == pytest.approx(math.sqrt(true.var(ddof=1) / len(true) + false.var(ddof=1) / len(false)))
    assert gap > NIE_MIN_Z * se
    direction = SteeringDirection("planted", -1, answer_direction(model), 1.0)
    table = dose_response(model, statements, labels, {"planted": direction}, (-1,), (-4.0, 0.0, 4.0), "last")
    assert table.set_index("alpha").nie.tolist() == pytest.approx(
        [(true_false_margins(model, statements, layers=(-1,), vector=direction.vector, alphas=(-4.0,),
                             position="last")[labels == 1, 0].mean() - true.mean()) / -gap, 0.0,
         (true_false_margins(model, statements, layers=(-1,), vector=direction.vector, alphas=(4.0,),
                             position="last")[labels == 0, 0].mean() - false.mean()) / gap])
    assert (table.nie[table.alpha != 0] > 0).all() and (table.non_finite == 0).all()
    assert all(math.isnan(value) for value in baseline_gap(base[:3], np.array([1, 0, 0])))  # one true: no spread


ABSURD = {
    "--seeds": ("1000000", "argument --seeds: must be between 1 and 100, got 1000000"),
    "--epochs": ("100000", "argument --epochs: must be between 1 and 1000, got 100000"),
    "--weight-decay": ("1e9", "argument --weight-decay: must be between 0 and 1, got 1e+09"),
    "--C": ("1e12", "argument --C: must be between 1e-06 and 1e+06, got 1e+12"),
    "--lr": ("10", "argument --lr: must be between 1e-06 and 1, got 10"),
    "--batch-size": ("100000000", "argument --batch-size: must be between 1 and 65536, got 100000000"),
    "--ccs-seeds": ("1000", "argument --ccs-seeds: must be between 0 and 100, got 1000"),
}


@pytest.mark.parametrize("option", ABSURD)
def test_absurd_grid_options_name_the_option_and_its_range(option, capsys):
    value, expected = ABSURD[option]
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", option, value])
    assert exit_.value.code == 2 and expected in capsys.readouterr().err
    name = option.removeprefix("--").replace("-", "_")
    with pytest.raises(ValueError, match=f"StudyConfig.{name}: must be between"):
        StudyConfig(**{name: type(getattr(StudyConfig(), name))(float(value))})


def test_reproduce_with_a_huge_batch_size_is_one_error_line_before_anything_loads(tmp_path):
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "probing", "reproduce", "--batch-size", "100000000",
                               "--cache", str(tmp_path / "cache")], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert finished.returncode == 2 and "Traceback" not in finished.stderr
    assert "error: argument --batch-size: must be between 1 and 65536" in finished.stderr.strip().splitlines()[-1]
    assert time.perf_counter() - started < 10 and not (tmp_path / "cache").exists()


def test_a_batch_beyond_the_rows_trains_as_one_batch_of_all_of_them(small_saplma, model, tmp_path):
    from probing.store.activations import Activations

    subset = small_saplma.subset(per_topic=8, seed=0)
    features = Activations(model=model, cache_dir=tmp_path).layer(subset.statements, -5)
    huge = make_probe("tiny", batch_size=65536, epochs=2).fit(features, subset.labels)
    whole = make_probe("tiny", batch_size=len(features), epochs=2).fit(features, subset.labels)
    for a, b in zip(huge.weights_ + huge.biases_, whole.weights_ + whole.biases_):
        np.testing.assert_array_equal(a, b)


def test_a_failed_allocation_is_one_error_that_says_what_to_lower():
    config = StudyConfig(batch_size=4096)
    with pytest.raises(MemoryError, match=r"out of memory \(.*allocate.*\): lower --batch-size \(now 4096\)"):
        with out_of_memory_is_an_error(config):
            torch.empty(2**50, dtype=torch.uint8)  # a petabyte: the allocator refuses it
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through unchanged
        with out_of_memory_is_an_error(config):
            raise RuntimeError("unrelated")


@pytest.mark.parametrize("models, expected", [
    ("embedded,./no-such-model", "Model './no-such-model': no such folder"),
    ("embedded,embeded", "Model 'embeded' is not in the local Hugging Face cache"),
    ("embedded,missing.gguf", "Model 'missing.gguf': no such GGUF file"),
])
def test_compare_checks_both_models_before_training_the_first(models, expected, workspace, monkeypatch, capsys):
    data, cache, tmp = workspace
    monkeypatch.chdir(tmp)  # results/ would land here
    started = time.perf_counter()
    assert main(["compare", "--models", models, "--dataset", str(data), "--cache", str(cache), "--layers", "-9",
                 "--probes", "linear", "--no-controls", "--out", "cmp"]) == 2
    assert expected in capsys.readouterr().err
    assert time.perf_counter() - started < 30
    assert not (tmp / "results").exists() and not (cache / "activations").exists()  # A was not started
