"""The bridge between the step algebra and `tf.distribute`.

This module owns the `Replication` the engine hands to steps under a strategy: gradient and
metric all-reduces by summation, and an apply that runs exactly once per step for all
replicas from the gradients the phase already summed, with no second all-reduce; and, for
the loop, how many worker processes a strategy spans and a sum over them (so that every
worker takes the same decision, e.g. to stop). It does not build strategies (that is
configuration) nor loop over data.
"""

from __future__ import annotations

import weakref
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
    """The replication hooks for a strategy; the local one for a single replica of no mirroring.

    A mirrored strategy (`MirroredStrategy`, or a multi-worker one) with one replica still
    applies through a merge call, though its sums are identities: its Keras optimizers
    merge-call, which fails inside the `tf.cond` of an apply decided in the compiled step
    (accumulation, a withheld non-finite update) unless the decision is taken in the
    cross-replica context.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        mirrored = isinstance(strategy, tf.distribute.MirroredStrategy)
        return Replication(apply=_apply_once) if mirrored or getattr(strategy, "cluster_resolver", None) else LOCAL
    return Replication(num_replicas=replicas, sum=_all_reduce_sum, apply=_apply_once)


def replica_id() -> tf.Tensor:
    """This replica's index in its sync group (0 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return tf.constant(0)
    return tf.cast(context.replica_id_in_sync_group, tf.int64)


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """How many worker processes `strategy` spans: 1 unless it is a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 1
    spec = resolver.cluster_spec()
    return sum(spec.num_tasks(job) for job in ("chief", "worker") if job in spec.jobs) or 1


_sums: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def sum_over_workers(strategy: tf.distribute.Strategy) -> Callable[[Sequence[float]], list[float]]:
    """A function summing a short vector over the workers of `strategy`: one small all-reduce.

    Every worker must call it the same number of times, in the same order relative to
    the training steps (it is a collective). With one worker it returns its argument and
    costs nothing. Each worker's local replicas all contribute the same vector, so the
    replica sum is divided by the replicas per worker (workers have equal replica counts).

    Example:
      >>> total = sum_over_workers(strategy)
      >>> total([1.0, 0.0])  # on 2 workers, one of which passes [0.0, 0.0]
      [1.0, 0.0]
    """
    workers = worker_count(strategy)
    if workers == 1:
        return lambda values: [float(value) for value in values]
    if strategy not in _sums:
        per_worker = strategy.num_replicas_in_sync // workers

        @tf.function
        def summed(values: tf.Tensor) -> Any:
            # identity places the function's input on each replica's device; a collective
            # needs its operands there.
            return strategy.run(lambda v: _all_reduce_sum(tf.identity(v)), args=(values,))

        def total(values: Sequence[float]) -> list[float]:
            result = strategy.experimental_local_results(summed(tf.constant(values, tf.float32)))[0]
            return [float(value) / per_worker for value in result.numpy()]

        _sums[strategy] = total
    return _sums[strategy]
