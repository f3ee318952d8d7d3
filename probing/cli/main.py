"""Command line: ``python -m probing {extract,reproduce,data,score,trace,steer,compare,cache}`` (``probing ...`` once installed).

The options of a study and of a steering experiment come from the fields of
:class:`~probing.study.config.StudyConfig` and :class:`~probing.study.config.SteeringConfig` (their
defaults, help and checks). Options, paths and launcher variables are checked before torch is
imported, so a typo fails in a fraction of a second with one ``error: ...`` line (exit code 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from probing.cli.commands import COMMANDS
from probing.cli.options import add_options, join_negative_values, node_option, parsed, program, shard_option
from probing.cli.output import warning_line
from probing.options import read_names
from probing.study.config import SteeringConfig, StudyConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=program(), description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract", help="compute and cache activations of every layer")
    add_options(extract, StudyConfig, "model", "dataset", "extraction")
    extract.add_argument("--shard", type=shard_option, default=None,
                         help="RANK/WORLD: this process's share (default: from torchrun / accelerate / MPI "
                              "environment variables when launched by one of them)")
    extract.add_argument("--node", type=node_option, default=None,
                         help="write into CACHE/nodes/node-K, this node's own folder of a multi-node run, to "
                              "be merged afterwards (default: GROUP_RANK when torchrun / accelerate launch "
                              "span several nodes, else CACHE/activations)")

    reproduce = commands.add_parser("reproduce", help="extract what is missing, train the grid, write results")
    add_options(reproduce, StudyConfig, "model", "dataset", "extraction", "grid", "analysis")
    reproduce.add_argument("--out", default=None,
                           help="results folder (default: a new one, results/<model>-<dataset>-study-<time>)")
    reproduce.add_argument("--overwrite", action="store_true",
                           help="write into an --out that holds another study, the input statements or files of "
                                "the results' names (files this tool did not write are never deleted)")

    data = commands.add_parser("data", help="write a statement set to CSV (statement,label,topic,...)")
    add_options(data, StudyConfig, "dataset")
    data.add_argument("--out", required=True, help="CSV file to write ('-' for standard output)")

    steer = commands.add_parser("steer", help="add a truth direction to the residual stream and measure the "
                                              "model's True/False answer (writes steering.csv/.md)")
    steer.add_argument("--results", default=None, help="results folder whose model, statements and token "
                                                        "position are used (default: the newest in results/)")
    steer.add_argument("--dataset", default=None,
                       help="the statements (needed when the results folder records a file or folder: a results "
                            "folder's paths are never opened)")
    steer.add_argument("--cache", default=StudyConfig().cache, help=CACHE_HELP)
    add_options(steer, SteeringConfig, "steering")

    compare = commands.add_parser("compare", help="two results folders side by side: grids aligned by relative "
                                                  "depth and by index, direction statistics")
    compare.add_argument("folders", nargs="*", metavar="DIR", help="two results folders (A, then B)")
    compare.add_argument("--models", type=parsed(read_names), default=None,
                         help="instead of folders: two models (A,B) on --dataset with the grid options; a results "
                              "folder under results/ that matches is used, what is missing is computed (B at the "
                              "layers of A's relative depths)")
    add_options(compare, StudyConfig, "model", "dataset", "extraction", "grid")
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

    score = commands.add_parser("score", help="P(true) per layer from the probes of a results folder; or of each "
                                              "sentence of a passage (--file) at one layer, and the model's answer")
    scored = score.add_mutually_exclusive_group(required=True)
    # default=[] (this very list): argparse then counts no statements as the positional's absence, not a clash
    scored.add_argument("statement", nargs="*", default=[], help="one or more statements")
    scored.add_argument("--file", default=None, help="a UTF-8 text file ('-' for standard input): its sentences, "
                                                     "each scored by the probes at --layer and by the model itself")
    score.add_argument("--layer", type=int, default=None,
                       help="with --file: the probes' layer (default: the layer with the most probe kinds)")
    score.add_argument("--out", default=None, help="with --file: the CSV file to write (default: print a table)")
    score.add_argument("--results", default=None,
                       help="results folder written by `reproduce` or the dashboard (default: the newest in results/)")
    score.add_argument("--cache", default=StudyConfig().cache, help=CACHE_HELP)
    trace = commands.add_parser("trace", help="P(true) of each probe of a results folder at every token and layer "
                                              "of a statement, and the model's answer after each token")
    trace.add_argument("statement", help="the statement to trace")
    trace.add_argument("--results", default=None,
                       help="results folder written by `reproduce` or the dashboard (default: the newest in results/)")
    trace.add_argument("--cache", default=StudyConfig().cache, help=CACHE_HELP)
    trace.add_argument("--out", default=None, help="CSV file to write (one row per token, layer and probe; default: "
                                                   "print a table per probe kind)")
    trace.add_argument("--no-answers", dest="answers", action="store_false",
                       help="skip the model's own answer after each token (one forward pass fewer)")
    return parser


CACHE_HELP = (f"activation cache (default: {StudyConfig().cache}); the one a results folder records is never used, "
              "as a folder is a record, not an instruction")


CSV_OUT = {"data": "statements.csv", "score": "passage.csv", "trace": "trace.csv"}
"""Commands whose --out is one CSV file, with the name an example suggests."""


def check_paths(args: argparse.Namespace) -> None:
    """Refuse output and cache paths of the wrong kind, and a ``reproduce --out`` that would lose files
    (:func:`~probing.study.folder.check_results_out`, which expands its ``~``), before anything is loaded or computed."""
    cache = getattr(args, "cache", None)
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        raise ValueError(f"--cache {cache} is a file, but the activation cache is a folder: "
                         "pass a folder (it is created if missing)")
    if args.command == "reproduce" and args.out:
        from probing.study.folder import check_results_out

        args.out = str(check_results_out(args.out, args.dataset, overwrite=args.overwrite))
    out = getattr(args, "out", None)
    if args.command in CSV_OUT and out not in (None, "-") and Path(out).is_dir():
        raise ValueError(f"--out {out} is a folder; pass the CSV file to write, "
                         f"such as {Path(out) / CSV_OUT[args.command]}")


def _message_errors() -> tuple[type[Exception], ...]:
    """Errors whose text is meant for the user. The engine's own error types are looked up only
    in modules already imported: an error cannot come from a module that never loaded."""
    errors: list[type[Exception]] = [ValueError, OSError, IndexError, MemoryError]  # DatasetError: a ValueError
    for module, name in (("probing.model.sources", "ModelLoadError"), ("probing.store.format", "CacheError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input ends with one ``error: ...`` line and exit code 2."""
    # Here rather than in a __main__ block, so that `python -m probing` and the console script
    # both set it before tokenizers loads (it would warn on fork otherwise).
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.showwarning = warning_line
    args = build_parser().parse_args(join_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        check_paths(args)
        return COMMANDS[args.command](args)
    except _message_errors() as error:
        from probing.formatting import error_text

        print(f"error: {error_text(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: everything finished so far is cached; run the same command to resume",
              file=sys.stderr)
        return 130
