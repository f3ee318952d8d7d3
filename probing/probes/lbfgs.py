"""L-BFGS for the linear probes: many logistic regressions in lockstep, one pair of matmuls a round.

L-BFGS starts from zero and ignores the seed, so tasks that differ only in seed are fitted
once; up to ``LBFGS_STACK`` distinct problems advance in lockstep, each with its own L-BFGS
state and stopping, their losses and gradients evaluated by one pair of matmuls over a
shared standardised copy of X (see ``_LinearDesign``). The optimiser itself (:func:`_lbfgs`,
with a strong-Wolfe line search) is torch's LBFGS written as a generator, so that one
caller can drive many runs at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.nn import functional as F

from probing.probes.numerics import mean_scale

if TYPE_CHECKING:
    from probing.probes.estimators import EpochCallback, Task
    from probing.probes.params import ProbeConfig

LBFGS_STACK = 8
"""Linear L-BFGS problems evaluated together (the matmuls always have this many rows, used or not)."""


def fit_lbfgs(X, tasks: Sequence[Task], mean, scale, config: ProbeConfig, on_epoch: EpochCallback | None):
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
        self.centre, self.spread = mean_scale(X)
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
