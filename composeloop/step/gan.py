"""GAN stages: latent noise forwards, adversarial losses, label noise, the gradient penalty.

This module owns the pure stages of a two-phase GAN step (a discriminator phase, then a
generator phase): forward stages that draw latent vectors from stateless random ops and
call the models, per-example adversarial losses for both players, and the WGAN-GP
gradient penalty. It does not build models, optimizers or phases (`composeloop.parts.gan`
does) and it knows nothing of files or configs.

Randomness: each phase draws its own noise from ``context.seed``, which the step already
makes unique to (run seed, global step, replica, phase index, repeat). The latent vectors
use ``context.seed`` itself; label noise and interpolation weights use
``fold_seed(context.seed, LABEL_NOISE_STREAM)`` and ``fold_seed(context.seed,
INTERPOLATION_STREAM)``. The same run seed and step always give the same numbers, so a run
is reproducible and a resumed run continues exactly; the generator phase sees fresh noise,
not the discriminator phase's.

Every loss here is per-example (shape ``(batch,)``); the aggregation stage reduces it over
the global batch, so the penalty obeys the same replica-count policy as the losses.
"""

from __future__ import annotations

import tensorflow as tf

from composeloop.errors import ComposeError
from composeloop.step.compose import fold_seed
from composeloop.step.forward import Forward
from composeloop.step.losses import Loss
from composeloop.step.records import Context, Tensors
from composeloop.vocabulary import GanLoss

GAN_LOSSES = tuple(loss.value for loss in GanLoss)
"""The GAN loss kinds `discriminator_loss` and `generator_loss` take, by name."""
LABELLED_LOSSES = ("non_saturating", "minimax", "least_squares")  # the ones label noise applies to
LABEL_NOISE_STREAM = 1
INTERPOLATION_STREAM = 2


def _check_latent_dim(latent_dim: int) -> None:
    if not isinstance(latent_dim, int) or latent_dim <= 0:
        raise ComposeError(f"latent_dim must be a positive integer, got {latent_dim!r}")


def _check_kind(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ComposeError(f"unknown GAN loss '{kind}'; known: {', '.join(GAN_LOSSES)}")


def latent_noise(context: Context, batch_size: tf.Tensor | int, latent_dim: int) -> tf.Tensor:
    """Latent vectors ``N(0, 1)`` of shape ``(batch_size, latent_dim)`` from ``context.seed``.

    Example:
      >>> z = latent_noise(context, 4, 16)
      >>> z.shape, bool(tf.reduce_all(z == latent_noise(context, 4, 16)))  # the same seed, the same noise
      (TensorShape([4, 16]), True)
    """
    return tf.random.stateless_normal(tf.stack([batch_size, latent_dim]), seed=context.seed)


def scores(logits: tf.Tensor) -> tf.Tensor:
    """A discriminator's output as one float32 score per example, shape ``(batch,)``."""
    logits = tf.cast(logits, tf.float32)
    return tf.reduce_mean(tf.reshape(logits, [tf.shape(logits)[0], -1]), axis=1)


def discriminate(
    latent_dim: int, *, generator: str = "generator", discriminator: str = "discriminator", inputs: str = "x"
) -> Forward:
    """The discriminator phase's forward: real images and fresh fakes through the discriminator.

    Fakes are held constant (`tf.stop_gradient`): this phase trains the discriminator only.

    Args:
      latent_dim: size of a latent vector (> 0).
      generator: the generator's model name in the step.
      discriminator: the discriminator's model name in the step.
      inputs: batch feature holding real images.

    Returns:
      A forward stage giving ``z``, ``real``, ``fake``, ``real_logits`` and ``fake_logits``
      (logits of shape ``(batch,)``).

    Example:
      >>> from composeloop.parts.gan import discriminator, generator
      >>> from composeloop.testing import context_for
      >>> players = {"generator": generator(16, image_size=8), "discriminator": discriminator(image_size=8)}
      >>> outputs = discriminate(16)(context_for({"x": np.zeros((4, 8, 8), np.float32)}, players))
      >>> {name: tuple(value.shape) for name, value in outputs.items()}
      {'z': (4, 16), 'real': (4, 8, 8), 'fake': (4, 8, 8), 'real_logits': (4,), 'fake_logits': (4,)}
    """
    _check_latent_dim(latent_dim)

    def forward(context: Context) -> Tensors:
        real = tf.cast(context.batch[inputs], tf.float32)
        z = latent_noise(context, tf.shape(real)[0], latent_dim)
        fake = tf.stop_gradient(context.models[generator](z, training=context.training))
        critic = context.models[discriminator]
        return {
            "z": z,
            "real": real,
            "fake": fake,
            "real_logits": scores(critic(real, training=context.training)),
            "fake_logits": scores(critic(fake, training=context.training)),
        }

    return forward


def generate(
    latent_dim: int, *, generator: str = "generator", discriminator: str = "discriminator", inputs: str = "x"
) -> Forward:
    """The generator phase's forward: fresh fakes, one per real example, scored by the discriminator.

    Returns:
      A forward stage giving ``z``, ``fake`` and ``fake_logits`` (shape ``(batch,)``).

    Example:
      >>> from composeloop.parts.gan import discriminator, generator
      >>> from composeloop.testing import context_for
      >>> players = {"generator": generator(16, image_size=8), "discriminator": discriminator(image_size=8)}
      >>> outputs = generate(16)(context_for({"x": np.zeros((4, 8, 8), np.float32)}, players))
      >>> {name: tuple(value.shape) for name, value in outputs.items()}
      {'z': (4, 16), 'fake': (4, 8, 8), 'fake_logits': (4,)}
    """
    _check_latent_dim(latent_dim)

    def forward(context: Context) -> Tensors:
        z = latent_noise(context, tf.shape(context.batch[inputs])[0], latent_dim)
        fake = context.models[generator](z, training=context.training)
        fake_logits = scores(context.models[discriminator](fake, training=context.training))
        return {"z": z, "fake": fake, "fake_logits": fake_logits}

    return forward


def _targets(context: Context, like: tf.Tensor, label_noise: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Real and fake targets: 1 and 0, or uniform in [1 - noise, 1] and [0, noise]."""
    if label_noise == 0:
        return tf.ones_like(like), tf.zeros_like(like)
    seed = fold_seed(context.seed, LABEL_NOISE_STREAM)
    noise = tf.random.stateless_uniform(tf.stack([2, tf.shape(like)[0]]), seed=seed) * label_noise
    return 1.0 - noise[0], noise[1]


def discriminator_loss(
    kind: str = "non_saturating",
    *,
    label_noise: float = 0.0,
    real: str = "real_logits",
    fake: str = "fake_logits",
    name: str = "d_loss",
) -> Loss:
    """The discriminator's (critic's) per-example loss on one real and one fake example.

    ``non_saturating`` and ``minimax``: binary cross-entropy from logits, real -> 1, fake -> 0;
    ``least_squares``: ``((r - 1)^2 + f^2) / 2``; ``hinge``: ``relu(1 - r) + relu(1 + f)``;
    ``wasserstein``: ``f - r``.

    Args:
      kind: one of `GAN_LOSSES`.
      label_noise: in [0, 1): real targets drawn uniformly from [1 - label_noise, 1] and
        fake targets from [0, label_noise], per example (the noisy-label trick). Only for
        the label-based kinds (`LABELLED_LOSSES`).
      real: the output holding the scores of real examples.
      fake: the output holding the scores of fake examples.
      name: name of the loss term.

    Example:
      >>> loss = discriminator_loss("hinge")
      >>> outputs = {"real_logits": tf.constant([2.0, 0.5]), "fake_logits": tf.constant([-2.0, 0.0])}
      >>> loss(context, outputs)["d_loss"].numpy()  # relu(1 - r) + relu(1 + f)
      array([0. , 1.5], dtype=float32)
    """
    _check_kind(kind)
    if not 0 <= label_noise < 1:
        raise ComposeError(f"label_noise must be in [0, 1), got {label_noise!r}")
    if label_noise and kind not in LABELLED_LOSSES:
        raise ComposeError(
            f"label_noise={label_noise} needs a label-based loss ({', '.join(LABELLED_LOSSES)}), not '{kind}'"
        )

    def loss(context: Context, outputs: Tensors) -> Tensors:
        r, f = outputs[real], outputs[fake]
        if kind == "hinge":
            return {name: tf.nn.relu(1.0 - r) + tf.nn.relu(1.0 + f)}
        if kind == "wasserstein":
            return {name: f - r}
        real_target, fake_target = _targets(context, r, label_noise)
        if kind == "least_squares":
            return {name: 0.5 * (tf.square(r - real_target) + tf.square(f - fake_target))}
        bce = tf.nn.sigmoid_cross_entropy_with_logits
        return {name: bce(labels=real_target, logits=r) + bce(labels=fake_target, logits=f)}

    return loss


def generator_loss(kind: str = "non_saturating", *, fake: str = "fake_logits", name: str = "g_loss") -> Loss:
    """The generator's per-example loss on the discriminator's scores of its fakes.

    ``non_saturating``: ``softplus(-f)`` (cross-entropy against label 1); ``minimax``:
    ``-softplus(f)`` (minus the discriminator's loss on fakes); ``least_squares``:
    ``(f - 1)^2 / 2``; ``hinge`` and ``wasserstein``: ``-f``.

    Example:
      >>> loss = generator_loss("wasserstein")
      >>> loss(context, {"fake_logits": tf.constant([0.5, -1.0])})["g_loss"].numpy()
      array([-0.5,  1. ], dtype=float32)
    """
    _check_kind(kind)

    def loss(context: Context, outputs: Tensors) -> Tensors:
        f = outputs[fake]
        if kind == "non_saturating":
            return {name: tf.nn.softplus(-f)}
        if kind == "minimax":
            return {name: -tf.nn.softplus(f)}
        if kind == "least_squares":
            return {name: 0.5 * tf.square(f - 1.0)}
        return {name: -f}

    return loss


def gradient_penalty(
    discriminator: str = "discriminator",
    *,
    real: str = "real",
    fake: str = "fake",
    target: float = 1.0,
    epsilon: float = 1e-12,
    name: str = "gp",
) -> Loss:
    """The WGAN-GP penalty ``(||grad_x D(x_hat)|| - target)^2`` per example, at interpolates.

    ``x_hat = u * real + (1 - u) * fake`` with ``u ~ U[0, 1)`` per example (seeded by
    ``fold_seed(context.seed, INTERPOLATION_STREAM)``). The input gradient comes from a
    nested tape, inside the phase's tape, so the penalty is differentiated too. The norm is
    ``sqrt(sum(g^2) + epsilon)``: finite, with finite gradients, even where ``g`` is zero.
    Weight it in the aggregation stage, e.g. ``global_mean({"gp": 10.0})``.

    Example:
      >>> from composeloop.parts.gan import discriminator
      >>> from composeloop.testing import context_for
      >>> images = {"real": tf.ones([4, 8, 8]), "fake": -tf.ones([4, 8, 8])}
      >>> penalty = gradient_penalty()(context_for(batch, {"discriminator": discriminator(image_size=8)}), images)
      >>> penalty["gp"].shape  # per example; weight it in the aggregate: global_mean({"gp": 10.0})
      TensorShape([4])
    """
    if not epsilon > 0:
        raise ComposeError(f"gradient_penalty needs epsilon > 0, got {epsilon!r}")

    def loss(context: Context, outputs: Tensors) -> Tensors:
        x_real, x_fake = tf.cast(outputs[real], tf.float32), tf.cast(outputs[fake], tf.float32)
        batch = tf.shape(x_real)[0]
        shape = tf.concat([[batch], tf.ones([tf.rank(x_real) - 1], tf.int32)], axis=0)
        u = tf.random.stateless_uniform(shape, seed=fold_seed(context.seed, INTERPOLATION_STREAM))
        interpolates = u * x_real + (1.0 - u) * x_fake
        with tf.GradientTape() as inner:
            inner.watch(interpolates)
            critic = scores(context.models[discriminator](interpolates, training=context.training))
        grads = inner.gradient(critic, interpolates)
        squared = tf.reduce_sum(tf.reshape(tf.square(grads), [batch, -1]), axis=1)
        return {name: tf.square(tf.sqrt(squared + epsilon) - target)}

    return loss


def combine(*losses: Loss) -> Loss:
    """Several loss stages as one; their named terms must not clash.

    Example:
      >>> loss = combine(discriminator_loss("wasserstein"), generator_loss("wasserstein"))
      >>> outputs = {"real_logits": tf.constant([1.0]), "fake_logits": tf.constant([3.0])}
      >>> {name: value.numpy() for name, value in loss(context, outputs).items()}
      {'d_loss': array([2.], dtype=float32), 'g_loss': array([-3.], dtype=float32)}
    """

    def loss(context: Context, outputs: Tensors) -> Tensors:
        terms: dict[str, tf.Tensor] = {}
        for stage in losses:
            produced = stage(context, outputs)
            clash = sorted(set(produced) & set(terms))
            if clash:
                raise ComposeError(f"combine: loss terms produced twice: {', '.join(clash)}")
            terms.update(produced)
        return terms

    return loss
