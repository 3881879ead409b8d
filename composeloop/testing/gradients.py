"""Checkers for the gradient invariants (1, 2 and 5 of docs/testing.md) on a user's own stages.

Each checker calls a transform or aggregation stage eagerly on the values it is given and
raises `InvariantViolation` naming the tensor, the element and the size of the violation.
Feed them from the strategies in `composeloop.testing.strategies`. Checking a whole
compiled step for invariant 5 is `check_skip_nonfinite(step, batch)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from composeloop.step import Context, Gradients, Step
from composeloop.step.aggregate import Aggregate
from composeloop.step.gradients import Transform
from composeloop.testing.harness import Batch, runner_for
from composeloop.testing.violations import InvariantViolation, as_array, difference, nonfinite_at

CLIP_RULE = (
    "a global-norm clip gives a global norm <= max_norm, keeps the direction, is the identity when the norm "
    "is already <= max_norm, and never lets a NaN or Inf through"
)
LINEARITY_RULE = "the gradient of an aggregated loss equals the sum of the gradients of its weighted terms"
SKIP_RULE = "a NaN/Inf gradient leaves every variable and optimizer slot untouched (the update is withheld)"
# Scaling by max_norm / norm can push tiny elements into float32's subnormal range (or flush
# them to zero): any absolute error below a few smallest normals is rounding, not a bug.
SUBNORMAL_SLACK = 16 * float(np.finfo(np.float32).tiny)


def _transform(transform: Transform, grads: Sequence[Any], context: Context | None) -> tuple[list[np.ndarray], Any]:
    values = [tf.constant(np.asarray(g, np.float32)) for g in grads]
    result = transform(Gradients(values), [], context)
    return [as_array(v) for v in result.values], result.apply


def _global_norm(values: Sequence[np.ndarray]) -> float:
    # float64 of float32 inputs: no overflow for 1e30 squares, no underflow for 1e-30.
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(v, np.float64))) for v in values)))


def check_global_norm_clip(
    transform: Transform,
    grads: Sequence[Any],
    max_norm: float,
    *,
    rtol: float = 1e-5,
    direction_rtol: float = 1e-4,
    context: Context | None = None,
) -> None:
    """Asserts invariant 1 for a global-norm clip transform on one list of gradients.

    Args:
      transform: the clip, e.g. ``clip_by_global_norm(max_norm)`` or your own.
      grads: gradient arrays (float32 values; may hold huge, tiny, zero, NaN and Inf).
      max_norm: the bound the transform promises.
      rtol: relative slack on the bound (float32 rounding of the scale factor: 1e-5).
      direction_rtol: relative slack per element when scaled (the norm is summed in float32
        by the transform: a few ulps per element, well under 1e-4).
      context: passed to the transform (the built-in clips do not read it).

    Raises:
      InvariantViolation: naming the gradient and element that breaks the invariant.

    Example:
      >>> from composeloop.step import clip_by_global_norm, clip_by_norm
      >>> check_global_norm_clip(clip_by_global_norm(1.0), [np.array([3.0, 4.0]), np.array([12.0])], 1.0)
      >>> check_global_norm_clip(clip_by_norm(1.0), [np.array([3.0, 4.0]), np.array([12.0])], 1.0)
      Traceback (most recent call last):
      composeloop.testing.violations.InvariantViolation: global-norm clip (1) violated: the clipped gradients
      have global norm 1.41421, above max_norm 1 (by a factor 1.41421; allowed 1 + 1e-05) ...
    """
    arrays = [np.asarray(g, np.float32) for g in grads]
    clipped, _ = _transform(transform, arrays, context)
    invariant = "global-norm clip (1)"
    for index, value in enumerate(clipped):
        bad = nonfinite_at(value)
        if bad is not None:
            raise InvariantViolation(invariant, f"gradient {index} comes out of the clip holding {bad}", CLIP_RULE)
    after = _global_norm(clipped)
    if after > max_norm * (1 + rtol):
        raise InvariantViolation(
            invariant,
            f"the clipped gradients have global norm {after:.6g}, above max_norm {max_norm:g} "
            f"(by a factor {after / max_norm:.6g}; allowed 1 + {rtol:g})",
            CLIP_RULE,
        )
    if not all(np.isfinite(a).all() for a in arrays):
        return
    before = _global_norm(arrays)
    for index, (original, result) in enumerate(zip(arrays, clipped, strict=True)):
        if before < max_norm * (1 - rtol):
            gap = difference(original, result, rtol=0.0, atol=0.0)
            if gap is not None:
                raise InvariantViolation(
                    invariant,
                    f"the norm {before:.6g} is already within max_norm {max_norm:g}, but gradient {index} "
                    f"changed: {gap}",
                    CLIP_RULE,
                )
        elif before > max_norm * (1 + rtol):
            expected = original.astype(np.float64) * (max_norm / before)
            gap = difference(expected, result, rtol=direction_rtol, atol=SUBNORMAL_SLACK)
            if gap is not None:
                raise InvariantViolation(
                    invariant,
                    f"gradient {index} is not the input scaled by max_norm / norm = {max_norm / before:.6g} "
                    f"(direction not kept): {gap}",
                    CLIP_RULE,
                )


def _gradient(
    aggregate: Aggregate, context: Context, losses_fn: Callable[[], Mapping[str, tf.Tensor]], variables: Sequence
) -> tuple[float, list[np.ndarray]]:
    with tf.GradientTape() as tape:
        value = aggregate(context, losses_fn())
    grads = tape.gradient(value, list(variables))
    return float(value), [
        np.zeros(v.shape) if g is None else as_array(g) for g, v in zip(grads, variables, strict=True)
    ]


def check_aggregate_linearity(
    aggregate: Aggregate,
    terms: Sequence[tuple[float, Aggregate]],
    losses_fn: Callable[[], Mapping[str, tf.Tensor]],
    variables: Sequence[tf.Variable],
    context: Context,
    *,
    rtol: float = 1e-5,
    atol: float | None = None,
) -> None:
    """Asserts invariant 2: d(aggregate)/dv == sum_k weight_k * d(term_k)/dv for every variable.

    Args:
      aggregate: the aggregation stage under test (e.g. ``total(global_mean(), weighted(0.1, pen))``).
      terms: ``(weight, stage)`` pairs it is meant to be the weighted sum of.
      losses_fn: computes the named per-example losses from `variables` (called under a tape).
      variables: the variables to differentiate with respect to.
      context: the context every stage gets (`context_for` makes one; its replica count matters).
      rtol: float32 sums of the same terms in another order round differently: 1e-5 relative.
      atol: absolute slack; default 1e-6 times the largest weighted term gradient, for terms
        that nearly cancel.

    Raises:
      InvariantViolation: naming the variable whose gradient differs, and by how much.

    Example:
      >>> from composeloop.step import global_mean, model_losses, total, weighted
      >>> def losses_fn():  # the named per-example losses, computed inside the tape
      ...     return {"loss": tf.reduce_sum(tf.square(model(x)), axis=1)}
      >>> check_aggregate_linearity(
      ...     total(global_mean(), weighted(0.5, model_losses())),
      ...     [(1.0, global_mean()), (0.5, model_losses())],
      ...     losses_fn, model.trainable_variables, context)
    """
    value, grads = _gradient(aggregate, context, losses_fn, variables)
    expected_value, expected = 0.0, [np.zeros_like(g) for g in grads]
    largest = 0.0
    for weight, term in terms:
        term_value, term_grads = _gradient(term, context, losses_fn, variables)
        expected_value += weight * term_value
        expected = [e + weight * g for e, g in zip(expected, term_grads, strict=True)]
        largest = max([largest, *(float(np.max(np.abs(weight * g), initial=0.0)) for g in term_grads)])
    invariant = "aggregate linearity (2)"
    atol = 1e-6 * max(largest, 1.0) if atol is None else atol
    scale = f"(with {context.replication.num_replicas} replica(s), global batch {float(context.global_batch_size):g})"
    for variable, want, got in zip(variables, expected, grads, strict=True):
        gap = difference(want, got, rtol, atol)
        if gap is not None:
            raise InvariantViolation(
                invariant,
                f"the gradient of the aggregate for variable '{getattr(variable, 'path', variable.name)}' is not "
                f"the weighted sum of the terms' gradients {scale}: {gap}",
                LINEARITY_RULE,
            )
    gap = difference(expected_value, value, rtol, atol)
    if gap is not None:
        raise InvariantViolation(
            invariant,
            f"the aggregate's value is not the weighted sum of the terms' values {scale}: {gap}",
            LINEARITY_RULE,
        )


def _check_transform_skips(transform: Transform, grads: Sequence[Any], context: Context | None) -> None:
    arrays = [np.asarray(g, np.float32) for g in grads]
    poisoned = [(i, nonfinite_at(a)) for i, a in enumerate(arrays) if nonfinite_at(a) is not None]
    if not poisoned:
        raise ValueError("check_skip_nonfinite needs gradients holding at least one NaN or Inf")
    _, apply = _transform(transform, arrays, context)
    if bool(tf.convert_to_tensor(apply)):
        index, where = poisoned[0]
        raise InvariantViolation(
            "skip non-finite (5)",
            f"gradient {index} holds {where}, but the transform still applies the update (Gradients.apply is "
            "True); withhold it, e.g. put skip_nonfinite() first in the chain",
            SKIP_RULE,
        )


def _check_step_skips(step: Step, batch: Batch) -> None:
    runner = runner_for(step)
    after = runner.run([batch])
    for name, before, now in zip(runner.names, runner.initial, after["weights"], strict=True):
        gap = difference(before, now, rtol=0.0, atol=0.0)
        if gap is not None:
            raise InvariantViolation(
                "skip non-finite (5)",
                f"one step on a batch that gives non-finite gradients changed variable '{name}': {gap}",
                SKIP_RULE,
            )


def check_skip_nonfinite(
    subject: Transform | Step, data: Sequence[Any] | Batch, *, context: Context | None = None
) -> None:
    """Asserts invariant 5 for a transform (on gradients) or a whole step (on a batch).

    Args:
      subject: a gradient transform, or a composed `Step`.
      data: for a transform, gradient arrays holding at least one NaN or Inf; for a step,
        a batch (dict of arrays) whose gradients are non-finite (e.g. a NaN in a feature).
        The step is compiled once per step object and run one step, from a snapshot.
      context: passed to a transform.

    Raises:
      InvariantViolation: the update went through, naming the gradient or variable.

    Example:
      >>> from composeloop.parts.recipes import classifier_step
      >>> from composeloop.step import chain, clip_by_global_norm, skip_nonfinite
      >>> check_skip_nonfinite(chain(skip_nonfinite(), clip_by_global_norm(1.0)), [np.array([np.nan, 1.0])])
      >>> check_skip_nonfinite(clip_by_global_norm(1.0), [np.array([np.nan, 1.0])])  # zeroes NaN, still applies
      Traceback (most recent call last):
      composeloop.testing.violations.InvariantViolation: skip non-finite (5) violated: gradient 0 holds nan at
      index (0,), but the transform still applies the update (Gradients.apply is True); ...
      >>> step = classifier_step(model, keras.optimizers.SGD(0.1), transform=skip_nonfinite())
      >>> check_skip_nonfinite(step, {"x": np.where(np.eye(8, 4) == 1, np.nan, x), "y": y})  # a NaN feature
    """
    if isinstance(subject, Step):
        _check_step_skips(subject, data)
    else:
        _check_transform_skips(subject, data, context)
