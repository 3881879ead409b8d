"""Data read by each worker from its own files: one tf.data pipeline per worker.

An in-memory dataset is one pipeline that `Program.distribute` splits batch by batch over
the replicas of every worker (DATA sharding: every worker reads everything). Data in many
files can do better: each worker reads only its own files. This module owns the object
that says how: `PerWorker`, a function from (worker, workers) to that worker's batches, one
batch per replica at a time, handed to `strategy.distribute_datasets_from_function`. It
looks like a dataset to the loop (its length in steps, `skip` to resume mid-epoch), so the
loop and `Program` treat both alike. Which files a worker reads is the data's business
(`composeloop.parts.streams`), not this module's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import tensorflow as tf


@attrs.frozen
class PerWorker:
    """Per-worker input pipelines, each batched to the per-replica batch size.

    Args:
      make: ``make(worker, workers)`` -> that worker's per-replica batches, in order. A
        worker with several replicas hands them consecutive batches, one each per step.
      steps: steps in the whole pass (the longest worker's; workers that run out earlier
        give empty batches, which tf.distribute pads in, until all are done).
      replicas_per_worker: replicas each worker feeds.
      skipped: steps already taken (by `skip`).

    Example:
      >>> data = PerWorker(lambda worker, workers: my_files(worker, workers).batch(16), steps=100)
      >>> iterator = iter(program.distribute(data.skip(40)))  # resumes at step 40
    """

    make: Callable[[int, int], tf.data.Dataset]
    steps: int
    replicas_per_worker: int = 1
    skipped: int = 0

    def cardinality(self) -> tf.Tensor:
        """Steps left, as `tf.data.Dataset.cardinality` gives a dataset's batches."""
        return tf.constant(self.steps - self.skipped, tf.int64)

    def skip(self, steps: int) -> PerWorker:
        """The same pipelines without their first `steps` steps (resuming mid-epoch)."""
        return attrs.evolve(self, skipped=self.skipped + steps)

    def as_one_pipeline(self) -> tf.data.Dataset:
        """Every worker's data as one pipeline (one worker reading all), from the same step."""
        return self.make(0, 1).skip(self.skipped * self.replicas_per_worker)

    def distribute_over(self, strategy: tf.distribute.Strategy) -> Any:
        """One pipeline per worker, through `strategy.distribute_datasets_from_function`."""

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            dataset = self.make(context.input_pipeline_id, context.num_input_pipelines)
            options = tf.data.Options()
            # The pipeline reads only this worker's files already: no automatic sharding on top.
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
            return dataset.skip(self.skipped * self.replicas_per_worker).with_options(options)

        return strategy.distribute_datasets_from_function(dataset_fn)
