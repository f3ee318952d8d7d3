import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedKFold

from probing.model.devices import cpu_has_fast_bfloat16
from probing.model.loading import ModelSpec, load_model
from probing.probes.estimators import make_probe
from probing.store.activations import Activations, StatementTooLong, plan_batches, run_batch
from probing.store.encoding import NonFiniteActivations
from support import TEXTS, interrupt_after_first_batch


# Batched vs one-at-a-time: largest difference allowed, as a fraction of the layer's largest value.
# Padding changes the shapes of the matrix products, hence their rounding: float32 differs by ~6e-7,
# bfloat16 (8-bit mantissa) by ~1.2e-2 on this model.
BATCHING_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 4e-2, torch.float16: 1e-2}


@pytest.fixture(scope="session")
def float32_model(model):
    """The embedded model in float32 whatever the engine's default for this CPU (bf16 where it is fast)."""
    if model.dtype == torch.float32:
        return model
    return load_model(ModelSpec("embedded", dtype="float32"))


@pytest.fixture
def damageable_model():
    """A float32 model of its own, for tests that damage its weights."""
    return load_model(ModelSpec("embedded", dtype="float32"))


def one_at_a_time(model, texts, position):
    return np.stack([run_batch(model, plan_batches(model.tokenizer, [t], position, 4096, 512)[0], position)[0]
                     for t in texts])


def cosine(a, b):
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.mark.parametrize("position", ["last", "before_period", "mean"])
def test_batched_vectors_equal_one_at_a_time_in_float32(float32_model, tmp_path, position):
    model = float32_model
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


@pytest.mark.parametrize("position", ["last", "before_period", "mean"])
def test_batched_vectors_equal_one_at_a_time_in_the_default_dtype(model, tmp_path, position):
    """The dtype the engine chose for this machine (bf16 on AMX / AVX512-BF16 CPUs), at its own precision."""
    activations = Activations(model=model, position=position, cache_dir=tmp_path, token_budget=4096)
    single = one_at_a_time(model, TEXTS, position)
    batch = plan_batches(model.tokenizer, TEXTS, position, 4096, 512)[0]
    batched = np.empty_like(single)
    batched[batch.indices] = run_batch(model, batch, position)
    layer_scale = np.abs(single).max(axis=(0, 2), keepdims=True)
    assert (np.abs(batched - single) / layer_scale).max() <= BATCHING_TOLERANCE[model.dtype]
    assert cosine(batched, single).min() >= 0.999
    # Stored as float16: the batch's own vectors within half precision (the cache runs the same batch).
    for layer in (-1, -9, 0):
        stored = activations.layer(TEXTS, layer)
        np.testing.assert_allclose(stored, batched[:, layer], rtol=2e-3, atol=2e-3 * np.abs(batched[:, layer]).max())


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
    kept = interrupt_after_first_batch(activations, TEXTS)
    assert activations.ensure(TEXTS) == len(TEXTS) - kept


def test_a_failed_background_write_stops_the_extraction_and_nothing_after_it_is_stored(model, tmp_path, monkeypatch):
    """Batches are written on a second thread while the next one runs: a write that fails (here the
    second batch's) is raised in the caller, and no later batch is written after it."""
    activations = Activations(model=model, cache_dir=tmp_path, token_budget=20)
    batches = plan_batches(model.tokenizer, TEXTS, "last", 20, 512)
    assert len(batches) >= 3
    real_write, calls = activations.store.write_chunk, []

    def fail_second(texts, hidden):
        calls.append(texts)
        if len(calls) == 2:
            raise OSError("simulated write failure")
        return real_write(texts, hidden)

    monkeypatch.setattr(activations.store, "write_chunk", fail_second)
    with pytest.raises(OSError, match="simulated write failure"):
        activations.ensure(TEXTS)
    assert len(calls) == 2  # the batch computed meanwhile was not written after the failure
    first = sorted(batches[0].indices)
    assert activations.missing(TEXTS) == [i for i in range(len(TEXTS)) if i not in first]
    monkeypatch.undo()
    assert activations.ensure(TEXTS) == len(TEXTS) - len(first)


def test_bad_layers_and_statements_get_clear_errors(model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path, max_tokens=16)
    with pytest.raises(IndexError, match=r"layer -40 does not exist: this model has 31 hidden states"):
        activations.layer(TEXTS[:1], -40)
    with pytest.raises(ValueError, match="is empty"):
        activations.ensure(["   "])
    with pytest.raises(ValueError, match="token position 'first'"):
        Activations(model=model, position="first", cache_dir=tmp_path)


def test_a_too_long_statement_is_named_by_its_words_and_length_with_the_way_out(model, tmp_path):
    long = "The committee reviewed the proposal in detail. " * 426  # 20,022 characters
    activations = Activations(model=model, cache_dir=tmp_path)
    tokens = len(model.tokenizer(long)["input_ids"])
    assert len(long) > 20_000 and tokens > 512
    with pytest.raises(StatementTooLong) as error:
        activations.ensure([*TEXTS, long, "Short again."])
    message = str(error.value)
    assert message.startswith("the statement 'The committee reviewed the proposal in detail. The...' has ")
    assert f"has {tokens:,} tokens, more than the 512 allowed" in message
    assert "--max-tokens" in message and "max_tokens=" in message
    assert "#" not in message  # no index into a de-duplicated list the user never saw
    assert activations.missing(TEXTS) == list(range(len(TEXTS)))  # refused before any work
    assert len(plan_batches(model.tokenizer, [long], "last", 1024, max_tokens=tokens)) == 1  # the way out


def test_nan_activations_are_refused_naming_layers_and_statements_and_keep_the_cache(damageable_model, tmp_path):
    """A damaged model (here: one weight of block 5 set to NaN) must not fill the cache with NaN."""
    activations = Activations(model=damageable_model, cache_dir=tmp_path, token_budget=40)
    activations.ensure(TEXTS[:2])
    kept = activations.layer(TEXTS[:2], -1)
    weight = damageable_model.model.model.layers[5].mlp.down_proj.weight
    intact = weight.clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteActivations) as error:
        activations.ensure(TEXTS)
    message = str(error.value)
    # Block 5 writes hidden state 6; the NaN then spreads to every later one.
    assert message.startswith("the model produced NaN or infinite values at hidden state(s) 6..30 (of 0..30")
    assert any(repr(text) in message for text in TEXTS[2:])
    assert "Nothing of this batch was stored; everything cached before is kept" in message
    assert "try --dtype float32" in message and "damaged" in message
    assert activations.missing(TEXTS) == [2, 3, 4, 5]
    np.testing.assert_array_equal(activations.layer(TEXTS[:2], -1), kept)
    with torch.no_grad():
        weight.copy_(intact)
    assert activations.ensure(TEXTS) == 4
    assert np.isfinite(activations.layer(TEXTS, -1)).all()


def test_values_beyond_float16_are_refused_not_stored_as_inf(damageable_model, tmp_path):
    """Finite in float32 but not in the cache's float16: the final norm scaled 1e5 times."""
    with torch.no_grad():
        damageable_model.model.model.norm.weight.mul_(1e5)
    activations = Activations(model=damageable_model, cache_dir=tmp_path)
    with pytest.raises(NonFiniteActivations) as error:
        activations.ensure(TEXTS)
    message = str(error.value)
    assert message.startswith("the model's values at hidden state(s) 30 (of 0..30")  # the final norm's output
    assert "beyond float16's range (±65,504)" in message and "Nothing of this batch was stored" in message
    assert activations.missing(TEXTS) == list(range(len(TEXTS)))


@pytest.mark.skipif(ModelSpec("embedded").resolved_device == "cpu" and not cpu_has_fast_bfloat16(),
                    reason="bfloat16 is emulated on this CPU (no AMX / AVX512-BF16): ~70x slower than float32")
def test_bfloat16_vectors_agree_with_float32_and_probes_score_the_same(float32_model, shared_cache, small_saplma):
    """bf16 is the default where hardware runs it fast (GPUs, AMX CPUs); it must not change the results."""
    fast_model = load_model(ModelSpec("embedded", dtype="bfloat16"))
    assert fast_model.dtype == torch.bfloat16 and float32_model.dtype == torch.float32
    texts, labels = small_saplma.statements, small_saplma.labels
    exact, fast = (Activations(model=m, cache_dir=shared_cache) for m in (float32_model, fast_model))
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
