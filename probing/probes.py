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
probe trains beside a throwaway twin: see ``fit_many``). L-BFGS starts from
zero and ignores the seed, so tasks that differ only in seed are fitted once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    _check_finite_features(features, tasks)
    mean, scale = _standardisers(features, tasks)
    if config.kind == "mass_mean":
        parts = [_fit_mass_mean(features, task, m, s) for task, m, s in zip(tasks, mean, scale)]
    elif config.solver == "lbfgs":
        parts = _fit_lbfgs_each(features, tasks, mean, scale, config, on_epoch)
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

    def __init__(self, X: torch.Tensor, tasks: Sequence[Task], mean, scale):
        self.X, self.mean, self.scale = X, mean.unsqueeze(1), scale.unsqueeze(1)
        tables: dict[bytes, int] = {}
        owners = [tables.setdefault(_training_set(t), len(tables)) for t in tasks]
        first = [owners.index(table) for table in range(len(tables))]
        self.copies = None
        if len(tables) * X.numel() * X.element_size() <= STANDARDISED_COPIES_MAX_BYTES:
            self.copies = torch.cat([(X - mean[j]) / scale[j] for j in first])  # copy t holds rows t*n..
            self.offset = torch.as_tensor(owners, device=X.device).unsqueeze(1) * len(X)

    def __call__(self, rows: torch.Tensor, members: slice = slice(None)) -> torch.Tensor:
        """rows: (members, n) indices into X -> (members, n, width)."""
        if self.copies is not None:
            flat = (rows + self.offset[members]).reshape(-1)
            return self.copies.index_select(0, flat).view(*rows.shape, -1)
        return (self.X[rows] - self.mean[members]) / self.scale[members]


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
        h = torch.baddbmm(b, h, W.transpose(1, 2))
        if layer < len(weights) - 1:
            h = F.relu(h)
        outputs.append(h)
    return outputs


def _masked_sums(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per member, the summed cross-entropy loss and the number of correct predictions over rows where mask is 1."""
    loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="none") * mask).sum(-1)
    hits = (((logits > 0).float() == y).float() * mask).sum(-1)
    return loss, hits


def _stack_backward(outputs: list[torch.Tensor], weights, grad: torch.Tensor):
    """Gradients of the weights and biases, given d loss / d logits (members, rows, 1).

    Written out rather than left to autograd: every product is a batched matmul
    over members, so a member's gradient does not depend on who else is stacked.
    """
    ones = torch.ones(grad.shape[0], 1, grad.shape[1], device=grad.device)
    grad_w, grad_b = [None] * len(weights), [None] * len(weights)
    for layer in reversed(range(len(weights))):
        grad_w[layer] = torch.bmm(grad.transpose(1, 2), outputs[layer])
        grad_b[layer] = torch.bmm(ones, grad)
        if layer:
            grad = torch.bmm(grad, weights[layer]) * (outputs[layer] > 0)
    return grad_w, grad_b


@torch.no_grad()
def _fit_adam_stack(X, tasks, mean, scale, config: ProbeConfig, on_epoch: EpochCallback | None):
    """Mini-batch Adam for a stack of same-shape MLPs, each on its own rows, batches and seed.

    The training loss and accuracy of an epoch are means over its mini-batches, taken
    before each update (as Keras reports them); held-out ones are measured after the epoch.
    """
    device, members, B = X.device, len(tasks), config.batch_size
    generators = [_member_generator(task.seed) for task in tasks]
    inits = [_init_member(X.shape[1], config.hidden_sizes, g) for g in generators]
    depth = len(inits[0][0])
    weights = [torch.stack([w[k] for w, _ in inits]).contiguous().to(device) for k in range(depth)]
    biases = [torch.stack([b[k] for _, b in inits]).unsqueeze(1).to(device) for k in range(depth)]
    train_rows = [torch.as_tensor(t.train, device=device) for t in tasks]
    train_y = [torch.as_tensor(t.y_train, dtype=torch.float32, device=device) for t in tasks]
    sizes = [len(rows) for rows in train_rows]
    adam = _StackedAdam(weights + biases, sizes, config.lr, config.weight_decay)
    most_steps = max(math.ceil(n / B) for n in sizes)
    histories: list[list[dict]] = [[] for _ in tasks]
    standardised = _Standardised(X, tasks, mean, scale)
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
            outputs = _stack_forward(standardised(index[step]), weights, biases)
            logits, y = outputs[-1].squeeze(-1), targets[step]
            loss, hits = _masked_sums(logits, y, valid[step])
            loss_sum += loss
            correct += hits
            grad = ((torch.sigmoid(logits) - y) * weight_per_row[step]).unsqueeze(-1)
            grad_w, grad_b = _stack_backward(outputs, weights, grad)
            adam.step(grad_w + grad_b, active[step])
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
            logits = _stack_forward(h, [w[part] for w in weights], [b[part] for b in biases])[-1].squeeze(-1)
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
    """L-BFGS per task; tasks that differ only in seed are fitted once (L-BFGS from zero ignores it)."""
    fitted: dict[tuple, tuple] = {}
    parts = []
    for member, (task, m, s) in enumerate(zip(tasks, mean, scale)):
        key = tuple(np.asarray(a).tobytes() if a is not None else None
                    for a in (task.train, task.y_train, task.test, task.y_test))
        if key in fitted:
            parts.append(fitted[key])
            if on_epoch:
                for record in fitted[key][2]:
                    on_epoch(member, record)
        else:
            parts.append(fitted.setdefault(key, _fit_lbfgs(X, task, m, s, config, member, on_epoch)))
    return parts


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

    weights, biases = [w.detach().T.unsqueeze(0)], [b.detach().view(1, 1, 1)]  # stacked (1, out, in) views
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
