"""Activity regularisation with Keras `add_loss`, counted by the extra-loss aggregation.

A layer that calls `self.add_loss(...)` (here an L1 penalty on the hidden activations)
puts its term in `model.losses`; `mean_and_model_losses()` (the same as
``total(global_mean(), model_losses())``) adds those terms to the global-batch mean of the
per-example cross-entropy, inside the tape, so the penalty is differentiated with it.
A user-written `Metric` reports the penalty every epoch next to the cross-entropy, and
the end of the run splits the objective of one batch into its two terms. The full run
also trains without the penalty, to show what it does: far more hidden units stay silent.

    python examples/activity_regularisation.py            # 10 epochs, with and without the penalty
    python examples/activity_regularisation.py --smoke    # 1 epoch, with the penalty only
"""

import argparse

import keras
import numpy as np
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step, fit
from composeloop.engine.report import format_epoch
from composeloop.parts.data import batches, digits


class ActivityL1(keras.layers.Layer):
    """Passes its input through and adds ``weight * mean_over_batch(sum |x|)`` as a loss."""

    def __init__(self, weight: float, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight

    def call(self, x):
        self.add_loss(self.weight * tf.reduce_mean(tf.reduce_sum(tf.abs(x), axis=-1)))
        return x


def model_losses_metric(name: str, model: str = "model") -> cs.Metric:
    """The mean per step of ``sum(model.losses)``: what `model_losses` adds to the objective."""

    def update(state, context, outputs, losses):
        term = tf.add_n([tf.cast(t, tf.float64) for t in context.models[model].losses])
        return cs.merge(state, {"total": term, "count": tf.constant(1.0, tf.float64)})

    return cs.Metric(name, ("total", "count"), update, lambda state: state["total"] / state["count"])


def train(data, weight: float, epochs: int, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(data.example_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            ActivityL1(weight, name="activity"),
            keras.layers.Dense(10),
        ]
    )
    phase = cs.Phase(
        name="classifier",
        forward=cs.call_model("model", inputs="x", output="logits"),
        loss=cs.sparse_categorical_crossentropy(labels="y", logits="logits", name="cross_entropy"),
        aggregate=cs.mean_and_model_losses(),
        apply=cs.optimizer_apply(keras.optimizers.Adam(3e-3)),
        trains=("model",),
        metrics=(cs.mean_loss("cross_entropy"), model_losses_metric("activity_penalty"), cs.accuracy("accuracy")),
    )
    program = compile_step(cs.compose(phase, models={"model": model}), steps_per_execution=16, seed=seed)
    fit(
        program,
        lambda epoch: batches(data.x_train, data.y_train, 32, seed=seed, epoch=epoch),
        validation_data=lambda: batches(data.x_val, data.y_val, 256, shuffle=False),
        epochs=epochs,
        on_epoch_end=[lambda logs: print(f"weight {weight}  {format_epoch(logs, epochs)}")],
    )
    # The objective of one batch, term by term, from the very stages the phase composes.
    batch = {"x": tf.constant(data.x_val[:256]), "y": tf.constant(data.y_val[:256])}
    context = cs.Context(
        batch=batch,
        models={"model": model},
        training=False,
        seed=tf.constant([seed, 0], tf.int64),
        step=tf.constant(0, tf.int64),
        global_batch_size=tf.constant(float(len(batch["x"]))),
    )
    losses = phase.loss(context, phase.forward(context))
    mean, extra = cs.global_mean()(context, losses), cs.model_losses("model")(context, losses)
    print(
        f"objective {float(phase.aggregate(context, losses)):.4f} = cross-entropy {float(mean):.4f} "
        f"+ activity penalty {float(extra):.4f}"
    )
    return model


def silent_fraction(model: keras.Model, x: np.ndarray) -> float:
    """The fraction of (example, hidden unit) pairs whose activation is exactly zero."""
    hidden = keras.Model(model.inputs, model.get_layer("activity").output)
    return float(np.mean(hidden.predict(x, verbose=0) == 0.0))


def main(epochs: int, weights: tuple[float, ...], seed: int = 0) -> dict[float, float]:
    data = digits(seed=seed)
    silent = {weight: silent_fraction(train(data, weight, epochs, seed), data.x_val) for weight in weights}
    for weight, fraction in silent.items():
        print(f"activity weight {weight}: {fraction:.1%} of hidden activations are zero")
    return silent


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one epoch, with the penalty only, for the test suite")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--weight", type=float, default=3e-3)
    arguments = parser.parse_args()
    if arguments.smoke:
        main(epochs=1, weights=(arguments.weight,))
    else:
        main(epochs=arguments.epochs, weights=(0.0, arguments.weight))
