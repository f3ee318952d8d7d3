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
- peak RSS of the process.

Activations are made sure to be in the disk cache first; extraction time is
not part of any number here.

    python -m benchmarks.grid            # all 6,084 statements, 360 probes
    python -m benchmarks.grid --quick    # 100 statements per topic, 2 layers
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from benchmarks._common import (
    BENCH_CACHE, SAPLMA_DATA, SAPLMA_HELP, cached_activations, peak_rss_mb, print_machine, table,
)
from probing.config import StudyConfig
from probing.experiments import category_splits, run_grid, split_seed
from probing.probes import Task, fit_many
from probing.datasets import load_dataset

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
    parser.add_argument("--quick", action="store_true", help="100 statements per topic, layers -1,-5")
    parser.add_argument("--cache", default=BENCH_CACHE, help=f"activation cache (default {BENCH_CACHE})")
    parser.add_argument("--saplma", default=SAPLMA_DATA, help=SAPLMA_HELP)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.per_topic, args.layers = args.per_topic or 100, "-1,-5"
    layers = tuple(int(x) for x in args.layers.split(","))
    loop_layers = tuple(int(x) for x in args.loop_layers.split(","))
    print_machine()

    dataset = load_dataset(args.saplma)
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

    started = time.perf_counter()
    grid = run_grid(dataset, load_layer, config, on_result=on_result)
    grid_s = time.perf_counter() - started
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
        })
    load_total = sum(load_s.values())
    loop_total = sum(r["loop_s (all layers, EXTRAPOLATED)"] for r in rows)
    train_total = sum(group_s.values())
    rows.append({"kind": "all", "probes": n_probes, "stacked_s (all layers, measured)": train_total,
                 "loop_s (all layers, EXTRAPOLATED)": loop_total, "speedup (same layers)": None})

    print(f"\n## Probe grid (linear solver {args.linear_solver}), {len(dataset)} statements, {len(layers)} layers x {len(KINDS)} kinds x "
          f"{len(splits)} splits x {args.seeds} seeds = {n_probes} probes (torch threads {torch.get_num_threads()})\n")
    print(table(rows))
    other = grid_s - train_total - load_total
    print(f"\nrun_grid wall time: {grid_s:.1f} s = training {train_total:.1f} s + loading {len(load_s)} layers "
          f"from the disk cache {load_total:.1f} s + scoring the {n_probes} result rows (accuracy, AUROC) and "
          f"other {other:.1f} s; one at a time, EXTRAPOLATED: {loop_total + load_total + other:.1f} s")
    print(f"stacked vs one at a time (layers {args.loop_layers}): acc_mismatch = probes whose held-out accuracy "
          f"differs, max_abs_dw = largest |weight difference|, identical = probes equal bit for bit")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB" + (" (includes the model loaded to fill the cache: rerun "
                                                 "for the training-only figure)" if computed else ""))


if __name__ == "__main__":
    main()
