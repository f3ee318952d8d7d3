"""Probe a statement: P(true) at every layer from the trained probes, and what the model itself answers."""

import streamlit as st

from pages._scoring import running, scoring_probes
from pages._shared import context, show_chart
from probing.dashboard.settings import EXAMPLES

ctx = context()
st.title("Probe a statement")
st.caption("Type any sentence. Left: the probability of *true* that each trained probe reads from the "
           "hidden state at its layer. Right: what the model says when asked whether the statement is "
           "true (its next-token probabilities for ' True' and ' False').")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing import model_says_true, score_statements  # noqa: E402
from probing.dashboard import charts  # noqa: E402
from probing.analyses.scoring import check_statement  # noqa: E402


def use_example(text: str) -> None:
    st.session_state["statement_text"] = text


scoring = scoring_probes(ctx)
if scoring is not None:
    model, position, probes = scoring.model, scoring.position, scoring.probes
    st.markdown("**Examples**")
    cols = st.columns(3)
    for i, example in enumerate(EXAMPLES):
        cols[i % 3].button(example, key=f"example_{i}", on_click=use_example, args=(example,), width="stretch")
    text = st.text_area("Statement", key="statement_text", height=80,
                        placeholder="The city of Paris is located in France.")
    if not probes:
        st.info("No trained probe yet. Train one on **Train a probe**, or run the **Accuracy grid**; "
                "meanwhile the model's own answer is shown below.")
    try:
        statement = check_statement(text)
    except ValueError as error:
        if text.strip():
            st.warning(f"Cannot score this: {error}.")
        else:
            st.info("Type a statement above or click an example.")
        statement = None
    if statement is not None:
        left, right = st.columns([3, 1])
        with running(ctx, model, "score"):  # e.g. more tokens than extraction allows
            with right:
                with st.spinner("Asking the model…"):
                    answer = model_says_true(model, statement)
                show_chart(charts.model_answer_chart(answer), key="model_answer")
                st.caption(f"' True' and ' False' together get {answer['mass']:.1%} of the model's "
                           "next-token probability; the bars renormalise over the two.")
            if probes:
                with left:
                    with st.spinner("Reading the hidden states…"):
                        scores = score_statements(ctx.holder.activations(position), probes, [statement])
                    show_chart(charts.statement_layers_chart(scores), key="statement_layers", height=340)
                    best = scores.loc[scores["p_true"].sub(0.5).abs().idxmax()]
                    st.caption(f"{len(probes)} probe(s). Most confident: {best['probe']} at layer "
                               f"{best['layer']} says P(true) = {best['p_true']:.2f}. Above the dashed "
                               "line the probe calls the statement true.")
