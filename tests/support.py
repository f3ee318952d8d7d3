"""What several test modules share: sample statements, a study comparison and a running dashboard."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from probing.study.folder import TABLE_FILES
from probing.study.reporter import NoteList

ROOT = Path(__file__).resolve().parents[1]
BINORMAL_AUROC = stats.norm.cdf(1 / math.sqrt(2))
"""The AUROC of :func:`binormal_draws`' scores: Phi(1 / sqrt(2))."""
TIMEOUT = 300  # seconds an AppTest run or a dashboard job may take (the machine may be busy)
TEXTS = [
    "Paris is in France.",
    "The symbol of gold is Au.",
    "A whale is a mammal.",
    "Lima is the capital of Peru, a country in South America.",
    "Dogs can fly.",
    "Water boils at 100 degrees Celsius at sea level.",
]
"""Six statements of different lengths: padded together in one batch, they could leak across rows."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(cache: Path, *options: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, int]]:
    """`streamlit run app.py` (the repository's config plus ``options``) on a free port, with its own
    cache folder and log; yields (url, port) once it answers its health check."""
    port = free_port()
    log = open(cache / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port), *options],
        cwd=ROOT, env={**os.environ, "PROBING_CACHE": str(cache), "PROBING_RESULTS": str(cache / "results"),
                       "HF_HUB_OFFLINE": "1", **(env or {})},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("streamlit did not start: " + (cache / "streamlit.log").read_text()[-2000:])
        yield url, port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def assert_same_study(loaded, original) -> None:
    """Two StudyResults are equal: config, meta, every table, and every probe bit for bit."""
    assert loaded.config == original.config
    assert loaded.meta == original.meta
    for name in TABLE_FILES:
        pd.testing.assert_frame_equal(getattr(loaded, name), getattr(original, name), obj=name)
    assert loaded.probes.keys() == original.probes.keys()
    for key, probe in original.probes.items():
        other = loaded.probes[key]
        assert other.config == probe.config, key
        for a, b in zip([probe.mean_, probe.scale_, *probe.weights_, *probe.biases_],
                        [other.mean_, other.scale_, *other.weights_, *other.biases_], strict=True):
            assert np.array_equal(a, b), key


def interrupt_after_first_batch(activations, texts) -> int:
    """Run ``activations.ensure(texts)`` and press Ctrl-C once a batch is done; returns how many
    statements were stored (some, not all)."""

    def stop(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        activations.ensure(texts, on_progress=stop)
    kept = len(texts) - len(activations.missing(texts))
    assert 0 < kept < len(texts)
    return kept


class Recorder(NoteList):
    """A reporter that keeps what a study told it: (phase, done, total) counts, records and notes."""

    def __init__(self) -> None:
        super().__init__()
        self.phase, self.counts, self.records = "", [], []

    def set_phase(self, phase: str, total: int = 0, unit: str = "statements") -> None:
        self.phase = phase

    def progress(self, done: int, total: int) -> None:
        self.counts.append((self.phase, done, total))

    def add_record(self, record: dict) -> None:
        self.records.append(record)

    def counted(self, phase: str) -> list[tuple[int, int]]:
        return [(done, total) for name, done, total in self.counts if name == phase]


# ----------------------------------------------------------------------------- AppTest


def new_app() -> AppTest:
    return AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def wait_job(at: AppTest, kind: str):
    job = at.session_state["job"]
    assert job.kind == kind
    job.wait(TIMEOUT)
    assert not job.running, "job did not finish in time"
    assert job.error is None, job.params.get("traceback")
    at.run()
    no_errors(at)
    return job


def chart(at: AppTest, key: str) -> tuple[dict, pd.DataFrame]:
    """The Vega-Lite spec and all data rows of the chart drawn with ``key``."""
    found = [el.proto for el in at.get("vega_lite_chart") if json.loads(el.proto.spec).get("name") == key]
    names = [json.loads(el.proto.spec).get("name") for el in at.get("vega_lite_chart")]
    assert found, f"no chart {key!r}; charts drawn: {names}"
    proto = found[0]
    frames = [convert_arrow_bytes_to_pandas_df(d.data.data) for d in proto.datasets]
    if proto.HasField("data"):
        frames.append(convert_arrow_bytes_to_pandas_df(proto.data.data))
    data = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return json.loads(proto.spec), data


def binormal_draws(seed: int, simulations: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(labels, scores) of 100 true statements scored N(1, 1) and 100 false ones scored N(0, 1), ``simulations``
    times from one generator: an interval's coverage of :data:`BINORMAL_AUROC` is checked on them."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(100), np.zeros(100)]
    for _ in range(simulations):
        yield labels, np.r_[rng.normal(1, 1, 100), rng.normal(0, 1, 100)]
