"""The job users run, by phase: ``probing reproduce`` of the SAPLMA grid, timed from the engine's
own progress reports.

Phases: loading the statements; extraction of what the cache lacks (the model loads only then, as in the
CLI: a warm cache never loads it); the grid's probes;
the final probes (one per layer and kind, trained on every statement for ``score``), which train in
the grid's stacks; directions and the rest of the study; saving the results folder. Beside them, the
square-matmul rates of this run in float32 and bfloat16 (the bound the grid benchmark divides FLOPs
by) and ``reproduce`` as a multiple of ``run_grid`` alone, timed after it in the same process (issue
22's target: at most 1.15).

    python -m benchmarks.reproduce                    # SAPLMA, conflicts dropped, warm cache
    python -m benchmarks.reproduce --no-controls      # as issue 22 measured it
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from benchmarks._common import BENCH_CACHE, SAPLMA_DATA, SAPLMA_HELP, matmul_flops, peak_rss_mb, print_machine, table
from benchmarks.grid import count_lbfgs_rounds, training_flops
from probing.analyses.grid import final_task, make_splits, run_grid
from probing.probes.adam import training_dtype
from probing.probes.lbfgs import LBFGS_STACK
from probing.study.config import StudyConfig
from probing.study.reporter import EXTRACTING, TRAINING, Reporter
from probing.study.study import Study


class Clock(Reporter):
    """When each progress report of the study came: the last of the extraction, and every training count."""

    def __init__(self) -> None:
        self.phase, self.extract_end = "", None
        self.counts: list[tuple[float, int, int]] = []

    def set_phase(self, phase: str, total: int = 0, unit: str = "statements") -> None:
        self.phase = phase

    def progress(self, done: int, total: int) -> None:
        if self.phase == EXTRACTING:
            self.extract_end = time.perf_counter()
        elif self.phase == TRAINING:
            self.counts.append((time.perf_counter(), done, total))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=SAPLMA_DATA, help=SAPLMA_HELP)
    parser.add_argument("--cache", default=BENCH_CACHE)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--no-controls", action="store_true")
    parser.add_argument("--no-baseline", action="store_true", help="skip timing run_grid alone afterwards")
    args = parser.parse_args()
    print_machine()
    rates = {name: matmul_flops(dtype) / 1e9 for name, dtype in (("float32", torch.float32),
                                                                  ("bfloat16", torch.bfloat16))}

    config = StudyConfig(dataset=args.dataset, drop_conflicts=True, seeds=args.seeds, controls=not args.no_controls,
                         cache=args.cache)
    rounds = count_lbfgs_rounds()  # the linear probes' L-BFGS rounds of the study, for its FLOPs
    start = time.perf_counter()
    clock, final_probes = Clock(), len(config.layers) * len(config.probes)
    study = Study(config, reporter=clock)  # as the CLI builds it: the model loads only if extraction needs it
    statements = len(study.dataset)
    loaded = time.perf_counter()
    result = study.run()
    studied = time.perf_counter()
    study_rounds = rounds[0]
    with tempfile.TemporaryDirectory() as folder:
        result.save(folder)
    saved = time.perf_counter()
    grid_alone = None
    if not args.no_baseline:  # what benchmarks/grid.py times: run_grid alone, warm as the study left it
        began = time.perf_counter()
        run_grid(study.dataset, study.layer, config)
        grid_alone = time.perf_counter() - began

    counts = clock.counts
    extract_end = clock.extract_end or loaded
    phases = [("load statements", start, loaded),
              ("extract (and the model, if the cache lacks any)", loaded, extract_end),
              ("grid and final probes (one stack per layer and kind)", extract_end, counts[-1][0]),
              ("directions and the rest", counts[-1][0], studied), ("save", studied, saved)]
    bound = grid_bound_seconds(study, config, study_rounds, rates)
    rows = [{"phase": name, "seconds": f"{end - begin:.1f}", "share": f"{(end - begin) / (saved - start):.0%}",
             "share of its bound": f"{bound / (end - begin):.0%}" if name.startswith("grid") else ""}
            for name, begin, end in phases]
    print(table(rows, ["phase", "seconds", "share", "share of its bound"]))
    against = (f" = {(saved - start) / grid_alone:.2f} x the grid's training alone ({grid_alone:.1f} s, run_grid "
               "without the final probes)") if grid_alone else ""
    print(f"\nreproduce {saved - start:.1f} s{against}; {statements:,} statements, {counts[-1][2] - final_probes} "
          f"grid probes and "
          f"{final_probes} final probes; matmul rate {rates['float32']:.0f} GFLOP/s float32, "
          f"{rates['bfloat16']:.0f} bfloat16; peak RSS {peak_rss_mb():,.0f} MB")


def grid_bound_seconds(study: Study, config: StudyConfig, lbfgs_rounds: int, rates: dict[str, float]) -> float:
    """Seconds the grid's and final probes' training matmuls take at the measured square-matmul rate of the
    dtype each kind trains in (the FLOPs ``benchmarks/grid.py`` counts; the controls' stacks as many again)."""
    splits = make_splits(study.dataset, config.split)
    final = SimpleNamespace(train=final_task(study.dataset).train, test=[])  # every statement, nothing held out
    width = study.layer(config.layers[0]).shape[1]
    seconds = 0.0
    for kind in config.probes:
        solver = config.probe_config(kind).solver
        flops = (training_flops(kind, solver, width, splits, config.seeds, config.epochs) * (1 + config.controls)
                 + training_flops(kind, solver, width, [final], 1, config.epochs)) * len(config.layers)
        seconds += flops / (rates[str(training_dtype(kind, config.resolved_device)).removeprefix("torch.")] * 1e9)
    linear = lbfgs_rounds * 2 * 2 * LBFGS_STACK * len(study.dataset) * (width + 1)  # as benchmarks/grid.py counts
    return seconds + linear / (rates["float32"] * 1e9)

if __name__ == "__main__":
    main()
