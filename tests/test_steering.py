"""Steering the embedded model along a direction: hooks that always leave, exact alpha = 0, a planted
direction that moves the answer, the controls' length, and the `steer` command."""

import numpy as np
import pandas as pd
import pytest
import torch

from probing.store.activations import Activations
from probing.data.builtin import load_builtin
from probing.cli.main import main
from probing.study.config import SteeringConfig
from probing.analyses.grid import random_split
from probing.model.layout import adding
from probing.model.loading import LoadedModel, ModelSpec
from probing.study.results import StudyResult
from probing.analyses.steering import (
    ask_batch, continuation, dose_response, fit_directions, steer, steering_setup, true_false_margins,
)

STATEMENTS = ["The city of Paris is located in France.", "The city of Paris is located in Japan.",
              "Gold has the chemical symbol Fe.", "Water boils at 100 degrees Celsius at sea level."]


def answer_direction(model) -> np.ndarray:
    """The unembedding of " True" minus that of " False": a direction that must move the answer."""
    weights = model.model.get_output_embeddings().weight.float()
    true, false = (model.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in ("True", "False"))
    direction = (weights[true] - weights[false]).detach().numpy()
    return direction / np.linalg.norm(direction)


def logits(model, inputs):
    with torch.inference_mode():
        return model.model(**inputs).logits


def test_hooks_leave_the_model_as_it_was_even_after_an_error(model):
    inputs, _, mask = ask_batch(model, STATEMENTS[:2])
    before = logits(model, inputs)
    hooks = [list(block._forward_hooks) for block in model.blocks]  # transformers adds its own
    with steer(model, (-9, -8), answer_direction(model), 4.0, mask):
        steered = logits(model, inputs)
    assert not torch.equal(steered, before)
    assert torch.equal(logits(model, inputs), before)
    with pytest.raises(RuntimeError, match="inside the block"):
        with steer(model, (-5,), answer_direction(model), 4.0):
            raise RuntimeError("inside the block")
    assert torch.equal(logits(model, inputs), before)
    assert [list(block._forward_hooks) for block in model.blocks] == hooks


def test_model_hooks_edit_block_outputs_and_adding_touches_only_its_positions(model):
    """``model.hooks`` hands a block's output to its edit and the next block its result; ``adding`` adds a
    vector at the masked positions of passes of the mask's length only. (transformers records a block's
    hidden state before the hooks run, so the edit shows from the next block on.)"""
    inputs = model.tokenizer(STATEMENTS[:2], return_tensors="pt", padding=True)

    def states():
        with torch.inference_mode():
            return torch.stack(model.model(**inputs, output_hidden_states=True).hidden_states)

    before = states()
    seen = []
    with model.hooks({3: lambda hidden: seen.append(hidden.shape) or hidden * 0}):
        zeroed = states()
    assert seen == [before[4].shape] and torch.equal(zeroed[:5], before[:5]) and not torch.equal(zeroed, before)
    positions = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool)
    positions[0, 2] = True
    with adding(model, {model.block_of(5): torch.ones(model.width)}, positions):
        added = states()
    changed = (added[6] != before[6]).any(-1)  # causal attention carries it to the later positions of row 0
    assert changed[0, 2] and not changed[0, :2].any() and not changed[1].any()
    with adding(model, {0: torch.ones(model.width)}, positions[:, :1]):  # another length: a generated token's
        assert torch.equal(states(), before)
    with pytest.raises(ValueError, match=r"block\(s\) \[30\] do not exist: this model has blocks 0 to 29"):
        with model.hooks({30: lambda hidden: hidden}):
            pass
    assert torch.equal(states(), before)


def test_alpha_zero_is_the_unsteered_answer_exactly(model):
    plain = true_false_margins(model, STATEMENTS)
    zero = true_false_margins(model, STATEMENTS, layers=(-11, -10, -9), vector=answer_direction(model) * 50,
                              alphas=(0.0,))
    assert np.array_equal(plain, zero)


def test_a_planted_direction_moves_the_answer_monotonically(model):
    alphas = (-8.0, -4.0, -2.0, 0.0, 2.0, 4.0, 8.0)
    margins = true_false_margins(model, STATEMENTS, layers=(-1,), vector=answer_direction(model), alphas=alphas,
                                 position="last")
    assert (np.diff(margins, axis=1) > 0).all(), margins  # every statement, every step
    assert (margins[:, -1] - margins[:, 0] > 0.3).all()
    # the statement's own tokens at the last block feed no later position: no effect on the answer
    inert = true_false_margins(model, STATEMENTS, layers=(-1,), vector=answer_direction(model), alphas=alphas)
    np.testing.assert_allclose(inert, inert[:, [3]].repeat(len(alphas), axis=1), atol=1e-6)


def test_the_statement_mask_covers_exactly_the_statement(model):
    inputs, last, mask = ask_batch(model, STATEMENTS[:2])
    for row, statement in enumerate(STATEMENTS[:2]):
        assert model.tokenizer.decode(inputs["input_ids"][row][mask[row]]).strip() == statement
        assert last[row] == inputs["attention_mask"][row].sum() - 1
    with pytest.raises(ValueError, match="position 'middle' is not one of statement, last, all"):
        ask_batch(model, STATEMENTS, "middle")


def test_controls_have_the_length_of_the_real_direction(model, shared_cache):
    dataset = load_builtin(per_topic=48)
    activations = Activations(model=model, cache_dir=shared_cache)
    activations.ensure(dataset.statements)
    setup = steering_setup(dataset, activations, -9, statements=24)
    directions = setup.directions
    assert set(directions) == {"mass_mean", "linear", "ttpd", "random", "shuffled"}
    for direction in directions.values():
        assert np.linalg.norm(direction.unit) == pytest.approx(1, abs=1e-5)
    assert directions["random"].scale == directions["shuffled"].scale == directions["mass_mean"].scale > 0
    assert np.linalg.norm(directions["random"].vector) == pytest.approx(np.linalg.norm(directions["mass_mean"].vector))
    # alpha = 1 of mass-mean moves the fitting statements' false mean onto their true mean, along it
    features, labels = activations.layer(dataset.statements, -9), dataset.labels
    fitted = fit_directions(features, labels, -9, ["mass_mean"])["mass_mean"]
    gap = features[labels == 1].mean(0) - features[labels == 0].mean(0)
    np.testing.assert_allclose(fitted.vector, gap, rtol=1e-4, atol=1e-5)
    # held-out statements only, half of them true
    assert len(setup.statements) == 24 and setup.labels.sum() == 12
    assert set(setup.statements) <= set(np.array(dataset.statements)[random_split(dataset).test])
    table = dose_response(model, setup.statements, setup.labels, {k: directions[k] for k in ("mass_mean", "random")},
                          (-10, -9), (-2.0, 0.0, 2.0))
    assert len(table) == 6 and set(table.direction) == {"mass_mean", "random"}
    at_zero = table[table.alpha == 0]
    assert (at_zero[["shift_true", "shift_false", "flipped"]].abs() < 1e-6).all().all()
    assert ((at_zero.nie == 0) | at_zero.nie.isna()).all()  # NaN: undefined, the model's own gap is noise


def test_blocks_are_found_or_the_architecture_is_named(model):
    assert len(model.blocks) == 30 and model.block_of(-1) == 29 and model.block_of(-30) == 0
    with pytest.raises(ValueError, match="layer -31 is not the output of a block"):
        model.block_of(-31)
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=8))
    with pytest.raises(ValueError, match="cannot find the decoder blocks of BertForMaskedLM"):
        LoadedModel(ModelSpec("bert"), bert, tokenizer=None, fingerprint="x").blocks


def test_a_steered_continuation_differs_and_the_plain_one_is_greedy(model):
    prompt = "The city of Paris is located in Japan. This statement is"
    plain = continuation(model, prompt, max_new_tokens=6)
    assert plain == continuation(model, prompt, max_new_tokens=6)
    pushed = continuation(model, prompt, layers=(-1,), vector=answer_direction(model), alpha=1000.0,
                          max_new_tokens=6)
    assert "true" in pushed.lower() and "true" not in plain.lower()  # every position, generated ones too


def test_the_steer_command_writes_its_table_into_the_results_folder(tmp_path, capsys):
    data = load_builtin(per_topic=24).to_csv(tmp_path / "small.csv")
    cache = tmp_path / "cache"
    cache.mkdir()
    out = tmp_path / "study"
    assert main(["reproduce", "--dataset", str(data), "--cache", str(cache), "--out", str(out), "--layers", "-9",
                 "--probes", "linear", "--no-controls"]) == 0
    capsys.readouterr()
    assert main(["steer", "--results", str(out), "--dataset", str(data), "--cache", str(cache), "--probe-layer", "-9",
                 "--layers", "-10,-9", "--alphas", "-2,0,2",
                 "--directions", "mass_mean,random", "--statements", "12"]) == 0
    printed = capsys.readouterr().out
    assert "Steering small with embedded: layers -10,-9, directions from layer -9" in printed
    saved = pd.read_csv(out / "steering.csv")
    assert len(saved) == 6 and set(saved.statements) == {12} and (out / "steering.md").is_file()
    study = StudyResult.load(out)
    assert study.meta["steering"] == SteeringConfig(layers=(-10, -9), alphas=(-2, 0, 2),
                                                    directions=("mass_mean", "random"), statements=12).to_dict()
    assert not study.results.empty  # the grid is still there
    with pytest.raises(SystemExit) as usage:  # refused by the flag's own check, before the folder is read
        main(["steer", "--results", str(out), "--dataset", str(data), "--alphas", "1,inf"])
    assert usage.value.code == 2 and "--alphas: alphas must be finite numbers" in capsys.readouterr().err
