"""Two studies side by side: the study's 7B-versus-13B question, or any two models on the same statements.

Models differ in depth (SmolLM2-135M has 30 blocks, Gemma-3-270M 18, Llama-2-7B 32, -13B 40), so
layers are aligned two ways: by index from the end (-1 with -1, as the study's tables do) and by
**relative depth**, the hidden state's index over the number of blocks (0 = the embeddings, 1 = the
last block's output): layer -9 of a 30-block model (depth 22/30 = 0.73) sits with layer -6 of an
18-block one (13/18 = 0.72).

Two studies are comparable when they read the same statements at the same token with the same
probe settings; :func:`differences` names what differs, and :func:`compare_studies` refuses such a
pair unless asked to show it anyway (with the differences as warnings). Where both folders hold
per-statement predictions of the same statements, each difference comes with a paired test
(:mod:`probing.analyses.differences`): its 95 % interval, McNemar's p-value and a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from probing.analyses.differences import study_differences
from probing.analyses.grid import accuracy_long
from probing.formatting import markdown_table

if TYPE_CHECKING:
    from probing.study.results import StudyResult

SETTINGS = ("position", "polarity", "split", "epochs", "lr", "batch_size", "weight_decay", "linear_solver", "C",
            "seeds", "controls", "max_tokens")
"""Options two compared studies must share (besides their statements)."""


def relative_depth(layer: int, n_hidden_states: int) -> float:
    """Hidden state ``layer`` (negative: from the end) as a share of the model's blocks: 0 is the
    embeddings, 1 the last block's output."""
    index = layer + n_hidden_states if layer < 0 else layer
    if not 0 <= index < n_hidden_states:
        raise ValueError(f"layer {layer} does not exist in a model with {n_hidden_states} hidden states")
    return index / (n_hidden_states - 1)


def align_by_depth(layers_a, n_a: int, layers_b, n_b: int) -> pd.DataFrame:
    """Each layer of A with the layer of B at the nearest relative depth (the deeper one on a tie):
    layer_a, depth_a, layer_b, depth_b."""
    depths_b = {layer: relative_depth(layer, n_b) for layer in layers_b}
    rows = []
    for layer in sorted(layers_a):
        depth = relative_depth(layer, n_a)
        match = min(depths_b, key=lambda other: (abs(depths_b[other] - depth), -depths_b[other]))
        rows.append({"layer_a": layer, "depth_a": depth, "layer_b": match, "depth_b": depths_b[match]})
    return pd.DataFrame(rows)


def differences(a: StudyResult, b: StudyResult) -> list[str]:
    """What makes two studies not comparable: their statements (by hash), token position and probe settings."""
    found = []
    sha_a, sha_b = (study.meta.get("dataset", {}).get("sha256") for study in (a, b))
    if sha_a != sha_b:
        names = [study.meta.get("dataset", {}).get("name", "?") for study in (a, b)]
        found.append(f"dataset: {names[0]} (sha256 {str(sha_a)[:12]}) vs {names[1]} (sha256 {str(sha_b)[:12]})")
    for name in SETTINGS:
        value_a, value_b = getattr(a.config, name), getattr(b.config, name)
        if value_a != value_b:
            found.append(f"{name}: {value_a!r} vs {value_b!r}")
    return found


@dataclass
class Comparison:
    """Two studies' grids and directions, aligned. ``by_depth`` and ``by_index``: probe, layer_a,
    layer_b, depth_a, depth_b, accuracy_a, accuracy_b, difference (b - a) and, where the paired tests
    ran, statements, lower, upper, p_value, verdict; ``directions``: model, probe, layer, depth, cosine,
    sign_equality; ``warnings``: the differences shown anyway; ``notes``: why there are no paired tests."""

    names: tuple[str, str]
    by_depth: pd.DataFrame
    by_index: pd.DataFrame
    directions: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    split: str = "category"
    """The split kind whose grids are compared (study A's: comparable studies share it)."""


def _hidden_states(study: StudyResult) -> int:
    count = study.meta.get("model", {}).get("hidden_states")
    if not count:
        raise ValueError(f"{study.folder}: its config.json does not record the model's hidden states")
    return int(count)


def _grid(study: StudyResult) -> pd.DataFrame:
    long = accuracy_long(study.split_results(), "mean")
    if long.empty:
        raise ValueError(f"{study.folder} holds no accuracy grid to compare")
    return long.set_index(["probe", "layer"])["accuracy"]


def _paired(grid_a: pd.Series, grid_b: pd.Series, pairs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    probes = [p for p in dict.fromkeys(grid_a.index.get_level_values(0)) if p in set(grid_b.index.get_level_values(0))]
    for probe in probes:
        for pair in pairs.itertuples():
            if (probe, pair.layer_a) in grid_a.index and (probe, pair.layer_b) in grid_b.index:
                accuracy_a, accuracy_b = grid_a[(probe, pair.layer_a)], grid_b[(probe, pair.layer_b)]
                rows.append({"probe": probe, "layer_a": pair.layer_a, "layer_b": pair.layer_b,
                             "depth_a": pair.depth_a, "depth_b": pair.depth_b, "accuracy_a": accuracy_a,
                             "accuracy_b": accuracy_b, "difference": accuracy_b - accuracy_a})
    return pd.DataFrame(rows)


def compare_studies(a: StudyResult, b: StudyResult, allow_mismatch: bool = False) -> Comparison:
    """Align two studies' grids (of A's split kind) by relative depth and by index, and gather their
    direction statistics; refuse studies that are not comparable unless ``allow_mismatch``."""
    found = differences(a, b)
    if found and not allow_mismatch:
        raise ValueError("these studies are not comparable: " + "; ".join(found)
                         + ". Compare studies of the same statements and settings, or show them anyway "
                           "(--allow-mismatch).")
    n_a, n_b = _hidden_states(a), _hidden_states(b)
    grid_a, grid_b = _grid(a), _grid(b)
    layers_a = sorted(set(grid_a.index.get_level_values(1)))
    layers_b = sorted(set(grid_b.index.get_level_values(1)))
    by_depth = _paired(grid_a, grid_b, align_by_depth(layers_a, n_a, layers_b, n_b))
    shared = sorted(set(layers_a) & set(layers_b))
    by_index = _paired(grid_a, grid_b, pd.DataFrame({
        "layer_a": shared, "layer_b": shared, "depth_a": [relative_depth(x, n_a) for x in shared],
        "depth_b": [relative_depth(x, n_b) for x in shared]}))
    notes = []
    try:
        by_depth, by_index = study_differences(a, b, by_depth), study_differences(a, b, by_index)
    except ValueError as error:
        notes.append(str(error))
    names = tuple(study.meta.get("model", {}).get("name", "?") for study in (a, b))
    if names[0] == names[1]:
        names = (f"{names[0]} (A)", f"{names[1]} (B)")
    directions = []
    for name, study, n in ((names[0], a, n_a), (names[1], b, n_b)):
        if study.directions_cosine.empty:
            continue
        sign = study.directions_sign.set_index(["probe", "layer"])["mean"]
        for row in study.directions_cosine.itertuples():
            directions.append({"model": name, "probe": row.probe, "layer": row.layer,
                               "depth": relative_depth(row.layer, n), "cosine": row.mean,
                               "sign_equality": sign.get((row.probe, row.layer), np.nan)})
    return Comparison(names, by_depth, by_index, pd.DataFrame(directions), found, notes, a.config.split)


def comparison_markdown(comparison: Comparison) -> str:
    """The comparison as one Markdown document."""
    a, b = comparison.names
    parts = [f"# {a} (A) vs {b} (B)\n"]
    if comparison.warnings:
        parts.append("**Not comparable, shown anyway:** " + "; ".join(comparison.warnings) + "\n")
    parts += [f"**No paired tests:** {note}\n" for note in comparison.notes]
    if "verdict" in comparison.by_depth:
        parts.append("Paired tests on the same held-out statements: lower and upper bound the 95 % interval of "
                     "the difference (B - A, paired bootstrap); p_value is McNemar's (one seed per probe); the "
                     "difference is beyond noise where the interval excludes 0.\n")
    parts += [f"## Mean accuracy over the {comparison.split} splits, layers aligned by relative depth\n",
              markdown_table(comparison.by_depth)]
    if not comparison.by_index.empty:
        parts += ["\n## The same, layers aligned by index from the end\n", markdown_table(comparison.by_index)]
    if not comparison.directions.empty:
        parts += ["\n## Truth directions: mean pairwise cosine and sign equality of the split directions\n",
                  markdown_table(comparison.directions)]
    return "\n".join(parts)


def save_comparison(comparison: Comparison, out) -> None:
    """compare_depth.csv, compare_index.csv, compare_directions.csv and compare.md in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    comparison.by_depth.to_csv(out / "compare_depth.csv", index=False)
    comparison.by_index.to_csv(out / "compare_index.csv", index=False)
    comparison.directions.to_csv(out / "compare_directions.csv", index=False)
    (out / "compare.md").write_text(comparison_markdown(comparison))


def matched_layers(layers, n_from: int, n_to: int) -> tuple[int, ...]:
    """The layers of a model with ``n_to`` hidden states at the relative depths of ``layers`` (of one with
    ``n_from``), deepest last, without repeats."""
    pairs = align_by_depth(layers, n_from, range(-(n_to - 1), 0), n_to)
    return tuple(sorted(dict.fromkeys(pairs["layer_b"].tolist())))


