"""Is there one truth direction? Compare the directions learned on different splits.

For each layer, each category split gives a direction (the linear probe's
weights mapped back to activation space, or the mass-mean difference). Two
matrices compare them pairwise: cosine similarity and fractional sign
equality (share of coordinates whose signs agree). Their off-diagonal means
are the study's section-2 tables.

Two baselines sit beside each mean: ``random_baseline`` / ``random_p95``, the
mean and 95th percentile of the same statistic for random directions of the
same width pushed through the same map (so 0 and about 0.5 for cosine and
sign, with a spread that shows what chance can reach), and ``shuffled_labels``,
the statistic for probes trained on shuffled labels, which shows how much
agreement the geometry of the activations produces with no truth signal at all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probing.analyses.grid import GridResult
from probing.probes.estimators import Probe

DIRECTION_KINDS = ("linear", "mass_mean")


def cosine_matrix(directions: np.ndarray) -> np.ndarray:
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    return unit @ unit.T


def sign_matrix(directions: np.ndarray) -> np.ndarray:
    signs = np.sign(directions)
    return (signs[:, None, :] == signs[None, :, :]).mean(-1)


def off_diagonal_mean(matrix: np.ndarray) -> float:
    n = len(matrix)
    if n < 2:
        return float("nan")
    return float((matrix.sum() - np.trace(matrix)) / (n * (n - 1)))


def random_baseline(scales: np.ndarray, draws: int = 500, seed: int = 0) -> dict[str, float]:
    """Off-diagonal means for random directions drawn in standardised space, mapped by 1/scale.

    ``scales``: (directions, width), one feature scale per split (ones for mass-mean).
    """
    rng = np.random.default_rng(seed)
    cosines, signs = [], []
    for _ in range(draws):
        directions = rng.standard_normal(scales.shape) / scales
        cosines.append(off_diagonal_mean(cosine_matrix(directions)))
        signs.append(off_diagonal_mean(sign_matrix(directions)))
    return {
        "cosine": float(np.mean(cosines)), "cosine_p95": float(np.quantile(cosines, 0.95)),
        "sign": float(np.mean(signs)), "sign_p95": float(np.quantile(signs, 0.95)),
    }


def _directions_of(probes: dict, layer: int, kind: str, seed: int) -> tuple[list[str], list[Probe]]:
    chosen = [(split, probe) for (l, k, split, s), probe in probes.items()
              if l == layer and k == kind and s == seed]
    return [split for split, _ in chosen], [probe for _, probe in chosen]


def compare_directions(result: GridResult, kind: str = "linear", seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per-layer summaries (cosine, sign) and the full split-by-split matrices in long form."""
    if kind not in DIRECTION_KINDS:
        raise ValueError(f"directions exist for {DIRECTION_KINDS}, not {kind!r}")
    cosine_rows, sign_rows, matrix_rows = [], [], []
    layers = sorted({key[0] for key in result.probes if key[1] == kind})
    for layer in layers:
        splits, probes = _directions_of(result.probes, layer, kind, seed)
        if len(probes) < 2:
            continue
        directions = np.stack([p.direction_ for p in probes])
        cos, sign = cosine_matrix(directions), sign_matrix(directions)
        scales = np.stack([p.scale_ if kind == "linear" else np.ones_like(p.scale_) for p in probes])
        chance = random_baseline(scales, seed=layer % 1000)
        _, shuffled = _directions_of(result.shuffled_probes, layer, kind, seed)
        shuffled_dirs = np.stack([p.direction_ for p in shuffled]) if len(shuffled) >= 2 else None
        common = {"layer": layer, "probe": kind, "splits": len(probes)}
        cosine_rows.append({**common, "mean": off_diagonal_mean(cos), "random_baseline": chance["cosine"],
                            "random_p95": chance["cosine_p95"],
                            "shuffled_labels": off_diagonal_mean(cosine_matrix(shuffled_dirs))
                            if shuffled_dirs is not None else np.nan})
        sign_rows.append({**common, "mean": off_diagonal_mean(sign), "random_baseline": chance["sign"],
                          "random_p95": chance["sign_p95"],
                          "shuffled_labels": off_diagonal_mean(sign_matrix(shuffled_dirs))
                          if shuffled_dirs is not None else np.nan})
        for (i, a), (j, b) in ((x, y) for x in enumerate(splits) for y in enumerate(splits)):
            matrix_rows.append({"layer": layer, "probe": kind, "split_a": a, "split_b": b,
                                "cosine": cos[i, j], "sign_equality": sign[i, j]})
    return pd.DataFrame(cosine_rows), pd.DataFrame(sign_rows), pd.DataFrame(matrix_rows)


def pca_points(X: np.ndarray, frame: pd.DataFrame, components: int = 2) -> tuple[pd.DataFrame, np.ndarray]:
    """The first principal components of standardised activations, with statement, label and topic."""
    Z = X - X.mean(0)
    scale = Z.std(0)
    Z = Z / np.where(scale > 1e-6, scale, 1)
    _, singular, vt = np.linalg.svd(Z, full_matrices=False)
    coords = Z @ vt[:components].T
    explained = singular**2 / (singular**2).sum()
    points = pd.DataFrame({"pc1": coords[:, 0], "pc2": coords[:, 1],
                           "label": np.where(frame["label"].to_numpy() == 1, "true", "false"),
                           "topic": frame["topic"].to_numpy(), "statement": frame["statement"].to_numpy()})
    return points, explained[:components]
