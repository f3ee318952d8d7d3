"""Damaged models and contradictory statement sets are found, never turned into wrong numbers.

Real files throughout: copies of the embedded model's GGUF and of its converted folder, the
SAPLMA folder, and CSV files written here.
"""

import csv
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import require_saplma
from probing.store.activations import Activations
from probing.data.builtin import load_builtin
from probing.study.config import StudyConfig
from probing.data.datasets import load_dataset
from probing.model.conversion import CONVERTED_DIGESTS
from probing.model.fingerprint import fingerprint_of, models_dir
from probing.model.loading import ModelSpec, load_model
from probing.model.sources import embedded_gguf_path, resolve_source
from probing.data.statements import ConflictsDropped, DatasetError, load_csv_bytes
from probing.housekeeping import CacheRepaired
from probing.study.assemble import as_run, study_meta

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TEXTS = ["The city of Paris is located in France.", "The chemical symbol for gold is Fe."]
SAPLMA_CONFLICTS = "15 statement(s) labelled both true and false, on 30 rows"


def hidden_states(model: torch.nn.Module, tokenizer, texts: list[str]) -> torch.Tensor:
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return torch.stack(model(**inputs, output_hidden_states=True).hidden_states).float()


def flip_sign(weights: Path, tensor: str) -> None:
    """Negate one float32 tensor of a safetensors file in place (the file's size stays)."""
    with weights.open("rb") as handle:
        (header_size,) = struct.unpack("<Q", handle.read(8))
        entry = json.loads(handle.read(header_size))[tensor]
    assert entry["dtype"] == "F32"
    start, end = entry["data_offsets"]
    bits = np.memmap(weights, dtype="<u4", mode="r+", offset=8 + header_size + start, shape=((end - start) // 4,))
    bits ^= np.uint32(0x80000000)
    bits.flush()
    del bits


# ----------------------------------------------------------------------------- models


def test_a_damaged_converted_model_is_converted_again(model, tmp_path, monkeypatch):
    name = resolve_source("embedded").identity(None).replace(":", "-")
    genuine = models_dir() / name
    assert (genuine / CONVERTED_DIGESTS).is_file()  # the model fixture loaded it: its digests are recorded
    copy = tmp_path / "models" / name
    shutil.copytree(genuine, copy)  # a model cache of our own, without converting the GGUF first
    monkeypatch.setenv("PROBING_MODELS", str(copy.parent))
    flip_sign(copy / "model.safetensors", "model.layers.3.mlp.down_proj.weight")

    from transformers import AutoModelForCausalLM

    expected = hidden_states(model.model, model.tokenizer, TEXTS)
    damaged = AutoModelForCausalLM.from_pretrained(copy, dtype=model.dtype)
    assert (hidden_states(damaged, model.tokenizer, TEXTS) - expected).abs().max() > 1  # what it would read
    del damaged

    with pytest.warns(CacheRepaired, match=rf"the converted model in {re.escape(str(copy))} cannot be trusted "
                                           r"\(model\.safetensors differ from the files recorded at its conversion\)"
                                           r": converting SmolLM2-135M-Instruct\.Q4_1\.gguf again"):
        repaired = load_model("embedded")
    assert repaired.fingerprint == model.fingerprint
    torch.testing.assert_close(hidden_states(repaired.model, repaired.tokenizer, TEXTS), expected)
    assert json.loads((copy / CONVERTED_DIGESTS).read_text()) == json.loads((genuine / CONVERTED_DIGESTS).read_text())
    assert sorted(path.name for path in copy.parent.iterdir()) == [name, f"{name}.lock"]  # nothing left behind
    shutil.rmtree(copy.parent)  # 540 MB that pytest would keep for its last three runs


def test_a_gguf_damaged_in_place_with_its_size_and_mtime_kept_is_detected(tmp_path):
    gguf = tmp_path / "model.gguf"
    shutil.copyfile(embedded_gguf_path(), gguf)
    hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(gguf, ns=(hour_ago, hour_ago))
    spec = ModelSpec(str(gguf), device="cpu", dtype="float32")
    genuine = ModelSpec("embedded", device="cpu", dtype="float32").fingerprint()
    assert spec.fingerprint() == genuine

    before = gguf.stat()
    with gguf.open("r+b") as handle:  # one byte, a third of the way in
        handle.seek(before.st_size // 3)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(gguf, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = gguf.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    code = ("import sys; from probing.model.loading import ModelSpec; "
            "print(ModelSpec(sys.argv[1], device='cpu', dtype='float32').fingerprint())")
    run = subprocess.run([sys.executable, "-c", code, str(gguf)], cwd=ROOT, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with gguf.open("rb") as handle:
        sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    assert run.stdout.strip() == fingerprint_of(f"gguf:{sha256[:24]}", "float32", "cpu") != genuine
    gguf.unlink()  # 100 MB that pytest would keep for its last three runs


# ----------------------------------------------------------------------------- statements labelled both ways


def test_saplma_conflicts_are_an_error_that_lists_them_by_file_and_line():
    folder = require_saplma()
    with pytest.raises(DatasetError) as raised:
        load_dataset(folder)
    message = str(raised.value)
    assert message.startswith(f"{folder}: {SAPLMA_CONFLICTS}: 'Gibraltar is a name of a city.' "
                              "(capitals_true_false.csv line 117: true, capitals_true_false.csv line 1170: false)")
    assert "; ... 12 more. Fix their labels" in message and "--drop-conflicts" in message
    lines = (folder / "capitals_true_false.csv").read_text().splitlines()
    assert lines[116] == "Gibraltar is a name of a city.,1" and lines[1169] == "Gibraltar is a name of a city.,0"


def test_drop_conflicts_warns_and_removes_every_row_of_them():
    folder = require_saplma()
    raw = [row for path in sorted(folder.glob("*.csv")) for row in list(csv.reader(path.open()))[1:]]
    labels: dict[str, set[int]] = {}
    for text, label in raw:
        labels.setdefault(text.strip(), set()).add(int(label))
    both = {text for text, found in labels.items() if len(found) > 1}
    assert len(raw) == 6084 and len(both) == 15
    with pytest.warns(ConflictsDropped, match=rf"removed all rows of {re.escape(SAPLMA_CONFLICTS)}"):
        dataset = load_dataset(folder, drop_conflicts=True)
    assert len(dataset) == 6084 - 30 and not both & set(dataset.statements)
    assert set(dataset.dropped_conflicts.where) == both and dataset.dropped_conflicts.rows == 30
    assert dataset.frame.groupby("statement")["label"].nunique().max() == 1
    assert dataset.subset(per_topic=10).dropped_conflicts == dataset.dropped_conflicts


def test_conflicts_across_files_and_topics_are_found(tmp_path):
    (tmp_path / "cities_true_false.csv").write_text("statement,label\nParis is in France.,1\nRome is in Peru.,0\n"
                                                    "Oslo is in Norway.,1\n")
    (tmp_path / "trivia_true_false.csv").write_text("statement,label\nOslo is in Norway.,1\nRome is in Peru.,1\n"
                                                    "Cats bark.,0\n")
    with pytest.raises(DatasetError, match=re.escape(
            f"{tmp_path}: 1 statement(s) labelled both true and false, on 2 rows: 'Rome is in Peru.' "
            "(cities_true_false.csv line 3: false, trivia_true_false.csv line 3: true). Fix their labels")):
        load_dataset(tmp_path)
    with pytest.warns(ConflictsDropped):
        dataset = load_dataset(tmp_path, drop_conflicts=True)
    # A statement repeated with the same label is no conflict: it stays (duplicates are another option).
    assert dataset.statements == ["Paris is in France.", "Oslo is in Norway.", "Oslo is in Norway.", "Cats bark."]
    assert dataset.topics == ["cities", "trivia"]


def test_an_uploaded_csv_with_conflicts_is_refused_unless_they_are_dropped():
    content = b"statement,label,topic\nWater is wet.,1,t\nFire is cold.,0,t\nWater is wet.,false,u\n"
    with pytest.raises(DatasetError, match=re.escape(
            "up.csv: 1 statement(s) labelled both true and false, on 2 rows: 'Water is wet.' "
            "(up.csv line 2: true, up.csv line 4: false)")):
        load_csv_bytes("up.csv", content)
    with pytest.warns(ConflictsDropped, match="up.csv: removed all rows of 1 statement"):
        assert load_csv_bytes("up.csv", content, drop_conflicts=True).statements == ["Fire is cold."]


def test_the_built_in_set_has_no_conflicts():
    full = load_builtin()
    assert len(full) > 10_000 and full.frame.groupby("statement")["label"].nunique().max() == 1
    assert not load_dataset("builtin").dropped_conflicts


def test_the_command_line_refuses_conflicts_and_drops_them_with_its_flag(tmp_path):
    folder = require_saplma()

    def data(*options: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "probing", "data", "--dataset", str(folder), *options],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)

    refused = data("--out", str(tmp_path / "all.csv"))
    assert refused.returncode == 2 and not (tmp_path / "all.csv").exists()
    assert refused.stderr.startswith(f"error: {folder}: {SAPLMA_CONFLICTS}")
    dropped = data("--drop-conflicts", "--out", str(tmp_path / "all.csv"))
    assert dropped.returncode == 0, dropped.stderr
    assert f"warning: {folder}: removed all rows of {SAPLMA_CONFLICTS}" in dropped.stderr
    assert "6054 statements written" in dropped.stdout


def test_a_results_folder_records_that_conflicts_were_dropped(saplma, model, tmp_path):
    activations = Activations(model=model, cache_dir=tmp_path)
    assert StudyConfig(drop_conflicts=True).to_dict()["drop_conflicts"] is True
    # The dashboard's pages build a config without it: what the statements are decides.
    assert as_run(StudyConfig(), saplma, activations).drop_conflicts is True
    assert study_meta(saplma, activations)["dataset"]["conflicting_rows_dropped"] == 30
    assert as_run(StudyConfig(), load_builtin(per_topic=10), activations).drop_conflicts is False
    older = StudyConfig().to_dict()
    del older["drop_conflicts"]  # a config.json written before the option existed
    assert StudyConfig.from_dict(older).drop_conflicts is False


# ----------------------------------------------------------------------------- topics and headers


def test_topics_differing_only_by_surrounding_spaces_are_one_topic(tmp_path):
    path = tmp_path / "spaced.csv"
    path.write_text('statement,label,topic\nA cat is a mammal.,1,animals\nA cat is a fish.,0," animals "\n'
                    "Gold is Au.,1,elements\t\nGold is Fe.,0,elements\n")
    dataset = load_dataset(path)
    assert dataset.topics == ["animals", "elements"]
    assert dataset.summary()["rows"].tolist() == [2, 2]


@pytest.mark.parametrize(("header", "repeated"), [
    ("statement,label,label", "['label']"),
    ("statement,label,topic, Topic ", "['topic']"),
    ("statement,statement,label,label", "['label', 'statement']"),
])
def test_a_header_with_a_repeated_column_is_refused(tmp_path, header, repeated):
    path = tmp_path / "repeated.csv"
    path.write_text(f"{header}\n" + ",".join(["Paris is in France."] + ["1"] * (header.count(",") or 1)) + "\n")
    with pytest.raises(DatasetError, match=rf"{re.escape(str(path))}: column\(s\) {re.escape(repeated)} appear more "
                                           r"than once in the header line .*Rename or remove the extra column"):
        load_dataset(path)
