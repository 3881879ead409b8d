"""Per-variable-group transforms: `masked` and `partition`, their masks, and their errors."""

from __future__ import annotations

import contextlib
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from composeloop import step as cs
from composeloop.step.accumulate import accumulate
from composeloop.testing import InvariantViolation, check_masked_untouched, context_for

PATHS = ("backbone/dense/kernel", "backbone/dense/bias", "backbone/norm/gamma", "head/kernel", "head/bias")
SHAPES = ((3, 2), (2,), (2,), (2, 4), (4,))


def keras_variable(path: str, shape) -> keras.Variable:
    *scopes, name = path.split("/")
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(keras.name_scope(scope))
        return keras.Variable(np.zeros(shape, np.float32), name=name)


VARIABLES = [keras_variable(p, s) for p, s in zip(PATHS, SHAPES, strict=True)]
CONTEXT = context_for({"x": np.zeros((1, 1), np.float32)})


def gradient_sets():
    elements = st.floats(-100, 100, width=32)
    return st.tuples(*(hnp.arrays(np.float32, shape, elements=elements) for shape in SHAPES)).map(list)


def run(transform, grads, variables=VARIABLES):
    return [g.numpy() for g in transform(cs.Gradients([tf.constant(g) for g in grads]), variables, CONTEXT).values]


def test_paths_are_the_keras_paths():
    assert [v.path for v in VARIABLES] == list(PATHS)


@pytest.mark.property
@given(gradient_sets(), st.sampled_from([0.01, 1.0, 1e3]))
def test_masked_changes_only_what_it_picks_and_there_acts_as_the_transform_alone(grads, bound):
    transform = cs.masked(cs.clip_by_global_norm(bound), ["kernel", "gamma"])
    check_masked_untouched(transform, grads, VARIABLES, "bias")
    picked = [0, 2, 3]
    alone = run(cs.clip_by_global_norm(bound), [grads[i] for i in picked], [VARIABLES[i] for i in picked])
    out = run(transform, grads)
    for index, value in zip(picked, alone, strict=True):
        np.testing.assert_array_equal(out[index], value)  # the group's own norm, not the phase's


@pytest.mark.property
@given(gradient_sets())
def test_partition_equals_each_group_transform_alone_on_its_group(grads):
    groups = {"^backbone/": cs.clip_by_global_norm(0.5), "^head/kernel": cs.scale(0.1)}
    transform = cs.partition(groups, default=cs.identity())
    out = run(transform, grads)
    backbone = run(cs.clip_by_global_norm(0.5), grads[:3], VARIABLES[:3])
    for got, want in zip(out[:3], backbone, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(out[3], run(cs.scale(0.1), [grads[3]], [VARIABLES[3]])[0])
    np.testing.assert_array_equal(out[4], grads[4])  # the default: identity
    check_masked_untouched(transform, grads, VARIABLES, "head/bias")


def test_a_group_that_withholds_withholds_the_whole_update():
    grads = [np.ones(s, np.float32) for s in SHAPES]
    grads[4] = np.full(SHAPES[4], np.nan, np.float32)
    result = cs.masked(cs.skip_nonfinite(), "head")(cs.Gradients(grads), VARIABLES, CONTEXT)
    assert not bool(result.apply)
    np.testing.assert_array_equal(np.asarray(result.values[0]), grads[0])


def test_a_stateful_transform_in_a_group_is_built_on_that_group_before_tracing():
    stage = accumulate(2)
    transform = cs.partition({"backbone": stage}, default=cs.identity())
    transform.build(VARIABLES)
    assert [tuple(v.shape) for v in stage.sums] == list(SHAPES[:3])
    grads = cs.Gradients([tf.ones(s) for s in SHAPES])
    first = transform(grads, VARIABLES, CONTEXT)
    assert not bool(first.apply)  # the accumulator holds back the whole phase's update
    assert bool(transform(grads, VARIABLES, CONTEXT).apply)


def test_bad_partitions_and_masks_are_refused_naming_the_argument():
    with pytest.raises(ValueError, match="partition: groups must be a non-empty dict"):
        cs.partition({})
    with pytest.raises(ValueError, match=r"masked: mask pattern '\(' is not a regular expression"):
        cs.masked(cs.identity(), "(")
    with pytest.raises(TypeError, match="partition: the transform for"):
        cs.partition({"head": "clip"})
    with pytest.raises(ValueError, match="variable 'backbone/norm/gamma' matches no group"):
        cs.partition({"dense": cs.identity(), "head": cs.identity()}).build(VARIABLES)
    with pytest.raises(ValueError, match=r"variable 'head/kernel' matches more than one group \('head' and 'kernel'\)"):
        cs.partition({"head": cs.identity(), "kernel": cs.identity()}, default=cs.identity()).build(VARIABLES)


def test_a_pattern_that_matches_nothing_warns_naming_it_once():
    transform = cs.masked(cs.scale(2.0), ["kernel", "embeddings"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transform.build(VARIABLES)
        run(transform, [np.ones(s, np.float32) for s in SHAPES])
    assert [str(w.message).split(" matches")[0] for w in caught] == ["masked: mask pattern 'embeddings'"]


def test_a_predicate_mask_picks_by_any_rule():
    transform = cs.masked(cs.scale(0.0), lambda variable: len(variable.shape) > 1)
    out = run(transform, [np.ones(s, np.float32) for s in SHAPES])
    assert [float(np.abs(g).sum()) == 0.0 for g in out] == [True, False, False, True, False]


def test_the_masked_checker_catches_a_transform_that_leaks_into_unpicked_variables():
    leaky = cs.chain(cs.masked(cs.scale(0.5), "kernel"), cs.clip_by_global_norm(1.0))
    grads = [np.full(s, 3.0, np.float32) for s in SHAPES]
    with pytest.raises(
        InvariantViolation,
        match=r"masked variables untouched violated: the transform changed the gradient of variable 'backbone/dense/b",
    ):
        check_masked_untouched(leaky, grads, VARIABLES, "bias")
