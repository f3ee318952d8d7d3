"""Every environment variable the tool reads, declared once: what it sets and which option it stands
in for. Both faces read them through here (the command line and the dashboard take the defaults of
``StudyConfig``, which reads its own); importable without torch."""

from __future__ import annotations

import os

VARIABLES = {
    "PROBING_MODEL": "the default model of a study (StudyConfig.model; --model overrides it)",
    "PROBING_CACHE": "the default activation cache folder (StudyConfig.cache; --cache overrides it)",
    "PROBING_RESULTS": "where results folders are listed and new ones saved (default results/); the dashboard "
                       "opens it at start when it is a results folder",
    "PROBING_MODELS": "the per-user cache of converted models (default ~/.cache/probing/models)",
    "PROBING_DTYPE": "the model's default dtype on every device (float32, bfloat16 or float16), in place of the "
                     "one chosen for the hardware; --dtype overrides it",
    "PROBING_TRAIN_DTYPE": "the dtype the MLP probes train in (float32 or bfloat16), in place of the one chosen "
                           "for the hardware",
    "PROBING_DATA_ROOTS": "more folders the dashboard may read statement sets from, separated by "
                          f"{os.pathsep!r}",
    "PROBING_PER_TOPIC": "the dashboard's default number of built-in statements per topic",
    "PROBING_EXAMPLE": "0: the dashboard does not open the example study on a start with no results folder",
}


def read(name: str) -> str | None:
    """The value of the declared variable ``name``, or None where it is unset or empty."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not one of the declared variables {', '.join(VARIABLES)}")
    return os.environ.get(name) or None
