"""Score a passage: each sentence's P(true) from the trained probes at one layer and from the model itself."""

import streamlit as st

from pages._scoring import running, scoring_probes
from pages._shared import context
from probing.dashboard.settings import EXAMPLES

ctx = context()
st.title("Score a passage")
st.caption("Paste a paragraph or upload a text file: it is split into sentences, and each is scored as a "
           "statement of its own, by every trained probe at the layer chosen (from the hidden state) and by the "
           "model when asked whether it is true. Which of these claims does the model internally doubt?")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.analyses.passage import MODEL, default_layer, read_passage, score_passage, scorers  # noqa: E402
from probing.analyses.scoring import probe_layers  # noqa: E402
from probing.dashboard.passage_view import passage_html  # noqa: E402

EXAMPLE = " ".join(EXAMPLES)


def use_example() -> None:
    st.session_state["passage_text"] = EXAMPLE


def use_file() -> None:
    """An uploaded file's text goes into the text area (where it can be edited)."""
    upload = st.session_state.get("passage_file")
    st.session_state.pop("passage_file_error", None)
    if upload is not None:
        try:
            st.session_state["passage_text"] = read_passage(upload.getvalue(), upload.name)
        except ValueError as error:
            st.session_state["passage_file_error"] = str(error)


scoring = scoring_probes(ctx)
if scoring is not None:
    model, position, probes = scoring.model, scoring.position, scoring.probes
    if not probes:
        st.info("No trained probe yet. Train one on **Train a probe**, or run the **Accuracy grid**; "
                "meanwhile the model's own answers are shown below.")
    st.button("Use an example", key="passage_example", on_click=use_example)
    text = st.text_area("Passage", key="passage_text", height=160,
                        placeholder="The city of Paris is located in France. The chemical symbol for gold is Fe.")
    st.file_uploader("Or upload a text file", type=["txt"], key="passage_file", on_change=use_file)
    if "passage_file_error" in st.session_state:
        st.warning(f"Cannot read this file: {st.session_state['passage_file_error']}.")
    layers = probe_layers(probes)
    layer = st.selectbox("Layer of the probes", layers, index=layers.index(default_layer(probes)),
                         key="passage_layer") if probes else None
    if not text.strip():
        st.info("Paste a passage above, upload a .txt file, or use the example.")
        st.stop()
    # Scored once per passage, layer, model and probes: choosing another colour below scores nothing again.
    key = (text, layer, model.fingerprint, position, tuple((k, id(p)) for k, p in probes.items()))
    if st.session_state.get("passage_key") != key:
        # Refused with the reason: an empty or too long passage, a sentence over the token limit.
        with running(ctx, model, "score"), st.spinner("Scoring each sentence…"):
            table = score_passage(ctx.holder.activations(position), probes, text, layer)
        st.session_state["passage_key"], st.session_state["passage_table"] = key, table
    table = st.session_state["passage_table"]
    names = scorers(table)
    scorer = st.radio("Colour by", names, horizontal=True, key="passage_colour",
                      format_func=lambda name: "the model's own answer" if name == MODEL else f"{name} probe")
    st.html(passage_html(text, table, scorer))
    st.caption("Background: orange-red where P(true) is near 0, white at 0.5, green near 1. Hover over a "
               "sentence for every scorer's number. *model*: the model's next-token P(' True') renormalised over "
               "' True' and ' False' (*model_mass*: how much probability the two get at all).")
    st.dataframe(table, hide_index=True)
    st.download_button("Download the table (CSV)", table.to_csv(index=False), file_name="passage_scores.csv",
                       mime="text/csv", key="passage_csv")
