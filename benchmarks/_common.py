"""Shared helpers: machine description, matmul FLOP/s, peak memory, tables, the benchmark cache.

Kept free of heavy imports (no transformers, no diskcache) so that the GPU
benchmark can use it on a machine that only has torch.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
SAPLMA_DATA = os.environ.get("PROBING_SAPLMA") or str(REPOSITORY.parent / "shared" / "datasets" / "azaria-mitchell")
"""The SAPLMA True-False folder: $PROBING_SAPLMA, else beside the repository (where the tests look too)."""
SAPLMA_HELP = "SAPLMA True-False folder (default: $PROBING_SAPLMA, else ../shared/datasets/azaria-mitchell)"
BENCH_CACHE = "cache/bench"
"""Benchmark activations live here (``cache/`` is git-ignored)."""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def print_machine() -> dict[str, object]:
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if info["load_avg_1m"] and float(info["load_avg_1m"]) > 0.5 * (os.cpu_count() or 1):
        print("warning: the machine is busy (load average above half the cores): timings are noisy", flush=True)
    return info


def matmul_flops(dtype: torch.dtype, device: str = "cpu", size: int | None = None, repeats: int = 3) -> float:
    """Best measured FLOP/s of ``size``-square matmuls in ``dtype`` (2 n^3 per product)."""
    size = size or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    inner = 10 if device.startswith("cuda") else 1
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        sync(device)
        started = time.perf_counter()
        for _ in range(inner):
            torch.mm(a, b)
        sync(device)
        best = min(best, (time.perf_counter() - started) / inner)
    return 2 * size**3 / best


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (numpy arrays)."""
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-30)


def sync(device: str | torch.device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory in MiB (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024


def timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of dicts (floats rounded to 4 significant digits)."""
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def cached_activations(texts: Sequence[str], cache_dir: str = BENCH_CACHE):
    """An ``Activations`` (embedded model, default dtype, 'last') with ``texts`` all cached.

    Returns (activations, statements computed now, seconds spent computing them).
    The model is loaded only if something is missing.
    """
    from probing.store.activations import Activations
    from probing.model.loading import load_model

    activations = Activations("embedded", cache_dir=cache_dir)
    missing = activations.missing(texts)
    if not missing:
        return activations, 0, 0.0
    print(f"caching activations of {len(missing)} statement(s) in {cache_dir} first "
          "(not part of the timed numbers)...", flush=True)
    model = load_model(activations.spec)
    activations = Activations(model=model, cache_dir=cache_dir)
    seconds, computed = timed(lambda: activations.ensure(texts))
    return activations, int(computed), seconds  # type: ignore[arg-type]
