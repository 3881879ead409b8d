"""Parts of a project of mine, named by import path from the command line or a YAML."""

import attrs
import keras
import numpy as np
import tensorflow as tf

from composeloop import step as cs
from composeloop.parts.recipes import classifier_phase


def two_layers(input_shape, num_classes, units: int = 32):
    """A model: offered the data's example shape and class count by parameter name."""
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(units, activation="relu"),
            keras.layers.Dense(num_classes),
        ]
    )


def noisy_blobs(seed, examples: int = 600):
    """Data: four clusters in 2-D; offered the run's seed; returns Keras-style arrays."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=examples).astype(np.int32)
    x = (np.array([[0, 0], [0, 3], [3, 0], [3, 3]])[y] + rng.normal(size=(examples, 2))).astype(np.float32)
    cut = examples * 4 // 5
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def centre(gradients):
    """A gradient transform as a function of the gradient list (composeloop lifts it)."""
    return [g - tf.reduce_mean(g) for g in gradients]


def mean_margin(name: str = "margin"):
    """A metric: the mean gap between the two largest logits (sums, so it merges exactly)."""

    def update(state, context, outputs, losses):
        top = tf.math.top_k(outputs["logits"], 2).values
        gap = tf.cast(top[:, 0] - top[:, 1], tf.float64)
        count = tf.cast(tf.size(gap), tf.float64)
        return {"total": state["total"] + tf.reduce_sum(gap), "count": state["count"] + count}

    return cs.Metric(name, ("total", "count"), update, lambda s: tf.math.divide_no_nan(s["total"], s["count"]))


def hinge(margin: float):
    """A loss stage: the multi-class hinge loss on the logits, per example."""

    def loss(context, outputs):
        logits = outputs["logits"]
        labels = tf.one_hot(tf.cast(context.batch["y"], tf.int32), tf.shape(logits)[-1])
        true = tf.reduce_sum(logits * labels, axis=1)
        other = tf.reduce_max(logits - 1e9 * labels, axis=1)
        return {"loss": tf.nn.relu(margin - true + other)}

    return loss


def hinge_step(model, optimizer, transform, metrics, margin: float = 1.0):
    """A step builder: the configured model, a fresh optimizer, the gradient chain, the metrics;
    the classifier recipe's phase with the hinge loss in its loss slot."""
    phase = classifier_phase(optimizer, transform=transform, metrics=metrics)
    return cs.compose(attrs.evolve(phase, loss=hinge(margin)), models={"model": model})
