"""Command line: ``python -m probing {extract,reproduce,data,score}``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from contextlib import contextmanager

from probing.activations import POSITIONS, Activations
from probing.experiments import GridConfig
from probing.models import EMBEDDED, ModelLoadError, ModelSpec
from probing.probes import PROBE_KINDS
from probing.results import load_study, markdown_table
from probing.statements import DatasetError, load_dataset
from probing.storage import CacheError


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as -1,-5,-9, got {text!r}")


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
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


def launcher_shard() -> tuple[int, int] | None:
    """(rank, world) set by torchrun / accelerate launch (RANK, WORLD_SIZE) or mpirun, if any."""
    for rank_name, world_name in (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                                  ("PMI_RANK", "PMI_SIZE")):
        if rank_name in os.environ and world_name in os.environ:
            world = int(os.environ[world_name])
            return (int(os.environ[rank_name]), world) if world > 1 else None
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m probing", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=EMBEDDED,
                       help="'embedded' (SmolLM2-135M, default), llama-2-7b, llama-2-13b, a hub id, a folder or a .gguf file")
        p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: chosen for the device")
        p.add_argument("--device", help="where the model runs and probes train: cpu, cuda, cuda:1 ... (default: cuda if available)")
        p.add_argument("--position", choices=POSITIONS, default="last", help="token whose hidden state is read")
        p.add_argument("--cache", default="cache", help="activation cache folder (default: cache/)")

    def dataset_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="builtin",
                       help="'builtin', a folder of <topic>_true_false.csv files, or one CSV")
        p.add_argument("--drop-duplicates", action="store_true", help="drop repeated statements")

    extract = commands.add_parser("extract", help="compute and cache activations of every layer")
    model_options(extract)
    dataset_options(extract)
    extract.add_argument("--shard", type=_shard, default=None,
                         help="RANK/WORLD: this process's share (default: from torchrun / accelerate / MPI "
                              "environment variables when launched by one of them)")

    reproduce = commands.add_parser("reproduce", help="extract what is missing, train the grid, write results")
    model_options(reproduce)
    dataset_options(reproduce)
    reproduce.add_argument("--layers", type=_int_list, default=(-1, -5, -9, -13, -17),
                           help="hidden-state indices, negative = from the end (default -1,-5,-9,-13,-17)")
    reproduce.add_argument("--probes", type=_kinds, default=("linear", "tiny", "small", "medium"),
                           help=f"comma-separated, from {','.join(PROBE_KINDS)}")
    reproduce.add_argument("--seeds", type=int, default=1, help="seeds per probe and split (default 1)")
    reproduce.add_argument("--split", choices=("category", "random", "within"), default="category",
                           help="category: hold one topic out (default); random: one stratified 80/20 split; "
                                "within: per topic, train and test inside the topic")
    reproduce.add_argument("--epochs", type=int, default=5)
    reproduce.add_argument("--lr", type=float, default=1e-3)
    reproduce.add_argument("--batch-size", type=int, default=32)
    reproduce.add_argument("--linear-solver", choices=("lbfgs", "adam"), default="lbfgs",
                           help="lbfgs (default): L2-regularised logistic regression fitted to convergence, "
                                "as scikit-learn does (see --C); adam: the SAPLMA training loop")
    reproduce.add_argument("--C", type=float, default=0.1, help="inverse L2 strength for the lbfgs solver (default 0.1)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        return COMMANDS[args.command](args)
    except (DatasetError, ModelLoadError, CacheError, FileNotFoundError, ValueError, IndexError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is cached; run the same command to resume",
              file=sys.stderr)
        return 130


@contextmanager
def _bar(description: str, unit: str):
    """A tqdm bar driven by (done, total) callbacks."""
    from tqdm import tqdm

    bar = tqdm(desc=description, unit=unit, dynamic_ncols=True, disable=None)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _activations(args) -> Activations:
    spec = ModelSpec(args.model, device=args.device, dtype=args.dtype)
    return Activations(spec, position=args.position, cache_dir=args.cache)


def _dataset(args):
    dataset = load_dataset(args.dataset, drop_duplicates=args.drop_duplicates)
    if dataset.duplicates.count and not args.drop_duplicates:
        example, lines = next(iter(dataset.duplicates.where.items()))
        print(f"note: {dataset.duplicates.count} repeated statement(s) kept, e.g. {example!r} on lines "
              f"{lines}; --drop-duplicates removes them", file=sys.stderr)
    return dataset


def cmd_extract(args) -> int:
    dataset = _dataset(args)
    shard = args.shard or launcher_shard()
    if shard and args.device is None and torch_cuda_count() > 1:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', shard[0]))}"  # one GPU per process
    activations = _activations(args)
    label = f"extracting (shard {shard[0] + 1} of {shard[1]})" if shard else "extracting"
    with _bar(label, "stmt") as progress:
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


def cmd_reproduce(args) -> int:
    from probing.study import reproduce

    dataset = _dataset(args)
    config = GridConfig(layers=args.layers, probes=args.probes, seeds=args.seeds, split=args.split,
                        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                        linear_solver=args.linear_solver, C=args.C, controls=not args.no_controls,
                        device=args.device or "auto")
    activations = _activations(args)
    with _bar("extracting", "stmt") as extract_progress, _bar("training", "probe") as train_progress:
        outputs = reproduce(dataset, activations, config, args.out,
                            on_extract=extract_progress, on_train=train_progress)
    print(f"\n{dataset.name}: {len(dataset)} statements, {len(dataset.topics)} topics; "
          f"model {args.model}; {outputs.computed_statements} statements extracted this run\n")
    print(f"Mean accuracy over the {config.split} splits\n\n{markdown_table(outputs.accuracy_mean)}")
    print(f"Max accuracy over the splits\n\n{markdown_table(outputs.accuracy_max)}")
    if not outputs.directions_cosine.empty:
        print(f"Directions: mean pairwise cosine\n\n{markdown_table(outputs.directions_cosine)}")
        print(f"Directions: fractional sign equality\n\n{markdown_table(outputs.directions_sign)}")
    print(f"results written to {args.out}/")
    return 0


def cmd_data(args) -> int:
    dataset = _dataset(args)
    if args.out == "-":
        dataset.frame.to_csv(sys.stdout, index=False)
    else:
        path = dataset.to_csv(args.out)
        print(f"{len(dataset)} statements written to {path}")
    return 0


def cmd_score(args) -> int:
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

if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
