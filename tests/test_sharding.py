"""Several processes fill one cache (torchrun / accelerate launch, or two plain extracts): the union
equals one process, and each statement is computed once."""

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from probing.store.activations import Activations, batch_name, plan_batches, run_batch
from support import TEXTS

LAYERS = (0, 7, 15, 23, 30)


def extract(cache, data, *extra, launcher=(sys.executable, "-m")):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([*launcher, "probing", "extract", "--dataset", str(data), "--cache", str(cache), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def fresh_cache(tmp_path, name):
    cache = tmp_path / name
    cache.mkdir()
    return cache


def test_two_processes_equal_one_bit_for_bit_and_a_killed_one_is_completed(tmp_path, small_saplma):
    data = small_saplma.subset(per_topic=20).to_csv(tmp_path / "data.csv")
    texts = list(dict.fromkeys(small_saplma.subset(per_topic=20).statements))
    single, sharded = (fresh_cache(tmp_path, name) for name in ("single", "sharded"))
    finish(extract(single, data))

    # Shard 1 of 2 is killed as soon as it has stored something ...
    victim = extract(sharded, data, "--shard", "1/2")
    store = Activations("embedded", cache_dir=sharded).store
    deadline = time.time() + 300
    while len(store.missing(texts)) == len(texts) and time.time() < deadline:
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    left = len(store.missing(texts))
    assert 0 < left < len(texts)

    # ... and the next two-process launch completes the cache.
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m")
    output = finish(extract(sharded, data, launcher=launcher))
    assert "shard 0/2" in output and "shard 1/2" in output
    assert store.missing(texts) == []

    one, union = Activations("embedded", cache_dir=single), Activations("embedded", cache_dir=sharded)
    for layer in LAYERS:
        np.testing.assert_array_equal(one.layer(texts, layer), union.layer(texts, layer))
    assert not one.model_loaded and not union.model_loaded


def stored_rows(activations):
    """Statements stored over all chunks, counting a statement once per chunk that holds it."""
    store = activations.store
    return sum(len(store._cache.get((store.namespace, "chunk", chunk, "texts")))
               for chunk in store._cache.get((store.namespace, "chunks")) or [])


def test_two_extracts_into_one_cache_compute_each_statement_once(tmp_path, small_saplma):
    subset = small_saplma.subset(per_topic=20)
    data = subset.to_csv(tmp_path / "data.csv")
    texts = list(dict.fromkeys(subset.statements))
    single, shared = (fresh_cache(tmp_path, name) for name in ("single", "shared"))
    reference, first, second = extract(single, data), extract(shared, data), extract(shared, data)
    finish(reference)
    outputs = [finish(first), finish(second)]

    computed = [int(re.search(r"^(\d+) statement\(s\) computed", output, re.M).group(1)) for output in outputs]
    assert sum(computed) == len(texts), outputs  # without claims: 2 x len(texts)
    one, union = Activations("embedded", cache_dir=single), Activations("embedded", cache_dir=shared)
    assert stored_rows(union) == len(texts)  # no batch was stored twice
    for layer in LAYERS:
        np.testing.assert_array_equal(one.layer(texts, layer), union.layer(texts, layer))


def claim_for(activations, statements, pid):
    """Claim a batch as another process (``pid`` on this host) would."""
    store = activations.store
    store._cache.set((store.namespace, "claim", batch_name(statements)),
                     {"token": f"process-{pid}", "host": socket.gethostname(), "pid": pid, "since": time.time()})


def test_batches_claimed_by_live_processes_are_awaited_and_taken_over_when_they_die(model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path, token_budget=20)
    activations.poll_seconds = 0.05
    batches = plan_batches(model.tokenizer, TEXTS, "last", 20, 512)  # the plan every process makes
    assert len(batches) >= 4
    finishing, dying, dead = ([TEXTS[i] for i in batch.indices] for batch in batches[:3])
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    finisher, dier = subprocess.Popen(sleep), subprocess.Popen(sleep)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    progress, results = [], []

    def extract_all():
        results.append(activations.ensure(TEXTS, on_progress=lambda *done_total: progress.append(done_total)))

    def wait_until_missing(statements):
        deadline = time.time() + 60
        while activations.missing(TEXTS) != sorted(TEXTS.index(text) for text in statements):
            assert time.time() < deadline, f"still missing: {activations.missing(TEXTS)}"
            time.sleep(0.05)

    try:
        claim_for(activations, finishing, finisher.pid)
        claim_for(activations, dying, dier.pid)
        claim_for(activations, dead, gone.pid)
        worker = threading.Thread(target=extract_all)
        worker.start()
        wait_until_missing([*finishing, *dying])  # the unclaimed batches and the dead process's are done
        time.sleep(0.3)
        assert worker.is_alive()  # waiting for the live processes' batches, not computing them

        # One live process stores its batch and releases its claim: the waiting one counts it as done.
        activations.store.write_chunk(finishing, run_batch(model, batches[0], "last"))
        activations.store.release(batch_name(finishing), f"process-{finisher.pid}")
        wait_until_missing(dying)
        assert worker.is_alive()

        # The other dies without storing its batch: the waiting one takes it over.
        dier.kill()
        dier.wait()
        worker.join(60)
        assert not worker.is_alive()
    finally:
        for process in (finisher, dier):
            process.kill()
            process.wait()
    assert results == [len(TEXTS) - len(finishing)]
    assert progress[-1] == (len(TEXTS), len(TEXTS))
    assert activations.missing(TEXTS) == []
