"""Gradient accumulation: k micro-batches give the update of one batch holding all of them."""

from __future__ import annotations

import attrs
import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import consecutive_batches, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.config.build import adapt_step
from composeloop.config.schema import Precision, TrainConfig
from composeloop.engine import compile_step
from composeloop.errors import ComposeError
from composeloop.parts.recipes import classifier_phase
from composeloop.step.accumulate import accumulate, accumulated


def build(every: int):
    """A program whose phase accumulates `every` micro-batches (1: none), and its start state."""
    model = tiny_model(l2=0.01)
    phase = accumulated(classifier_phase(keras.optimizers.SGD(0.5, momentum=0.9)), every)
    program = compile_step(cs.compose(phase, models={"model": model}))
    optimizer = phase.apply.optimizer
    return model, optimizer, program, [v.numpy() for v in [*model.weights, *optimizer.variables]]


@pytest.fixture(scope="module")
def programs():
    built: dict[int, tuple] = {}

    def get(every: int):
        if every not in built:
            built[every] = build(every)
        return built[every]

    return get


def restart(built) -> None:
    model, optimizer, program, initial = built
    for variable, value in zip([*model.weights, *optimizer.variables], initial, strict=True):
        variable.assign(value)
    program.reset("train")


batches = consecutive_batches


def state(built):
    model, optimizer, _, _ = built
    return [v.numpy() for v in model.weights], [v.numpy() for v in optimizer.variables]


@pytest.mark.property
@settings(max_examples=10)
@given(st.sampled_from([2, 3]), st.data())
def test_k_micro_batches_equal_one_k_times_batch(programs, every, data):
    """Invariant 4, with micro-batches of any sizes: the update, optimizer slots and metrics agree."""
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=every, max_size=every))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    parts = [
        {"x": rng.normal(size=(n, 5)).astype(np.float32), "y": rng.integers(0, 3, n).astype(np.int32)} for n in sizes
    ]
    whole = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    accumulating, reference = programs(every), programs(1)
    restart(accumulating)
    restart(reference)
    before = state(accumulating)

    iterator = iter(batches(parts))
    assert accumulating[2].train(iterator, every - 1) == every - 1
    # The first k-1 micro-batches move nothing: not a weight, not a slot, not the iteration count.
    for a, b in zip(sum(state(accumulating), []), sum(before, []), strict=True):
        np.testing.assert_array_equal(a, b)
    assert accumulating[2].train(iterator, 1) == 1
    reference[2].train(iter(batches([whole])), 1)

    for a, b in zip(sum(state(accumulating), []), sum(state(reference), []), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(accumulating[1].iterations) == 1
    for metric, fields in reference[2].states("train").items():
        assert accumulating[2].states("train")[metric] == pytest.approx(fields, rel=1e-5)
    assert accumulating[2].trace_counts["train"] == 1


def test_default_train_config_leaves_the_step_untouched():
    """Nothing is added to the single-device default graph: the same Step object comes back."""
    model = tiny_model()
    step = cs.compose(classifier_phase(keras.optimizers.SGD(0.1)), models={"model": model})
    assert adapt_step(step, TrainConfig()) is step
    assert adapt_step(step, TrainConfig(precision=Precision.mixed_bfloat16)) is step
    assert adapt_step(step, TrainConfig(accumulate=2)) is not step


def test_accumulate_rejects_fewer_than_one_and_sharing():
    with pytest.raises(ComposeError, match="every"):
        accumulate(0)
    stage = accumulate(2)
    stage.build([tf.Variable(1.0)])
    with pytest.raises(ComposeError, match="one phase"):
        stage.build([tf.Variable(2.0)])


def test_program_keeps_stage_state_for_checkpoints():
    model = tiny_model()
    stage = accumulate(2)
    phase = attrs.evolve(classifier_phase(keras.optimizers.SGD(0.1, momentum=0.9)), transform=stage)
    program = compile_step(cs.compose(phase, models={"model": model}))
    kept = program.stage_variables["classifier"]
    assert len(kept) == len(model.trainable_variables) + 2  # sums, examples, micro-batches
    assert [id(v) for v in kept] == [id(v) for v in stage.variables]  # the optimizer's slots are its own
