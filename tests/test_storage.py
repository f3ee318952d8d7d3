"""The activation cache survives damage: real entries are corrupted, and what was lost is recomputed."""

import errno
import sqlite3
import stat

import numpy as np
import pytest

from probing.housekeeping import CacheRepaired
from probing.store.activations import Activations
from probing.store.format import CacheError
from probing.store.store import CorruptEntry
from support import TEXTS


@pytest.fixture(scope="module")
def statements(small_saplma):
    """120 real statements: three chunks of 85, 34 and 1 rows (the first two stored as files)."""
    return list(dict.fromkeys(small_saplma.statements))[:120]


@pytest.fixture
def filled(model, tmp_path, statements):
    """A cache holding every layer of ``statements``, and the values of layer -1 read back."""
    activations = Activations(model=model, cache_dir=tmp_path)
    activations.ensure(statements)
    return activations, activations.layer(statements, -1)


def chunk_ids(activations, texts):
    """Chunk ids in the order of the statements' first appearance."""
    return list(dict.fromkeys(chunk for chunk, _ in activations.store.locate(texts)))


def row(store, key):
    """(rowid, filename) of a key's row, read with SQLite behind diskcache's back."""
    db_key, raw = store._cache.disk.put(key)
    with sqlite3.connect(store.directory / "cache.db") as connection:
        return connection.execute("SELECT rowid, filename FROM Cache WHERE key = ? AND raw = ?",
                                  (db_key, raw)).fetchone()


def overwrite_value(store, key, data):
    """Replace the bytes of a row's value in the database (damaged JSON, say)."""
    with sqlite3.connect(store.directory / "cache.db") as connection:
        connection.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (data, row(store, key)[0]))


def value_files(store):
    return sorted(store.directory.glob("??/??/*.val"))


def referenced_files(store):
    with sqlite3.connect(store.directory / "cache.db") as connection:
        return sorted(store.directory / name for (name,) in
                      connection.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL"))


def test_every_corrupt_chunk_is_dropped_in_one_pass_and_recomputed_once(model, filled, statements):
    activations, good = filled
    store = activations.store
    first, second, third = chunk_ids(activations, statements)
    last_layer = store.meta["layers"] - 1
    truncated = store.directory / row(store, (store.namespace, "chunk", first, last_layer))[1]
    truncated.write_bytes(truncated.read_bytes()[:5000])
    flipped = store.directory / row(store, (store.namespace, "chunk", second, last_layer))[1]
    payload = bytearray(flipped.read_bytes())
    payload[-7] ^= 0x10
    flipped.write_bytes(bytes(payload))
    inline_key = (store.namespace, "chunk", third, last_layer)  # one row: kept in the database itself
    assert row(store, inline_key)[1] is None
    payload = bytearray(store._cache.get(inline_key))
    payload[-3] ^= 0x01
    overwrite_value(store, inline_key, bytes(payload))

    passes = model.forward_passes
    with pytest.warns(CacheRepaired, match=r"^3 cached chunk\(s\) of layer -1 failed their checks \(truncated entry"):
        again = activations.layer(statements, -1)
    np.testing.assert_array_equal(again, good)  # the same batches, so the same numbers
    assert model.forward_passes == passes + 3  # one pass per dropped chunk; no "delete the cache" after 3 tries


def test_entries_corrupt_again_after_recomputing_blame_the_disk_and_keep_the_cache(model, filled, statements,
                                                                                    monkeypatch):
    activations, _ = filled
    store = activations.store
    first = chunk_ids(activations, statements)[0]
    damaged = store.directory / row(store, (store.namespace, "chunk", first, 0))[1]
    damaged.write_bytes(b"\0" * damaged.stat().st_size)

    import probing.store.store

    honest_encode = probing.store.store.encode

    def failing_disk(block):  # every write comes back with one bit flipped, as from a failing disk
        payload = bytearray(honest_encode(block))
        payload[-1] ^= 0x01
        return bytes(payload)

    monkeypatch.setattr(probing.store.store, "encode", failing_disk)
    with pytest.warns(CacheRepaired), pytest.raises(CorruptEntry) as error:
        activations.layer(statements, 0)
    message = str(error.value)
    assert "recomputed just now failed their checks again" in message and "checksum mismatch" in message
    assert "may be failing" in message and "Everything else stays cached" in message
    assert "delete" not in message.lower()
    assert len(activations.missing(statements)) == 85  # only the statements of the bad chunk


@pytest.mark.parametrize("damage", ["wrong type", "undecodable bytes"])
def test_a_damaged_statement_list_drops_only_its_chunk(model, tmp_path, filled, statements, damage):
    activations, good = filled
    store = activations.store
    second = chunk_ids(activations, statements)[1]
    key = (store.namespace, "chunk", second, "texts")
    if damage == "wrong type":
        store._cache.set(key, {"not": "a list"})
    else:
        overwrite_value(store, key, b"\x80\x05garbage")

    passes = model.forward_passes
    reader = Activations(model=model, cache_dir=tmp_path)  # one that has not read the list before it was damaged
    with pytest.warns(CacheRepaired, match=r"^1 cached chunk\(s\) had a damaged statement list; they were dropped"):
        again = reader.layer(statements, -1)
    np.testing.assert_array_equal(again, good)
    assert model.forward_passes == passes + 1


@pytest.mark.parametrize("damage", ["wrong type", "undecodable bytes"])
def test_a_damaged_chunk_list_is_rebuilt_without_recomputing(model, tmp_path, filled, statements, damage):
    activations, good = filled
    store = activations.store
    key = (store.namespace, "chunks")
    if damage == "wrong type":
        store._cache.set(key, {"chunk-1": "chunk-2"})
    else:
        overwrite_value(store, key, b"\x80\x05\x95garbage")

    passes = model.forward_passes
    with pytest.warns(CacheRepaired, match=r"list of cached chunks for this model was damaged; it was rebuilt "
                                           r"from the 3 chunk\(s\) found in the database$"):
        again = activations.layer(statements, -1)
    np.testing.assert_array_equal(again, good)
    assert model.forward_passes == passes  # nothing was lost
    assert Activations(model=model, cache_dir=tmp_path).missing(statements) == []


def test_a_damaged_description_is_written_again_from_the_model(model, filled, statements):
    activations, good = filled
    store = activations.store
    store._cache.set((store.namespace, "meta"), ["layers", 31])
    passes = model.forward_passes
    with pytest.warns(CacheRepaired, match=r"description of this model \(layers, width\) was damaged; it is written "
                                           r"again from the model, and no activation is lost"):
        again = activations.layer(statements, -1)
    np.testing.assert_array_equal(again, good)
    assert model.forward_passes == passes
    assert store.meta["layers"] == 31 and store.meta["width"] == 576


def test_a_truncated_database_is_moved_aside_and_what_was_lost_recomputed(model, tmp_path, filled, statements):
    activations, good = filled
    activations.store.close()
    database = tmp_path / "activations" / "cache.db"
    with database.open("r+b") as handle:
        handle.truncate(database.stat().st_size // 2)

    passes = model.forward_passes
    with pytest.warns(CacheRepaired, match=r"cache.db was damaged \(SQLite: database disk image is malformed\)\. "
                                           r"\d+ of its \d+ entries could still be read .* the damaged file is kept as "
                                           r"cache\.db\.damaged-"):
        reopened = Activations(model=model, cache_dir=tmp_path)
    with pytest.warns(CacheRepaired, match="had a damaged statement list"):  # rows lost with the pages
        np.testing.assert_array_equal(reopened.layer(statements, -1), good)
    assert 0 < model.forward_passes - passes <= 3  # what was lost, in the same batches
    assert len(list(database.parent.glob("cache.db.damaged-*[0-9]"))) == 1
    assert value_files(reopened.store) == referenced_files(reopened.store)  # the old files were cleaned


def test_a_damaged_page_loses_only_the_rows_on_it(model, tmp_path, filled, statements):
    activations, good = filled
    store = activations.store
    first = chunk_ids(activations, statements)[0]
    db_key = store._cache.disk.put((store.namespace, "chunk", first, 7))[0].encode()  # JSON text, as stored
    store.close()
    database = store.directory / "cache.db"
    content = bytearray(database.read_bytes())
    page_size = int.from_bytes(content[16:18], "big")
    at = -1
    while (at := content.find(db_key, at + 1)) >= 0:  # the table's leaf page (type 13) holding this row
        if content[at - at % page_size] == 13:
            break
    assert at >= 0
    start = at - at % page_size
    content[start : start + page_size] = b"\xff" * page_size
    database.write_bytes(bytes(content))

    passes = model.forward_passes
    with pytest.warns(CacheRepaired) as reports:  # found when the store is opened (and verified) or read
        reopened = Activations(model=model, cache_dir=tmp_path)
        values = reopened.layer(statements, 7)
    messages = [str(report.message) for report in reports]
    assert any("database disk image is malformed" in m and "copied into a fresh database" in m for m in messages)
    assert any("failed their checks (missing or truncated entry)" in m for m in messages)
    np.testing.assert_array_equal(reopened.layer(statements, -1), good)
    assert 0 < model.forward_passes - passes < 3  # the rows on the other pages were kept
    assert values.shape == (len(statements), 576)


def test_clean_removes_files_whose_rows_were_deleted_behind_the_cache(filled, statements):
    activations, good = filled
    store = activations.store
    first = chunk_ids(activations, statements)[0]
    before = value_files(store)
    rowids = [row(store, (store.namespace, "chunk", first, layer))[0] for layer in range(5)]
    with sqlite3.connect(store.directory / "cache.db") as connection:
        connection.executemany("DELETE FROM Cache WHERE rowid = ?", [(rowid,) for rowid in rowids])
    assert value_files(store) == before
    assert store.clean() == 5
    assert len(value_files(store)) == len(before) - 5
    assert value_files(store) == referenced_files(store)
    assert store.clean() == 0
    np.testing.assert_array_equal(activations.layer(statements, -1), good)  # what rows point to is kept


def test_a_removed_database_leaves_no_files_behind_after_the_next_extraction(model, tmp_path, filled, statements):
    activations, _ = filled
    store = activations.store
    written = len(value_files(store))
    assert written == 2 * 31  # two chunks big enough to be files, every layer
    store.close()
    for part in store.directory.glob("cache.db*"):
        part.unlink()
    again = Activations(model=model, cache_dir=tmp_path)
    assert again.ensure(statements) == len(statements)
    assert len(value_files(again.store)) == written
    assert value_files(again.store) == referenced_files(again.store)


def test_corrupt_or_truncated_entries_in_the_database_are_recomputed_not_returned(model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path)
    good = activations.layer(TEXTS, -1)
    store = activations.store
    chunk_id, _ = store.locate(TEXTS[:1])[0]
    key = (store.namespace, "chunk", chunk_id, store.meta["layers"] - 1)
    payload = store._cache.get(key)
    store._cache.set(key, payload[: len(payload) // 2])  # truncated
    passes = model.forward_passes
    with pytest.warns(CacheRepaired, match="truncated entry"):
        np.testing.assert_array_equal(activations.layer(TEXTS, -1), good)
    assert model.forward_passes > passes  # recomputed

    chunk_id, _ = store.locate(TEXTS[:1])[0]
    key = (store.namespace, "chunk", chunk_id, 3)
    payload = bytearray(store._cache.get(key))
    payload[-5] ^= 0xFF  # one flipped byte
    store._cache.set(key, bytes(payload))
    with pytest.warns(CacheRepaired, match="checksum mismatch"):
        recomputed = activations.layer(TEXTS, 3)
    np.testing.assert_array_equal(recomputed, Activations(model=model, cache_dir=tmp_path / "fresh").layer(TEXTS, 3))


def test_cache_folder_is_private(model, tmp_path):
    Activations(model=model, cache_dir=tmp_path / "c").ensure(TEXTS[:1])
    assert stat.S_IMODE((tmp_path / "c" / "activations").stat().st_mode) == 0o700


def test_full_disk_stops_with_advice_and_keeps_finished_batches(model, tmp_path, monkeypatch):
    activations = Activations(model=model, cache_dir=tmp_path, token_budget=40)
    real_set = activations.store._cache.set
    writes = {"chunks": 0}

    def set_until_full(key, value, *args, **kwargs):
        if key[1] == "chunk" and key[3] == 0:
            writes["chunks"] += 1
            if writes["chunks"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_set(key, value, *args, **kwargs)

    monkeypatch.setattr(activations.store._cache, "set", set_until_full)
    with pytest.raises(CacheError, match="is full; everything cached before this batch is kept"):
        activations.ensure(TEXTS)
    kept = len(TEXTS) - len(activations.missing(TEXTS))
    assert 0 < kept < len(TEXTS)
    monkeypatch.undo()
    assert activations.ensure(TEXTS) == len(TEXTS) - kept
