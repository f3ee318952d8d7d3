"""Adam for many same-kind probes at once: stacked weights, batched matmuls, one fused Adam step.

The weights of a stack are (member x out x in), forward and backward passes are batched
matmuls over members, and one fused Adam call updates every member. Each member draws
its initial weights and batch order from its own seed only, has its own Adam step count,
and is not updated once its epoch has run out of batches, so a probe trained in a stack
equals, bit for bit, the same probe trained alone (a lone probe trains beside a throwaway
twin: see ``_fit_adam_stack_or_twin``). On CPU the members are shared out over torch's
threads, each thread training its own stacks on one core (:func:`fit_adam`), so the numbers
do not depend on the thread count either. On CPUs where it was measured faster the larger
MLP stacks multiply in bfloat16 (float32 weights and Adam state; see :func:`training_dtype`);
the bit-for-bit promise then holds within that dtype.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F
from torch.optim.adam import adam as adam_update

from probing import environment
from probing.probes.numerics import ProbeTrainingError, training_set

if TYPE_CHECKING:
    from probing.probes.estimators import EpochCallback, Task
    from probing.probes.params import ProbeConfig

TRAIN_DTYPE_VARIABLE = "PROBING_TRAIN_DTYPE"
"""Forces the dtype MLP stacks compute in ("float32" or "bfloat16"); see :func:`training_dtype`."""
BFLOAT16_KINDS = ("small", "medium")
"""Kinds that train in bfloat16 by default on the CPUs of ``BFLOAT16_UNITS`` (measured faster there, same
accuracy); tiny's products are too small to gain (measured no faster), so it stays float32."""
BFLOAT16_UNITS = ("avx512_bf16",)
"""CPUs (:func:`~probing.model.devices.cpu_bfloat16_units`) whose MLP stacks multiply in bf16 by default, from
BENCHMARKS.md: on a Zen 5 (AVX512-BF16) the grid took 34.6 s against 37.9 s in float32; on a Xeon with AMX whole
float32 stacks were as fast as bf16 (grid with final probes 56.1-56.8 s vs 56.9-58.1 s) at ~30 % of the float32
matmul bound, where bf16 reaches ~5 % of its own (casts and Adam's memory traffic, not the products, bound a
32-row step), so float32 there; on AVX2 bf16 is emulated."""
ONEDNN_MIN_PRODUCT = 16**3
"""Torch's threshold (members x m x k x n) for multiplying bf16 batches with oneDNN: see ``_batched_matmul``."""
ADAM_BLOCK = 16
"""Elements per SIMD group of torch's fused Adam (64 bytes of float32): see ``_MemberBlocks``."""
ADAM_STACK_STATE_MIN_BYTES = 12 << 20
"""float32 stacks on CPU are cut so the Adam state of all workers' stacks fits in half the last-level cache, with
at least this much a stack: see ``_stack_cap``."""
STANDARDISED_COPIES_MAX_BYTES = 1 << 30
"""Above this, training standardises rows as it gathers them instead of keeping standardised copies."""


def training_dtype(kind: str, device: str | torch.device = "cpu", requested: str | None = None) -> torch.dtype:
    """The dtype a ``kind`` stack computes its matmuls in (weights and Adam state stay float32).

    ``requested``, else ``$PROBING_TRAIN_DTYPE``, else bfloat16 for the MLP kinds on the CPUs where it was
    measured faster (``BFLOAT16_UNITS``), float32 everywhere else. L-BFGS and mass-mean always fit in float32.
    """
    choice = requested or environment.read(TRAIN_DTYPE_VARIABLE) or None
    if choice is not None and choice not in ("float32", "bfloat16"):
        source = "train_dtype" if requested else f"${TRAIN_DTYPE_VARIABLE}"
        raise ValueError(f"{source} is {choice!r}: use 'float32' or 'bfloat16'")
    if choice is None:
        from probing.model.devices import cpu_bfloat16_units

        fast = torch.device(device).type == "cpu" and kind in BFLOAT16_KINDS and cpu_bfloat16_units() in BFLOAT16_UNITS
        choice = "bfloat16" if fast else "float32"
    return getattr(torch, choice)


class _Stopped(Exception):
    """Raised in a training worker when another worker failed: its work would be thrown away."""


def fit_adam(X, tasks: Sequence[Task], mean, scale, config: ProbeConfig, on_epoch: EpochCallback | None,
             dtype: torch.dtype):
    """Adam for same-kind probes: on CPU, stacks trained side by side, one per thread.

    A stack's products have 32 rows per member, too small to split well over threads, so
    the members are shared out over ``torch.get_num_threads()`` workers instead, each
    training its share with one thread of its own; float32 shares are cut into sub-stacks
    whose Adam state fits in cache (:func:`_stack_cap`). Every stack runs on
    one thread, so a probe's numbers depend neither on its stack nor on the thread count.
    Epoch records arrive from the workers, one at a time.
    """
    if X.device.type != "cpu":
        return _fit_adam_stack_or_twin(X, tasks, mean, scale, config, on_epoch, dtype)
    threads = torch.get_num_threads()
    shares = _share_out(len(tasks), threads, _stack_cap(X.shape[1], config, dtype, threads))
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


def _stack_cap(width: int, config: ProbeConfig, dtype: torch.dtype, workers: int) -> int:
    """Most members per stack: the ``workers`` float32 stacks training at once keep their Adam state (4 floats a
    parameter) within half the last-level cache, at least ``ADAM_STACK_STATE_MIN_BYTES`` each (the 12 MiB cut was
    chosen on a Zen 5, whose 32 MB L3 the grid's 54 MB of medium state overflowed; on a Xeon with a 480 MB L3,
    whole 9-member medium stacks took 4.1 s a layer against 5.8 s cut); bf16 stacks are not cut (measured
    fastest whole)."""
    if dtype != torch.float32:
        return 1 << 30
    from probing.model.devices import last_level_cache_bytes

    budget = max(ADAM_STACK_STATE_MIN_BYTES, (last_level_cache_bytes() or 0) // (2 * workers))
    sizes = [width, *config.hidden_sizes, 1]
    parameters = sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))
    return max(2, budget // (16 * parameters))


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


class _Standardised:
    """Rows of X standardised with each member's own mean and scale, gathered per member.

    Members that share a training set share a standardised copy of X, made once,
    unless the copies would exceed ``STANDARDISED_COPIES_MAX_BYTES``; then rows
    are standardised as they are gathered. Both give the same numbers.
    """

    def __init__(self, X: torch.Tensor, tasks: Sequence[Task], mean, scale, dtype: torch.dtype = torch.float32):
        self.X, self.mean, self.scale, self.dtype = X, mean.unsqueeze(1), scale.unsqueeze(1), dtype
        tables: dict[bytes, int] = {}
        owners = [tables.setdefault(training_set(t), len(tables)) for t in tasks]
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


def stack_forward(h: torch.Tensor, weights, biases) -> list[torch.Tensor]:
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


def masked_sums(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
            outputs = stack_forward(standardised(index[step]), step_weights[:depth], step_weights[depth:])
            logits, y = outputs[-1].squeeze(-1).float(), targets[step]
            loss, hits = masked_sums(logits, y, valid[step])
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
            logits = stack_forward(h, [w[part].to(h.dtype) for w in weights],
                                    [b[part].to(h.dtype) for b in biases])[-1].squeeze(-1).float()
            loss, hits = masked_sums(logits, self.labels[part], self.mask[part])
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
