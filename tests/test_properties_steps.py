"""Invariants 3, 6, 8 (reset) and 9 on compiled steps, as Hypothesis properties.

Each step builder is compiled once (on 1 replica and on the 2 logical CPUs of conftest) and
reused for every example: the checkers cache their programs, and batches of any size reach
the compiled function with an unknown batch dimension, so nothing retraces.
"""

from __future__ import annotations

import attrs
import keras
import numpy as np
import pytest
from builders import tiny_model
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from composeloop import step as cs
from composeloop.parts import gan
from composeloop.parts.recipes import classifier_phase, classifier_step
from composeloop.testing import (
    cached_programs,
    check_phase_isolation,
    check_replica_invariance,
    check_reset_gives_empty,
)
from composeloop.testing.strategies import batches, splits

pytestmark = pytest.mark.property
REPLICAS = 2  # conftest splits the CPU into 2 logical devices; one MirroredStrategy per process


def sgd_clipped():
    # SGD(1.0): the update IS the transformed gradient, so any scaling error shows in full.
    return classifier_step(tiny_model(l2=0.01), keras.optimizers.SGD(1.0), transform=cs.clip_by_global_norm(0.05))


def adam_guarded():
    # Adam's moments are variables too: the checker compares them across replica counts. The
    # extra metrics (a mean output, a second loss mean) are for invariant 9.
    transform = cs.chain(cs.skip_nonfinite(), cs.clip_by_norm(0.5))
    phase = classifier_phase(keras.optimizers.Adam(0.01), transform=transform)
    extra = (cs.mean_output("mean_logit", "logits"), cs.mean_loss("loss_again", of="loss"))
    phase = attrs.evolve(phase, metrics=(*phase.metrics, *extra))
    return cs.compose(phase, models={"model": tiny_model(seed=1, l2=0.001)})


@given(st.sampled_from([sgd_clipped, adam_guarded]), batches(), st.integers(0, 1000), st.data())
def test_two_replicas_give_the_update_of_one_on_any_split(build, batch, at_step, data):
    """Invariant 3: weights, optimizer slots and metric states, any split (empty parts too)."""
    split = data.draw(splits(len(batch["y"]), parts=REPLICAS))
    check_replica_invariance(build, batch, split, replicas=REPLICAS, at_step=at_step)


@given(batches(), st.data())
def test_metric_states_are_replica_invariant(batch, data):
    """Invariant 9: summed states (loss, accuracy, a mean output) match 1 replica's, on
    batches up to 24 examples split anywhere."""
    split = data.draw(splits(len(batch["y"]), parts=REPLICAS))
    check_replica_invariance(adam_guarded, batch, split, replicas=REPLICAS)  # compiled once, above


LATENT, PIXELS = 3, 6


@pytest.fixture(scope="module")
def wgan():
    keras.utils.set_random_seed(4)
    dense = keras.layers.Dense
    g = keras.Sequential([keras.Input((LATENT,)), dense(8, activation="relu"), dense(PIXELS, activation="tanh")])
    d = keras.Sequential([keras.Input((PIXELS,)), dense(8, activation="tanh"), dense(1)])
    adam = keras.optimizers.Adam
    return gan.wgan_gp_step(g, d, adam(0.01), adam(0.01), latent_dim=LATENT, penalty=1.0, n_critic=2)


@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 12), st.just(PIXELS)), elements=st.floats(-1, 1, width=32)),
    st.sampled_from(["discriminator", "generator"]),
    st.integers(0, 10_000),
)
def test_each_gan_phase_moves_only_its_own_player(wgan, x, phase, at_step):
    """Invariant 6 on a WGAN-GP step (critic twice, with a penalty); at_step draws the noise."""
    check_phase_isolation(wgan, {"x": x}, phase, at_step=at_step)


@pytest.fixture(scope="module")
def classifier():
    return adam_guarded()


@given(batches())
def test_reset_gives_the_empty_state(classifier, batch):
    """Invariant 8 for a compiled step: after a step, reset leaves every state empty."""
    check_reset_gives_empty(classifier, batch)


def test_every_program_the_properties_compiled_was_traced_once():
    """Runs last in this file: all examples of all the properties above reused one trace each."""
    counts = [program.trace_counts for program in cached_programs()]
    assert len(counts) >= 7, counts  # 2 builders x 2 replica counts + 2 GAN prefixes + reset
    assert all(count == {"train": 1} for count in counts), counts
