"""Truth probes with a scikit-learn interface, trained many at a time.

Kinds:

- ``linear``: logistic regression on standardised features. By default it is
  fitted to convergence with L-BFGS and an L2 penalty (scikit-learn's objective,
  ``C=0.1`` as in docs/reference.md's sanity figures); ``solver="adam"`` trains it the
  SAPLMA way instead (a few epochs of Adam, which underfits a linear model);
- ``tiny`` (32), ``small`` (128-64), ``medium`` (256-128-64): ReLU MLPs with a
  sigmoid output; ``medium`` is SAPLMA's probe, tiny and small sit between it
  and linear;
- ``mass_mean``: the difference of class means (Marks & Tegmark), with a
  1-D logistic calibration of the projection for P(true).

``fit_many`` trains any number of same-kind probes together: the weights are
stacked (member x out x in), forward and backward passes are batched matmuls
over members, and one fused Adam call updates every member. Each member draws
its initial weights and batch order from its own seed only, has its own Adam
step count, and is not updated once its epoch has run out of batches, so a probe
trained in a stack equals, bit for bit, the same probe trained alone (a lone
probe trains beside a throwaway twin: see ``_fit_adam_stack_or_twin``). On CPU the
members are shared out over torch's threads, each thread training its own stacks on
one core (``_fit_adam_stacks``), so the numbers do not depend on the thread count
either. On CPUs with bf16 matrix units the larger MLP stacks multiply in bfloat16
(float32 weights and Adam state; see ``training_dtype``); the bit-for-bit promise then
holds within that dtype.

L-BFGS starts from zero and ignores the seed, so tasks that differ only in seed
are fitted once; up to ``LBFGS_STACK`` distinct problems advance in lockstep, each
with its own L-BFGS state and stopping, their losses and gradients evaluated by one
pair of matmuls over a shared standardised copy of X (see ``_LinearDesign``).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.optim.adam import adam as adam_update

from probing.constants import PROBE_KINDS

HIDDEN_SIZES: dict[str, tuple[int, ...]] = {
    "linear": (),
    "tiny": (32,),
    "small": (128, 64),
    "medium": (256, 128, 64),
}
assert PROBE_KINDS == (*HIDDEN_SIZES, "mass_mean"), "probing.constants.PROBE_KINDS is out of step"
EpochCallback = Callable[[int, dict], None]
"""Called with (member index, one history record) after every epoch."""
LBFGS_STACK = 8
"""Linear L-BFGS problems evaluated together (the matmuls always have this many rows, used or not)."""
TRAIN_DTYPE_VARIABLE = "PROBING_TRAIN_DTYPE"
"""Forces the dtype MLP stacks compute in ("float32" or "bfloat16"); see :func:`training_dtype`."""
BFLOAT16_KINDS = ("small", "medium")
"""Kinds that train in bfloat16 by default where the CPU multiplies bf16 fast (measured faster, same accuracy);
tiny's products are too small to gain (measured no faster), so it stays float32."""
ONEDNN_MIN_PRODUCT = 16**3
"""Torch's threshold (members x m x k x n) for multiplying bf16 batches with oneDNN: see ``_batched_matmul``."""
ADAM_BLOCK = 16
"""Elements per SIMD group of torch's fused Adam (64 bytes of float32): see ``_MemberBlocks``."""
ADAM_STACK_STATE_MAX_BYTES = 12 << 20
"""float32 stacks on CPU are cut so their parameters, gradients and moments fit in this (cache): see ``_stack_cap``."""
STANDARDISED_COPIES_MAX_BYTES = 1 << 30
"""Above this, training standardises rows as it gathers them instead of keeping standardised copies."""


class ProbeTrainingError(ValueError):
    """Training produced non-finite numbers (diverged, or non-finite features): no probe is returned."""


@dataclass(frozen=True)
class ProbeConfig:
    """How a probe is built and trained; defaults follow SAPLMA (Adam, lr 1e-3, batch 32, 5 epochs)."""

    kind: str = "linear"
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    solver: str = "auto"  # "auto" (lbfgs for linear, else adam) | "adam" | "lbfgs"
    C: float = 0.1  # inverse L2 strength for solver="lbfgs", as in scikit-learn
    seed: int = 0

    def __post_init__(self) -> None:
        if self.solver == "auto":
            object.__setattr__(self, "solver", "lbfgs" if self.kind == "linear" else "adam")
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"probe kind {self.kind!r} is not one of {PROBE_KINDS}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        numbers = {"lr": self.lr, "C": self.C, "weight_decay": self.weight_decay}
        if not all(math.isfinite(value) for value in numbers.values()) or not (
            self.lr > 0 and self.C > 0 and self.weight_decay >= 0
        ):
            raise ValueError(f"lr and C must be finite and > 0, weight_decay finite and >= 0 (got {numbers})")
        if self.solver not in ("adam", "lbfgs"):
            raise ValueError(f"solver {self.solver!r} is not 'auto', 'adam' or 'lbfgs'")
        if self.solver == "lbfgs" and self.kind != "linear":
            raise ValueError("solver='lbfgs' is for the linear probe only")

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return HIDDEN_SIZES.get(self.kind, ())

    @property
    def trains_in_epochs(self) -> bool:
        """Adam epochs over mini-batches (``epochs`` counts); L-BFGS and mass-mean fit in one go."""
        return self.solver == "adam" and self.kind != "mass_mean"


@dataclass
class Task:
    """One probe to train: rows of X to train on, their labels, and optional held-out rows."""

    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    seed: int = 0


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """P(true) of logits, without overflow warnings for large ones."""
    return 1 / (1 + np.exp(-np.clip(logits, -60, 60)))


class LogitClassifier:
    """``predict_proba``, ``predict`` and ``score`` of a classifier whose ``decision_function`` gives the logit of P(true)."""

    def decision_function(self, X) -> np.ndarray:
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """Columns: P(false), P(true)."""
        p = sigmoid(self.decision_function(X))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)

    def score(self, X, y) -> float:
        """Accuracy."""
        return float((self.predict(X) == np.asarray(y)).mean())


@dataclass
class Probe(LogitClassifier):
    """A fitted or unfitted truth probe (scikit-learn style: ``fit`` returns self)."""

    kind: str = "linear"
    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.0
    solver: str = "auto"
    C: float = 0.1
    seed: int = 0
    mean_: np.ndarray | None = field(default=None, repr=False)
    scale_: np.ndarray | None = field(default=None, repr=False)
    weights_: list[np.ndarray] = field(default_factory=list, repr=False)
    biases_: list[np.ndarray] = field(default_factory=list, repr=False)
    history_: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def config(self) -> ProbeConfig:
        return ProbeConfig(**{name.name: getattr(self, name.name) for name in fields(ProbeConfig)})

    def fit(self, X, y, X_val=None, y_val=None, on_epoch: Callable[[dict], None] | None = None) -> Probe:
        """Train on (X, y); with (X_val, y_val) the history also tracks held-out loss and accuracy."""
        X, y = _check_xy(X, y)
        if X_val is not None:
            X_val, y_val = _check_xy(X_val, y_val)
            features = np.concatenate([X, X_val])
            test = np.arange(len(X), len(features))
        else:
            features, test = X, None
        task = Task(np.arange(len(X)), y, test, y_val, seed=self.seed)
        callback = (lambda _member, record: on_epoch(record)) if on_epoch else None
        (fitted,) = fit_many(features, [task], self.config, on_epoch=callback)
        self.__dict__.update({k: v for k, v in fitted.__dict__.items() if k.endswith("_")})
        return self

    @property
    def is_fitted(self) -> bool:
        return self.mean_ is not None

    def decision_function(self, X) -> np.ndarray:
        """Logit of P(true) for each row."""
        if not self.is_fitted:
            raise RuntimeError("this probe is not fitted yet: call fit(X, y) first")
        h = (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_
        for layer, (W, b) in enumerate(zip(self.weights_, self.biases_)):
            h = h @ W + b
            if layer < len(self.weights_) - 1:
                h = np.maximum(h, 0)
        return h[:, 0]

    @property
    def direction_(self) -> np.ndarray:
        """Unit vector in activation space along which P(true) grows (linear and mass_mean)."""
        if self.kind not in ("linear", "mass_mean"):
            raise AttributeError(f"a {self.kind} probe has no single direction")
        if not self.is_fitted:
            raise AttributeError("direction_ exists after fit")
        raw = self.weights_[0][:, 0] / self.scale_
        return raw / np.linalg.norm(raw)

    def to_state(self) -> dict:
        """Plain tensors and numbers, loadable with ``torch.load(weights_only=True)``."""
        return {
            "config": asdict(self.config),
            "mean": torch.from_numpy(self.mean_), "scale": torch.from_numpy(self.scale_),
            "weights": [torch.from_numpy(w) for w in self.weights_],
            "biases": [torch.from_numpy(b) for b in self.biases_],
        }

    @classmethod
    def from_state(cls, state: dict) -> Probe:
        """The probe of a :meth:`to_state` dict; a ValueError where its arrays do not make one probe."""
        probe = cls(**state["config"])
        probe.mean_, probe.scale_ = state["mean"].numpy(), state["scale"].numpy()
        probe.weights_ = [w.numpy() for w in state["weights"]]
        probe.biases_ = [b.numpy() for b in state["biases"]]
        probe._check_shapes()
        return probe

    def _check_shapes(self) -> None:
        """Mean and scale: one vector of the input width; then weight matrices and biases that chain to one logit."""
        if self.mean_.ndim != 1 or self.scale_.shape != self.mean_.shape:
            raise ValueError(f"mean and scale have shapes {tuple(self.mean_.shape)} and {tuple(self.scale_.shape)}, "
                             "not one vector each of the input width")
        if not self.weights_ or len(self.weights_) != len(self.biases_):
            raise ValueError(f"{len(self.weights_)} weight matrices and {len(self.biases_)} bias vectors")
        width = len(self.mean_)
        for number, (W, b) in enumerate(zip(self.weights_, self.biases_), 1):
            if W.ndim != 2 or W.shape[0] != width or b.shape != W.shape[1:]:
                raise ValueError(f"layer {number}'s weights {tuple(W.shape)} and bias {tuple(b.shape)} do not "
                                 f"follow its {width} inputs")
            width = W.shape[1]
        if width != 1:
            raise ValueError(f"the last layer gives {width} outputs, not the one logit of P(true)")


def make_probe(kind: str = "linear", **settings) -> Probe:
    """A new probe of ``kind`` with the given training settings (validated)."""
    config = ProbeConfig(kind=kind, **settings)
    return Probe(**asdict(config))


def training_dtype(kind: str, device: str | torch.device = "cpu", requested: str | None = None) -> torch.dtype:
    """The dtype a ``kind`` stack computes its matmuls in (weights and Adam state stay float32).

    ``requested``, else ``$PROBING_TRAIN_DTYPE``, else bfloat16 for the MLP kinds on a CPU with bf16
    matrix units (AMX or AVX512-BF16), where it is faster; float32 everywhere else (emulated bf16 is slow).
    L-BFGS and mass-mean always fit in float32.
    """
    choice = requested or os.environ.get(TRAIN_DTYPE_VARIABLE) or None
    if choice is not None and choice not in ("float32", "bfloat16"):
        source = "train_dtype" if requested else f"${TRAIN_DTYPE_VARIABLE}"
        raise ValueError(f"{source} is {choice!r}: use 'float32' or 'bfloat16'")
    if choice is None:
        from probing.model.loading import cpu_has_fast_bfloat16

        fast = torch.device(device).type == "cpu" and kind in BFLOAT16_KINDS and cpu_has_fast_bfloat16()
        choice = "bfloat16" if fast else "float32"
    return getattr(torch, choice)


def fit_many(
    X: np.ndarray | torch.Tensor,
    tasks: Sequence[Task],
    config: ProbeConfig,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device = "cpu",
    train_dtype: str | None = None,
) -> list[Probe]:
    """Train one probe per task on rows of the shared feature matrix ``X``, stacked (see the module docstring).

    ``train_dtype`` ("float32" or "bfloat16") forces the dtype Adam stacks compute in (see
    :func:`training_dtype`); a probe equals itself trained alone, bit for bit, within one dtype.
    """
    if not tasks:
        return []
    dtype = training_dtype(config.kind, device, train_dtype)
    features = torch.as_tensor(np.asarray(X, dtype=np.float32) if not torch.is_tensor(X) else X,
                               dtype=torch.float32, device=device)
    for task in tasks:
        _check_task(task, len(features))
    _check_finite_features(features, tasks)
    mean, scale = _standardisers(features, tasks)
    if config.kind == "mass_mean":
        parts = [_fit_mass_mean(features, task, m, s) for task, m, s in zip(tasks, mean, scale)]
    elif config.solver == "lbfgs":
        parts = _fit_lbfgs_each(features, tasks, mean, scale, config, on_epoch)
    else:
        parts = _fit_adam_stacks(features, tasks, mean, scale, config, on_epoch, dtype)
    probes = []
    for member, (task, (weights, biases, history)) in enumerate(zip(tasks, parts)):
        if not all(torch.isfinite(t).all() for t in (*weights, *biases)):
            raise ProbeTrainingError(
                f"the {config.kind} probe (seed {task.seed}) ended with non-finite weights; "
                f"lower the learning rate (lr={config.lr}) or check the activations")
        probe = Probe(**{**asdict(config), "seed": task.seed})
        probe.mean_, probe.scale_ = mean[member].cpu().numpy(), scale[member].cpu().numpy()
        # Stacked layers are (out, in); a fitted probe keeps scikit-learn's (in, out).
        probe.weights_ = [w.detach().T.contiguous().cpu().numpy() for w in weights]
        probe.biases_ = [b.detach().reshape(-1).cpu().numpy() for b in biases]
        probe.history_ = pd.DataFrame(history)
        if on_epoch and config.kind == "mass_mean":
            on_epoch(member, history[-1])
        probes.append(probe)
    return probes


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(int)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be (n, width) and y (n,); got {X.shape} and {y.shape}")
    return X, y


def _check_task(task: Task, n: int) -> None:
    labels = set(np.unique(task.y_train).tolist())
    if not labels <= {0, 1} or len(labels) < 2:
        raise ValueError(f"training labels must contain both 0 and 1 (found {sorted(labels)})")
    if len(task.train) != len(task.y_train) or task.train.max() >= n:
        raise ValueError("task rows and labels disagree or point outside X")


def _check_finite_features(X: torch.Tensor, tasks: Sequence[Task]) -> None:
    """Refuse NaN or inf in the rows the tasks use: they would train a probe that silently scores 0.5."""
    used = np.unique(np.concatenate([np.asarray(rows) for task in tasks for rows in (task.train, task.test)
                                     if rows is not None]))
    finite = torch.isfinite(X[torch.as_tensor(used, device=X.device)]).all(1).cpu().numpy()
    if not finite.all():
        bad = used[~finite]
        raise ProbeTrainingError(
            f"{len(bad)} row(s) of the features hold NaN or inf (first: row {bad[0]}); "
            "the activations may come from a damaged model or an overflowing dtype: recompute them "
            "(in float32) before training")


def _training_set(task: Task) -> bytes:
    """A key equal for tasks that train on the same rows."""
    return np.asarray(task.train).tobytes()


def _standardisers(X: torch.Tensor, tasks: Sequence[Task]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task mean and scale, fitted on that task's training rows only (once per distinct row set)."""
    fitted: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
    for task in tasks:
        if _training_set(task) not in fitted:
            std, mean = torch.std_mean(X[torch.as_tensor(task.train, device=X.device)].double(), 0, unbiased=False)
            fitted[_training_set(task)] = mean.float(), torch.where(std > 1e-6, std, torch.ones_like(std)).float()
    means, scales = zip(*(fitted[_training_set(task)] for task in tasks))
    return torch.stack(means), torch.stack(scales)


class _Standardised:
    """Rows of X standardised with each member's own mean and scale, gathered per member.

    Members that share a training set share a standardised copy of X, made once,
    unless the copies would exceed ``STANDARDISED_COPIES_MAX_BYTES``; then rows
    are standardised as they are gathered. Both give the same numbers.
    """

    def __init__(self, X: torch.Tensor, tasks: Sequence[Task], mean, scale, dtype: torch.dtype = torch.float32):
        self.X, self.mean, self.scale, self.dtype = X, mean.unsqueeze(1), scale.unsqueeze(1), dtype
        tables: dict[bytes, int] = {}
        owners = [tables.setdefault(_training_set(t), len(tables)) for t in tasks]
        first = [owners.index(table) for table in range(len(tables))]
        self.copies = None
        if len(tables) * X.numel() * X.element_size() <= STANDARDISED_COPIES_MAX_BYTES:
            self.copies = torch.cat([((X - mean[j]) / scale[j]).to(dtype) for j in first])  # copy t: rows t*n..
            self.offset = torch.as_tensor(owners, device=X.device).unsqueeze(1) * len(X)

    def __call__(self, rows: torch.Tensor, members: slice = slice(None)) -> torch.Tensor:
        """rows: (members, n) indices into X -> (members, n, width), in the training dtype."""
        if self.copies is not None:
            flat = (rows + self.offset[members]).reshape(-1)
            return self.copies.index_select(0, flat).view(*rows.shape, -1)
        return ((self.X[rows] - self.mean[members]) / self.scale[members]).to(self.dtype)


def _member_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % (2**63))


def _init_member(in_width: int, hidden: tuple[int, ...], generator: torch.Generator):
    """nn.Linear's default init (uniform in +-1/sqrt(fan_in)) for each layer of one member.

    Weights are drawn (in, out) and returned (out, in), the layout the stack trains in.
    """
    sizes = [in_width, *hidden, 1]
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(fan_in)
        weights.append(((torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound).T)
        biases.append((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
    return weights, biases


def _stack_forward(h: torch.Tensor, weights, biases) -> list[torch.Tensor]:
    """h: (members, rows, in); weights (members, out, in), biases (members, 1, out).

    Returns every layer's input and, last, the logits (members, rows, 1).
    """
    outputs = [h]
    for layer, (W, b) in enumerate(zip(weights, biases)):
        h = _batched_matmul(h, W.transpose(1, 2), b)
        if layer < len(weights) - 1:
            h = F.relu(h)
        outputs.append(h)
    return outputs


def _masked_sums(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member, the summed cross-entropy loss and the number of correct predictions over rows where mask is 1."""
    loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask).sum(-1)
    hits = (((logits > 0).float() == y).float() * mask).sum(-1)
    return loss, hits


def _stack_backward(outputs: list[torch.Tensor], weights, grad: torch.Tensor, grad_w: list[torch.Tensor],
                    grad_b: list[torch.Tensor]) -> None:
    """Gradients of the weights and biases into ``grad_w`` and ``grad_b``, given d loss / d logits (members, rows, 1).

    Written out rather than left to autograd: every product is a batched matmul
    over members, so a member's gradient does not depend on who else is stacked.
    The outputs are preallocated: a fresh 10 MB gradient every step costs page faults.
    """
    ones = torch.ones(grad.shape[0], 1, grad.shape[1], dtype=grad.dtype, device=grad.device)
    for layer in reversed(range(len(weights))):
        _batched_matmul(grad.transpose(1, 2), outputs[layer], out=grad_w[layer])
        _batched_matmul(ones, grad, out=grad_b[layer])
        if layer:
            grad = _batched_matmul(grad, weights[layer]) * (outputs[layer] > 0)


def _batched_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """``bias + a @ b`` per member (into ``out`` if given), in ``a``'s dtype.

    Torch multiplies bf16 batches with oneDNN only when members x m x k x n exceeds
    ``ONEDNN_MIN_PRODUCT``, with another kernel below it, and the two round differently; so a
    product below it even for the smallest stack (2 members: a lone probe has a twin) runs in
    float32, keeping a member's numbers independent of how many share its stack.
    """
    if a.dtype == torch.bfloat16 and 2 * a.shape[1] * a.shape[2] * b.shape[2] <= ONEDNN_MIN_PRODUCT:
        product = torch.bmm(a.float(), b.float()) if bias is None else torch.baddbmm(bias.float(), a.float(), b.float())
        product = product.to(a.dtype)
        return product if out is None else out.copy_(product)
    if bias is not None:
        return torch.baddbmm(bias, a, b)
    return torch.bmm(a, b, out=out)


class _Stopped(Exception):
    """Raised in a training worker when another worker failed: its work would be thrown away."""


def _fit_adam_stacks(X, tasks: Sequence[Task], mean, scale, config: ProbeConfig, on_epoch: EpochCallback | None,
                     dtype: torch.dtype):
    """Adam for same-kind probes: on CPU, stacks trained side by side, one per thread.

    A stack's products have 32 rows per member, too small to split well over threads, so
    the members are shared out over ``torch.get_num_threads()`` workers instead, each
    training its share with one thread of its own; float32 shares are cut into sub-stacks
    whose Adam state fits in cache (``ADAM_STACK_STATE_MAX_BYTES``). Every stack runs on
    one thread, so a probe's numbers depend neither on its stack nor on the thread count.
    Epoch records arrive from the workers, one at a time.
    """
    if X.device.type != "cpu":
        return _fit_adam_stack_or_twin(X, tasks, mean, scale, config, on_epoch, dtype)
    threads = torch.get_num_threads()
    shares = _share_out(len(tasks), threads, _stack_cap(X.shape[1], config, dtype))
    lock, failed = threading.Lock(), threading.Event()

    def report(offset: int) -> EpochCallback:
        def member_record(member: int, record: dict) -> None:
            with lock:
                if failed.is_set():
                    raise _Stopped
                if on_epoch:
                    on_epoch(offset + member, record)
        return member_record

    def work(share: list[range]) -> list:
        torch.set_num_threads(1)  # this thread only; new threads still start with ``threads``
        try:
            parts = []
            for stack in share:
                picked = slice(stack.start, stack.stop)
                parts += _fit_adam_stack_or_twin(X, tasks[picked], mean[picked], scale[picked], config,
                                                 report(stack.start), dtype)
            return parts
        except BaseException:
            failed.set()
            raise
        finally:
            torch.set_num_threads(threads)

    with ThreadPoolExecutor(len(shares), thread_name_prefix="probing-train") as pool:
        futures = [pool.submit(work, share) for share in shares]
        try:
            wait(futures)
        except BaseException:  # an interrupt in the caller: the workers stop after their current epoch
            failed.set()
            raise
    errors = [error for future in futures if (error := future.exception()) and not isinstance(error, _Stopped)]
    if errors:
        raise errors[0]
    return [part for future in futures for part in future.result()]


def _stack_cap(width: int, config: ProbeConfig, dtype: torch.dtype) -> int:
    """Most members per stack: float32 stacks keep their Adam state (4 floats a parameter) under
    ``ADAM_STACK_STATE_MAX_BYTES``; bf16 stacks are not cut (measured fastest whole)."""
    if dtype != torch.float32:
        return 1 << 30
    sizes = [width, *config.hidden_sizes, 1]
    parameters = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
    return max(2, ADAM_STACK_STATE_MAX_BYTES // (16 * parameters))


def _share_out(members: int, workers: int, cap: int) -> list[list[range]]:
    """Members 0..members-1 as contiguous stacks shared out over at most ``workers`` workers, about
    equally; a stack has at most ``cap`` members, or ``cap + 1`` where that spares a lone member
    (which would train beside a twin)."""
    workers = max(1, min(workers, members // 2))
    shares = []
    for part in np.array_split(np.arange(members), workers):
        pieces = max(1, min(-(-len(part) // cap), len(part) // 2))
        shares.append([range(piece[0], piece[-1] + 1) for piece in np.array_split(part, pieces)])
    return shares


def _fit_adam_stack_or_twin(X, tasks: Sequence[Task], mean, scale, config: ProbeConfig,
                            on_epoch: EpochCallback | None, dtype: torch.dtype):
    """One stack; a lone probe trains beside a throwaway twin.

    A batched matmul over one member takes another kernel path than over two or more
    (results differ in the last bits, and Adam amplifies that); the twin keeps a lone
    probe bit-identical to the same probe in any stack.
    """
    if len(tasks) > 1:
        return _fit_adam_stack(X, tasks, mean, scale, config, on_epoch, dtype)
    report = (lambda member, record: on_epoch(member, record) if member == 0 else None) if on_epoch else None
    twin = [tasks[0], tasks[0]]
    return _fit_adam_stack(X, twin, torch.cat([mean, mean]), torch.cat([scale, scale]), config, report, dtype)[:1]


@torch.no_grad()
def _fit_adam_stack(X, tasks, mean, scale, config: ProbeConfig, on_epoch: EpochCallback | None,
                    dtype: torch.dtype = torch.float32):
    """Mini-batch Adam for a stack of same-shape MLPs, each on its own rows, batches and seed.

    The training loss and accuracy of an epoch are means over its mini-batches, taken
    before each update (as Keras reports them); held-out ones are measured after the epoch.
    Forward and backward matmuls run in ``dtype`` (as under autocast: the float32 weights are
    cast each step, losses and Adam stay float32).
    """
    # A batch beyond X's rows trains as one of them all: no memory for padding that holds nothing.
    device, members, B = X.device, len(tasks), min(config.batch_size, len(X))
    generators = [_member_generator(task.seed) for task in tasks]
    inits = [_init_member(X.shape[1], config.hidden_sizes, g) for g in generators]
    depth = len(inits[0][0])
    stored = [_MemberBlocks(torch.stack([w[k] for w, _ in inits]).to(device)) for k in range(depth)]
    stored += [_MemberBlocks(torch.stack([b[k] for _, b in inits]).unsqueeze(1).to(device)) for k in range(depth)]
    weights, biases = [s.view for s in stored[:depth]], [s.view for s in stored[depth:]]
    train_rows = [torch.as_tensor(t.train, device=device) for t in tasks]
    train_y = [torch.as_tensor(t.y_train, dtype=torch.float32, device=device) for t in tasks]
    sizes = [len(rows) for rows in train_rows]
    adam = _StackedAdam([s.blocks for s in stored], sizes, config.lr, config.weight_decay)
    grads = [s.like() for s in stored]  # float32: what Adam reads
    cast = dtype != torch.float32  # then the step's weights and gradients live in buffers of that dtype
    step_params = [s.like(dtype) for s in stored] if cast else stored
    step_grads = [s.like(dtype) for s in stored] if cast else grads
    most_steps = max(math.ceil(n / B) for n in sizes)
    histories: list[list[dict]] = [[] for _ in tasks]
    standardised = _Standardised(X, tasks, mean, scale, dtype)
    heldout = _HeldOut(tasks, standardised)

    for epoch in range(1, config.epochs + 1):
        index = torch.zeros(members, most_steps * B, dtype=torch.long, device=device)
        targets = torch.zeros(members, most_steps * B, device=device)
        valid = torch.zeros(members, most_steps * B, device=device)
        for j, (n, generator) in enumerate(zip(sizes, generators)):
            order = torch.randperm(n, generator=generator).to(device)
            index[j, :n], targets[j, :n], valid[j, :n] = train_rows[j][order], train_y[j][order], 1
        index, targets, valid = (t.view(members, most_steps, B).transpose(0, 1) for t in (index, targets, valid))
        counts = valid.sum(-1)
        weight_per_row = valid / counts.clamp(min=1).unsqueeze(-1)
        active = (counts > 0).tolist()
        loss_sum = torch.zeros(members, dtype=torch.float64, device=device)
        correct = torch.zeros(members, dtype=torch.float64, device=device)
        for step in range(most_steps):
            if cast:
                for low, param in zip(step_params, stored):
                    low.blocks.copy_(param.blocks)
            step_weights = [s.view for s in step_params]
            outputs = _stack_forward(standardised(index[step]), step_weights[:depth], step_weights[depth:])
            logits, y = outputs[-1].squeeze(-1).float(), targets[step]
            loss, hits = _masked_sums(logits, y, valid[step])
            loss_sum += loss
            correct += hits
            grad = ((torch.sigmoid(logits) - y) * weight_per_row[step]).unsqueeze(-1)
            step_grad_views = [s.view for s in step_grads]
            _stack_backward(outputs, step_weights[:depth], grad.to(dtype), step_grad_views[:depth],
                            step_grad_views[depth:])
            if cast:
                for full, low in zip(grads, step_grads):
                    full.blocks.copy_(low.blocks)
            adam.step([g.blocks for g in grads], active[step])
        seen = torch.tensor(sizes, dtype=torch.float64, device=device)
        train_loss, train_accuracy = (loss_sum / seen).tolist(), (correct / seen).tolist()
        diverged = [j for j, loss in enumerate(train_loss) if not math.isfinite(loss)]
        if diverged:
            raise ProbeTrainingError(
                f"{config.kind} probe training diverged in epoch {epoch}: the training loss of "
                f"{len(diverged)} of {members} probe(s) became {train_loss[diverged[0]]} "
                f"(lr={config.lr}). Lower the learning rate.")
        heldout_metrics = heldout.evaluate(weights, biases)
        for j in range(members):
            record = {"epoch": epoch, "train_loss": train_loss[j], "train_accuracy": train_accuracy[j]}
            if heldout_metrics[j] is not None:
                record["heldout_loss"], record["heldout_accuracy"] = heldout_metrics[j]
            histories[j].append(record)
            if on_epoch:
                on_epoch(j, record)
    return [([w[j] for w in weights], [b[j] for b in biases], histories[j]) for j in range(members)]


class _MemberBlocks:
    """A stacked parameter (members, ...) kept as one row of ``ADAM_BLOCK``-padded storage per member.

    Torch's fused Adam runs SIMD over whole 64-byte groups and scalar code over the rest, and the
    two round differently; with every member's block a whole number of groups, each element takes
    the same path whether its member trains alone or in a stack (a 1-element output bias would not).
    ``view`` is the parameter as the matmuls use it; ``blocks`` is what Adam updates.
    """

    def __init__(self, stack: torch.Tensor | None = None, *, like: _MemberBlocks | None = None,
                 dtype: torch.dtype | None = None):
        self.shape = stack.shape if stack is not None else like.shape
        members, size = self.shape[0], math.prod(self.shape[1:])
        padded = -(-size // ADAM_BLOCK) * ADAM_BLOCK
        source = stack if stack is not None else like.blocks
        self.blocks = torch.zeros(members, padded, dtype=dtype or source.dtype, device=source.device)
        self.view = self.blocks[:, :size].view(self.shape)
        if stack is not None:
            self.view.copy_(stack)

    def like(self, dtype: torch.dtype | None = None) -> _MemberBlocks:
        """Zeros of the same layout (gradient buffers), in ``dtype`` if given."""
        return _MemberBlocks(like=self, dtype=dtype)


class _HeldOut:
    """Each member's held-out rows, padded into one stack so all members are scored at once."""

    def __init__(self, tasks: Sequence[Task], standardised: _Standardised, members_per_pass: int = 16):
        self.standardised, self.members_per_pass = standardised, members_per_pass
        device = standardised.X.device
        tests = [t.test if t.test is not None else np.zeros(0, dtype=int) for t in tasks]
        width = max(1, max(len(rows) for rows in tests))
        self.rows = torch.zeros(len(tasks), width, dtype=torch.long, device=device)
        self.labels = torch.zeros(len(tasks), width, device=device)
        self.mask = torch.zeros(len(tasks), width, device=device)
        for j, (task, rows) in enumerate(zip(tasks, tests)):
            if len(rows):
                self.rows[j, : len(rows)] = torch.as_tensor(rows, device=device)
                self.labels[j, : len(rows)] = torch.as_tensor(task.y_test, dtype=torch.float32, device=device)
                self.mask[j, : len(rows)] = 1
        self.counts = self.mask.sum(1)

    def evaluate(self, weights, biases) -> list[tuple[float, float] | None]:
        """(loss, accuracy) per member, or None for a member without held-out rows."""
        if not self.counts.any():
            return [None] * len(self.counts)
        losses, accuracies = [], []
        for start in range(0, len(self.counts), self.members_per_pass):
            part = slice(start, start + self.members_per_pass)
            h = self.standardised(self.rows[part], part)
            logits = _stack_forward(h, [w[part].to(h.dtype) for w in weights],
                                    [b[part].to(h.dtype) for b in biases])[-1].squeeze(-1).float()
            loss, hits = _masked_sums(logits, self.labels[part], self.mask[part])
            losses.append(loss)
            accuracies.append(hits)
        count = self.counts.clamp(min=1)
        loss, accuracy = (torch.cat(losses) / count).tolist(), (torch.cat(accuracies) / count).tolist()
        return [(l, a) if n else None for l, a, n in zip(loss, accuracy, self.counts.tolist())]


class _StackedAdam:
    """Adam on stacked (members, ...) parameters where only active members take a step.

    Members are updated in runs of neighbours that are active at the same steps
    (same training-set size, so the same step count); each run's slice of each
    parameter is one tensor for torch's fused Adam kernel, which works element by
    element, so a member's updates are exactly those torch.optim.Adam would make for
    it alone.
    """

    def __init__(self, params: list[torch.Tensor], sizes: Sequence[int], lr: float, weight_decay: float,
                 betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.fused = params[0].device.type in ("cpu", "cuda")
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        starts = [j for j in range(len(sizes)) if j == 0 or sizes[j] != sizes[j - 1]]
        self.runs = [slice(a, b) for a, b in zip(starts, [*starts[1:], len(sizes)])]
        self.steps = {(run.start, k): torch.zeros((), device=p.device) for run in self.runs for k, p in enumerate(params)}

    def step(self, grads: list[torch.Tensor], active: list[bool]) -> None:
        runs = [run for run in self.runs if active[run.start]]
        if not runs:
            return
        adam_update(
            [p[run] for run in runs for p in self.params], [g[run] for run in runs for g in grads],
            [m[run] for run in runs for m in self.exp_avg], [v[run] for run in runs for v in self.exp_avg_sq], [],
            [self.steps[run.start, k] for run in runs for k in range(len(self.params))],
            fused=self.fused, amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
            weight_decay=self.weight_decay, eps=self.eps, maximize=False,
        )


def _fit_lbfgs_each(X, tasks: Sequence[Task], mean, scale, config: ProbeConfig, on_epoch: EpochCallback | None):
    """L-BFGS per distinct task, ``LBFGS_STACK`` at a time in lockstep; tasks that differ only in seed are
    fitted once (L-BFGS from zero ignores the seed)."""
    keys = [tuple(np.asarray(a).tobytes() if a is not None else None
                  for a in (task.train, task.y_train, task.test, task.y_test)) for task in tasks]
    first = {key: keys.index(key) for key in dict.fromkeys(keys)}
    design = _LinearDesign(X)
    fitted: dict[tuple, tuple] = {}
    distinct = list(first)
    for start in range(0, len(distinct), LBFGS_STACK):
        members = [first[key] for key in distinct[start: start + LBFGS_STACK]]
        fitted.update(zip(distinct[start: start + LBFGS_STACK],
                          _fit_lbfgs_lockstep(design, [tasks[m] for m in members], mean[members], scale[members],
                                              config, members, on_epoch)))
    if on_epoch:
        for member, key in enumerate(keys):
            if member != first[key]:
                for record in fitted[key][2]:
                    on_epoch(member, record)
    return [fitted[key] for key in keys]


class _LinearDesign:
    """X standardised once over all its rows, with a column of ones, for every linear problem on X.

    A member's own standardisation folds into its weights: with x_s = (x - centre) / spread,
    ((x - mean) / scale) . w + b = x_s . (ratio * w) + (b - shift . w), ratio = spread / scale and
    shift = (mean - centre) / scale. So the logits of ``LBFGS_STACK`` members over all rows are one
    (members, width + 1) x (width + 1, rows) product and their gradients one (members, rows) x
    (rows, width + 1) product, always of that shape: a member's numbers do not depend on who else
    is in the stack, or on the rows other members train on.
    """

    def __init__(self, X: torch.Tensor):
        spread, self.centre = torch.std_mean(X.double(), 0, unbiased=False)
        self.spread = torch.where(spread > 1e-6, spread, torch.ones_like(spread))
        standardised = ((X.double() - self.centre) / self.spread).float()
        self.matrix = torch.cat([standardised, torch.ones(len(X), 1, device=X.device)], 1)
        self.centre, self.spread = self.centre.float(), self.spread.float()
        self.stacked = torch.zeros(LBFGS_STACK, self.matrix.shape[1], device=X.device)
        self.residuals = torch.zeros(LBFGS_STACK, len(X), device=X.device)

    def evaluate(self, objectives: dict[int, _LinearObjective], points: dict[int, torch.Tensor]):
        """{member: (loss, gradient)} at each member's point."""
        for j, point in points.items():
            self.stacked[j] = objectives[j].stacked_weights(point)  # rows of finished members keep stale values
        logits = self.stacked @ self.matrix.T
        losses = {}
        for j in points:
            # clone: a fresh, aligned row, whatever the member's place in the stack
            losses[j], self.residuals[j] = objectives[j].loss_and_residual(points[j], logits[j].clone())
        gradients = self.residuals @ self.matrix
        return {j: (losses[j], objectives[j].gradient(points[j], gradients[j].clone())) for j in points}

    def logits(self, objective: _LinearObjective, point: torch.Tensor) -> torch.Tensor:
        """One member's logits over all rows of X."""
        return self.matrix @ objective.stacked_weights(point)


class _LinearObjective:
    """scikit-learn's L2-regularised logistic loss of one task, divided by its n: mean log-loss + |w|^2 / (2 C n).

    Points are flat (w, b) in the task's standardised features; rows count as often as the task lists them.
    """

    def __init__(self, design: _LinearDesign, task: Task, mean: torch.Tensor, scale: torch.Tensor, C: float):
        device, n = design.matrix.device, len(task.train)
        rows = torch.as_tensor(task.train, device=device)
        labels = torch.as_tensor(task.y_train, dtype=torch.float64, device=device)
        self.row_weight = torch.bincount(rows, minlength=len(design.matrix)).float() / n
        self.true_weight = torch.bincount(rows, weights=labels, minlength=len(design.matrix)).float() / n
        self.ratio, self.shift = design.spread / scale, (mean - design.centre) / scale
        self.penalty = 1 / (2 * C * n)
        self.test = torch.as_tensor(task.test if task.test is not None else [], dtype=torch.long, device=device)
        self.test_labels = torch.as_tensor(task.y_test if task.test is not None else [], dtype=torch.float32,
                                           device=device)

    def stacked_weights(self, point: torch.Tensor) -> torch.Tensor:
        w, b = point[:-1], point[-1:]
        return torch.cat([self.ratio * w, b - self.shift.dot(w)])

    def log_loss(self, logits: torch.Tensor) -> float:
        """The mean training log-loss (unpenalised), from logits over all rows."""
        return float(self.row_weight.dot(F.softplus(logits)) - self.true_weight.dot(logits))

    def loss_and_residual(self, point: torch.Tensor, logits: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The loss at ``point`` given its logits over all rows, and d loss / d logits."""
        residual = self.row_weight * torch.sigmoid(logits) - self.true_weight
        return self.log_loss(logits) + self.penalty * float(point[:-1].dot(point[:-1])), residual

    def metrics(self, logits: torch.Tensor) -> dict[str, float]:
        """The history record's training and held-out loss (unpenalised) and accuracy, from logits over all rows."""
        said_true = (logits > 0).float()
        record = {"train_loss": self.log_loss(logits),
                  "train_accuracy": float(self.true_weight.dot(said_true)
                                          + (self.row_weight - self.true_weight).dot(1 - said_true))}
        if len(self.test):
            heldout = logits[self.test]
            record["heldout_loss"] = F.binary_cross_entropy_with_logits(heldout, self.test_labels).item()
            record["heldout_accuracy"] = ((heldout > 0).float() == self.test_labels).float().mean().item()
        return record

    def gradient(self, point: torch.Tensor, stacked_gradient: torch.Tensor) -> torch.Tensor:
        w, bias_gradient = point[:-1], stacked_gradient[-1:]
        weight_gradient = self.ratio * stacked_gradient[:-1] - self.shift * bias_gradient + 2 * self.penalty * w
        return torch.cat([weight_gradient, bias_gradient])


def _fit_lbfgs_lockstep(design: _LinearDesign, tasks: Sequence[Task], mean, scale, config: ProbeConfig,
                        members: Sequence[int], on_epoch: EpochCallback | None, iterations_per_record: int = 10,
                        max_records: int = 100):
    """Full-batch L-BFGS of up to ``LBFGS_STACK`` linear probes at once, each with its own state and stopping.

    Every round evaluates the point each unfinished member asks for, all in one ``design.evaluate``;
    a member that has stopped asks for nothing more. History gets one record per
    ``iterations_per_record`` iterations and one at the end.
    """
    objectives = {j: _LinearObjective(design, task, mean[j], scale[j], config.C) for j, task in enumerate(tasks)}
    histories: list[list[dict]] = [[] for _ in tasks]

    def record(j: int, point: torch.Tensor) -> None:
        logits = design.logits(objectives[j], point)
        histories[j].append({"epoch": len(histories[j]) + 1, **objectives[j].metrics(logits)})
        if on_epoch:
            on_epoch(members[j], histories[j][-1])

    def on_iteration(j: int) -> Callable[[int, torch.Tensor], None]:
        return lambda iteration, point: record(j, point) if iteration % iterations_per_record == 0 else None

    start = torch.zeros(design.matrix.shape[1], device=design.matrix.device)  # (w, b) = 0
    runs = {j: _lbfgs(start, iterations_per_record * max_records, on_iteration(j)) for j in objectives}
    points = {j: next(run) for j, run in runs.items()}
    finished: dict[int, torch.Tensor] = {}
    while points:
        evaluated = design.evaluate(objectives, points)
        for j, loss_and_gradient in evaluated.items():
            try:
                points[j] = runs[j].send(loss_and_gradient)
            except StopIteration as stop:
                finished[j], iterations = stop.value
                del points[j]
                if iterations % iterations_per_record or not iterations:
                    record(j, finished[j])
    return [([finished[j][:-1].view(1, -1)], [finished[j][-1:].view(1, 1)], histories[j]) for j in range(len(tasks))]


def _lbfgs(point: torch.Tensor, max_iterations: int, on_iteration: Callable[[int, torch.Tensor], None],
           history_size: int = 20, tolerance_grad: float = 1e-7, tolerance_change: float = 1e-10):
    """L-BFGS with a strong-Wolfe line search, the algorithm and stopping rules of one
    ``torch.optim.LBFGS(lr=1, line_search_fn="strong_wolfe").step`` (at most 5/4 evaluations per iteration).

    A generator: it yields each point to evaluate and is sent back (loss, gradient); it returns
    (final point, iterations). ``on_iteration(iteration, point)`` follows every iteration.
    """
    max_evaluations = max_iterations * 5 // 4
    loss, gradient = yield point
    evaluations = 1
    if gradient.abs().max() <= tolerance_grad:
        return point, 0
    directions: list[torch.Tensor] = []  # gradient changes
    steps: list[torch.Tensor] = []
    inverse_curvatures: list[float] = []
    diagonal = 1.0
    iteration = 0
    while iteration < max_iterations:
        iteration += 1
        if iteration == 1:
            direction = -gradient
        else:
            change, step = gradient - previous_gradient, direction * t
            curvature = float(change.dot(step))
            if curvature > 1e-10:
                if len(directions) == history_size:
                    directions.pop(0), steps.pop(0), inverse_curvatures.pop(0)
                directions.append(change), steps.append(step), inverse_curvatures.append(1 / curvature)
                diagonal = curvature / float(change.dot(change))
            q, alphas = -gradient, []
            for change, step, rho in zip(reversed(directions), reversed(steps), reversed(inverse_curvatures)):
                alphas.append(float(step.dot(q)) * rho)
                q = q - alphas[-1] * change
            direction = q * diagonal
            for change, step, rho, alpha in zip(directions, steps, inverse_curvatures, reversed(alphas)):
                direction = direction + (alpha - float(change.dot(direction)) * rho) * step
        previous_gradient, previous_loss = gradient, loss
        t = min(1.0, 1.0 / float(gradient.abs().sum())) if iteration == 1 else 1.0
        slope = float(gradient.dot(direction))
        if slope > -tolerance_change:
            break
        loss, gradient, t, used = yield from _strong_wolfe(point, t, direction, loss, gradient, slope, tolerance_change,
                                                           max_evaluations - evaluations)
        point = point + t * direction
        evaluations += used
        on_iteration(iteration, point)
        if (evaluations >= max_evaluations or gradient.abs().max() <= tolerance_grad
                or float((direction * t).abs().max()) <= tolerance_change or abs(loss - previous_loss) < tolerance_change):
            break
    return point, iteration


def _strong_wolfe(point, t: float, direction, loss: float, gradient, slope: float, tolerance_change: float,
                  max_evaluations: int, c1: float = 1e-4, c2: float = 0.9, max_line_search: int = 25):
    """A step length along ``direction`` meeting the strong Wolfe conditions (bracketing, then zooming
    with cubic interpolation, as torch's LBFGS does); a generator like :func:`_lbfgs`.

    Returns (loss, gradient, step length, evaluations used).
    """
    max_line_search = min(max_line_search, max_evaluations)
    direction_size = float(direction.abs().max())
    new_loss, new_gradient = yield point + t * direction
    evaluations, new_slope = 1, float(new_gradient.dot(direction))
    previous = (0.0, loss, gradient, slope)
    done, rounds = False, 0
    while rounds < max_line_search:
        current = (t, new_loss, new_gradient, new_slope)
        if new_loss > loss + c1 * t * slope or (rounds > 1 and new_loss >= previous[1]):
            bracket = [previous, current]
            break
        if abs(new_slope) <= -c2 * slope:
            bracket, done = [current], True
            break
        if new_slope >= 0:
            bracket = [previous, current]
            break
        t_before, loss_before, _, slope_before = previous
        t = _cubic_minimum(t_before, loss_before, slope_before, t, new_loss, new_slope,
                           bounds=(t + 0.01 * (t - t_before), t * 10))
        previous = current
        new_loss, new_gradient = yield point + t * direction
        evaluations, rounds, new_slope = evaluations + 1, rounds + 1, float(new_gradient.dot(direction))
    else:
        bracket = [(0.0, loss, gradient, slope), (t, new_loss, new_gradient, new_slope)]
    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    insufficient_progress = False
    while not done and rounds < max_line_search:
        (t_a, loss_a, _, slope_a), (t_b, loss_b, _, slope_b) = bracket
        if abs(t_b - t_a) * direction_size < tolerance_change:
            break
        t = _cubic_minimum(t_a, loss_a, slope_a, t_b, loss_b, slope_b)
        margin, lowest, highest = 0.1 * abs(t_b - t_a), min(t_a, t_b), max(t_a, t_b)
        if min(highest - t, t - lowest) < margin:  # too close to an end: move inwards
            if insufficient_progress or t >= highest or t <= lowest:
                t = highest - margin if abs(t - highest) < abs(t - lowest) else lowest + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        new_loss, new_gradient = yield point + t * direction
        evaluations, rounds, new_slope = evaluations + 1, rounds + 1, float(new_gradient.dot(direction))
        current = (t, new_loss, new_gradient, new_slope)
        if new_loss > loss + c1 * t * slope or new_loss >= bracket[low][1]:
            bracket[high] = current
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(new_slope) <= -c2 * slope:
                done = True
            elif new_slope * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = current
    t, loss, gradient, _ = bracket[low]
    return loss, gradient, t, evaluations


def _cubic_minimum(x1: float, f1: float, g1: float, x2: float, f2: float, g2: float,
                   bounds: tuple[float, float] | None = None) -> float:
    """The minimiser of the cubic through (x1, f1) and (x2, f2) with slopes g1, g2, kept within bounds
    (default: between x1 and x2); their midpoint when the cubic has none."""
    lowest, highest = bounds if bounds is not None else (min(x1, x2), max(x1, x2))
    if x1 == x2:
        return min(max(x1, lowest), highest)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square < 0:
        return (lowest + highest) / 2
    d2 = math.sqrt(d2_square)
    if x1 <= x2:
        end, span, numerator, denominator = x2, x2 - x1, g2 + d2 - d1, g2 - g1 + 2 * d2
    else:
        end, span, numerator, denominator = x1, x1 - x2, g1 + d2 - d1, g1 - g2 + 2 * d2
    if denominator == 0:
        return (lowest + highest) / 2
    return min(max(end - span * (numerator / denominator), lowest), highest)


def _fit_mass_mean(X, task: Task, mean, scale):
    """theta = mean(true) - mean(false) in activation space; P(true) = sigmoid(a * theta.x + c)."""
    rows = torch.as_tensor(task.train, device=X.device)
    y = torch.as_tensor(task.y_train, device=X.device).bool()
    raw = X[rows].double()
    theta = raw[y].mean(0) - raw[~y].mean(0)
    projection = raw @ theta
    a, c = _fit_1d_logistic(projection, y.double())
    # Express as a linear layer on standardised features: x = z * scale + mean.
    w = (a * theta * scale.double()).float()
    b = (a * (mean.double() @ theta) + c).float()
    return _single_history(X, task, mean, scale, [w.view(1, 1, -1)], [b.view(1, 1, 1)])


def _fit_1d_logistic(x: torch.Tensor, y: torch.Tensor, iterations: int = 50) -> tuple[float, float]:
    """Newton's method for P(y) = sigmoid(a*x + c) on standardised x; returns (a, c) for raw x."""
    centre, spread = x.mean(), x.std().clamp(min=1e-12)
    z = (x - centre) / spread
    a, c = torch.tensor(1.0, dtype=x.dtype, device=x.device), torch.tensor(0.0, dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        p = torch.sigmoid(a * z + c)
        g = torch.stack([((p - y) * z).sum(), (p - y).sum()]) + torch.stack([1e-4 * a, torch.zeros_like(c)])
        s = p * (1 - p)
        H = torch.stack([torch.stack([(s * z * z).sum() + 1e-4, (s * z).sum()]),
                         torch.stack([(s * z).sum(), s.sum()])])
        delta = torch.linalg.solve(H + 1e-9 * torch.eye(2, dtype=x.dtype, device=x.device), g)
        a, c = a - delta[0], c - delta[1]
        if delta.abs().max() < 1e-10:
            break
    return float(a / spread), float(c - a * centre / spread)


def _history_record(X, task, mean, scale, weights, biases, epoch: int) -> dict:
    with torch.no_grad():
        record = {"epoch": epoch}
        record.update(_evaluate(X, task.train, task.y_train, mean, scale, weights, biases, "train"))
        if task.test is not None and len(task.test):
            record.update(_evaluate(X, task.test, task.y_test, mean, scale, weights, biases, "heldout"))
    return record


def _evaluate(X, rows, labels, mean, scale, weights, biases, prefix) -> dict:
    """Loss and accuracy of a one-member stack on the given rows."""
    h = ((X[torch.as_tensor(rows, device=X.device)] - mean) / scale).unsqueeze(0)
    logits = _stack_forward(h, weights, biases)[-1][0, :, 0]
    y = torch.as_tensor(labels, dtype=torch.float32, device=X.device)
    loss, hits = _masked_sums(logits, y, torch.ones_like(y))
    return {f"{prefix}_loss": loss.item() / len(y), f"{prefix}_accuracy": hits.item() / len(y)}


def _single_history(X, task, mean, scale, weights, biases):
    """The one history record of a probe fitted in closed form."""
    return [weights[0][0]], [biases[0][0]], [_history_record(X, task, mean, scale, weights, biases, 1)]
