"""Small models, data and steps the tests share (kept tiny: tracing is the slow part)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from composeloop import step as cs
from composeloop.parts.recipes import classifier_phase


def tiny_data(examples: int = 40, features: int = 5, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples, features)).astype(np.float32)
    y = rng.integers(0, classes, examples).astype(np.int32)
    return x, y


def tiny_model(features: int = 5, classes: int = 3, seed: int = 0, l2: float = 0.0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(8, activation="tanh", kernel_regularizer=regularizer),
            keras.layers.Dense(classes, kernel_regularizer=regularizer),
        ]
    )


def tiny_step(model: keras.Model, transform=None, learning_rate: float = 0.05):
    phase = classifier_phase(keras.optimizers.SGD(learning_rate), transform=transform)
    return cs.compose(phase, models={"model": model})


def dataset(x, y, batch_size: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).batch(batch_size)


def weights(model: keras.Model) -> list[np.ndarray]:
    return [w.numpy() for w in model.weights]


def consecutive_batches(parts) -> tf.data.Dataset:
    """One dataset yielding `parts` as consecutive batches; batch() leaves the batch size
    unknown, so every drawn size reuses one trace."""
    datasets = [tf.data.Dataset.from_tensor_slices(part).batch(1024) for part in parts]
    joined = datasets[0]
    for more in datasets[1:]:
        joined = joined.concatenate(more)
    return joined


def plain_sgd(learning_rate: float):
    """An apply stage of our own (no Keras optimizer): w -= learning_rate * g. It runs in the
    cross-replica context under a strategy, as every wrapped apply stage does."""

    def apply(gradients, variables) -> None:
        for g, v in zip(gradients, variables, strict=True):
            v.assign(v - learning_rate * g)

    return apply
