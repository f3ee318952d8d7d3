"""A scored passage as HTML: the text as written, each sentence's background coloured by one scorer's P(true).

Pure (text in, text out), so the page only shows it; every character of the passage is escaped, so a
passage holding markup shows as text.
"""

from __future__ import annotations

from html import escape

import pandas as pd

from probing.analyses.passage import p_true_column, scorers
from probing.dashboard.charts import FALSE_COLOR, TRUE_COLOR

STRONGEST = 0.7
"""How much of the end colour a sentence scored 0 or 1 gets (over white): enough to see, light enough to read."""


def sentence_color(p_true: float) -> str:
    """White at 0.5, towards the dashboard's false colour at 0 and its true colour at 1."""
    end = TRUE_COLOR if p_true >= 0.5 else FALSE_COLOR
    weight = STRONGEST * min(abs(p_true - 0.5) * 2, 1.0)
    channels = (int(end[i:i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(255 + (c - 255) * weight):02x}" for c in channels)


def _text(piece: str) -> str:
    """Escaped text, line breaks as ``<br>``."""
    return escape(piece).replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def passage_html(passage: str, table: pd.DataFrame, scorer: str) -> str:
    """``passage`` with each sentence of ``table`` (from :func:`~probing.analyses.passage.score_passage`) on a
    background coloured by ``scorer``'s P(true); its tooltip gives every scorer's number."""
    column = p_true_column(scorer)
    if column not in table.columns:
        raise ValueError(f"no {scorer!r} scores in this table; it has {', '.join(scorers(table))}")
    names = scorers(table)
    parts, done = [], 0
    for row in table.sort_values("start").itertuples(index=False):
        start, end = int(row.start), int(row.end)
        numbers = ", ".join(f"{name} {getattr(row, p_true_column(name)):.2f}" for name in names)
        where = f" at layer {row.layer}" if "layer" in table.columns else ""
        tip = f"sentence {row.index}: P(true){where}: {numbers}"
        parts.append(_text(passage[done:start]))
        parts.append(f'<span style="background-color: {sentence_color(getattr(row, column))}; border-radius: 3px; '
                     f'padding: 1px 0" title="{escape(tip)}">{_text(passage[start:end])}</span>')
        done = end
    parts.append(_text(passage[done:]))
    return f'<div style="white-space: pre-wrap; line-height: 1.9">{"".join(parts)}</div>'
