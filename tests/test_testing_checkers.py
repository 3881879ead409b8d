"""Each checker of `composeloop.testing` fails, in words, on a deliberately wrong stage or step.

The planted bugs: clipping before the all-reduce, a loss scaled twice by the replica count,
a metric averaged as the mean of per-batch means, a GAN phase that updates both models, and
transforms that let NaN through. Plus: the module stays optional and its strategies are sound.
"""

from __future__ import annotations

import os
import subprocess
import sys

import attrs
import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import plain_sgd, tiny_model
from hypothesis import given
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.parts import gan
from composeloop.parts.recipes import classifier_phase, classifier_step
from composeloop.testing import (
    InvariantViolation,
    check_accumulation,
    check_aggregate_linearity,
    check_batch_split_invariance,
    check_ema_replica_invariance,
    check_global_norm_clip,
    check_metric_range,
    check_phase_isolation,
    check_replica_invariance,
    check_skip_nonfinite,
    context_for,
)
from composeloop.testing.strategies import gradient_lists, splits

MAX_NORM = 0.05
RNG = np.random.default_rng(7)
BATCH = {"x": RNG.normal(size=(9, 5)).astype(np.float32), "y": RNG.integers(0, 3, 9).astype(np.int32)}


# -- planted bugs ------------------------------------------------------------------------


def naive_clip(max_norm):
    """Scales by max_norm / norm without guarding non-finite norms: NaN goes through."""
    return cs.map_gradients(lambda gs: [g * tf.minimum(1.0, max_norm / tf.linalg.global_norm(gs)) for g in gs])


def scaled_twice(context, losses):
    """Global-batch mean, then divided by the replica count AGAIN."""
    return cs.global_mean()(context, losses) / context.replication.num_replicas


@attrs.frozen
class ClipsBeforeAllReduce(cs.Step):
    """A step whose replicas clip their own gradients before summing them."""

    def __call__(self, context, states):
        all_reduce = context.replication.sum

        def clip_then_sum(values):
            if isinstance(values, list):  # the raw per-replica gradients
                values = list(tf.clip_by_global_norm(values, MAX_NORM)[0])
            return all_reduce(values)

        replication = attrs.evolve(context.replication, sum=clip_then_sum)
        return cs.Step.__call__(self, attrs.evolve(context, replication=replication), states)


def clips_before_all_reduce():
    step = classifier_step(tiny_model(l2=0.01), keras.optimizers.SGD(1.0))
    return ClipsBeforeAllReduce(step.phases, step.models)


def loss_scaled_twice():
    phase = attrs.evolve(classifier_phase(keras.optimizers.SGD(1.0)), aggregate=scaled_twice)
    return cs.compose(phase, models={"model": tiny_model()})


def mean_of_batch_means(name="loss"):
    """Averages per-batch mean losses: wrong as soon as batches differ in size."""

    def update(state, context, outputs, losses):
        mean = tf.reduce_mean(tf.cast(losses["loss"], tf.float64))
        return cs.merge(state, {"means": mean, "batches": tf.constant(1.0, tf.float64)})

    return cs.Metric(name, ("means", "batches"), update, lambda s: tf.math.divide_no_nan(s["means"], s["batches"]))


def mean_of_means_step():
    phase = attrs.evolve(classifier_phase(keras.optimizers.SGD(0.1)), metrics=(mean_of_batch_means(),))
    return cs.compose(phase, models={"model": tiny_model()})


# -- the checkers catch them -------------------------------------------------------------


def test_clip_checker_catches_nan_through_a_clip():
    with pytest.raises(InvariantViolation, match=r"global-norm clip \(1\) violated: gradient 0 comes out .* nan"):
        check_global_norm_clip(naive_clip(1.0), [np.array([np.nan, 1.0], np.float32)], 1.0)


def test_clip_checker_catches_a_per_tensor_clip_posing_as_global():
    with pytest.raises(InvariantViolation, match="global norm 1.41421.*above max_norm 1"):
        check_global_norm_clip(cs.clip_by_norm(1.0), [np.array([3.0, 4.0]), np.array([3.0, 4.0])], 1.0)


def test_clip_checker_catches_a_clip_that_changes_small_gradients():
    with pytest.raises(InvariantViolation, match="already within max_norm 1, but gradient 0 changed"):
        check_global_norm_clip(cs.scale(0.5), [np.array([0.3, 0.4])], 1.0)


def test_linearity_checker_catches_a_loss_scaled_twice_by_the_replica_count():
    w = tf.Variable([0.5, -1.0], name="w")
    context = context_for({"x": np.zeros((3, 1))}, replicas=2, global_batch_size=6)

    def losses():
        return {"loss": tf.stack([w[0] ** 2, w[1] ** 2, w[0] * w[1]])}

    with pytest.raises(
        InvariantViolation, match=r"aggregate linearity \(2\) violated: .*variable 'w(:0)?'.*2 replica\(s\)"
    ):
        check_aggregate_linearity(scaled_twice, [(1.0, cs.global_mean())], losses, [w], context)


def test_replica_checker_catches_clipping_before_the_all_reduce():
    with pytest.raises(InvariantViolation, match=r"replica invariance \(3, 9\) violated: .*split \[4, 5\].*update of"):
        check_replica_invariance(clips_before_all_reduce, BATCH, [4, 5])


def test_replica_checker_catches_a_loss_scaled_twice():
    with pytest.raises(InvariantViolation, match="the update of variable .*expected .*got"):
        check_replica_invariance(loss_scaled_twice, BATCH, [3, 6])


def test_replica_checker_catches_a_metric_averaged_as_mean_of_means():
    with pytest.raises(InvariantViolation, match="metric 'loss' state field '(means|batches)'"):
        check_replica_invariance(mean_of_means_step, BATCH, [2, 7])


def test_split_checker_catches_a_metric_averaged_as_mean_of_means():
    losses = {"loss": np.array([1.0, 1.0, 4.0, 4.0, 4.0], np.float32)}
    with pytest.raises(
        InvariantViolation, match=r"batch-split invariance \(7\) violated: metric 'loss': pieces of sizes \[2, 3\]"
    ):
        check_batch_split_invariance(mean_of_batch_means(), {"y": np.zeros(5)}, [2, 3], losses=losses)


def test_range_checker_catches_an_accuracy_above_one():
    correct = cs.accuracy()
    counts = cs.Metric("accuracy", correct.fields, correct.update, lambda state: state["total"])
    logits = np.eye(3, dtype=np.float32)
    with pytest.raises(InvariantViolation, match=r"metric 'accuracy' gives 3 on 3 examples, outside \[0, 1\]"):
        check_metric_range(counts, {"y": np.arange(3)}, 0.0, 1.0, outputs={"logits": logits})


def test_skip_checker_catches_a_transform_that_lets_nan_through():
    with pytest.raises(
        InvariantViolation, match=r"gradient 1 holds nan at index \(0,\), but the transform still applies"
    ):
        check_skip_nonfinite(cs.clip_by_value(-1.0, 1.0), [np.ones(2), np.array([np.nan, 1.0])])


def test_skip_checker_catches_a_step_that_applies_a_nan_update():
    step = classifier_step(tiny_model(), keras.optimizers.Adam(0.1), transform=cs.identity())
    poisoned = {**BATCH, "x": np.where(np.arange(5) == 2, np.nan, BATCH["x"]).astype(np.float32)}
    with pytest.raises(InvariantViolation, match=r"skip non-finite \(5\) violated: .*changed variable"):
        check_skip_nonfinite(step, poisoned)


def test_phase_checker_catches_a_generator_phase_that_updates_both_models():
    keras.utils.set_random_seed(0)
    g = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation="tanh")])
    d = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    greedy = attrs.evolve(
        gan.generator_phase(keras.optimizers.Adam(0.1), latent_dim=2), trains=("generator", "discriminator")
    )
    step = cs.compose(
        gan.discriminator_phase(keras.optimizers.Adam(0.1), latent_dim=2),
        greedy,
        models={"generator": g, "discriminator": d},
    )
    x = {"x": RNG.uniform(-1, 1, (6, 4)).astype(np.float32)}
    check_phase_isolation(step, x, "discriminator")  # the discriminator phase is fine
    with pytest.raises(InvariantViolation, match=r"phase 'generator' \(own models: generator\) changed variable '.*"):
        check_phase_isolation(step, x, "generator", owns=("generator",))


def summed_loss_step():
    """A planted bug: the loss summed over the batch, not averaged, so micro-batches of unequal
    sizes weigh wrongly."""
    summed = lambda context, losses: tf.reduce_sum(losses["loss"])  # noqa: E731
    phase = attrs.evolve(classifier_phase(keras.optimizers.SGD(0.1)), aggregate=summed)
    return cs.compose(phase, models={"model": tiny_model()})


def test_accumulation_checker_catches_a_loss_summed_over_the_batch():
    parts = [{"x": np.ones((n, 5), np.float32) * n, "y": np.zeros(n, np.int32)} for n in (1, 4)]
    with pytest.raises(
        InvariantViolation, match=r"accumulation \(4\) violated: 2 accumulated micro-batches of sizes \[1, 4\]"
    ):
        check_accumulation(summed_loss_step, parts)


def ema_of_a_loss_scaled_twice():
    phase = attrs.evolve(loss_scaled_twice().phases[0], apply=cs.ema(plain_sgd(1.0), 0.5))
    return cs.compose(phase, models={"model": tiny_model()})


def test_ema_checker_catches_shadows_that_differ_across_replicas():
    with pytest.raises(
        InvariantViolation, match=r"EMA replica invariance \(3, 9\) violated: 2 steps .*the change of EMA shadow of '"
    ):
        check_ema_replica_invariance(ema_of_a_loss_scaled_twice, [BATCH, BATCH])


# -- the module itself ---------------------------------------------------------------------


def run_python(code):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_composeloop_does_not_import_testing_and_testing_explains_a_missing_hypothesis():
    done = run_python("import sys, composeloop; assert 'composeloop.testing' not in sys.modules")
    assert done.returncode == 0, done.stderr
    done = run_python("import sys; sys.modules['hypothesis'] = None; import composeloop.testing")
    assert done.returncode != 0
    assert "ImportError: composeloop.testing needs Hypothesis" in done.stderr
    assert "pip install 'composeloop[testing]'" in done.stderr


@pytest.mark.property
@given(st.integers(0, 30), st.integers(1, 5), st.booleans(), st.data())
def test_splits_cut_the_whole_batch(size, parts, allow_empty, data):
    if not allow_empty and size < parts:
        return
    sizes = data.draw(splits(size, parts=parts, allow_empty=allow_empty))
    assert sum(sizes) == size and len(sizes) == parts
    assert all(s >= (0 if allow_empty else 1) for s in sizes)


@pytest.mark.property
@given(gradient_lists(nonfinite=True))
def test_nonfinite_gradient_lists_hold_a_nonfinite_value(grads):
    assert any(not np.isfinite(g).all() for g in grads)
