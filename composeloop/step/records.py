"""The immutable records that flow between the stages of a step.

This module owns the data model of the step algebra: the `Context` a stage reads, the
`Gradients` a transform returns, and the `Replication` hooks through which a step talks to
its sibling replicas without knowing about `tf.distribute`. It holds no stage logic.

Records are frozen; a stage that needs a changed record returns `attrs.evolve(record, ...)`.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import tensorflow as tf

Tensors = Mapping[str, tf.Tensor]
EMPTY: Tensors = types.MappingProxyType({})


def _sum_identity(values: Any) -> Any:
    return values


def _apply_locally(apply: Callable, update: Gradients, variables: Sequence[tf.Variable]) -> tf.Tensor:
    """Runs `apply` when `update.apply` holds; returns whether it ran."""
    return when(update.apply, lambda: apply(update.values, variables))


def when(condition: tf.Tensor | bool, effect: Callable[[], Any]) -> tf.Tensor:
    """Runs `effect` only if `condition` holds, in graph or eagerly; returns the condition.

    A static condition (a Python bool, or a tensor whose value is known at trace time)
    adds no `tf.cond` to the graph.
    """
    static = tf.get_static_value(condition)
    if static is not None:
        if bool(static):
            effect()
        return tf.constant(bool(static))

    def run() -> tf.Tensor:
        effect()
        return tf.constant(True)

    return tf.cond(condition, run, lambda: tf.constant(False))


@attrs.frozen
class Replication:
    """How a step reaches its sibling replicas. The default is a single local replica.

    Attributes:
      num_replicas: replicas taking part in each step.
      sum: all-reduces a nest of tensors by summation across replicas.
      apply: `apply(apply_fn, update, variables)` runs an apply stage exactly once for all
        replicas (if `update.apply` holds) and returns whether it ran.
    """

    num_replicas: int = 1
    sum: Callable[[Any], Any] = _sum_identity
    apply: Callable[[Callable, Gradients, Sequence[tf.Variable]], tf.Tensor] = _apply_locally


LOCAL = Replication()
"""A single local replica: sums are identities and an apply stage runs in place."""


@attrs.frozen
class Context:
    """Everything a stage may read for one replica's share of one step.

    Attributes:
      batch: this replica's examples, by feature name (e.g. ``{"x": ..., "y": ...}``).
      models: the Keras models of the step, by name.
      training: whether layers run in training mode.
      seed: an int64 ``[2]`` seed for stateless random ops, unique to (run seed, step,
        replica, phase); the same inputs always give the same seed.
      step: the global step (int64 scalar) this context belongs to.
      global_batch_size: examples in this step summed over all replicas (float32 scalar);
        per-example losses are divided by it so N replicas equal one.
      replication: hooks for talking to sibling replicas.
      outputs: outputs of the phases that already ran in this step, by phase name.
    """

    batch: Tensors
    models: Mapping[str, Any]
    training: bool
    seed: tf.Tensor
    step: tf.Tensor
    global_batch_size: tf.Tensor
    replication: Replication = LOCAL
    outputs: Mapping[str, Tensors] = EMPTY


@attrs.frozen
class Gradients:
    """Gradients on their way from the tape to an apply stage.

    Attributes:
      values: one gradient per variable of the phase, in the phase's variable order.
      apply: whether the update is to be applied this step; a transform such as
        `skip_nonfinite` or gradient accumulation withholds it by making this false.
    """

    values: tuple[tf.Tensor, ...] = attrs.field(converter=tuple)
    apply: tf.Tensor | bool = True

    def replace(self, values: Sequence[tf.Tensor]) -> Gradients:
        """Returns a copy holding `values` instead, with the same apply flag."""
        return attrs.evolve(self, values=tuple(values))

    def withhold_unless(self, condition: tf.Tensor | bool) -> Gradients:
        """Returns a copy whose update is applied only if `condition` also holds."""
        if self.apply is True:
            return attrs.evolve(self, apply=condition)
        return attrs.evolve(self, apply=tf.logical_and(self.apply, condition))
