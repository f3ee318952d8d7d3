"""Where the dashboard reads and writes: results folders, the folders a typed path may lie in."""

import json
import os

import pytest

from probing.dashboard.settings import path_under_roots, results_location
from probing.study.folder import latest_results_folder, new_results_folder, results_folders
from probing.data.statements import DatasetError


def results_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({}))
    return path


def test_new_results_go_to_results_even_when_a_copied_folder_is_opened(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROBING_RESULTS", raising=False)
    assert results_location(None) == (tmp_path / "results", None)
    copied = results_folder(tmp_path / "Downloads" / "llama2-7b")
    assert results_location(str(copied)) == (tmp_path / "results", copied)  # never saved into Downloads/
    monkeypatch.setenv("PROBING_RESULTS", str(tmp_path / "Downloads"))
    assert results_location(None) == (tmp_path / "Downloads", None)  # a folder of folders: listed and saved to
    legacy = results_folder(tmp_path / "results")  # what `reproduce --out results` used to write
    assert results_location(str(legacy)) == (tmp_path / "results", legacy)


def test_results_folders_newest_first_and_the_listed_folder_itself_last(tmp_path):
    root = results_folder(tmp_path / "results")
    old, new = results_folder(root / "old"), results_folder(root / "new")
    (root / "not-a-study").mkdir()
    for age, folder in ((300, old), (200, root), (100, new)):
        stamp = (folder / "config.json").stat().st_mtime - age
        os.utime(folder / "config.json", (stamp, stamp))
    assert results_folders(root) == [new, old, root]
    assert latest_results_folder(root) == new
    assert results_folders(tmp_path / "missing") == []
    with pytest.raises(FileNotFoundError, match="no results folder in .*run `probing reproduce` first"):
        latest_results_folder(tmp_path / "missing")


def test_a_new_results_folder_never_reuses_an_existing_one(tmp_path):
    named = new_results_folder(tmp_path, "embedded", "builtin", "grid", name="my grid/../x")
    assert named == tmp_path / "x"  # a name, never a path
    named.mkdir()
    assert new_results_folder(tmp_path, "embedded", "builtin", "grid", name="x") == tmp_path / "x-2"
    made = new_results_folder(tmp_path, "/models/Llama 2.gguf", "azaria-mitchell", "study")
    assert made.parent == tmp_path and made.name.startswith("Llama-2.gguf-azaria-mitchell-study-")


def test_a_typed_path_must_lie_in_an_allowed_folder(tmp_path):
    allowed = tmp_path / "results"
    inside = results_folder(allowed / "a")
    assert path_under_roots(str(allowed / "b" / ".." / "a"), [allowed]) == inside
    with pytest.raises(DatasetError, match=r"outside the folders this dashboard reads results folders from .*"
                                            r"--results DIR"):
        path_under_roots("/etc", [allowed], what="results folders")
    with pytest.raises(DatasetError, match="--data-root DIR` or PROBING_DATA_ROOTS"):
        path_under_roots(str(allowed / ".." / ".."), [allowed])
