"""The bridge between the step algebra and `tf.distribute`.

This module owns the `Replication` the engine hands to steps under a strategy: gradient and
metric all-reduces by summation, and an apply that runs exactly once per step for all
replicas from the gradients the phase already summed, with no second all-reduce. It does
not build strategies (that is configuration) nor loop over data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from composeloop.step.records import LOCAL, Gradients, Replication, when


def _all_reduce_sum(values: Any) -> Any:
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


def _apply_once(apply: Callable, update: Gradients, variables: Sequence[tf.Variable]) -> tf.Tensor:
    """Applies already all-reduced gradients once, if `update.apply` holds.

    The decision is taken in the cross-replica context (a `tf.cond` whose branch may
    merge-call cannot live in a replica context). A stage with ``replicated()`` (a Keras
    optimizer) is then called in every replica with that replica's own copy of the summed
    gradients, its own all-reduce switched off: each device updates its copy of each
    variable from local values, and nothing crosses devices a second time. Any other
    apply stage runs once, in the cross-replica context, with the first replica's copy,
    where assigning a mirrored variable updates every replica's copy.
    """

    def in_cross_replica(strategy: tf.distribute.Strategy, values: Any, flag: Any) -> tf.Tensor:
        def run() -> None:
            replicated = getattr(apply, "replicated", None)
            if replicated is None:
                apply([strategy.experimental_local_results(value)[0] for value in values], variables)
                return
            with replicated():
                strategy.extended.call_for_each_replica(apply, args=(values, variables))

        return when(strategy.experimental_local_results(flag)[0], run)

    return tf.distribute.get_replica_context().merge_call(
        in_cross_replica, args=(list(update.values), tf.convert_to_tensor(update.apply))
    )


def replication_for(strategy: tf.distribute.Strategy) -> Replication:
    """The replication hooks for a strategy; the local one for a single replica."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return LOCAL
    return Replication(num_replicas=replicas, sum=_all_reduce_sum, apply=_apply_once)


def replica_id() -> tf.Tensor:
    """This replica's index in its sync group (0 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)
