"""GAN parts: DCGAN-style generator and discriminator, the GAN and WGAN-GP phase recipes,
fixed latent vectors and the digit sample-quality score.

A recipe only picks stages from `composeloop.step.gan`; everything here can be written by
hand (the README shows how). The models have no batch normalisation, so a phase that calls
the other player's model in training mode still changes none of its variables.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step import Phase, Step, compose, global_mean, identity, mean_loss, optimizer_apply
from composeloop.step.gan import combine, discriminate, discriminator_loss, generate, generator_loss, gradient_penalty
from composeloop.step.gradients import Transform


def _upsamplings(image_size: int) -> int:
    steps = math.log2(image_size / 4) if image_size >= 4 else -1
    if steps < 0 or steps != int(steps):
        raise ComposeError(f"image size must be 4 times a power of two (4, 8, 16, 32, ...), got {image_size}")
    return int(steps)


def generator(latent_dim: int, image_size: int = 8, width: int = 64) -> keras.Model:
    """Latent vector -> (image_size, image_size) image in [-1, 1]: a dense 4x4 map, then
    stride-2 transposed convolutions (LeakyReLU), then a tanh 3x3 convolution.

    Example:
      >>> g = generator(32, image_size=8)
      >>> g(tf.zeros([2, 32])).shape
      TensorShape([2, 8, 8])
    """
    if latent_dim <= 0:
        raise ComposeError(f"latent_dim must be > 0, got {latent_dim}")
    upsamplings = _upsamplings(image_size)
    channels = width * 2**upsamplings
    layers: list = [
        keras.Input((latent_dim,)),
        keras.layers.Dense(4 * 4 * channels),
        keras.layers.LeakyReLU(0.2),
        keras.layers.Reshape((4, 4, channels)),
    ]
    for _ in range(upsamplings):
        channels //= 2
        layers += [keras.layers.Conv2DTranspose(channels, 4, strides=2, padding="same"), keras.layers.LeakyReLU(0.2)]
    layers += [
        keras.layers.Conv2D(1, 3, padding="same", activation="tanh"),
        keras.layers.Reshape((image_size, image_size)),
    ]
    return keras.Sequential(layers, name="generator")


def discriminator(image_size: int = 8, width: int = 64) -> keras.Model:
    """(image_size, image_size) image -> one logit: stride-2 3x3 convolutions (LeakyReLU)
    down to 2x2, then a dense logit.

    Example:
      >>> d = discriminator(image_size=8)
      >>> d(tf.zeros([2, 8, 8])).shape
      TensorShape([2, 1])
    """
    downsamplings = _upsamplings(image_size) + 1
    layers: list = [keras.Input((image_size, image_size)), keras.layers.Reshape((image_size, image_size, 1))]
    for index in range(downsamplings):
        layers += [keras.layers.Conv2D(width * 2**index, 3, strides=2, padding="same"), keras.layers.LeakyReLU(0.2)]
    layers += [keras.layers.Flatten(), keras.layers.Dense(1)]
    return keras.Sequential(layers, name="discriminator")


def discriminator_phase(
    optimizer: Any,
    *,
    latent_dim: int,
    loss: str = "non_saturating",
    label_noise: float = 0.0,
    penalty: float = 0.0,
    n_critic: int = 1,
    transform: Transform | None = None,
) -> Phase:
    """The discriminator (critic) phase: trains ("discriminator",), `n_critic` times a step.

    Metrics: ``d_loss`` (mean per-example loss) and, with a penalty, ``gp`` (the mean
    unweighted gradient penalty).

    Example:
      >>> phase = discriminator_phase(keras.optimizers.Adam(1e-4), latent_dim=32, loss="wasserstein", penalty=10.0)
      >>> phase.name, phase.trains, [metric.name for metric in phase.metrics]
      ('discriminator', ('discriminator',), ['d_loss', 'gp'])
    """
    if not isinstance(n_critic, int) or n_critic < 1:
        raise ComposeError(f"n_critic must be an integer >= 1, got {n_critic!r}")
    if penalty < 0:
        raise ComposeError(f"gradient penalty weight must be >= 0, got {penalty!r}")
    losses = discriminator_loss(loss, label_noise=label_noise)
    metrics = [mean_loss("d_loss", of="d_loss")]
    if penalty > 0:
        losses = combine(losses, gradient_penalty())
        metrics.append(mean_loss("gp", of="gp"))
    return Phase(
        name="discriminator",
        forward=discriminate(latent_dim),
        loss=losses,
        aggregate=global_mean({"gp": penalty}),
        apply=optimizer_apply(optimizer),
        trains=("discriminator",),
        transform=transform or identity(),
        metrics=tuple(metrics),
        repeats=n_critic,
    )


def generator_phase(
    optimizer: Any, *, latent_dim: int, loss: str = "non_saturating", transform: Transform | None = None
) -> Phase:
    """The generator phase: trains ("generator",) against the updated discriminator.

    Example:
      >>> phase = generator_phase(keras.optimizers.Adam(2e-4), latent_dim=32)
      >>> phase.name, phase.trains, [metric.name for metric in phase.metrics]
      ('generator', ('generator',), ['g_loss'])
    """
    return Phase(
        name="generator",
        forward=generate(latent_dim),
        loss=generator_loss(loss),
        aggregate=global_mean(),
        apply=optimizer_apply(optimizer),
        trains=("generator",),
        transform=transform or identity(),
        metrics=(mean_loss("g_loss", of="g_loss"),),
    )


def check_shapes(generator_model: Any, discriminator_model: Any, latent_dim: int) -> None:
    """Raises a one-line ComposeError unless latent -> generator -> discriminator fits."""
    if latent_dim <= 0:
        raise ComposeError(f"latent_dim must be > 0, got {latent_dim}")
    expected = tuple(generator_model.inputs[0].shape[1:]) if getattr(generator_model, "inputs", None) else None
    if expected is not None and expected != (latent_dim,):
        raise ComposeError(f"the generator takes latent vectors of shape {expected}, but latent_dim is {latent_dim}")
    produced = tuple(generator_model(tf.zeros([1, latent_dim])).shape[1:])
    wanted = tuple(discriminator_model.inputs[0].shape[1:]) if getattr(discriminator_model, "inputs", None) else None
    if wanted is not None and produced != wanted:
        raise ComposeError(
            f"the generator's output shape {produced} does not fit the discriminator's input shape {wanted}"
        )


def gan_step(
    generator_model: Any,
    discriminator_model: Any,
    d_optimizer: Any,
    g_optimizer: Any,
    *,
    latent_dim: int,
    loss: str = "non_saturating",
    label_noise: float = 0.0,
    penalty: float = 0.0,
    n_critic: int = 1,
    transform: Transform | None = None,
    g_transform: Transform | None = None,
) -> Step:
    """A GAN step: the discriminator phase (`n_critic` times), then the generator phase.

    Args:
      generator_model, discriminator_model: built Keras models.
      d_optimizer, g_optimizer: one optimizer per variable group.
      latent_dim: size of the latent vectors.
      loss: one of `composeloop.step.gan.GAN_LOSSES`, for both players.
      label_noise: the noisy-label trick for the discriminator (label-based losses only).
      penalty: weight of the WGAN-GP gradient penalty (0: none).
      n_critic: discriminator phases per generator phase.
      transform: the discriminator phase's gradient transform (e.g. `clip_by_norm(1.0)`),
        also the generator's unless `g_transform` is given.
      g_transform: the generator phase's own transform (a stateful transform needs one per phase).

    Example:
      >>> from keras.optimizers import Adam
      >>> from composeloop.engine import compile_step
      >>> step = gan_step(generator(16), discriminator(), Adam(2e-4, beta_1=0.5), Adam(2e-4, beta_1=0.5), latent_dim=16)
      >>> [(phase.name, phase.trains) for phase in step.phases]
      [('discriminator', ('discriminator',)), ('generator', ('generator',))]
      >>> compile_step(step).train(iter(tf.data.Dataset.from_tensors({"x": tf.zeros([4, 8, 8])})))
      1
    """
    check_shapes(generator_model, discriminator_model, latent_dim)
    return compose(
        discriminator_phase(
            d_optimizer,
            latent_dim=latent_dim,
            loss=loss,
            label_noise=label_noise,
            penalty=penalty,
            n_critic=n_critic,
            transform=transform,
        ),
        generator_phase(g_optimizer, latent_dim=latent_dim, loss=loss, transform=g_transform or transform),
        models={"generator": generator_model, "discriminator": discriminator_model},
    )


def wgan_gp_step(
    generator_model: Any,
    critic_model: Any,
    d_optimizer: Any,
    g_optimizer: Any,
    *,
    latent_dim: int,
    penalty: float = 10.0,
    n_critic: int = 5,
    transform: Transform | None = None,
) -> Step:
    """The WGAN-GP step: Wasserstein losses, a gradient penalty, `n_critic` critic phases.

    Example:
      >>> from keras.optimizers import Adam
      >>> step = wgan_gp_step(generator(16), discriminator(), Adam(1e-4, 0.0, 0.9), Adam(1e-4, 0.0, 0.9), latent_dim=16)
      >>> [(phase.name, phase.repeats, [metric.name for metric in phase.metrics]) for phase in step.phases]
      [('discriminator', 5, ['d_loss', 'gp']), ('generator', 1, ['g_loss'])]
    """
    return gan_step(
        generator_model,
        critic_model,
        d_optimizer,
        g_optimizer,
        latent_dim=latent_dim,
        loss="wasserstein",
        penalty=penalty,
        n_critic=n_critic,
        transform=transform,
    )


def fixed_latents(count: int, latent_dim: int, seed: int) -> np.ndarray:
    """The same `count` latent vectors for a given (seed, latent_dim), every call."""
    return tf.random.stateless_normal([count, latent_dim], seed=[seed, 0x5A11]).numpy()


def generate_images(generator_model: Any, latents: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The generator's images (inference mode) for the given latent vectors, as numpy."""
    parts = [
        np.asarray(generator_model(latents[i : i + batch_size], training=False))
        for i in range(0, len(latents), batch_size)
    ]
    return np.concatenate(parts)


def digit_quality(classifier: Any, images: np.ndarray, threshold: float = 0.9) -> dict[str, float | int]:
    """How digit-like generated images are, by a digit classifier's softmax.

    Returns:
      ``digit_confidence``: the fraction classified with probability >= `threshold`;
      ``classes_covered``: how many distinct classes those confident images fall in.
    """
    probabilities = tf.nn.softmax(classifier.predict(images, batch_size=256, verbose=0)).numpy()
    confident = probabilities.max(axis=1) >= threshold
    classes = np.unique(probabilities.argmax(axis=1)[confident])
    return {"digit_confidence": float(confident.mean()), "classes_covered": int(len(classes))}
