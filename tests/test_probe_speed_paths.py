"""The fast training paths keep their promises on real activations: lockstep L-BFGS equals L-BFGS alone,
bit for bit, and reaches scikit-learn's optimum; bf16 MLP training (where chosen) scores like float32."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from probing.probes import adam as probes
from probing.store.activations import Activations
from probing.analyses.grid import category_splits, split_seed
from probing.model import devices
from probing.model.devices import cpu_has_fast_bfloat16
from probing.probes.estimators import Task, fit_many
from probing.probes.params import ProbeConfig
from probing.probes.lbfgs import LBFGS_STACK


@pytest.fixture(scope="module")
def saplma_layer(saplma, model, shared_cache):
    """All 6,054 SAPLMA statements (those labelled both ways dropped) at layer -9, and their labels."""
    return Activations(model=model, cache_dir=shared_cache).layer(saplma.statements, -9), saplma.labels


def lbfgs_tasks(labels: np.ndarray, n_rows: int, count: int, seed: int = 0) -> list[Task]:
    """``count`` tasks on distinct random training sets of different sizes (one repeats rows), with held-out rows."""
    rng = np.random.default_rng(seed)
    tasks = []
    for k in range(count):
        train = np.sort(rng.choice(n_rows, size=n_rows // 3 + 97 * k, replace=False))
        if k == 2:
            train = np.concatenate([train, train[:50]])  # rows listed twice count twice
        test = np.setdiff1d(np.arange(n_rows), train)
        tasks.append(Task(train, labels[train], test, labels[test], seed=k))
    return tasks


def test_lbfgs_lockstep_stack_equals_each_probe_fitted_alone(saplma_layer):
    X, labels = saplma_layer
    tasks = lbfgs_tasks(labels, len(X), LBFGS_STACK)
    stacked = fit_many(X, tasks, ProbeConfig("linear"))
    for task, together in zip(tasks[::-1], stacked[::-1]):  # last first: a different place in the stack
        (alone,) = fit_many(X, [task], ProbeConfig("linear"))
        for a, b in zip(together.weights_ + together.biases_, alone.weights_ + alone.biases_):
            assert torch.equal(torch.from_numpy(a), torch.from_numpy(b))
        pd.testing.assert_frame_equal(together.history_, alone.history_)
    assert len({len(p.history_) for p in stacked}) > 1, "members should stop after different numbers of iterations"


def test_more_problems_than_one_stack_and_seed_twins(saplma_layer):
    """Tasks beyond LBFGS_STACK go to a second stack; tasks differing only in seed share one fit."""
    X, labels = saplma_layer
    tasks = lbfgs_tasks(labels, len(X), LBFGS_STACK + 2, seed=1)
    twin = Task(tasks[-1].train, tasks[-1].y_train, tasks[-1].test, tasks[-1].y_test, seed=99)
    records: list[tuple[int, dict]] = []
    fitted = fit_many(X, [*tasks, twin], ProbeConfig("linear"), on_epoch=lambda j, r: records.append((j, r)))
    (alone,) = fit_many(X, [tasks[-1]], ProbeConfig("linear"))
    for probe in (fitted[-2], fitted[-1]):
        np.testing.assert_array_equal(probe.weights_[0], alone.weights_[0])
    assert fitted[-1].seed == 99
    assert [r for j, r in records if j == len(tasks)] == fitted[-1].history_.to_dict("records")


def test_lbfgs_reaches_scikit_learns_optimum_on_the_category_splits(saplma, saplma_layer):
    """Same objective (mean log-loss + |w|^2 / (2 C n), C = 0.1), fitted to convergence: held-out accuracies as
    scikit-learn's, objective within 1e-5 of its optimum."""
    X, labels = saplma_layer
    splits = category_splits(saplma)[:3]
    fitted = fit_many(X, [Task(s.train, labels[s.train], s.test, labels[s.test]) for s in splits], ProbeConfig("linear"))
    for split, probe in zip(splits, fitted):
        Z = (X[split.train].astype(np.float64) - probe.mean_) / probe.scale_
        y = labels[split.train]
        reference = LogisticRegression(C=0.1, max_iter=2000, tol=1e-6).fit(Z, y)

        def objective(w, b):
            logits = Z @ w + b
            return np.mean(np.logaddexp(0, -logits * (2 * y - 1))) + w @ w / (2 * 0.1 * len(y))

        ours = objective(probe.weights_[0][:, 0].astype(np.float64), float(probe.biases_[0][0]))
        best = objective(reference.coef_[0], reference.intercept_[0])
        assert ours - best < 1e-5, split.name
        Z_test = (X[split.test].astype(np.float64) - probe.mean_) / probe.scale_
        disagree = (reference.predict(Z_test) != probe.predict(X[split.test])).mean()
        assert disagree <= 0.01, split.name


def test_bfloat16_stack_equals_its_probes_trained_alone(saplma_layer):
    """Bit for bit within one dtype: bf16 MLP stacks keep the stacked-equals-alone promise."""
    X, labels = saplma_layer
    rows = np.arange(1500)
    tasks = [Task(rows[: 400 + 300 * k], labels[: 400 + 300 * k], rows[1200:], labels[1200:1500], seed=k)
             for k in range(3)]
    config = ProbeConfig("medium", epochs=2)
    together = fit_many(X[rows], tasks, config, train_dtype="bfloat16")
    for task, stacked in zip(tasks, together):
        (alone,) = fit_many(X[rows], [task], config, train_dtype="bfloat16")
        for a, b in zip(stacked.weights_ + stacked.biases_, alone.weights_ + alone.biases_):
            assert torch.equal(torch.from_numpy(a), torch.from_numpy(b))
        pd.testing.assert_frame_equal(stacked.history_, alone.history_)
    (float32,) = fit_many(X[rows], tasks[:1], config, train_dtype="float32")
    assert not np.array_equal(float32.weights_[0], together[0].weights_[0]), "bf16 should really compute in bf16"


@pytest.mark.skipif(not cpu_has_fast_bfloat16(), reason="bf16 training is chosen only on CPUs with bf16 matrix units")
@pytest.mark.parametrize("kind", probes.BFLOAT16_KINDS)
def test_bfloat16_training_scores_like_float32(saplma, saplma_layer, kind):
    """The six category splits x 3 seeds at one layer (the grid's cells, SAPLMA settings): the mean held-out
    accuracy of bf16-trained probes is within two standard errors of the float32 one, the standard error
    coming from the spread over seeds."""
    X, labels = saplma_layer
    splits = category_splits(saplma)
    tasks = [Task(s.train, labels[s.train], s.test, labels[s.test], seed=split_seed(seed, s.name))
             for s in splits for seed in range(3)]
    accuracy = {dtype: np.array([probe.score(X[task.test], task.y_test) for task, probe in
                                 zip(tasks, fit_many(X, tasks, ProbeConfig(kind), train_dtype=dtype))])
                for dtype in ("float32", "bfloat16")}
    seed_sd = np.sqrt(np.mean([accuracy["float32"][k: k + 3].var(ddof=1) for k in range(0, len(tasks), 3)]))
    standard_error = seed_sd * np.sqrt(2 / len(tasks))  # of the difference of two means over the 18 probes
    difference = accuracy["bfloat16"].mean() - accuracy["float32"].mean()
    assert abs(difference) <= 2 * standard_error, (difference, standard_error)


@pytest.mark.parametrize(("units", "mlp_dtype"), [("avx512_bf16", torch.bfloat16), ("amx", torch.float32),
                                                   (None, torch.float32)])
def test_training_dtype_is_chosen_per_cpu_and_kind_and_can_be_forced(monkeypatch, units, mlp_dtype):
    """bf16 MLP stacks where measured faster (AVX512-BF16 without AMX); float32 on AMX (measured as fast) and
    where bf16 is emulated."""
    monkeypatch.delenv(probes.TRAIN_DTYPE_VARIABLE, raising=False)
    monkeypatch.setattr(devices, "cpu_bfloat16_units", lambda: units)
    assert [probes.training_dtype(kind) for kind in ("small", "medium")] == [mlp_dtype] * 2
    assert probes.training_dtype("tiny") == torch.float32  # measured no faster in bf16
    assert probes.training_dtype("linear") == torch.float32  # bf16 measured only ~1.07x faster for it: kept float32
    assert probes.training_dtype("medium", "cuda") == torch.float32
    assert probes.training_dtype("medium", requested="float32") == torch.float32
    monkeypatch.setenv(probes.TRAIN_DTYPE_VARIABLE, "bfloat16")
    assert probes.training_dtype("linear") == torch.bfloat16
    assert probes.training_dtype("medium", requested="float32") == torch.float32  # the argument wins
    monkeypatch.setenv(probes.TRAIN_DTYPE_VARIABLE, "float16")
    with pytest.raises(ValueError, match=r"\$PROBING_TRAIN_DTYPE is 'float16': use 'float32' or 'bfloat16'"):
        fit_many(np.zeros((4, 2), dtype=np.float32), [Task(np.arange(4), np.array([0, 1, 0, 1]))], ProbeConfig("tiny"))


@pytest.mark.parametrize("train_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["tiny", "medium"])
def test_grid_stack_of_equal_sized_members_equals_each_member_alone(saplma, model, shared_cache, kind, train_dtype):
    """The grid's stack (6 category splits x 3 seeds, equal training sizes, 5 epochs): every member alone is the
    same probe bit for bit, biases included (a 1-element bias once took another rounding path in Adam, and
    bf16 products of a lone probe's stack another kernel)."""
    subset = saplma.subset(per_topic=100)
    features, y = Activations(model=model, cache_dir=shared_cache).layer(subset.statements, -1), subset.labels
    splits = category_splits(subset)
    tasks = [Task(s.train, y[s.train], s.test, y[s.test], seed=split_seed(seed, s.name))
             for s in splits for seed in range(3)]
    config = ProbeConfig(kind)
    stacked = fit_many(features, tasks, config, train_dtype=train_dtype)
    for task, together in zip(tasks, stacked):
        (alone,) = fit_many(features, [task], config, train_dtype=train_dtype)
        for a, b in zip(together.weights_ + together.biases_, alone.weights_ + alone.biases_):
            assert torch.equal(torch.from_numpy(a), torch.from_numpy(b))
