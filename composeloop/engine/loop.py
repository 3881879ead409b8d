"""The epoch loop: training chunks, validation after each epoch, per-epoch metric resets.

This module owns the Python side of a run: which dataset each epoch reads, how an epoch is
cut into `steps_per_execution` chunks (the last one shorter), and when metrics are reset
and read. It talks to the compiled program only through iterators, step counts and
variables, so the compiled functions never retrace. It does not write files: event
handlers (see `report`) do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from composeloop.engine.compile import Program

EpochHandler = Callable[[dict[str, Any]], None]


def _known_length(dataset: tf.data.Dataset) -> int | None:
    length = int(dataset.cardinality())
    return length if length >= 0 else None


def run_epoch(program: Program, kind: str, dataset: tf.data.Dataset) -> int:
    """Runs one pass of `dataset` through the program's `kind` ("train" or "eval") loop.

    Chunks are `steps_per_execution` long; when the dataset's length is known the last
    chunk is cut to what is left, otherwise the loop stops when the iterator runs out.

    Returns:
      The number of batches run.
    """
    run = program.train if kind == "train" else program.evaluate
    iterator = iter(program.distribute(dataset))
    length = _known_length(dataset)
    done = 0
    while length is None or done < length:
        chunk = program.steps_per_execution if length is None else min(program.steps_per_execution, length - done)
        ran = run(iterator, chunk)
        done += ran
        if ran < chunk:
            break
    return done


def fit(
    program: Program,
    train_data: Callable[[int], tf.data.Dataset],
    *,
    epochs: int,
    validation_data: Callable[[], tf.data.Dataset] | None = None,
    on_epoch_end: Sequence[EpochHandler] = (),
) -> list[dict[str, Any]]:
    """Trains for `epochs` epochs, validating after each; returns each epoch's logs.

    Args:
      program: from `compile_step`.
      train_data: epoch number (0-based) -> that epoch's batches. Making the order a pure
        function of the epoch keeps runs reproducible.
      epochs: how many epochs.
      validation_data: () -> validation batches, or None for no validation.
      on_epoch_end: functions called with each epoch's logs, in order.

    Returns:
      One dict per epoch: ``epoch`` (1-based), ``train_<metric>``, ``val_<metric>``,
      ``seconds``.

    Example:
      >>> history = fit(program, lambda epoch: batches(data, 32, seed, epoch), epochs=5)
      >>> history[-1]["val_accuracy"]
    """
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        program.reset("train")
        run_epoch(program, "train", train_data(epoch))
        logs: dict[str, Any] = {"epoch": epoch + 1}
        logs.update({f"train_{name}": value for name, value in program.results("train").items()})
        if validation_data is not None:
            program.reset("eval")
            run_epoch(program, "eval", validation_data())
            logs.update({f"val_{name}": value for name, value in program.results("eval").items()})
        logs["seconds"] = time.perf_counter() - started
        history.append(logs)
        for handler in on_epoch_end:
            handler(logs)
    return history
