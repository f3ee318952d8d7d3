"""A trace of one statement (issue 23): how long the Trace page and `probing trace` take once the model is loaded.

A 40-token statement, traced with 20 probes (linear, tiny, small, medium at 5 layers, trained on random
features: the time does not depend on what they learned): the forward pass that reads every token's hidden
states plus the probes (``--no-answers``), and with the model's own answer after each token (one more
batched forward pass of the question prompt per token). Best and median of ``--repeats`` runs, in the
engine's default dtype for this CPU and in float32, beside the same run's matmul rates.

    python -m benchmarks.trace
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from benchmarks._common import matmul_flops, print_machine, table
from probing.analyses.trace import trace_statement
from probing.model.loading import ModelSpec, load_model
from probing.probes.estimators import make_probe
from probing.store.activations import Activations

STATEMENT = ("The Danube, which rises in the Black Forest of Germany and flows east for almost three thousand "
             "kilometres through ten countries and four capital cities, including Vienna and Budapest, finally reaches "
             "the Black Sea in Romania.")
LAYERS = (-1, -5, -9, -13, -17)
KINDS = ("linear", "tiny", "small", "medium")


def random_probes(width: int) -> dict:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, width)).astype(np.float32), np.arange(200) % 2
    return {(layer, kind): make_probe(kind, epochs=2).fit(X, y) for layer in LAYERS for kind in KINDS}


def timed(activations: Activations, probes: dict, answers: bool, repeats: int) -> list[float]:
    trace_statement(activations, probes, STATEMENT, answers)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        trace_statement(activations, probes, STATEMENT, answers)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print_machine()
    rows = []
    for dtype in dict.fromkeys([ModelSpec("embedded").resolved_dtype, "float32"]):
        model = load_model(ModelSpec("embedded", dtype=dtype))
        activations = Activations(model=model, cache_dir="cache/bench")
        tokens = len(model.tokenizer(STATEMENT)["input_ids"])
        probes = random_probes(model.width)
        for answers in (False, True):
            times = timed(activations, probes, answers, args.repeats)
            rows.append({"dtype": dtype, "tokens": tokens, "model answers": answers,
                         "best s": round(min(times), 3), "median s": round(statistics.median(times), 3)})
        model.unload()
    rates = {name: round(matmul_flops(getattr(torch, name)) / 1e9) for name in ("float32", "bfloat16")}
    print(table(rows))
    print(f"matmul GFLOP/s in the same run: {rates}")


if __name__ == "__main__":
    main()
