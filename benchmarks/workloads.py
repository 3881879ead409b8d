"""The workloads: a model, a synthetic dataset and a matmul FLOP count per training step.

This module owns what is trained: the seed articles' MNIST MLP, a compute-bound wide MLP
and a small CNN, each with data made in code (no downloads), already cut into batches so
that every variant reads the same tensors through the same kind of `tf.data` pipeline. It
does not time anything: that is `steps`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import keras
import numpy as np
import tensorflow as tf


@attrs.frozen
class Workload:
    """One model and dataset, and how each variant runs it.

    Attributes:
      name: the name reported.
      build: () -> a new, unbuilt Keras model; all variants then get the same weights.
      example_shape: shape of one input example.
      batch_size: examples per step.
      steps: batches per epoch (every variant runs whole epochs).
      steps_per_execution: K, the steps per compiled call of the multi-step variants.
      dense_layers: (fan_in, fan_out) of each matmul layer, for the FLOP count; empty
        when the model's FLOPs are not counted (the CNN).
      eager_steps: batches per epoch of the eager variant, the first ones of the same
        data (eager is slow; a shorter epoch keeps each round short). None: `steps`.
      probe_each_epoch: measure the matmul peak right after every timed epoch (not once
        per round), so that each epoch's fraction of peak is taken under the same load.
    """

    name: str
    build: Callable[[], keras.Model]
    example_shape: tuple[int, ...]
    batch_size: int
    steps: int
    steps_per_execution: int
    dense_layers: tuple[tuple[int, int], ...] = ()
    eager_steps: int | None = None
    probe_each_epoch: bool = False

    def flops_per_step(self) -> float | None:
        """Matmul FLOPs of one training step (forward + backward), or None if not counted.

        Counted per Dense layer of fan-in n, fan-out m at batch b: forward x @ W is 2*b*n*m;
        backward dW = x^T @ dy is 2*b*n*m; dx = dy @ W^T is 2*b*n*m, except for the first
        layer (its input is data, so no dx is computed). Bias adds, activations, the loss
        and the optimizer update are not counted: they are O(b*m) or O(n*m), not O(b*n*m).
        """
        if not self.dense_layers:
            return None
        total = 0.0
        for index, (fan_in, fan_out) in enumerate(self.dense_layers):
            one = 2.0 * self.batch_size * fan_in * fan_out
            total += one * (2 if index == 0 else 3)
        return total


def mlp(inputs: int, widths: tuple[int, ...], classes: int = 10) -> Callable[[], keras.Model]:
    """A ReLU MLP builder: inputs -> widths... -> classes logits."""

    def build() -> keras.Model:
        layers = [keras.Input((inputs,))]
        layers += [keras.layers.Dense(width, activation="relu") for width in widths]
        layers.append(keras.layers.Dense(classes))
        return keras.Sequential(layers)

    return build


def cnn(side: int = 28, filters: tuple[int, int] = (32, 64), classes: int = 10) -> Callable[[], keras.Model]:
    """Two 3x3 conv layers with max-pooling, then a linear head on the flattened maps."""

    def build() -> keras.Model:
        return keras.Sequential(
            [
                keras.Input((side, side, 1)),
                keras.layers.Conv2D(filters[0], 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(filters[1], 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(classes),
            ]
        )

    return build


def dense_shapes(inputs: int, widths: tuple[int, ...], classes: int = 10) -> tuple[tuple[int, int], ...]:
    sizes = (inputs, *widths, classes)
    return tuple(zip(sizes[:-1], sizes[1:], strict=True))


def workloads(mode: str) -> list[Workload]:
    """The workloads at the sizes of one mode: "full", "quick" or "tiny" (tests only)."""
    if mode == "tiny":
        return [
            Workload("seed_mlp", mlp(784, (8, 8)), (784,), 8, 4, 2, dense_shapes(784, (8, 8)), eager_steps=2),
            Workload("compute_mlp", mlp(32, (32, 32)), (32,), 16, 4, 2, dense_shapes(32, (32, 32)), None, True),
            Workload("cnn", cnn(12, (2, 4)), (12, 12, 1), 4, 4, 2, eager_steps=2),
        ]
    quick = mode == "quick"
    wide = (2048, 2048, 2048)
    return [
        # The seed articles' model: 784-64-64-10 on MNIST-shaped data, batch 64.
        Workload("seed_mlp", mlp(784, (64, 64)), (784,), 64, 64 if quick else 320, 16,
                 dense_shapes(784, (64, 64)), eager_steps=16 if quick else 64),
        # Three 2048x2048 matmul layers at batch 512: time goes to the matmuls.
        Workload("compute_mlp", mlp(2048, wide), (2048,), 512, 2 if quick else 8, 2 if quick else 8,
                 dense_shapes(2048, wide), probe_each_epoch=True),
        # Two 3x3 conv layers on 28x28x1, batch 64.
        Workload("cnn", cnn(), (28, 28, 1), 64, 16 if quick else 64, 16, eager_steps=4 if quick else 16),
    ]  # fmt: skip


def synthetic(workload: Workload, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs in [0, 1] and labels that a linear map of the inputs predicts, pre-batched:
    shapes ``(steps, batch, *example_shape)`` and ``(steps, batch)``."""
    rng = np.random.default_rng(seed)
    count = workload.steps * workload.batch_size
    x = rng.random((count, *workload.example_shape), dtype=np.float32)
    projection = rng.standard_normal((int(np.prod(workload.example_shape)), 10)).astype(np.float32)
    y = np.argmax(x.reshape(count, -1) @ projection, axis=-1).astype(np.int32)
    return (
        x.reshape(workload.steps, workload.batch_size, *workload.example_shape),
        y.reshape(workload.steps, workload.batch_size),
    )


def datasets(x: np.ndarray, y: np.ndarray) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """The same batches twice: as (x, y) tuples (hand-written loops, `model.fit`) and as
    {"x", "y"} dicts (composeloop). Both slice pre-batched tensors: no map, no batch op."""
    x, y = tf.constant(x), tf.constant(y)
    return tf.data.Dataset.from_tensor_slices((x, y)), tf.data.Dataset.from_tensor_slices({"x": x, "y": y})
