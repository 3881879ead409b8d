"""The variants: one way each of running whole training epochs of a workload.

This module owns the training code under test: an eager and a `@tf.function` hand-written
`GradientTape` step (written here in the style of the seed articles, Keras 3 spelling),
`model.fit` with `steps_per_execution` 1 and K, and composeloop's compiled program with
steps_per_execution 1, K, and K under XLA (and, on request, `fit` and the hand-written step
under XLA too). Every variant gets a model with the same
weights, a plain SGD optimizer, mean-loss and accuracy metrics, and the same batches; each
`epoch()` returns the seconds its epoch took, measured after the last step's result is
read back. It does not decide how often to run them: that is `steps`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs
import keras
import numpy as np
import tensorflow as tf

from composeloop.engine import compile_step, run_epoch
from composeloop.parts.recipes import classifier_step

LEARNING_RATE = 0.01


def optimizer() -> keras.optimizers.Optimizer:
    """The one optimizer every variant uses: plain SGD (no slots, no momentum)."""
    return keras.optimizers.SGD(learning_rate=LEARNING_RATE)


@attrs.define
class Runner:
    """A ready variant: `epoch()` trains one epoch and returns its seconds; `reset()`
    resets its metrics (outside the timing); `traces()` counts its traces, None if it
    has no compiled function or they cannot be counted; `model` is what it trains."""

    name: str
    epoch: Callable[[], float]
    reset: Callable[[], None]
    traces: Callable[[], dict[str, int] | None]
    model: keras.Model


def hand_written(
    name: str, model: keras.Model, batches: tf.data.Dataset, compiled: bool, jit_compile: bool = False
) -> Runner:
    """The loop people write by hand: tape, loss, gradients, apply, metric updates."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_loss = keras.metrics.Mean()
    train_accuracy = keras.metrics.SparseCategoricalAccuracy()
    sgd = optimizer()
    sgd.build(model.trainable_variables)
    traced = [0]

    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        traced[0] += 1  # Python: runs once per trace under tf.function, once per call eagerly
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        sgd.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        train_loss.update_state(loss)
        train_accuracy.update_state(y, logits)
        return loss

    step = tf.function(train_step, jit_compile=jit_compile) if compiled else train_step

    def epoch() -> float:
        started = time.perf_counter()
        loss = None
        for x, y in batches:
            loss = step(x, y)
        float(loss)  # wait for the last step
        return time.perf_counter() - started

    def reset() -> None:
        train_loss.reset_state()
        train_accuracy.reset_state()

    return Runner(name, epoch, reset, lambda: {"train_step": traced[0]} if compiled else None, model)


class EpochTimer(keras.callbacks.Callback):
    """Times `fit`'s epoch from on_epoch_begin to on_epoch_end: its per-call setup (data
    adapter, callback list, building the train function) is left out, as a user who
    calls fit once for many epochs pays it once."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._started = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.seconds = time.perf_counter() - self._started


def _fit_traces(model: keras.Model) -> dict[str, int] | None:
    """Best effort: the tf.functions Keras closes over in `model.train_function`."""
    function = model.train_function
    code = getattr(function, "__code__", None)
    if code is None or not function.__closure__:
        return None
    counts = {}
    for name, cell in zip(code.co_freevars, function.__closure__, strict=True):
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        count = getattr(value, "experimental_get_tracing_count", None)
        if callable(count):
            counts[name] = int(count())
    return counts or None


def keras_fit(
    name: str, model: keras.Model, batches: tf.data.Dataset, steps_per_execution: int, jit_compile: bool = False
) -> Runner:
    """`model.compile(steps_per_execution=K)` then `model.fit` one epoch at a time."""
    model.compile(
        optimizer=optimizer(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    timer = EpochTimer()

    def epoch() -> float:
        model.fit(batches, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
        return timer.seconds

    def traces() -> dict[str, int] | None:
        return _fit_traces(model) if model.train_function is not None else None

    return Runner(name, epoch, model.reset_metrics, traces, model)


def composed(
    name: str, model: keras.Model, batches: tf.data.Dataset, steps_per_execution: int, jit_compile: bool
) -> Runner:
    """composeloop's classifier recipe, compiled, run with `run_epoch`."""
    program = compile_step(
        classifier_step(model, optimizer()), steps_per_execution=steps_per_execution, jit_compile=jit_compile
    )

    def epoch() -> float:
        started = time.perf_counter()
        run_epoch(program, "train", batches)  # each chunk's step count is read back: synced
        return time.perf_counter() - started

    def traces() -> dict[str, int]:
        counts = dict(program.trace_counts)
        # The XLA-compiled per-batch function nested in the train loop is not in
        # trace_counts; read its tracing count from the tf.function itself.
        inner = getattr(program, "_on_batch", {}).get("train")
        count = getattr(inner, "experimental_get_tracing_count", None)
        if jit_compile and callable(count):
            counts["train_on_batch_xla"] = int(count())
        return counts

    return Runner(name, epoch, lambda: program.reset("train"), traces, model)


def variant_names(steps_per_execution: int, xla: bool = False) -> list[str]:
    """The variants of a step workload; with `xla`, also `fit` and the hand-written step
    under XLA (composeloop's XLA variant always runs)."""
    k = steps_per_execution
    names = ["eager", "tf_function", "fit_spe1", f"fit_spe{k}", "composed_spe1", f"composed_spe{k}"]
    names.append(f"composed_spe{k}_jit")
    return names + (["tf_function_jit", f"fit_spe{k}_jit"] if xla else [])


def make_runner(
    name: str,
    build: Callable[[], keras.Model],
    weights: list[np.ndarray],
    data: dict[str, tf.data.Dataset],
    k: int,
    eager_steps: int,
) -> Runner:
    """A variant by name (see `variant_names`), on a fresh model holding `weights`; the
    eager variant reads only the first `eager_steps` batches."""
    model = build()
    model.set_weights(weights)
    tuples, dicts = data["tuples"], data["dicts"]
    makers: dict[str, Callable[[], Runner]] = {
        "eager": lambda: hand_written(name, model, tuples.take(eager_steps), compiled=False),
        "tf_function": lambda: hand_written(name, model, tuples, compiled=True),
        "tf_function_jit": lambda: hand_written(name, model, tuples, compiled=True, jit_compile=True),
        "fit_spe1": lambda: keras_fit(name, model, tuples, 1),
        f"fit_spe{k}": lambda: keras_fit(name, model, tuples, k),
        f"fit_spe{k}_jit": lambda: keras_fit(name, model, tuples, k, jit_compile=True),
        "composed_spe1": lambda: composed(name, model, dicts, 1, jit_compile=False),
        f"composed_spe{k}": lambda: composed(name, model, dicts, k, jit_compile=False),
        f"composed_spe{k}_jit": lambda: composed(name, model, dicts, k, jit_compile=True),
    }
    return makers[name]()
