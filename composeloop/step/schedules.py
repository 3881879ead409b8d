"""Learning-rate schedules: pure functions from an update count to a learning rate.

This module owns the schedule shapes (constant, cosine decay, triangular cycles, linear
warmup in front of any of them) and the adapter that hands one to a Keras optimizer. A
schedule reads only the step it is given, so a resumed run picks up exactly where it
stopped: the optimizer's own update count is checkpointed with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import keras
import tensorflow as tf

Schedule = Callable[[tf.Tensor], tf.Tensor]


def _float(step: tf.Tensor) -> tf.Tensor:
    return tf.cast(step, tf.float32)


def constant(value: float) -> Schedule:
    """The same learning rate at every step.

    Example:
      >>> schedule = constant(1e-3)
      >>> round(float(schedule(tf.constant(10))), 6)
      0.001
    """
    return lambda step: tf.constant(value, tf.float32)


def cosine(peak: float, decay_steps: int, floor: float = 0.0) -> Schedule:
    """Half a cosine from `peak` down to `floor` over `decay_steps`, then `floor`.

    Args:
      peak: the rate at step 0.
      decay_steps: steps to reach `floor` (>= 1).
      floor: the rate from `decay_steps` on.

    Returns:
      A schedule.

    Example:
      >>> schedule = cosine(1e-2, decay_steps=1000)
      >>> [round(float(schedule(tf.constant(step))), 6) for step in (0, 500, 1000, 2000)]
      [0.01, 0.005, 0.0, 0.0]
    """
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")

    def schedule(step: tf.Tensor) -> tf.Tensor:
        progress = tf.minimum(_float(step) / decay_steps, 1.0)
        return floor + (peak - floor) * 0.5 * (1.0 + tf.cos(math.pi * progress))

    return schedule


def triangular(low: float, high: float, cycle_steps: int) -> Schedule:
    """Cyclic learning rate: up from `low` to `high` and back down, every `cycle_steps`.

    The triangular policy of Smith's cyclical learning rates, which lets a sweep over one
    run find the usable range of rates.

    Args:
      low: the rate at the start and end of each cycle.
      high: the rate half way through each cycle.
      cycle_steps: the length of one full cycle (>= 2).

    Returns:
      A schedule.

    Example:
      >>> schedule = triangular(1e-4, 1e-2, cycle_steps=200)
      >>> [round(float(schedule(tf.constant(step))), 6) for step in (0, 50, 100, 150, 200)]
      [0.0001, 0.00505, 0.01, 0.00505, 0.0001]
    """
    if cycle_steps < 2:
        raise ValueError(f"cycle_steps must be >= 2, got {cycle_steps}")
    half = cycle_steps / 2.0

    def schedule(step: tf.Tensor) -> tf.Tensor:
        position = tf.math.floormod(_float(step), float(cycle_steps))
        rising = 1.0 - tf.abs(position / half - 1.0)
        return low + (high - low) * rising

    return schedule


def warmup(schedule: Schedule, steps: int) -> Schedule:
    """Linear warmup from near zero to `schedule`'s first rate, then `schedule` shifted by `steps`.

    Args:
      schedule: what follows the warmup; it sees its step counted from the warmup's end.
      steps: warmup length; 0 returns `schedule` unchanged.

    Returns:
      A schedule.

    Example:
      >>> schedule = warmup(cosine(1e-2, 900), steps=100)
      >>> [round(float(schedule(tf.constant(step))), 6) for step in (0, 49, 99, 100)]
      [0.0001, 0.005, 0.01, 0.01]
    """
    if steps <= 0:
        return schedule

    def warmed(step: tf.Tensor) -> tf.Tensor:
        step = _float(step)
        ramp = schedule(tf.constant(0.0)) * (step + 1.0) / steps
        return tf.where(step < steps, ramp, schedule(tf.maximum(step - steps, 0.0)))

    return warmed


class KerasSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A composeloop schedule as a Keras schedule, evaluated at the optimizer's update count."""

    def __init__(self, schedule: Schedule, description: str = "") -> None:
        self.schedule = schedule
        self.description = description

    def __call__(self, step: tf.Tensor) -> tf.Tensor:
        return self.schedule(step)

    def get_config(self) -> dict[str, str]:
        return {"description": self.description}


def keras_schedule(schedule: Schedule, description: str = "") -> KerasSchedule:
    """Wraps a schedule for a Keras optimizer's `learning_rate`.

    Example:
      >>> optimizer = keras.optimizers.SGD(learning_rate=keras_schedule(triangular(1e-3, 1e-1, 100)))
      >>> round(float(optimizer.learning_rate), 6)  # the rate at the optimizer's update count, 0
      0.001
    """
    return KerasSchedule(schedule, description)
