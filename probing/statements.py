"""Statement sets: true/false statements with a topic, loaded from CSV files.

A statement set is a table with at least the columns ``statement`` (text),
``label`` (1 = true, 0 = false) and ``topic``; any extra columns a source
provides (subject, relation, object, ...) are kept.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("statement", "label")
SAPLMA_SUFFIX = "_true_false.csv"
_LABEL_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0}


class DatasetError(ValueError):
    """A statement file or folder that cannot be used, with what to fix."""


@dataclass(frozen=True)
class Duplicates:
    """Statements that occur more than once: text -> 1-based data line numbers."""

    where: dict[str, list[int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Rows that are repeats of an earlier row."""
        return sum(len(lines) - 1 for lines in self.where.values())


@dataclass
class StatementSet:
    """True/false statements with topics; ``frame`` has statement, label, topic, extras."""

    frame: pd.DataFrame
    name: str
    source: str = ""
    duplicates: Duplicates = field(default_factory=Duplicates)

    def __post_init__(self) -> None:
        missing = [c for c in ("statement", "label", "topic") if c not in self.frame]
        if missing:
            raise DatasetError(f"{self.name}: statement set lacks column(s) {missing}")
        self.frame = self.frame.reset_index(drop=True)
        self.frame["label"] = self.frame["label"].astype(int)
        self.frame["topic"] = self.frame["topic"].astype(str)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def statements(self) -> list[str]:
        return self.frame["statement"].tolist()

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].to_numpy(copy=True)

    @property
    def topics(self) -> list[str]:
        """Topics in order of first appearance."""
        return list(dict.fromkeys(self.frame["topic"]))

    def fingerprint(self) -> str:
        """SHA-256 of the statements, labels and topics, in order."""
        digest = hashlib.sha256()
        for text, label, topic in self.frame[["statement", "label", "topic"]].itertuples(index=False):
            digest.update(f"{text}\t{label}\t{topic}\n".encode())
        return digest.hexdigest()

    def summary(self) -> pd.DataFrame:
        """Rows, true and false statements and share true, per topic."""
        grouped = self.frame.groupby("topic", sort=False)["label"]
        table = pd.DataFrame({"rows": grouped.size(), "true": grouped.sum()})
        table["false"] = table["rows"] - table["true"]
        table["share_true"] = (table["true"] / table["rows"]).round(3)
        return table.reset_index()

    def subset(
        self, topics: list[str] | None = None, per_topic: int | None = None, seed: int = 0
    ) -> StatementSet:
        """Keep some topics and/or at most ``per_topic`` rows of each (stratified by label)."""
        frame = self.frame
        if topics is not None:
            unknown = sorted(set(topics) - set(self.topics))
            if unknown:
                raise DatasetError(
                    f"{self.name}: unknown topic(s) {unknown}; this set has {self.topics}"
                )
            frame = frame[frame["topic"].isin(topics)]
        if per_topic is not None:
            rng = np.random.default_rng(seed)
            keep = [
                rng.choice(rows, size=min(len(rows), -(-per_topic // 2)), replace=False)
                for rows in frame.groupby(["topic", "label"], sort=False).indices.values()
            ]
            frame = frame.iloc[np.sort(np.concatenate(keep))]
        return StatementSet(frame.copy(), name=self.name, source=self.source)

    def drop_duplicates(self) -> StatementSet:
        """The same set with repeated statements removed (first occurrence kept)."""
        frame = self.frame.drop_duplicates("statement", keep="first")
        return StatementSet(frame.copy(), name=self.name, source=self.source)

    def to_csv(self, path: str | Path) -> Path:
        """Write ``statement,label,topic`` plus any extra columns."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        columns = ["statement", "label", "topic"]
        columns += [c for c in self.frame.columns if c not in columns]
        self.frame[columns].to_csv(path, index=False)
        return path


def require_topics(dataset: StatementSet, minimum: int = 2) -> None:
    """Category splits hold one topic out, so they need at least two."""
    if len(dataset.topics) < minimum:
        raise DatasetError(
            f"{dataset.name}: category splits need at least {minimum} topics, found "
            f"{dataset.topics}. Add a 'topic' column, load a folder of "
            f"<topic>{SAPLMA_SUFFIX} files, or use a random split instead."
        )


def load_folder(folder: Path) -> StatementSet:
    """A SAPLMA-style folder: one ``<topic>_true_false.csv`` per topic."""
    files = sorted(folder.glob(f"*{SAPLMA_SUFFIX}"))
    if not files:
        found = sorted(p.name for p in folder.glob("*.csv"))[:5]
        raise DatasetError(
            f"{folder}: no <topic>{SAPLMA_SUFFIX} files in this folder"
            + (f" (found {found})" if found else "")
            + ". Name each topic's file <topic>" + SAPLMA_SUFFIX + " or pass one CSV file."
        )
    parts = [_read_statement_csv(f, f.read_bytes(), default_topic=f.name[: -len(SAPLMA_SUFFIX)]) for f in files]
    frame = pd.concat([p for p, _ in parts], ignore_index=True)
    where: dict[str, list[int]] = {}
    for _, dup in parts:
        where.update(dup.where)
    return StatementSet(frame, name=folder.name, source=str(folder), duplicates=Duplicates(where))


def load_csv_file(path: Path, default_topic: str | None = None) -> StatementSet:
    """One CSV with columns statement,label[,topic]; without a topic column the file name gives it."""
    return load_csv_bytes(path, path.read_bytes(), topic=default_topic, source=str(path))


def load_csv_bytes(name: str | Path, content: bytes, *, topic: str | None = None, source: str = "") -> StatementSet:
    """A statement set from the bytes of one CSV (an upload, say) without writing them anywhere.

    ``name`` is the file name: it names the set, appears in error messages and, without a
    ``topic`` column or argument, gives the topic (``<topic>_true_false.csv``, else its stem).
    """
    name = Path(name)
    default_topic = topic or (name.name[: -len(SAPLMA_SUFFIX)] if name.name.endswith(SAPLMA_SUFFIX) else name.stem)
    frame, duplicates = _read_statement_csv(name, content, default_topic=default_topic)
    return StatementSet(frame, name=name.stem, source=source, duplicates=duplicates)


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(first line number, fields) per record, by the csv module's rules: a quoted field may hold
    line breaks, and only line feeds and carriage returns end a line (not U+2028 and the like, as ``splitlines`` would)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, line = [], 1
    try:
        for fields in reader:
            rows.append((line, fields))
            line = reader.line_num + 1
    except csv.Error as error:
        raise DatasetError(f"{path}: not a readable CSV near line {line} ({error})") from None
    return rows


def _read_statement_csv(path: Path, raw: bytes, default_topic: str) -> tuple[pd.DataFrame, Duplicates]:
    """Validate one CSV's bytes; line numbers in errors are the file's own (header = 1)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"{path}: not a UTF-8 text file (byte {error.start}); save it as UTF-8 CSV"
        ) from None
    if b"\x00" in raw:
        raise DatasetError(f"{path}: this is a binary file, not a CSV; export it as CSV first")
    rows = _csv_rows(path, text)
    if not rows:
        raise DatasetError(f"{path}: the file is empty; expected a header statement,label[,topic]")
    header = [h.strip().lower() for h in rows[0][1]]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(
            f"{path}: missing column(s) {missing} in the header line {rows[0][1]!r}. "
            "The first line must name the columns, e.g. statement,label,topic"
        )
    body = rows[1:]
    if not body:
        raise DatasetError(f"{path}: the header is there but no statements follow")
    problems: list[str] = []
    records = []
    for number, row in body:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            problems.append(f"line {number}: {len(row)} fields, header has {len(header)}")
            continue
        record = dict(zip(header, row))
        statement = record["statement"].strip()
        if not statement or statement.lower() == "nan":
            problems.append(f"line {number}: empty statement")
        label = _LABEL_WORDS.get(record["label"].strip().lower())
        if label is None:
            problems.append(f"line {number}: label {record['label']!r} is not 0, 1, true or false")
        record.update(statement=statement, label=label, _line=number)
        if not (record.get("topic") or "").strip():
            record["topic"] = default_topic
        records.append(record)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DatasetError(f"{path}: {len(problems)} bad row(s): {shown}. Fix or remove these lines.")
    frame = pd.DataFrame.from_records(records)
    lines = frame.pop("_line")
    where = {
        text: lines[group.index].tolist()
        for text, group in frame.groupby("statement", sort=False)
        if len(group) > 1
    }
    return frame, Duplicates(where)
