"""The `pipeline` workload: whole epochs (train + validation) as a user runs them.

composeloop reads the arrays through the CLI's input path: `composeloop.parts.data.batches`
(shuffled by seed and epoch for training, in order for validation) into
`composeloop.engine.fit`; Keras through `model.fit(x, y, batch_size=..., validation_data=...)`
on the same arrays and model. Data are MNIST-shaped, made in code: uint8 28x28 images
(60,000 train, 10,000 validation in full mode) scaled to [0, 1] as `load_npz` does, 10
classes; the model is the CLI's default MLP (Flatten, 2 x Dense 128 ReLU, Dense 10) with
Adam(3e-3), batch 128.

Each variant runs sessions of two epochs and reports the second (the first of the first
session traces): composeloop's epoch seconds come from `fit`'s history (from before it
builds the epoch's dataset to after validation), `model.fit`'s from on_epoch_begin to
on_epoch_end (after its validation). Sessions are interleaved over rounds like the step
workloads; the `_cpu` ratios compare the process's CPU time over the same second epochs
(between the epoch-begin and epoch-end events of each). The input alone (iterating one epoch of `batches` for train and
validation) is timed too.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import attrs
import keras
import numpy as np

from benchmarks.variants import EpochTimer

BATCH = 128
CLASSES = 10


@attrs.frozen
class PipelineSize:
    train: int
    val: int
    rounds: int


SIZES = {
    "full": PipelineSize(60000, 10000, 5),
    "quick": PipelineSize(6000, 1000, 2),
    "tiny": PipelineSize(512, 128, 1),
}


def arrays(size: PipelineSize, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-shaped uint8 images scaled to float32 [0, 1] (as `load_npz` does), labels 0-9."""
    rng = np.random.default_rng(seed)
    total = size.train + size.val
    images = rng.integers(0, 256, (total, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, total).astype(np.int32)
    x = images.astype(np.float32) / 255.0
    return x[: size.train], labels[: size.train], x[size.train :], labels[size.train :]


def _model() -> keras.Model:
    from composeloop.parts.models import mlp

    return mlp((28, 28), CLASSES, width=128, depth=2)


def composed_session(model: keras.Model, data: tuple, steps_per_execution: int) -> Any:
    """A function running two epochs through `batches` and `engine.fit`; returns the second's
    (wall seconds, CPU seconds): wall from `fit`'s history, CPU from its epoch events."""
    from composeloop.engine import compile_step, fit, on_epoch_begin, on_epoch_end
    from composeloop.parts.data import batches
    from composeloop.parts.recipes import classifier_step

    x, y, x_val, y_val = data
    program = compile_step(classifier_step(model, keras.optimizers.Adam(3e-3)), steps_per_execution=steps_per_execution)
    cpu = CpuClock()

    def session() -> tuple[float, float]:
        history = fit(
            program,
            lambda epoch: batches(x, y, BATCH, seed=0, epoch=epoch),
            epochs=2,
            validation_data=lambda: batches(x_val, y_val, BATCH, shuffle=False),
            handlers=[on_epoch_begin(lambda state: cpu.start()), on_epoch_end(lambda state: cpu.stop())],
        )
        return history[1]["seconds"], cpu.seconds

    return session, lambda: dict(program.trace_counts)


def fit_session(model: keras.Model, data: tuple, steps_per_execution: int) -> Any:
    """A function running `model.fit(epochs=2, validation_data=...)`; returns the second
    epoch's (wall seconds, CPU seconds), on_epoch_begin to on_epoch_end."""
    x, y, x_val, y_val = data
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )
    cpu = CpuClock()
    timer = EpochTimer()
    clock = keras.callbacks.LambdaCallback(on_epoch_begin=lambda *_: cpu.start(), on_epoch_end=lambda *_: cpu.stop())

    def session() -> tuple[float, float]:
        model.fit(x, y, batch_size=BATCH, epochs=2, validation_data=(x_val, y_val), verbose=0, callbacks=[timer, clock])
        return timer.seconds, cpu.seconds

    return session, lambda: None


class CpuClock:
    """The process's CPU seconds between the last `start()` and `stop()`."""

    def __init__(self) -> None:
        self.started, self.seconds = 0.0, 0.0

    def start(self) -> None:
        self.started = time.process_time()

    def stop(self) -> None:
        self.seconds = time.process_time() - self.started


def read_only(data: tuple) -> float:
    """Seconds to iterate one training epoch (shuffled) and one validation pass of `batches`."""
    from composeloop.parts.data import batches

    x, y, x_val, y_val = data
    started = time.perf_counter()
    for _ in batches(x, y, BATCH, seed=0, epoch=1):
        pass
    for _ in batches(x_val, y_val, BATCH, shuffle=False):
        pass
    return time.perf_counter() - started


def bench(mode: str, log: Any, k: int = 16) -> dict[str, Any]:
    """Times every variant's second epoch over interleaved rounds; returns the figures."""
    size = SIZES[mode]
    data = arrays(size)
    keras.utils.set_random_seed(0)
    weights = _model().get_weights()
    makers = {
        "composed_spe1": (composed_session, 1),
        f"composed_spe{k}": (composed_session, k),
        "fit_spe1": (fit_session, 1),
        f"fit_spe{k}": (fit_session, k),
    }
    sessions, traces = {}, {}
    for name, (maker, spe) in makers.items():
        model = _model()
        model.set_weights(weights)
        sessions[name], traces[name] = maker(model, data, spe)
        sessions[name]()  # warm-up: traces
        print(f"  pipeline/{name}: ready", file=log, flush=True)
    samples: dict[str, list[float]] = {name: [] for name in makers}
    cpu: dict[str, list[float]] = {name: [] for name in makers}
    reads = []
    names = list(makers)
    for index in range(size.rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            wall, used = sessions[name]()
            samples[name].append(wall)
            cpu[name].append(used)
        reads.append(read_only(data))
        print(f"  pipeline: round {index + 1}/{size.rounds} done", file=log, flush=True)
    examples = size.train + size.val
    results = {
        name: {
            "epoch_seconds": statistics.median(values),
            "examples_per_s": examples / statistics.median(values),
            "epoch_seconds_rounds": [round(v, 4) for v in values],
            "epoch_cpu_seconds": statistics.median(cpu[name]),
            "traces": traces[name](),
        }
        for name, values in samples.items()
    }

    def paired(a: str, b: str, times: dict[str, list[float]] = samples) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    pairs = {
        "composed_spe1_vs_fit_spe1": ("composed_spe1", "fit_spe1"),
        f"composed_spe{k}_vs_fit_spe{k}": (f"composed_spe{k}", f"fit_spe{k}"),
        f"composed_spe{k}_vs_fit_spe1": (f"composed_spe{k}", "fit_spe1"),
    }
    ratios = {key: paired(a, b) for key, (a, b) in pairs.items()}
    ratios.update({f"{key}_cpu": paired(a, b, cpu) for key, (a, b) in pairs.items()})
    return {
        "train_examples": size.train,
        "val_examples": size.val,
        "batch_size": BATCH,
        "read_only_seconds": statistics.median(reads),
        "variants": results,
        "ratios": ratios,
    }
