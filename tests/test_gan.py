"""The GAN: composed step == a hand-written two-tape step, phase isolation, the penalty, bad input.

Models are tiny dense networks on 6-pixel "images", so tracing dominates; one subprocess
run of `+experiment=gan` (slow) checks the outputs a run writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from composeloop import step as cs
from composeloop.engine import compile_step
from composeloop.errors import ComposeError
from composeloop.parts import gan
from composeloop.parts.images import png_bytes, tile
from composeloop.step.gan import discriminator_loss, generator_loss, gradient_penalty

LATENT, PIXELS, SEED = 4, 6, 5


def tiny_players(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    keras.utils.set_random_seed(seed)
    dense = keras.layers.Dense
    g = keras.Sequential([keras.Input((LATENT,)), dense(8, activation="relu"), dense(PIXELS, activation="tanh")])
    d = keras.Sequential([keras.Input((PIXELS,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    return g, d


def real_data(examples: int = 20) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, size=(examples, PIXELS)).astype(np.float32)


def dataset(x: np.ndarray, batch_size: int = 8) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices({"x": x}).batch(batch_size)


def adam() -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(0.01, beta_1=0.5)


CASES = {
    "non_saturating": {"loss": "non_saturating", "label_noise": 0.2, "penalty": 0.0, "n_critic": 2},
    "wgan_gp": {"loss": "wasserstein", "label_noise": 0.0, "penalty": 10.0, "n_critic": 3},
}


def hand_written(case: dict, x: np.ndarray, steps: int) -> tuple[keras.Model, keras.Model]:
    """Two tapes, two optimizers, noise derived from the run seed as composeloop documents."""
    g, d = tiny_players()
    d_opt, g_opt = adam(), adam()
    fold = tf.random.experimental.stateless_fold_in
    bce = tf.nn.sigmoid_cross_entropy_with_logits

    def clip(grads):
        return [tf.clip_by_norm(grad, 0.5) for grad in grads]

    @tf.function
    def d_step(real, seed):
        n = tf.shape(real)[0]
        z = tf.random.stateless_normal([n, LATENT], seed=seed)
        with tf.GradientTape() as tape:
            fake = g(z, training=True)
            r, f = d(real, training=True)[:, 0], d(fake, training=True)[:, 0]
            if case["loss"] == "wasserstein":
                u = tf.random.stateless_uniform([n, 1], seed=fold(seed, tf.constant(2, tf.int64)))
                mixed = u * real + (1 - u) * fake
                with tf.GradientTape() as inner:
                    inner.watch(mixed)
                    score = d(mixed, training=True)[:, 0]
                norm = tf.sqrt(tf.reduce_sum(tf.square(inner.gradient(score, mixed)), axis=1) + 1e-12)
                loss = tf.reduce_mean(f - r) + case["penalty"] * tf.reduce_mean(tf.square(norm - 1.0))
            else:
                noise = tf.random.stateless_uniform([2, n], seed=fold(seed, tf.constant(1, tf.int64)))
                noise *= case["label_noise"]
                loss = tf.reduce_mean(bce(labels=1.0 - noise[0], logits=r) + bce(labels=noise[1], logits=f))
        d_opt.apply_gradients(zip(clip(tape.gradient(loss, d.trainable_variables)), d.trainable_variables, strict=True))

    @tf.function
    def g_step(n, seed):
        z = tf.random.stateless_normal([n, LATENT], seed=seed)
        with tf.GradientTape() as tape:
            f = d(g(z, training=True), training=True)[:, 0]
            loss = tf.reduce_mean(-f if case["loss"] == "wasserstein" else tf.nn.softplus(-f))
        g_opt.apply_gradients(zip(clip(tape.gradient(loss, g.trainable_variables)), g.trainable_variables, strict=True))

    for step, batch in enumerate(dataset(x).take(steps)):
        base = tf.constant([SEED, 0], tf.int64)
        for value in (step, 0):  # global step, replica
            base = fold(base, tf.constant(value, tf.int64))
        for repeat in range(case["n_critic"]):
            d_step(batch["x"], fold(fold(base, tf.constant(0, tf.int64)), tf.constant(repeat, tf.int64)))
        g_step(tf.shape(batch["x"])[0], fold(fold(base, tf.constant(1, tf.int64)), tf.constant(0, tf.int64)))
    return g, d


@pytest.mark.parametrize("name", sorted(CASES))
def test_composed_gan_step_equals_a_hand_written_two_tape_step(name):
    case, x = CASES[name], real_data()
    g, d = tiny_players()
    step = gan.gan_step(g, d, adam(), adam(), latent_dim=LATENT, transform=cs.clip_by_norm(0.5), **case)
    program = compile_step(step, steps_per_execution=2, seed=SEED)
    iterator = iter(dataset(x))  # 20 examples in batches of 8: the third batch is partial
    assert program.train(iterator) == 2
    assert program.train(iterator) == 1
    assert program.trace_counts == {"train": 1}  # a partial chunk and a partial batch: no retrace
    theirs_g, theirs_d = hand_written(case, x, steps=3)
    for ours, theirs in ((g, theirs_g), (d, theirs_d)):
        for a, b in zip(ours.weights, theirs.weights, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    results = program.results()
    assert set(results) == ({"d_loss", "g_loss", "gp"} if case["penalty"] else {"d_loss", "g_loss"})
    assert all(np.isfinite(value) for value in results.values())


@pytest.mark.parametrize("which", ["discriminator", "generator"])
def test_each_phase_changes_only_its_own_player(which):
    g, d = tiny_players(seed=1)
    models = {"generator": g, "discriminator": d}
    if which == "discriminator":
        phase = gan.discriminator_phase(adam(), latent_dim=LATENT, penalty=1.0, n_critic=2)
    else:
        phase = gan.generator_phase(adam(), latent_dim=LATENT)
    program = compile_step(cs.compose(phase, models=models), steps_per_execution=2)
    before = {name: [w.numpy() for w in model.weights] for name, model in models.items()}
    program.train(iter(dataset(real_data())), 2)
    for name, model in models.items():
        moved = [not np.array_equal(a, b.numpy()) for a, b in zip(before[name], model.weights, strict=True)]
        assert all(moved) if name == which else not any(moved), name


def test_gradient_penalty_has_finite_gradients_where_the_input_gradient_is_zero():
    keras.utils.set_random_seed(0)
    hidden, flat_out = keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1, kernel_initializer="zeros")
    flat = keras.Sequential([keras.Input((PIXELS,)), hidden, flat_out])
    context = cs.Context(
        {}, {"discriminator": flat}, True, tf.constant([1, 2], tf.int64), tf.constant(0, tf.int64), tf.constant(4.0)
    )
    outputs = {"real": tf.constant(real_data(4)), "fake": tf.zeros([4, PIXELS])}
    with tf.GradientTape() as tape:
        penalty = gradient_penalty()(context, outputs)["gp"]
    grads = tape.gradient(penalty, flat.trainable_variables)
    np.testing.assert_allclose(penalty.numpy(), (np.sqrt(1e-12) - 1.0) ** 2, rtol=1e-6)
    variables = flat.trainable_variables
    kernels = [grad for grad, variable in zip(grads, variables, strict=True) if "kernel" in variable.path]
    assert len(kernels) == 2 and all(np.isfinite(grad.numpy()).all() for grad in kernels)


@pytest.mark.parametrize("kind", ["non_saturating", "minimax", "least_squares", "hinge", "wasserstein"])
def test_losses_are_per_example_and_push_the_right_way(kind):
    context = cs.Context({}, {}, True, tf.constant([0, 0], tf.int64), tf.constant(0, tf.int64), tf.constant(3.0))
    good = {"real_logits": tf.fill([3], 3.0), "fake_logits": tf.fill([3], -3.0)}
    bad = {"real_logits": tf.fill([3], -3.0), "fake_logits": tf.fill([3], 3.0)}
    d_loss, g_loss = discriminator_loss(kind), generator_loss(kind)
    assert d_loss(context, good)["d_loss"].shape == (3,)
    assert float(tf.reduce_sum(d_loss(context, good)["d_loss"])) < float(tf.reduce_sum(d_loss(context, bad)["d_loss"]))
    # The generator prefers fakes the discriminator scores as real.
    assert float(tf.reduce_sum(g_loss(context, bad)["g_loss"])) < float(tf.reduce_sum(g_loss(context, good)["g_loss"]))


def test_bad_gan_input_is_one_line():
    g, d = tiny_players()
    with pytest.raises(ComposeError, match="unknown GAN loss 'nope'; known: non_saturating"):
        discriminator_loss("nope")
    with pytest.raises(ComposeError, match="latent_dim must be > 0, got 0"):
        gan.gan_step(g, d, adam(), adam(), latent_dim=0)
    with pytest.raises(ComposeError, match="n_critic must be an integer >= 1, got 0"):
        gan.gan_step(g, d, adam(), adam(), latent_dim=LATENT, n_critic=0)
    with pytest.raises(ComposeError, match="label-based loss"):
        discriminator_loss("hinge", label_noise=0.1)
    small = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)])
    with pytest.raises(ComposeError, match=r"output shape \(6,\) does not fit the discriminator's input shape \(5,\)"):
        gan.gan_step(g, small, adam(), adam(), latent_dim=LATENT)


def test_sample_grid_is_a_valid_png():
    grid = tile(np.linspace(-1, 1, 5 * 8 * 8).reshape(5, 8, 8), columns=3, scale=2)
    assert grid.shape == (2 * 17 + 1, 3 * 17 + 1) and grid.dtype == np.uint8
    data = png_bytes(grid)
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "-m", "composeloop", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("gan.latent_dim=0", "gan.latent_dim: must be an integer in [1, 1000000], got 0"),
        ("gan.n_critic=0", "gan.n_critic: must be an integer in [1, 1000], got 0"),
        ("gan.loss=nope", "non_saturating"),
    ],
)
def test_bad_gan_config_is_one_line(tmp_path, override, expected):
    result = cli("+experiment=gan", override, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("composeloop: error:") and expected in lines[0], lines[0]


@pytest.mark.slow
def test_tiny_gan_run_writes_its_outputs(tmp_path):
    tiny = ("train.epochs=2", "gan.samples=50", "gan.classifier_epochs=1", "gan.grid=16", "gan.width=8")
    result = cli("+experiment=gan", *tiny, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    for name in ("generator.keras", "discriminator.keras", "samples/epoch_001.png", "samples/epoch_002.png"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [set(line) for line in lines] == [{"epoch", "d_loss", "g_loss", "seconds"}] * 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["traces"] == {"train": 1}
    assert 0 <= summary["digit_confidence"] <= 1 and 0 <= summary["classes_covered"] <= 10
    assert {"d_loss", "g_loss"} <= set(summary)
    bad = cli("+experiment=gan", *tiny, "gan.generator_size=16", "hydra.run.dir=bad", cwd=tmp_path)
    assert bad.returncode == 2 and "(16, 16) does not fit the discriminator's input shape (8, 8)" in bad.stderr
