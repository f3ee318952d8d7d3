"""The generalization analyses of issue 11 on the built-in set, warm cache: how long they take, and what they find.

Measured, with every activation already in the disk cache (extraction is not timed):

- ``run_generalization`` for the study's 5 layers with the linear, mass-mean and TTPD probes
  (the topic matrix: 6 x 6 topic pairs and 6 category splits; the polarity transfer: 3 x 2),
  without CCS, split into the text-only controls and the probes;
- CCS alone (``--ccs-seeds``, default 5 per layer), timed apart;
- peak RSS of the process.

It prints the numbers the README reports for the embedded model: the matrix summary (within a
topic, across topics, from all other topics, text-only control), the polarity transfer per
layer, and TTPD vs linear vs mass-mean on held-out topics and on negated statements.

    python -m benchmarks.generalization            # the whole built-in set, both polarities
    python -m benchmarks.generalization --quick    # 200 statements per topic, layers -1,-9
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks._common import BENCH_CACHE, cached_activations, peak_rss_mb, print_machine, table
from probing.data.builtin import load_builtin
from probing.study.config import StudyConfig
from probing.analyses.grid import text_only_accuracy
from probing.analyses.generalization import (
    ALL_OTHERS, ccs_summary, matrix_summary, polarity_table, polarity_transfers, run_generalization, topic_transfers,
)
from probing.formatting import markdown_table

LAYERS = (-1, -5, -9, -13, -17)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-topic", type=int, default=None, help="built-in statements per topic (default: all)")
    parser.add_argument("--layers", default=",".join(map(str, LAYERS)), help="write --layers=-1,-5 (with '=')")
    parser.add_argument("--ccs-seeds", type=int, default=5, help="CCS seeds per layer, timed apart (0: none)")
    parser.add_argument("--quick", action="store_true", help="200 statements per topic, layers -1,-9")
    parser.add_argument("--cache", default=BENCH_CACHE, help=f"activation cache (default {BENCH_CACHE})")
    args = parser.parse_args()
    per_topic = 200 if args.quick else args.per_topic
    layers = (-1, -9) if args.quick else tuple(int(x) for x in args.layers.split(","))

    print_machine()
    dataset = load_builtin(per_topic=per_topic)
    print(f"built-in set: {len(dataset)} statements ({', '.join(dataset.polarities)}), {len(dataset.topics)} topics",
          flush=True)
    activations, computed, seconds = cached_activations(dataset.statements, args.cache)
    if computed:
        print(f"(cached {computed} statements first in {seconds:.0f} s: not part of the timings)")
    texts = dataset.statements
    load = lambda layer: activations.layer(texts, layer)  # noqa: E731
    for layer in layers:  # page the layers into the OS cache, as a second run would find them
        load(layer)

    config = StudyConfig(layers=layers, generalization=True, ccs_seeds=0)
    started = time.perf_counter()
    transfers = topic_transfers(dataset) + polarity_transfers(dataset)
    for transfer in transfers:
        text_only_accuracy(dataset, transfer.split)
    controls = time.perf_counter() - started
    started = time.perf_counter()
    analyses = run_generalization(dataset, load, config)
    whole = time.perf_counter() - started
    rows = [{"what": f"run_generalization: {len(layers)} layers x linear, mass_mean, ttpd x {len(transfers)} "
                     "transfers, with the text-only controls", "seconds": whole},
            {"what": f"of which the text-only controls ({len(transfers)} fits, timed apart)", "seconds": controls}]
    if args.ccs_seeds:
        started = time.perf_counter()
        with_ccs = run_generalization(dataset, load, replace(config, matrix_probes=("mass_mean",),
                                                             ccs_seeds=args.ccs_seeds))
        ccs_seconds = time.perf_counter() - started
        rows.append({"what": f"CCS: {args.ccs_seeds} seeds x 10 restarts per layer, plus a mass-mean matrix "
                             "(the cheapest run that has CCS)", "seconds": ccs_seconds})
    rows.append({"what": "peak RSS (MiB)", "seconds": peak_rss_mb()})
    print("\n" + table(rows))

    results = analyses.results
    print(f"\nMatrix summary (accuracy)\n\n{markdown_table(matrix_summary(results))}")
    print(f"Polarity transfer (accuracy, held-out facts)\n\n{markdown_table(polarity_table(results))}")
    others = results[(results.analysis == "topics") & (results.train == ALL_OTHERS)]
    held_topics = others.groupby(["layer", "probe"])["accuracy"].mean().unstack("probe")
    print(f"Held-out topics (mean over the 6 category splits)\n\n{markdown_table(held_topics.reset_index())}")
    if args.ccs_seeds:
        print(f"CCS\n\n{markdown_table(ccs_summary(with_ccs.ccs))}")
    for note in analyses.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
