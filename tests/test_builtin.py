"""The built-in statement set: labels against the fact tables, balance, determinism, no surface leak."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest

from probing.builtin import BUILTIN_TOPICS, TEMPLATES, fact_table, load_builtin
from probing.datasets import load_dataset
from probing.statements import DatasetError, StatementSet


@pytest.fixture(scope="module")
def full():
    return load_builtin()


@pytest.fixture(scope="module")
def tables():
    return {topic: fact_table(topic) for topic in BUILTIN_TOPICS}


def true_sets(table: pd.DataFrame) -> dict[tuple[str, str], set[str]]:
    out = {}
    for row in table.itertuples(index=False):
        values = {row.object, *filter(None, row.also_true.split("|"))}
        out.setdefault((row.subject, row.relation), set()).update(values)
    return out


def label_of(frame: pd.DataFrame, statement: str) -> int:
    rows = frame[frame.statement == statement]
    assert len(rows) == 1, f"{statement!r} occurs {len(rows)} times"
    return int(rows.label.iloc[0])


# ------------------------------------------------------------------ shape and basic facts


def test_default_is_the_full_set_with_expected_columns(full):
    assert isinstance(full, StatementSet)
    assert full.name == "builtin" and full.source == "builtin"
    assert len(full) >= 5000
    assert list(full.frame.columns[:6]) == ["statement", "label", "topic", "subject", "relation", "object"]
    assert {"true_object", "template", "group"} <= set(full.frame.columns)
    assert full.topics == list(BUILTIN_TOPICS)
    assert set(full.frame.label.unique()) == {0, 1}
    assert full.frame.label.dtype.kind == "i"
    assert all(s.endswith(".") and s[0].isupper() for s in full.statements)


def test_load_dataset_builtin_gives_the_same_set(full):
    assert load_dataset("builtin").fingerprint() == full.fingerprint()


def test_spot_checks_against_well_known_facts(full):
    f = full.frame

    def facts(subject, relation):
        rows = f[(f.subject == subject) & (f.relation == relation)]
        assert len(rows) == 2 and sorted(rows.label) == [0, 1], (subject, relation)
        return dict(zip(rows.label, rows.object))

    assert facts("Paris", "city_in_country")[1] == "France"
    assert facts("France", "capital")[1] == "Paris"
    assert facts("Japan", "currency")[1] == "Japanese yen"
    assert facts("gold", "symbol")[1] == "Au"
    assert facts("gold", "atomic_number")[1] == "79"
    assert facts("oxygen", "symbol")[1] == "O"
    assert facts("whale", "animal_class")[1] == "mammal"
    assert facts("eagle", "animal_class")[1] == "bird"
    assert facts("newton", "named_after")[1] == "Isaac Newton"
    assert facts("force", "si_unit")[1] == "newton"
    assert facts("Siemens", "headquarters_country")[1] == "Germany"
    # The false partner is a different value of the same relation.
    for subject, relation in [("Paris", "city_in_country"), ("gold", "symbol"), ("whale", "animal_class")]:
        pair = facts(subject, relation)
        assert pair[0] != pair[1]
    templates = {"Paris": "city_in_country", "gold": "symbol", "whale": "animal_class"}
    for subject, relation in templates.items():
        rows = f[(f.subject == subject) & (f.relation == relation)]
        assert rows.template.nunique() == 1  # true and false share a template


def test_spot_check_sentences():
    # Seeds change templates; check the rendered sentence for the true row whatever the template.
    f = load_builtin(topics=["cities", "elements", "animals"]).frame
    paris = f[(f.subject == "Paris") & (f.label == 1)].statement.iloc[0]
    assert "Paris" in paris and "France" in paris
    gold = f[(f.subject == "gold") & (f.relation == "symbol") & (f.label == 1)].statement.iloc[0]
    assert "gold" in gold.lower() and " Au" in gold
    whale = f[(f.subject == "whale") & (f.label == 1)].statement.iloc[0]
    assert "whale" in whale and "mammal" in whale


def test_no_false_statement_is_true_by_any_row_of_the_table(full, tables):
    for topic in BUILTIN_TOPICS:
        truth = true_sets(tables[topic])
        part = full.frame[full.frame.topic == topic]
        for row in part.itertuples(index=False):
            values = truth[(row.subject, row.relation)]
            if row.label == 1:
                assert row.object in values, row.statement
            else:
                assert row.object not in values, f"false statement is true by the table: {row.statement}"
        # every relation of the table occurs in the generated set
        assert set(part.relation) == set(tables[topic].relation)


def test_multi_valued_facts_are_excluded():
    # Switzerland has several official languages; Bolivia two capitals; halogens are nonmetals.
    countries = fact_table("countries")
    swiss = countries[(countries.subject == "Switzerland") & (countries.relation == "official_language")]
    assert {"German", "French", "Italian"} <= {swiss.object.iloc[0], *swiss.also_true.iloc[0].split("|")}
    elements = fact_table("elements")
    chlorine = elements[(elements.subject == "chlorine") & (elements.relation == "category")]
    assert chlorine.object.iloc[0] == "halogen" and "nonmetal" in chlorine.also_true.iloc[0]
    for seed in range(5):
        f = load_builtin(topics=["countries", "elements"], seed=seed).frame
        false = f[f.label == 0]
        swiss_false = false[(false.subject == "Switzerland") & (false.relation == "official_language")]
        assert swiss_false.object.iloc[0] not in {"German", "French", "Italian", "Romansh", "Swiss German"}
        cl = false[(false.subject == "chlorine") & (false.relation == "category")]
        assert cl.object.iloc[0] not in {"halogen", "nonmetal"}


# ------------------------------------------------------------------ balance, duplicates, options


def test_balanced_per_topic_and_no_duplicates(full):
    summary = full.summary().set_index("topic")
    assert ((summary.share_true >= 0.45) & (summary.share_true <= 0.55)).all(), summary
    assert (summary.rows >= 500).all(), summary
    assert not full.frame.statement.duplicated().any()


def test_each_fact_gives_one_true_and_one_false_with_the_same_template(full):
    groups = full.frame.groupby(["topic", "subject", "relation"])
    assert (groups.size() == 2).all()
    assert (groups.label.sum() == 1).all()
    assert (groups.template.nunique() == 1).all()


def test_false_objects_come_from_the_true_object_distribution(full):
    # Within each relation, false objects are a permutation of the true objects.
    for (_, relation), part in full.frame.groupby(["topic", "relation"]):
        true_counts = part[part.label == 1].object.value_counts().sort_index()
        false_counts = part[part.label == 0].object.value_counts().sort_index()
        assert true_counts.equals(false_counts), relation


def test_deterministic_for_a_seed_and_seeds_differ():
    a, b = load_builtin(seed=3), load_builtin(seed=3)
    assert a.fingerprint() == b.fingerprint()
    c = load_builtin(seed=4)
    assert a.fingerprint() != c.fingerprint()
    key = ["topic", "subject", "relation"]
    fa = a.frame[a.frame.label == 0].set_index(key).object.sort_index()
    fc = c.frame[c.frame.label == 0].set_index(key).object.sort_index()
    common = fa.index.intersection(fc.index)
    assert len(common) > 0.95 * len(fa)  # nearly the same facts...
    assert (fa[common] != fc[common]).mean() > 0.5  # ...with mostly different false objects


def test_topics_and_per_topic():
    small = load_builtin(topics=["elements", "animals"], per_topic=100, seed=1)
    assert small.topics == ["elements", "animals"]
    summary = small.summary().set_index("topic")
    assert (summary.rows == 100).all() and (summary.true == 50).all()
    assert not small.frame.statement.duplicated().any()
    odd = load_builtin(topics=["cities"], per_topic=7)
    assert len(odd) == 8 and odd.labels.sum() == 4
    # A different seed keeps other facts.
    other = load_builtin(topics=["elements", "animals"], per_topic=100, seed=2)
    assert set(small.frame.subject) != set(other.frame.subject)
    with pytest.raises(DatasetError, match="unknown topic"):
        load_builtin(topics=["inventions"])
    with pytest.raises(DatasetError):
        load_builtin(per_topic=0)


def test_every_relation_has_several_templates(full):
    kind = full.frame.template.str.split("/").str[0]  # the in_* conversions share templates
    used = full.frame.groupby(kind).template.nunique()
    assert (used >= 3).all(), used[used < 3]
    for relation, templates in TEMPLATES.items():
        assert len(set(templates)) >= 3, relation


# ------------------------------------------------------------------ surface leak


def text_only_accuracy(part: pd.DataFrame, folds: int = 5, by: str = "group") -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline, make_union

    correct = 0
    for train, test in GroupKFold(n_splits=folds).split(part, groups=part[by]):
        model = make_pipeline(
            make_union(
                TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
            ),
            LogisticRegression(max_iter=1000),
        )
        model.fit(part.statement.iloc[train], part.label.iloc[train])
        correct += (model.predict(part.statement.iloc[test]) == part.label.iloc[test].to_numpy()).sum()
    return correct / len(part)


def test_groups_hold_whole_subjects_and_balance_every_object(full):
    f = full.frame
    # A subject (all its true and false statements) lies in one group...
    assert (f.groupby(["topic", "subject"]).group.nunique() == 1).all()
    # ...and inside a group every object occurs as often true as false, so a split by
    # group leaves a text-only classifier nothing to learn from object words.
    counts = f.groupby(["group", "relation", "object"]).label.agg(["sum", "size"])
    assert (counts["sum"] * 2 == counts["size"]).all()
    assert (f.groupby("topic").group.nunique() >= 10).all()


@pytest.mark.parametrize("topic", BUILTIN_TOPICS)
def test_text_only_classifier_cannot_tell_true_from_false(full, topic):
    # Split by group: true and false variants of a subject (and the subjects whose
    # objects were swapped with it) stay on the same side.
    part = full.frame[full.frame.topic == topic].reset_index(drop=True)
    accuracy = text_only_accuracy(part)
    assert 0.40 <= accuracy <= 0.60, f"{topic}: text-only accuracy {accuracy:.3f}"


def test_leak_check_detects_a_planted_leak(full):
    # The same check flags a set whose false statements carry a tell-tale word.
    part = full.frame[full.frame.topic == "cities"].reset_index(drop=True).copy()
    part.loc[part.label == 0, "statement"] = part.loc[part.label == 0, "statement"].str.replace(
        ".", " indeed.", regex=False
    )
    assert text_only_accuracy(part, folds=3) > 0.9
