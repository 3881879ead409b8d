"""Stages with state: the `build(variables)` hook the engine calls before tracing.

Most stages are pure. The few that must remember something across steps (an optimizer's
slots, a gradient accumulator, a loss scale) keep it in variables, and variables cannot be
created inside a `tf.function` after its first trace. Such a stage offers
``build(variables)``; the engine calls it once per phase, inside the strategy's scope,
before tracing. Combinators (`chain`, `total`) pass `build` on to the stages they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tensorflow as tf

Stage = TypeVar("Stage", bound=Callable[..., Any])


def build_stage(stage: Any, variables: Sequence[tf.Variable]) -> None:
    """Calls ``stage.build(variables)`` if the stage has state to create."""
    build = getattr(stage, "build", None)
    if callable(build):
        build(variables)


def builds(combined: Stage, *parts: Any) -> Stage:
    """Gives a combinator's closure a `build` that builds each of its parts.

    Example:
      >>> built = []
      >>> class Remembering:  # a stage with state: the engine calls build(variables) before tracing
      ...     def build(self, variables):
      ...         built.append(len(variables))
      ...     def __call__(self, grads, variables, context):
      ...         return grads
      >>> first, second = Remembering(), Remembering()
      >>> def both(grads, variables, context):
      ...     return second(first(grads, variables, context), variables, context)
      >>> _ = builds(both, first, second).build([tf.Variable(0.0)])
      >>> built
      [1, 1]
    """
    if any(callable(getattr(part, "build", None)) for part in parts):
        combined.build = lambda variables: [build_stage(part, variables) for part in parts]  # type: ignore[attr-defined]
    return combined


def state_variable(value: Any, name: str, dtype: tf.DType | None = None) -> tf.Variable:
    """A non-trainable variable for a stage's state, the same on every replica.

    ONLY_FIRST_REPLICA: stages assign it from all-reduced values, identical on every
    replica, so taking the first replica's value is exact and costs no reduction.
    """
    return tf.Variable(
        value,
        dtype=dtype,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
