"""Gradient accumulation: one update per k micro-batches, decided inside the compiled step.

`accumulate(k)` is a gradient transform. Each micro-batch (one step of the engine) adds its
all-reduced gradient, weighted by its global batch size, to a running sum; every k-th
micro-batch it passes on the weighted mean and lets the update through, and the other k-1
times it withholds the update (`Gradients.apply` false), so the optimizer does not run at
all. Weighting by batch size makes k micro-batches of any sizes equal one batch holding all
their examples, for losses averaged over the batch (the only policy `aggregate` has).

Why a stage with variables: the running sum must outlive a step, and a transform is a
function of (gradients, variables, context) alone. Threading the sum through that signature
would change every transform's type for the sake of one; keeping it in variables mirrors
what optimizers do with their slots. Variables cannot be created inside a `tf.function`
after its first trace, so they are made by `build`, which the engine calls in the
strategy's scope before tracing; under a strategy they are mirrored and assigned the same
(all-reduced) values on every replica. A micro-batch whose update an earlier transform
withheld (non-finite gradients, a loss-scale overflow) is left out of the sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step.gradients import chain
from composeloop.step.phase import Phase
from composeloop.step.records import Context, Gradients
from composeloop.step.stateful import state_variable


class Accumulate:
    """A gradient transform that releases the batch-weighted mean of every `every` micro-batches.

    Build it with `accumulate`; it belongs to one phase's variable group.
    """

    def __init__(self, every: int) -> None:
        if every < 1:
            raise ComposeError(f"accumulate: every must be >= 1, got {every}")
        self.every = every
        self.sums: list[tf.Variable] = []
        self.weight: tf.Variable | None = None
        self.count: tf.Variable | None = None
        self._owner: list[tf.Variable] = []

    @property
    def variables(self) -> list[tf.Variable]:
        """The accumulator's state, for checkpoints: running sums, total weight, count."""
        return [*self.sums, *([self.weight, self.count] if self.weight is not None else [])]

    def build(self, variables: Sequence[tf.Variable]) -> None:
        if self.weight is not None:
            if [id(v) for v in variables] != [id(v) for v in self._owner]:  # the owner's are alive: ids are safe
                raise ComposeError("accumulate: one accumulate stage serves one phase; give each phase its own")
            return
        self._owner = list(variables)
        self.sums = [
            state_variable(tf.zeros(tuple(v.shape), tf.as_dtype(v.dtype)), f"accumulated_{i}")
            for i, v in enumerate(variables)
        ]
        self.weight = state_variable(0.0, "accumulated_examples", tf.float32)
        self.count = state_variable(0, "accumulated_micro_batches", tf.int64)

    def __call__(self, grads: Gradients, variables: Sequence[tf.Variable], context: Context) -> Gradients:
        if self.weight is None:
            raise ComposeError("accumulate: the stage was not built; compile the step with compile_step")
        accept = tf.convert_to_tensor(grads.apply)
        weight = tf.where(accept, context.global_batch_size, 0.0)
        sums = [
            tf.where(accept, s + g * tf.cast(weight, g.dtype), s)
            for s, g in zip((s.read_value() for s in self.sums), grads.values, strict=True)
        ]
        total = self.weight.read_value() + weight
        count = self.count.read_value() + tf.cast(accept, tf.int64)
        ready = tf.logical_and(accept, count >= self.every)
        divisor = tf.where(total > 0.0, total, 1.0)
        mean = [tf.where(ready, s / tf.cast(divisor, s.dtype), tf.zeros_like(s)) for s in sums]
        # Unconditional assigns (no tf.cond): under a strategy they run in a replica context.
        for variable, value in zip(self.sums, sums, strict=True):
            variable.assign(tf.where(ready, tf.zeros_like(value), value))
        self.weight.assign(tf.where(ready, 0.0, total))
        self.count.assign(tf.where(ready, tf.constant(0, tf.int64), count))
        return grads.replace(mean).withhold_unless(ready)


def accumulate(every: int) -> Accumulate:
    """Applies one update per `every` micro-batches: their batch-weighted mean gradient.

    Put it before transforms that should see the accumulated gradient (clips), after
    those that judge each micro-batch (`skip_nonfinite`, loss-scale unscaling).

    Args:
      every: micro-batches per update (k); 1 passes every update through.

    Returns:
      A stateful gradient transform; the engine builds it before tracing.

    Example:
      >>> transform, weights = accumulate(2), [tf.Variable([0.0, 0.0])]
      >>> transform.build(weights)  # the engine does this before tracing
      >>> first = transform(Gradients([tf.constant([1.0, 2.0])]), weights, context)
      >>> second = transform(Gradients([tf.constant([3.0, 4.0])]), weights, context)
      >>> bool(first.apply), bool(second.apply), second.values[0].numpy()  # the mean of the two
      (False, True, array([2., 3.], dtype=float32))
    """
    return Accumulate(every)


def accumulated(phase: Phase, every: int) -> Phase:
    """The phase with `accumulate(every)` put before its own transforms; itself when every is 1.

    Example:
      >>> from composeloop.engine import compile_step, fit
      >>> from composeloop.parts.data import batches
      >>> from composeloop.parts.recipes import classifier_phase
      >>> from composeloop.step import compose
      >>> optimizer = keras.optimizers.SGD(0.1)
      >>> step = compose(accumulated(classifier_phase(optimizer), 4), models={"model": model})
      >>> history = fit(compile_step(step), lambda epoch: batches(x, y, 2, epoch=epoch), epochs=1)
      >>> int(optimizer.iterations)  # four micro-batches of 2 examples: one update
      1
    """
    if every == 1:
        return phase
    return attrs.evolve(phase, transform=chain(accumulate(every), phase.transform))
