"""Background jobs: the model lease, and warnings raised inside a job's thread."""

import threading

import pytest

from probing.store.activations import Activations
from probing.dashboard.workflows import extract_work
from probing.dashboard.jobs import Job, ModelBusy, ModelHolder, start_job
from support import TEXTS


def test_the_model_is_leased_before_the_thread_starts(model, shared_cache):
    holder = ModelHolder(shared_cache)
    holder.current = model
    release = threading.Event()
    job = start_job(Job(kind="train", label="waits"), lambda job: release.wait(30), holder=holder)
    try:
        assert holder.busy  # at once, not when the thread gets round to it
        with pytest.raises(ModelBusy):
            holder.ensure("embedded", dtype="float16")
    finally:
        release.set()
        job.wait(30)
    assert not holder.busy and job.ok


def test_a_repaired_cache_is_reported_by_the_job(model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path)
    activations.ensure(TEXTS)
    store = activations.store
    store._cache.set((store.namespace, "chunks"), {"not": "a list"})  # damage the chunk list
    job = start_job(Job(kind="extract", label="extract"), extract_work(activations, TEXTS)).wait(120)
    assert job.ok, job.error
    assert job.result == 0  # the chunks were found again: nothing recomputed
    assert any("rebuilt" in warning for warning in job.warnings), job.warnings
