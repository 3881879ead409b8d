"""TensorBoard summaries of a run, under ``<run dir>/tensorboard/{train,val}``.

This module owns which scalars and images a run sends to TensorBoard: every logged metric
(train and validation under the same tag, so they overlay), each phase's learning rate and
gradient global norm, steps per second, and, for generative runs, sample images. Values are
recorded at the global step, so a resumed run continues the same curves.

Summaries are written with TensorFlow's own `tf.summary.write` and the metadata that
TensorBoard's scalar and image plugins read, so writing them needs no `tensorboard`
package (TensorFlow no longer depends on it); viewing them does: ``pip install tensorboard``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from composeloop.engine.compile import Program
from composeloop.engine.events import Handler, RunState, every_steps, on_epoch_end, on_run_begin, on_run_end
from composeloop.vocabulary import TRAIN, VAL

Images = Callable[[RunState], np.ndarray]


def _metadata(plugin: str) -> bytes:
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = plugin
    return metadata.SerializeToString()


_SCALAR, _IMAGE = _metadata("scalars"), _metadata("images")


def write_scalar(tag: str, value: float) -> None:
    """A scalar for TensorBoard's scalar plugin, at the default writer's step."""
    tf.summary.write(tag, tf.constant(value, tf.float32), metadata=_SCALAR)


def write_images(tag: str, images: np.ndarray, limit: int = 16) -> None:
    """Images (n, height, width[, channels]) in [0, 1] for TensorBoard's image plugin."""
    images = np.asarray(images, np.float32)[:limit]
    if images.ndim == 3:
        images = images[..., None]
    pixels = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    encoded = [tf.io.encode_png(image) for image in pixels]
    height, width = pixels.shape[1:3]
    tf.summary.write(tag, tf.stack([tf.constant(str(width)), tf.constant(str(height)), *encoded]), metadata=_IMAGE)


def learning_rates(program: Program) -> dict[str, float]:
    """Each phase's current learning rate, for phases whose apply stage has an optimizer."""
    rates = {}
    for phase in program.step.phases:
        optimizer = getattr(phase.apply, "optimizer", None)
        if optimizer is not None:
            rates[phase.name] = float(tf.convert_to_tensor(optimizer.learning_rate).numpy())
    return rates


def _step_scalars(program: Program) -> dict[str, float]:
    scalars = {f"learning_rate/{phase}": rate for phase, rate in learning_rates(program).items()}
    recorded = program.last_logs if program.record_logs else {}
    for name, variable in recorded.items():
        phase, key = name.split("/", 1)
        scalars[f"{key}/{phase}"] = float(variable.numpy())
    return scalars


def tensorboard(directory: Path, every: int | None = None, images: Images | None = None) -> list[Handler]:
    """Handlers writing TensorBoard event files under `directory`.

    Args:
      directory: the event files' root; ``train/`` and ``validation/`` go below it. The
        gradient norms are recorded when the program was compiled with `record_logs`.
      every: also record the last step's objective, gradient norm and learning rate every
        `every` global steps; None: only at epoch ends.
      images: state -> images (n, height, width, channels) in [0, 1], recorded each epoch.

    Example:
      >>> from composeloop.engine import fit
      >>> history = fit(program, train_data, epochs=2, handlers=tensorboard(run_dir / "tensorboard"))
      >>> sorted(path.name for path in (run_dir / "tensorboard").iterdir())  # tensorboard --logdir run_dir
      ['train', 'val']
    """
    writers: dict[str, Any] = {}

    def open_writers(state: RunState) -> None:
        for kind in (TRAIN, VAL):
            writers[kind] = tf.summary.create_file_writer(str(Path(directory) / kind))

    def scalars(kind: str, values: dict[str, float], step: int) -> None:
        with writers[kind].as_default(step=step):
            for tag, value in values.items():
                write_scalar(tag, value)

    def per_steps(state: RunState) -> None:
        scalars(TRAIN, _step_scalars(state.program), state.step)

    def per_epoch(state: RunState) -> None:
        logs = state.logs
        train = {key.removeprefix(f"{TRAIN}_"): v for key, v in logs.items() if key.startswith(f"{TRAIN}_")}
        train |= _step_scalars(state.program)
        if state.steps_in_epoch and logs.get("seconds"):
            train["steps_per_second"] = state.steps_in_epoch / logs["seconds"]
        scalars(TRAIN, train, state.step)
        validation = {key.removeprefix(f"{VAL}_"): v for key, v in logs.items() if key.startswith(f"{VAL}_")}
        scalars(VAL, validation, state.step)
        if images is not None:
            with writers[TRAIN].as_default(step=state.step):
                write_images("samples", images(state))
        for writer in writers.values():
            writer.flush()

    def close(state: RunState) -> None:
        for writer in writers.values():
            writer.close()

    handlers = [on_run_begin(open_writers), on_epoch_end(per_epoch), on_run_end(close)]
    return handlers + ([every_steps(every, per_steps)] if every else [])
