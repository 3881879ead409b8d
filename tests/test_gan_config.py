"""The GAN composition honours the shared keys: `gradient.*` bounds both players, and a
non-finite batch withholds exactly the updates whose gradients it poisons.

Both tests build `+experiment=gan` from its config in process (tiny players on the
embedded digits) and step its compiled program on hand-made batches.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from composeloop.app import load_config
from composeloop.app.compositions import build_composition
from composeloop.app.runner import compile_options
from composeloop.config import build
from composeloop.engine import compile_step

TINY_GAN = [
    "+experiment=gan",
    "gan.width=4",
    "gan.latent_dim=4",
    "train.steps_per_execution=1",
    "report.tensorboard=false",
]


def gan_program(*overrides: str):
    config = load_config([*TINY_GAN, *overrides])
    data = build.load_data(config.data, config.seed)
    composition = build_composition(config, data, overrides=list(overrides))
    program = compile_step(build.adapt_step(composition.step, config.train), **compile_options(config))
    return program, composition.step.models


def batches(*poisoned: bool) -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(len(poisoned), 8, 8, 8)).astype(np.float32)
    for index, bad in enumerate(poisoned):
        if bad:
            x[index, 0, 0, 0] = np.nan
    return tf.data.Dataset.from_tensor_slices({"x": x, "y": np.zeros((len(poisoned), 8), np.int32)})


def snapshot(models) -> dict[str, list[np.ndarray]]:
    return {name: [v.numpy().copy() for v in model.trainable_variables] for name, model in models.items()}


def moved(before, after) -> float:
    return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before, strict=True))))


def test_gradient_clip_global_norm_bounds_both_players():
    program, models = gan_program(
        "optimizer=sgd",
        "optimizer.learning_rate=1.0",
        "optimizer.beta_1=null",
        "optimizer.beta_2=null",
        "gradient.clip_global_norm=0.001",
    )
    before = snapshot(models)
    assert program.train(iter(batches(False)), 1) == 1
    after = snapshot(models)
    for name in ("discriminator", "generator"):
        distance = moved(before[name], after[name])
        assert 0 < distance <= 0.001 * (1 + 1e-4), (name, distance)  # plain SGD at lr 1: the clipped gradient


def test_a_nonfinite_batch_withholds_exactly_the_poisoned_update():
    program, models = gan_program("train.nan_policy=skip")
    iterator = iter(batches(False, True, False))
    program.train(iterator, 1)
    good = snapshot(models)
    program.train(iterator, 1)  # real images with a NaN: the discriminator's gradient is NaN
    poisoned = snapshot(models)
    assert moved(good["discriminator"], poisoned["discriminator"]) == 0.0
    assert moved(good["generator"], poisoned["generator"]) > 0.0  # its loss never sees the real batch
    assert int(program.withheld_updates.numpy()) == 1 and int(program.nonfinite_steps.numpy()) == 1
    program.train(iterator, 1)
    assert moved(poisoned["discriminator"], snapshot(models)["discriminator"]) > 0.0
