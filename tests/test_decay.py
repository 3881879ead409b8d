"""Weight decay with exclusions: decoupled (the AdamW rule, any optimizer) and as an L2 gradient term."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import plain_sgd
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from composeloop import step as cs
from composeloop.engine import compile_step
from composeloop.testing import InvariantViolation, check_masked_untouched, context_for

EXCLUDE = ["bias", "normalization"]


def model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3), keras.layers.LayerNormalization(), keras.layers.Dense(2)]
    )


def gradients(variables, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=v.shape).astype(np.float32) for v in variables]


def excluded(variable) -> bool:
    return any(word in variable.path for word in EXCLUDE)


def test_decoupled_decay_around_adam_is_keras_adamw_schedule_and_exclusions_included():
    schedule = lambda: keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)  # noqa: E731
    ours, theirs = model(), model()
    adamw = keras.optimizers.AdamW(schedule(), weight_decay=0.2)
    adamw.exclude_from_weight_decay(var_list=[v for v in theirs.trainable_variables if excluded(v)])
    apply = cs.decoupled_weight_decay(cs.optimizer_apply(keras.optimizers.Adam(schedule())), 0.2, exclude=EXCLUDE)
    apply.build(ours.trainable_variables)
    for step in range(3):
        grads = gradients(ours.trainable_variables, step)
        apply([tf.constant(g) for g in grads], ours.trainable_variables)
        adamw.apply([tf.constant(g) for g in grads], theirs.trainable_variables)
    for a, b in zip(ours.trainable_variables, theirs.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


def test_under_plain_sgd_the_decoupled_and_the_l2_forms_agree():
    decoupled, coupled = model(), model()
    apply = cs.decoupled_weight_decay(plain_sgd(0.1), 0.3, exclude=EXCLUDE, learning_rate=0.1)
    apply.build(decoupled.trainable_variables)
    transform = cs.add_decayed_weights(0.3, exclude=EXCLUDE)
    context = context_for({"x": np.zeros((1, 4), np.float32)})
    for step in range(3):
        grads = [tf.constant(g) for g in gradients(decoupled.trainable_variables, step)]
        apply(grads, decoupled.trainable_variables)
        l2 = transform(cs.Gradients(grads), coupled.trainable_variables, context)
        plain_sgd(0.1)(l2.values, coupled.trainable_variables)
    for a, b in zip(decoupled.trainable_variables, coupled.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)


@pytest.fixture(scope="module")
def decayed_adam():
    net = model(seed=3)
    variables = net.trainable_variables
    stage = cs.decoupled_weight_decay(cs.optimizer_apply(keras.optimizers.Adam(0.05)), 0.5, exclude=EXCLUDE)
    stage.build(variables)
    return stage, variables


@pytest.mark.property
@settings(max_examples=15)
@given(st.data())
def test_excluded_variables_are_never_decayed(decayed_adam, data):
    stage, variables = decayed_adam
    elements = st.floats(-10, 10, width=32)
    grads = [data.draw(hnp.arrays(np.float32, tuple(v.shape), elements=elements)) for v in variables]
    check_masked_untouched(stage, grads, variables, EXCLUDE)
    with pytest.raises(InvariantViolation, match="decoupled_weight_decay moved variable '.*kernel'"):
        check_masked_untouched(stage, grads, variables, "kernel")  # the decayed ones do move


def test_bad_rates_exclusions_and_learning_rates_are_refused_naming_the_argument():
    for rate in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="decoupled_weight_decay: rate must be a finite number >= 0"):
            cs.decoupled_weight_decay(plain_sgd(0.1), rate, learning_rate=0.1)
        with pytest.raises(ValueError, match="add_decayed_weights: rate must be"):
            cs.add_decayed_weights(rate)
    with pytest.raises(ValueError, match="decoupled_weight_decay: learning_rate is needed"):
        cs.decoupled_weight_decay(plain_sgd(0.1), 0.1)
    with pytest.raises(ValueError, match="decoupled_weight_decay: learning_rate must be a finite number > 0"):
        cs.decoupled_weight_decay(plain_sgd(0.1), 0.1, learning_rate=0.0)
    everything = cs.decoupled_weight_decay(plain_sgd(0.1), 0.1, exclude=[""], learning_rate=0.1)
    with pytest.raises(ValueError, match=r"exclude='' matches every one of the 6 variables; nothing would be decayed"):
        everything.build(model().trainable_variables)


def test_an_exclusion_pattern_that_matches_nothing_warns_naming_it():
    stage = cs.decoupled_weight_decay(plain_sgd(0.1), 0.1, exclude=["bias", "embedding"], learning_rate=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage.build(model().trainable_variables)
    assert len(caught) == 1
    assert str(caught[0].message).startswith("decoupled_weight_decay: exclude pattern 'embedding' matches no variable")


def test_a_withheld_update_decays_nothing():
    net = model()
    phase = cs.Phase(
        "p",
        forward=cs.call_model("model"),
        loss=cs.sparse_categorical_crossentropy(),
        aggregate=cs.global_mean(),
        apply=cs.decoupled_weight_decay(plain_sgd(0.1), 0.5, learning_rate=1.0),
        transform=cs.skip_nonfinite(),
    )
    program = compile_step(cs.compose(phase, models={"model": net}))
    before = [v.numpy() for v in net.trainable_variables]
    x = np.full((2, 4), np.nan, np.float32)
    program.train(iter(tf.data.Dataset.from_tensors({"x": x, "y": np.zeros(2, np.int32)})), 1)
    for a, b in zip(before, net.trainable_variables, strict=True):
        np.testing.assert_array_equal(a, b.numpy())
    assert int(program.withheld_updates) == 1
