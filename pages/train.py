"""Train a probe: pick the settings, watch loss and accuracy per epoch, then per-topic results and controls."""

from dataclasses import replace

import pandas as pd
import streamlit as st

from pages._shared import context, job_panel, job_running, require_ready, start, show_chart, trained_probes
from probing.probes.params import LINEAR_SOLVERS
from probing.study.config import StudyConfig
from probing.dashboard.settings import layer_options

ctx = context()
st.title("Train a probe")
st.caption("A probe reads one layer's hidden state and predicts whether the statement is true. "
           "Hold one topic out to test whether what it learned transfers to a topic it never saw "
           "(the study's category split), or use a random 80/20 split.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing import PROBE_KINDS  # noqa: E402
from probing.dashboard import charts  # noqa: E402
from probing.analyses.grid import RANDOM_SPLIT  # noqa: E402
from probing.dashboard.workflows import train_work  # noqa: E402

if require_ready(ctx):
    busy = job_running()
    dataset = ctx.dataset
    options = layer_options(ctx.model.n_hidden_states)
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("Layer (from the end)", options, index=options.index(-9) if -9 in options else 0,
                         key="train_layer", disabled=busy,
                         help="-1 is the output of the final norm; -5 the fifth hidden state from the end.")
    kind = c2.selectbox("Probe", PROBE_KINDS, key="train_kind", disabled=busy,
                        help="linear: logistic regression; tiny/small/medium: MLPs (medium = SAPLMA's "
                             "256-128-64); mass_mean: difference of class means.")
    heldout_options = (dataset.topics if len(dataset.topics) > 1 else []) + [RANDOM_SPLIT]
    heldout = c3.selectbox("Held-out topic", heldout_options, key="train_heldout", disabled=busy,
                           format_func=lambda t: "random 80/20 split" if t == RANDOM_SPLIT else t)
    # Training settings start from the open results folder's (train a cell as its study did), else the defaults.
    base = ctx.study.config if ctx.study is not None else StudyConfig()
    c4, c5, c6 = st.columns(3)
    if kind == "linear":
        c4.radio("Linear solver", list(LINEAR_SOLVERS), index=list(LINEAR_SOLVERS).index(base.linear_solver),
                 horizontal=True, key="train_solver", disabled=busy, format_func=LINEAR_SOLVERS.get)
    solver = st.session_state.get("train_solver", base.linear_solver)
    stepwise = replace(base, linear_solver=solver).probe_config(kind).trains_in_epochs
    c4.number_input("Epochs", 1, 500, base.epochs, key="train_epochs", disabled=busy or not stepwise,
                    help=f"The study trains {StudyConfig().epochs} epochs, as SAPLMA does. "
                         "L-BFGS and mass-mean probes ignore this.")
    rates = sorted({1e-4, 3e-4, 1e-3, 3e-3, 1e-2, base.lr})
    c5.select_slider("Learning rate", rates, value=base.lr, key="train_lr", disabled=busy or not stepwise,
                     format_func=lambda v: f"{v:g}")
    c6.number_input("Seed", 0, 10_000, 0, key="train_seed", disabled=busy)

    def launch() -> None:
        """Button callback: reads the settings from session state, so a value changed in the
        same interaction as the click is the one used."""
        state = st.session_state
        kind, heldout, layer = state["train_kind"], state["train_heldout"], int(state["train_layer"])
        config = replace(base, model=ctx.model.spec.name, position=ctx.position,
                         epochs=int(state["train_epochs"]), lr=float(state["train_lr"]),
                         linear_solver=state.get("train_solver", base.linear_solver))
        name = "random split" if heldout == RANDOM_SPLIT else f"held out {heldout}"
        start(ctx, "train", f"Training {kind} probe at layer {layer} ({name})",
              train_work(ctx.activations, dataset, config, layer, kind, heldout, int(state["train_seed"]),
                         ctx.results_root),
              {"epochs": config.epochs if config.probe_config(kind).trains_in_epochs else None})

    st.button("Train", type="primary", key="train_button", disabled=busy, on_click=launch)

    def live(job):
        records = job.records_so_far()
        if records:
            show_chart(charts.training_dynamics_chart(records, job.params.get("epochs")), key="live_dynamics")
            last = records[-1]
            step = (f"Epoch {last['epoch']} / {job.params['epochs']}" if job.params.get("epochs")
                    else f"Round {last['epoch']} (10 L-BFGS iterations each)")
            st.caption(f"{step}: train accuracy "
                       f"{last['train_accuracy']:.3f}, held-out accuracy {last.get('heldout_accuracy', float('nan')):.3f}")

    job_panel("train", live=live)

    outcome = st.session_state.get("last_train")
    if outcome is not None and not busy:
        row = outcome.row
        split = "random split" if outcome.heldout == RANDOM_SPLIT else f"held out: {outcome.heldout}"
        st.subheader(f"{outcome.kind} probe · layer {outcome.layer} · {split}")
        m = st.columns(4)
        m[0].metric("Held-out accuracy", f"{row['accuracy']:.3f}", help=f"{row['n_test']} statements")
        m[1].metric("Text-only control", f"{row['text_only_accuracy']:.3f}",
                    help="An n-gram classifier on the words alone, same split. High values mean the "
                         "data leaks the answer through its wording.")
        m[2].metric("Shuffled-label control", f"{row['shuffled_accuracy']:.3f}",
                    help="The same probe trained on shuffled labels; should sit near 0.5.")
        m[3].metric("Trained on", f"{row['n_train']:,}", help="training statements")
        st.caption(f"Saved as a results folder: `{outcome.study.folder}` "
                   f"(`probing score \"...\" --results {outcome.study.folder}` reads it).")
        show_chart(charts.training_dynamics_chart(outcome.history), key="final_dynamics")
        st.caption("Training dynamics per epoch: on the training statements the mean over the epoch's "
                   "batches, on the held-out ones the value after the epoch (L-BFGS: both after each round "
                   "of 10 iterations). A widening gap means the probe learns topic-specific cues.")
        a, b, c = st.columns([3, 2, 3])
        with a:
            show_chart(charts.topic_accuracy_chart(outcome.per_topic), key="topic_accuracy")
            st.caption("Orange: the held-out topic; grey: training accuracy on the topics it was trained on.")
        with b:
            show_chart(charts.confusion_chart(outcome.confusion), key="confusion")
        with c:
            show_chart(charts.controls_chart(row["accuracy"], row["text_only_accuracy"], row["shuffled_accuracy"]),
                       key="controls")
            st.caption("The probe should beat both controls; dashed line = chance.")
    trained = trained_probes()
    if trained:
        table = pd.DataFrame([
            {"model": o.study.config.model, "position": o.position, "layer": o.layer, "probe": o.kind,
             "held out": o.heldout, "accuracy": round(o.row["accuracy"], 3),
             "solver": o.probe.config.solver if o.kind == "linear" else "",
             "epochs": len(o.history), "lr": o.probe.lr, "seed": int(o.row["seed"]), "folder": o.study.folder.name}
            for o in trained.values()])
        with st.expander(f"Probes kept for *Probe a statement* ({len(trained)})"):
            st.dataframe(table, hide_index=True)
