"""Extraction speed on the SAPLMA data: the reference's one-at-a-time ``generate`` loop vs ours.

What is measured, in one process on the same statements:

- naive: what the SAPLMA reference code does, one statement at a time through
  ``model.generate(max_new_tokens=1, output_hidden_states=True,
  return_dict_in_generate=True)``, reading the last token of every layer;
- ours: ``plan_batches`` + ``run_batch`` (sorted by length, packed up to a token
  budget, base model only, no LM head), for float32 and, where the CPU has fast
  bfloat16 units, bfloat16, at a few token budgets. Tokenisation and planning
  are inside the timed span; writing to the disk cache is not (see warm_start.py).

For each: statements/s, speed-up over naive, and the fraction of the compute
bound reached. The bound is 2 x non-embedding parameters x real tokens (sum of
the statements' token counts, padding excluded) divided by this machine's best
measured square-matmul FLOP/s in the dtype used. Agreement: per-statement
cosine between our vectors and the naive ones (last and a middle layer), and
between bfloat16 and float32 when bfloat16 runs.

    python -m benchmarks.extraction            # all 6,084 statements
    python -m benchmarks.extraction --quick    # 200 statements
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from benchmarks._common import (
    SAPLMA_DATA, SAPLMA_HELP, matmul_flops, model_cache, peak_rss_mb, print_machine, row_cosines, table,
)
from probing.activations import plan_batches, run_batch
from probing.models import DTYPES, LoadedModel, ModelSpec, cpu_has_fast_bfloat16, load_model
from probing.datasets import load_dataset

POSITION = "last"


def sample(texts: Sequence[str], n: int) -> list[str]:
    """``n`` statements drawn at random (seed 0), so a subset has the full set's length mix."""
    order = np.random.default_rng(0).permutation(len(texts))[:n]
    return [texts[i] for i in order]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="statements (default: all 6,084)")
    parser.add_argument("--naive-n", type=int, default=None, help="statements for the naive loop (default: --n)")
    parser.add_argument("--budgets", default="256,1024,4096", help="token budgets for ours (1024 = CPU default)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="200 statements, budgets 256,1024")
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

    texts = load_dataset(args.saplma).statements
    texts = sample(texts, args.n or len(texts))
    n_naive = min(args.naive_n or len(texts), len(texts))
    dtypes = ["float32"] + (["bfloat16"] if cpu_has_fast_bfloat16() else [])
    print(f"{len(texts)} statements (naive loop on the first {n_naive}); dtypes {dtypes}; "
          f"fast bf16 on this CPU: {cpu_has_fast_bfloat16()}", flush=True)

    models = {d: load_model(ModelSpec("embedded", dtype=d), cache_dir=model_cache()) for d in dtypes}
    fp32 = models["float32"]
    layers = [-1, -(fp32.n_hidden_states // 2)]  # last, and the middle hidden state
    lengths = [len(ids) for ids in fp32.tokenizer(texts)["input_ids"]]
    params = fp32.n_non_embedding_parameters
    flops = {d: matmul_flops(DTYPES[d]) for d in dtypes}
    print(f"model: {fp32.n_blocks} blocks, width {fp32.width}, {params / 1e6:.1f} M non-embedding parameters; "
          f"{sum(lengths)} real tokens (mean {np.mean(lengths):.1f}, max {max(lengths)}); layers read {layers}; "
          + ", ".join(f"{d} matmul {f / 1e9:.1f} GFLOP/s" for d, f in flops.items()), flush=True)

    def bound(seconds: float, tokens: int, dtype: str) -> float:
        return 2 * params * tokens / flops[dtype] / seconds

    for loaded in models.values():  # warm-up: first calls allocate and pick kernels
        naive(loaded, texts[:2], layers)
        ours(loaded, texts[:16], budgets[0], layers)

    naive_s, reference = naive(fp32, texts[:n_naive], layers)
    naive_rate = n_naive / naive_s
    rows = [{"method": "naive generate", "dtype": "float32", "budget": "1 stmt", "seconds": naive_s,
             "stmt_per_s": naive_rate, "speedup": 1.0, "padding": 1.0,
             "bound_frac": bound(naive_s, sum(lengths[:n_naive]), "float32")}]
    print(f"naive: {n_naive} statements in {naive_s:.1f} s ({naive_rate:.1f}/s)", flush=True)
    fp32_out: dict[int, np.ndarray] | None = None
    for dtype, loaded in models.items():
        for budget in budgets:
            seconds, got, padded = ours(loaded, texts, budget, layers)
            row = {"method": "ours", "dtype": dtype, "budget": budget, "seconds": seconds,
                   "stmt_per_s": len(texts) / seconds, "speedup": len(texts) / seconds / naive_rate,
                   "padding": padded / sum(lengths), "bound_frac": bound(seconds, sum(lengths), dtype),
                   **agreement(reference, got, n_naive)}
            if dtype == "float32" and budget == budgets[0]:
                fp32_out = got
            if dtype != "float32" and fp32_out is not None:
                vs = agreement(fp32_out, got, len(texts))
                row["1-cos_vs_fp32_max"] = max(vs["1-cos_last_max"], vs["1-cos_mid_max"])
            rows.append(row)
            print(f"ours {dtype} budget {budget}: {seconds:.1f} s ({row['stmt_per_s']:.1f}/s)", flush=True)

    print(f"\n## Extraction, {len(texts)} SAPLMA statements, embedded model, position '{POSITION}'\n")
    print(table(rows))
    print("\nspeedup: statements/s over naive; padding: tokens run / real tokens; bound_frac: "
          "(2 x non-embedding params x real tokens / measured matmul FLOP/s) / seconds; "
          "1-cos_*: 1 - cosine to the naive vectors (last, middle layer) over the naive statements")
    print(f"peak RSS: {peak_rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
