"""Command line: ``python -m probing {extract,reproduce,data,score}`` (``probing ...`` once installed).

Options, paths and launcher variables are checked before torch is imported, so a
typo fails in a fraction of a second with one ``error: ...`` line (exit code 2).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from probing.constants import DEVICE_KINDS, DTYPE_NAMES, EMBEDDED, MAX_TOKENS, POSITIONS, PROBE_KINDS, SPLIT_KINDS

if TYPE_CHECKING:
    from probing.activations import Activations, Progress
    from probing.statements import StatementSet

LAUNCHER_VARIABLES = (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                      ("PMI_RANK", "PMI_SIZE"))
"""(rank, world size) variables of torchrun / accelerate launch, Open MPI and other MPI launchers."""
_DEVICE = re.compile(rf"({'|'.join(DEVICE_KINDS)})(:\d+)?")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as -1,-5,-9, got {text!r}")
    if not layers:
        raise argparse.ArgumentTypeError("expected at least one layer, such as -1,-5,-9")
    repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(f"layer(s) {repeated} given more than once in {text!r}")
    return layers


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    if not kinds:
        raise argparse.ArgumentTypeError(f"expected at least one probe kind from {','.join(PROBE_KINDS)}")
    unknown = [k for k in kinds if k not in PROBE_KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown probe kind(s) {unknown}; choose from {','.join(PROBE_KINDS)}")
    return kinds


def _shard(text: str) -> tuple[int, int]:
    try:
        rank, world = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RANK/WORLD such as 0/2, got {text!r}")
    if not 0 <= rank < world:
        raise argparse.ArgumentTypeError(f"rank must be in 0..WORLD-1, got {text!r}")
    return rank, world


def _count(text: str) -> int:
    """A whole number >= 1 (epochs, seeds, batch size, a token limit)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive(text: str) -> float:
    """A finite number > 0 (learning rate, C): inf or nan would train nothing and report chance."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.001, got {text!r}")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _device(text: str) -> str:
    """The syntax of a device; whether it exists here is checked once torch is loaded."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device: use {', '.join(DEVICE_KINDS)} or cuda:N (N = the GPU's index)")
    return text


def _environment_int(name: str) -> int:
    """A launcher's integer variable, or an error naming it."""
    text = os.environ[name]
    try:
        return int(text)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={text!r} is not an integer. Launchers (torchrun, accelerate "
            f"launch, mpirun) set it to a process number: unset it, or pass --shard RANK/WORLD instead"
        ) from None


def launcher_shard() -> tuple[int, int] | None:
    """(rank, world) set by torchrun / accelerate launch (RANK, WORLD_SIZE) or mpirun, if any."""
    for rank_name, world_name in LAUNCHER_VARIABLES:
        if rank_name in os.environ and world_name in os.environ:
            rank, world = _environment_int(rank_name), _environment_int(world_name)
            if not 0 <= rank < world:
                raise ValueError(f"environment variables {rank_name}={rank} and {world_name}={world}: the rank "
                                 f"must be in 0..{world_name}-1. Fix the launcher command or unset them")
            return (rank, world) if world > 1 else None
    return None


def _program() -> str:
    """How we were started: the ``probing`` console script or ``python -m probing``."""
    return "probing" if Path(sys.argv[0]).name == "probing" else "python -m probing"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_program(), description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=EMBEDDED,
                       help="'embedded' (SmolLM2-135M, default), llama-2-7b, llama-2-13b, a hub id, a folder or a .gguf file")
        p.add_argument("--dtype", choices=DTYPE_NAMES, help="default: chosen for the device")
        p.add_argument("--device", type=_device,
                       help="where the model runs and probes train: cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--position", choices=POSITIONS, default="last", help="token whose hidden state is read")
        p.add_argument("--cache", default="cache", help="activation cache folder (default: cache/)")

    def dataset_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="builtin",
                       help="'builtin', a folder of <topic>_true_false.csv files, or one CSV")
        p.add_argument("--drop-duplicates", action="store_true", help="drop repeated statements")

    def extraction_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-tokens", type=_count, default=MAX_TOKENS,
                       help=f"refuse statements longer than this many tokens (default {MAX_TOKENS})")

    extract = commands.add_parser("extract", help="compute and cache activations of every layer")
    model_options(extract)
    dataset_options(extract)
    extraction_options(extract)
    extract.add_argument("--shard", type=_shard, default=None,
                         help="RANK/WORLD: this process's share (default: from torchrun / accelerate / MPI "
                              "environment variables when launched by one of them)")

    reproduce = commands.add_parser("reproduce", help="extract what is missing, train the grid, write results")
    model_options(reproduce)
    dataset_options(reproduce)
    extraction_options(reproduce)
    reproduce.add_argument("--layers", type=_int_list, default=(-1, -5, -9, -13, -17),
                           help="hidden-state indices, negative = from the end (default -1,-5,-9,-13,-17)")
    reproduce.add_argument("--probes", type=_kinds, default=("linear", "tiny", "small", "medium"),
                           help=f"comma-separated, from {','.join(PROBE_KINDS)}")
    reproduce.add_argument("--seeds", type=_count, default=1, help="seeds per probe and split (default 1)")
    reproduce.add_argument("--split", choices=SPLIT_KINDS, default="category",
                           help="category: hold one topic out (default); random: one stratified 80/20 split; "
                                "within: per topic, train and test inside the topic")
    reproduce.add_argument("--epochs", type=_count, default=5)
    reproduce.add_argument("--lr", type=_positive, default=1e-3)
    reproduce.add_argument("--batch-size", type=_count, default=32)
    reproduce.add_argument("--linear-solver", choices=("lbfgs", "adam"), default="lbfgs",
                           help="lbfgs (default): L2-regularised logistic regression fitted to convergence, "
                                "as scikit-learn does (see --C); adam: the SAPLMA training loop")
    reproduce.add_argument("--C", type=_positive, default=0.1,
                           help="inverse L2 strength for the lbfgs solver (default 0.1)")
    reproduce.add_argument("--no-controls", action="store_true", help="skip the text-only and shuffled-label controls")
    reproduce.add_argument("--out", default="results", help="results folder (default results/)")

    data = commands.add_parser("data", help="write a statement set to CSV (statement,label,topic,...)")
    dataset_options(data)
    data.add_argument("--out", required=True, help="CSV file to write ('-' for standard output)")

    score = commands.add_parser("score", help="P(true) per layer from the probes of a results folder")
    score.add_argument("statement", nargs="+", help="one or more statements")
    score.add_argument("--results", default="results", help="results folder written by `reproduce`")
    return parser


def _join_negative_values(argv: list[str]) -> list[str]:
    """Let ``--layers -1,-5`` work: argparse would read "-1,-5" as an option."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] == "--layers" and token.startswith("-"):
            joined[-1] = f"--layers={token}"
        else:
            joined.append(token)
    return joined


def check_paths(args: argparse.Namespace) -> None:
    """Refuse output and cache paths of the wrong kind before anything is loaded or computed."""
    cache = getattr(args, "cache", None)
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise ValueError(f"--cache {cache} is a file, but the activation cache is a folder: "
                         "pass a folder (it is created if missing)")
    if args.command == "reproduce" and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file, but results go into a folder: "
                         "pass a folder (it is created if missing)")
    if args.command == "data" and args.out != "-" and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; pass the CSV file to write, "
                         f"such as {Path(args.out) / 'statements.csv'}")


def _message_errors() -> tuple[type[Exception], ...]:
    """Errors whose text is meant for the user. The engine's own error types are looked up only
    in modules already imported: an error cannot come from a module that never loaded."""
    errors: list[type[Exception]] = [ValueError, OSError, IndexError]  # DatasetError is a ValueError
    for module, name in (("probing.models", "ModelLoadError"), ("probing.storage", "CacheError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input ends with one ``error: ...`` line and exit code 2."""
    # Here rather than in a __main__ block, so that `python -m probing` and the console script
    # both set it before tokenizers loads (it would warn on fork otherwise).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        check_paths(args)
        return COMMANDS[args.command](args)
    except _message_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is cached; run the same command to resume",
              file=sys.stderr)
        return 130


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class PlainProgress:
    """A (done, total) callback printing plain lines: at the start, every ~10 % or ``every_s``
    seconds, and at the end. For logs and CI, where a redrawn bar shows nothing."""

    def __init__(self, description: str, unit: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, every_s: float = 10.0) -> None:
        self.description, self.unit = description, unit
        self.stream, self.clock, self.every_s = stream, clock, every_s
        self.total: int | None = None
        self.started = self.printed_at = 0.0
        self.printed_done = 0

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if total != self.total:  # the first call, or a new round with a new total
            self.total, self.started = total, now
            self._print(done, now)
        elif done != self.printed_done and (
                done >= total or done - self.printed_done >= total / 10 or now - self.printed_at >= self.every_s):
            self._print(done, now)

    def _print(self, done: int, now: float) -> None:
        self.printed_done, self.printed_at = done, now
        total = self.total
        if not total:
            line = f"{self.description}: nothing to do"
        else:
            line = f"{self.description}: {done}/{total} {self.unit} ({round(100 * done / total)} %)"
            elapsed = now - self.started
            if done and elapsed > 0:
                rate = done / elapsed
                line += f", {rate:.1f}/s, " + (f"took {_duration(elapsed)}" if done >= total
                                               else f"about {_duration((total - done) / rate)} left")
        print(line, file=self.stream or sys.stderr, flush=True)


@contextmanager
def _progress(description: str, unit: str) -> Iterator[Progress]:
    """A (done, total) callback: a tqdm bar on a terminal, plain lines elsewhere."""
    if not sys.stderr.isatty():
        yield PlainProgress(description, unit)
        return
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _activations(args: argparse.Namespace) -> Activations:
    from probing.activations import Activations
    from probing.models import ModelSpec

    spec = ModelSpec(args.model, device=args.device, dtype=args.dtype)
    return Activations(spec, position=args.position, cache_dir=args.cache, max_tokens=args.max_tokens)


def _dataset(args: argparse.Namespace) -> StatementSet:
    from probing.statements import load_dataset

    dataset = load_dataset(args.dataset, drop_duplicates=args.drop_duplicates)
    if dataset.duplicates.count and not args.drop_duplicates:
        example, lines = next(iter(dataset.duplicates.where.items()))
        print(f"note: {dataset.duplicates.count} repeated statement(s) kept, e.g. {example!r} on lines "
              f"{lines}; --drop-duplicates removes them", file=sys.stderr)
    return dataset


def cmd_extract(args: argparse.Namespace) -> int:
    shard = args.shard or launcher_shard()
    local_rank = _environment_int("LOCAL_RANK") if shard and "LOCAL_RANK" in os.environ else None
    dataset = _dataset(args)
    if shard and args.device is None and torch_cuda_count() > 1:
        args.device = f"cuda:{shard[0] if local_rank is None else local_rank}"  # one GPU per process
    activations = _activations(args)
    label = f"extracting (shard {shard[0] + 1} of {shard[1]})" if shard else "extracting"
    with _progress(label, "statements") as progress:
        computed = activations.ensure(dataset.statements, on_progress=progress, shard=shard)
    if shard:
        left = len(activations.missing(dataset.statements))
        print(f"shard {shard[0]}/{shard[1]}: {computed} statement(s) computed; {left} not cached yet "
              "(other shards may still be running)")
    else:
        print(f"{computed} statement(s) computed, {len(set(dataset.statements)) - computed} already cached "
              f"({activations.cache_dir})")
    return 0


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    dataset = _dataset(args)
    from probing.experiments import GridConfig
    from probing.results import markdown_table
    from probing.study import reproduce

    config = GridConfig(layers=args.layers, probes=args.probes, seeds=args.seeds, split=args.split,
                        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        linear_solver=args.linear_solver, C=args.C, controls=not args.no_controls,
                        device=args.device or "auto")
    activations = _activations(args)
    with _progress("extracting", "statements") as on_extract, _progress("training", "probes") as on_train:
        outputs = reproduce(dataset, activations, config, args.out, on_extract=on_extract, on_train=on_train)
    print(f"\n{dataset.name}: {len(dataset)} statements, {len(dataset.topics)} topics; "
          f"model {args.model}; {outputs.computed_statements} statements extracted this run\n")
    print(f"Mean accuracy over the {config.split} splits\n\n{markdown_table(outputs.accuracy_mean)}")
    print(f"Max accuracy over the splits\n\n{markdown_table(outputs.accuracy_max)}")
    if not outputs.directions_cosine.empty:
        print(f"Directions: mean pairwise cosine\n\n{markdown_table(outputs.directions_cosine)}")
        print(f"Directions: fractional sign equality\n\n{markdown_table(outputs.directions_sign)}")
    print(f"results written to {args.out}/")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    dataset = _dataset(args)
    if args.out == "-":
        dataset.frame.to_csv(sys.stdout, index=False)
    else:
        path = dataset.to_csv(args.out)
        print(f"{len(dataset)} statements written to {path}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from probing.results import markdown_table, read_config

    read_config(args.results)  # a missing or outdated folder fails here, before torch loads
    from probing.activations import Activations
    from probing.models import ModelSpec
    from probing.results import load_study
    from probing.scoring import score_statements

    study = load_study(args.results)
    model = study.config["model"]
    spec = ModelSpec(model["name"], device=model["device"], dtype=model["dtype"], revision=model.get("revision"))
    activations = Activations(spec, position=study.config["position"], cache_dir=study.config["cache"])
    scores = score_statements(activations, study.probes, args.statement)
    for statement, rows in scores.groupby("statement", sort=False):
        table = rows.pivot(index="layer", columns="probe", values="p_true").sort_index(ascending=False)
        print(f"P(true) for {statement!r}\n\n{markdown_table(table.reset_index())}")
    return 0


COMMANDS = {"extract": cmd_extract, "reproduce": cmd_reproduce, "data": cmd_data, "score": cmd_score}
