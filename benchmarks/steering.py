"""Steering the embedded model along its truth direction (issue 12): how fast, and how much it moves.

Measured on the built-in set (both polarities), activations already cached (not timed):

1. Speed: the dose-response of one direction for ``--statements`` held-out statements x 9 alphas,
   as the engine runs it (every (statement, alpha) pair a row of a batch of 64), against one
   forward pass per (statement, alpha) on a sample, extrapolated and labelled so.
2. Effect: for several layer ranges (the direction read at the range's deepest layer, added at it and
   the two layers before it, at the statement's tokens), the shift of the mean answer
   P(" True") - P(" False") per unit alpha for the mass-mean direction and for the random control,
   from a straight-line fit over alphas -4 .. 4; then the full dose-response (mass-mean, linear,
   random, shuffled) at the range with the largest mass-mean slope.

    python -m benchmarks.steering             # 200 statements
    python -m benchmarks.steering --quick     # 40 statements, two layer ranges
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from benchmarks._common import BENCH_CACHE, cached_activations, peak_rss_mb, print_machine, table
from probing.data.builtin import load_builtin
from probing.study.config import SteeringConfig
from probing.formatting import markdown_table
from probing.analyses.steering import dose_response, steering_setup, true_false_margins

PROBE_LAYERS = (-3, -6, -9, -12, -15, -18, -21, -24)
SCAN_ALPHAS = (-4.0, -2.0, 0.0, 2.0, 4.0)


def slope(margins: np.ndarray, alphas) -> float:
    """Change of the mean answer per unit alpha (least squares over the alphas)."""
    return float(np.polyfit(np.asarray(alphas), margins.mean(0), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--statements", type=int, default=200)
    parser.add_argument("--loop-sample", type=int, default=20, help="statements timed one forward pass at a time")
    parser.add_argument("--quick", action="store_true", help="40 statements, probe layers -9 and -15")
    parser.add_argument("--cache", default=BENCH_CACHE, help=f"activation cache (default {BENCH_CACHE})")
    args = parser.parse_args()
    n = 40 if args.quick else args.statements
    probe_layers = (-9, -15) if args.quick else PROBE_LAYERS

    print_machine()
    dataset = load_builtin()
    activations, computed, seconds = cached_activations(dataset.statements, args.cache)
    if computed:
        print(f"(cached {computed} statements first in {seconds:.0f} s: not part of the timings)")
    model = activations.model
    config = SteeringConfig(statements=n)

    # 1. speed
    setup = steering_setup(dataset, activations, config.probe_layer, ("mass_mean",), n)
    vector, layers = setup.directions["mass_mean"].vector, config.steered_layers
    true_false_margins(model, setup.statements[:4], layers=layers, vector=vector, alphas=(1.0,))  # warm up
    started = time.perf_counter()
    true_false_margins(model, setup.statements, layers=layers, vector=vector, alphas=config.alphas)
    batched = time.perf_counter() - started
    sample = setup.statements[:args.loop_sample]
    started = time.perf_counter()
    for statement in sample:
        for alpha in config.alphas:
            true_false_margins(model, [statement], layers=layers, vector=vector, alphas=(alpha,))
    looped = (time.perf_counter() - started) / len(sample) * n
    pairs = n * len(config.alphas)
    print("\n" + table([
        {"what": f"dose-response, {n} statements x {len(config.alphas)} alphas, batched (64 rows a batch)",
         "seconds": batched, "pairs/s": pairs / batched},
        {"what": f"one forward pass per pair (timed on {len(sample)} statements, extrapolated)",
         "seconds": looped, "pairs/s": pairs / looped},
        {"what": "speed-up", "seconds": looped / batched},
    ]))

    # 2. effect per layer range, mass-mean against the random control
    rows = []
    for probe_layer in probe_layers:
        span = (probe_layer - 2, probe_layer - 1, probe_layer)
        found = steering_setup(dataset, activations, probe_layer, ("mass_mean", "random"), n)
        row = {"direction from layer": probe_layer, "added at": ",".join(map(str, span)),
               "alpha = 1 (distance)": found.directions["mass_mean"].scale}
        for kind in ("mass_mean", "random"):
            margins = true_false_margins(model, found.statements, layers=span, vector=found.directions[kind].vector,
                                         alphas=SCAN_ALPHAS)
            row[f"{kind}: shift per unit alpha"] = slope(margins, SCAN_ALPHAS)
        rows.append(row)
        print(f"layer range {span} done", flush=True)
    print("\n" + table(rows))
    best = max(rows, key=lambda row: row["mass_mean: shift per unit alpha"])["direction from layer"]
    span = (best - 2, best - 1, best)
    full = steering_setup(dataset, activations, best, config.directions, n)
    result = dose_response(model, full.statements, full.labels, full.directions, span, config.alphas)
    columns = ["direction", "alpha", "shift_true", "shift_false", "flipped", "nie"]
    print(f"\nDose-response at layers {span} (direction from layer {best}), {n} held-out statements\n\n"
          f"{markdown_table(result[columns])}")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
