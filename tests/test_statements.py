import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from probing.data.builtin import load_builtin
from probing.data.datasets import load_dataset
from probing.data.statements import DatasetError, load_csv_bytes, require_topics

CSV_HEADER = "statement,label,topic\n"


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_saplma_folder_loads_six_topics_with_counts(saplma):
    assert len(saplma) == 6054  # 6,084 rows less the 30 of statements labelled both true and false
    summary = saplma.summary().set_index("topic")
    assert summary.loc["capitals", "rows"] == 1458 - 28
    assert summary.loc["inventions", "true"] == 464
    assert sorted(saplma.topics) == ["animals", "capitals", "companies", "elements", "facts", "inventions"]
    assert set(saplma.frame["label"]) == {0, 1}


def test_duplicates_reported_and_dropped_only_on_request(saplma):
    # 34 repeats in the files (18 in capitals and 14 in facts, per the data's README, and 2 more);
    # the 15 of statements labelled both true and false are dropped with all their rows.
    assert saplma.duplicates.count == 34 - 15
    assert len(saplma) == 6054
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
    """probing.data.datasets sits above both: loading one of them imports neither the other's loader nor it."""
    code = ("import sys\n"
            "import probing.data.statements\n"
            "assert not {'probing.data.builtin', 'probing.data.datasets'} & set(sys.modules), sorted(sys.modules)\n"
            "import probing.data.builtin\n"
            "assert 'probing.data.datasets' not in sys.modules\n"
            "from probing.data.builtin.generator import load_builtin\n"
            "from probing.data.builtin import load_builtin as exported\n"
            "assert exported is load_builtin\n")
    finished = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr


# ------------------------------------------------------------------ polarity and pairs


def test_every_set_has_a_polarity_and_sets_without_negations_keep_their_fingerprint(saplma, tmp_path):
    # The real SAPLMA data has no negated statements: all affirmative, hashed as before polarity existed.
    assert saplma.polarities == ["affirmative"] and set(saplma.frame["polarity"]) == {"affirmative"}
    digest = hashlib.sha256()
    for text, label, topic in zip(saplma.statements, saplma.labels, saplma.frame["topic"]):
        digest.update(f"{text}\t{label}\t{topic}\n".encode())
    assert saplma.fingerprint() == digest.hexdigest()
    # Marking a statement negated is part of what the data is.
    path = write(tmp_path, "p.csv", "statement,label,topic,polarity\nA.,1,t,affirmative\nB.,0,t,affirmative\n")
    marked = load_dataset(path)
    assert marked.fingerprint() == load_dataset(write(tmp_path, "q.csv", CSV_HEADER + "A.,1,t\nB.,0,t\n")).fingerprint()
    path.write_text("statement,label,topic,polarity\nA.,1,t,affirmative\nB.,0,t,negated\n")
    assert load_dataset(path).fingerprint() != marked.fingerprint()


def test_csv_polarity_column_is_read_case_insensitively(tmp_path):
    path = write(tmp_path, "mine.csv", "statement,label,topic,Polarity\n"
                 "Paris is in France.,1,geo,affirmative\nParis is not in France.,0,geo,Negated\n"
                 "Paris is not in Peru.,1,geo, NEGATED \n")
    dataset = load_dataset(path)
    assert dataset.frame["polarity"].tolist() == ["affirmative", "negated", "negated"]
    assert dataset.polarities == ["affirmative", "negated"]
    assert load_dataset(path, polarity="negated").statements == ["Paris is not in France.", "Paris is not in Peru."]
    again = load_dataset(dataset.to_csv(tmp_path / "again.csv"))
    assert again.fingerprint() == dataset.fingerprint()


def test_bad_polarity_names_file_line_and_allowed_values(tmp_path):
    path = write(tmp_path, "bad.csv", "statement,label,topic,polarity\n"
                 "A.,1,t,affirmative\nB.,0,t,negative\nC.,0,t,\nD.,1,t,negated\n")
    with pytest.raises(DatasetError) as error:
        load_dataset(path)
    message = str(error.value)
    assert "bad.csv: 2 bad row(s)" in message
    assert "line 3: polarity 'negative' is not affirmative or negated" in message
    assert "line 4: polarity '' is not affirmative or negated" in message


def test_neg_files_of_a_saplma_folder_hold_negated_statements_of_their_topic(tmp_path):
    folder = tmp_path / "got"
    folder.mkdir()
    write(folder, "cities_true_false.csv", "statement,label\nParis is in France.,1\nParis is in Peru.,0\n")
    write(folder, "neg_cities_true_false.csv", "statement,label\nParis is not in France.,0\nParis is not in Peru.,1\n")
    write(folder, "animals_true_false.csv", "statement,label\nA cat is a mammal.,1\nA cat is a fish.,0\n")
    dataset = load_dataset(folder)
    assert sorted(dataset.topics) == ["animals", "cities"] and dataset.polarities == ["affirmative", "negated"]
    negated = dataset.frame[dataset.frame["polarity"] == "negated"]
    assert negated["statement"].tolist() == ["Paris is not in France.", "Paris is not in Peru."]
    assert set(negated["topic"]) == {"cities"}
    assert load_dataset(folder, polarity="affirmative").polarities == ["affirmative"]
    # The same file uploaded on its own is read the same way.
    upload = load_csv_bytes("neg_cities_true_false.csv", (folder / "neg_cities_true_false.csv").read_bytes())
    assert upload.topics == ["cities"] and upload.polarities == ["negated"]


def test_with_polarity_filters_and_says_what_the_set_has(saplma, tmp_path):
    assert saplma.with_polarity("all") is saplma
    assert saplma.with_polarity("affirmative").fingerprint() == saplma.fingerprint()
    assert saplma.with_polarity("affirmative").duplicates.count == saplma.duplicates.count
    with pytest.raises(DatasetError, match=rf"{re.escape(saplma.name)}: no negated statements; this set has only "
                                           "affirmative ones"):
        saplma.with_polarity("negated")
    with pytest.raises(DatasetError, match=r"unknown polarity 'both'; choose from \['all', 'affirmative', 'negated'\]"):
        saplma.with_polarity("both")
    only_negated = load_dataset(write(tmp_path, "n.csv", "statement,label,polarity\nA is not B.,1,negated\n"))
    with pytest.raises(DatasetError, match="no affirmative statements; this set has only negated"):
        only_negated.with_polarity("affirmative")
    with pytest.raises(DatasetError, match="no negated statements"):
        load_dataset(write(tmp_path, "a.csv", CSV_HEADER + "A.,1,t\n"), polarity="negated")
    with pytest.raises(DatasetError, match="unknown polarity 'neg'"):
        load_dataset("builtin", polarity="neg")


def test_subset_of_a_set_with_negations_is_stratified_by_polarity_too():
    both = load_builtin(topics=["cities", "animals"], per_topic=40)
    small = both.subset(per_topic=8, seed=1)
    counts = small.frame.groupby(["topic", "polarity", "label"]).size()
    assert len(counts) == 8 and (counts == 2).all()


def test_pairs_are_row_indices_of_a_statement_and_its_negation(tmp_path):
    path = write(tmp_path, "pairs.csv", "statement,label,topic,polarity,pair\n"
                 "Paris is in France.,1,geo,affirmative,p1\n"
                 "Paris is in Peru.,0,geo,affirmative,p2\n"
                 "Paris is not in Peru.,1,geo,negated,p2\n"
                 "Rome is in Italy.,1,geo,affirmative,p3\n"
                 "Paris is not in France.,0,geo,negated,p1\n"
                 "Rome is not in Spain.,1,geo,negated,\n")
    dataset = load_dataset(path)
    pairs = dataset.pairs()
    assert pairs.dtype.kind == "i" and pairs.tolist() == [[0, 4], [1, 2]]  # p3 has no negation: left out
    statements = dataset.frame["statement"]
    assert [statements[a] for a, _ in pairs] == ["Paris is in France.", "Paris is in Peru."]
    assert dataset.with_polarity("negated").frame["pair"].tolist() == ["p2", "p1", ""]


def test_pairs_say_what_ccs_needs(saplma, tmp_path):
    with pytest.raises(DatasetError, match=r"no 'pair' column\. CCS needs pairs of a statement and its negation"):
        saplma.pairs()
    lonely = load_dataset(write(tmp_path, "lonely.csv", "statement,label,polarity,pair\n"
                                "A is B.,1,affirmative,x\nC is not D.,1,negated,y\n"))
    with pytest.raises(DatasetError, match="no pair id is on both an affirmative and a negated statement"):
        lonely.pairs()
    crowded = load_dataset(write(tmp_path, "crowded.csv", "statement,label,polarity,pair\n"
                                 "A is B.,1,affirmative,x\nA is C.,0,affirmative,x\nA is not B.,0,negated,x\n"))
    with pytest.raises(DatasetError, match=r"1 pair id\(s\) name more than one statement of one polarity \('x'\)"):
        crowded.pairs()
