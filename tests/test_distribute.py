"""Replica-exact steps: 2 replicas (logical CPUs) give what 1 replica gives on the same batch."""

from __future__ import annotations

import attrs
import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import consecutive_batches, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.engine import compile_step
from composeloop.parts.recipes import classifier_phase
from composeloop.step.accumulate import accumulated
from composeloop.step.apply import apply_variables
from composeloop.testing import mirrored_strategy

MAX_NORM = 0.05  # small enough that the clip is active on nearly every drawn batch


@pytest.fixture(scope="module")
def mirrored():
    # One strategy for the process: separate MirroredStrategy objects in one process can
    # reuse collective instance keys and abort each other's all-reduces.
    return mirrored_strategy(2)


def build(strategy):
    with strategy.scope():
        model = tiny_model(l2=0.01)
        phase = classifier_phase(keras.optimizers.SGD(1.0), transform=cs.clip_by_global_norm(MAX_NORM))
        program = compile_step(cs.compose(phase, models={"model": model}), strategy=strategy)
    return model, program, [v.numpy() for v in model.trainable_variables]


@pytest.fixture(scope="module")
def programs(mirrored):
    one = build(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two = build(mirrored)
    return one, two


def one_step(built, parts):
    """Resets the model, runs one step with replica i reading parts[i]; returns the update."""
    model, program, initial = built
    for variable, value in zip(model.trainable_variables, initial, strict=True):
        variable.assign(value)
    program.reset("train")
    strategy = program.strategy
    dataset_parts = parts if strategy.num_replicas_in_sync > 1 else [merge(parts)]

    def per_worker(_):
        return consecutive_batches(dataset_parts)

    program.train(iter(strategy.distribute_datasets_from_function(per_worker)), 1)
    update = [v.numpy() - i for v, i in zip(model.trainable_variables, initial, strict=True)]
    return update, program.states("train")


def merge(parts):
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


@pytest.mark.property
@settings(max_examples=15)
@given(st.integers(2, 24), st.data())
def test_two_replicas_equal_one_on_any_split(programs, size, data):
    """Invariants 3 and 9: same update and metric states; the clip bounds the real update."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    batch = {"x": rng.normal(size=(size, 5)).astype(np.float32), "y": rng.integers(0, 3, size).astype(np.int32)}
    cut = data.draw(st.integers(1, size - 1))
    parts = [{k: v[:cut] for k, v in batch.items()}, {k: v[cut:] for k, v in batch.items()}]
    one_update, one_states = one_step(programs[0], parts)
    two_update, two_states = one_step(programs[1], parts)
    for a, b in zip(one_update, two_update, strict=True):
        # Summation order differs across replicas: float32 rounding, far below the step size.
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for metric, fields in one_states.items():
        assert fields == pytest.approx(two_states[metric], rel=1e-6)
    norm = np.sqrt(sum(float(np.sum(u.astype(np.float64) ** 2)) for u in two_update))
    assert norm <= MAX_NORM * (1 + 1e-4)  # learning rate 1: the update is the clipped gradient
    assert programs[1][1].trace_counts["train"] == 1


def test_keras_per_replica_global_clipnorm_exceeds_the_bound(mirrored):
    """What composeloop avoids: Keras clips each replica's gradient before its all-reduce."""
    strategy = mirrored
    with strategy.scope():
        weight = tf.Variable([0.0, 0.0])
        optimizer = keras.optimizers.SGD(1.0, global_clipnorm=MAX_NORM)
        optimizer.build([weight])

    @tf.function
    def step(batch):
        def replica(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(x * weight) / 4.0  # global batch of 4 rows
            optimizer.apply_gradients([(tape.gradient(loss, weight), weight)])

        strategy.run(replica, args=(batch,))

    rows = tf.data.Dataset.from_tensors(tf.ones([4, 2])).unbatch().batch(4)
    step(next(iter(strategy.experimental_distribute_dataset(rows))))
    assert float(tf.norm(weight)) == pytest.approx(2 * MAX_NORM, rel=1e-5)  # twice the bound


def sign_descent(gradients, variables):
    """A user's own apply stage: a plain function that assigns the variables."""
    for gradient, variable in zip(gradients, variables, strict=True):
        variable.assign_sub(0.01 * tf.sign(gradient))


APPLY_STAGES = {
    "adam_clipnorm": lambda: cs.optimizer_apply(keras.optimizers.Adam(0.01, clipnorm=0.05)),
    "adamw": lambda: cs.optimizer_apply(keras.optimizers.AdamW(0.01, weight_decay=0.5)),
    "loss_scale_optimizer": lambda: cs.optimizer_apply(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.5))),
    "function": lambda: sign_descent,
    # Every wrapper around a Keras optimizer: called per replica, the wrappers' own work once.
    "wrapped_adam": lambda: cs.ema(
        cs.lookahead(cs.decoupled_weight_decay(cs.optimizer_apply(keras.optimizers.Adam(0.01)), 0.5), k=2), 0.8
    ),
}


def copies(variables):
    """Every replica's copy of each variable, as arrays."""
    tensors = [v.value if isinstance(v, keras.Variable) else v for v in variables]
    return [[c.numpy() for c in getattr(t, "values", (t,))] for t in tensors]


@pytest.mark.parametrize("kind", APPLY_STAGES)
def test_each_kind_of_apply_stage_runs_once_on_two_replicas(mirrored, kind):
    """Already-summed gradients are applied once: after two steps, every replica's copy of
    the weights and of the apply stage's state (slots, step count) equals one replica's."""
    rng = np.random.default_rng(1)
    batch = {"x": rng.normal(size=(12, 5)).astype(np.float32), "y": rng.integers(0, 3, 12).astype(np.int32)}
    results = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), mirrored):
        with strategy.scope():
            model = tiny_model()
            apply = APPLY_STAGES[kind]()
            phase = attrs.evolve(classifier_phase(keras.optimizers.SGD(0.0)), apply=apply)
            program = compile_step(cs.compose(phase, models={"model": model}), strategy=strategy)
        data = program.distribute(tf.data.Dataset.from_tensor_slices(batch).batch(6))
        assert program.train(iter(data), 2) == 2
        results.append((copies(model.trainable_variables), copies(apply_variables(apply))))
    (one_weights, one_state), (two_weights, two_state) = results
    for one, two in zip(one_weights + one_state, two_weights + two_state, strict=True):
        assert len(two) == 2 or len(one) == len(two)
        for copy in two:
            np.testing.assert_allclose(copy, one[0], rtol=1e-5, atol=1e-6)


def test_one_mirrored_replica_applies_a_decision_taken_in_the_step_like_one_device():
    """Accumulation decides each update in the compiled step; a Keras optimizer under a
    one-replica MirroredStrategy merge-calls, which a tf.cond around it cannot hold."""
    rng = np.random.default_rng(2)
    batch = {"x": rng.normal(size=(16, 5)).astype(np.float32), "y": rng.integers(0, 3, 16).astype(np.int32)}
    results = []
    for strategy in (tf.distribute.OneDeviceStrategy("/cpu:0"), mirrored_strategy(1)):
        with strategy.scope():
            model = tiny_model()
            apply = cs.ema(cs.optimizer_apply(keras.optimizers.Adam(0.01)), 0.8)
            phase = accumulated(attrs.evolve(classifier_phase(keras.optimizers.SGD(0.0)), apply=apply), 2)
            program = compile_step(cs.compose(phase, models={"model": model}), strategy=strategy)
        assert program.train(iter(program.distribute(tf.data.Dataset.from_tensor_slices(batch).batch(4))), 4) == 4
        assert int(program.withheld_updates.numpy()) == 2
        results.append([v.numpy() for v in [*model.trainable_variables, *apply_variables(apply)]])
    for one_device, mirrored in zip(*results, strict=True):
        np.testing.assert_allclose(mirrored, one_device, rtol=1e-6, atol=1e-7)
