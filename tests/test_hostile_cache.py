"""Hostile caches: a cache folder from elsewhere is data. Pickles planted in every kind of entry
are refused and never run; foreign database objects and paths outside the folder are refused;
old caches convert only through an explicit migration that runs nothing."""

import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys

import diskcache
import numpy as np
import pytest

from probing.cli.main import main
from probing.store.activations import Activations
from probing.store.format import SafeDisk, UnsafeCache
from probing.store.merge import merge_stores
from probing.store.reading import describe_store
from probing.store.store import ActivationStore
from support import ROOT, TEXTS


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def filled(model, tmp_path):
    """A real cache holding every layer of six statements; a claim is added as a running extraction would."""
    activations = Activations(model=model, cache_dir=tmp_path / "cache")
    activations.ensure(TEXTS)
    activations.store.claim("batch-0", "someone", 600)
    activations.store.close()
    return activations.store.directory


def entries(directory):
    """(rowid, kind, filename) of every row: kind is 'meta', 'chunks', 'claim', 'texts' or 'payload'."""
    with sqlite3.connect(directory / "cache.db") as connection:
        found = connection.execute("SELECT rowid, key, raw, filename FROM Cache ORDER BY rowid").fetchall()
    for rowid, key, raw, filename in found:
        parts = json.loads(key) if raw else pickle.loads(key)  # the old format's keys: this test's own data
        kind = ("texts" if parts[-1] == "texts" else "payload") if parts[1] == "chunk" else parts[1]
        yield rowid, kind, filename


def plant(directory, kind, marker):
    """Replace the value of the first entry of ``kind`` by a pickle that creates ``marker``."""
    bomb = pickle.dumps(Payload(marker))
    for rowid, found, _ in entries(directory):
        if found == kind:
            with sqlite3.connect(directory / "cache.db") as connection:
                connection.execute("UPDATE Cache SET mode = 4, value = ?, filename = NULL WHERE rowid = ?",
                                   (bomb, rowid))
            return
    raise AssertionError(f"no {kind} entry")


def every_reader(directory, cache_folder, model, tmp_path):
    """Open the cache every way the tool does; each must refuse it."""
    refusals = []
    for attempt in (
        lambda: Activations(model=model, cache_dir=cache_folder).layer(TEXTS, -1),
        lambda: ActivationStore(directory, "any"),
        lambda: describe_store(directory),
        lambda: merge_stores(tmp_path / "merged", [directory]),
    ):
        with pytest.raises(UnsafeCache) as refused:
            attempt()
        refusals.append(str(refused.value))
    return refusals


@pytest.mark.parametrize("kind", ["meta", "chunks", "texts", "payload", "claim"])
def test_a_pickle_planted_in_any_entry_is_refused_and_never_run(model, filled, tmp_path, kind):
    directory = filled
    marker = tmp_path / "ran"
    plant(directory, kind, marker)
    for message in every_reader(directory, directory.parent, model, tmp_path):
        assert "pickled entry" in message and "cache migrate" in message and str(directory) in message
    assert main(["cache", "info", str(directory.parent)]) == 2
    assert not marker.exists()


def test_a_pickled_key_is_refused_and_never_run(model, filled, tmp_path):
    directory = filled
    marker = tmp_path / "ran"
    with sqlite3.connect(directory / "cache.db") as connection:
        connection.execute("UPDATE Cache SET key = ?, raw = 0 WHERE rowid = 1", (pickle.dumps(Payload(marker)),))
    every_reader(directory, directory.parent, model, tmp_path)
    assert not marker.exists()


def test_a_pickle_in_a_damaged_database_is_skipped_by_the_repair_not_run(model, filled, tmp_path):
    directory = filled
    marker = tmp_path / "ran"
    plant(directory, "meta", marker)
    database = directory / "cache.db"
    data = database.read_bytes()
    database.write_bytes(data[:100] + b"\0" * 20 + data[120:])  # damage the header: SQLite calls it corrupt
    with pytest.warns(UserWarning, match="damaged"):
        activations = Activations(model=model, cache_dir=directory.parent)
        assert activations.ensure(TEXTS) >= 0
    assert not marker.exists()


def test_a_value_file_outside_the_folder_is_neither_read_nor_deleted(model, filled, tmp_path):
    directory = filled
    victim = tmp_path / "precious.txt"
    victim.write_text("mine")
    rowid = next(rowid for rowid, kind, _ in entries(directory) if kind == "payload")
    with sqlite3.connect(directory / "cache.db") as connection:
        connection.execute("UPDATE Cache SET mode = 2, filename = ?, value = NULL WHERE rowid = ?",
                           (os.path.relpath(victim, directory), rowid))
    for message in every_reader(directory, directory.parent, model, tmp_path):
        assert "outside its folder" in message
    assert victim.read_text() == "mine"


def test_foreign_triggers_and_settings_are_refused_before_diskcache_applies_them(model, filled, tmp_path):
    directory = filled
    with sqlite3.connect(directory / "cache.db") as connection:
        connection.execute("CREATE TRIGGER spy AFTER INSERT ON Cache BEGIN DELETE FROM Settings; END")
    with pytest.raises(UnsafeCache, match="trigger spy"):
        ActivationStore(directory, "any")
    with sqlite3.connect(directory / "cache.db") as connection:
        connection.execute("DROP TRIGGER spy")
        connection.execute("UPDATE Settings SET value = 'off' WHERE key = 'sqlite_journal_mode'")
    with pytest.raises(UnsafeCache, match="sqlite_journal_mode"):
        ActivationStore(directory, "any")


def old_format_copy(directory, target):
    """The same entries written as the tool wrote them before: diskcache's default, pickling Disk."""
    current = diskcache.Cache(str(directory), disk=SafeDisk)
    old = diskcache.Cache(str(target), size_limit=2**50, eviction_policy="none")
    for key in list(current.iterkeys()):
        old.set(key, current.get(key))
    current.close(), old.close()
    return target


def test_an_old_cache_is_refused_until_migrated_and_then_reads_the_same_values(model, filled, tmp_path, capsys):
    directory = filled
    before = Activations(model=model, cache_dir=directory.parent).layer(TEXTS, 5)
    old = old_format_copy(directory, tmp_path / "old" / "activations")
    with pytest.raises(UnsafeCache, match="cache migrate"):
        Activations(model=model, cache_dir=old.parent).layer(TEXTS, 5)

    assert main(["cache", "migrate", str(old.parent)]) == 0
    out = capsys.readouterr().out
    assert "rewritten from pickle to JSON text" in out and "1 claim(s) of old runs dropped" in out
    after = Activations(model=model, cache_dir=old.parent)
    assert after.missing(TEXTS) == []
    np.testing.assert_array_equal(after.layer(TEXTS, 5), before)
    assert main(["cache", "migrate", str(old.parent)]) == 0
    assert "already in the current format" in capsys.readouterr().out


def test_migration_removes_a_planted_pickle_without_running_it(model, filled, tmp_path, capsys):
    directory = filled
    old = old_format_copy(directory, tmp_path / "old" / "activations")
    marker = tmp_path / "ran"
    plant(old, "texts", marker)
    assert main(["cache", "migrate", str(old)]) == 0
    assert "1 entry that were not plain data removed unread" in capsys.readouterr().out
    assert not marker.exists()
    with pytest.warns(UserWarning, match="damaged statement list"):  # its chunk is dropped and recomputed
        assert Activations(model=model, cache_dir=old.parent).ensure(TEXTS) > 0
    assert not marker.exists()


def test_cache_info_on_a_file_that_is_not_a_database_is_one_line_and_leaves_it(tmp_path, capsys):
    store = tmp_path / "activations"
    store.mkdir()
    (store / "cache.db").write_text("not a database\n" * 100)
    assert main(["cache", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(store / "cache.db") in err
    assert (store / "cache.db").read_text().startswith("not a database")  # not moved aside by a reader
    assert main(["cache", "merge", str(tmp_path / "dest"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(store / "cache.db") in err and not (tmp_path / "dest").exists()


SETPRIV = shutil.which("setpriv")


@pytest.mark.skipif(os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to act as another user")
def test_cache_info_and_merge_on_another_users_read_only_cache_are_one_line_errors(filled, tmp_path):
    directory = filled
    shared = tmp_path / "shared"
    shutil.copytree(directory.parent, shared)
    for path in sorted(shared.rglob("*"), reverse=True) + [shared]:
        os.chown(path, 1234, 1234)  # another user's cache, readable by all, writable by none
        path.chmod(0o555 if path.is_dir() else 0o444)
    # root without its capabilities: the cache's owner, 1234, is someone else, so its modes apply
    command = [SETPRIV, "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "probing", "cache"]
    for arguments in (["info", str(shared)], ["merge", str(tmp_path / "dest"), str(shared)]):
        done = subprocess.run(command + arguments, capture_output=True, text=True, cwd=ROOT)
        if arguments[0] == "info" and done.returncode == 0:  # SQLite can read a WAL database read-only
            assert "6 statement(s)" in done.stdout
            continue
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr and str(shared) in done.stderr
