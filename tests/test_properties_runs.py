"""Invariant 10 as a property: stop anywhere, checkpoint, resume, and the run ends as if straight.

The three programs the checker needs are built once and put back to their first state (a
checkpoint of it) before each use, so every Hypothesis example reuses the same traces.
"""

from __future__ import annotations

import attrs
import keras
import pytest
import tensorflow as tf
from builders import tiny_data, tiny_model
from hypothesis import given
from hypothesis import strategies as st

from composeloop import step as cs
from composeloop.engine import Checkpoints, RunState, compile_step
from composeloop.parts.data import batches
from composeloop.parts.recipes import classifier_phase
from composeloop.step.accumulate import accumulated
from composeloop.step.precision import dynamic_loss_scale, loss_scaled
from composeloop.testing import InvariantViolation, check_exact_resume, mirrored_strategy

X, Y = tiny_data(examples=40)  # batch 8: five steps an epoch, three epochs
EPOCHS, STEPS = 3, 15


def train_data(epoch: int) -> tf.data.Dataset:
    return batches(X, Y, 8, seed=3, epoch=epoch)


def build(apply=None, strategy=None, wrap=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        model = tiny_model(seed=0)
        phase = classifier_phase(keras.optimizers.Adam(0.02))
        if apply is not None:
            phase = attrs.evolve(phase, apply=apply)
        if wrap is not None:
            phase = wrap(phase)
        step = cs.compose(phase, models={"model": model})
    return compile_step(step, steps_per_execution=3, seed=0, strategy=strategy)


class ProgramPool:
    """Programs compiled once, each put back to its first state whenever it is handed out."""

    def __init__(self, directory, make, size: int = 3) -> None:
        self.programs = [make() for _ in range(size)]
        self.starts = []
        for index, program in enumerate(self.programs):
            checkpoints = Checkpoints(directory / f"start{index}", program)
            self.starts.append((checkpoints, checkpoints.save(RunState(program, EPOCHS))))
        self.turn = 0

    def __call__(self):
        index = self.turn % len(self.programs)
        self.turn += 1
        checkpoints, path = self.starts[index]
        checkpoints.restore(path)
        return self.programs[index]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return ProgramPool(tmp_path_factory.mktemp("start"), build)


@pytest.mark.property
@given(stop_at=st.integers(1, STEPS - 1))
def test_resume_anywhere_is_exact(pool, stop_at):
    # bitwise: the same kernels on the same inputs in the same order
    check_exact_resume(pool, train_data, epochs=EPOCHS, stop_at=stop_at)
    assert all(p.trace_counts == {"train": 1} for p in pool.programs)


def test_resume_is_exact_on_two_replicas():
    strategy = mirrored_strategy(2)
    check_exact_resume(lambda: build(strategy=strategy), train_data, epochs=2, stop_at=7)


def test_resume_mid_accumulation_and_with_a_loss_scale_is_exact():
    # stop after step 5: half way through a 2-step accumulation; the accumulator, its count
    # and the loss scale are stage state the checkpoint must hold
    both = lambda phase: loss_scaled(accumulated(phase, 2), dynamic_loss_scale(initial=2.0**4, growth_interval=3))  # noqa: E731
    check_exact_resume(lambda: build(wrap=both), train_data, epochs=2, stop_at=5)


def test_resume_with_ema_lookahead_and_decoupled_decay_is_exact():
    # stop after step 4: mid lookahead cycle (k=3) and mid epoch; the EMA shadows and count,
    # the slow weights and their count are apply-stage state the checkpoint must hold
    def stages(phase):
        decayed = cs.decoupled_weight_decay(phase.apply, 0.05, exclude=["bias"])
        return attrs.evolve(phase, apply=cs.ema(cs.lookahead(decayed, k=3, alpha=0.5), 0.9))

    check_exact_resume(lambda: build(wrap=stages), train_data, epochs=2, stop_at=4)


@attrs.define
class MomentumWithHiddenState:
    """A planted bug: SGD with momentum whose slots are not offered as `variables`."""

    slots: list = attrs.Factory(list)

    def build(self, variables) -> None:
        self.slots = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

    def __call__(self, gradients, variables) -> None:
        for g, m, v in zip(gradients, self.slots, variables, strict=True):
            m.assign(0.9 * m + g)
            v.assign_sub(0.05 * m)


def test_resume_checker_catches_an_apply_stage_that_hides_its_state():
    expected = r"exact resume \(10\) violated: after stopping at step 4.*model_model"
    with pytest.raises(InvariantViolation, match=expected):
        check_exact_resume(lambda: build(apply=MomentumWithHiddenState()), train_data, epochs=2, stop_at=4)


def test_resume_checker_catches_data_that_is_not_a_function_of_the_epoch():
    calls = []

    def drifting(epoch: int) -> tf.data.Dataset:
        calls.append(epoch)  # a different order every time an epoch is asked for
        return batches(X, Y, 8, seed=len(calls), epoch=epoch)

    with pytest.raises(InvariantViolation, match="exact resume"):
        check_exact_resume(build, drifting, epochs=2, stop_at=3)
