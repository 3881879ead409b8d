"""Gradient transforms: what happens to gradients between the all-reduce and the apply.

Each factory returns a transform ``(gradients, variables, context) -> gradients`` working
on a `Gradients` record; `chain` runs several in order. The engine all-reduces gradients
BEFORE the transforms run, so a transform always sees the gradient of the whole global
batch: a global-norm clip bounds the real update on one replica or many.

Non-finite values never leak through a clip: a clip maps them to zeros. To withhold the
whole update instead, put `skip_nonfinite()` first in the chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from composeloop.step.records import Context, Gradients
from composeloop.step.stateful import builds

Transform = Callable[[Gradients, Sequence[tf.Variable], Context], Gradients]


def identity() -> Transform:
    """Leaves gradients as they are."""

    def transform(grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        return grads

    return transform


def chain(*transforms: Transform) -> Transform:
    """Runs transforms one after another, each on the previous one's result.

    Example:
      >>> transform = chain(skip_nonfinite(), clip_by_global_norm(1.0))
      >>> grads = transform(Gradients([tf.constant([3.0, 4.0])]), model.trainable_variables, context)
      >>> grads.values[0].numpy(), bool(grads.apply)
      (array([0.6, 0.8], dtype=float32), True)
    """

    def transform(grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        for each in transforms:
            grads = each(grads, variables, context)
        return grads

    return builds(transform, *transforms)


def map_gradients(fn: Callable[[Sequence[tf.Tensor]], Sequence[tf.Tensor]]) -> Transform:
    """Lifts a plain function of the gradient list into a transform.

    Example:
      >>> centre = map_gradients(lambda gs: [g - tf.reduce_mean(g) for g in gs])
      >>> centre(Gradients([tf.constant([1.0, 3.0])]), [], context).values[0].numpy()
      array([-1.,  1.], dtype=float32)
    """

    def transform(grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        return grads.replace(fn(list(grads.values)))

    return transform


def scale(factor: float) -> Transform:
    """Multiplies every gradient by a constant.

    Example:
      >>> scale(0.5)(Gradients([tf.constant([2.0, -4.0])]), [], context).values[0].numpy()
      array([ 1., -2.], dtype=float32)
    """
    return map_gradients(lambda values: [g * tf.cast(factor, g.dtype) for g in values])


def _zero_nonfinite(g: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.math.is_finite(g), g, tf.zeros_like(g))


def clip_by_value(min_value: float, max_value: float) -> Transform:
    """Clips every gradient element into ``[min_value, max_value]``; NaN becomes 0.

    Example:
      >>> transform = clip_by_value(-1.0, 1.0)
      >>> transform(Gradients([tf.constant([-3.0, 0.5, float("nan")])]), [], context).values[0].numpy()
      array([-1. ,  0.5,  0. ], dtype=float32)
    """
    if not min_value <= max_value:
        raise ValueError(f"clip_by_value needs min_value <= max_value, got {min_value} > {max_value}")

    def clip(g: tf.Tensor) -> tf.Tensor:
        # Infinities clip to the bounds; only NaN has no bound to go to.
        g = tf.where(tf.math.is_nan(g), tf.zeros_like(g), g)
        return tf.clip_by_value(g, tf.cast(min_value, g.dtype), tf.cast(max_value, g.dtype))

    return map_gradients(lambda values: [clip(g) for g in values])


def _norm_parts(values: Sequence[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """The global L2 norm as ``divisor * relative``, both float32 and in range.

    Squaring 1e20 overflows float32 and squaring 1e-30 underflows it, so the sum of squares
    is taken of values divided by their largest magnitude (the divisor). Kept apart, the two
    factors stay representable even when the norm itself is beyond float32 (above 3.4e38).
    Any non-finite element makes one of them non-finite.
    """
    values = [tf.cast(g, tf.float32) for g in values]
    largest = tf.reduce_max(tf.stack([tf.reduce_max(tf.abs(g)) for g in values]))
    divisor = tf.where(largest > 0.0, largest, 1.0)
    relative = tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g / divisor)) for g in values]))
    return divisor, relative


def global_norm(values: Sequence[tf.Tensor]) -> tf.Tensor:
    """The L2 norm of all gradients together, in float32, without overflow or underflow
    in the sum of squares (a norm beyond float32's range is inf). Any non-finite element
    gives a non-finite norm.
    """
    if not values:
        return tf.constant(0.0)
    divisor, relative = _norm_parts(values)
    return divisor * relative


def _scale_to(values: Sequence[tf.Tensor], max_norm: float) -> list[tf.Tensor]:
    """Scales `values` to global L2 norm at most `max_norm`; non-finite: zeros."""
    if not values:
        return []
    divisor, relative = _norm_parts(values)
    bound = tf.constant(max_norm, tf.float32)
    within = divisor * relative <= bound  # an overflowing norm is inf: above the bound
    finite = tf.logical_and(tf.math.is_finite(divisor), tf.math.is_finite(relative))

    def scaled(g: tf.Tensor) -> tf.Tensor:
        # g * bound / norm without a subnormal intermediate, which flush-to-zero would make 0:
        # bound / norm is subnormal for norms above ~1e38, and so is g / divisor for an
        # element far below the largest. Multiply first unless that overflows; an element
        # whose product overflows is large, so dividing it first loses nothing.
        g32, factor = tf.cast(g, tf.float32), bound / relative
        product = g32 * factor
        return tf.cast(tf.where(tf.math.is_finite(product), product / divisor, g32 / divisor * factor), g.dtype)

    # Under the bound the values pass through untouched (a multiply by 1.0 would flush
    # subnormal floats to zero on CPUs that run with flush-to-zero, as TensorFlow's do).
    return [tf.where(finite, tf.where(within, g, scaled(g)), tf.zeros_like(g)) for g in values]


def clip_by_norm(max_norm: float) -> Transform:
    """Clips each gradient tensor to L2 norm at most `max_norm`, separately.

    Example:
      >>> transform = clip_by_norm(1.0)
      >>> grads = transform(Gradients([tf.constant([3.0, 4.0]), tf.constant([0.1])]), [], context)
      >>> [g.numpy() for g in grads.values]
      [array([0.6, 0.8], dtype=float32), array([0.1], dtype=float32)]
    """
    if not max_norm > 0:
        raise ValueError(f"clip_by_norm needs max_norm > 0, got {max_norm}")
    return map_gradients(lambda values: [_scale_to([g], max_norm)[0] for g in values])


def clip_by_global_norm(max_norm: float) -> Transform:
    """Scales all gradients together so that their global L2 norm is at most `max_norm`.

    The direction of the update is kept; gradients already within the bound are unchanged.

    Example:
      >>> transform = clip_by_global_norm(1.0)
      >>> grads = transform(Gradients([tf.constant([3.0]), tf.constant([4.0])]), [], context)
      >>> [g.numpy() for g in grads.values]
      [array([0.6], dtype=float32), array([0.8], dtype=float32)]
    """
    if not max_norm > 0:
        raise ValueError(f"clip_by_global_norm needs max_norm > 0, got {max_norm}")
    return map_gradients(lambda values: _scale_to(values, max_norm))


def all_finite(values: Sequence[tf.Tensor]) -> tf.Tensor:
    """True when no gradient holds a NaN or an infinity (a bool scalar)."""
    if not values:
        return tf.constant(True)
    return tf.reduce_all(tf.stack([tf.reduce_all(tf.math.is_finite(g)) for g in values]))


def skip_nonfinite() -> Transform:
    """Withholds the whole update of a step whose gradients hold a NaN or an infinity.

    The variables and the optimizer's slots are left untouched for that step. The values
    passed on are zeroed where non-finite, so that later transforms compute nothing from
    them.

    Example:
      >>> grads = skip_nonfinite()(Gradients([tf.constant([1.0, float("inf")])]), [], context)
      >>> grads.values[0].numpy(), bool(grads.apply)
      (array([1., 0.], dtype=float32), False)
    """

    def transform(grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        finite = all_finite(grads.values)
        return grads.replace([_zero_nonfinite(g) for g in grads.values]).withhold_unless(finite)

    return transform
