"""The generator of the built-in true/false statement set, from the fact tables in ``data/``.

Six topics mirror the SAPLMA True-False dataset: ``cities``, ``countries`` (in place
of SAPLMA's inventions), ``elements``, ``animals``, ``companies`` and ``science``
(SI units and physical constants, in place of SAPLMA's mixed "facts").

Each row of a table in ``probing/data/builtin/data/`` is one fact (subject, relation,
object). Every fact gives one true statement and one false statement, written
with the same template; the false statement swaps the object for the true object
of another fact of the same relation. Within a relation the false objects are a
permutation of the true objects (each object occurs as often in false statements
as in true ones), and never a value that is also true for that subject (the
``also_true`` column lists such values). So neither the words nor the sentence
shape tells true from false: only knowing the fact does.

Every fact also gives two negated statements, written with the negated form of the
same template (:data:`NEGATED_TEMPLATES`): "s is not o'" with the false object, which
is true because o' is not true for s (the rule that keeps false statements false), and
"s is not o" with the true object, which is false. Labels come from the facts, never
from flipping a sentence. The negated statements use the same objects as the
affirmative ones, each as often in a true as in a false statement, and the same
negated template for both labels, so the word "not" and the negated sentence shapes
say nothing about the label either. Column ``polarity`` says which form a statement
has; column ``pair`` is shared by a statement and its negation (same subject, relation
and object, opposite labels), the pairs that CCS (Burns et al. 2022) trains on.

Subjects are dealt into small blocks (column ``group``) and the false objects are
permuted within a block, so inside every group each object occurs as often in
true as in false statements, in each polarity. Split by ``group`` when testing a
text-only (or any) classifier: a split that separates the members of a group leaves
an object's true use on one side and its false use on the other, and a classifier
that memorises object words then scores *below* chance on the held-out side. A
group holds all four statements of each of its facts.

Generation is deterministic for a seed and takes a few tens of milliseconds. The
affirmative statements of a seed are the same with or without the negated ones.
"""

from __future__ import annotations

import csv
import random
from functools import lru_cache
from pathlib import Path

import pandas as pd

from probing.data.builtin.templates import NEGATED_TEMPLATES, PLURAL, TEMPLATES, WITH_THE
from probing.data.statements import POLARITIES, POLARITY_CHOICES, DatasetError, StatementSet

DATA = Path(__file__).resolve().parent / "data"
BUILTIN_TOPICS: tuple[str, ...] = ("cities", "countries", "elements", "animals", "companies", "science")


def _template_key(relation: str) -> str:
    return "conversion" if relation.startswith("in_") else relation


def _article(phrase: str) -> str:
    word = phrase.split()[0]
    lower = word.lower()
    if word.isupper() and len(word) > 1:  # acronyms: "a US gallon", "an SI unit"
        vowel = word[0] in "AEFHILMNORSX"
    elif lower.startswith(("uni", "use", "usu", "eu", "one", "ur")):
        vowel = False
    elif lower.startswith(("hour", "honest", "honour")):
        vowel = True
    else:
        vowel = lower[0] in "aeiou"
    return f"{'an' if vowel else 'a'} {phrase}"


def _plural(noun: str) -> str:
    if noun in PLURAL:
        return PLURAL[noun]
    head, _, last = noun.rpartition(" ")
    if last.endswith(("s", "x", "sh", "ch")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in tuple("aeiou"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}".strip()


def _name(value: str) -> str:
    return f"the {value}" if value in WITH_THE else value


def _render(template: str, subject: str, obj: str) -> str:
    s, o = _name(subject), _name(obj)
    text = template.format(s=s, o=o, a_s=_article(s), a_o=_article(o), o_pl=_plural(o))
    return text[0].upper() + text[1:]


@lru_cache(maxsize=None)
def _read_table(topic: str) -> tuple[tuple[str, str, str, frozenset[str]], ...]:
    path = DATA / f"{topic}.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [
            (r["subject"], r["relation"], r["object"],
             frozenset(filter(None, r["also_true"].split("|"))) | {r["object"]})
            for r in csv.DictReader(handle)
        ]
    return tuple(rows)


def fact_table(topic: str) -> pd.DataFrame:
    """The fact table of one topic: subject, relation, object, also_true (``|``-separated)."""
    _check_topics([topic])
    return pd.read_csv(DATA / f"{topic}.csv", dtype=str, keep_default_na=False)


def _check_topics(topics) -> None:
    unknown = [t for t in topics if t not in BUILTIN_TOPICS]
    if unknown:
        raise DatasetError(f"builtin: unknown topic(s) {unknown}; choose from {list(BUILTIN_TOPICS)}")


def _blocks(facts, rng: random.Random, size: int) -> list[list[int]]:
    """Split the subjects into blocks of about ``size``, each with varied objects.

    Subjects with the same relations form blocks together. Within them, subjects are
    sorted by their object in the relation with the fewest distinct values (an
    animal's class, an element's category) and dealt out in turn, so a block rarely
    holds two subjects with the same value.
    """
    relations_of: dict[str, dict[str, str]] = {}
    for subject, relation, obj, _ in facts:
        relations_of.setdefault(subject, {})[relation] = obj
    classes: dict[tuple[str, ...], list[str]] = {}
    for subject, rels in relations_of.items():
        classes.setdefault(tuple(sorted(rels)), []).append(subject)
    block_of: dict[str, int] = {}
    n_blocks = 0
    for signature in sorted(classes):
        members = classes[signature]
        distinct = {r: len({relations_of[s][r] for s in members}) for r in signature}
        key = min(signature, key=lambda r: (distinct[r], r))
        order = sorted(members, key=lambda s: (relations_of[s][key], rng.random()))
        count = max(1, round(len(order) / size))
        for i, subject in enumerate(order):
            block_of[subject] = n_blocks + i % count
        n_blocks += count
    blocks: list[list[int]] = [[] for _ in range(n_blocks)]
    for i, fact in enumerate(facts):
        blocks[block_of[fact[0]]].append(i)
    return blocks


def _derange(members: list[int], facts, rng: random.Random) -> dict[int, str]:
    """False objects for facts of one relation in one block: a permutation of their true
    objects that gives no subject a value true for it. Facts that cannot get one are left out."""
    members = list(members)
    while len(members) >= 2:
        objects = [facts[i][2] for i in members]
        rng.shuffle(objects)
        excluded = [facts[i][3] for i in members]
        n = len(members)
        for a in range(n):
            if objects[a] not in excluded[a]:
                continue
            start = rng.randrange(n)
            for step in range(n):
                b = (start + step) % n
                if objects[b] not in excluded[a] and objects[a] not in excluded[b]:
                    objects[a], objects[b] = objects[b], objects[a]
                    break
        stuck = [a for a in range(n) if objects[a] in excluded[a]]
        if not stuck:
            return dict(zip(members, objects))
        # Leave out the fact whose object is the most common in this block, and retry.
        counts: dict[str, int] = {}
        for i in members:
            counts[facts[i][2]] = counts.get(facts[i][2], 0) + 1
        worst = max(members, key=lambda i: (counts[facts[i][2]], -members.index(i)))
        members.remove(worst)
    return {}


def _block_size(n_facts: int) -> int:
    """Subjects per block: 6, or fewer in a small set (under 15 facts), so that even a handful of
    facts makes several groups and a group-held-out split has something on both sides."""
    return 6 if n_facts >= 15 else max(2, n_facts // 4)


def _pair_id(topic: str, subject: str, relation: str, obj: str) -> str:
    """The id a statement shares with its negation: same subject, relation and object."""
    return f"{topic}|{subject}|{relation}|{obj}"


def _generate_topic(
    topic: str, n_facts: int | None, seed: int, polarities: tuple[str, ...]
) -> pd.DataFrame:
    """Statements of ``n_facts`` facts of one topic (every fact when None), of the given polarities."""
    table = _read_table(topic)
    rng = random.Random(f"probing.builtin:{topic}:{seed}")  # the seed text of the first version: same statements
    facts = list(table)
    if n_facts is not None and n_facts < len(facts):
        keep = sorted(rng.sample(range(len(facts)), n_facts))
        facts = [facts[i] for i in keep]
    false: dict[int, str] = {}
    group_of: dict[int, int] = {}
    blocks = _blocks(facts, rng, _block_size(len(facts)))
    for number, block in enumerate(blocks):
        by_relation: dict[str, list[int]] = {}
        for i in block:
            by_relation.setdefault(facts[i][1], []).append(i)
            group_of[i] = number
        for relation in sorted(by_relation):
            false.update(_derange(by_relation[relation], facts, rng))
    # Facts left without a false object in their block (a relation only one subject of
    # the block has): derange them across blocks, and merge the blocks they join.
    parent = list(range(len(blocks)))

    def root(b: int) -> int:
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    leftovers: dict[str, list[int]] = {}
    for i in range(len(facts)):
        if i not in false:
            leftovers.setdefault(facts[i][1], []).append(i)
    for relation in sorted(leftovers):
        found = _derange(leftovers[relation], facts, rng)
        false.update(found)
        joined = sorted({root(group_of[i]) for i in found})
        for b in joined[1:]:
            parent[b] = joined[0]
    group_of = {i: root(b) for i, b in group_of.items()}
    if n_facts is not None and len(false) < len(facts):
        # Facts left out for want of a false object: top up from the rest of the table.
        chosen = {(f[0], f[1]) for f in facts}
        spare = [f for f in table if (f[0], f[1]) not in chosen]
        rng.shuffle(spare)
        while len(false) < min(len(facts), len(table)) and spare:
            extra = spare[: max(2, len(facts) - len(false))]
            del spare[: len(extra)]
            start = len(facts)
            facts.extend(extra)
            members = list(range(start, len(facts)))
            number = len(set(group_of.values())) + start
            for i in members:
                group_of[i] = number
            by_relation = {}
            for i in members:
                by_relation.setdefault(facts[i][1], []).append(i)
            for relation in sorted(by_relation):
                false.update(_derange(by_relation[relation], facts, rng))
        keep = sorted(false)[:n_facts]
        false = {i: false[i] for i in keep}
    # Templates: balanced within each relation, in random order; shared by a fact's four statements.
    counters: dict[str, list[int]] = {}
    affirmative, negated = [], []
    for i, (subject, relation, obj, _) in enumerate(facts):
        if i not in false:
            continue
        key = _template_key(relation)
        queue = counters.get(key)
        if not queue:
            queue = list(range(len(TEMPLATES[key])))
            rng.shuffle(queue)
            counters[key] = queue
        number = queue.pop()
        template, negation = TEMPLATES[key][number], NEGATED_TEMPLATES[key][number]
        wrong, fact = false[i], (topic, subject, relation)
        where = (f"{key}/{number}", f"{topic}/{group_of[i]}")
        for text, label, shown, polarity in (
            (_render(template, subject, obj), 1, obj, "affirmative"),
            (_render(template, subject, wrong), 0, wrong, "affirmative"),
            # "s is not o'" is true exactly because "s is o'" is false, and the other way round.
            (_render(negation, subject, wrong), 1, wrong, "negated"),
            (_render(negation, subject, obj), 0, obj, "negated"),
        ):
            rows = affirmative if polarity == "affirmative" else negated
            rows.append((text, label, *fact, shown, obj, *where, polarity, _pair_id(*fact, shown)))
    rng.shuffle(affirmative)
    rng.shuffle(negated)
    records = (affirmative if "affirmative" in polarities else []) + (negated if "negated" in polarities else [])
    return pd.DataFrame.from_records(
        records,
        columns=["statement", "label", "topic", "subject", "relation", "object", "true_object", "template", "group",
                 "polarity", "pair"],
    )


def load_builtin(
    topics: list[str] | None = None, per_topic: int | None = None, seed: int = 0, polarity: str = "all"
) -> StatementSet:
    """The built-in statement set: every topic by default (about 11,000 statements, half of them negated).

    ``topics`` picks some of :data:`BUILTIN_TOPICS`; ``polarity`` is ``all`` (affirmative and
    negated statements), ``affirmative`` ("Paris is a city in France.") or ``negated`` ("Paris is
    not a city in Japan."). ``per_topic`` keeps about that many statements per topic, rounded up
    to whole facts: a fact gives one true and one false statement of each chosen polarity, so
    ``per_topic / 4`` facts with both polarities, ``per_topic / 2`` with one. ``seed`` chooses the
    facts kept, the false objects and the templates; the affirmative statements of a seed are
    the same whatever ``polarity`` is (with the same facts kept).
    Extra columns: subject, relation, object (the one in the statement), true_object, template,
    group (hold a group out together; see the module docstring), polarity, pair (shared by a
    statement and its negation).
    """
    chosen = list(BUILTIN_TOPICS) if topics is None else list(topics)
    _check_topics(chosen)
    if polarity not in POLARITY_CHOICES:
        raise DatasetError(f"builtin: unknown polarity {polarity!r}; choose from {list(POLARITY_CHOICES)}")
    polarities = POLARITIES if polarity == "all" else (polarity,)
    if per_topic is not None and per_topic < 1:
        raise DatasetError(f"builtin: per_topic must be at least 1, got {per_topic}")
    n_facts = None if per_topic is None else -(-per_topic // (2 * len(polarities)))
    frame = pd.concat([_generate_topic(t, n_facts, seed, polarities) for t in chosen], ignore_index=True)
    return StatementSet(frame, name="builtin", source="builtin")
