"""The built-in true/false statement set: six topics of facts, each as a true and a false statement,
affirmative ("Paris is a city in France.") and negated ("Paris is not a city in Japan.").

The fact tables are in ``data/``, the generator (how statements are written, and why
neither their words nor their shape give the label away) in :mod:`probing.data.builtin.generator`.
"""

from probing.data.builtin.generator import BUILTIN_TOPICS, fact_table, load_builtin
from probing.data.builtin.templates import NEGATED_TEMPLATES, TEMPLATES

__all__ = ["BUILTIN_TOPICS", "NEGATED_TEMPLATES", "TEMPLATES", "fact_table", "load_builtin"]
