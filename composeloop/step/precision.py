"""Dynamic loss scaling for float16 training, as two stages that share one scale.

Float16 gradients underflow to zero long before float32 ones do. Multiplying the loss by a
large scale before differentiating lifts them into float16's range; dividing the gradients
by it afterwards restores their size. Too large a scale overflows instead, so the scale is
dynamic: a step whose unscaled gradients hold an Inf or NaN is withheld (no variable and no
optimizer slot moves) and halves the scale; `growth_interval` good steps in a row double it.

The scale lives in a `DynamicLossScale`, read by two ordinary stages: `scale_loss` wraps the
phase's aggregation (the scaled objective is what the tape differentiates) and
`unscale_gradients` is a gradient transform, put first in the chain so that every later
transform (accumulation, clips) sees true gradients. `loss_scaled` wires both into a phase.
Like an accumulator, the scale is state that outlives a step, so it lives in variables the
engine builds before tracing (see `composeloop.step.stateful`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step.aggregate import Aggregate
from composeloop.step.gradients import Transform, all_finite, chain
from composeloop.step.phase import Phase
from composeloop.step.records import Context, Gradients, Tensors
from composeloop.step.stateful import state_variable


class DynamicLossScale:
    """The shared state of `scale_loss` and `unscale_gradients`: the scale and a good-step count."""

    def __init__(
        self, initial: float = 2.0**15, growth_interval: int = 2000, factor: float = 2.0, minimum: float = 1.0
    ) -> None:
        if not initial > 0 or not factor > 1 or growth_interval < 1 or not 0 < minimum <= initial:
            raise ComposeError(
                "dynamic_loss_scale: needs initial > 0, factor > 1, growth_interval >= 1, 0 < minimum <= initial"
            )
        self.initial, self.growth_interval, self.factor, self.minimum = initial, growth_interval, factor, minimum
        self.scale: tf.Variable | None = None
        self.good_steps: tf.Variable | None = None

    @property
    def variables(self) -> list[tf.Variable]:
        """The scale's state, for checkpoints."""
        return [] if self.scale is None else [self.scale, self.good_steps]

    def build(self, variables: Sequence[tf.Variable] = ()) -> None:
        if self.scale is None:
            self.scale = state_variable(self.initial, "loss_scale", tf.float32)
            self.good_steps = state_variable(0, "loss_scale_good_steps", tf.int64)

    def _built(self) -> tf.Variable:
        if self.scale is None:
            raise ComposeError("loss scale: its variables were not built; compile the step with compile_step")
        return self.scale

    def update(self, finite: tf.Tensor) -> None:
        """Lowers the scale after an overflow; raises it after `growth_interval` good steps."""
        scale = self._built().read_value()
        good = tf.where(finite, self.good_steps.read_value() + 1, tf.constant(0, tf.int64))
        grow = tf.logical_and(finite, good >= self.growth_interval)
        lowered = tf.maximum(scale / self.factor, self.minimum)
        self.scale.assign(tf.where(finite, tf.where(grow, scale * self.factor, scale), lowered))
        self.good_steps.assign(tf.where(grow, tf.constant(0, tf.int64), good))


def dynamic_loss_scale(initial: float = 2.0**15, growth_interval: int = 2000) -> DynamicLossScale:
    """A loss scale that halves on overflow and doubles after `growth_interval` good steps.

    Example:
      >>> loss_scale = dynamic_loss_scale(initial=1024.0, growth_interval=2)
      >>> loss_scale.build()  # the engine does this before tracing
      >>> for finite in (True, True, False):  # two good steps double it, an overflow halves it
      ...     loss_scale.update(tf.constant(finite))
      ...     print(float(loss_scale.scale.numpy()))
      1024.0
      2048.0
      1024.0
    """
    return DynamicLossScale(initial, growth_interval)


def scale_loss(aggregate: Aggregate, loss_scale: DynamicLossScale) -> Aggregate:
    """The aggregation stage multiplied by the current loss scale.

    Example:
      >>> from composeloop.step import global_mean
      >>> loss_scale = dynamic_loss_scale(initial=1024.0)
      >>> loss_scale.build()
      >>> float(scale_loss(global_mean(), loss_scale)(context, {"loss": tf.ones([8])}))
      1024.0
    """

    def scaled(context: Context, losses: Tensors) -> tf.Tensor:
        return aggregate(context, losses) * loss_scale._built().read_value()

    scaled.build = loss_scale.build  # type: ignore[attr-defined]
    scaled.loss_scale = loss_scale  # type: ignore[attr-defined]  # for readers of the objective (lr_find)
    return scaled


def unscale_gradients(loss_scale: DynamicLossScale) -> Transform:
    """Divides gradients by the loss scale; withholds the update and lowers the scale on overflow.

    Example:
      >>> loss_scale = dynamic_loss_scale(initial=1024.0)
      >>> loss_scale.build()
      >>> transform = unscale_gradients(loss_scale)
      >>> grads = transform(Gradients([tf.constant([2048.0])]), [], context)
      >>> grads.values[0].numpy(), bool(grads.apply)
      (array([2.], dtype=float32), True)
      >>> grads = transform(Gradients([tf.constant([float("inf")])]), [], context)  # an overflow
      >>> bool(grads.apply), float(loss_scale.scale.numpy())
      (False, 512.0)
    """

    def transform(grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        scale = loss_scale._built().read_value()
        values = [g / tf.cast(scale, g.dtype) for g in grads.values]
        finite = all_finite(values)
        loss_scale.update(finite)
        # Zeros, not Infs, go on: later transforms then compute nothing from them.
        return grads.replace([tf.where(finite, g, tf.zeros_like(g)) for g in values]).withhold_unless(finite)

    transform.build = loss_scale.build  # type: ignore[attr-defined]
    return transform


def loss_scaled(phase: Phase, loss_scale: DynamicLossScale | None = None) -> Phase:
    """The phase with its loss scaled and its gradients unscaled first thing, by one scale.

    Args:
      phase: any phase.
      loss_scale: its own scale (None: a fresh `dynamic_loss_scale()`); one per phase.

    Returns:
      The phase, its aggregation wrapped by `scale_loss`, `unscale_gradients` first in its
      transform chain.

    Example:
      >>> from composeloop.parts.recipes import classifier_phase
      >>> plain = classifier_phase(keras.optimizers.SGD(0.1))
      >>> scaled = loss_scaled(plain)
      >>> scaled.aggregate is plain.aggregate, scaled.trains == plain.trains
      (False, True)
    """
    loss_scale = loss_scale or dynamic_loss_scale()
    return attrs.evolve(
        phase,
        aggregate=scale_loss(phase.aggregate, loss_scale),
        transform=chain(unscale_gradients(loss_scale), phase.transform),
    )
