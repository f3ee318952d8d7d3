"""Two "nodes" (two torchrun groups of one multi-node launch on this machine) each write their own
cache folder; one is killed midway and the job relaunched; `cache merge` then gives exactly what one
process computes. The same for two machines of an accelerate launch, and for shards given by hand.

Bit for bit only where the arithmetic is the same: the nodes run one thread each, so the single
run does too, in float32. In bfloat16, CPUs with AMX sum in another order on another thread count
(up to 0.5 apart here); there the merged folders equal one process's run to bf16 rounding, which is
what ``cache merge`` itself checks (cosine >= MERGE_MIN_COSINE), and that is tested in the engine's
default dtype.

torchrun's agents wait at an exit barrier for every node (300 s, not settable from its command line)
once their own workers are done. The killed node is therefore node 0, which hosts the rendezvous
store: with it gone, node 1's barrier fails at once (logged) and node 1 exits with code 0. Its agent
starts each worker in a session of its own, so killing a node means killing both.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from probing.model.loading import ModelSpec, load_model
from probing.store.activations import Activations
from probing.store.merge import MERGE_MAX_NORM_GAP, MERGE_MIN_COSINE, _agreement
from support import free_port
from test_sharding import LAYERS, fresh_cache


FLOAT32 = ModelSpec("embedded", dtype="float32")


@pytest.fixture(scope="module")
def float32_model():
    return load_model(FLOAT32)


def single_run(model, cache, texts):
    """What one process stores, on one thread as each node runs."""
    activations = Activations(model=model, cache_dir=cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        activations.ensure(texts)  # the batches the CLI plans (same model, dtype and token budget)
    finally:
        torch.set_num_threads(threads)
    return activations


def launch_node(cache, data, node, port, launcher="torchrun", dtype="float32"):
    """One node of a two-node launch, in its own process group (to be killed as a whole).

    ``launcher``: torchrun; accelerate launch as its multi-GPU multi-node mode runs it (it starts
    torch.distributed.run; without GPUs the processes run on the CPU); or "by hand", a plain process
    told its shard and node.
    """
    extract = ["-m", "probing", "extract", "--dataset", str(data), "--cache", str(cache),
               *(["--dtype", dtype] if dtype else [])]
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                   "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), *extract]
    elif launcher == "accelerate":
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(node), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no", *extract]
    else:
        command = [sys.executable, *extract, "--shard", f"{node}/2", "--node", str(node)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def kill_node(agent):
    """SIGKILL a node: its workers (each in its own session), then its torchrun agent."""
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    for worker in map(int, children):
        os.killpg(worker, signal.SIGKILL)
    os.killpg(agent.pid, signal.SIGKILL)
    agent.communicate()


def finish(process, timeout=120):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"still running after {timeout} s:\n{output}") from None
    assert process.returncode == 0, output
    return output


def test_two_nodes_one_killed_and_relaunched_merge_to_a_single_process_run(tmp_path, saplma, float32_model):
    subset = saplma.subset(per_topic=80, seed=0)  # 480 statements: 3 batches or more per node
    data = subset.to_csv(tmp_path / "data.csv")
    texts = list(dict.fromkeys(subset.statements))
    single = single_run(float32_model, fresh_cache(tmp_path, "single"), texts)
    cache = fresh_cache(tmp_path, "cache")
    node_0, node_1 = (Activations(FLOAT32, cache_dir=cache, store_dir=cache / "nodes" / f"node-{k}")
                      for k in (0, 1))

    # Node 0 is killed (agent and worker) as soon as it has stored something; node 1 completes its share.
    port = free_port()
    victim, survivor = launch_node(cache, data, 0, port), launch_node(cache, data, 1, port)
    deadline = time.time() + 120
    while len(node_0.missing(texts)) == len(texts) and time.time() < deadline and victim.poll() is None:
        time.sleep(0.1)
    kill_node(victim)
    output = finish(survivor)
    assert "node 1, shard 1/2:" in output and "cache merge" in output, output
    stored_0, stored_1 = (len(texts) - len(store.missing(texts)) for store in (node_0, node_1))
    assert 0 < stored_0 and 0 < stored_1 and stored_0 + stored_1 < len(texts)

    # The relaunched job completes node 0's share in node 0's folder; node 1 has nothing left to do.
    port = free_port()
    relaunched = [launch_node(cache, data, k, port) for k in (0, 1)]
    outputs = [finish(process) for process in relaunched]
    assert "node 0, shard 0/2:" in outputs[0] and "node 1, shard 1/2: 0 statement(s) computed" in outputs[1]
    assert not (cache / "activations").exists()  # nothing was written outside the node folders

    assert_merged_nodes_equal(cache, single, texts)


@pytest.mark.parametrize("launcher, dtype", [("accelerate", "float32"), ("by hand", None)])
def test_other_launchers_write_node_folders_that_merge_to_one_run(tmp_path, saplma, model,
                                                                  float32_model, launcher, dtype):
    """accelerate launch --multi_gpu --num_machines 2 --machine_rank K, or plain processes given --shard K/2
    --node K (the README's recipe for Ray, or CPU machines without a launcher): the same node folders.
    By hand runs in the engine's default dtype: bit for bit in float32, to bf16 rounding in bfloat16."""
    subset = saplma.subset(per_topic=30, seed=1)
    data = subset.to_csv(tmp_path / "data.csv")
    texts = list(dict.fromkeys(subset.statements))
    single = single_run(float32_model if dtype else model, fresh_cache(tmp_path, "single"), texts)
    cache = fresh_cache(tmp_path, "cache")
    port = free_port()
    outputs = [finish(process) for process in
               [launch_node(cache, data, k, port, launcher, dtype) for k in (0, 1)]]
    for node, output in enumerate(outputs):
        assert f"node {node}, shard {node}/2:" in output, output
    assert not (cache / "activations").exists()
    assert_merged_nodes_equal(cache, single, texts)


def assert_merged_nodes_equal(cache, single, texts):
    """``cache merge`` of the two node folders holds every statement: equal bit for bit to ``single``
    in float32, within bf16 rounding (what ``cache merge`` accepts as the same) in bfloat16."""
    merge = subprocess.run([sys.executable, "-m", "probing", "cache", "merge", str(cache),
                            str(cache / "nodes" / "node-0"), str(cache / "nodes" / "node-1")],
                           capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert merge.returncode == 0, merge.stderr
    assert f"{len(texts)} statement(s) copied" in merge.stderr
    merged = Activations(single.spec, cache_dir=cache)
    assert merged.missing(texts) == []
    for layer in LAYERS:
        ours, theirs = merged.layer(texts, layer), single.layer(texts, layer)
        if single.spec.resolved_dtype == "float32":
            np.testing.assert_array_equal(ours, theirs)
        else:
            cosine, gap = _agreement(ours, theirs)
            assert cosine.min() >= MERGE_MIN_COSINE and gap.max() <= MERGE_MAX_NORM_GAP, (layer, cosine.min())
    assert not merged.model_loaded
