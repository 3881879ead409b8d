"""The parts of this project: a model, a gradient transform, a metric and a step builder.

Each is a plain function named by an import path in conf/ (`_target_: my_parts.<name>`);
composeloop imports it when the run starts and checks it is the right kind of part.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from composeloop import step as cs


def residual_mlp(input_shape, num_classes, width: int = 64, blocks: int = 2) -> keras.Model:
    """A model: dense residual blocks over the flattened input (input_shape and
    num_classes come from the data; width and blocks from conf/model/residual.yaml)."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Dense(width, activation="relu")(keras.layers.Flatten()(inputs))
    for _ in range(blocks):
        x = keras.layers.Add()([x, keras.layers.Dense(width, activation="relu")(x)])
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="residual_mlp")


def centralise(gradients: list[tf.Tensor]) -> list[tf.Tensor]:
    """A gradient transform (gradient centralisation): each kernel's gradient minus its mean
    over the output axis. A function of the gradient list; composeloop lifts it."""
    return [
        g - tf.reduce_mean(g, axis=list(range(g.shape.rank - 1)), keepdims=True) if g.shape.rank > 1 else g
        for g in gradients
    ]


def top2_accuracy(name: str = "top2_accuracy") -> cs.Metric:
    """A metric: the fraction of examples whose label is among the two highest logits.
    Its state is sums (hits, count), so it merges across batches and replicas exactly."""

    def update(state, context, outputs, losses):
        labels = tf.cast(tf.reshape(context.batch["y"], [-1]), tf.int32)
        hits = tf.cast(tf.math.in_top_k(labels, outputs["logits"], 2), tf.float64)
        return {
            "hits": state["hits"] + tf.reduce_sum(hits),
            "count": state["count"] + tf.cast(tf.size(hits), tf.float64),
        }

    return cs.Metric(
        name, ("hits", "count"), update, lambda s: tf.math.divide_no_nan(s["hits"], s["count"]), higher_is_better=True
    )


def smoothed_crossentropy(smoothing: float):
    """A loss stage: cross-entropy against labels smoothed towards the uniform distribution."""

    def loss(context, outputs):
        logits = outputs["logits"]
        labels = tf.one_hot(tf.cast(tf.reshape(context.batch["y"], [-1]), tf.int32), tf.shape(logits)[-1])
        labels = labels * (1.0 - smoothing) + smoothing / tf.cast(tf.shape(logits)[-1], tf.float32)
        return {"loss": tf.nn.softmax_cross_entropy_with_logits(labels, logits)}

    return loss


def build_step(model, optimizer, transform, metrics, label_smoothing: float = 0.1) -> cs.Step:
    """The step builder (`step._target_`): composeloop passes the configured model, a fresh
    optimizer, the configured gradient chain and extra metrics; label_smoothing comes from
    the experiment's `step:` section."""
    phase = cs.Phase(
        name="classifier",
        forward=cs.call_model("model", inputs="x", output="logits"),
        loss=smoothed_crossentropy(label_smoothing),
        aggregate=cs.mean_and_model_losses(),
        apply=cs.optimizer_apply(optimizer),
        trains=("model",),
        transform=transform,
        metrics=(cs.mean_loss("loss"), cs.accuracy("accuracy"), *metrics),
    )
    return cs.compose(phase, models={"model": model})
