"""What the pages that score typed text share (Probe a statement, Score a passage, Trace a statement): the
probes they read, and holding the model while they run it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import streamlit as st

from pages._shared import Context, model_for, trained_probes

if TYPE_CHECKING:
    from probing.model.loading import LoadedModel


@dataclass
class Scoring:
    """What the pages that score typed text read: the model, its token position and the probes."""

    model: LoadedModel
    position: str
    probes: dict  # (layer, kind) -> Probe


def scoring_probes(ctx: Context) -> Scoring | None:
    """The open results folder's probes (trained on every statement, reading its model as it ran there)
    joined by the probes this session trained on the Train page that read the same model at the same
    token (they win for the same layer and kind); None, with what to do, when the model is not loaded."""
    from probing.study.study import model_notes, study_model  # imports torch: after the page's title

    study = ctx.study
    if study is not None:
        spec, position = study_model(study)[0], study.config.position
    else:
        spec, position = (ctx.model.spec if ctx.model else None), ctx.position
    model = model_for(ctx, spec, study)
    if model is None:
        return None
    for note in model_notes(study, model.fingerprint) if study is not None else []:
        st.warning(f"Note: {note}.")
    probes = dict(study.probes) if study is not None else {}
    session = trained_probes()
    mine = {(layer, kind): outcome.probe for (fingerprint, where, layer, kind), outcome in session.items()
            if (fingerprint, where) == (model.fingerprint, position)}
    probes.update(mine)
    if len(mine) < len(session):
        st.caption(f"{len(session) - len(mine)} probe(s) trained this session read another model or token "
                   "position and are not shown.")
    return Scoring(model, position, probes)


@contextmanager
def running(ctx: Context, model: LoadedModel, what: str) -> Iterator[None]:
    """Hold the model for the forward passes inside (no other session switches it meanwhile); stop the page
    when another session switched it a moment ago, or with "Cannot {what} this: ..." when the input cannot
    be scored (e.g. more tokens than extraction allows)."""
    with ctx.holder.using() as current:
        if current is not model:
            st.warning("Another session switched the model a moment ago: reload the page.")
            st.stop()
        try:
            yield
        except ValueError as error:
            st.warning(f"Cannot {what} this: {error}")
            st.stop()
