"""Warm start: what it costs to come back to a study whose activations are already cached.

Measured, with every statement's activations in the disk cache and no model loaded:

- loading one layer for all 6,084 statements in a fresh process with a fresh
  ``Activations`` object (``Activations.layer``), split into importing the
  package, reading the dataset, opening the cache and reading the layer, plus a
  second read in the same process; several fresh processes, best and median.
  The OS page cache is warm (the files were read before); nothing drops it;
- wall time and peak RSS of ``python -m probing reproduce --layers -1 --probes
  linear --no-controls`` on that warm cache, run as a subprocess; its peak RSS is
  ``getrusage(RUSAGE_CHILDREN)`` in a small launcher process that runs it (see
  ``run_child`` for why not from this process);
- the dashboard's Overview page on the built-in statements (all of them, cached):
  in a fresh process, Streamlit's AppTest runs ``app.py`` once (this loads the
  model, once per process as in ``streamlit run``), then a second session opens
  the Overview; its script run is timed until the page is complete.

    python -m benchmarks.warm_start            # all 6,084 statements
    python -m benchmarks.warm_start --quick    # 50 statements per topic
"""

from __future__ import annotations

import time

_STARTED = time.perf_counter()  # the child's import time counts from here (torch included)

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD_FLAG = "--child"
APP_CHILD_FLAG = "--app-child"


def child(saplma: str, per_topic: int | None, layer: int, cache: str) -> None:
    """In a fresh process: time import, dataset, cache open and two reads of one layer; print JSON."""
    t0 = _STARTED
    from benchmarks._common import peak_rss_mb
    from probing.store.activations import Activations
    from probing.data.datasets import load_dataset

    t1 = time.perf_counter()
    dataset = load_dataset(saplma, drop_conflicts=True)
    if per_topic:
        dataset = dataset.subset(per_topic=per_topic)
    texts = dataset.statements
    t2 = time.perf_counter()
    activations = Activations("embedded", cache_dir=cache)
    t3 = time.perf_counter()
    features = activations.layer(texts, layer)
    t4 = time.perf_counter()
    activations.layer(texts, layer)
    t5 = time.perf_counter()
    print(json.dumps({"import_s": t1 - t0, "dataset_s": t2 - t1, "open_s": t3 - t2, "layer_s": t4 - t3,
                      "layer_again_s": t5 - t4, "shape": list(features.shape),
                      "model_loaded": activations.model_loaded, "rss_mib": peak_rss_mb()}))


def app_child(per_topic: int | None, cache: str) -> None:
    """In a fresh process: first session (loads the model), then a second session's Overview; print JSON."""
    os.environ.update(PROBING_CACHE=cache, PROBING_MODEL="embedded", PROBING_PER_TOPIC=str(per_topic or 0))
    from streamlit.testing.v1 import AppTest

    def session() -> tuple[float, AppTest]:
        started = time.perf_counter()
        app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=900).run()
        return time.perf_counter() - started, app

    first_s, _ = session()
    overview_s, app = session()
    errors = [e.value for e in app.exception] + [e.value for e in app.error]
    texts = [p.proto.text for p in app.get("progress")]
    print(json.dumps({"first_session_s": first_s, "overview_s": overview_s, "title": app.title[0].value,
                      "errors": errors, "cache_line": next((t for t in texts if " of " in str(t)), None)}))


_LAUNCHER = """
import json, os, resource, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status = os.waitpid(pid, 0)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as out:
    json.dump({"wall": time.perf_counter() - started, "rss_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, out)
"""


def run_child(command: list[str]) -> tuple[float, float, str]:
    """Run ``command``; return (wall seconds, its own peak RSS in MiB, stdout).

    A small launcher process forks and runs ``command`` and reads
    ``getrusage(RUSAGE_CHILDREN)``: read from this (large) process directly, Linux
    would report this process's RSS, since a child's ru_maxrss keeps the memory
    it had before ``exec`` and ``subprocess`` starts children with ``vfork``.
    """
    with tempfile.TemporaryDirectory() as folder, open(f"{folder}/stdout", "w+") as out:
        launcher = [sys.executable, "-c", _LAUNCHER, f"{folder}/usage.json", *command]
        subprocess.run(launcher, stdout=out, stderr=subprocess.DEVNULL, env=os.environ.copy(), check=False)
        out.seek(0)
        text = out.read()
        usage = json.loads(open(f"{folder}/usage.json").read())
    if usage["code"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {usage['code']}:\n{text[-2000:]}")
    return usage["wall"], usage["rss_kib"] / 1024, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-topic", type=int, default=None, help="statements per topic (default: all)")
    parser.add_argument("--layer", type=int, default=-1)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes for the layer load")
    parser.add_argument("--cache", default=None, help="activation cache (default cache/bench)")
    parser.add_argument("--quick", action="store_true", help="50 statements per topic, 2 repeats")
    parser.add_argument("--saplma", default=None,
                        help="SAPLMA True-False folder (default: $PROBING_SAPLMA, else ../shared/datasets/azaria-mitchell)")
    parser.add_argument(CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(APP_CHILD_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cache = args.cache or "cache/bench"  # benchmarks._common.BENCH_CACHE, not imported yet: it imports torch
    if args.child:
        return child(args.saplma, args.per_topic, args.layer, cache)
    if args.app_child:
        return app_child(args.per_topic, cache)
    if args.quick:
        args.per_topic, args.repeats = args.per_topic or 50, 2

    from benchmarks._common import SAPLMA_DATA, cached_activations, print_machine, table
    saplma = args.saplma or SAPLMA_DATA
    from probing.data.builtin import load_builtin
    from probing.data.datasets import load_dataset

    print_machine()
    dataset = load_dataset(saplma, drop_conflicts=True)
    if args.per_topic:
        dataset = dataset.subset(per_topic=args.per_topic)
    _, computed, _ = cached_activations(dataset.statements, cache)
    print(f"{len(dataset)} statements; activations cached ({computed} computed now, not timed)", flush=True)

    me = [sys.executable, "-m", "benchmarks.warm_start", CHILD_FLAG, "--layer", str(args.layer), "--cache", cache,
          "--saplma", saplma]
    if args.per_topic:
        me += ["--per-topic", str(args.per_topic)]
    runs = []
    for _ in range(args.repeats):
        wall, rss, text = run_child(me)
        runs.append({**json.loads(text.strip().splitlines()[-1]), "process_wall_s": wall, "process_rss_mib": rss})
        print(f"fresh process: layer {args.layer} read in {runs[-1]['layer_s']:.2f} s, process {wall:.1f} s",
              flush=True)
    assert not any(r["model_loaded"] for r in runs), "the model was loaded: the cache was not warm"
    keys = ["import_s", "dataset_s", "open_s", "layer_s", "layer_again_s", "process_wall_s", "process_rss_mib"]
    rows = [{"statistic": name, **{k: f([r[k] for r in runs]) for k in keys}}
            for name, f in (("best", min), ("median", statistics.median))]

    with tempfile.TemporaryDirectory() as folder:
        source = saplma if not args.per_topic else str(dataset.to_csv(f"{folder}/subset.csv"))
        command = [sys.executable, "-m", "probing", "reproduce", "--dataset", source, "--drop-conflicts",
                   "--layers", "-1", "--probes", "linear", "--no-controls", "--cache", cache, "--out", f"{folder}/results"]
        wall, rss, text = run_child(command)
        extracted = json.loads(open(f"{folder}/results/config.json").read())["statements_extracted_this_run"]

    builtin = load_builtin(per_topic=args.per_topic)
    _, computed, _ = cached_activations(builtin.statements, cache)
    print(f"built-in set: {len(builtin)} statements cached ({computed} computed now, not timed)", flush=True)
    app_command = [sys.executable, "-m", "benchmarks.warm_start", APP_CHILD_FLAG, "--cache", cache]
    if args.per_topic:
        app_command += ["--per-topic", str(args.per_topic)]
    app_wall, app_rss, app_text = run_child(app_command)
    app = json.loads(app_text.strip().splitlines()[-1])
    assert not app["errors"], app["errors"]

    print(f"\n## Warm start, {len(dataset)} statements, layer {args.layer}, {args.repeats} fresh processes\n")
    print(table(rows))
    print(f"\nrows: shape {runs[0]['shape']}; layer_s is Activations.layer in a fresh process; model loaded: no")
    print(f"\n`{' '.join(['python', *command[1:]])}`: {wall:.1f} s wall, peak RSS {rss:.0f} MiB, "
          f"statements extracted: {extracted}")
    print(f"\nDashboard, built-in set ({len(builtin)} statements, all cached), one fresh process "
          f"({app_wall:.1f} s, peak RSS {app_rss:.0f} MiB): first session (loads the model) "
          f"{app['first_session_s']:.1f} s; a second session's Overview ready in {app['overview_s']:.2f} s "
          f"(page: {app['title']!r}; cache line: {app['cache_line']!r})")


if __name__ == "__main__":
    main()
