"""The composed classifier step against a hand-written GradientTape loop, written fresh.

Same model initialisation, same data order, a kernel regulariser and a global-norm clip:
after two epochs the weights must agree to 1e-6.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step, fit
from composeloop.parts.data import batches, digits


def build(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8)),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3)),
            keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(1e-3)),
        ]
    )


def hand_written(data, epochs: int, seed: int) -> tuple[keras.Model, list[float]]:
    """The loop people write today (Keras 3 spelling), as the seed articles do."""
    model = build(seed)
    optimizer = keras.optimizers.Adam(1e-2)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    train_loss = keras.metrics.Mean()

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_example = loss_fn(y, logits)
            loss = per_example + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        grads, _ = tf.clip_by_global_norm(grads, 0.5)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=False))
        return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)

    losses = []
    for epoch in range(epochs):
        train_loss.reset_state()
        for batch in batches(data.x_train, data.y_train, 64, seed=seed, epoch=epoch):
            train_loss.update_state(train_step(batch["x"], batch["y"]))
        losses.append(float(train_loss.result()))
    return model, losses


def composed(data, epochs: int, seed: int) -> tuple[keras.Model, list[float]]:
    model = build(seed)
    phase = cs.Phase(
        name="classifier",
        forward=cs.call_model(),
        loss=cs.sparse_categorical_crossentropy(),
        aggregate=cs.total(cs.global_mean(), cs.model_losses()),
        apply=cs.optimizer_apply(keras.optimizers.Adam(1e-2)),
        transform=cs.clip_by_global_norm(0.5),
        metrics=(cs.mean_loss(),),
    )
    program = compile_step(cs.compose(phase, models={"model": model}), steps_per_execution=5)
    history = fit(program, lambda epoch: batches(data.x_train, data.y_train, 64, seed=seed, epoch=epoch), epochs=epochs)
    return model, [logs["train_loss"] for logs in history]


def test_composed_step_equals_the_hand_written_loop():
    data = digits(seed=3)
    theirs, their_losses = hand_written(data, epochs=2, seed=3)
    ours, our_losses = composed(data, epochs=2, seed=3)
    for a, b in zip(ours.weights, theirs.weights, strict=False):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    # keras.metrics.Mean weights each batch's mean by its size too: the same average.
    np.testing.assert_allclose(our_losses, their_losses, rtol=1e-5)
