"""float16 dynamic loss scaling: an overflow step moves nothing and lowers the scale."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import dataset, tiny_data, tiny_model

from composeloop import step as cs
from composeloop.engine import compile_step
from composeloop.errors import ComposeError
from composeloop.parts.recipes import classifier_phase
from composeloop.step.accumulate import accumulated
from composeloop.step.precision import DynamicLossScale, loss_scaled

HUGE = 2.0**30  # scaled float16 gradients overflow (float16 tops out near 2**16)


@pytest.fixture(scope="module")
def float16_program():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[0].compute_dtype == "float16"
    loss_scale = DynamicLossScale(initial=HUGE, growth_interval=2)
    phase = loss_scaled(classifier_phase(keras.optimizers.Adam(0.01)), loss_scale)
    program = compile_step(cs.compose(phase, models={"model": model}))
    return model, phase.apply.optimizer, loss_scale, program


def values(variables):
    return [np.array(v.numpy()) for v in variables]


def test_overflow_step_changes_no_variable_and_lowers_the_scale(float16_program):
    model, optimizer, loss_scale, program = float16_program
    x, y = tiny_data(16)
    before = values([*model.weights, *optimizer.variables])
    assert program.train(iter(dataset(x, y, 16)), 1) == 1
    for after, earlier in zip(values([*model.weights, *optimizer.variables]), before, strict=True):
        np.testing.assert_array_equal(after, earlier)  # weights, Adam's slots and its iteration count
    assert float(loss_scale.scale) == HUGE / 2
    assert int(program.withheld_updates) == 1

    # A workable scale: updates go through, and two good steps in a row double it.
    loss_scale.scale.assign(8.0)
    assert program.train(iter(dataset(x, y, 8)), 2) == 2
    assert float(loss_scale.scale) == 16.0
    assert int(optimizer.iterations) == 2
    assert int(program.withheld_updates) == 1
    moved = [not np.array_equal(a, b) for a, b in zip(values(model.trainable_weights), before, strict=False)]
    assert all(moved)
    assert program.trace_counts["train"] == 1


def test_overflowing_micro_batch_is_left_out_of_the_accumulation():
    """Loss scaling composes with accumulation: an overflow is withheld before it is summed."""
    model = tiny_model()
    loss_scale = DynamicLossScale(initial=4.0, growth_interval=100)
    phase = loss_scaled(accumulated(classifier_phase(keras.optimizers.SGD(0.1)), 2), loss_scale)
    program = compile_step(cs.compose(phase, models={"model": model}))
    x, y = tiny_data(8)
    x[:4] = np.inf  # the first micro-batch's gradients are not finite
    before = values(model.weights)
    program.train(iter(dataset(x, y, 4)), 2)  # overflow, then one good micro-batch: no update yet
    for after, earlier in zip(values(model.weights), before, strict=True):
        np.testing.assert_array_equal(after, earlier)
    assert float(loss_scale.scale) == 2.0
    program.train(iter(dataset(x[4:], y[4:], 4)), 1)  # the second good one completes the pair
    assert not np.array_equal(values(model.weights)[0], before[0])
    assert all(np.isfinite(w).all() for w in values(model.weights))


def test_loss_scale_checks_its_arguments_and_build():
    with pytest.raises(ComposeError, match="factor"):
        DynamicLossScale(initial=0.0)
    with pytest.raises(ComposeError, match="not built"):
        cs.chain(loss_scaled(classifier_phase(keras.optimizers.SGD(0.1))).transform)(
            cs.Gradients([tf.ones(1)]), [], None
        )


def test_loss_scaling_is_transparent_when_nothing_overflows():
    """A power-of-two scale, multiplied in and divided out: the update is the unscaled one, bit for bit
    (float32 here), with a global-norm clip after the unscaling seeing the true gradient."""
    x, y = tiny_data(12)
    updates = []
    for scaled in (False, True):
        model = tiny_model(l2=0.01)
        initial = values(model.weights)
        phase = classifier_phase(keras.optimizers.SGD(0.5), transform=cs.clip_by_global_norm(0.1))
        if scaled:
            phase = loss_scaled(phase, DynamicLossScale(initial=2.0**12, growth_interval=1))
        compile_step(cs.compose(phase, models={"model": model})).train(iter(dataset(x, y, 6)), 2)
        updates.append([after - before for after, before in zip(values(model.weights), initial, strict=True)])
    for plain, scaled in zip(*updates, strict=True):
        np.testing.assert_array_equal(plain, scaled)
    assert any(np.abs(u).max() > 0 for u in updates[0])
