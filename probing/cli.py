"""Command line: ``python -m probing {extract,reproduce,data,score,steer,compare,cache}`` (``probing ...`` once installed).

The options of a study come from the fields of :class:`probing.study.config.StudyConfig` (their
defaults, help and checks). Options, paths and launcher variables are checked before torch is
imported, so a typo fails in a fraction of a second with one ``error: ...`` line (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import Field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from probing.study.config import SteeringConfig, StudyConfig, read_floats, read_ints, read_names
from probing.constants import STEER_DIRECTIONS, STEER_POSITIONS

if TYPE_CHECKING:
    from probing.store.activations import Activations, Progress
    from probing.study.results import StudyResult
    from probing.store.store import NamespaceMerge
    from probing.data.statements import StatementSet

LAUNCHER_VARIABLES = (("RANK", "WORLD_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                      ("PMI_RANK", "PMI_SIZE"))
"""(rank, world size) variables of torchrun / accelerate launch, Open MPI and other MPI launchers."""


def _shard(text: str) -> tuple[int, int]:
    try:
        rank, world = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected RANK/WORLD such as 0/2, got {text!r}")
    if not 0 <= rank < world:
        raise argparse.ArgumentTypeError(f"rank must be in 0..WORLD-1, got {text!r}")
    return rank, world


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


def _node(text: str) -> int:
    try:
        node = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a node number such as 0 or 1, got {text!r}") from None
    if node < 0:
        raise argparse.ArgumentTypeError(f"the node number must be 0 or more, got {node}")
    return node


def launcher_node() -> int | None:
    """The node rank when torchrun / accelerate launch started processes on several nodes, else None.

    Their agents set GROUP_RANK (the node's rank under the default static rendezvous, i.e.
    ``--node_rank``), LOCAL_WORLD_SIZE (processes on this node) and WORLD_SIZE (in all).
    """
    names = ("GROUP_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE")
    if not all(name in os.environ for name in names):
        return None
    node, local_world, world = (_environment_int(name) for name in names)
    return node if world > local_world else None


def _program() -> str:
    """How we were started: the ``probing`` console script or ``python -m probing``."""
    return "probing" if Path(sys.argv[0]).name == "probing" else "python -m probing"


def _option_value(spec: Field) -> Callable[[str], Any]:
    """argparse's ``type`` for a StudyConfig field: read the text, then the field's own check."""
    read, check = spec.metadata["read"] or str, spec.metadata["check"]

    def convert(text: str) -> Any:
        try:
            return check(read(text))
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def add_study_options(parser: argparse.ArgumentParser, *groups: str) -> None:
    """One option per StudyConfig field of ``groups`` (see ``probing.study.config.OPTION_GROUPS``), with the
    field's default, help and check: ``--batch-size`` for ``batch_size``; a flag that is on by default
    is turned off with ``--no-<name>``."""
    for spec in fields(StudyConfig):
        if spec.metadata["group"] not in groups:
            continue
        name, help_text = spec.name.replace("_", "-"), spec.metadata["help"]
        if isinstance(spec.default, bool):
            if spec.default:
                parser.add_argument(f"--no-{name}", dest=spec.name, action="store_false", help=f"skip {help_text}")
            else:
                parser.add_argument(f"--{name}", dest=spec.name, action="store_true", help=help_text)
            continue
        if spec.default is not None:
            shown = ",".join(map(str, spec.default)) if isinstance(spec.default, tuple) else spec.default
            help_text += f" (default: {shown})"
        if spec.metadata["choices"]:
            parser.add_argument(f"--{name}", dest=spec.name, default=spec.default, choices=spec.metadata["choices"],
                                help=help_text)
        else:
            parser.add_argument(f"--{name}", dest=spec.name, default=spec.default, type=_option_value(spec),
                                help=help_text)


def study_config(args: argparse.Namespace) -> StudyConfig:
    """The StudyConfig of the parsed options (fields a command has no option for keep their default)."""
    given = {spec.name: getattr(args, spec.name) for spec in fields(StudyConfig) if hasattr(args, spec.name)}
    return StudyConfig(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=_program(), description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="compute and cache activations of every layer")
    add_study_options(extract, "model", "dataset", "extraction")
    extract.add_argument("--shard", type=_shard, default=None,
                         help="RANK/WORLD: this process's share (default: from torchrun / accelerate / MPI "
                              "environment variables when launched by one of them)")
    extract.add_argument("--node", type=_node, default=None,
                         help="write into CACHE/nodes/node-K, this node's own folder of a multi-node run, to "
                              "be merged afterwards (default: GROUP_RANK when torchrun / accelerate launch "
                              "span several nodes, else CACHE/activations)")

    reproduce = commands.add_parser("reproduce", help="extract what is missing, train the grid, write results")
    add_study_options(reproduce, "model", "dataset", "extraction", "grid", "analysis")
    reproduce.add_argument("--out", default=None,
                           help="results folder (default: a new one, results/<model>-<dataset>-study-<time>)")
    reproduce.add_argument("--overwrite", action="store_true",
                           help="write into an --out that holds another study, the input statements or files of "
                                "the results' names (files this tool did not write are never deleted)")

    data = commands.add_parser("data", help="write a statement set to CSV (statement,label,topic,...)")
    add_study_options(data, "dataset")
    data.add_argument("--out", required=True, help="CSV file to write ('-' for standard output)")

    steer = commands.add_parser("steer", help="add a truth direction to the residual stream and measure the "
                                              "model's True/False answer (writes steering.csv/.md)")
    defaults = SteeringConfig()
    steer.add_argument("--results", default=None, help="results folder whose model, statements and token "
                                                        "position are used (default: the newest in results/)")
    steer.add_argument("--dataset", default=None,
                       help="the statements (needed when the results folder records a file or folder: a results "
                            "folder's paths are never opened)")
    steer.add_argument("--cache", default=StudyConfig().cache, help=CACHE_HELP)
    steer.add_argument("--probe-layer", type=int, default=defaults.probe_layer,
                       help=f"layer the directions are fitted at (default: {defaults.probe_layer})")
    steer.add_argument("--layers", type=_steer_value(read_ints), default=None,
                       help="layers whose blocks get the vector (default: the probe layer and the two before it)")
    steer.add_argument("--alphas", type=_steer_value(read_floats), default=defaults.alphas,
                       help="multiples of the class-mean distance to add (default: "
                            f"{','.join(f'{a:g}' for a in defaults.alphas)})")
    steer.add_argument("--directions", type=_steer_value(read_names), default=defaults.directions,
                       help=f"from {','.join(STEER_DIRECTIONS)} (default: {','.join(defaults.directions)}; "
                            "random and shuffled are the controls)")
    steer.add_argument("--statements", type=int, default=defaults.statements,
                       help=f"held-out statements to measure on (default: {defaults.statements})")
    steer.add_argument("--position", choices=STEER_POSITIONS, default=defaults.position,
                       help="tokens that get the vector: the statement's, the prompt's last, or all")

    compare = commands.add_parser("compare", help="two results folders side by side: grids aligned by relative "
                                                  "depth and by index, direction statistics")
    compare.add_argument("folders", nargs="*", metavar="DIR", help="two results folders (A, then B)")
    compare.add_argument("--models", type=_steer_value(read_names), default=None,
                         help="instead of folders: two models (A,B) on --dataset with the grid options; a results "
                              "folder under results/ that matches is used, what is missing is computed (B at the "
                              "layers of A's relative depths)")
    add_study_options(compare, "model", "dataset", "extraction", "grid")
    compare.add_argument("--out", required=True, help="folder for compare_*.csv and compare.md")
    compare.add_argument("--allow-mismatch", action="store_true",
                         help="show studies of other statements or settings anyway, with the differences named")

    cache = commands.add_parser("cache", help="what an activation cache holds; merge the caches of several nodes")
    cache_commands = cache.add_subparsers(dest="cache_command", required=True)
    merge = cache_commands.add_parser("merge", help="copy the activations of SRC folders into DEST, checking "
                                                     "that they agree (run it again: it adds only what is missing)")
    merge.add_argument("destination", metavar="DEST", help="a cache folder (its activations/ is used) or an "
                                                           "activation-store folder")
    merge.add_argument("sources", nargs="+", metavar="SRC", help="cache or activation-store folders, such as "
                                                                 "cache/nodes/node-1")
    info = cache_commands.add_parser("info", help="models, positions, statements and size of a cache")
    info.add_argument("folder", nargs="?", default=StudyConfig().cache, metavar="CACHE",
                      help=f"a cache folder or an activation-store folder (default: {StudyConfig().cache})")
    migrate = cache_commands.add_parser(
        "migrate", help="rewrite a cache written by an earlier version (pickled entries) as JSON text, once; "
                        "the pickles are read with an unpickler that builds only plain data, so nothing runs")
    migrate.add_argument("folder", metavar="CACHE", help="a cache folder (its activations/ and node folders) "
                                                         "or an activation-store folder")

    score = commands.add_parser("score", help="P(true) per layer from the probes of a results folder")
    score.add_argument("statement", nargs="+", help="one or more statements")
    score.add_argument("--results", default=None,
                       help="results folder written by `reproduce` or the dashboard (default: the newest in results/)")
    score.add_argument("--cache", default=StudyConfig().cache, help=CACHE_HELP)
    return parser


CACHE_HELP = (f"activation cache (default: {StudyConfig().cache}); the one a results folder records is never used, "
              "as a folder is a record, not an instruction")


NEGATIVE_VALUED = ("--layers", "--alphas", "--probe-layer")


def _steer_value(read: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return read(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


def _join_negative_values(argv: list[str]) -> list[str]:
    """Let ``--layers -1,-5`` (and ``--alphas -2,2``, ``--probe-layer -9``) work: argparse would read
    "-1,-5" as an option."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in NEGATIVE_VALUED and token.startswith("-"):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def check_paths(args: argparse.Namespace) -> None:
    """Refuse output and cache paths of the wrong kind, and a ``reproduce --out`` that would lose files
    (:func:`~probing.study.results.check_results_out`, which expands its ``~``), before anything is loaded or computed."""
    cache = getattr(args, "cache", None)
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise ValueError(f"--cache {cache} is a file, but the activation cache is a folder: "
                         "pass a folder (it is created if missing)")
    if args.command == "reproduce" and args.out:
        from probing.study.results import check_results_out

        args.out = str(check_results_out(args.out, args.dataset, overwrite=args.overwrite))
    if args.command == "data" and args.out != "-" and Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder; pass the CSV file to write, "
                         f"such as {Path(args.out) / 'statements.csv'}")


def _message_errors() -> tuple[type[Exception], ...]:
    """Errors whose text is meant for the user. The engine's own error types are looked up only
    in modules already imported: an error cannot come from a module that never loaded."""
    errors: list[type[Exception]] = [ValueError, OSError, IndexError, MemoryError]  # DatasetError: a ValueError
    for module, name in (("probing.model.loading", "ModelLoadError"), ("probing.store.format", "CacheError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input ends with one ``error: ...`` line and exit code 2."""
    # Here rather than in a __main__ block, so that `python -m probing` and the console script
    # both set it before tokenizers loads (it would warn on fork otherwise).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = _warning_line
    args = build_parser().parse_args(_join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        check_paths(args)
        return COMMANDS[args.command](args)
    except _message_errors() as error:
        from probing.study.results import error_text

        print(f"error: {error_text(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is cached; run the same command to resume",
              file=sys.stderr)
        return 130


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (a repaired cache, say) as one ``warning: ...`` line, not Python's file:line format."""
    print(f"warning: {message}", file=sys.stderr)


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


def _activations(config: StudyConfig, store_dir: Path | None = None) -> Activations:
    from probing.store.activations import Activations

    return Activations(config.model_spec(), position=config.position, cache_dir=config.cache,
                       max_tokens=config.max_tokens, store_dir=store_dir)


def _dataset(config: StudyConfig) -> StatementSet:
    from probing.data.datasets import load_dataset

    dataset = load_dataset(config.dataset, drop_duplicates=config.drop_duplicates, polarity=config.polarity,
                           drop_conflicts=config.drop_conflicts)
    if dataset.duplicates.count and not config.drop_duplicates:
        example, lines = next(iter(dataset.duplicates.where.items()))
        print(f"note: {dataset.duplicates.count} repeated statement(s) kept, e.g. {example!r} on lines "
              f"{lines}; --drop-duplicates removes them", file=sys.stderr)
    return dataset


def cmd_extract(args: argparse.Namespace) -> int:
    shard = args.shard or launcher_shard()
    node = args.node if args.node is not None else launcher_node()
    local_rank = _environment_int("LOCAL_RANK") if shard and "LOCAL_RANK" in os.environ else None
    config = study_config(args)
    dataset = _dataset(config)
    if shard and config.device is None and torch_cuda_count() > 1:  # one GPU per process
        config = replace(config, device=f"cuda:{shard[0] if local_rank is None else local_rank}")
    from probing.store.store import node_store

    activations = _activations(config, None if node is None else node_store(config.cache, node))
    label = f"extracting (shard {shard[0] + 1} of {shard[1]})" if shard else "extracting"
    with _progress(label, "statements") as progress:
        computed = activations.ensure(dataset.statements, on_progress=progress, shard=shard)
    if node is not None:
        share = f"shard {shard[0]}/{shard[1]}" if shard else "all statements"
        print(f"node {node}, {share}: {computed} statement(s) computed; this node's activations are in "
              f"{activations.store.directory}")
        if not local_rank:  # one hint per node
            nodes = activations.store.directory.parent
            print(f"next, once every node has finished: bring the {nodes}/node-* folders together under one "
                  f"cache's nodes/ (copy them unless they are there already), then run `{_program()} reproduce "
                  f"--cache {config.cache} ...` (it merges them first) or `{_program()} cache merge "
                  f"{config.cache} {nodes}/node-*`")
    elif shard:
        left = len(activations.missing(dataset.statements))
        print(f"shard {shard[0]}/{shard[1]}: {computed} statement(s) computed; {left} not cached yet "
              "(other shards may still be running)")
    else:
        print(f"{computed} statement(s) computed here, {len(set(dataset.statements)) - computed} already cached "
              f"or computed by another process ({activations.cache_dir})")
    return 0


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    config = study_config(args)
    dataset = _dataset(config)
    from probing.study.results import markdown_table
    from probing.study.study import reproduce

    activations = _activations(config)
    merge_nodes(activations)
    from probing.dashboard.settings import RESULTS_ROOT, new_results_folder

    out = args.out or new_results_folder(Path(RESULTS_ROOT), config.model, dataset.name, "study")
    print(f"results go to {out}/", file=sys.stderr)
    with (_progress("extracting", "statements") as on_extract, _progress("training", "probes") as on_train,
          _progress("generalization", "layers") if config.generalization else nullcontext() as on_analysis,
          out_of_memory_is_an_error(config)):
        result = reproduce(dataset, activations, config, out, on_extract=on_extract, on_train=on_train,
                           on_analysis=on_analysis, overwrite=args.overwrite)
    print(f"\n{dataset.name}: {len(dataset)} statements, {len(dataset.topics)} topics; "
          f"model {config.model}; {result.meta['statements_extracted_this_run']} statements extracted this run\n")
    print(f"Mean accuracy over the {config.split} splits\n\n{markdown_table(result.accuracy_table('mean'))}")
    print(f"Max accuracy over the splits\n\n{markdown_table(result.accuracy_table('max'))}")
    if "random" in result.splits and config.split != "random":
        print(f"Accuracy on the random split\n\n{markdown_table(result.accuracy_table('mean', 'random'))}")
    if not result.directions_cosine.empty:
        print(f"Directions: mean pairwise cosine\n\n{markdown_table(result.directions_cosine)}")
        print(f"Directions: fractional sign equality\n\n{markdown_table(result.directions_sign)}")
    if config.generalization:
        _print_generalization(result)
    print(f"results written to {out}/")
    return 0


@contextmanager
def out_of_memory_is_an_error(config: StudyConfig) -> Iterator[None]:
    """A failed allocation (CPU or GPU) as one error saying what to lower; what was extracted before it
    is cached, so the rerun resumes."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        text = str(error) or type(error).__name__
        if not isinstance(error, MemoryError) and "out of memory" not in text and "allocate memory" not in text:
            raise
        raise MemoryError(
            f"out of memory ({text.splitlines()[0][:200]}): lower --batch-size (now {config.batch_size}) or train "
            "fewer --layers, --probes or --seeds at once, or use a machine with more memory; the activations "
            "extracted so far are cached, so the same command resumes") from None


def merge_nodes(activations: Activations) -> None:
    """Merge the node folders of a multi-node extraction into the activations' store (a no-op when merged)."""
    from probing.store.store import node_stores

    nodes = node_stores(activations.cache_dir)
    if nodes:
        print(f"merging {len(nodes)} node folder(s) of {nodes[0].parent} into {activations.store.directory} "
              "(what an earlier merge copied is skipped)", file=sys.stderr)
        with _progress("merging", "statements") as progress:
            _print_merge(activations.merge_nodes(progress), activations.store.directory, nodes)


def _merge(destination: Path, sources: Sequence[Path]) -> None:
    from probing.store.store import merge_stores

    with _progress("merging", "statements") as progress:
        _print_merge(merge_stores(destination, sources, on_progress=progress), destination, sources)


def _print_merge(reports: list[NamespaceMerge], destination: Path, sources: Sequence[Path]) -> None:
    from probing.store.store import describe_meta

    for report in reports:
        skipped = f"; {report.damaged} damaged chunk(s) skipped (recomputed when needed)" if report.damaged else ""
        print(f"{report.namespace} ({describe_meta(report.meta)}){' new' if report.new else ''}: "
              f"{report.copied} statement(s) copied in {report.chunks} chunk(s), {report.present} copied by an "
              f"earlier merge, {report.kept} held already (values agree; {destination}'s kept){skipped}",
              file=sys.stderr)
    if not reports:
        print(f"nothing to merge: {', '.join(map(str, sources))} hold no activations", file=sys.stderr)


def cmd_cache(args: argparse.Namespace) -> int:
    from probing.store.store import describe_meta, describe_store, node_stores, size_on_disk, store_folder

    if args.cache_command == "migrate":
        return _migrate(Path(args.folder))
    if args.cache_command == "merge":
        destination = store_folder(args.destination)
        if destination.exists() and not destination.is_dir():
            raise ValueError(f"{destination} is a file; DEST is a cache folder or an activation-store folder")
        _merge(destination, [Path(source) for source in args.sources])
        print(f"merged into {destination}")
        return 0
    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass a cache folder such as cache/")
    stores = [store_folder(folder)] + ([] if (folder / "cache.db").is_file() else node_stores(folder))
    total = 0
    for store in stores:
        size = size_on_disk(store) if store.is_dir() else 0
        total += size
        summaries = describe_store(store)
        print(f"{store}: {len(summaries)} namespace(s), {_size(size)}")
        for summary in summaries:
            print(f"  {summary.namespace}  {describe_meta(summary.meta)}: {summary.statements:,} statement(s) "
                  f"in {summary.chunks:,} chunk(s)")
    if len(stores) > 1:
        print(f"{_size(total)} in all. The node folders are merged into {stores[0]} by the next dashboard job on "
              f"this cache, the next `{_program()} reproduce --cache {folder}`, or by `{_program()} cache merge "
              f"{folder} {stores[1].parent}/node-*`")
    return 0


def _migrate(folder: Path) -> int:
    from probing.store.store import node_stores, store_folder
    from probing.store.migration import migrate
    from probing.store.format import DATABASE

    stores = [store for store in [store_folder(folder), *node_stores(folder)] if (store / DATABASE).is_file()]
    if not stores:
        raise FileNotFoundError(f"{folder} holds no activation cache ({folder / DATABASE} nor "
                                f"{store_folder(folder) / DATABASE}); pass a cache folder such as cache/")
    for store in stores:
        done = migrate(store)
        refused = (f"; {done.refused} entr{'y' if done.refused == 1 else 'ies'} that were not plain data removed "
                   "unread (their statements are recomputed when needed)") if done.refused else ""
        print(f"{done.database}: {done.keys:,} key(s) and {done.values:,} value(s) rewritten from pickle to JSON "
              f"text, {done.claims} claim(s) of old runs dropped{refused}"
              if done.keys or done.values or done.claims or done.refused else
              f"{done.database}: already in the current format, nothing to do")
    return 0


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _print_generalization(result) -> None:
    from probing.analyses.generalization import ccs_summary, matrix_summary, polarity_table
    from probing.study.results import markdown_table

    for note in result.meta.get("generalization_notes", []):
        print(f"note: {note}", file=sys.stderr)
    summary = matrix_summary(result.generalization)
    if not summary.empty:
        print("Generalization: mean accuracy within a topic, from one topic to another, and from all other "
              f"topics (full matrices in generalization.md)\n\n{markdown_table(summary)}")
    polarity = polarity_table(result.generalization)
    if not polarity.empty:
        print(f"Polarity transfer: accuracy, trained on > tested on (held-out facts)\n\n{markdown_table(polarity)}")
    ccs = ccs_summary(result.ccs)
    if not ccs.empty:
        print(f"CCS (no labels): accuracy over seeds, cosine to the supervised directions\n\n{markdown_table(ccs)}")


def cmd_data(args: argparse.Namespace) -> int:
    dataset = _dataset(study_config(args))
    if args.out == "-":
        dataset.frame.to_csv(sys.stdout, index=False)
    else:
        path = dataset.to_csv(args.out)
        print(f"{len(dataset)} statements written to {path}")
    return 0


def _open_results(args: argparse.Namespace, used: str) -> StudyResult:
    """The StudyResult of ``--results`` (default: the newest results folder, whose ``used`` part is named in
    a note), its load notes printed."""
    from probing.study.results import read_config
    from probing.dashboard.settings import latest_results_folder

    folder = Path(args.results).expanduser() if args.results else latest_results_folder()
    read_config(folder)  # a missing, outdated or foreign folder fails here, before torch loads
    from probing.study.results import StudyResult

    study = StudyResult.load(folder)
    if not args.results:
        print(f"note: {used} of {folder} (the newest results folder)", file=sys.stderr)
    for note in study.notes:
        print(f"note: {note}", file=sys.stderr)
    return study


def _study_activations(study: StudyResult, cache: str) -> Activations:
    """:func:`~probing.analyses.scoring.study_activations` in ``cache`` (``--cache``), its notes printed."""
    from probing.analyses.scoring import study_activations

    activations, notes = study_activations(study, cache)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return activations


def cmd_score(args: argparse.Namespace) -> int:
    study = _open_results(args, "probes")
    from probing.study.results import PROBES_DIR, markdown_table
    from probing.analyses.scoring import score_statements

    if not study.probes:
        raise FileNotFoundError(f"{study.folder / PROBES_DIR} holds no trained probes; rerun `reproduce`")
    scores = score_statements(_study_activations(study, args.cache), study.probes, args.statement)
    for statement, rows in scores.groupby("statement", sort=False):
        table = rows.pivot(index="layer", columns="probe", values="p_true").sort_index(ascending=False)
        print(f"P(true) for {statement!r}\n\n{markdown_table(table.reset_index())}")
    return 0


LARGE_ALPHA = 100.0
"""``steer --alphas`` beyond this many class-mean distances get a warning (the paper's doses are a few)."""


def cmd_steer(args: argparse.Namespace) -> int:
    config = SteeringConfig(probe_layer=args.probe_layer, layers=args.layers, alphas=args.alphas,
                            directions=args.directions, statements=args.statements, position=args.position)
    if extreme := [alpha for alpha in config.alphas if abs(alpha) > LARGE_ALPHA]:
        print(f"warning: --alphas {','.join(f'{a:g}' for a in extreme)}: beyond +-{LARGE_ALPHA:g} class-mean "
              "distances the steered residual stream may overflow; answers that are not finite are left out of "
              "the statistics and counted in non_finite", file=sys.stderr)
    study = _open_results(args, "model, token position and study")
    folder, recorded = study.folder, study.config.dataset
    if args.dataset is None and recorded != "builtin":
        raise ValueError(f"{folder / 'config.json'} records the statements {recorded}, and a results folder's paths "
                         f"are never opened: pass them with --dataset (the study read {recorded})")
    from probing.study.results import markdown_table, steering_notes, steering_shown
    from probing.analyses.steering import run_steering

    dataset = _dataset(replace(study.config, dataset=args.dataset or recorded))
    read = study.meta.get("dataset")
    if not isinstance(read, dict) or dataset.fingerprint() != read.get("sha256"):
        print(f"note: {dataset.name} is not the set of statements this study read (another SHA-256); its steering "
              f"table is saved beside the study's results all the same", file=sys.stderr)
    activations = _study_activations(study, args.cache)
    with _progress("extracting", "statements") as on_extract:
        activations.ensure(dataset.statements, on_progress=on_extract)
    table = run_steering(dataset, activations, config)
    study.steering = table
    study.meta["steering"] = config.to_dict()
    study.save(folder)
    print(f"Steering {dataset.name} with {study.config.model}: layers {','.join(map(str, config.steered_layers))}, "
          f"directions from layer {config.probe_layer}, {config.position} tokens\n\n"
          f"{markdown_table(steering_shown(table))}")
    for note in steering_notes(table):
        print(f"note: {note}", file=sys.stderr)
    print(f"written to {Path(folder) / 'steering.csv'} and steering.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from probing.study.results import read_config

    if bool(args.folders) == bool(args.models) or len(args.folders or args.models) != 2:
        raise ValueError("compare takes two results folders, or --models A,B (two model names), not both")
    for folder in args.folders:
        read_config(folder)  # a missing or outdated folder fails here
    from probing.analyses.compare import compare_studies, comparison_markdown, save_comparison, studies_for_models
    from probing.study.results import StudyResult
    from probing.dashboard.settings import RESULTS_ROOT

    if args.models:
        config = study_config(args)
        with _progress("computing what is missing", "items") as progress, out_of_memory_is_an_error(config):
            studies = studies_for_models(_dataset(config), args.models, config, RESULTS_ROOT,
                                         lambda _model, done, total: progress(done, total))
        for study in studies:
            print(f"{study.config.model}: {study.folder}", file=sys.stderr)
    else:
        studies = [StudyResult.load(folder) for folder in args.folders]
    comparison = compare_studies(*studies, args.allow_mismatch)
    for warning in comparison.warnings:
        print(f"warning: not comparable, shown anyway: {warning}", file=sys.stderr)
    save_comparison(comparison, args.out)
    print(comparison_markdown(comparison))
    print(f"written to {args.out}/")
    return 0


COMMANDS = {"extract": cmd_extract, "reproduce": cmd_reproduce, "data": cmd_data, "score": cmd_score,
            "steer": cmd_steer, "compare": cmd_compare, "cache": cmd_cache}
