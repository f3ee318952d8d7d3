"""Trace a statement: P(true) of a trained probe at every token and layer, and the model's own answer
for the statement up to each token."""

import streamlit as st

from pages._scoring import running, scoring_probes
from pages._shared import context, job_panel, job_running, show_chart, start
from probing.dashboard.settings import EXAMPLES

ctx = context()
st.title("Trace a statement")
st.caption("Where inside the sentence does the reading change? Each cell is the P(true) a probe reads from "
           "the hidden state of one token at one layer, from one forward pass; below, what the model answers "
           "when asked about the statement cut after that token.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.analyses.trace import ALL_TOKENS, trace_statement  # noqa: E402
from probing.constants import PROBE_KINDS  # noqa: E402
from probing.dashboard.workflows import all_tokens_work  # noqa: E402
from probing.study.config import StudyConfig  # noqa: E402
from probing.analyses.scoring import check_statement, probe_layers  # noqa: E402
from probing.dashboard.trace_charts import trace_chart  # noqa: E402
from probing.dashboard.charts import probe_order  # noqa: E402

TYPED, PICKED = "Type a statement", "Pick one of the statements"
TRAINED_AT = {"last": "the statement's last token", "before_period": "the last token before the final period"}


def all_tokens_section(layers: list[int]) -> None:
    """Train a probe on every token of the sidebar's statements, to hold beside the probes trained at one."""
    st.caption("A probe trained at one token reads other tokens by extrapolation. This one is trained on the "
               "hidden states of every token of every statement of the sidebar's set (each labelled with its "
               "statement's label), so no token is new to it; it then joins the probes above.")
    if ctx.dataset is None:
        st.info("Choose a statement set in the sidebar to train on.")
        return
    left, right = st.columns(2)
    layer = left.selectbox("Layer", layers, key="all_tokens_layer")
    kind = right.selectbox("Probe kind", PROBE_KINDS, key="all_tokens_kind")
    config = ctx.study.config if ctx.study is not None else StudyConfig()

    def launch() -> None:
        start(ctx, "all_tokens", f"Training a {kind} probe on every token at layer {layer}",
              all_tokens_work(ctx.holder.activations(position), ctx.dataset, config, layer, kind),
              params={"fingerprint": model.fingerprint, "layer": layer, "kind": kind})

    st.button(f"Train on every token of the {len(ctx.dataset):,} statements", key="all_tokens_train",
              disabled=job_running(), on_click=launch)
    job_panel("all_tokens")


scoring = scoring_probes(ctx)
if scoring is not None:
    model, position, probes = scoring.model, scoring.position, scoring.probes
    probes.update({(layer, f"{kind} · {ALL_TOKENS}"): probe for (fingerprint, layer, kind), probe
                   in st.session_state.get("all_tokens", {}).items() if fingerprint == model.fingerprint})
    if not probes:
        st.info("No trained probe yet: a trace reads trained probes. Train one on **Train a probe**, or run the "
                "**Accuracy grid**, or open a results folder in the sidebar.")
        st.stop()
    source = st.radio("Statement", [TYPED, PICKED], horizontal=True, label_visibility="collapsed",
                      disabled=ctx.dataset is None)
    if source == PICKED and ctx.dataset is not None:
        frame = ctx.dataset.frame[["statement", "label", "topic"]]
        picked = st.dataframe(frame, height=220, hide_index=True, on_select="rerun", selection_mode="single-row",
                              key="trace_pick")
        rows = picked.selection.rows
        text = frame["statement"].iloc[rows[0]] if rows else ""
        if not rows:
            st.info("Click a row of the table to trace its statement.")
    else:
        text = st.text_input("Statement", value=EXAMPLES[0], key="trace_text")
    left, right = st.columns([1, 1])
    kinds = probe_order(kind for _, kind in probes)
    probe = left.selectbox("Probe", kinds, key="trace_probe")
    answers = right.toggle("The model's answer at each token", value=True, key="trace_answers",
                           help="One more forward pass of the question prompt per token, batched.")
    try:
        statement = check_statement(text) if text else None
    except ValueError as error:
        st.warning(f"Cannot trace this: {error}.")
        statement = None
    if statement is not None:
        with running(ctx, model, "trace"), st.spinner("Reading every token's hidden states…"):
            trace = trace_statement(ctx.holder.activations(position), probes, statement, answers)
        show_chart(trace_chart(trace, probe), key="trace")
        if position == "mean":
            st.caption("These probes were trained on the mean over the statement's tokens: no single token's hidden "
                       "state is what they saw, so every cell is an extrapolation.")
        else:
            st.caption(f"The probes were trained on {TRAINED_AT[position]} (outlined): only that column is what the "
                       "study measured. Elsewhere a probe reads hidden states it never saw in training, an "
                       "extrapolation to read as a hint, not a finding.")
        table = trace.table()
        st.download_button("Download the trace (CSV)", table.to_csv(index=False), file_name="trace.csv",
                           mime="text/csv", key="trace_download")
    with st.expander(f"Compare with a probe trained on every token ({ALL_TOKENS})"):
        all_tokens_section(probe_layers(probes))
