"""Gradient transforms: each built-in, `chain`, and the clip invariants as properties."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.step import Gradients

CONTEXT = None  # the built-in transforms do not read the context


def run(transform, values, apply=True):
    result = transform(Gradients([tf.constant(v, tf.float32) for v in values], apply), [], CONTEXT)
    return [r.numpy() for r in result.values], bool(tf.convert_to_tensor(result.apply))


finite_floats = st.floats(-1e30, 1e30, allow_nan=False, allow_infinity=False).map(lambda v: float(np.float32(v)))
gradient_lists = st.lists(st.lists(finite_floats, min_size=1, max_size=6), min_size=1, max_size=4)


def test_identity_and_scale():
    values, applied = run(cs.identity(), [[1.0, -2.0]])
    assert values[0].tolist() == [1.0, -2.0] and applied
    values, _ = run(cs.scale(0.5), [[1.0, -2.0], [4.0]])
    assert values[0].tolist() == [0.5, -1.0] and values[1].tolist() == [2.0]


def test_clip_by_value_bounds_and_nan():
    values, _ = run(cs.clip_by_value(-1.0, 1.0), [[-5.0, 0.5, 3.0, np.nan, np.inf, -np.inf]])
    assert values[0].tolist() == [-1.0, 0.5, 1.0, 0.0, 1.0, -1.0]
    with pytest.raises(ValueError, match="min_value <= max_value"):
        cs.clip_by_value(1.0, -1.0)


def test_clip_by_norm_clips_each_tensor_separately():
    values, _ = run(cs.clip_by_norm(1.0), [[3.0, 4.0], [0.3, 0.4]])
    np.testing.assert_allclose(values[0], [0.6, 0.8], rtol=1e-6)
    assert values[1].tolist() == pytest.approx([0.3, 0.4])
    values, _ = run(cs.clip_by_norm(1.0), [[np.nan, 1.0], [2.0, 0.0]])
    assert values[0].tolist() == [0.0, 0.0] and values[1].tolist() == [1.0, 0.0]


def test_clip_by_global_norm_scales_all_together():
    values, _ = run(cs.clip_by_global_norm(1.0), [[3.0], [4.0]])
    np.testing.assert_allclose([values[0][0], values[1][0]], [0.6, 0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="max_norm > 0"):
        cs.clip_by_global_norm(0.0)


def test_skip_nonfinite_withholds_and_zeroes():
    values, applied = run(cs.skip_nonfinite(), [[1.0, np.inf], [2.0]])
    assert not applied and values[0].tolist() == [1.0, 0.0] and values[1].tolist() == [2.0]
    values, applied = run(cs.skip_nonfinite(), [[1.0], [2.0]])
    assert applied and values[0].tolist() == [1.0]


def test_chain_runs_in_order_and_keeps_the_withheld_flag():
    values, applied = run(cs.chain(cs.skip_nonfinite(), cs.clip_by_global_norm(1.0)), [[np.nan], [4.0]])
    assert not applied  # the clip afterwards must not resurrect the update
    assert np.isfinite(values[0]).all() and np.isfinite(values[1]).all()
    values, _ = run(cs.chain(cs.scale(2.0), cs.clip_by_value(-1.0, 1.0)), [[0.4, 0.6]])
    assert values[0].tolist() == pytest.approx([0.8, 1.0])


def test_map_gradients_lifts_a_user_function():
    centre = cs.map_gradients(lambda gs: [g - tf.reduce_mean(g) for g in gs])
    values, _ = run(centre, [[1.0, 3.0]])
    assert values[0].tolist() == [-1.0, 1.0]


def test_global_norm_survives_huge_and_tiny_values():
    assert float(cs.global_norm([tf.constant([3e30, 4e30])])) == pytest.approx(5e30, rel=1e-5)
    assert float(cs.global_norm([tf.constant([3e-30, 4e-30])])) == pytest.approx(5e-30, rel=1e-5)
    assert float(cs.global_norm([tf.zeros([3])])) == 0.0
    assert not np.isfinite(float(cs.global_norm([tf.constant([1.0, np.nan])])))


@pytest.mark.property
@given(gradient_lists, st.floats(1e-3, 1e3))
def test_global_norm_clip_bounds_keeps_direction_and_is_identity_under_the_bound(values, max_norm):
    """Invariant 1: norm <= max (float tolerance 1e-5 relative: one rounding per element),
    direction kept, identity when already under the max."""
    clipped, _ = run(cs.clip_by_global_norm(max_norm), values)
    before = float(cs.global_norm([tf.constant(v, tf.float32) for v in values]))
    after = float(cs.global_norm([tf.constant(c) for c in clipped]))
    assert after <= max_norm * (1 + 1e-5)
    if before <= max_norm:
        for original, result in zip(values, clipped, strict=False):
            assert result.tolist() == np.float32(original).tolist()
    elif before > 0:
        factor = max_norm / before
        for original, result in zip(values, clipped, strict=False):
            np.testing.assert_allclose(result, np.float32(original) * factor, rtol=1e-4, atol=1e-30)


@pytest.mark.property
@given(gradient_lists, st.sampled_from([np.nan, np.inf, -np.inf]), st.data())
def test_no_clip_lets_a_nonfinite_value_through(values, bad, data):
    """Invariant 1: non-finite gradients never leak through a clip."""
    tensor = data.draw(st.integers(0, len(values) - 1))
    element = data.draw(st.integers(0, len(values[tensor]) - 1))
    values[tensor][element] = bad
    for transform in (cs.clip_by_global_norm(1.0), cs.clip_by_norm(1.0), cs.clip_by_value(-1.0, 1.0)):
        clipped, _ = run(transform, values)
        assert all(np.isfinite(c).all() for c in clipped)
