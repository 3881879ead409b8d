"""The learning-rate range test in Python: the ramp, the smoothing, the suggestion, stopping
on divergence, everything put back afterwards, and the refusals."""

from __future__ import annotations

import math

import attrs
import keras
import numpy as np
import pytest
from builders import dataset, tiny_data, tiny_model, tiny_step
from hypothesis import given, settings
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.engine.lr_find import lr_range_test, plot_range_test, ramp_rate, smooth, suggest
from composeloop.errors import ComposeError

X, Y = tiny_data(examples=48)


def batches(epoch: int):
    return dataset(X, Y, 8)  # 6 steps an epoch: a test of 20 steps crosses epochs


def adam_step():
    model = tiny_model()
    phase = tiny_step(model).phases[0]
    phase = attrs.evolve(phase, apply=cs.ema(cs.optimizer_apply(keras.optimizers.Adam(1e-3)), 0.9))
    return cs.compose(phase, models={"model": model})


@pytest.mark.property
@settings(max_examples=20)
@given(
    st.floats(1e-8, 1e-2),
    st.floats(1.5, 1e6),
    st.integers(2, 500),
    st.lists(st.floats(0.1, 10.0), min_size=1, max_size=30),
)
def test_ramp_runs_from_start_to_end_and_smoothing_keeps_a_constant(start, ratio, steps, noise):
    end = start * ratio
    assert ramp_rate(start, end, steps, 0) == pytest.approx(start)
    assert ramp_rate(start, end, steps, steps - 1) == pytest.approx(end)
    rates = [ramp_rate(start, end, steps, i) for i in range(steps)]
    assert all(b > a for a, b in zip(rates, rates[1:], strict=False))
    assert smooth([noise[0]] * len(noise), 0.98) == pytest.approx([noise[0]] * len(noise))  # bias-corrected
    smoothed = smooth(noise, 0.9)
    assert min(noise) - 1e-9 <= min(smoothed) and max(smoothed) <= max(noise) + 1e-9


def test_the_suggestion_is_the_steepest_fall_before_the_lowest_loss():
    rates = list(np.logspace(-6, 0, 61))
    # A loss that falls fastest at 1e-3, bottoms out at 1e-1 and then climbs.
    loss = [2.0 - math.tanh(math.log10(r) + 3) + 5 * max(0.0, math.log10(r) + 1) ** 2 for r in rates]
    suggested, lowest = suggest(rates, loss)
    assert suggested == pytest.approx(1e-3, rel=0.01)
    assert lowest == pytest.approx(rates[int(np.argmin(loss))])
    assert suggest(rates[:3], loss[:3])[0] is None


def test_a_range_test_ramps_every_optimizer_and_puts_every_variable_and_rate_back(tmp_path):
    step = adam_step()
    optimizer = step.phases[0].apply.inner.optimizer
    rate_before = optimizer._learning_rate
    variables = [v for model in step.models.values() for v in model.variables]
    before = [v.numpy().copy() for v in variables]
    test = lr_range_test(step, batches, start=1e-5, end=1e-1, steps=20, divergence=1e9)
    assert len(test.losses) == 20 and not test.diverged
    np.testing.assert_allclose(test.learning_rates, np.logspace(-5, -1, 20), rtol=1e-6)
    assert all(math.isfinite(loss) for loss in test.losses)
    assert test.suggested is not None and 1e-5 <= test.suggested <= 1e-1
    for was, variable in zip(before, variables, strict=True):
        np.testing.assert_array_equal(was, variable.numpy())
    assert optimizer._learning_rate is rate_before
    (average,) = cs.ema_stages(step)  # built by the test: shadows back at the weights, no update counted
    assert int(average.count.numpy()) == 0
    for shadow, variable in zip(average.shadows, step.models["model"].trainable_variables, strict=True):
        np.testing.assert_array_equal(shadow.numpy(), variable.numpy())
    assert int(optimizer.iterations.numpy()) == 0 and all(not np.any(v.numpy()) for v in optimizer.variables[2:])
    plot_range_test(test, tmp_path / "lr_find.png")
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_range_test_stops_when_the_loss_diverges():
    test = lr_range_test(tiny_step(tiny_model()), batches, start=1e-2, end=1e6, steps=200)
    assert test.diverged and len(test.losses) < 200
    assert test.learning_rates[-1] > 1.0


def test_bad_arguments_and_a_phase_without_a_keras_optimizer_are_refused():
    step = tiny_step(tiny_model())
    for kwargs, name in [
        ({"start": 0.0}, "start"),
        ({"start": 1.0, "end": 0.5}, "end"),
        ({"steps": 1}, "steps"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"divergence": 1.0}, "divergence"),
    ]:
        with pytest.raises(ValueError, match=f"lr_range_test: {name} must be"):
            lr_range_test(step, batches, **kwargs)
    own = cs.compose(attrs.evolve(step.phases[0], apply=lambda g, v: None), models=step.models)
    with pytest.raises(ComposeError, match="phase 'classifier' applies its update with function, which holds no Keras"):
        lr_range_test(own, batches)
