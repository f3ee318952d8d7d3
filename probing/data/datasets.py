"""Loading a statement set by name: ``builtin``, a SAPLMA-style folder, or one CSV.

This module sits above :mod:`probing.data.statements` (the table and its CSV formats) and
:mod:`probing.data.builtin` (the generated set), so neither imports the other's loader.
"""

from __future__ import annotations

from pathlib import Path

from probing.data.builtin import load_builtin
from probing.data.statements import (
    POLARITY_CHOICES, SAPLMA_SUFFIX, DatasetError, StatementSet, load_csv_file, load_folder,
)


def load_dataset(
    source: str | Path, *, topic: str | None = None, drop_duplicates: bool = False, polarity: str = "all",
    drop_conflicts: bool = False, per_topic: int | None = None,
) -> StatementSet:
    """Load ``builtin``, a SAPLMA-style folder of ``<topic>_true_false.csv``, or one CSV.

    ``topic`` names the topic of a CSV without a topic column (default: from its file name);
    ``polarity`` keeps ``all`` statements, only the ``affirmative`` or only the ``negated`` ones.
    A statement that rows label both true and false is a ``DatasetError``; ``drop_conflicts``
    removes all its rows instead (with a warning). The built-in set has none. ``per_topic`` keeps about
    that many statements of each topic (see :func:`load_builtin` and :meth:`StatementSet.subset`).
    """
    if polarity not in POLARITY_CHOICES:
        raise DatasetError(f"{source}: unknown polarity {polarity!r}; choose from {list(POLARITY_CHOICES)}")
    if str(source) == "builtin":
        dataset = load_builtin(polarity=polarity, per_topic=per_topic)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            dataset = load_folder(path, drop_conflicts)
        elif path.is_file():
            dataset = load_csv_file(path, default_topic=topic, drop_conflicts=drop_conflicts)
        else:
            raise DatasetError(
                f"{path}: no such file or folder. Pass 'builtin', a folder of "
                f"<topic>{SAPLMA_SUFFIX} files, or a CSV with columns statement,label[,topic]."
            )
        dataset = dataset.with_polarity(polarity)
        if per_topic is not None:
            dataset = dataset.subset(per_topic=per_topic)
    return dataset.drop_duplicates() if drop_duplicates else dataset
