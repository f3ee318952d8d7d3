"""Truth probes with a scikit-learn interface, trained many at a time.

Kinds:

- ``linear``: logistic regression on standardised features. By default it is
  fitted to convergence with L-BFGS and an L2 penalty (scikit-learn's objective,
  ``C=0.1`` as in REFERENCE.md's sanity figures); ``solver="adam"`` trains it the
  SAPLMA way instead (a few epochs of Adam, which underfits a linear model);
- ``tiny`` (32), ``small`` (128-64), ``medium`` (256-128-64): ReLU MLPs with a
  sigmoid output; ``medium`` is SAPLMA's probe, tiny and small sit between it
  and linear;
- ``mass_mean``: the difference of class means (Marks & Tegmark), with a
  1-D logistic calibration of the projection for P(true).

``fit_many`` trains any number of same-kind probes together: the weights are
stacked (member x in x out) and one batched Adam step updates every member.
Each member draws its initial weights and batch order from its own seed only,
has its own Adam step count, and is not updated once its epoch has run out of
batches, so a probe trained in a stack equals, bit for bit, the same probe
trained alone (a lone probe trains beside a throwaway twin: see ``fit_many``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from torch.optim.adam import adam as adam_update

HIDDEN_SIZES: dict[str, tuple[int, ...]] = {
    "linear": (),
    "tiny": (32,),
    "small": (128, 64),
    "medium": (256, 128, 64),
}
PROBE_KINDS = (*HIDDEN_SIZES, "mass_mean")
EpochCallback = Callable[[int, dict], None]
"""Called with (member index, one history record) after every epoch."""


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
        if not self.lr > 0 or self.weight_decay < 0 or not self.C > 0:
            raise ValueError("lr and C must be > 0 and weight_decay >= 0")
        if self.solver not in ("adam", "lbfgs"):
            raise ValueError(f"solver {self.solver!r} is not 'auto', 'adam' or 'lbfgs'")
        if self.solver == "lbfgs" and self.kind != "linear":
            raise ValueError("solver='lbfgs' is for the linear probe only")

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return HIDDEN_SIZES.get(self.kind, ())


@dataclass
class Task:
    """One probe to train: rows of X to train on, their labels, and optional held-out rows."""

    train: np.ndarray
    y_train: np.ndarray
    test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    seed: int = 0


@dataclass
class Probe:
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
        return ProbeConfig(self.kind, self.epochs, self.lr, self.batch_size, self.weight_decay,
                           self.solver, self.C, self.seed)

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

    def predict_proba(self, X) -> np.ndarray:
        """Columns: P(false), P(true)."""
        p = 1 / (1 + np.exp(-np.clip(self.decision_function(X), -60, 60)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)

    def score(self, X, y) -> float:
        """Accuracy."""
        return float((self.predict(X) == np.asarray(y)).mean())

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
        probe = cls(**state["config"])
        probe.mean_, probe.scale_ = state["mean"].numpy(), state["scale"].numpy()
        probe.weights_ = [w.numpy() for w in state["weights"]]
        probe.biases_ = [b.numpy() for b in state["biases"]]
        return probe


def make_probe(kind: str = "linear", **settings) -> Probe:
    """A new probe of ``kind`` with the given training settings (validated)."""
    config = ProbeConfig(kind=kind, **settings)
    return Probe(**asdict(config))


def fit_many(
    X: np.ndarray | torch.Tensor,
    tasks: Sequence[Task],
    config: ProbeConfig,
    on_epoch: EpochCallback | None = None,
    device: str | torch.device = "cpu",
) -> list[Probe]:
    """Train one probe per task on rows of the shared feature matrix ``X``; all in one stack."""
    if not tasks:
        return []
    features = torch.as_tensor(np.asarray(X, dtype=np.float32) if not torch.is_tensor(X) else X,
                               dtype=torch.float32, device=device)
    for task in tasks:
        _check_task(task, len(features))
    mean, scale = _standardisers(features, tasks)
    if config.kind == "mass_mean":
        parts = [_fit_mass_mean(features, task, m, s) for task, m, s in zip(tasks, mean, scale)]
    elif config.solver == "lbfgs":
        parts = [_fit_lbfgs(features, task, m, s, config, member, on_epoch)
                 for member, (task, m, s) in enumerate(zip(tasks, mean, scale))]
    else:
        # A batched matmul over one member takes another kernel path than over two or more
        # (results differ in the last bits, and Adam amplifies that). Training a lone probe
        # beside a throwaway twin keeps it bit-identical to the same probe in any stack.
        twin = len(tasks) == 1
        padded = [*tasks, tasks[0]] if twin else list(tasks)
        mean_p, scale_p = (torch.cat([t, t]) if twin else t for t in (mean, scale))
        report = (lambda member, record: on_epoch(member, record) if member < len(tasks) else None) if on_epoch else None
        parts = _fit_adam_stack(features, padded, mean_p, scale_p, config, report)[: len(tasks)]
    probes = []
    for member, (task, (weights, biases, history)) in enumerate(zip(tasks, parts)):
        probe = Probe(**{**asdict(config), "seed": task.seed})
        probe.mean_, probe.scale_ = mean[member].cpu().numpy(), scale[member].cpu().numpy()
        probe.weights_ = [w.detach().cpu().numpy() for w in weights]
        probe.biases_ = [b.detach().cpu().numpy() for b in biases]
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


def _standardisers(X: torch.Tensor, tasks: Sequence[Task]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task mean and scale, fitted on that task's training rows only."""
    means, scales = [], []
    for task in tasks:
        rows = X[torch.as_tensor(task.train, device=X.device)].double()
        means.append(rows.mean(0).float())
        std = rows.std(0, unbiased=False).float()
        scales.append(torch.where(std > 1e-6, std, torch.ones_like(std)))
    return torch.stack(means), torch.stack(scales)


def _member_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % (2**63))


def _init_member(in_width: int, hidden: tuple[int, ...], generator: torch.Generator):
    """nn.Linear's default init (uniform in +-1/sqrt(fan_in)) for each layer of one member."""
    sizes = [in_width, *hidden, 1]
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1 / math.sqrt(fan_in)
        weights.append((torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound)
        biases.append((torch.rand(fan_out, generator=generator) * 2 - 1) * bound)
    return weights, biases


def _stack_forward(h: torch.Tensor, weights, biases) -> torch.Tensor:
    """h: (members, rows, in) -> logits (members, rows)."""
    for layer, (W, b) in enumerate(zip(weights, biases)):
        h = torch.baddbmm(b.unsqueeze(1), h, W)
        if layer < len(weights) - 1:
            h = F.relu(h)
    return h.squeeze(-1)


def _fit_adam_stack(X, tasks, mean, scale, config: ProbeConfig, on_epoch: EpochCallback | None):
    device, members, B = X.device, len(tasks), config.batch_size
    generators = [_member_generator(task.seed) for task in tasks]
    inits = [_init_member(X.shape[1], config.hidden_sizes, g) for g in generators]
    weights = [torch.stack([w[k] for w, _ in inits]).to(device).requires_grad_() for k in range(len(inits[0][0]))]
    biases = [torch.stack([b[k] for _, b in inits]).to(device).requires_grad_() for k in range(len(inits[0][1]))]
    adam = _MaskedAdam(weights + biases, config.lr, config.weight_decay)
    train_rows = [torch.as_tensor(t.train, device=device) for t in tasks]
    train_y = [torch.as_tensor(t.y_train, dtype=torch.float32, device=device) for t in tasks]
    sizes = [len(rows) for rows in train_rows]
    most_steps = max(math.ceil(n / B) for n in sizes)
    histories: list[list[dict]] = [[] for _ in tasks]
    mu, sd = mean.unsqueeze(1), scale.unsqueeze(1)

    for epoch in range(1, config.epochs + 1):
        index = torch.zeros(members, most_steps * B, dtype=torch.long, device=device)
        targets = torch.zeros(members, most_steps * B, device=device)
        valid = torch.zeros(members, most_steps * B, device=device)
        for j, (n, generator) in enumerate(zip(sizes, generators)):
            order = torch.randperm(n, generator=generator).to(device)
            index[j, :n], targets[j, :n], valid[j, :n] = train_rows[j][order], train_y[j][order], 1
        index, targets, valid = (t.view(members, most_steps, B).transpose(0, 1) for t in (index, targets, valid))
        counts = valid.sum(-1)
        for step in range(most_steps):
            logits = _stack_forward((X[index[step]] - mu) / sd, weights, biases)
            losses = F.binary_cross_entropy_with_logits(logits, targets[step], reduction="none")
            per_member = (losses * valid[step]).sum(1) / counts[step].clamp(min=1)
            for parameter in adam.params:
                parameter.grad = None
            per_member.sum().backward()
            adam.step(counts[step] > 0)
        with torch.no_grad():
            for j, task in enumerate(tasks):
                record = {"epoch": epoch}
                record.update(_evaluate(X, task.train, task.y_train, mu[j], sd[j], weights, biases, j, "train"))
                if task.test is not None and len(task.test):
                    record.update(_evaluate(X, task.test, task.y_test, mu[j], sd[j], weights, biases, j, "heldout"))
                histories[j].append(record)
                if on_epoch:
                    on_epoch(j, record)
    return [([w[j] for w in weights], [b[j] for b in biases], histories[j]) for j in range(members)]


def _evaluate(X, rows, labels, mu, sd, weights, biases, member, prefix) -> dict:
    rows_t = torch.as_tensor(rows, device=X.device)
    h = ((X[rows_t] - mu) / sd).unsqueeze(0)
    logits = _stack_forward(h, [w[member : member + 1] for w in weights], [b[member : member + 1] for b in biases])[0]
    y = torch.as_tensor(labels, dtype=torch.float32, device=X.device)
    loss = F.binary_cross_entropy_with_logits(logits, y).item()
    accuracy = ((logits > 0).float() == y).float().mean().item()
    return {f"{prefix}_loss": loss, f"{prefix}_accuracy": accuracy}


class _MaskedAdam:
    """Adam on stacked (members, ...) parameters where only active members take a step.

    Each member's slice of each parameter is its own Adam parameter with its own
    step count, updated by torch's fused Adam kernel, so a member's updates are
    exactly those torch.optim.Adam would make for it alone.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.weight_decay, self.betas, self.eps = params, lr, weight_decay, betas, eps
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        members = params[0].shape[0]
        self.steps = [[torch.zeros((), dtype=torch.float32, device=p.device) for p in params] for _ in range(members)]

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        chosen = torch.nonzero(active).flatten().tolist()
        slices = [(p, m, v, j, k) for j in chosen for k, (p, m, v) in enumerate(zip(self.params, self.m, self.v))]
        adam_update(
            [p[j] for p, _, _, j, _ in slices], [p.grad[j] for p, _, _, j, _ in slices],
            [m[j] for _, m, _, j, _ in slices], [v[j] for _, _, v, j, _ in slices], [],
            [self.steps[j][k] for _, _, _, j, k in slices],
            fused=self.params[0].device.type in ("cpu", "cuda"), amsgrad=False, beta1=self.betas[0],
            beta2=self.betas[1], lr=self.lr, weight_decay=self.weight_decay, eps=self.eps, maximize=False,
        )


def _fit_lbfgs(X, task: Task, mean, scale, config: ProbeConfig, member: int, on_epoch: EpochCallback | None,
               iterations_per_record: int = 10, max_records: int = 100):
    """Full-batch L2-regularised logistic regression (scikit-learn's objective, divided by n).

    History gets one record per ``iterations_per_record`` L-BFGS iterations, until converged.
    """
    rows = torch.as_tensor(task.train, device=X.device)
    Z = (X[rows] - mean) / scale
    y = torch.as_tensor(task.y_train, dtype=torch.float32, device=X.device)
    w = torch.zeros(X.shape[1], 1, device=X.device, requires_grad=True)
    b = torch.zeros(1, device=X.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], lr=1, max_iter=iterations_per_record, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    penalty = 1 / (2 * config.C * len(rows))

    def closure():
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits((Z @ w)[:, 0] + b, y) + penalty * (w * w).sum()
        loss.backward()
        return loss

    weights, biases = [w.detach().unsqueeze(0)], [b.detach().unsqueeze(0)]
    history = []
    for record_number in range(1, max_records + 1):
        before = optimiser.state[w].get("n_iter", 0) if w in optimiser.state else 0
        optimiser.step(closure)
        record = _history_record(X, task, mean, scale, weights, biases, record_number)
        history.append(record)
        if on_epoch:
            on_epoch(member, record)
        if optimiser.state[w]["n_iter"] - before < iterations_per_record:
            break  # converged within this round
    return [weights[0][0]], [biases[0][0]], history


def _fit_mass_mean(X, task: Task, mean, scale):
    """theta = mean(true) - mean(false) in activation space; P(true) = sigmoid(a * theta.x + c)."""
    rows = torch.as_tensor(task.train, device=X.device)
    y = torch.as_tensor(task.y_train, device=X.device).bool()
    raw = X[rows].double()
    theta = raw[y].mean(0) - raw[~y].mean(0)
    projection = raw @ theta
    a, c = _fit_1d_logistic(projection, y.double())
    # Express as a linear layer on standardised features: x = z * scale + mean.
    w = (a * theta * scale.double()).float().unsqueeze(1)
    b = (a * (mean.double() @ theta) + c).float().reshape(1)
    return _single_history(X, task, mean, scale, [w.unsqueeze(0)], [b.unsqueeze(0)])


def _fit_1d_logistic(x: torch.Tensor, y: torch.Tensor, iterations: int = 50) -> tuple[float, float]:
    """Newton's method for P(y) = sigmoid(a*x + c) on standardised x; returns (a, c) for raw x."""
    centre, spread = x.mean(), x.std().clamp(min=1e-12)
    z = (x - centre) / spread
    a, c = torch.tensor(1.0, dtype=x.dtype), torch.tensor(0.0, dtype=x.dtype)
    for _ in range(iterations):
        p = torch.sigmoid(a * z + c)
        g = torch.stack([((p - y) * z).sum(), (p - y).sum()]) + torch.stack([1e-4 * a, torch.zeros_like(c)])
        s = p * (1 - p)
        H = torch.stack([torch.stack([(s * z * z).sum() + 1e-4, (s * z).sum()]),
                         torch.stack([(s * z).sum(), s.sum()])])
        delta = torch.linalg.solve(H + 1e-9 * torch.eye(2, dtype=x.dtype), g)
        a, c = a - delta[0], c - delta[1]
        if delta.abs().max() < 1e-10:
            break
    return float(a / spread), float(c - a * centre / spread)


def _history_record(X, task, mean, scale, weights, biases, epoch: int) -> dict:
    with torch.no_grad():
        record = {"epoch": epoch}
        record.update(_evaluate(X, task.train, task.y_train, mean, scale, weights, biases, 0, "train"))
        if task.test is not None and len(task.test):
            record.update(_evaluate(X, task.test, task.y_test, mean, scale, weights, biases, 0, "heldout"))
    return record


def _single_history(X, task, mean, scale, weights, biases):
    """The one history record of a probe fitted in closed form."""
    return [weights[0][0]], [biases[0][0]], [_history_record(X, task, mean, scale, weights, biases, 1)]
