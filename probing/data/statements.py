"""Statement sets: true/false statements with a topic, loaded from CSV files.

A statement set is a table with at least the columns ``statement`` (text),
``label`` (1 = true, 0 = false), ``topic`` and ``polarity`` (``affirmative``, or
``negated`` for "Paris is not in Japan."; affirmative unless the source says so);
any extra columns a source provides (subject, relation, object, ``pair``, ...) are
kept. ``pair`` links a statement and its negation, the pairs CCS trains on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from probing.constants import POLARITIES, POLARITY_CHOICES

REQUIRED_COLUMNS = ("statement", "label")
SAPLMA_SUFFIX = "_true_false.csv"
NEGATED_PREFIX = "neg_"
"""A SAPLMA-format file ``neg_<topic>_true_false.csv`` holds negated statements of ``<topic>``
(as Geometry of Truth names its files: neg_cities, neg_sp_en_trans)."""
_LABEL_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0}
_LABEL_NAMES = ("false", "true")


class DatasetError(ValueError):
    """A statement file or folder that cannot be used, with what to fix."""


class ConflictsDropped(UserWarning):
    """Rows of statements labelled both true and false were removed, as ``drop_conflicts`` asked."""


@dataclass(frozen=True)
class Duplicates:
    """Statements that occur more than once: text -> 1-based data line numbers."""

    where: dict[str, list[int]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        """Rows that are repeats of an earlier row."""
        return sum(len(lines) - 1 for lines in self.where.values())


@dataclass(frozen=True)
class Conflicts:
    """Statements that some rows label true and others false: text -> (file, line, label) of each row."""

    where: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.where)

    @property
    def rows(self) -> int:
        return sum(len(rows) for rows in self.where.values())

    def describe(self, shown: int = 3) -> str:
        """How many, and the first ``shown`` statements with their rows."""
        items = list(self.where.items())
        listed = "; ".join(
            f"{text!r} ({', '.join(f'{file} line {line}: {_LABEL_NAMES[label]}' for file, line, label in rows)})"
            for text, rows in items[:shown])
        more = f"; ... {len(items) - shown} more" if len(items) > shown else ""
        return f"{len(items)} statement(s) labelled both true and false, on {self.rows} rows: {listed}{more}"


@dataclass
class StatementSet:
    """True/false statements with topics; ``frame`` has statement, label, topic, polarity, extras.

    ``dropped_conflicts``: the statements labelled both true and false whose rows were removed at loading."""

    frame: pd.DataFrame
    name: str
    source: str = ""
    duplicates: Duplicates = field(default_factory=Duplicates)
    dropped_conflicts: Conflicts = field(default_factory=Conflicts)

    def __post_init__(self) -> None:
        missing = [c for c in ("statement", "label", "topic") if c not in self.frame]
        if missing:
            raise DatasetError(f"{self.name}: statement set lacks column(s) {missing}")
        self.frame = self.frame.reset_index(drop=True)
        self.frame["label"] = self.frame["label"].astype(int)
        self.frame["topic"] = self.frame["topic"].astype(str).str.strip()  # " animals" is "animals"
        if "polarity" not in self.frame:
            self.frame["polarity"] = POLARITIES[0]
        polarity = self.frame["polarity"].astype(str).str.strip().str.lower()
        unknown = sorted(set(polarity) - set(POLARITIES))
        if unknown:
            raise DatasetError(f"{self.name}: polarity value(s) {unknown}; each statement's polarity must be "
                               f"one of {list(POLARITIES)}")
        self.frame["polarity"] = polarity

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

    @property
    def polarities(self) -> list[str]:
        """The polarities present, affirmative first."""
        present = set(self.frame["polarity"])
        return [p for p in POLARITIES if p in present]

    def fingerprint(self) -> str:
        """SHA-256 of the statements, labels and topics, in order; with the polarities too in a set
        that has negated statements (a set without any hashes as it did before polarity existed)."""
        digest = hashlib.sha256()
        if "negated" in self.polarities:
            rows = self.frame[["statement", "label", "topic", "polarity"]].itertuples(index=False)
            for text, label, topic, polarity in rows:
                digest.update(f"{text}\t{label}\t{topic}\t{polarity}\n".encode())
        else:
            for text, label, topic in self.frame[["statement", "label", "topic"]].itertuples(index=False):
                digest.update(f"{text}\t{label}\t{topic}\n".encode())
        return digest.hexdigest()

    def with_polarity(self, which: str) -> StatementSet:
        """The statements of one polarity (``affirmative`` or ``negated``), or all of them (``all``)."""
        if which not in POLARITY_CHOICES:
            raise DatasetError(f"{self.name}: unknown polarity {which!r}; choose from {list(POLARITY_CHOICES)}")
        if which == "all":
            return self
        if which not in self.polarities:
            raise DatasetError(
                f"{self.name}: no {which} statements; this set has only {' and '.join(self.polarities)} ones. "
                "Give each statement's polarity in a polarity column (a SAPLMA folder: negated statements in "
                f"{NEGATED_PREFIX}<topic>{SAPLMA_SUFFIX} files), or choose polarity 'all'."
            )
        frame = self.frame[self.frame["polarity"] == which]
        kept = set(frame["statement"])
        duplicates = Duplicates({text: lines for text, lines in self.duplicates.where.items() if text in kept})
        return StatementSet(frame.copy(), name=self.name, source=self.source, duplicates=duplicates,
                            dropped_conflicts=self.dropped_conflicts)

    def pairs(self) -> np.ndarray:
        """Row indices (affirmative, negated) of each statement and its negation: the rows that share
        a ``pair`` id, one of each polarity. Ids without both are left out; shape (n_pairs, 2)."""
        how = ("CCS needs pairs of a statement and its negation: a 'pair' column with the same id on a "
               "statement and its negation (the built-in set has one)")
        if "pair" not in self.frame:
            raise DatasetError(f"{self.name}: no 'pair' column. {how}")
        ids = self.frame["pair"]
        marked = self.frame[ids.notna() & (ids.astype(str).str.strip() != "")]
        affirmative, negated = (marked[marked["polarity"] == p] for p in POLARITIES)
        crowded = sorted({*affirmative["pair"][affirmative["pair"].duplicated()],
                          *negated["pair"][negated["pair"].duplicated()]}, key=str)
        if crowded:
            shown = ", ".join(repr(i) for i in crowded[:5])
            raise DatasetError(f"{self.name}: {len(crowded)} pair id(s) name more than one statement of one "
                               f"polarity ({shown}); a pair is one statement and its negation")
        negated_row = pd.Series(negated.index, index=negated["pair"].to_numpy())
        affirmative = affirmative[affirmative["pair"].isin(negated_row.index)]
        if affirmative.empty:
            raise DatasetError(f"{self.name}: no pair id is on both an affirmative and a negated statement. {how}")
        return np.column_stack([affirmative.index, negated_row[affirmative["pair"]].to_numpy()]).astype(np.int64)

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
        """Keep some topics and/or at most ``per_topic`` rows of each (stratified by polarity and label)."""
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
            share = -(-per_topic // (2 * len(self.polarities)))
            keep = [
                rng.choice(rows, size=min(len(rows), share), replace=False)
                for rows in frame.groupby(["topic", "polarity", "label"], sort=False).indices.values()
            ]
            frame = frame.iloc[np.sort(np.concatenate(keep))]
        return StatementSet(frame.copy(), name=self.name, source=self.source,
                            dropped_conflicts=self.dropped_conflicts)

    def drop_duplicates(self) -> StatementSet:
        """The same set with repeated statements removed (first occurrence kept)."""
        frame = self.frame.drop_duplicates("statement", keep="first")
        return StatementSet(frame.copy(), name=self.name, source=self.source,
                            dropped_conflicts=self.dropped_conflicts)

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


def _topic_and_polarity(file_name: str) -> tuple[str, str]:
    """``<topic>_true_false.csv`` holds affirmative statements, ``neg_<topic>_true_false.csv`` negated ones."""
    topic = file_name[: -len(SAPLMA_SUFFIX)]
    if topic.startswith(NEGATED_PREFIX) and len(topic) > len(NEGATED_PREFIX):
        return topic[len(NEGATED_PREFIX):], "negated"
    return topic, "affirmative"


def load_folder(folder: Path, drop_conflicts: bool = False) -> StatementSet:
    """A SAPLMA-style folder: one ``<topic>_true_false.csv`` per topic, and ``neg_<topic>_true_false.csv``
    for negated statements of a topic (polarity ``negated``, unless the file has a polarity column).
    A statement labelled both true and false is refused, or with ``drop_conflicts`` all its rows removed."""
    files = sorted(folder.glob(f"*{SAPLMA_SUFFIX}"))
    if not files:
        found = sorted(p.name for p in folder.glob("*.csv"))[:5]
        raise DatasetError(
            f"{folder}: no <topic>{SAPLMA_SUFFIX} files in this folder"
            + (f" (found {found})" if found else "")
            + ". Name each topic's file <topic>" + SAPLMA_SUFFIX + " or pass one CSV file."
        )
    parts = [_read_statement_csv(f, f.read_bytes(), *_topic_and_polarity(f.name)) for f in files]
    frame = pd.concat([p for p, _ in parts], ignore_index=True)
    where: dict[str, list[int]] = {}
    for _, dup in parts:
        where.update(dup.where)
    return _settled(frame, Duplicates(where), folder, drop_conflicts, name=folder.name, source=str(folder))


def load_csv_file(path: Path, default_topic: str | None = None, drop_conflicts: bool = False) -> StatementSet:
    """One CSV with columns statement,label[,topic]; without a topic column the file name gives it."""
    return load_csv_bytes(path, path.read_bytes(), topic=default_topic, source=str(path),
                          drop_conflicts=drop_conflicts)


def load_csv_bytes(name: str | Path, content: bytes, *, topic: str | None = None, source: str = "",
                   drop_conflicts: bool = False) -> StatementSet:
    """A statement set from the bytes of one CSV (an upload, say) without writing them anywhere.

    ``name`` is the file name: it names the set, appears in error messages and, without a
    ``topic`` column or argument, gives the topic (``<topic>_true_false.csv``, else its stem);
    without a ``polarity`` column, ``neg_<topic>_true_false.csv`` holds negated statements.
    A statement labelled both true and false is refused, or with ``drop_conflicts`` all its rows removed.
    """
    name = Path(name)
    file_topic, polarity = (_topic_and_polarity(name.name) if name.name.endswith(SAPLMA_SUFFIX)
                            else (name.stem, "affirmative"))
    frame, duplicates = _read_statement_csv(name, content, topic or file_topic, polarity)
    return _settled(frame, duplicates, name, drop_conflicts, name=name.stem, source=source)


def _settled(frame: pd.DataFrame, duplicates: Duplicates, where: Path, drop: bool, *, name: str,
             source: str) -> StatementSet:
    """The set of ``frame`` (rows of :func:`_read_statement_csv`): a statement that rows label both true
    and false (it could be trained on as true and tested as false) is a ``DatasetError`` listing them,
    or with ``drop`` a ``ConflictsDropped`` warning and all its rows gone."""
    origin = frame.pop("_file"), frame.pop("_line")
    labels = frame.groupby("statement", sort=False)["label"].nunique()
    conflicting = frame["statement"].isin(labels.index[labels > 1])
    if not conflicting.any():
        return StatementSet(frame, name=name, source=source, duplicates=duplicates)
    where_rows: dict[str, list[tuple[str, int, int]]] = {}
    for text, file, line, label in zip(frame["statement"][conflicting], origin[0][conflicting],
                                       origin[1][conflicting], frame["label"][conflicting]):
        where_rows.setdefault(text, []).append((file, int(line), int(label)))
    conflicts = Conflicts(where_rows)
    if not drop:
        raise DatasetError(
            f"{where}: {conflicts.describe()}. Fix their labels, or remove every row of these statements: "
            "--drop-conflicts on the command line, drop_conflicts=True in Python, 'Drop conflicting statements' "
            "in the dashboard's sidebar.")
    warnings.warn(ConflictsDropped(f"{where}: removed all rows of {conflicts.describe()} (drop_conflicts)"),
                  stacklevel=3)
    kept = Duplicates({text: lines for text, lines in duplicates.where.items() if text not in conflicts.where})
    return StatementSet(frame[~conflicting], name=name, source=source, duplicates=kept, dropped_conflicts=conflicts)


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


def _read_statement_csv(
    path: Path, raw: bytes, default_topic: str, default_polarity: str = "affirmative"
) -> tuple[pd.DataFrame, Duplicates]:
    """Validate one CSV's bytes; line numbers in errors are the file's own (header = 1).
    Without a polarity column every statement gets ``default_polarity``. Each row's file name and
    line are in the columns ``_file`` and ``_line``, which :func:`_settled` takes away."""
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
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DatasetError(f"{path}: column(s) {repeated} appear more than once in the header line {rows[0][1]!r}; "
                           "which one holds the data is ambiguous. Rename or remove the extra column(s).")
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
        if "polarity" in record:
            polarity = record["polarity"].strip().lower()
            if polarity not in POLARITIES:
                problems.append(f"line {number}: polarity {record['polarity']!r} is not "
                                + " or ".join(POLARITIES))
            record["polarity"] = polarity
        record.update(statement=statement, label=label, _line=number)
        if not (record.get("topic") or "").strip():
            record["topic"] = default_topic
        records.append(record)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise DatasetError(f"{path}: {len(problems)} bad row(s): {shown}. Fix or remove these lines.")
    frame = pd.DataFrame.from_records(records)
    if "polarity" not in frame:
        frame["polarity"] = default_polarity
    where = {
        text: frame["_line"][group.index].tolist()
        for text, group in frame.groupby("statement", sort=False)
        if len(group) > 1
    }
    frame["_file"] = path.name  # where each row came from, for conflicts between files
    return frame, Duplicates(where)
