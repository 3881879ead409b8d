"""`compose` and the phase runner: pieces that do not fit fail with the slot named."""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf
from builders import dataset, tiny_data, tiny_model

from composeloop import step as cs
from composeloop.engine import compile_step
from composeloop.errors import ComposeError


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def phase(**changes):
    slots = dict(
        name="p",
        forward=cs.call_model(),
        loss=cs.sparse_categorical_crossentropy(),
        aggregate=cs.global_mean(),
        apply=cs.optimizer_apply(keras.optimizers.SGD(0.1)),
        trains=("model",),
    )
    slots.update(changes)
    return cs.Phase(**slots)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"loss": 3}, "phase 'p' slot 'loss' must be callable, got int"),
        ({"forward": lambda: {}}, "phase 'p' slot 'forward' must accept (context)"),
        ({"aggregate": lambda context: 0.0}, "phase 'p' slot 'aggregate' must accept (context, losses)"),
        ({"transform": lambda grads: grads}, "slot 'transform' must accept (gradients, variables, context)"),
        ({"apply": lambda grads: None}, "slot 'apply' must accept (gradients, variables)"),
        ({"trains": ("modle",)}, "phase 'p' trains unknown model 'modle'; models are: model"),
        ({"trains": ()}, "phase 'p' trains no model"),
        ({"metrics": ("accuracy",)}, "slot 'metrics' holds str, not a Metric"),
    ],
)
def test_compose_names_the_slot_that_does_not_fit(model, changes, message):
    with pytest.raises(ComposeError) as error:
        cs.compose(phase(**changes), models={"model": model})
    assert message in str(error.value)


def test_compose_rejects_unbuilt_models_duplicates_and_shared_optimizers(model):
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ComposeError, match="model 'model' has no trainable variables yet"):
        cs.compose(phase(), models={"model": unbuilt})
    with pytest.raises(ComposeError, match="phase names must be unique; repeated: p"):
        cs.compose(phase(), phase(), models={"model": model})
    with pytest.raises(ComposeError, match="metric names must be unique; repeated: loss"):
        cs.compose(
            phase(metrics=(cs.mean_loss(),)), phase(name="q", metrics=(cs.mean_loss(),)), models={"model": model}
        )
    shared = cs.optimizer_apply(keras.optimizers.SGD(0.1))
    other = tiny_model(seed=1)
    with pytest.raises(ComposeError, match="share one optimizer but train different variables"):
        cs.compose(
            phase(apply=shared),
            phase(name="q", apply=shared, trains=("other",)),
            models={"model": model, "other": other},
        )
    with pytest.raises(ComposeError, match="at least one Phase"):
        cs.compose(models={"model": model})
    with pytest.raises(ComposeError, match="argument 0 must be a Phase"):
        cs.compose("phase", models={"model": model})
    with pytest.raises(ComposeError, match="repeats must be >= 1"):
        phase(repeats=0)


def trace_error(model, **changes) -> str:
    program = compile_step(cs.compose(phase(**changes), models={"model": model}))
    x, y = tiny_data(8)
    with pytest.raises(ComposeError) as error:
        program.train(iter(dataset(x, y, 4)), 1)
    return str(error.value)


def test_a_missing_name_at_trace_time_names_the_slot_and_what_exists(model):
    message = trace_error(model, loss=cs.sparse_categorical_crossentropy(logits="scores"))
    assert "phase 'p' slot 'loss' looked up 'scores'" in message and "'logits'" in message


def test_shape_contracts_are_checked_at_trace_time(model):
    assert "slot 'aggregate' must return a scalar" in trace_error(model, aggregate=lambda c, losses: losses["loss"])
    assert "slot 'loss' must give per-example losses" in trace_error(
        model, loss=lambda c, o: {"loss": tf.reduce_mean(o["logits"])}
    )
    assert "slot 'forward' must return a dict" in trace_error(model, forward=lambda c: c.batch["x"])
