"""The sidebar's statement set: built-in, a folder or CSV inside the allowed data folders, or an upload,
each parsed once (``st.cache_data``); a set that cannot be used keeps the previous one."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from probing import DatasetError, StatementSet, load_dataset
from probing.constants import POLARITY_CHOICES
from probing.dashboard.settings import (
    app_arguments, data_roots, default_per_topic, path_under_roots, statement_sets_under,
)
from probing.data.builtin import load_builtin
from probing.data.statements import load_csv_bytes

APP_ROOT = Path(__file__).resolve().parents[1]
OTHER_PATH = "Other path…"


@st.cache_data(show_spinner=False, max_entries=8)
def _builtin(per_topic: int | None, polarity: str) -> StatementSet:
    return load_builtin(per_topic=per_topic or None, polarity=polarity)


@st.cache_data(show_spinner=False, max_entries=8)
def _from_path(path: str, drop_conflicts: bool) -> StatementSet:
    return load_dataset(path, drop_conflicts=drop_conflicts)


@st.cache_data(show_spinner=False, max_entries=8)
def _from_upload(name: str, content: bytes, drop_conflicts: bool) -> StatementSet:
    """Parsed in memory: an upload is never written to disk, so nothing is left behind."""
    return load_csv_bytes(Path(name).name, content, source=f"upload:{Path(name).name}",
                          drop_conflicts=drop_conflicts)


def dataset_from_sidebar(busy: bool) -> StatementSet | None:
    st.sidebar.subheader("Statements")
    source = st.sidebar.radio("Source", ["Built-in", "Folder", "Upload CSV"], horizontal=True,
                              key="dataset_source", disabled=busy,
                              help="Built-in: six topics generated from fact tables. Folder: SAPLMA "
                                   "format, one <topic>_true_false.csv per topic. CSV: columns "
                                   "statement,label[,topic].")
    try:
        if source == "Built-in":
            if "per_topic" not in st.session_state:
                st.session_state["per_topic"] = default_per_topic() or 0
            per_topic = st.sidebar.number_input("Statements per topic (0 = all)", min_value=0, max_value=2000,
                                                step=20, key="per_topic", disabled=busy)
            dataset = _builtin(int(per_topic) or None, _polarity_choice(busy))
        elif source == "Folder":
            dataset = _dataset_from_folder(busy)
            if dataset is None:
                return st.session_state.get("last_dataset")
        else:
            upload = st.sidebar.file_uploader("CSV file", type=["csv"], key="dataset_upload", disabled=busy)
            if upload is None:
                st.sidebar.info("Upload a CSV with columns statement,label[,topic].")
                return st.session_state.get("last_dataset")
            dataset = _from_upload(upload.name, upload.getvalue(), _drop_conflicts_choice(busy))
        if source != "Built-in" and len(dataset.polarities) > 1:
            dataset = dataset.with_polarity(_polarity_choice(busy))
    except DatasetError as error:
        st.sidebar.error(f"Cannot use this statement set: {error}")
        previous = st.session_state.get("last_dataset")
        if previous is not None:
            st.sidebar.caption(f"Still using the previous set ({previous.name}, {len(previous):,} statements).")
        return previous
    st.session_state["last_dataset"] = dataset
    if dataset.dropped_conflicts:
        st.sidebar.warning(f"Dropped: {dataset.dropped_conflicts.describe(shown=2)}.")
    polarity = " and ".join(dataset.polarities)
    st.sidebar.caption(f"{dataset.name}: {len(dataset):,} {polarity} statements, {len(dataset.topics)} topics")
    return dataset


def _polarity_choice(busy: bool) -> str:
    return st.sidebar.radio("Polarity", POLARITY_CHOICES, horizontal=True, key="polarity", disabled=busy,
                            help="Affirmative: 'Paris is in Japan.'; negated: 'Paris is not in Japan.' "
                                 "(true). Probes that read affirmation rather than truth flip on negated ones.")


def _drop_conflicts_choice(busy: bool) -> bool:
    return st.sidebar.checkbox("Drop conflicting statements", key="drop_conflicts", disabled=busy,
                               help="Remove every row of a statement that the set labels both true and false. "
                                    "Without it such a set is refused: it could train on a statement as true "
                                    "and test on it as false (the command line's --drop-conflicts).")


def _dataset_from_folder(busy: bool) -> StatementSet | None:
    """A folder or CSV inside the allowed data roots: picked from those found there, or typed."""
    roots = data_roots(APP_ROOT, app_arguments(sys.argv[1:]).data_root)
    found = [str(path) for path in statement_sets_under(roots)]
    choice = st.sidebar.selectbox("Statement set", [*found, OTHER_PATH], key="dataset_found", disabled=busy,
                                  help="Folders of <topic>_true_false.csv files and CSV files found in: "
                                       + (", ".join(map(str, roots)) or "no data folder"))
    path = choice
    if choice == OTHER_PATH:
        path = st.sidebar.text_input("Folder or CSV path", key="dataset_path", disabled=busy,
                                     placeholder=str(roots[0] / "my_set.csv") if roots else "data/my_set.csv").strip()
        st.sidebar.caption("Readable folders: " + (", ".join(f"`{r}`" for r in roots) or "none")
                           + ". Start the app with `-- --data-root DIR` (or PROBING_DATA_ROOTS) to add one.")
        if not path:
            return None
    return _from_path(str(path_under_roots(path, roots)), _drop_conflicts_choice(busy))
