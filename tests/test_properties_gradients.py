"""Invariants 1, 2 and 5 as Hypothesis properties, through `composeloop.testing`'s checkers.

Transforms and aggregations run eagerly (no tracing); the step-level skip property compiles
its step once for all examples. Tolerances are the checkers' defaults, justified there.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import tiny_model
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from composeloop import step as cs
from composeloop.parts.recipes import classifier_step
from composeloop.testing import (
    check_aggregate_linearity,
    check_global_norm_clip,
    check_skip_nonfinite,
    context_for,
)
from composeloop.testing.strategies import NONFINITE, batches, gradient_lists

max_norms = st.floats(1e-3, 1e3)
weights = st.floats(-10.0, 10.0, allow_nan=False)


@pytest.mark.property
@given(gradient_lists(), max_norms)
def test_global_norm_clip_bounds_keeps_direction_and_is_identity_under_the_bound(grads, max_norm):
    """Invariant 1 on huge (to 3e38), tiny, subnormal and zero gradients."""
    check_global_norm_clip(cs.clip_by_global_norm(max_norm), grads, max_norm)


@pytest.mark.property
@given(gradient_lists(nonfinite=True), max_norms)
def test_global_norm_clip_never_lets_a_nonfinite_gradient_through(grads, max_norm):
    """Invariant 1: NaN and Inf in, finite and bounded out (also after skip_nonfinite)."""
    check_global_norm_clip(cs.clip_by_global_norm(max_norm), grads, max_norm)
    check_global_norm_clip(cs.chain(cs.skip_nonfinite(), cs.clip_by_global_norm(max_norm)), grads, max_norm)


@pytest.fixture(scope="module")
def two_headed():
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L2(0.1))])


@pytest.mark.property
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.just(4)), elements=st.floats(-3, 3, width=32)),
    weights,
    weights,
    weights,
    st.integers(1, 4),
)
def test_gradient_of_an_aggregate_is_the_sum_of_its_weighted_terms(two_headed, x, w_a, w_b, w_model, replicas):
    """Invariant 2, with the replica count scaling the model losses and the global batch."""
    context = context_for({"x": x}, {"net": two_headed}, replicas=replicas, global_batch_size=len(x) * replicas)

    def losses():
        out = two_headed(x)
        return {"a": tf.square(out[:, 0]), "b": tf.nn.softplus(out[:, 1])}

    aggregate = cs.total(cs.global_mean({"a": w_a, "b": w_b}), cs.weighted(w_model, cs.model_losses("net")))
    terms = [(w_a, cs.global_mean({"b": 0.0})), (w_b, cs.global_mean({"a": 0.0})), (w_model, cs.model_losses("net"))]
    check_aggregate_linearity(aggregate, terms, losses, two_headed.trainable_variables, context)


@pytest.mark.property
@given(gradient_lists(nonfinite=True))
def test_skip_nonfinite_withholds_every_poisoned_update(grads):
    """Invariant 5 at the transform: the update is withheld, also when chained with a clip."""
    check_skip_nonfinite(cs.skip_nonfinite(), grads)
    check_skip_nonfinite(cs.chain(cs.skip_nonfinite(), cs.clip_by_value(-1.0, 1.0), cs.clip_by_global_norm(1.0)), grads)


@pytest.fixture(scope="module")
def guarded_step():
    transform = cs.chain(cs.skip_nonfinite(), cs.clip_by_global_norm(1.0))
    return classifier_step(tiny_model(l2=0.01), keras.optimizers.Adam(0.1), transform=transform)


@pytest.mark.property
@given(batches(max_size=12), st.sampled_from(NONFINITE), st.data())
def test_a_nonfinite_batch_leaves_weights_and_optimizer_slots_untouched(guarded_step, batch, bad, data):
    """Invariant 5 for a compiled step: Adam's moments and iteration count do not move either."""
    row = data.draw(st.integers(0, len(batch["y"]) - 1))
    batch["x"][row, data.draw(st.integers(0, 4))] = bad
    check_skip_nonfinite(guarded_step, batch)


def test_clips_scale_norms_beyond_float32_to_the_bound():
    """Regressions found by the clip property: a norm above ~1e38 made the factor bound / norm
    subnormal, flushed to zero, so the clip zeroed the gradient; a norm above float32's max
    (3.4e38) overflowed to inf and the clip treated it as non-finite, zeroing it too; a small
    element next to a huge one went through a subnormal intermediate and came out 0."""
    check_global_norm_clip(cs.clip_by_global_norm(1.0), [np.float32(8.50706e37)], 1.0)
    check_global_norm_clip(cs.clip_by_global_norm(1.0), [np.float32(0.0), np.array([3e38, 3e38], np.float32)], 1.0)
    # 1.0 next to 3e38: its scaled value 1.9e-37 is a normal float, but 1 / 3e38 is not.
    check_global_norm_clip(cs.clip_by_global_norm(57.0), [np.float32(1.0), np.float32(3e38)], 57.0)
    clipped = cs.clip_by_norm(1.0)(cs.Gradients([tf.constant([3e38, 3e38])]), [], None).values[0]
    np.testing.assert_allclose(clipped.numpy(), [0.5**0.5, 0.5**0.5], rtol=1e-6)
