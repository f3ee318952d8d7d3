import stat

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from probing.activations import Activations, StatementTooLong, plan_batches, run_batch
from probing.models import ModelSpec, load_model
from probing.probes import make_probe
from probing.storage import ActivationStore

TEXTS = [
    "Paris is in France.",
    "The symbol of gold is Au.",
    "A whale is a mammal.",
    "Lima is the capital of Peru, a country in South America.",
    "Dogs can fly.",
    "Water boils at 100 degrees Celsius at sea level.",
]


def one_at_a_time(model, texts, position):
    return np.stack([run_batch(model, plan_batches(model.tokenizer, [t], position, 4096, 512)[0], position)[0]
                     for t in texts])


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("position", ["last", "before_period", "mean"])
def test_batched_vectors_equal_one_at_a_time(model, tmp_path, position):
    activations = Activations(model=model, position=position, cache_dir=tmp_path, token_budget=4096)
    single = one_at_a_time(model, TEXTS, position)  # (texts, layers, width), float32
    assert single.shape == (len(TEXTS), 31, 576)
    batches = plan_batches(model.tokenizer, TEXTS, position, 4096, 512)
    assert len(batches) == 1  # all six padded together: the case that could leak across rows
    batched = np.empty_like(single)
    batched[batches[0].indices] = run_batch(model, batches[0], position)
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-3 * np.abs(single).max())
    # Stored as float16: equal to the float32 vectors within half precision.
    for layer in (-1, -9, 0):
        stored = activations.layer(TEXTS, layer)
        np.testing.assert_allclose(stored, single[:, layer], rtol=2e-3, atol=2e-3 * np.abs(single[:, layer]).max())


def test_positions_read_the_right_tokens(model):
    tokenizer = model.tokenizer
    text = "Paris is in France."
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    last = plan_batches(tokenizer, [text], "last", 512, 512)[0].read_at.item()
    before = plan_batches(tokenizer, [text], "before_period", 512, 512)[0].read_at.item()
    assert tokens[last] == "." and tokens[before].endswith("France")
    no_period = plan_batches(tokenizer, ["Paris is in France"], "before_period", 512, 512)[0]
    assert no_period.read_at.item() == len(tokens) - 2  # no final period: the last token


def test_second_pass_is_served_from_cache_without_the_model(model, tmp_path):
    first = Activations(model=model, cache_dir=tmp_path)
    passes = model.forward_passes
    assert first.ensure(TEXTS) == len(TEXTS)
    assert model.forward_passes > passes
    expected = first.layer(TEXTS, -5)

    again = Activations("embedded", cache_dir=tmp_path)  # same fingerprint, no model given
    assert again.ensure(TEXTS) == 0
    np.testing.assert_array_equal(again.layer(TEXTS, -5), expected)
    assert not again.model_loaded

    passes = model.forward_passes
    assert first.ensure([*TEXTS, "Rome is in Italy."]) == 1  # only the new statement is computed
    assert model.forward_passes == passes + 1


def test_other_position_or_dtype_is_another_cache_entry(model, tmp_path):
    Activations(model=model, cache_dir=tmp_path).ensure(TEXTS[:2])
    assert Activations("embedded", position="mean", cache_dir=tmp_path).missing(TEXTS[:2]) == [0, 1]
    assert Activations(model=model, cache_dir=tmp_path).missing(TEXTS[:2]) == []


def test_interrupted_extraction_resumes_where_it_stopped(model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path, token_budget=40)  # ~3 statements a batch

    def stop_after_first_batch(done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        activations.ensure(TEXTS, on_progress=stop_after_first_batch)
    kept = len(TEXTS) - len(activations.missing(TEXTS))
    assert 0 < kept < len(TEXTS)
    assert activations.ensure(TEXTS) == len(TEXTS) - kept


def test_corrupt_or_truncated_entries_are_recomputed_not_returned(model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path)
    good = activations.layer(TEXTS, -1)
    store: ActivationStore = activations.store
    chunk_id, _ = store.locate(TEXTS[:1])[0]
    key = (store.namespace, "chunk", chunk_id, store.meta["layers"] - 1)
    payload = store._cache.get(key)
    store._cache.set(key, payload[: len(payload) // 2])  # truncated
    passes = model.forward_passes
    np.testing.assert_array_equal(activations.layer(TEXTS, -1), good)
    assert model.forward_passes > passes  # recomputed

    chunk_id, _ = store.locate(TEXTS[:1])[0]
    key = (store.namespace, "chunk", chunk_id, 3)
    payload = bytearray(store._cache.get(key))
    payload[-5] ^= 0xFF  # one flipped byte
    store._cache.set(key, bytes(payload))
    np.testing.assert_array_equal(activations.layer(TEXTS, 3), Activations(model=model, cache_dir=tmp_path / "fresh").layer(TEXTS, 3))


def test_cache_folder_is_private(model, tmp_path):
    Activations(model=model, cache_dir=tmp_path / "c").ensure(TEXTS[:1])
    assert stat.S_IMODE((tmp_path / "c" / "activations").stat().st_mode) == 0o700


def test_bad_layers_and_statements_get_clear_errors(model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path, max_tokens=16)
    with pytest.raises(IndexError, match=r"layer -40 does not exist: this model has 31 hidden states"):
        activations.layer(TEXTS[:1], -40)
    with pytest.raises(StatementTooLong, match="exceed 16 tokens"):
        activations.ensure(["word " * 40])
    with pytest.raises(ValueError, match="is empty"):
        activations.ensure(["   "])
    with pytest.raises(ValueError, match="token position 'first'"):
        Activations(model=model, position="first", cache_dir=tmp_path)


def test_full_disk_stops_with_advice_and_keeps_finished_batches(model, tmp_path, monkeypatch):
    import errno

    from probing.storage import CacheError

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


def test_bfloat16_vectors_agree_with_float32_and_probes_score_the_same(model, shared_cache, small_saplma):
    """bf16 is the default where hardware runs it fast (GPUs, AMX CPUs); it must not change the results."""
    fast_model = load_model(ModelSpec("embedded", dtype="bfloat16"), cache_dir=shared_cache)
    assert fast_model.dtype == torch.bfloat16
    texts, labels = small_saplma.statements, small_saplma.labels
    exact, fast = (Activations(model=m, cache_dir=shared_cache) for m in (model, fast_model))
    exact.ensure(texts)
    fast.ensure(texts)
    assert exact.missing(texts) == fast.missing(texts) == []
    split = next(StratifiedKFold(4, shuffle=True, random_state=0).split(texts, labels))
    train, test = split
    noise = 2 * np.sqrt(0.25 / len(test))  # two binomial standard errors at accuracy 0.5
    for layer in (-1, -5, -9, -13, -17):
        a, b = exact.layer(texts, layer), fast.layer(texts, layer)
        assert cosine(a, b).min() >= 0.99, layer
        probe_a, probe_b = (make_probe("linear").fit(x[train], labels[train]) for x in (a, b))
        assert abs(probe_a.score(a[test], labels[test]) - probe_b.score(b[test], labels[test])) <= noise, layer
        assert (probe_a.predict(a[test]) == probe_a.predict(b[test])).mean() >= 0.9, layer
