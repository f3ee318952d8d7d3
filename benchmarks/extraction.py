"""Extraction speed on the SAPLMA data: the reference's one-at-a-time loop, our compute, and the real job.

What is measured, on the same (de-duplicated) statements:

- naive: what the SAPLMA reference code does, one statement at a time through
  ``model.generate(max_new_tokens=1, output_hidden_states=True,
  return_dict_in_generate=True)``, reading the last token of every layer;
- compute: ``plan_batches`` + ``run_batch`` (sorted by length, packed up to a token
  budget, base model only, every hidden state copied out as float32), for float32
  and, where the CPU has fast bfloat16 units, bfloat16, at a few token budgets.
  Tokenisation and planning are inside the timed span, the cache is not;
- ensure: ``Activations.ensure`` into an empty cache with the model loaded: the
  compute plus what ``extract`` adds per batch (claims, every layer stored as
  float16 with its checks, written on a second thread while the next batch runs);
- extract: ``python -m probing extract`` in a new process on an empty activation
  cache, the converted model already on disk: process start, imports, model load,
  reading the data, and everything ``ensure`` does. With ``--with-conversion`` also
  a machine's very first run, which converts the GGUF (once per model cache).

For each: statements/s, speed-up over naive, share of the compute rate (same dtype
and budget), and the fraction of the compute bound: 2 x non-embedding parameters x
real tokens (padding excluded) over this machine's measured square-matmul FLOP/s in
the dtype used. Agreement: per-statement cosine to the naive vectors (last and a
middle layer), and of bfloat16 to float32 when bfloat16 runs.

    python -m benchmarks.extraction            # all 6,050 distinct statements
    python -m benchmarks.extraction --quick    # 200 statements
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from benchmarks._common import (
    BENCH_CACHE, SAPLMA_DATA, SAPLMA_HELP, matmul_flops, peak_rss_mb, print_machine, row_cosines, table,
)
from probing.store.activations import Activations, plan_batches, run_batch
from probing.data.datasets import load_dataset
from probing.model.devices import DTYPES, cpu_has_fast_bfloat16
from probing.model.loading import LoadedModel, ModelSpec, load_model
from probing.data.statements import StatementSet

POSITION = "last"


def sample(dataset: StatementSet, n: int | None) -> StatementSet:
    """The distinct statements, ``n`` of them drawn at random (seed 0) so a subset has the full set's length mix."""
    distinct = dataset.drop_duplicates()
    order = np.random.default_rng(0).permutation(len(distinct))[: n or len(distinct)]
    return StatementSet(distinct.frame.iloc[order].reset_index(drop=True), name=dataset.name)


@torch.inference_mode()
def naive(loaded: LoadedModel, texts: Sequence[str], layers: Sequence[int]) -> tuple[float, dict[int, np.ndarray]]:
    """The SAPLMA loop: one ``generate`` call per statement; keeps ``layers`` of the last token."""
    tokenizer, model = loaded.tokenizer, loaded.model
    out = {layer: np.empty((len(texts), loaded.width), np.float32) for layer in layers}
    started = time.perf_counter()
    for i, text in enumerate(texts):
        encoded = tokenizer(text, return_tensors="pt").to(loaded.input_device)
        result = model.generate(**encoded, max_new_tokens=1, output_hidden_states=True,
                                return_dict_in_generate=True, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        states = result.hidden_states[0]  # the prompt step: one (1, tokens, width) tensor per layer
        for layer in layers:
            out[layer][i] = states[layer][0, -1].float().cpu().numpy()
    return time.perf_counter() - started, out


def ours(loaded: LoadedModel, texts: Sequence[str], budget: int,
         layers: Sequence[int]) -> tuple[float, dict[int, np.ndarray], int]:
    """The engine's path; returns (seconds, ``layers`` of every statement, padded tokens run)."""
    out = {layer: np.empty((len(texts), loaded.width), np.float32) for layer in layers}
    started = time.perf_counter()
    batches = plan_batches(loaded.tokenizer, texts, POSITION, budget, max_tokens=512)
    for batch in batches:
        hidden = run_batch(loaded, batch, POSITION)  # (rows, hidden states, width), all layers
        for layer in layers:
            out[layer][batch.indices] = hidden[:, layer]
    seconds = time.perf_counter() - started
    return seconds, out, sum(b.input_ids.numel() for b in batches)


def agreement(ref: dict[int, np.ndarray], got: dict[int, np.ndarray], n: int) -> dict[str, float]:
    """Largest and mean 1 - cosine per layer (last, middle) over the first ``n`` statements."""
    row: dict[str, float] = {}
    for name, layer in zip(("last", "mid"), ref):
        gap = 1 - row_cosines(ref[layer][:n], got[layer][:n])
        row[f"1-cos_{name}_max"], row[f"1-cos_{name}_mean"] = float(gap.max()), float(gap.mean())
    return row


def ensure_seconds(loaded: LoadedModel, texts: Sequence[str]) -> float:
    """``Activations.ensure`` into an empty cache, the model loaded: what ``extract`` does once it has started."""
    with tempfile.TemporaryDirectory() as folder:
        activations = Activations(model=loaded, cache_dir=folder)
        started = time.perf_counter()
        assert activations.ensure(texts) == len(texts)
        return time.perf_counter() - started


def extract_command(data: Path, convert: bool) -> tuple[float, float]:
    """Run ``python -m probing extract`` in a new process on an empty activation cache.

    It loads the model already converted in the model cache; with ``convert`` its model cache is
    an empty folder, so the GGUF is converted first, as on a machine's first run. Returns the
    process's wall seconds and the extraction rate the command itself printed.
    """
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, **({"PROBING_MODELS": str(Path(folder, "models"))} if convert else {})}
        command = [sys.executable, "-m", "probing", "extract", "--dataset", str(data), "--cache", folder]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    rates = re.findall(r"statements \(100 %\), ([0-9.]+)/s", done.stderr)
    return seconds, float(rates[-1]) if rates else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="statements (default: all 6,050 distinct)")
    parser.add_argument("--naive-n", type=int, default=None, help="statements for the naive loop (default: --n)")
    parser.add_argument("--budgets", default="256,1024,4096", help="token budgets for ours (1024 = CPU default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="200 statements, budgets 256,1024")
    parser.add_argument("--with-conversion", action="store_true",
                        help="also time a first run of extract that converts the GGUF (about 25 s more)")
    parser.add_argument("--saplma", default=SAPLMA_DATA, help=SAPLMA_HELP)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.budgets = args.n or 200, "256,1024"
    budgets = [int(b) for b in args.budgets.split(",")]
    import transformers

    transformers.logging.set_verbosity_error()
    print_machine()

    dataset = sample(load_dataset(args.saplma, drop_conflicts=True), args.n)
    texts = dataset.statements
    n_naive = min(args.naive_n or len(texts), len(texts))
    engine_dtype = ModelSpec("embedded").resolved_dtype
    dtypes = list(dict.fromkeys(["float32", engine_dtype] + (["bfloat16"] if cpu_has_fast_bfloat16() else [])))
    engine_budget = Activations("embedded", cache_dir=BENCH_CACHE).token_budget
    print(f"{len(texts)} distinct statements (naive loop on the first {n_naive}); dtypes {dtypes}; "
          f"fast bf16 on this CPU: {cpu_has_fast_bfloat16()}; the engine runs {engine_dtype}, "
          f"budget {engine_budget}", flush=True)

    models = {d: load_model(ModelSpec("embedded", dtype=d)) for d in dtypes}
    fp32 = models["float32"]
    layers = [-1, -(fp32.n_hidden_states // 2)]  # last, and the middle hidden state
    lengths = [len(ids) for ids in fp32.tokenizer(texts)["input_ids"]]
    params = fp32.n_non_embedding_parameters
    flops = {d: matmul_flops(DTYPES[d]) for d in dtypes}
    print(f"model: {fp32.n_blocks} blocks, width {fp32.width}, {params / 1e6:.1f} M non-embedding parameters; "
          f"{sum(lengths)} real tokens (mean {np.mean(lengths):.1f}, max {max(lengths)}); layers read {layers}; "
          + ", ".join(f"{d} matmul {f / 1e9:.1f} GFLOP/s" for d, f in flops.items()), flush=True)

    def bound(seconds: float, dtype: str) -> float:
        return 2 * params * sum(lengths) / flops[dtype] / seconds

    for loaded in models.values():  # warm-up: first calls allocate and pick kernels
        naive(loaded, texts[:2], layers)
        ours(loaded, texts[:16], budgets[0], layers)

    naive_s, reference = naive(fp32, texts[:n_naive], layers)
    naive_rate = n_naive / naive_s
    rows = [{"method": "naive generate", "dtype": "float32", "budget": "1 stmt", "seconds": naive_s,
             "stmt_per_s": naive_rate, "speedup": 1.0, "padding": 1.0,
             "bound_frac": 2 * params * sum(lengths[:n_naive]) / flops["float32"] / naive_s}]
    print(f"naive: {n_naive} statements in {naive_s:.1f} s ({naive_rate:.1f}/s)", flush=True)
    fp32_out: dict[int, np.ndarray] | None = None
    compute_rate: dict[tuple[str, int], float] = {}
    for dtype, loaded in models.items():
        for budget in budgets:
            seconds, got, padded = ours(loaded, texts, budget, layers)
            compute_rate[dtype, budget] = len(texts) / seconds
            row = {"method": "compute", "dtype": dtype, "budget": budget, "seconds": seconds,
                   "stmt_per_s": len(texts) / seconds, "speedup": len(texts) / seconds / naive_rate,
                   "padding": padded / sum(lengths), "bound_frac": bound(seconds, dtype),
                   **agreement(reference, got, n_naive)}
            if dtype == "float32" and budget == budgets[0]:
                fp32_out = got
            if dtype != "float32" and fp32_out is not None:
                vs = agreement(fp32_out, got, len(texts))
                row["1-cos_vs_fp32_max"] = max(vs["1-cos_last_max"], vs["1-cos_mid_max"])
            rows.append(row)
            print(f"compute {dtype} budget {budget}: {seconds:.1f} s ({row['stmt_per_s']:.1f}/s)", flush=True)

    reference_rate = compute_rate.get((engine_dtype, engine_budget)) or len(texts) / ours(
        models[engine_dtype], texts, engine_budget, layers)[0]

    def job_row(method: str, seconds: float) -> dict:
        rate = len(texts) / seconds
        return {"method": method, "dtype": engine_dtype, "budget": engine_budget, "seconds": seconds,
                "stmt_per_s": rate, "speedup": rate / naive_rate, "bound_frac": bound(seconds, engine_dtype),
                "of_compute": rate / reference_rate}

    seconds = ensure_seconds(models[engine_dtype], texts)
    rows.append(job_row("ensure (model loaded, cache writes)", seconds))
    print(f"ensure: {seconds:.1f} s", flush=True)
    del models, fp32, loaded  # the command runs alone, not beside our copies of the model
    with tempfile.TemporaryDirectory() as folder:
        data = dataset.to_csv(Path(folder, "statements.csv"))
        runs = [("extract command (new process: start, imports, load, writes)", False)]
        if args.with_conversion:
            runs.append(("extract command, first run (GGUF conversion too)", True))
        for method, convert in runs:
            seconds, printed_rate = extract_command(data, convert)
            rows.append(job_row(method, seconds))
            rows.append({**job_row(f"  its extraction alone (rate it printed)", len(texts) / printed_rate)})
            print(f"{method}: {seconds:.1f} s wall; it printed {printed_rate:.1f}/s", flush=True)

    print(f"\n## Extraction, {len(texts)} SAPLMA statements, embedded model, position '{POSITION}'\n")
    print(table(rows))
    print("\nspeedup: statements/s over naive; padding: tokens run / real tokens; bound_frac: "
          "(2 x non-embedding params x real tokens / measured matmul FLOP/s) / seconds; of_compute: "
          f"statements/s over the compute rate in {engine_dtype} at budget {engine_budget}; "
          "1-cos_*: 1 - cosine to the naive vectors (last, middle layer) over the naive statements")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
