"""What each command does: ``extract``, ``reproduce``, ``data``, ``score``, ``steer``, ``compare`` and
``cache``. Each builds a :class:`~probing.study.study.Study` from its options (or a results folder) and
prints what it did; torch loads only inside a command, after the options were checked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from probing.cli.options import launcher_node, launcher_shard, local_rank, program, steering_config, study_config
from probing.cli.output import ConsoleReporter, size_text
from probing.study.config import StudyConfig
from probing.study.folder import CONFIG_FILE
from probing.study.reporter import MERGING

if TYPE_CHECKING:
    from probing.study.results import StudyResult
    from probing.study.study import Study


def _study(config: StudyConfig, reporter: ConsoleReporter, **given) -> Study:
    """The Study of ``config``, its statements loaded before torch is imported (a missing file fails at once)."""
    dataset = config.statements(reporter)
    from probing.study.study import Study

    return Study(config, dataset=dataset, reporter=reporter, **given)


def cmd_extract(args: argparse.Namespace) -> int:
    shard = args.shard or launcher_shard()
    node = args.node if args.node is not None else launcher_node()
    rank_here = local_rank() if shard else None
    config = study_config(args)
    if shard and config.device is None and torch_cuda_count() > 1:  # one GPU per process
        config = replace(config, device=f"cuda:{shard[0] if rank_here is None else rank_here}")
    from probing.store.folders import node_store

    label = f"extracting (shard {shard[0] + 1} of {shard[1]})" if shard else "extracting"
    with ConsoleReporter({"extracting": label}) as reporter:
        study = _study(config, reporter, store_dir=None if node is None else node_store(config.cache, node))
        computed = study.extract(shard=shard)
    activations, statements = study.activations, study.dataset.statements
    if node is not None:
        share = f"shard {shard[0]}/{shard[1]}" if shard else "all statements"
        print(f"node {node}, {share}: {computed} statement(s) computed; this node's activations are in "
              f"{activations.store.directory}")
        if not rank_here:  # one hint per node
            nodes = activations.store.directory.parent
            print(f"next, once every node has finished: bring the {nodes}/node-* folders together under one "
                  f"cache's nodes/ (copy them unless they are there already), then run `{program()} reproduce "
                  f"--cache {config.cache} ...` (it merges them first) or `{program()} cache merge "
                  f"{config.cache} {nodes}/node-*`")
    elif shard:
        left = len(activations.missing(statements))
        print(f"shard {shard[0]}/{shard[1]}: {computed} statement(s) computed; {left} not cached yet "
              "(other shards may still be running)")
    else:
        print(f"{computed} statement(s) computed here, {len(set(statements)) - computed} already cached "
              f"or computed by another process ({activations.cache_dir})")
    return 0


def torch_cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    config = study_config(args)
    from probing.study.folder import results_root
    from probing.formatting import markdown_table

    with ConsoleReporter() as reporter, out_of_memory_is_an_error(config):
        study = _study(config, reporter)
        dataset = study.dataset
        out = args.out or study.new_folder(results_root(), "study")
        print(f"results go to {out}/", file=sys.stderr)
        result = study.reproduce(out, overwrite=args.overwrite)
    print(f"\n{dataset.name}: {len(dataset)} statements, {len(dataset.topics)} topics; "
          f"model {config.model}; {result.meta['statements_extracted_this_run']} statements extracted this run\n")
    print(f"Mean accuracy over the {config.split} splits\n\n{result.accuracy_markdown()}")
    print(f"Max accuracy over the splits\n\n{markdown_table(result.accuracy_table('max'))}")
    if "random" in result.splits and config.split != "random":
        print(f"Accuracy on the random split\n\n{result.accuracy_markdown('random')}")
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


def cmd_data(args: argparse.Namespace) -> int:
    with ConsoleReporter() as reporter:
        dataset = study_config(args).statements(reporter)
    if args.out == "-":
        dataset.frame.to_csv(sys.stdout, index=False)
    else:
        path = dataset.to_csv(args.out)
        print(f"{len(dataset)} statements written to {path}")
    return 0


def _open_results(args: argparse.Namespace, used: str) -> StudyResult:
    """The StudyResult of ``--results`` (default: the newest results folder, whose ``used`` part is named in
    a note), its load notes printed."""
    from probing.study.folder import latest_results_folder, read_config, results_root

    folder = Path(args.results).expanduser() if args.results else latest_results_folder(results_root())
    read_config(folder)  # a missing, outdated or foreign folder fails here, before torch loads
    from probing.study.results import StudyResult

    study = StudyResult.load(folder)
    if not args.results:
        print(f"note: {used} of {folder} (the newest results folder)", file=sys.stderr)
    for note in study.notes:
        print(f"note: {note}", file=sys.stderr)
    return study


def _open_probes(args: argparse.Namespace) -> StudyResult:
    """:func:`_open_results` of a folder that must hold trained probes (``score``, ``trace``)."""
    from probing.study.folder import PROBES_DIR

    result = _open_results(args, "probes")
    if not result.probes:
        raise FileNotFoundError(f"{result.folder / PROBES_DIR} holds no trained probes; rerun `reproduce`")
    return result


def cmd_score(args: argparse.Namespace) -> int:
    if args.file is None and (args.layer is not None or args.out is not None):
        raise ValueError("--layer and --out go with --file (a passage's sentences, scored at one layer); "
                         "statements are scored at every layer and printed")
    passage = None
    if args.file is not None:  # read before torch loads: a missing file fails at once
        passage = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    result = _open_probes(args)
    from probing.formatting import markdown_table
    from probing.study.study import Study

    if passage is not None:
        return _score_passage(args, result, passage)
    with ConsoleReporter() as reporter:
        scores = Study.of_results(result, args.cache, reporter=reporter).score(result.probes, args.statement)
    for statement, rows in scores.groupby("statement", sort=False):
        table = rows.pivot(index="layer", columns="probe", values="p_true").sort_index(ascending=False)
        print(f"P(true) for {statement!r}\n\n{markdown_table(table.reset_index())}")
    return 0


def _score_passage(args: argparse.Namespace, result: StudyResult, data: bytes) -> int:
    """``score --file``: the table of :func:`~probing.analyses.passage.score_passage`, written or printed."""
    from probing.analyses.passage import read_passage, score_passage
    from probing.formatting import markdown_table
    from probing.study.study import Study

    name = "standard input" if args.file == "-" else args.file
    passage = read_passage(data, name)
    with ConsoleReporter() as reporter:
        activations = Study.of_results(result, args.cache, reporter=reporter).activations
        table = score_passage(activations, result.probes, passage, args.layer)
    if args.out == "-":
        table.to_csv(sys.stdout, index=False)
    elif args.out:
        table.to_csv(args.out, index=False)
        print(f"{len(table)} sentence(s) of {name} scored at layer {table['layer'].iloc[0]}; table written to "
              f"{args.out}")
    else:
        print(f"P(true) of each sentence of {name}, by the probes at layer {table['layer'].iloc[0]} and by the "
              f"model itself\n\n{markdown_table(table.drop(columns=['start', 'end', 'layer']))}")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    result = _open_probes(args)
    from probing.analyses.trace import MODEL_MARGIN, trace_statement
    from probing.formatting import markdown_table
    from probing.study.study import Study

    with ConsoleReporter() as reporter:
        activations = Study.of_results(result, args.cache, reporter=reporter).activations
        trace = trace_statement(activations, result.probes, args.statement, model_answer=args.answers)
    if args.out:
        trace.table().to_csv(args.out, index=False)
        print(f"{len(trace.scores)} scores ({len(trace.tokens)} tokens) written to {args.out}")
        return 0
    labels = trace.labels()
    for kind, rows in trace.scores.groupby("probe", sort=False):
        table = rows.pivot(index="layer", columns="token", values="p_true").sort_index(ascending=False)
        table.columns = [labels[t] for t in table.columns]
        print(f"P(true) from the {kind} probe at each token of {trace.statement!r}\n\n"
              f"{markdown_table(table.reset_index())}\n")
    if MODEL_MARGIN in trace.tokens:
        margins = trace.tokens.assign(token=labels)[["token", MODEL_MARGIN]]
        print(f"The model's P(True) - P(False) for the statement up to each token\n\n{markdown_table(margins)}")
    return 0


LARGE_ALPHA = 100.0
"""``steer --alphas`` beyond this many class-mean distances get a warning (the paper's doses are a few)."""


def cmd_steer(args: argparse.Namespace) -> int:
    config = steering_config(args)
    if extreme := [alpha for alpha in config.alphas if abs(alpha) > LARGE_ALPHA]:
        print(f"warning: --alphas {','.join(f'{a:g}' for a in extreme)}: beyond +-{LARGE_ALPHA:g} class-mean "
              "distances the steered residual stream may overflow; answers that are not finite are left out of "
              "the statistics and counted in non_finite", file=sys.stderr)
    result = _open_results(args, "model, token position and study")
    folder, recorded = result.folder, result.config.dataset
    if args.dataset is None and recorded != "builtin":
        raise ValueError(f"{folder / CONFIG_FILE} records the statements {recorded}, and a results folder's paths "
                         f"are never opened: pass them with --dataset (the study read {recorded})")
    from probing.study.results import steering_notes, steering_shown
    from probing.formatting import markdown_table
    from probing.study.study import Study

    with ConsoleReporter() as reporter:
        dataset = replace(result.config, dataset=args.dataset or recorded).statements(reporter)
        read = result.meta.get("dataset")
        if not isinstance(read, dict) or dataset.fingerprint() != read.get("sha256"):
            reporter.note(f"{dataset.name} is not the set of statements this study read (another SHA-256); its "
                          "steering table is saved beside the study's results all the same")
        table = Study.of_results(result, args.cache, dataset=dataset, reporter=reporter).steering_table(config)
    result.steering = table
    result.meta["steering"] = config.to_dict()
    result.save(folder)
    print(f"Steering {dataset.name} with {result.config.model}: layers {','.join(map(str, config.steered_layers))}, "
          f"directions from layer {config.probe_layer}, {config.position} tokens\n\n"
          f"{markdown_table(steering_shown(table))}")
    for note in steering_notes(table):
        print(f"note: {note}", file=sys.stderr)
    print(f"written to {Path(folder) / 'steering.csv'} and steering.md")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from probing.study.folder import read_config

    if bool(args.folders) == bool(args.models) or len(args.folders or args.models) != 2:
        raise ValueError("compare takes two results folders, or --models A,B (two model names), not both")
    for folder in args.folders:
        read_config(folder)  # a missing or outdated folder fails here
    from probing.analyses.compare import compare_studies, comparison_markdown, save_comparison
    from probing.study.folder import results_root
    from probing.study.results import StudyResult
    from probing.study.study import studies_for_models

    if args.models:
        config = study_config(args)
        with ConsoleReporter() as reporter, out_of_memory_is_an_error(config):
            studies = studies_for_models(config.statements(reporter), args.models, config, results_root(),
                                         reporter)
        for study in studies:
            print(f"{study.config.model}: {study.folder}", file=sys.stderr)
    else:
        studies = [StudyResult.load(folder) for folder in args.folders]
    comparison = compare_studies(*studies, args.allow_mismatch)
    for warning in comparison.warnings:
        print(f"warning: not comparable, shown anyway: {warning}", file=sys.stderr)
    for note in comparison.notes:
        print(f"note: no paired tests: {note}", file=sys.stderr)
    save_comparison(comparison, args.out)
    print(comparison_markdown(comparison))
    print(f"written to {args.out}/")
    return 0


def _merge(destination: Path, sources: list[Path]) -> None:
    from probing.store.merge import merge_stores
    from probing.study.study import merge_lines

    with ConsoleReporter() as reporter:
        reporter.set_phase(MERGING)
        reports = merge_stores(destination, sources, on_progress=reporter.progress)
    for line in merge_lines(reports, destination, sources):
        print(line, file=sys.stderr)


def cmd_cache(args: argparse.Namespace) -> int:
    from probing.store.folders import node_stores, store_folder
    from probing.store.format import DATABASE
    from probing.store.reading import describe_meta, describe_store, size_on_disk

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
    stores = [store_folder(folder)] + ([] if (folder / DATABASE).is_file() else node_stores(folder))
    total = 0
    for store in stores:
        size = size_on_disk(store) if store.is_dir() else 0
        total += size
        summaries = describe_store(store)
        print(f"{store}: {len(summaries)} namespace(s), {size_text(size)}")
        for summary in summaries:
            print(f"  {summary.namespace}  {describe_meta(summary.meta)}: {summary.statements:,} statement(s) "
                  f"in {summary.chunks:,} chunk(s)")
    if len(stores) > 1:
        print(f"{size_text(total)} in all. The node folders are merged into {stores[0]} by the next dashboard job on "
              f"this cache, the next `{program()} reproduce --cache {folder}`, or by `{program()} cache merge "
              f"{folder} {stores[1].parent}/node-*`")
    return 0


def _migrate(folder: Path) -> int:
    from probing.store.folders import node_stores, store_folder
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


def _print_generalization(result) -> None:
    from probing.analyses.generalization import ccs_summary, matrix_summary, polarity_table
    from probing.formatting import markdown_table

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


COMMANDS = {"extract": cmd_extract, "reproduce": cmd_reproduce, "data": cmd_data, "score": cmd_score,
            "trace": cmd_trace, "steer": cmd_steer, "compare": cmd_compare, "cache": cmd_cache}
