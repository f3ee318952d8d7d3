"""`probing cache merge` and `cache info`: node folders of a multi-node extraction become one cache,
checked and idempotent, and an interrupted merge or extraction leaves whole chunks that merge later."""

import numpy as np
import pytest

from probing.cli.main import main
from probing.cli.options import launcher_node
from probing.dashboard.jobs import Job, start_job
from probing.dashboard.workflows import extract_work
from probing.store.activations import Activations
from probing.store.merge import MergeConflict, merge_stores
from probing.store.reading import describe_store, namespaces
from support import TEXTS, interrupt_after_first_batch

LAYERS = (0, 11, 30)
BUDGET = 300  # tokens per batch: a few dozen statements, so each store holds several chunks


@pytest.fixture(scope="module")
def statements(small_saplma):
    return list(dict.fromkeys(small_saplma.statements))[:90]


def node(model, cache, number, **options):
    return Activations(model=model, cache_dir=cache, store_dir=cache / "nodes" / f"node-{number}",
                       token_budget=BUDGET, **options)


def chunk_count(store):
    return len(store.chunk_keys())


def test_two_nodes_merge_bit_identical_to_one_process_and_a_second_merge_adds_nothing(
        model, tmp_path, statements, capsys):
    single = Activations(model=model, cache_dir=tmp_path / "single", token_budget=BUDGET)
    single.ensure(statements)
    cache = tmp_path / "cache"
    nodes = [node(model, cache, number) for number in (0, 1)]
    for number, activations in enumerate(nodes):
        activations.ensure(statements, shard=(number, 2))

    assert main(["cache", "merge", str(cache), *(str(a.store.directory) for a in nodes)]) == 0
    printed = capsys.readouterr().err
    assert f"{len(statements)} statement(s) copied in {chunk_count(single.store)} chunk(s)" in printed
    merged = Activations(model=model, cache_dir=cache, token_budget=BUDGET)
    passes = model.forward_passes
    for layer in LAYERS:
        np.testing.assert_array_equal(merged.layer(statements, layer), single.layer(statements, layer))
    assert model.forward_passes == passes  # everything came from the merge

    again = merge_stores(cache / "activations", [a.store.directory for a in nodes])
    assert [(r.copied, r.chunks, r.present, r.kept) for r in again] == [(0, 0, len(statements), 0)]
    assert chunk_count(merged.store) == chunk_count(single.store)


def test_info_counts_statements_chunks_and_namespaces(model, tmp_path, statements, capsys):
    last = Activations(model=model, cache_dir=tmp_path, token_budget=BUDGET)
    last.ensure(statements[:50])
    mean = Activations(model=model, cache_dir=tmp_path, position="mean")
    mean.ensure(TEXTS)
    summaries = {s.namespace: s for s in describe_store(tmp_path / "activations")}
    assert summaries[last.store.namespace].statements == 50
    assert summaries[last.store.namespace].chunks == chunk_count(last.store) > 1
    assert summaries[mean.store.namespace].statements == len(TEXTS)
    assert summaries[mean.store.namespace].meta["position"] == "mean"

    assert main(["cache", "info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'activations'}: 2 namespace(s)" in out
    assert f"position last, 31 layers x 576: 50 statement(s) in {chunk_count(last.store)} chunk(s)" in out
    assert f"position mean, 31 layers x 576: {len(TEXTS)} statement(s) in 1 chunk(s)" in out


def test_other_namespaces_are_copied_as_new_ones(model, tmp_path):
    destination = Activations(model=model, cache_dir=tmp_path / "dest")
    destination.ensure(TEXTS)
    source = Activations(model=model, cache_dir=tmp_path / "src", position="mean")
    source.ensure(TEXTS)
    reports = merge_stores(destination.store.directory, [source.store.directory])
    assert [(r.namespace, r.new, r.copied) for r in reports] == [(source.store.namespace, True, len(TEXTS))]
    assert set(namespaces(destination.store.directory)) == {destination.store.namespace, source.store.namespace}
    copy = Activations(model=model, cache_dir=tmp_path / "dest", position="mean")
    np.testing.assert_array_equal(copy.layer(TEXTS, -1), source.layer(TEXTS, -1))


def test_shared_statements_computed_in_other_batches_agree_and_the_destinations_are_kept(model, tmp_path, statements):
    """In bfloat16 a statement's values depend on its batch; the merge accepts that and keeps DEST's."""
    destination = Activations(model=model, cache_dir=tmp_path / "dest")  # one big batch
    destination.ensure(statements[:60])
    before = destination.layer(statements[:60], -1)
    source = Activations(model=model, cache_dir=tmp_path / "src", token_budget=BUDGET)  # other batches
    source.ensure(statements[30:])
    [report] = merge_stores(destination.store.directory, [source.store.directory])
    assert (report.kept, report.copied) == (30, len(statements) - 60)
    np.testing.assert_array_equal(destination.layer(statements[:60], -1), before)
    np.testing.assert_array_equal(destination.layer(statements[60:], -1), source.layer(statements[60:], -1))


def test_disagreeing_descriptions_are_refused_naming_what_differs(model, tmp_path):
    destination = Activations(model=model, cache_dir=tmp_path / "dest")
    destination.ensure(TEXTS[:3])
    source = Activations(model=model, cache_dir=tmp_path / "src")
    source.ensure(TEXTS)
    source.store.set_meta({**source.store.meta, "width": 577})
    with pytest.raises(MergeConflict, match=r"holds namespace \w+ as .*x 577.*\(width differ\)"):
        merge_stores(destination.store.directory, [source.store.directory])
    assert destination.missing(TEXTS) == [3, 4, 5]


def test_a_disagreeing_statement_is_refused_and_nothing_is_written(model, tmp_path, capsys):
    destination = Activations(model=model, cache_dir=tmp_path / "dest")
    destination.ensure(TEXTS[:4])
    chunks = destination.store.chunk_keys()
    other_position = Activations(model=model, cache_dir=tmp_path / "src", position="mean")
    other_position.ensure(TEXTS)  # a namespace that would merge fine on its own
    source = Activations(model=model, cache_dir=tmp_path / "src")
    source.ensure(TEXTS)
    hidden = np.stack([source.layer(TEXTS[:2], layer) for layer in range(31)], axis=1)
    source.store.write_chunk(TEXTS[:2], hidden[::-1])  # the two statements' values swapped: a later chunk wins

    assert main(["cache", "merge", str(tmp_path / "dest"), str(tmp_path / "src")]) == 2
    assert "error: 2 statement(s) of namespace" in capsys.readouterr().err
    with pytest.raises(MergeConflict, match=r"^2 statement\(s\) .* beyond what \w+ explains .*Nothing was merged"):
        merge_stores(destination.store.directory, [source.store.directory])
    assert destination.store.chunk_keys() == chunks
    assert namespaces(destination.store.directory) == [destination.store.namespace]


def test_an_interrupted_extraction_and_an_interrupted_merge_leave_whole_chunks_that_merge_later(
        model, tmp_path, statements):
    single = Activations(model=model, cache_dir=tmp_path / "single", token_budget=BUDGET)
    single.ensure(statements)
    source = node(model, tmp_path / "cache", 0)
    partial = interrupt_after_first_batch(source, statements)
    [report] = merge_stores(tmp_path / "cache" / "activations", [source.store.directory])
    assert report.copied == partial

    source.ensure(statements)  # the node completes its work
    assert chunk_count(source.store) - report.chunks >= 2

    def stop_after_first_chunk(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge_stores(tmp_path / "cache" / "activations", [source.store.directory], stop_after_first_chunk)
    merged = Activations(model=model, cache_dir=tmp_path / "cache", token_budget=BUDGET)
    assert 0 < len(merged.missing(statements)) < len(statements) - partial
    merge_stores(tmp_path / "cache" / "activations", [source.store.directory])
    assert merged.missing(statements) == []
    for layer in LAYERS:
        np.testing.assert_array_equal(merged.layer(statements, layer), single.layer(statements, layer))


def test_a_multi_node_launch_is_told_by_the_launchers_variables(monkeypatch):
    monkeypatch.setenv("GROUP_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launcher_node() == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # every process on one node: one shared cache
    assert launcher_node() is None
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match=r"WORLD_SIZE='four' is not an integer"):
        launcher_node()


def test_bad_node_numbers_and_folders_are_refused_before_anything_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["extract", "--node", "-1"])
    assert exit_.value.code == 2 and "the node number must be 0 or more" in capsys.readouterr().err
    assert main(["cache", "merge", str(tmp_path / "dest"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere holds no activation store" in capsys.readouterr().err
    assert not (tmp_path / "dest").exists()
    assert main(["cache", "info", str(tmp_path / "nowhere")]) == 2


def test_every_dashboard_job_merges_node_folders_first_and_computes_only_what_they_lack(model, tmp_path, statements):
    """``extract_missing`` (the first phase of every dashboard job) calls ``Activations.merge_nodes``, as
    ``reproduce`` does: a node's statements are copied, not recomputed, and a second merge copies nothing."""
    cache = tmp_path / "cache"
    activations = Activations(model=model, cache_dir=cache, token_budget=BUDGET)
    assert activations.merge_nodes() == []  # no node folders
    from_node = statements[:60]
    node_0 = node(model, cache, 0)
    node_0.ensure(from_node)

    job = start_job(Job(kind="extract", label="extract"), extract_work(activations, statements)).wait(120)
    assert job.ok, job.error
    assert job.result == len(statements) - len(from_node)
    assert activations.missing(statements) == []
    for layer in LAYERS:
        np.testing.assert_array_equal(activations.layer(from_node, layer), node_0.layer(from_node, layer))
    again = activations.merge_nodes()
    assert [(r.copied, r.present) for r in again] == [(0, len(from_node))]
