"""Lookahead over any apply stage: the slow weights follow the closed form every k updates."""

from __future__ import annotations

import attrs
import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import plain_sgd, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.parts.recipes import classifier_phase
from composeloop.testing import StepRunner
from composeloop.testing.strategies import batches

CONFIGS = {"k3": (3, 0.5), "k2": (2, 0.8)}


def adam_step(k: int | None = None, alpha: float = 0.5):
    phase = classifier_phase(keras.optimizers.Adam(0.05))
    if k is not None:
        phase = attrs.evolve(phase, apply=cs.lookahead(phase.apply, k, alpha))
    return cs.compose(phase, models={"model": tiny_model(seed=0)})


@pytest.fixture(scope="module")
def runners():
    # tiny_model is seeded: every runner starts from the same weights.
    return {"fast": StepRunner(adam_step()), **{name: StepRunner(adam_step(*c)) for name, c in CONFIGS.items()}}


@pytest.mark.property
@settings(max_examples=8)
@given(st.sampled_from(sorted(CONFIGS)), st.lists(batches(max_size=6), min_size=1, max_size=7))
def test_slow_weights_follow_the_closed_form_every_k_updates(runners, name, steps):
    """The fast optimizer run alone, with the sync done by hand every k steps, is lookahead."""
    k, alpha = CONFIGS[name]
    runner, fast = runners[name], runners["fast"]
    stage = runner.step.phases[0].apply
    weights = fast.step.models["model"].trainable_variables
    runner.restore()
    fast.restore()
    slow = [v.numpy() for v in weights]
    try:
        runner.train_steps([[batch] for batch in steps])
        for start in range(0, len(steps), k):
            chunk = steps[start : start + k]
            fast.train_steps([[batch] for batch in chunk])
            if len(chunk) == k:
                slow = [s + np.float32(alpha) * (v.numpy() - s) for s, v in zip(slow, weights, strict=True)]
                for variable, value in zip(weights, slow, strict=True):
                    variable.assign(value)
        for mine, reference in zip(stage.owner, weights, strict=True):
            np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-6, atol=1e-7)
        for mine, reference in zip(stage.slow, slow, strict=True):
            np.testing.assert_allclose(mine.numpy(), reference, rtol=1e-6, atol=1e-7)
        assert int(stage.count) == len(steps)
    finally:
        runner.restore()
        fast.restore()
    assert all(r.program.trace_counts.get("train", 0) <= 1 for r in runners.values())


def test_slow_weights_start_at_the_weights_of_the_first_update_not_of_compile_time():
    variable = tf.Variable([1.0, 2.0])
    stage = cs.lookahead(plain_sgd(1.0), k=2, alpha=0.5)
    stage.build([variable])
    variable.assign([10.0, 10.0])  # e.g. weights loaded after compiling
    stage([tf.constant([1.0, 1.0])], [variable])
    stage([tf.constant([1.0, 1.0])], [variable])
    np.testing.assert_allclose(stage.slow[0].numpy(), [9.0, 9.0])  # 10 + 0.5 * (8 - 10)
    np.testing.assert_allclose(variable.numpy(), [9.0, 9.0])


@pytest.mark.parametrize(
    ("k", "alpha", "match"),
    [(0, 0.5, "k must be"), (2.5, 0.5, "k must be"), (5, 0.0, "alpha must be"), (5, 1.5, "alpha must be")],
)
def test_bad_arguments_are_refused_naming_them(k, alpha, match):
    with pytest.raises(ValueError, match=f"lookahead: {match}"):
        cs.lookahead(plain_sgd(0.1), k, alpha)
