"""The GAN composition (`+experiment=gan`, `+experiment=wgan_gp`): a step builder like any other.

This module owns what the GAN experiments add to a run: two players built from `gan.*`,
each with a fresh optimizer from `optimizer.*` (its own peak learning rate when
`gan.d_learning_rate`/`g_learning_rate` is set) and its own gradient chain from
`gradient.*` (so `skip_nonfinite` withholds a non-finite update and the clips bound both
players); images scaled to [-1, 1] at `gan.image_size`; ``samples/epoch_NNN.png`` (a grid
from the same latent vectors every epoch); and, at the end, the sample-quality score in
summary.json: a digit classifier, trained on the fly by composeloop's own classifier
recipe on the same data, judges 1000 generated digits. Training logic lives in
`composeloop.parts.gan` and the step algebra; the run itself is the application's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from composeloop.app.compositions import Composition
from composeloop.errors import DataError

LOG_NAMES = {"train_d_loss": "d_loss", "train_g_loss": "g_loss", "train_gp": "gp"}


def _images(x: np.ndarray, size: int, key: str) -> np.ndarray:
    """Square grayscale images resized (bilinear) to size x size and scaled from [0, 1] to [-1, 1]."""
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3:
        raise DataError(f"the GAN needs grayscale images of shape (n, height, width); {key} has shape {x.shape}")
    if x.shape[1:] != (size, size):
        import tensorflow as tf

        x = tf.image.resize(x[..., None], (size, size)).numpy()[..., 0]
    return np.clip(x, 0.0, 1.0) * 2.0 - 1.0


def _digit_classifier(x_train, y_train, x_val, y_val, num_classes: int, epochs: int, seed: int) -> tuple[Any, float]:
    """A small CNN trained by `classifier_step` on the GAN's data; returns it and its val accuracy."""
    import keras

    from composeloop.engine import compile_step, fit
    from composeloop.parts.data import batches
    from composeloop.parts.models import cnn
    from composeloop.parts.recipes import classifier_step

    keras.utils.set_random_seed(seed)
    model = cnn(x_train.shape[1:], num_classes, width=32, depth=2)
    program = compile_step(classifier_step(model, keras.optimizers.Adam(3e-3)), steps_per_execution=64, seed=seed)
    history = fit(
        program,
        lambda epoch: batches(x_train, y_train, 32, seed=seed, epoch=epoch),
        epochs=epochs,
        validation_data=lambda: batches(x_val, y_val, 256, shuffle=False),
    )
    return model, float(history[-1]["val_accuracy"])


def gan_composition(*, gan: Any, data: Any, make_optimizer: Any, make_transform: Any, seed: int, batch_size: int):
    """The GAN step builder: discriminator phase (`gan.n_critic` times), then generator phase.

    Args:
      gan: the `gan` config section.
      data: `ArrayData` of grayscale images in [0, 1].
      make_optimizer, make_transform: the configured factories (one of each per player).
      seed: the run seed (fixed latent vectors for the sample grids).
      batch_size: the configured batch size.

    Returns:
      A `Composition` with the GAN's own data, sample grids and score.
    """
    from composeloop.engine.events import on_epoch_end
    from composeloop.parts import gan as parts
    from composeloop.parts.data import batches
    from composeloop.parts.images import save_grid

    if not hasattr(data, "x_train"):
        raise DataError("the GAN needs image arrays (x_train, y_train, x_val, y_val), not streamed datasets")
    size = gan.image_size
    x_train, x_val = _images(data.x_train, size, "x_train"), _images(data.x_val, size, "x_val")
    generator = parts.generator(gan.latent_dim, gan.generator_size or size, gan.width)
    discriminator = parts.discriminator(size, gan.width)
    step = parts.gan_step(
        generator,
        discriminator,
        make_optimizer(learning_rate=gan.d_learning_rate),
        make_optimizer(learning_rate=gan.g_learning_rate),
        latent_dim=gan.latent_dim,
        loss=gan.loss.value,
        label_noise=gan.label_noise,
        penalty=gan.gradient_penalty,
        n_critic=gan.n_critic,
        transform=make_transform(),
        g_transform=make_transform(),
    )
    # The GAN learns from every image; the held-out split only checks the score's classifier.
    x_all = np.concatenate([x_train, x_val])
    y_all = np.concatenate([data.y_train, data.y_val])
    fixed = parts.fixed_latents(gan.grid, gan.latent_dim, seed)
    columns = max(1, int(np.ceil(np.sqrt(gan.grid))))

    def sample_grids(outputs: Path) -> list[Any]:
        def save(state: Any) -> None:
            images = parts.generate_images(generator, fixed)
            save_grid(outputs / "samples" / f"epoch_{state.epoch:03d}.png", images, columns=columns)

        return [on_epoch_end(save)]

    def score(state: Any, outputs: Path) -> dict[str, Any]:
        classifier, accuracy = _digit_classifier(
            x_train, data.y_train, x_val, data.y_val, data.num_classes, gan.classifier_epochs, seed
        )
        latents = parts.fixed_latents(gan.samples, gan.latent_dim, seed + 1)
        quality = parts.digit_quality(classifier, parts.generate_images(generator, latents))
        metrics = {LOG_NAMES.get(k, k): v for k, v in state.logs.items()}
        return {
            **{name: metrics[name] for name in ("d_loss", "g_loss", "gp") if name in metrics},
            **quality,
            "samples_scored": gan.samples,
            "classifier_val_accuracy": accuracy,
            "real_digit_confidence": parts.digit_quality(classifier, x_val)["digit_confidence"],
        }

    return Composition(
        step,
        train_data=lambda epoch: batches(x_all, y_all, batch_size, seed=seed, epoch=epoch),
        validate=False,
        handlers=sample_grids,
        log_names=LOG_NAMES,
        images=lambda state: (parts.generate_images(generator, fixed[:16]) + 1.0) / 2.0,
        finish=score,
        main_metric="digit_confidence",
    )
