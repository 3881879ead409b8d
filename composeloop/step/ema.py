"""An exponential moving average of a phase's weights, and the swap that evaluates with it.

`ema(apply, decay)` wraps a phase's apply stage. After each applied update it moves a
shadow copy of every variable of the group towards the new weights; the raw weights keep
training, untouched. With ``warmup`` the decay of the n-th update (n counted from 0) is
``min(decay, (1 + n) / (10 + n))``, so early shadows are not dominated by the random
initial weights; the first update copies the weights outright (decay 0), so the shadows
never depend on what the weights were when the step was compiled. In closed form, with
``w_i`` the weights after update i (i = 1, 2, ...) and ``d_i`` its decay (``d_1 = 0``)::

    shadow_i = d_i * shadow_(i-1) + (1 - d_i) * w_i

The shadows and the update count are the stage's ``variables``, so checkpoints hold them
and a resume is exact. Like the update it follows, the average is computed once from
all-reduced values, so it is the same on every replica.

Evaluation reads the EMA weights through `ema_weights(...)`, a context manager that
assigns the shadows into the model's variables and puts the raw weights back afterwards,
bit for bit. Wrap validation, saving and export in it. Only the trainable variables of the
phase are averaged (as Keras's ``use_ema`` does): BatchNorm's moving statistics are kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow as tf

from composeloop.step.apply import Apply
from composeloop.step.wrapping import CopyingWrapper, read, unwrap


class ExponentialMovingAverage(CopyingWrapper):
    """An apply stage that runs its inner stage, then updates the shadow weights.

    Build it with `ema`.

    Attributes:
      decay: the decay after warmup.
      warmup: whether early updates use ``min(decay, (1 + n) / (10 + n))``.
      shadows: one averaged copy per variable of the group (after `build`).
      count: the number of updates averaged so far (an int64 variable).
    """

    kind = "ema"

    def __init__(self, inner: Apply, decay: float, warmup: bool) -> None:
        super().__init__(inner)
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay < 1:
            raise ValueError(f"ema: decay must be in (0, 1), got {decay!r}")
        self.decay, self.warmup = float(decay), bool(warmup)

    @property
    def shadows(self) -> list[tf.Variable]:
        """The averages, one per variable; they start at the weights, so swapping before the
        first update gives the raw weights."""
        return self.copies

    def decay_at(self, count: tf.Tensor) -> tf.Tensor:
        """The decay of the update that follows `count` earlier ones (float32)."""
        n = tf.cast(count, tf.float32)
        decay = tf.constant(self.decay, tf.float32)
        if self.warmup:
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        return tf.where(count > 0, decay, 0.0)

    def _after(self, variables: Sequence[Any]) -> None:
        count = self.count.read_value()
        decay = self.decay_at(count)
        for shadow, variable in zip(self.shadows, variables, strict=True):
            value, old = read(variable), shadow.read_value()
            # old - (1 - d)(old - w) rounds better than d*old + (1 - d)*w for d near 1;
            # the first update copies w exactly.
            keep = tf.cast(1.0 - decay, value.dtype)
            shadow.assign(tf.where(count > 0, old - keep * (old - value), value))
        self.count.assign(count + 1)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Holds the shadows in the model's variables for the duration; the raw weights come back exactly."""
        raw = [tf.identity(read(v)) for v in self.owner]
        try:
            for variable, shadow in zip(self.owner, self.shadows, strict=True):
                variable.assign(shadow.read_value())
            yield
        finally:
            for variable, value in zip(self.owner, raw, strict=True):
                variable.assign(value)


def ema(apply: Apply, decay: float = 0.999, *, warmup: bool = True) -> ExponentialMovingAverage:
    """Keeps an exponential moving average of the weights the wrapped apply stage updates.

    Args:
      apply: the phase's apply stage, e.g. ``optimizer_apply(keras.optimizers.Adam(1e-3))``.
      decay: in (0, 1); the weight of the old average at each update (0.999: about the
        last 1000 updates).
      warmup: use ``min(decay, (1 + n) / (10 + n))`` for the n-th update (from 0), so that
        a short run's average is not mostly the first weights.

    Returns:
      An apply stage; its state (the inner stage's, then the shadows and the update count)
      is checkpointed with the program.

    Raises:
      ValueError: `decay` outside (0, 1).

    Example:
      >>> phase = attrs.evolve(phase, apply=ema(phase.apply, 0.999))
      >>> with ema_weights(program):
      ...     run_epoch(program, "val", validation)
    """
    return ExponentialMovingAverage(apply, decay, warmup)


def ema_stages(subject: Any) -> list[ExponentialMovingAverage]:
    """Every EMA stage in an apply stage, a phase, a step or a program (``.step``), in phase order."""
    if hasattr(subject, "step") and hasattr(subject.step, "phases"):
        subject = subject.step
    if hasattr(subject, "phases"):
        return [stage for phase in subject.phases for stage in ema_stages(phase.apply)]
    if hasattr(subject, "apply") and hasattr(subject, "trains"):
        return ema_stages(subject.apply)
    return [stage for stage in unwrap(subject) if isinstance(stage, ExponentialMovingAverage)]


@contextlib.contextmanager
def ema_weights(subject: Any) -> Iterator[list[ExponentialMovingAverage]]:
    """Puts the EMA weights into the models for the duration; the raw weights come back exactly.

    Args:
      subject: a compiled program, a step, a phase or an EMA stage; every EMA stage in it
        is swapped (a GAN may average both of its phases).

    Yields:
      The EMA stages swapped.

    Raises:
      ValueError: `subject` holds no EMA stage.

    Example:
      >>> with ema_weights(program):
      ...     model.save("model.keras")
    """
    stages = ema_stages(subject)
    if not stages:
        raise ValueError(f"ema_weights: {type(subject).__name__} holds no ema stage")
    with contextlib.ExitStack() as stack:
        for stage in stages:
            stack.enter_context(stage.swapped())
        yield stages
