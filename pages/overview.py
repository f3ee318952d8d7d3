"""Overview: what is loaded, the statements, the activation cache, and extraction."""

import streamlit as st

from pages._shared import context, extraction_controls, model_for, require_ready, show_chart

ctx = context()
st.title("Does the model know what is true?")
st.markdown(
    "Train small **probes** on a language model's hidden states to tell true statements from false "
    "ones (SAPLMA / *Geometry of Truth*). Pick a model, a statement set and a token position in the "
    "sidebar; extract activations once (they are cached on disk), then train probes, run the study's "
    "accuracy grid, compare truth directions and score your own statements.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.dashboard import charts  # noqa: E402
from probing.study.study import study_model  # noqa: E402

if ctx.model is None and ctx.study is not None:
    st.info(f"Results folder open: `{ctx.study.folder}`. Its accuracy grid and truth directions need no "
            "model; extracting and training here do.")
    model_for(ctx, study_model(ctx.study)[0], ctx.study)
elif require_ready(ctx):
    info = ctx.model.describe()
    st.subheader("Model")
    # Two rows of three: six cards in one row cut their values short ("embed…", "cpu · b…").
    cols = [*st.columns(3), *st.columns(3)]
    cols[0].metric("Model", info["model"], help=str(info["source"]))
    cols[1].metric("Device", f"{info['device']} · {info['dtype']}")
    cols[2].metric("Memory", f"{info['memory_gb']:.2f} GB")
    cols[3].metric("Blocks", info["blocks"], help=f"{ctx.model.n_hidden_states} hidden states: embeddings + one per block")
    cols[4].metric("Width", f"{info['width']:,}")
    cols[5].metric("Parameters", f"{info['parameters'] / 1e6:,.0f} M")

    dataset = ctx.dataset
    st.subheader(f"Statements: {dataset.name}")
    summary = dataset.summary()
    left, right = st.columns([2, 3])
    with left:
        show_chart(charts.label_balance_chart(summary), key="balance")
        st.caption(f"{len(dataset):,} statements in {len(dataset.topics)} topics; "
                   f"{dataset.labels.mean():.0%} true. Category splits hold one topic out.")
        if dataset.duplicates.count:
            st.warning(f"{dataset.duplicates.count} repeated statement(s), e.g. lines "
                       f"{next(iter(dataset.duplicates.where.values()))}.")
    with right:
        st.markdown("**Sample statements**")
        sample = dataset.frame.sample(min(8, len(dataset)), random_state=1)[["statement", "label", "topic"]]
        sample["label"] = sample["label"].map({1: "true", 0: "false"})
        st.dataframe(sample, hide_index=True, width="stretch")

    st.subheader("Activation cache")
    st.caption(f"Hidden states of every layer at the **{ctx.position}** token, stored under "
               f"`{ctx.cache_dir}/activations`. An interrupted extraction resumes where it stopped.")
    extraction_controls(ctx, key="extract_overview")
