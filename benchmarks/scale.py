"""The `scale` workload: how step time grows with batch size and width, and what a phase costs.

Batch size and width: a ReLU MLP 784-W-W-10 on synthetic data, for every batch size and
width in the mode's grid; per cell, the hand-written `@tf.function` step, `fit` at
steps_per_execution K and composeloop at 1 and K, timed like the step workloads
(interleaved rounds, medians; `benchmarks.steps.time_variants`). If composeloop adds a
fixed cost per step, its ratio to the others falls as the batch grows; if it added work
per example, the ratio would grow. Either way the table shows it.

Phases: a step of 1, 4 and 16 phases, each training its own one-layer model (Dense 4 -> 3,
batch 8, SGD, no metrics), compiled with steps_per_execution 16, against the same number
of tapes written by hand in one `tf.function` looping 16 steps; the slope is what one
more phase (or tape) costs per step.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks.workloads import Workload, dense_shapes, mlp

GRID = {
    "full": {"batches": (32, 128, 512, 1024, 4096), "widths": (256, 1024), "rounds": 3},
    "quick": {"batches": (32, 4096), "widths": (256,), "rounds": 2},
    "tiny": {"batches": (4,), "widths": (8,), "rounds": 1},
}
PHASES = {"full": (1, 4, 16), "quick": (1, 16), "tiny": (1, 2)}
K = 16


def cells(mode: str) -> list[Workload]:
    """One workload per (batch size, width) of the mode's grid."""
    grid = GRID[mode]
    out = []
    for width in grid["widths"]:
        for batch in grid["batches"]:
            steps = max(4, min(64, 16384 // batch)) if mode != "tiny" else 4
            k = min(K, steps) if mode != "tiny" else 2
            out.append(
                Workload(f"w{width}_b{batch}", mlp(784, (width, width)), (784,), batch, steps, k,
                         dense_shapes(784, (width, width)))
            )  # fmt: skip
    return out


def scale_variants(k: int) -> list[str]:
    return ["tf_function", f"fit_spe{k}", "composed_spe1", f"composed_spe{k}"]


# -- phases -------------------------------------------------------------------------------


def _tiny_models(count: int) -> dict[str, keras.Model]:
    keras.utils.set_random_seed(0)
    return {f"m{i}": keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]) for i in range(count)}


def _data(steps: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.random((steps, 8, 4), dtype=np.float32), "y": rng.integers(0, 3, (steps, 8)).astype(np.int32)}


def composed_phases(count: int, steps: int) -> Any:
    """A program of `count` trivial phases; returns (epoch function, traces)."""
    from composeloop import step as cs
    from composeloop.engine import compile_step, run_epoch

    models = _tiny_models(count)
    phases = [
        cs.Phase(
            name=f"p{i}",
            forward=cs.call_model(f"m{i}", inputs="x", output="logits"),
            loss=cs.sparse_categorical_crossentropy(),
            aggregate=cs.global_mean(),
            apply=cs.optimizer_apply(keras.optimizers.SGD(0.01)),
            trains=(f"m{i}",),
        )
        for i in range(count)
    ]
    program = compile_step(cs.compose(*phases, models=models), steps_per_execution=K)
    batches = tf.data.Dataset.from_tensor_slices(_data(steps))

    def epoch() -> float:
        started = time.perf_counter()
        run_epoch(program, "train", batches)
        return time.perf_counter() - started

    return epoch, lambda: dict(program.trace_counts)


def hand_written_tapes(count: int, steps: int) -> Any:
    """`count` tapes per step, K steps per call of one `tf.function`, as one would write them."""
    models = list(_tiny_models(count).values())
    optimizers = [keras.optimizers.SGD(0.01) for _ in models]
    for model, optimizer in zip(models, optimizers, strict=True):
        optimizer.build(model.trainable_variables)
    traced = [0]

    @tf.function
    def train(iterator: Any, n: tf.Tensor) -> None:
        traced[0] += 1
        for _ in tf.range(n):
            batch = next(iterator)
            for model, optimizer in zip(models, optimizers, strict=True):
                with tf.GradientTape() as tape:
                    logits = model(batch["x"], training=True)
                    loss = tf.reduce_mean(
                        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch["y"], logits=logits)
                    )
                variables = model.trainable_variables
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    batches = tf.data.Dataset.from_tensor_slices(_data(steps))
    calls = tf.constant(K)

    def epoch() -> float:
        started = time.perf_counter()
        iterator = iter(batches)
        for _ in range(steps // K):
            train(iterator, calls)
        float(models[-1].trainable_variables[0][0, 0])
        return time.perf_counter() - started

    return epoch, lambda: {"train": traced[0]}


def bench_phases(mode: str, rounds: int, log: Any) -> dict[str, Any]:
    """us per step for each phase count, composed and hand-written, and the per-phase slope."""
    counts = PHASES[mode]
    steps = K * (4 if mode != "tiny" else 1)
    runners = {}
    for count in counts:
        runners[f"composed_{count}"] = composed_phases(count, steps)
        runners[f"hand_written_{count}"] = hand_written_tapes(count, steps)
    for epoch, _ in runners.values():
        epoch()  # warm-up: traces
    samples: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            clock = time.process_time()
            samples[name].append(runners[name][0]() / steps * 1e6)
            cpu[name].append((time.process_time() - clock) / steps * 1e6)
    print("  scale: phases done", file=log, flush=True)
    us = {name: statistics.median(values) for name, values in samples.items()}
    us_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    first, last = counts[0], counts[-1]

    def slope(times: dict[str, float], kind: str) -> float:
        return (times[f"{kind}_{last}"] - times[f"{kind}_{first}"]) / (last - first)

    return {
        "steps_per_execution": K,
        "us_per_step": us,
        "cpu_us_per_step": us_cpu,
        "traces": {name: traces() for name, (_, traces) in runners.items()},
        "us_per_extra_phase": slope(us, "composed"),
        "us_per_extra_tape_hand_written": slope(us, "hand_written"),
        "cpu_us_per_extra_phase": slope(us_cpu, "composed"),
        "cpu_us_per_extra_tape_hand_written": slope(us_cpu, "hand_written"),
    }
