"""The sentence templates of the built-in set, per relation: the affirmative form and its negated form
(same shape, with "not"), and the words that shape them ("the" before some objects, irregular plurals).

In a template ``{s}`` is the subject, ``{o}`` the object, ``{a_s}``/``{a_o}`` the same with "a"/"an",
``{o_pl}`` the plural object. The first letter of a sentence is capitalised when rendered.
"""

from __future__ import annotations

TEMPLATES: dict[str, tuple[str, ...]] = {
    # cities
    "city_in_country": (
        "{s} is a city in {o}.",
        "The city of {s} is located in {o}.",
        "{s} is one of the cities of {o}.",
        "{s} is a city that lies in {o}.",
    ),
    # countries
    "capital": (
        "The capital of {s} is {o}.",
        "{o} is the capital of {s}.",
        "{s} has {o} as its capital.",
        "The capital city of {s} is {o}.",
    ),
    "continent": (
        "{s} is a country in {o}.",
        "{s} is located in {o}.",
        "{s} is a country on the continent of {o}.",
        "The country of {s} lies in {o}.",
    ),
    "currency": (
        "The currency of {s} is the {o}.",
        "{s} uses the {o} as its currency.",
        "The official currency of {s} is the {o}.",
        "In {s}, people pay with the {o}.",
    ),
    "official_language": (
        "{o} is an official language of {s}.",
        "One of the official languages of {s} is {o}.",
        "{s} has {o} as an official language.",
        "In {s}, {o} is an official language.",
    ),
    # elements
    "symbol": (
        "The chemical symbol for {s} is {o}.",
        "{s} has the chemical symbol {o}.",
        "The symbol of the element {s} is {o}.",
        "{o} is the chemical symbol of {s}.",
    ),
    "atomic_number": (
        "The atomic number of {s} is {o}.",
        "{s} has the atomic number {o}.",
        "{s} is element number {o} in the periodic table.",
        "The element {s} has atomic number {o}.",
    ),
    "category": (
        "{s} is {a_o}.",
        "{s} is classified as {a_o}.",
        "{s} belongs to the {o_pl}.",
        "The element {s} is {a_o}.",
    ),
    "period": (
        "{s} is in period {o} of the periodic table.",
        "{s} is found in period {o} of the periodic table.",
        "The element {s} belongs to period {o}.",
        "In the periodic table, {s} sits in period {o}.",
    ),
    "group": (
        "{s} is in group {o} of the periodic table.",
        "{s} is found in group {o} of the periodic table.",
        "The element {s} belongs to group {o}.",
        "In the periodic table, {s} sits in group {o}.",
    ),
    # animals
    "animal_class": (
        "{a_s} is {a_o}.",
        "The {s} is a kind of {o}.",
        "{a_s} is classified as {a_o}.",
        "Biologists classify the {s} as {a_o}.",
    ),
    # companies
    "headquarters_country": (
        "{s} is headquartered in {o}.",
        "{s} has its headquarters in {o}.",
        "The headquarters of {s} are in {o}.",
        "{s} is a company based in {o}.",
    ),
    "headquarters_city": (
        "The head office of {s} is in the city of {o}.",
        "{s} has its head office in {o}.",
        "{s} is based in the city of {o}.",
        "The headquarters of {s} are located in the city of {o}.",
    ),
    "founded": (
        "{s} was founded in {o}.",
        "{s} was established in {o}.",
        "The company {s} was founded in the year {o}.",
        "{s} was set up in {o}.",
    ),
    "stock_index": (
        "{s} is a constituent of the {o}.",
        "{s} is listed in the {o}.",
        "The {o} includes {s}.",
        "{s} is one of the companies in the {o}.",
    ),
    # science: units and constants
    "si_prefix": (
        "The SI prefix {s} means {o}.",
        "The metric prefix {s} stands for a factor of {o}.",
        "In the metric system, the prefix {s} means {o}.",
        "The prefix {s} multiplies a unit by {o}.",
    ),
    "conversion": (
        "One {s} is equal to {o}.",
        "One {s} equals {o}.",
        "{a_s} corresponds to {o}.",
        "A single {s} amounts to {o}.",
    ),
    "si_unit": (
        "The SI unit of {s} is the {o}.",
        "In the SI system, {s} is measured in {o_pl}.",
        "The {o} is the SI unit of {s}.",
        "The International System of Units measures {s} in {o_pl}.",
    ),
    "unit_symbol": (
        "The symbol for the {s} is {o}.",
        "The {s} is written with the symbol {o}.",
        "The unit symbol of the {s} is {o}.",
        "The {s} has the symbol {o}.",
    ),
    "named_after": (
        "The {s} is named after {o}.",
        "The unit called the {s} honours {o}.",
        "The {s} was named in honour of {o}.",
        "The name of the {s} comes from {o}.",
    ),
    "measures": (
        "The {s} is a unit of {o}.",
        "{a_s} is a unit used to measure {o}.",
        "The {s} measures {o}.",
        "{a_s} is a unit for {o}.",
    ),
    "constant_value": (
        "The {s} is approximately {o}.",
        "The value of the {s} is about {o}.",
        "The {s} is roughly {o}.",
        "The {s} has a value of about {o}.",
    ),
}
# The negated form of each template above, in the same order: template number k of a
# relation is negated by its number k here ("is" -> "is not", "has" -> "does not have").
NEGATED_TEMPLATES: dict[str, tuple[str, ...]] = {
    "city_in_country": (
        "{s} is not a city in {o}.",
        "The city of {s} is not located in {o}.",
        "{s} is not one of the cities of {o}.",
        "{s} is a city that does not lie in {o}.",
    ),
    "capital": (
        "The capital of {s} is not {o}.",
        "{o} is not the capital of {s}.",
        "{s} does not have {o} as its capital.",
        "The capital city of {s} is not {o}.",
    ),
    "continent": (
        "{s} is not a country in {o}.",
        "{s} is not located in {o}.",
        "{s} is not a country on the continent of {o}.",
        "The country of {s} does not lie in {o}.",
    ),
    "currency": (
        "The currency of {s} is not the {o}.",
        "{s} does not use the {o} as its currency.",
        "The official currency of {s} is not the {o}.",
        "In {s}, people do not pay with the {o}.",
    ),
    "official_language": (
        "{o} is not an official language of {s}.",
        "{o} is not one of the official languages of {s}.",
        "{s} does not have {o} as an official language.",
        "In {s}, {o} is not an official language.",
    ),
    "symbol": (
        "The chemical symbol for {s} is not {o}.",
        "{s} does not have the chemical symbol {o}.",
        "The symbol of the element {s} is not {o}.",
        "{o} is not the chemical symbol of {s}.",
    ),
    "atomic_number": (
        "The atomic number of {s} is not {o}.",
        "{s} does not have the atomic number {o}.",
        "{s} is not element number {o} in the periodic table.",
        "The element {s} does not have atomic number {o}.",
    ),
    "category": (
        "{s} is not {a_o}.",
        "{s} is not classified as {a_o}.",
        "{s} does not belong to the {o_pl}.",
        "The element {s} is not {a_o}.",
    ),
    "period": (
        "{s} is not in period {o} of the periodic table.",
        "{s} is not found in period {o} of the periodic table.",
        "The element {s} does not belong to period {o}.",
        "In the periodic table, {s} does not sit in period {o}.",
    ),
    "group": (
        "{s} is not in group {o} of the periodic table.",
        "{s} is not found in group {o} of the periodic table.",
        "The element {s} does not belong to group {o}.",
        "In the periodic table, {s} does not sit in group {o}.",
    ),
    "animal_class": (
        "{a_s} is not {a_o}.",
        "The {s} is not a kind of {o}.",
        "{a_s} is not classified as {a_o}.",
        "Biologists do not classify the {s} as {a_o}.",
    ),
    "headquarters_country": (
        "{s} is not headquartered in {o}.",
        "{s} does not have its headquarters in {o}.",
        "The headquarters of {s} are not in {o}.",
        "{s} is not a company based in {o}.",
    ),
    "headquarters_city": (
        "The head office of {s} is not in the city of {o}.",
        "{s} does not have its head office in {o}.",
        "{s} is not based in the city of {o}.",
        "The headquarters of {s} are not located in the city of {o}.",
    ),
    "founded": (
        "{s} was not founded in {o}.",
        "{s} was not established in {o}.",
        "The company {s} was not founded in the year {o}.",
        "{s} was not set up in {o}.",
    ),
    "stock_index": (
        "{s} is not a constituent of the {o}.",
        "{s} is not listed in the {o}.",
        "The {o} does not include {s}.",
        "{s} is not one of the companies in the {o}.",
    ),
    "si_prefix": (
        "The SI prefix {s} does not mean {o}.",
        "The metric prefix {s} does not stand for a factor of {o}.",
        "In the metric system, the prefix {s} does not mean {o}.",
        "The prefix {s} does not multiply a unit by {o}.",
    ),
    "conversion": (
        "One {s} is not equal to {o}.",
        "One {s} does not equal {o}.",
        "{a_s} does not correspond to {o}.",
        "A single {s} does not amount to {o}.",
    ),
    "si_unit": (
        "The SI unit of {s} is not the {o}.",
        "In the SI system, {s} is not measured in {o_pl}.",
        "The {o} is not the SI unit of {s}.",
        "The International System of Units does not measure {s} in {o_pl}.",
    ),
    "unit_symbol": (
        "The symbol for the {s} is not {o}.",
        "The {s} is not written with the symbol {o}.",
        "The unit symbol of the {s} is not {o}.",
        "The {s} does not have the symbol {o}.",
    ),
    "named_after": (
        "The {s} is not named after {o}.",
        "The unit called the {s} does not honour {o}.",
        "The {s} was not named in honour of {o}.",
        "The name of the {s} does not come from {o}.",
    ),
    "measures": (
        "The {s} is not a unit of {o}.",
        "{a_s} is not a unit used to measure {o}.",
        "The {s} does not measure {o}.",
        "{a_s} is not a unit for {o}.",
    ),
    "constant_value": (
        "The {s} is not approximately {o}.",
        "The value of the {s} is not close to {o}.",
        "The {s} is not roughly equal to {o}.",
        "The {s} does not have a value of about {o}.",
    ),
}
# Names that take "the" in running text.
WITH_THE = {
    "United States", "United Kingdom", "Netherlands", "Philippines", "Democratic Republic of the Congo",
    "Republic of the Congo", "Central African Republic", "Dominican Republic", "United Arab Emirates",
    "Gambia", "Bahamas", "Maldives", "Comoros", "Seychelles", "Solomon Islands", "Marshall Islands",
    "Czech Republic", "Vatican", "Cayman Islands", "Faroe Islands", "Falkland Islands",
}
PLURAL = {
    "fish": "fish", "hertz": "hertz", "lux": "lux", "siemens": "siemens", "henry": "henries",
    "noble gas": "noble gases",
}
