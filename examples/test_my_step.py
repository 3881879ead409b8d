"""Testing your own composed step with composeloop.testing: a pytest file to copy.

The step below has a hand-written gradient transform and a hand-written metric. The tests
draw batches, splits and gradients with Hypothesis and hand them to composeloop's checkers,
which compile the step once and fail with a sentence naming the broken invariant:

    pytest examples/test_my_step.py
    COMPOSELOOP_HYPOTHESIS=thorough pytest examples/test_my_step.py   # 500 examples each
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop import testing
from composeloop.testing import strategies as cst

testing.configure_cpu_replicas(2)  # before TensorFlow first runs a device: 2 replicas on one CPU
testing.load_profile()  # ci | dev | thorough, from $COMPOSELOOP_HYPOTHESIS

FEATURES, CLASSES, MAX_NORM = 4, 3, 0.1
pytestmark = pytest.mark.property


def centred():
    """My transform: removes each gradient's mean."""
    return cs.map_gradients(lambda grads: [g - tf.reduce_mean(g) for g in grads])


def confident(threshold: float = 0.5) -> cs.Metric:
    """My metric: the fraction of examples predicted with probability above `threshold`.
    Its state is two sums, so that any split of the data merges to the same value."""

    def update(state, context, outputs, losses):
        hits = tf.cast(tf.reduce_max(tf.nn.softmax(outputs["logits"]), axis=-1) > threshold, tf.float64)
        return cs.merge(state, {"hits": tf.reduce_sum(hits), "count": tf.cast(tf.size(hits), tf.float64)})

    return cs.Metric("confident", ("hits", "count"), update, lambda s: tf.math.divide_no_nan(s["hits"], s["count"]))


def build_step() -> cs.Step:
    """My step. The checkers call this once per replica count (inside a strategy's scope)."""
    model = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(6, activation="relu"), keras.layers.Dense(CLASSES)]
    )
    phase = cs.Phase(
        name="classifier",
        forward=cs.call_model("model", inputs="x", output="logits"),
        loss=cs.sparse_categorical_crossentropy(labels="y", logits="logits"),
        aggregate=cs.total(cs.global_mean(), cs.model_losses("model")),
        transform=cs.chain(cs.skip_nonfinite(), centred(), cs.clip_by_global_norm(MAX_NORM)),
        apply=cs.optimizer_apply(keras.optimizers.SGD(0.5)),
        trains=("model",),
        metrics=(cs.mean_loss(), cs.accuracy(), confident()),
    )
    return cs.compose(phase, models={"model": model})


my_batches = cst.batches(features=FEATURES, classes=CLASSES, max_size=16)


@given(my_batches, st.data())
def test_two_replicas_train_like_one(batch, data):
    split = data.draw(cst.splits(len(batch["y"]), parts=2))
    testing.check_replica_invariance(build_step, batch, split)


@pytest.fixture(scope="module")
def my_step():
    return build_step()


@given(my_batches, st.sampled_from([np.nan, np.inf]))
def test_a_nan_batch_changes_nothing(my_step, batch, bad):
    batch["x"][0, 0] = bad
    testing.check_skip_nonfinite(my_step, batch)


@given(my_batches, st.data())
def test_my_metric_merges_and_stays_in_range(batch, data):
    logits = data.draw(cst.gradient_lists(min_tensors=1, max_tensors=1, huge=False).map(lambda g: g[0]))
    logits = np.resize(logits, (len(batch["y"]), CLASSES)).astype(np.float32)
    sizes = data.draw(cst.splits(len(batch["y"])))
    testing.check_batch_split_invariance(confident(), batch, sizes, outputs={"logits": logits})
    testing.check_metric_range(confident(), batch, 0.0, 1.0, outputs={"logits": logits})
