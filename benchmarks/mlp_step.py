"""Where an MLP stack's training step goes, and what bounds it.

One worker's stack of the SAPLMA grid (18 probes of a layer and kind shared over torch's threads:
9 members on 2 threads), batch 32, trained for one epoch of 100 steps on one thread, as a worker
trains it, in float32 and, where the CPU has bf16 matrix units, in bfloat16 (the engine's choice
marked). Torch's profiler sorts each step's time into the matrix products, Adam (torch's fused
kernel), the casts between the float32 weights and the dtype the products run in, and the rest
(gathering and standardising the batch, the loss, Python between the calls). Beside them, two
bounds measured in the same run on one thread: the square-matmul rate of the dtype, and the time
the fused Adam alone takes over a parameter set of the stack's size (a memory stream: it reads and
writes the weights and both moments and reads the gradient, 28 bytes a parameter, against 192
FLOPs of products a parameter at batch 32).

    python -m benchmarks.mlp_step
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch.optim.adam import adam as adam_update
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import matmul_flops, print_machine, table
from probing.model.devices import cpu_has_fast_bfloat16
from probing.probes.adam import BFLOAT16_KINDS, _fit_adam_stack_or_twin, training_dtype
from probing.probes.estimators import Task, task_standardisers
from probing.probes.params import HIDDEN_SIZES, ProbeConfig

GROUPS = {"matmul": ("aten::bmm", "aten::baddbmm", "aten::mm"), "Adam": ("aten::_fused_adam_",),
          "casts": ("aten::copy_",)}
"""Profiler op names per group (each op's own time); every other op counts as "rest"."""
WIDTH, STEPS, BATCH = 576, 100, 32  # the embedded model's width; 100 steps of SAPLMA's batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=9, help="members of the stack (the grid's 18 on 2 threads)")
    args = parser.parse_args()
    print_machine()
    torch.set_num_threads(1)  # a worker trains its stack on one thread
    rates = {dtype: matmul_flops(dtype) / 1e9 for dtype in (torch.float32, torch.bfloat16)}
    rows = []
    for kind in ("tiny", "small", "medium"):
        dtypes = (torch.float32, torch.bfloat16) if kind in BFLOAT16_KINDS and cpu_has_fast_bfloat16() else (
            torch.float32,)
        for dtype in dtypes:
            row = profile_step(kind, dtype, args.members, rates[dtype])
            rows.append({**row, "dtype": row["dtype"] + (" (engine's)" if dtype == training_dtype(kind) else "")})
    print(table(rows, list(rows[0])))
    print(f"\none thread: matmul {rates[torch.float32]:.0f} GFLOP/s float32, {rates[torch.bfloat16]:.0f} bfloat16; "
          f"{args.members} members, batch {BATCH}, {STEPS} steps; shares are of the step's profiled time, the "
          "bound share is the products' FLOPs at the square-matmul rate over the step's unprofiled wall time")


def profile_step(kind: str, dtype: torch.dtype, members: int, matmul_rate: float) -> dict[str, str]:
    rng = np.random.default_rng(0)
    X = torch.as_tensor(rng.standard_normal((BATCH * STEPS + 500, WIDTH), dtype=np.float32))
    labels = (X[:, 0] > 0).long().numpy()
    rows = np.arange(BATCH * STEPS)
    tasks = [Task(rows, labels[rows], seed=seed) for seed in range(members)]
    config = ProbeConfig(kind, epochs=1)
    mean, scale = task_standardisers(X, tasks)

    def train() -> None:
        _fit_adam_stack_or_twin(X, tasks, mean, scale, config, None, dtype)

    train()  # warm-up
    started = time.perf_counter()
    train()
    step = (time.perf_counter() - started) / STEPS
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        train()
    own = {event.key: event.self_cpu_time_total for event in profiled.key_averages()}
    total = sum(own.values())
    shares = {group: sum(own.get(name, 0) for name in names) / total for group, names in GROUPS.items()}
    shares["rest"] = 1 - sum(shares.values())

    sizes = [WIDTH, *HIDDEN_SIZES[kind], 1]
    products = [fan_in * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:])]
    parameters = sum(products) + sum(sizes[1:])
    flops = members * BATCH * (4 * sum(products) + 2 * sum(products[1:]))  # forward, weight and input gradients
    matmul_seconds = shares["matmul"] * total / 1e6 / STEPS
    adam_bound = adam_seconds(members * parameters)
    return {"kind": kind, "dtype": str(dtype).removeprefix("torch."), "ms a step": f"{step * 1e3:.2f}",
            "matmul": f"{shares['matmul']:.0%}", "Adam": f"{shares['Adam']:.0%}", "casts": f"{shares['casts']:.0%}",
            "rest": f"{shares['rest']:.0%}",
            "products' GFLOP/s (of the rate)": f"{flops / matmul_seconds / 1e9:.0f} "
                                               f"({flops / matmul_seconds / 1e9 / matmul_rate:.0%})",
            "Adam alone, ms (GB/s)": f"{adam_bound * 1e3:.2f} ({members * parameters * 28 / adam_bound / 1e9:.0f})",
            "step / bound": f"{flops / step / 1e9 / matmul_rate:.1%}"}


def adam_seconds(parameters: int, repeats: int = 20) -> float:
    """Best time of one fused Adam step over ``parameters`` float32 parameters (the stack's, in one tensor)."""
    tensors = [torch.randn(parameters).abs_() for _ in range(4)]  # a second moment is never negative
    steps = [torch.zeros(())]
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        adam_update([tensors[0]], [tensors[1]], [tensors[2]], [tensors[3]], [], steps, fused=True, amsgrad=False,
                    beta1=0.9, beta2=0.999, lr=1e-3, weight_decay=0.0, eps=1e-8, maximize=False)
        best = min(best, time.perf_counter() - started)
    return best


if __name__ == "__main__":
    main()
