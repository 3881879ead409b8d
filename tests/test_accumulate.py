"""Gradient accumulation: k micro-batches give the update of one batch holding all of them."""

from __future__ import annotations

import attrs
import keras
import numpy as np
import pytest
import tensorflow as tf
from builders import tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.config.build import adapt_step
from composeloop.config.schema import Precision, TrainConfig
from composeloop.engine import compile_step
from composeloop.errors import ComposeError
from composeloop.parts.recipes import classifier_phase
from composeloop.step.accumulate import accumulate
from composeloop.testing import cached_programs, check_accumulation


def sgd_momentum_step():
    return cs.compose(classifier_phase(keras.optimizers.SGD(0.5, momentum=0.9)), models={"model": tiny_model(l2=0.01)})


@pytest.mark.property
@settings(max_examples=10)
@given(st.sampled_from([2, 3]), st.data())
def test_k_micro_batches_equal_one_k_times_batch(every, data):
    """Invariant 4, with micro-batches of any sizes: the update, optimizer slots (the iteration
    count included: the first k-1 micro-batches move nothing) and metrics agree."""
    sizes = data.draw(st.lists(st.integers(1, 6), min_size=every, max_size=every))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    parts = [
        {"x": rng.normal(size=(n, 5)).astype(np.float32), "y": rng.integers(0, 3, n).astype(np.int32)} for n in sizes
    ]
    check_accumulation(sgd_momentum_step, parts)
    assert all(p.trace_counts == {"train": 1} for p in cached_programs())


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
