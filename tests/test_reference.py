"""The check that ties the engine to the study: docs/reference.md's sanity figures for the embedded model."""

import pytest

from probing.store.activations import Activations
from probing.analyses.directions import compare_directions
from probing.study.config import StudyConfig
from probing.analyses.grid import run_grid

# docs/reference.md, "Sanity figures for the embedded CPU model": last token (with its period),
# standardised features, logistic regression with C=0.1, mean over the six category splits.
REFERENCE_MEAN = {-1: 0.529, -5: 0.539, -9: 0.548, -13: 0.556, -17: 0.564}
REFERENCE_MAX = {-1: 0.564, -5: 0.587, -9: 0.617, -13: 0.634, -17: 0.616}


@pytest.fixture(scope="module")
def reference_grid(saplma, model, shared_cache):
    activations = Activations(model=model, position="last", cache_dir=shared_cache)
    texts = saplma.statements
    config = StudyConfig(layers=tuple(REFERENCE_MEAN), probes=("linear",), linear_solver="lbfgs", C=0.1,
                        controls=False)
    return run_grid(saplma, lambda layer: activations.layer(texts, layer), config)


def test_linear_category_split_accuracy_matches_reference(reference_grid):
    mean = reference_grid.accuracy_table("mean").set_index("probe").loc["linear"]
    best = reference_grid.accuracy_table("max").set_index("probe").loc["linear"]
    for layer, expected in REFERENCE_MEAN.items():
        assert mean[str(layer)] == pytest.approx(expected, abs=0.03), layer
        assert best[str(layer)] == pytest.approx(REFERENCE_MAX[layer], abs=0.05), layer


def test_split_directions_agree_far_above_chance(reference_grid):
    cosine, sign, _ = compare_directions(reference_grid, "linear")
    assert (cosine["mean"] > cosine["random_p95"] + 0.3).all()
    assert (sign["mean"] > sign["random_p95"] + 0.1).all()
