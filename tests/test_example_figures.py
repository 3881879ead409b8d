"""The user-written stages in examples/ do what their docstrings say, and one example's figure holds.

Each example's own pieces (a transform, an apply stage, a loss, an environment, a decoder)
are checked eagerly on tiny tensors; test_examples.py runs the scripts themselves.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from composeloop import step as cs

EXAMPLES = Path(__file__).parent.parent / "examples"


def example(name: str):
    """Imports examples/<name>.py as a module (examples/ is not a package)."""
    module_name = f"composeloop_example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def test_adaptive_clip_bounds_each_unit_and_keeps_small_ones_and_the_apply_flag():
    ex = example("custom_transform")
    kernel, bias = tf.Variable(tf.ones([3, 2])), tf.Variable(tf.ones([2]))
    grads = cs.Gradients([tf.constant([[10.0, 0.01], [10.0, 0.01], [10.0, 0.01]]), tf.constant([5.0, 0.01])], False)
    out = ex.adaptive_clip(0.1)(grads, [kernel, bias], None)
    # unit norms of W: sqrt(3) per kernel column, 1 per bias element
    kernel_norms = ex.unit_norms(out.values[0]).numpy()[0]
    np.testing.assert_allclose(kernel_norms, [0.1 * np.sqrt(3), np.sqrt(3) * 0.01], rtol=1e-5)
    np.testing.assert_allclose(out.values[1].numpy(), [0.1, 0.01], rtol=1e-5)
    assert out.apply is False


def test_centralise_removes_the_fan_in_mean_of_kernels_only():
    ex = example("custom_transform")
    kernel, bias = tf.random.normal([4, 3], seed=1), tf.constant([1.0, 2.0, 3.0])
    out = ex.centralise()(cs.Gradients([kernel, bias]), [], None)
    np.testing.assert_allclose(tf.reduce_mean(out.values[0], axis=0).numpy(), 0.0, atol=1e-6)
    np.testing.assert_array_equal(out.values[1].numpy(), bias.numpy())


def test_signum_steps_by_the_sign_of_the_momentum_and_builds_once():
    ex = example("custom_optimizer")
    variable = tf.Variable([1.0, 1.0, 1.0])
    apply = ex.signum(learning_rate=0.1, beta=0.5)
    apply.build([variable])
    slots = apply.momentum
    apply.build([variable])
    assert apply.momentum is slots
    apply([tf.constant([2.0, -2.0, 0.0])], [variable])
    np.testing.assert_allclose(apply.momentum[0].numpy(), [1.0, -1.0, 0.0])
    np.testing.assert_allclose(variable.numpy(), [0.9, 1.1, 1.0])


def test_relativistic_generator_loss_is_the_discriminator_loss_with_real_and_fake_swapped():
    ex = example("custom_gan_loss")
    real, fake = tf.constant([1.0, -0.5, 2.0]), tf.constant([0.3, 0.0, -1.0])
    d_loss = ex.relativistic_average("discriminator", "d")(None, {"real_logits": fake, "fake_logits": real})["d"]
    g_loss = ex.relativistic_average("generator", "g")(None, {"real_logits": real, "fake_logits": fake})["g"]
    np.testing.assert_allclose(g_loss.numpy(), d_loss.numpy(), rtol=1e-6)


def test_corridor_pays_the_cued_end_minus_move_costs_and_stops_there():
    ex = example("actor_critic")

    def always_right(observation):
        return tf.tile([[-9.0, 9.0]], [tf.shape(observation)[0], 1])

    cue, start = tf.constant([1, 0, 1]), tf.constant([3, 3, 5])
    episode = ex.rollout(always_right, cue, start, tf.constant([0, 0], tf.int64))
    cost = ex.MOVE_COST
    np.testing.assert_allclose(episode["score"].numpy(), [1 - 3 * cost, -1 - 3 * cost, 1 - cost])
    np.testing.assert_array_equal(episode["alive"].numpy().sum(axis=1), [3, 3, 1])
    assert episode["return"][2, 0].numpy() == pytest.approx(1 - ex.MOVE_COST)


def test_greedy_decoding_feeds_back_its_own_guesses():
    ex = example("teacher_forcing")

    def next_digit(inputs, training=False):  # predicts (previous input token + 1) mod 10 everywhere
        return tf.one_hot((inputs[1] + 1) % ex.DIGITS, ex.DIGITS) * 10.0

    source = tf.zeros([2, ex.LENGTH], tf.int32)
    decoded = ex.greedy_decode(next_digit, source).numpy()
    np.testing.assert_array_equal(decoded, np.tile((np.arange(ex.LENGTH) + 1) % ex.DIGITS, (2, 1)))
    np.testing.assert_array_equal(ex.shift_right(tf.constant([[4, 5, 6]])).numpy(), [[ex.START, 4, 5]])


def test_activity_metric_reports_what_model_losses_adds():
    ex = example("activity_regularisation")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), ex.ActivityL1(0.5)])
    x = tf.random.normal([5, 3], seed=2)
    context = cs.Context(
        {"x": x}, {"model": model}, True, tf.constant([0, 0], tf.int64), tf.constant(0, tf.int64), tf.constant(5.0)
    )
    hidden = model(x)
    metric = ex.model_losses_metric("penalty")
    state = metric.update(metric.empty(), context, {}, {})
    expected = 0.5 * np.abs(hidden.numpy()).sum(axis=1).mean()
    assert float(metric.result(state)) == pytest.approx(expected, rel=1e-5)
    assert float(cs.model_losses("model")(context, {})) == pytest.approx(expected, rel=1e-5)


def test_partition_scales_the_backbone_and_clips_the_head_by_its_own_norm():
    ex = example("partition_and_ema")
    variables = ex.model((8, 8)).trainable_variables
    grads = [tf.fill(v.shape, 2.0) for v in variables]
    out = ex.per_group_transform()(cs.Gradients(grads), variables, None).values
    head = [g for g, v in zip(out, variables, strict=True) if "/head/" in v.path]
    backbone = [g for g, v in zip(out, variables, strict=True) if "/backbone/" in v.path]
    assert len(head) == len(backbone) == 2
    np.testing.assert_allclose(float(cs.global_norm(head)), ex.GROUPS["head"], rtol=1e-5)
    for g in backbone:
        np.testing.assert_allclose(g.numpy(), 2.0 * ex.GROUPS["backbone"], rtol=1e-6)


@pytest.mark.slow
def test_actor_critic_beats_a_random_policy_after_a_short_run():
    learned, uniform = example("actor_critic").main(epochs=3, episodes_per_epoch=512, evaluation_episodes=1000)
    assert learned > uniform + 0.5
