"""The `gan` workload: a two-phase GAN step, composed against written by hand and against `fit`.

All variants train the `+experiment=gan` models (`composeloop.parts.gan`: the DCGAN-style
generator and discriminator for 8x8 images, latent size 32, width 64) with two
Adam(2e-4, beta_1=0.5) optimizers, the non-saturating loss and label noise 0.1, on the
same batches of 64 images in [-1, 1] (made in code), from the same initial weights:

- `composed_spe1`, `composed_speK`: `parts.gan.gan_step` + `compile_step` + `run_epoch`.
- `tf_function`: the hand-written two-tape step as people write it (discriminator tape and update,
  then generator tape and update, fresh stateless noise for each, two `Mean` metrics) in
  one `@tf.function`, a Python loop over the batches.
- `fit_spe1`, `fit_speK`: Keras's documented way, a `keras.Model` whose `train_step` holds
  the same two tapes (`keras.random` noise from a `SeedGenerator`, as in Keras's guide),
  compiled with `steps_per_execution` 1 and K and run by `fit`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks.variants import EpochTimer, Runner

LATENT, SIZE, WIDTH, LABEL_NOISE = 32, 8, 64, 0.1


def models() -> tuple[keras.Model, keras.Model]:
    from composeloop.parts import gan as parts

    return parts.generator(LATENT, SIZE, WIDTH), parts.discriminator(SIZE, WIDTH)


def optimizer() -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(2e-4, beta_1=0.5, beta_2=0.999)


def images(steps: int, batch: int, seed: int = 0) -> np.ndarray:
    """Pre-batched blurry blobs in [-1, 1]: shape (steps, batch, 8, 8)."""
    rng = np.random.default_rng(seed)
    return np.tanh(rng.normal(size=(steps, batch, SIZE, SIZE))).astype(np.float32)


def composed(g: keras.Model, d: keras.Model, real: np.ndarray, steps_per_execution: int) -> Runner:
    from composeloop.engine import compile_step, run_epoch
    from composeloop.parts.gan import gan_step

    step = gan_step(g, d, optimizer(), optimizer(), latent_dim=LATENT, label_noise=LABEL_NOISE)
    program = compile_step(step, steps_per_execution=steps_per_execution)
    batches = tf.data.Dataset.from_tensor_slices({"x": tf.constant(real)})

    def epoch() -> float:
        started = time.perf_counter()
        run_epoch(program, "train", batches)
        return time.perf_counter() - started

    return Runner("composed", epoch, lambda: program.reset("train"), lambda: dict(program.trace_counts), g)


def _losses(d: keras.Model, real: tf.Tensor, fake: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
    bce = tf.nn.sigmoid_cross_entropy_with_logits
    real_logits, fake_logits = tf.reshape(d(real, training=True), [-1]), tf.reshape(d(fake, training=True), [-1])
    return tf.reduce_mean(bce(labels=1.0 - noise[0], logits=real_logits) + bce(labels=noise[1], logits=fake_logits))


def hand_written(g: keras.Model, d: keras.Model, real: np.ndarray) -> Runner:
    """The two-tape step in one `@tf.function`, called per batch."""
    d_opt, g_opt = optimizer(), optimizer()
    d_opt.build(d.trainable_variables)
    g_opt.build(g.trainable_variables)
    d_mean, g_mean = keras.metrics.Mean(), keras.metrics.Mean()
    traced = [0]

    @tf.function
    def train_step(batch: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        traced[0] += 1
        size = tf.shape(batch)[0]
        z = tf.random.stateless_normal([size, LATENT], seed=tf.stack([step, 0]))
        noise = tf.random.stateless_uniform([2, size], seed=tf.stack([step, 1])) * LABEL_NOISE
        with tf.GradientTape() as tape:
            d_loss = _losses(d, batch, tf.stop_gradient(g(z, training=True)), noise)
        d_opt.apply_gradients(zip(tape.gradient(d_loss, d.trainable_variables), d.trainable_variables, strict=True))
        z = tf.random.stateless_normal([size, LATENT], seed=tf.stack([step, 2]))
        with tf.GradientTape() as tape:
            g_loss = tf.reduce_mean(tf.nn.softplus(-tf.reshape(d(g(z, training=True), training=True), [-1])))
        g_opt.apply_gradients(zip(tape.gradient(g_loss, g.trainable_variables), g.trainable_variables, strict=True))
        d_mean.update_state(d_loss)
        g_mean.update_state(g_loss)
        return g_loss

    batches = tf.data.Dataset.from_tensor_slices(tf.constant(real))

    def epoch() -> float:
        started = time.perf_counter()
        loss = None
        for index, batch in enumerate(batches):
            loss = train_step(batch, tf.constant(index, tf.int64))
        float(loss)
        return time.perf_counter() - started

    def reset() -> None:
        d_mean.reset_state()
        g_mean.reset_state()

    return Runner("tf_function", epoch, reset, lambda: {"train_step": traced[0]}, g)


class GAN(keras.Model):
    """Keras's documented GAN: `fit` with an overridden `train_step` (two tapes)."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model) -> None:
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.seed_generator = keras.random.SeedGenerator(0)
        self.d_tracker, self.g_tracker = keras.metrics.Mean(name="d_loss"), keras.metrics.Mean(name="g_loss")

    def compile(self, d_optimizer: Any, g_optimizer: Any, **kwargs: Any) -> None:
        super().compile(**kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer

    @property
    def metrics(self) -> list[Any]:
        return [self.d_tracker, self.g_tracker]

    def train_step(self, real: tf.Tensor) -> dict[str, tf.Tensor]:
        size = tf.shape(real)[0]
        z = keras.random.normal((size, LATENT), seed=self.seed_generator)
        noise = keras.random.uniform((2, size), seed=self.seed_generator) * LABEL_NOISE
        d, g = self.discriminator, self.generator
        with tf.GradientTape() as tape:
            d_loss = _losses(d, real, tf.stop_gradient(g(z, training=True)), noise)
        grads = tape.gradient(d_loss, d.trainable_variables)
        self.d_optimizer.apply_gradients(zip(grads, d.trainable_variables, strict=True))
        z = keras.random.normal((size, LATENT), seed=self.seed_generator)
        with tf.GradientTape() as tape:
            g_loss = tf.reduce_mean(tf.nn.softplus(-tf.reshape(d(g(z, training=True), training=True), [-1])))
        grads = tape.gradient(g_loss, g.trainable_variables)
        self.g_optimizer.apply_gradients(zip(grads, g.trainable_variables, strict=True))
        self.d_tracker.update_state(d_loss)
        self.g_tracker.update_state(g_loss)
        return {"d_loss": self.d_tracker.result(), "g_loss": self.g_tracker.result()}


def fit(g: keras.Model, d: keras.Model, real: np.ndarray, steps_per_execution: int) -> Runner:
    model = GAN(g, d)
    model.compile(optimizer(), optimizer(), steps_per_execution=steps_per_execution, jit_compile=False)
    batches = tf.data.Dataset.from_tensor_slices(tf.constant(real))
    timer = EpochTimer()

    def epoch() -> float:
        model.fit(batches, epochs=1, verbose=0, callbacks=[timer])
        return timer.seconds

    def traces() -> dict[str, int] | None:
        from benchmarks.variants import _fit_traces

        return _fit_traces(model) if model.train_function is not None else None

    return Runner("fit", epoch, model.reset_metrics, traces, g)


def variant_names(k: int) -> list[str]:
    return ["tf_function", "fit_spe1", f"fit_spe{k}", "composed_spe1", f"composed_spe{k}"]


def make_runner(name: str, weights: tuple[list, list], real: np.ndarray, k: int) -> Runner:
    """A GAN variant by name, on fresh models holding `weights` (generator, discriminator)."""
    g, d = models()
    g.set_weights(weights[0])
    d.set_weights(weights[1])
    makers: dict[str, Callable[[], Runner]] = {
        "tf_function": lambda: hand_written(g, d, real),
        "fit_spe1": lambda: fit(g, d, real, 1),
        f"fit_spe{k}": lambda: fit(g, d, real, k),
        "composed_spe1": lambda: composed(g, d, real, 1),
        f"composed_spe{k}": lambda: composed(g, d, real, k),
    }
    return makers[name]()
