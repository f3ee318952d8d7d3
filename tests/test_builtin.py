"""The built-in statement set: labels against the fact tables, balance, determinism, no surface leak,
in both polarities ("Paris is a city in France." and "Paris is not a city in Japan.")."""

import os
from string import Formatter

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest

from probing.data.builtin import BUILTIN_TOPICS, NEGATED_TEMPLATES, TEMPLATES, fact_table, load_builtin
from probing.data.datasets import load_dataset
from probing.data.statements import POLARITIES, DatasetError, StatementSet

# The fingerprints of the seed-0 affirmative set: cached activations and recorded results refer to
# these statements, so they change only on purpose. Adding negations left them as they were; they
# changed when two templates were replaced ("X has existed since Y" is true of every later year than
# the founding one; "{o} is the symbol of the {s}." capitalised unit symbols such as kg and mol).
AFFIRMATIVE_SEED_0 = "62aa1917cf4a74313e7489ad7f7c74722e98ef7ded7204e04af5786e95d6562b"
AFFIRMATIVE_SEED_0_PER_TOPIC_30 = "f50286a58da9abd10e020551bbef53b8a815ffb4c3ba35bb6c57a86f5c06c183"


@pytest.fixture(scope="module")
def full():
    return load_builtin()


@pytest.fixture(scope="module")
def negated(full):
    return full.frame[full.frame.polarity == "negated"]


@pytest.fixture(scope="module")
def tables():
    return {topic: fact_table(topic) for topic in BUILTIN_TOPICS}


def true_sets(table: pd.DataFrame) -> dict[tuple[str, str], set[str]]:
    out = {}
    for row in table.itertuples(index=False):
        values = {row.object, *filter(None, row.also_true.split("|"))}
        out.setdefault((row.subject, row.relation), set()).update(values)
    return out


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(template) if name}


# ------------------------------------------------------------------ shape and basic facts


def test_default_is_the_full_set_with_expected_columns(full):
    assert isinstance(full, StatementSet)
    assert full.name == "builtin" and full.source == "builtin"
    assert len(full) >= 10000
    assert list(full.frame.columns[:6]) == ["statement", "label", "topic", "subject", "relation", "object"]
    assert {"true_object", "template", "group", "polarity", "pair"} <= set(full.frame.columns)
    assert full.topics == list(BUILTIN_TOPICS)
    assert full.polarities == ["affirmative", "negated"]
    assert (full.frame.polarity == "negated").sum() * 2 == len(full)
    assert set(full.frame.label.unique()) == {0, 1}
    assert full.frame.label.dtype.kind == "i"
    assert all(s.endswith(".") and s[0].isupper() for s in full.statements)


def test_load_dataset_builtin_gives_the_same_set(full):
    assert load_dataset("builtin").fingerprint() == full.fingerprint()
    for polarity in POLARITIES:
        chosen = load_dataset("builtin", polarity=polarity)
        assert chosen.polarities == [polarity]
        assert chosen.fingerprint() == load_builtin(polarity=polarity).fingerprint()


def test_spot_checks_against_well_known_facts(full):
    f = full.frame

    def facts(subject, relation, polarity="affirmative"):
        rows = f[(f.subject == subject) & (f.relation == relation) & (f.polarity == polarity)]
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
    # Negated: "... is not <true object>" is false, "... is not <another object>" is true.
    assert facts("France", "capital", "negated")[0] == "Paris"
    assert facts("gold", "symbol", "negated")[0] == "Au"
    assert facts("whale", "animal_class", "negated")[0] == "mammal"
    assert facts("Japan", "currency", "negated")[0] == "Japanese yen"
    assert facts("Paris", "city_in_country", "negated")[1] == facts("Paris", "city_in_country")[0]
    # The false partner is a different value of the same relation.
    for subject, relation in [("Paris", "city_in_country"), ("gold", "symbol"), ("whale", "animal_class")]:
        pair = facts(subject, relation)
        assert pair[0] != pair[1]
    templates = {"Paris": "city_in_country", "gold": "symbol", "whale": "animal_class"}
    for subject, relation in templates.items():
        rows = f[(f.subject == subject) & (f.relation == relation)]
        assert rows.template.nunique() == 1  # true and false, affirmative and negated share a template


def test_spot_check_sentences():
    # Seeds change templates; check the rendered sentence for the true row whatever the template.
    f = load_builtin(topics=["cities", "elements", "animals"]).frame
    paris = f[(f.subject == "Paris") & (f.label == 1)].statement.iloc[0]
    assert "Paris" in paris and "France" in paris
    gold = f[(f.subject == "gold") & (f.relation == "symbol") & (f.label == 1)].statement.iloc[0]
    assert "gold" in gold.lower() and " Au" in gold
    f = f[f.polarity == "affirmative"]
    paris = f[(f.subject == "Paris") & (f.label == 1)].statement.iloc[0]
    assert "Paris" in paris and "France" in paris and " not " not in paris
    whale = f[(f.subject == "whale") & (f.label == 1)].statement.iloc[0]
    assert "whale" in whale and "mammal" in whale


def test_negated_sentences_read_naturally():
    f = load_builtin(topics=["cities", "countries", "elements", "science"]).frame
    f = f[f.polarity == "negated"]
    paris = f[(f.subject == "Paris") & (f.label == 0)].statement.iloc[0]
    assert paris in {"Paris is not a city in France.", "The city of Paris is not located in France.",
                     "Paris is not one of the cities of France.", "Paris is a city that does not lie in France."}
    capital = f[(f.subject == "France") & (f.relation == "capital") & (f.label == 0)].statement.iloc[0]
    assert capital in {"The capital of France is not Paris.", "Paris is not the capital of France.",
                       "France does not have Paris as its capital.", "The capital city of France is not Paris."}
    gold = f[(f.subject == "gold") & (f.relation == "symbol") & (f.label == 0)].statement.iloc[0]
    assert gold in {"The chemical symbol for gold is not Au.", "Gold does not have the chemical symbol Au.",
                    "The symbol of the element gold is not Au.", "Au is not the chemical symbol of gold."}
    giga = f[(f.subject == "giga") & (f.label == 0)].statement.iloc[0]
    assert giga in {"The SI prefix giga does not mean one billion.",
                    "The metric prefix giga does not stand for a factor of one billion.",
                    "In the metric system, the prefix giga does not mean one billion.",
                    "The prefix giga does not multiply a unit by one billion."}


def test_every_label_agrees_with_the_fact_tables(full, tables):
    # Affirmative: true exactly when the object is a true value of the subject; negated: true
    # exactly when it is not (also_true values never make a "negated true" statement).
    for topic in BUILTIN_TOPICS:
        truth = true_sets(tables[topic])
        part = full.frame[full.frame.topic == topic]
        for row in part.itertuples(index=False):
            holds = row.object in truth[(row.subject, row.relation)]
            expected = holds if row.polarity == "affirmative" else not holds
            assert row.label == int(expected), f"{row.polarity} statement labelled {row.label}: {row.statement}"
        # every relation of the table occurs in the generated set, in both polarities
        for polarity in POLARITIES:
            assert set(part[part.polarity == polarity].relation) == set(tables[topic].relation), polarity


def test_a_sample_of_negated_statements_says_what_its_row_says(negated, tables):
    # Read the sampled rows against the raw tables: the statement names its subject and object
    # and says "not"; its label is 1 exactly when the object is none of the subject's true values.
    sample = negated.sample(400, random_state=0)
    raw = pd.concat([tables[t].assign(topic=t) for t in BUILTIN_TOPICS])
    for row in sample.itertuples(index=False):
        facts = raw[(raw.topic == row.topic) & (raw.subject == row.subject) & (raw.relation == row.relation)]
        assert len(facts) == 1, (row.subject, row.relation)
        values = {facts.object.iloc[0], *filter(None, facts.also_true.iloc[0].split("|"))}
        assert row.label == int(row.object not in values), row.statement
        assert " not " in row.statement, row.statement
        text = row.statement.lower()
        stem = row.object if len(row.object) < 4 else row.object[:-1]  # "henry" is "henries" in a plural
        assert row.subject.lower() in text and stem.lower() in text, row.statement


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
        false = f[(f.label == 0) & (f.polarity == "affirmative")]
        swiss_false = false[(false.subject == "Switzerland") & (false.relation == "official_language")]
        assert swiss_false.object.iloc[0] not in {"German", "French", "Italian", "Romansh", "Swiss German"}
        cl = false[(false.subject == "chlorine") & (false.relation == "category")]
        assert cl.object.iloc[0] not in {"halogen", "nonmetal"}
        # A "negated true" statement never denies a value that is true: "Chlorine is not a nonmetal."
        denied = f[(f.polarity == "negated") & (f.label == 1)]
        swiss_denied = denied[(denied.subject == "Switzerland") & (denied.relation == "official_language")]
        assert swiss_denied.object.iloc[0] not in {"German", "French", "Italian", "Romansh", "Swiss German"}
        cl = denied[(denied.subject == "chlorine") & (denied.relation == "category")]
        assert cl.object.iloc[0] not in {"halogen", "nonmetal"}


# ------------------------------------------------------------------ balance, duplicates, options


def test_balanced_per_topic_and_polarity_and_no_duplicates(full):
    summary = full.summary().set_index("topic")
    assert (summary.share_true == 0.5).all(), summary
    assert (summary.rows >= 1000).all(), summary
    per_polarity = full.frame.groupby(["topic", "polarity"]).label.agg(["size", "sum"])
    assert len(per_polarity) == 2 * len(BUILTIN_TOPICS)
    assert (per_polarity["sum"] * 2 == per_polarity["size"]).all(), per_polarity
    assert (per_polarity["size"] >= 500).all(), per_polarity
    assert not full.frame.statement.duplicated().any()


def test_each_fact_gives_four_statements_with_the_same_template(full):
    groups = full.frame.groupby(["topic", "subject", "relation"])
    assert (groups.size() == 4).all()
    assert (groups.label.sum() == 2).all()
    assert (groups.template.nunique() == 1).all()
    assert (groups.group.nunique() == 1).all()  # a group-held-out split never has a fact on both sides
    by_polarity = full.frame.groupby(["topic", "subject", "relation", "polarity"])
    assert (by_polarity.size() == 2).all() and (by_polarity.label.sum() == 1).all()


def test_pairs_join_a_statement_and_its_negation(full):
    pairs = full.pairs()
    assert pairs.shape == (len(full) // 2, 2)  # every statement is in exactly one pair
    assert len(set(pairs.ravel())) == len(full)
    f = full.frame
    affirmative, negated = f.iloc[pairs[:, 0]], f.iloc[pairs[:, 1]]
    assert (affirmative.polarity == "affirmative").all() and (negated.polarity == "negated").all()
    for column in ("topic", "subject", "relation", "object", "template", "group"):
        assert (affirmative[column].to_numpy() == negated[column].to_numpy()).all(), column
    assert (affirmative.label.to_numpy() + negated.label.to_numpy() == 1).all()
    # An affirmative set alone has the column but no negations to pair with.
    with pytest.raises(DatasetError, match="CCS needs pairs of a statement and its negation"):
        load_builtin(topics=["cities"], per_topic=8, polarity="affirmative").pairs()


def test_false_objects_come_from_the_true_object_distribution(full):
    # Within each relation and polarity, the objects of false statements are a permutation of those of
    # true ones, so neither an object nor "not" next to it tells the label.
    for (_, relation, polarity), part in full.frame.groupby(["topic", "relation", "polarity"]):
        true_counts = part[part.label == 1].object.value_counts().sort_index()
        false_counts = part[part.label == 0].object.value_counts().sort_index()
        assert true_counts.equals(false_counts), (relation, polarity)


def test_affirmative_statements_are_unchanged_by_negations(full):
    affirmative = load_builtin(polarity="affirmative")
    assert affirmative.fingerprint() == AFFIRMATIVE_SEED_0
    # The affirmative rows of the whole set are the affirmative set, row for row and column for column.
    rows = full.frame[full.frame.polarity == "affirmative"].reset_index(drop=True)
    assert rows.equals(affirmative.frame)
    negated = load_builtin(polarity="negated")
    assert full.frame[full.frame.polarity == "negated"].reset_index(drop=True).equals(negated.frame)
    other_seed = load_builtin(seed=3).frame
    assert other_seed[other_seed.polarity == "affirmative"].reset_index(drop=True).equals(
        load_builtin(seed=3, polarity="affirmative").frame)
    # With per_topic, the affirmative rows of both polarities are the affirmative set of half the size
    # (the same facts), and that set is the one generated before negations existed.
    both = load_builtin(per_topic=60).frame
    affirmative_30 = load_builtin(per_topic=30, polarity="affirmative")
    assert affirmative_30.fingerprint() == AFFIRMATIVE_SEED_0_PER_TOPIC_30
    assert both[both.polarity == "affirmative"].reset_index(drop=True).equals(affirmative_30.frame)


def test_deterministic_for_a_seed_and_seeds_differ():
    a, b = load_builtin(seed=3), load_builtin(seed=3)
    assert a.fingerprint() == b.fingerprint()
    c = load_builtin(seed=4)
    assert a.fingerprint() != c.fingerprint()
    key = ["topic", "subject", "relation"]
    fa = a.frame[(a.frame.label == 0) & (a.frame.polarity == "affirmative")].set_index(key).object.sort_index()
    fc = c.frame[(c.frame.label == 0) & (c.frame.polarity == "affirmative")].set_index(key).object.sort_index()
    common = fa.index.intersection(fc.index)
    assert len(common) > 0.95 * len(fa)  # nearly the same facts...
    assert (fa[common] != fc[common]).mean() > 0.5  # ...with mostly different false objects


def test_topics_and_per_topic():
    small = load_builtin(topics=["elements", "animals"], per_topic=100, seed=1)
    assert small.topics == ["elements", "animals"]
    summary = small.summary().set_index("topic")
    assert (summary.rows == 100).all() and (summary.true == 50).all()  # 25 facts, four statements each
    per_polarity = small.frame.groupby(["topic", "polarity"]).label.agg(["size", "sum"])
    assert (per_polarity["size"] == 50).all() and (per_polarity["sum"] == 25).all()
    assert not small.frame.statement.duplicated().any()
    # per_topic counts the chosen polarities' statements, rounded up to whole facts.
    sizes = {(polarity, per_topic): len(load_builtin(topics=["cities"], per_topic=per_topic, polarity=polarity))
             for polarity in ("all", "affirmative", "negated") for per_topic in (7, 30, 48)}
    assert sizes == {("all", 7): 8, ("all", 30): 32, ("all", 48): 48, ("affirmative", 7): 8,
                     ("affirmative", 30): 30, ("affirmative", 48): 48, ("negated", 7): 8, ("negated", 30): 30,
                     ("negated", 48): 48}
    odd = load_builtin(topics=["cities"], per_topic=7, polarity="affirmative")
    assert len(odd) == 8 and odd.labels.sum() == 4 and odd.polarities == ["affirmative"]
    # One polarity alone keeps the same facts as the other one alone.
    one = load_builtin(topics=["animals"], per_topic=40, seed=1, polarity="affirmative").frame
    other_one = load_builtin(topics=["animals"], per_topic=40, seed=1, polarity="negated").frame
    assert set(one.subject) == set(other_one.subject) and len(set(one.subject)) == 20
    # A different seed keeps other facts.
    other = load_builtin(topics=["elements", "animals"], per_topic=100, seed=2)
    assert set(small.frame.subject) != set(other.frame.subject)
    with pytest.raises(DatasetError, match="unknown topic"):
        load_builtin(topics=["inventions"])
    with pytest.raises(DatasetError):
        load_builtin(per_topic=0)
    with pytest.raises(DatasetError, match=r"unknown polarity 'negative'; choose from \['all', 'affirmative'"):
        load_builtin(polarity="negative")


def test_every_relation_has_several_templates(full):
    kind = full.frame.template.str.split("/").str[0]  # the in_* conversions share templates
    used = full.frame.groupby(kind).template.nunique()
    assert (used >= 3).all(), used[used < 3]
    for relation, templates in TEMPLATES.items():
        assert len(set(templates)) >= 3, relation


def test_every_template_has_a_negated_form_in_the_same_place():
    assert NEGATED_TEMPLATES.keys() == TEMPLATES.keys()
    for relation, templates in TEMPLATES.items():
        negations = NEGATED_TEMPLATES[relation]
        assert len(negations) == len(templates), relation
        for template, negation in zip(templates, negations):
            assert " not " in negation and " not " not in template, negation
            # The same placeholders: a fact's negation names what its affirmation names.
            assert placeholders(negation) == placeholders(template), negation


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
    # A subject (all its true and false, affirmative and negated statements) lies in one group...
    assert (f.groupby(["topic", "subject"]).group.nunique() == 1).all()
    # ...and inside a group every object occurs as often true as false, in each polarity, so a
    # split by group leaves a text-only classifier nothing to learn from object words.
    counts = f.groupby(["group", "relation", "polarity", "object"]).label.agg(["sum", "size"])
    assert (counts["sum"] * 2 == counts["size"]).all()
    assert (f.groupby("topic").group.nunique() >= 10).all()


def test_a_small_set_still_has_several_groups_per_topic():
    # 24 statements per topic are 6 facts: smaller blocks keep three groups in every topic, so a
    # group-held-out split (the within-topic split, the generalization diagonal) has both sides.
    f = load_builtin(per_topic=24).frame
    assert (f.groupby("topic").group.nunique() >= 3).all(), f.groupby("topic").group.nunique()
    assert (f.groupby(["topic", "subject", "relation"]).group.nunique() == 1).all()
    assert (f.groupby(["topic", "polarity"]).label.mean() == 0.5).all()


@pytest.mark.parametrize("topic", BUILTIN_TOPICS)
def test_text_only_classifier_cannot_tell_true_from_false(full, topic):
    # Split by group: true and false variants of a subject (and the subjects whose
    # objects were swapped with it) stay on the same side.
    part = full.frame[full.frame.topic == topic].reset_index(drop=True)
    accuracy = text_only_accuracy(part)
    assert 0.40 <= accuracy <= 0.60, f"{topic}: text-only accuracy {accuracy:.3f}"


@pytest.mark.parametrize("polarity", POLARITIES)
@pytest.mark.parametrize("topic", BUILTIN_TOPICS)
def test_text_only_classifier_cannot_tell_true_from_false_in_one_polarity(full, topic, polarity):
    part = full.frame[(full.frame.topic == topic) & (full.frame.polarity == polarity)].reset_index(drop=True)
    accuracy = text_only_accuracy(part)
    assert 0.40 <= accuracy <= 0.60, f"{topic}, {polarity}: text-only accuracy {accuracy:.3f}"


def test_leak_check_detects_a_planted_leak(full):
    # The same check flags a set whose false statements carry a tell-tale word.
    part = full.frame[full.frame.topic == "cities"].reset_index(drop=True).copy()
    part.loc[part.label == 0, "statement"] = part.loc[part.label == 0, "statement"].str.replace(
        ".", " indeed.", regex=False
    )
    assert text_only_accuracy(part, folds=3) > 0.9


def test_symbols_keep_their_case_and_founding_years_are_exact(full):
    """A symbol is case-sensitive (kg, not Kg), and a founding year is one year: "X has existed since Y"
    would be true of every year after it, so it is no template."""
    symbols = full.frame[full.frame.relation.isin(["unit_symbol", "symbol"])]
    assert all(row.object in row.statement for row in symbols.itertuples())
    founded = full.frame[full.frame.relation == "founded"]
    assert len(founded) and not founded.statement.str.contains("since").any()
