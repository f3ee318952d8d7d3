"""Shared fixtures: the real embedded model and the real SAPLMA data, loaded once per session."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from probing.model.loading import load_model  # noqa: E402
from probing.data.datasets import load_dataset  # noqa: E402
from probing.data.statements import ConflictsDropped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The SAPLMA data is not part of this repository: it lies beside it, or where PROBING_SAPLMA says.
SAPLMA = Path(os.environ.get("PROBING_SAPLMA", ROOT.parent / "shared" / "datasets" / "azaria-mitchell"))
# The converted embedded model and activations shared by tests live here, so a
# second test run (and the reference check) reuses them; tests that exercise
# caching itself use their own temporary folders.
SHARED_CACHE = Path(os.environ.get("PROBING_TEST_CACHE", ROOT / "cache" / "tests"))
# Models are converted once into the test cache, never into the user's model cache; every process
# the tests start inherits this.
os.environ["PROBING_MODELS"] = str(SHARED_CACHE / "models")


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    return SHARED_CACHE


@pytest.fixture(scope="session")
def model():
    return load_model("embedded")


def require_saplma() -> Path:
    """The SAPLMA folder; without it the test skips, except in CI (CI=true), where it fails."""
    if not SAPLMA.is_dir():
        reason = (f"the SAPLMA True-False data is not at {SAPLMA}: put the six "
                  "<topic>_true_false.csv files there or set PROBING_SAPLMA")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must run every test: {reason}", pytrace=False)
        pytest.skip(reason)
    return SAPLMA


@pytest.fixture(scope="session")
def saplma():
    """The SAPLMA data without its 15 statements labelled both true and false (30 rows of 6,084)."""
    with pytest.warns(ConflictsDropped):  # tests/test_hostile_data.py checks what it says
        return load_dataset(require_saplma(), drop_conflicts=True)


@pytest.fixture(scope="session")
def small_saplma(saplma):
    """40 statements per topic (20 true, 20 false) of the real data."""
    return saplma.subset(per_topic=40, seed=0)
