"""Training the full probe grid of issue 5 on cached activations: stacked vs one at a time.

The grid: 5 layers (-1, -5, -9, -13, -17) x 4 probe kinds (linear, tiny, small,
medium) x 6 category splits x 3 seeds = 360 probes, SAPLMA training settings
(``StudyConfig(seeds=3, controls=False)``: Adam, lr 1e-3, batch 32, 5 epochs; the
linear probe uses the engine's default L-BFGS solver, or SAPLMA's Adam with
``--linear-solver adam``).

Measured:

- ``run_grid`` wall time, stacked as the engine does it (per layer and kind, all
  splits x seeds train together in one ``fit_many``), split into loading layers
  from the disk cache and training per (layer, kind);
- the same probes one at a time (``fit_many`` with one task each) for a subset of
  layers (default: -1, all kinds), extrapolated to all layers and clearly labelled;
- that both give the same probes: held-out accuracies equal, every weight equal bit
  for bit;
- peak RSS of the process;
- the computed bound: the FLOPs of the training (per kind: forward, weight- and input-gradient
  matmuls per training example and epoch, the held-out forward passes; for L-BFGS the two
  (8 x rows x width) products of every evaluation round) over the square-matmul rate measured in
  this run in the dtype each kind trains in, and the share of it reached.

Activations are made sure to be in the disk cache first; extraction time is
not part of any number here.

    python -m benchmarks.grid            # all 6,084 statements, 360 probes
    python -m benchmarks.grid --quick    # 100 statements per topic, 2 layers
    python -m benchmarks.grid --train-dtype float32   # MLPs in float32 even where bf16 is the default
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from benchmarks._common import (
    BENCH_CACHE, SAPLMA_DATA, SAPLMA_HELP, cached_activations, matmul_flops, peak_rss_mb, print_machine, table,
)
from probing.probes import lbfgs
from probing.study.config import StudyConfig
from probing.analyses.grid import category_splits, run_grid, split_seed
from probing.probes.adam import TRAIN_DTYPE_VARIABLE, training_dtype
from probing.probes.estimators import Task, fit_many
from probing.probes.params import HIDDEN_SIZES
from probing.probes.lbfgs import LBFGS_STACK
from probing.data.datasets import load_dataset

LAYERS = (-1, -5, -9, -13, -17)
KINDS = ("linear", "tiny", "small", "medium")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-topic", type=int, default=None, help="statements per topic (default: all)")
    parser.add_argument("--layers", default=",".join(map(str, LAYERS)), help="write --layers=-1,-5 (with '=')")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--loop-layers", default="-1", help="layers also trained one probe at a time (--loop-layers=-1,-5)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--linear-solver", choices=("lbfgs", "adam"), default="lbfgs",
                        help="lbfgs: the engine's default; adam: SAPLMA's settings for the linear probe too")
    parser.add_argument("--train-dtype", choices=("float32", "bfloat16"), default=None,
                        help="dtype the MLP stacks compute in (default: the engine's choice for this CPU)")
    parser.add_argument("--quick", action="store_true", help="100 statements per topic, layers -1,-5")
    parser.add_argument("--cache", default=BENCH_CACHE, help=f"activation cache (default {BENCH_CACHE})")
    parser.add_argument("--saplma", default=SAPLMA_DATA, help=SAPLMA_HELP)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.per_topic, args.layers = args.per_topic or 100, "-1,-5"
    if args.train_dtype:
        os.environ[TRAIN_DTYPE_VARIABLE] = args.train_dtype
    layers = tuple(int(x) for x in args.layers.split(","))
    loop_layers = tuple(int(x) for x in args.loop_layers.split(","))
    print_machine()

    dataset = load_dataset(args.saplma, drop_conflicts=True)
    if args.per_topic:
        dataset = dataset.subset(per_topic=args.per_topic)
    texts, labels = dataset.statements, dataset.labels
    activations, computed, extract_s = cached_activations(texts, args.cache)
    print(f"{len(dataset)} statements, {len(dataset.topics)} topics; activations cached "
          f"({computed} computed now in {extract_s:.0f} s, excluded from the timings)", flush=True)

    config = StudyConfig(layers=layers, probes=KINDS, seeds=args.seeds, controls=False,
                        linear_solver=args.linear_solver, device="cpu")
    load_s: dict[int, float] = {}
    group_s: dict[tuple[int, str], float] = {}
    mark = [time.perf_counter()]
    current: list[tuple[int, str] | None] = [None]

    def load_layer(layer: int) -> np.ndarray:
        started = time.perf_counter()
        features = activations.layer(texts, layer)
        load_s[layer] = time.perf_counter() - started
        mark[0] = time.perf_counter()
        return features

    def on_result(row: dict) -> None:  # rows of one (layer, kind) arrive right after its fit_many
        now, key = time.perf_counter(), (row["layer"], row["probe"])
        if key != current[0]:
            group_s[key], current[0] = now - mark[0], key
        mark[0] = now

    dtypes = {kind: training_dtype(kind) if config.probe_config(kind).solver == "adam" else torch.float32
              for kind in KINDS}
    rates = {dtype: matmul_flops(dtype) for dtype in set(dtypes.values())}
    print("measured matmul rate (2048-square, this run): " + ", ".join(
        f"{str(dtype).removeprefix('torch.')} {rate / 1e9:.1f} GFLOP/s" for dtype, rate in rates.items()), flush=True)
    rounds = count_lbfgs_rounds()
    started = time.perf_counter()
    grid = run_grid(dataset, load_layer, config, on_result=on_result)
    grid_s = time.perf_counter() - started
    lbfgs_rounds = rounds[0]
    n_probes = len(grid.results)
    print(f"run_grid (stacked): {n_probes} probes in {grid_s:.1f} s", flush=True)

    splits = category_splits(dataset)
    members = [(s, seed) for s in splits for seed in range(args.seeds)]
    loop_s: dict[tuple[int, str], float] = {}
    diff: dict[str, list[float]] = {kind: [] for kind in KINDS}  # per probe: max |weight difference|
    mismatches: dict[str, int] = dict.fromkeys(KINDS, 0)  # held-out accuracy differs
    for layer in loop_layers:
        features = activations.layer(texts, layer)
        for kind in KINDS:
            started = time.perf_counter()
            singles = [fit_many(features, [Task(s.train, labels[s.train], s.test, labels[s.test],
                                                split_seed(seed, s.name))], config.probe_config(kind))[0]
                       for s, seed in members]
            loop_s[(layer, kind)] = time.perf_counter() - started
            for (s, seed), single in zip(members, singles):
                stacked = grid.probes[(layer, kind, s.name, seed)]
                X_test, y_test = features[s.test], labels[s.test]
                mismatches[kind] += single.score(X_test, y_test) != stacked.score(X_test, y_test)
                diff[kind].append(max(float(np.abs(a - b).max()) for a, b in
                                      zip(single.weights_ + single.biases_, stacked.weights_ + stacked.biases_)))
            print(f"one at a time, layer {layer} {kind}: {loop_s[(layer, kind)]:.1f} s", flush=True)

    width = activations.layer(texts[:1], layers[0]).shape[1]
    flops = {kind: len(layers) * training_flops(kind, config.probe_config(kind).solver, width, splits, args.seeds,
                                               config.epochs) for kind in KINDS}
    if config.linear_solver == "lbfgs":  # every round: logits and gradients, (8, rows, width + 1) each
        flops["linear"] = lbfgs_rounds * 2 * 2 * LBFGS_STACK * len(dataset) * (width + 1)
    rows = []
    for kind in KINDS:
        stacked = [group_s[(layer, kind)] for layer in layers]
        loop = [loop_s[(layer, kind)] for layer in loop_layers]
        stacked_same = [group_s[(layer, kind)] for layer in loop_layers if layer in layers]
        rows.append({
            "kind": kind, "probes": len(layers) * len(members),
            "stacked_s (all layers, measured)": sum(stacked),
            "loop_s (layers " + args.loop_layers + ", measured)": sum(loop),
            "loop_s (all layers, EXTRAPOLATED)": float(np.mean(loop)) * len(layers),
            "speedup (same layers)": sum(loop) / sum(stacked_same) if stacked_same else None,
            "acc_mismatch": f"{mismatches[kind]}/{len(diff[kind])}",
            "max_abs_dw": max(diff[kind], default=None),
            "identical": f"{sum(d == 0 for d in diff[kind])}/{len(diff[kind])}",
            "dtype": str(dtypes[kind]).removeprefix("torch."),
            "GFLOP": flops[kind] / 1e9,
            "bound_s": flops[kind] / rates[dtypes[kind]],
            "share_of_bound": flops[kind] / rates[dtypes[kind]] / sum(stacked),
        })
    load_total = sum(load_s.values())
    loop_total = sum(r["loop_s (all layers, EXTRAPOLATED)"] for r in rows)
    train_total = sum(group_s.values())
    bound_total = sum(r["bound_s"] for r in rows)
    rows.append({"kind": "all", "probes": n_probes, "stacked_s (all layers, measured)": train_total,
                 "loop_s (all layers, EXTRAPOLATED)": loop_total, "speedup (same layers)": None,
                 "GFLOP": sum(flops.values()) / 1e9, "bound_s": bound_total, "share_of_bound": bound_total / train_total})

    print(f"\n## Probe grid (linear solver {args.linear_solver}), {len(dataset)} statements, {len(layers)} layers x {len(KINDS)} kinds x "
          f"{len(splits)} splits x {args.seeds} seeds = {n_probes} probes (torch threads {torch.get_num_threads()})\n")
    print(table(rows))
    other = grid_s - train_total - load_total
    print(f"\nrun_grid wall time: {grid_s:.1f} s = training {train_total:.1f} s + loading {len(load_s)} layers "
          f"from the disk cache {load_total:.1f} s + scoring the {n_probes} result rows (accuracy, AUROC) and "
          f"other {other:.1f} s; one at a time, EXTRAPOLATED: {loop_total + load_total + other:.1f} s")
    print(f"stacked vs one at a time (layers {args.loop_layers}): acc_mismatch = probes whose held-out accuracy "
          f"differs, max_abs_dw = largest |weight difference|, identical = probes equal bit for bit")
    print("GFLOP: training matmuls (MLPs and Adam-linear: forward, weight and input gradients per training example "
          "and epoch, plus the held-out forward passes; L-BFGS: its evaluation rounds, padding rows included); "
          "bound_s = GFLOP / the measured square-matmul rate in the kind's dtype; share_of_bound = bound_s / stacked_s")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB" + (" (includes the model loaded to fill the cache: rerun "
                                                 "for the training-only figure)" if computed else ""))


def training_flops(kind: str, solver: str, width: int, splits, seeds: int, epochs: int) -> float:
    """Matmul FLOPs of one layer's ``kind`` probes trained with Adam (0 for L-BFGS: counted from its rounds)."""
    if solver != "adam":
        return 0.0
    sizes = [width, *HIDDEN_SIZES[kind], 1]
    products = [fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    forward = 2 * sum(products)
    per_training_row = forward + forward + 2 * sum(products[1:])  # forward, weight gradients, input gradients
    rows = sum(len(s.train) * per_training_row + len(s.test) * forward for s in splits)
    return float(seeds * epochs * rows)


def count_lbfgs_rounds() -> list[int]:
    """A counter of lockstep L-BFGS evaluation rounds (each one logits and one gradient product)."""
    rounds = [0]
    evaluate = lbfgs._LinearDesign.evaluate

    def counted(self, objectives, points):
        rounds[0] += 1
        return evaluate(self, objectives, points)

    lbfgs._LinearDesign.evaluate = counted
    return rounds


if __name__ == "__main__":
    main()
