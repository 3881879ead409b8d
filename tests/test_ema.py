"""EMA of weights: the closed form, replica invariance, the swap for evaluation, bad arguments.

Each step is compiled once per module (a `StepRunner` or the checkers' cache) and put back
to its snapshot (weights, optimizer, shadows, count) before every example.
"""

from __future__ import annotations

import attrs
import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import dataset, plain_sgd, tiny_data, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.engine import compile_step, fit, run_epoch
from composeloop.errors import ComposeError
from composeloop.parts.recipes import classifier_phase
from composeloop.testing import StepRunner, cached_programs, check_ema_replica_invariance, mirrored_strategy
from composeloop.testing.strategies import batches, splits

X, Y = tiny_data(examples=24)
CONFIGS = {"warmup": (0.9, True), "plain": (0.6, False)}


def closed_form(history, decay: float, warmup: bool) -> list[np.ndarray]:
    """shadow_1 = w_1; shadow_i = d_i shadow_(i-1) + (1 - d_i) w_i, d_i = min(decay, i / (9 + i)) with warmup."""
    shadow = [np.asarray(w, np.float64) for w in history[0]]
    for i, weights in enumerate(history[1:], start=2):
        d = min(decay, i / (9 + i)) if warmup else decay
        shadow = [d * s + (1 - d) * np.asarray(w, np.float64) for s, w in zip(shadow, weights, strict=True)]
    return shadow


def ema_step(decay: float = 0.9, warmup: bool = True, apply=None):
    phase = classifier_phase(keras.optimizers.Adam(0.05))
    phase = attrs.evolve(phase, apply=cs.ema(apply if apply is not None else phase.apply, decay, warmup=warmup))
    return cs.compose(phase, models={"model": tiny_model(seed=0)})


@pytest.fixture(scope="module")
def runners():
    made = {name: StepRunner(ema_step(*config)) for name, config in CONFIGS.items()}
    made["none"] = StepRunner(cs.compose(classifier_phase(keras.optimizers.Adam(0.05)), models={"model": tiny_model()}))
    return made


@pytest.mark.property
@settings(max_examples=8)
@given(st.sampled_from(sorted(CONFIGS)), st.lists(batches(max_size=6), min_size=1, max_size=8))
def test_shadows_follow_the_closed_form_and_the_raw_weights_train_as_without_ema(runners, name, steps):
    runner, plain = runners[name], runners["none"]
    stage = cs.ema_stages(runner.step)[0]
    runner.restore()
    plain.restore()
    history = []
    for batch in steps:
        runner.train_once([batch])
        history.append([v.numpy() for v in stage.owner])
    plain.train_steps([[batch] for batch in steps])
    try:
        for shadow, want in zip(stage.shadows, closed_form(history, *CONFIGS[name]), strict=True):
            np.testing.assert_allclose(shadow.numpy(), want, rtol=1e-5, atol=1e-6)
        assert int(stage.count) == len(steps)
        for raw, unaveraged in zip(stage.owner, plain.step.models["model"].trainable_variables, strict=True):
            np.testing.assert_array_equal(raw.numpy(), unaveraged.numpy())  # EMA never feeds back
    finally:
        runner.restore()
        plain.restore()
    assert all(r.program.trace_counts.get("train", 0) <= 1 for r in runners.values())


def sgd_with_ema():
    phase = attrs.evolve(classifier_phase(keras.optimizers.SGD(0.1)), apply=cs.ema(plain_sgd(0.3), 0.8))
    return cs.compose(phase, models={"model": tiny_model(seed=2)})


@pytest.mark.property
@settings(max_examples=8)
@given(st.lists(batches(max_size=8), min_size=1, max_size=4), st.data())
def test_shadows_are_the_same_on_two_replicas_as_on_one(steps, data):
    cuts = [data.draw(splits(len(batch["y"]), parts=2)) for batch in steps]
    check_ema_replica_invariance(sgd_with_ema, steps, cuts)
    assert all(p.trace_counts == {"train": 1} for p in cached_programs())


@pytest.fixture(scope="module")
def trained():
    step = ema_step(0.8)
    program = compile_step(step, steps_per_execution=4)
    fit(program, lambda epoch: dataset(X, Y, 6), epochs=2)
    return program


def test_ema_weights_swaps_the_shadows_in_and_the_raw_weights_back_bit_for_bit(trained):
    stage = cs.ema_stages(trained)[0]
    raw = [v.numpy() for v in stage.owner]
    assert any(not np.array_equal(r, s.numpy()) for r, s in zip(raw, stage.shadows, strict=True))
    with cs.ema_weights(trained) as swapped:
        assert swapped == [stage]
        for variable, shadow in zip(stage.owner, stage.shadows, strict=True):
            np.testing.assert_array_equal(variable.numpy(), shadow.numpy())
    for variable, value in zip(stage.owner, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    with pytest.raises(RuntimeError, match="inside"), cs.ema_weights(trained.step):
        raise RuntimeError("inside")
    for variable, value in zip(stage.owner, raw, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_the_loop_validates_the_ema_weights_when_asked(trained):
    def evaluate():
        trained.reset("val")
        run_epoch(trained, "val", dataset(X, Y, 8))
        return trained.results("val")["loss"]

    with cs.ema_weights(trained):
        averaged = evaluate()
    assert evaluate() != pytest.approx(averaged)
    # One more epoch at learning rate 0 leaves the weights, so its validation is comparable.
    trained.step.phases[0].apply.inner.optimizer.learning_rate.assign(0.0)
    stage = cs.ema_stages(trained)[0]
    shadows = [s.numpy() for s in stage.shadows]
    history = fit(
        trained,
        lambda epoch: dataset(X, Y, 6),
        validation_data=lambda: dataset(X, Y, 8),
        epochs=1,
        validation_weights=lambda: cs.ema_weights(trained),
    )
    with cs.ema_weights(trained):
        assert history[-1]["val_loss"] == pytest.approx(evaluate(), rel=1e-6)
    assert shadows  # (the shadows moved towards unchanged weights: the comparison above reads them after)


def test_checkpoints_hold_the_shadows_and_the_count(trained):
    stage = cs.ema_stages(trained)[0]
    held = {id(v) for v in trained.checkpoint_variables()["apply_classifier"].values()}
    assert {id(v) for v in [*stage.shadows, stage.count]} <= held
    assert {id(v) for v in stage.inner.optimizer.variables} <= held


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5, -0.1, True])
def test_a_decay_outside_zero_one_is_refused_naming_it(decay):
    with pytest.raises(ValueError, match=r"ema: decay must be in \(0, 1\)"):
        cs.ema(plain_sgd(0.1), decay)


def test_misuse_is_explained():
    with pytest.raises(TypeError, match="ema: apply must be an apply stage"):
        cs.ema("adam")
    with pytest.raises(ValueError, match="holds no ema stage"), cs.ema_weights(plain_sgd(0.1)):
        pass
    stage = cs.ema(plain_sgd(0.1))
    with pytest.raises(ComposeError, match="not built"):
        stage([tf.zeros(1)], [tf.Variable([1.0])])
    stage.build([tf.Variable([1.0])])
    with pytest.raises(ComposeError, match="one variable group"):
        stage.build([tf.Variable([2.0])])


def test_the_swap_sets_every_replica_copy_under_a_strategy():
    strategy = mirrored_strategy(2)
    with strategy.scope():
        step = sgd_with_ema()
    program = compile_step(step, strategy=strategy)
    program.train(iter(program.distribute(dataset(X, Y, 8))), 2)
    stage = cs.ema_stages(program)[0]

    def copies(variable):
        return [c.numpy() for c in strategy.experimental_local_results(getattr(variable, "value", variable))]

    raw = [copies(v) for v in stage.owner]
    with cs.ema_weights(program):
        for variable, shadow in zip(stage.owner, stage.shadows, strict=True):
            for copy in copies(variable):
                np.testing.assert_array_equal(copy, shadow.numpy())
    for variable, before in zip(stage.owner, raw, strict=True):
        for copy, value in zip(copies(variable), before, strict=True):
            np.testing.assert_array_equal(copy, value)
