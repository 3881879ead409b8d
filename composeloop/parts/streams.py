"""Datasets streamed from files that need not fit in memory: TFRecord shards and image folders.

This module owns the order in which an epoch reads data files (`composeloop.parts.datafiles`)
and the tf.data pipelines that read them (parallel interleave over files, parallel map,
prefetch): one per run or, over several workers, one per worker reading only its own files
(`engine.sources.PerWorker`). uint8 pixels are scaled to [0, 1]; images are decoded to RGB,
resized and scaled to [0, 1]. A record whose shape differs from the first record's fails
the run with an error naming its file. It does not find, check or write files, nor
distribute batches.

The order of an epoch is a pure function of (seed, epoch, the files and their record
counts), so a resumed run reads exactly the batches it has not trained on: the files are
permuted by (seed, epoch), then read `cycle_length` files at a time, one record from each
in turn, a finished file's place taken by the next (tf.data's interleave, made
deterministic). There is no shuffle buffer, so `stream_order` can compute the same order in
NumPy: a run over files equals the in-memory run of `read_all`'s arrays in that order. The
mixing within an epoch comes from the permutation and the interleave; shuffle the examples
before cutting them into shards (`to_tfrecord` does).

Over W workers with at least W files, each worker reads the files at its positions
(``worker, worker + W, ...``) of the epoch's permutation, and the global batch of a step is
the workers' per-replica batches together. With fewer files than workers, every worker
reads every file and keeps its part of each global batch (DATA sharding, as for in-memory
data); `sharding` says which, in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from composeloop.parts.data import epoch_order
from composeloop.parts.datafiles import COUNT_BATCH, Files, features

CYCLE_LENGTH = 8  # files read at a time


# -- the order ----------------------------------------------------------------------------


def interleave_order(counts: Sequence[int], cycle_length: int) -> list[tuple[int, int]]:
    """(input, record) pairs in the order tf.data's interleave reads them, block length 1.

    `cycle_length` inputs are open at a time and give one record each in turn; a finished
    input's place is taken by the next input when the turn comes back to it.

    Example:
      >>> interleave_order([2, 1, 2], 2)
      [(0, 0), (1, 0), (0, 1), (2, 0), (2, 1)]
    """
    slots: list[list[int] | None] = [None] * cycle_length
    order, position, following, open_inputs = [], 0, 0, 0
    while following < len(counts) or open_inputs:
        slot = slots[position]
        if slot is None and following < len(counts):
            slots[position], following, open_inputs = [following, 0], following + 1, open_inputs + 1
            continue  # the new input gives its first record in this same turn
        if slot is not None and slot[1] < counts[slot[0]]:
            order.append((slot[0], slot[1]))
            slot[1] += 1
        elif slot is not None:
            slots[position], open_inputs = None, open_inputs - 1
        position = (position + 1) % cycle_length
    return order


def _epoch_files(files: Files, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    return epoch_order(len(files.paths), seed, epoch) if shuffle else np.arange(len(files.paths))


def stream_order(
    files: Files,
    seed: int = 0,
    epoch: int = 0,
    *,
    workers: int = 1,
    worker: int = 0,
    shuffle: bool = True,
    cycle_length: int = CYCLE_LENGTH,
) -> np.ndarray:
    """The global indices (files in sorted order, records in file order) of the records one
    worker reads in an epoch, in reading order; `workers` > 1 gives a worker of a FILE-sharded run.

    Example:
      >>> x, y = read_all(files)
      >>> order = stream_order(files, seed=0, epoch=3)  # the in-memory run reads x[order]
    """
    mine = _epoch_files(files, seed, epoch, shuffle)[worker::workers]
    counts = [files.counts[index] for index in mine]
    offsets = files.offsets
    return np.array(
        [offsets[mine[i]] + r for i, r in interleave_order(counts, min(cycle_length, max(len(mine), 1)))], np.int64
    )


def global_batches(
    files: Files, batch_size: int, seed: int = 0, epoch: int = 0, *, workers: int = 1, replicas_per_worker: int = 1
) -> list[np.ndarray]:
    """The global indices of each step's global batch, as `stream` makes them (FILE sharding
    when `workers` > 1): what an in-memory run on the same data must read to equal it."""
    if workers == 1 or len(files.paths) < workers:
        order = stream_order(files, seed, epoch)
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    per_replica = batch_size // (workers * replicas_per_worker)
    streams = [stream_order(files, seed, epoch, workers=workers, worker=w) for w in range(workers)]
    cut = [[s[i : i + per_replica] for i in range(0, len(s), per_replica)] for s in streams]
    steps = max(-(-len(batches) // replicas_per_worker) for batches in cut)
    empty = np.zeros(0, np.int64)
    return [
        np.concatenate(
            [
                batches[b] if b < len(batches) else empty
                for batches in cut
                for b in range(step * replicas_per_worker, (step + 1) * replicas_per_worker)
            ]
        )
        for step in range(steps)
    ]


# -- pipelines -----------------------------------------------------------------------------


def _parser(files: Files) -> Any:
    """(serialized record, its file) -> {"x", "y"}; a record of another shape names its file."""
    import tensorflow as tf

    dtype, shape = tf.as_dtype(files.x_dtype), files.example_shape
    expected = ",".join(map(str, shape))

    def parse(record: tf.Tensor, path: tf.Tensor) -> dict[str, tf.Tensor]:
        example = tf.io.parse_single_example(record, features())
        x = tf.io.parse_tensor(example["x"], dtype)
        found = tf.strings.reduce_join(tf.strings.as_string(tf.shape(x)), separator=",")
        check = tf.debugging.Assert(
            tf.equal(found, expected), ["composeloop: data.files:", path, "holds x of shape", found, "not", expected]
        )
        with tf.control_dependencies([check]):
            x = tf.ensure_shape(tf.identity(x), shape)
        x = tf.cast(x, tf.float32) / 255.0 if files.x_dtype == "uint8" else x
        return {"x": x, "y": tf.cast(example["y"], tf.int32)}

    return parse


def _loader(files: Files) -> Any:
    """(image path, label) -> {"x": RGB in [0, 1], resized, "y"}."""
    import tensorflow as tf

    def load(path: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, files.image_size)  # float32, 0..255
        return {"x": tf.ensure_shape(image / 255.0, files.example_shape), "y": tf.cast(label, tf.int32)}

    return load


def _records(files: Files, chosen: np.ndarray, cycle_length: int) -> Any:
    """The records of the `chosen` files (indices into `files.paths`), in `stream_order`'s order."""
    import tensorflow as tf

    paths = tf.constant([files.paths[i] for i in chosen], tf.string)
    parallel = {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": True}
    if files.kind == "images":
        labels = tf.constant([files.labels[i] for i in chosen], tf.int32)
        records = tf.data.Dataset.from_tensor_slices((paths, labels)).map(_loader(files), **parallel)
    else:
        records = tf.data.Dataset.from_tensor_slices(paths).interleave(
            lambda path: tf.data.TFRecordDataset(path).map(lambda record: (record, path)),
            cycle_length=min(cycle_length, max(len(chosen), 1)),
            block_length=1,
            **parallel,
        )
        records = records.map(_parser(files), **parallel)
    # The counts are known: the loop then knows an epoch's length, and a file that changed says so.
    return records.apply(tf.data.experimental.assert_cardinality(sum(files.counts[i] for i in chosen)))


def _layout(strategy: Any) -> tuple[int, int]:
    if strategy is None:
        return 1, 1
    from composeloop.engine.distribute import worker_count

    workers = worker_count(strategy)
    return workers, strategy.num_replicas_in_sync // workers


def sharding(files: Files, workers: int) -> str:
    """One line saying how `files` are shared out over `workers` (empty for one worker)."""
    if workers == 1:
        return ""
    if len(files.paths) >= workers:
        return f"data: {len(files.paths)} files sharded by FILE over {workers} workers (each reads its own)"
    return (
        f"data: {len(files.paths)} file(s) for {workers} workers: sharded by DATA "
        "(every worker reads every file and keeps its part of each batch)"
    )


def stream(
    files: Files,
    batch_size: int,
    seed: int = 0,
    epoch: int = 0,
    *,
    strategy: Any = None,
    shuffle: bool = True,
    cycle_length: int = CYCLE_LENGTH,
) -> Any:
    """One epoch of ``{"x", "y"}`` batches of `files`, in `stream_order`'s order, prefetched.

    Args:
      files: from `tfrecord_files` or `image_files`.
      batch_size: the global batch size (the last batch may be smaller).
      seed, epoch: fix the order (with `shuffle`; without, files in sorted order).
      strategy: the run's strategy. Over several workers with at least as many files,
        each worker reads only its own files: the result is then an
        `engine.sources.PerWorker` that `Program.distribute` hands to
        `distribute_datasets_from_function`, and `batch_size` must split evenly over
        the replicas. Otherwise a `tf.data.Dataset` of global batches.
      cycle_length: files read at a time (in parallel).

    Example:
      >>> files = tfrecord_files("shards/train-*.tfrecord")
      >>> run_loop(program, lambda epoch: stream(files, 64, seed=0, epoch=epoch, strategy=strategy), epochs=5)
    """
    import tensorflow as tf

    from composeloop.engine.sources import PerWorker

    workers, per_worker = _layout(strategy)
    chosen = _epoch_files(files, seed, epoch, shuffle)
    if workers == 1 or len(files.paths) < workers:
        return _records(files, chosen, cycle_length).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    replicas = workers * per_worker
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} must split evenly over the {replicas} replicas of {workers} workers")
    per_replica = batch_size // replicas

    def make(worker: int, count: int) -> tf.data.Dataset:
        return _records(files, chosen[worker::count], cycle_length).batch(per_replica).prefetch(tf.data.AUTOTUNE)

    batches = [-(-sum(files.counts[i] for i in chosen[w::workers]) // per_replica) for w in range(workers)]
    return PerWorker(make, max(-(-count // per_worker) for count in batches), per_worker)


def read_all(files: Files) -> tuple[np.ndarray, np.ndarray]:
    """Every record, files in sorted order: the in-memory arrays `stream_order` indexes.

    For small sets and tests: it holds everything in memory.
    """
    everything = _records(files, np.arange(len(files.paths)), cycle_length=1).batch(COUNT_BATCH)
    parts = [(batch["x"].numpy(), batch["y"].numpy()) for batch in everything]
    if not parts:
        return np.zeros((0, *files.example_shape), np.float32), np.zeros(0, np.int32)
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])
