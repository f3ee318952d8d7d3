"""Several processes fill one cache (torchrun / accelerate launch): the union equals one process."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from probing.activations import Activations

LAYERS = (0, 7, 15, 23, 30)


def extract(cache, data, *extra, launcher=(sys.executable, "-m")):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([*launcher, "probing", "extract", "--dataset", str(data), "--cache", str(cache), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def fresh_cache(tmp_path, name, shared_cache):
    cache = tmp_path / name
    cache.mkdir()
    (cache / "models").symlink_to(shared_cache / "models", target_is_directory=True)
    return cache


def test_two_processes_equal_one_bit_for_bit_and_a_killed_one_is_completed(tmp_path, small_saplma, shared_cache):
    data = small_saplma.subset(per_topic=20).to_csv(tmp_path / "data.csv")
    texts = list(dict.fromkeys(small_saplma.subset(per_topic=20).statements))
    single, sharded = (fresh_cache(tmp_path, name, shared_cache) for name in ("single", "sharded"))
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
