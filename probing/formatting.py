"""Text for people, shared by the command line, the results folder and the dashboard: Markdown tables
and the message of an error."""

from __future__ import annotations

import numpy as np
import pandas as pd


def error_text(error: Exception) -> str:
    """An error's message for the command line and the dashboard; an operating-system error ("[Errno 13]
    Permission denied: 'x'") as the path and what went wrong, with what to check."""
    if not isinstance(error, OSError) or error.errno is None:
        return str(error)
    where = " and ".join(str(name) for name in (error.filename, error.filename2) if name is not None) or "a file"
    return (f"{where}: {(error.strerror or 'failed').lower()} (check that the path exists, is the kind of file or "
            "folder the option takes, and that you may read and write it)")


def markdown_table(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-style Markdown table (numbers rounded to ``digits``)."""
    def cell(value) -> str:
        if isinstance(value, (float, np.floating)):
            return "-" if np.isnan(value) else f"{value:.{digits}f}"
        return str(value)

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"
