"""Steer: add a truth direction to the residual stream and watch the model's own True/False answer move."""

import numpy as np
import streamlit as st

from pages._shared import context, extraction_controls, job_panel, job_running, require_ready, show_chart, start
from probing.study.config import SteeringConfig
from probing.constants import STEER_DIRECTIONS, STEER_POSITIONS
from probing.study.results import steering_notes, steering_shown
from probing.dashboard.settings import EXAMPLES, layer_options

DEFAULTS = SteeringConfig()
DIRECTION_HELP = {"mass_mean": "mass-mean (true mean - false mean)", "linear": "linear probe weights",
                  "ttpd": "TTPD's t_G", "random": "random (control)", "shuffled": "shuffled labels (control)"}
POSITION_HELP = {"statement": "the statement's tokens", "last": "the prompt's last token",
                 "all": "every token, generated ones too"}

ctx = context()
st.title("Steer the model")
st.caption("Does the model use its truth direction? Add a multiple of it to the residual stream and watch what "
           "the model itself answers when asked whether the statement is true. alpha = 1 moves a statement by the "
           "distance between the false and true class means along the direction (measured on the statements the "
           "direction was fitted on), so alpha = 1 is the same step for every model and layer. Random and "
           "shuffled-label directions of the same length are the controls.")

# Imported once the title is drawn: torch (which these import) takes seconds to import.
from probing.dashboard import analysis_charts  # noqa: E402
from probing.analyses.generalization import centring_groups  # noqa: E402
from probing.analyses.steering import continuation, fit_directions, true_false_margins  # noqa: E402
from probing.dashboard.workflows import steering_work  # noqa: E402

if require_ready(ctx):
    busy = job_running()
    missing = extraction_controls(ctx, key="extract_steer")
    if missing:
        st.info("The directions are fitted on the statements' activations: extract them above.")
    else:
        dataset = ctx.dataset
        options = sorted(layer for layer in layer_options(ctx.model.n_hidden_states) if layer > -ctx.model.n_hidden_states)
        kinds = [kind for kind in STEER_DIRECTIONS if kind != "ttpd" or len(dataset.polarities) > 1]
        c1, c2, c3 = st.columns([2, 3, 2])
        kind = c1.radio("Direction", kinds, key="steer_kind", format_func=DIRECTION_HELP.get, disabled=busy)
        probe_layer = c2.select_slider("Direction read at layer", options, value=DEFAULTS.probe_layer
                                       if DEFAULTS.probe_layer in options else options[-1], key="steer_probe_layer",
                                       disabled=busy)
        default_span = tuple(layer for layer in DEFAULTS.steered_layers if layer in options) or (probe_layer,)
        low, high = c2.select_slider("Added at layers", options, value=(min(default_span), max(default_span)),
                                     key="steer_layers", disabled=busy)
        position = c3.radio("At tokens", STEER_POSITIONS, key="steer_position", format_func=POSITION_HELP.get,
                            disabled=busy)
        alpha = st.slider("alpha", -8.0, 8.0, 0.0, 0.5, key="steer_alpha", disabled=busy)
        layers = tuple(layer for layer in options if low <= layer <= high)

        cache = st.session_state.setdefault("steer_directions", {})
        key = (ctx.key, probe_layer)
        if key not in cache:
            cache[key] = fit_directions(ctx.activations.layer(dataset.statements, probe_layer), dataset.labels,
                                        probe_layer, kinds, dataset.frame["polarity"].to_numpy(),
                                        centring_groups(dataset))
        direction = cache[key][kind]
        st.caption(f"{DIRECTION_HELP[kind]} read at layer {probe_layer}, fitted on all {len(dataset):,} statements "
                   f"of the set; alpha = 1 is {direction.scale:.3f} along it (the dose-response below fits on "
                   "training facts only and measures on held-out ones).")

        if "steer_text" not in st.session_state:
            st.session_state["steer_text"] = EXAMPLES[1]
        text = st.text_input("Statement", key="steer_text")
        if text.strip():
            model = ctx.model
            with ctx.holder.using() as current:
                if current is not model:
                    st.warning("Another session switched the model a moment ago: reload the page.")
                else:
                    try:
                        base = true_false_margins(model, [text])[0, 0]
                        steered = true_false_margins(model, [text], layers=layers, vector=direction.vector,
                                                     alphas=[alpha], position=position)[0, 0]
                        prompt = f"{text.strip()} This statement is"
                        plain = continuation(model, prompt)
                        moved = continuation(model, prompt, layers=layers, vector=direction.vector, alpha=alpha)
                    except ValueError as error:
                        st.warning(f"Cannot steer with this statement: {error}")
                        base = None
            if base is not None:
                left, right = st.columns([3, 2])
                with left:
                    show_chart(analysis_charts.steered_answer_chart({"without steering": base, f"alpha = {alpha:g}": steered}),
                               key="steer_answer")
                    st.caption("Asked 'Is the following statement true or false?', the model's P(\" True\") - "
                               f"P(\" False\"), renormalised over the two answers: {base:+.4f} without steering, "
                               f"{steered:+.4f} at alpha = {alpha:g}.")
                with right:
                    st.markdown(f"**{prompt}** …")
                    st.markdown(f"without steering: *{plain.strip() or '(nothing)'}*")
                    st.markdown(f"alpha = {alpha:g}: *{moved.strip() or '(nothing)'}*")
                    st.caption("Greedy continuations; the steered one gets the vector at every position.")

        st.subheader("Dose-response on held-out statements")
        st.caption("Directions fitted on the training facts of a group-held-out split, measured on held-out "
                   "statements (half true) at each alpha, in batched forward passes, with the controls beside them.")
        d1, d2 = st.columns([3, 1])
        d1.multiselect("Directions", kinds, default=[k for k in DEFAULTS.directions if k in kinds],
                       key="steer_dose_kinds", disabled=busy)
        d2.number_input("Held-out statements", 2, 2000, min(DEFAULTS.statements, 100), step=20,
                        key="steer_dose_n", disabled=busy)

        def launch() -> None:
            state = st.session_state
            config = SteeringConfig(probe_layer=int(state["steer_probe_layer"]), layers=layers,
                                    directions=tuple(state["steer_dose_kinds"]), statements=int(state["steer_dose_n"]),
                                    position=state["steer_position"])
            start(ctx, "steering", "Dose-response",
                  steering_work(ctx.activations, dataset, config, ctx.results_root, ctx.study))

        st.button("Measure the dose-response", key="steer_button", type="primary",
                  disabled=busy or not st.session_state.get("steer_dose_kinds"), on_click=launch)
        job_panel("steering")
        study = ctx.study
        if study is not None and not study.steering.empty and not busy:
            table = study.steering
            show_chart(analysis_charts.dose_response_chart(table), key="steer_dose")
            best = table[~table.direction.isin(["random", "shuffled"])].assign(
                mean=lambda t: (t.margin_true + t.margin_false) / 2).dropna(subset=["mean"])  # finite answers
            slope = best.groupby("direction").apply(lambda rows: np.polyfit(rows.alpha, rows["mean"], 1)[0],
                                                    include_groups=False)
            st.caption(f"From `{study.folder.name}`: layers {table['layers'].iloc[0]}, direction from layer "
                       f"{table['layer'].iloc[0]}, {table['statements'].iloc[0]} statements. Shift of the mean "
                       "answer per unit alpha: " + ", ".join(f"{k} {v:+.4f}" for k, v in slope.items()) + ". Error bars: "
                       "95 % intervals of each mean over the statements.")
            st.dataframe(steering_shown(table).round(4), hide_index=True)
            for note in steering_notes(table):
                st.info(note)
