import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from probing.model import devices
from probing.probes import adam as probes
from probing.constants import PROBE_KINDS
from probing.probes.estimators import Probe, Task, fit_many, make_probe
from probing.probes.params import ProbeConfig


def separable(n=1200, width=48, margin=1.0, seed=0):
    """Two classes on either side of a random hyperplane, at least ``margin`` away from it."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=width)
    w /= np.linalg.norm(w)
    X = rng.normal(size=(n, width)) * 3 + 5  # off-centre and scaled: standardisation matters
    y = rng.integers(0, 2, size=n)
    distance = X @ w
    X += np.outer((2 * y - 1) * margin - distance + rng.exponential(1.0, n) * (2 * y - 1), w)
    return X.astype(np.float32), y


@pytest.mark.parametrize("settings", [{}, {"solver": "adam", "epochs": 40, "lr": 1e-2}])
def test_linear_probe_separates_separable_data(settings):
    X, y = separable()
    probe = make_probe("linear", **settings).fit(X[:900], y[:900])
    assert probe.score(X[900:], y[900:]) >= 0.99


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_every_kind_learns_and_shuffled_labels_stay_at_chance(kind):
    X, y = separable(n=2000, seed=1)
    probe = make_probe(kind).fit(X[:1500], y[:1500])
    assert probe.score(X[1500:], y[1500:]) >= 0.9
    shuffled = np.random.default_rng(3).permutation(y)
    control = make_probe(kind).fit(X[:1500], shuffled[:1500])
    assert abs(control.score(X[1500:], shuffled[1500:]) - 0.5) <= 0.05


def test_fit_returns_self_with_learned_attributes_and_history():
    X, y = separable()
    records = []
    probe = make_probe("small", epochs=3)
    assert probe.fit(X[:800], y[:800], X[800:], y[800:], on_epoch=records.append) is probe
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert list(probe.history_.columns) == ["epoch", "train_loss", "train_accuracy", "heldout_loss", "heldout_accuracy"]
    assert probe.history_["train_loss"].iloc[-1] < probe.history_["train_loss"].iloc[0]
    assert [w.shape for w in probe.weights_] == [(48, 128), (128, 64), (64, 1)]
    np.testing.assert_allclose(probe.mean_, X[:800].mean(0), rtol=1e-4)  # fitted on training rows only
    probabilities = probe.predict_proba(X[800:])
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-6)


def test_same_seed_same_probe_other_seed_other_probe():
    X, y = separable()
    a, b = (make_probe("medium", seed=4).fit(X, y) for _ in range(2))
    c = make_probe("medium", seed=5).fit(X, y)
    for wa, wb in zip(a.weights_, b.weights_):
        np.testing.assert_array_equal(wa, wb)
    assert not np.allclose(a.weights_[0], c.weights_[0])


@pytest.mark.parametrize("kind", ["linear", "medium"])
def test_probes_trained_together_equal_probes_trained_alone(kind):
    X, y = separable(n=1000)
    tasks = [Task(np.arange(0, 700), y[:700], np.arange(700, 1000), y[700:], seed=1),
             Task(np.arange(200, 1000), y[200:], seed=2),
             Task(np.arange(0, 333), y[:333], seed=3)]  # different sizes: different steps per epoch
    together = fit_many(X, tasks, ProbeConfig(kind))
    alone = [fit_many(X, [task], ProbeConfig(kind))[0] for task in tasks]
    for stacked, single in zip(together, alone):
        for ws, wa in zip(stacked.weights_, single.weights_):
            np.testing.assert_array_equal(ws, wa)  # bit for bit
        pd.testing.assert_frame_equal(stacked.history_, single.history_)


def test_direction_exists_for_linear_and_mass_mean_only():
    X, y = separable()
    for kind in ("linear", "mass_mean"):
        direction = make_probe(kind).fit(X, y).direction_
        assert direction.shape == (48,) and np.isclose(np.linalg.norm(direction), 1)
    mass = make_probe("mass_mean").fit(X, y)
    expected = X[y == 1].mean(0) - X[y == 0].mean(0)
    np.testing.assert_allclose(mass.direction_, expected / np.linalg.norm(expected), atol=1e-5)
    with pytest.raises(AttributeError, match="no single direction"):
        make_probe("tiny").fit(X, y).direction_


def test_state_round_trip_through_torch_save(tmp_path):
    X, y = separable()
    probe = make_probe("tiny", seed=2).fit(X, y)
    torch.save(probe.to_state(), tmp_path / "p.pt")
    again = Probe.from_state(torch.load(tmp_path / "p.pt", weights_only=True))
    np.testing.assert_array_equal(again.predict_proba(X), probe.predict_proba(X))
    assert again.config == probe.config


def test_invalid_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match="Probe.kind: 'huge' is not one of linear"):
        make_probe("huge")
    with pytest.raises(ValueError, match="Probe.epochs: must be >= 1, got 0"):
        make_probe("linear", epochs=0)
    with pytest.raises(ValueError, match="lbfgs' is for the linear probe"):
        make_probe("medium", solver="lbfgs")
    with pytest.raises(ValueError, match="both 0 and 1"):
        make_probe("linear").fit(np.zeros((4, 3)), [1, 1, 1, 1])
    with pytest.raises(RuntimeError, match="not fitted"):
        make_probe("linear").predict(np.zeros((2, 3)))


def test_stacked_training_is_plain_torch_adam_on_an_mlp(monkeypatch):
    """The hand-written batched backprop and Adam make the updates nn.Linear + torch.optim.Adam would (in float32)."""
    monkeypatch.setenv(probes.TRAIN_DTYPE_VARIABLE, "float32")
    X, y = separable(n=300, width=16)
    seed, epochs, batch = 11, 2, 32
    probe = make_probe("small", seed=seed, epochs=epochs, batch_size=batch).fit(X, y)

    generator = torch.Generator().manual_seed(seed)  # the member's own stream: init, then one order per epoch
    sizes = [16, 128, 64, 1]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / np.sqrt(fan_in)
        linear = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.copy_(((torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound).T)
            linear.bias.copy_((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
        layers += [linear, torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers[:-1])
    rows = torch.from_numpy(X).double()
    Z = ((rows - rows.mean(0)) / rows.std(0, unbiased=False)).float()
    target = torch.from_numpy(y).float()
    optimiser = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for _ in range(epochs):
        order = torch.randperm(len(X), generator=generator)
        for start in range(0, len(X), batch):
            chosen = order[start : start + batch]
            optimiser.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(mlp(Z[chosen])[:, 0], target[chosen]).backward()
            optimiser.step()
    expected = [m.weight.detach().T.numpy() for m in mlp if isinstance(m, torch.nn.Linear)]
    for ours, theirs in zip(probe.weights_, expected):
        np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_big_stacks_and_the_memory_saving_path_give_the_same_probes(monkeypatch):
    """20 members (held-out passes run 16 at a time) equal their lone selves, with or without standardised copies."""
    X, y = separable(n=600, width=24)
    rng = np.random.default_rng(0)
    tasks = []
    for seed in range(20):
        rows = np.sort(rng.choice(600, size=300 + 10 * seed, replace=False))
        rest = np.setdiff1d(np.arange(600), rows)
        tasks.append(Task(rows, y[rows], rest, y[rest], seed=seed))
    config = ProbeConfig("tiny", epochs=2)
    stacked = fit_many(X, tasks, config)
    monkeypatch.setattr(probes, "STANDARDISED_COPIES_MAX_BYTES", 0)
    alone = [fit_many(X, [task], config)[0] for task in tasks[::4]]
    for together, single in zip(stacked[::4], alone):
        for a, b in zip(together.weights_ + together.biases_, single.weights_ + single.biases_):
            np.testing.assert_array_equal(a, b)
        pd.testing.assert_frame_equal(together.history_, single.history_)


@pytest.fixture
def torch_threads():
    """``torch.set_num_threads`` for one test; the count before is restored after it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def threads_of_a_new_thread() -> int:
    counts = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


def test_stacks_share_out_over_threads_with_the_numbers_of_one_thread(torch_threads):
    """On CPU the members train in stacks spread over torch's threads, one intra-op thread each: the probes
    are the same bit for bit for any thread count, and the caller's and new threads' counts are unchanged."""
    X, y = separable(n=800, width=24)
    tasks = [Task(np.arange(0, 600 - 40 * seed), y[: 600 - 40 * seed], np.arange(600, 800), y[600:], seed=seed)
             for seed in range(7)]
    config = ProbeConfig("small", epochs=2)
    trained = {}
    for threads in (1, 3):
        torch_threads(threads)
        workers = set()
        trained[threads] = fit_many(X, tasks, config,
                                    on_epoch=lambda member, record: workers.add(threading.current_thread().name))
        assert len(workers) == threads
        assert torch.get_num_threads() == threads_of_a_new_thread() == threads
    for one, three in zip(trained[1], trained[3]):
        for a, b in zip(one.weights_ + one.biases_, three.weights_ + three.biases_):
            np.testing.assert_array_equal(a, b)
        pd.testing.assert_frame_equal(one.history_, three.history_)


@pytest.mark.parametrize(("members", "workers", "cap"), [(1, 2, 4), (2, 8, 4), (5, 1, 2), (7, 3, 2), (18, 2, 4),
                                                         (18, 2, 1 << 30), (18, 16, 3)])
def test_members_are_shared_out_in_order_in_stacks_of_two_or_more(members, workers, cap):
    shares = probes._share_out(members, workers, cap)
    stacks = [stack for share in shares for stack in share]
    assert [member for stack in stacks for member in stack] == list(range(members))
    assert 0 < len(shares) <= workers
    assert max(map(len, stacks)) <= max(cap + 1, 2), "a stack may pass the cap by one to keep stacks of two"
    assert min(map(len, stacks)) >= min(2, members), "a lone member would need a twin"
    sizes = [sum(map(len, share)) for share in shares]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("cache", "medium_cap"), [(32 << 20, 4), (None, 4), (480 << 20, 41)])
def test_float32_stacks_are_cut_to_keep_adam_state_in_cache_and_bf16_stacks_are_not(monkeypatch, cache, medium_cap):
    """Two workers' float32 stacks share half the last-level cache, 12 MiB a stack at least: 188,929 medium
    parameters x 16 bytes = 3.0 MB a member, so 4 members in 12 MiB (a 32 MB L3), 41 in 120 MiB (480 MB)."""
    monkeypatch.setattr(devices, "last_level_cache_bytes", lambda: cache)
    medium, tiny = ProbeConfig("medium"), ProbeConfig("tiny")
    assert probes._stack_cap(576, medium, torch.float32, 2) == medium_cap
    assert probes._stack_cap(576, tiny, torch.float32, 2) > 18
    assert probes._stack_cap(576, medium, torch.bfloat16, 2) > 18


def test_the_last_level_cache_is_read_from_linux():
    """This machine's largest unified cache, as sysfs reports it (``None`` only where Linux does not)."""
    sizes = [path.read_text().strip() for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size")]
    if not sizes:
        assert devices.last_level_cache_bytes() is None
        return
    assert devices.last_level_cache_bytes() >= 1 << 20, sizes


def test_a_failing_worker_stops_the_others_and_its_own_error_is_raised(torch_threads):
    torch_threads(3)
    X, y = separable(n=800, width=24)
    tasks = [Task(np.arange(800), y, seed=seed) for seed in range(6)]
    records = Counter()

    def on_epoch(member: int, record: dict) -> None:
        if member == 0:
            raise ValueError("the callback of member 0 failed")
        records[member] += 1

    with pytest.raises(ValueError, match="the callback of member 0 failed"):
        fit_many(X, tasks, ProbeConfig("small", epochs=20), on_epoch=on_epoch)
    assert max(records.values(), default=0) < 10, f"the other workers went on: {records}"
    assert threads_of_a_new_thread() == 3


@pytest.mark.parametrize("bad", [{"lr": float("inf")}, {"lr": float("nan")}, {"C": float("inf")},
                                 {"weight_decay": float("nan")}, {"lr": 0.0}])
def test_non_finite_or_non_positive_settings_are_refused(bad):
    with pytest.raises(ValueError, match="must be a finite number"):
        make_probe("small", **bad)


@pytest.mark.parametrize("kind", PROBE_KINDS)
def test_non_finite_features_stop_training_with_the_row(kind):
    X, y = separable(n=200)
    X[57, 3] = np.nan
    with pytest.raises(probes.ProbeTrainingError, match=r"1 row\(s\) .* NaN or inf \(first: row 57\)"):
        make_probe(kind).fit(X, y)
    X[57, 3] = np.inf  # held-out rows count too: they would be scored as 0.5
    with pytest.raises(probes.ProbeTrainingError, match="row 57"):
        make_probe(kind).fit(X[:50], y[:50], X[50:], y[50:])


def test_diverging_training_stops_with_a_message_instead_of_returning_a_probe():
    """No learning rate within ProbeConfig's bounds diverges on these data, so the config is set past them."""
    X, y = separable(n=400)
    config = ProbeConfig("medium", epochs=3)
    config.lr = 1e30
    with pytest.raises(probes.ProbeTrainingError, match=r"diverged in epoch \d+.*Lower the learning rate"):
        fit_many(X.astype(np.float32), [Task(np.arange(len(y)), y)], config)


def test_probe_config_comes_from_the_fields_by_name():
    probe = make_probe("small", lr=0.02, batch_size=8, weight_decay=0.1, seed=4)
    assert probe.config == ProbeConfig(kind="small", lr=0.02, batch_size=8, weight_decay=0.1, seed=4)


@pytest.mark.parametrize("kind, solver, in_epochs", [
    ("linear", "lbfgs", False), ("linear", "adam", True), ("tiny", "auto", True), ("medium", "adam", True),
    ("mass_mean", "auto", False)])
def test_which_probes_count_epochs(kind, solver, in_epochs):
    assert ProbeConfig(kind=kind, solver=solver).trains_in_epochs is in_epochs
    history = make_probe(kind, solver=solver, epochs=7).fit(*separable(n=60)).history_
    assert (len(history) == 7) is in_epochs  # L-BFGS reports rounds until converged, mass-mean one fit


def test_an_interrupt_stops_every_training_thread_within_an_epoch(tmp_path):
    """Ctrl-C while stacks train side by side: the caller gets KeyboardInterrupt at once and the workers stop
    at their next epoch instead of training to the end (1,000 epochs here)."""
    script = tmp_path / "train.py"
    script.write_text(
        "import numpy as np, torch\n"
        "from probing.probes.estimators import ProbeConfig, Task, fit_many\n"
        "torch.set_num_threads(2)\n"
        "X, y = np.random.default_rng(0).normal(size=(800, 24)).astype(np.float32), np.arange(800) % 2\n"
        "tasks = [Task(np.arange(800), y, seed=s) for s in range(4)]\n"
        "fit_many(X, tasks, ProbeConfig('small', epochs=1000), on_epoch=lambda j, r: print('epoch', flush=True))\n")
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert process.stdout.readline() == "epoch\n", process.communicate()[1]
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode != 0 and "KeyboardInterrupt" in errors, errors
    assert time.monotonic() - started < 10
