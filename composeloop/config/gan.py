"""The GAN experiments (`+experiment=gan`, `+experiment=wgan_gp`): config -> trained GAN and outputs.

This module owns what a GAN run writes into its run directory: metrics.jsonl (``d_loss``,
``g_loss`` and, with a penalty, ``gp`` per epoch), ``samples/epoch_NNN.png`` (a grid from
the same fixed latent vectors every epoch), generator.keras, discriminator.keras, and
summary.json with the sample-quality score. The score comes from a digit classifier that
composeloop's own classifier recipe trains on the fly, on the same data at the same
resolution. Training logic lives in `composeloop.parts.gan` and the step algebra.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from composeloop.config import build, runner
from composeloop.config.schema import Config, GanConfig, OptimizerName
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


def _optimizer(name: OptimizerName, learning_rate: float, gan: GanConfig) -> Any:
    import keras

    if name is OptimizerName.sgd:
        return keras.optimizers.SGD(learning_rate=learning_rate)
    return keras.optimizers.Adam(learning_rate=learning_rate, beta_1=gan.beta_1, beta_2=gan.beta_2)


def train_digit_classifier(config: Config, x_train, y_train, x_val, y_val, num_classes: int) -> tuple[Any, float]:
    """A small CNN trained by `classifier_step` on the GAN's data; returns it and its val accuracy."""
    import keras

    from composeloop.engine import compile_step, fit
    from composeloop.parts.data import batches
    from composeloop.parts.models import cnn
    from composeloop.parts.recipes import classifier_step

    keras.utils.set_random_seed(config.seed)
    model = cnn(x_train.shape[1:], num_classes, width=32, depth=2)
    step = classifier_step(model, keras.optimizers.Adam(3e-3))
    program = compile_step(step, steps_per_execution=64, seed=config.seed)
    history = fit(
        program,
        lambda epoch: batches(x_train, y_train, 32, seed=config.seed, epoch=epoch),
        epochs=config.gan.classifier_epochs,
        validation_data=lambda: batches(x_val, y_val, 256, shuffle=False),
    )
    return model, float(history[-1]["val_accuracy"])


def train_gan(config: Config, directory: Path) -> dict[str, Any]:
    """Trains the configured GAN, writes its outputs, scores its samples; returns the summary."""
    started = time.perf_counter()
    data = build.load_data(config.data, config.seed)  # before TensorFlow loads: bad files fail fast

    import keras

    from composeloop import step as cs
    from composeloop.engine import compile_step, strategies
    from composeloop.engine.events import on_epoch_end
    from composeloop.engine.report import write_json_atomically
    from composeloop.parts import gan as parts
    from composeloop.parts.data import batches
    from composeloop.parts.images import save_grid

    gan = config.gan
    size = gan.image_size
    x_train, x_val = _images(data.x_train, size, "x_train"), _images(data.x_val, size, "x_val")
    keras.utils.set_random_seed(config.seed)
    build.set_precision(config.train.precision)
    placed = build.build_strategy(config.strategy)
    outputs = strategies.output_directory(placed.strategy, directory)  # only the chief writes the run's
    with placed.strategy.scope():
        generator = parts.generator(gan.latent_dim, gan.generator_size or size, gan.width)
        discriminator = parts.discriminator(size, gan.width)
        step = parts.gan_step(
            generator,
            discriminator,
            _optimizer(gan.d_optimizer, gan.d_learning_rate, gan),
            _optimizer(gan.g_optimizer, gan.g_learning_rate, gan),
            latent_dim=gan.latent_dim,
            loss=gan.loss.value,
            label_noise=gan.label_noise,
            penalty=gan.gradient_penalty,
            n_critic=gan.n_critic,
            transform=cs.clip_by_norm(gan.clip_norm) if gan.clip_norm else None,
        )
    program = compile_step(build.adapt_step(step, config.train), **runner.compile_options(config, placed.strategy))
    # The GAN learns from every image; the held-out split only checks the score's classifier.
    x_all = np.concatenate([x_train, x_val])
    y_all = np.concatenate([data.y_train, data.y_val])
    fixed = parts.fixed_latents(gan.grid, gan.latent_dim, config.seed)
    columns = max(1, int(np.ceil(np.sqrt(gan.grid))))

    def samples(state: Any) -> None:
        images = parts.generate_images(generator, fixed)
        save_grid(outputs / "samples" / f"epoch_{state.epoch:03d}.png", images, columns=columns)

    training = runner.Training(
        program,
        lambda epoch: batches(x_all, y_all, config.data.batch_size, seed=config.seed, epoch=epoch),
        handlers=[on_epoch_end(samples)],
        log_names=LOG_NAMES,
        images=lambda state: (parts.generate_images(generator, fixed[:16]) + 1.0) / 2.0,
    )
    state = runner.train(config, outputs, training, restore_from=directory)
    generator.save(outputs / "generator.keras")
    discriminator.save(outputs / "discriminator.keras")
    common = runner.summary(config, state, started, LOG_NAMES)
    if state.status in runner.UNFINISHED:  # scoring trains a classifier: not worth it for a run to resume
        write_json_atomically(outputs / "summary.json", common)
        return common

    classifier, classifier_accuracy = train_digit_classifier(
        config, x_train, data.y_train, x_val, data.y_val, data.num_classes
    )
    generated = parts.generate_images(generator, parts.fixed_latents(gan.samples, gan.latent_dim, config.seed + 1))
    quality = parts.digit_quality(classifier, generated)
    reference = parts.digit_quality(classifier, x_val)
    summary = {
        **common,
        **{name: common["metrics"][name] for name in ("d_loss", "g_loss", "gp") if name in common["metrics"]},
        **quality,
        "samples_scored": gan.samples,
        "classifier_val_accuracy": classifier_accuracy,
        "real_digit_confidence": reference["digit_confidence"],
        "wall_s": time.perf_counter() - started,
    }
    write_json_atomically(outputs / "summary.json", summary)
    return summary
