"""Extraction speed at Llama-2 scale on one GPU, with nothing to download.

Models are randomly initialised ``LlamaForCausalLM`` built from the published
Llama-2-7B and -13B configurations, in bfloat16 on CUDA: speed depends on shapes,
not on weight values. Statements are synthetic token ids whose lengths follow
SAPLMA's (6,084 statements; histogram measured with the embedded SmolLM2
tokenizer, no BOS), scaled by ``--length-scale`` (default 1.2: Llama-2's
tokenizer cuts these statements somewhat finer; an estimate, not measured here)
plus one BOS token.

Measured per model:

- ours: ``probing.store.activations.run_batch`` on ``Batch`` objects built directly
  from the ids (sorted by length, packed up to a token budget exactly as
  ``plan_batches`` packs), all layers copied back to the host as float32, at a
  few token budgets (16384 is the engine's CUDA default);
- naive: one statement at a time through ``generate(max_new_tokens=1,
  output_hidden_states=True, return_dict_in_generate=True)`` on a sample;
- the fraction of the bf16 bound reached: 2 x non-embedding parameters x real
  tokens / (measured bf16 matmul FLOP/s, 8192-square) / seconds;
- agreement: largest 1 - cosine of ours vs naive on the naive sample (last and middle layer).

Then, if time is left (``--grid-budget-s``), the probe grid on the GPU: 5 layers x
4 kinds x 6 category splits (SAPLMA's topic sizes) x 3 seeds = 360 probes on random
features of the embedded model's width (576) and Llama-2-7B's (4096), SAPLMA's
training settings, stacked as ``run_grid`` stacks them, and one layer one probe at
a time: seconds, and whether both give the same weights.

Results are printed and, if ``$OUT`` is set, written to ``$OUT/gpu_results.json``
(after each part, so a timeout keeps what finished). About 3-6 minutes on one H100.

    python -m benchmarks.gpu_extraction              # on the GPU machine
    python -m benchmarks.gpu_extraction --dry-run    # tiny model on CPU: checks the script
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import types

import numpy as np
import torch

try:
    import diskcache  # noqa: F401 - probing.store.store imports it; the GPU image lacks it
except ImportError:
    sys.modules["diskcache"] = types.ModuleType("diskcache")  # the disk cache is not used here

from benchmarks._common import machine, matmul_flops, row_cosines, sync, table  # noqa: E402
from probing.store.activations import Batch, run_batch  # noqa: E402
from probing.model.loading import LoadedModel, ModelSpec  # noqa: E402
from probing.probes.estimators import Task, fit_many  # noqa: E402
from probing.probes.params import ProbeConfig

SAPLMA_TOPIC_SIZES = (1008, 1458, 1200, 930, 612, 876)
"""Statements per topic in the SAPLMA data (animals, capitals, companies, elements, facts, inventions)."""

LLAMA2 = {  # published configurations (config.json of meta-llama/Llama-2-{7b,13b}-hf)
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4),  # --dry-run only
}
COMMON = dict(vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
SAPLMA_LENGTHS = {  # tokens per statement -> statements, all 6,084 SAPLMA statements, SmolLM2 tokenizer
    4: 4, 5: 12, 6: 102, 7: 379, 8: 672, 9: 1103, 10: 1141, 11: 878, 12: 476, 13: 322, 14: 209,
    15: 139, 16: 92, 17: 106, 18: 64, 19: 53, 20: 35, 21: 40, 22: 45, 23: 34, 24: 30, 25: 36,
    26: 14, 27: 11, 28: 12, 29: 10, 30: 14, 31: 12, 32: 4, 33: 6, 34: 7, 35: 3, 36: 4, 37: 3,
    38: 3, 39: 1, 41: 1, 43: 4, 44: 2, 49: 1,
}
POSITION = "last"


def log(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)


def synthetic_statements(n: int, scale: float, vocab: int, seed: int = 0) -> list[torch.Tensor]:
    """``n`` random-id statements with SAPLMA's length mix (scaled), each starting with BOS (1)."""
    rng = np.random.default_rng(seed)
    lengths = np.repeat(list(SAPLMA_LENGTHS), list(SAPLMA_LENGTHS.values()))
    picked = rng.permutation(lengths)[:n] if n <= len(lengths) else rng.choice(lengths, n)
    return [torch.tensor([1, *rng.integers(3, vocab, max(1, round(length * scale)))]) for length in picked]


def make_batches(ids: list[torch.Tensor], token_budget: int) -> list[Batch]:
    """Sorted by length, packed so each batch holds at most ``token_budget`` tokens (as plan_batches)."""
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    groups, current = [], []
    for i in order:
        if current and (len(current) + 1) * len(ids[i]) > token_budget:
            groups.append(current)
            current = []
        current.append(i)
    groups.append(current)
    batches = []
    for group in groups:
        width = max(len(ids[i]) for i in group)
        input_ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            input_ids[row, : len(ids[i])], mask[row, : len(ids[i])] = ids[i], 1
        content = mask.bool()
        content[:, 0] = False  # BOS is a special token
        batches.append(Batch(group, input_ids, mask, mask.sum(1) - 1, content))
    return batches


def build(name: str, device: str, dtype: torch.dtype) -> LoadedModel:
    """A randomly initialised Llama with the named shape, built directly on ``device``."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**LLAMA2[name], **COMMON)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    placed = {p.device.type for p in model.parameters()}
    assert placed == {torch.device(device).type}, f"weights landed on {placed}, not {device}"
    spec = ModelSpec(f"random-{name}", device=device, dtype=str(dtype).removeprefix("torch."))
    return LoadedModel(spec=spec, model=model, tokenizer=None, fingerprint=f"random-{name}")


def ours(loaded: LoadedModel, ids: list[torch.Tensor], budget: int,
         keep: tuple[int, ...]) -> tuple[float, np.ndarray, int, int]:
    """(seconds, (n, len(keep), width): the ``keep`` layers of every statement, batches, padded tokens).

    run_batch copies every layer to the host (float32), as the engine does; only
    ``keep`` is held on to, as the engine would hand the rest to the disk cache.
    """
    batches = make_batches(ids, budget)
    out = np.zeros((len(ids), len(keep), loaded.width), np.float32)
    sync(loaded.input_device)
    started = time.perf_counter()
    for batch in batches:
        out[batch.indices] = run_batch(loaded, batch, POSITION)[:, list(keep)]  # ends with .cpu(): synchronises
    return time.perf_counter() - started, out, len(batches), sum(b.input_ids.numel() for b in batches)


@torch.inference_mode()
def naive(loaded: LoadedModel, ids: list[torch.Tensor], keep: tuple[int, ...]) -> tuple[float, np.ndarray]:
    """One ``generate`` per statement (the SAPLMA loop); every layer's last token copied to the host."""
    out = np.zeros((len(ids), len(keep), loaded.width), np.float32)
    device = loaded.input_device
    sync(device)
    started = time.perf_counter()
    for i, statement in enumerate(ids):
        input_ids = statement[None].to(device)
        result = loaded.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                       max_new_tokens=1, output_hidden_states=True,
                                       return_dict_in_generate=True, do_sample=False, pad_token_id=0)
        every_layer = torch.stack([h[0, -1] for h in result.hidden_states[0]]).float().cpu().numpy()
        out[i] = every_layer[list(keep)]
    return time.perf_counter() - started, out


def bench_model(name: str, args, flops: float, started: float) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    loaded = build(name, device, dtype)
    sync(device)
    params = loaded.n_non_embedding_parameters
    log(f"{name}: built in {time.perf_counter() - t:.1f} s, {params / 1e6:,.1f} M non-embedding parameters", started)
    ids = synthetic_statements(args.n, args.length_scale, loaded.config.vocab_size)
    real = sum(len(x) for x in ids)
    keep = (-1, loaded.n_hidden_states // 2)  # last and middle hidden state, for the agreement check
    ours(loaded, ids[: min(64, len(ids))], args.budgets[0], keep)  # warm-up: kernels, allocator
    naive(loaded, ids[:2], keep)

    def bound(seconds: float, tokens: int) -> float:
        return 2 * params * tokens / flops / seconds

    n_naive = min(args.naive_n, len(ids))
    naive_s, reference = naive(loaded, ids[:n_naive], keep)
    naive_rate = n_naive / naive_s
    log(f"{name}: naive {n_naive} statements in {naive_s:.1f} s ({naive_rate:.1f}/s)", started)
    rows = [{"model": name, "method": "naive generate", "budget": "1 stmt", "statements": n_naive,
             "seconds": naive_s, "stmt_per_s": naive_rate, "speedup": 1.0, "padding": 1.0,
             "bound_frac": bound(naive_s, sum(len(x) for x in ids[:n_naive]))}]
    for budget in args.budgets:
        seconds, out, n_batches, padded = ours(loaded, ids, budget, keep)
        agree = {f"1-cos_{label}_max": float((1 - row_cosines(out[:n_naive, k], reference[:, k])).max())
                 for k, label in enumerate(("last", "mid"))}
        rows.append({"model": name, "method": "ours", "budget": budget, "statements": len(ids),
                     "batches": n_batches, "seconds": seconds, "stmt_per_s": len(ids) / seconds,
                     "speedup": len(ids) / seconds / naive_rate, "padding": padded / real,
                     "bound_frac": bound(seconds, real), **agree})
        del out
        log(f"{name}: ours budget {budget}: {len(ids)} statements in {seconds:.2f} s "
            f"({len(ids) / seconds:.0f}/s, {rows[-1]['bound_frac']:.0%} of the {args.dtype} bound)", started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    del loaded
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"model": name, "non_embedding_parameters": params, "real_tokens": real,
            "mean_tokens": real / len(ids), "peak_gpu_memory_gib": peak, "rows": rows}


def bench_grid(width: int, device: str, seeds: int, layers: int, topic_sizes: tuple[int, ...]) -> dict:
    """360 probes (by default) on random features of ``width``: stacked per (layer, kind), and one layer alone."""
    generator = torch.Generator().manual_seed(0)
    n = sum(topic_sizes)
    labels = (torch.rand(n, generator=generator) < 0.5).long().numpy()
    topic = np.repeat(np.arange(len(topic_sizes)), topic_sizes)
    splits = [(np.flatnonzero(topic != t), np.flatnonzero(topic == t)) for t in range(len(topic_sizes))]
    tasks = [Task(train, labels[train], test, labels[test], seed=1000 * t + seed)
             for t, (train, test) in enumerate(splits) for seed in range(seeds)]
    rows, stacked_probes = [], {}
    for layer in range(layers):
        X = torch.randn(n, width, generator=generator).to(device)
        X[:, layer] += torch.as_tensor(labels, dtype=torch.float32, device=device)  # something to learn
        for kind in ("linear", "tiny", "small", "medium"):
            sync(device)
            t = time.perf_counter()
            probes = fit_many(X, tasks, ProbeConfig(kind), device=device)
            sync(device)
            rows.append({"width": width, "layer": layer, "kind": kind, "probes": len(tasks),
                         "stacked_s": time.perf_counter() - t})
            if layer == 0:
                stacked_probes[kind] = probes
                t = time.perf_counter()
                alone = [fit_many(X, [task], ProbeConfig(kind), device=device)[0] for task in tasks]
                sync(device)
                rows[-1]["alone_s"] = time.perf_counter() - t
                rows[-1]["max_abs_dw"] = max(float(np.abs(a - b).max()) for p, q in zip(probes, alone)
                                             for a, b in zip(p.weights_ + p.biases_, q.weights_ + q.biases_))
    return {"width": width, "probes": len(rows) * len(tasks), "stacked_s": sum(r["stacked_s"] for r in rows),
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="llama-2-7b,llama-2-13b")
    parser.add_argument("--n", type=int, default=6084, help="synthetic statements for ours")
    parser.add_argument("--naive-n", type=int, default=100, help="statements for the naive loop")
    parser.add_argument("--budgets", default="4096,16384,32768", help="token budgets (16384 = engine default)")
    parser.add_argument("--length-scale", type=float, default=1.2, help="Llama-2 / SmolLM2 token-count ratio")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--grid-widths", default="576,4096", help="feature widths for the probe grid ('' = skip)")
    parser.add_argument("--grid-budget-s", type=float, default=420,
                        help="start a probe-grid width only if fewer seconds than this have passed")
    parser.add_argument("--dry-run", action="store_true", help="tiny model, float32, CPU, 200 statements")
    args = parser.parse_args()
    topic_sizes, grid_seeds, grid_layers = SAPLMA_TOPIC_SIZES, 3, 5
    if args.dry_run:
        args.models, args.device, args.dtype = "tiny", "cpu", "float32"
        args.n, args.naive_n, args.budgets = 200, 10, "256,1024"
        args.grid_widths, topic_sizes, grid_seeds, grid_layers = "32", (40, 30, 50), 2, 2
    args.budgets = [int(b) for b in args.budgets.split(",")]
    started = time.perf_counter()
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run to check the script on CPU")
    import transformers

    transformers.logging.set_verbosity_error()
    flops = matmul_flops(getattr(torch, args.dtype), args.device, size=512 if args.dry_run else 8192)
    log(f"{args.dtype} matmul: {flops / 1e12:.2f} TFLOP/s (best of 3)", started)
    results = {"machine": info, "settings": {k: v for k, v in vars(args).items()},
               "matmul_tflops": flops / 1e12, "models": []}

    def save() -> None:
        if os.environ.get("OUT"):
            os.makedirs(os.environ["OUT"], exist_ok=True)
            with open(os.path.join(os.environ["OUT"], "gpu_results.json"), "w") as handle:
                json.dump(results, handle, indent=2, default=str)

    for name in args.models.split(","):
        results["models"].append(bench_model(name, args, flops, started))
        save()
    results["grid"] = []
    for width in [int(w) for w in args.grid_widths.split(",") if w]:
        if time.perf_counter() - started > args.grid_budget_s:
            log(f"probe grid at width {width} skipped: past --grid-budget-s", started)
            break
        results["grid"].append(bench_grid(width, args.device, grid_seeds, grid_layers, topic_sizes))
        log(f"probe grid, width {width}: {results['grid'][-1]['probes']} probes stacked in "
            f"{results['grid'][-1]['stacked_s']:.1f} s", started)
        save()
    rows = [row for model in results["models"] for row in model["rows"]]
    print(f"\n## GPU extraction, synthetic SAPLMA-length statements (x{args.length_scale} + BOS), "
          f"{args.dtype} on {info.get('gpu', info['cpu'])}\n")
    print(table(rows))
    for model in results["models"]:
        print(f"{model['model']}: mean {model['mean_tokens']:.1f} tokens/statement, "
              f"peak GPU memory {model['peak_gpu_memory_gib'] or 0:.1f} GiB")
    if results["grid"]:
        print(f"\n## Probe grid on {args.device} (random features, SAPLMA settings; alone = layer 0 one probe "
              "at a time; max_abs_dw = largest weight difference stacked vs alone)\n")
        print(table([row for grid in results["grid"] for row in grid["rows"]]))
    log("done", started)


if __name__ == "__main__":
    main()
