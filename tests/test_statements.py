import subprocess
import sys
from pathlib import Path

import pytest

from probing.datasets import load_dataset
from probing.statements import DatasetError, load_csv_bytes, require_topics

CSV_HEADER = "statement,label,topic\n"


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_saplma_folder_loads_six_topics_with_counts(saplma):
    assert len(saplma) == 6084
    summary = saplma.summary().set_index("topic")
    assert summary.loc["capitals", "rows"] == 1458
    assert summary.loc["inventions", "true"] == 464
    assert sorted(saplma.topics) == ["animals", "capitals", "companies", "elements", "facts", "inventions"]
    assert set(saplma.frame["label"]) == {0, 1}


def test_duplicates_reported_and_dropped_only_on_request(saplma):
    assert saplma.duplicates.count >= 32  # 18 in capitals and 14 in facts, per the data's README
    assert len(saplma) == 6084
    deduplicated = saplma.drop_duplicates()
    assert len(deduplicated) == len(set(saplma.statements))


def test_single_csv_with_topics_keeps_extra_columns(tmp_path):
    path = write(tmp_path, "mine.csv", "statement,label,topic,source\n"
                 "Paris is in France.,1,geo,atlas\nParis is in Peru.,false,geo,atlas\n"
                 "Gold is Au.,TRUE,chem,book\n")
    dataset = load_dataset(path)
    assert dataset.frame["label"].tolist() == [1, 0, 1]
    assert dataset.topics == ["geo", "chem"]
    assert dataset.frame["source"].tolist() == ["atlas", "atlas", "book"]


def test_csv_without_topic_takes_its_file_name(tmp_path):
    dataset = load_dataset(write(tmp_path, "animals_true_false.csv", "statement,label\nA cat is a mammal.,1\n"))
    assert dataset.topics == ["animals"]


def test_missing_column_names_file_and_fix(tmp_path):
    path = write(tmp_path, "bad.csv", "sentence,label\nx,1\n")
    with pytest.raises(DatasetError, match=r"bad\.csv: missing column\(s\) \['statement'\]"):
        load_dataset(path)


def test_bad_label_names_line_numbers(tmp_path):
    path = write(tmp_path, "bad.csv", CSV_HEADER + "A.,1,t\nB.,maybe,t\nC.,0,t\nD.,2,t\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    message = str(error.value)
    assert "bad.csv" in message and "2 bad row(s)" in message
    assert "line 3: label 'maybe'" in message and "line 5: label '2'" in message


def test_empty_and_nan_statements_are_rejected_with_lines(tmp_path):
    path = write(tmp_path, "bad.csv", CSV_HEADER + "A.,1,t\n,0,t\nnan,1,t\n")
    with pytest.raises(DatasetError, match=r"line 3: empty statement; line 4: empty statement"):
        load_dataset(path)


def test_binary_file_is_not_a_csv(tmp_path):
    path = write(tmp_path, "data.csv", b"PK\x03\x04\x00\x00binary", mode="wb")
    with pytest.raises(DatasetError, match="not a CSV"):
        load_dataset(path)


def test_wrong_field_count_is_reported(tmp_path):
    path = write(tmp_path, "bad.csv", CSV_HEADER + "A.,1,t,extra\n")
    with pytest.raises(DatasetError, match="line 2: 4 fields, header has 3"):
        load_dataset(path)


def test_one_topic_cannot_make_category_splits(tmp_path):
    dataset = load_dataset(write(tmp_path, "one.csv", CSV_HEADER + "A.,1,t\nB.,0,t\n"))
    with pytest.raises(DatasetError, match=r"category splits need at least 2 topics, found \['t'\]"):
        require_topics(dataset)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no <topic>_true_false.csv files"):
        load_dataset(tmp_path)


def test_subset_is_stratified_and_round_trips_through_csv(saplma, tmp_path):
    small = saplma.subset(topics=["animals", "facts"], per_topic=10)
    assert small.summary()["rows"].tolist() == [10, 10]
    assert small.summary()["true"].tolist() == [5, 5]
    again = load_dataset(small.to_csv(tmp_path / "small.csv"))
    assert again.fingerprint() == small.fingerprint()


def test_quoted_statement_with_a_line_break_is_read_intact(tmp_path):
    path = write(tmp_path, "multi.csv", CSV_HEADER + '"The sky is\nblue.",1,t\nGrass is red.,0,t\n"x",2,t\n')
    with pytest.raises(DatasetError, match="line 5: label '2'"):  # line numbers stay the file's own
        load_dataset(path)
    path.write_text(CSV_HEADER + '"The sky is\nblue.",1,t\r\nGrass is red.,0,t\n')
    assert load_dataset(path).statements == ["The sky is\nblue.", "Grass is red."]


def test_unicode_line_separator_inside_a_field_is_text(tmp_path):
    path = write(tmp_path, "sep.csv", CSV_HEADER + "A\u2028B is true.,1,t\nC\u2029D is false.,0,t\n")
    assert load_dataset(path).statements == ["A\u2028B is true.", "C\u2029D is false."]


def test_csv_bytes_load_like_a_file_without_touching_the_disk(tmp_path):
    content = (CSV_HEADER + "Paris is in France.,1,geo\nParis is in Peru.,0,geo\n").encode()
    from_bytes = load_csv_bytes("upload_true_false.csv", content)
    from_file = load_dataset(write(tmp_path, "upload_true_false.csv", content, mode="wb"))
    assert from_bytes.fingerprint() == from_file.fingerprint() and from_bytes.name == "upload_true_false"
    with pytest.raises(DatasetError, match=r"up\.csv: 1 bad row\(s\): line 2"):
        load_csv_bytes("up.csv", b"statement,label\nA.,yes\n")


def test_statements_and_the_builtin_set_do_not_import_each_others_loader():
    """probing.datasets sits above both: loading one of them imports neither the other's loader nor it."""
    code = ("import sys\n"
            "import probing.statements\n"
            "assert not {'probing.builtin', 'probing.datasets'} & set(sys.modules), sorted(sys.modules)\n"
            "import probing.builtin\n"
            "assert 'probing.datasets' not in sys.modules\n"
            "from probing.builtin.generator import load_builtin\n"
            "from probing.builtin import load_builtin as exported\n"
            "assert exported is load_builtin\n")
    finished = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
