"""Forward, loss, aggregation and metric stages, one by one."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.step import Context, Replication


def context(batch, models=None, global_batch_size=None, replicas=1):
    size = global_batch_size if global_batch_size is not None else len(next(iter(batch.values())))
    return Context(
        batch={k: tf.constant(v) for k, v in batch.items()},
        models=models or {},
        training=True,
        seed=tf.constant([0, 0], tf.int64),
        step=tf.constant(0, tf.int64),
        global_batch_size=tf.constant(float(size)),
        replication=Replication(num_replicas=replicas),
    )


class ActivityPenalty(keras.layers.Layer):
    """Adds 0.5 * mean(x^2) with add_loss on every call."""

    def call(self, x):
        self.add_loss(0.5 * tf.reduce_mean(tf.square(x)))
        return x


@pytest.fixture(scope="module")
def regularised_model():
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(0.1)), ActivityPenalty()]
    )
    return model


def test_call_model_names_its_output(regularised_model):
    ctx = context({"x": np.ones((4, 3), np.float32)}, {"net": regularised_model})
    outputs = cs.call_model("net", inputs="x", output="scores")(ctx)
    assert list(outputs) == ["scores"] and outputs["scores"].shape == (4, 2)


def test_sparse_crossentropy_is_per_example_and_matches_keras():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], np.float32)
    labels = np.array([0, 1], np.int32)
    losses = cs.sparse_categorical_crossentropy()(context({"y": labels}), {"logits": tf.constant(logits)})
    expected = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    assert losses["loss"].shape == (2,)
    np.testing.assert_allclose(losses["loss"].numpy(), np.asarray(expected), rtol=1e-6)


def test_global_mean_divides_by_the_global_batch_and_weights_terms():
    losses = {"a": tf.constant([1.0, 3.0]), "b": tf.constant([2.0, 2.0])}
    # This replica holds 2 of a global batch of 8.
    value = cs.global_mean({"b": 0.5})(context({"x": np.zeros((2, 1))}, global_batch_size=8), losses)
    assert float(value) == pytest.approx((4.0 + 0.5 * 4.0) / 8)


def test_model_losses_are_read_inside_the_tape_and_split_over_replicas(regularised_model):
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    ctx = context({"x": x}, {"net": regularised_model}, replicas=2)
    kernel = regularised_model.layers[0].kernel
    with tf.GradientTape() as tape:
        outputs = cs.call_model("net")(ctx)
        extra = cs.model_losses("net")(ctx, {})
    expected_l2 = 0.1 * float(tf.reduce_sum(tf.square(kernel)))
    expected_activity = 0.5 * float(tf.reduce_mean(tf.square(outputs["logits"])))
    assert float(extra) == pytest.approx((expected_l2 + expected_activity) / 2, rel=1e-5)
    assert tape.gradient(extra, kernel) is not None  # recorded: it reaches the kernel


def test_total_and_weighted_add_terms():
    ctx = context({"x": np.zeros((2, 1))})
    losses = {"loss": tf.constant([1.0, 3.0])}
    aggregate = cs.total(cs.global_mean(), cs.weighted(3.0, cs.global_mean()))
    assert float(aggregate(ctx, losses)) == pytest.approx(2.0 + 6.0)


def test_gradient_of_an_aggregate_is_the_sum_of_its_weighted_terms():
    """Invariant 2 at a fixed point: d(total)/dw == sum of w_k d(term_k)/dw."""
    w = tf.Variable([0.5, -1.0])
    ctx = context({"x": np.zeros((2, 1))})

    def losses():
        return {"a": tf.stack([w[0] ** 2, w[1] ** 2]), "b": tf.stack([w[0] * w[1], 3.0 * w[0]])}

    def gradient(aggregate):
        with tf.GradientTape() as tape:
            value = aggregate(ctx, losses())
        return tape.gradient(value, w).numpy()

    combined = gradient(cs.global_mean({"a": 2.0, "b": -0.5}))
    parts = 2.0 * gradient(cs.global_mean({"b": 0.0})) - 0.5 * gradient(cs.global_mean({"a": 0.0}))
    np.testing.assert_allclose(combined, parts, rtol=1e-6)


def batch_states(metric, labels, logits, splits):
    """The metric state of the batch cut at `splits`, merged piece by piece."""
    state = metric.empty()
    for piece_labels, piece_logits in zip(np.split(labels, splits), np.split(logits, splits), strict=False):
        ctx = context({"y": piece_labels}, global_batch_size=max(len(piece_labels), 1))
        losses = cs.sparse_categorical_crossentropy()(ctx, {"logits": tf.constant(piece_logits)})
        state = metric.update(state, ctx, {"logits": tf.constant(piece_logits)}, losses)
    return state


@pytest.mark.property
@given(st.integers(1, 24), st.data())
def test_metrics_are_invariant_to_how_a_batch_is_split(size, data):
    """Invariants 7 and 8: any split gives the same state; accuracy within [0, 1]."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    labels = rng.integers(0, 3, size).astype(np.int32)
    logits = rng.normal(size=(size, 3)).astype(np.float32)
    cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=4)))
    for metric in (cs.mean_loss(), cs.accuracy()):
        whole = batch_states(metric, labels, logits, [])
        pieces = batch_states(metric, labels, logits, cuts)
        for field in metric.fields:
            # float64 sums of float32 values in another order: 1e-9 relative is many ulps of slack.
            assert float(pieces[field]) == pytest.approx(float(whole[field]), rel=1e-9)
    assert 0.0 <= float(cs.accuracy().result(whole)) <= 1.0


def test_merge_has_the_empty_state_as_identity_and_commutes():
    metric = cs.mean_loss()
    a = {"total": tf.constant(3.0, tf.float64), "count": tf.constant(2.0, tf.float64)}
    b = {"total": tf.constant(1.0, tf.float64), "count": tf.constant(5.0, tf.float64)}
    assert {k: float(v) for k, v in cs.merge(a, metric.empty()).items()} == {"total": 3.0, "count": 2.0}
    assert {k: float(v) for k, v in cs.merge(a, b).items()} == {k: float(v) for k, v in cs.merge(b, a).items()}
    assert float(metric.result(metric.empty())) == 0.0  # an empty state reads 0, not NaN


def test_mean_output_averages_an_output():
    metric = cs.mean_output("score", "d")
    state = metric.update(metric.empty(), context({"x": np.zeros((2, 1))}), {"d": tf.constant([[1.0], [3.0]])}, {})
    assert float(metric.result(state)) == 2.0
