"""Comparing two studies: layers aligned by relative depth, a study against itself, mismatches refused."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from probing.store.activations import Activations
from probing.data.builtin import load_builtin
from probing.cli.main import main
from probing.analyses.compare import align_by_depth, compare_studies, differences, relative_depth
from probing.study.config import StudyConfig
from probing.study.study import Study


@pytest.fixture(scope="module")
def studies(model, shared_cache, tmp_path_factory):
    """Two small real studies of the embedded model: the same statements twice (A, B), and other statements (C)."""
    activations = Activations(model=model, cache_dir=shared_cache)
    config = StudyConfig(layers=(-9, -5, -1), probes=("linear", "mass_mean"), controls=False)
    folder = tmp_path_factory.mktemp("compare")
    same = load_builtin(per_topic=24)
    other = load_builtin(per_topic=24, polarity="affirmative")
    def reproduce(dataset, out):
        return Study(config, dataset=dataset, activations=activations).reproduce(folder / out)

    return reproduce(same, "a"), reproduce(same, "b"), reproduce(other, "c")


def test_relative_depth_aligns_models_of_different_depth():
    assert relative_depth(-1, 31) == 1.0 and relative_depth(-31, 31) == 0.0 and relative_depth(15, 31) == 0.5
    # SmolLM2-135M (30 blocks) against Gemma-3-270M (18 blocks)
    pairs = align_by_depth([-9, -1, -17], 31, list(range(-18, 0)), 19).set_index("layer_a")
    assert pairs.loc[-1, "layer_b"] == -1 and pairs.loc[-9, "layer_b"] == -6 and pairs.loc[-17, "layer_b"] == -11
    assert (pairs["depth_a"] - pairs["depth_b"]).abs().max() <= 0.5 / 18 + 1e-12
    # Llama-2-7B (32 blocks) against Llama-2-13B (40 blocks): the middle meets the middle
    pairs = align_by_depth([-17, -1], 33, list(range(-40, 0)), 41).set_index("layer_a")
    assert pairs.loc[-17, "layer_b"] == -21 and pairs.loc[-1, "layer_b"] == -1
    with pytest.raises(ValueError, match="layer -40 does not exist"):
        relative_depth(-40, 31)


def test_a_study_against_itself_differs_nowhere(studies):
    a, b, _ = studies
    assert differences(a, b) == []
    comparison = compare_studies(a, b)
    for table in (comparison.by_depth, comparison.by_index):
        assert len(table) == 3 * 2 and (table["difference"] == 0).all()
        assert (table["layer_a"] == table["layer_b"]).all()
    np.testing.assert_allclose(comparison.by_index["accuracy_a"].sort_values(),
                               a.split_results().groupby(["probe", "layer"])["accuracy"].mean().sort_values())
    assert set(comparison.directions.model) == {"embedded (A)", "embedded (B)"}


def test_other_statements_or_settings_are_refused_with_what_differs(studies, tmp_path, capsys):
    a, _, c = studies
    with pytest.raises(ValueError, match=r"not comparable: dataset: builtin \(sha256 [0-9a-f]{12}\) vs builtin"):
        compare_studies(a, c)
    shown = compare_studies(a, c, allow_mismatch=True)
    assert shown.warnings and shown.warnings[0].startswith("dataset:")
    retrained = replace(a, config=replace(a.config, epochs=9))
    assert differences(a, retrained) == ["epochs: 5 vs 9"]
    assert main(["compare", str(a.folder), str(c.folder), "--out", str(tmp_path / "x")]) == 2
    assert "not comparable: dataset:" in capsys.readouterr().err
    assert main(["compare", str(a.folder), str(c.folder), "--out", str(tmp_path / "y"), "--allow-mismatch"]) == 0
    printed = capsys.readouterr()
    assert "warning: not comparable, shown anyway: dataset:" in printed.err
    for name in ("compare_depth.csv", "compare_index.csv", "compare_directions.csv", "compare.md"):
        assert (tmp_path / "y" / name).is_file()
    assert "layers aligned by relative depth" in printed.out


def test_two_models_are_computed_once_and_compared(tmp_path, shared_cache, monkeypatch, capsys):
    from test_models import require_gemma

    require_gemma()
    data = load_builtin(per_topic=24).to_csv(tmp_path / "small.csv")
    monkeypatch.chdir(tmp_path)  # results/ lands here
    command = ["compare", "--models", "embedded,gemma-3-270m", "--dataset", str(data), "--cache", str(shared_cache),
               "--layers", "-9,-1", "--probes", "linear", "--no-controls", "--out", "cmp"]
    assert main(command) == 0
    made = sorted((tmp_path / "results").iterdir())
    assert len(made) == 2
    depth = pd.read_csv(tmp_path / "cmp" / "compare_depth.csv")
    assert depth[["layer_a", "layer_b"]].values.tolist() == [[-9, -6], [-1, -1]]  # 22/30 meets 13/18
    assert main(command) == 0  # the folders are found again: nothing is computed twice
    assert sorted((tmp_path / "results").iterdir()) == made
    assert "gemma-3-270m: " in capsys.readouterr().err
    assert main(["compare", "a", "b", "c", "--out", "x"]) == 2
    assert "compare takes two results folders, or --models A,B" in capsys.readouterr().err
