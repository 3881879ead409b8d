"""The epoch loop: training chunks, validation after each epoch, events, stop requests.

This module owns the Python side of a run: which dataset each epoch reads and from which
batch (a resume skips the batches already trained on), how an epoch is cut into
`steps_per_execution` chunks (shorter at the epoch's end and where an every-N-steps handler
is due), when metrics are reset and read, and when handlers are called. It talks to the
compiled program only through iterators, step counts and variables, so the compiled
functions never retrace. It writes no files: handlers do.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from composeloop.engine.compile import Program
from composeloop.engine.events import Event, Handler, RunState, dispatch, on_epoch_end, steps_to_next_event
from composeloop.vocabulary import TRAIN, VAL

EpochHandler = Callable[[dict[str, Any]], None]


def _known_length(dataset: tf.data.Dataset) -> int | None:
    length = int(dataset.cardinality())
    return length if length >= 0 else None


def _chunk(program: Program, left_in_epoch: int | None, to_next_event: int | None) -> int:
    limits = [program.steps_per_execution, left_in_epoch, to_next_event]
    return min(limit for limit in limits if limit is not None)


def run_epoch(program: Program, kind: str, dataset: tf.data.Dataset) -> int:
    """Runs one pass of `dataset` through the program's `kind` ("train" or "val") loop.

    Chunks are `steps_per_execution` long; when the dataset's length is known the last
    chunk is cut to what is left, otherwise the loop stops when the iterator runs out.

    Returns:
      The number of batches run.
    """
    state = RunState(program, epochs=1)
    _run_batches(state, kind, dataset, ())
    return state.batch


def _run_batches(state: RunState, kind: str, dataset: tf.data.Dataset, handlers: Sequence[Handler]) -> bool:
    """Runs `dataset` from `state.batch` on, advancing `state.batch`, until done or asked to stop.

    Returns:
      True when the dataset was run to its end.
    """
    program = state.program
    runs = {TRAIN: program.train, VAL: program.evaluate}
    if kind not in runs:
        raise ValueError(f"kind must be {TRAIN!r} or {VAL!r}, got {kind!r}")
    run = runs[kind]
    length = _known_length(dataset)
    if state.batch:
        dataset = dataset.skip(state.batch)
    iterator = iter(program.distribute(dataset))
    # Reading the step costs a device round trip: only when a handler needs it.
    timed = kind == TRAIN and any(handler.event is Event.STEPS for handler in handlers)
    while length is None or state.batch < length:
        left = None if length is None else length - state.batch
        chunk = _chunk(program, left, steps_to_next_event(handlers, state.step) if timed else None)
        ran = run(iterator, chunk)
        state.batch += ran
        if kind == TRAIN and handlers:
            dispatch(handlers, Event.CHUNK, state)
            if ran and timed:
                dispatch(handlers, Event.STEPS, state)
        if ran < chunk:
            return True
        if state.stopping:
            return length is not None and state.batch >= length
    return True


def run_loop(
    program: Program,
    train_data: Callable[[int], tf.data.Dataset],
    *,
    epochs: int,
    validation_data: Callable[[], tf.data.Dataset] | None = None,
    handlers: Sequence[Handler] = (),
    state: RunState | None = None,
    validation_weights: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> RunState:
    """Trains until `epochs` epochs are done or a handler asks to stop; the full-control loop.

    Args:
      program: from `compile_step`.
      train_data: epoch number (0-based) -> that epoch's batches, in an order that is a
        pure function of the epoch (and the run seed): a resume skips into it.
      epochs: the epoch to stop after (counted from the first epoch, not from a resume).
      validation_data: () -> validation batches, or None for no validation.
      handlers: event handlers (see `composeloop.engine.events`), called in order.
      state: where to start: a restored `RunState` to resume (its `epoch`, `batch` and
        `history`); None starts at epoch 0, batch 0.
      validation_weights: () -> a context manager entered around each validation pass,
        e.g. ``lambda: ema_weights(program)`` to validate the EMA weights; the training
        weights are back before the epoch-end handlers (checkpoints) run.

    Returns:
      The final `RunState`: `history` (one dict per epoch: ``epoch`` 1-based,
      ``train_<metric>``, ``val_<metric>``, ``seconds``) and `status` ("completed", or what
      a handler passed to `state.stop`).

    Example:
      >>> state = run_loop(program, lambda epoch: batches(data, 32, seed, epoch), epochs=5)
      >>> state.status, state.history[-1]["val_accuracy"]
    """
    state = state or RunState(program, epochs)
    state.epochs = epochs
    names = [metric.name for metric in program.step.metrics]
    kinds = (TRAIN, VAL) if validation_data is not None else (TRAIN,)
    state.log_keys = tuple(f"{kind}_{name}" for kind in kinds for name in names)
    dispatch(handlers, Event.RUN_BEGIN, state)
    while state.epoch < epochs and not state.stopping:
        started = time.perf_counter()
        if state.batch == 0:  # a resume mid-epoch keeps the restored running sums
            program.reset(TRAIN)
        dataset = train_data(state.epoch)
        state.steps_in_epoch = _known_length(dataset)
        dispatch(handlers, Event.EPOCH_BEGIN, state)
        if not _run_batches(state, TRAIN, dataset, handlers):
            break  # stopped mid-epoch: no validation, no epoch record
        logs: dict[str, Any] = {"epoch": state.epoch + 1}
        logs.update({f"{TRAIN}_{name}": value for name, value in program.results(TRAIN).items()})
        if validation_data is not None:
            program.reset(VAL)
            with (validation_weights or contextlib.nullcontext)():
                run_epoch(program, VAL, validation_data())
            logs.update({f"{VAL}_{name}": value for name, value in program.results(VAL).items()})
        logs["seconds"] = time.perf_counter() - started
        state.history.append(logs)
        state.epoch, state.batch = state.epoch + 1, 0
        dispatch(handlers, Event.EPOCH_END, state)
    if not state.stopping:
        state.status = "completed"
    dispatch(handlers, Event.RUN_END, state)
    return state


def fit(
    program: Program,
    train_data: Callable[[int], tf.data.Dataset],
    *,
    epochs: int,
    validation_data: Callable[[], tf.data.Dataset] | None = None,
    on_epoch_end: Sequence[EpochHandler] = (),
    handlers: Sequence[Handler] = (),
    validation_weights: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Trains for `epochs` epochs, validating after each; returns each epoch's logs.

    The simple form of `run_loop`: `on_epoch_end` functions take just the epoch's logs.

    Args:
      program: from `compile_step`.
      train_data: epoch number (0-based) -> that epoch's batches. Making the order a pure
        function of the epoch keeps runs reproducible.
      epochs: how many epochs.
      validation_data: () -> validation batches, or None for no validation.
      on_epoch_end: functions called with each epoch's logs, in order.
      handlers: event handlers, as for `run_loop`.
      validation_weights: as for `run_loop` (e.g. ``lambda: ema_weights(program)``).

    Returns:
      One dict per epoch: ``epoch`` (1-based), ``train_<metric>``, ``val_<metric>``,
      ``seconds``.

    Example:
      >>> history = fit(program, lambda epoch: batches(data, 32, seed, epoch), epochs=5)
      >>> history[-1]["val_accuracy"]
    """
    simple = [_logs_handler(fn) for fn in on_epoch_end]
    state = run_loop(
        program,
        train_data,
        epochs=epochs,
        validation_data=validation_data,
        handlers=[*simple, *handlers],
        validation_weights=validation_weights,
    )
    return state.history


def _logs_handler(fn: EpochHandler) -> Handler:
    return on_epoch_end(lambda state: fn(dict(state.logs)))
