"""Tests that need the SAPLMA data beside the repository skip without it, except in CI, where they fail."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("ci, outcome", [("", "1 skipped"), ("true", "1 error")])
def test_missing_saplma_folder_skips_locally_and_fails_in_ci(tmp_path, ci, outcome):
    env = {**os.environ, "PROBING_SAPLMA": str(tmp_path / "absent"), "CI": ci}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_statements.py::test_saplma_folder_loads_six_topics_with_counts"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert outcome in run.stdout, run.stdout + run.stderr
    assert "PROBING_SAPLMA" in run.stdout  # the reason says how to point at the data
